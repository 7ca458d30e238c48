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
bool mk_cpu_has_f16c(void) {
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
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && mk_cpu_has_f16c();
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

/* ---- chunked matmul (row-parallel layers) ------------------------------------------------
 *
 * Numerics note. A row-parallel layer (attn_output, ffn_down) splits its input columns over
 * ranks. Its output is defined, for every rank count, as the left-to-right fp32 sum of the
 * partials of fixed column chunks (the units the sharding plan splits by), each partial computed
 * by the ordinary row kernel on the chunk alone. A rank computes its own chunks' partials; the
 * engine gathers them and adds them in chunk order; one process computes all of them and adds
 * them in the same order here (the fused form). Since every kernel's result depends only on the
 * data it is given (see mk_matmul), the bits do not depend on the rank count. */

#define MK_CHUNK_ROWS 16 /* a multiple of 4 (the AVX-512 decode kernels take rows in fours) */

int64_t mk_matmul_n_chunks(const mk_qmat_t *w, int64_t chunk_cols) {
  return chunk_cols > 0 ? (w->cols + chunk_cols - 1) / chunk_cols : 0;
}

static int64_t chunk_cols_of(const mk_qmat_t *w, int64_t chunk_cols, int64_t c) {
  int64_t c0 = c * chunk_cols, c1 = c0 + chunk_cols < w->cols ? c0 + chunk_cols : w->cols;
  return c1 - c0;
}

size_t mk_matmul_chunks_scratch_bytes(const mk_qmat_t *w, int64_t n_tok, int64_t chunk_cols) {
  if (n_tok <= 0 || chunk_cols <= 0) return 0;
  size_t tmp = mk_align64((size_t)n_tok * (size_t)w->rows * sizeof(float)); /* P_c of the fused form */
  size_t xq = mk_type_uses_xq(w->type)
                  ? (size_t)n_tok * (size_t)mk_matmul_n_chunks(w, chunk_cols) * mk_xq_row_bytes(chunk_cols)
                  : 0;
  return tmp + xq + 64;
}

void mk_sum_parts(float *y, const float *parts, const int *idx, int n_idx, size_t n) {
  if (n_idx <= 0) return;
  memcpy(y, parts + (size_t)idx[0] * n, n * sizeof(float));
  for (int j = 1; j < n_idx; j++) {
    const float *p = parts + (size_t)idx[j] * n;
    for (size_t i = 0; i < n; i++) y[i] += p[i];
  }
}

/* The view of chunk c: the same rows, columns [c*chunk_cols, ...). */
static mk_qmat_t chunk_view(const mk_qmat_t *w, int64_t chunk_cols, int64_t c) {
  mk_qmat_t v = *w;
  int64_t be = mk_type_block_elems(w->type);
  v.data = (const char *)w->data + (size_t)(c * chunk_cols / be) * mk_type_block_bytes(w->type);
  v.cols = chunk_cols_of(w, chunk_cols, c);
  return v;
}

void mk_matmul_chunks(const mk_cpu_kernels_t *k, const mk_qmat_t *w, const float *x, int64_t n_tok,
                      int64_t chunk_cols, float *parts, float *y, void *scratch) {
  const mk_quant_impl_t *im = (const mk_quant_impl_t *)k->impl;
  const int64_t rows = w->rows, cols = w->cols, nc = mk_matmul_n_chunks(w, chunk_cols);
  if (n_tok <= 0 || rows <= 0) return;
  mk_rows_fn fn = ((int)w->type >= 0 && (int)w->type < MK_TYPE_COUNT) ? im->rows[w->type] : NULL;
  int64_t be = mk_type_block_elems(w->type);
  if (!fn || cols <= 0 || be <= 0 || cols % be != 0 || chunk_cols <= 0 || chunk_cols % be != 0) {
    float *o = parts ? parts : y; /* misuse: make it visible */
    for (int64_t i = 0; i < (parts ? nc : 1) * n_tok * rows; i++) o[i] = NAN;
    return;
  }
  char *base = (char *)(((uintptr_t)scratch + 63) & ~(uintptr_t)63);
  float *tmp = (float *)base; /* (n_tok, rows): P_c, c >= 1, of the fused form */
  char *xqbuf = base + mk_align64((size_t)n_tok * (size_t)rows * sizeof(float));
  const bool xq = mk_type_uses_xq(w->type);
  const int layout = im->xq_layout[w->type];
  const size_t cstride = xq ? mk_xq_row_bytes(chunk_cols) : 0; /* one chunk of one token */
  const size_t tstride = xq ? (size_t)nc * cstride : (size_t)cols * sizeof(float);
  const bool quant_inside = xq && n_tok * nc >= 8;
  if (xq && !quant_inside)
    for (int64_t i = 0; i < n_tok * nc; i++)
      im->quantize_xq(x + (i / nc) * cols + (i % nc) * chunk_cols, chunk_cols_of(w, chunk_cols, i % nc),
                      xqbuf + (size_t)i * cstride, layout);
  bool par = (double)rows * (double)cols * (double)n_tok >= 32768.0;
#pragma omp parallel if (par)
  {
    if (quant_inside) {
#pragma omp for schedule(static)
      for (int64_t i = 0; i < n_tok * nc; i++)
        im->quantize_xq(x + (i / nc) * cols + (i % nc) * chunk_cols, chunk_cols_of(w, chunk_cols, i % nc),
                        xqbuf + (size_t)i * cstride, layout);
    }
    int64_t nth = omp_get_num_threads(), ith = omp_get_thread_num();
    int64_t chunk = ((rows + nth - 1) / nth + 3) & ~(int64_t)3;
    int64_t r0 = ith * chunk, r1 = r0 + chunk < rows ? r0 + chunk : rows;
    /* rows in blocks of MK_CHUNK_ROWS, every chunk of a block before the next block: the block's
     * weight rows stay in L1 while the chunks walk along them */
    for (int64_t t0 = 0; r0 < r1 && t0 < n_tok; t0 += MK_TOK_TILE) {
      int64_t nt = n_tok - t0 < MK_TOK_TILE ? n_tok - t0 : MK_TOK_TILE;
      for (int64_t b0 = r0; b0 < r1; b0 += MK_CHUNK_ROWS) {
        int64_t b1 = b0 + MK_CHUNK_ROWS < r1 ? b0 + MK_CHUNK_ROWS : r1;
        if (im->chunks[w->type] && xq) {
          im->chunks[w->type](w, b0, b1, xqbuf + (size_t)t0 * tstride, cstride, tstride, nt, chunk_cols,
                              parts ? parts + (size_t)t0 * rows : NULL, (size_t)n_tok * rows, y ? y + t0 * rows : NULL, rows);
          continue;
        }
        for (int64_t c = 0; c < nc; c++) {
          mk_qmat_t v = chunk_view(w, chunk_cols, c);
          const char *act = xq ? xqbuf + (size_t)t0 * tstride + (size_t)c * cstride
                               : (const char *)(x + t0 * cols + c * chunk_cols);
          float *dst = parts ? parts + ((size_t)c * n_tok + t0) * rows : (c == 0 ? y : tmp) + t0 * rows;
          fn(&v, b0, b1, act, tstride, nt, dst, rows);
          if (parts || c == 0) continue;
          for (int64_t t = t0; t < t0 + nt; t++)
            for (int64_t r = b0; r < b1; r++) y[t * rows + r] += tmp[t * rows + r];
        }
      }
    }
  }
}
