/* Dequantization of GGUF weight blocks (GGML on-disk formats) to bf16 on the device.
 *
 * Why bf16 at load (docs/cuda.md has the long form): cuBLAS tensor-core GEMMs take bf16 directly,
 * one GEMV kernel serves every file type, and the kernels stay few and simple; the price is
 * memory and bandwidth (a Q4_0 weight is 4.5 bits on disk, 16 bits here, so a batch-1 decode
 * reads ~3.6x the bytes a quantized GEMV would). bf16 rather than fp16 so that no weight and no
 * activation converted for cuBLAS can overflow.
 *
 * The per-block decoders below are __host__ __device__ and take a byte pointer (blocks are not
 * aligned: a Q4_0 block is 18 bytes), so the host test tests/gpu/test_cuda_dequant_host.cu runs
 * the very same code on the CPU against golden data from the `gguf` Python package.
 *
 * Block layouts (little endian; d, m, dmin are IEEE binary16):
 *   Q4_0  32 el, 18 B: d, qs[16]           y[j] = (lo4(qs[j]) - 8) d, y[j+16] = (hi4 - 8) d
 *   Q4_1  32 el, 20 B: d, m, qs[16]        y = q d + m
 *   Q5_0  32 el, 22 B: d, qh[4], qs[16]    5th bit of y[j] is bit j of qh, of y[j+16] bit j+16; -16
 *   Q5_1  32 el, 24 B: d, m, qh[4], qs[16]
 *   Q8_0  32 el, 34 B: d, int8 qs[32]
 *   Q2_K 256 el,  84 B: scales[16] (4-bit scale | 4-bit min << 4), qs[64] (2-bit), d, dmin
 *   Q3_K 256 el, 110 B: hmask[32] (3rd bit), qs[64] (2-bit), scales[12] (16 x 6-bit, -32), d
 *   Q4_K 256 el, 144 B: d, dmin, scales[12] (8 x 6-bit scale + 6-bit min), qs[128]
 *   Q5_K 256 el, 176 B: d, dmin, scales[12], qh[32], qs[128]
 *   Q6_K 256 el, 210 B: ql[128], qh[64], int8 scales[16], d
 *   F32, F16, BF16: one element per "block". */
#ifndef MK_CUDA_DEQUANT_CUH
#define MK_CUDA_DEQUANT_CUH

#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* The block structs (sizes, field offsets) and the type ids are the CPU's: src/quant_blocks.h
 * and src/quant.h. Blocks are read through byte pointers at the structs' offsets, because a
 * block in a row is not aligned (a Q4_0 block is 18 bytes). */
extern "C" {
#include "src/quant.h"
#include "src/quant_blocks.h"
}

#ifdef MK_HD /* quant_blocks.h's (host-only outside nvcc); the emulator wants the CUDA spelling */
#undef MK_HD
#endif
#if defined(__CUDACC__) || defined(MK_CUDA_EMU)
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#define MK_HD __host__ __device__
#else
#define MK_HD
#endif

/* GGML type ids, as src/quant.h's mk_type_t (asserted below). */
enum {
  MK_DQ_F32 = MK_TYPE_F32, MK_DQ_F16 = MK_TYPE_F16, MK_DQ_Q4_0 = MK_TYPE_Q4_0, MK_DQ_Q4_1 = MK_TYPE_Q4_1,
  MK_DQ_Q5_0 = MK_TYPE_Q5_0, MK_DQ_Q5_1 = MK_TYPE_Q5_1, MK_DQ_Q8_0 = MK_TYPE_Q8_0, MK_DQ_Q2_K = MK_TYPE_Q2_K,
  MK_DQ_Q3_K = MK_TYPE_Q3_K, MK_DQ_Q4_K = MK_TYPE_Q4_K, MK_DQ_Q5_K = MK_TYPE_Q5_K, MK_DQ_Q6_K = MK_TYPE_Q6_K,
  MK_DQ_BF16 = MK_TYPE_BF16
};
static_assert(MK_DQ_F32 == 0 && MK_DQ_F16 == 1 && MK_DQ_Q4_0 == 2 && MK_DQ_Q4_1 == 3 && MK_DQ_Q5_0 == 6 &&
                  MK_DQ_Q5_1 == 7 && MK_DQ_Q8_0 == 8 && MK_DQ_Q2_K == 10 && MK_DQ_Q3_K == 11 && MK_DQ_Q4_K == 12 &&
                  MK_DQ_Q5_K == 13 && MK_DQ_Q6_K == 14 && MK_DQ_BF16 == 30,
              "the GGML type ids of src/quant.h (the file format's numbering)");

/* Elements per block; 0 for a type this file cannot decode. */
MK_HD static inline int mk_dq_block_elems(int t) {
  switch (t) {
    case MK_DQ_F32: case MK_DQ_F16: case MK_DQ_BF16: return 1;
    case MK_DQ_Q4_0: case MK_DQ_Q4_1: case MK_DQ_Q5_0: case MK_DQ_Q5_1: case MK_DQ_Q8_0: return MK_QK;
    case MK_DQ_Q2_K: case MK_DQ_Q3_K: case MK_DQ_Q4_K: case MK_DQ_Q5_K: case MK_DQ_Q6_K: return MK_QK_K;
    default: return 0;
  }
}

MK_HD static inline int mk_dq_block_bytes(int t) {
  switch (t) {
    case MK_DQ_F32: return 4;
    case MK_DQ_F16: case MK_DQ_BF16: return 2;
    case MK_DQ_Q4_0: return (int)sizeof(mk_block_q4_0);
    case MK_DQ_Q4_1: return (int)sizeof(mk_block_q4_1);
    case MK_DQ_Q5_0: return (int)sizeof(mk_block_q5_0);
    case MK_DQ_Q5_1: return (int)sizeof(mk_block_q5_1);
    case MK_DQ_Q8_0: return (int)sizeof(mk_block_q8_0);
    case MK_DQ_Q2_K: return (int)sizeof(mk_block_q2_k);
    case MK_DQ_Q3_K: return (int)sizeof(mk_block_q3_k);
    case MK_DQ_Q4_K: return (int)sizeof(mk_block_q4_k);
    case MK_DQ_Q5_K: return (int)sizeof(mk_block_q5_k);
    case MK_DQ_Q6_K: return (int)sizeof(mk_block_q6_k);
    default: return 0;
  }
}

#define MK_DQ_OFF(type, field) ((int)offsetof(type, field))

MK_HD static inline float mk_dq_bits_f32(uint32_t u) {
  float f;
  memcpy(&f, &u, 4);
  return f;
}

MK_HD static inline uint16_t mk_dq_u16(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }

MK_HD static inline uint32_t mk_dq_u32(const uint8_t *p) {
  return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

/* IEEE binary16 -> fp32, exact (subnormals, inf, nan included). */
MK_HD static inline float mk_dq_f16(uint16_t h) {
  uint32_t sign = (uint32_t)(h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
  if (e == 0) {
    float f = (float)m * 5.9604644775390625e-8f; /* m * 2^-24, exact */
    return sign ? -f : f;
  }
  if (e == 31) return mk_dq_bits_f32(sign | 0x7f800000u | (m << 13));
  return mk_dq_bits_f32(sign | ((e + 112u) << 23) | (m << 13));
}

/* y[0 .. mk_dq_block_elems(t)) = block b of type t. */
MK_HD static inline void mk_dq_block(int t, const uint8_t *b, float *y) {
  switch (t) {
    case MK_DQ_F32: y[0] = mk_dq_bits_f32(mk_dq_u32(b)); break;
    case MK_DQ_F16: y[0] = mk_dq_f16(mk_dq_u16(b)); break;
    case MK_DQ_BF16: y[0] = mk_dq_bits_f32((uint32_t)mk_dq_u16(b) << 16); break;
    case MK_DQ_Q4_0: {
      float d = mk_dq_f16(mk_dq_u16(b));
      const uint8_t *qs = b + MK_DQ_OFF(mk_block_q4_0, qs);
      for (int j = 0; j < 16; j++) {
        y[j] = (float)((qs[j] & 0xF) - 8) * d;
        y[j + 16] = (float)((qs[j] >> 4) - 8) * d;
      }
    } break;
    case MK_DQ_Q4_1: {
      float d = mk_dq_f16(mk_dq_u16(b)), m = mk_dq_f16(mk_dq_u16(b + MK_DQ_OFF(mk_block_q4_1, m)));
      const uint8_t *qs = b + MK_DQ_OFF(mk_block_q4_1, qs);
      for (int j = 0; j < 16; j++) {
        y[j] = (float)(qs[j] & 0xF) * d + m;
        y[j + 16] = (float)(qs[j] >> 4) * d + m;
      }
    } break;
    case MK_DQ_Q5_0: {
      float d = mk_dq_f16(mk_dq_u16(b));
      uint32_t qh = mk_dq_u32(b + MK_DQ_OFF(mk_block_q5_0, qh));
      const uint8_t *qs = b + MK_DQ_OFF(mk_block_q5_0, qs);
      for (int j = 0; j < 16; j++) {
        int h0 = (int)((qh >> j) << 4) & 0x10, h1 = (int)(qh >> (j + 12)) & 0x10;
        y[j] = (float)(((qs[j] & 0xF) | h0) - 16) * d;
        y[j + 16] = (float)(((qs[j] >> 4) | h1) - 16) * d;
      }
    } break;
    case MK_DQ_Q5_1: {
      float d = mk_dq_f16(mk_dq_u16(b)), m = mk_dq_f16(mk_dq_u16(b + MK_DQ_OFF(mk_block_q5_1, m)));
      uint32_t qh = mk_dq_u32(b + MK_DQ_OFF(mk_block_q5_1, qh));
      const uint8_t *qs = b + MK_DQ_OFF(mk_block_q5_1, qs);
      for (int j = 0; j < 16; j++) {
        int h0 = (int)((qh >> j) << 4) & 0x10, h1 = (int)(qh >> (j + 12)) & 0x10;
        y[j] = (float)((qs[j] & 0xF) | h0) * d + m;
        y[j + 16] = (float)((qs[j] >> 4) | h1) * d + m;
      }
    } break;
    case MK_DQ_Q8_0: {
      float d = mk_dq_f16(mk_dq_u16(b));
      const int8_t *qs = (const int8_t *)(b + MK_DQ_OFF(mk_block_q8_0, qs));
      for (int j = 0; j < 32; j++) y[j] = (float)qs[j] * d;
    } break;
    case MK_DQ_Q2_K: {
      const uint8_t *sc = b + MK_DQ_OFF(mk_block_q2_k, scales), *qs = b + MK_DQ_OFF(mk_block_q2_k, qs);
      float d = mk_dq_f16(mk_dq_u16(b + MK_DQ_OFF(mk_block_q2_k, d)));
      float dmin = mk_dq_f16(mk_dq_u16(b + MK_DQ_OFF(mk_block_q2_k, dmin)));
      int is = 0;
      for (int h = 0; h < 2; h++) {
        const uint8_t *q = qs + 32 * h;
        for (int j = 0; j < 4; j++) {
          const int shift = 2 * j;
          for (int part = 0; part < 2; part++) {
            const int s = sc[is++];
            const float dl = d * (float)(s & 0xF), ml = dmin * (float)(s >> 4);
            float *o = y + 128 * h + 32 * j + 16 * part;
            for (int l = 0; l < 16; l++) o[l] = dl * (float)((q[16 * part + l] >> shift) & 3) - ml;
          }
        }
      }
    } break;
    case MK_DQ_Q3_K: {
      const uint8_t *hm = b + MK_DQ_OFF(mk_block_q3_k, hmask), *qs = b + MK_DQ_OFF(mk_block_q3_k, qs);
      const uint8_t *ps = b + MK_DQ_OFF(mk_block_q3_k, scales);
      float d = mk_dq_f16(mk_dq_u16(b + MK_DQ_OFF(mk_block_q3_k, d)));
      int sc[16]; /* 6-bit scales: low 4 bits from bytes 0..7, high 2 bits from bytes 8..11 */
      for (int i = 0; i < 16; i++) {
        int lo = i < 8 ? (ps[i] & 0xF) : (ps[i - 8] >> 4);
        int hi = (ps[8 + (i & 3)] >> (2 * (i >> 2))) & 3;
        sc[i] = (lo | (hi << 4)) - 32;
      }
      int is = 0;
      for (int h = 0; h < 2; h++) {
        const uint8_t *q = qs + 32 * h;
        for (int j = 0; j < 4; j++) {
          const int shift = 2 * j, bit = 4 * h + j;
          for (int part = 0; part < 2; part++) {
            const float dl = d * (float)sc[is++];
            float *o = y + 128 * h + 32 * j + 16 * part;
            for (int l = 0; l < 16; l++) {
              const int k = 16 * part + l;
              const int v = ((q[k] >> shift) & 3) - (((hm[k] >> bit) & 1) ? 0 : 4);
              o[l] = dl * (float)v;
            }
          }
        }
      }
    } break;
    case MK_DQ_Q4_K: {
      float d = mk_dq_f16(mk_dq_u16(b)), dmin = mk_dq_f16(mk_dq_u16(b + MK_DQ_OFF(mk_block_q4_k, dmin)));
      const uint8_t *sc = b + MK_DQ_OFF(mk_block_q4_k, scales), *qs = b + MK_DQ_OFF(mk_block_q4_k, qs);
      for (int c = 0; c < 4; c++) {
        uint8_t s1, m1, s2, m2;
        mk_q4k_scale_min(sc, 2 * c, &s1, &m1);
        mk_q4k_scale_min(sc, 2 * c + 1, &s2, &m2);
        float d1 = d * (float)s1, o1 = dmin * (float)m1, d2 = d * (float)s2, o2 = dmin * (float)m2;
        const uint8_t *q = qs + 32 * c;
        for (int l = 0; l < 32; l++) {
          y[64 * c + l] = d1 * (float)(q[l] & 0xF) - o1;
          y[64 * c + 32 + l] = d2 * (float)(q[l] >> 4) - o2;
        }
      }
    } break;
    case MK_DQ_Q5_K: {
      float d = mk_dq_f16(mk_dq_u16(b)), dmin = mk_dq_f16(mk_dq_u16(b + MK_DQ_OFF(mk_block_q5_k, dmin)));
      const uint8_t *sc = b + MK_DQ_OFF(mk_block_q5_k, scales), *qh = b + MK_DQ_OFF(mk_block_q5_k, qh);
      const uint8_t *qs = b + MK_DQ_OFF(mk_block_q5_k, qs);
      for (int c = 0; c < 4; c++) {
        uint8_t s1, m1, s2, m2;
        mk_q4k_scale_min(sc, 2 * c, &s1, &m1);
        mk_q4k_scale_min(sc, 2 * c + 1, &s2, &m2);
        float d1 = d * (float)s1, o1 = dmin * (float)m1, d2 = d * (float)s2, o2 = dmin * (float)m2;
        const uint8_t *q = qs + 32 * c;
        int u1 = 1 << (2 * c), u2 = 2 << (2 * c);
        for (int l = 0; l < 32; l++) {
          y[64 * c + l] = d1 * (float)((q[l] & 0xF) + ((qh[l] & u1) ? 16 : 0)) - o1;
          y[64 * c + 32 + l] = d2 * (float)((q[l] >> 4) + ((qh[l] & u2) ? 16 : 0)) - o2;
        }
      }
    } break;
    case MK_DQ_Q6_K: {
      const uint8_t *ql = b + MK_DQ_OFF(mk_block_q6_k, ql), *qh = b + MK_DQ_OFF(mk_block_q6_k, qh);
      const int8_t *sc = (const int8_t *)(b + MK_DQ_OFF(mk_block_q6_k, scales));
      float d = mk_dq_f16(mk_dq_u16(b + MK_DQ_OFF(mk_block_q6_k, d)));
      for (int h = 0; h < 2; h++) {
        const uint8_t *l4 = ql + 64 * h, *h2 = qh + 32 * h;
        const int8_t *s = sc + 8 * h;
        float *o = y + 128 * h;
        for (int l = 0; l < 32; l++) {
          int is = l / 16;
          int q1 = (int)((l4[l] & 0xF) | (((h2[l] >> 0) & 3) << 4)) - 32;
          int q2 = (int)((l4[l + 32] & 0xF) | (((h2[l] >> 2) & 3) << 4)) - 32;
          int q3 = (int)((l4[l] >> 4) | (((h2[l] >> 4) & 3) << 4)) - 32;
          int q4 = (int)((l4[l + 32] >> 4) | (((h2[l] >> 6) & 3) << 4)) - 32;
          o[l] = d * (float)s[is] * (float)q1;
          o[l + 32] = d * (float)s[is + 2] * (float)q2;
          o[l + 64] = d * (float)s[is + 4] * (float)q3;
          o[l + 96] = d * (float)s[is + 6] * (float)q4;
        }
      }
    } break;
    default: break;
  }
}

#if defined(__CUDACC__) || defined(MK_CUDA_EMU)
/* dst[0 .. n_blocks * block_elems) = bf16 of the n_blocks consecutive blocks at src (device). */
void mk_cuda_dequant_bf16(int type, const void *src, int64_t n_blocks, __nv_bfloat16 *dst,
                          cudaStream_t stream);
#endif

#endif
