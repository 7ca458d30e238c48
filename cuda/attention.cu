/* Split-K GQA attention over the fp16 slot cache (see attention.cuh for layout and plan).
 *
 * Block = 4 warps, one (unit, split, token). Per chunk of MK_ATTN_CHUNK slots:
 *   A  logits: 8 lanes per slot, each lane dots D/8 dims of the K row (16-byte loads) with the
 *      unit's pre-scaled queries (shared memory); 3 shuffles reduce a dot. The MorphKV ring row
 *      (qsum.k) is computed from the same K registers.
 *   B  online softmax per query head (one warp per head): chunk max, rescale factor, p = exp.
 *   C  values: warp w takes slots w, w+4, ...; each lane owns D/32 dims of the V row and keeps
 *      acc[head][dim] in registers for all heads of the unit; masked slots are skipped.
 * The per-warp accumulators are summed in a fixed order (deterministic results). */
#include "cuda/attention.cuh"

#include <math.h>

#define MK_ATTN_THREADS 128
#define MK_ATTN_WARPS (MK_ATTN_THREADS / 32)

bool mk_cuda_attn_supported_dim(int d) { return d == 64 || d == 128 || d == 256; }

void mk_cuda_attn_plan(int n_units, int n_tok, int max_nscan, int target_blocks, int *n_split,
                       int *split_len) {
  int chunks = (int)mk_ceil_div(max_nscan > 0 ? max_nscan : 1, MK_ATTN_CHUNK);
  int64_t base = (int64_t)(n_units > 0 ? n_units : 1) * (n_tok > 0 ? n_tok : 1);
  int want = (int)mk_ceil_div(target_blocks > 0 ? target_blocks : 1, base);
  if (want < 1) want = 1;
  if (want > chunks) want = chunks;
  int per = (int)mk_ceil_div(chunks, want);
  *split_len = per * MK_ATTN_CHUNK;
  *n_split = (int)mk_ceil_div(max_nscan > 0 ? max_nscan : 1, *split_len);
}

size_t mk_cuda_attn_part_floats(int n_tok, int n_split, int n_q, int d) {
  return n_split > 1 ? (size_t)n_tok * n_split * n_q * d : 0;
}

__global__ void mk_kv_write_kernel(__half *kc, __half *vc, int32_t *posc, const float *k, const float *v,
                                   const int *slots, const int *tok_head0, const int *tok_qpos, int n_kv,
                                   int d, int n_slots) {
  const int h = blockIdx.x, t = blockIdx.y;
  const int slot = slots[t * n_kv + h];
  if (slot < 0 || slot >= n_slots) return;
  const size_t row = (size_t)(tok_head0[t] + h) * n_slots + slot;
  const size_t src = ((size_t)t * n_kv + h) * d;
  for (int i = threadIdx.x; i < d; i += blockDim.x) {
    kc[row * d + i] = __float2half_rn(k[src + i]);
    vc[row * d + i] = __float2half_rn(v[src + i]);
  }
  if (threadIdx.x == 0) posc[row] = tok_qpos[t];
}

void mk_cuda_kv_write(__half *kc, __half *vc, int32_t *posc, const float *k, const float *v,
                      const int *slots, const int *tok_head0, const int *tok_qpos, int n_tok, int n_kv,
                      int d, int n_slots, cudaStream_t stream) {
  if (n_tok <= 0 || n_kv <= 0) return;
  dim3 grid((unsigned)n_kv, (unsigned)n_tok);
  mk_kv_write_kernel<<<grid, d < 128 ? 64 : 128, 0, stream>>>(kc, vc, posc, k, v, slots, tok_head0,
                                                               tok_qpos, n_kv, d, n_slots);
}

/* Loads N consecutive fp16 to fp32 with the widest aligned loads (the pointer is aligned to
 * 2N bytes up to 16). */
template <int N>
static __device__ __forceinline__ void mk_load_f16(const __half *p, float *f) {
  if constexpr (N % 8 == 0) {
#pragma unroll
    for (int i = 0; i < N / 8; i++) mk_f16x8_to_f32(reinterpret_cast<const uint4 *>(p)[i], f + 8 * i);
  } else if constexpr (N % 4 == 0) {
#pragma unroll
    for (int i = 0; i < N / 4; i++) {
      const uint2 w = reinterpret_cast<const uint2 *>(p)[i];
      const float2 lo = mk_f16x2_to_f32(w.x), hi = mk_f16x2_to_f32(w.y);
      f[4 * i] = lo.x;
      f[4 * i + 1] = lo.y;
      f[4 * i + 2] = hi.x;
      f[4 * i + 3] = hi.y;
    }
  } else {
#pragma unroll
    for (int i = 0; i < N / 2; i++) {
      float2 t = mk_f16x2_to_f32(reinterpret_cast<const uint32_t *>(p)[i]);
      f[2 * i] = t.x;
      f[2 * i + 1] = t.y;
    }
  }
}

/* Phase B of a chunk: each warp takes query heads h = warp, warp + MK_ATTN_WARPS, ...; turns
 * the chunk's logits lg[h][] into exp(lg - m_new) in place and updates the running max, sum and
 * the rescale factor alpha of its heads. */
static __device__ __forceinline__ void mk_attn_softmax_chunk(float (*lg)[MK_ATTN_CHUNK], float *mrun, float *lrun,
                                                             float *alpha, int nq, int warp, int lane) {
  constexpr int CH = MK_ATTN_CHUNK;
  for (int h = warp; h < nq; h += MK_ATTN_WARPS) {
    float x[CH / 32], cmax = -INFINITY;
#pragma unroll
    for (int i = 0; i < CH / 32; i++) {
      x[i] = lg[h][lane + 32 * i];
      cmax = fmaxf(cmax, x[i]);
    }
    cmax = mk_warp_max(cmax);
    const float mold = mrun[h], mnew = fmaxf(mold, cmax);
    float al = 1.f, psum = 0.f;
    if (mnew != -INFINITY) {
      al = expf(mold - mnew);
#pragma unroll
      for (int i = 0; i < CH / 32; i++) {
        const float p = expf(x[i] - mnew);
        lg[h][lane + 32 * i] = p;
        psum += p;
      }
    } else {
#pragma unroll
      for (int i = 0; i < CH / 32; i++) lg[h][lane + 32 * i] = 0.f;
    }
    psum = mk_warp_sum(psum);
    __syncwarp();
    if (lane == 0) {
      alpha[h] = al;
      mrun[h] = mnew;
      lrun[h] = lrun[h] * al + psum;
    }
  }
}

/* The block's result: the normalised output (one split) or the split's partial output and its
 * (max, sum) for the combine kernel. */
template <int D>
static __device__ __forceinline__ void mk_attn_write_out(const mk_cuda_attn_args_t &a, const mk_cuda_attn_unit_t *u,
                                                         float (*red)[D], const float *mrun, const float *lrun, int s,
                                                         int t, int tid) {
  for (int i = tid; i < u->nq * D; i += MK_ATTN_THREADS) {
    const int h = i / D, c = i % D, qh = u->q[h];
    if (a.n_split == 1) {
      const float L = lrun[h];
      a.out[((size_t)t * a.n_q + qh) * D + c] = L > 0.f ? red[h][c] / L : 0.f;
    } else {
      const size_t o = ((size_t)t * a.n_split + s) * a.n_q + qh;
      a.part_o[o * D + c] = red[h][c];
      if (c == 0) {
        a.part_ml[o * 2] = mrun[h];
        a.part_ml[o * 2 + 1] = lrun[h];
      }
    }
  }
}

template <int D>
__global__ __launch_bounds__(MK_ATTN_THREADS) void mk_attn_split_kernel(mk_cuda_attn_args_t a) {
  constexpr int G = MK_ATTN_GMAX, CH = MK_ATTN_CHUNK;
  constexpr int DL = D / 8;  /* dims per lane, logit phase (8 lanes per slot) */
  constexpr int DV = D / 32; /* dims per lane, value phase */
  __shared__ __align__(16) float qs[G][D];
  __shared__ __align__(16) float qz[D];
  __shared__ float lg[G][CH];
  __shared__ int vld[CH];
  __shared__ float mrun[G], lrun[G], alpha[G];
  __shared__ __align__(16) float red[G][D];

  const mk_cuda_attn_unit_t *u = a.units + blockIdx.x;
  const int nq = u->nq, kvh = u->kv;
  const int s = blockIdx.y, t = blockIdx.z;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int hf = a.tok_head0[t] + kvh;
  const int qpos = a.tok_qpos[t];
  const int nscan = min(a.tok_nscan[t], a.n_slots);
  const int r0 = s * a.split_len, r1 = min(r0 + a.split_len, nscan);
  const int zrow = (a.tok_zrow && a.qsum && a.zring && u->zwrite) ? a.tok_zrow[t] : -1;
  const __half *K = a.k + (size_t)hf * a.n_slots * D;
  const __half *V = a.v + (size_t)hf * a.n_slots * D;
  const int32_t *P = a.pos + (size_t)hf * a.n_slots;
  float *Z = zrow >= 0 ? a.zring + ((size_t)hf * a.window + zrow) * a.n_slots : nullptr;

  for (int i = tid; i < G * D; i += MK_ATTN_THREADS) {
    const int h = i / D, c = i % D;
    qs[h][c] = h < nq ? a.q[((size_t)t * a.n_q + u->q[h]) * D + c] * a.scale : 0.f;
  }
  if (Z)
    for (int i = tid; i < D; i += MK_ATTN_THREADS) qz[i] = a.qsum[((size_t)t * a.n_kv + kvh) * D + i] * a.scale;
  if (tid < G) {
    mrun[tid] = -INFINITY;
    lrun[tid] = 0.f;
    alpha[tid] = 1.f;
  }
  float acc[G][DV];
#pragma unroll
  for (int h = 0; h < G; h++)
#pragma unroll
    for (int i = 0; i < DV; i++) acc[h][i] = 0.f;
  __syncthreads();

  const int sub = lane & 7;
  for (int c0 = r0; c0 < r1; c0 += CH) {
    /* A: logits of this chunk (unrolled: two K loads in flight per lane before the shuffles) */
#pragma unroll 2
    for (int pass = 0; pass < CH / (4 * MK_ATTN_WARPS); pass++) {
      const int jj = pass * (4 * MK_ATTN_WARPS) + warp * 4 + (lane >> 3);
      const int j = c0 + jj;
      const bool in = j < r1;
      const int pj = in ? P[j] : -1;
      const bool valid = in && pj >= 0 && pj <= qpos;
      float kf[DL];
      if (in) {
        mk_load_f16<DL>(K + (size_t)j * D + sub * DL, kf);
      } else {
#pragma unroll
        for (int i = 0; i < DL; i++) kf[i] = 0.f;
      }
      float part[G];
#pragma unroll
      for (int h = 0; h < G; h++) {
        float d0 = 0.f;
        if (h < nq) { /* nq is the same for the whole block: no divergence */
#pragma unroll
          for (int i = 0; i < DL; i++) d0 = fmaf(kf[i], qs[h][sub * DL + i], d0);
          d0 += __shfl_xor_sync(0xffffffffu, d0, 1);
          d0 += __shfl_xor_sync(0xffffffffu, d0, 2);
          d0 += __shfl_xor_sync(0xffffffffu, d0, 4);
        }
        part[h] = d0;
      }
      if (Z) {
        float z = 0.f;
#pragma unroll
        for (int i = 0; i < DL; i++) z = fmaf(kf[i], qz[sub * DL + i], z);
        z += __shfl_xor_sync(0xffffffffu, z, 1);
        z += __shfl_xor_sync(0xffffffffu, z, 2);
        z += __shfl_xor_sync(0xffffffffu, z, 4);
        if (sub == 0 && in) Z[j] = valid ? z : -INFINITY;
      }
      if (sub == 0) {
#pragma unroll
        for (int h = 0; h < G; h++) lg[h][jj] = valid ? part[h] : -INFINITY;
        vld[jj] = valid ? 1 : 0;
      }
    }
    __syncthreads();

    /* B: online softmax update, one warp per head */
    mk_attn_softmax_chunk(lg, mrun, lrun, alpha, nq, warp, lane);
    __syncthreads();

    /* C: acc += p V */
#pragma unroll
    for (int h = 0; h < G; h++) {
      const float al = alpha[h];
#pragma unroll
      for (int i = 0; i < DV; i++) acc[h][i] *= al;
    }
#pragma unroll 4
    for (int jj = warp; jj < CH; jj += MK_ATTN_WARPS) {
      if (!vld[jj]) continue;
      float vf[DV];
      mk_load_f16<DV>(V + (size_t)(c0 + jj) * D + lane * DV, vf);
#pragma unroll
      for (int h = 0; h < G; h++) {
        const float p = lg[h][jj];
#pragma unroll
        for (int i = 0; i < DV; i++) acc[h][i] = fmaf(p, vf[i], acc[h][i]);
      }
    }
    __syncthreads();
  }

  /* sum the warps' accumulators in a fixed order */
  for (int w = 0; w < MK_ATTN_WARPS; w++) {
    if (warp == w) {
#pragma unroll
      for (int h = 0; h < G; h++)
#pragma unroll
        for (int i = 0; i < DV; i++) red[h][lane * DV + i] = (w == 0 ? 0.f : red[h][lane * DV + i]) + acc[h][i];
    }
    __syncthreads();
  }

  mk_attn_write_out<D>(a, u, red, mrun, lrun, s, t, tid);
}

__global__ void mk_attn_combine_kernel(mk_cuda_attn_args_t a) {
  const int qh = blockIdx.x, t = blockIdx.y, D = a.d;
  const size_t base = (size_t)t * a.n_split * a.n_q + qh;
  float M = -INFINITY;
  for (int s = 0; s < a.n_split; s++) M = fmaxf(M, a.part_ml[(base + (size_t)s * a.n_q) * 2]);
  for (int c = threadIdx.x; c < D; c += blockDim.x) {
    float o = 0.f, L = 0.f;
    if (M != -INFINITY) {
      for (int s = 0; s < a.n_split; s++) {
        const size_t idx = base + (size_t)s * a.n_q;
        const float m = a.part_ml[idx * 2];
        if (m == -INFINITY) continue;
        const float w = expf(m - M);
        L += a.part_ml[idx * 2 + 1] * w;
        o += a.part_o[idx * D + c] * w;
      }
    }
    a.out[((size_t)t * a.n_q + qh) * D + c] = L > 0.f ? o / L : 0.f;
  }
}

void mk_cuda_attention(const mk_cuda_attn_args_t *a, cudaStream_t stream) {
  if (a->n_tok <= 0 || a->n_units <= 0) return;
  dim3 grid((unsigned)a->n_units, (unsigned)a->n_split, (unsigned)a->n_tok);
  switch (a->d) {
    case 64: mk_attn_split_kernel<64><<<grid, MK_ATTN_THREADS, 0, stream>>>(*a); break;
    case 128: mk_attn_split_kernel<128><<<grid, MK_ATTN_THREADS, 0, stream>>>(*a); break;
    case 256: mk_attn_split_kernel<256><<<grid, MK_ATTN_THREADS, 0, stream>>>(*a); break;
    default: return;
  }
  if (a->n_split > 1) {
    dim3 g2((unsigned)a->n_q, (unsigned)a->n_tok);
    mk_attn_combine_kernel<<<g2, a->d, 0, stream>>>(*a);
  }
}
