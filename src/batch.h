/* Continuous batching over the engine's multi-sequence forward pass (mk_engine_step_items).
 *
 * Up to max_seqs sequences run together. Each mk_batch_step is one forward pass:
 *   1. admit: while a cache slot is free and the head of the queue fits the KV budget, it takes
 *      the lowest free slot (FIFO: a request that does not fit yet blocks those behind it, so the
 *      schedule is the same on every rank and in every run);
 *   2. every decoding sequence feeds its last token; prefilling sequences feed prompt chunks:
 *      the first (oldest) prefilling sequence min(prefill_chunk, what is left), the others their
 *      whole rest only if it fits in what is left of the prefill_chunk tokens of this pass. So a
 *      pass carries at most max_seqs decode tokens + prefill_chunk prompt tokens, and a prompt of
 *      at most prefill_chunk tokens is always fed in one piece (one prefill, as a run alone);
 *   3. the sequences whose prompt is complete sample (own sampler, seed, history, stop strings)
 *      and finish on end-of-generation, a stop string or max_new_tokens, exactly as `morphkv
 *      generate` does alone; a finished sequence frees its slot and budget for the next request.
 * The schedule depends only on the requests and the parameters, never on time, so every rank of
 * a tensor-parallel run takes the same steps.
 *
 * The KV budget (kv_memory bytes, all ranks together) counts K/V bytes and policy state:
 *   - a bounded policy (MorphKV, StreamingLLM, H2O, SnapKV) sequence costs its constant slots:
 *     n_slots x n_layer x n_kv_head x 2 x head_dim x element size, plus its policy state. n_slots
 *     is what the cache allocates per head: C+1 for MorphKV with ea = 1 when every prompt fits one
 *     chunk, C + prefill_chunk when a longer prompt is fed in chunks;
 *   - a full-cache sequence reserves prompt + max_new_tokens slots (what it can use), at admission.
 * Chunked prefill: under the full cache the result equals an unchunked prefill; a bounded policy
 * evicts after each chunk, so a prompt longer than a chunk is compressed chunk by chunk.
 * Library code: never prints or exits. */
#ifndef MK_BATCH_H
#define MK_BATCH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kvcache/kvcache.h"
#include "src/engine.h"
#include "src/mk_error.h"
#include "src/sampler.h"

typedef struct mk_batch_params {
  int max_seqs;      /* B: sequences decoding together (>= 1) */
  int prefill_chunk; /* prompt tokens per forward pass (>= 1) */
  size_t kv_memory;  /* KV budget in bytes over all ranks; 0 = none (max_seqs alone limits) */
  bool ignore_eos;
  mk_kv_config_t kv; /* the same policy and settings for every sequence */
  /* over every request of the run (slot sizing): the longest prompt, the longest and the shortest
   * prompt + max_new_tokens */
  int max_prompt, max_total, min_total;
} mk_batch_params_t;

typedef struct mk_batch_request {
  uint64_t id; /* the caller's (e.g. the input line's index) */
  const int32_t *prompt;
  int n_prompt;
  mk_sampler_params_t sampling;
  int max_new_tokens;
  char *const *stop;
  int n_stop;
} mk_batch_request_t;

typedef struct mk_batch_result {
  uint64_t id;
  int prompt_tokens, generated_tokens;
  const int32_t *output_ids; /* (generated_tokens) */
  const char *text;          /* the generated text (cut before a stop string) */
  const char *stop_reason;   /* eos, stop_string, max_new_tokens */
  double queue_s, prefill_s, decode_s;
  size_t kv_bytes; /* what the budget counted for this sequence */
} mk_batch_result_t;

typedef void (*mk_batch_done_fn)(void *ctx, const mk_batch_result_t *r);

typedef struct mk_batch_progress {
  int done, running, queued;
  long long generated;   /* tokens sampled so far (all sequences) */
  long long steps;       /* forward passes */
  double elapsed_s;      /* since the first step */
  size_t kv_reserved;    /* bytes the budget counts for the running sequences */
  size_t kv_budget;      /* 0 = none */
  size_t kv_live;        /* K/V bytes in used slots now, this rank */
  int max_running;       /* most sequences running at once so far */
} mk_batch_progress_t;

typedef struct mk_batch mk_batch_t;

/* Starts the engine's run (mk_engine_begin) for min(max_seqs, sequences the budget can hold at
 * once) sequences. Fails, naming the numbers, when the budget holds not even one sequence. */
int mk_batch_new(mk_batch_t **out, mk_engine_t *e, const mk_batch_params_t *p, mk_error_t *err);
void mk_batch_free(mk_batch_t *b);

/* Bytes the budget counts for one sequence (see above). */
size_t mk_batch_seq_bytes(const mk_batch_t *b, int n_prompt, int max_new_tokens);
/* Sequences the run's cache holds (the slots of the engine's run). */
int mk_batch_slots(const mk_batch_t *b);

/* Queues a request (copied). -1 with err when it can never run: it alone exceeds the budget or
 * the slot sizing given to mk_batch_new; nothing is queued then. */
int mk_batch_submit(mk_batch_t *b, const mk_batch_request_t *r, mk_error_t *err);

/* One forward pass (see above); done is called for every sequence that finished in it. Returns 1
 * after a pass, 0 when there is nothing left to do, -1 with err on a failure. */
int mk_batch_step(mk_batch_t *b, mk_batch_done_fn done, void *ctx, mk_error_t *err);

void mk_batch_get_progress(const mk_batch_t *b, mk_batch_progress_t *p);

/* Every forward pass so far: its seconds (the engine call alone), decode tokens and prompt tokens
 * (for inter-token-time measurements, docs/benchmarks.md). */
typedef struct mk_batch_pass {
  double s;
  int decode, prefill;
} mk_batch_pass_t;
const mk_batch_pass_t *mk_batch_passes(const mk_batch_t *b, long long *n);

#endif
