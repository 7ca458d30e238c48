/* Option table of `morphkv generate` and its two front ends (flags and JSON config files).
 * Every value, whichever front end it came from, goes through opt_apply as text, so a value is
 * validated in exactly one place. */
#define _POSIX_C_SOURCE 200809L
#include "src/config.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "src/quant.h"

typedef enum opt_kind { K_STR, K_PATH, K_INT, K_FLOAT, K_U64, K_BOOL, K_LIST, K_ENUM } opt_kind_t;

typedef enum opt_id {
  O_MODEL, O_PROMPT, O_PROMPT_FILE, O_CHAT, O_CHAT_TEMPLATE, O_SYSTEM, O_MAX_NEW, O_CTX_SIZE,
  O_TEMPERATURE, O_TOP_K, O_TOP_P, O_MIN_P, O_REPEAT_PENALTY, O_REPEAT_LAST_N, O_SEED,
  O_THREADS, O_CONFIG, O_STATS_JSON, O_STATS_EVERY, O_STOP,
  O_KV_POLICY, O_KV_WINDOW, O_KV_CAPACITY, O_KV_FUSION, O_KV_GQA, O_KV_SINKS, O_KV_EVICT_AFTER,
  O_KV_DTYPE, O_KV_H2O_MODE, O_KV_SNAPKV_POOL, O_KV_SNAPKV_POOLING,
  O_IGNORE_EOS, O_BACKEND, O_SIMD, O_TP, O_PP, O_DETERMINISTIC, O_COMM, O_COMM_TIMEOUT, O_QUIET, O_PROGRESS,
  O_BATCH_FILE, O_OUT, O_ORDERED, O_MAX_SEQS, O_PREFILL_CHUNK, O_KV_MEMORY,
} opt_id_t;

typedef struct opt_def {
  opt_id_t id;
  const char *name;    /* flag form */
  opt_kind_t kind;
  const char *arg;     /* placeholder or the choices of an enum */
  const char *help;
  bool flag_only;      /* not a config key */
} opt_def_t;

static const opt_def_t OPTS[] = {
    {O_MODEL, "model", K_PATH, "PATH", "GGUF model file", false},
    {O_PROMPT, "prompt", K_STR, "TEXT", "prompt text", false},
    {O_PROMPT_FILE, "prompt-file", K_PATH, "FILE", "read the prompt from FILE (text, no NUL bytes; a pipe or FIFO is read to its end, so it "
     "waits for the writer)", false},
    {O_CHAT, "chat", K_BOOL, NULL, "wrap the prompt in the model's chat template", false},
    {O_CHAT_TEMPLATE, "chat-template", K_ENUM, "chatml|llama3|llama2",
     "chat template (default: detected from the model)", false},
    {O_SYSTEM, "system", K_STR, "TEXT", "system prompt for --chat", false},
    {O_MAX_NEW, "max-new-tokens", K_INT, "N", "stop after N generated tokens (default 256)", false},
    {O_CTX_SIZE, "ctx-size", K_INT, "N",
     "context length limit, prompt + new tokens (default: the model's training context)", false},
    {O_TEMPERATURE, "temperature", K_FLOAT, "T", "sampling temperature, 0 = greedy (default 0.8)",
     false},
    {O_TOP_K, "top-k", K_INT, "K", "keep the K most likely tokens, 0 = off (default 40)", false},
    {O_TOP_P, "top-p", K_FLOAT, "P", "nucleus sampling mass, 1 = off (default 0.95)", false},
    {O_MIN_P, "min-p", K_FLOAT, "P",
     "drop tokens below P x the top probability, 0 = off (default 0.05)", false},
    {O_REPEAT_PENALTY, "repeat-penalty", K_FLOAT, "R", "repetition penalty, 1 = off (default 1)",
     false},
    {O_REPEAT_LAST_N, "repeat-last-n", K_INT, "N",
     "tokens the penalty looks back over, -1 = all (default 64)", false},
    {O_SEED, "seed", K_U64, "S", "random seed (default 42)", false},
    {O_THREADS, "threads", K_INT, "N", "CPU threads per rank (default: cores / ranks per node)",
     false},
    {O_CONFIG, "config", K_PATH, "FILE", "JSON config file (flags win over its keys)", true},
    {O_STATS_JSON, "stats-json", K_PATH, "FILE", "write timings and memory figures as JSON", false},
    {O_STATS_EVERY, "stats-every", K_INT, "N",
     "sample KV bytes every N tokens for kv_bytes_by_step (default 64)", false},
    {O_STOP, "stop", K_LIST, "STR", "stop when the output contains STR (repeatable)", false},
    {O_IGNORE_EOS, "ignore-eos", K_BOOL, NULL,
     "keep generating past end-of-generation tokens (benchmarks)", false},
    {O_KV_POLICY, "kv-policy", K_ENUM, "full|morphkv|streaming|h2o|snapkv",
     "KV-cache policy (default full)", false},
    {O_KV_WINDOW, "kv-window", K_INT, "W", "recent window W (default 32)", false},
    {O_KV_CAPACITY, "kv-capacity", K_INT, "C", "cache budget C in tokens (default 2048)", false},
    {O_KV_FUSION, "kv-fusion", K_ENUM, "sum|max", "MorphKV score fusion (default sum)", false},
    {O_KV_GQA, "kv-gqa", K_ENUM, "logit_sum|prob_max", "MorphKV GQA rule (default logit_sum)",
     false},
    {O_KV_SINKS, "kv-sinks", K_INT, "S", "sink tokens kept always: streaming (default 4), morphkv (default 0)", false},
    {O_KV_EVICT_AFTER, "kv-evict-after", K_FLOAT, "F",
     "bursty eviction: evict when used >= ceil((C+1) x F) (default 1)", false},
    {O_KV_DTYPE, "kv-dtype", K_ENUM, "f32|f16", "cache element type (default f32)", false},
    {O_KV_H2O_MODE, "kv-h2o-mode", K_ENUM, "group|per_head", "H2O scoring (default group)", false},
    {O_KV_SNAPKV_POOL, "kv-snapkv-pool", K_INT, "N", "SnapKV pooling kernel, odd (default 5)",
     false},
    {O_KV_SNAPKV_POOLING, "kv-snapkv-pooling", K_ENUM, "avg|max", "SnapKV pooling (default avg)",
     false},
    {O_BACKEND, "backend", K_ENUM, "cpu|cuda", "compute backend (default cpu)", false},
    {O_SIMD, "simd", K_ENUM, "auto|scalar|avx2|avx512", "force a CPU kernel level (default auto)",
     false},
    {O_TP, "tp", K_INT, "N", "expected tensor-parallel degree, checked against the MPI world",
     false},
    {O_PP, "pp", K_INT, "P", "pipeline stages: world = P x T, layers split over P stages (default 1)",
     false},
    {O_DETERMINISTIC, "deterministic", K_ENUM, "on|off",
     "on: the same bits for every rank count and batch; off: all-reduce rank partials (default off)",
     false},
    {O_COMM, "comm", K_ENUM, "auto|nccl|mpi",
     "collectives: auto (CPU: mpi; CUDA: nccl with one GPU per rank, else mpi), nccl (CUDA, in place "
     "on device buffers), mpi (CUDA: staged through pinned host memory; ranks may share a GPU)",
     false},
    {O_COMM_TIMEOUT, "comm-timeout", K_FLOAT, "SECONDS",
     "abort every rank when a collective waits longer than SECONDS for a wedged rank, naming "
     "it; 0 = off (default 300)", false},
    {O_QUIET, "quiet", K_BOOL, NULL, "no statistics on stderr", false},
    {O_PROGRESS, "progress", K_BOOL, NULL, "progress lines on stderr while generating", false},
    {O_BATCH_FILE, "batch-file", K_PATH, "FILE",
     "batch mode: one JSON request a line (prompt or messages, id, max_new_tokens, sampling, stop, "
     "seed), - = stdin; replaces --prompt", false},
    {O_OUT, "out", K_PATH, "FILE", "batch mode: one JSON result a line, flushed as each finishes (default - = stdout)",
     false},
    {O_ORDERED, "ordered", K_BOOL, NULL, "batch mode: write the results in input order", false},
    {O_MAX_SEQS, "max-seqs", K_INT, "B",
     "batch mode: sequences decoding together in one forward pass, all under the same --kv-* policy and "
     "settings (default 8)", false},
    {O_PREFILL_CHUNK, "prefill-chunk", K_INT, "N",
     "batch mode: prompt tokens per forward pass, interleaved with the decodes (default 512)", false},
    {O_KV_MEMORY, "kv-memory", K_STR, "SIZE",
     "batch mode: admit sequences while their K/V + policy-state bytes (all ranks) fit in SIZE (e.g. 256MiB; "
     "MorphKV and other bounded policies: their constant slots, full: prompt + max_new_tokens slots "
     "reserved; default: no budget)", false},
};
#define N_OPTS (sizeof OPTS / sizeof OPTS[0])

void mk_gen_opts_default(mk_gen_opts_t *o) {
  memset(o, 0, sizeof *o);
  o->max_new_tokens = 256;
  mk_sampler_params_default(&o->sampling);
  o->stats_every = 64;
  mk_kv_config_default(&o->kv);
  o->backend = MK_BACKEND_CPU;
  o->simd = -1;
  o->pp = 1;
  o->comm_timeout = 300.0f; /* MK_WATCHDOG_DEFAULT_S */
  o->max_seqs = 8;
  o->prefill_chunk = 512;
}

void mk_gen_opts_free(mk_gen_opts_t *o) {
  free(o->model);
  free(o->prompt);
  free(o->prompt_file);
  free(o->chat_template);
  free(o->system);
  free(o->stats_json);
  free(o->config);
  free(o->batch_file);
  free(o->out);
  for (int i = 0; i < o->n_stop; i++) free(o->stop[i]);
  memset(o, 0, sizeof *o);
}

/* finds an option by flag form or config-key form */
static const opt_def_t *opt_find(const char *name) {
  char norm[64];
  size_t n = strlen(name);
  if (n == 0 || n >= sizeof norm) return NULL;
  for (size_t i = 0; i <= n; i++) norm[i] = name[i] == '_' ? '-' : name[i];
  for (size_t i = 0; i < N_OPTS; i++)
    if (strcmp(OPTS[i].name, norm) == 0) return &OPTS[i];
  return NULL;
}

char *mk_expand_path(const char *s, mk_error_t *err) {
  size_t cap = strlen(s) + 256, n = 0;
  char *out = malloc(cap);
  if (!out) {
    mk_fail(err, "out of memory");
    return NULL;
  }
#define PUT(str, len)                                   \
  do {                                                  \
    size_t l_ = (len);                                  \
    if (n + l_ + 1 > cap) {                             \
      cap = (n + l_ + 1) * 2;                           \
      char *t_ = realloc(out, cap);                     \
      if (!t_) {                                        \
        free(out);                                      \
        mk_fail(err, "out of memory");                  \
        return NULL;                                    \
      }                                                 \
      out = t_;                                         \
    }                                                   \
    memcpy(out + n, (str), l_);                         \
    n += l_;                                            \
  } while (0)
  const char *p = s;
  while (*p) {
    if (p[0] == '$' && p[1] == '{') {
      const char *close = strchr(p + 2, '}');
      if (!close) {
        free(out);
        mk_fail(err, "'%s': unterminated ${...}", s);
        return NULL;
      }
      char name[128];
      const char *dflt = NULL;
      size_t dlen = 0;
      const char *colon = strstr(p + 2, ":-");
      const char *name_end = (colon && colon < close) ? colon : close;
      size_t nl = (size_t)(name_end - (p + 2));
      if (nl == 0 || nl >= sizeof name) {
        free(out);
        mk_fail(err, "'%s': bad variable name in ${...}", s);
        return NULL;
      }
      memcpy(name, p + 2, nl);
      name[nl] = 0;
      if (colon && colon < close) {
        dflt = colon + 2;
        dlen = (size_t)(close - dflt);
      }
      const char *val = getenv(name);
      if (val && *val) PUT(val, strlen(val));
      else if (dflt) PUT(dflt, dlen);
      p = close + 1;
    } else {
      PUT(p, 1);
      p++;
    }
  }
  out[n] = 0;
#undef PUT
  if (out[0] == '~' && (out[1] == '/' || out[1] == 0)) {
    const char *home = getenv("HOME");
    if (home) {
      size_t hl = strlen(home), rest = strlen(out + 1);
      char *r = malloc(hl + rest + 1);
      if (!r) {
        free(out);
        mk_fail(err, "out of memory");
        return NULL;
      }
      memcpy(r, home, hl);
      memcpy(r + hl, out + 1, rest + 1);
      free(out);
      out = r;
    }
  }
  return out;
}

static int parse_int(const opt_def_t *d, const char *v, long lo, long hi, int *out,
                     mk_error_t *err) {
  char *end;
  errno = 0;
  long x = strtol(v, &end, 10);
  if (errno || end == v || *end) return mk_fail(err, "--%s: '%s' is not an integer", d->name, v);
  if (x < lo || x > hi)
    return mk_fail(err, "--%s: %ld is out of range [%ld, %ld]", d->name, x, lo, hi);
  *out = (int)x;
  return 0;
}

static int parse_float(const opt_def_t *d, const char *v, double lo, double hi, float *out,
                       mk_error_t *err) {
  char *end;
  errno = 0;
  double x = strtod(v, &end);
  if (errno || end == v || *end || !isfinite(x))
    return mk_fail(err, "--%s: '%s' is not a number", d->name, v);
  if (x < lo || x > hi) return mk_fail(err, "--%s: %g is out of range [%g, %g]", d->name, x, lo, hi);
  *out = (float)x;
  return 0;
}

static int parse_bool(const opt_def_t *d, const char *v, bool *out, mk_error_t *err) {
  if (!v || !strcmp(v, "true") || !strcmp(v, "1") || !strcmp(v, "yes") || !strcmp(v, "on")) {
    *out = true;
    return 0;
  }
  if (!strcmp(v, "false") || !strcmp(v, "0") || !strcmp(v, "no") || !strcmp(v, "off")) {
    *out = false;
    return 0;
  }
  return mk_fail(err, "--%s: '%s' is not a boolean (true|false)", d->name, v);
}

/* index of v among the '|'-separated choices of d->arg, or -1 with err */
static int parse_enum(const opt_def_t *d, const char *v, mk_error_t *err) {
  const char *c = d->arg;
  size_t vl = strlen(v);
  for (int i = 0; *c; i++) {
    const char *bar = strchr(c, '|');
    size_t l = bar ? (size_t)(bar - c) : strlen(c);
    if (l == vl && strncmp(c, v, l) == 0) return i;
    if (!bar) break;
    c = bar + 1;
  }
  mk_fail(err, "--%s: unknown value '%s' (one of %s)", d->name, v, d->arg);
  return -1;
}

/* err = "<a> <b>: <old message>" (bounded, so the result always fits) */
static void prefix_err(mk_error_t *err, const char *a, const char *b) {
  if (!err) return;
  char old[sizeof err->msg];
  memcpy(old, err->msg, sizeof old);
  snprintf(err->msg, sizeof err->msg, "%.200s %.100s: %.700s", a, b, old);
}

/* err = "<label>: key '<key>': <old message>" */
static void prefix_key_err(mk_error_t *err, const char *label, const char *key) {
  char k[128];
  snprintf(k, sizeof k, "key '%.100s'", key);
  char l[256];
  snprintf(l, sizeof l, "%.200s:", label);
  prefix_err(err, l, k);
}

static int set_str(char **dst, const char *v, bool path, mk_error_t *err) {
  char *s = path ? mk_expand_path(v, err) : strdup(v);
  if (!s) return path ? -1 : mk_fail(err, "out of memory");
  free(*dst);
  *dst = s;
  return 0;
}

/* "256MiB", "1.5GiB", "100MB", "4096" (bytes); binary (KiB/MiB/GiB) and decimal (kB/MB/GB)
 * units, a bare K/M/G is binary. */
static int parse_size(const opt_def_t *d, const char *v, size_t *out, mk_error_t *err) {
  static const struct { const char *u; double m; } units[] = {
      {"", 1},           {"B", 1},           {"K", 1024.0},     {"KiB", 1024.0},   {"kB", 1e3},
      {"M", 1048576.0},  {"MiB", 1048576.0}, {"MB", 1e6},       {"G", 1073741824.0},
      {"GiB", 1073741824.0}, {"GB", 1e9},   {"T", 1099511627776.0}, {"TiB", 1099511627776.0}};
  char *end;
  errno = 0;
  double x = strtod(v, &end);
  if (errno || end == v || !(x > 0) || v[0] == '-')
    return mk_fail(err, "--%s: '%s' is not a positive size (e.g. 256MiB)", d->name, v);
  for (size_t i = 0; i < sizeof units / sizeof units[0]; i++)
    if (!strcmp(end, units[i].u)) {
      double b = x * units[i].m;
      if (b >= 1.8e19) return mk_fail(err, "--%s: '%s' is too large", d->name, v);
      *out = (size_t)b;
      return *out > 0 ? 0 : mk_fail(err, "--%s: '%s' is less than a byte", d->name, v);
    }
  return mk_fail(err, "--%s: '%s': unknown unit '%s' (B, KiB, MiB, GiB, TiB, kB, MB, GB)", d->name, v, end);
}

static int opt_apply(mk_gen_opts_t *o, const opt_def_t *d, const char *v, mk_error_t *err) {
  if (d->kind != K_BOOL && !v) return mk_fail(err, "--%s needs a value (%s)", d->name, d->arg);
  if (d->kind == K_PATH && !*v) return mk_fail(err, "--%s: empty path", d->name);
  int e;
  switch (d->id) {
    case O_MODEL: return set_str(&o->model, v, true, err);
    case O_PROMPT: return set_str(&o->prompt, v, false, err);
    case O_PROMPT_FILE: return set_str(&o->prompt_file, v, true, err);
    case O_CHAT: return parse_bool(d, v, &o->chat, err);
    case O_CHAT_TEMPLATE:
      if (parse_enum(d, v, err) < 0) return -1;
      return set_str(&o->chat_template, v, false, err);
    case O_SYSTEM: return set_str(&o->system, v, false, err);
    case O_MAX_NEW: return parse_int(d, v, 0, INT_MAX / 2, &o->max_new_tokens, err);
    case O_CTX_SIZE: return parse_int(d, v, 0, INT_MAX / 2, &o->ctx_size, err);
    case O_TEMPERATURE: return parse_float(d, v, 0.0, 1e6, &o->sampling.temperature, err);
    case O_TOP_K: return parse_int(d, v, 0, INT_MAX, &o->sampling.top_k, err);
    case O_TOP_P:
      if (parse_float(d, v, 0.0, 1.0, &o->sampling.top_p, err)) return -1;
      if (o->sampling.top_p <= 0.0f) return mk_fail(err, "--%s: must be > 0 (1 = off)", d->name);
      return 0;
    case O_MIN_P: return parse_float(d, v, 0.0, 1.0, &o->sampling.min_p, err);
    case O_REPEAT_PENALTY:
      if (parse_float(d, v, 0.0, 1e6, &o->sampling.repeat_penalty, err)) return -1;
      if (o->sampling.repeat_penalty <= 0.0f) return mk_fail(err, "--%s: must be > 0", d->name);
      return 0;
    case O_REPEAT_LAST_N: return parse_int(d, v, -1, INT_MAX, &o->sampling.repeat_last_n, err);
    case O_SEED: {
      char *end;
      errno = 0;
      unsigned long long x = strtoull(v, &end, 10);
      if (errno || end == v || *end || v[0] == '-')
        return mk_fail(err, "--%s: '%s' is not a non-negative integer", d->name, v);
      o->sampling.seed = (uint64_t)x;
      return 0;
    }
    case O_THREADS: return parse_int(d, v, 0, 4096, &o->threads, err);
    case O_CONFIG: return set_str(&o->config, v, true, err);
    case O_STATS_JSON: return set_str(&o->stats_json, v, true, err);
    case O_STATS_EVERY: return parse_int(d, v, 1, INT_MAX, &o->stats_every, err);
    case O_STOP:
      if (!*v) return mk_fail(err, "--%s: empty stop string", d->name);
      if (o->n_stop >= MK_GEN_MAX_STOP)
        return mk_fail(err, "--%s: at most %d stop strings", d->name, MK_GEN_MAX_STOP);
      o->stop[o->n_stop] = strdup(v);
      if (!o->stop[o->n_stop]) return mk_fail(err, "out of memory");
      o->n_stop++;
      return 0;
    case O_KV_POLICY: {
      mk_kv_policy_kind_t k;
      if (mk_kv_policy_parse(v, &k) != 0)
        return mk_fail(err, "--%s: unknown policy '%s' (one of %s)", d->name, v, d->arg);
      o->kv.policy = k;
      return 0;
    }
    case O_KV_WINDOW: return parse_int(d, v, 0, INT_MAX / 4, &o->kv.window, err);
    case O_KV_CAPACITY: return parse_int(d, v, 1, INT_MAX / 4, &o->kv.capacity, err);
    case O_KV_FUSION:
      if ((e = parse_enum(d, v, err)) < 0) return -1;
      o->kv.fusion = e == 0 ? MK_KV_FUSION_SUM : MK_KV_FUSION_MAX;
      return 0;
    case O_KV_GQA:
      if ((e = parse_enum(d, v, err)) < 0) return -1;
      o->kv.gqa = e == 0 ? MK_KV_GQA_LOGIT_SUM : MK_KV_GQA_PROB_MAX;
      return 0;
    case O_KV_SINKS: return parse_int(d, v, 0, INT_MAX / 4, &o->kv.sinks, err);
    case O_KV_EVICT_AFTER:
      if (parse_float(d, v, 1.0, 1e6, &o->kv.evict_after, err)) return -1;
      return 0;
    case O_KV_DTYPE:
      if ((e = parse_enum(d, v, err)) < 0) return -1;
      o->kv.dtype = e == 0 ? MK_KV_F32 : MK_KV_F16;
      return 0;
    case O_KV_H2O_MODE:
      if ((e = parse_enum(d, v, err)) < 0) return -1;
      o->kv.h2o_mode = e == 0 ? MK_KV_H2O_GROUP : MK_KV_H2O_PER_HEAD;
      return 0;
    case O_KV_SNAPKV_POOL:
      if (parse_int(d, v, 1, 1025, &o->kv.snapkv_pool, err)) return -1;
      if (o->kv.snapkv_pool % 2 == 0) return mk_fail(err, "--%s: %d must be odd", d->name, o->kv.snapkv_pool);
      return 0;
    case O_KV_SNAPKV_POOLING:
      if ((e = parse_enum(d, v, err)) < 0) return -1;
      o->kv.snapkv_maxpool = e == 1;
      return 0;
    case O_BACKEND:
      if ((e = parse_enum(d, v, err)) < 0) return -1;
      o->backend = e == 0 ? MK_BACKEND_CPU : MK_BACKEND_CUDA;
      return 0;
    case O_SIMD:
      if ((e = parse_enum(d, v, err)) < 0) return -1;
      o->simd = e == 0 ? -1 : e == 1 ? MK_SIMD_SCALAR : e == 2 ? MK_SIMD_AVX2 : MK_SIMD_AVX512;
      return 0;
    case O_TP: return parse_int(d, v, 0, 65536, &o->tp, err);
    case O_PP: return parse_int(d, v, 1, 65536, &o->pp, err);
    case O_DETERMINISTIC:
      if ((e = parse_enum(d, v, err)) < 0) return -1;
      o->deterministic = e == 0;
      return 0;
    case O_COMM:
      if ((e = parse_enum(d, v, err)) < 0) return -1;
      o->comm = e == 1 ? MK_COMM_KIND_NCCL : e == 2 ? MK_COMM_KIND_MPI : MK_COMM_KIND_AUTO;
      return 0;
    case O_COMM_TIMEOUT: return parse_float(d, v, 0.0, 1e6, &o->comm_timeout, err);
    case O_IGNORE_EOS: return parse_bool(d, v, &o->ignore_eos, err);
    case O_QUIET: return parse_bool(d, v, &o->quiet, err);
    case O_PROGRESS: return parse_bool(d, v, &o->progress, err);
    case O_BATCH_FILE:
      if (!strcmp(v, "-")) return set_str(&o->batch_file, v, false, err);
      return set_str(&o->batch_file, v, true, err);
    case O_OUT:
      if (!strcmp(v, "-")) return set_str(&o->out, v, false, err);
      return set_str(&o->out, v, true, err);
    case O_ORDERED: return parse_bool(d, v, &o->ordered, err);
    case O_MAX_SEQS: return parse_int(d, v, 1, 4096, &o->max_seqs, err);
    case O_PREFILL_CHUNK: return parse_int(d, v, 1, INT_MAX / 4, &o->prefill_chunk, err);
    case O_KV_MEMORY: return parse_size(d, v, &o->kv_memory, err);
  }
  return mk_fail(err, "--%s: unhandled option", d->name);
}

int mk_gen_opts_set(mk_gen_opts_t *o, const char *name, const char *value, mk_error_t *err) {
  const opt_def_t *d = opt_find(name);
  if (!d) return mk_fail(err, "unknown option '%s'", name);
  return opt_apply(o, d, value, err);
}

/* JSON value -> the text opt_apply takes, type-checked against the option kind */
static int json_to_text(const opt_def_t *d, json_t *v, const char *key, const char *label,
                        char *buf, size_t cap, const char **out, mk_error_t *err) {
  switch (d->kind) {
    case K_STR:
    case K_PATH:
    case K_ENUM:
    case K_LIST:
      if (!json_is_string(v)) return mk_fail(err, "%s: key '%s' must be a string", label, key);
      *out = json_string_value(v);
      return 0;
    case K_INT:
    case K_U64:
      if (!json_is_integer(v)) return mk_fail(err, "%s: key '%s' must be an integer", label, key);
      snprintf(buf, cap, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
      *out = buf;
      return 0;
    case K_FLOAT:
      if (!json_is_number(v)) return mk_fail(err, "%s: key '%s' must be a number", label, key);
      snprintf(buf, cap, "%.9g", json_number_value(v));
      *out = buf;
      return 0;
    case K_BOOL:
      if (!json_is_boolean(v)) return mk_fail(err, "%s: key '%s' must be true or false", label, key);
      *out = json_is_true(v) ? "true" : "false";
      return 0;
  }
  return mk_fail(err, "%s: key '%s': unhandled type", label, key);
}

int mk_gen_opts_load_json_text(mk_gen_opts_t *o, const char *text, const char *label,
                               mk_error_t *err) {
  json_error_t je;
  json_t *root = json_loads(text, JSON_REJECT_DUPLICATES, &je);
  if (!root) return mk_fail(err, "%s:%d:%d: %s", label, je.line, je.column, je.text);
  int rc = -1;
  if (!json_is_object(root)) {
    mk_fail(err, "%s: the config must be a JSON object", label);
    goto done;
  }
  const char *key;
  json_t *val;
  json_object_foreach(root, key, val) {
    const opt_def_t *d = NULL;
    if (strchr(key, '-') == NULL) d = opt_find(key);
    if (!d) {
      mk_fail(err, "%s: unknown key '%s' (keys are the long flags of 'morphkv generate' with '_' "
                   "for '-', e.g. max_new_tokens)", label, key);
      goto done;
    }
    if (d->flag_only) {
      mk_fail(err, "%s: key '%s' is only a command-line flag", label, key);
      goto done;
    }
    char buf[64];
    const char *text_v = NULL;
    if (d->kind == K_LIST && json_is_array(val)) {
      size_t i;
      json_t *item;
      json_array_foreach(val, i, item) {
        if (!json_is_string(item)) {
          mk_fail(err, "%s: key '%s': item %zu must be a string", label, key, i);
          goto done;
        }
        if (opt_apply(o, d, json_string_value(item), err) != 0) {
          prefix_key_err(err, label, key);
          goto done;
        }
      }
      continue;
    }
    if (json_to_text(d, val, key, label, buf, sizeof buf, &text_v, err) != 0) goto done;
    if (opt_apply(o, d, text_v, err) != 0) {
      prefix_key_err(err, label, key);
      goto done;
    }
  }
  rc = 0;
done:
  json_decref(root);
  return rc;
}

int mk_gen_opts_load_json(mk_gen_opts_t *o, const char *path, mk_error_t *err) {
  FILE *f = fopen(path, "rb");
  if (!f) return mk_fail(err, "config %s: %s", path, strerror(errno));
  char *buf = NULL;
  size_t n = 0, cap = 0;
  for (;;) {
    if (n + 4096 + 1 > cap) {
      cap = (n + 4096 + 1) * 2;
      char *t = realloc(buf, cap);
      if (!t) {
        free(buf);
        fclose(f);
        return mk_fail(err, "config %s: out of memory", path);
      }
      buf = t;
    }
    size_t r = fread(buf + n, 1, 4096, f);
    n += r;
    if (r < 4096) break;
    if (n > (16u << 20)) {
      free(buf);
      fclose(f);
      return mk_fail(err, "config %s: larger than 16 MiB", path);
    }
  }
  int rd_err = ferror(f);
  fclose(f);
  if (rd_err) {
    free(buf);
    return mk_fail(err, "config %s: read error", path);
  }
  buf[n] = 0;
  int rc = mk_gen_opts_load_json_text(o, buf, path, err);
  free(buf);
  return rc;
}

/* Splits "--name=value" / "--name value" / "--no-name". Returns the number of argv entries
 * consumed (1 or 2), or -1 with err. */
static int next_flag(int argc, char **argv, int i, const opt_def_t **d_out, const char **v_out,
                     char *name_buf, size_t cap, mk_error_t *err) {
  const char *a = argv[i];
  if (a[0] != '-' || a[1] != '-' || !a[2])
    return mk_fail(err, "unexpected argument '%s' (generate takes only --flags)", a);
  const char *body = a + 2;
  const char *eq = strchr(body, '=');
  size_t nl = eq ? (size_t)(eq - body) : strlen(body);
  if (nl >= cap) return mk_fail(err, "unknown flag '%s'", a);
  memcpy(name_buf, body, nl);
  name_buf[nl] = 0;
  if (strchr(name_buf, '_')) return mk_fail(err, "unknown flag '--%s' (flags use '-')", name_buf);
  const opt_def_t *d = opt_find(name_buf);
  bool negated = false;
  if (!d && strncmp(name_buf, "no-", 3) == 0) {
    d = opt_find(name_buf + 3);
    if (d && d->kind != K_BOOL) d = NULL;
    negated = d != NULL;
  }
  if (!d) return mk_fail(err, "unknown flag '--%s'", name_buf);
  *d_out = d;
  if (negated) {
    if (eq) return mk_fail(err, "--%s takes no value", name_buf);
    *v_out = "false";
    return 1;
  }
  if (eq) {
    *v_out = eq + 1;
    return 1;
  }
  if (d->kind == K_BOOL) {
    *v_out = NULL;
    return 1;
  }
  if (i + 1 >= argc) return mk_fail(err, "--%s needs a value (%s)", d->name, d->arg);
  *v_out = argv[i + 1];
  return 2;
}

int mk_gen_opts_parse_args(mk_gen_opts_t *o, int argc, char **argv, bool *help, mk_error_t *err) {
  *help = false;
  for (int i = 1; i < argc; i++)
    if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
      *help = true;
      return 0;
    }
  /* pass 1: the config file, so that flags win whatever their order */
  char name[64];
  for (int i = 1; i < argc;) {
    const opt_def_t *d;
    const char *v;
    int used = next_flag(argc, argv, i, &d, &v, name, sizeof name, err);
    if (used < 0) return -1;
    if (d->id == O_CONFIG) {
      if (o->config) return mk_fail(err, "--config given twice");
      if (opt_apply(o, d, v, err) != 0) return -1;
      if (mk_gen_opts_load_json(o, o->config, err) != 0) return -1;
    }
    i += used;
  }
  /* pass 2: everything else. Stop strings from flags replace those of the config. */
  bool stop_reset = false;
  for (int i = 1; i < argc;) {
    const opt_def_t *d;
    const char *v;
    int used = next_flag(argc, argv, i, &d, &v, name, sizeof name, err);
    if (used < 0) return -1;
    if (d->id != O_CONFIG) {
      if (d->id == O_STOP && !stop_reset) {
        for (int k = 0; k < o->n_stop; k++) free(o->stop[k]);
        o->n_stop = 0;
        stop_reset = true;
      }
      if (opt_apply(o, d, v, err) != 0) return -1;
    }
    i += used;
  }
  return 0;
}

int mk_gen_opts_check(const mk_gen_opts_t *o, mk_error_t *err) {
  if (!o->model) return mk_fail(err, "no model: pass --model PATH (or \"model\" in --config)");
  if (o->batch_file && (o->prompt || o->prompt_file))
    return mk_fail(err, "--batch-file and --%s both given: the prompts come from the batch file",
                   o->prompt ? "prompt" : "prompt-file");
  if (!o->batch_file && (o->out || o->ordered || o->kv_memory))
    return mk_fail(err, "--%s needs --batch-file", o->out ? "out" : o->ordered ? "ordered" : "kv-memory");
  if (o->prompt && o->prompt_file)
    return mk_fail(err, "--prompt and --prompt-file both given: pass one");
  if (!o->prompt && !o->prompt_file && !o->batch_file)
    return mk_fail(err, "no prompt: pass --prompt TEXT, --prompt-file FILE or --batch-file FILE");
  if (o->system && !o->chat) return mk_fail(err, "--system needs --chat");
  const mk_kv_policy_ops_t *ops = mk_kv_policy_get(o->kv.policy);
  if (!ops)
    return mk_fail(err, "--kv-policy %s: not available in this build", mk_kv_policy_name(o->kv.policy));
  if (ops->validate && ops->validate(&o->kv, err) != 0) {
    prefix_err(err, "--kv-policy", mk_kv_policy_name(o->kv.policy));
    return -1;
  }
  return 0;
}

void mk_gen_opts_usage(FILE *f) {
  for (size_t i = 0; i < N_OPTS; i++) {
    const opt_def_t *d = &OPTS[i];
    char left[96];
    if (d->kind == K_BOOL) snprintf(left, sizeof left, "--%s", d->name);
    else snprintf(left, sizeof left, "--%s %s", d->name, d->arg);
    if (strlen(left) > 28) fprintf(f, "  %s\n  %-28s %s\n", left, "", d->help);
    else fprintf(f, "  %-28s %s\n", left, d->help);
  }
  fprintf(f,
          "\nBoolean flags also take --no-NAME. Config keys are the flag names with '_' for '-'\n"
          "(\"max_new_tokens\": 64); flags win over the config file. Paths expand ${VAR},\n"
          "${VAR:-default} and a leading ~/.\n");
}
