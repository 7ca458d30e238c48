/* CUDA backend internals shared by its three files (not a kernel family):
 *   backend_cuda.cu  the op table: memory, weights, dense ops, lifetime, staging helpers
 *   backend_kv.cu    the device KV mirror: kv_write, attention, score rows for host policies
 *   backend_mkv.cu   device MorphKV: scoring jobs, the argmin victims and their hand-back
 *
 * KV cache. The host mk_kv_cache_t owns the metadata: pos[], n_used, hi and slot choice belong to
 * the cache-policy driver (kvcache/driver.c), which runs on the host for every backend. The first
 * use of a cache creates its device mirror: fp16 K/V of the same geometry, a device copy of pos[]
 * (the kernels mask by it) and, for device MorphKV, the Z ring. The device pos[] follows the
 * host's through kv_write (new tokens), kv_pos_changed (host evictions, restarted sequences) and
 * the device's own argmin victims, which are handed back to the driver (mk_kv_driver_apply_victims)
 * at the layer's next mkv_begin or at sync/download. Invariant: after ops->sync or ops->download,
 * host pos[]/n_used and device pos[] agree. */
#ifndef MK_CUDA_BACKEND_CUDA_CUH
#define MK_CUDA_BACKEND_CUDA_CUH

extern "C" {
#include "kvcache/driver.h"
#include "kvcache/kvcache.h"
#include "src/backend.h"
#include "src/mk_util.h"
}

#include "cuda/common.cuh"

#define MK_STAGE_REGIONS 64 /* small pinned argument buffers in flight: lets the host run layers ahead */

/* Device mirror of one host KV cache. */
typedef struct cuda_mirror {
  const mk_kv_cache_t *cache;
  uint64_t serial; /* the cache's mk_kv_cache_t.serial: identity, not the address */
  const mk_kv_head_t *heads; /* with the shape below: a cache re-created with other geometry */
  int n_seq, n_layer, n_heads, d, n_slots, window;
  bool fast_mkv;    /* MorphKV scored on the device */
  bool host_rows;   /* a host policy reads rows: K/V are also kept in the host cache */
  __half *k, *v;    /* (n_heads_total, n_slots, d) */
  int32_t *pos;     /* (n_heads_total, n_slots) */
  float *zring;     /* (n_heads_total, W, n_slots) fast_mkv only */
  /* pending victims of the last argmin per layer: victims copied to log_host[L] */
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
  float *mm_part; /* chunk partials of the fused chunked matmul */
  size_t mm_part_cap;
  float *qsum; /* qsum when the caller gave none */
  size_t qsum_cap;
  void *wtmp; /* quantized weight upload chunk */
  cuda_mirror_t **mir;
  int n_mir;
  /* host scratch (score rows for host policies) */
  float *hbuf;
  size_t hbuf_cap;
  __nv_bfloat16 *wtile; /* bf16 tile of a quantized-only weight for batched matmuls */
  size_t wtile_cap;
  size_t resident_q, resident_bf16; /* bytes of quantized and bf16 weight copies on the device */
} cuda_impl_t;

static inline cuda_impl_t *cb_impl(mk_backend_t *b) { return (cuda_impl_t *)b->impl; }

/* backend_cuda.cu */
int cb_sticky(cuda_impl_t *c, mk_error_t *err);
int cb_dev_reserve(cuda_impl_t *c, void **p, size_t *cap, size_t bytes, mk_error_t *err);
unsigned char *cb_stage_begin(cuda_impl_t *c, size_t bytes, int *region, mk_error_t *err);
int cb_stage_end(cuda_impl_t *c, int r, void *dst, size_t bytes, mk_error_t *err);
float *cb_host_scratch(cuda_impl_t *c, size_t floats);

/* backend_kv.cu */
void cb_mirror_free(cuda_mirror_t *m);
int cb_mirror_get(cuda_impl_t *c, const mk_kv_cache_t *kc, cuda_mirror_t **out, mk_error_t *err);
int cb_kv_write(mk_backend_t *b, const mk_attn_params_t *p, mk_error_t *err);
int cb_attention(mk_backend_t *b, const mk_attn_params_t *p, const mk_attn_rows_t *rows, mk_error_t *err);
int cb_kv_pos_changed(mk_backend_t *b, mk_kv_cache_t *kc, const int *heads, int n, mk_error_t *err);

/* backend_mkv.cu */
int cb_mirror_apply(cuda_impl_t *c, cuda_mirror_t *m, int L, mk_error_t *err);
int cb_mirror_apply_all(cuda_impl_t *c, mk_error_t *err);
int cb_mkv_begin(mk_backend_t *b, mk_kv_cache_t *kc, int layer, bool *on_device, mk_error_t *err);
int cb_mkv_select(mk_backend_t *b, mk_kv_cache_t *kc, int layer, const mk_kv_mkv_job_t *jobs, int n_jobs,
                  float *scores, mk_error_t *err);

#endif
