/* Compute backend: a table of the kernels the forward pass needs, plus a context.
 *
 * The forward pass (forward() in src/engine.c) is written once against this table; the CPU
 * backend (src/backend_cpu.c) is the reference, the CUDA backend (cuda/) implements the same table
 * on the device and is tested op by op against the CPU. Activation pointers passed to the ops are
 * backend memory (host memory on the CPU, device memory on CUDA) obtained from ops->alloc;
 * token ids and positions are host arrays.
 *
 * Failure. Every op returns 0, or -1 with err naming the op and the cause (an allocation that
 * failed, a kernel launch or library call that failed, a bad argument). The forward pass checks
 * each op and adds the layer. A backend whose ops run asynchronously (CUDA) reports a launch
 * failure at the op that launched; a fault that only shows when the device runs the kernel
 * surfaces at the next op that checks the device (attention, download, sync), naming the call
 * that saw it.
 *
 * The cache policy is not the backend's: kvcache/driver.c acquires the slots, hands the policy
 * its rows, evicts and keeps the host pos[] exact. The backend writes K/V into the slots it is
 * given (kv_write), attends over the visible slots and produces the score rows the driver asks
 * for (attention), and may score MorphKV on the device (mkv_begin / mkv_select, optional). */
#ifndef MK_BACKEND_H
#define MK_BACKEND_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kvcache/kvcache.h"
#include "src/mk_error.h"
#include "src/quant.h"

typedef struct mk_backend mk_backend_t;

/* A weight matrix prepared for a backend: the file-format matrix (host, borrowed from the
 * mapping) plus whatever the backend made of it (e.g. a bf16 copy on the device). */
typedef struct mk_bweight {
  mk_qmat_t host;
  void *dev;      /* backend-owned; NULL on the CPU (it reads host directly) */
  void *dev_q;    /* backend-owned second copy (CUDA: the file-format blocks on the device) or NULL */
  int dev_type;   /* backend-specific (CUDA: which copies are resident) */
  size_t dev_bytes; /* device memory this weight holds (all its copies); 0 on the CPU */
} mk_bweight_t;

typedef struct mk_rope_params {
  float *x;             /* (n_tok, n_head, head_dim) in place */
  const int32_t *pos;   /* (n_tok) host */
  int n_tok, n_head, head_dim;
  int rope_dim;         /* rotated dims (<= head_dim) */
  float theta;
  bool neox;            /* pairs (i, i+rope_dim/2) instead of (2i, 2i+1) */
  const float *freq_factors; /* (rope_dim/2) Llama-3 scaling, backend memory, or NULL */
} mk_rope_params_t;

/* One sequence's tokens inside a batch: rows [row, row+n) of q/k/v/out, positions pos0.. */
typedef struct mk_seq_span {
  int seq;   /* sequence index in the cache */
  int row;   /* first token row in the batch */
  int n;     /* tokens */
  int32_t pos0;
  bool prefill; /* these tokens are the whole prompt: evict with prefill semantics afterwards */
} mk_seq_span_t;

typedef struct mk_attn_params {
  int layer;
  int n_tok;                 /* rows in q/k/v/out */
  int n_spans;
  const mk_seq_span_t *spans;
  const float *q;            /* (n_tok, n_q, d) post-RoPE */
  const float *k, *v;        /* (n_tok, n_kv, d) post-RoPE keys */
  /* (n_tok, n_kv, d): sum over the whole group (all ranks) of post-RoPE queries; for policies
   * with MK_KV_NEED_LOGIT_SUM. NULL if the policy does not need it. */
  const float *qsum;
  float *out;                /* (n_tok, n_q, d) */
  int n_q, n_kv, head_dim;
  const int *q_to_kv;        /* (n_q) local KV head read by local query head i */
  mk_kv_cache_t *cache;
  /* Set by the cache-policy driver (kvcache/driver.h) for the backend: */
  const int *slots;          /* (n_tok, n_kv) host: the slot of each new token's K/V, -1 outside every span */
  int tok0, tok1;            /* attention: attend the batch rows [tok0, tok1) */
} mk_attn_params_t;

/* Score rows of one attention call, host memory, for the batch rows [row0, row1) (n_r rows), as
 * the policy asked (mk_kv_policy_ops_t.needs). Entries of invisible slots (free, pos > qpos,
 * at or beyond the head's high-water mark) are -INFINITY in logits and 0 in probabilities. */
typedef struct mk_attn_rows {
  int row0, row1;
  unsigned needs;    /* MK_KV_NEED_* */
  bool device;       /* device MorphKV: the group logit rows stay on the device (its ring); no host rows */
  float *logit_sum;  /* NEED_LOGIT_SUM: (n_r, n_kv, n_slots), from the caller's qsum */
  float *prob_sum;   /* (n_r, n_kv, n_slots) sum of probs over the group's local query heads */
  float *probs;      /* (n_r, n_q, n_slots) per local query head */
  float *logits;     /* NEED_PER_HEAD: (n_r, n_q, n_slots); else NULL */
} mk_attn_rows_t;

/* Device MorphKV, one eviction job: a head that must lose `losers` slots (kvcache/driver.c). */
typedef struct mk_kv_mkv_job {
  int head;     /* flat index in cache->heads */
  int next_pos; /* position of the next token */
  int nscan;    /* slots [0, nscan) hold every used slot */
  int losers;   /* 1: the device frees the argmin; > 1: the device writes scores, the driver picks */
} mk_kv_mkv_job_t;

typedef struct mk_backend_ops {
  const char *name;
  void (*free)(mk_backend_t *b);
  void *(*alloc)(mk_backend_t *b, size_t bytes); /* zeroed; NULL on failure */
  void (*dealloc)(mk_backend_t *b, void *p);
  int (*upload)(mk_backend_t *b, void *dst, const void *src, size_t bytes, mk_error_t *err);
  int (*download)(mk_backend_t *b, void *dst, const void *src, size_t bytes, mk_error_t *err);
  int (*weight_prepare)(mk_backend_t *b, const mk_qmat_t *w, mk_bweight_t *out, mk_error_t *err);
  void (*weight_release)(mk_backend_t *b, mk_bweight_t *w);

  /* x(n, cols) = rows ids[] of the embedding table, dequantized */
  int (*embed)(mk_backend_t *b, const mk_bweight_t *table, const int32_t *ids, int n, float *x, mk_error_t *err);
  /* y(n, rows) = x(n, cols) W^T */
  int (*matmul)(mk_backend_t *b, const mk_bweight_t *w, const float *x, int n, float *y, mk_error_t *err);
  /* The same product in fixed column chunks of chunk_cols (row-parallel layers; the numerics
   * note in src/quant.c): parts != NULL: parts(n_chunks, n, rows) = each chunk's partial sum;
   * parts == NULL: y(n, rows) = the partials added left to right in chunk order. A backend
   * without it (NULL) cannot run --deterministic on. */
  int (*matmul_chunks)(mk_backend_t *b, const mk_bweight_t *w, const float *x, int n, int chunk_cols,
                       float *parts, float *y, mk_error_t *err);
  /* y(n) = parts[idx[0]] + parts[idx[1]] + ... left to right; parts are n floats apart (backend
   * memory), idx is host memory. */
  int (*sum_parts)(mk_backend_t *b, float *y, const float *parts, const int *idx, int n_idx, size_t n,
                   mk_error_t *err);
  /* y(n, dim) = x / rms(x) * w */
  int (*rmsnorm)(mk_backend_t *b, float *y, const float *x, const float *w, int n, int dim, float eps,
                 mk_error_t *err);
  /* y(n, dim) += bias(dim) */
  int (*add_bias)(mk_backend_t *b, float *y, const float *bias, int n, int dim, mk_error_t *err);
  int (*rope)(mk_backend_t *b, const mk_rope_params_t *p, mk_error_t *err);
  /* y = silu(gate) * up, n elements */
  int (*swiglu)(mk_backend_t *b, float *y, const float *gate, const float *up, size_t n, mk_error_t *err);
  /* y += x */
  int (*add)(mk_backend_t *b, float *y, const float *x, size_t n, mk_error_t *err);
  /* qsum(n_tok, n_kv, d) = sum of q(n_tok, n_q, d) over the query heads of each local KV head */
  int (*group_qsum)(mk_backend_t *b, float *qsum, const float *q, int n_tok, int n_q, int n_kv,
                    int d, const int *q_to_kv, mk_error_t *err);
  /* K/V of the new tokens into p->slots (the driver has marked them in pos[]). */
  int (*kv_write)(mk_backend_t *b, const mk_attn_params_t *p, mk_error_t *err);
  /* out rows [tok0, tok1) = softmax over the visible slots (used, pos <= qpos) of q.K, times V;
   * and, when rows is not NULL, its score rows. Never changes the cache's metadata. */
  int (*attention)(mk_backend_t *b, const mk_attn_params_t *p, const mk_attn_rows_t *rows, mk_error_t *err);
  /* Optional (NULL: the backend reads the host pos[] directly): the host pos[] of heads[0..n)
   * (flat indices) changed outside kv_write (evictions on the host, a sequence restarted). */
  int (*kv_pos_changed)(mk_backend_t *b, mk_kv_cache_t *c, const int *heads, int n, mk_error_t *err);
  /* Optional device MorphKV. mkv_begin, at the start of each layer's step: *on_device says
   * whether this backend scores the cache's MorphKV on the device; the victims its device chose
   * at the layer's last step are released (mk_kv_driver_apply_victims) before it returns.
   * mkv_select: after the attention that pushed the rows. Jobs with losers == 1: the device frees
   * the lowest-ranked candidate in its pos[], reported at the next mkv_begin of the layer or at
   * sync/download. Jobs with losers > 1: scores + k * n_slots (the k-th such job) receives the
   * score of each slot < nscan (-1 for non-candidates); the call waits for them. */
  int (*mkv_begin)(mk_backend_t *b, mk_kv_cache_t *c, int layer, bool *on_device, mk_error_t *err);
  int (*mkv_select)(mk_backend_t *b, mk_kv_cache_t *c, int layer, const mk_kv_mkv_job_t *jobs, int n_jobs,
                    float *scores, mk_error_t *err);
  int (*sync)(mk_backend_t *b, mk_error_t *err);
  /* height rows of width bytes from src (row pitch spitch) to dst (pitch dpitch), both backend
   * memory, in order with the other ops (the forward pass packs collective payloads with it). */
  int (*copy2d)(mk_backend_t *b, void *dst, size_t dpitch, const void *src, size_t spitch, size_t width,
                size_t height, mk_error_t *err);
  /* Host memory for staging transfers (CUDA: pinned, cudaMallocHost; CPU: malloc). NULL on failure. */
  void *(*host_alloc)(mk_backend_t *b, size_t bytes);
  void (*host_free)(mk_backend_t *b, void *p);
} mk_backend_ops_t;

/* What a communicator needs to know of the backend (parallel/ctx.c picks one with it), so that
 * the engine never needs to know which backend it drives. */
typedef struct mk_backend_comm_info {
  bool device_memory; /* activations are device memory: host code must never dereference them */
  void *stream;       /* the queue every op runs on (a cudaStream_t); NULL on the CPU */
  int device;         /* device ordinal in this process; -1 on the CPU */
  char device_id[32]; /* the physical device, equal across processes (PCI bus id); "" on the CPU */
} mk_backend_comm_info_t;

struct mk_backend {
  const mk_backend_ops_t *ops;
  void *impl;
  int n_threads;
  mk_backend_comm_info_t comm; /* zero (host memory, no stream) unless the backend sets it */
};

typedef enum mk_backend_kind { MK_BACKEND_CPU = 0, MK_BACKEND_CUDA = 1 } mk_backend_kind_t;

typedef struct mk_backend_params {
  mk_backend_kind_t kind;
  int n_threads;        /* CPU threads (OpenMP) */
  int simd;             /* -1: best available; else mk_simd_t to force */
  int device;           /* CUDA: device ordinal; < 0: local_rank modulo the visible devices, so
                         * several ranks of a node may share one GPU (--comm mpi) */
  int local_rank;       /* CUDA with device < 0: this rank's index on its node */
} mk_backend_params_t;

/* CPU backend: always available. */
int mk_backend_cpu_init(mk_backend_t *b, const mk_backend_params_t *p, mk_error_t *err);
/* CUDA backend (cuda/): fails with a clear message where no GPU is present. Declared weak so
 * that a build without the CUDA sources links; mk_backend_init checks it is there. */
int mk_backend_cuda_init(mk_backend_t *b, const mk_backend_params_t *p, mk_error_t *err)
    __attribute__((weak));
/* CUDA: bytes of weights resident on the device as file-format blocks and as bf16 copies
 * (MORPHKV_CUDA_WEIGHTS, docs/cuda.md). Weak, as mk_backend_cuda_init. */
void mk_backend_cuda_resident(mk_backend_t *b, size_t *quant_bytes, size_t *bf16_bytes) __attribute__((weak));
/* Dispatch on p->kind; "cuda" without a CUDA build or without a device is an error. */
int mk_backend_init(mk_backend_t *b, const mk_backend_params_t *p, mk_error_t *err);

#endif
