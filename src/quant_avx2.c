/* AVX2 + FMA + F16C kernels (compiled with -mavx2 -mfma -mf16c; used only when CPUID says so).
 *
 * Matmul micro-kernels take one weight row and up to MK_AVX2_TT tokens: each weight block is
 * loaded and unpacked once and multiplied with every token of the tile (prefill reuse). With one
 * or two tokens the block loop keeps two accumulator sets so the fp32 FMA chains do not bound
 * the loop. Integer products: _mm256_maddubs_epi16(unsigned weight codes, int8 activations),
 * pairs summed with _mm256_madd_epi16; no int16 saturation is possible because weight codes
 * are <= 63 (Q8_0 uses |w| <= 128 with the sign moved onto the activation: 2*128*127 < 32768).
 * The arithmetic per type is the one written down in quant_ref.c. */
/* The ISA is also set here (not only by the build's per-file flags) so this file is correct
 * whatever flags it is compiled with; everything below is only called after a CPUID check. */
#ifndef __clang__ /* clang 14 has no GCC target pragma: it relies on the per-file -m flags */
#pragma GCC target("avx2,fma,f16c")
#endif
#include <immintrin.h>
#include <string.h>

#include "src/quant_internal.h"

#define MK_AVX2_TT 4 /* tokens per micro-kernel call */
#define AI static inline __attribute__((always_inline))

AI float hsum_ps(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

AI float half_to_f32(uint16_t h) { return _cvtsh_ss(h); }

AI uint16_t ld_u16(const void *p) {
  uint16_t v;
  memcpy(&v, p, 2);
  return v;
}
AI uint32_t ld_u32(const void *p) {
  uint32_t v;
  memcpy(&v, p, 4);
  return v;
}

/* 16 bytes of packed nibbles -> 32 bytes: lo nibbles then hi nibbles. */
AI __m256i unpack_nibbles(const uint8_t *qs) {
  __m128i q = _mm_loadu_si128((const __m128i *)qs);
  __m256i v = _mm256_set_m128i(_mm_srli_epi16(q, 4), q);
  return _mm256_and_si256(v, _mm256_set1_epi8(0x0F));
}

/* 32 bits -> 32 bytes, byte i = 0x10 if bit i set else 0 (the 5th bit of Q5 codes). */
AI __m256i bits_to_0x10(uint32_t bits) {
  const __m256i shuf = _mm256_set_epi64x(0x0303030303030303LL, 0x0202020202020202LL,
                                         0x0101010101010101LL, 0x0000000000000000LL);
  __m256i v = _mm256_shuffle_epi8(_mm256_set1_epi32((int)bits), shuf);
  const __m256i sel = _mm256_set1_epi64x((long long)0x8040201008040201ULL);
  v = _mm256_cmpeq_epi8(_mm256_and_si256(v, sel), sel);
  return _mm256_and_si256(v, _mm256_set1_epi8(0x10));
}

/* unsigned codes (<= 128) x int8 -> 8 int32 partial sums */
AI __m256i dot_u8s8(__m256i u, __m256i s) {
  return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1));
}

/* ---- simple 32-element block types: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 ------------------------ */

/* One weight block, decoded: codes, scale, and the coefficient of x.s (min or scale). */
typedef struct {
  __m256i q;   /* unsigned codes, or |w| for Q8_0 */
  __m256i sgn; /* Q8_0: w itself (sign source) */
  float d, mc;
} blk32_t;

AI blk32_t decode_blk32(mk_type_t ty, const uint8_t *p) {
  blk32_t k;
  k.sgn = _mm256_setzero_si256();
  k.mc = 0.0f;
  switch (ty) {
    case MK_TYPE_Q4_0: {
      const mk_block_q4_0 *b = (const mk_block_q4_0 *)p;
      k.q = unpack_nibbles(b->qs);
      k.d = k.mc = half_to_f32(ld_u16(&b->d));
      break;
    }
    case MK_TYPE_Q4_1: {
      const mk_block_q4_1 *b = (const mk_block_q4_1 *)p;
      k.q = unpack_nibbles(b->qs);
      __m128 dm = _mm_cvtph_ps(_mm_cvtsi32_si128((int)ld_u32(&b->d)));
      k.d = _mm_cvtss_f32(dm);
      k.mc = _mm_cvtss_f32(_mm_movehdup_ps(dm));
      break;
    }
    case MK_TYPE_Q5_0: {
      const mk_block_q5_0 *b = (const mk_block_q5_0 *)p;
      k.q = _mm256_or_si256(unpack_nibbles(b->qs), bits_to_0x10(ld_u32(b->qh)));
      k.d = k.mc = half_to_f32(ld_u16(&b->d));
      break;
    }
    case MK_TYPE_Q5_1: {
      const mk_block_q5_1 *b = (const mk_block_q5_1 *)p;
      k.q = _mm256_or_si256(unpack_nibbles(b->qs), bits_to_0x10(ld_u32(b->qh)));
      __m128 dm = _mm_cvtph_ps(_mm_cvtsi32_si128((int)ld_u32(&b->d)));
      k.d = _mm_cvtss_f32(dm);
      k.mc = _mm_cvtss_f32(_mm_movehdup_ps(dm));
      break;
    }
    default: { /* Q8_0 */
      const mk_block_q8_0 *b = (const mk_block_q8_0 *)p;
      k.sgn = _mm256_loadu_si256((const __m256i *)b->qs);
      k.q = _mm256_sign_epi8(k.sgn, k.sgn);
      k.d = half_to_f32(ld_u16(&b->d));
      break;
    }
  }
  return k;
}

/* y[t*ys] = dot(row, token t) for t < T. */
AI void micro_blk32(mk_type_t ty, size_t bbytes, const uint8_t *row, int64_t cols,
                    const char *act, size_t stride, const int T, float *y, int64_t ys) {
  const int U = T <= 2 ? 2 : 1;
  int64_t nb = cols / 32;
  mk_xq_view_t x[MK_AVX2_TT];
  __m256 acc[MK_AVX2_TT][2];
  float macc[MK_AVX2_TT][2];
  for (int t = 0; t < T; t++) {
    x[t] = mk_xq_view(act + (size_t)t * stride, cols);
    for (int u = 0; u < 2; u++) {
      acc[t][u] = _mm256_setzero_ps();
      macc[t][u] = 0.0f;
    }
  }
  int64_t b = 0;
#define MK_BLK32_BODY(bi, u)                                                                 \
  do {                                                                                       \
    blk32_t k = decode_blk32(ty, row + (size_t)(bi) * bbytes);                               \
    for (int t = 0; t < T; t++) {                                                            \
      __m256i xv = _mm256_loadu_si256((const __m256i *)(x[t].qs + 32 * (bi)));               \
      if (ty == MK_TYPE_Q8_0) xv = _mm256_sign_epi8(xv, k.sgn);                              \
      __m256 p = _mm256_cvtepi32_ps(dot_u8s8(k.q, xv));                                      \
      acc[t][u] = _mm256_fmadd_ps(p, _mm256_set1_ps(k.d * x[t].d[bi]), acc[t][u]);           \
      if (ty != MK_TYPE_Q8_0) macc[t][u] += k.mc * x[t].s[bi];                               \
    }                                                                                        \
  } while (0)
  if (U == 2) {
    for (; b + 2 <= nb; b += 2) {
      MK_BLK32_BODY(b, 0);
      MK_BLK32_BODY(b + 1, 1);
    }
  }
  for (; b < nb; b++) MK_BLK32_BODY(b, 0);
#undef MK_BLK32_BODY
  float kmin = ty == MK_TYPE_Q4_0 ? -8.0f : ty == MK_TYPE_Q5_0 ? -16.0f : 1.0f;
  for (int t = 0; t < T; t++)
    y[t * ys] = hsum_ps(_mm256_add_ps(acc[t][0], acc[t][1])) + kmin * (macc[t][0] + macc[t][1]);
}

/* ---- K types ----------------------------------------------------------------------------- */

/* Q4_K / Q5_K: 8 sub-blocks of 32 = 8 activation blocks per super-block. */
AI void micro_q45k(bool five, const uint8_t *row, int64_t cols, const char *act, size_t stride,
                   const int T, float *y, int64_t ys) {
  int64_t nk = cols / MK_QK_K;
  size_t bbytes = five ? sizeof(mk_block_q5_k) : sizeof(mk_block_q4_k);
  mk_xq_view_t x[MK_AVX2_TT];
  __m256 acc[MK_AVX2_TT], macc[MK_AVX2_TT];
  for (int t = 0; t < T; t++) {
    x[t] = mk_xq_view(act + (size_t)t * stride, cols);
    acc[t] = macc[t] = _mm256_setzero_ps();
  }
  const __m256i m0f = _mm256_set1_epi8(0x0F);
  for (int64_t k = 0; k < nk; k++) {
    const uint8_t *p = row + (size_t)k * bbytes;
    const uint8_t *scales, *qs, *qhp = NULL;
    uint16_t hd, hdmin;
    if (five) {
      const mk_block_q5_k *bk = (const mk_block_q5_k *)p;
      hd = ld_u16(&bk->d), hdmin = ld_u16(&bk->dmin);
      scales = bk->scales, qs = bk->qs, qhp = bk->qh;
    } else {
      const mk_block_q4_k *bk = (const mk_block_q4_k *)p;
      hd = ld_u16(&bk->d), hdmin = ld_u16(&bk->dmin);
      scales = bk->scales, qs = bk->qs;
    }
    float d = half_to_f32(hd), dmin = half_to_f32(hdmin);
    int32_t sc[8], mn[8];
    for (int j = 0; j < 8; j++) {
      uint8_t a, m;
      mk_q4k_scale_min(scales, j, &a, &m);
      sc[j] = a, mn[j] = m;
    }
    __m256 scf = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_loadu_si256((const __m256i *)sc)),
                               _mm256_set1_ps(d));
    __m256 mnf = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_loadu_si256((const __m256i *)mn)),
                               _mm256_set1_ps(dmin));
    float scl[MK_AVX2_TT][8];
    for (int t = 0; t < T; t++) {
      __m256 dx = _mm256_loadu_ps(x[t].d + 8 * k);
      _mm256_storeu_ps(scl[t], _mm256_mul_ps(scf, dx));
      macc[t] = _mm256_fmadd_ps(mnf, _mm256_loadu_ps(x[t].s + 8 * k), macc[t]);
    }
    __m256i qh = five ? _mm256_loadu_si256((const __m256i *)qhp) : _mm256_setzero_si256();
    for (int c = 0; c < 4; c++) {
      __m256i q = _mm256_loadu_si256((const __m256i *)(qs + 32 * c));
      __m256i w0 = _mm256_and_si256(q, m0f);
      __m256i w1 = _mm256_and_si256(_mm256_srli_epi16(q, 4), m0f);
      if (five) {
        const __m256i b10 = _mm256_set1_epi8(0x10);
        /* bit 2c / 2c+1 of each qh byte -> 0x10 */
        __m256i h0 = 2 * c <= 4 ? _mm256_slli_epi16(qh, 4 - 2 * c) : _mm256_srli_epi16(qh, 2 * c - 4);
        __m256i h1 = 2 * c + 1 <= 4 ? _mm256_slli_epi16(qh, 3 - 2 * c)
                                    : _mm256_srli_epi16(qh, 2 * c - 3);
        w0 = _mm256_or_si256(w0, _mm256_and_si256(h0, b10));
        w1 = _mm256_or_si256(w1, _mm256_and_si256(h1, b10));
      }
      for (int t = 0; t < T; t++) {
        const int8_t *xq = x[t].qs + (size_t)k * MK_QK_K + 64 * c;
        __m256 p0 = _mm256_cvtepi32_ps(dot_u8s8(w0, _mm256_loadu_si256((const __m256i *)xq)));
        __m256 p1 = _mm256_cvtepi32_ps(dot_u8s8(w1, _mm256_loadu_si256((const __m256i *)(xq + 32))));
        acc[t] = _mm256_fmadd_ps(p0, _mm256_set1_ps(scl[t][2 * c]), acc[t]);
        acc[t] = _mm256_fmadd_ps(p1, _mm256_set1_ps(scl[t][2 * c + 1]), acc[t]);
      }
    }
  }
  for (int t = 0; t < T; t++) y[t * ys] = hsum_ps(acc[t]) - hsum_ps(macc[t]);
}

/* Scale vector for an activation block made of two 16-element sub-blocks:
 * lanes 0-3 = f[0]*dx, lanes 4-7 = f[1]*dx (matches madd output lanes 0-3 / 4-7). */
AI __m256 pair_scale(const float *f, float dx) {
  __m128 two = _mm_castpd_ps(_mm_load_sd((const double *)f));
  two = _mm_mul_ps(two, _mm_set1_ps(dx));
  return _mm256_permutevar8x32_ps(_mm256_castps128_ps256(two), _mm256_set_epi32(1, 1, 1, 1, 0, 0, 0, 0));
}

/* Q6_K, Q3_K, Q2_K: 16 sub-blocks of 16. Codes are unsigned (Q6_K 0..63, Q3_K 0..7 with a -4
 * offset, Q2_K 0..3 with mins); the offset/min part is sum_b dx_b * (c0*bs0 + c1*bs1), done per
 * super-block with madd over the 16 int16 block sums. */
AI void micro_k16(mk_type_t ty, const uint8_t *row, int64_t cols, const char *act, size_t stride,
                  const int T, float *y, int64_t ys) {
  int64_t nk = cols / MK_QK_K;
  size_t bbytes = ty == MK_TYPE_Q6_K ? sizeof(mk_block_q6_k)
                  : ty == MK_TYPE_Q3_K ? sizeof(mk_block_q3_k)
                                       : sizeof(mk_block_q2_k);
  mk_xq_view_t x[MK_AVX2_TT];
  __m256 acc[MK_AVX2_TT], oacc[MK_AVX2_TT];
  for (int t = 0; t < T; t++) {
    x[t] = mk_xq_view(act + (size_t)t * stride, cols);
    acc[t] = oacc[t] = _mm256_setzero_ps();
  }
  const __m256i m03 = _mm256_set1_epi8(3), m0f = _mm256_set1_epi8(0x0F);
  for (int64_t k = 0; k < nk; k++) {
    const uint8_t *p = row + (size_t)k * bbytes;
    float d, dof;         /* scale; coefficient of the offset/min part */
    int16_t sc[16], oc[16]; /* per sub-block scale, offset coefficient */
    if (ty == MK_TYPE_Q6_K) {
      const mk_block_q6_k *bk = (const mk_block_q6_k *)p;
      d = half_to_f32(ld_u16(&bk->d));
      dof = -32.0f * d;
      for (int j = 0; j < 16; j++) sc[j] = oc[j] = bk->scales[j];
    } else if (ty == MK_TYPE_Q3_K) {
      const mk_block_q3_k *bk = (const mk_block_q3_k *)p;
      d = half_to_f32(ld_u16(&bk->d));
      dof = -4.0f * d;
      for (int j = 0; j < 16; j++) sc[j] = oc[j] = (int16_t)mk_q3k_scale(bk->scales, j);
    } else {
      const mk_block_q2_k *bk = (const mk_block_q2_k *)p;
      d = half_to_f32(ld_u16(&bk->d));
      dof = -half_to_f32(ld_u16(&bk->dmin));
      for (int j = 0; j < 16; j++) sc[j] = bk->scales[j] & 0x0F, oc[j] = bk->scales[j] >> 4;
    }
    float scf[16];
    {
      __m256 dv = _mm256_set1_ps(d);
      __m128i s8 = _mm256_castsi256_si128(_mm256_loadu_si256((const __m256i *)sc));
      __m128i s8h = _mm256_extracti128_si256(_mm256_loadu_si256((const __m256i *)sc), 1);
      _mm256_storeu_ps(scf, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi16_epi32(s8)), dv));
      _mm256_storeu_ps(scf + 8, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi16_epi32(s8h)), dv));
    }
    __m256i ocv = _mm256_loadu_si256((const __m256i *)oc);
    for (int t = 0; t < T; t++) {
      __m256i bs = _mm256_loadu_si256((const __m256i *)(x[t].bsum + 16 * k));
      __m256 cb = _mm256_cvtepi32_ps(_mm256_madd_epi16(ocv, bs)); /* c0*bs0 + c1*bs1 per block */
      __m256 dx = _mm256_loadu_ps(x[t].d + 8 * k);
      oacc[t] = _mm256_fmadd_ps(_mm256_mul_ps(cb, dx), _mm256_set1_ps(dof), oacc[t]);
    }
    for (int h = 0; h < 2; h++) {
      __m256i q[4];
      if (ty == MK_TYPE_Q6_K) {
        const mk_block_q6_k *bk = (const mk_block_q6_k *)p;
        __m256i l0 = _mm256_loadu_si256((const __m256i *)(bk->ql + 64 * h));
        __m256i l1 = _mm256_loadu_si256((const __m256i *)(bk->ql + 64 * h + 32));
        __m256i hh = _mm256_loadu_si256((const __m256i *)(bk->qh + 32 * h));
        const __m256i m30 = _mm256_set1_epi8(0x30);
        q[0] = _mm256_or_si256(_mm256_and_si256(l0, m0f), _mm256_and_si256(_mm256_slli_epi16(hh, 4), m30));
        q[1] = _mm256_or_si256(_mm256_and_si256(l1, m0f), _mm256_and_si256(_mm256_slli_epi16(hh, 2), m30));
        q[2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), m0f), _mm256_and_si256(hh, m30));
        q[3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), m0f),
                               _mm256_and_si256(_mm256_srli_epi16(hh, 2), m30));
      } else {
        const uint8_t *qsp = ty == MK_TYPE_Q3_K ? ((const mk_block_q3_k *)p)->qs : ((const mk_block_q2_k *)p)->qs;
        __m256i l = _mm256_loadu_si256((const __m256i *)(qsp + 32 * h));
        q[0] = _mm256_and_si256(l, m03);
        q[1] = _mm256_and_si256(_mm256_srli_epi16(l, 2), m03);
        q[2] = _mm256_and_si256(_mm256_srli_epi16(l, 4), m03);
        q[3] = _mm256_and_si256(_mm256_srli_epi16(l, 6), m03);
        if (ty == MK_TYPE_Q3_K) {
          __m256i hm = _mm256_loadu_si256((const __m256i *)((const mk_block_q3_k *)p)->hmask);
          const __m256i b4 = _mm256_set1_epi8(4);
          for (int s = 0; s < 4; s++) { /* bit 4h+s of hmask[i] -> +4 */
            int bit = 4 * h + s;
            __m256i hb = bit <= 2 ? _mm256_slli_epi16(hm, 2 - bit) : _mm256_srli_epi16(hm, bit - 2);
            q[s] = _mm256_or_si256(q[s], _mm256_and_si256(hb, b4));
          }
        }
      }
      for (int s = 0; s < 4; s++) {
        int jb = 4 * h + s; /* activation block within the super-block */
        for (int t = 0; t < T; t++) {
          const int8_t *xq = x[t].qs + (size_t)k * MK_QK_K + 32 * jb;
          __m256 pr = _mm256_cvtepi32_ps(dot_u8s8(q[s], _mm256_loadu_si256((const __m256i *)xq)));
          acc[t] = _mm256_fmadd_ps(pr, pair_scale(scf + 2 * jb, x[t].d[8 * k + jb]), acc[t]);
        }
      }
    }
  }
  for (int t = 0; t < T; t++) y[t * ys] = hsum_ps(acc[t]) + hsum_ps(oacc[t]);
}

/* ---- float weights ----------------------------------------------------------------------- */

AI __m256 load8_w(mk_type_t ty, const uint8_t *row, int64_t i) {
  if (ty == MK_TYPE_F32) return _mm256_loadu_ps((const float *)row + i);
  __m128i h = _mm_loadu_si128((const __m128i *)(row + 2 * i));
  if (ty == MK_TYPE_F16) return _mm256_cvtph_ps(h);
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

AI float load1_w(mk_type_t ty, const uint8_t *row, int64_t i) {
  if (ty == MK_TYPE_F32) {
    float f;
    memcpy(&f, row + 4 * i, 4);
    return f;
  }
  uint16_t h = ld_u16(row + 2 * i);
  return ty == MK_TYPE_F16 ? mk_f16_to_f32(h) : mk_bf16_to_f32(h);
}

AI void micro_float(mk_type_t ty, const uint8_t *row, int64_t cols, const char *act, size_t stride,
                    const int T, float *y, int64_t ys) {
  const int U = T <= 2 ? 2 : 1;
  __m256 acc[MK_AVX2_TT][2];
  const float *x[MK_AVX2_TT];
  for (int t = 0; t < T; t++) {
    x[t] = (const float *)(act + (size_t)t * stride);
    acc[t][0] = acc[t][1] = _mm256_setzero_ps();
  }
  int64_t i = 0;
  for (; i + 8 * U <= cols; i += 8 * U)
    for (int u = 0; u < U; u++) {
      __m256 w = load8_w(ty, row, i + 8 * u);
      for (int t = 0; t < T; t++)
        acc[t][u] = _mm256_fmadd_ps(w, _mm256_loadu_ps(x[t] + i + 8 * u), acc[t][u]);
    }
  for (; i + 8 <= cols; i += 8) {
    __m256 w = load8_w(ty, row, i);
    for (int t = 0; t < T; t++) acc[t][0] = _mm256_fmadd_ps(w, _mm256_loadu_ps(x[t] + i), acc[t][0]);
  }
  for (int t = 0; t < T; t++) {
    float s = hsum_ps(_mm256_add_ps(acc[t][0], acc[t][1]));
    for (int64_t j = i; j < cols; j++) s += load1_w(ty, row, j) * x[t][j];
    y[t * ys] = s;
  }
}

/* ---- row-range drivers ------------------------------------------------------------------- */

/* Expands to a mk_rows_fn that walks rows and token tiles of MK_AVX2_TT, calling
 * CALL(row, act_tile, T, y_tile) with a compile-time T. */
#define MK_AVX2_ROWS(name, CALL)                                                               \
  void name(const mk_qmat_t *w, int64_t r0, int64_t r1, const void *act, size_t stride, \
                   int64_t n_tok, float *y, int64_t ys) {                                      \
    int64_t cols = w->cols;                                                                    \
    (void)cols;                                                                                \
    for (int64_t r = r0; r < r1; r++) {                                                        \
      const uint8_t *row = (const uint8_t *)w->data + (size_t)r * w->row_bytes;                \
      for (int64_t t0 = 0; t0 < n_tok; t0 += MK_AVX2_TT) {                                     \
        const char *a = (const char *)act + (size_t)t0 * stride;                               \
        float *yt = y + t0 * ys + r;                                                           \
        switch (n_tok - t0 < MK_AVX2_TT ? n_tok - t0 : MK_AVX2_TT) {                           \
          case 1: CALL(row, a, 1, yt); break;                                                  \
          case 2: CALL(row, a, 2, yt); break;                                                  \
          case 3: CALL(row, a, 3, yt); break;                                                  \
          default: CALL(row, a, 4, yt); break;                                                 \
        }                                                                                      \
      }                                                                                        \
    }                                                                                          \
  }

#define CALL_Q4_0(row, a, T, yt) micro_blk32(MK_TYPE_Q4_0, sizeof(mk_block_q4_0), row, cols, a, stride, T, yt, ys)
#define CALL_Q4_1(row, a, T, yt) micro_blk32(MK_TYPE_Q4_1, sizeof(mk_block_q4_1), row, cols, a, stride, T, yt, ys)
#define CALL_Q5_0(row, a, T, yt) micro_blk32(MK_TYPE_Q5_0, sizeof(mk_block_q5_0), row, cols, a, stride, T, yt, ys)
#define CALL_Q5_1(row, a, T, yt) micro_blk32(MK_TYPE_Q5_1, sizeof(mk_block_q5_1), row, cols, a, stride, T, yt, ys)
#define CALL_Q8_0(row, a, T, yt) micro_blk32(MK_TYPE_Q8_0, sizeof(mk_block_q8_0), row, cols, a, stride, T, yt, ys)
#define CALL_Q4_K(row, a, T, yt) micro_q45k(false, row, cols, a, stride, T, yt, ys)
#define CALL_Q5_K(row, a, T, yt) micro_q45k(true, row, cols, a, stride, T, yt, ys)
#define CALL_Q6_K(row, a, T, yt) micro_k16(MK_TYPE_Q6_K, row, cols, a, stride, T, yt, ys)
#define CALL_Q3_K(row, a, T, yt) micro_k16(MK_TYPE_Q3_K, row, cols, a, stride, T, yt, ys)
#define CALL_Q2_K(row, a, T, yt) micro_k16(MK_TYPE_Q2_K, row, cols, a, stride, T, yt, ys)
#define CALL_F32(row, a, T, yt) micro_float(MK_TYPE_F32, row, cols, a, stride, T, yt, ys)
#define CALL_F16(row, a, T, yt) micro_float(MK_TYPE_F16, row, cols, a, stride, T, yt, ys)
#define CALL_BF16(row, a, T, yt) micro_float(MK_TYPE_BF16, row, cols, a, stride, T, yt, ys)

MK_AVX2_ROWS(mk_avx2_rows_q4_0, CALL_Q4_0)
MK_AVX2_ROWS(mk_avx2_rows_q4_1, CALL_Q4_1)
MK_AVX2_ROWS(mk_avx2_rows_q5_0, CALL_Q5_0)
MK_AVX2_ROWS(mk_avx2_rows_q5_1, CALL_Q5_1)
MK_AVX2_ROWS(mk_avx2_rows_q8_0, CALL_Q8_0)
MK_AVX2_ROWS(mk_avx2_rows_q4_k, CALL_Q4_K)
MK_AVX2_ROWS(mk_avx2_rows_q5_k, CALL_Q5_K)
MK_AVX2_ROWS(mk_avx2_rows_q6_k, CALL_Q6_K)
MK_AVX2_ROWS(mk_avx2_rows_q3_k, CALL_Q3_K)
MK_AVX2_ROWS(mk_avx2_rows_q2_k, CALL_Q2_K)
MK_AVX2_ROWS(mk_avx2_rows_f32, CALL_F32)
MK_AVX2_ROWS(mk_avx2_rows_f16, CALL_F16)
MK_AVX2_ROWS(mk_avx2_rows_bf16, CALL_BF16)

/* ---- activation quantization ------------------------------------------------------------- */

/* Bit-identical to mk_ref_quantize_xq: same amax, same 127/amax, same rounding (cvtps2dq under
 * the default round-to-nearest-even mode). */
static void quantize_xq_avx2(const float *x, int64_t cols, void *xq, int layout) {
  int64_t nb = cols / 32;
  char *base = (char *)xq;
  int8_t *qs = (int8_t *)base;
  float *d = (float *)(base + mk_xq_off_d(cols)), *s = d + nb;
  int16_t *bsum = (int16_t *)(s + nb);
  for (size_t i = (size_t)cols & ~(size_t)127; i < mk_xq_off_d(cols); i += 32)
    _mm256_storeu_si256((__m256i *)(qs + i), _mm256_setzero_si256()); /* zero padding */
  const __m256 absm = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
  for (int64_t b = 0; b < nb; b++) {
    __m256 v[4];
    for (int i = 0; i < 4; i++) v[i] = _mm256_loadu_ps(x + 32 * b + 8 * i);
    __m256 m = _mm256_max_ps(_mm256_max_ps(_mm256_and_ps(v[0], absm), _mm256_and_ps(v[1], absm)),
                             _mm256_max_ps(_mm256_and_ps(v[2], absm), _mm256_and_ps(v[3], absm)));
    __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
    float amax = _mm_cvtss_f32(m4);
    float id = amax > 0.0f ? 127.0f / amax : 0.0f;
    __m256 idv = _mm256_set1_ps(id);
    __m256i q[4];
    for (int i = 0; i < 4; i++) q[i] = _mm256_cvtps_epi32(_mm256_mul_ps(v[i], idv));
    /* sums over each 16-half */
    __m256i s01 = _mm256_add_epi32(q[0], q[1]), s23 = _mm256_add_epi32(q[2], q[3]);
    __m256i hs = _mm256_hadd_epi32(s01, s23); /* [a0+a1, a2+a3, b0+b1, b2+b3 | a4.., b4..] */
    hs = _mm256_hadd_epi32(hs, hs);           /* [A03, B03, ., . | A47, B47, ., .] */
    __m128i hs4 = _mm_add_epi32(_mm256_castsi256_si128(hs), _mm256_extracti128_si256(hs, 1));
    int sum0 = _mm_cvtsi128_si32(hs4), sum1 = _mm_extract_epi32(hs4, 1);
    __m256i p01 = _mm256_packs_epi32(q[0], q[1]), p23 = _mm256_packs_epi32(q[2], q[3]);
    __m256i p = _mm256_packs_epi16(p01, p23);
    p = _mm256_permutevar8x32_epi32(p, _mm256_set_epi32(7, 3, 6, 2, 5, 1, 4, 0));
    if (layout == MK_XQ_NATURAL) {
      _mm256_storeu_si256((__m256i *)(qs + 32 * b), p);
    } else {
      _mm_storeu_si128((__m128i *)(qs + mk_xq_pos(layout, 32 * b)), _mm256_castsi256_si128(p));
      _mm_storeu_si128((__m128i *)(qs + mk_xq_pos(layout, 32 * b + 16)), _mm256_extracti128_si256(p, 1));
    }
    d[b] = amax / 127.0f;
    s[b] = d[b] * (float)(sum0 + sum1);
    bsum[2 * b] = (int16_t)sum0;
    bsum[2 * b + 1] = (int16_t)sum1;
  }
}

/* ---- dequantization ---------------------------------------------------------------------- */

/* Same operations, in the same order, as the scalar reference: results are bit-identical. */
void mk_avx2_dequant_row(mk_type_t t, const void *src, float *dst, int64_t n) {
  const uint8_t *p = (const uint8_t *)src;
  switch (t) {
    case MK_TYPE_F16:
    case MK_TYPE_BF16: {
      int64_t i = 0;
      for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, load8_w(t, p, i));
      for (; i < n; i++) dst[i] = load1_w(t, p, i);
      return;
    }
    case MK_TYPE_Q8_0:
      for (int64_t b = 0; b < n / 32; b++) {
        const mk_block_q8_0 *bk = (const mk_block_q8_0 *)p + b;
        __m256 dv = _mm256_set1_ps(half_to_f32(ld_u16(&bk->d)));
        for (int i = 0; i < 4; i++) {
          __m256i q = _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(bk->qs + 8 * i)));
          _mm256_storeu_ps(dst + 32 * b + 8 * i, _mm256_mul_ps(dv, _mm256_cvtepi32_ps(q)));
        }
      }
      return;
    case MK_TYPE_Q4_0:
    case MK_TYPE_Q4_1:
      for (int64_t b = 0; b < n / 32; b++) {
        const uint8_t *bp = p + (size_t)b * mk_type_block_bytes(t);
        const uint8_t *qsp = t == MK_TYPE_Q4_0 ? ((const mk_block_q4_0 *)bp)->qs : ((const mk_block_q4_1 *)bp)->qs;
        __m256 dv = _mm256_set1_ps(half_to_f32(ld_u16(bp)));
        __m256 mv = _mm256_set1_ps(t == MK_TYPE_Q4_1 ? half_to_f32(ld_u16(bp + 2)) : 0.0f);
        __m256i q = unpack_nibbles(qsp);
        if (t == MK_TYPE_Q4_0) q = _mm256_sub_epi8(q, _mm256_set1_epi8(8));
        __m128i lanes[2] = {_mm256_castsi256_si128(q), _mm256_extracti128_si256(q, 1)};
        for (int i = 0; i < 4; i++) {
          __m128i src8 = (i & 1) ? _mm_srli_si128(lanes[i >> 1], 8) : lanes[i >> 1];
          __m256i qi = _mm256_cvtepi8_epi32(src8);
          __m256 f = _mm256_mul_ps(dv, _mm256_cvtepi32_ps(qi));
          if (t == MK_TYPE_Q4_1) f = _mm256_add_ps(f, mv);
          _mm256_storeu_ps(dst + 32 * b + 8 * i, f);
        }
      }
      return;
    default: mk_ref_dequant_row(t, src, dst, n); return;
  }
}

/* ---- vector kernels ---------------------------------------------------------------------- */

static float dot_f32_avx2(const float *a, const float *b, int64_t n) {
  __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
  int64_t i = 0;
  for (; i + 32 <= n; i += 32)
    for (int u = 0; u < 4; u++)
      acc[u] = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8 * u), _mm256_loadu_ps(b + i + 8 * u), acc[u]);
  for (; i + 8 <= n; i += 8) acc[0] = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc[0]);
  float s = hsum_ps(_mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3])));
  for (; i < n; i++) s += a[i] * b[i];
  return s;
}

static float dot_f16_avx2(const uint16_t *a, const float *b, int64_t n) {
  __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
  int64_t i = 0;
  for (; i + 32 <= n; i += 32)
    for (int u = 0; u < 4; u++)
      acc[u] = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(a + i + 8 * u))),
                               _mm256_loadu_ps(b + i + 8 * u), acc[u]);
  for (; i + 8 <= n; i += 8)
    acc[0] = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(a + i))),
                             _mm256_loadu_ps(b + i), acc[0]);
  float s = hsum_ps(_mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3])));
  for (; i < n; i++) s += half_to_f32(a[i]) * b[i];
  return s;
}

static void axpy_f32_avx2(float *y, float a, const float *x, int64_t n) {
  __m256 av = _mm256_set1_ps(a);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(y + i, _mm256_fmadd_ps(av, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
  for (; i < n; i++) y[i] += a * x[i];
}

static void axpy_f16_avx2(float *y, float a, const uint16_t *x, int64_t n) {
  __m256 av = _mm256_set1_ps(a);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(y + i, _mm256_fmadd_ps(av, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(x + i))),
                                            _mm256_loadu_ps(y + i)));
  for (; i < n; i++) y[i] += a * half_to_f32(x[i]);
}

static const mk_quant_impl_t mk_avx2_impl = {
    .quantize_xq = quantize_xq_avx2,
    .rows =
        {
            [MK_TYPE_F32] = mk_avx2_rows_f32,
            [MK_TYPE_F16] = mk_avx2_rows_f16,
            [MK_TYPE_BF16] = mk_avx2_rows_bf16,
            [MK_TYPE_Q4_0] = mk_avx2_rows_q4_0,
            [MK_TYPE_Q4_1] = mk_avx2_rows_q4_1,
            [MK_TYPE_Q5_0] = mk_avx2_rows_q5_0,
            [MK_TYPE_Q5_1] = mk_avx2_rows_q5_1,
            [MK_TYPE_Q8_0] = mk_avx2_rows_q8_0,
            [MK_TYPE_Q2_K] = mk_avx2_rows_q2_k,
            [MK_TYPE_Q3_K] = mk_avx2_rows_q3_k,
            [MK_TYPE_Q4_K] = mk_avx2_rows_q4_k,
            [MK_TYPE_Q5_K] = mk_avx2_rows_q5_k,
            [MK_TYPE_Q6_K] = mk_avx2_rows_q6_k,
        },
};

const mk_cpu_kernels_t mk_kernels_avx2 = {
    .level = MK_SIMD_AVX2,
    .dequant_row = mk_avx2_dequant_row,
    .dot_f32 = dot_f32_avx2,
    .dot_f16 = dot_f16_avx2,
    .axpy_f32 = axpy_f32_avx2,
    .axpy_f16 = axpy_f16_avx2,
    .impl = &mk_avx2_impl,
};
