/* Scalar reference kernels: the truth every SIMD table is tested against.
 *
 * dequant_row follows the GGML block formats (facts in src/quant_blocks.h), checked against the
 * `gguf` Python package by tests/unit/test_quant.c. The matmul row kernels implement the
 * quantized-activation math described in src/quant_internal.h; per 32-element activation block b
 * (scale dx = x.d[b], s = x.s[b], integer sums bs0/bs1 over its two 16-halves) and integer dot
 * products I (weight codes q as stored, unsigned except Q8_0) the formulas are:
 *   Q4_0: sum_b dw*dx*I - 8*sum_b dw*s          Q5_0: sum_b dw*dx*I - 16*sum_b dw*s
 *   Q4_1: sum_b dw*dx*I + sum_b m*s             Q5_1: the same      Q8_0: sum_b dw*dx*I
 *   Q4_K/Q5_K (sub-block j = block b): sum d*dx*(sc_j*I) - sum dmin*m_j*s
 *   Q6_K (16-sub-blocks j0, j1 of block b): sum d*dx*(sc0*(I0-32*bs0) + sc1*(I1-32*bs1))
 *   Q3_K: sum d*dx*(sc0*(I0-4*bs0) + sc1*(I1-4*bs1))  with q = lo2 | hbit<<2 in 0..7
 *   Q2_K: sum d*dx*(sc0*I0 + sc1*I1) - sum dmin*dx*(m0*bs0 + m1*bs1)
 * Everything integer is exact; SIMD kernels may only differ in fp32 summation order. */
#include <math.h>
#include <string.h>

#include "src/quant_internal.h"

#define F16(h) mk_f16_to_f32(h)

/* ---- dequantization ---------------------------------------------------------------------- */

/* The 32 codes of a 4-bit block: element i < 16 is the low nibble of qs[i], element i + 16 its
 * high nibble. A 5-bit block adds bit i of qh (a little-endian u32) as bit 4 of element i. */
static void codes_q4(const uint8_t *qs, int *q) {
  for (int i = 0; i < 16; i++) {
    q[i] = qs[i] & 0x0F;
    q[i + 16] = qs[i] >> 4;
  }
}

static uint32_t load_u32le(const uint8_t *p) {
  return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static void codes_q5(const uint8_t *qs, const uint8_t *qh, int *q) {
  uint32_t h = load_u32le(qh);
  codes_q4(qs, q);
  for (int i = 0; i < 32; i++) q[i] |= (int)((h >> i) & 1) << 4;
}

/* _0 types: y = d (q - offset); _1 types: y = d q + m. */
static void deq_q4_0(const mk_block_q4_0 *b, float *y) {
  int q[32];
  codes_q4(b->qs, q);
  float d = F16(b->d);
  for (int i = 0; i < 32; i++) y[i] = d * (float)(q[i] - 8);
}

static void deq_q4_1(const mk_block_q4_1 *b, float *y) {
  int q[32];
  codes_q4(b->qs, q);
  float d = F16(b->d), m = F16(b->m);
  for (int i = 0; i < 32; i++) y[i] = d * (float)q[i] + m;
}

static void deq_q5_0(const mk_block_q5_0 *b, float *y) {
  int q[32];
  codes_q5(b->qs, b->qh, q);
  float d = F16(b->d);
  for (int i = 0; i < 32; i++) y[i] = d * (float)(q[i] - 16);
}

static void deq_q5_1(const mk_block_q5_1 *b, float *y) {
  int q[32];
  codes_q5(b->qs, b->qh, q);
  float d = F16(b->d), m = F16(b->m);
  for (int i = 0; i < 32; i++) y[i] = d * (float)q[i] + m;
}

/* Q8_0 and Q8_1 share their codes and scale (Q8_1's extra sum is not needed to dequantize). */
static void deq_q8(mk_half_t dh, const int8_t *qs, float *y) {
  float d = F16(dh);
  for (int i = 0; i < 32; i++) y[i] = d * (float)qs[i];
}

static void deq_q2_k(const mk_block_q2_k *b, float *y) {
  float d = F16(b->d), dmin = F16(b->dmin);
  for (int e = 0; e < MK_QK_K; e++) {
    int h = e / 128, s = (e % 128) / 32, i = e % 32, j = e / 16;
    int q = (b->qs[32 * h + i] >> (2 * s)) & 3;
    y[e] = d * (float)(b->scales[j] & 0x0F) * (float)q - dmin * (float)(b->scales[j] >> 4);
  }
}

static void deq_q3_k(const mk_block_q3_k *b, float *y) {
  float d = F16(b->d);
  for (int e = 0; e < MK_QK_K; e++) {
    int h = e / 128, s = (e % 128) / 32, i = e % 32, k = e / 32, j = e / 16;
    int q = (b->qs[32 * h + i] >> (2 * s)) & 3;
    if (!((b->hmask[i] >> k) & 1)) q -= 4;
    y[e] = d * (float)mk_q3k_scale(b->scales, j) * (float)q;
  }
}

/* Q4_K and Q5_K share their super-block: 8 sub-blocks of 32 with 6-bit scales and mins, 4-bit
 * codes (sub-block j: nibble j & 1 of qs[32 (j / 2) ..]); Q5_K adds bit j of qh[i] as bit 4
 * (qh NULL for Q4_K). */
static void deq_k45(float d, float dmin, const uint8_t *scales, const uint8_t *qs, const uint8_t *qh, float *y) {
  for (int j = 0; j < 8; j++) {
    uint8_t sc, m;
    mk_q4k_scale_min(scales, j, &sc, &m);
    float dl = d * (float)sc, ml = dmin * (float)m;
    const uint8_t *q = qs + 32 * (j / 2);
    int shift = 4 * (j & 1);
    for (int i = 0; i < 32; i++) {
      int v = ((q[i] >> shift) & 0x0F) | (qh ? ((qh[i] >> j) & 1) << 4 : 0);
      y[32 * j + i] = dl * (float)v - ml;
    }
  }
}

static void deq_q4_k(const mk_block_q4_k *b, float *y) { deq_k45(F16(b->d), F16(b->dmin), b->scales, b->qs, NULL, y); }

static void deq_q5_k(const mk_block_q5_k *b, float *y) { deq_k45(F16(b->d), F16(b->dmin), b->scales, b->qs, b->qh, y); }

static void deq_q6_k(const mk_block_q6_k *b, float *y) {
  float d = F16(b->d);
  for (int e = 0; e < MK_QK_K; e++) {
    int h = e / 128, r = e % 128;
    int lo = (b->ql[64 * h + (r % 64)] >> (4 * (r / 64))) & 0x0F;
    int hi = (b->qh[32 * h + (r % 32)] >> (2 * (r / 32))) & 3;
    y[e] = d * (float)b->scales[e / 16] * (float)((lo | hi << 4) - 32);
  }
}

static void deq_q8_k(const mk_block_q8_k *b, float *y) {
  for (int i = 0; i < MK_QK_K; i++) y[i] = b->d * (float)b->qs[i];
}

void mk_ref_dequant_row(mk_type_t t, const void *src, float *dst, int64_t n) {
  const uint8_t *p = (const uint8_t *)src;
  int64_t be = mk_type_block_elems(t);
  size_t bb = mk_type_block_bytes(t);
  if (be <= 0) return;
  switch (t) {
    case MK_TYPE_F32: memcpy(dst, src, (size_t)n * sizeof(float)); return;
    case MK_TYPE_F16:
      for (int64_t i = 0; i < n; i++) {
        uint16_t h;
        memcpy(&h, p + 2 * i, 2);
        dst[i] = mk_f16_to_f32(h);
      }
      return;
    case MK_TYPE_BF16:
      for (int64_t i = 0; i < n; i++) {
        uint16_t h;
        memcpy(&h, p + 2 * i, 2);
        dst[i] = mk_bf16_to_f32(h);
      }
      return;
    default: break;
  }
  for (int64_t b = 0; b < n / be; b++, p += bb, dst += be) {
    switch (t) {
      case MK_TYPE_Q4_0: deq_q4_0((const mk_block_q4_0 *)p, dst); break;
      case MK_TYPE_Q4_1: deq_q4_1((const mk_block_q4_1 *)p, dst); break;
      case MK_TYPE_Q5_0: deq_q5_0((const mk_block_q5_0 *)p, dst); break;
      case MK_TYPE_Q5_1: deq_q5_1((const mk_block_q5_1 *)p, dst); break;
      case MK_TYPE_Q8_0: deq_q8(((const mk_block_q8_0 *)p)->d, ((const mk_block_q8_0 *)p)->qs, dst); break;
      case MK_TYPE_Q8_1: deq_q8(((const mk_block_q8_1 *)p)->d, ((const mk_block_q8_1 *)p)->qs, dst); break;
      case MK_TYPE_Q2_K: deq_q2_k((const mk_block_q2_k *)p, dst); break;
      case MK_TYPE_Q3_K: deq_q3_k((const mk_block_q3_k *)p, dst); break;
      case MK_TYPE_Q4_K: deq_q4_k((const mk_block_q4_k *)p, dst); break;
      case MK_TYPE_Q5_K: deq_q5_k((const mk_block_q5_k *)p, dst); break;
      case MK_TYPE_Q6_K: deq_q6_k((const mk_block_q6_k *)p, dst); break;
      case MK_TYPE_Q8_K: deq_q8_k((const mk_block_q8_k *)p, dst); break;
      default: return;
    }
  }
}

/* ---- activation quantization (XQ) -------------------------------------------------------- */

void mk_ref_quantize_xq(const float *x, int64_t cols, void *xq, int layout) {
  int64_t nb = cols / 32;
  char *base = (char *)xq;
  int8_t *qs = (int8_t *)base;
  float *d = (float *)(base + mk_xq_off_d(cols)), *s = d + nb;
  int16_t *bsum = (int16_t *)(s + nb);
  memset(qs, 0, mk_xq_off_d(cols));
  for (int64_t b = 0; b < nb; b++) {
    const float *xb = x + 32 * b;
    float amax = 0.0f;
    for (int i = 0; i < 32; i++) amax = fmaxf(amax, fabsf(xb[i]));
    float id = amax > 0.0f ? 127.0f / amax : 0.0f;
    int sum[2] = {0, 0};
    for (int i = 0; i < 32; i++) {
      float v = rintf(xb[i] * id); /* round half to even, like cvtps2dq */
      int q = v > 127.0f ? 127 : v < -127.0f ? -127 : (int)v;
      qs[mk_xq_pos(layout, 32 * b + i)] = (int8_t)q;
      sum[i / 16] += q;
    }
    d[b] = amax / 127.0f;
    s[b] = d[b] * (float)(sum[0] + sum[1]);
    bsum[2 * b] = (int16_t)sum[0];
    bsum[2 * b + 1] = (int16_t)sum[1];
  }
}

/* ---- row dot products, quantized activations --------------------------------------------- */

static float dot_q4_0(const void *row, int64_t cols, mk_xq_view_t x) {
  const mk_block_q4_0 *w = (const mk_block_q4_0 *)row;
  float sumi = 0.0f, summ = 0.0f;
  for (int64_t b = 0; b < cols / 32; b++) {
    const int8_t *xq = x.qs + 32 * b;
    int32_t I = 0;
    for (int i = 0; i < 16; i++) I += (w[b].qs[i] & 0x0F) * xq[i] + (w[b].qs[i] >> 4) * xq[i + 16];
    float dw = F16(w[b].d);
    sumi += dw * x.d[b] * (float)I;
    summ += dw * x.s[b];
  }
  return sumi - 8.0f * summ;
}

static float dot_q4_1(const void *row, int64_t cols, mk_xq_view_t x) {
  const mk_block_q4_1 *w = (const mk_block_q4_1 *)row;
  float sumi = 0.0f, summ = 0.0f;
  for (int64_t b = 0; b < cols / 32; b++) {
    const int8_t *xq = x.qs + 32 * b;
    int32_t I = 0;
    for (int i = 0; i < 16; i++) I += (w[b].qs[i] & 0x0F) * xq[i] + (w[b].qs[i] >> 4) * xq[i + 16];
    sumi += F16(w[b].d) * x.d[b] * (float)I;
    summ += F16(w[b].m) * x.s[b];
  }
  return sumi + summ;
}

static int32_t idot_q5(const uint8_t *qs, const uint8_t *qhb, const int8_t *xq) {
  uint32_t qh = load_u32le(qhb);
  int32_t I = 0;
  for (int i = 0; i < 16; i++) {
    I += ((qs[i] & 0x0F) | (int)((qh >> i) & 1) << 4) * xq[i];
    I += ((qs[i] >> 4) | (int)((qh >> (i + 16)) & 1) << 4) * xq[i + 16];
  }
  return I;
}

static float dot_q5_0(const void *row, int64_t cols, mk_xq_view_t x) {
  const mk_block_q5_0 *w = (const mk_block_q5_0 *)row;
  float sumi = 0.0f, summ = 0.0f;
  for (int64_t b = 0; b < cols / 32; b++) {
    int32_t I = idot_q5(w[b].qs, w[b].qh, x.qs + 32 * b);
    float dw = F16(w[b].d);
    sumi += dw * x.d[b] * (float)I;
    summ += dw * x.s[b];
  }
  return sumi - 16.0f * summ;
}

static float dot_q5_1(const void *row, int64_t cols, mk_xq_view_t x) {
  const mk_block_q5_1 *w = (const mk_block_q5_1 *)row;
  float sumi = 0.0f, summ = 0.0f;
  for (int64_t b = 0; b < cols / 32; b++) {
    int32_t I = idot_q5(w[b].qs, w[b].qh, x.qs + 32 * b);
    sumi += F16(w[b].d) * x.d[b] * (float)I;
    summ += F16(w[b].m) * x.s[b];
  }
  return sumi + summ;
}

static float dot_q8_0(const void *row, int64_t cols, mk_xq_view_t x) {
  const mk_block_q8_0 *w = (const mk_block_q8_0 *)row;
  float sumi = 0.0f;
  for (int64_t b = 0; b < cols / 32; b++) {
    const int8_t *xq = x.qs + 32 * b;
    int32_t I = 0;
    for (int i = 0; i < 32; i++) I += w[b].qs[i] * xq[i];
    sumi += F16(w[b].d) * x.d[b] * (float)I;
  }
  return sumi;
}

/* One Q4_K / Q5_K super-block k (see deq_k45; qh NULL for Q4_K) against the activations. */
static void dot_k45(float d, float dmin, const uint8_t *scales, const uint8_t *qs, const uint8_t *qh,
                    int64_t k, mk_xq_view_t x, float *sumi, float *summ) {
  for (int j = 0; j < 8; j++) {
    int64_t b = 8 * k + j;
    uint8_t sc, m;
    mk_q4k_scale_min(scales, j, &sc, &m);
    const uint8_t *q = qs + 32 * (j / 2);
    int shift = 4 * (j & 1);
    int32_t I = 0;
    for (int i = 0; i < 32; i++)
      I += (((q[i] >> shift) & 0x0F) | (qh ? ((qh[i] >> j) & 1) << 4 : 0)) * x.qs[32 * b + i];
    *sumi += d * x.d[b] * (float)(sc * I);
    *summ += dmin * (float)m * x.s[b];
  }
}

static float dot_q4_k(const void *row, int64_t cols, mk_xq_view_t x) {
  const mk_block_q4_k *w = (const mk_block_q4_k *)row;
  float sumi = 0.0f, summ = 0.0f;
  for (int64_t k = 0; k < cols / MK_QK_K; k++)
    dot_k45(F16(w[k].d), F16(w[k].dmin), w[k].scales, w[k].qs, NULL, k, x, &sumi, &summ);
  return sumi - summ;
}

static float dot_q5_k(const void *row, int64_t cols, mk_xq_view_t x) {
  const mk_block_q5_k *w = (const mk_block_q5_k *)row;
  float sumi = 0.0f, summ = 0.0f;
  for (int64_t k = 0; k < cols / MK_QK_K; k++)
    dot_k45(F16(w[k].d), F16(w[k].dmin), w[k].scales, w[k].qs, w[k].qh, k, x, &sumi, &summ);
  return sumi - summ;
}

static float dot_q6_k(const void *row, int64_t cols, mk_xq_view_t x) {
  const mk_block_q6_k *w = (const mk_block_q6_k *)row;
  float sumi = 0.0f;
  for (int64_t k = 0; k < cols / MK_QK_K; k++) {
    float d = F16(w[k].d);
    for (int jb = 0; jb < 8; jb++) { /* activation block = 2 sub-blocks of 16 */
      int64_t b = 8 * k + jb;
      int32_t J = 0;
      for (int half = 0; half < 2; half++) {
        int j = 2 * jb + half;
        int32_t I = 0;
        for (int i = 0; i < 16; i++) {
          int e = 16 * j + i, h = e / 128, r = e % 128;
          int lo = (w[k].ql[64 * h + (r % 64)] >> (4 * (r / 64))) & 0x0F;
          int hi = (w[k].qh[32 * h + (r % 32)] >> (2 * (r / 32))) & 3;
          I += (lo | hi << 4) * x.qs[32 * b + 16 * half + i];
        }
        J += w[k].scales[j] * (I - 32 * x.bsum[2 * b + half]);
      }
      sumi += d * x.d[b] * (float)J;
    }
  }
  return sumi;
}

static float dot_q3_k(const void *row, int64_t cols, mk_xq_view_t x) {
  const mk_block_q3_k *w = (const mk_block_q3_k *)row;
  float sumi = 0.0f;
  for (int64_t k = 0; k < cols / MK_QK_K; k++) {
    float d = F16(w[k].d);
    for (int jb = 0; jb < 8; jb++) {
      int64_t b = 8 * k + jb;
      int32_t J = 0;
      for (int half = 0; half < 2; half++) {
        int j = 2 * jb + half;
        int32_t I = 0;
        for (int i = 0; i < 16; i++) {
          int e = 16 * j + i, h = e / 128, s = (e % 128) / 32, ii = e % 32, kk = e / 32;
          int q = ((w[k].qs[32 * h + ii] >> (2 * s)) & 3) | ((w[k].hmask[ii] >> kk) & 1) << 2;
          I += q * x.qs[32 * b + 16 * half + i];
        }
        J += mk_q3k_scale(w[k].scales, j) * (I - 4 * x.bsum[2 * b + half]);
      }
      sumi += d * x.d[b] * (float)J;
    }
  }
  return sumi;
}

static float dot_q2_k(const void *row, int64_t cols, mk_xq_view_t x) {
  const mk_block_q2_k *w = (const mk_block_q2_k *)row;
  float sumi = 0.0f, summ = 0.0f;
  for (int64_t k = 0; k < cols / MK_QK_K; k++) {
    float d = F16(w[k].d), dmin = F16(w[k].dmin);
    for (int jb = 0; jb < 8; jb++) {
      int64_t b = 8 * k + jb;
      int32_t J = 0, M = 0;
      for (int half = 0; half < 2; half++) {
        int j = 2 * jb + half;
        int32_t I = 0;
        for (int i = 0; i < 16; i++) {
          int e = 16 * j + i, h = e / 128, s = (e % 128) / 32, ii = e % 32;
          I += ((w[k].qs[32 * h + ii] >> (2 * s)) & 3) * x.qs[32 * b + 16 * half + i];
        }
        J += (w[k].scales[j] & 0x0F) * I;
        M += (w[k].scales[j] >> 4) * x.bsum[2 * b + half];
      }
      sumi += d * x.d[b] * (float)J;
      summ += dmin * x.d[b] * (float)M;
    }
  }
  return sumi - summ;
}

/* ---- row dot products, float weights ----------------------------------------------------- */

static float dotf_f32(const void *row, int64_t cols, const float *x) {
  const float *w = (const float *)row;
  double acc = 0.0;
  for (int64_t i = 0; i < cols; i++) acc += (double)w[i] * (double)x[i];
  return (float)acc;
}

static float dotf_f16(const void *row, int64_t cols, const float *x) {
  const uint8_t *p = (const uint8_t *)row;
  double acc = 0.0;
  for (int64_t i = 0; i < cols; i++) {
    uint16_t h;
    memcpy(&h, p + 2 * i, 2);
    acc += (double)mk_f16_to_f32(h) * (double)x[i];
  }
  return (float)acc;
}

static float dotf_bf16(const void *row, int64_t cols, const float *x) {
  const uint8_t *p = (const uint8_t *)row;
  double acc = 0.0;
  for (int64_t i = 0; i < cols; i++) {
    uint16_t h;
    memcpy(&h, p + 2 * i, 2);
    acc += (double)mk_bf16_to_f32(h) * (double)x[i];
  }
  return (float)acc;
}

/* ---- row-range kernels ------------------------------------------------------------------- */

typedef float (*xq_dot_fn)(const void *row, int64_t cols, mk_xq_view_t x);
typedef float (*f_dot_fn)(const void *row, int64_t cols, const float *x);

static inline void rows_xq(xq_dot_fn dot, const mk_qmat_t *w, int64_t r0, int64_t r1,
                           const void *act, size_t stride, int64_t n_tok, float *y, int64_t ys) {
  for (int64_t r = r0; r < r1; r++) {
    const void *row = (const char *)w->data + (size_t)r * w->row_bytes;
    for (int64_t t = 0; t < n_tok; t++)
      y[t * ys + r] = dot(row, w->cols, mk_xq_view((const char *)act + t * stride, w->cols));
  }
}

static inline void rows_f(f_dot_fn dot, const mk_qmat_t *w, int64_t r0, int64_t r1,
                          const void *act, size_t stride, int64_t n_tok, float *y, int64_t ys) {
  for (int64_t r = r0; r < r1; r++) {
    const void *row = (const char *)w->data + (size_t)r * w->row_bytes;
    for (int64_t t = 0; t < n_tok; t++)
      y[t * ys + r] = dot(row, w->cols, (const float *)((const char *)act + t * stride));
  }
}

#define MK_REF_ROWS(name, kind, dotfn)                                                       \
  static void name(const mk_qmat_t *w, int64_t r0, int64_t r1, const void *act,              \
                   size_t stride, int64_t n_tok, float *y, int64_t ys) {                     \
    kind(dotfn, w, r0, r1, act, stride, n_tok, y, ys);                                       \
  }
MK_REF_ROWS(rows_f32, rows_f, dotf_f32)
MK_REF_ROWS(rows_f16, rows_f, dotf_f16)
MK_REF_ROWS(rows_bf16, rows_f, dotf_bf16)
MK_REF_ROWS(rows_q4_0, rows_xq, dot_q4_0)
MK_REF_ROWS(rows_q4_1, rows_xq, dot_q4_1)
MK_REF_ROWS(rows_q5_0, rows_xq, dot_q5_0)
MK_REF_ROWS(rows_q5_1, rows_xq, dot_q5_1)
MK_REF_ROWS(rows_q8_0, rows_xq, dot_q8_0)
MK_REF_ROWS(rows_q2_k, rows_xq, dot_q2_k)
MK_REF_ROWS(rows_q3_k, rows_xq, dot_q3_k)
MK_REF_ROWS(rows_q4_k, rows_xq, dot_q4_k)
MK_REF_ROWS(rows_q5_k, rows_xq, dot_q5_k)
MK_REF_ROWS(rows_q6_k, rows_xq, dot_q6_k)

/* ---- vector kernels ---------------------------------------------------------------------- */

static float ref_dot_f32(const float *a, const float *b, int64_t n) {
  double acc = 0.0;
  for (int64_t i = 0; i < n; i++) acc += (double)a[i] * (double)b[i];
  return (float)acc;
}

static float ref_dot_f16(const uint16_t *a, const float *b, int64_t n) {
  double acc = 0.0;
  for (int64_t i = 0; i < n; i++) acc += (double)mk_f16_to_f32(a[i]) * (double)b[i];
  return (float)acc;
}

static void ref_axpy_f32(float *y, float a, const float *x, int64_t n) {
  for (int64_t i = 0; i < n; i++) y[i] += a * x[i];
}

static void ref_axpy_f16(float *y, float a, const uint16_t *x, int64_t n) {
  for (int64_t i = 0; i < n; i++) y[i] += a * mk_f16_to_f32(x[i]);
}

const mk_quant_impl_t mk_ref_impl = {
    .quantize_xq = mk_ref_quantize_xq,
    .rows =
        {
            [MK_TYPE_F32] = rows_f32,
            [MK_TYPE_F16] = rows_f16,
            [MK_TYPE_BF16] = rows_bf16,
            [MK_TYPE_Q4_0] = rows_q4_0,
            [MK_TYPE_Q4_1] = rows_q4_1,
            [MK_TYPE_Q5_0] = rows_q5_0,
            [MK_TYPE_Q5_1] = rows_q5_1,
            [MK_TYPE_Q8_0] = rows_q8_0,
            [MK_TYPE_Q2_K] = rows_q2_k,
            [MK_TYPE_Q3_K] = rows_q3_k,
            [MK_TYPE_Q4_K] = rows_q4_k,
            [MK_TYPE_Q5_K] = rows_q5_k,
            [MK_TYPE_Q6_K] = rows_q6_k,
        },
};

const mk_cpu_kernels_t mk_kernels_scalar = {
    .level = MK_SIMD_SCALAR,
    .dequant_row = mk_ref_dequant_row,
    .dot_f32 = ref_dot_f32,
    .dot_f16 = ref_dot_f16,
    .axpy_f32 = ref_axpy_f32,
    .axpy_f16 = ref_axpy_f16,
    .impl = &mk_ref_impl,
};
