/* CUDA backend: the op table of src/backend.h on one device, one stream.
 *
 * Memory. Activations and weights are device memory (ops->alloc, cudaMalloc). Weights are
 * uploaded once in their file format and dequantized to bf16 on the device (dequant.cuh says
 * why bf16); mk_bweight_t.dev is the (rows, cols) bf16 matrix, dev_type MK_CUDA_WTYPE_BF16.
 *
 * KV cache. The host mk_kv_cache_t stays the owner of the metadata: pos[], n_used, hi and slot
 * choice (mk_kv_acquire, lowest free slot) run on the host exactly as on the CPU backend. The
 * first attention call on a cache creates its device mirror: fp16 K/V of the same geometry, a
 * device copy of pos[] (the kernels mask by it) and, for MorphKV, the Z ring. Invariant: after
 * ops->sync or ops->download, host pos[]/n_used and device pos[] agree.
 *
 * Cache policies, per attention call (write, attend, observe, evict, as on the CPU):
 *   full     nothing beyond the write.
 *   morphkv  (logit_sum) on the device: the attention kernel writes the group's logit row into
 *            the Z ring; the host decides from counts alone how many slots a head must lose
 *            (the policy's trigger, candidates = used - recent); one loser is found by the device
 *            argmin kernel, which frees it in the device pos[] and queues (slot, pos) for the
 *            host (applied, without a stall, at the next attention call of that layer or at
 *            sync/download); several losers (prompt compression, bursty eviction) are scored on
 *            the device and chosen on the host with the policy's own top-k (kvcache/topk.h).
 *   others   (streaming, h2o, snapkv, morphkv prob_max): the host policy runs unchanged. The new
 *            K/V are also written to the host cache, the needed rows are computed on the host
 *            from it, observe/evict run, and pos[] is uploaded. Correct, slower.
 * The mirror assumes that only this backend touches the cache after creation; a sequence that
 * restarts (mk_kv_cache_reset_seq) is recognised by its prefill span, which re-uploads pos[].
 *
 * Errors. The first failure is kept (sticky) and every op returns it: a failed launch or library
 * call at the op that made it, a fault seen only when the device runs at the next op that checks
 * (attention, upload, download, sync). */
extern "C" {
#include "kvcache/kvcache.h"
#include "kvcache/topk.h"
#include "src/backend.h"
#include "src/mk_util.h"
}

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cuda/attention.cuh"
#include "cuda/common.cuh"
#include "cuda/dequant.cuh"
#include "cuda/elementwise.cuh"
#include "cuda/matmul.cuh"
#include "cuda/morphkv.cuh"
#include "cuda/norm.cuh"
#include "cuda/rope.cuh"

#define MK_CUDA_WTYPE_BF16 1
#define MK_STAGE_REGIONS 64 /* small pinned argument buffers in flight: lets the host run layers ahead */
#define MK_WTMP_BYTES ((size_t)64 << 20)

/* Device mirror of one host KV cache. */
typedef struct cuda_mirror {
  const mk_kv_cache_t *cache;
  const mk_kv_head_t *heads; /* identity check: a freed and re-created cache gets a new arena */
  int n_seq, n_layer, n_heads, d, n_slots, window;
  bool fast_mkv;    /* MorphKV scored on the device */
  bool host_policy; /* policy runs on the host (rows computed on the host) */
  __half *k, *v;    /* (n_heads_total, n_slots, d) */
  int32_t *pos;     /* (n_heads_total, n_slots) */
  float *zring;     /* (n_heads_total, W, n_slots) fast_mkv only */
  /* pending victims of the last argmin per layer: log_dev[L] (jobs, 2) copied to log_host[L] */
  int *log_host;    /* pinned (n_layer, n_seq * n_heads, 2) */
  int *log_hf;      /* (n_layer, n_seq * n_heads): flat head of each job, -1 for none */
  int *log_n;       /* (n_layer) */
  bool *log_pending;
  cudaEvent_t *log_ev; /* (n_layer) */
  int *victims;     /* device (n_seq * n_heads, 2) */
  unsigned *counters;
  float2 *stats;    /* device (n_seq * n_heads, 16, W) */
  int4 *best;       /* device (n_seq * n_heads, 16) */
  float *dump;      /* device (n_seq * n_heads, n_slots), allocated on first use */
} cuda_mirror_t;

typedef struct cuda_impl {
  int dev, n_sm;
  cudaStream_t stream;
  cublasHandle_t cublas;
  bool failed;
  char msg[512];
  /* pinned staging regions for host->device argument uploads */
  unsigned char *stage[MK_STAGE_REGIONS];
  size_t stage_cap[MK_STAGE_REGIONS];
  cudaEvent_t stage_ev[MK_STAGE_REGIONS];
  int stage_next;
  unsigned char *args; /* device argument buffer (stream-ordered reuse) */
  size_t args_cap;
  __nv_bfloat16 *xb; /* bf16 activations for cuBLAS */
  size_t xb_cap;
  float *part; /* attention partials */
  size_t part_cap;
  float *qsum; /* qsum when the caller gave none */
  size_t qsum_cap;
  void *wtmp; /* quantized weight upload chunk */
  cuda_mirror_t **mir;
  int n_mir;
  /* host scratch (slow policy path and top-k) */
  float *hbuf;
  size_t hbuf_cap;
} cuda_impl_t;

static cuda_impl_t *impl_of(mk_backend_t *b) { return (cuda_impl_t *)b->impl; }

static void note_fail(cuda_impl_t *c, const char *what, cudaError_t e) {
  if (c->failed) return;
  c->failed = true;
  snprintf(c->msg, sizeof c->msg, "CUDA %s failed: %s (device %d)", what, cudaGetErrorString(e), c->dev);
}

static void note_msg(cuda_impl_t *c, const char *msg) {
  if (c->failed) return;
  c->failed = true;
  snprintf(c->msg, sizeof c->msg, "%.400s (device %d)", msg, c->dev);
}

static void check_launch(cuda_impl_t *c, const char *what) {
  cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) note_fail(c, what, e);
}

static int sticky(cuda_impl_t *c, mk_error_t *err) {
  return c->failed ? mk_fail(err, "cuda backend: %s", c->msg) : 0;
}

/* The end of an op: a failed launch is reported by the op that launched it. */
static int op_done(cuda_impl_t *c, const char *what, mk_error_t *err) {
  check_launch(c, what);
  return sticky(c, err);
}

static int op_fail(cuda_impl_t *c, const char *msg, mk_error_t *err) {
  note_msg(c, msg);
  return sticky(c, err);
}

/* Grow-only device buffer; waits for the stream before freeing the old one. */
static int dev_reserve(cuda_impl_t *c, void **p, size_t *cap, size_t bytes, mk_error_t *err) {
  if (bytes <= *cap) return 0;
  size_t want = bytes + bytes / 4 + 256;
  if (*p) {
    cudaCheck(err, c->dev, cudaStreamSynchronize(c->stream));
    cudaCheck(err, c->dev, cudaFree(*p));
    *p = NULL;
    *cap = 0;
  }
  cudaCheck(err, c->dev, cudaMalloc(p, want));
  *cap = want;
  return 0;
}

/* Pinned staging region for `bytes`; the region's previous copy must have completed. */
static unsigned char *stage_begin(cuda_impl_t *c, size_t bytes, int *region, mk_error_t *err) {
  int r = c->stage_next;
  c->stage_next = (r + 1) % MK_STAGE_REGIONS;
  cudaError_t e = cudaEventSynchronize(c->stage_ev[r]);
  if (e != cudaSuccess) {
    mk_fail(err, "CUDA staging wait failed: %s (device %d)", cudaGetErrorString(e), c->dev);
    return NULL;
  }
  if (bytes > c->stage_cap[r]) {
    if (c->stage[r]) cudaFreeHost(c->stage[r]);
    c->stage[r] = NULL;
    c->stage_cap[r] = 0;
    size_t want = bytes + bytes / 4 + 4096;
    e = cudaMallocHost((void **)&c->stage[r], want);
    if (e != cudaSuccess) {
      mk_fail(err, "CUDA pinned staging of %zu bytes failed: %s (device %d)", want, cudaGetErrorString(e), c->dev);
      return NULL;
    }
    c->stage_cap[r] = want;
  }
  *region = r;
  return c->stage[r];
}

/* Copies `bytes` of region r to dst (device) on the stream, then marks the region busy. */
static int stage_end(cuda_impl_t *c, int r, void *dst, size_t bytes, mk_error_t *err) {
  if (bytes) cudaCheck(err, c->dev, cudaMemcpyAsync(dst, c->stage[r], bytes, cudaMemcpyHostToDevice, c->stream));
  cudaCheck(err, c->dev, cudaEventRecord(c->stage_ev[r], c->stream));
  return 0;
}

/* Uploads a small host array into the device argument buffer; returns its device address. */
static void *args_upload(cuda_impl_t *c, const void *src, size_t bytes, mk_error_t *err) {
  if (dev_reserve(c, (void **)&c->args, &c->args_cap, bytes, err) != 0) return NULL;
  int r;
  unsigned char *h = stage_begin(c, bytes, &r, err);
  if (!h) return NULL;
  memcpy(h, src, bytes);
  if (stage_end(c, r, c->args, bytes, err) != 0) return NULL;
  return c->args;
}

static float *host_scratch(cuda_impl_t *c, size_t floats) {
  if (floats > c->hbuf_cap) {
    free(c->hbuf);
    c->hbuf = (float *)malloc(sizeof(float) * floats);
    c->hbuf_cap = c->hbuf ? floats : 0;
  }
  return c->hbuf;
}

/* ---- memory ops ------------------------------------------------------------------------- */

static void *cuda_alloc(mk_backend_t *b, size_t bytes) {
  cuda_impl_t *c = impl_of(b);
  cudaSetDevice(c->dev);
  void *p = NULL;
  if (cudaMalloc(&p, bytes ? bytes : 16) != cudaSuccess) {
    cudaGetLastError();
    return NULL;
  }
  if (cudaMemsetAsync(p, 0, bytes ? bytes : 16, c->stream) != cudaSuccess) {
    cudaFree(p);
    return NULL;
  }
  return p;
}

static void cuda_dealloc(mk_backend_t *b, void *p) {
  cuda_impl_t *c = impl_of(b);
  if (!p) return;
  cudaSetDevice(c->dev);
  cudaStreamSynchronize(c->stream);
  cudaFree(p);
}

static int mirror_apply_all(cuda_impl_t *c, mk_error_t *err);

static int cuda_upload(mk_backend_t *b, void *dst, const void *src, size_t bytes, mk_error_t *err) {
  cuda_impl_t *c = impl_of(b);
  if (sticky(c, err)) return -1;
  cudaCheck(err, c->dev, cudaSetDevice(c->dev));
  cudaCheck(err, c->dev, cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, c->stream));
  cudaCheck(err, c->dev, cudaStreamSynchronize(c->stream));
  return 0;
}

static int cuda_download(mk_backend_t *b, void *dst, const void *src, size_t bytes, mk_error_t *err) {
  cuda_impl_t *c = impl_of(b);
  if (sticky(c, err)) return -1;
  cudaCheck(err, c->dev, cudaSetDevice(c->dev));
  cudaCheck(err, c->dev, cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, c->stream));
  cudaCheck(err, c->dev, cudaStreamSynchronize(c->stream));
  return mirror_apply_all(c, err);
}

static int cuda_sync(mk_backend_t *b, mk_error_t *err) {
  cuda_impl_t *c = impl_of(b);
  cudaCheck(err, c->dev, cudaSetDevice(c->dev));
  cudaError_t e = cudaStreamSynchronize(c->stream);
  if (e != cudaSuccess) note_fail(c, "stream synchronize", e);
  if (sticky(c, err)) return -1;
  return mirror_apply_all(c, err);
}

/* Device-to-device rows, async on the stream (collective payload packing). */
static int cuda_copy2d(mk_backend_t *b, void *dst, size_t dpitch, const void *src, size_t spitch, size_t width,
                       size_t height, mk_error_t *err) {
  cuda_impl_t *c = impl_of(b);
  if (sticky(c, err)) return -1;
  if (!width || !height) return 0;
  cudaCheck(err, c->dev, cudaMemcpy2DAsync(dst, dpitch, src, spitch, width, height, cudaMemcpyDeviceToDevice,
                                           c->stream));
  return 0;
}

/* Pinned host memory (the MPI communicator stages device buffers through it). */
static void *cuda_host_alloc(mk_backend_t *b, size_t bytes) {
  void *p = NULL;
  if (cudaMallocHost(&p, bytes ? bytes : 16) != cudaSuccess) {
    cudaGetLastError();
    return NULL;
  }
  return p;
}

static void cuda_host_free(mk_backend_t *b, void *p) {
  if (p) cudaFreeHost(p);
}

/* ---- weights ------------------------------------------------------------------------------ */

static int cuda_weight_prepare(mk_backend_t *b, const mk_qmat_t *w, mk_bweight_t *out, mk_error_t *err) {
  cuda_impl_t *c = impl_of(b);
  memset(out, 0, sizeof *out);
  out->host = *w;
  if (sticky(c, err)) return -1;
  cudaCheck(err, c->dev, cudaSetDevice(c->dev));
  const int be = mk_dq_block_elems((int)w->type), bb = mk_dq_block_bytes((int)w->type);
  if (be == 0)
    return mk_fail(err, "cuda backend: weight type %s (%d) has no device dequantizer", mk_type_name(w->type),
                   (int)w->type);
  if (w->rows <= 0 || w->cols <= 0 || w->cols % be != 0)
    return mk_fail(err, "cuda backend: weight of %lld x %lld is not whole %s blocks", (long long)w->rows,
                   (long long)w->cols, mk_type_name(w->type));
  const int64_t bpr = w->cols / be;
  /* a column slice of a tensor-parallel rank has rows longer than its cols (row_bytes is the
   * file's row): the upload packs them (2D copy of the first `packed` bytes of every row) */
  const size_t packed = (size_t)(bpr * bb);
  if (w->row_bytes < packed)
    return mk_fail(err, "cuda backend: %s rows of %zu bytes, shorter than %zu", mk_type_name(w->type),
                   w->row_bytes, packed);
  __nv_bfloat16 *dst = NULL;
  cudaCheck(err, c->dev, cudaMalloc((void **)&dst, (size_t)w->rows * w->cols * sizeof(__nv_bfloat16)));
  if (!c->wtmp) {
    cudaError_t e = cudaMalloc(&c->wtmp, MK_WTMP_BYTES);
    if (e != cudaSuccess) {
      cudaFree(dst);
      return mk_fail(err, "CUDA call cudaMalloc(weight upload buffer) failed: %s (device %d)", cudaGetErrorString(e), c->dev);
    }
  }
  int64_t rows_per = (int64_t)(MK_WTMP_BYTES / packed);
  if (rows_per < 1) rows_per = 1;
  if ((size_t)rows_per * packed > MK_WTMP_BYTES) { /* one row larger than the chunk */
    cudaFree(dst);
    return mk_fail(err, "cuda backend: weight row of %zu bytes exceeds the upload chunk", packed);
  }
  for (int64_t r0 = 0; r0 < w->rows; r0 += rows_per) {
    int64_t nr = w->rows - r0 < rows_per ? w->rows - r0 : rows_per;
    cudaError_t e = cudaMemcpy2DAsync(c->wtmp, packed, (const char *)w->data + (size_t)r0 * w->row_bytes,
                                      w->row_bytes, packed, (size_t)nr, cudaMemcpyHostToDevice, c->stream);
    if (e == cudaSuccess) {
      mk_cuda_dequant_bf16((int)w->type, c->wtmp, nr * bpr, dst + (size_t)r0 * w->cols, c->stream);
      e = cudaGetLastError();
    }
    /* the next chunk overwrites wtmp: stream order makes that safe; sync to surface errors */
    if (e == cudaSuccess) e = cudaStreamSynchronize(c->stream);
    if (e != cudaSuccess) {
      cudaFree(dst);
      return mk_fail(err, "cuda backend: uploading a %s weight (%lld x %lld) failed: %s (device %d)",
                     mk_type_name(w->type), (long long)w->rows, (long long)w->cols, cudaGetErrorString(e), c->dev);
    }
  }
  out->dev = dst;
  out->dev_type = MK_CUDA_WTYPE_BF16;
  return 0;
}

static void cuda_weight_release(mk_backend_t *b, mk_bweight_t *w) {
  cuda_impl_t *c = impl_of(b);
  if (w->dev) {
    cudaSetDevice(c->dev);
    cudaStreamSynchronize(c->stream);
    cudaFree(w->dev);
  }
  w->dev = NULL;
}

/* ---- dense ops ---------------------------------------------------------------------------- */

static int cuda_embed(mk_backend_t *b, const mk_bweight_t *table, const int32_t *ids, int n, float *x,
                      mk_error_t *err) {
  cuda_impl_t *c = impl_of(b);
  if (c->failed || n <= 0) return sticky(c, err);
  if (!table->dev) return op_fail(c, "embed: the table was not prepared for this backend", err);
  for (int i = 0; i < n; i++)
    if (ids[i] < 0 || ids[i] >= table->host.rows) return op_fail(c, "embed: token id out of range", err);
  mk_error_t e;
  const int32_t *dids = (const int32_t *)args_upload(c, ids, sizeof(int32_t) * (size_t)n, &e);
  if (!dids) return op_fail(c, e.msg, err);
  mk_cuda_embed((const __nv_bfloat16 *)table->dev, table->host.cols, dids, n, x, c->stream);
  return op_done(c, "embed", err);
}

static int cuda_matmul(mk_backend_t *b, const mk_bweight_t *w, const float *x, int n, float *y, mk_error_t *err) {
  cuda_impl_t *c = impl_of(b);
  if (c->failed || n <= 0) return sticky(c, err);
  if (!w->dev) return op_fail(c, "matmul: the weight was not prepared for this backend", err);
  const __nv_bfloat16 *W = (const __nv_bfloat16 *)w->dev;
  const int64_t rows = w->host.rows, cols = w->host.cols;
  if (n <= MK_GEMV_MAX_N) {
    mk_cuda_gemv_bf16(W, rows, cols, x, n, y, c->stream);
    return op_done(c, "gemv", err);
  }
  mk_error_t e;
  if (dev_reserve(c, (void **)&c->xb, &c->xb_cap, sizeof(__nv_bfloat16) * (size_t)n * cols, &e) != 0)
    return op_fail(c, e.msg, err);
  mk_cuda_f32_to_bf16(x, c->xb, (size_t)n * cols, c->stream);
  check_launch(c, "f32_to_bf16");
  cublasStatus_t s = mk_cuda_gemm_bf16(c->cublas, W, rows, cols, c->xb, n, y);
  if (s != CUBLAS_STATUS_SUCCESS && !c->failed) {
    c->failed = true;
    snprintf(c->msg, sizeof c->msg, "cublasGemmEx (%lld x %lld, n %d) failed: %s (device %d)", (long long)rows,
             (long long)cols, n, cublasGetStatusString(s), c->dev);
  }
  return sticky(c, err);
}

static int cuda_rmsnorm(mk_backend_t *b, float *y, const float *x, const float *w, int n, int dim, float eps,
                        mk_error_t *err) {
  cuda_impl_t *c = impl_of(b);
  if (c->failed) return sticky(c, err);
  mk_cuda_rmsnorm(y, x, w, n, dim, eps, c->stream);
  return op_done(c, "rmsnorm", err);
}

static int cuda_add_bias(mk_backend_t *b, float *y, const float *bias, int n, int dim, mk_error_t *err) {
  cuda_impl_t *c = impl_of(b);
  if (c->failed) return sticky(c, err);
  mk_cuda_add_bias(y, bias, n, dim, c->stream);
  return op_done(c, "add_bias", err);
}

static int cuda_rope(mk_backend_t *b, const mk_rope_params_t *p, mk_error_t *err) {
  cuda_impl_t *c = impl_of(b);
  if (c->failed || p->n_tok <= 0) return sticky(c, err);
  mk_error_t e;
  const int32_t *dpos = (const int32_t *)args_upload(c, p->pos, sizeof(int32_t) * (size_t)p->n_tok, &e);
  if (!dpos) return op_fail(c, e.msg, err);
  mk_cuda_rope(p->x, dpos, p->n_tok, p->n_head, p->head_dim, p->rope_dim, p->theta, p->neox, p->freq_factors,
               c->stream);
  return op_done(c, "rope", err);
}

static int cuda_swiglu(mk_backend_t *b, float *y, const float *gate, const float *up, size_t n, mk_error_t *err) {
  cuda_impl_t *c = impl_of(b);
  if (c->failed) return sticky(c, err);
  mk_cuda_swiglu(y, gate, up, n, c->stream);
  return op_done(c, "swiglu", err);
}

static int cuda_add(mk_backend_t *b, float *y, const float *x, size_t n, mk_error_t *err) {
  cuda_impl_t *c = impl_of(b);
  if (c->failed) return sticky(c, err);
  mk_cuda_add(y, x, n, c->stream);
  return op_done(c, "add", err);
}

static int cuda_group_qsum(mk_backend_t *b, float *qsum, const float *q, int n_tok, int n_q, int n_kv, int d,
                           const int *q_to_kv, mk_error_t *err) {
  cuda_impl_t *c = impl_of(b);
  if (c->failed || n_tok <= 0) return sticky(c, err);
  mk_error_t e;
  const int *dmap = (const int *)args_upload(c, q_to_kv, sizeof(int) * (size_t)n_q, &e);
  if (!dmap) return op_fail(c, e.msg, err);
  mk_cuda_group_qsum(qsum, q, n_tok, n_q, n_kv, d, dmap, c->stream);
  return op_done(c, "group_qsum", err);
}

/* ---- KV cache mirror ---------------------------------------------------------------------- */

static void mirror_free(cuda_mirror_t *m) {
  if (!m) return;
  cudaFree(m->k);
  cudaFree(m->v);
  cudaFree(m->pos);
  cudaFree(m->zring);
  cudaFree(m->victims);
  cudaFree(m->counters);
  cudaFree(m->stats);
  cudaFree(m->best);
  cudaFree(m->dump);
  if (m->log_host) cudaFreeHost(m->log_host);
  if (m->log_ev)
    for (int l = 0; l < m->n_layer; l++)
      if (m->log_ev[l]) cudaEventDestroy(m->log_ev[l]);
  free(m->log_ev);
  free(m->log_hf);
  free(m->log_n);
  free(m->log_pending);
  free(m);
}

static bool mirror_matches(const cuda_mirror_t *m, const mk_kv_cache_t *c) {
  return m->cache == c && m->heads == c->heads && m->n_seq == c->n_seq && m->n_layer == c->n_layer &&
         m->n_heads == c->n_heads && m->d == c->head_dim && m->n_slots == c->n_slots &&
         m->window == c->cfg.window;
}

static int mirror_create(cuda_impl_t *c, const mk_kv_cache_t *kc, cuda_mirror_t **out, mk_error_t *err) {
  cuda_mirror_t *m = (cuda_mirror_t *)calloc(1, sizeof *m);
  if (!m) return mk_fail(err, "cuda backend: out of memory");
  m->cache = kc;
  m->heads = kc->heads;
  m->n_seq = kc->n_seq;
  m->n_layer = kc->n_layer;
  m->n_heads = kc->n_heads;
  m->d = kc->head_dim;
  m->n_slots = kc->n_slots;
  m->window = kc->cfg.window;
  /* MORPHKV_CUDA_POLICY=host (a test hook, read once per cache): every policy, MorphKV included,
   * runs on the host from host-computed rows; test_cuda_e2e compares the two paths. */
  const char *force = getenv("MORPHKV_CUDA_POLICY");
  const bool host_only = force && strcmp(force, "host") == 0;
  m->fast_mkv = !host_only && kc->cfg.policy == MK_KV_MORPHKV && kc->cfg.gqa == MK_KV_GQA_LOGIT_SUM &&
               kc->cfg.window <= MK_MKV_WMAX;
  m->host_policy = !m->fast_mkv && kc->cfg.policy != MK_KV_FULL;
  const size_t nh = (size_t)m->n_seq * m->n_layer * m->n_heads, ns = (size_t)m->n_slots;
  const size_t jobs = (size_t)m->n_seq * m->n_heads;
  cudaError_t e = cudaSuccess;
#define MK_TRY(call) \
  if (e == cudaSuccess) e = (call)
  MK_TRY(cudaMalloc((void **)&m->k, nh * ns * m->d * sizeof(__half)));
  MK_TRY(cudaMalloc((void **)&m->v, nh * ns * m->d * sizeof(__half)));
  MK_TRY(cudaMalloc((void **)&m->pos, nh * ns * sizeof(int32_t)));
  MK_TRY(cudaMemcpy(m->pos, kc->pos_arena, nh * ns * sizeof(int32_t), cudaMemcpyHostToDevice));
  if (m->fast_mkv) {
    MK_TRY(cudaMalloc((void **)&m->zring, nh * (size_t)m->window * ns * sizeof(float)));
    MK_TRY(cudaMemset(m->zring, 0, nh * (size_t)m->window * ns * sizeof(float)));
    MK_TRY(cudaMalloc((void **)&m->victims, jobs * 2 * sizeof(int)));
    MK_TRY(cudaMalloc((void **)&m->counters, jobs * sizeof(unsigned)));
    MK_TRY(cudaMemset(m->counters, 0, jobs * sizeof(unsigned)));
    MK_TRY(cudaMalloc((void **)&m->stats, jobs * 16 * (size_t)m->window * sizeof(float2)));
    MK_TRY(cudaMalloc((void **)&m->best, jobs * 16 * sizeof(int4)));
    MK_TRY(cudaMallocHost((void **)&m->log_host, (size_t)m->n_layer * jobs * 2 * sizeof(int)));
    m->log_hf = (int *)calloc((size_t)m->n_layer * jobs, sizeof(int));
    m->log_n = (int *)calloc((size_t)m->n_layer, sizeof(int));
    m->log_pending = (bool *)calloc((size_t)m->n_layer, sizeof(bool));
    m->log_ev = (cudaEvent_t *)calloc((size_t)m->n_layer, sizeof(cudaEvent_t));
    if (!m->log_hf || !m->log_n || !m->log_pending || !m->log_ev) {
      mirror_free(m);
      return mk_fail(err, "cuda backend: out of memory");
    }
    for (int l = 0; l < m->n_layer; l++) MK_TRY(cudaEventCreateWithFlags(&m->log_ev[l], cudaEventDisableTiming));
  }
#undef MK_TRY
  if (e != cudaSuccess) {
    mirror_free(m);
    return mk_fail(err, "cuda backend: allocating the device KV cache (%zu heads x %d slots x %d dims, fp16) failed: %s (device %d)",
                   nh, m->n_slots, m->d, cudaGetErrorString(e), c->dev);
  }
  *out = m;
  return 0;
}

static int mirror_get(cuda_impl_t *c, const mk_kv_cache_t *kc, cuda_mirror_t **out, mk_error_t *err) {
  for (int i = 0; i < c->n_mir; i++) {
    if (c->mir[i]->cache != kc) continue;
    if (mirror_matches(c->mir[i], kc)) {
      *out = c->mir[i];
      return 0;
    }
    cudaCheck(err, c->dev, cudaStreamSynchronize(c->stream));
    mirror_free(c->mir[i]); /* the cache was freed and another took its address */
    c->mir[i] = c->mir[--c->n_mir];
    break;
  }
  cuda_mirror_t **grown = (cuda_mirror_t **)realloc(c->mir, sizeof *grown * (size_t)(c->n_mir + 1));
  if (!grown) return mk_fail(err, "cuda backend: out of memory");
  c->mir = grown;
  if (mirror_create(c, kc, &c->mir[c->n_mir], err) != 0) return -1;
  *out = c->mir[c->n_mir++];
  return 0;
}

/* Applies layer L's queued device evictions to the host metadata. Skips an entry whose slot no
 * longer holds the victim's position (the sequence was reset meanwhile). */
static int mirror_apply(cuda_impl_t *c, cuda_mirror_t *m, int L, mk_error_t *err) {
  if (!m->fast_mkv || !m->log_pending[L]) return 0;
  cudaCheck(err, c->dev, cudaEventSynchronize(m->log_ev[L]));
  const size_t jobs = (size_t)m->n_seq * m->n_heads;
  const int *lh = m->log_host + (size_t)L * jobs * 2, *hf = m->log_hf + (size_t)L * jobs;
  mk_kv_cache_t *kc = (mk_kv_cache_t *)m->cache;
  for (int j = 0; j < m->log_n[L]; j++) {
    if (hf[j] < 0) continue;
    const int slot = lh[2 * j], pos = lh[2 * j + 1];
    mk_kv_head_t *h = &kc->heads[hf[j]];
    if (slot >= 0 && slot < h->n_slots && h->pos[slot] == pos) mk_kv_release(h, slot);
  }
  m->log_pending[L] = false;
  m->log_n[L] = 0;
  return 0;
}

static int mirror_apply_all(cuda_impl_t *c, mk_error_t *err) {
  for (int i = 0; i < c->n_mir; i++)
    for (int l = 0; l < c->mir[i]->n_layer; l++)
      if (mirror_apply(c, c->mir[i], l, err) != 0) return -1;
  return 0;
}

/* Uploads the host pos[] rows of heads hf[0..n) to the device mirror. */
static int mirror_push_pos(cuda_impl_t *c, cuda_mirror_t *m, const int *hf, int n, mk_error_t *err) {
  if (n <= 0) return 0;
  const size_t row = (size_t)m->n_slots * sizeof(int32_t);
  int r;
  unsigned char *h = stage_begin(c, row * (size_t)n, &r, err);
  if (!h) return -1;
  const mk_kv_cache_t *kc = m->cache;
  for (int i = 0; i < n; i++) {
    memcpy(h + row * i, kc->heads[hf[i]].pos, row);
    cudaCheck(err, c->dev, cudaMemcpyAsync(m->pos + (size_t)hf[i] * m->n_slots, h + row * i, row,
                                           cudaMemcpyHostToDevice, c->stream));
  }
  return stage_end(c, r, NULL, 0, err);
}

/* MorphKV: slots head h must lose at the end of a step whose next position is next_pos (the
 * policy's trigger and keep count, kvcache/policy_morphkv.c). Candidates are the used slots
 * outside the recent window; the recent positions [next_pos - W, next_pos) are all present
 * (they were acquired and are never candidates), so candidates = used - min(W, next_pos). */
static int mkv_losers(const mk_kv_config_t *cfg, const mk_kv_head_t *h, int64_t next_pos) {
  double e = ceil((double)(cfg->capacity + 1) * (double)cfg->evict_after - 1e-9);
  long total = e < cfg->capacity + 1 ? cfg->capacity + 1 : (long)e;
  if ((long)h->n_used + 1 < total) return 0;
  int64_t recent = next_pos < cfg->window ? next_pos : cfg->window;
  int64_t cand = h->n_used - recent;
  int64_t lose = cand - (cfg->capacity - cfg->window);
  return lose > 0 ? (int)lose : 0;
}

/* ---- attention ---------------------------------------------------------------------------- */


/* Host policy path: rows from the host copy of the cache, observe, evict (as backend_cpu.c). */
static int host_policy_step(cuda_impl_t *c, cuda_mirror_t *m, const mk_attn_params_t *p, const int *slots,
                            mk_error_t *err) {
  mk_kv_cache_t *kc = p->cache;
  const mk_kv_policy_ops_t *ops = kc->ops;
  const mk_kv_config_t *cfg = &kc->cfg;
  const unsigned needs = ops->needs(cfg);
  const int prefill_rows = ops->prefill_rows(cfg);
  const int d = p->head_dim, n_kv = p->n_kv, n_q = p->n_q, ns = kc->n_slots;
  const size_t nq_f = (size_t)p->n_tok * n_q * d, nkv_f = (size_t)p->n_tok * n_kv * d;
  const bool per_head = (needs & MK_KV_NEED_PER_HEAD) != 0;
  const bool lsum_need = (needs & MK_KV_NEED_LOGIT_SUM) != 0;
  /* host scratch: q, qsum, k, v | logits, probs (n_q, ns) | lsum, psum (ns) */
  size_t need = nq_f + 3 * nkv_f + 2 * (size_t)n_q * ns + 2 * (size_t)ns;
  float *hq = host_scratch(c, need);
  if (!hq) return mk_fail(err, "cuda backend: out of host memory (%zu floats)", need);
  float *hqs = hq + nq_f, *hk = hqs + nkv_f, *hv = hk + nkv_f, *lg = hv + nkv_f, *pr = lg + (size_t)n_q * ns;
  float *ls = pr + (size_t)n_q * ns, *ps = ls + ns;
  cudaCheck(err, c->dev, cudaMemcpyAsync(hq, p->q, nq_f * sizeof(float), cudaMemcpyDeviceToHost, c->stream));
  cudaCheck(err, c->dev, cudaMemcpyAsync(hk, p->k, nkv_f * sizeof(float), cudaMemcpyDeviceToHost, c->stream));
  cudaCheck(err, c->dev, cudaMemcpyAsync(hv, p->v, nkv_f * sizeof(float), cudaMemcpyDeviceToHost, c->stream));
  if (p->qsum)
    cudaCheck(err, c->dev, cudaMemcpyAsync(hqs, p->qsum, nkv_f * sizeof(float), cudaMemcpyDeviceToHost, c->stream));
  cudaCheck(err, c->dev, cudaStreamSynchronize(c->stream));
  const mk_kv_dtype_t dt = cfg->dtype;
  const float scale = 1.0f / sqrtf((float)d);
  int *pushed = (int *)malloc(sizeof(int) * (size_t)p->n_spans * n_kv);
  if (!pushed) return mk_fail(err, "cuda backend: out of memory");
  int n_pushed = 0;
  for (int sp = 0; sp < p->n_spans; sp++) {
    const mk_seq_span_t *span = &p->spans[sp];
    /* the host copy of K/V, which the host rows read */
    for (int i = 0; i < span->n; i++)
      for (int j = 0; j < n_kv; j++) {
        mk_kv_head_t *h = mk_kv_cache_head(kc, span->seq, p->layer, j);
        size_t r = ((size_t)(span->row + i) * n_kv + j) * d;
        mk_kv_write(h, dt, slots[(span->row + i) * n_kv + j], hk + r, hv + r);
      }
    for (int i = 0; i < span->n && needs; i++) {
      const int64_t qpos = (int64_t)span->pos0 + i;
      const int tok = span->row + i;
      if (span->prefill && (int64_t)span->n - i > (int64_t)prefill_rows) continue;
      for (int j = 0; j < n_kv; j++) {
        mk_kv_head_t *h = mk_kv_cache_head(kc, span->seq, p->layer, j);
        const float *lgp[64], *prp[64];
        int nq = 0;
        for (int s = 0; s < ns; s++) {
          ls[s] = -INFINITY;
          ps[s] = 0.f;
        }
        for (int u = 0; u < n_q; u++) {
          if (p->q_to_kv[u] != j) continue;
          float *lu = lg + (size_t)u * ns, *pu = pr + (size_t)u * ns;
          const float *qv = hq + ((size_t)tok * n_q + u) * d;
          float mx = -INFINITY;
          for (int s = 0; s < ns; s++) {
            lu[s] = -INFINITY;
            if (s >= h->hi || h->pos[s] < 0 || h->pos[s] > qpos) continue;
            float dot = 0.f;
            for (int i2 = 0; i2 < d; i2++) {
              float kv = dt == MK_KV_F16 ? mk_f16_to_f32(((const uint16_t *)h->k)[(size_t)s * d + i2])
                                         : ((const float *)h->k)[(size_t)s * d + i2];
              dot += kv * qv[i2];
            }
            lu[s] = dot * scale;
            if (lu[s] > mx) mx = lu[s];
          }
          double sum = 0;
          for (int s = 0; s < ns; s++) {
            pu[s] = lu[s] == -INFINITY ? 0.f : expf(lu[s] - mx);
            sum += pu[s];
          }
          float inv = sum > 0 ? (float)(1.0 / sum) : 0.f;
          for (int s = 0; s < ns; s++) {
            pu[s] *= inv;
            ps[s] += pu[s];
          }
          if (!p->qsum && lsum_need)
            for (int s = 0; s < ns; s++)
              if (lu[s] != -INFINITY) ls[s] = (ls[s] == -INFINITY ? 0.f : ls[s]) + lu[s];
          if (nq < 64) {
            lgp[nq] = lu;
            prp[nq] = pu;
            nq++;
          }
        }
        if (p->qsum && lsum_need) {
          const float *qv = hqs + ((size_t)tok * n_kv + j) * d;
          for (int s = 0; s < h->hi; s++) {
            if (h->pos[s] < 0 || h->pos[s] > qpos) continue;
            float dot = 0.f;
            for (int i2 = 0; i2 < d; i2++) {
              float kv = dt == MK_KV_F16 ? mk_f16_to_f32(((const uint16_t *)h->k)[(size_t)s * d + i2])
                                         : ((const float *)h->k)[(size_t)s * d + i2];
              dot += kv * qv[i2];
            }
            ls[s] = dot * scale;
          }
        }
        mk_kv_row_t row;
        memset(&row, 0, sizeof row);
        row.qpos = qpos;
        row.logit_sum = lsum_need ? ls : NULL;
        row.prob_sum = ps;
        row.n_q = nq;
        row.logits = per_head ? lgp : NULL;
        row.probs = prp;
        ops->observe(cfg, h, &row);
      }
    }
    for (int j = 0; j < n_kv; j++) {
      mk_kv_head_t *h = mk_kv_cache_head(kc, span->seq, p->layer, j);
      if (ops->evict(cfg, h, (int64_t)span->pos0 + span->n, span->prefill, err) != 0) {
        free(pushed);
        char why[512];
        snprintf(why, sizeof why, "%.480s", err ? err->msg : "");
        return mk_fail(err, "cache policy %s, layer %d, KV head %d: %s", ops->name, p->layer, h->kv_head, why);
      }
      pushed[n_pushed++] = (int)(h - kc->heads);
    }
  }
  int rc = mirror_push_pos(c, m, pushed, n_pushed, err);
  free(pushed);
  return rc;
}

/* Several losers: device scores, host top-k with the policy's order, pos[] pushed back. */
static int mkv_dump_select(cuda_impl_t *c, cuda_mirror_t *m, const mk_kv_config_t *cfg,
                           const mk_cuda_mkv_job_t *jobs, int n_jobs, mk_error_t *err) {
  cudaCheck(err, c->dev, cudaStreamSynchronize(c->stream));
  for (int l = 0; l < m->n_layer; l++)
    if (mirror_apply(c, m, l, err) != 0) return -1;
  mk_kv_cache_t *kc = (mk_kv_cache_t *)m->cache;
  const int ns = m->n_slots, keep = cfg->capacity - cfg->window;
  float *sc = host_scratch(c, (size_t)ns + (size_t)ns); /* scores, then cand (as int) */
  if (!sc) return mk_fail(err, "cuda backend: out of host memory");
  int *cand = (int *)(sc + ns);
  int *pushed = (int *)malloc(sizeof(int) * (size_t)n_jobs);
  if (!pushed) return mk_fail(err, "cuda backend: out of memory");
  int n_pushed = 0;
  for (int j = 0; j < n_jobs; j++) {
    if (jobs[j].mode != MK_MKV_DUMP) continue;
    mk_kv_head_t *h = &kc->heads[jobs[j].hf];
    cudaError_t e = cudaMemcpy(sc, m->dump + jobs[j].dump_off, sizeof(float) * (size_t)jobs[j].nscan,
                               cudaMemcpyDeviceToHost);
    if (e != cudaSuccess) {
      free(pushed);
      return mk_fail(err, "CUDA copy of MorphKV scores failed: %s (device %d)", cudaGetErrorString(e), c->dev);
    }
    const int64_t lim = (int64_t)jobs[j].next_pos - cfg->window;
    int n = 0;
    for (int s = 0; s < jobs[j].nscan; s++)
      if (h->pos[s] >= 0 && h->pos[s] < lim) cand[n++] = s;
    if (n > keep) {
      mk_kv_select_top(cand, n, keep, sc, h->pos);
      for (int i = keep; i < n; i++) mk_kv_release(h, cand[i]);
    }
    pushed[n_pushed++] = jobs[j].hf;
  }
  int rc = mirror_push_pos(c, m, pushed, n_pushed, err);
  free(pushed);
  return rc;
}

static int cuda_attention(mk_backend_t *b, const mk_attn_params_t *p, mk_error_t *err) {
  cuda_impl_t *c = impl_of(b);
  if (sticky(c, err)) return -1;
  cudaCheck(err, c->dev, cudaSetDevice(c->dev));
  mk_kv_cache_t *kc = p->cache;
  const int d = p->head_dim, n_kv = p->n_kv, n_q = p->n_q, n_tok = p->n_tok, L = p->layer;
  if (n_kv != kc->n_heads || d != kc->head_dim)
    return mk_fail(err, "cuda attention: %d KV heads of dim %d, but the cache holds %d of dim %d", n_kv, d,
                   kc->n_heads, kc->head_dim);
  if (L < 0 || L >= kc->n_layer) return mk_fail(err, "cuda attention: layer %d out of range", L);
  if (!mk_cuda_attn_supported_dim(d))
    return mk_fail(err, "cuda attention: head dim %d is not compiled (64, 128, 256)", d);
  if (n_tok <= 0) return 0;
  if (n_tok > 65535) return mk_fail(err, "cuda attention: %d tokens in one call (at most 65535)", n_tok);
  cuda_mirror_t *m = NULL;
  if (mirror_get(c, kc, &m, err) != 0) return -1;
  if (mirror_apply(c, m, L, err) != 0) return -1; /* last step's victims of this layer */
  const int W = kc->cfg.window;

  /* units: each KV head with up to MK_ATTN_GMAX of its query heads */
  int n_units = 0;
  mk_cuda_attn_unit_t units_stack[64], *units = units_stack;
  const int max_units = n_q + n_kv;
  if (max_units > 64) {
    units = (mk_cuda_attn_unit_t *)malloc(sizeof *units * (size_t)max_units);
    if (!units) return mk_fail(err, "cuda backend: out of memory");
  }
  for (int j = 0; j < n_kv; j++) {
    int first = n_units;
    for (int u = 0; u < n_q; u++) {
      if (p->q_to_kv[u] != j) continue;
      if (n_units == first || units[n_units - 1].nq == MK_ATTN_GMAX) {
        memset(&units[n_units], 0, sizeof units[n_units]);
        units[n_units].kv = j;
        units[n_units].zwrite = n_units == first;
        n_units++;
      }
      mk_cuda_attn_unit_t *un = &units[n_units - 1];
      un->q[un->nq++] = u;
    }
    if (n_units == first) { /* no local query head: only the ring row, if any */
      memset(&units[n_units], 0, sizeof units[n_units]);
      units[n_units].kv = j;
      units[n_units].zwrite = 1;
      n_units++;
    }
  }

  /* argument blob: slots (n_tok, n_kv) | head0, qpos, nscan, zrow (n_tok) | units | jobs | map */
  const size_t o_slots = 0, o_head0 = mk_align16(o_slots + sizeof(int) * (size_t)n_tok * n_kv);
  const size_t o_qpos = mk_align16(o_head0 + sizeof(int) * n_tok), o_nscan = mk_align16(o_qpos + sizeof(int) * n_tok);
  const size_t o_zrow = mk_align16(o_nscan + sizeof(int) * n_tok), o_units = mk_align16(o_zrow + sizeof(int) * n_tok);
  const size_t max_jobs = (size_t)p->n_spans * n_kv;
  const size_t o_jobs = mk_align16(o_units + sizeof(mk_cuda_attn_unit_t) * n_units);
  const size_t o_map = mk_align16(o_jobs + sizeof(mk_cuda_mkv_job_t) * max_jobs);
  const size_t blob = mk_align16(o_map + sizeof(int) * n_q);
  int region;
  unsigned char *h = stage_begin(c, blob, &region, err);
  if (!h) {
    if (units != units_stack) free(units);
    return -1;
  }
  int *slots = (int *)(h + o_slots), *head0 = (int *)(h + o_head0), *qpos = (int *)(h + o_qpos);
  int *nscan = (int *)(h + o_nscan), *zrow = (int *)(h + o_zrow);
  memcpy(h + o_units, units, sizeof *units * (size_t)n_units);
  memcpy(h + o_map, p->q_to_kv, sizeof(int) * (size_t)n_q);
  if (units != units_stack) free(units);
  mk_cuda_mkv_job_t *jobs = (mk_cuda_mkv_job_t *)(h + o_jobs);
  for (int i = 0; i < n_tok * n_kv; i++) slots[i] = -1; /* rows outside every span stay untouched */
  for (int t = 0; t < n_tok; t++) zrow[t] = -1, nscan[t] = 0, head0[t] = 0, qpos[t] = 0;
  int *prefill_heads = NULL, n_prefill_heads = 0;
  int max_nscan = 0;
  for (int sp = 0; sp < p->n_spans; sp++) {
    const mk_seq_span_t *s = &p->spans[sp];
    if (s->seq < 0 || s->seq >= kc->n_seq || s->row < 0 || s->n < 0 || s->row + s->n > n_tok) {
      free(prefill_heads);
      return mk_fail(err, "cuda attention: span %d (sequence %d, rows %d..%d) out of range", sp, s->seq, s->row,
                     s->row + s->n);
    }
    int hi = 0;
    for (int j = 0; j < n_kv; j++) {
      mk_kv_head_t *hd = mk_kv_cache_head(kc, s->seq, L, j);
      for (int i = 0; i < s->n; i++) {
        int64_t ps = (int64_t)s->pos0 + i;
        int slot = mk_kv_acquire(hd, ps);
        if (slot < 0) {
          free(prefill_heads);
          stage_end(c, region, NULL, 0, err);
          return mk_fail(err, "KV cache full: layer %d, KV head %d, sequence %d holds %d slots, token at position %lld does not fit (policy %s)",
                         L, hd->kv_head, s->seq, hd->n_slots, (long long)ps, kc->ops->name);
        }
        slots[(s->row + i) * n_kv + j] = slot;
      }
      if (hd->hi > hi) hi = hd->hi;
    }
    if (hi > max_nscan) max_nscan = hi;
    const int64_t next_pos = (int64_t)s->pos0 + s->n;
    for (int i = 0; i < s->n; i++) {
      const int t = s->row + i;
      head0[t] = (s->seq * kc->n_layer + L) * kc->n_heads;
      qpos[t] = s->pos0 + i;
      nscan[t] = hi;
      zrow[t] = (m->fast_mkv && qpos[t] >= next_pos - W) ? qpos[t] % W : -1;
    }
    if (s->prefill) { /* a new sequence: the device pos[] of its heads may be stale */
      int *grown = (int *)realloc(prefill_heads, sizeof(int) * (size_t)(n_prefill_heads + n_kv));
      if (!grown) {
        free(prefill_heads);
        stage_end(c, region, NULL, 0, err);
        return mk_fail(err, "cuda backend: out of memory");
      }
      prefill_heads = grown;
      for (int j = 0; j < n_kv; j++) prefill_heads[n_prefill_heads++] = head0[s->row] + j;
    }
  }
  mk_kv_cache_note_peak(kc);

  /* MorphKV jobs: decided from host counts */
  int n_jobs = 0, n_argmin = 0, n_dump = 0, job_nscan = 0;
  if (m->fast_mkv) {
    for (int sp = 0; sp < p->n_spans; sp++) {
      const mk_seq_span_t *s = &p->spans[sp];
      const int64_t next_pos = (int64_t)s->pos0 + s->n;
      for (int j = 0; j < n_kv; j++) {
        mk_kv_head_t *hd = mk_kv_cache_head(kc, s->seq, L, j);
        int lose = mkv_losers(&kc->cfg, hd, next_pos);
        if (lose <= 0) continue;
        mk_cuda_mkv_job_t *jb = &jobs[n_jobs];
        jb->hf = (int)(hd - kc->heads);
        jb->next_pos = (int)next_pos;
        jb->nscan = hd->hi;
        jb->mode = lose == 1 ? MK_MKV_ARGMIN : MK_MKV_DUMP;
        jb->dump_off = lose == 1 ? 0 : n_dump * m->n_slots;
        if (lose == 1)
          n_argmin++;
        else
          n_dump++;
        if (hd->hi > job_nscan) job_nscan = hd->hi;
        n_jobs++;
      }
    }
  }
  mk_cuda_mkv_job_t *jobs_host = NULL;
  if (n_dump) {
    jobs_host = (mk_cuda_mkv_job_t *)malloc(sizeof *jobs_host * (size_t)n_jobs);
    if (!jobs_host) {
      free(prefill_heads);
      stage_end(c, region, NULL, 0, err);
      return mk_fail(err, "cuda backend: out of memory");
    }
    memcpy(jobs_host, jobs, sizeof *jobs_host * (size_t)n_jobs);
  }
  if (m->fast_mkv) { /* log of this call's argmin jobs */
    const size_t nj = (size_t)m->n_seq * m->n_heads;
    int *hf = m->log_hf + (size_t)L * nj;
    for (int j = 0; j < n_jobs; j++) hf[j] = jobs[j].mode == MK_MKV_ARGMIN ? jobs[j].hf : -1;
    m->log_n[L] = n_jobs;
  }

  int rc = -1;
  if (dev_reserve(c, (void **)&c->args, &c->args_cap, blob, err) != 0) {
    stage_end(c, region, NULL, 0, err);
    goto out;
  }
  if (stage_end(c, region, c->args, blob, err) != 0) goto out;
  if (n_prefill_heads && mirror_push_pos(c, m, prefill_heads, n_prefill_heads, err) != 0) goto out;
  {
    unsigned char *da = c->args;
    const int *d_slots = (const int *)(da + o_slots);
    mk_cuda_kv_write(m->k, m->v, m->pos, p->k, p->v, d_slots, (const int *)(da + o_head0),
                     (const int *)(da + o_qpos), n_tok, n_kv, d, m->n_slots, c->stream);
    cudaCheckLaunch(err, c->dev, "kv_write");

    const float *qsum = p->qsum;
    if (m->fast_mkv && !qsum) { /* single rank without a caller qsum: sum the local heads */
      if (dev_reserve(c, (void **)&c->qsum, &c->qsum_cap, sizeof(float) * (size_t)n_tok * n_kv * d, err) != 0)
        goto out;
      mk_cuda_group_qsum(c->qsum, p->q, n_tok, n_q, n_kv, d, (const int *)(da + o_map), c->stream);
      cudaCheckLaunch(err, c->dev, "group_qsum");
      qsum = c->qsum;
    }
    mk_cuda_attn_args_t a;
    memset(&a, 0, sizeof a);
    a.q = p->q;
    a.qsum = m->fast_mkv ? qsum : NULL;
    a.out = p->out;
    a.k = m->k;
    a.v = m->v;
    a.pos = m->pos;
    a.zring = m->fast_mkv ? m->zring : NULL;
    a.tok_head0 = (const int *)(da + o_head0);
    a.tok_qpos = (const int *)(da + o_qpos);
    a.tok_nscan = (const int *)(da + o_nscan);
    a.tok_zrow = m->fast_mkv ? (const int *)(da + o_zrow) : NULL;
    a.units = (const mk_cuda_attn_unit_t *)(da + o_units);
    a.n_units = n_units;
    a.n_tok = n_tok;
    a.n_q = n_q;
    a.n_kv = n_kv;
    a.d = d;
    a.n_slots = m->n_slots;
    a.window = W;
    a.scale = 1.0f / sqrtf((float)d);
    mk_cuda_attn_plan(n_units, n_tok, max_nscan, 4 * c->n_sm, &a.n_split, &a.split_len);
    size_t pf = mk_cuda_attn_part_floats(n_tok, a.n_split, n_q, d);
    if (pf) {
      size_t total = pf + (size_t)n_tok * a.n_split * n_q * 2;
      if (dev_reserve(c, (void **)&c->part, &c->part_cap, total * sizeof(float), err) != 0) goto out;
      a.part_o = c->part;
      a.part_ml = c->part + pf;
    }
    mk_cuda_attention(&a, c->stream);
    cudaCheckLaunch(err, c->dev, "attention");

    if (n_jobs) {
      if (n_dump && !m->dump) {
        size_t bytes = (size_t)m->n_seq * m->n_heads * m->n_slots * sizeof(float);
        cudaCheck(err, c->dev, cudaMalloc((void **)&m->dump, bytes));
      }
      mk_cuda_mkv_args_t ma;
      memset(&ma, 0, sizeof ma);
      ma.jobs = (const mk_cuda_mkv_job_t *)(da + o_jobs);
      ma.n_jobs = n_jobs;
      ma.pos = m->pos;
      ma.zring = m->zring;
      ma.n_slots = m->n_slots;
      ma.window = W;
      ma.fusion_max = kc->cfg.fusion == MK_KV_FUSION_MAX;
      mk_cuda_mkv_plan(job_nscan, &ma.n_split, &ma.split_len);
      ma.stats = m->stats;
      ma.best = m->best;
      ma.counters = m->counters;
      ma.victims = m->victims;
      ma.dump = m->dump;
      mk_cuda_morphkv_select(&ma, c->stream);
      cudaCheckLaunch(err, c->dev, "morphkv select");
      if (n_argmin) {
        const size_t nj = (size_t)m->n_seq * m->n_heads;
        cudaCheck(err, c->dev, cudaMemcpyAsync(m->log_host + (size_t)L * nj * 2, m->victims,
                                               sizeof(int) * 2 * (size_t)n_jobs, cudaMemcpyDeviceToHost, c->stream));
        cudaCheck(err, c->dev, cudaEventRecord(m->log_ev[L], c->stream));
        m->log_pending[L] = true;
      } else {
        m->log_n[L] = 0;
      }
      if (n_dump && mkv_dump_select(c, m, &kc->cfg, jobs_host, n_jobs, err) != 0) goto out;
    }
  }
  if (m->host_policy && host_policy_step(c, m, p, slots, err) != 0) goto out;
  rc = 0;
out:
  free(prefill_heads);
  free(jobs_host);
  return rc;
}

/* ---- lifetime ----------------------------------------------------------------------------- */

static void cuda_free(mk_backend_t *b) {
  cuda_impl_t *c = impl_of(b);
  if (!c) return;
  cudaSetDevice(c->dev);
  if (c->stream) cudaStreamSynchronize(c->stream);
  for (int i = 0; i < c->n_mir; i++) mirror_free(c->mir[i]);
  free(c->mir);
  for (int r = 0; r < MK_STAGE_REGIONS; r++) {
    if (c->stage[r]) cudaFreeHost(c->stage[r]);
    if (c->stage_ev[r]) cudaEventDestroy(c->stage_ev[r]);
  }
  cudaFree(c->args);
  cudaFree(c->xb);
  cudaFree(c->part);
  cudaFree(c->qsum);
  cudaFree(c->wtmp);
  free(c->hbuf);
  if (c->cublas) cublasDestroy(c->cublas);
  if (c->stream) cudaStreamDestroy(c->stream);
  free(c);
  b->impl = NULL;
}

static mk_backend_ops_t cuda_ops_make(void) {
  mk_backend_ops_t o;
  memset(&o, 0, sizeof o);
  o.name = "cuda";
  o.free = cuda_free;
  o.alloc = cuda_alloc;
  o.dealloc = cuda_dealloc;
  o.upload = cuda_upload;
  o.download = cuda_download;
  o.weight_prepare = cuda_weight_prepare;
  o.weight_release = cuda_weight_release;
  o.embed = cuda_embed;
  o.matmul = cuda_matmul;
  o.rmsnorm = cuda_rmsnorm;
  o.add_bias = cuda_add_bias;
  o.rope = cuda_rope;
  o.swiglu = cuda_swiglu;
  o.add = cuda_add;
  o.group_qsum = cuda_group_qsum;
  o.attention = cuda_attention;
  o.sync = cuda_sync;
  o.copy2d = cuda_copy2d;
  o.host_alloc = cuda_host_alloc;
  o.host_free = cuda_host_free;
  return o;
}

static const mk_backend_ops_t cuda_ops = cuda_ops_make();

extern "C" int mk_backend_cuda_init(mk_backend_t *b, const mk_backend_params_t *p, mk_error_t *err) {
  memset(b, 0, sizeof *b);
  int count = 0;
  cudaError_t e = cudaGetDeviceCount(&count);
  const char *vis = getenv("CUDA_VISIBLE_DEVICES");
  if (e != cudaSuccess || count == 0) {
    cudaGetLastError();
    return mk_fail(err, "no CUDA device (%s; CUDA_VISIBLE_DEVICES=%s)",
                   e != cudaSuccess ? cudaGetErrorString(e) : "0 devices", vis ? vis : "unset");
  }
  if (p->device >= count)
    return mk_fail(err, "CUDA device %d requested, but %d device%s visible (CUDA_VISIBLE_DEVICES=%s)", p->device,
                   count, count == 1 ? " is" : "s are", vis ? vis : "unset");
  cuda_impl_t *c = (cuda_impl_t *)calloc(1, sizeof *c);
  if (!c) return mk_fail(err, "cuda backend: out of memory");
  /* device < 0: by node-local rank, ranks beyond the devices sharing them round-robin */
  c->dev = p->device >= 0 ? p->device : (p->local_rank > 0 ? p->local_rank : 0) % count;
  b->impl = c;
  b->ops = &cuda_ops;
  b->n_threads = p->n_threads;
#define MK_INIT_CHECK(call)                                                                         \
  do {                                                                                              \
    cudaError_t ie_ = (call);                                                                       \
    if (ie_ != cudaSuccess) {                                                                       \
      mk_fail(err, "CUDA call %s failed: %s (%s:%d, device %d)", #call, cudaGetErrorString(ie_),    \
              __FILE__, __LINE__, c->dev);                                                          \
      cuda_free(b);                                                                                 \
      b->ops = NULL;                                                                                \
      return -1;                                                                                    \
    }                                                                                               \
  } while (0)
  MK_INIT_CHECK(cudaSetDevice(c->dev));
  MK_INIT_CHECK(cudaDeviceGetAttribute(&c->n_sm, cudaDevAttrMultiProcessorCount, c->dev));
  MK_INIT_CHECK(cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking));
  MK_INIT_CHECK(cudaDeviceGetPCIBusId(b->comm.device_id, (int)sizeof b->comm.device_id, c->dev));
  b->comm.device_memory = true;
  b->comm.stream = (void *)c->stream;
  b->comm.device = c->dev;
  for (int r = 0; r < MK_STAGE_REGIONS; r++)
    MK_INIT_CHECK(cudaEventCreateWithFlags(&c->stage_ev[r], cudaEventDisableTiming));
#undef MK_INIT_CHECK
  cublasStatus_t s = cublasCreate(&c->cublas);
  if (s == CUBLAS_STATUS_SUCCESS) s = cublasSetStream(c->cublas, c->stream);
  if (s != CUBLAS_STATUS_SUCCESS) {
    mk_fail(err, "cuBLAS init failed: %s (device %d)", cublasGetStatusString(s), c->dev);
    cuda_free(b);
    b->ops = NULL;
    return -1;
  }
  return 0;
}
