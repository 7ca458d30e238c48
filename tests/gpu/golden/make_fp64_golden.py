#!/usr/bin/env python3
"""Golden data for tests/gpu/test_cuda_e2e.c: an exact (fp64 NumPy) forward pass of the demo model
SmolLM2-135M-Instruct Q4_1, weights dequantized by the `gguf` package. Independent of our C and CUDA
code. For each prompt it decodes 64 greedy tokens (with a K/V cache, one token at a time) and keeps,
at every position, the fp64 top-20 token ids and logits.

Why fp64 and not the CPU backend: the CPU backend quantizes activations to 8 bits for the 4-bit
matmuls; on these cases its logits are ~0.12 rms from exact (argmax differs at ~4 % of positions),
while the CUDA backend (bf16 weights, fp32 activations) is ~0.03 rms from exact. Exact arithmetic
is the reference both can be held to.

Prompts: the token ids of the first three cases of tests/golden/logits/smollm2_logits.json (made
with llama.cpp's tokenizer), copied into the output so the file stands alone.
Output: smollm2_fp64.json  {"model", "top_k", "cases": [{"prompt_ids", "greedy_ids",
  "top": [{"ids": [...], "logits": [...]} per position of prompt + greedy[:-1]]}]}
Run: python3 tests/gpu/golden/make_fp64_golden.py [MODEL]   (a few minutes)"""
import json
import os
import sys

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(HERE)))
MODEL = sys.argv[1] if len(sys.argv) > 1 else os.path.expanduser("~/.cache/morphkv/SmolLM2-135M-Instruct.Q4_1.gguf")
N_GEN, TOP = 64, 20

reader = GGUFReader(MODEL)
tensors = {t.name: t for t in reader.tensors}


def weight(name, rows=None):
    t = tensors[name]
    a = dequantize(t.data, t.tensor_type).astype(np.float64)
    return a.reshape(rows, -1) if rows else a.reshape(-1)


def field(key):
    f = reader.fields[key]
    return f.parts[f.data[0]][0]


E = int(field("llama.embedding_length"))
H = int(field("llama.attention.head_count"))
KV = int(field("llama.attention.head_count_kv"))
L = int(field("llama.block_count"))
EPS = float(field("llama.attention.layer_norm_rms_epsilon"))
THETA = float(field("llama.rope.freq_base"))
D = E // H
emb = weight("token_embd.weight", 49152)
out_w = weight("output.weight", 49152) if "output.weight" in tensors else emb
out_norm = weight("output_norm.weight")
layers = []
for l in range(L):
    p = f"blk.{l}."
    layers.append(dict(
        an=weight(p + "attn_norm.weight"), fn=weight(p + "ffn_norm.weight"),
        q=weight(p + "attn_q.weight", H * D), k=weight(p + "attn_k.weight", KV * D),
        v=weight(p + "attn_v.weight", KV * D), o=weight(p + "attn_output.weight", E),
        g=weight(p + "ffn_gate.weight"), u=weight(p + "ffn_up.weight"), d=weight(p + "ffn_down.weight", E)))
for ly in layers:
    ly["g"] = ly["g"].reshape(-1, E)
    ly["u"] = ly["u"].reshape(-1, E)
inv_freq = THETA ** (-np.arange(0, D, 2) / D)


def rms(x, w):
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + EPS) * w


def rope(v, pos):  # v (n, heads, D); GGUF llama: pairs (2i, 2i+1)
    ang = pos[:, None] * inv_freq[None, :]
    c, s = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
    o = np.empty_like(v)
    o[..., 0::2] = v[..., 0::2] * c - v[..., 1::2] * s
    o[..., 1::2] = v[..., 0::2] * s + v[..., 1::2] * c
    return o


def forward(ids, pos0, cache):
    """Logits (n, vocab) of tokens ids at positions pos0..; cache: per layer [K (t,KV,D), V]."""
    n = len(ids)
    pos = np.arange(pos0, pos0 + n, dtype=np.float64)
    x = emb[ids]
    g = H // KV
    for l, ly in enumerate(layers):
        xn = rms(x, ly["an"])
        q = rope((xn @ ly["q"].T).reshape(n, H, D), pos)
        k = rope((xn @ ly["k"].T).reshape(n, KV, D), pos)
        v = (xn @ ly["v"].T).reshape(n, KV, D)
        cache[l][0] = np.concatenate([cache[l][0], k]) if cache[l][0] is not None else k
        cache[l][1] = np.concatenate([cache[l][1], v]) if cache[l][1] is not None else v
        K, Vv = cache[l]
        T = K.shape[0]
        att = np.empty((n, H, D))
        for h in range(H):
            s = q[:, h, :] @ K[:, h // g, :].T / np.sqrt(D)  # (n, T)
            s = s + np.where(np.arange(T)[None, :] > (pos0 + np.arange(n))[:, None], -np.inf, 0.0)
            s = np.exp(s - s.max(1, keepdims=True))
            att[:, h, :] = (s / s.sum(1, keepdims=True)) @ Vv[:, h // g, :]
        x = x + att.reshape(n, H * D) @ ly["o"].T
        xn = rms(x, ly["fn"])
        gt, up = xn @ ly["g"].T, xn @ ly["u"].T
        x = x + (gt / (1 + np.exp(-gt)) * up) @ ly["d"].T
    return rms(x, out_norm) @ out_w.T


def top(row):
    idx = np.argsort(-row)[:TOP]
    return {"ids": [int(i) for i in idx], "logits": [round(float(row[i]), 5) for i in idx]}


def main():
    src = json.load(open(os.path.join(ROOT, "tests/golden/logits/smollm2_logits.json")))
    out = {"model": os.path.basename(MODEL), "top_k": TOP, "generator": "fp64 NumPy, gguf dequantize",
           "cases": []}
    for case in src["cases"][:3]:
        prompt = [int(i) for i in case["prompt_ids"]]
        cache = [[None, None] for _ in range(L)]
        logits = forward(prompt, 0, cache)
        tops = [top(r) for r in logits]
        greedy = []
        nxt = int(np.argmax(logits[-1]))
        for i in range(N_GEN):
            greedy.append(nxt)
            if i == N_GEN - 1:
                break
            row = forward([nxt], len(prompt) + i, cache)[0]
            tops.append(top(row))
            nxt = int(np.argmax(row))
        out["cases"].append({"prompt_ids": prompt, "greedy_ids": greedy, "top": tops})
        print(f"case: {len(prompt)} prompt tokens, {len(greedy)} greedy, {len(tops)} positions", flush=True)
    with open(os.path.join(HERE, "smollm2_fp64.json"), "w") as f:
        json.dump(out, f, separators=(",", ":"))


if __name__ == "__main__":
    main()
