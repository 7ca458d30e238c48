/* Attention over the slot cache on the device: K/V write, split-K GQA attention, combine.
 *
 * Device cache layout (a mirror of kvcache.h's host geometry, fp16): for the flat head index
 * hf = (seq * n_layer + layer) * n_heads + head,
 *   K, V   (n_slots, d) fp16 at k + hf * n_slots * d
 *   pos    (n_slots) int32 at pos + hf * n_slots (-1 = free)
 *   Z ring (W, n_slots) fp32 at zring + hf * W * n_slots (MorphKV only)
 *
 * Work decomposition. A "unit" is one KV head plus up to MK_ATTN_GMAX of the query heads that
 * read it (a group larger than that is split into several units). One block handles
 * (unit, split, token): it reads the K and V rows of its slot range ONCE for all of the unit's
 * query heads (GQA-aware), keeps an online softmax per head, and writes an unnormalised partial
 * output plus (max, sum). With one split the block normalises and writes the output directly;
 * otherwise a combine kernel merges the splits (flash-decoding). Slots masked out: pos < 0 (free)
 * or pos > qpos (causal, for prefill where a query's own later tokens are already in the cache).
 *
 * Fused MorphKV row: when tok_zrow[t] >= 0 the first unit of each KV head also writes the scaled
 * group-summed logit qsum.k/sqrt(d) of every slot of its range into ring row tok_zrow[t]
 * (-inf for masked slots), reading K only once for attention and score. */
#ifndef MK_CUDA_ATTENTION_CUH
#define MK_CUDA_ATTENTION_CUH

#include "cuda/common.cuh"

#define MK_ATTN_GMAX 8
#define MK_ATTN_CHUNK 128 /* slots per inner iteration; split lengths are multiples of it */

typedef struct mk_cuda_attn_unit {
  int kv;                 /* local KV head */
  int nq;                 /* query heads in this unit (1..MK_ATTN_GMAX) */
  int zwrite;             /* 1: this unit writes the MorphKV ring row */
  int q[MK_ATTN_GMAX];    /* local query head indices */
} mk_cuda_attn_unit_t;

typedef struct mk_cuda_attn_args {
  const float *q;            /* (n_tok, n_q, d) post-RoPE */
  const float *qsum;         /* (n_tok, n_kv, d) or NULL (then no ring rows are written) */
  float *out;                /* (n_tok, n_q, d) */
  const __half *k, *v;       /* cache bases (see layout above) */
  const int32_t *pos;        /* cache base */
  float *zring;              /* cache base, or NULL */
  const int *tok_head0;      /* (n_tok) flat head index of (seq, layer, head 0) */
  const int *tok_qpos;       /* (n_tok) absolute position of the query */
  const int *tok_nscan;      /* (n_tok) slots [0, nscan) are scanned (the high-water mark) */
  const int *tok_zrow;       /* (n_tok) ring row to write or -1; NULL: none */
  const mk_cuda_attn_unit_t *units; /* (n_units) */
  int n_units, n_tok, n_q, n_kv, d, n_slots, window;
  float scale;               /* 1/sqrt(d) */
  int n_split, split_len;    /* split_len: multiple of MK_ATTN_CHUNK */
  float *part_o;             /* (n_tok, n_split, n_q, d) when n_split > 1 */
  float *part_ml;            /* (n_tok, n_split, n_q, 2) when n_split > 1 */
} mk_cuda_attn_args_t;

/* true if head_dim d has a compiled attention kernel (64, 128, 256). */
bool mk_cuda_attn_supported_dim(int d);

/* Chooses n_split and split_len for max_nscan slots so that about target_blocks blocks run. */
void mk_cuda_attn_plan(int n_units, int n_tok, int max_nscan, int target_blocks, int *n_split,
                       int *split_len);

/* Floats of part_o and part_ml for a plan (0 when n_split == 1). */
size_t mk_cuda_attn_part_floats(int n_tok, int n_split, int n_q, int d);

/* K/V of the new tokens into their slots, pos[slot] = qpos:
 * k, v (n_tok, n_kv, d) fp32 -> fp16 (round to nearest even); slots (n_tok, n_kv) device. */
void mk_cuda_kv_write(__half *kc, __half *vc, int32_t *posc, const float *k, const float *v,
                      const int *slots, const int *tok_head0, const int *tok_qpos, int n_tok,
                      int n_kv, int d, int n_slots, cudaStream_t stream);

void mk_cuda_attention(const mk_cuda_attn_args_t *a, cudaStream_t stream);

#endif
