/* AVX-512 matmul micro-kernels for the 32-element block types, included twice by
 * quant_avx512.c: once with MK_VNNI 0 (AVX512BW: maddubs + madd) and once with MK_VNNI 1 under
 * `#pragma GCC target("avx512vnni")` (vpdpbusd). MK_SFX(name) gives each copy its own names.
 *
 * The weight row is walked in groups of 8 blocks. Per group, the fp16 scales of the 8 blocks are
 * converted at once, into [d0 c0 d1 c1 .. d7 c7] (c = min for Q4_1/Q5_1, = d otherwise), and
 * multiplied by the interleaved activation scales [dx0 s0 dx1 s1 ..]: the even lanes are the
 * per-block FMA scales (spread to the integer lanes of each block by one permute), the odd lanes
 * accumulate the min/offset part, summed once at the end of the row.
 *
 * Q4_0/Q4_1/Q5_0/Q5_1 read MK_XQ_QUAD activations: the 16 packed bytes of 4 blocks form one
 * zmm, its low nibbles meet one 64-byte activation load and its high nibbles the next; both
 * products accumulate in the same int32 lanes (lanes 4j..4j+3 = block j), so 4 blocks cost one
 * int->float conversion and one FMA. Q8_0 reads natural activations, two blocks per zmm; with
 * VNNI its codes are biased to unsigned (w+128) and the bias removed through s (offset -128).
 * Blocks past the end of the row are read from a clamped (valid) address and meet zero
 * activation scales and zero activation codes, so they add exactly 0. */

#if MK_VNNI
#define MK_DOT_ACC(acc, u, s) _mm512_dpbusd_epi32((acc), (u), (s))
#else
#define MK_DOT_ACC(acc, u, s) \
  _mm512_add_epi32((acc), _mm512_madd_epi16(_mm512_maddubs_epi16((u), (s)), _mm512_set1_epi16(1)))
#endif

/* One group of nblk (<= 8) blocks starting at block b0, for R rows x T tokens (R*T <= 4);
 * accumulators are indexed [r*T + t]. */
static inline __attribute__((always_inline)) void MK_SFX(group8)(
    mk_type_t ty, size_t bbytes, const uint8_t *const *rows, const int R, int64_t b0,
    const int nblk, const int T, const mk_xq_view_t *x, __m512 (*acc)[2], __m512 *macc) {
  const bool q8 = ty == MK_TYPE_Q8_0, q5 = ty == MK_TYPE_Q5_0 || ty == MK_TYPE_Q5_1;
  const bool has_min = ty == MK_TYPE_Q4_1 || ty == MK_TYPE_Q5_1;
  const size_t qoff = ty == MK_TYPE_Q4_0 ? 2 : ty == MK_TYPE_Q4_1 ? 4 : ty == MK_TYPE_Q5_0 ? 6 : 8;
  const size_t hoff = ty == MK_TYPE_Q5_0 ? 2 : 4;
  const __m512i m0f = _mm512_set1_epi8(0x0F);
  const __m512i il = _mm512_set_epi32(23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
  /* scale lanes: quads (4 int32 lanes per block) and pairs (8 lanes per block) */
  const __m512i qidx0 = _mm512_set_epi32(6, 6, 6, 6, 4, 4, 4, 4, 2, 2, 2, 2, 0, 0, 0, 0);
  const __m512i qidx1 = _mm512_add_epi32(qidx0, _mm512_set1_epi32(8));
  const __m512i pidx0 = _mm512_set_epi32(2, 2, 2, 2, 2, 2, 2, 2, 0, 0, 0, 0, 0, 0, 0, 0);
  const __mmask8 kb = (__mmask8)((1u << nblk) - 1);
  __m512 dxs[MK_512_TT];
  for (int t = 0; t < T; t++)
    dxs[t] = _mm512_permutex2var_ps(_mm512_castps256_ps512(_mm256_maskz_loadu_ps(kb, x[t].d + b0)), il,
                                    _mm512_castps256_ps512(_mm256_maskz_loadu_ps(kb, x[t].s + b0)));
  for (int r = 0; r < R; r++) {
    const uint8_t *pb[8];
    for (int j = 0; j < 8; j++) pb[j] = rows[r] + (size_t)(b0 + (j < nblk ? j : 0)) * bbytes;
    /* fp16 scale words of the 8 blocks -> [d0 c0 .. d7 c7]; absent blocks: scale 0 */
    __m256i w32 = _mm256_setzero_si256();
    for (int j = 0; j < 8; j++)
      if (j < nblk) w32 = _mm256_mask_set1_epi32(w32, (__mmask8)(1u << j), (int)ld_u32(pb[j]));
    __m512 dm = _mm512_cvtph_ps(w32);
    if (!has_min) dm = _mm512_moveldup_ps(dm); /* [d0 d0 d1 d1 ..] */
    __m512 prod[MK_512_TT];
    for (int t = 0; t < T; t++) {
      prod[t] = _mm512_mul_ps(dm, dxs[t]);
      if (!q8 || MK_VNNI) macc[r * T + t] = _mm512_add_ps(macc[r * T + t], prod[t]);
    }
    if (!q8) {
      for (int qd = 0; qd < 2; qd++) {
        if (4 * qd >= nblk) break;
        const uint8_t *const *p = pb + 4 * qd;
        __m512i v = _mm512_castsi128_si512(_mm_loadu_si128((const __m128i *)(p[0] + qoff)));
        v = _mm512_mask_broadcast_i32x4(v, 0x00F0, _mm_loadu_si128((const __m128i *)(p[1] + qoff)));
        v = _mm512_mask_broadcast_i32x4(v, 0x0F00, _mm_loadu_si128((const __m128i *)(p[2] + qoff)));
        v = _mm512_mask_broadcast_i32x4(v, 0xF000, _mm_loadu_si128((const __m128i *)(p[3] + qoff)));
        __m512i lo = _mm512_and_si512(v, m0f);
        __m512i hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), m0f);
        if (q5) { /* 5th bits: qh bit i (i < 16) -> lo byte 16j+i, bit 16+i -> hi byte 16j+i */
          uint64_t ml = 0, mh = 0;
          for (int j = 0; j < 4; j++) {
            uint64_t h = ld_u32(p[j] + hoff);
            ml |= (h & 0xFFFF) << (16 * j);
            mh |= (h >> 16) << (16 * j);
          }
          const __m512i b10 = _mm512_set1_epi8(0x10);
          lo = _mm512_mask_add_epi8(lo, (__mmask64)ml, lo, b10);
          hi = _mm512_mask_add_epi8(hi, (__mmask64)mh, hi, b10);
        }
        for (int t = 0; t < T; t++) {
          const int8_t *xq = x[t].qs + 32 * b0 + 128 * qd;
          __m512i isum = MK_DOT_ACC(_mm512_setzero_si512(), lo, _mm512_loadu_si512(xq));
          isum = MK_DOT_ACC(isum, hi, _mm512_loadu_si512(xq + 64));
          __m512 sc = _mm512_permutexvar_ps(qd ? qidx1 : qidx0, prod[t]);
          acc[r * T + t][qd] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), sc, acc[r * T + t][qd]);
        }
      }
    } else {
      for (int pr = 0; pr < 4; pr++) {
        if (2 * pr >= nblk) break;
        __m512i v = _mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)(pb[2 * pr] + 2)));
        v = _mm512_inserti64x4(v, _mm256_loadu_si256((const __m256i *)(pb[2 * pr + 1] + 2)), 1);
#if MK_VNNI
        __m512i wq = _mm512_xor_si512(v, _mm512_set1_epi8((char)0x80)); /* w + 128 */
#else
        __mmask64 neg = _mm512_movepi8_mask(v);
        __m512i wq = _mm512_abs_epi8(v);
#endif
        __m512i sidx = _mm512_add_epi32(pidx0, _mm512_set1_epi32(4 * pr));
        for (int t = 0; t < T; t++) {
          __m512i xv = _mm512_loadu_si512(x[t].qs + 32 * b0 + 64 * pr);
#if !MK_VNNI
          xv = _mm512_mask_sub_epi8(xv, neg, _mm512_setzero_si512(), xv);
#endif
          __m512i isum = MK_DOT_ACC(_mm512_setzero_si512(), wq, xv);
          __m512 sc = _mm512_permutexvar_ps(sidx, prod[t]);
          acc[r * T + t][pr & 1] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), sc, acc[r * T + t][pr & 1]);
        }
      }
    }
  }
}

/* The one horizontal-sum order of this file: per 128-bit lane (a0+a2)+(a1+a3), then
 * (lane0+lane2)+(lane1+lane3). The four-at-once transpose-add in micro_g8 computes exactly this
 * order too, so a row's sum does not depend on how many rows or tokens share the call (batch and
 * slice invariance; _mm512_reduce_add_ps would use another order). */
static inline __attribute__((always_inline)) float MK_SFX(hsum16)(__m512 v) {
  __m512 s = _mm512_add_ps(v, _mm512_permute_ps(v, 0x4E));
  s = _mm512_add_ps(s, _mm512_permute_ps(s, 0xB1));
  __m256 h = _mm256_add_ps(_mm512_castps512_ps256(s), _mm512_extractf32x8_ps(s, 1));
  __m128 q = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
  return _mm_cvtss_f32(q);
}

/* y[t*ys + r] = dot(row r, token t) for r < R, t < T (R*T <= 4). */
static inline __attribute__((always_inline)) void MK_SFX(micro_g8)(
    mk_type_t ty, size_t bbytes, const uint8_t *const *rows, const int R, int64_t cols,
    const char *act, size_t stride, const int T, float *y, int64_t ys) {
  int64_t nb = cols / 32;
  mk_xq_view_t x[MK_512_TT];
  __m512 acc[4][2], macc[4];
  for (int t = 0; t < T; t++) x[t] = mk_xq_view(act + (size_t)t * stride, cols);
  for (int i = 0; i < R * T; i++) acc[i][0] = acc[i][1] = macc[i] = _mm512_setzero_ps();
  int64_t b0 = 0;
  for (; b0 + 8 <= nb; b0 += 8) MK_SFX(group8)(ty, bbytes, rows, R, b0, 8, T, x, acc, macc);
  if (b0 < nb) MK_SFX(group8)(ty, bbytes, rows, R, b0, (int)(nb - b0), T, x, acc, macc);
  const float kmin = ty == MK_TYPE_Q4_0 ? -8.0f
                     : ty == MK_TYPE_Q5_0 ? -16.0f
                     : ty == MK_TYPE_Q8_0 ? (MK_VNNI ? -128.0f : 0.0f)
                                          : 1.0f;
  __m512 v[4];
  for (int i = 0; i < R * T; i++) { /* odd lanes of macc carry the min/offset part */
    v[i] = _mm512_add_ps(acc[i][0], acc[i][1]);
    v[i] = _mm512_mask3_fmadd_ps(macc[i], _mm512_set1_ps(kmin), v[i], 0xAAAA);
  }
  if (R * T == 4) { /* four horizontal sums at once: transpose-add */
    __m512 s01 = _mm512_add_ps(_mm512_unpacklo_ps(v[0], v[1]), _mm512_unpackhi_ps(v[0], v[1]));
    __m512 s23 = _mm512_add_ps(_mm512_unpacklo_ps(v[2], v[3]), _mm512_unpackhi_ps(v[2], v[3]));
    __m512 s = _mm512_add_ps(_mm512_shuffle_ps(s01, s23, 0x44), _mm512_shuffle_ps(s01, s23, 0xEE));
    __m256 h = _mm256_add_ps(_mm512_castps512_ps256(s), _mm512_extractf32x8_ps(s, 1));
    __m128 q = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1)); /* [v0..v3] */
    if (T == 1) {
      _mm_storeu_ps(y, q); /* four consecutive rows */
    } else {
      float out[4];
      _mm_storeu_ps(out, q);
      for (int i = 0; i < 4; i++) y[(i % T) * ys + i / T] = out[i];
    }
    return;
  }
  for (int r = 0; r < R; r++)
    for (int t = 0; t < T; t++) y[t * ys + r] = MK_SFX(hsum16)(v[r * T + t]);
}
#undef MK_DOT_ACC

/* Decode (one token): 4 rows per call. Prefill: one row x up to MK_512_TT tokens per call. */
#define MK_512_ROWS(name, TY, BT)                                                              \
  static void MK_SFX(name)(MK_ROWS_PARAMS) {                                                   \
    int64_t cols = w->cols;                                                                    \
    const uint8_t *base = (const uint8_t *)w->data;                                            \
    if (n_tok == 1) {                                                                          \
      int64_t r = r0;                                                                          \
      for (; r + 4 <= r1; r += 4) {                                                            \
        const uint8_t *rw[4] = {base + (size_t)r * w->row_bytes, base + (size_t)(r + 1) * w->row_bytes, \
                                base + (size_t)(r + 2) * w->row_bytes, base + (size_t)(r + 3) * w->row_bytes}; \
        MK_SFX(micro_g8)(TY, sizeof(BT), rw, 4, cols, act, act_stride, 1, y + r, y_stride);   \
      }                                                                                        \
      for (; r < r1; r++) {                                                                    \
        const uint8_t *rw[1] = {base + (size_t)r * w->row_bytes};                              \
        MK_SFX(micro_g8)(TY, sizeof(BT), rw, 1, cols, act, act_stride, 1, y + r, y_stride);   \
      }                                                                                        \
      return;                                                                                  \
    }                                                                                          \
    for (int64_t r = r0; r < r1; r++) {                                                        \
      const uint8_t *rw[1] = {base + (size_t)r * w->row_bytes};                                \
      for (int64_t t0 = 0; t0 < n_tok; t0 += MK_512_TT) {                                      \
        const char *a = (const char *)act + (size_t)t0 * act_stride;                           \
        float *yt = y + t0 * y_stride + r;                                                     \
        switch (n_tok - t0 < MK_512_TT ? n_tok - t0 : MK_512_TT) {                             \
          case 1: MK_SFX(micro_g8)(TY, sizeof(BT), rw, 1, cols, a, act_stride, 1, yt, y_stride); break; \
          case 2: MK_SFX(micro_g8)(TY, sizeof(BT), rw, 1, cols, a, act_stride, 2, yt, y_stride); break; \
          case 3: MK_SFX(micro_g8)(TY, sizeof(BT), rw, 1, cols, a, act_stride, 3, yt, y_stride); break; \
          default: MK_SFX(micro_g8)(TY, sizeof(BT), rw, 1, cols, a, act_stride, 4, yt, y_stride); break; \
        }                                                                                      \
      }                                                                                        \
    }                                                                                          \
  }

MK_512_ROWS(rows_q4_0, MK_TYPE_Q4_0, mk_block_q4_0)
MK_512_ROWS(rows_q4_1, MK_TYPE_Q4_1, mk_block_q4_1)
MK_512_ROWS(rows_q5_0, MK_TYPE_Q5_0, mk_block_q5_0)
MK_512_ROWS(rows_q5_1, MK_TYPE_Q5_1, mk_block_q5_1)
MK_512_ROWS(rows_q8_0, MK_TYPE_Q8_0, mk_block_q8_0)
#undef MK_512_ROWS

static const mk_quant_impl_t MK_SFX(impl) = {
    .quantize_xq = quantize_xq_512,
    .rows =
        {
            [MK_TYPE_F32] = mk_avx2_rows_f32,
            [MK_TYPE_F16] = mk_avx2_rows_f16,
            [MK_TYPE_BF16] = mk_avx2_rows_bf16,
            [MK_TYPE_Q4_0] = MK_SFX(rows_q4_0),
            [MK_TYPE_Q4_1] = MK_SFX(rows_q4_1),
            [MK_TYPE_Q5_0] = MK_SFX(rows_q5_0),
            [MK_TYPE_Q5_1] = MK_SFX(rows_q5_1),
            [MK_TYPE_Q8_0] = MK_SFX(rows_q8_0),
            [MK_TYPE_Q2_K] = mk_avx2_rows_q2_k,
            [MK_TYPE_Q3_K] = mk_avx2_rows_q3_k,
            [MK_TYPE_Q4_K] = mk_avx2_rows_q4_k,
            [MK_TYPE_Q5_K] = mk_avx2_rows_q5_k,
            [MK_TYPE_Q6_K] = mk_avx2_rows_q6_k,
        },
    .xq_layout =
        {
            [MK_TYPE_Q4_0] = MK_XQ_QUAD,
            [MK_TYPE_Q4_1] = MK_XQ_QUAD,
            [MK_TYPE_Q5_0] = MK_XQ_QUAD,
            [MK_TYPE_Q5_1] = MK_XQ_QUAD,
        },
};
