/* Tensor-parallel sharding plan: a pure function of (model dims, T, rank).
 *
 * Query heads are split into T contiguous, near-equal ranges. A rank holds every KV head that one
 * of its query heads reads; when a range boundary cuts a KV group, that KV head is REPLICATED on
 * each rank that owns some of its query heads, and those replicas must make identical eviction
 * decisions (see kvcache/kvcache.h and parallel/score_sync). When T divides the KV-head count the
 * ranges fall on group boundaries and nothing is replicated.
 * MLP rows (gate/up outputs = down inputs) and vocabulary rows are split in contiguous ranges
 * aligned to `align` elements (the quantization block of the weights), as evenly as possible.
 * With T = 1 the plan owns everything. */
#ifndef MK_PLAN_H
#define MK_PLAN_H

#include <stdbool.h>
#include <stdint.h>

#include "src/mk_error.h"

typedef struct mk_plan_dims {
  int n_head, n_kv_head, head_dim, n_ff, n_vocab, n_embd;
  int ff_align;    /* column alignment required to slice ffn_down rows (block elems), >= 1 */
  int vocab_align; /* >= 1 */
} mk_plan_dims_t;

typedef struct mk_plan {
  int tp, rank;
  int q_begin, q_end;   /* query heads [q_begin, q_end) */
  int kv_begin, kv_end; /* KV heads held [kv_begin, kv_end) */
  int ff_begin, ff_end; /* MLP hidden units [ff_begin, ff_end) */
  int vocab_begin, vocab_end;
  bool any_replicated;  /* some KV head (of any rank) is held by more than one rank */
  /* for held head kv_begin + i: number of ranks holding it (1 = not replicated) */
  int kv_replicas[64];
} mk_plan_t;

/* 0 on success; -1 with a message that says why T cannot work and which T would. */
int mk_plan_make(const mk_plan_dims_t *d, int tp, int rank, mk_plan_t *out, mk_error_t *err);

#endif
