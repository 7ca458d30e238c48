/* Element types, half-precision conversions, SIMD level selection and the matmul driver.
 *
 * The driver (mk_matmul) owns the threading and tiling; the per-type arithmetic lives in the
 * kernel tables (quant_ref.c is the truth, quant_avx2.c / quant_avx512.c are tested against it).
 * Threading: one OpenMP parallel region per call; each thread owns one contiguous range of
 * weight rows and walks the tokens in tiles of MK_TOK_TILE, so a weight row is read from memory
 * once per token tile and reused from L1 for every token of the tile. */
#include "src/quant.h"

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif
#include <math.h>
#include <omp.h>
#include <string.h>

#include "src/quant_internal.h"

/* ---- type traits ------------------------------------------------------------------------- */

typedef struct {
  const char *name;
  int64_t block_elems;
  size_t block_bytes;
  bool supported;
} mk_type_traits_t;

static const mk_type_traits_t k_traits[MK_TYPE_COUNT] = {
    [MK_TYPE_F32] = {"F32", 1, 4, true},
    [MK_TYPE_F16] = {"F16", 1, 2, true},
    [MK_TYPE_BF16] = {"BF16", 1, 2, true},
    [MK_TYPE_Q4_0] = {"Q4_0", MK_QK, sizeof(mk_block_q4_0), true},
    [MK_TYPE_Q4_1] = {"Q4_1", MK_QK, sizeof(mk_block_q4_1), true},
    [MK_TYPE_Q5_0] = {"Q5_0", MK_QK, sizeof(mk_block_q5_0), true},
    [MK_TYPE_Q5_1] = {"Q5_1", MK_QK, sizeof(mk_block_q5_1), true},
    [MK_TYPE_Q8_0] = {"Q8_0", MK_QK, sizeof(mk_block_q8_0), true},
    [MK_TYPE_Q8_1] = {"Q8_1", MK_QK, sizeof(mk_block_q8_1), false},
    [MK_TYPE_Q2_K] = {"Q2_K", MK_QK_K, sizeof(mk_block_q2_k), true},
    [MK_TYPE_Q3_K] = {"Q3_K", MK_QK_K, sizeof(mk_block_q3_k), true},
    [MK_TYPE_Q4_K] = {"Q4_K", MK_QK_K, sizeof(mk_block_q4_k), true},
    [MK_TYPE_Q5_K] = {"Q5_K", MK_QK_K, sizeof(mk_block_q5_k), true},
    [MK_TYPE_Q6_K] = {"Q6_K", MK_QK_K, sizeof(mk_block_q6_k), true},
    [MK_TYPE_Q8_K] = {"Q8_K", MK_QK_K, sizeof(mk_block_q8_k), false},
};

static const mk_type_traits_t *traits_of(mk_type_t t) {
  if ((int)t < 0 || (int)t >= MK_TYPE_COUNT || !k_traits[t].name) return NULL;
  return &k_traits[t];
}

const char *mk_type_name(mk_type_t t) {
  const mk_type_traits_t *tr = traits_of(t);
  return tr ? tr->name : "unknown";
}

bool mk_type_supported(mk_type_t t) {
  const mk_type_traits_t *tr = traits_of(t);
  return tr && tr->supported;
}

int64_t mk_type_block_elems(mk_type_t t) {
  const mk_type_traits_t *tr = traits_of(t);
  return tr ? tr->block_elems : 0;
}

size_t mk_type_block_bytes(mk_type_t t) {
  const mk_type_traits_t *tr = traits_of(t);
  return tr ? tr->block_bytes : 0;
}

/* Q8_1 and Q8_K are sized here (a GGUF reader may meet them) although they are not
 * multipliable; row bytes are reported for every known type. */
size_t mk_type_row_bytes(mk_type_t t, int64_t n) {
  const mk_type_traits_t *tr = traits_of(t);
  if (!tr || n < 0 || n % tr->block_elems != 0) return 0;
  return (size_t)(n / tr->block_elems) * tr->block_bytes;
}

/* ---- half precision ---------------------------------------------------------------------- */

static inline uint32_t f32_bits(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  return u;
}
static inline float bits_f32(uint32_t u) {
  float f;
  memcpy(&f, &u, 4);
  return f;
}

float mk_f16_to_f32(uint16_t h) {
  uint32_t sign = (uint32_t)(h & 0x8000) << 16;
  uint32_t e = (h >> 10) & 0x1F, m = h & 0x3FF;
  if (e == 0x1F) /* Inf, or NaN (made quiet, payload kept) */
    return bits_f32(sign | 0x7F800000u | (m << 13) | (m ? 0x400000u : 0));
  if (e == 0) {
    if (m == 0) return bits_f32(sign);
    /* subnormal: m * 2^-24, normalise so the leading 1 becomes implicit */
    int shift = 0;
    while (!(m & 0x400)) {
      m <<= 1;
      shift++;
    }
    m &= 0x3FF;
    return bits_f32(sign | ((uint32_t)(113 - shift) << 23) | (m << 13));
  }
  return bits_f32(sign | ((e + 112) << 23) | (m << 13));
}

uint16_t mk_f32_to_f16(float f) {
  uint32_t u = f32_bits(f);
  uint16_t sign = (uint16_t)((u >> 16) & 0x8000);
  uint32_t a = u & 0x7FFFFFFFu;
  if (a > 0x7F800000u) return (uint16_t)(sign | 0x7E00 | ((a >> 13) & 0x3FF)); /* quiet NaN */
  if (a >= 0x477FF000u) return (uint16_t)(sign | 0x7C00); /* >= 65520 rounds to Inf (or is Inf) */
  if (a < 0x38800000u) { /* below 2^-14: half subnormal or zero */
    uint32_t exp = a >> 23;
    uint32_t mant = (a & 0x7FFFFFu) | 0x800000u;
    uint32_t shift = 126 - exp; /* value * 2^24 = mant >> shift */
    if (exp == 0 || shift > 24) return sign; /* < 2^-25, or float subnormal: rounds to 0 */
    uint32_t q = mant >> shift, rem = mant & ((1u << shift) - 1), half = 1u << (shift - 1);
    if (rem > half || (rem == half && (q & 1))) q++;
    return (uint16_t)(sign | q);
  }
  uint32_t q = (a >> 13) - (112u << 10), rem = a & 0x1FFF;
  if (rem > 0x1000 || (rem == 0x1000 && (q & 1))) q++;
  return (uint16_t)(sign | q);
}

float mk_bf16_to_f32(uint16_t h) { return bits_f32((uint32_t)h << 16); }

uint16_t mk_f32_to_bf16(float f) {
  uint32_t u = f32_bits(f);
  if ((u & 0x7FFFFFFFu) > 0x7F800000u) return (uint16_t)((u >> 16) | 0x40); /* quiet NaN */
  return (uint16_t)((u + 0x7FFFu + ((u >> 16) & 1)) >> 16);
}

/* ---- SIMD levels ------------------------------------------------------------------------- */

const char *mk_simd_name(mk_simd_t s) {
  switch (s) {
    case MK_SIMD_SCALAR: return "scalar";
    case MK_SIMD_AVX2: return "avx2";
    case MK_SIMD_AVX512: return "avx512";
  }
  return "unknown";
}

/* F16C from CPUID leaf 1 (ECX bit 29): "f16c" is not a __builtin_cpu_supports name in clang 14. */
static bool cpu_has_f16c(void) {
#if defined(__x86_64__) || defined(__i386__)
  unsigned a = 0, b = 0, c = 0, d = 0;
  return __get_cpuid(1, &a, &b, &c, &d) && (c & (1u << 29));
#else
  return false;
#endif
}

static bool cpu_has_avx2(void) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && cpu_has_f16c();
#else
  return false;
#endif
}

static bool cpu_has_avx512(void) {
#if defined(__x86_64__) || defined(__i386__)
  return cpu_has_avx2() && __builtin_cpu_supports("avx512f") &&
         __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
         __builtin_cpu_supports("avx512dq");
#else
  return false;
#endif
}

bool mk_cpu_has_avx512_vnni(void) {
#if defined(__x86_64__) || defined(__i386__)
  return cpu_has_avx512() && __builtin_cpu_supports("avx512vnni");
#else
  return false;
#endif
}

mk_simd_t mk_simd_best(void) {
  if (cpu_has_avx512()) return MK_SIMD_AVX512;
  if (cpu_has_avx2()) return MK_SIMD_AVX2;
  return MK_SIMD_SCALAR;
}

const mk_cpu_kernels_t *mk_cpu_kernels_get(mk_simd_t level) {
  switch (level) {
    case MK_SIMD_SCALAR: return &mk_kernels_scalar;
    case MK_SIMD_AVX2: return cpu_has_avx2() ? &mk_kernels_avx2 : NULL;
    case MK_SIMD_AVX512:
      if (!cpu_has_avx512()) return NULL;
      return mk_cpu_has_avx512_vnni() ? &mk_kernels_avx512_vnni : &mk_kernels_avx512;
  }
  return NULL;
}

/* ---- matmul driver ----------------------------------------------------------------------- */

size_t mk_matmul_scratch_bytes(const mk_qmat_t *w, int64_t n_tok) {
  if (!mk_type_uses_xq(w->type) || n_tok <= 0) return 0;
  return (size_t)n_tok * mk_xq_row_bytes(w->cols) + 64; /* + alignment slack */
}

void mk_matmul(const mk_cpu_kernels_t *k, const mk_qmat_t *w, const float *x, int64_t n_tok,
               float *y, void *scratch) {
  const mk_quant_impl_t *im = (const mk_quant_impl_t *)k->impl;
  int64_t rows = w->rows, cols = w->cols;
  if (n_tok <= 0 || rows <= 0) return;
  mk_rows_fn fn = ((int)w->type >= 0 && (int)w->type < MK_TYPE_COUNT) ? im->rows[w->type] : NULL;
  if (!fn || cols <= 0 || cols % mk_type_block_elems(w->type) != 0) { /* misuse: make it visible */
    for (int64_t i = 0; i < n_tok * rows; i++) y[i] = NAN;
    return;
  }

  const void *act = x; /* (n_tok, cols): fp32 or XQ rows */
  size_t stride = (size_t)cols * sizeof(float);
  bool xq = mk_type_uses_xq(w->type);
  int layout = im->xq_layout[w->type];
  char *xqbuf = NULL;
  if (xq) {
    xqbuf = (char *)(((uintptr_t)scratch + 63) & ~(uintptr_t)63);
    stride = mk_xq_row_bytes(cols);
    act = xqbuf;
  }
  /* Few tokens: quantize them before forking (saves a barrier on the decode path). */
  bool quant_inside = xq && n_tok >= 8;
  if (xq && !quant_inside)
    for (int64_t t = 0; t < n_tok; t++) im->quantize_xq(x + t * cols, cols, xqbuf + t * stride, layout);

  /* Tiny products are not worth waking the team. */
  bool par = (double)rows * (double)cols * (double)n_tok >= 32768.0;
#pragma omp parallel if (par)
  {
    if (quant_inside) {
#pragma omp for schedule(static)
      for (int64_t t = 0; t < n_tok; t++) im->quantize_xq(x + t * cols, cols, xqbuf + t * stride, layout);
    }
    int64_t nth = omp_get_num_threads(), ith = omp_get_thread_num();
    /* contiguous row ranges, multiples of 4 rows so kernels can interleave rows */
    int64_t chunk = ((rows + nth - 1) / nth + 3) & ~(int64_t)3;
    int64_t r0 = ith * chunk, r1 = r0 + chunk < rows ? r0 + chunk : rows;
    if (r0 < r1) {
      for (int64_t t0 = 0; t0 < n_tok; t0 += MK_TOK_TILE) {
        int64_t nt = n_tok - t0 < MK_TOK_TILE ? n_tok - t0 : MK_TOK_TILE;
        fn(w, r0, r1, (const char *)act + (size_t)t0 * stride, stride, nt, y + t0 * rows, rows);
      }
    }
  }
}
