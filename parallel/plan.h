/* Tensor-parallel sharding plan: a pure function of (model dims, T, rank).
 *
 * Query heads are split into T contiguous, near-equal ranges (the first n_head % T ranks get one
 * more). A rank holds every KV head that one of its query heads reads; when a range boundary cuts a
 * KV group, that KV head is REPLICATED on each rank that owns some of its query heads, and those
 * replicas must make identical eviction decisions (see kvcache/kvcache.h and
 * docs/morphkv.md §7). When T divides the KV-head count the ranges fall on group boundaries
 * and nothing is replicated.
 * MLP hidden units (gate/up rows = down columns) are split in contiguous ranges of whole
 * `ff_align` blocks (the quantization block of ffn_down, whose rows are sliced by column), as
 * evenly as possible; n_ff must be a multiple of ff_align. Vocabulary rows are split the same way
 * in `vocab_align` blocks; the last block may be partial (a row slice needs no alignment, the
 * blocks only keep tiles whole).
 * Every rank gets at least one query head, one ff block and one vocab block; a T that would leave a
 * rank empty is refused, naming the largest T that works (every T from 1 to that one works).
 * With T = 1 the plan owns everything. */
#ifndef MK_PLAN_H
#define MK_PLAN_H

#include <stdbool.h>
#include <stdint.h>

#include "src/mk_error.h"

/* Most KV heads one rank can hold (kv_replicas is a fixed array so the plan is a plain value). */
#define MK_PLAN_MAX_KV_HELD 256

typedef struct mk_plan_dims {
  int n_head, n_kv_head, head_dim, n_ff, n_vocab, n_embd;
  int ff_align;    /* the unit n_ff is split in: ffn_down's column chunk (src/model.c), >= 1 */
  int vocab_align; /* >= 1 */
} mk_plan_dims_t;

typedef struct mk_plan {
  int tp, rank;
  int q_begin, q_end;   /* query heads [q_begin, q_end) */
  int kv_begin, kv_end; /* KV heads held [kv_begin, kv_end) */
  int ff_begin, ff_end; /* MLP hidden units [ff_begin, ff_end) */
  int vocab_begin, vocab_end;
  bool any_replicated; /* some KV head (of any rank) is held by more than one rank */
  /* for held head kv_begin + i: number of ranks holding it (1 = not replicated) */
  int kv_replicas[MK_PLAN_MAX_KV_HELD];
  /* for held head kv_begin + i: the lowest rank holding it (the replica group's "owner") */
  int kv_first_rank[MK_PLAN_MAX_KV_HELD];
} mk_plan_t;

/* 0 on success; -1 with a message that says why T cannot work and which T would. */
int mk_plan_make(const mk_plan_dims_t *d, int tp, int rank, mk_plan_t *out, mk_error_t *err);

/* The largest T for which mk_plan_make succeeds (every T in 1..max works); -1 with a message
 * when the dims themselves are invalid. */
int mk_plan_max_tp(const mk_plan_dims_t *d, mk_error_t *err);

/* What every rank needs to know about all the others, the same on every rank: each rank's vocabulary
 * slice (the LM-head all-gather pads every slice to the widest) and the KV heads held by more than
 * one rank (whose query sums are all-reduced before scoring). */
typedef struct mk_plan_world {
  int tp;
  int vocab_slice_max; /* widest vocab_end - vocab_begin over the ranks */
  int n_rep;           /* number of replicated KV heads */
} mk_plan_world_t;

/* Fills, for T ranks: vocab_begin[r], vocab_len[r] (arrays of tp, may be NULL) and rep_heads[0..n_rep)
 * (array of d->n_kv_head, may be NULL), the replicated KV heads in ascending order. Pure: no
 * allocation. 0, or -1 with mk_plan_make's message when T cannot work. */
int mk_plan_world(const mk_plan_dims_t *d, int tp, int *vocab_begin, int *vocab_len, int *rep_heads,
                  mk_plan_world_t *out, mk_error_t *err);

/* ---- The PP x TP grid ----
 * world = P x T ranks. Rank placement is stage-major: stage s holds world ranks [s*T, (s+1)*T),
 * so a TP group is T consecutive ranks (node-local under the default `mpirun --map-by core`
 * placement, see launch/mpi), and only stage-to-stage traffic crosses nodes. tp_rank = rank % T
 * is the rank's index in its TP group, and mk_plan_make(dims, T, tp_rank) its head/ff/vocab slice.
 * Layers are balanced by LAYER COUNT (contiguous, near-equal: the first n_layer % P stages get one
 * more): the transformer blocks of one model have equal weight bytes, so a count split is also a
 * byte split up to the embeddings (first stage) and output norm + LM head (last stage).
 * Activations (n, n_embd) go from rank r of stage s to rank r + T (the same tp_rank of stage s+1):
 * after a TP layer every rank of a group holds the whole activation, so each TP rank has its own
 * point-to-point lane. Refused: P < 1, T < 1, P > n_layer (a stage with no layer), a world that P
 * does not divide (the message lists the P that divide it). Pure: no MPI, no allocation. */
typedef struct mk_grid {
  int pp, tp, world, rank;
  int stage, tp_rank;       /* rank / T, rank % T */
  int layer_begin, layer_end; /* this stage's blocks [layer_begin, layer_end) */
  bool first, last;         /* first stage: token embeddings; last: output norm + LM head */
  int prev, next;           /* world rank this one receives from / sends to; -1 at the ends */
} mk_grid_t;

/* T = world / P, or -1 with a message naming the layouts that work (P dividing world, P <= n_layer). */
int mk_grid_tp(int n_layer, int world, int pp, mk_error_t *err);
/* The grid position of world rank `rank` of P x T ranks. 0, or -1 with the reason. */
int mk_grid_make(int n_layer, int pp, int tp, int rank, mk_grid_t *out, mk_error_t *err);

#endif
