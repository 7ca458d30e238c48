#!/usr/bin/env python3
"""Writes the committed seed corpora of the fuzz targets (tests/fuzz/corpus/<target>/).

Small on purpose (a few KB each): libFuzzer grows its own corpus from them.
  gguf:      a 1-layer llama model (F32, n_embd 8) with a byte-level BPE vocabulary; a tokenizer-only
             SentencePiece ("llama") vocabulary with <0xXX> byte tokens; a bare header.
  tokenizer: flag byte (bit 0 add_bos, bit 1 parse_special) + text: ASCII, UTF-8, chat markup,
             control bytes, invalid UTF-8.
  config:    the repository's configs/*.json and a few hand-written ones.
  request:   morphkv.Request messages (parallel/request.proto), encoded here by hand.
  safetensors: a 2-tensor BF16/F32 file with __metadata__, an empty header, overlapping offsets.
Run from anywhere: python3 tests/fuzz/make_seeds.py"""
import os
import random
import shutil
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


def out(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# ---- GGUF v3 ----
U32, I32, F32, BOOL, STR, ARR = 4, 5, 6, 7, 8, 9


def gstr(s):
    b = s.encode() if isinstance(s, str) else s
    return struct.pack("<Q", len(b)) + b


def kv(key, t, v):
    b = gstr(key) + struct.pack("<I", t)
    if t == U32:
        b += struct.pack("<I", v)
    elif t == F32:
        b += struct.pack("<f", v)
    elif t == BOOL:
        b += struct.pack("<B", v)
    elif t == STR:
        b += gstr(v)
    elif t == ARR:
        et, items = v
        b += struct.pack("<IQ", et, len(items))
        for it in items:
            b += gstr(it) if et == STR else struct.pack({I32: "<i", F32: "<f"}[et], it)
    return b


def gguf(kvs, tensors, align=32):
    """tensors: list of (name, dims, float list)"""
    head = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(kvs)) + b"".join(kvs)
    infos, data = b"", b""
    for name, dims, vals in tensors:
        infos += gstr(name) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d) for d in dims)
        infos += struct.pack("<IQ", 0, len(data))  # F32, offset
        data += struct.pack("<%df" % len(vals), *vals)
        data += b"\0" * (-len(data) % align)
    b = head + infos
    return b + b"\0" * (-len(b) % align) + data


def byte_chars():
    keep = list(range(0x21, 0x7F)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    n, m = 0, {}
    for b in range(256):
        if b in keep:
            m[b] = chr(b)
        else:
            m[b] = chr(256 + n)
            n += 1
    return m


def bpe_model():
    bc = byte_chars()
    toks = [bc[b] for b in range(256)] + ["he", "ll", "hell", "<|endoftext|>", "<|im_start|>"]
    types = [1] * 259 + [3, 3]
    merges = ["h e", "l l", "he ll"]
    V, E, H, KV, FF = len(toks), 8, 2, 1, 16
    D = E // H
    rnd = random.Random(15)
    w = lambda n: [round(rnd.uniform(-0.5, 0.5), 3) for _ in range(n)]
    kvs = [
        kv("general.architecture", STR, "llama"),
        kv("general.name", STR, "fuzz-seed"),
        kv("llama.block_count", U32, 1),
        kv("llama.embedding_length", U32, E),
        kv("llama.feed_forward_length", U32, FF),
        kv("llama.attention.head_count", U32, H),
        kv("llama.attention.head_count_kv", U32, KV),
        kv("llama.context_length", U32, 64),
        kv("llama.attention.layer_norm_rms_epsilon", F32, 1e-5),
        kv("tokenizer.ggml.model", STR, "gpt2"),
        kv("tokenizer.ggml.pre", STR, "smollm"),
        kv("tokenizer.ggml.tokens", ARR, (STR, toks)),
        kv("tokenizer.ggml.token_type", ARR, (I32, types)),
        kv("tokenizer.ggml.merges", ARR, (STR, merges)),
        kv("tokenizer.ggml.bos_token_id", U32, V - 2),
        kv("tokenizer.ggml.eos_token_id", U32, V - 2),
        kv("tokenizer.chat_template", STR, "{% for m in messages %}<|im_start|>{{ m['content'] }}{% endfor %}"),
    ]
    t = [("token_embd.weight", [E, V], w(E * V)), ("output_norm.weight", [E], [1.0] * E)]
    for name, dims in [("attn_norm", [E]), ("ffn_norm", [E]), ("attn_q", [E, H * D]),
                       ("attn_k", [E, KV * D]), ("attn_v", [E, KV * D]), ("attn_output", [H * D, E]),
                       ("ffn_gate", [E, FF]), ("ffn_up", [E, FF]), ("ffn_down", [FF, E])]:
        n = 1
        for d in dims:
            n *= d
        t.append(("blk.0.%s.weight" % name, dims, [1.0] * n if len(dims) == 1 else w(n)))
    return gguf(kvs, t)


def spm_vocab():
    toks = ["<unk>", "<s>", "</s>"] + ["<0x%02X>" % b for b in range(256)] + ["\u2581", "\u2581a", "b", "ab"]
    types = [2, 3, 3] + [6] * 256 + [1, 1, 1, 1]
    scores = [0.0] * 259 + [-1.0, -2.0, -3.0, -1.5]
    kvs = [
        kv("general.architecture", STR, "llama"),
        kv("tokenizer.ggml.model", STR, "llama"),
        kv("tokenizer.ggml.tokens", ARR, (STR, toks)),
        kv("tokenizer.ggml.token_type", ARR, (I32, types)),
        kv("tokenizer.ggml.scores", ARR, (F32, scores)),
        kv("tokenizer.ggml.bos_token_id", U32, 1),
        kv("tokenizer.ggml.eos_token_id", U32, 2),
        kv("tokenizer.ggml.unknown_token_id", U32, 0),
        kv("tokenizer.ggml.add_space_prefix", BOOL, 1),
    ]
    return gguf(kvs, [])


# ---- protobuf (morphkv.Request) ----
def varint(n):
    n &= (1 << 64) - 1
    b = b""
    while True:
        c = n & 0x7F
        n >>= 7
        if n:
            b += bytes([c | 0x80])
        else:
            return b + bytes([c])


def fv(num, v):
    return varint(num << 3) + varint(v)


def ff(num, v):
    return varint(num << 3 | 5) + struct.pack("<f", v)


def fb(num, b):
    return varint(num << 3 | 2) + varint(len(b)) + b


def request(prompt, stops=(), policy=1, temp=0.0, kind=1):
    samp = ff(1, temp) + fv(2, 40) + ff(3, 1.0) + ff(4, 0.05) + ff(5, 1.0) + fv(6, 64) + fv(7, 42) + fv(8, 16)
    cache = fv(1, policy) + fv(2, 32) + fv(3, 256) + fv(6, 4) + ff(7, 1.0) + fv(10, 5)
    m = fv(1, 1) + fv(2, kind) + fv(3, 7)
    if prompt:
        m += fb(4, b"".join(varint(i) for i in prompt))
    m += fb(5, samp) + fb(6, cache)
    for s in stops:
        m += fb(7, s.encode())
    return m


def safetensors(header, n_data):
    h = header.encode()
    return struct.pack("<Q", len(h)) + h + bytes(range(n_data))


def main():
    for t in ("gguf", "tokenizer", "config", "request", "safetensors"):
        shutil.rmtree(os.path.join(HERE, "corpus", t), ignore_errors=True)
    out("gguf", "llama_bpe_1layer.gguf", bpe_model())
    out("gguf", "spm_vocab.gguf", spm_vocab())
    out("gguf", "header_only.gguf", b"GGUF" + struct.pack("<IQQ", 3, 0, 0))
    texts = [b"\x00Hello, world!", b"\x01The quick brown fox jumps over the lazy dog.",
             "\x00caf\u00e9 \u20ac \U0001F980 \u4f60\u597d".encode(),
             b"\x02<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
             b"\x00x\x04y\x06\x13\x14\x16\x1d z", b"\x00\xc0\xc1\xf5\xff\x80 \xe2\x82", b"\x03   \t\n\r\n 12345 6789"]
    for i, t in enumerate(texts):
        out("tokenizer", "text%d" % i, t)
    cfg_dir = os.path.join(ROOT, "configs")
    os.makedirs(os.path.join(HERE, "corpus", "config"), exist_ok=True)
    for n in sorted(os.listdir(cfg_dir)):
        if n.endswith(".json"):
            shutil.copy(os.path.join(cfg_dir, n), os.path.join(HERE, "corpus", "config", n))
    out("config", "small.json", b'{"max_new_tokens": 8, "temperature": 0, "stop": ["\\n\\n"], "comm_timeout": 5}')
    out("config", "kv.json", b'{"kv_policy": "snapkv", "kv_snapkv_pool": 7, "kv_dtype": "f16", "prompt": "hi", "model": "${HOME}/m.gguf"}')
    out("config", "bad.json", b'{"top_p": 0, "unknown": 1}')
    out("request", "generate", request([1, 2, 3, 49151], ["</s>", "\n\n"]))
    out("request", "generate_snapkv", request(list(range(100)), policy=4, temp=0.7))
    out("request", "shutdown", fv(1, 1) + fv(2, 2))
    out("request", "empty", b"")
    out("safetensors", "two.safetensors", safetensors(
        '{"__metadata__":{"format":"pt"},"model.norm.weight":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},'
        '"lm_head.weight":{"dtype":"BF16","shape":[2,4],"data_offsets":[16,32]}}', 32))
    out("safetensors", "empty.safetensors", safetensors("{}", 0))
    out("safetensors", "overlap.safetensors", safetensors(
        '{"a":{"dtype":"F16","shape":[4],"data_offsets":[0,8]},"b":{"dtype":"F16","shape":[4],"data_offsets":[4,12]}}', 12))


if __name__ == "__main__":
    main()
