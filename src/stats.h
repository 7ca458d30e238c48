/* Figures of one `morphkv generate` run: timings on rank 0, memory per rank, and the KV bytes
 * sampled along the output (kv_bytes_by_step), as a human summary and as JSON (--stats-json).
 * The JSON keys are a contract with the benchmarks and checks; add keys, never rename them. */
#ifndef MK_STATS_H
#define MK_STATS_H

#include <stdint.h>
#include <stdio.h>

#include <jansson.h>

#include "src/engine.h"
#include "src/mk_error.h"

/* One rank's memory and traffic (a fixed layout of u64 so ranks can all-gather it). */
typedef struct mk_rank_stats {
  uint64_t weight_bytes, kv_live_bytes, kv_peak_bytes, kv_alloc_bytes, policy_state_bytes;
  uint64_t comm_model_bytes, comm_score_bytes, kv_slots;
  uint64_t comm_sample_bytes; /* LM-head exchange: full-logit gathers or sampler candidates */
  uint64_t comm_p2p_bytes;    /* stage-to-stage activations sent (pipeline) */
  uint64_t stage;             /* pipeline stage of this rank */
  uint64_t busy_us;           /* microseconds computing forward passes (this stage's work) */
  uint64_t stage_wait_us;     /* microseconds waiting on other stages (messages, the last stage's
                                 broadcasts): the pipeline bubble is wait / (busy + wait) */
  uint64_t busy_cpu_us;       /* CPU microseconds of the process while computing (busy_us's spans) */
} mk_rank_stats_t;

/* This rank's figures from the engine's (every field above). */
mk_rank_stats_t mk_rank_stats_of(const mk_engine_stats_t *es);
/* The share of its engine time a rank waited on other stages: wait / (busy + wait), 0 when idle. */
double mk_rank_idle_frac(const mk_rank_stats_t *x);
/* One rank's JSON object (new reference): the fields above and idle_frac = wait / (busy + wait). */
json_t *mk_rank_stats_json(const mk_rank_stats_t *x);

typedef struct mk_run_stats {
  /* what ran */
  const char *model_path, *model_name, *arch, *backend, *simd, *comm;
  const char *kv_policy, *kv_dtype;
  int kv_window, kv_capacity;
  int threads, world, n_layer, n_kv_head, head_dim;
  /* timings (rank 0) */
  double load_s, prefill_s, decode_s, sample_s, wall_s;
  int prompt_tokens, generated_tokens, decode_steps;
  const char *stop_reason; /* "eos", "stop_string", "max_new_tokens" */
  /* per rank (world entries), and their sums */
  mk_rank_stats_t *ranks;
  mk_rank_stats_t total;
  /* [n_tokens, kv live bytes summed over ranks] samples */
  int64_t (*by_step)[2];
  int n_by_step, cap_by_step;
  /* the output */
  const int32_t *output_ids;
  const char *output_text;
} mk_run_stats_t;

void mk_run_stats_init(mk_run_stats_t *s);
void mk_run_stats_free(mk_run_stats_t *s); /* frees ranks and by_step only */
/* Appends [n_tokens, live_bytes] unless n_tokens was the last sample. */
int mk_run_stats_sample(mk_run_stats_t *s, int64_t n_tokens, int64_t live_bytes, mk_error_t *err);
/* Fills s->total from s->ranks. */
void mk_run_stats_sum(mk_run_stats_t *s);

/* The summary for stderr. */
void mk_run_stats_print(const mk_run_stats_t *s, FILE *f);
/* The JSON document (new reference). */
json_t *mk_run_stats_json(const mk_run_stats_t *s);
int mk_run_stats_write_json(const mk_run_stats_t *s, const char *path, mk_error_t *err);

/* "1.50 MiB" style, into buf. */
const char *mk_fmt_bytes(uint64_t b, char *buf, size_t cap);

#endif
