/* MorphKV scoring and victim kernels (see morphkv.cuh). */
#include "cuda/morphkv.cuh"

#include <math.h>

#define MK_MKV_THREADS 256
#define MK_MKV_WARPS (MK_MKV_THREADS / 32)

#ifdef MK_CUDA_EMU
#define MK_MKV_SPLIT 64 /* the emulator's small test caches still take the multi-split path */
#else
#define MK_MKV_SPLIT 512
#endif

void mk_cuda_mkv_plan(int max_nscan, int *n_split, int *split_len) {
  int n = (int)mk_ceil_div(max_nscan > 0 ? max_nscan : 1, MK_MKV_SPLIT);
  if (n > 16) n = 16;
  if (n < 1) n = 1;
  *split_len = (int)mk_ceil_div(max_nscan > 0 ? max_nscan : 1, n);
  *n_split = n;
}

/* (m, s) pairs of an online softmax denominator: s = sum exp(v - m). */
static __device__ __forceinline__ void mk_ms_merge(float &m, float &s, float m2, float s2) {
  const float M = fmaxf(m, m2);
  float r = 0.f;
  if (m != -INFINITY) r += s * expf(m - M);
  if (m2 != -INFINITY) r += s2 * expf(m2 - M);
  m = M;
  s = r;
}

/* Victim order: lower score first, then larger position. x = (score bits, pos, slot, 0). */
static __device__ __forceinline__ bool mk_victim_better(int4 a, int4 b) {
  if (a.z < 0) return false;
  if (b.z < 0) return true;
  const float sa = __int_as_float(a.x), sb = __int_as_float(b.x);
  return sa < sb || (sa == sb && a.y > b.y);
}

static __device__ __forceinline__ int4 mk_shfl_int4(int4 v, int o) {
  v.x = __shfl_xor_sync(0xffffffffu, v.x, o);
  v.y = __shfl_xor_sync(0xffffffffu, v.y, o);
  v.z = __shfl_xor_sync(0xffffffffu, v.z, o);
  v.w = __shfl_xor_sync(0xffffffffu, v.w, o);
  return v;
}

__global__ __launch_bounds__(MK_MKV_THREADS) void mk_mkv_stats_kernel(mk_cuda_mkv_args_t a) {
  const int s = blockIdx.x, jb = blockIdx.y;
  const mk_cuda_mkv_job_t job = a.jobs[jb];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int W = a.window, lim = job.next_pos - W;
  const int j0 = s * a.split_len, j1 = min(j0 + a.split_len, min(job.nscan, a.n_slots));
  const int32_t *P = a.pos + (size_t)job.hf * a.n_slots;
  for (int r = warp; r < W; r += MK_MKV_WARPS) {
    const float *Z = a.zring + ((size_t)job.hf * W + r) * a.n_slots;
    float m = -INFINITY, sum = 0.f;
    for (int j = j0 + lane; j < j1; j += 32) {
      const int p = P[j];
      if (p < 0 || p >= lim) continue;
      const float v = Z[j];
      if (v > m) {
        sum = sum * expf(m - v) + 1.f;
        m = v;
      } else {
        sum += expf(v - m);
      }
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
      const float m2 = __shfl_xor_sync(0xffffffffu, m, o), s2 = __shfl_xor_sync(0xffffffffu, sum, o);
      mk_ms_merge(m, sum, m2, s2);
    }
    if (lane == 0) a.stats[((size_t)jb * a.n_split + s) * W + r] = make_float2(m, sum);
  }
}

__global__ __launch_bounds__(MK_MKV_THREADS) void mk_mkv_score_kernel(mk_cuda_mkv_args_t a) {
  __shared__ float rowst[2 * MK_MKV_WMAX]; /* (W) max, then (W) 1/sum */
  __shared__ int4 wbest[MK_MKV_WARPS];
  __shared__ bool last;
  const int s = blockIdx.x, jb = blockIdx.y;
  const mk_cuda_mkv_job_t job = a.jobs[jb];
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int W = a.window, lim = job.next_pos - W;
  const int nscan = min(job.nscan, a.n_slots);
  const int j0 = s * a.split_len, j1 = min(j0 + a.split_len, nscan);
  int32_t *P = a.pos + (size_t)job.hf * a.n_slots;

  for (int r = tid; r < W; r += MK_MKV_THREADS) {
    float m = -INFINITY, sum = 0.f;
    for (int k = 0; k < a.n_split; k++) {
      const float2 st = a.stats[((size_t)jb * a.n_split + k) * W + r];
      mk_ms_merge(m, sum, st.x, st.y);
    }
    rowst[r] = m;
    rowst[W + r] = (m != -INFINITY && sum > 0.f) ? 1.0f / sum : 0.f; /* 0: row has no score */
  }
  __syncthreads();

  int4 best = make_int4(0, -1, -1, 0);
  for (int j = j0 + tid; j < j1; j += MK_MKV_THREADS) {
    const int p = P[j];
    const bool cand = p >= 0 && p < lim;
    float score = -1.f;
    if (cand) {
      score = 0.f;
      for (int k = 0; k < W; k++) { /* oldest query first, as the host policy sums */
        const int r = ((job.next_pos - W + k) % W + W) % W;
        const float inv = rowst[W + r];
        if (inv == 0.f) continue;
        const float pr = expf(a.zring[((size_t)job.hf * W + r) * a.n_slots + j] - rowst[r]) * inv;
        score = a.fusion_max ? fmaxf(score, pr) : score + pr;
      }
      const int4 c = make_int4(__float_as_int(score), p, j, 0);
      if (mk_victim_better(c, best)) best = c;
    }
    if (job.mode == MK_MKV_DUMP && a.dump) a.dump[job.dump_off + j] = score;
  }
  if (job.mode != MK_MKV_ARGMIN) return;

#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const int4 other = mk_shfl_int4(best, o);
    if (mk_victim_better(other, best)) best = other;
  }
  if (lane == 0) wbest[warp] = best;
  __syncthreads();
  if (tid == 0) {
    int4 b = wbest[0];
    for (int w = 1; w < MK_MKV_WARPS; w++)
      if (mk_victim_better(wbest[w], b)) b = wbest[w];
    a.best[(size_t)jb * a.n_split + s] = b;
    __threadfence();
    const unsigned ticket = atomicAdd(&a.counters[jb], 1u);
    last = ticket == (unsigned)a.n_split - 1;
  }
  __syncthreads();
  if (!last || tid != 0) return;
  __threadfence();
  int4 b = make_int4(0, -1, -1, 0);
  for (int k = 0; k < a.n_split; k++) {
    const int4 c = __ldcg(&a.best[(size_t)jb * a.n_split + k]);
    if (mk_victim_better(c, b)) b = c;
  }
  a.victims[2 * jb] = b.z;
  a.victims[2 * jb + 1] = b.z >= 0 ? b.y : -1;
  if (b.z >= 0) P[b.z] = -1;
  a.counters[jb] = 0;
}

void mk_cuda_morphkv_select(const mk_cuda_mkv_args_t *a, cudaStream_t stream) {
  if (a->n_jobs <= 0) return;
  dim3 grid((unsigned)a->n_split, (unsigned)a->n_jobs);
  mk_mkv_stats_kernel<<<grid, MK_MKV_THREADS, 0, stream>>>(*a);
  mk_mkv_score_kernel<<<grid, MK_MKV_THREADS, 0, stream>>>(*a);
}
