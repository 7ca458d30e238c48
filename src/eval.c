/* `morphkv eval`: the fidelity harness. How much does a cache policy change what the model says?
 *
 * For each prompt, a reference engine with the full cache generates greedily; every policy under
 * test (one engine per policy and budget, all on the same memory-mapped weights) is fed exactly
 * the reference's tokens (teacher forcing). The engines run in lockstep, one token at a time, so
 * the reference's step-t logits are compared at once with each policy's step-t logits and no
 * (positions x vocabulary) logits are ever stored. Generating first and replaying afterwards
 * would give the same numbers: the policy engines only ever see the reference's tokens.
 *
 * Per position t (t = 0 is the distribution after the prompt, which predicts generated token 0):
 *   kl      = KL(full || policy) = sum_i p_i (log p_i - log q_i), log-softmax in fp64
 *   agree   = the policy's greedy choice equals the reference token
 *   loglik  = log q(reference token)
 *   kv      = the policy's live K/V bytes at that point (after its eviction)
 * The reference never picks an end-of-generation token (their logits are skipped by the argmax;
 * HF's min_new_tokens does the same), so every prompt yields exactly N tokens of the assistant's
 * turn; --stop-at-eos ends a prompt at its first end-of-generation token instead. The KL still
 * covers the whole vocabulary. KL of nearly equal distributions can come out a few ulps below 0
 * in floating point; such values are written as 0.
 *
 * Budgets: --capacity gives C in tokens; --budget-frac f gives C = round(f x (prompt + N)), the
 * fraction of the full cache at the end of the prompt. `full` in --policies runs a second
 * full-cache engine: its KL must be exactly 0 (a determinism check of the whole setup).
 *
 * Collective: every rank of ctx parses the same arguments, reads the same prompt file and runs the
 * same steps (the engine gives every rank the full logits); rank 0 alone writes files and
 * progress. A failure where all ranks stand at the same point ends with mk_cli_agree; a failure
 * inside a step aborts the run (mk_cli_fail), as in `generate` (src/cli.h). */
#define _POSIX_C_SOURCE 200809L
#include "src/eval.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <float.h>
#include <limits.h>
#include <math.h>
#include <mpi.h>
#include <omp.h>
#include <spawn.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <jansson.h>

#include "src/cli.h"
#include "src/config.h"
#include "src/engine.h"
#include "src/eval_metrics.h"
#include "src/sampler.h"
#include "src/tokenizer.h"

extern char **environ;

enum { EV_OK = 0, EV_FAIL = 1, EV_USAGE = 2 };
#define EV_MAX_BUDGETS 16
#define EV_MAX_POL 32
#define EV_MAX_Q 8 /* questions per prompt (--task recall) */

/* One --policies item: a policy, optionally with its own settings ("morphkv:w8:s4:fmax"): w<N>
 * window, s<N> sinks, fsum / fmax fusion, x<F> capacity scale (capacity = F x the budget's, e.g.
 * streaming:x1.3 to give StreamingLLM the bytes MorphKV spends on its scoring state). A variant whose settings do not fit a prompt's budget
 * (e.g. W >= C) skips that prompt and says so, where a plain policy is an error. */
typedef struct eval_pol {
  mk_kv_policy_kind_t kind;
  char name[32]; /* "morphkv", "morphkv-w8-s4" (file names, tables) */
  int window, sinks, fusion; /* -1: as --window / --kv-sinks / --kv-fusion */
  double scale;              /* capacity scale (1) */
  bool variant;
} eval_pol_t;

/* ---- options -------------------------------------------------------------------------------- */

typedef struct eval_opts {
  mk_gen_opts_t g; /* model, threads, chat template, system, kv-* settings, backend, simd, tp */
  char *prompts, *out, *plot_script;
  int new_tokens, n_prompts, min_words, skip;
  eval_pol_t pol[EV_MAX_POL];
  int n_pol;
  int caps[EV_MAX_BUDGETS];
  int n_caps;
  double fracs[EV_MAX_BUDGETS];
  int n_fracs;
  bool chat, stop_at_eos, plot, quiet, concurrent;
  int task; /* EV_TASK_* */
} eval_opts_t;

/* --task: replay (the reference's tokens, teacher-forced), recall (replay, then questions about
 * facts stated in the prompt), free (every engine writes its own tokens). */
enum { EV_TASK_REPLAY = 0, EV_TASK_RECALL, EV_TASK_FREE };

static void usage_eval(FILE *f) {
  fprintf(f,
          "usage: morphkv eval --model M --prompts FILE.jsonl --new-tokens N\n"
          "                    --policies full,morphkv,streaming,h2o,snapkv\n"
          "                    (--capacity C1,C2,... | --budget-frac F1,F2,...) --out DIR [options]\n"
          "\n"
          "Fidelity harness. For each prompt, the full cache generates N tokens greedily (the\n"
          "reference); every policy and budget replays exactly those tokens, in lockstep with the\n"
          "reference, and is scored per position: KL(full || policy) of the next-token\n"
          "distributions (fp64), top-1 agreement with the reference token, and the policy's\n"
          "log-likelihood of it. Writes DIR/<prompt>_<policy>_<budget>.csv (position, kl,\n"
          "top1_agree, loglik, kv_bytes), DIR/<prompt>_reference.txt, DIR/summary.md,\n"
          "DIR/summary.csv, and PNG plots via tools/plot_eval.py when python3 with matplotlib\n"
          "is available. Progress on stderr.\n"
          "\n"
          "options:\n"
          "  --model PATH            GGUF model\n"
          "  --prompts FILE          JSON lines, one object a line with a \"prompt\" string\n"
          "                          (and optionally \"length\", the requested words)\n"
          "  --new-tokens N          tokens generated per prompt\n"
          "  --policies LIST         comma-separated: full,morphkv,streaming,h2o,snapkv\n"
          "                          (full = a second full-cache engine; its KL must be 0);\n"
          "                          an item may carry its own settings, e.g. morphkv:w8,\n"
          "                          morphkv:s4, morphkv:fmax (w<N> window, s<N> sinks,\n"
          "                          fsum|fmax fusion, x<F> capacity x F); such a variant skips\n"
          "                          the prompts whose budget it does not fit (W + S >= C)\n"
          "  --task replay|recall|free\n"
          "                          replay (default): the policies replay the reference's\n"
          "                          tokens. recall: replay, then each of the prompt's\n"
          "                          \"questions\" ({question, answer_prefix, answer}) is\n"
          "                          appended as a new user turn and the answer is scored\n"
          "                          (teacher-forced log-lik, greedy exact match) -> recall.csv.\n"
          "                          free: every engine writes its own N tokens (EOS ends it)\n"
          "                          -> free.csv (length, repeated 4-grams, distinct-2, first\n"
          "                          divergence from the full cache)\n"
          "  --capacity LIST         cache budgets C in tokens, e.g. 256,512\n"
          "  --budget-frac LIST      budgets as fractions of prompt + N, e.g. 0.1,0.25,0.5\n"
          "  --window W              recent window W (morphkv, h2o; snapkv's observation\n"
          "                          window) (default 32)\n"
          "  --out DIR               output directory (created)\n"
          "  --n-prompts K           use the first K prompts that pass the filters (default all)\n"
          "  --min-words N           only prompts whose \"length\" is >= N\n"
          "  --skip K                skip the first K prompts that pass the filters\n"
          "  --chat / --no-chat      apply the model's chat template (default on)\n"
          "  --chat-template T       chatml|llama3|llama2 (default: detected from the model)\n"
          "  --system TEXT           system prompt for --chat\n"
          "  --stop-at-eos           end a prompt at the reference's first end-of-generation\n"
          "                          token (default: the reference never picks one)\n"
          "  --threads N             CPU threads (default: cores / ranks per node)\n"
          "  --concurrent            step the engines at the same time, one thread each (a\n"
          "                          world of one only); decode tok/s is then per thread\n"
          "  --temperature T, --top-k K, --top-p P, --min-p P, --repeat-penalty R,\n"
          "  --repeat-last-n N, --seed S\n"
          "                          how the reference (and, with --task free, every engine)\n"
          "                          picks tokens, as in `morphkv generate`; default greedy\n"
          "                          (T = 0), no penalty. Agreement is then the policy's\n"
          "                          greedy choice after the same penalty vs the full cache's\n"
          "  --config FILE           JSON keys of `morphkv generate` (e.g. repeat_penalty,\n"
          "                          kv_sinks); the flags win\n"
          "  --kv-fusion sum|max, --kv-gqa logit_sum|prob_max, --kv-sinks S,\n"
          "  --kv-evict-after F, --kv-dtype f32|f16, --kv-h2o-mode group|per_head,\n"
          "  --kv-snapkv-pool N, --kv-snapkv-pooling avg|max\n"
          "                          policy settings, as in `morphkv generate` (all runs;\n"
          "                          --kv-dtype applies to the reference too)\n"
          "  --backend cpu|cuda, --simd auto|scalar|avx2|avx512, --tp N\n"
          "  --plot-script PATH      plotting script (default: tools/plot_eval.py found next to\n"
          "                          the binary's source tree, or $MORPHKV_PLOT_SCRIPT)\n"
          "  --no-plot               do not make plots\n"
          "  --quiet                 no progress on stderr\n");
}

/* flags of `generate` that eval accepts and passes to mk_gen_opts_set */
static const char *const SHARED_FLAGS[] = {
    "model",      "threads",         "chat-template",  "system",   "kv-fusion",
    "kv-gqa",     "kv-sinks",        "kv-evict-after", "kv-dtype", "kv-h2o-mode",
    "kv-snapkv-pool", "kv-snapkv-pooling", "backend",  "simd",     "tp",
    "temperature", "top-k", "top-p", "min-p", "repeat-penalty", "repeat-last-n", "seed",
};

static int parse_int_arg(const char *flag, const char *v, long lo, long hi, int *out,
                         mk_error_t *err) {
  char *end;
  errno = 0;
  long x = strtol(v, &end, 10);
  if (errno || end == v || *end) return mk_fail(err, "--%s: '%s' is not an integer", flag, v);
  if (x < lo || x > hi) return mk_fail(err, "--%s: %ld is out of range [%ld, %ld]", flag, x, lo, hi);
  *out = (int)x;
  return 0;
}

/* Splits a comma-separated list into at most cap items (in place on a copy). */
static int split_list(const char *flag, const char *v, char *buf, size_t bufcap, char **items,
                      int cap, mk_error_t *err) {
  if (strlen(v) >= bufcap) return mk_fail(err, "--%s: list too long", flag);
  strcpy(buf, v);
  int n = 0;
  char *s = buf;
  for (;;) {
    char *comma = strchr(s, ',');
    if (comma) *comma = 0;
    if (!*s) return mk_fail(err, "--%s: empty item in '%s'", flag, v);
    if (n >= cap) return mk_fail(err, "--%s: at most %d items", flag, cap);
    items[n++] = s;
    if (!comma) break;
    s = comma + 1;
  }
  return n;
}

static int set_str(char **dst, const char *v, mk_error_t *err) {
  char *s = mk_expand_path(v, err);
  if (!s) return -1;
  free(*dst);
  *dst = s;
  return 0;
}

/* "policy[:opt...]" into *p (see eval_pol_t). */
static int parse_pol(char *item, eval_pol_t *p, mk_error_t *err) {
  memset(p, 0, sizeof *p);
  p->window = p->sinks = p->fusion = -1;
  p->scale = 1.0;
  char *colon = strchr(item, ':');
  if (colon) *colon = 0;
  if (mk_kv_policy_parse(item, &p->kind) != 0)
    return mk_fail(err, "--policies: unknown policy '%s' (full|morphkv|streaming|h2o|snapkv)", item);
  if (!mk_kv_policy_get(p->kind))
    return mk_fail(err, "--policies: %s is not available in this build", item);
  snprintf(p->name, sizeof p->name, "%s", item);
  for (char *opt = colon ? colon + 1 : NULL; opt;) {
    char *next = strchr(opt, ':');
    if (next) *next++ = 0;
    char *end = NULL;
    long x = (opt[0] == 'w' || opt[0] == 's') && opt[1] ? strtol(opt + 1, &end, 10) : -1;
    char *xend = NULL;
    double xs = opt[0] == 'x' && opt[1] ? strtod(opt + 1, &xend) : 0.0;
    if (xend && !*xend && xs >= 0.01 && xs <= 100.0) p->scale = xs;
    else if (!strcmp(opt, "fmax") || !strcmp(opt, "fsum")) p->fusion = opt[1] == 'm' ? MK_KV_FUSION_MAX : MK_KV_FUSION_SUM;
    else if (end && !*end && x >= 0 && x <= 1 << 20 && opt[0] == 'w') p->window = (int)x;
    else if (end && !*end && x >= 0 && x <= 1 << 20) p->sinks = (int)x;
    else return mk_fail(err, "--policies %s: unknown setting '%s' (w<N>, s<N>, fsum, fmax, x<F>)", p->name, opt);
    size_t l = strlen(p->name);
    if (p->kind == MK_KV_FULL || l + strlen(opt) + 2 > sizeof p->name)
      return mk_fail(err, "--policies %s: settings only for budgeted policies, and short names", p->name);
    snprintf(p->name + l, sizeof p->name - l, "-%s", opt);
    p->variant = true;
    opt = next;
  }
  return 0;
}

/* The settings of one policy item: --kv-* and --window, then the item's own. */
static mk_kv_config_t pol_kv(const mk_kv_config_t *base, const eval_pol_t *p) {
  mk_kv_config_t kv = *base;
  kv.policy = p->kind;
  if (p->window >= 0) kv.window = p->window;
  if (p->sinks >= 0) kv.sinks = p->sinks;
  if (p->fusion >= 0) kv.fusion = (mk_kv_fusion_t)p->fusion;
  return kv;
}

static int opts_apply(eval_opts_t *o, const char *name, const char *v, mk_error_t *err) {
  char buf[1024];
  char *items[EV_MAX_BUDGETS > EV_MAX_POL ? EV_MAX_BUDGETS : EV_MAX_POL];
  if (!strcmp(name, "prompts")) return set_str(&o->prompts, v, err);
  if (!strcmp(name, "out")) return set_str(&o->out, v, err);
  if (!strcmp(name, "plot-script")) return set_str(&o->plot_script, v, err);
  if (!strcmp(name, "new-tokens")) return parse_int_arg(name, v, 1, INT_MAX / 4, &o->new_tokens, err);
  if (!strcmp(name, "n-prompts")) return parse_int_arg(name, v, 1, INT_MAX, &o->n_prompts, err);
  if (!strcmp(name, "min-words")) return parse_int_arg(name, v, 0, INT_MAX, &o->min_words, err);
  if (!strcmp(name, "skip")) return parse_int_arg(name, v, 0, INT_MAX, &o->skip, err);
  if (!strcmp(name, "window")) return parse_int_arg(name, v, 0, INT_MAX / 4, &o->g.kv.window, err);
  if (!strcmp(name, "config")) return 0; /* loaded first, in opts_parse */
  if (!strcmp(name, "task")) {
    static const char *const tasks[] = {"replay", "recall", "free"};
    for (int i = 0; i < 3; i++)
      if (!strcmp(v, tasks[i])) return o->task = i, 0;
    return mk_fail(err, "--task: '%s' is not replay, recall or free", v);
  }
  if (!strcmp(name, "policies")) {
    int n = split_list(name, v, buf, sizeof buf, items, EV_MAX_POL, err);
    if (n < 0) return -1;
    for (int i = 0; i < n; i++) {
      if (parse_pol(items[i], &o->pol[i], err) != 0) return -1;
      for (int j = 0; j < i; j++)
        if (!strcmp(o->pol[j].name, o->pol[i].name))
          return mk_fail(err, "--policies: '%s' given twice", items[i]);
    }
    o->n_pol = n;
    return 0;
  }
  if (!strcmp(name, "capacity")) {
    int n = split_list(name, v, buf, sizeof buf, items, EV_MAX_BUDGETS, err);
    if (n < 0) return -1;
    for (int i = 0; i < n; i++)
      if (parse_int_arg(name, items[i], 1, INT_MAX / 4, &o->caps[i], err) != 0) return -1;
    o->n_caps = n;
    return 0;
  }
  if (!strcmp(name, "budget-frac")) {
    int n = split_list(name, v, buf, sizeof buf, items, EV_MAX_BUDGETS, err);
    if (n < 0) return -1;
    for (int i = 0; i < n; i++) {
      char *end;
      errno = 0;
      double f = strtod(items[i], &end);
      if (errno || end == items[i] || *end || !isfinite(f))
        return mk_fail(err, "--budget-frac: '%s' is not a number", items[i]);
      if (!(f > 0.0 && f <= 1.0)) return mk_fail(err, "--budget-frac: %g is not in (0, 1]", f);
      o->fracs[i] = f;
    }
    o->n_fracs = n;
    return 0;
  }
  for (size_t i = 0; i < sizeof SHARED_FLAGS / sizeof SHARED_FLAGS[0]; i++)
    if (!strcmp(name, SHARED_FLAGS[i])) return mk_gen_opts_set(&o->g, name, v, err);
  return mk_fail(err, "unknown flag '--%s'", name);
}

static bool is_bool_flag(const char *name) {
  return !strcmp(name, "chat") || !strcmp(name, "no-chat") || !strcmp(name, "stop-at-eos") ||
         !strcmp(name, "no-plot") || !strcmp(name, "quiet") || !strcmp(name, "concurrent");
}

static void opts_free(eval_opts_t *o) {
  mk_gen_opts_free(&o->g);
  free(o->prompts);
  free(o->out);
  free(o->plot_script);
  memset(o, 0, sizeof *o);
}

static int opts_parse(eval_opts_t *o, int argc, char **argv, bool *help, mk_error_t *err) {
  memset(o, 0, sizeof *o);
  mk_gen_opts_default(&o->g);
  o->g.sampling.temperature = 0.0f; /* the reference is greedy unless --temperature / the config */
  o->chat = true;
  o->plot = true;
  *help = false;
  for (int i = 1; i < argc; i++)
    if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
      *help = true;
      return 0;
    }
  for (int i = 1; i < argc; i++) { /* --config FILE first: the flags win over its keys */
    const char *a = argv[i];
    const char *path = !strncmp(a, "--config=", 9) ? a + 9 : !strcmp(a, "--config") && i + 1 < argc ? argv[i + 1] : NULL;
    if (path && mk_gen_opts_load_json(&o->g, path, err) != 0) return -1;
  }
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (a[0] != '-' || a[1] != '-' || !a[2])
      return mk_fail(err, "unexpected argument '%s' (eval takes only --flags)", a);
    char name[64];
    const char *eq = strchr(a + 2, '=');
    size_t nl = eq ? (size_t)(eq - (a + 2)) : strlen(a + 2);
    if (nl >= sizeof name) return mk_fail(err, "unknown flag '%s'", a);
    memcpy(name, a + 2, nl);
    name[nl] = 0;
    if (is_bool_flag(name)) {
      if (eq) return mk_fail(err, "--%s takes no value", name);
      if (!strcmp(name, "chat")) o->chat = true;
      else if (!strcmp(name, "no-chat")) o->chat = false;
      else if (!strcmp(name, "stop-at-eos")) o->stop_at_eos = true;
      else if (!strcmp(name, "no-plot")) o->plot = false;
      else if (!strcmp(name, "concurrent")) o->concurrent = true;
      else o->quiet = true;
      continue;
    }
    const char *v;
    if (eq) {
      v = eq + 1;
    } else {
      if (i + 1 >= argc) return mk_fail(err, "--%s needs a value", name);
      v = argv[++i];
    }
    if (opts_apply(o, name, v, err) != 0) return -1;
  }
  /* what only makes sense once everything is set */
  if (!o->g.model) return mk_fail(err, "no model: pass --model PATH");
  if (!o->prompts) return mk_fail(err, "no prompts: pass --prompts FILE.jsonl");
  if (!o->out) return mk_fail(err, "no output directory: pass --out DIR");
  if (o->new_tokens <= 0) return mk_fail(err, "pass --new-tokens N (N >= 1)");
  if (o->n_pol == 0) return mk_fail(err, "no policies: pass --policies, e.g. morphkv,streaming");
  if (o->g.system && !o->chat) return mk_fail(err, "--system needs --chat");
  if (o->concurrent && o->g.tp > 1) return mk_fail(err, "--concurrent needs a world of one (no --tp)");
  bool budgeted = false;
  for (int i = 0; i < o->n_pol; i++) budgeted |= o->pol[i].kind != MK_KV_FULL;
  if (o->n_caps && o->n_fracs) return mk_fail(err, "--capacity and --budget-frac both given: pass one");
  if (budgeted && !o->n_caps && !o->n_fracs)
    return mk_fail(err, "no budgets: pass --capacity C1,C2,... or --budget-frac F1,F2,...");
  /* settings checked by each policy (fraction budgets are checked per prompt) */
  for (int i = 0; i < o->n_pol; i++) {
    const mk_kv_policy_ops_t *ops = mk_kv_policy_get(o->pol[i].kind);
    mk_kv_config_t kv = pol_kv(&o->g.kv, &o->pol[i]);
    int n_check = o->pol[i].kind == MK_KV_FULL ? 1 : o->n_caps ? o->n_caps : 1;
    for (int b = 0; b < n_check; b++) {
      /* fraction budgets: only the settings other than the capacity can be checked here */
      kv.capacity = o->n_caps ? o->caps[b] : kv.window + mk_kv_sinks(&kv) + 1;
      if (o->pol[i].variant && o->n_caps) continue; /* checked per budget: skipped if it fails */
      if (ops->validate && ops->validate(&kv, err) != 0) {
        mk_error_prefix(err, "--policies %s", o->pol[i].name);
        return -1;
      }
    }
  }
  return 0;
}

/* ---- prompts -------------------------------------------------------------------------------- */

typedef struct eval_prompt {
  int line;    /* 0-based line in the file (names the output files) */
  char *text;  /* the "prompt" string */
  /* --task recall: "questions": [{"question", "answer_prefix", "answer"}, ...] */
  int n_q;
  char *q[EV_MAX_Q], *q_prefix[EV_MAX_Q], *q_answer[EV_MAX_Q];
} eval_prompt_t;

static void prompts_free(eval_prompt_t *p, int n) {
  for (int i = 0; i < n; i++) {
    free(p[i].text);
    for (int k = 0; k < p[i].n_q; k++) free(p[i].q[k]), free(p[i].q_prefix[k]), free(p[i].q_answer[k]);
  }
  free(p);
}

/* The "questions" of one prompt line (--task recall). */
static int prompt_questions(const eval_opts_t *o, json_t *obj, int ln, eval_prompt_t *p, mk_error_t *err) {
  json_t *qs = json_object_get(obj, "questions");
  if (!json_is_array(qs) || json_array_size(qs) == 0 || json_array_size(qs) > EV_MAX_Q)
    return mk_fail(err, "--prompts %s:%d: --task recall needs \"questions\": an array of 1 to %d objects",
                   o->prompts, ln + 1, EV_MAX_Q);
  size_t i;
  json_t *q;
  json_array_foreach(qs, i, q) {
    const char *f[3] = {"question", "answer_prefix", "answer"};
    char **dst[3] = {&p->q[i], &p->q_prefix[i], &p->q_answer[i]};
    for (int k = 0; k < 3; k++) {
      json_t *v = json_object_get(q, f[k]);
      if (!json_is_string(v) || (k != 1 && !*json_string_value(v)))
        return mk_fail(err, "--prompts %s:%d: questions[%zu] has no \"%s\" string", o->prompts, ln + 1, i, f[k]);
      if (!(*dst[k] = strdup(json_string_value(v)))) return mk_fail(err, "out of memory");
    }
    p->n_q = (int)i + 1;
  }
  return 0;
}

/* Reads the JSON-lines file; keeps prompts with length >= min_words, skips `skip`, keeps at most
 * n_max (0 = all). */
static int prompts_read(const eval_opts_t *o, eval_prompt_t **out, int *n_out, mk_error_t *err) {
  *out = NULL;
  *n_out = 0;
  FILE *f = fopen(o->prompts, "rb");
  if (!f) return mk_fail(err, "--prompts %s: %s", o->prompts, strerror(errno));
  eval_prompt_t *ps = NULL;
  int n = 0, cap = 0, passed = 0, rc = 0;
  char *line = NULL;
  size_t lcap = 0;
  ssize_t len;
  for (int ln = 0; (len = getline(&line, &lcap, f)) >= 0; ln++) {
    while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r')) line[--len] = 0;
    if (len == 0) continue;
    json_error_t je;
    json_t *obj = json_loads(line, 0, &je);
    if (!obj || !json_is_object(obj)) {
      rc = mk_fail(err, "--prompts %s:%d: %s", o->prompts, ln + 1, obj ? "not a JSON object" : je.text);
      json_decref(obj);
      break;
    }
    json_t *pt = json_object_get(obj, "prompt");
    if (!json_is_string(pt)) {
      rc = mk_fail(err, "--prompts %s:%d: no \"prompt\" string", o->prompts, ln + 1);
      json_decref(obj);
      break;
    }
    json_t *lt = json_object_get(obj, "length");
    long words = json_is_integer(lt) ? (long)json_integer_value(lt) : -1;
    bool keep = o->min_words <= 0 || words >= o->min_words;
    if (keep && passed++ < o->skip) keep = false;
    if (keep && (o->n_prompts <= 0 || n < o->n_prompts)) {
      if (n == cap) {
        cap = cap ? cap * 2 : 16;
        eval_prompt_t *t = realloc(ps, sizeof *ps * (size_t)cap);
        if (!t) {
          rc = mk_fail(err, "out of memory");
          json_decref(obj);
          break;
        }
        ps = t;
      }
      memset(&ps[n], 0, sizeof ps[n]);
      ps[n].line = ln;
      ps[n].text = strdup(json_string_value(pt));
      n++;
      if (!ps[n - 1].text) rc = mk_fail(err, "out of memory");
      else if (o->task == EV_TASK_RECALL) rc = prompt_questions(o, obj, ln, &ps[n - 1], err);
      if (rc != 0) {
        json_decref(obj);
        break;
      }
    }
    json_decref(obj);
  }
  free(line);
  if (rc == 0 && ferror(f)) rc = mk_fail(err, "--prompts %s: read error", o->prompts);
  fclose(f);
  if (rc == 0 && n == 0) rc = mk_fail(err, "--prompts %s: no prompt passes the filters", o->prompts);
  if (rc != 0) {
    prompts_free(ps, n);
    return -1;
  }
  *out = ps;
  *n_out = n;
  return 0;
}

/* The prompt's token ids (malloc'd), with the chat template when o->chat: encoded as `generate`
 * encodes (mk_cli_encode_prompt). */
static int prompt_tokenize(const eval_opts_t *o, const mk_engine_t *e, const char *prompt,
                           int32_t **ids_out, int *n_out, mk_error_t *err) {
  return mk_cli_encode_prompt(e, prompt, o->chat, o->g.chat_template, o->g.system, ids_out, n_out, err);
}

/* ---- runs ----------------------------------------------------------------------------------- */

/* Sums of one stratum of positions. */
typedef struct ev_acc {
  double kl, agree, ll;
  long n;
} ev_acc_t;
enum { EV_NOLOOP = 3, EV_N_ACC = 4 };

static void acc_add(ev_acc_t *a, double kl, int agree, double ll) {
  a->kl += kl, a->agree += agree, a->ll += ll, a->n++;
}

/* One (policy, budget) replay: an engine, its settings for the current prompt, its figures. */
typedef struct eval_run {
  mk_kv_policy_kind_t policy;
  const char *name;  /* the --policies item, e.g. "morphkv-w8" (in the options) */
  double scale;      /* capacity = scale x the budget's */
  bool variant;      /* an item with its own settings: skips prompts whose budget it does not fit */
  bool skip;         /* this prompt: not run (a variant whose settings do not fit the budget) */
  int n_skipped;     /* prompts skipped so */
  int budget;        /* index into caps/fracs; -1: no budget (full) */
  char label[32];    /* budget label in file names: "c256", "10pct", "all" */
  mk_engine_t *e;
  mk_kv_config_t kv; /* capacity set per prompt */
  float *logits;     /* (n_vocab) */
  FILE *csv;
  /* this prompt */
  double p_kl, p_agree, p_ll, p_step_s, p_prefill_s;
  long p_n, p_steps;
  size_t p_peak, p_state;
  /* all prompts */
  double kl, agree, ll, step_s, prefill_s, cap_sum;
  long n, steps;
  int n_prompts;
  size_t peak, state; /* max over prompts of peak K/V bytes and policy state bytes */
  double max_kl;
  /* distance strata (src/eval_metrics.h): [MK_EV_NOVEL], [MK_EV_LOCAL], [MK_EV_LONG], and
   * [EV_NOLOOP] = the positions outside a repeated-n-gram loop; p_acc this prompt, acc all */
  ev_acc_t p_acc[EV_N_ACC], acc[EV_N_ACC];
  float *scratch;         /* (n_vocab) penalised logits for the greedy choice */
  /* --task recall: this question's answer; over all questions, and those the full cache got */
  mk_ev_answer_t ans;
  long rq_all, rq_exact_all, rq_kept, rq_exact_kept;
  double rq_ll_all, rq_ll_kept;
  /* --task free: its own tokens (prompt + generated), sampler, and the figures summed over prompts */
  mk_sampler_t *sampler;
  int32_t *fseq;
  int f_n;
  bool f_done, f_eos;
  double f_len, f_ratio, f_rep4, f_d2, f_div, f_loop;
  int f_cnt, f_n_eos;
} eval_run_t;

static double now_s(void) { return MPI_Wtime(); }

/* log-sum-exp of logits (fp64) */
static double lse_f64(const float *l, int n) {
  double m = -INFINITY;
  for (int i = 0; i < n; i++)
    if (l[i] > m) m = l[i];
  double s = 0.0;
  for (int i = 0; i < n; i++) s += exp((double)l[i] - m);
  return m + log(s);
}

/* Greedy choice: the largest logit (ties to the lowest id), skipping masked ids (mask may be
 * NULL). */
static int32_t argmax_masked(const float *l, int n, const unsigned char *mask) {
  int32_t best = -1;
  float bv = -INFINITY;
  for (int i = 0; i < n; i++) {
    if (mask && mask[i]) continue;
    if (best < 0 || l[i] > bv) {
      best = i;
      bv = l[i];
    }
  }
  return best;
}

/* mkdir -p */
static int make_dirs(const char *path, mk_error_t *err) {
  char buf[4096];
  size_t n = strlen(path);
  if (n == 0 || n >= sizeof buf) return mk_fail(err, "--out %s: bad path", path);
  memcpy(buf, path, n + 1);
  for (size_t i = 1; i <= n; i++) {
    if (buf[i] == '/' || buf[i] == 0) {
      char c = buf[i];
      buf[i] = 0;
      if (mkdir(buf, 0777) != 0 && errno != EEXIST)
        return mk_fail(err, "--out: cannot create %s: %s", buf, strerror(errno));
      buf[i] = c;
    }
  }
  struct stat sb;
  if (stat(path, &sb) != 0 || !S_ISDIR(sb.st_mode)) return mk_fail(err, "--out %s: not a directory", path);
  return 0;
}

static FILE *open_out(const char *dir, const char *name, mk_error_t *err) {
  char path[4096];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  FILE *f = fopen(path, "w");
  if (!f) mk_fail(err, "cannot write %s: %s", path, strerror(errno));
  return f;
}

/* The command line, shell-quoted where needed. */
static void print_cmdline(FILE *f, int argc, char **argv) {
  fputs("morphkv", f);
  for (int i = 0; i < argc; i++) {
    const char *a = argv[i];
    bool plain = *a != 0;
    for (const char *c = a; *c; c++)
      if (!(isalnum((unsigned char)*c) || strchr("-_.,/=:+@%", *c))) plain = false;
    if (plain) {
      fprintf(f, " %s", a);
    } else {
      fputs(" '", f);
      for (const char *c = a; *c; c++) {
        if (*c == '\'') fputs("'\\''", f);
        else fputc(*c, f);
      }
      fputc('\'', f);
    }
  }
}

static const char *fmt_mib(size_t b, char *buf, size_t cap) {
  snprintf(buf, cap, "%.2f MiB", (double)b / (1024.0 * 1024.0));
  return buf;
}

/* ---- plots ---------------------------------------------------------------------------------- */

static int spawn_wait(char *const argv[], bool quiet_io) {
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  if (quiet_io) {
    posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
    posix_spawn_file_actions_addopen(&fa, 2, "/dev/null", O_WRONLY, 0);
  } else {
    posix_spawn_file_actions_adddup2(&fa, 2, 1); /* the script's output goes to stderr */
  }
  pid_t pid;
  int rc = posix_spawnp(&pid, argv[0], &fa, NULL, argv, environ);
  posix_spawn_file_actions_destroy(&fa);
  if (rc != 0) return -1;
  int status = 0;
  if (waitpid(pid, &status, 0) != pid) return -1;
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

/* The plotting script: --plot-script, $MORPHKV_PLOT_SCRIPT, or tools/plot_eval.py above the
 * binary (build trees sit inside the source tree). malloc'd, or NULL. */
static char *find_plot_script(const eval_opts_t *o) {
  if (o->plot_script) return strdup(o->plot_script);
  const char *env = getenv("MORPHKV_PLOT_SCRIPT");
  if (env && *env) return strdup(env);
  char exe[4096];
  ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
  if (n <= 0) return NULL;
  exe[n] = 0;
  char *slash = strrchr(exe, '/');
  if (!slash) return NULL;
  *slash = 0;
  static const char *const rel[] = {"/../tools/plot_eval.py", "/../../tools/plot_eval.py",
                                    "/../share/morphkv/plot_eval.py", "/tools/plot_eval.py"};
  for (size_t i = 0; i < sizeof rel / sizeof rel[0]; i++) {
    char cand[4096 + 64];
    snprintf(cand, sizeof cand, "%s%s", exe, rel[i]);
    if (access(cand, R_OK) == 0) return strdup(cand);
  }
  return NULL;
}

/* Rank 0: makes the tables and plots, or says why not. Without matplotlib the script still
 * writes its tables (strata.md, memory.md, recall.md, ...) and says there are no plots. */
static void make_plots(const eval_opts_t *o) {
  char *script = find_plot_script(o);
  if (!script) {
    fprintf(stderr, "[eval] plots skipped: tools/plot_eval.py not found (pass --plot-script)\n");
    return;
  }
  char *chk[] = {"python3", "-c", "import matplotlib", NULL};
  bool mpl = spawn_wait(chk, true) == 0;
  char *args[] = {"python3", script, o->out, NULL};
  int rc = spawn_wait(args, false);
  if (rc == -1)
    fprintf(stderr, "[eval] plots and tables skipped: python3 could not be run (then run: python3 %s %s)\n", script,
            o->out);
  else if (rc != 0)
    fprintf(stderr, "[eval] plotting failed (python3 %s %s exited with %d)\n", script, o->out, rc);
  else if (!o->quiet)
    fprintf(stderr, mpl ? "[eval] plots and tables written to %s\n"
                        : "[eval] tables written to %s (matplotlib not installed: no plots; Debian: "
                          "python3-matplotlib)\n",
            o->out);
  free(script);
}

/* ---- the harness ---------------------------------------------------------------------------- */

typedef struct eval_state {
  const eval_opts_t *o;
  mk_ctx_t *ctx;
  bool r0;
  mk_engine_t *ref;
  eval_run_t *runs;
  int n_runs, n_vocab;
  float *ref_logits;     /* (n_vocab) */
  double *ref_lp;        /* (n_vocab) log-softmax of the reference, fp64 */
  double *ref_p;         /* (n_vocab) its probabilities */
  unsigned char *eog;    /* (n_vocab) 1 for end-of-generation ids */
  /* reference figures */
  double ref_ll, ref_step_s, ref_prefill_s;
  long ref_n, ref_steps;
  size_t ref_peak;
  FILE *summary_csv, *recall_csv, *free_csv;
  mk_error_t *errs; /* (n_runs + 1) per-engine errors of step_all */
  float *ref_scratch;      /* (n_vocab) */
  mk_sampler_t *ref_sampler; /* picks the reference's tokens (--temperature, --repeat-penalty) */
  eval_run_t ref_run;      /* --task recall / free: the reference's answer and free-running state */
} eval_state_t;

/* The greedy choice under the repetition penalty (--repeat-penalty, llama.cpp semantics: each
 * distinct token among the last n of hist once, logit > 0 ? logit / R : logit * R), end-of-
 * generation ids masked unless --stop-at-eos. */
static int32_t greedy_choice(const eval_state_t *s, const float *logits, float *scratch,
                             const int32_t *hist, int n_hist) {
  const mk_sampler_params_t *sp = &s->o->g.sampling;
  const unsigned char *mask = s->o->stop_at_eos || s->o->task == EV_TASK_FREE ? NULL : s->eog;
  if (sp->repeat_penalty == 1.0f || sp->repeat_last_n == 0 || n_hist <= 0)
    return argmax_masked(logits, s->n_vocab, mask);
  memcpy(scratch, logits, sizeof(float) * (size_t)s->n_vocab);
  const int n = sp->repeat_last_n < 0 || sp->repeat_last_n > n_hist ? n_hist : sp->repeat_last_n;
  const float pen = sp->repeat_penalty;
  for (int i = n_hist - n; i < n_hist; i++) {
    const int32_t id = hist[i];
    if (id < 0 || id >= s->n_vocab || scratch[id] != logits[id]) continue; /* once per token */
    scratch[id] = logits[id] > 0.0f ? logits[id] / pen : logits[id] * pen;
  }
  return argmax_masked(scratch, s->n_vocab, mask);
}

/* The reference's next token: greedy (as greedy_choice), or drawn by its sampler when
 * --temperature > 0; end-of-generation ids are never drawn unless --stop-at-eos. */
static int32_t ref_token(eval_state_t *s, const int32_t *hist, int n_hist) {
  if (s->o->g.sampling.temperature <= 0.0f)
    return greedy_choice(s, s->ref_logits, s->ref_scratch, hist, n_hist);
  memcpy(s->ref_scratch, s->ref_logits, sizeof(float) * (size_t)s->n_vocab);
  if (!s->o->stop_at_eos)
    for (int i = 0; i < s->n_vocab; i++)
      if (s->eog[i]) s->ref_scratch[i] = -INFINITY;
  return mk_sampler_sample(s->ref_sampler, s->ref_scratch, hist, n_hist);
}

/* Scores one run's logits against the reference at one position. */
static void score_run(eval_state_t *s, eval_run_t *r, int32_t y, int32_t g, const int32_t *hist,
                      int n_hist, double *kl, int *agree_out, double *ll) {
  const int V = s->n_vocab;
  const float *q = r->logits;
  double lse = lse_f64(q, V), acc = 0.0;
  for (int i = 0; i < V; i++) acc += s->ref_p[i] * (s->ref_lp[i] - ((double)q[i] - lse));
  *kl = acc > 0.0 ? acc : 0.0;
  *agree_out = greedy_choice(s, q, r->scratch, hist, n_hist) == g;
  *ll = (double)q[y] - lse;
}

/* Feeds n tokens to the reference and to every run (a prefill when prefill). Each engine's time
 * goes to its run (p_prefill_s, or p_step_s and p_steps), the reference's to *ref_s. With
 * --concurrent the engines step at the same time, one thread each. */
static int step_all(eval_state_t *s, const int32_t *ids, int n, bool prefill, double *ref_s,
                    mk_error_t *err) {
  const int n_eng = s->n_runs + 1;
  int failed = -1;
#pragma omp parallel for schedule(dynamic, 1) num_threads(s->o->g.threads) if (s->o->concurrent)
  for (int k = 0; k < n_eng; k++) {
    eval_run_t *run = k < s->n_runs ? &s->runs[k] : NULL;
    if (run && run->skip) continue;
    /* --task free: each engine its own next token (ids == NULL), finished ones stand still */
    eval_run_t *fr = run ? run : &s->ref_run;
    if (!ids && fr->f_done) continue;
    const int32_t *tok = ids ? ids : &fr->fseq[fr->f_n - 1];
    mk_engine_t *e = run ? run->e : s->ref;
    float *logits = run ? run->logits : s->ref_logits;
    double t0 = now_s();
    if (mk_engine_step(e, 0, tok, n, false, logits, &s->errs[k]) != 0) {
#pragma omp critical(eval_fail)
      if (failed < 0 || k < failed) failed = k;
      continue;
    }
    double dt = now_s() - t0;
    if (!run) {
      *ref_s = dt;
    } else if (prefill) {
      run->p_prefill_s = dt;
    } else {
      run->p_step_s += dt;
      run->p_steps++;
    }
  }
  if (failed < 0) return 0;
  *err = s->errs[failed];
  if (failed < s->n_runs)
    mk_error_prefix(err, "%s/%s", s->runs[failed].name, s->runs[failed].label);
  else
    mk_error_prefix(err, "reference");
  return -1;
}

/* This prompt's capacities (--budget-frac: a fraction of prompt + N), every engine begun, and
 * (rank 0) the per-run CSV files. Status only: the caller agrees. */
static int prompt_begin(eval_state_t *s, const eval_prompt_t *pr, int n_prompt, int extra, mk_error_t *err) {
  const eval_opts_t *o = s->o;
  const int N = o->new_tokens, total = n_prompt + N; /* the budget's base; extra: questions */
  for (int r = 0; r < s->n_runs; r++) {
    eval_run_t *run = &s->runs[r];
    run->skip = false;
    if (run->budget < 0) continue;
    const double f = o->n_fracs ? o->fracs[run->budget] : 0.0;
    run->kv.capacity = (int)lround(run->scale * (o->n_fracs ? f * total : (double)o->caps[run->budget]));
    const mk_kv_policy_ops_t *ops = mk_kv_policy_get(run->policy);
    if ((o->n_fracs || run->variant) && ops->validate(&run->kv, err) != 0) {
      if (run->variant) { /* e.g. W >= C: this variant sits this prompt out */
        run->skip = true;
        run->n_skipped++;
        if (!o->quiet && s->r0)
          fprintf(stderr, "[eval] prompt line %d: %s/%s skipped: %s\n", pr->line, run->name, run->label, err->msg);
        continue;
      }
      mk_error_prefix(err, "prompt line %d: budget %g x (%d prompt + %d new tokens) = capacity %d",
                      pr->line, f, n_prompt, N, run->kv.capacity);
      return -1;
    }
  }
  mk_kv_config_t ref_kv;
  mk_kv_config_default(&ref_kv);
  ref_kv.dtype = o->g.kv.dtype;
  if (mk_engine_begin(s->ref, &ref_kv, 1, n_prompt, total + extra, err) != 0) return -1;
  for (int r = 0; r < s->n_runs; r++)
    if (!s->runs[r].skip && mk_engine_begin(s->runs[r].e, &s->runs[r].kv, 1, n_prompt, total + extra, err) != 0)
      return -1;
  if (!s->r0 || o->task == EV_TASK_FREE) return 0;
  char name[256];
  for (int r = 0; r < s->n_runs; r++) {
    eval_run_t *run = &s->runs[r];
    if (run->skip) continue;
    snprintf(name, sizeof name, "p%02d_%s_%s.csv", pr->line, run->name, run->label);
    if (!(run->csv = open_out(o->out, name, err))) return -1;
    fprintf(run->csv, "position,kl,top1_agree,loglik,kv_bytes,distance,ngram,long_range,in_loop\n");
  }
  return 0;
}

/* One prompt's positions: the reference's tokens and figures, and per-run scratch. */
typedef struct prompt_pos {
  int32_t *seq; /* (n_prompt + N) the prompt's tokens, then the reference's */
  int32_t *gen; /* = seq + n_prompt */
  int n_prompt;
  double *kl, *ll;
  int *ag;      /* (n_runs) this position's figures per run */
  int n_pos;
  double ref_prefill, ref_step, ref_ll;
  long ref_steps;
} prompt_pos_t;

/* Position t: the reference's token y and distribution, every run scored against it. */
static int32_t score_position(eval_state_t *s, prompt_pos_t *pp, int t) {
  const int V = s->n_vocab;
  const int32_t y = ref_token(s, pp->seq, pp->n_prompt + t);
  const int32_t g = s->o->g.sampling.temperature <= 0.0f
                        ? y : greedy_choice(s, s->ref_logits, s->ref_scratch, pp->seq, pp->n_prompt + t);
  double lse = lse_f64(s->ref_logits, V);
  for (int i = 0; i < V; i++) {
    s->ref_lp[i] = (double)s->ref_logits[i] - lse;
    s->ref_p[i] = exp(s->ref_lp[i]);
  }
  pp->ref_ll += s->ref_lp[y];
  pp->gen[t] = y;
  pp->n_pos++;
  int ng = 0;
  const int dist = mk_ev_ngram_distance(pp->seq, pp->n_prompt + t, &ng);
  const int in_loop = ng >= MK_EV_LOOP_NGRAM;
  const int n_hist = pp->n_prompt + t;
#pragma omp parallel for schedule(dynamic, 1)
  for (int r = 0; r < s->n_runs; r++)
    if (!s->runs[r].skip)
      score_run(s, &s->runs[r], y, g, pp->seq, n_hist, &pp->kl[r], &pp->ag[r], &pp->ll[r]);
  for (int r = 0; r < s->n_runs; r++) {
    eval_run_t *run = &s->runs[r];
    if (run->skip) continue;
    mk_engine_stats_t es;
    mk_engine_get_stats(run->e, &es);
    run->p_kl += pp->kl[r];
    run->p_agree += pp->ag[r];
    run->p_ll += pp->ll[r];
    run->p_n++;
    if (pp->kl[r] > run->max_kl) run->max_kl = pp->kl[r];
    const int cls = mk_ev_distance_class(dist, run->budget < 0 ? INT_MAX : run->kv.capacity);
    acc_add(&run->p_acc[cls], pp->kl[r], pp->ag[r], pp->ll[r]);
    if (!in_loop) acc_add(&run->p_acc[EV_NOLOOP], pp->kl[r], pp->ag[r], pp->ll[r]);
    if (run->csv)
      fprintf(run->csv, "%d,%.9g,%d,%.9g,%zu,%d,%d,%d,%d\n", t, pp->kl[r], pp->ag[r], pp->ll[r],
              es.kv_live_bytes, dist, ng, cls == MK_EV_LONG, in_loop);
  }
  return y;
}

/* The N positions in lockstep (collective: a failing step takes the run down). */
static int run_positions(eval_state_t *s, prompt_pos_t *pp, mk_error_t *err) {
  const eval_opts_t *o = s->o;
  const int N = o->new_tokens;
  double t_start = now_s(), t_last = t_start;
  for (int t = 0; t < N; t++) {
    int32_t y = score_position(s, pp, t);
    if (o->stop_at_eos && s->eog[y]) break;
    if (t == N - 1 && o->task != EV_TASK_RECALL) break; /* the last token needs no forward pass */
    double ts = 0.0;
    if (step_all(s, &y, 1, false, &ts, err) != 0) return -1;
    pp->ref_step += ts;
    pp->ref_steps++;
    double tn = now_s();
    if (!o->quiet && s->r0 && (tn - t_last >= 15.0 || t + 2 == N)) {
      double el = tn - t_start;
      fprintf(stderr, "[eval]   %d/%d positions, %.0f s, eta %.0f s; reference %.1f tok/s\n", t + 2,
              N, el, el / (t + 2) * (N - t - 2), pp->ref_steps / (pp->ref_step > 0 ? pp->ref_step : 1e-9));
      t_last = tn;
    }
  }
  return 0;
}

/* ---- --task recall -------------------------------------------------------------------------- */

/* text -> ids (malloc'd), no BOS, special tokens parsed. */
static int encode_plain(const mk_engine_t *e, const char *text, int32_t **ids_out, int *n_out, mk_error_t *err) {
  const mk_tokenizer_t *tok = mk_engine_tokenizer(e);
  size_t len = strlen(text);
  int cap = (int)len + 8;
  int32_t *ids = malloc(sizeof *ids * (size_t)cap);
  if (!ids) return mk_fail(err, "out of memory");
  int n = mk_tok_encode(tok, text, len, false, true, ids, cap, err);
  if (n > cap) n = mk_fail(err, "tokenizer: %d tokens for %zu bytes", n, len);
  if (n < 0) {
    free(ids);
    return -1;
  }
  *ids_out = ids;
  *n_out = n;
  return 0;
}

/* Question k of a prompt as tokens: the turn that asks it and the answer prefix (*q), then the
 * answer (*a). With the ChatML template the question is a new user turn after the reference's
 * assistant turn; otherwise plain text after a blank line. */
static int question_tokens(const eval_state_t *s, const eval_prompt_t *pr, int k, int32_t **q, int *nq,
                           int32_t **a, int *na, mk_error_t *err) {
  const eval_opts_t *o = s->o;
  mk_chat_tmpl_t tmpl = MK_CHAT_NONE;
  if (o->chat && (!o->g.chat_template || mk_chat_parse(o->g.chat_template, &tmpl) != 0))
    tmpl = mk_chat_detect(mk_engine_gguf(s->ref));
  const char *fmt = o->chat && tmpl == MK_CHAT_CHATML
                        ? "<|im_end|>\n<|im_start|>user\n%s<|im_end|>\n<|im_start|>assistant\n%s"
                        : "\n\n%s\n%s";
  size_t len = strlen(fmt) + strlen(pr->q[k]) + strlen(pr->q_prefix[k]) + 1;
  char *text = malloc(len);
  if (!text) return mk_fail(err, "out of memory");
  snprintf(text, len, fmt, pr->q[k], pr->q_prefix[k]);
  int rc = encode_plain(s->ref, text, q, nq, err);
  free(text);
  if (rc == 0 && encode_plain(s->ref, pr->q_answer[k], a, na, err) != 0) rc = -1;
  if (rc == 0 && *na == 0) rc = mk_fail(err, "prompt line %d: question %d: the answer has no tokens", pr->line, k);
  return rc;
}

/* How many tokens the questions add to the sequence (engines are begun with room for them). */
static int questions_len(const eval_state_t *s, const eval_prompt_t *pr, int *extra, mk_error_t *err) {
  *extra = 0;
  for (int k = 0; k < pr->n_q; k++) {
    int32_t *q = NULL, *a = NULL;
    int nq = 0, na = 0;
    int rc = question_tokens(s, pr, k, &q, &nq, &a, &na, err);
    free(q), free(a);
    if (rc != 0) return -1;
    *extra += nq + na;
  }
  return 0;
}

/* The last position in seq[0..n) where the answer's tokens start, or -1. */
static int find_last(const int32_t *seq, int n, const int32_t *a, int na) {
  for (int i = n - na; i >= 0; i--)
    if (!memcmp(seq + i, a, sizeof *a * (size_t)na)) return i;
  return -1;
}

/* Teacher-forces a token list into every engine; scores the answer tokens (score = true). */
static int feed_tokens(eval_state_t *s, const int32_t *ids, int n, bool score, mk_error_t *err) {
  for (int i = 0; i < n; i++) {
    if (score) {
      mk_ev_answer_push(&s->ref_run.ans, s->ref_logits, s->n_vocab, ids[i]);
      for (int r = 0; r < s->n_runs; r++)
        if (!s->runs[r].skip) mk_ev_answer_push(&s->runs[r].ans, s->runs[r].logits, s->n_vocab, ids[i]);
    }
    double ts = 0.0;
    if ((score && i == n - 1) == false && step_all(s, &ids[i], 1, false, &ts, err) != 0) return -1;
  }
  return 0;
}

/* One question's figures into every run and (rank 0) recall.csv: dist = from the fact in the
 * prompt to the question's answer, near = from the answer's last copy in the prompt or the
 * reference continuation (the model may restate a fact while it writes: then near < dist). */
static void account_question(eval_state_t *s, const eval_prompt_t *pr, int k, int dist, int near, int na) {
  const mk_ev_answer_t *ra = &s->ref_run.ans;
  const int ref_ok = mk_ev_answer_exact(ra);
  s->ref_run.rq_all++, s->ref_run.rq_exact_all += ref_ok, s->ref_run.rq_ll_all += ra->ll;
  if (ref_ok) s->ref_run.rq_kept++, s->ref_run.rq_exact_kept++, s->ref_run.rq_ll_kept += ra->ll;
  if (s->r0)
    fprintf(s->recall_csv, "p%02d,%d,full,reference,0,%d,%d,%.9g,%d,%.9g,%d,%d\n", pr->line, k, dist, na,
            ra->ll, ref_ok, ra->ll, ref_ok, near);
  for (int r = 0; r < s->n_runs; r++) {
    eval_run_t *run = &s->runs[r];
    if (run->skip) continue;
    const int ok = mk_ev_answer_exact(&run->ans);
    run->rq_all++, run->rq_exact_all += ok, run->rq_ll_all += run->ans.ll;
    if (ref_ok) run->rq_kept++, run->rq_exact_kept += ok, run->rq_ll_kept += run->ans.ll;
    if (s->r0)
      fprintf(s->recall_csv, "p%02d,%d,%s,%s,%d,%d,%d,%.9g,%d,%.9g,%d,%d\n", pr->line, k, run->name, run->label,
              run->budget < 0 ? 0 : run->kv.capacity, dist, na, run->ans.ll, ok, ra->ll, ref_ok, near);
  }
}

/* After the replay: each question in turn, its answer scored (teacher-forced; the previous
 * questions and answers stay in the context). Collective. */
static int run_recall(eval_state_t *s, const eval_prompt_t *pr, const prompt_pos_t *pp, mk_error_t *err) {
  int pos = pp->n_prompt + pp->n_pos; /* the sequence so far: prompt + reference */
  for (int k = 0; k < pr->n_q; k++) {
    int32_t *q = NULL, *a = NULL;
    int nq = 0, na = 0;
    int rc = question_tokens(s, pr, k, &q, &nq, &a, &na, err);
    const int fact = rc == 0 ? find_last(pp->seq, pp->n_prompt, a, na) : -1;
    const int last = rc == 0 ? find_last(pp->seq, pp->n_prompt + pp->n_pos, a, na) : -1;
    const int dist = fact < 0 ? -1 : pos - fact, near = last < 0 ? -1 : pos - last;
    s->ref_run.ans = (mk_ev_answer_t){0};
    for (int r = 0; r < s->n_runs; r++) s->runs[r].ans = (mk_ev_answer_t){0};
    if (rc == 0) rc = feed_tokens(s, q, nq, false, err);
    if (rc == 0) rc = feed_tokens(s, a, na, true, err);
    if (rc == 0) account_question(s, pr, k, dist, near, na);
    if (rc == 0 && k + 1 < pr->n_q) { /* the last answer token goes in before the next question */
      double ts = 0.0;
      rc = step_all(s, &a[na - 1], 1, false, &ts, err);
    }
    pos += nq + na;
    free(q), free(a);
    if (rc != 0) return -1;
  }
  return 0;
}

/* ---- --task free ---------------------------------------------------------------------------- */

static int free_begin(eval_state_t *s, eval_run_t *fr, const int32_t *ids, int n_prompt, mk_error_t *err) {
  mk_sampler_free(fr->sampler);
  fr->sampler = NULL;
  free(fr->fseq);
  fr->fseq = malloc(sizeof *ids * ((size_t)n_prompt + (size_t)s->o->new_tokens));
  if (!fr->fseq) return mk_fail(err, "out of memory");
  memcpy(fr->fseq, ids, sizeof *ids * (size_t)n_prompt);
  fr->f_n = n_prompt;
  fr->f_done = fr->f_eos = false;
  return mk_sampler_new(&s->o->g.sampling, s->n_vocab, &fr->sampler, err);
}

/* One engine's next token from its own logits (consumed); EOS ends it, as does the N-th token. */
static void free_pick(eval_state_t *s, eval_run_t *fr, float *logits, int n_prompt) {
  if (fr->f_done) return;
  int32_t y = mk_sampler_sample(fr->sampler, logits, fr->fseq, fr->f_n);
  if (s->eog[y]) {
    fr->f_done = fr->f_eos = true;
    return;
  }
  fr->fseq[fr->f_n++] = y;
  if (fr->f_n - n_prompt >= s->o->new_tokens) fr->f_done = true;
}

/* Rank 0: an engine's free-running text, DIR/p<line>_<name>_<budget>_free.txt. */
static int write_free_text(const eval_state_t *s, const eval_prompt_t *pr, const eval_run_t *fr,
                           const char *name, const char *label, int n_prompt, mk_error_t *err) {
  char fn[256];
  snprintf(fn, sizeof fn, "p%02d_%s_%s_free.txt", pr->line, name, label);
  FILE *f = open_out(s->o->out, fn, err);
  if (!f) return 1;
  mk_tok_stream_t st = {{0}, 0};
  char piece[512];
  for (int t = n_prompt; t < fr->f_n; t++) {
    int nb = mk_tok_stream_push(mk_engine_tokenizer(s->ref), &st, fr->fseq[t], piece, (int)sizeof piece);
    if (nb > 0) fwrite(piece, 1, (size_t)nb, f);
  }
  int nb = mk_tok_stream_flush(&st, piece, (int)sizeof piece);
  if (nb > 0) fwrite(piece, 1, (size_t)nb, f);
  fprintf(f, "\n%s\n", fr->f_eos ? "[end of generation]" : "[token limit]");
  return fclose(f) != 0;
}

/* An engine's figures into its sums and (rank 0) free.csv; 1 if a file failed. */
static int account_free(eval_state_t *s, const eval_prompt_t *pr, eval_run_t *fr, const char *name,
                        const char *label, int cap, int n_prompt, mk_error_t *err) {
  const eval_run_t *ref = &s->ref_run;
  const int32_t *gen = fr->fseq + n_prompt, *rgen = ref->fseq + n_prompt;
  const int len = fr->f_n - n_prompt, rlen = ref->f_n - n_prompt;
  int loops = 0;
  for (int t = n_prompt; t < fr->f_n; t++) {
    int ng = 0;
    mk_ev_ngram_distance(fr->fseq, t, &ng);
    loops += ng >= MK_EV_LOOP_NGRAM;
  }
  const double rep4 = mk_ev_repeated_4gram_frac(gen, len), d2 = mk_ev_distinct2(gen, len);
  const double loop = len ? (double)loops / len : 0.0, ratio = rlen ? (double)len / rlen : 0.0;
  const int div = mk_ev_first_divergence(gen, len, rgen, rlen);
  fr->f_len += len, fr->f_ratio += ratio, fr->f_rep4 += rep4, fr->f_d2 += d2, fr->f_div += div;
  fr->f_loop += loop, fr->f_cnt++, fr->f_n_eos += fr->f_eos;
  if (!s->r0) return 0;
  fprintf(s->free_csv, "p%02d,%s,%s,%d,%d,%d,%d,%.6f,%.6f,%d,%.6f\n", pr->line, name, label, cap, len, rlen,
          fr->f_eos, rep4, d2, div, loop);
  return write_free_text(s, pr, fr, name, label, n_prompt, err);
}

/* Every engine writes its own tokens from the prompt (after the prefill), in lockstep. */
static int run_free(eval_state_t *s, const eval_prompt_t *pr, const int32_t *ids, int n_prompt, mk_error_t *err) {
  int rc = free_begin(s, &s->ref_run, ids, n_prompt, err);
  for (int r = 0; rc == 0 && r < s->n_runs; r++) rc = free_begin(s, &s->runs[r], ids, n_prompt, err);
  if (rc != 0) return -1;
  for (int t = 0; t < s->o->new_tokens; t++) {
    free_pick(s, &s->ref_run, s->ref_logits, n_prompt);
    bool any = !s->ref_run.f_done;
    for (int r = 0; r < s->n_runs; r++) {
      if (s->runs[r].skip) continue;
      free_pick(s, &s->runs[r], s->runs[r].logits, n_prompt);
      any |= !s->runs[r].f_done;
    }
    double ts = 0.0;
    if (!any) break;
    if (step_all(s, NULL, 1, false, &ts, err) != 0) return -1;
  }
  const int total = n_prompt + s->o->new_tokens;
  int fail = account_free(s, pr, &s->ref_run, "full", "reference", total, n_prompt, err);
  for (int r = 0; r < s->n_runs; r++) {
    eval_run_t *run = &s->runs[r];
    if (!run->skip)
      fail |= account_free(s, pr, run, run->name, run->label, run->budget < 0 ? total : run->kv.capacity,
                           n_prompt, err);
  }
  return fail;
}

/* The strata columns of summary.csv (see SUMMARY_STRATA), and the end of the line; acc NULL:
 * empty fields (the reference's row). */
static const char *const STRATA[EV_N_ACC] = {"novel", "local", "long", "noloop"};
static void write_acc_cols(FILE *f, const ev_acc_t *acc) {
  for (int a = 0; a < EV_N_ACC; a++) {
    if (!acc) {
      fputs(",,,,", f);
      continue;
    }
    const double n = acc[a].n ? (double)acc[a].n : 1.0;
    fprintf(f, ",%ld,%.9g,%.6f,%.9g", acc[a].n, acc[a].kl / n, acc[a].agree / n, acc[a].ll / n);
  }
  fputc('\n', f);
}

/* This prompt's figures into the totals and (rank 0) summary.csv. 1 if a CSV file failed. */
static int account_prompt(eval_state_t *s, const eval_prompt_t *pr, const prompt_pos_t *pp, int n_prompt) {
  const int total = n_prompt + s->o->new_tokens;
  mk_engine_stats_t es;
  mk_engine_get_stats(s->ref, &es);
  s->ref_ll += pp->ref_ll;
  s->ref_n += pp->n_pos;
  s->ref_step_s += pp->ref_step;
  s->ref_steps += pp->ref_steps;
  s->ref_prefill_s += pp->ref_prefill;
  if (es.kv_peak_bytes > s->ref_peak) s->ref_peak = es.kv_peak_bytes;
  int fail = 0;
  if (s->r0) {
    fprintf(s->summary_csv, "p%02d,full,reference,%d,%d,%d,0,1,%.9g,%zu,0,%.3f", pr->line,
            n_prompt, pp->n_pos, total, pp->ref_ll / pp->n_pos, es.kv_peak_bytes,
            pp->ref_steps / (pp->ref_step > 0 ? pp->ref_step : 1e-9));
    write_acc_cols(s->summary_csv, NULL);
  }
  for (int r = 0; r < s->n_runs; r++) {
    eval_run_t *run = &s->runs[r];
    if (run->skip) continue;
    mk_engine_get_stats(run->e, &es);
    run->kl += run->p_kl;
    run->agree += run->p_agree;
    run->ll += run->p_ll;
    run->n += run->p_n;
    run->step_s += run->p_step_s;
    run->steps += run->p_steps;
    run->prefill_s += run->p_prefill_s;
    for (int a = 0; a < EV_N_ACC; a++) {
      run->acc[a].kl += run->p_acc[a].kl, run->acc[a].agree += run->p_acc[a].agree;
      run->acc[a].ll += run->p_acc[a].ll, run->acc[a].n += run->p_acc[a].n;
    }
    const int cap = run->budget < 0 ? total : run->kv.capacity;
    run->cap_sum += cap;
    run->n_prompts++;
    if (es.kv_peak_bytes > run->peak) run->peak = es.kv_peak_bytes;
    if (es.policy_state_bytes > run->state) run->state = es.policy_state_bytes;
    if (!s->r0) continue;
    fprintf(s->summary_csv, "p%02d,%s,%s,%d,%ld,%d,%.9g,%.6f,%.9g,%zu,%zu,%.3f", pr->line,
            run->name, run->label, n_prompt, run->p_n, cap, run->p_kl / run->p_n,
            run->p_agree / run->p_n, run->p_ll / run->p_n, es.kv_peak_bytes, es.policy_state_bytes,
            run->p_steps / (run->p_step_s > 0 ? run->p_step_s : 1e-9));
    write_acc_cols(s->summary_csv, run->p_acc);
    if (fclose(run->csv) != 0) fail = 1;
    run->csv = NULL;
    if (!s->o->quiet)
      fprintf(stderr, "[eval]   %-9s %-6s C=%-5d mean KL %.4f  agree %.3f  loglik %.3f\n",
              run->name, run->label, cap, run->p_kl / run->p_n,
              run->p_agree / run->p_n, run->p_ll / run->p_n);
  }
  return fail;
}

/* Rank 0: DIR/pNN_reference.txt, the reference continuation (ids, then text). 1 on failure. */
static int write_reference(eval_state_t *s, const eval_prompt_t *pr, const prompt_pos_t *pp,
                           int n_prompt, mk_error_t *err) {
  char name[256];
  snprintf(name, sizeof name, "p%02d_reference.txt", pr->line);
  FILE *f = open_out(s->o->out, name, err);
  if (!f) return 1;
  fprintf(f, "# prompt line %d, %d prompt tokens, %d generated tokens (greedy, full cache)\n",
          pr->line, n_prompt, pp->n_pos);
  fprintf(f, "# ids:");
  for (int t = 0; t < pp->n_pos; t++) fprintf(f, " %d", pp->gen[t]);
  fprintf(f, "\n");
  mk_tok_stream_t st = {{0}, 0};
  char piece[512];
  for (int t = 0; t < pp->n_pos; t++) {
    int nb = mk_tok_stream_push(mk_engine_tokenizer(s->ref), &st, pp->gen[t], piece, (int)sizeof piece);
    if (nb > 0) fwrite(piece, 1, (size_t)nb, f);
  }
  int nb = mk_tok_stream_flush(&st, piece, (int)sizeof piece);
  if (nb > 0) fwrite(piece, 1, (size_t)nb, f);
  fputc('\n', f);
  return fclose(f) != 0;
}

static void prompt_pos_free(prompt_pos_t *pp) {
  free(pp->seq), free(pp->kl), free(pp->ll), free(pp->ag);
}

/* One prompt: begin every engine, prefill, then N positions in lockstep. */
static int eval_prompt(eval_state_t *s, const eval_prompt_t *pr, int pi, int n_pr, mk_error_t *err) {
  const eval_opts_t *o = s->o;
  const int N = o->new_tokens;
  int32_t *ids = NULL;
  int n_prompt = 0;
  int extra = 0;
  int status = prompt_tokenize(o, s->ref, pr->text, &ids, &n_prompt, err);
  if (status == 0 && o->task == EV_TASK_RECALL) status = questions_len(s, pr, &extra, err);
  if (status == 0) status = prompt_begin(s, pr, n_prompt, extra, err);
  if (mk_cli_agree(s->ctx, "eval", status, err) != 0) {
    free(ids);
    return EV_FAIL;
  }
  for (int r = 0; r < s->n_runs; r++) {
    eval_run_t *run = &s->runs[r];
    run->p_kl = run->p_agree = run->p_ll = run->p_step_s = run->p_prefill_s = 0.0;
    run->p_n = run->p_steps = 0;
    memset(run->p_acc, 0, sizeof run->p_acc);
  }
  if (!o->quiet && s->r0)
    fprintf(stderr, "[eval] prompt %d/%d (line %d): %d prompt tokens + %d new, %d runs\n", pi + 1,
            n_pr, pr->line, n_prompt, N, s->n_runs);

  prompt_pos_t pp = {.n_prompt = n_prompt};
  status = step_all(s, ids, n_prompt, true, &pp.ref_prefill, err); /* prefill */
  pp.seq = status == 0 ? realloc(ids, sizeof *ids * ((size_t)n_prompt + (size_t)N)) : NULL;
  if (!pp.seq) free(ids);
  if (status != 0) return mk_cli_fail(s->ctx, "eval", err);
  pp.gen = pp.seq ? pp.seq + n_prompt : NULL;
  pp.kl = malloc(sizeof *pp.kl * (size_t)s->n_runs);
  pp.ll = malloc(sizeof *pp.ll * (size_t)s->n_runs);
  pp.ag = malloc(sizeof *pp.ag * (size_t)s->n_runs);
  if (!pp.seq || !pp.kl || !pp.ll || !pp.ag) {
    prompt_pos_free(&pp);
    mk_fail(err, "out of memory");
    return mk_cli_fail(s->ctx, "eval", err);
  }
  int fail = 0;
  if (o->task == EV_TASK_FREE) {
    fail = run_free(s, pr, pp.seq, n_prompt, err);
  } else if (run_positions(s, &pp, err) != 0 || (o->task == EV_TASK_RECALL && run_recall(s, pr, &pp, err) != 0)) {
    fail = -1;
  }
  if (fail < 0) {
    prompt_pos_free(&pp);
    return mk_cli_fail(s->ctx, "eval", err);
  }
  if (o->task != EV_TASK_FREE) {
    fail |= account_prompt(s, pr, &pp, n_prompt);
    if (s->r0 && write_reference(s, pr, &pp, n_prompt, err)) fail = 1;
  }
  if (s->r0) fflush(s->summary_csv);
  if (s->r0 && s->recall_csv) fflush(s->recall_csv);
  if (s->r0 && s->free_csv) fflush(s->free_csv);
  prompt_pos_free(&pp);
  if (mk_cli_agree(s->ctx, "eval", fail ? mk_fail(err, "writing the output files in %s failed", o->out) : 0, err) != 0)
    return EV_FAIL;
  return EV_OK;
}

static const char *budget_name(const eval_opts_t *o, const eval_run_t *run, char *buf, size_t cap) {
  if (run->budget < 0) snprintf(buf, cap, "all");
  else if (o->n_fracs) snprintf(buf, cap, "%g%%", o->fracs[run->budget] * 100.0);
  else snprintf(buf, cap, "C=%d", o->caps[run->budget]);
  return buf;
}

/* summary.md: the distance-stratified table and the table without loop positions. */
static void write_strata_md(const eval_state_t *s, FILE *f) {
  fprintf(f, "\nBy distance (src/eval_metrics.h): a position's distance is how far back the longest "
             "repeated n-gram (n >= 2) ending at the reference token last occurred; long-range = "
             "distance > the run's capacity C, local = distance <= C, novel = no earlier bigram.\n\n");
  fprintf(f, "| policy | budget | n long | KL long | agree long | log-lik long | n local | KL local "
             "| agree local | log-lik local | n novel | KL novel | agree novel | log-lik novel |\n");
  fprintf(f, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
  char b[32];
  for (int r = 0; r < s->n_runs; r++) {
    const eval_run_t *run = &s->runs[r];
    fprintf(f, "| %s | %s |", run->name, budget_name(s->o, run, b, sizeof b));
    static const int order[3] = {MK_EV_LONG, MK_EV_LOCAL, MK_EV_NOVEL};
    for (int k = 0; k < 3; k++) {
      const ev_acc_t *a = &run->acc[order[k]];
      const double n = a->n ? (double)a->n : 1.0;
      if (a->n) fprintf(f, " %ld | %.4f | %.4f | %.4f |", a->n, a->kl / n, a->agree / n, a->ll / n);
      else fprintf(f, " 0 | - | - | - |");
    }
    fputc('\n', f);
  }
  fprintf(f, "\nWithout loop positions (n-gram length >= %d: inside a verbatim repetition of at "
             "least %d tokens):\n\n", MK_EV_LOOP_NGRAM, MK_EV_LOOP_NGRAM);
  fprintf(f, "| policy | budget | loop positions | kept | mean KL | top-1 agreement | mean log-lik |\n");
  fprintf(f, "|---|---|---:|---:|---:|---:|---:|\n");
  for (int r = 0; r < s->n_runs; r++) {
    const eval_run_t *run = &s->runs[r];
    const ev_acc_t *a = &run->acc[EV_NOLOOP];
    const double n = a->n ? (double)a->n : 1.0;
    fprintf(f, "| %s | %s | %ld | %ld | %.4f | %.4f | %.4f |\n", run->name,
            budget_name(s->o, run, b, sizeof b), run->n - a->n, a->n, a->kl / n, a->agree / n, a->ll / n);
  }
}

/* summary.md, --task recall: exact match and answer log-lik per run, over the questions the
 * full cache answered exactly (the others are filtered out and counted). */
static void write_recall_md(const eval_state_t *s, FILE *f) {
  const eval_run_t *ref = &s->ref_run;
  fprintf(f, "\nRecall (`recall.csv`): %ld questions; the full cache answered %ld exactly, so %ld are "
             "filtered out (the model cannot recall them even with the full cache). Exact = every answer "
             "token is the greedy choice; log-lik = of the whole answer, teacher-forced.\n\n",
          ref->rq_all, ref->rq_exact_all, ref->rq_all - ref->rq_exact_all);
  fprintf(f, "| policy | budget | kept questions | exact match (kept) | answer log-lik (kept) | exact match (all) "
             "| answer log-lik (all) |\n|---|---|---:|---:|---:|---:|---:|\n");
  fprintf(f, "| full (reference) | - | %ld | %.3f | %.3f | %.3f | %.3f |\n", ref->rq_kept,
          ref->rq_kept ? 1.0 : 0.0, ref->rq_kept ? ref->rq_ll_kept / ref->rq_kept : 0.0,
          ref->rq_all ? (double)ref->rq_exact_all / ref->rq_all : 0.0, ref->rq_all ? ref->rq_ll_all / ref->rq_all : 0.0);
  char b[32];
  for (int r = 0; r < s->n_runs; r++) {
    const eval_run_t *run = &s->runs[r];
    const double nk = run->rq_kept ? (double)run->rq_kept : 1.0, na = run->rq_all ? (double)run->rq_all : 1.0;
    fprintf(f, "| %s | %s | %ld | %.3f | %.3f | %.3f | %.3f |\n", run->name, budget_name(s->o, run, b, sizeof b),
            run->rq_kept, run->rq_exact_kept / nk, run->rq_ll_kept / nk, run->rq_exact_all / na, run->rq_ll_all / na);
  }
}

/* summary.md, --task free: the degeneration table. */
static void write_free_md(const eval_state_t *s, FILE *f) {
  fprintf(f, "\nFree-running (`free.csv`, texts in `p<line>_<policy>_<budget>_free.txt`): every engine "
             "writes its own tokens, EOS allowed. Length relative to the full cache's on the same prompt; "
             "rep-4 = fraction of 4-grams seen before in the same output; distinct-2 = distinct bigrams / "
             "bigrams; first divergence = first token that differs from the full cache's output; loop = "
             "fraction of tokens inside a repeated %d-gram. Means over prompts.\n\n", MK_EV_LOOP_NGRAM);
  fprintf(f, "| policy | budget | prompts | mean length | length / full | ended by EOS | rep-4 | distinct-2 "
             "| first divergence | loop |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n");
  char b[32];
  for (int r = -1; r < s->n_runs; r++) {
    const eval_run_t *run = r < 0 ? &s->ref_run : &s->runs[r];
    const double n = run->f_cnt ? (double)run->f_cnt : 1.0;
    fprintf(f, "| %s | %s | %d | %.1f | %.3f | %d | %.4f | %.4f | %.1f | %.4f |\n", r < 0 ? "full" : run->name,
            r < 0 ? "reference" : budget_name(s->o, run, b, sizeof b), run->f_cnt, run->f_len / n, run->f_ratio / n,
            run->f_n_eos, run->f_rep4 / n, run->f_d2 / n, run->f_div / n, run->f_loop / n);
  }
}

static void write_summary_md(const eval_state_t *s, int argc, char **argv, const eval_prompt_t *ps,
                             int n_ps, FILE *f) {
  const eval_opts_t *o = s->o;
  char b1[64], b2[64];
  fprintf(f, "# morphkv eval summary\n\n");
  fprintf(f, "Command:\n\n```\n");
  print_cmdline(f, argc, argv);
  fprintf(f, "\n```\n\n");
  fprintf(f, "- model: `%s`\n", o->g.model);
  fprintf(f, "- prompts: %d from `%s` (lines", n_ps, o->prompts);
  for (int i = 0; i < n_ps; i++) fprintf(f, " %d", ps[i].line);
  fprintf(f, "), chat template %s\n", o->chat ? "on" : "off");
  const mk_sampler_params_t *sp = &o->g.sampling;
  if (sp->temperature > 0.0f)
    fprintf(f, "- tokens drawn by sampling: temperature %g, top-k %d, top-p %g, min-p %g, seed %llu\n",
            (double)sp->temperature, sp->top_k, (double)sp->top_p, (double)sp->min_p, (unsigned long long)sp->seed);
  if (sp->repeat_penalty != 1.0f)
    fprintf(f, "- repetition penalty %g over the last %d tokens (agreement: greedy choices after the penalty)\n",
            (double)sp->repeat_penalty, sp->repeat_last_n);
  if (o->task == EV_TASK_FREE)
    fprintf(f, "- task free: every engine writes its own %d tokens at most, from the same prompt; EOS allowed\n",
            o->new_tokens);
  else
    fprintf(f, "- reference: %s continuation with the full cache, %d new tokens per prompt, %s%s\n",
            sp->temperature > 0.0f ? "sampled" : "greedy", o->new_tokens,
            o->stop_at_eos ? "ending at the first end-of-generation token" : "end-of-generation tokens never chosen",
            o->task == EV_TASK_RECALL ? "; then the prompt's questions (--task recall)" : "");
  mk_kv_config_t kst = o->g.kv, kmk = o->g.kv;
  kst.policy = MK_KV_STREAMING, kmk.policy = MK_KV_MORPHKV;
  fprintf(f, "- window W = %d, sinks S = %d (streaming), %d (morphkv), fusion %s, GQA rule %s, cache dtype %s\n",
          o->g.kv.window, mk_kv_sinks(&kst), mk_kv_sinks(&kmk), o->g.kv.fusion == MK_KV_FUSION_SUM ? "sum" : "max",
          o->g.kv.gqa == MK_KV_GQA_LOGIT_SUM ? "logit_sum" : "prob_max",
          o->g.kv.dtype == MK_KV_F16 ? "f16" : "f32");
  if (o->n_fracs)
    fprintf(f, "- budgets: capacity = round(fraction x (prompt + %d)) per prompt\n", o->new_tokens);
  fprintf(f, "- threads: %d, ranks: %d%s\n\n", o->g.threads, s->ctx->world,
          o->concurrent ? "; engines stepped concurrently, one thread each (--concurrent)" : "");
  if (o->task == EV_TASK_FREE) {
    write_free_md(s, f);
    return;
  }
  fprintf(f, "Means over all positions of all prompts. KL = KL(full || policy) in nats; agreement = "
             "the policy's greedy token equals the reference token; log-lik = the policy's "
             "log-probability of the reference token (the reference's own is in the first row). "
             "Peak KV = the largest K/V bytes held at once (max over prompts); state = the "
             "policy's scoring state; total = peak KV + state. tok/s = decode steps per second of "
             "that engine alone.\n\n");
  fprintf(f, "| policy | budget | capacity (mean) | mean KL | max KL | top-1 agreement | mean log-lik "
             "| peak KV | policy state | total | decode tok/s |\n");
  fprintf(f, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
  fprintf(f, "| full (reference) | - | - | 0 | 0 | 1 | %.4f | %s | 0 | %s | %.1f |\n",
          s->ref_n ? s->ref_ll / s->ref_n : 0.0, fmt_mib(s->ref_peak, b1, sizeof b1),
          fmt_mib(s->ref_peak, b2, sizeof b2), s->ref_steps / (s->ref_step_s > 0 ? s->ref_step_s : 1e-9));
  for (int r = 0; r < s->n_runs; r++) {
    const eval_run_t *run = &s->runs[r];
    double n = run->n ? (double)run->n : 1.0;
    char budget[32];
    budget_name(o, run, budget, sizeof budget);
    if (!run->n) {
      fprintf(f, "| %s | %s | skipped: does not fit the budget |\n", run->name, budget);
      continue;
    }
    char b3[64];
    fprintf(f, "| %s | %s | %.0f | %.4f | %.3f | %.4f | %.4f | %s | %s | %s | %.1f |\n",
            run->name, budget, run->cap_sum / (run->n_prompts ? run->n_prompts : 1),
            run->kl / n, run->max_kl, run->agree / n, run->ll / n, fmt_mib(run->peak, b1, sizeof b1),
            fmt_mib(run->state, b2, sizeof b2), fmt_mib(run->peak + run->state, b3, sizeof b3),
            run->steps / (run->step_s > 0 ? run->step_s : 1e-9));
  }
  for (int r = 0; r < s->n_runs; r++)
    if (s->runs[r].n_skipped)
      fprintf(f, "\n%s at budget %s skipped %d prompt(s): its settings do not fit the capacity "
                 "(e.g. W >= C).\n", s->runs[r].name, s->runs[r].label, s->runs[r].n_skipped);
  write_strata_md(s, f);
  if (o->task == EV_TASK_RECALL) write_recall_md(s, f);
  fprintf(f, "\nPer prompt: `summary.csv`. Per position: `p<line>_<policy>_<budget>.csv`. "
             "Reference texts: `p<line>_reference.txt`.\n");
}

/* The options of `eval` on every rank. Returns -1 to go on, or the exit code. */
static int eval_options(eval_opts_t *o, int argc, char **argv, const mk_ctx_t *ctx) {
  const bool r0 = ctx->rank == 0;
  mk_error_t err = {{0}};
  bool help = false;
  if (opts_parse(o, argc, argv, &help, &err) != 0) {
    if (r0) fprintf(stderr, "morphkv eval: %s\n(morphkv eval --help lists the options)\n", err.msg);
    return EV_USAGE;
  }
  if (help) {
    if (r0) usage_eval(stdout);
    return EV_OK;
  }
  if (o->g.tp > 0 && o->g.tp != ctx->world) {
    if (r0) fprintf(stderr, "morphkv eval: --tp %d but the MPI world has %d rank(s)\n", o->g.tp, ctx->world);
    return EV_USAGE;
  }
  if (o->concurrent && ctx->world > 1) {
    if (r0) fprintf(stderr, "morphkv eval: --concurrent needs a world of one (not mpirun)\n");
    return EV_USAGE;
  }
  if (o->concurrent) omp_set_max_active_levels(1); /* each engine's own loops run on its thread */
  if (o->g.threads <= 0) o->g.threads = mk_cli_default_threads(ctx);
  return -1;
}

/* Prompts, the model file, and (rank 0) the output directory with summary.csv. Status only. */
static int eval_inputs(eval_state_t *s, eval_prompt_t **ps, int *n_ps, mk_error_t *err) {
  const eval_opts_t *o = s->o;
  int status = prompts_read(o, ps, n_ps, err);
  struct stat sb;
  if (status == 0 && (stat(o->g.model, &sb) != 0 || (!S_ISREG(sb.st_mode) && !S_ISDIR(sb.st_mode))))
    status = mk_fail(err, "model file %s: %s", o->g.model, errno ? strerror(errno) : "not a regular file or a Hugging Face directory");
  if (status == 0 && s->r0) status = make_dirs(o->out, err);
  if (status == 0 && s->r0) {
    s->summary_csv = open_out(o->out, "summary.csv", err);
    if (!s->summary_csv) return -1;
    fprintf(s->summary_csv, "prompt,policy,budget,prompt_tokens,positions,capacity,mean_kl,"
                            "top1_agree,mean_loglik,peak_kv_bytes,policy_state_bytes,decode_tok_s");
    for (int a = 0; a < EV_N_ACC; a++)
      fprintf(s->summary_csv, ",n_%s,kl_%s,agree_%s,loglik_%s", STRATA[a], STRATA[a], STRATA[a], STRATA[a]);
    fputc('\n', s->summary_csv);
    if (o->task == EV_TASK_RECALL) {
      if (!(s->recall_csv = open_out(o->out, "recall.csv", err))) return -1;
      fprintf(s->recall_csv, "prompt,question,policy,budget,capacity,distance,answer_tokens,answer_loglik,"
                             "exact,full_answer_loglik,full_exact,nearest\n");
    }
    if (o->task == EV_TASK_FREE) {
      if (!(s->free_csv = open_out(o->out, "free.csv", err))) return -1;
      fprintf(s->free_csv, "prompt,policy,budget,capacity,length,full_length,ended_eos,rep4_frac,distinct2,"
                           "first_divergence,loop_frac\n");
    }
  }
  return status;
}

/* The runs: every policy x every budget (full: once). */
static int eval_plan_runs(eval_state_t *s, mk_error_t *err) {
  const eval_opts_t *o = s->o;
  int n_budgets = o->n_caps ? o->n_caps : o->n_fracs;
  s->runs = calloc((size_t)o->n_pol * (size_t)(n_budgets > 0 ? n_budgets : 1), sizeof *s->runs);
  s->errs = calloc((size_t)o->n_pol * (size_t)(n_budgets > 0 ? n_budgets : 1) + 1, sizeof *s->errs);
  if (!s->runs || !s->errs) return mk_fail(err, "out of memory");
  for (int p = 0; p < o->n_pol; p++) {
    int nb = o->pol[p].kind == MK_KV_FULL ? 1 : n_budgets;
    for (int b = 0; b < nb; b++) {
      eval_run_t *run = &s->runs[s->n_runs++];
      run->policy = o->pol[p].kind;
      run->name = o->pol[p].name;
      run->variant = o->pol[p].variant;
      run->scale = o->pol[p].scale;
      run->kv = pol_kv(&o->g.kv, &o->pol[p]);
      run->budget = o->pol[p].kind == MK_KV_FULL ? -1 : b;
      if (run->budget < 0) snprintf(run->label, sizeof run->label, "all");
      else if (o->n_fracs) snprintf(run->label, sizeof run->label, "%gpct", o->fracs[b] * 100.0);
      else snprintf(run->label, sizeof run->label, "c%d", o->caps[b]);
    }
  }
  return 0;
}

/* Engines (collective): weights are memory-mapped and borrowed, so each extra engine costs only its
 * cache. Returns 0, or the exit code. */
static int eval_open_engines(eval_state_t *s, int n_ps, mk_error_t *err) {
  const eval_opts_t *o = s->o;
  mk_engine_params_t ep = {.model_path = o->g.model, .tp = o->g.tp,
                           .numerics = o->g.deterministic ? MK_NUMERICS_DETERMINISTIC : MK_NUMERICS_FAST};
  ep.backend.kind = o->g.backend;
  ep.backend.n_threads = o->g.threads;
  ep.backend.simd = o->g.simd;
  ep.backend.device = s->ctx->local_rank;
  double t0 = now_s();
  if (mk_engine_open(&s->ref, &ep, s->ctx, err) != 0) return mk_cli_fail(s->ctx, "eval", err);
  for (int r = 0; r < s->n_runs; r++)
    if (mk_engine_open(&s->runs[r].e, &ep, s->ctx, err) != 0) return mk_cli_fail(s->ctx, "eval", err);
  s->n_vocab = mk_engine_n_vocab(s->ref);
  const int V = s->n_vocab;
  s->ref_logits = malloc(sizeof(float) * (size_t)V);
  s->ref_lp = malloc(sizeof(double) * (size_t)V);
  s->ref_p = malloc(sizeof(double) * (size_t)V);
  s->eog = calloc((size_t)V, 1);
  int status = (s->ref_logits && s->ref_lp && s->ref_p && s->eog) ? 0 : mk_fail(err, "out of memory");
  for (int r = 0; status == 0 && r < s->n_runs; r++)
    if (!(s->runs[r].logits = malloc(sizeof(float) * (size_t)V)) ||
        !(s->runs[r].scratch = malloc(sizeof(float) * (size_t)V)))
      status = mk_fail(err, "out of memory");
  if (status == 0 && !(s->ref_scratch = malloc(sizeof(float) * (size_t)V))) status = mk_fail(err, "out of memory");
  if (status == 0) status = mk_sampler_new(&o->g.sampling, V, &s->ref_sampler, err);
  if (mk_cli_agree(s->ctx, "eval", status, err) != 0) return EV_FAIL;
  for (int i = 0; i < V; i++) s->eog[i] = mk_tok_is_eog(mk_engine_tokenizer(s->ref), i) ? 1 : 0;
  if (!o->quiet && s->r0)
    fprintf(stderr, "[eval] %d engines on %s loaded in %.2f s; %d prompts x %d new tokens, %d threads\n",
            s->n_runs + 1, o->g.model, now_s() - t0, n_ps, o->new_tokens, o->g.threads);
  return 0;
}

/* Rank 0: summary.md (and on stderr), summary.csv closed, the plots. */
static int eval_finish(eval_state_t *s, int argc, char **argv, const eval_prompt_t *ps, int n_ps,
                       mk_error_t *err) {
  const eval_opts_t *o = s->o;
  int rc = EV_OK;
  FILE *f = open_out(o->out, "summary.md", err);
  if (!f) {
    fprintf(stderr, "morphkv eval: %s\n", err->msg);
    rc = EV_FAIL;
  } else {
    write_summary_md(s, argc, argv, ps, n_ps, f);
    if (fclose(f) != 0) {
      fprintf(stderr, "morphkv eval: writing %s/summary.md failed\n", o->out);
      rc = EV_FAIL;
    }
  }
  if (fclose(s->summary_csv) != 0) rc = EV_FAIL;
  s->summary_csv = NULL;
  if (s->recall_csv && fclose(s->recall_csv) != 0) rc = EV_FAIL;
  if (s->free_csv && fclose(s->free_csv) != 0) rc = EV_FAIL;
  s->recall_csv = s->free_csv = NULL;
  if (rc == EV_OK && !o->quiet) {
    fprintf(stderr, "[eval] summary: %s/summary.md\n", o->out);
    write_summary_md(s, argc, argv, ps, n_ps, stderr);
  }
  if (rc == EV_OK && o->plot) make_plots(o);
  return rc;
}

int mk_eval_main(int argc, char **argv, mk_ctx_t *ctx) {
  eval_opts_t o;
  int rc = eval_options(&o, argc, argv, ctx);
  if (rc >= 0) {
    opts_free(&o);
    return rc;
  }
  mk_error_t err = {{0}};
  eval_state_t s = {.o = &o, .ctx = ctx, .r0 = ctx->rank == 0};
  eval_prompt_t *ps = NULL;
  int n_ps = 0;
  rc = EV_FAIL;
  if (mk_cli_agree(ctx, "eval", eval_inputs(&s, &ps, &n_ps, &err), &err) != 0) goto done;
  if (eval_plan_runs(&s, &err) != 0) {
    rc = mk_cli_fail(ctx, "eval", &err);
    goto done;
  }
  if ((rc = eval_open_engines(&s, n_ps, &err)) != 0) goto done;
  for (int i = 0; i < n_ps; i++)
    if ((rc = eval_prompt(&s, &ps[i], i, n_ps, &err)) != EV_OK) goto done;
  rc = s.r0 ? eval_finish(&s, argc, argv, ps, n_ps, &err) : EV_OK;
done:
  if (s.summary_csv) fclose(s.summary_csv);
  if (s.recall_csv) fclose(s.recall_csv);
  if (s.free_csv) fclose(s.free_csv);
  for (int r = 0; r < s.n_runs; r++) {
    if (s.runs[r].csv) fclose(s.runs[r].csv);
    free(s.runs[r].logits);
    free(s.runs[r].scratch);
    free(s.runs[r].fseq);
    mk_sampler_free(s.runs[r].sampler);
    mk_engine_close(s.runs[r].e);
  }
  free(s.ref_scratch);
  free(s.ref_run.fseq);
  mk_sampler_free(s.ref_run.sampler);
  mk_sampler_free(s.ref_sampler);
  free(s.runs);
  free(s.errs);
  mk_engine_close(s.ref);
  free(s.ref_logits);
  free(s.ref_lp);
  free(s.ref_p);
  free(s.eog);
  prompts_free(ps, n_ps);
  opts_free(&o);
  return rc;
}
