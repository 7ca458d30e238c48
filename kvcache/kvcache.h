/* KV-cache storage (slots) and the cache-policy interface.
 *
 * Storage. Per sequence, per layer, per stored KV head ("head" below): n_slots slots of
 * K[head_dim], V[head_dim] (f32 or f16) and an absolute position pos[slot] (-1 = free), all
 * allocated once by mk_kv_cache_init. Keys are stored after RoPE, so a kept token keeps its
 * position; attention is order-free over slots, and an incoming token may take any free slot.
 * Slot choice is deterministic (lowest free index), so replicas of a head on several ranks that
 * see the same sequence of acquire/release calls hold identical layouts.
 *
 * Policy. A policy (full, morphkv, streaming, h2o, snapkv) is a table of functions plus state
 * per head. The engine drives it in this order, per layer and per head:
 *   for each new token t (prefill: all prompt tokens; decode: one):
 *       slot = mk_kv_acquire(head, t); write K,V                       (#used <= n_slots)
 *   for each new token t: attend over the head's used slots with pos <= t, then
 *       ops->observe(head, row_t)          row_t = this query's scores over all slots
 *   ops->evict(head, next_pos, is_prefill)   frees slots (mk_kv_release) as the policy decides
 * So a decode step is "write, attend, observe, evict": the token that arrives next takes the
 * victim's slot. Eviction never moves data. kvcache/driver.c is that order, written once for
 * every backend (the engine and the tests call it).
 *
 * What a row carries (mk_kv_row_t) is the group's view of one query: for each slot, the sum over
 * the query heads that read this KV head of the scaled logits q_h.k/sqrt(d), and of the softmax
 * probabilities. Under tensor parallelism, a head replicated on several ranks gets the row of the
 * whole group (the engine all-reduces the partial query sum; logits are linear in q), so every
 * replica makes the same decision. */
#ifndef MK_KVCACHE_H
#define MK_KVCACHE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "src/mk_error.h"

typedef enum mk_kv_dtype { MK_KV_F32 = 0, MK_KV_F16 = 1 } mk_kv_dtype_t;

typedef enum mk_kv_policy_kind {
  MK_KV_FULL = 0,
  MK_KV_MORPHKV,
  MK_KV_STREAMING,
  MK_KV_H2O,
  MK_KV_SNAPKV,
  MK_KV_POLICY_COUNT
} mk_kv_policy_kind_t;

typedef enum mk_kv_fusion { MK_KV_FUSION_SUM = 0, MK_KV_FUSION_MAX } mk_kv_fusion_t;
typedef enum mk_kv_gqa { MK_KV_GQA_LOGIT_SUM = 0, MK_KV_GQA_PROB_MAX } mk_kv_gqa_t;
typedef enum mk_kv_h2o_mode { MK_KV_H2O_GROUP = 0, MK_KV_H2O_PER_HEAD } mk_kv_h2o_mode_t;

/* Settings shared by all policies (flags --kv-*, config keys kv_*). */
typedef struct mk_kv_config {
  mk_kv_policy_kind_t policy;
  int window;          /* W: recent window (morphkv, h2o recent = W+1, snapkv observation window) */
  int capacity;        /* C: budget; after eviction the cache holds C (C+1 while attending) */
  mk_kv_fusion_t fusion;
  mk_kv_gqa_t gqa;
  int sinks;           /* S sink tokens, always kept (streaming, morphkv); MK_KV_SINKS_DEFAULT:
                          the policy's own default, mk_kv_sinks() */
  float evict_after;   /* ea >= 1: evict when used >= ceil((C+1)*ea) */
  mk_kv_dtype_t dtype;
  mk_kv_h2o_mode_t h2o_mode;
  int snapkv_pool;     /* snapkv pooling kernel (odd), default 5 */
  bool snapkv_maxpool; /* default: avg pool */
} mk_kv_config_t;

/* sinks = -1: each policy's default, StreamingLLM's 4 sinks and MorphKV's 0 (the paper's). */
#define MK_KV_SINKS_DEFAULT (-1)
#define MK_KV_STREAMING_SINKS 4
static inline int mk_kv_sinks(const mk_kv_config_t *cfg) {
  if (cfg->sinks >= 0) return cfg->sinks;
  return cfg->policy == MK_KV_STREAMING ? MK_KV_STREAMING_SINKS : 0;
}

void mk_kv_config_default(mk_kv_config_t *cfg); /* full, W=32, C=2048, sum, logit_sum, S=4, ea=1, f32 */
const char *mk_kv_policy_name(mk_kv_policy_kind_t k);
int mk_kv_policy_parse(const char *s, mk_kv_policy_kind_t *out); /* 0 ok, -1 unknown */

/* One stored KV head of one layer of one sequence. */
typedef struct mk_kv_head {
  int n_slots, head_dim;
  int n_used;
  int hi;         /* high-water mark: every used slot is < hi (attention loops stop here) */
  int free_hint;  /* every slot below it is used: acquire scans from here (O(1) for a growing cache) */
  int32_t *pos;   /* (n_slots) absolute position, -1 = free */
  void *k, *v;    /* (n_slots, head_dim) of dtype */
  void *state;    /* policy state, policy-owned layout, inside the cache's state arena */
  int layer, kv_head, seq; /* for messages; kv_head is the model's (global) index */
  int group;      /* query heads reading this head (sizes per-head policy state, e.g. prob_max) */
} mk_kv_head_t;

/* A query's scores over one head's slots (index = slot). Entries of free slots and of slots with
 * pos > qpos are -INFINITY in logit_sum and 0 in prob_sum. */
typedef struct mk_kv_row {
  int64_t qpos;
  const float *logit_sum; /* (n_slots) sum over the group's query heads of q_h.k/sqrt(d) */
  const float *prob_sum;  /* (n_slots) sum over the group's query heads of softmax probs */
  /* Per query head (only heads local to this rank; NULL when the policy did not ask). */
  int n_q;
  const float *const *logits; /* n_q x (n_slots) */
  const float *const *probs;  /* n_q x (n_slots) */
} mk_kv_row_t;

/* What a policy asks the engine to compute for its rows. */
enum {
  MK_KV_NEED_LOGIT_SUM = 1u << 0,
  MK_KV_NEED_PROB_SUM = 1u << 1,
  MK_KV_NEED_PER_HEAD = 1u << 2, /* logits/probs per query head */
};

typedef struct mk_kv_policy_ops {
  const char *name;
  /* Rejects impossible settings (e.g. capacity <= window) with a message. */
  int (*validate)(const mk_kv_config_t *cfg, mk_error_t *err);
  /* Slots per head for a run with prompts up to max_prompt tokens and max_total tokens in all. */
  int (*slots_needed)(const mk_kv_config_t *cfg, int max_prompt, int max_total);
  /* Bytes of policy state per head (the logit ring is not free: it is counted in the stats). */
  size_t (*state_bytes)(const mk_kv_config_t *cfg, int n_slots, int head_dim, int group);
  /* Rows the policy wants: MK_KV_NEED_* bits. */
  unsigned (*needs)(const mk_kv_config_t *cfg);
  /* Query positions whose prefill rows the policy reads: rows with qpos >= prompt_len - n are
   * passed to observe (decode rows always are). Lets the engine skip work. INT32_MAX = all. */
  int (*prefill_rows)(const mk_kv_config_t *cfg);
  /* New sequence: clear state. */
  void (*reset)(const mk_kv_config_t *cfg, mk_kv_head_t *h);
  void (*observe)(const mk_kv_config_t *cfg, mk_kv_head_t *h, const mk_kv_row_t *row);
  /* After the rows of a prefill (prefill=true, next_pos = prompt length) or of one decode step
   * (next_pos = t+1): release slots so that the next token fits. Returns -1 with err only on an
   * internal inconsistency. */
  int (*evict)(const mk_kv_config_t *cfg, mk_kv_head_t *h, int64_t next_pos, bool prefill,
               mk_error_t *err);
  /* Optional (MorphKV): how many slots evict(next_pos) will release, from counts alone. Lets
   * a backend that scores on the device (kvcache/driver.c) run the policy's trigger. */
  int (*losers)(const mk_kv_config_t *cfg, const mk_kv_head_t *h, int64_t next_pos);
} mk_kv_policy_ops_t;

const mk_kv_policy_ops_t *mk_kv_policy_get(mk_kv_policy_kind_t k);

/* The cache of one run: n_seq sequences x n_layer layers x n_heads stored heads. */
typedef struct mk_kv_cache {
  mk_kv_config_t cfg;
  const mk_kv_policy_ops_t *ops;
  int n_seq, n_layer, n_heads, head_dim, n_slots;
  int group;            /* query heads per stored head (for state sizing) */
  mk_kv_head_t *heads;  /* (n_seq, n_layer, n_heads) */
  void *kv_arena;       /* K and V of every head */
  void *state_arena;    /* policy state of every head */
  int32_t *pos_arena;
  size_t kv_bytes_alloc, state_bytes_alloc;
  size_t peak_used_slots; /* max over the run of the total used slots across heads */
  struct mk_kv_driver_scratch *drv; /* kvcache/driver.c: per-call buffers, grown, freed with the cache */
  /* Unique per mk_kv_cache_init in the process (never 0). A backend that mirrors the cache (CUDA)
   * keys its mirror on it: a cache freed and initialised again at the same address, even with
   * arenas at the same addresses, is another cache. */
  uint64_t serial;
  /* Test hook: another slot choice for the driver (NULL: mk_kv_acquire, lowest free). The
   * policy tests pick random free slots to show that kept sets do not depend on slot order. */
  int (*acquire)(mk_kv_head_t *h, int64_t pos, void *ctx);
  void *acquire_ctx;
} mk_kv_cache_t;

typedef struct mk_kv_cache_params {
  int n_seq, n_layer, n_heads, head_dim, group;
  int max_prompt, max_total; /* for slots_needed */
  int first_kv_head;          /* global index of stored head 0 (tensor parallel); 0 otherwise */
} mk_kv_cache_params_t;

int mk_kv_cache_init(mk_kv_cache_t *c, const mk_kv_config_t *cfg, const mk_kv_cache_params_t *p,
                     mk_error_t *err);
void mk_kv_cache_free(mk_kv_cache_t *c);
void mk_kv_cache_reset_seq(mk_kv_cache_t *c, int seq); /* all heads of seq empty, policy reset */

static inline mk_kv_head_t *mk_kv_cache_head(mk_kv_cache_t *c, int seq, int layer, int head) {
  return &c->heads[((size_t)seq * c->n_layer + layer) * c->n_heads + head];
}

/* Lowest free slot, marked with pos; -1 if none is free. */
int mk_kv_acquire(mk_kv_head_t *h, int64_t pos);
void mk_kv_release(mk_kv_head_t *h, int slot);
size_t mk_kv_elem_bytes(mk_kv_dtype_t dt);
/* Stores k and v (fp32 in) into slot, converting to the cache dtype. */
void mk_kv_write(mk_kv_head_t *h, mk_kv_dtype_t dt, int slot, const float *k, const float *v);

/* Memory accounting. live: bytes of K,V in used slots now; alloc: bytes reserved. */
size_t mk_kv_cache_live_bytes(const mk_kv_cache_t *c);
size_t mk_kv_cache_peak_bytes(const mk_kv_cache_t *c);
void mk_kv_cache_note_peak(mk_kv_cache_t *c); /* call after each step's evictions */

#endif
