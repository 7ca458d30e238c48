/* The engine: a loaded model (weights borrowed from the file mapping, sliced for this rank),
 * its tokenizer, a backend, and the KV cache of the current run.
 *
 * Every rank of a tensor-parallel run calls the same functions with the same arguments in the
 * same order (rank 0 broadcasts the request first; see parallel/). Each sequence's positions
 * count the tokens it has seen; the first mk_engine_step of a sequence is its prefill.
 *
 * The process context is an opaque handle here: the engine reads only the rank, the world size and
 * the forward pass's communicator from it (parallel/ctx.h, which needs mpi.h), so a single-process
 * user passes NULL and needs neither MPI's headers nor parallel/ctx.h. */
#ifndef MK_ENGINE_H
#define MK_ENGINE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kvcache/kvcache.h"
#include "parallel/comm_kind.h"
#include "src/backend.h"
#include "src/gguf.h"
#include "src/model.h"
#include "src/sampler.h"
#include "src/tokenizer.h"

/* Reduction order of the row-parallel layers (README "Numerics"). */
typedef enum mk_numerics {
  MK_NUMERICS_FAST = 0,          /* one partial per rank, all-reduced: bits depend on T (the default,
                                    --deterministic off) */
  MK_NUMERICS_DETERMINISTIC = 1, /* fixed column chunks added in chunk order: the same bits for every
                                    rank count and batch (--deterministic on; costs ~9% decode and
                                    ~25% prefill on one process, docs/benchmarks.md) */
} mk_numerics_t;

typedef struct mk_engine_params {
  const char *model_path;
  mk_backend_params_t backend;
  int tp; /* expected tensor-parallel degree (--tp), 0 = take the world size / pp */
  int pp; /* pipeline stages (--pp; 0 or 1: none): T = world / pp ranks per stage, CPU backend */
  mk_numerics_t numerics;
  mk_comm_kind_t comm; /* --comm: which communicator carries the collectives (parallel/ctx.h) */
} mk_engine_params_t;

typedef struct mk_engine mk_engine_t;
typedef struct mk_ctx mk_ctx_t; /* parallel/ctx.h */

/* ctx: the process context (rank/world/comm); NULL means a world of one. Collective over ctx:
 * every rank returns the same status (on failure err is "rank R: <message>" of the first failing
 * rank, on every rank, so each can report it and exit without aborting the others). */
int mk_engine_open(mk_engine_t **out, const mk_engine_params_t *p, mk_ctx_t *ctx, mk_error_t *err);
void mk_engine_close(mk_engine_t *e);

const mk_model_config_t *mk_engine_config(const mk_engine_t *e);
const mk_tokenizer_t *mk_engine_tokenizer(const mk_engine_t *e);
const mk_gguf_t *mk_engine_gguf(const mk_engine_t *e);
int mk_engine_n_vocab(const mk_engine_t *e);

/* Starts a run: allocates the KV cache for n_seq sequences under policy kv, sized for prompts of
 * up to max_prompt tokens and max_total tokens per sequence. Frees the previous run's cache. */
int mk_engine_begin(mk_engine_t *e, const mk_kv_config_t *kv, int n_seq, int max_prompt,
                    int max_total, mk_error_t *err);
void mk_engine_reset_seq(mk_engine_t *e, int seq);
int mk_engine_n_past(const mk_engine_t *e, int seq);

/* Feeds n tokens of sequence seq. The first call of a sequence is its prefill (any n); later
 * calls are decoded one token at a time internally. logits: (n_vocab) of the last token, or
 * (n, n_vocab) if all_logits; may be NULL. Full-vocabulary logits on every rank. */
int mk_engine_step(mk_engine_t *e, int seq, const int32_t *ids, int n, bool all_logits,
                   float *logits, mk_error_t *err);

/* As mk_engine_step without logits, then the next token of seq drawn by smp from the last fed
 * token's logits (history: prompt + generated so far, for the repetition penalty). The full
 * vocabulary is not gathered: greedy exchanges one (max, id) per rank, top-k settings each rank's
 * top-k candidates after the penalty (src/sampler.h), so every rank gets the token
 * mk_sampler_sample would pick from the full logits (bit for bit: same samplers, same seeds). */
int mk_engine_step_sample(mk_engine_t *e, int seq, const int32_t *ids, int n, mk_sampler_t *smp,
                          const int32_t *history, int n_history, int32_t *next, mk_error_t *err);

/* One decode step for several sequences at once: ids[i] is the next token of seq seqs[i].
 * logits: (n, n_vocab). */
int mk_engine_decode_batch(mk_engine_t *e, const int *seqs, const int32_t *ids, int n,
                           float *logits, mk_error_t *err);

/* Continuous batching (src/batch.h): one forward pass over several sequences, each fed n tokens.
 * A sequence's first item is its prefill (the policy's prefill rules); a later item of n > 1
 * tokens (a later chunk of a chunked prefill) is one span after which the policy evicts once, so
 * the cache must hold the policy's budget + n slots (full cache: prompt + new tokens, the same
 * result as feeding them one by one). The same sequence may appear once. logits: one row of
 * n_vocab per item with want_logits (its last token), in item order; may be NULL when none wants. */
typedef struct mk_engine_item {
  int seq;
  const int32_t *ids;
  int n;
  bool want_logits;
} mk_engine_item_t;
int mk_engine_step_items(mk_engine_t *e, const mk_engine_item_t *items, int n_items, float *logits,
                         mk_error_t *err);

/* Pipelined micro-batches over the stages (--pp P; src/engine.c has the schedule). Every rank
 * calls it with the same items each tick. The items (possibly none) enter the first stage now;
 * the micro-batch that entered mk_engine_pipe_depth(e) - 1 ticks ago leaves the last stage, and
 * its logits rows (one per item with want_logits, in item order) are written to logits (on every
 * rank with logits_everywhere), their count to *n_logits. A sequence may be in several micro-batches in flight only with
 * items that want no logits (prompt chunks): its positions advance when an item enters. Depth 1
 * (no stages) is mk_engine_step_items. Ticks with no items drain the pipeline. */
int mk_engine_pipe_depth(const mk_engine_t *e);
int mk_engine_pipe_tick(mk_engine_t *e, const mk_engine_item_t *items, int n_items, float *logits,
                        bool logits_everywhere, int *n_logits, mk_error_t *err);
/* With logits_everywhere false the rows are written on the ranks of the last stage only (every
 * rank with no stages): mk_engine_pipe_has_logits says whether this rank has them. Such a caller
 * picks the tokens there and hands them to every rank with mk_engine_pipe_share_tokens
 * (collective over the world: n ids broadcast from the last stage; nothing without stages). */
bool mk_engine_pipe_has_logits(const mk_engine_t *e);
int mk_engine_pipe_share_tokens(mk_engine_t *e, int32_t *ids, int n, mk_error_t *err);

typedef struct mk_engine_stats {
  size_t weight_bytes;       /* weights this rank reads (its slices) */
  size_t kv_live_bytes;      /* K/V bytes in used slots now (this rank) */
  size_t kv_peak_bytes;      /* peak of the above over the run */
  size_t kv_alloc_bytes;     /* reserved for K/V */
  size_t policy_state_bytes; /* policy scoring state (e.g. MorphKV logit ring) */
  uint64_t comm_model_bytes, comm_score_bytes;
  uint64_t comm_sample_bytes; /* LM-head exchange: full-logit gathers and sampler candidates */
  const char *comm;           /* the communicator's name ("mpi", "mpi-staged", "nccl"; "none") */
  uint64_t comm_p2p_bytes;    /* stage-to-stage activations this rank sent (pipeline) */
  int pp, stage, layer_begin, layer_end; /* the pipeline grid (pp 1: every layer here) */
  int kv_slots;              /* slots per head */
  double busy_s;             /* seconds this rank computed in forward passes (its stage's work) */
  double busy_cpu_s;         /* CPU seconds of this process in those spans (all its threads): the
                                same work measured without the time other processes took */
  double stage_wait_s;       /* seconds it waited on other stages: stage-to-stage messages and the
                                last stage's broadcasts (pipeline bubble = wait / (busy + wait)) */
} mk_engine_stats_t;
void mk_engine_get_stats(const mk_engine_t *e, mk_engine_stats_t *s);
/* The cache, for tests and tools (NULL before mk_engine_begin). */
mk_kv_cache_t *mk_engine_cache(mk_engine_t *e);

#endif
