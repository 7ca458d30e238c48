/* Run statistics: the stderr summary and the --stats-json document of `morphkv generate`. */
#include "src/stats.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

void mk_run_stats_init(mk_run_stats_t *s) { memset(s, 0, sizeof *s); }

void mk_run_stats_free(mk_run_stats_t *s) {
  free(s->ranks);
  free(s->by_step);
  s->ranks = NULL;
  s->by_step = NULL;
  s->n_by_step = s->cap_by_step = 0;
}

int mk_run_stats_sample(mk_run_stats_t *s, int64_t n_tokens, int64_t live_bytes, mk_error_t *err) {
  if (s->n_by_step > 0 && s->by_step[s->n_by_step - 1][0] == n_tokens) {
    s->by_step[s->n_by_step - 1][1] = live_bytes;
    return 0;
  }
  if (s->n_by_step == s->cap_by_step) {
    int cap = s->cap_by_step ? s->cap_by_step * 2 : 64;
    void *t = realloc(s->by_step, (size_t)cap * sizeof *s->by_step);
    if (!t) return mk_fail(err, "stats: out of memory");
    s->by_step = t;
    s->cap_by_step = cap;
  }
  s->by_step[s->n_by_step][0] = n_tokens;
  s->by_step[s->n_by_step][1] = live_bytes;
  s->n_by_step++;
  return 0;
}

void mk_run_stats_sum(mk_run_stats_t *s) {
  memset(&s->total, 0, sizeof s->total);
  for (int r = 0; r < s->world && s->ranks; r++) {
    const mk_rank_stats_t *x = &s->ranks[r];
    s->total.weight_bytes += x->weight_bytes;
    s->total.kv_live_bytes += x->kv_live_bytes;
    s->total.kv_peak_bytes += x->kv_peak_bytes;
    s->total.kv_alloc_bytes += x->kv_alloc_bytes;
    s->total.policy_state_bytes += x->policy_state_bytes;
    s->total.comm_model_bytes += x->comm_model_bytes;
    s->total.comm_score_bytes += x->comm_score_bytes;
    s->total.comm_sample_bytes += x->comm_sample_bytes;
    s->total.comm_p2p_bytes += x->comm_p2p_bytes;
    if (x->kv_slots > s->total.kv_slots) s->total.kv_slots = x->kv_slots;
  }
}

const char *mk_fmt_bytes(uint64_t b, char *buf, size_t cap) {
  if (b < 1024) snprintf(buf, cap, "%llu B", (unsigned long long)b);
  else if (b < (1ull << 20)) snprintf(buf, cap, "%.2f KiB", (double)b / 1024.0);
  else if (b < (1ull << 30)) snprintf(buf, cap, "%.2f MiB", (double)b / (1024.0 * 1024.0));
  else snprintf(buf, cap, "%.2f GiB", (double)b / (1024.0 * 1024.0 * 1024.0));
  return buf;
}

static double rate(double n, double s) { return s > 0.0 ? n / s : 0.0; }

void mk_run_stats_print(const mk_run_stats_t *s, FILE *f) {
  char a[32], b[32], c[32], d[32], e[32];
  fprintf(f, "\n--- morphkv: %s (%s), backend %s/%s, %d thread%s x %d rank%s ---\n",
          s->model_name ? s->model_name : "?", s->arch ? s->arch : "?", s->backend, s->simd,
          s->threads, s->threads == 1 ? "" : "s", s->world, s->world == 1 ? "" : "s");
  fprintf(f, "load:      %.3f s\n", s->load_s);
  fprintf(f, "prefill:   %d tokens in %.3f s = %.1f tok/s\n", s->prompt_tokens, s->prefill_s,
          rate(s->prompt_tokens, s->prefill_s));
  fprintf(f, "decode:    %d steps in %.3f s = %.1f tok/s (%d tokens generated, stop: %s)\n",
          s->decode_steps, s->decode_s, rate(s->decode_steps, s->decode_s), s->generated_tokens,
          s->stop_reason ? s->stop_reason : "?");
  fprintf(f, "KV cache:  %s policy, %s, %llu slots/head: live %s, peak %s, allocated %s\n",
          s->kv_policy, s->kv_dtype, (unsigned long long)s->total.kv_slots,
          mk_fmt_bytes(s->total.kv_live_bytes, a, sizeof a),
          mk_fmt_bytes(s->total.kv_peak_bytes, b, sizeof b),
          mk_fmt_bytes(s->total.kv_alloc_bytes, c, sizeof c));
  fprintf(f, "policy:    scoring state %s\n", mk_fmt_bytes(s->total.policy_state_bytes, a, sizeof a));
  fprintf(f, "weights:   %s\n", mk_fmt_bytes(s->total.weight_bytes, a, sizeof a));
  if (s->world > 1) {
    fprintf(f, "comm:      %s, model all-reduces %s, score sync %s, sampling exchange %s (all ranks)\n",
            s->comm, mk_fmt_bytes(s->total.comm_model_bytes, a, sizeof a),
            mk_fmt_bytes(s->total.comm_score_bytes, b, sizeof b),
            mk_fmt_bytes(s->total.comm_sample_bytes, c, sizeof c));
    for (int r = 0; r < s->world; r++) {
      const mk_rank_stats_t *x = &s->ranks[r];
      fprintf(f, "rank %d:    weights %s, KV live %s, peak %s, allocated %s, policy state %s\n", r,
              mk_fmt_bytes(x->weight_bytes, a, sizeof a), mk_fmt_bytes(x->kv_live_bytes, b, sizeof b),
              mk_fmt_bytes(x->kv_peak_bytes, c, sizeof c), mk_fmt_bytes(x->kv_alloc_bytes, d, sizeof d),
              mk_fmt_bytes(x->policy_state_bytes, e, sizeof e));
      if (x->comm_p2p_bytes > 0 || x->stage > 0)
        fprintf(f, "           stage %llu: sent %s to the next stage, %.0f%% of its engine time waiting on other stages\n",
                (unsigned long long)x->stage, mk_fmt_bytes(x->comm_p2p_bytes, a, sizeof a),
                100.0 * mk_rank_idle_frac(x));
    }
  }
}

mk_rank_stats_t mk_rank_stats_of(const mk_engine_stats_t *es) {
  return (mk_rank_stats_t){.weight_bytes = es->weight_bytes, .kv_live_bytes = es->kv_live_bytes,
                           .kv_peak_bytes = es->kv_peak_bytes, .kv_alloc_bytes = es->kv_alloc_bytes,
                           .policy_state_bytes = es->policy_state_bytes, .comm_model_bytes = es->comm_model_bytes,
                           .comm_score_bytes = es->comm_score_bytes, .kv_slots = (uint64_t)es->kv_slots,
                           .comm_sample_bytes = es->comm_sample_bytes, .comm_p2p_bytes = es->comm_p2p_bytes,
                           .stage = (uint64_t)es->stage, .busy_us = (uint64_t)(es->busy_s * 1e6),
                           .stage_wait_us = (uint64_t)(es->stage_wait_s * 1e6),
                           .busy_cpu_us = (uint64_t)(es->busy_cpu_s * 1e6)};
}

double mk_rank_idle_frac(const mk_rank_stats_t *x) {
  const double busy = (double)x->busy_us, wait = (double)x->stage_wait_us;
  return busy + wait > 0 ? wait / (busy + wait) : 0.0;
}

json_t *mk_rank_stats_json(const mk_rank_stats_t *x) {
  const double busy = (double)x->busy_us, wait = (double)x->stage_wait_us;
  return json_pack("{s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:f,s:f,s:f,s:f}", "weight_bytes", (json_int_t)x->weight_bytes,
                   "kv_live_bytes", (json_int_t)x->kv_live_bytes, "kv_peak_bytes",
                   (json_int_t)x->kv_peak_bytes, "kv_alloc_bytes", (json_int_t)x->kv_alloc_bytes,
                   "policy_state_bytes", (json_int_t)x->policy_state_bytes, "comm_model_bytes",
                   (json_int_t)x->comm_model_bytes, "comm_score_bytes",
                   (json_int_t)x->comm_score_bytes, "comm_sample_bytes",
                   (json_int_t)x->comm_sample_bytes, "kv_slots", (json_int_t)x->kv_slots, "comm_p2p_bytes",
                   (json_int_t)x->comm_p2p_bytes, "stage", (json_int_t)x->stage, "busy_s", busy * 1e-6,
                   "stage_wait_s", wait * 1e-6, "idle_frac", mk_rank_idle_frac(x),
                   "busy_cpu_s", 1e-6 * (double)x->busy_cpu_us);
}

static json_t *str_or_null(const char *s) { return s ? json_string(s) : json_null(); }

json_t *mk_run_stats_json(const mk_run_stats_t *s) {
  json_t *o = json_object();
  if (!o) return NULL;
  json_object_set_new(o, "model", str_or_null(s->model_path));
  json_object_set_new(o, "model_name", str_or_null(s->model_name));
  json_object_set_new(o, "arch", str_or_null(s->arch));
  json_object_set_new(o, "backend", str_or_null(s->backend));
  json_object_set_new(o, "simd", str_or_null(s->simd));
  json_object_set_new(o, "threads", json_integer(s->threads));
  json_object_set_new(o, "world", json_integer(s->world));
  json_object_set_new(o, "comm", str_or_null(s->comm));
  json_object_set_new(o, "n_layer", json_integer(s->n_layer));
  json_object_set_new(o, "n_kv_head", json_integer(s->n_kv_head));
  json_object_set_new(o, "head_dim", json_integer(s->head_dim));
  json_object_set_new(o, "kv_policy", str_or_null(s->kv_policy));
  json_object_set_new(o, "kv_dtype", str_or_null(s->kv_dtype));
  json_object_set_new(o, "kv_window", json_integer(s->kv_window));
  json_object_set_new(o, "kv_capacity", json_integer(s->kv_capacity));
  json_object_set_new(o, "load_s", json_real(s->load_s));
  json_object_set_new(o, "prompt_tokens", json_integer(s->prompt_tokens));
  json_object_set_new(o, "prefill_s", json_real(s->prefill_s));
  json_object_set_new(o, "prefill_tok_s", json_real(rate(s->prompt_tokens, s->prefill_s)));
  json_object_set_new(o, "generated_tokens", json_integer(s->generated_tokens));
  json_object_set_new(o, "decode_steps", json_integer(s->decode_steps));
  json_object_set_new(o, "decode_s", json_real(s->decode_s));
  json_object_set_new(o, "decode_tok_s", json_real(rate(s->decode_steps, s->decode_s)));
  json_object_set_new(o, "sample_s", json_real(s->sample_s));
  json_object_set_new(o, "wall_s", json_real(s->wall_s));
  json_object_set_new(o, "stop_reason", str_or_null(s->stop_reason));
  json_object_set_new(o, "kv_slots", json_integer((json_int_t)s->total.kv_slots));
  json_object_set_new(o, "kv_live_bytes", json_integer((json_int_t)s->total.kv_live_bytes));
  json_object_set_new(o, "kv_peak_bytes", json_integer((json_int_t)s->total.kv_peak_bytes));
  json_object_set_new(o, "kv_alloc_bytes", json_integer((json_int_t)s->total.kv_alloc_bytes));
  json_object_set_new(o, "policy_state_bytes", json_integer((json_int_t)s->total.policy_state_bytes));
  json_object_set_new(o, "weight_bytes", json_integer((json_int_t)s->total.weight_bytes));
  json_object_set_new(o, "comm_model_bytes", json_integer((json_int_t)s->total.comm_model_bytes));
  json_object_set_new(o, "comm_score_bytes", json_integer((json_int_t)s->total.comm_score_bytes));
  json_object_set_new(o, "comm_sample_bytes", json_integer((json_int_t)s->total.comm_sample_bytes));
  json_object_set_new(o, "comm_p2p_bytes", json_integer((json_int_t)s->total.comm_p2p_bytes));
  json_t *ranks = json_array();
  for (int r = 0; r < s->world && s->ranks; r++) {
    json_t *x = mk_rank_stats_json(&s->ranks[r]);
    json_object_set_new(x, "rank", json_integer(r));
    json_array_append_new(ranks, x);
  }
  json_object_set_new(o, "ranks", ranks);
  json_t *steps = json_array();
  for (int i = 0; i < s->n_by_step; i++)
    json_array_append_new(steps, json_pack("[I,I]", (json_int_t)s->by_step[i][0],
                                           (json_int_t)s->by_step[i][1]));
  json_object_set_new(o, "kv_bytes_by_step", steps);
  json_t *ids = json_array();
  for (int i = 0; i < s->generated_tokens && s->output_ids; i++)
    json_array_append_new(ids, json_integer(s->output_ids[i]));
  json_object_set_new(o, "output_ids", ids);
  json_t *text = s->output_text ? json_string(s->output_text) : NULL; /* NULL if not UTF-8 */
  json_object_set_new(o, "output_text", text ? text : json_null());
  return o;
}

int mk_run_stats_write_json(const mk_run_stats_t *s, const char *path, mk_error_t *err) {
  json_t *o = mk_run_stats_json(s);
  if (!o) return mk_fail(err, "--stats-json %s: out of memory", path);
  FILE *f = fopen(path, "w");
  if (!f) {
    int e = errno;
    json_decref(o);
    return mk_fail(err, "--stats-json %s: %s", path, strerror(e));
  }
  int rc = json_dumpf(o, f, JSON_INDENT(2) | JSON_ENSURE_ASCII);
  fputc('\n', f);
  int cl = fclose(f);
  json_decref(o);
  if (rc != 0 || cl != 0) return mk_fail(err, "--stats-json %s: write failed", path);
  return 0;
}
