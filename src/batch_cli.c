/* The JSONL batch front end (src/batch_cli.h). */
#define _POSIX_C_SOURCE 200809L
#include "src/batch_cli.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include <jansson.h>

#include "parallel/request.h"
#include "src/batch.h"
#include "src/cli.h"
#include "src/engine.h"
#include "src/tokenizer.h"

/* One input line (rank 0). */
typedef struct entry {
  int line;
  json_t *id;    /* the input's "id", or the line number */
  char *error;   /* NULL: a valid request */
  mk_request_t req;
} entry_t;

typedef struct brun {
  const mk_gen_opts_t *o;
  mk_ctx_t *ctx;
  bool r0;
  mk_error_t err;
  FILE *in, *out;
  mk_engine_t *e;
  entry_t *ent; /* rank 0: every line; other ranks: the valid requests */
  int n_ent;
  int n_valid, n_errors, n_results;
  char **ready;  /* --ordered: result lines waiting for their turn (per entry) */
  int next_out;  /* --ordered: the next entry to write */
  int *valid_ix; /* request index -> entry index */
  double t0, t_progress, cpu0;
  mk_batch_t *b;
  mk_rank_stats_t *ranks; /* every rank's figures at the end (mk_cli_gather_rank_stats) */
} brun_t;

/* A formatted message (malloc'd; NULL when out of memory). */
static char *dupf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static char *dupf(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(NULL, 0, fmt, ap);
  va_end(ap);
  char *s = n >= 0 ? malloc((size_t)n + 1) : NULL;
  if (s) {
    va_start(ap, fmt);
    vsnprintf(s, (size_t)n + 1, fmt, ap);
    va_end(ap);
  }
  return s;
}

static double cpu_now(void) {
  struct rusage ru;
  if (getrusage(RUSAGE_SELF, &ru) != 0) return 0.0;
  return (double)ru.ru_utime.tv_sec + 1e-6 * (double)ru.ru_utime.tv_usec + (double)ru.ru_stime.tv_sec +
         1e-6 * (double)ru.ru_stime.tv_usec;
}

static double wall_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* ---- input -------------------------------------------------------------------------------- */

static int open_files(brun_t *r) {
  const mk_gen_opts_t *o = r->o;
  if (!r->r0) return 0;
  r->in = !strcmp(o->batch_file, "-") ? stdin : fopen(o->batch_file, "r");
  if (!r->in) return mk_fail(&r->err, "--batch-file %s: %s", o->batch_file, strerror(errno));
  const char *out = o->out ? o->out : "-";
  r->out = !strcmp(out, "-") ? stdout : fopen(out, "w");
  if (!r->out) return mk_fail(&r->err, "--out %s: %s", out, strerror(errno));
  return 0;
}

static int get_num(json_t *v, const char *key, double lo, double hi, double *out, char **why) {
  if (!json_is_number(v) || (json_is_real(v) && !isfinite(json_real_value(v)))) {
    *why = dupf("\"%s\" must be a number", key);
    return -1;
  }
  double x = json_number_value(v);
  if (x < lo || x > hi) {
    *why = dupf("\"%s\" %g is outside [%g, %g]", key, x, lo, hi);
    return -1;
  }
  *out = x;
  return 0;
}

static int get_int(json_t *v, const char *key, long lo, long hi, long *out, char **why) {
  if (!json_is_integer(v)) {
    *why = dupf("\"%s\" must be an integer", key);
    return -1;
  }
  json_int_t x = json_integer_value(v);
  if (x < lo || x > hi) {
    *why = dupf("\"%s\" %lld is outside [%ld, %ld]", key, (long long)x, lo, hi);
    return -1;
  }
  *out = (long)x;
  return 0;
}

static int add_stop(mk_request_t *q, json_t *v, char **why) {
  json_t *one = json_is_string(v) ? v : NULL;
  size_t n = one ? 1 : json_is_array(v) ? json_array_size(v) : 0;
  if (!one && !json_is_array(v)) {
    *why = strdup("\"stop\" must be a string or a list of strings");
    return -1;
  }
  if (n > MK_REQUEST_MAX_STOP) {
    *why = dupf("\"stop\": %zu strings, at most %d", n, MK_REQUEST_MAX_STOP);
    return -1;
  }
  q->stop = calloc(n ? n : 1, sizeof *q->stop);
  for (size_t i = 0; q->stop && i < n; i++) {
    json_t *s = one ? one : json_array_get(v, i);
    if (!json_is_string(s) || json_string_length(s) == 0 || json_string_length(s) > MK_REQUEST_MAX_STOP_LEN) {
      *why = strdup("\"stop\": every entry must be a non-empty string of at most 1024 bytes");
      return -1;
    }
    if (!(q->stop[i] = strdup(json_string_value(s)))) break;
    q->n_stop++;
  }
  return q->stop && q->n_stop == n ? 0 : (*why = strdup("out of memory"), -1);
}

/* Sampling keys of one request over the run's defaults. 1: not a sampling key. */
static int sampling_key(mk_request_t *q, const char *k, json_t *v, char **why) {
  mk_sampler_params_t *s = &q->sampling;
  double x;
  long i;
  if (!strcmp(k, "temperature")) return get_num(v, k, 0, 1e6, &x, why) ? -1 : (s->temperature = (float)x, 0);
  if (!strcmp(k, "top_p")) {
    if (get_num(v, k, 0, 1, &x, why)) return -1;
    if (!(x > 0)) return (*why = strdup("\"top_p\" must be > 0 (1 = off)")), -1;
    return s->top_p = (float)x, 0;
  }
  if (!strcmp(k, "min_p")) return get_num(v, k, 0, 1, &x, why) ? -1 : (s->min_p = (float)x, 0);
  if (!strcmp(k, "repeat_penalty")) {
    if (get_num(v, k, 0, 1e6, &x, why)) return -1;
    if (!(x > 0)) return (*why = strdup("\"repeat_penalty\" must be > 0")), -1;
    return s->repeat_penalty = (float)x, 0;
  }
  if (!strcmp(k, "top_k")) return get_int(v, k, 0, INT_MAX, &i, why) ? -1 : (s->top_k = (int)i, 0);
  if (!strcmp(k, "repeat_last_n")) return get_int(v, k, -1, INT_MAX, &i, why) ? -1 : (s->repeat_last_n = (int)i, 0);
  if (!strcmp(k, "seed")) {
    if (!json_is_integer(v) || json_integer_value(v) < 0) return (*why = strdup("\"seed\" must be an integer >= 0")), -1;
    return s->seed = (uint64_t)json_integer_value(v), 0;
  }
  return 1;
}

/* The prompt text of "messages": an optional system message, then one user message. */
static int messages_text(json_t *m, const char **system, const char **user, char **why) {
  size_t n = json_is_array(m) ? json_array_size(m) : 0;
  *system = *user = NULL;
  for (size_t i = 0; i < n; i++) {
    json_t *msg = json_array_get(m, i), *role = json_object_get(msg, "role"), *c = json_object_get(msg, "content");
    if (!json_is_object(msg) || !json_is_string(role) || !json_is_string(c)) break;
    const char *rs = json_string_value(role);
    if (!strcmp(rs, "system") && i == 0 && n == 2) *system = json_string_value(c);
    else if (!strcmp(rs, "user") && i == n - 1) *user = json_string_value(c);
    else break;
  }
  if (*user) return 0;
  *why = strdup("\"messages\" must be [{\"role\": \"system\", \"content\": ...},] {\"role\": \"user\", \"content\": ...}: "
                "one user turn, optionally after one system turn");
  return -1;
}

/* Fills q from one parsed line; a prompt text to encode in *text (borrowed from obj). */
static int parse_request(brun_t *r, json_t *obj, mk_request_t *q, const char **text, const char **system,
                         bool *chat, char **why) {
  const mk_gen_opts_t *o = r->o;
  q->kind = MK_REQUEST_GENERATE;
  q->sampling = o->sampling;
  q->max_new_tokens = o->max_new_tokens;
  q->cache = o->kv;
  *chat = o->chat;
  *system = o->system;
  *text = NULL;
  json_t *prompt = json_object_get(obj, "prompt"), *msgs = json_object_get(obj, "messages");
  if (!prompt == !msgs) return (*why = strdup("give exactly one of \"prompt\" and \"messages\"")), -1;
  if (prompt && !json_is_string(prompt)) return (*why = strdup("\"prompt\" must be a string")), -1;
  if (prompt) *text = json_string_value(prompt);
  if (msgs) {
    const char *sys = NULL;
    if (messages_text(msgs, &sys, text, why)) return -1;
    *chat = true;
    if (sys) *system = sys;
  }
  const char *k;
  json_t *v;
  json_object_foreach(obj, k, v) {
    long x;
    if (!strcmp(k, "prompt") || !strcmp(k, "messages") || !strcmp(k, "id")) continue;
    if (!strcmp(k, "max_new_tokens")) {
      if (get_int(v, k, 0, INT_MAX / 2, &x, why)) return -1;
      q->max_new_tokens = (int)x;
    } else if (!strcmp(k, "stop")) {
      if (add_stop(q, v, why)) return -1;
    } else {
      int rc = sampling_key(q, k, v, why);
      if (rc < 0) return -1;
      if (rc > 0) {
        *why = dupf("unknown key \"%s\"", k);
        return -1;
      }
    }
  }
  if (!q->stop) /* the flags' stop strings */
    for (int i = 0; i < o->n_stop; i++) {
      char **t = realloc(q->stop, sizeof *t * (size_t)(i + 1));
      if (!t || !(t[i] = strdup(o->stop[i]))) return (*why = strdup("out of memory")), -1;
      q->stop = t;
      q->n_stop++;
    }
  return 0;
}

/* One line into e (rank 0): an error result, or a tokenized request that fits the context. */
static void parse_line(brun_t *r, const char *buf, entry_t *e) {
  mk_request_init(&e->req);
  json_error_t je;
  char *why = NULL;
  json_t *obj = json_loads(buf, JSON_REJECT_DUPLICATES, &je);
  if (!obj) {
    why = dupf("invalid JSON at column %d: %s", je.column, je.text);
  } else if (!json_is_object(obj)) {
    why = strdup("a request must be a JSON object");
  }
  json_t *id = obj && json_is_object(obj) ? json_object_get(obj, "id") : NULL;
  if (id && !json_is_string(id) && !json_is_integer(id) && !why) why = strdup("\"id\" must be a string or an integer");
  e->id = id && (json_is_string(id) || json_is_integer(id)) ? json_incref(id) : json_integer(e->line);
  const char *text = NULL, *system = NULL;
  bool chat = false;
  if (!why && parse_request(r, obj, &e->req, &text, &system, &chat, &why) == 0) {
    int32_t *ids = NULL;
    int n = 0;
    mk_error_t err = {{0}};
    if (mk_cli_encode_prompt(r->e, text, chat, r->o->chat_template, system, &ids, &n, &err) != 0) {
      why = strdup(err.msg);
    } else {
      e->req.prompt = ids;
      e->req.n_prompt = (size_t)n;
      const mk_model_config_t *c = mk_engine_config(r->e);
      long ctx = r->o->ctx_size > 0 && r->o->ctx_size < c->n_ctx_train ? r->o->ctx_size : c->n_ctx_train;
      if ((long)n + e->req.max_new_tokens > ctx)
        why = dupf("the prompt (%d tokens) + max_new_tokens %d exceed the context of %ld tokens", n,
                   e->req.max_new_tokens, ctx);
      if (e->req.sampling.repeat_last_n < 0) e->req.sampling.repeat_last_n = n + e->req.max_new_tokens;
    }
  }
  json_decref(obj);
  if (why) {
    e->error = why;
    mk_request_free(&e->req);
  }
}

/* Rank 0: every non-blank line of the input. */
static int read_input(brun_t *r) {
  char *buf = NULL;
  size_t cap = 0;
  ssize_t len;
  int line = 0, cap_ent = 0;
  while ((len = getline(&buf, &cap, r->in)) >= 0) {
    line++;
    while (len > 0 && (buf[len - 1] == '\n' || buf[len - 1] == '\r')) buf[--len] = 0;
    size_t sp = strspn(buf, " \t");
    if (buf[sp] == 0) continue;
    if (r->n_ent == cap_ent) {
      cap_ent = cap_ent ? 2 * cap_ent : 64;
      entry_t *t = realloc(r->ent, sizeof *t * (size_t)cap_ent);
      if (!t) break;
      r->ent = t;
    }
    entry_t *e = &r->ent[r->n_ent++];
    memset(e, 0, sizeof *e);
    e->line = line;
    if (memchr(buf, 0, (size_t)len)) {
      mk_request_init(&e->req);
      e->id = json_integer(line);
      e->error = strdup("the line holds a NUL byte");
    } else {
      parse_line(r, buf, e);
    }
  }
  free(buf);
  bool bad = ferror(r->in);
  if (r->in != stdin) fclose(r->in);
  r->in = NULL;
  if (bad) return mk_fail(&r->err, "--batch-file %s: read error", r->o->batch_file);
  return 0;
}

/* ---- output -------------------------------------------------------------------------------- */

/* Writes (or, --ordered, holds) the result line of entry i; takes line. */
static void emit(brun_t *r, int i, char *line) {
  r->n_results++;
  if (!r->o->ordered) {
    fprintf(r->out, "%s\n", line);
    fflush(r->out);
    free(line);
    return;
  }
  r->ready[i] = line;
  while (r->next_out < r->n_ent && r->ready[r->next_out]) {
    fprintf(r->out, "%s\n", r->ready[r->next_out]);
    free(r->ready[r->next_out]);
    r->ready[r->next_out++] = NULL;
  }
  fflush(r->out);
}

static void emit_error(brun_t *r, int i, const char *msg) {
  json_t *o = json_pack("{s:O, s:i, s:s}", "id", r->ent[i].id, "line", r->ent[i].line, "error", msg);
  char *s = o ? json_dumps(o, JSON_COMPACT) : NULL;
  json_decref(o);
  if (s) emit(r, i, s);
  r->n_errors++;
}

static void on_done(void *ctx, const mk_batch_result_t *res) {
  brun_t *r = ctx;
  if (!r->r0) return;
  const int i = r->valid_ix[res->id];
  json_t *ids = json_array();
  for (int k = 0; ids && k < res->generated_tokens; k++) json_array_append_new(ids, json_integer(res->output_ids[k]));
  json_t *o = json_pack("{s:O, s:i, s:s, s:o, s:i, s:i, s:s, s:f, s:f, s:f, s:I}", "id", r->ent[i].id, "line",
                        r->ent[i].line, "text", res->text, "output_ids", ids, "prompt_tokens", res->prompt_tokens,
                        "generated_tokens", res->generated_tokens, "stop_reason", res->stop_reason, "queue_s",
                        res->queue_s, "prefill_s", res->prefill_s, "decode_s", res->decode_s, "kv_bytes",
                        (json_int_t)res->kv_bytes);
  char *s = o ? json_dumps(o, JSON_COMPACT) : NULL;
  json_decref(o);
  if (s) emit(r, i, s);
}

static void progress(brun_t *r, bool last) {
  if (!r->r0 || r->o->quiet) return;
  double t = wall_now();
  if (!last && t - r->t_progress < 2.0) return;
  r->t_progress = t;
  mk_batch_progress_t p;
  mk_batch_get_progress(r->b, &p);
  char budget[48] = "no budget";
  if (p.kv_budget) snprintf(budget, sizeof budget, "%.1f MiB budget", p.kv_budget / 1048576.0);
  fprintf(stderr,
          "[morphkv] batch: %d done, %d running, %d queued; %lld tokens, %.1f tok/s; KV %.1f MiB reserved / %s "
          "(%.1f MiB in used slots on rank 0)\n",
          p.done + r->n_errors, p.running, p.queued, p.generated, p.elapsed_s > 0 ? p.generated / p.elapsed_s : 0.0,
          p.kv_reserved / 1048576.0, budget, p.kv_live / 1048576.0);
}

/* ---- the run -------------------------------------------------------------------------------- */

/* As `generate` loads (src/main.c gen_load). */
static int load_engine(brun_t *r) {
  mk_engine_params_t ep = mk_cli_engine_params(r->o, r->ctx);
  return mk_engine_open(&r->e, &ep, r->ctx, &r->err);
}

/* The request stream: rank 0 sends every valid request, then a SHUTDOWN; every rank ends with
 * r->ent[0..n_valid) holding the requests (rank 0: valid_ix maps them to its entries). */
static int stream_requests(brun_t *r) {
  const int n_vocab = mk_engine_n_vocab(r->e);
  entry_t *got = NULL;
  int n = 0, cap = 0, k = 0;
  for (;;) {
    mk_request_t q;
    mk_request_init(&q);
    if (r->r0) {
      while (k < r->n_ent && r->ent[k].error) k++;
      if (k < r->n_ent) {
        q = r->ent[k].req; /* bcast frees rank 0's copy and hands back the unpacked one */
        mk_request_init(&r->ent[k].req);
        q.id = (uint64_t)n;
      } else {
        q.kind = MK_REQUEST_SHUTDOWN;
      }
    }
    if (mk_request_bcast(r->ctx, &q, n_vocab, &r->err) != 0) return -1;
    if (q.kind == MK_REQUEST_SHUTDOWN) break;
    if (n == cap) {
      cap = cap ? 2 * cap : 64;
      entry_t *t = realloc(got, sizeof *t * (size_t)cap);
      int *ix = r->r0 ? realloc(r->valid_ix, sizeof *ix * (size_t)cap) : NULL;
      if (!t || (r->r0 && !ix)) return mk_fail(&r->err, "out of memory");
      got = t;
      if (r->r0) r->valid_ix = ix;
    }
    memset(&got[n], 0, sizeof got[n]);
    got[n].req = q;
    if (r->r0) r->valid_ix[n] = k++;
    n++;
  }
  r->n_valid = n;
  if (!r->r0) {
    r->ent = got;
    r->n_ent = n;
    return 0;
  }
  for (int i = 0; i < n; i++) r->ent[r->valid_ix[i]].req = got[i].req;
  free(got);
  return 0;
}

static const mk_request_t *valid_req(const brun_t *r, int i) {
  return r->r0 ? &r->ent[r->valid_ix[i]].req : &r->ent[i].req;
}

static int make_batch(brun_t *r) {
  const mk_gen_opts_t *o = r->o;
  mk_batch_params_t bp = {.max_seqs = o->max_seqs, .prefill_chunk = o->prefill_chunk, .kv_memory = o->kv_memory,
                          .ignore_eos = o->ignore_eos, .kv = o->kv, .min_total = INT_MAX};
  for (int i = 0; i < r->n_valid; i++) {
    const mk_request_t *q = valid_req(r, i);
    int n = (int)q->n_prompt, t = n + q->max_new_tokens;
    if (n > bp.max_prompt) bp.max_prompt = n;
    if (t > bp.max_total) bp.max_total = t;
    if (t < bp.min_total) bp.min_total = t;
  }
  return mk_batch_new(&r->b, r->e, &bp, &r->err);
}

static int submit_all(brun_t *r) {
  for (int i = 0; i < r->n_valid; i++) {
    const mk_request_t *q = valid_req(r, i);
    mk_batch_request_t br = {.id = (uint64_t)i, .prompt = q->prompt, .n_prompt = (int)q->n_prompt,
                             .sampling = q->sampling, .max_new_tokens = q->max_new_tokens,
                             .stop = q->stop, .n_stop = (int)q->n_stop};
    mk_error_t e = {{0}};
    if (mk_batch_submit(r->b, &br, &e) != 0 && r->r0) emit_error(r, r->valid_ix[i], e.msg);
  }
  return 0;
}

static void summary(brun_t *r) {
  progress(r, true);
  if (!r->r0 || r->o->quiet) return;
  mk_batch_progress_t p;
  mk_batch_get_progress(r->b, &p);
  fprintf(stderr,
          "[morphkv] batch: %d results (%d errors), %lld tokens in %.2f s: %.1f tok/s aggregate, %lld %s, "
          "at most %d sequences at once (%d cache slots, %zu KV bytes per sequence%s)\n",
          r->n_results, r->n_errors, p.generated, p.elapsed_s, p.elapsed_s > 0 ? p.generated / p.elapsed_s : 0.0,
          p.steps, r->o->pp > 1 ? "pipeline ticks" : "forward passes", p.max_running, mk_batch_slots(r->b),
          r->o->kv.policy == MK_KV_FULL ? mk_batch_seq_bytes(r->b, 1, 0) : mk_batch_seq_bytes(r->b, 0, 0),
          r->o->kv.policy == MK_KV_FULL ? " per token slot reserved" : "");
  for (int k = 0; r->o->pp > 1 && k < r->ctx->world; k++) {
    const mk_rank_stats_t *x = &r->ranks[k];
    const double busy = 1e-6 * (double)x->busy_us, wait = 1e-6 * (double)x->stage_wait_us;
    fprintf(stderr, "[morphkv] rank %d, stage %llu: computing %.2f s, waiting on other stages %.2f s (%.0f%% idle), "
            "sent %.2f MiB to the next stage\n", k, (unsigned long long)x->stage, busy, wait,
            100.0 * mk_rank_idle_frac(x), (double)x->comm_p2p_bytes / 1048576.0);
  }
}

/* The pipeline and traffic figures of the stats JSON: every rank's, and per generated token. */
static void stats_ranks(const brun_t *r, json_t *o, long long generated) {
  json_t *ranks = json_array();
  uint64_t p2p = 0, model = 0, sample = 0;
  double idle = 0;
  for (int k = 0; ranks && k < r->ctx->world; k++) {
    const mk_rank_stats_t *x = &r->ranks[k];
    json_t *j = mk_rank_stats_json(x);
    json_object_set_new(j, "rank", json_integer(k));
    json_array_append_new(ranks, j);
    p2p += x->comm_p2p_bytes, model += x->comm_model_bytes + x->comm_score_bytes, sample += x->comm_sample_bytes;
    idle += mk_rank_idle_frac(x);
  }
  json_object_set_new(o, "ranks", ranks);
  const double g = generated > 0 ? (double)generated : 1.0;
  json_object_set_new(o, "pp", json_integer(r->o->pp));
  json_object_set_new(o, "bubble_frac", json_real(idle / r->ctx->world)); /* mean idle share of the ranks */
  json_object_set_new(o, "p2p_bytes_per_token", json_real((double)p2p / g));
  json_object_set_new(o, "allreduce_bytes_per_token", json_real((double)model / g)); /* TP: model + score sync */
  json_object_set_new(o, "sample_bytes_per_token", json_real((double)sample / g));
}

static int write_stats(brun_t *r) {
  if (!r->r0 || !r->o->stats_json) return 0;
  mk_batch_progress_t p;
  mk_batch_get_progress(r->b, &p);
  const double cpu = cpu_now() - r->cpu0; /* this rank's CPU seconds over the batch (contention-proof) */
  json_t *o = json_pack("{s:i, s:i, s:I, s:f, s:f, s:f, s:I, s:i, s:i, s:I, s:I, s:s, s:i, s:i, s:i}", "results",
                        r->n_results, "errors", r->n_errors, "generated_tokens", (json_int_t)p.generated, "wall_s",
                        p.elapsed_s, "cpu_s", cpu, "aggregate_tok_s", p.elapsed_s > 0 ? p.generated / p.elapsed_s : 0.0,
                        "forward_passes", (json_int_t)p.steps, "max_running", p.max_running, "cache_seqs",
                        mk_batch_slots(r->b), "kv_memory", (json_int_t)r->o->kv_memory, "kv_seq_bytes",
                        (json_int_t)(r->o->kv.policy == MK_KV_FULL ? mk_batch_seq_bytes(r->b, 1, 0)
                                                                    : mk_batch_seq_bytes(r->b, 0, 0)), "kv_policy", mk_kv_policy_name(r->o->kv.policy),
                        "max_seqs", r->o->max_seqs, "prefill_chunk", r->o->prefill_chunk, "world", r->ctx->world);
  long long n;
  const mk_batch_pass_t *ps = mk_batch_passes(r->b, &n);
  json_t *passes = json_array();
  for (long long i = 0; passes && i < n; i++)
    json_array_append_new(passes, json_pack("[f, i, i]", ps[i].s, ps[i].decode, ps[i].prefill));
  if (o) json_object_set_new(o, "passes", passes); /* [[seconds, decode tokens, prompt tokens], ...] */
  else json_decref(passes);
  if (o) stats_ranks(r, o, p.generated);
  int rc = o && json_dump_file(o, r->o->stats_json, JSON_COMPACT) == 0
               ? 0
               : mk_fail(&r->err, "--stats-json %s: cannot write", r->o->stats_json);
  json_decref(o);
  return rc;
}

static int run_batch(brun_t *r) {
  if (mk_cli_agree(r->ctx, "generate", open_files(r), &r->err) != 0) return 1;
  if (load_engine(r) != 0) { /* agreed inside mk_engine_open: every rank says why, none aborts */
    if (r->ctx->world > 1) fprintf(stderr, "morphkv generate (rank %d): %s\n", r->ctx->rank, r->err.msg);
    else fprintf(stderr, "morphkv generate: %s\n", r->err.msg);
    return 1;
  }
  int status = r->r0 ? read_input(r) : 0;
  if (status == 0 && r->r0 && !(r->ready = calloc((size_t)r->n_ent + 1, sizeof *r->ready)))
    status = mk_fail(&r->err, "out of memory");
  if (mk_cli_agree(r->ctx, "generate", status, &r->err) != 0) return 1;
  for (int i = 0; r->r0 && i < r->n_ent; i++)
    if (r->ent[i].error) emit_error(r, i, r->ent[i].error);
  if (stream_requests(r) != 0) return mk_cli_fail(r->ctx, "generate", &r->err);
  if (r->n_valid == 0) {
    if (r->r0 && !r->o->quiet) fprintf(stderr, "[morphkv] batch: no valid request (%d errors)\n", r->n_errors);
    return 0;
  }
  if (mk_cli_agree(r->ctx, "generate", make_batch(r), &r->err) != 0) return 1;
  r->cpu0 = cpu_now();
  submit_all(r);
  for (;;) {
    int rc = mk_batch_step(r->b, on_done, r, &r->err);
    if (rc < 0) return mk_cli_fail(r->ctx, "generate", &r->err);
    if (rc == 0) break;
    progress(r, false);
  }
  if (!(r->ranks = calloc((size_t)r->ctx->world, sizeof *r->ranks))) {
    mk_fail(&r->err, "out of memory");
    return mk_cli_fail(r->ctx, "generate", &r->err);
  }
  if (mk_cli_gather_rank_stats(r->ctx, r->e, r->ranks, &r->err) != 0) return mk_cli_fail(r->ctx, "generate", &r->err);
  summary(r);
  return mk_cli_agree(r->ctx, "generate", write_stats(r), &r->err) != 0 ? 1 : 0;
}

int mk_batch_cli_run(const mk_gen_opts_t *o, mk_ctx_t *ctx) {
  brun_t r = {.o = o, .ctx = ctx, .r0 = ctx->rank == 0, .err = {{0}}};
  int rc = run_batch(&r);
  for (int i = 0; i < r.n_ent; i++) {
    json_decref(r.ent[i].id);
    free(r.ent[i].error);
    mk_request_free(&r.ent[i].req);
    if (r.ready) free(r.ready[i]);
  }
  free(r.ent);
  free(r.ready);
  free(r.valid_ix);
  free(r.ranks);
  mk_batch_free(r.b);
  mk_engine_close(r.e);
  if (r.in && r.in != stdin) fclose(r.in);
  if (r.out && r.out != stdout && fclose(r.out) != 0 && rc == 0) {
    fprintf(stderr, "morphkv generate: --out %s: %s\n", o->out, strerror(errno));
    rc = 1;
  }
  return rc;
}
