#!/usr/bin/env python3
"""Golden data for tests/gpu/test_cuda_dequant_host.cu: random GGUF blocks of every type the CUDA
backend dequantizes, and their values as the `gguf` Python package (gguf-py, llama.cpp's own
reader) dequantizes them. Independent of our code: gguf.quants.dequantize is the reference.

File dequant_<TYPE>.bin, little endian:
  char magic[4] = "MKDQ"; u32 version = 1; u32 ggml_type; u32 n_blocks; u32 block_bytes;
  u32 block_elems; u8 raw[n_blocks * block_bytes]; f32 expected[n_blocks * block_elems]
Run: python3 tests/gpu/golden/make_dequant_golden.py   (writes beside itself; seed fixed)"""
import os
import struct

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as T, quants

HERE = os.path.dirname(os.path.abspath(__file__))
rng = np.random.default_rng(20261128)

# offsets of fp16 scale fields inside one block (the rest is random bytes)
SCALE_FIELDS = {
    T.Q4_0: [0], T.Q4_1: [0, 2], T.Q5_0: [0], T.Q5_1: [0, 2], T.Q8_0: [0],
    T.Q2_K: [80, 82], T.Q3_K: [108], T.Q4_K: [0, 2], T.Q5_K: [0, 2], T.Q6_K: [208],
}


def f16_bytes(v):
    return np.array([v], dtype=np.float16).tobytes()


def make_blocks(t, n):
    bs, ts = GGML_QUANT_SIZES[t]
    if t == T.F32:
        return rng.standard_normal(n).astype(np.float32).tobytes()
    if t == T.F16:
        bits = rng.integers(0, 0x10000, size=n, dtype=np.uint32).astype(np.uint16)
        bits[(bits & 0x7C00) == 0x7C00] &= 0xBFFF  # no inf/nan: clear an exponent bit
        bits[:4] = [0x0001, 0x8001, 0x03FF, 0x0000]  # subnormals and zero
        return bits.tobytes()
    if t == T.BF16:
        bits = rng.integers(0, 0x10000, size=n, dtype=np.uint32).astype(np.uint16)
        bits[(bits & 0x7F80) == 0x7F80] &= 0xBFFF
        return bits.tobytes()
    raw = bytearray(rng.integers(0, 256, size=n * ts, dtype=np.uint8).tobytes())
    for b in range(n):
        for k, off in enumerate(SCALE_FIELDS[t]):
            if b == 1 and k == 0:
                v = 3.0e-6  # a subnormal binary16 scale
            else:
                v = float(rng.uniform(1e-3, 5e-2)) * (1 if k == 0 or rng.random() < 0.5 else -1)
            raw[b * ts + off: b * ts + off + 2] = f16_bytes(v)
    return bytes(raw)


def main():
    for t in [T.F32, T.F16, T.BF16, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0, T.Q2_K, T.Q3_K,
              T.Q4_K, T.Q5_K, T.Q6_K]:
        bs, ts = GGML_QUANT_SIZES[t]
        n = 64 if bs == 1 else (16 if bs == 32 else 4)
        raw = make_blocks(t, n)
        exp = quants.dequantize(np.frombuffer(raw, dtype=np.uint8), t).astype(np.float32)
        assert exp.size == n * bs and np.all(np.isfinite(exp))
        with open(os.path.join(HERE, f"dequant_{t.name}.bin"), "wb") as f:
            f.write(b"MKDQ" + struct.pack("<5I", 1, int(t), n, ts, bs))
            f.write(raw)
            f.write(exp.tobytes())
        print(f"{t.name}: {n} blocks, {exp.size} values")


if __name__ == "__main__":
    main()
