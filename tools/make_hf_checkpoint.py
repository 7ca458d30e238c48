#!/usr/bin/env python3
"""Writes a real, sharded Hugging Face checkpoint of the demo model (SmolLM2-135M-Instruct) from
its GGUF file, with numpy + gguf-py + safetensors only (no torch), for `morphkv --model DIR`.

What it writes into OUT_DIR (default ~/.cache/morphkv/SmolLM2-135M-Instruct-hf, outside the repo):
  config.json              LlamaForCausalLM, from the GGUF's llama.* keys (tie_word_embeddings:
                           the GGUF has no output.weight, so lm_head is the embedding)
  model-0000k-of-0000n.safetensors + model.safetensors.index.json
                           the GGUF tensors dequantized (Q4_1 / Q8_0 -> f32 with gguf-py), renamed
                           to transformers' names, q/k rows un-permuted (llama.cpp's converter
                           permutes them for its interleaved RoPE; transformers uses rotate_half),
                           stored as --dtype (bf16 by default: round to nearest even), sharded at
                           --max-shard-mb
  tokenizer.json           BPE vocabulary + merges from tokenizer.ggml.*, the pre-tokenizer of
                           SmolLM2's own tokenizer.json (Digits(individual) + ByteLevel), control
                           tokens as special added tokens
  tokenizer_config.json    chat template, bos/eos/unk/pad tokens, add_bos_token
  generation_config.json   bos/eos ids
The safetensors files are written here (bf16 has no numpy dtype) and then re-read with the
`safetensors` package, which validates every header and tensor extent.

    python3 -m venv ~/.cache/morphkv/venv && ~/.cache/morphkv/venv/bin/pip install numpy gguf safetensors
    ~/.cache/morphkv/venv/bin/python tools/make_hf_checkpoint.py [GGUF] [OUT_DIR] [--dtype bf16|f16|f32]
"""
import argparse
import json
import os
import struct

import numpy as np
import gguf

HOME_CACHE = os.path.join(os.path.expanduser("~"), ".cache", "morphkv")
LAYER = {
    "attn_norm.weight": "input_layernorm.weight", "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight", "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight", "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight", "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
ST_DTYPE = {"bf16": "BF16", "f16": "F16", "f32": "F32"}
TORCH_DTYPE = {"bf16": "bfloat16", "f16": "float16", "f32": "float32"}


def field(r, key, default=None):
    f = r.fields.get(key)
    return default if f is None else f.contents()


def hf_name(g):
    if g == "token_embd.weight":
        return "model.embed_tokens.weight"
    if g == "output_norm.weight":
        return "model.norm.weight"
    if g == "output.weight":
        return "lm_head.weight"
    _, layer, rest = g.split(".", 2)
    return "model.layers.%s.%s" % (layer, LAYER[rest])


def unpermute(w, n_head):
    """Inverse of llama.cpp's convert_hf_to_gguf permute (transformers' reverse_permute_weights)."""
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def to_bytes(a, dtype):
    a = np.ascontiguousarray(a, dtype=np.float32)
    if dtype == "f32":
        return a.tobytes()
    if dtype == "f16":
        return a.astype(np.float16).tobytes()
    u = a.view(np.uint32).astype(np.uint64)
    u = (u + 0x7FFF + ((u >> 16) & 1)) >> 16  # round to nearest even (no NaNs in these weights)
    return u.astype(np.uint16).tobytes()


def write_safetensors(path, tensors, dtype):
    """tensors: list of (name, shape, bytes). Header padded to 8 bytes like the reference writer."""
    header, off = {"__metadata__": {"format": "pt"}}, 0
    for name, shape, b in tensors:
        header[name] = {"dtype": ST_DTYPE[dtype], "shape": list(shape), "data_offsets": [off, off + len(b)]}
        off += len(b)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for _, _, b in tensors:
            f.write(b)
    return off


def tensors_of(r, n_head, n_kv, dtype):
    out = []
    for t in r.tensors:
        w = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
        w = w.reshape([int(x) for x in reversed(t.shape)])  # GGUF ne order -> row-major [out, in]
        if t.name.endswith("attn_q.weight"):
            w = unpermute(w, n_head)
        elif t.name.endswith("attn_k.weight"):
            w = unpermute(w, n_kv)
        out.append((hf_name(t.name), w.shape, to_bytes(w, dtype)))
    order = {"model.embed_tokens.weight": -2, "model.norm.weight": 10**6}
    key = lambda x: order.get(x[0], int(x[0].split(".")[2]) if x[0].startswith("model.layers.") else 0)
    return sorted(out, key=lambda x: (key(x), x[0]))


def write_shards(out_dir, tensors, dtype, max_bytes):
    shards, cur, cur_bytes = [], [], 0
    for t in tensors:
        if cur and cur_bytes + len(t[2]) > max_bytes:
            shards.append(cur)
            cur, cur_bytes = [], 0
        cur.append(t)
        cur_bytes += len(t[2])
    shards.append(cur)
    weight_map, total = {}, 0
    for i, s in enumerate(shards):
        fn = "model-%05d-of-%05d.safetensors" % (i + 1, len(shards))
        total += write_safetensors(os.path.join(out_dir, fn), s, dtype)
        weight_map.update({name: fn for name, _, _ in s})
    with open(os.path.join(out_dir, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
    return len(shards)


PRE_TOKENIZERS = {  # tokenizer.ggml.pre -> the pre-tokenizer of the model family's tokenizer.json
    "smollm": {"type": "Sequence", "pretokenizers": [
        {"type": "Digits", "individual_digits": True},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}]},
}


def write_tokenizer(r, out_dir):
    toks = [str(bytes(r.fields["tokenizer.ggml.tokens"].parts[i]), "utf-8") for i in r.fields["tokenizer.ggml.tokens"].data]
    types = [int(r.fields["tokenizer.ggml.token_type"].parts[i][0]) for i in r.fields["tokenizer.ggml.token_type"].data]
    merges = [str(bytes(r.fields["tokenizer.ggml.merges"].parts[i]), "utf-8") for i in r.fields["tokenizer.ggml.merges"].data]
    pre = field(r, "tokenizer.ggml.pre")
    if field(r, "tokenizer.ggml.model") != "gpt2" or pre not in PRE_TOKENIZERS:
        raise SystemExit("only byte-level BPE with pre-tokenizer %s is mapped (got %s)" % (list(PRE_TOKENIZERS), pre))
    added = [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": types[i] == 3} for i, t in enumerate(toks) if types[i] in (3, 4)]
    tj = {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added, "normalizer": None,
        "pre_tokenizer": PRE_TOKENIZERS[pre],
        "post_processor": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True},
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": {t: i for i, t in enumerate(toks)}, "merges": merges},
    }
    with open(os.path.join(out_dir, "tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(tj, f, ensure_ascii=False)
    tok = lambda key: toks[field(r, key)] if field(r, key) is not None else None
    tc = {"add_bos_token": bool(field(r, "tokenizer.ggml.add_bos_token", False)), "add_prefix_space": False,
          "bos_token": tok("tokenizer.ggml.bos_token_id"), "eos_token": tok("tokenizer.ggml.eos_token_id"),
          "unk_token": tok("tokenizer.ggml.unknown_token_id"), "pad_token": tok("tokenizer.ggml.padding_token_id"),
          "chat_template": field(r, "tokenizer.chat_template"), "clean_up_tokenization_spaces": False,
          "model_max_length": int(field(r, "llama.context_length")), "tokenizer_class": "GPT2Tokenizer"}
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w") as f:
        json.dump(tc, f, indent=2)


def write_configs(r, out_dir, dtype):
    a = "llama"
    n_embd, n_head = int(field(r, a + ".embedding_length")), int(field(r, a + ".attention.head_count"))
    cfg = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
        "hidden_size": n_embd, "intermediate_size": int(field(r, a + ".feed_forward_length")),
        "num_hidden_layers": int(field(r, a + ".block_count")), "num_attention_heads": n_head,
        "num_key_value_heads": int(field(r, a + ".attention.head_count_kv", n_head)), "head_dim": n_embd // n_head,
        "max_position_embeddings": int(field(r, a + ".context_length")),
        "rms_norm_eps": float(np.float32(field(r, a + ".attention.layer_norm_rms_epsilon"))),
        "rope_theta": float(field(r, a + ".rope.freq_base")), "rope_scaling": None,
        "vocab_size": len(r.fields["tokenizer.ggml.tokens"].data),
        "tie_word_embeddings": not any(t.name == "output.weight" for t in r.tensors),
        "attention_bias": False, "mlp_bias": False, "torch_dtype": TORCH_DTYPE[dtype],
        "bos_token_id": int(field(r, "tokenizer.ggml.bos_token_id")),
        "eos_token_id": int(field(r, "tokenizer.ggml.eos_token_id")),
    }
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    gen = {"bos_token_id": cfg["bos_token_id"], "eos_token_id": cfg["eos_token_id"]}
    with open(os.path.join(out_dir, "generation_config.json"), "w") as f:
        json.dump(gen, f, indent=2)
    return cfg


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("gguf", nargs="?", default=os.path.join(HOME_CACHE, "SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("out_dir", nargs="?", default=None)
    ap.add_argument("--dtype", choices=sorted(ST_DTYPE), default="bf16")
    ap.add_argument("--max-shard-mb", type=float, default=100)
    args = ap.parse_args()
    out_dir = args.out_dir or os.path.join(HOME_CACHE, "SmolLM2-135M-Instruct-hf" + ("" if args.dtype == "bf16" else "-" + args.dtype))
    os.makedirs(out_dir, exist_ok=True)
    r = gguf.GGUFReader(args.gguf)
    cfg = write_configs(r, out_dir, args.dtype)
    write_tokenizer(r, out_dir)
    tensors = tensors_of(r, cfg["num_attention_heads"], cfg["num_key_value_heads"], args.dtype)
    n = write_shards(out_dir, tensors, args.dtype, int(args.max_shard_mb * 2**20))
    from safetensors import safe_open  # validates each header and the tensor extents
    names = set()
    for fn in sorted(os.listdir(out_dir)):
        if fn.endswith(".safetensors"):
            with safe_open(os.path.join(out_dir, fn), framework="numpy") as f:
                names.update(f.keys())
    assert names == {t[0] for t in tensors}, "safetensors did not read back every tensor"
    print("%s: %d tensors (%s) in %d shards" % (out_dir, len(tensors), args.dtype, n))


if __name__ == "__main__":
    main()
