#!/usr/bin/env python3
"""Exact fp64 NumPy forward pass of the demo model (weights dequantized by the gguf package), used
to measure how far llama.cpp and morphkv each are from exact arithmetic (see the tolerance note in
tests/model/test_logits.c). Not run by CI.
    python3 tests/golden/logits/fp64_reference.py CASE_INDEX [MODEL]
Prints llama.cpp-vs-fp64 error on that golden case and saves /tmp/ref/logitsCASE.npy."""
import json, os, sys
import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize
r = GGUFReader(sys.argv[2] if len(sys.argv) > 2 else os.path.expanduser('~/.cache/morphkv/SmolLM2-135M-Instruct.Q4_1.gguf'))
T = {t.name: t for t in r.tensors}
def W(name):
    t = T[name]
    a = dequantize(t.data, t.tensor_type).astype(np.float64)
    return a.reshape([int(x) for x in reversed(t.shape)]) if a.ndim==1 and len(t.shape)>1 else a
d=json.load(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'smollm2_logits.json')))
case = d['cases'][int(sys.argv[1]) if len(sys.argv)>1 else 0]
ids = case['prompt_ids'] + case['greedy_ids']
n=len(ids); E=576; H=9; KV=3; D=64; L=30
emb = W('token_embd.weight').reshape(49152, E)
x = emb[ids]
pos = np.arange(n)
inv = 100000.0 ** (-np.arange(0, D, 2)/D)
ang = pos[:,None]*inv[None,:]
cos, sin = np.cos(ang), np.sin(ang)
def rope(v):  # v (n, h, D), normal (interleaved) pairs
    v0, v1 = v[..., 0::2], v[..., 1::2]
    o = np.empty_like(v)
    o[...,0::2] = v0*cos[:,None,:] - v1*sin[:,None,:]
    o[...,1::2] = v0*sin[:,None,:] + v1*cos[:,None,:]
    return o
def rms(v, w): return v / np.sqrt((v*v).mean(-1, keepdims=True) + 1e-5) * w
mask = np.triu(np.full((n,n), -np.inf), 1)
for l in range(L):
    p = f'blk.{l}.'
    xn = rms(x, W(p+'attn_norm.weight'))
    q = (xn @ W(p+'attn_q.weight').reshape(H*D, E).T).reshape(n,H,D)
    k = (xn @ W(p+'attn_k.weight').reshape(KV*D, E).T).reshape(n,KV,D)
    v = (xn @ W(p+'attn_v.weight').reshape(KV*D, E).T).reshape(n,KV,D)
    q, k = rope(q), rope(k)
    out = np.zeros((n,H,D))
    for h in range(H):
        s = q[:,h,:] @ k[:,h//3,:].T / np.sqrt(D) + mask
        s = np.exp(s - s.max(-1, keepdims=True)); s /= s.sum(-1, keepdims=True)
        out[:,h,:] = s @ v[:,h//3,:]
    x = x + out.reshape(n, H*D) @ W(p+'attn_output.weight').reshape(E, H*D).T
    xn = rms(x, W(p+'ffn_norm.weight'))
    g = xn @ W(p+'ffn_gate.weight').reshape(1536, E).T
    u = xn @ W(p+'ffn_up.weight').reshape(1536, E).T
    x = x + (g/(1+np.exp(-g))*u) @ W(p+'ffn_down.weight').reshape(E, 1536).T
logits = rms(x, W('output_norm.weight')) @ emb.T
os.makedirs('/tmp/ref', exist_ok=True)
np.save('/tmp/ref/logits%s.npy' % (sys.argv[1] if len(sys.argv)>1 else '0'), logits.astype(np.float32))
# compare llama.cpp top-20 to fp64
worst=0; s=0; c=0
for i,t in enumerate(case['top']):
    g = np.array(t['logits']); r_ = logits[i, t['ids']]
    off = (r_-g).mean(); dd = np.abs(r_-off-g); worst=max(worst, dd.max()); s+=dd.sum(); c+=len(dd)
print('llama.cpp vs fp64: worst', worst, 'mean', s/c)
