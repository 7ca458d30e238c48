/* AVX-512 (F+BW+VL+DQ) kernels; compiled with those flags, used only when CPUID says so.
 *
 * Specialised here: activation quantization (both XQ layouts), the 32-element block types
 * (groups of 8 blocks, see quant_avx512_body.h), the fp32/fp16 vector kernels. The K types and the float-weight
 * matmuls reuse the AVX2 row kernels (every AVX-512 CPU has AVX2). Two tables come out of this
 * file: mk_kernels_avx512 (maddubs+madd) and mk_kernels_avx512_vnni (vpdpbusd, compiled for
 * avx512vnni and chosen only when CPUID reports it). */
/* The ISA is also set here (not only by the build's per-file flags) so this file is correct
 * whatever flags it is compiled with; everything below is only called after a CPUID check. */
#ifndef __clang__ /* clang 14 has no GCC target pragma: it relies on the per-file -m flags */
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")
#endif
#include <immintrin.h>
#include <string.h>

#include "src/quant_internal.h"

#define MK_512_TT 4 /* tokens per micro-kernel call */

static inline uint32_t ld_u32(const void *p) {
  uint32_t v;
  memcpy(&v, p, 4);
  return v;
}

/* Bit-identical to mk_ref_quantize_xq (same amax, same 127/amax, cvtps2dq rounds half to even;
 * |x*id| <= 127 so the saturating narrowing never clips). */
static void quantize_xq_512(const float *x, int64_t cols, void *xq, int layout) {
  int64_t nb = cols / 32;
  char *base = (char *)xq;
  int8_t *qs = (int8_t *)base;
  float *d = (float *)(base + mk_xq_off_d(cols)), *s = d + nb;
  int16_t *bsum = (int16_t *)(s + nb);
  for (size_t i = (size_t)cols & ~(size_t)127; i < mk_xq_off_d(cols); i += 64)
    _mm512_storeu_si512(qs + i, _mm512_setzero_si512()); /* zero padding */
  for (int64_t b = 0; b < nb; b++) {
    __m512 v0 = _mm512_loadu_ps(x + 32 * b), v1 = _mm512_loadu_ps(x + 32 * b + 16);
    float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v0), _mm512_abs_ps(v1)));
    float id = amax > 0.0f ? 127.0f / amax : 0.0f;
    __m512i q0 = _mm512_cvtps_epi32(_mm512_mul_ps(v0, _mm512_set1_ps(id)));
    __m512i q1 = _mm512_cvtps_epi32(_mm512_mul_ps(v1, _mm512_set1_ps(id)));
    int sum0 = _mm512_reduce_add_epi32(q0), sum1 = _mm512_reduce_add_epi32(q1);
    _mm_storeu_si128((__m128i *)(qs + mk_xq_pos(layout, 32 * b)), _mm512_cvtsepi32_epi8(q0));
    _mm_storeu_si128((__m128i *)(qs + mk_xq_pos(layout, 32 * b + 16)), _mm512_cvtsepi32_epi8(q1));
    d[b] = amax / 127.0f;
    s[b] = d[b] * (float)(sum0 + sum1);
    bsum[2 * b] = (int16_t)sum0;
    bsum[2 * b + 1] = (int16_t)sum1;
  }
}

#define MK_VNNI 0
#define MK_SFX(n) n##_bw
#include "src/quant_avx512_body.h"
#undef MK_VNNI
#undef MK_SFX

#ifdef __clang__
#pragma clang attribute push(__attribute__((target("avx512vnni"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx512vnni")
#endif
#define MK_VNNI 1
#define MK_SFX(n) n##_vnni
#include "src/quant_avx512_body.h"
#undef MK_VNNI
#undef MK_SFX
#ifdef __clang__
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif

/* ---- vector kernels ---------------------------------------------------------------------- */

static float dot_f32_512(const float *a, const float *b, int64_t n) {
  __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), acc0);
    acc1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 16), _mm512_loadu_ps(b + i + 16), acc1);
  }
  if (i < n) { /* masked tail, up to 31 elements */
    __mmask16 k0 = n - i >= 16 ? 0xFFFF : (__mmask16)((1u << (n - i)) - 1);
    acc0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(k0, a + i), _mm512_maskz_loadu_ps(k0, b + i), acc0);
    if (n - i > 16) {
      __mmask16 k1 = (__mmask16)((1u << (n - i - 16)) - 1);
      acc1 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(k1, a + i + 16),
                             _mm512_maskz_loadu_ps(k1, b + i + 16), acc1);
    }
  }
  return _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
}

static inline __m512 ld16_f16(const uint16_t *p, __mmask16 k) {
  return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(k, p));
}

static float dot_f16_512(const uint16_t *a, const float *b, int64_t n) {
  __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    acc0 = _mm512_fmadd_ps(ld16_f16(a + i, 0xFFFF), _mm512_loadu_ps(b + i), acc0);
    acc1 = _mm512_fmadd_ps(ld16_f16(a + i + 16, 0xFFFF), _mm512_loadu_ps(b + i + 16), acc1);
  }
  for (; i < n; i += 16) {
    __mmask16 k = n - i >= 16 ? 0xFFFF : (__mmask16)((1u << (n - i)) - 1);
    acc0 = _mm512_fmadd_ps(ld16_f16(a + i, k), _mm512_maskz_loadu_ps(k, b + i), acc0);
  }
  return _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
}

static void axpy_f32_512(float *y, float a, const float *x, int64_t n) {
  __m512 av = _mm512_set1_ps(a);
  for (int64_t i = 0; i < n; i += 16) {
    __mmask16 k = n - i >= 16 ? 0xFFFF : (__mmask16)((1u << (n - i)) - 1);
    __m512 r = _mm512_fmadd_ps(av, _mm512_maskz_loadu_ps(k, x + i), _mm512_maskz_loadu_ps(k, y + i));
    _mm512_mask_storeu_ps(y + i, k, r);
  }
}

static void axpy_f16_512(float *y, float a, const uint16_t *x, int64_t n) {
  __m512 av = _mm512_set1_ps(a);
  for (int64_t i = 0; i < n; i += 16) {
    __mmask16 k = n - i >= 16 ? 0xFFFF : (__mmask16)((1u << (n - i)) - 1);
    __m512 r = _mm512_fmadd_ps(av, ld16_f16(x + i, k), _mm512_maskz_loadu_ps(k, y + i));
    _mm512_mask_storeu_ps(y + i, k, r);
  }
}

const mk_cpu_kernels_t mk_kernels_avx512 = {
    .level = MK_SIMD_AVX512,
    .dequant_row = mk_avx2_dequant_row,
    .dot_f32 = dot_f32_512,
    .dot_f16 = dot_f16_512,
    .axpy_f32 = axpy_f32_512,
    .axpy_f16 = axpy_f16_512,
    .impl = &impl_bw,
};

const mk_cpu_kernels_t mk_kernels_avx512_vnni = {
    .level = MK_SIMD_AVX512,
    .dequant_row = mk_avx2_dequant_row,
    .dot_f32 = dot_f32_512,
    .dot_f16 = dot_f16_512,
    .axpy_f32 = axpy_f32_512,
    .axpy_f16 = axpy_f16_512,
    .impl = &impl_vnni,
};
