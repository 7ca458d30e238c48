/* Decode speed of MorphKV against the full cache (issue 3, item 7). Not a test: a benchmark.
 *
 *   bench_kv_speed --model M [--capacity 1024] [--window 32] [--new-tokens 4000] [--threads 2]
 *                  [--prompt TEXT | --prompts FILE.jsonl --prompt-line K] [--measure 128]
 *                  [--csv FILE] [--json FILE]
 *
 * Two engines on the same mapped weights, one with the full cache and one with MorphKV(C, W),
 * are fed the same tokens (the full cache's greedy continuation, end-of-generation tokens never
 * chosen, so the output really is N tokens long). They step alternately, one token each, with
 * the order swapped every step, so that whatever else the machine is doing slows both alike.
 * Every decode step is timed on its own (CLOCK_MONOTONIC).
 *
 * Figures (medians of per-step times, robust to the odd preempted step):
 *   equal length  MorphKV in steady state (C+1 slots while attending), positions [C+1, C+1+M),
 *                 against the full cache at the same cache length: positions [C-M/2, C+M/2)
 *                 (the token at position p attends over p+1 slots: mean C+1). overhead =
 *                 morphkv / full - 1.
 *   pre-eviction  both over positions [max(C/2, P+W+1), C-1), where the two caches are equal:
 *                 the cost of MorphKV's bookkeeping (score row, ring) without eviction.
 *   same window   both over positions [C+1, C+1+M) (full's context there is C+1..C+M).
 *   past 2C       both over positions [2C, N): speedup = full / morphkv.
 *   whole output  decode tokens/s of each over all N-1 decode steps.
 * Output: a JSON object on stdout (and --json FILE); per-step times in --csv FILE. */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <limits.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>

#include "src/engine.h"
#include "src/quant.h"
#include "src/tokenizer.h"

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static double cpu_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int die(const char *what, const mk_error_t *err) {
  fprintf(stderr, "bench_kv_speed: %s: %s\n", what, err ? err->msg : "");
  return 1;
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

/* median of t[i] for decode steps whose position is in [lo, hi); NAN if none */
static double median_window(const double *t, const int *pos, int n, int lo, int hi, int *count) {
  double *v = malloc(sizeof *v * (size_t)(n > 0 ? n : 1));
  int k = 0;
  for (int i = 0; i < n; i++)
    if (pos[i] >= lo && pos[i] < hi) v[k++] = t[i];
  if (count) *count = k;
  double m = 0.0 / 0.0;
  if (k > 0) {
    qsort(v, (size_t)k, sizeof *v, cmp_double);
    m = k % 2 ? v[k / 2] : 0.5 * (v[k / 2 - 1] + v[k / 2]);
  }
  free(v);
  return m;
}

static char *read_prompt_line(const char *path, int line, mk_error_t *err) {
  FILE *f = fopen(path, "rb");
  if (!f) {
    mk_fail(err, "%s: %s", path, strerror(errno));
    return NULL;
  }
  char *buf = NULL, *out = NULL;
  size_t cap = 0;
  for (int ln = 0; getline(&buf, &cap, f) >= 0; ln++) {
    if (ln != line) continue;
    json_error_t je;
    json_t *o = json_loads(buf, 0, &je);
    json_t *p = o ? json_object_get(o, "prompt") : NULL;
    if (json_is_string(p)) out = strdup(json_string_value(p));
    else mk_fail(err, "%s:%d: no \"prompt\" string", path, line + 1);
    json_decref(o);
    break;
  }
  if (!out && !err->msg[0]) mk_fail(err, "%s: no line %d", path, line + 1);
  free(buf);
  fclose(f);
  return out;
}

/* The figures of one clock (per-step times tf, tm of full and morphkv at positions pos). */
static json_t *summarize(const double *tf, const double *tm, const int *pos, int n, int np, int C,
                         int W, int M) {
  json_t *o = json_object();
  int cnt_a_m, cnt_a_f, cnt_w_f, cnt_b_f, cnt_b_m;
  double a_m = median_window(tm, pos, n, C + 1, C + 1 + M, &cnt_a_m);
  double a_f = median_window(tf, pos, n, C - M / 2, C + M / 2, &cnt_a_f);
  double w_f = median_window(tf, pos, n, C + 1, C + 1 + M, &cnt_w_f);
  double w_m = a_m;
  double b_f = median_window(tf, pos, n, 2 * C, INT_MAX, &cnt_b_f);
  double b_m = median_window(tm, pos, n, 2 * C, INT_MAX, &cnt_b_m);
  /* morphkv before its first eviction: the same cache as full plus the policy's bookkeeping */
  int cnt_e_f, cnt_e_m;
  int e_lo = np + W + 1 > C / 2 ? np + W + 1 : C / 2;
  double e_f = median_window(tf, pos, n, e_lo, C - 1, &cnt_e_f);
  double e_m = median_window(tm, pos, n, e_lo, C - 1, &cnt_e_m);

  json_object_set_new(o, "equal_len_full_ms", json_real(1e3 * a_f));
  json_object_set_new(o, "equal_len_morphkv_ms", json_real(1e3 * a_m));
  json_object_set_new(o, "equal_len_overhead", json_real(a_m / a_f - 1.0));
  json_object_set_new(o, "equal_len_steps", json_integer(cnt_a_m < cnt_a_f ? cnt_a_m : cnt_a_f));
  json_object_set_new(o, "same_window_full_ms", json_real(1e3 * w_f));
  json_object_set_new(o, "same_window_morphkv_ms", json_real(1e3 * w_m));
  json_object_set_new(o, "same_window_ratio", json_real(w_m / w_f));
  json_object_set_new(o, "same_window_steps", json_integer(cnt_w_f));
  json_object_set_new(o, "pre_eviction_full_ms", json_real(1e3 * e_f));
  json_object_set_new(o, "pre_eviction_morphkv_ms", json_real(1e3 * e_m));
  json_object_set_new(o, "pre_eviction_overhead", json_real(e_m / e_f - 1.0));
  json_object_set_new(o, "pre_eviction_steps", json_integer(cnt_e_f < cnt_e_m ? cnt_e_f : cnt_e_m));
  json_object_set_new(o, "past_2c_full_ms", json_real(1e3 * b_f));
  json_object_set_new(o, "past_2c_morphkv_ms", json_real(1e3 * b_m));
  json_object_set_new(o, "past_2c_speedup", json_real(b_f / b_m));
  json_object_set_new(o, "past_2c_steps", json_integer(cnt_b_f < cnt_b_m ? cnt_b_f : cnt_b_m));
  double sum_f = 0, sum_m = 0;
  for (int i = 0; i < n; i++) sum_f += tf[i], sum_m += tm[i];
  json_object_set_new(o, "decode_tok_s_full", json_real(n / sum_f));
  json_object_set_new(o, "decode_tok_s_morphkv", json_real(n / sum_m));
  json_object_set_new(o, "whole_output_speedup", json_real(sum_f / sum_m));
  return o;
}

static void usage(void) {
  fprintf(stderr,
          "usage: bench_kv_speed --model M [--capacity 1024] [--window 32] [--new-tokens 4000]\n"
          "         [--threads 2] [--prompt TEXT | --prompts FILE.jsonl --prompt-line K]\n"
          "         [--measure 128] [--csv FILE] [--json FILE]\n");
}

int main(int argc, char **argv) {
  const char *model = NULL, *prompt = NULL, *prompts = NULL, *csv_path = NULL, *json_path = NULL;
  int C = 1024, W = 32, N = 4000, threads = 2, line = 0, M = 128;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
      usage();
      return 0;
    }
    if (!v) {
      fprintf(stderr, "bench_kv_speed: %s needs a value\n", a);
      usage();
      return 2;
    }
    i++;
    if (!strcmp(a, "--model")) model = v;
    else if (!strcmp(a, "--prompt")) prompt = v;
    else if (!strcmp(a, "--prompts")) prompts = v;
    else if (!strcmp(a, "--csv")) csv_path = v;
    else if (!strcmp(a, "--json")) json_path = v;
    else if (!strcmp(a, "--capacity")) C = atoi(v);
    else if (!strcmp(a, "--window")) W = atoi(v);
    else if (!strcmp(a, "--new-tokens")) N = atoi(v);
    else if (!strcmp(a, "--threads")) threads = atoi(v);
    else if (!strcmp(a, "--prompt-line")) line = atoi(v);
    else if (!strcmp(a, "--measure")) M = atoi(v);
    else {
      fprintf(stderr, "bench_kv_speed: unknown flag %s\n", a);
      usage();
      return 2;
    }
  }
  if (!model || C <= W || W < 1 || N < 2 || threads < 1 || M < 2) {
    usage();
    return 2;
  }
  mk_error_t err = {{0}};
  char *text = prompt ? strdup(prompt)
                      : prompts ? read_prompt_line(prompts, line, &err)
                                : strdup("Write a very long story about a journey across the sea.");
  if (!text) return die("prompt", &err);

  mk_engine_params_t ep = {.model_path = model,
                           .backend = {.kind = MK_BACKEND_CPU, .n_threads = threads, .simd = -1}};
  mk_engine_t *ef = NULL, *em = NULL;
  if (mk_engine_open(&ef, &ep, NULL, &err) != 0) return die("open", &err);
  if (mk_engine_open(&em, &ep, NULL, &err) != 0) return die("open", &err);
  const mk_tokenizer_t *tok = mk_engine_tokenizer(ef);
  const int V = mk_engine_n_vocab(ef);

  /* the chat template when the model has one (as `morphkv generate --chat`) */
  mk_chat_tmpl_t tmpl = mk_chat_detect(mk_engine_gguf(ef));
  if (tmpl != MK_CHAT_NONE) {
    char *sys = tmpl == MK_CHAT_CHATML ? mk_chat_default_system(mk_engine_gguf(ef)) : NULL;
    char *r = mk_chat_render(tmpl, sys, text);
    free(sys);
    if (!r) return die("chat template", NULL);
    free(text);
    text = r;
  }
  int cap = (int)strlen(text) + 8;
  int32_t *ids = malloc(sizeof *ids * (size_t)cap);
  int np = mk_tok_encode(tok, text, strlen(text), mk_tok_add_bos(tok), true, ids, cap, &err);
  if (np <= 0 || np > cap) return die("tokenize", &err);
  if (np >= C) {
    fprintf(stderr, "bench_kv_speed: the prompt (%d tokens) must be shorter than C = %d\n", np, C);
    return 2;
  }

  mk_kv_config_t kf, km;
  mk_kv_config_default(&kf);
  mk_kv_config_default(&km);
  km.policy = MK_KV_MORPHKV;
  km.window = W;
  km.capacity = C;
  if (mk_engine_begin(ef, &kf, 1, np, np + N, &err) != 0) return die("begin full", &err);
  if (mk_engine_begin(em, &km, 1, np, np + N, &err) != 0) return die("begin morphkv", &err);

  unsigned char *eog = calloc((size_t)V, 1);
  float *lf = malloc(sizeof(float) * (size_t)V), *lm = malloc(sizeof(float) * (size_t)V);
  double *tf = malloc(sizeof(double) * (size_t)N), *tm = malloc(sizeof(double) * (size_t)N);
  double *cf = malloc(sizeof(double) * (size_t)N), *cm = malloc(sizeof(double) * (size_t)N);
  int *pos = malloc(sizeof(int) * (size_t)N);
  if (!eog || !lf || !lm || !tf || !tm || !cf || !cm || !pos) return die("out of memory", NULL);
  for (int i = 0; i < V; i++) eog[i] = mk_tok_is_eog(tok, i);

  double t0 = now_s();
  if (mk_engine_step(ef, 0, ids, np, false, lf, &err) != 0) return die("prefill full", &err);
  double prefill_f = now_s() - t0;
  t0 = now_s();
  if (mk_engine_step(em, 0, ids, np, false, lm, &err) != 0) return die("prefill morphkv", &err);
  double prefill_m = now_s() - t0;

  /* decode: step k feeds token k at position np + k; N-1 steps give N tokens */
  int n_steps = 0;
  double t_start = now_s(), t_last = t_start;
  for (int k = 0; k + 1 < N; k++) {
    int32_t y = -1;
    for (int i = 0; i < V; i++)
      if (!eog[i] && (y < 0 || lf[i] > lf[y])) y = i;
    for (int h = 0; h < 2; h++) {
      bool full_now = (h == 0) == (k % 2 == 0);
      mk_engine_t *e = full_now ? ef : em;
      float *l = full_now ? lf : lm;
      double ts = now_s(), cs = cpu_s();
      if (mk_engine_step(e, 0, &y, 1, false, l, &err) != 0) return die("decode", &err);
      double dt = now_s() - ts, dc = cpu_s() - cs;
      if (full_now) tf[n_steps] = dt, cf[n_steps] = dc;
      else tm[n_steps] = dt, cm[n_steps] = dc;
    }
    pos[n_steps] = np + k; /* position of the token fed */
    n_steps++;
    double tn = now_s();
    if (tn - t_last > 20.0) {
      fprintf(stderr, "bench_kv_speed: %d/%d steps, %.0f s\n", n_steps, N - 1, tn - t_start);
      t_last = tn;
    }
  }
  mk_engine_stats_t sf, sm;
  mk_engine_get_stats(ef, &sf);
  mk_engine_get_stats(em, &sm);

  json_t *o = json_object();
  json_object_set_new(o, "model", json_string(model));
  json_object_set_new(o, "simd", json_string(mk_simd_name(mk_simd_best())));
  json_object_set_new(o, "threads", json_integer(threads));
  json_object_set_new(o, "capacity", json_integer(C));
  json_object_set_new(o, "window", json_integer(W));
  json_object_set_new(o, "prompt_tokens", json_integer(np));
  json_object_set_new(o, "new_tokens", json_integer(N));
  json_object_set_new(o, "measure_steps", json_integer(M));
  json_object_set_new(o, "prefill_s_full", json_real(prefill_f));
  json_object_set_new(o, "prefill_s_morphkv", json_real(prefill_m));
  json_object_set_new(o, "wall", summarize(tf, tm, pos, n_steps, np, C, W, M));
  json_object_set_new(o, "cpu", summarize(cf, cm, pos, n_steps, np, C, W, M));
  json_object_set_new(o, "decode_steps", json_integer(n_steps));
  json_object_set_new(o, "kv_live_bytes_full", json_integer((json_int_t)sf.kv_live_bytes));
  json_object_set_new(o, "kv_live_bytes_morphkv", json_integer((json_int_t)sm.kv_live_bytes));
  json_object_set_new(o, "kv_peak_bytes_full", json_integer((json_int_t)sf.kv_peak_bytes));
  json_object_set_new(o, "kv_peak_bytes_morphkv", json_integer((json_int_t)sm.kv_peak_bytes));
  json_object_set_new(o, "policy_state_bytes_morphkv", json_integer((json_int_t)sm.policy_state_bytes));
  char *js = json_dumps(o, JSON_INDENT(2) | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(6));
  printf("%s\n", js);
  if (json_path) {
    FILE *f = fopen(json_path, "w");
    if (!f) return die(json_path, NULL);
    fprintf(f, "%s\n", js);
    fclose(f);
  }
  free(js);
  json_decref(o);
  if (csv_path) {
    FILE *f = fopen(csv_path, "w");
    if (!f) return die(csv_path, NULL);
    fprintf(f, "position,full_wall_s,morphkv_wall_s,full_cpu_s,morphkv_cpu_s\n");
    for (int i = 0; i < n_steps; i++)
      fprintf(f, "%d,%.7f,%.7f,%.7f,%.7f\n", pos[i], tf[i], tm[i], cf[i], cm[i]);
    fclose(f);
  }
  free(eog), free(lf), free(lm), free(tf), free(tm), free(cf), free(cm), free(pos), free(ids), free(text);
  mk_engine_close(ef);
  mk_engine_close(em);
  return 0;
}
