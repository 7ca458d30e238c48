#!/usr/bin/env python3
"""Golden logits for the architecture test (tests/unit/test_arch_synth.c): synthetic llama and
qwen2 models, written by tests/testutil/synth_model.c, evaluated here by an fp64 NumPy forward
pass written from the architecture definitions (not from morphkv's code):

  x = token_embd[ids]
  per layer:  h = rmsnorm(x) * attn_norm
              q = h Wq^T (+ bq), k = h Wk^T (+ bk), v = h Wv^T (+ bv)      qwen2: biases
              q, k = rope(q), rope(k)   angle pos * theta^(-2i/rope_dim) / rope_freqs[i]
                    llama: pairs (2i, 2i+1); qwen2 (NeoX): pairs (i, i + rope_dim/2)
              a = softmax(q k^T / sqrt(d) + causal mask) v   query head h reads KV head
                  h // (n_head / n_kv_head)
              x = x + a Wo^T
              h = rmsnorm(x) * ffn_norm;  x = x + (silu(h Wg^T) * (h Wu^T)) Wd^T
  logits = (rmsnorm(x) * output_norm) W^T,  W = output, or token_embd when tied

The weights are regenerated here from the rule documented at the top of
tests/testutil/synth_model.h (splitmix64 streams, float32 arithmetic), bit for bit; --check
verifies that against GGUF files the C writer produced, read with the `gguf` package.

Not run by CI. Usage:
    python3 tests/golden/arch/make_arch_golden.py            # writes arch_logits.json here
    # one-off cross-check of the generator against the C writer:
    mkdir -p /tmp/arch && MK_ARCH_KEEP_DIR=/tmp/arch ctest --test-dir build -R test_arch_synth
    python3 tests/golden/arch/make_arch_golden.py --check /tmp/arch
    # one-off second opinion on the golden logits from llama.cpp (pip install llama-cpp-python):
    python3 tests/golden/arch/make_arch_golden.py --llama-cpp /tmp/arch

Results when the golden file was made (numpy 2.4.6, gguf 0.19.0): --check: every tensor of
the three files bit-identical; --llama-cpp (llama-cpp-python 0.3.36): max |logit diff| 7.9e-6
(llama_tied), 1.4e-6, 8.1e-7.
"""
import json
import os
import sys

import numpy as np

N_VOCAB = 256 + 40 + 1  # synth_model.c: byte tokens + merges + <|endoftext|>
GAMMA = np.uint64(0x9E3779B97F4A7C15)
M64 = (1 << 64) - 1

# A fixed token sequence (ids < N_VOCAB), the same for every config.
TOKENS = [296, 72, 101, 108, 108, 111, 32, 119, 111, 114, 108, 100, 260, 33, 10, 84,
          104, 101, 290, 113, 117, 105, 99, 107]

CONFIGS = [
    dict(name="llama_tied", arch="llama", n_layer=2, n_head=8, n_kv_head=2, head_dim=16, n_ff=256,
         n_ctx=512, tied_output=True, with_rope_freqs=False, rope_theta=10000.0, norm_eps=1e-5,
         seed=1234),
    dict(name="llama_rope_freqs_output", arch="llama", n_layer=2, n_head=6, n_kv_head=3, head_dim=32,
         n_ff=128, n_ctx=512, tied_output=False, with_rope_freqs=True, rope_theta=10000.0,
         norm_eps=1e-5, seed=77),
    dict(name="qwen2", arch="qwen2", n_layer=2, n_head=8, n_kv_head=2, head_dim=16, n_ff=256,
         n_ctx=512, tied_output=False, with_rope_freqs=False, rope_theta=1000000.0, norm_eps=1e-6,
         seed=4321),
]


def draws(seed, idx, n):
    """The n draws of tensor idx's splitmix64 stream, after the discarded first one."""
    with np.errstate(over="ignore"):
        s0 = np.uint64(seed) ^ np.uint64((0x9E3779B97F4A7C15 * (idx + 1)) & M64)
        z = s0 + GAMMA * np.arange(2, n + 2, dtype=np.uint64)  # state after draw 2, 3, ...
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return ((z >> np.uint64(11)).astype(np.float64) * 2.0**-53 * 2.0 - 1.0).astype(np.float32)


def matrix(seed, idx, rows, cols, fan_in=None):
    """(rows, cols) float32: a * u, a = sqrtf(3 / fan_in); fan_in None: a = 1 (token_embd)."""
    a = np.float32(1.0) if fan_in is None else np.sqrt(np.float32(3.0) / np.float32(fan_in))
    return (a * draws(seed, idx, rows * cols)).reshape(rows, cols)


def vec(seed, idx, n, add, mul):
    return np.float32(add) + np.float32(mul) * draws(seed, idx, n)


def weights(c):
    """Tensor name -> float32 array (GGUF order: rows of input features), as the C writer makes
    them (tensor numbers: see synth_model.h)."""
    s, L, E = c["seed"], c["n_layer"], c["n_head"] * c["head_dim"]
    nq, nkv, F = c["n_head"] * c["head_dim"], c["n_kv_head"] * c["head_dim"], c["n_ff"]
    w = {"token_embd.weight": matrix(s, 0, N_VOCAB, E),
         "output_norm.weight": vec(s, 1, E, 1.0, 0.1)}
    if not c["tied_output"]:
        w["output.weight"] = matrix(s, 2, N_VOCAB, E, E)
    for l in range(L):
        b, p = 3 + 9 * l, "blk.%d." % l
        w[p + "attn_norm.weight"] = vec(s, b + 0, E, 1.0, 0.1)
        w[p + "ffn_norm.weight"] = vec(s, b + 1, E, 1.0, 0.1)
        w[p + "attn_q.weight"] = matrix(s, b + 2, nq, E, E)
        w[p + "attn_k.weight"] = matrix(s, b + 3, nkv, E, E)
        w[p + "attn_v.weight"] = matrix(s, b + 4, nkv, E, E)
        w[p + "attn_output.weight"] = matrix(s, b + 5, E, nq, nq)
        w[p + "ffn_gate.weight"] = matrix(s, b + 6, F, E, E)
        w[p + "ffn_up.weight"] = matrix(s, b + 7, F, E, E)
        w[p + "ffn_down.weight"] = matrix(s, b + 8, E, F, F)
    if c["with_rope_freqs"]:
        w["rope_freqs.weight"] = vec(s, 3 + 9 * L, c["head_dim"] // 2, 2.5, 1.5)
    if c["arch"] == "qwen2":
        for l in range(L):
            b, p = 4 + 9 * L + 3 * l, "blk.%d." % l
            w[p + "attn_q.bias"] = vec(s, b + 0, nq, 0.0, 0.5)
            w[p + "attn_k.bias"] = vec(s, b + 1, nkv, 0.0, 0.5)
            w[p + "attn_v.bias"] = vec(s, b + 2, nkv, 0.0, 0.5)
    return w


def forward(c, w32, ids, neox=None, use_bias=True, use_freqs=True, tied=None):
    """fp64 logits (n, N_VOCAB). The keyword overrides make deliberately wrong variants (for the
    sensitivity figures): swapped RoPE style, dropped biases / frequency factors, wrong output."""
    w = {k: v.astype(np.float64) for k, v in w32.items()}
    H, KV, D, L = c["n_head"], c["n_kv_head"], c["head_dim"], c["n_layer"]
    eps = float(np.float32(c["norm_eps"]))      # stored as F32 in the file
    theta = float(np.float32(c["rope_theta"]))
    neox = (c["arch"] == "qwen2") if neox is None else neox
    tied = c["tied_output"] if tied is None else tied
    n = len(ids)
    half = D // 2
    inv = theta ** (-2.0 * np.arange(half) / D)
    if use_freqs and "rope_freqs.weight" in w:
        inv = inv / w["rope_freqs.weight"]
    ang = np.arange(n)[:, None] * inv[None, :]          # (n, half)
    cos, sin = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]

    def rope(t):  # (n, heads, D)
        i0 = np.arange(half) if neox else 2 * np.arange(half)
        i1 = i0 + half if neox else i0 + 1
        o = t.copy()
        o[..., i0] = t[..., i0] * cos - t[..., i1] * sin
        o[..., i1] = t[..., i0] * sin + t[..., i1] * cos
        return o

    def rms(v, g):
        return v / np.sqrt((v * v).mean(-1, keepdims=True) + eps) * g

    mask = np.triu(np.full((n, n), -np.inf), 1)
    x = w["token_embd.weight"][ids]
    for l in range(L):
        p = "blk.%d." % l
        h = rms(x, w[p + "attn_norm.weight"])
        q, k, v = h @ w[p + "attn_q.weight"].T, h @ w[p + "attn_k.weight"].T, h @ w[p + "attn_v.weight"].T
        if use_bias and (p + "attn_q.bias") in w:
            q, k, v = q + w[p + "attn_q.bias"], k + w[p + "attn_k.bias"], v + w[p + "attn_v.bias"]
        q, k, v = rope(q.reshape(n, H, D)), rope(k.reshape(n, KV, D)), v.reshape(n, KV, D)
        att = np.zeros((n, H, D))
        for hh in range(H):
            g = hh // (H // KV)
            s = q[:, hh, :] @ k[:, g, :].T / np.sqrt(D) + mask
            s = np.exp(s - s.max(-1, keepdims=True))
            s /= s.sum(-1, keepdims=True)
            att[:, hh, :] = s @ v[:, g, :]
        x = x + att.reshape(n, H * D) @ w[p + "attn_output.weight"].T
        h = rms(x, w[p + "ffn_norm.weight"])
        gt, up = h @ w[p + "ffn_gate.weight"].T, h @ w[p + "ffn_up.weight"].T
        x = x + (gt / (1.0 + np.exp(-gt)) * up) @ w[p + "ffn_down.weight"].T
    if tied:
        out = w["token_embd.weight"]
    elif "output.weight" in w:
        out = w["output.weight"]
    else:  # the wrong variant "separate output" of a tied model: the matrix tensor 2 would hold
        out = matrix(c["seed"], 2, N_VOCAB, H * D, H * D).astype(np.float64)
    return rms(x, w["output_norm.weight"]) @ out.T


def sensitivity(c, w, ref):
    """Max |logit change| when one architecture feature is computed the wrong way."""
    alt = {"rope_style_swapped": forward(c, w, TOKENS, neox=not (c["arch"] == "qwen2")),
           "output_tied_swapped": forward(c, w, TOKENS, tied=not c["tied_output"])}
    if c["with_rope_freqs"]:
        alt["rope_freqs_ignored"] = forward(c, w, TOKENS, use_freqs=False)
    if c["arch"] == "qwen2":
        alt["qkv_bias_ignored"] = forward(c, w, TOKENS, use_bias=False)
    return {k: float(np.abs(v - ref).max()) for k, v in alt.items()}


def check(dirname):
    """Compares the C writer's files (dirname/<config>.gguf) with the weights generated here."""
    from gguf import GGUFReader
    bad = 0
    for c in CONFIGS:
        path = os.path.join(dirname, c["name"] + ".gguf")
        r = GGUFReader(path)
        arch = bytes(r.fields["general.architecture"].parts[-1]).decode()
        assert arch == c["arch"], (path, arch)
        for key, want in (("block_count", c["n_layer"]), ("attention.head_count", c["n_head"]),
                          ("attention.head_count_kv", c["n_kv_head"]), ("feed_forward_length", c["n_ff"]),
                          ("rope.freq_base", np.float32(c["rope_theta"])),
                          ("attention.layer_norm_rms_epsilon", np.float32(c["norm_eps"]))):
            got = r.fields[arch + "." + key].parts[-1][0]
            assert got == want, (path, key, got, want)
        ntok = len(r.fields["tokenizer.ggml.tokens"].data)
        assert ntok == N_VOCAB, (path, ntok)
        gen = weights(c)
        names, bad0 = {t.name for t in r.tensors}, bad
        assert names == set(gen), (path, sorted(names ^ set(gen)))
        for t in r.tensors:
            data = np.asarray(t.data)
            same = data.dtype == np.float32 and data.tobytes() == gen[t.name].tobytes()
            if not same:
                bad += 1
                print("MISMATCH %s %s" % (path, t.name))
        print("%s: %d tensors, %s" % (path, len(r.tensors), "bit-identical" if bad == bad0 else "MISMATCHES"))
    return bad == 0


def check_llama_cpp(dirname):
    """A second opinion on the forward pass itself: llama.cpp (llama-cpp-python) evaluates the C
    writer's files; its logits must match the golden ones. The KV cache is kept F32 (llama.cpp's
    default F16 cache alone moves logits by up to ~1e-2); llama.cpp does not know the
    pre-tokenizer name "gpt2", which the token ids given here do not need, so it is overridden."""
    from llama_cpp import Llama
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "arch_logits.json")) as f:
        g = json.load(f)
    ok = True
    for c in g["configs"]:
        m = Llama(model_path=os.path.join(dirname, c["name"] + ".gguf"), n_ctx=64, logits_all=True,
                  verbose=False, n_threads=2, type_k=0, type_v=0,
                  kv_overrides={"tokenizer.ggml.pre": "default"})
        m.eval(g["tokens"])
        diff = np.abs(np.array(m.scores[:len(g["tokens"])]) - np.array(c["logits"])).max()
        print("%s: llama.cpp vs golden, max |logit diff| %.3g" % (c["name"], diff))
        ok = ok and diff < 1e-4
    return ok


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    if len(sys.argv) == 3 and sys.argv[1] == "--check":
        sys.exit(0 if check(sys.argv[2]) else 1)
    if len(sys.argv) == 3 and sys.argv[1] == "--llama-cpp":
        sys.exit(0 if check_llama_cpp(sys.argv[2]) else 1)
    out = {"about": "fp64 NumPy logits of synthetic models (tests/testutil/synth_model.h weight rule); "
                    "made by make_arch_golden.py",
           "n_vocab": N_VOCAB, "tokens": TOKENS, "configs": []}
    for c in CONFIGS:
        w = weights(c)
        ref = forward(c, w, TOKENS)
        sens = sensitivity(c, w, ref)
        print(c["name"], "logit range [%.3f, %.3f]" % (ref.min(), ref.max()), "sensitivity", sens)
        rec = dict(c)
        rec["sensitivity"] = sens
        rec["logits"] = [[float("%.8g" % v) for v in row] for row in ref]
        out["configs"].append(rec)
    with open(os.path.join(here, "arch_logits.json"), "w") as f:
        json.dump(out, f, separators=(",", ":"))
        f.write("\n")


if __name__ == "__main__":
    main()
