/* GGML on-disk block layouts (as stored in GGUF tensor data), shared by the CPU kernels and,
 * later, the CUDA kernels. Every struct is packed by construction (only 1- and 2-byte members
 * before any 4-byte member at a 4-byte offset) and carries a static size assert, so reading a
 * block is a plain cast of the mapped bytes.
 *
 * Element order inside a block (the facts the kernels rely on; x[i] is element i of the block):
 *   Q4_0/Q4_1:  x[i] = lo nibble of qs[i], x[i+16] = hi nibble of qs[i]          (i < 16)
 *   Q5_0/Q5_1:  the same nibbles, plus bit i of the little-endian u32 qh as bit 4 of x[i] (i < 32)
 *   Q4_0: d*(q-8)   Q4_1: d*q + m   Q5_0: d*(q-16)   Q5_1: d*q + m   Q8_0: d*q (q signed)
 *   Q4_K/Q5_K: 8 sub-blocks of 32 with 6-bit scale sc[j] and min m[j] (packed, see
 *     mk_q4k_scale_min); x = d*sc[j]*q - dmin*m[j]; for 64-chunk c: lo nibbles of qs[32c+i]
 *     -> element 64c+i, hi nibbles -> 64c+32+i; Q5_K: bit j of qh[i] is bit 4 of element 32j+i.
 *   Q6_K: 16 sub-blocks of 16, int8 scales; x = d*sc[j]*(q-32), q 6 bits; for half h (128 elems):
 *     ql[64h+i] lo nibble -> 128h+i, hi nibble -> 128h+64+i (i < 64);
 *     bits 2s..2s+1 of qh[32h+i] are bits 4..5 of element 128h+32s+i (i < 32).
 *   Q2_K: 16 sub-blocks of 16, scales[j] = sc | m<<4; x = d*sc*q - dmin*m; q = bits 2s..2s+1
 *     of qs[32h+i] for element 128h+32s+i.
 *   Q3_K: 16 sub-blocks of 16, 6-bit scales (minus 32) packed in 12 bytes; low 2 bits of q as in
 *     Q2_K; bit k of hmask[i] set for element 32k+i means +0, clear means -4; x = d*sc*q.
 *   Q8_K: d (fp32) * qs[i]; bsums[j] = sum of qs over 16-element group j.
 */
#ifndef MK_QUANT_BLOCKS_H
#define MK_QUANT_BLOCKS_H

#include <stdint.h>

/* The header is also compiled as C++ / CUDA (the GPU kernels read the same blocks). */
#ifdef __cplusplus
#define MK_STATIC_ASSERT static_assert
#else
#define MK_STATIC_ASSERT _Static_assert
#endif
#ifdef __CUDACC__
#define MK_HD __host__ __device__
#else
#define MK_HD
#endif

#define MK_QK 32   /* elements per block of the simple types */
#define MK_QK_K 256 /* elements per super-block of the K types */
#define MK_K_SCALE_SIZE 12

typedef uint16_t mk_half_t; /* IEEE binary16 bits */

typedef struct {
  mk_half_t d;
  uint8_t qs[MK_QK / 2];
} mk_block_q4_0;
MK_STATIC_ASSERT(sizeof(mk_block_q4_0) == 18, "q4_0 block size");

typedef struct {
  mk_half_t d, m;
  uint8_t qs[MK_QK / 2];
} mk_block_q4_1;
MK_STATIC_ASSERT(sizeof(mk_block_q4_1) == 20, "q4_1 block size");

typedef struct {
  mk_half_t d;
  uint8_t qh[4];
  uint8_t qs[MK_QK / 2];
} mk_block_q5_0;
MK_STATIC_ASSERT(sizeof(mk_block_q5_0) == 22, "q5_0 block size");

typedef struct {
  mk_half_t d, m;
  uint8_t qh[4];
  uint8_t qs[MK_QK / 2];
} mk_block_q5_1;
MK_STATIC_ASSERT(sizeof(mk_block_q5_1) == 24, "q5_1 block size");

typedef struct {
  mk_half_t d;
  int8_t qs[MK_QK];
} mk_block_q8_0;
MK_STATIC_ASSERT(sizeof(mk_block_q8_0) == 34, "q8_0 block size");

/* Current GGML layout (two halves: d and s = d*sum(qs)). Older files used two floats (40 bytes);
 * Q8_1 is an intermediate type that GGUF files do not carry in practice. */
typedef struct {
  mk_half_t d, s;
  int8_t qs[MK_QK];
} mk_block_q8_1;
MK_STATIC_ASSERT(sizeof(mk_block_q8_1) == 36, "q8_1 block size");

typedef struct {
  uint8_t scales[MK_QK_K / 16]; /* lo 4 bits scale, hi 4 bits min */
  uint8_t qs[MK_QK_K / 4];
  mk_half_t d, dmin;
} mk_block_q2_k;
MK_STATIC_ASSERT(sizeof(mk_block_q2_k) == 84, "q2_K block size");

typedef struct {
  uint8_t hmask[MK_QK_K / 8];
  uint8_t qs[MK_QK_K / 4];
  uint8_t scales[12];
  mk_half_t d;
} mk_block_q3_k;
MK_STATIC_ASSERT(sizeof(mk_block_q3_k) == 110, "q3_K block size");

typedef struct {
  mk_half_t d, dmin;
  uint8_t scales[MK_K_SCALE_SIZE];
  uint8_t qs[MK_QK_K / 2];
} mk_block_q4_k;
MK_STATIC_ASSERT(sizeof(mk_block_q4_k) == 144, "q4_K block size");

typedef struct {
  mk_half_t d, dmin;
  uint8_t scales[MK_K_SCALE_SIZE];
  uint8_t qh[MK_QK_K / 8];
  uint8_t qs[MK_QK_K / 2];
} mk_block_q5_k;
MK_STATIC_ASSERT(sizeof(mk_block_q5_k) == 176, "q5_K block size");

typedef struct {
  uint8_t ql[MK_QK_K / 2];
  uint8_t qh[MK_QK_K / 4];
  int8_t scales[MK_QK_K / 16];
  mk_half_t d;
} mk_block_q6_k;
MK_STATIC_ASSERT(sizeof(mk_block_q6_k) == 210, "q6_K block size");

typedef struct {
  float d;
  int8_t qs[MK_QK_K];
  int16_t bsums[MK_QK_K / 16];
} mk_block_q8_k;
MK_STATIC_ASSERT(sizeof(mk_block_q8_k) == 292, "q8_K block size");

/* Q4_K/Q5_K: 6-bit scale and min of sub-block j (0..7) from the 12 packed bytes.
 * Bytes 0-3: scales 0-3 in bits 0-5, bits 6-7 are bits 4-5 of scales 4-7; bytes 4-7: the same
 * for mins; bytes 8-11: lo nibble = bits 0-3 of scale 4+i, hi nibble = bits 0-3 of min 4+i. */
static inline MK_HD void mk_q4k_scale_min(const uint8_t *s, int j, uint8_t *sc, uint8_t *m) {
  if (j < 4) {
    *sc = s[j] & 63;
    *m = s[j + 4] & 63;
  } else {
    *sc = (uint8_t)((s[j + 4] & 0x0F) | ((s[j - 4] >> 6) << 4));
    *m = (uint8_t)((s[j + 4] >> 4) | ((s[j] >> 6) << 4));
  }
}

/* Q3_K: signed scale of sub-block j (0..15) from the 12 packed bytes: lo 4 bits in byte j (j<8,
 * lo nibble) or byte j-8 (hi nibble); hi 2 bits at bits 2*(j/4) of byte 8 + j%4; minus 32. */
static inline MK_HD int mk_q3k_scale(const uint8_t *s, int j) {
  int lo = j < 8 ? (s[j] & 0x0F) : (s[j - 8] >> 4);
  int hi = (s[8 + (j & 3)] >> (2 * (j >> 2))) & 3;
  return (lo | (hi << 4)) - 32;
}

#endif
