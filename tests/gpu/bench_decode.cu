/* Decode benchmark on a synthetic Llama-3.1-8B-shaped model (random bf16 weights generated on the
 * device), built from the CUDA backend's own kernels (the cuda/ headers): GEMV (batch <= 4) or cuBLAS
 * (larger batches), RMSNorm, RoPE, SwiGLU, K/V write, split-K GQA attention over the fp16 slot
 * cache, and the MorphKV ring row + victim kernels. It does not go through the engine: the cache
 * is filled directly with random K/V (no 32K-token prefill), and slot bookkeeping runs on the
 * device (full cache: slot = position; MorphKV: the new token takes the slot the previous step's
 * argmin freed, which is what the host's lowest-free-slot rule yields in steady state).
 *
 * One decode step = one CUDA graph launch (captured once per configuration; eager launches if
 * capture fails). Printed per configuration: tokens/s, K/V bytes (and that they do not grow for
 * MorphKV), bytes read per step, and the fraction of the HBM roofline = bytes / time / peak, for
 * the datasheet peak (H200: 4.8 TB/s), the peak from the device attributes (memory clock x bus
 * width x 2) and a measured device-to-device copy.
 *
 * Weights: bf16 (cuBLAS / the bf16 GEMV) and Q4_0 (the backend's quantized GEMV on file-format
 * blocks for batches <= 4, bf16 tiles dequantized per matmul + cuBLAS above), the same random
 * model in both (Q4_0 blocks generated on the device). Bytes per step count each matrix in its
 * own format (Q4_0: 18 bytes per 32 weights).
 *
 * Usage (stable: tests/gpu/device-check.sh calls it):
 *   bench_decode [--quick | --tiny] [--steps N] [--layers N] [--weights bf16|q4_0|all] [--eager]
 *   --quick    4 layers, vocabulary 32000, contexts / 4: a smoke run on a GPU
 *   --tiny     a toy shape for the CPU emulator (bench_decode_emu): checks the program, not speed
 *   --weights  which weight formats to run (all: bf16 then Q4_0; default all)
 *   --eager    launch every kernel of a step (no CUDA graph): run once with and once without to
 *              measure the launch overhead a graph removes (docs/cuda.md, "CUDA graphs")
 * Configurations, per weight format: batch 1 and 16 x {full at 512, 8K, 32K; MorphKV W 32 C 2048
 * at 8K, 32K}. One line each: ms/step, tok/s, KV bytes, bytes moved per step, TB/s, and the fraction
 * of the datasheet, attribute and measured device-to-device copy bandwidths. Exit 0, 1 (a sanity
 * check failed), 2 (usage), 77 (no device). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda/attention.cuh"
#include "cuda/common.cuh"
#include "cuda/dequant.cuh"
#include "cuda/elementwise.cuh"
#include "cuda/gemv_quant.cuh"
#include "cuda/matmul.cuh"
#include "cuda/morphkv.cuh"
#include "cuda/norm.cuh"
#include "cuda/rope.cuh"

#define CK(call)                                                                                          \
  do {                                                                                                    \
    cudaError_t e_ = (call);                                                                              \
    if (e_ != cudaSuccess) {                                                                              \
      fprintf(stderr, "bench_decode: %s failed: %s (%s:%d)\n", #call, cudaGetErrorString(e_), __FILE__,   \
              __LINE__);                                                                                  \
      exit(1);                                                                                            \
    }                                                                                                     \
  } while (0)
#define CB(call)                                                                                          \
  do {                                                                                                    \
    cublasStatus_t s_ = (call);                                                                           \
    if (s_ != CUBLAS_STATUS_SUCCESS) {                                                                    \
      fprintf(stderr, "bench_decode: %s failed: %s (%s:%d)\n", #call, cublasGetStatusString(s_), __FILE__, \
              __LINE__);                                                                                  \
      exit(1);                                                                                            \
    }                                                                                                     \
  } while (0)

typedef struct shape {
  int n_layer, n_embd, n_head, n_kv, n_ff, n_vocab, d;
} shape_t;

/* A weight matrix on the device: bf16 (rows, cols) or Q4_0 blocks (rows, cols / 32 x 18 bytes). */
typedef struct wmat {
  void *p;
  int type; /* MK_DQ_BF16 or MK_DQ_Q4_0 */
  int rows, cols;
} wmat_t;

typedef struct layer {
  wmat_t wq, wk, wv, wo, wg, wu, wd;
  float *attn_norm, *ffn_norm;
} layer_t;

typedef struct model {
  shape_t s;
  int wtype;
  __nv_bfloat16 *tok_embd;
  wmat_t output;
  __nv_bfloat16 *tile; /* Q4_0: one dequantized bf16 tile for batched matmuls */
  size_t tile_elems;
  float *out_norm;
  layer_t *L;
  size_t bytes_read_per_token; /* every matrix but the embedding table (in its format), plus norms */
  size_t weight_elems;         /* weights of those matrices */
} model_t;

/* ---- random fills (bench-only kernels) --------------------------------------------------- */

static __device__ __forceinline__ float bench_rand(uint64_t i, uint64_t seed) {
  uint64_t z = i * 0x9E3779B97F4A7C15ull + seed;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  z ^= z >> 31;
  return (float)(z >> 40) * (2.0f / 16777216.0f) - 1.0f; /* [-1, 1) */
}

__global__ void bench_fill_bf16(__nv_bfloat16 *p, size_t n, uint64_t seed, float scale) {
  for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
    p[i] = __float2bfloat16_rn(bench_rand(i, seed) * scale);
}

/* Q4_0 blocks: d = scale / 8 x (0.5 .. 1), quants uniform: weights of magnitude ~ scale. */
__global__ void bench_fill_q4_0(uint8_t *p, size_t n_blocks, uint64_t seed, float scale) {
  for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n_blocks; i += (size_t)gridDim.x * blockDim.x) {
    uint8_t *b = p + i * 18;
    __half_raw r = __float2half_rn(scale / 8.0f * (0.75f + 0.25f * bench_rand(i, seed)));
    b[0] = (uint8_t)(r.x & 0xff);
    b[1] = (uint8_t)(r.x >> 8);
    for (int j = 0; j < 16; j++) b[2 + j] = (uint8_t)((bench_rand(i * 16 + j, seed ^ 0x5bd1e995ull) + 1.0f) * 127.9f);
  }
}

__global__ void bench_fill_f16(__half *p, size_t n, uint64_t seed, float scale) {
  for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
    p[i] = __float2half_rn(bench_rand(i, seed) * scale);
}

__global__ void bench_fill_f32(float *p, size_t n, uint64_t seed, float scale, float offset) {
  for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
    p[i] = offset + bench_rand(i, seed) * scale;
}

/* pos[] of every head: full: pos = slot below ctx; MorphKV: C-W old positions spread over
 * [0, ctx-W), the W most recent, then one free slot (index C). */
__global__ void bench_fill_pos(int32_t *pos, size_t n_heads, int n_slots, int ctx, int morph, int C, int W) {
  for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n_heads * n_slots;
       i += (size_t)gridDim.x * blockDim.x) {
    const int j = (int)(i % n_slots);
    int p;
    if (!morph)
      p = j < ctx ? j : -1;
    else if (j < C - W)
      p = (int)((int64_t)j * (ctx - W) / (C - W));
    else if (j < C)
      p = ctx - W + (j - (C - W));
    else
      p = -1;
    pos[i] = p;
  }
}

static unsigned fill_blocks(size_t n) {
  size_t b = (n + 255) / 256;
  return (unsigned)(b > 8192 ? 8192 : (b ? b : 1));
}

/* ---- per-step device bookkeeping ---------------------------------------------------------- */

typedef struct step_bufs {
  int *ctr;        /* steps done */
  int *qpos;       /* (B) */
  int *nscan;      /* (B) */
  int *zrow;       /* (B) */
  int *head0;      /* (n_layer, B) */
  int *slots;      /* (n_layer, B, n_kv) */
  int *victims;    /* (n_layer, B * n_kv, 2) */
  mk_cuda_mkv_job_t *jobs; /* (n_layer, B * n_kv) */
  int *q_to_kv;    /* (n_q) */
  mk_cuda_attn_unit_t *units;
} step_bufs_t;

__global__ void bench_step_begin(step_bufs_t sb, int B, int n_layer, int n_kv, int ctx, int morph, int n_slots, int W) {
  __shared__ int step;
  if (threadIdx.x == 0) step = *sb.ctr;
  __syncthreads();
  const int qp = ctx + step;
  for (int b = threadIdx.x; b < B; b += blockDim.x) {
    sb.qpos[b] = qp;
    sb.nscan[b] = morph ? n_slots : qp + 1;
    sb.zrow[b] = qp % W;
  }
  const int per = B * n_kv;
  for (int i = threadIdx.x; i < n_layer * per; i += blockDim.x) {
    const int L = i / per, j = i % per;
    sb.slots[i] = morph ? sb.victims[(size_t)L * per * 2 + 2 * j] : qp;
    sb.jobs[i].next_pos = qp + 1;
  }
  __syncthreads();
  if (threadIdx.x == 0) *sb.ctr = step + 1;
}

/* ---- the benchmark ------------------------------------------------------------------------ */

typedef struct run_cfg {
  int B;
  bool morph;
  int ctx;
  int C, W;
} run_cfg_t;

typedef struct acts {
  float *x, *xn, *q, *k, *v, *qsum, *att, *o, *fg, *fu, *logits, *part;
  __nv_bfloat16 *xb;
  int32_t *ids;
} acts_t;

/* y = x W^T as the backend does it (backend_cuda.cu cuda_matmul, weights mode "quant"). */
static void matmul(const model_t *m, cublasHandle_t h, const wmat_t *w, const float *x, int n, float *y,
                   __nv_bfloat16 *xb, cudaStream_t st) {
  const int rows = w->rows, cols = w->cols;
  if (w->type == MK_DQ_Q4_0 && n <= MK_GEMV_MAX_N) {
    mk_cuda_gemv_quant(MK_DQ_Q4_0, w->p, rows, cols, (size_t)cols / 32 * 18, x, n, y, st);
  } else if (n <= MK_GEMV_MAX_N) {
    mk_cuda_gemv_bf16((const __nv_bfloat16 *)w->p, rows, cols, x, n, y, st);
  } else {
    mk_cuda_f32_to_bf16(x, xb, (size_t)n * cols, st);
    if (w->type == MK_DQ_BF16) {
      CB(mk_cuda_gemm_bf16(h, (const __nv_bfloat16 *)w->p, rows, cols, xb, n, y));
      return;
    }
    const int tile = (int)(m->tile_elems / (size_t)cols < (size_t)rows ? m->tile_elems / (size_t)cols : (size_t)rows);
    for (int r0 = 0; r0 < rows; r0 += tile) {
      const int nr = rows - r0 < tile ? rows - r0 : tile;
      mk_cuda_dequant_bf16(MK_DQ_Q4_0, (const uint8_t *)w->p + (size_t)r0 * (cols / 32) * 18, (int64_t)nr * (cols / 32),
                           m->tile, st);
      CB(mk_cuda_gemm_bf16_tile(h, m->tile, nr, cols, xb, n, y + r0, rows));
    }
  }
}

/* Bytes of a matrix in its format. */
static size_t wmat_bytes(const wmat_t *w) {
  return w->type == MK_DQ_Q4_0 ? (size_t)w->rows * (w->cols / 32) * 18 : (size_t)w->rows * w->cols * 2;
}

static __nv_bfloat16 *alloc_bf16(size_t n, uint64_t seed, float scale) {
  __nv_bfloat16 *p;
  CK(cudaMalloc((void **)&p, n * sizeof *p));
  bench_fill_bf16<<<fill_blocks(n), 256>>>(p, n, seed, scale);
  return p;
}

static float *alloc_f32(size_t n, uint64_t seed, float scale, float offset) {
  float *p;
  CK(cudaMalloc((void **)&p, n * sizeof *p));
  bench_fill_f32<<<fill_blocks(n), 256>>>(p, n, seed, scale, offset);
  return p;
}

static wmat_t alloc_w(int type, int rows, int cols, uint64_t seed, float scale) {
  wmat_t w = {NULL, type, rows, cols};
  if (type == MK_DQ_BF16) {
    w.p = alloc_bf16((size_t)rows * cols, seed, scale);
  } else {
    const size_t nb = (size_t)rows * (cols / 32);
    CK(cudaMalloc(&w.p, nb * 18));
    bench_fill_q4_0<<<fill_blocks(nb), 256>>>((uint8_t *)w.p, nb, seed, scale);
  }
  return w;
}

static void model_init(model_t *m, const shape_t *s, int wtype) {
  memset(m, 0, sizeof *m);
  m->s = *s;
  m->wtype = wtype;
  const int E = s->n_embd, Q = s->n_head * s->d, K = s->n_kv * s->d, F = s->n_ff;
  uint64_t seed = 1;
  m->tok_embd = alloc_bf16((size_t)s->n_vocab * E, seed++, 1.0f);
  m->output = alloc_w(wtype, s->n_vocab, E, seed++, 1.0f / sqrtf((float)E));
  m->out_norm = alloc_f32(E, seed++, 0.1f, 1.0f);
  m->L = (layer_t *)calloc((size_t)s->n_layer, sizeof(layer_t));
  size_t w_bytes = wmat_bytes(&m->output), w_elems = (size_t)s->n_vocab * E;
  for (int l = 0; l < s->n_layer; l++) {
    layer_t *L = &m->L[l];
    L->wq = alloc_w(wtype, Q, E, seed++, 1.0f / sqrtf((float)E));
    L->wk = alloc_w(wtype, K, E, seed++, 1.0f / sqrtf((float)E));
    L->wv = alloc_w(wtype, K, E, seed++, 1.0f / sqrtf((float)E));
    L->wo = alloc_w(wtype, E, Q, seed++, 1.0f / sqrtf((float)Q));
    L->wg = alloc_w(wtype, F, E, seed++, 1.0f / sqrtf((float)E));
    L->wu = alloc_w(wtype, F, E, seed++, 1.0f / sqrtf((float)E));
    L->wd = alloc_w(wtype, E, F, seed++, 1.0f / sqrtf((float)F));
    L->attn_norm = alloc_f32(E, seed++, 0.1f, 1.0f);
    L->ffn_norm = alloc_f32(E, seed++, 0.1f, 1.0f);
    const wmat_t *ws[] = {&L->wq, &L->wk, &L->wv, &L->wo, &L->wg, &L->wu, &L->wd};
    for (int i = 0; i < 7; i++) w_bytes += wmat_bytes(ws[i]), w_elems += (size_t)ws[i]->rows * ws[i]->cols;
  }
  m->bytes_read_per_token = w_bytes + (size_t)s->n_layer * 2 * 4 * E + 4 * (size_t)E;
  m->weight_elems = w_elems;
  if (wtype == MK_DQ_Q4_0) { /* the backend's tile: 64 MiB of bf16 (MK_WTMP_BYTES) */
    m->tile_elems = ((size_t)64 << 20) / sizeof(__nv_bfloat16);
    CK(cudaMalloc((void **)&m->tile, m->tile_elems * sizeof(__nv_bfloat16)));
  }
  CK(cudaDeviceSynchronize());
}

static void model_free(model_t *m) {
  cudaFree(m->tok_embd);
  cudaFree(m->output.p);
  cudaFree(m->out_norm);
  cudaFree(m->tile);
  for (int l = 0; l < m->s.n_layer; l++) {
    layer_t *L = &m->L[l];
    const wmat_t *ws[] = {&L->wq, &L->wk, &L->wv, &L->wo, &L->wg, &L->wu, &L->wd};
    for (int i = 0; i < 7; i++) cudaFree(ws[i]->p);
    cudaFree(L->attn_norm);
    cudaFree(L->ffn_norm);
  }
  free(m->L);
}

/* Enqueues one decode step of B sequences (all kernels on st). */
static void decode_step(const model_t *m, const run_cfg_t *rc, acts_t *a, step_bufs_t *sb, __half *kc, __half *vc,
                        int32_t *posc, float *zring, const mk_cuda_attn_args_t *attn_tpl,
                        const mk_cuda_mkv_args_t *mkv_tpl, int n_slots, cublasHandle_t h, cudaStream_t st) {
  const shape_t *s = &m->s;
  const int B = rc->B, E = s->n_embd, d = s->d, n_q = s->n_head, n_kv = s->n_kv;
  bench_step_begin<<<1, 256, 0, st>>>(*sb, B, s->n_layer, n_kv, rc->ctx, rc->morph, n_slots, rc->W);
  mk_cuda_embed(m->tok_embd, E, a->ids, B, a->x, st);
  for (int l = 0; l < s->n_layer; l++) {
    const layer_t *L = &m->L[l];
    mk_cuda_rmsnorm(a->xn, a->x, L->attn_norm, B, E, 1e-5f, st);
    matmul(m, h, &L->wq, a->xn, B, a->q, a->xb, st);
    matmul(m, h, &L->wk, a->xn, B, a->k, a->xb, st);
    matmul(m, h, &L->wv, a->xn, B, a->v, a->xb, st);
    mk_cuda_rope(a->q, sb->qpos, B, n_q, d, d, 5e5f, false, NULL, st);
    mk_cuda_rope(a->k, sb->qpos, B, n_kv, d, d, 5e5f, false, NULL, st);
    if (rc->morph) mk_cuda_group_qsum(a->qsum, a->q, B, n_q, n_kv, d, sb->q_to_kv, st);
    const int *slots = sb->slots + (size_t)l * B * n_kv, *head0 = sb->head0 + (size_t)l * B;
    mk_cuda_kv_write(kc, vc, posc, a->k, a->v, slots, head0, sb->qpos, B, n_kv, d, n_slots, st);
    mk_cuda_attn_args_t at = *attn_tpl;
    at.tok_head0 = head0;
    mk_cuda_attention(&at, st);
    if (rc->morph) {
      mk_cuda_mkv_args_t ma = *mkv_tpl;
      ma.jobs = sb->jobs + (size_t)l * B * n_kv;
      ma.victims = sb->victims + (size_t)l * B * n_kv * 2;
      mk_cuda_morphkv_select(&ma, st);
    }
    matmul(m, h, &L->wo, a->att, B, a->o, a->xb, st);
    mk_cuda_add(a->x, a->o, (size_t)B * E, st);
    mk_cuda_rmsnorm(a->xn, a->x, L->ffn_norm, B, E, 1e-5f, st);
    matmul(m, h, &L->wg, a->xn, B, a->fg, a->xb, st);
    matmul(m, h, &L->wu, a->xn, B, a->fu, a->xb, st);
    mk_cuda_swiglu(a->fg, a->fg, a->fu, (size_t)B * s->n_ff, st);
    matmul(m, h, &L->wd, a->fg, B, a->o, a->xb, st);
    mk_cuda_add(a->x, a->o, (size_t)B * E, st);
  }
  mk_cuda_rmsnorm(a->xn, a->x, m->out_norm, B, E, 1e-5f, st);
  matmul(m, h, &m->output, a->xn, B, a->logits, a->xb, st);
}

typedef struct peaks {
  double datasheet, attr, copy;
} peaks_t;

/* The device cache of one configuration, filled with random K/V (and ring rows). */
typedef struct dev_cache {
  __half *kc, *vc;
  int32_t *posc;
  float *zring;
  int n_slots;
  size_t n_heads, kv_elems;
} dev_cache_t;

static void cache_init(dev_cache_t *dc, const shape_t *s, const run_cfg_t *rc, int total_steps, cudaStream_t st) {
  memset(dc, 0, sizeof *dc);
  dc->n_slots = rc->morph ? rc->C + 1 : rc->ctx + total_steps;
  dc->n_heads = (size_t)rc->B * s->n_layer * s->n_kv;
  dc->kv_elems = dc->n_heads * dc->n_slots * s->d;
  CK(cudaMalloc((void **)&dc->kc, dc->kv_elems * sizeof(__half)));
  CK(cudaMalloc((void **)&dc->vc, dc->kv_elems * sizeof(__half)));
  CK(cudaMalloc((void **)&dc->posc, dc->n_heads * dc->n_slots * sizeof(int32_t)));
  bench_fill_f16<<<fill_blocks(dc->kv_elems), 256, 0, st>>>(dc->kc, dc->kv_elems, 77, 1.0f);
  bench_fill_f16<<<fill_blocks(dc->kv_elems), 256, 0, st>>>(dc->vc, dc->kv_elems, 78, 1.0f);
  bench_fill_pos<<<fill_blocks(dc->n_heads * dc->n_slots), 256, 0, st>>>(dc->posc, dc->n_heads, dc->n_slots, rc->ctx,
                                                                         rc->morph, rc->C, rc->W);
  if (rc->morph) {
    size_t zn = dc->n_heads * (size_t)rc->W * dc->n_slots;
    CK(cudaMalloc((void **)&dc->zring, zn * sizeof(float)));
    bench_fill_f32<<<fill_blocks(zn), 256, 0, st>>>(dc->zring, zn, 79, 4.0f, 0.0f);
  }
}

static void acts_init(acts_t *ap, const shape_t *s, int B) {
  acts_t a;
  const int n_q = s->n_head, n_kv = s->n_kv, d = s->d, E = s->n_embd;
  memset(&a, 0, sizeof a);
  const size_t Q = (size_t)n_q * d, K = (size_t)n_kv * d;
  CK(cudaMalloc((void **)&a.x, sizeof(float) * B * E));
  CK(cudaMalloc((void **)&a.xn, sizeof(float) * B * E));
  CK(cudaMalloc((void **)&a.q, sizeof(float) * B * Q));
  CK(cudaMalloc((void **)&a.k, sizeof(float) * B * K));
  CK(cudaMalloc((void **)&a.v, sizeof(float) * B * K));
  CK(cudaMalloc((void **)&a.qsum, sizeof(float) * B * K));
  CK(cudaMalloc((void **)&a.att, sizeof(float) * B * Q));
  CK(cudaMalloc((void **)&a.o, sizeof(float) * B * E));
  CK(cudaMalloc((void **)&a.fg, sizeof(float) * B * s->n_ff));
  CK(cudaMalloc((void **)&a.fu, sizeof(float) * B * s->n_ff));
  CK(cudaMalloc((void **)&a.logits, sizeof(float) * B * s->n_vocab));
  size_t xbn = (size_t)B * (s->n_ff > E ? s->n_ff : E);
  if (Q > (size_t)s->n_ff) xbn = (size_t)B * Q;
  CK(cudaMalloc((void **)&a.xb, sizeof(__nv_bfloat16) * xbn));
  CK(cudaMalloc((void **)&a.ids, sizeof(int32_t) * B));
  int32_t ids_h[64];
  for (int b = 0; b < B; b++) ids_h[b] = (int32_t)((b * 7919 + 13) % s->n_vocab);
  CK(cudaMemcpy(a.ids, ids_h, sizeof(int32_t) * B, cudaMemcpyHostToDevice));

  *ap = a;
}

/* Step bookkeeping on the device (slots, victims, jobs, units); returns the unit count. */
static int bookkeeping_init(step_bufs_t *sbp, const shape_t *s, const run_cfg_t *rc, int n_slots) {
  const int B = rc->B, n_q = s->n_head, n_kv = s->n_kv;
  step_bufs_t sb;
  memset(&sb, 0, sizeof sb);
  const int per = B * n_kv;
  CK(cudaMalloc((void **)&sb.ctr, sizeof(int)));
  CK(cudaMemset(sb.ctr, 0, sizeof(int)));
  CK(cudaMalloc((void **)&sb.qpos, sizeof(int) * B));
  CK(cudaMalloc((void **)&sb.nscan, sizeof(int) * B));
  CK(cudaMalloc((void **)&sb.zrow, sizeof(int) * B));
  CK(cudaMalloc((void **)&sb.head0, sizeof(int) * s->n_layer * B));
  CK(cudaMalloc((void **)&sb.slots, sizeof(int) * s->n_layer * per));
  CK(cudaMalloc((void **)&sb.victims, sizeof(int) * s->n_layer * per * 2));
  CK(cudaMalloc((void **)&sb.jobs, sizeof(mk_cuda_mkv_job_t) * s->n_layer * per));
  CK(cudaMalloc((void **)&sb.q_to_kv, sizeof(int) * n_q));
  int *h_head0 = (int *)malloc(sizeof(int) * s->n_layer * B), *h_vic = (int *)malloc(sizeof(int) * s->n_layer * per * 2);
  mk_cuda_mkv_job_t *h_jobs = (mk_cuda_mkv_job_t *)malloc(sizeof(mk_cuda_mkv_job_t) * s->n_layer * per);
  int h_map[256];
  for (int l = 0; l < s->n_layer; l++)
    for (int b = 0; b < B; b++) {
      h_head0[l * B + b] = (b * s->n_layer + l) * n_kv;
      for (int j = 0; j < n_kv; j++) {
        mk_cuda_mkv_job_t *jb = &h_jobs[l * per + b * n_kv + j];
        jb->hf = (b * s->n_layer + l) * n_kv + j;
        jb->next_pos = rc->ctx + 1;
        jb->nscan = n_slots;
        jb->mode = MK_MKV_ARGMIN;
        jb->dump_off = 0;
        h_vic[(l * per + b * n_kv + j) * 2] = rc->C; /* the free slot */
        h_vic[(l * per + b * n_kv + j) * 2 + 1] = -1;
      }
    }
  const int g = n_q / n_kv;
  for (int u = 0; u < n_q; u++) h_map[u] = u / g;
  CK(cudaMemcpy(sb.head0, h_head0, sizeof(int) * s->n_layer * B, cudaMemcpyHostToDevice));
  CK(cudaMemcpy(sb.victims, h_vic, sizeof(int) * s->n_layer * per * 2, cudaMemcpyHostToDevice));
  CK(cudaMemcpy(sb.jobs, h_jobs, sizeof(mk_cuda_mkv_job_t) * s->n_layer * per, cudaMemcpyHostToDevice));
  CK(cudaMemcpy(sb.q_to_kv, h_map, sizeof(int) * n_q, cudaMemcpyHostToDevice));
  /* units: one per KV head (g <= MK_ATTN_GMAX), or several */
  mk_cuda_attn_unit_t h_units[512];
  int n_units = 0;
  for (int j = 0; j < n_kv; j++)
    for (int u0 = 0; u0 < g; u0 += MK_ATTN_GMAX) {
      mk_cuda_attn_unit_t *un = &h_units[n_units++];
      memset(un, 0, sizeof *un);
      un->kv = j;
      un->zwrite = u0 == 0;
      for (int u = u0; u < g && u < u0 + MK_ATTN_GMAX; u++) un->q[un->nq++] = j * g + u;
    }
  CK(cudaMalloc((void **)&sb.units, sizeof(mk_cuda_attn_unit_t) * n_units));
  CK(cudaMemcpy(sb.units, h_units, sizeof(mk_cuda_attn_unit_t) * n_units, cudaMemcpyHostToDevice));

  free(h_head0);
  free(h_vic);
  free(h_jobs);
  *sbp = sb;
  return n_units;
}

/* The attention and MorphKV argument templates of a configuration (splits planned for its
 * largest scan); scratch it allocates goes to a->part and *scratch[3]. */
static void templates_init(mk_cuda_attn_args_t *atp, mk_cuda_mkv_args_t *map, void *scratch[3], acts_t *ap,
                           const step_bufs_t *sbp, int n_units, const shape_t *s, const run_cfg_t *rc,
                           const dev_cache_t *dc, int n_sm) {
  const int B = rc->B, n_q = s->n_head, n_kv = s->n_kv, d = s->d, n_slots = dc->n_slots, per = B * n_kv;
  acts_t &a = *ap;
  const step_bufs_t &sb = *sbp;
  __half *kc = dc->kc, *vc = dc->vc;
  int32_t *posc = dc->posc;
  float *zring = dc->zring;
  mk_cuda_attn_args_t at;
  memset(&at, 0, sizeof at);
  at.q = a.q;
  at.qsum = rc->morph ? a.qsum : NULL;
  at.out = a.att;
  at.k = kc;
  at.v = vc;
  at.pos = posc;
  at.zring = zring;
  at.tok_qpos = sb.qpos;
  at.tok_nscan = sb.nscan;
  at.tok_zrow = rc->morph ? sb.zrow : NULL;
  at.units = sb.units;
  at.n_units = n_units;
  at.n_tok = B;
  at.n_q = n_q;
  at.n_kv = n_kv;
  at.d = d;
  at.n_slots = n_slots;
  at.window = rc->W;
  at.scale = 1.0f / sqrtf((float)d);
  mk_cuda_attn_plan(n_units, B, n_slots, 4 * n_sm, &at.n_split, &at.split_len);
  size_t pf = mk_cuda_attn_part_floats(B, at.n_split, n_q, d);
  if (pf) {
    CK(cudaMalloc((void **)&a.part, sizeof(float) * (pf + (size_t)B * at.n_split * n_q * 2)));
    at.part_o = a.part;
    at.part_ml = a.part + pf;
  }
  mk_cuda_mkv_args_t ma;
  memset(&ma, 0, sizeof ma);
  float2 *stats = NULL;
  int4 *best = NULL;
  unsigned *counters = NULL;
  if (rc->morph) {
    ma.n_jobs = per;
    ma.pos = posc;
    ma.zring = zring;
    ma.n_slots = n_slots;
    ma.window = rc->W;
    ma.fusion_max = 0;
    mk_cuda_mkv_plan(n_slots, &ma.n_split, &ma.split_len);
    CK(cudaMalloc((void **)&stats, sizeof(float2) * per * ma.n_split * rc->W));
    CK(cudaMalloc((void **)&best, sizeof(int4) * per * ma.n_split));
    CK(cudaMalloc((void **)&counters, sizeof(unsigned) * per));
    CK(cudaMemset(counters, 0, sizeof(unsigned) * per));
    ma.stats = stats;
    ma.best = best;
    ma.counters = counters;
  }
  *atp = at;
  *map = ma;
  scratch[0] = stats;
  scratch[1] = best;
  scratch[2] = counters;
}

/* Times `steps` decode steps after `warm` ones: one CUDA graph per step when capture works
 * (and eager is false), else eager launches. Returns seconds per step. */
static double time_steps(const model_t *m, const run_cfg_t *rc, acts_t *ap, step_bufs_t *sbp, const dev_cache_t *dc,
                         const mk_cuda_attn_args_t *atp, const mk_cuda_mkv_args_t *map, int warm, int steps,
                         bool eager, bool *graphed_out, cublasHandle_t h, cudaStream_t st) {
  acts_t &a = *ap;
  step_bufs_t &sb = *sbp;
  const mk_cuda_attn_args_t &at = *atp;
  const mk_cuda_mkv_args_t &ma = *map;
  __half *kc = dc->kc, *vc = dc->vc;
  int32_t *posc = dc->posc;
  float *zring = dc->zring;
  const int n_slots = dc->n_slots;
  cudaGraphExec_t exec = NULL;
  cudaGraph_t graph = NULL;
  bool graphed = false;
  if (!eager && cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal) == cudaSuccess) {
    decode_step(m, rc, &a, &sb, kc, vc, posc, zring, &at, &ma, n_slots, h, st);
    if (cudaStreamEndCapture(st, &graph) == cudaSuccess && cudaGraphInstantiate(&exec, graph, 0) == cudaSuccess)
      graphed = true;
  }
  if (!graphed) {
    cudaGetLastError();
    if (graph) cudaGraphDestroy(graph);
    graph = NULL;
    if (!eager) fprintf(stderr, "bench_decode: graph capture failed, timing eager launches\n");
  }
  cudaEvent_t e0, e1;
  CK(cudaEventCreate(&e0));
  CK(cudaEventCreate(&e1));
  for (int i = 0; i < warm; i++) {
    if (graphed)
      CK(cudaGraphLaunch(exec, st));
    else
      decode_step(m, rc, &a, &sb, kc, vc, posc, zring, &at, &ma, n_slots, h, st);
  }
  CK(cudaEventRecord(e0, st));
  for (int i = 0; i < steps; i++) {
    if (graphed)
      CK(cudaGraphLaunch(exec, st));
    else
      decode_step(m, rc, &a, &sb, kc, vc, posc, zring, &at, &ma, n_slots, h, st);
  }
  CK(cudaEventRecord(e1, st));
  CK(cudaEventSynchronize(e1));
  CK(cudaGetLastError());
  float ms = 0;
  CK(cudaEventElapsedTime(&ms, e0, e1));
  const double step_s = ms / 1e3 / steps;

  if (graphed) {
    cudaGraphExecDestroy(exec);
    cudaGraphDestroy(graph);
  }
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  *graphed_out = graphed;
  return step_s;
}

/* Runs one configuration and prints its line; false if its sanity checks failed. */
static bool run_config(const model_t *m, const run_cfg_t *rc, int warm, int steps, int n_sm, const peaks_t *pk,
                       bool eager, cublasHandle_t h, cudaStream_t st) {
  const shape_t *s = &m->s;
  const int B = rc->B, d = s->d, n_kv = s->n_kv, E = s->n_embd;
  dev_cache_t dc;
  cache_init(&dc, s, rc, warm + steps + 1, st);
  const int n_slots = dc.n_slots;
  const size_t n_heads = dc.n_heads, kv_elems = dc.kv_elems;
  acts_t a;
  acts_init(&a, s, B);
  step_bufs_t sb;
  const int n_units = bookkeeping_init(&sb, s, rc, n_slots);
  mk_cuda_attn_args_t at;
  mk_cuda_mkv_args_t ma;
  void *scratch[3];
  templates_init(&at, &ma, scratch, &a, &sb, n_units, s, rc, &dc, n_sm);
  CK(cudaStreamSynchronize(st));
  bool graphed = false;
  const double step_s = time_steps(m, rc, &a, &sb, &dc, &at, &ma, warm, steps, eager, &graphed, h, st);
  int32_t *posc = dc.posc;

  /* sanity: finite logits, and for MorphKV every head still holds exactly C used slots */
  float lg[8];
  CK(cudaMemcpy(lg, a.logits, sizeof lg, cudaMemcpyDeviceToHost));
  int finite = 1;
  for (int i = 0; i < 8; i++) finite &= isfinite(lg[i]) != 0;
  long used_min = -1, used_max = -1;
  if (rc->morph) {
    int32_t *hp = (int32_t *)malloc(sizeof(int32_t) * n_heads * n_slots);
    CK(cudaMemcpy(hp, posc, sizeof(int32_t) * n_heads * n_slots, cudaMemcpyDeviceToHost));
    for (size_t hh = 0; hh < n_heads; hh++) {
      long u = 0;
      for (int j = 0; j < n_slots; j++) u += hp[hh * n_slots + j] >= 0;
      if (used_min < 0 || u < used_min) used_min = u;
      if (u > used_max) used_max = u;
    }
    free(hp);
  }

  /* bytes per step: weights once per step (all rows of every matrix, B embedding rows), K/V of
   * the scanned slots per sequence, MorphKV ring (read once, one row written) */
  const int mean_ctx = rc->ctx + warm + 1 + steps / 2; /* full: average slots scanned per step */
  const int scanned = rc->morph ? n_slots : mean_ctx;
  const double kv_read = (double)B * s->n_layer * n_kv * scanned * d * 2.0 * 2.0;
  const double ring = rc->morph ? (double)B * s->n_layer * n_kv * (rc->W + 1.0) * n_slots * 4.0 : 0.0;
  /* Q4_0 above the GEMV batch: each weight also goes through a bf16 tile (written, then read) */
  const double tiles = m->wtype == MK_DQ_Q4_0 && B > MK_GEMV_MAX_N ? 4.0 * (double)m->weight_elems : 0.0;
  const double bytes = (double)m->bytes_read_per_token + (double)B * E * 2 + kv_read + ring + tiles;
  const double kv_alloc = (double)kv_elems * 2 * sizeof(__half);
  const double kv_live_start = (double)B * s->n_layer * n_kv * (rc->morph ? rc->C : rc->ctx) * d * 2.0 * 2.0;
  const double kv_live_end = (double)B * s->n_layer * n_kv * (rc->morph ? rc->C : rc->ctx + warm + steps) * d * 2.0 * 2.0;
  const double bw = bytes / step_s;
  printf("%-4s B=%-2d %-7s ctx=%-6d | %8.2f ms/step %9.1f tok/s | KV live %7.2f GB -> %7.2f GB (alloc %7.2f) | "
         "%6.2f GB/step %5.2f TB/s | roofline %5.1f%% (datasheet) %5.1f%% (attr) %5.1f%% (copy) | %s%s",
         m->wtype == MK_DQ_Q4_0 ? "q4_0" : "bf16", B, rc->morph ? "morphkv" : "full", rc->ctx, step_s * 1e3, B / step_s, kv_live_start / 1e9, kv_live_end / 1e9,
         kv_alloc / 1e9, bytes / 1e9, bw / 1e12, 100 * bw / pk->datasheet, pk->attr > 0 ? 100 * bw / pk->attr : 0.0,
         pk->copy > 0 ? 100 * bw / pk->copy : 0.0,
         graphed ? "graph" : "eager", finite ? "" : " NON-FINITE LOGITS");
  if (rc->morph) printf(" | used slots/head %ld..%ld (C=%d)", used_min, used_max, rc->C);
  printf("\n");
  fflush(stdout);

  void *frees[] = {dc.kc, dc.vc, dc.posc, dc.zring, a.x, a.xn, a.q, a.k, a.v, a.qsum, a.att, a.o, a.fg, a.fu,
                   a.logits, a.part, a.xb, a.ids, sb.ctr, sb.qpos, sb.nscan, sb.zrow, sb.head0, sb.slots, sb.victims,
                   sb.jobs, sb.q_to_kv, sb.units, scratch[0], scratch[1], scratch[2]};
  for (size_t i = 0; i < sizeof frees / sizeof frees[0]; i++)
    if (frees[i]) cudaFree(frees[i]);
  return finite && (!rc->morph || (used_min == rc->C && used_max == rc->C));
}

int main(int argc, char **argv) {
  shape_t s = {32, 4096, 32, 8, 14336, 128256, 128}; /* Llama-3.1-8B */
  int steps = 20, warm = 3;
  bool quick = false, tiny = false;
  const char *weights = "all";
  bool eager = false;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--quick")) {
      quick = true;
    } else if (!strcmp(argv[i], "--tiny")) {
      tiny = true;
    } else if (!strcmp(argv[i], "--steps") && i + 1 < argc) {
      steps = atoi(argv[++i]);
    } else if (!strcmp(argv[i], "--layers") && i + 1 < argc) {
      s.n_layer = atoi(argv[++i]);
    } else if (!strcmp(argv[i], "--eager")) {
      eager = true;
    } else if (!strcmp(argv[i], "--weights") && i + 1 < argc &&
               (!strcmp(argv[i + 1], "bf16") || !strcmp(argv[i + 1], "q4_0") || !strcmp(argv[i + 1], "all"))) {
      weights = argv[++i];
    } else {
      fprintf(stderr, "usage: %s [--quick | --tiny] [--steps N] [--layers N] [--weights bf16|q4_0|all] [--eager]\n", argv[0]);
      return 2;
    }
  }
  if (quick) {
    s.n_layer = 4;
    s.n_vocab = 32000;
    steps = 5;
  }
  if (tiny) { /* for the CPU emulator (tests/gpu/emu): checks the program's logic, not speed */
    s = (shape_t){2, 256, 4, 2, 512, 1000, 128};
    steps = 3;
    warm = 1;
  }
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) {
    printf("no CUDA device: skipped\n");
    return 77;
  }
  int dev = 0;
  CK(cudaSetDevice(dev));
  cudaDeviceProp prop;
  CK(cudaGetDeviceProperties(&prop, dev));
  int mem_khz = 0, bus_bits = 0;
  CK(cudaDeviceGetAttribute(&mem_khz, cudaDevAttrMemoryClockRate, dev));
  CK(cudaDeviceGetAttribute(&bus_bits, cudaDevAttrGlobalMemoryBusWidth, dev));
  peaks_t pk;
  pk.datasheet = 4.8e12; /* H200 SXM datasheet; the roofline the issue asks for */
  pk.attr = 2.0 * mem_khz * 1e3 * bus_bits / 8.0;
  cudaStream_t st;
  CK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
  { /* measured copy bandwidth: 2 GiB device to device, bytes read + written */
    size_t n = tiny ? (size_t)1 << 20 : (size_t)2 << 30;
    void *p0, *p1;
    CK(cudaMalloc(&p0, n));
    CK(cudaMalloc(&p1, n));
    CK(cudaMemsetAsync(p0, 1, n, st));
    cudaEvent_t a, b;
    CK(cudaEventCreate(&a));
    CK(cudaEventCreate(&b));
    CK(cudaMemcpyAsync(p1, p0, n, cudaMemcpyDeviceToDevice, st));
    CK(cudaEventRecord(a, st));
    for (int i = 0; i < 5; i++) CK(cudaMemcpyAsync(p1, p0, n, cudaMemcpyDeviceToDevice, st));
    CK(cudaEventRecord(b, st));
    CK(cudaEventSynchronize(b));
    float ms;
    CK(cudaEventElapsedTime(&ms, a, b));
    pk.copy = 2.0 * n * 5 / (ms / 1e3);
    cudaFree(p0);
    cudaFree(p1);
    cudaEventDestroy(a);
    cudaEventDestroy(b);
  }
  printf("device %d: %s, %d SMs, %.1f GiB, L2 %.0f MiB, memory clock %d MHz x %d-bit bus -> %.2f TB/s (attr); "
         "datasheet %.2f TB/s; measured copy %.2f TB/s\n",
         dev, prop.name, prop.multiProcessorCount, prop.totalGlobalMem / 1073741824.0, prop.l2CacheSize / 1048576.0,
         mem_khz / 1000, bus_bits, pk.attr / 1e12, pk.datasheet / 1e12, pk.copy / 1e12);
  printf("model: %d layers, hidden %d, %d heads, %d KV heads, head dim %d, MLP %d, vocab %d; weights %s; "
         "%d warm-up + %d timed steps per configuration\n",
         s.n_layer, s.n_embd, s.n_head, s.n_kv, s.d, s.n_ff, s.n_vocab, weights, warm, steps);
  cublasHandle_t h;
  CB(cublasCreate(&h));
  CB(cublasSetStream(h, st));
  void *ws;
  const size_t ws_bytes = (size_t)32 << 20;
  CK(cudaMalloc(&ws, ws_bytes));
  CB(cublasSetWorkspace(h, ws, ws_bytes)); /* no allocation inside graph capture */

  const int ctxs[] = {512, 8192, 32768};
  bool ok = true;
  const int batches[] = {1, 16};
  const int wtypes[] = {MK_DQ_BF16, MK_DQ_Q4_0};
  for (int wi = 0; wi < 2; wi++) {
    if (strcmp(weights, "all") != 0 && strcmp(weights, wi ? "q4_0" : "bf16") != 0) continue;
    model_t m;
    model_init(&m, &s, wtypes[wi]);
    printf("%s weights read per step: %.2f GB\n", wi ? "q4_0" : "bf16", m.bytes_read_per_token / 1e9);
    for (int bi = 0; bi < 2; bi++) {
      for (int ci = 0; ci < 3; ci++) {
        run_cfg_t rc = {batches[bi], false, quick ? ctxs[ci] / 4 : tiny ? ctxs[ci] / 16 : ctxs[ci], 2048, 32};
        if (quick) rc.C = 512;
        if (tiny) rc.C = 256, rc.W = 8;
        ok &= run_config(&m, &rc, warm, steps, prop.multiProcessorCount, &pk, eager, h, st);
      }
      for (int ci = 1; ci < 3; ci++) {
        run_cfg_t rc = {batches[bi], true, quick ? ctxs[ci] / 4 : tiny ? ctxs[ci] / 16 : ctxs[ci], 2048, 32};
        if (quick) rc.C = 512;
        if (tiny) rc.C = 256, rc.W = 8;
        ok &= run_config(&m, &rc, warm, steps, prop.multiProcessorCount, &pk, eager, h, st);
      }
    }
    model_free(&m);
  }
  cublasDestroy(h);
  if (!ok) printf("bench_decode: a sanity check failed (non-finite logits, or MorphKV heads not holding C slots)\n");
  return ok ? 0 : 1;
}
