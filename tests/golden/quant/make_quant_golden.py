#!/usr/bin/env python3
"""Golden data for tests/unit/test_quant.c: raw GGML blocks and their dequantized values, both
produced by the independent `gguf` Python package (gguf.quants), never by morphkv.

For the types gguf can quantize (BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0) random Gaussian data is
quantized with gguf.quants.quantize; for the K types (which gguf only dequantizes) random block
bytes are drawn and the fp16 scale fields are overwritten with finite values. The expected floats
are gguf.quants.dequantize of the raw bytes (F16: numpy's float16 -> float32).

File format (<TYPE>.bin, little endian):
  char magic[4] = "MKQG"; u32 version = 1; u32 ggml_type; u32 n_elems; u32 n_bytes;
  u8 raw[n_bytes]; f32 expected[n_elems]

Run: python3 tests/golden/quant/make_quant_golden.py   (writes next to this script)
"""
import os
import struct

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf.constants import GGML_QUANT_SIZES
from gguf import quants

OUT = os.path.dirname(os.path.abspath(__file__))
N = 1024
rng = np.random.default_rng(20240611)


def rand_half(n, lo=-3.0, hi=-1.0):
    """finite fp16 scales with random sign, magnitude 10^lo..10^hi"""
    mag = 10.0 ** rng.uniform(lo, hi, n)
    return (mag * rng.choice([-1.0, 1.0], n)).astype(np.float16)


def k_blocks(qtype):
    bs, ts = GGML_QUANT_SIZES[qtype]
    nb = N // bs
    raw = rng.integers(0, 256, size=(nb, ts), dtype=np.uint8)
    # byte offsets of fp16 fields in each K block (GGML layout)
    half_fields = {
        T.Q2_K: [ts - 4, ts - 2],  # d, dmin at the end
        T.Q3_K: [ts - 2],          # d at the end
        T.Q4_K: [0, 2],            # d, dmin first
        T.Q5_K: [0, 2],
        T.Q6_K: [ts - 2],          # d at the end
    }[qtype]
    for off in half_fields:
        h = rand_half(nb)
        # dmin is used with a positive sign in practice; keep it positive
        if qtype in (T.Q2_K, T.Q4_K, T.Q5_K) and off in ((ts - 2) if qtype == T.Q2_K else 2,):
            h = np.abs(h)
        raw[:, off:off + 2] = h.view(np.uint8).reshape(nb, 2)
    return raw.reshape(-1)


def write(qtype, raw, expected):
    raw = np.ascontiguousarray(raw, dtype=np.uint8).reshape(-1)
    expected = np.ascontiguousarray(expected, dtype=np.float32).reshape(-1)
    assert expected.size == N
    path = os.path.join(OUT, f"{qtype.name}.bin")
    with open(path, "wb") as f:
        f.write(b"MKQG")
        f.write(struct.pack("<IIII", 1, int(qtype), N, raw.size))
        f.write(raw.tobytes())
        f.write(expected.astype("<f4").tobytes())
    print(f"{path}: {raw.size} bytes, {N} values")


def main():
    data = rng.standard_normal(N).astype(np.float32)
    # include a few exact zeros and a constant run so degenerate blocks are covered
    data[64:96] = 0.0
    data[96:128] = 0.25

    # F32 / F16 / BF16
    write(T.F32, data.view(np.uint8), data)
    h = (data * 1000.0).astype(np.float16)  # spans normal range, some large
    h[:8] = np.array([6.0e-8, -6.0e-8, 1.0e-6, 6.1e-5, 65504.0, -65504.0, 0.0, -0.0], np.float16)
    write(T.F16, h.view(np.uint8), h.astype(np.float32))
    bf = quants.quantize(data * 1e5, T.BF16)
    write(T.BF16, bf, quants.dequantize(bf, T.BF16))

    for qt in (T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0):
        q = quants.quantize(data.reshape(1, N), qt)
        write(qt, q, quants.dequantize(q, qt))

    for qt in (T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K):
        raw = k_blocks(qt)
        write(qt, raw, quants.dequantize(raw.reshape(1, -1), qt))


if __name__ == "__main__":
    main()
