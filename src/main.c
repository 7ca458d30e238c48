/* morphkv: the command-line front end (generate, inspect, eval).
 *
 * An MPI program from the start: run without mpirun it is a world of one. Every rank parses the
 * same argv. In `generate`, rank 0 alone reads the prompt, renders the chat template and
 * tokenizes, then hands the request (token ids, sampling, cache settings, stop strings) to every
 * rank as a protobuf message (parallel/request.h). All ranks then run the same loop: the engine
 * samples on every rank the same token (mk_engine_step_sample; seeded identically), and the
 * stop rules are deterministic, so every rank picks the same token and stops at the same step
 * without a per-token message. Rank 0 alone prints text, progress and statistics.
 *
 * Failures: a phase every rank reaches on its own (options, prompt, cache allocation) ends with
 * mk_cli_agree, so all ranks exit together with rank 0 printing the message; a failure inside a
 * collective phase (model load, forward pass) calls mk_cli_fail, which takes every rank down
 * (src/cli.h).
 * Exit codes: 0 ok, 1 runtime failure, 2 usage error. */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <limits.h>
#include <mpi.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "parallel/ctx.h"
#include "parallel/request.h"
#include "src/batch_cli.h"
#include "src/cli.h"
#include "src/config.h"
#include "src/engine.h"
#include "src/eval.h"
#include "src/gguf.h"
#include "src/hf_model.h"
#include "src/model.h"
#include "src/quant.h"
#include "src/sampler.h"
#include "src/stats.h"
#include "src/tokenizer.h"

enum { EXIT_OK = 0, EXIT_FAIL = 1, EXIT_USAGE = 2 };

static void usage_top(FILE *f) {
  fprintf(f,
          "usage: morphkv <command> [options]\n"
          "\n"
          "commands:\n"
          "  generate   generate text from a prompt (text to stdout, statistics to stderr)\n"
          "  inspect    show a GGUF model: architecture, hyperparameters, tensors, tokenizer\n"
          "  eval       fidelity harness: cache policies against the full cache\n"
          "\n"
          "  morphkv <command> --help    options of a command\n"
          "  morphkv --version\n"
          "\n"
          "Run under `mpirun -np T morphkv ...` (or srun) for T-way tensor parallelism;\n"
          "a plain run is a world of one.\n");
}

static void usage_generate(FILE *f) {
  fprintf(f,
          "usage: morphkv generate --model PATH (--prompt TEXT | --prompt-file FILE) [options]\n"
          "       morphkv generate --model PATH --batch-file IN.jsonl [--out OUT.jsonl] [options]\n"
          "\n"
          "Streams the generated text to stdout; prints load time, prefill and decode tokens/s\n"
          "and KV-cache bytes to stderr. Stops at an end-of-generation token, a --stop string,\n"
          "or --max-new-tokens.\n"
          "\n"
          "Batch mode (--batch-file): up to --max-seqs sequences decode together (continuous\n"
          "batching, prompts prefilled in --prefill-chunk pieces), one JSON result a line. Every\n"
          "sequence of a run uses the same cache policy and --kv-* settings.\n"
          "\n"
          "options:\n");
  mk_gen_opts_usage(f);
}

static void usage_inspect(FILE *f) {
  fprintf(f,
          "usage: morphkv inspect [--all] PATH\n"
          "\n"
          "Prints the architecture, hyperparameters, tensor table (name, type, shape, bytes),\n"
          "tokenizer and chat template of a GGUF model.\n"
          "\n"
          "options:\n"
          "  --all     also list every metadata key and value\n");
}

static void print_version(void) {
  printf("morphkv %s (CUDA backend: %s, NCCL: %s, best CPU kernels: %s)\n", MK_VERSION_STRING,
#ifdef MORPHKV_HAVE_CUDA
         "yes",
#else
         "no",
#endif
#ifdef MORPHKV_HAVE_NCCL
         "yes",
#else
         "no",
#endif
         mk_simd_name(mk_simd_best()));
}

/* ---- generated text: streaming with stop strings ------------------------------------------- */

/* The whole generated text. Bytes before `printed` are on stdout; the rest is held back while
 * it could still be the start of a stop string. A stop string found ends the text where it
 * starts (the stop string itself is not printed). */
typedef struct out_text {
  char *buf; /* (cap) NUL-terminated */
  size_t len, cap, printed;
  bool print;
} out_text_t;

static int out_append(out_text_t *o, const char *s, size_t n) {
  if (o->len + n + 1 > o->cap) {
    size_t cap = (o->len + n + 1) * 2;
    char *t = realloc(o->buf, cap);
    if (!t) return -1;
    o->buf = t;
    o->cap = cap;
  }
  memcpy(o->buf + o->len, s, n);
  o->len += n;
  o->buf[o->len] = 0;
  return 0;
}

static void out_emit(out_text_t *o, size_t upto) {
  if (upto > o->printed) {
    if (o->print) {
      fwrite(o->buf + o->printed, 1, upto - o->printed, stdout);
      fflush(stdout);
    }
    o->printed = upto;
  }
}

static const char *find_bytes(const char *hay, size_t hn, const char *needle, size_t nn) {
  if (nn == 0 || nn > hn) return NULL;
  for (size_t i = 0; i + nn <= hn; i++)
    if (hay[i] == needle[0] && memcmp(hay + i, needle, nn) == 0) return hay + i;
  return NULL;
}

/* After an append: true if a stop string occurs (then the text is cut before it and everything
 * before is printed); otherwise prints all that cannot be the start of a stop string. */
static bool out_advance(out_text_t *o, char *const *stop, size_t n_stop) {
  /* a match cannot start before `printed`: those bytes were released because no stop string
   * could start there */
  const char *first = NULL;
  for (size_t i = 0; i < n_stop; i++) {
    const char *m = find_bytes(o->buf + o->printed, o->len - o->printed, stop[i], strlen(stop[i]));
    if (m && (!first || m < first)) first = m;
  }
  if (first) {
    o->len = (size_t)(first - o->buf);
    o->buf[o->len] = 0;
    out_emit(o, o->len);
    return true;
  }
  size_t hold = 0;
  for (size_t i = 0; i < n_stop; i++) {
    size_t sl = strlen(stop[i]);
    for (size_t k = sl - 1; k > hold; k--) {
      if (k > o->len - o->printed) continue;
      if (memcmp(o->buf + o->len - k, stop[i], k) == 0) {
        hold = k;
        break;
      }
    }
  }
  out_emit(o, o->len - hold);
  return false;
}

/* ---- helpers -------------------------------------------------------------------------------- */

static char *read_text_file(const char *path, mk_error_t *err) {
  FILE *f = fopen(path, "rb");
  if (!f) {
    mk_fail(err, "--prompt-file %s: %s", path, strerror(errno));
    return NULL;
  }
  size_t n = 0, cap = 1 << 16;
  char *buf = malloc(cap);
  while (buf) {
    size_t r = fread(buf + n, 1, cap - n - 1, f);
    n += r;
    if (n + 1 < cap) break;
    char *t = realloc(buf, cap * 2);
    if (!t) {
      free(buf);
      buf = NULL;
      break;
    }
    buf = t;
    cap *= 2;
  }
  bool bad = !buf || ferror(f);
  fclose(f);
  if (bad) {
    free(buf);
    mk_fail(err, "--prompt-file %s: read error", path);
    return NULL;
  }
  buf[n] = 0;
  /* the prompt is handled as a C string from here on: a NUL would cut it silently */
  const char *nul = memchr(buf, 0, n);
  if (nul) {
    mk_fail(err, "--prompt-file %s: byte %zu of %zu is a NUL; the prompt must be text without NUL "
                 "bytes", path, (size_t)(nul - buf), n);
    free(buf);
    return NULL;
  }
  return buf;
}

/* Rank 0: the prompt's token ids (malloc'd). */
static int prepare_prompt(const mk_gen_opts_t *o, const mk_engine_t *e, int32_t **ids_out,
                          int *n_out, mk_error_t *err) {
  *ids_out = NULL;
  char *text = o->prompt_file ? read_text_file(o->prompt_file, err) : strdup(o->prompt);
  if (!text) return o->prompt_file ? -1 : mk_fail(err, "out of memory");
  int rc = mk_cli_encode_prompt(e, text, o->chat, o->chat_template, o->system, ids_out, n_out, err);
  free(text);
  return rc;
}

/* The context a run may use and the check that prompt + new tokens fit in it. */
static int check_context(const mk_gen_opts_t *o, const mk_model_config_t *cfg, int n_prompt,
                         mk_error_t *err) {
  int n_ctx = cfg->n_ctx_train > 0 ? cfg->n_ctx_train : INT_MAX / 2;
  if (o->ctx_size > 0) {
    if (o->ctx_size > n_ctx)
      return mk_fail(err, "--ctx-size %d exceeds the model's training context of %d tokens",
                     o->ctx_size, n_ctx);
    n_ctx = o->ctx_size;
  }
  const char *what = o->ctx_size > 0 ? "--ctx-size" : "the model's context";
  if (n_prompt > n_ctx)
    return mk_fail(err, "the prompt has %d tokens, more than %s of %d tokens", n_prompt, what,
                   n_ctx);
  if ((long)n_prompt + o->max_new_tokens > n_ctx)
    return mk_fail(err,
                   "the prompt (%d tokens) + --max-new-tokens %d = %ld tokens exceed %s of %d "
                   "tokens; lower --max-new-tokens to %d",
                   n_prompt, o->max_new_tokens, (long)n_prompt + o->max_new_tokens, what, n_ctx,
                   n_ctx - n_prompt);
  return 0;
}

/* Every rank, collectively: KV live bytes summed over ranks, appended to kv_bytes_by_step. */
static int sample_kv(const mk_ctx_t *ctx, const mk_engine_t *e, mk_run_stats_t *st, int n_tokens,
                     mk_error_t *err) {
  mk_engine_stats_t es;
  mk_engine_get_stats(e, &es);
  uint64_t live = es.kv_live_bytes, sum = live;
  if (ctx->world > 1 &&
      mk_wd_allreduce(ctx->wd, &live, &sum, 1, MPI_UINT64_T, MPI_SUM, ctx->mpi, "KV bytes", err))
    return -1;
  return mk_run_stats_sample(st, n_tokens, (int64_t)sum, err);
}

/* ---- generate ------------------------------------------------------------------------------- */

/* One `generate` run on this rank. The phases below run in this order on every rank; each
 * returns 0 to go on, or the process exit code (after printing, or taking the run down). */
typedef struct gen_run {
  mk_ctx_t *ctx;
  bool r0;
  mk_gen_opts_t o;
  mk_error_t err;
  mk_engine_t *e;
  mk_sampler_t *smp;
  mk_request_t req;
  mk_run_stats_t st;
  out_text_t out;
  int32_t *hist; /* (n_prompt + max_new + 1) prompt, then generated ids */
  int n_hist;
  float *logits; /* (n_vocab) */
  int32_t next;  /* the token mk_engine_step_sample drew after the last step */
  mk_tok_stream_t stream;
} gen_run_t;

/* Options (every rank parses the same argv), --tp against the world, the model file's existence.
 * Returns -1 to go on, or the exit code. */
static int gen_options(gen_run_t *g, int argc, char **argv) {
  mk_gen_opts_t *o = &g->o;
  bool help = false;
  if (mk_gen_opts_parse_args(o, argc, argv, &help, &g->err) != 0 ||
      (!help && mk_gen_opts_check(o, &g->err) != 0)) {
    if (g->r0)
      fprintf(stderr, "morphkv generate: %s\n(morphkv generate --help lists the options)\n", g->err.msg);
    return EXIT_USAGE;
  }
  if (help) {
    if (g->r0) usage_generate(stdout);
    return EXIT_OK;
  }
  mk_watchdog_set_timeout(g->ctx->wd, o->comm_timeout); /* same argv, same value on every rank */
  if (o->tp > 0 && o->tp * o->pp != g->ctx->world) { /* world = --pp x --tp */
    if (g->r0)
      fprintf(stderr,
              "morphkv generate: --tp %d x --pp %d but the MPI world has %d rank%s; launch with "
              "`mpirun -np %d morphkv generate ...`\n",
              o->tp, o->pp, g->ctx->world, g->ctx->world == 1 ? "" : "s", o->tp * o->pp);
    return EXIT_USAGE;
  }
  struct stat sb;
  errno = 0;
  int status = 0;
  if (stat(o->model, &sb) != 0 || (!S_ISREG(sb.st_mode) && !S_ISDIR(sb.st_mode)))
    status = mk_fail(&g->err, "model file %s: %s", o->model, errno ? strerror(errno) : "not a regular file or a Hugging Face directory");
  return mk_cli_agree(g->ctx, "generate", status, &g->err) != 0 ? EXIT_FAIL : -1;
}

/* Load (collective). */
static int gen_load(gen_run_t *g) {
  const mk_gen_opts_t *o = &g->o;
  mk_engine_params_t ep = mk_cli_engine_params(o, g->ctx);
  g->st.threads = ep.backend.n_threads;
  double t0 = MPI_Wtime();
  if (mk_engine_open(&g->e, &ep, g->ctx, &g->err) != 0) { /* agreed: every rank says why, none aborts */
    if (g->ctx->world > 1) fprintf(stderr, "morphkv generate (rank %d): %s\n", g->ctx->rank, g->err.msg);
    else fprintf(stderr, "morphkv generate: %s\n", g->err.msg);
    return EXIT_FAIL;
  }
  g->st.load_s = MPI_Wtime() - t0;
  const mk_model_config_t *cfg = mk_engine_config(g->e);
  if (g->r0 && o->progress)
    fprintf(stderr, "[morphkv] loaded %s (%s, %d layers) in %.2f s\n", o->model, cfg->arch_name,
            cfg->n_layer, g->st.load_s);
  return 0;
}

/* Rank 0: the request (prompt ids, sampling, cache settings, stop strings) from the options. */
static int gen_make_request(gen_run_t *g) {
  const mk_gen_opts_t *o = &g->o;
  mk_request_t *req = &g->req;
  int32_t *ids = NULL;
  int n = 0;
  int status = prepare_prompt(o, g->e, &ids, &n, &g->err);
  if (status == 0) status = check_context(o, mk_engine_config(g->e), n, &g->err);
  if (status == 0) {
    req->kind = MK_REQUEST_GENERATE;
    req->prompt = ids;
    req->n_prompt = (size_t)n;
    ids = NULL;
    req->sampling = o->sampling;
    if (o->sampling.repeat_last_n < 0) req->sampling.repeat_last_n = n + o->max_new_tokens; /* -1 = all */
    req->max_new_tokens = o->max_new_tokens;
    req->cache = o->kv;
    if (o->n_stop > 0) {
      req->stop = calloc((size_t)o->n_stop, sizeof *req->stop);
      if (!req->stop) status = mk_fail(&g->err, "out of memory");
      for (int i = 0; status == 0 && i < o->n_stop; i++) {
        req->stop[i] = strdup(o->stop[i]);
        if (!req->stop[i]) status = mk_fail(&g->err, "out of memory");
        else req->n_stop++;
      }
    }
  }
  free(ids);
  return status;
}

/* The request on every rank, then the run's own allocations (every rank its own cache). */
static int gen_begin(gen_run_t *g) {
  int status = g->r0 ? gen_make_request(g) : 0;
  if (mk_cli_agree(g->ctx, "generate", status, &g->err) != 0) return EXIT_FAIL;
  const int n_vocab = mk_engine_n_vocab(g->e);
  if (mk_request_bcast(g->ctx, &g->req, n_vocab, &g->err) != 0) {
    if (g->r0) fprintf(stderr, "morphkv generate: request: %s\n", g->err.msg);
    return EXIT_FAIL;
  }
  const int n_prompt = (int)g->req.n_prompt, max_new = g->req.max_new_tokens;
  status = mk_engine_begin(g->e, &g->req.cache, 1, n_prompt, n_prompt + max_new, &g->err);
  if (status == 0) status = mk_sampler_new(&g->req.sampling, n_vocab, &g->smp, &g->err);
  if (status == 0) {
    g->hist = malloc(((size_t)n_prompt + (size_t)max_new + 1) * sizeof *g->hist);
    g->logits = malloc((size_t)n_vocab * sizeof *g->logits);
    if (!g->hist || !g->logits) status = mk_fail(&g->err, "out of memory");
  }
  if (mk_cli_agree(g->ctx, "generate", status, &g->err) != 0) return EXIT_FAIL;
  memcpy(g->hist, g->req.prompt, (size_t)n_prompt * sizeof *g->hist);
  g->n_hist = n_prompt;
  return 0;
}

/* What ran, for the statistics. */
static void gen_describe(gen_run_t *g) {
  const mk_gen_opts_t *o = &g->o;
  const mk_model_config_t *cfg = mk_engine_config(g->e);
  const mk_ctx_t *ctx = g->ctx;
  mk_run_stats_t *st = &g->st;
  st->model_path = o->model;
  st->model_name = cfg->name[0] ? cfg->name : NULL;
  st->arch = cfg->arch_name;
  st->backend = o->backend == MK_BACKEND_CUDA ? "cuda" : "cpu";
  st->simd = o->backend == MK_BACKEND_CUDA ? "-"
                                           : mk_simd_name(o->simd < 0 ? mk_simd_best() : (mk_simd_t)o->simd);
  mk_engine_stats_t es;
  mk_engine_get_stats(g->e, &es);
  st->comm = es.comm;
  st->kv_policy = mk_kv_policy_name(g->req.cache.policy);
  st->kv_dtype = g->req.cache.dtype == MK_KV_F16 ? "f16" : "f32";
  st->kv_window = g->req.cache.window;
  st->kv_capacity = g->req.cache.capacity;
  st->world = ctx->world;
  st->n_layer = cfg->n_layer;
  st->n_kv_head = cfg->n_kv_head;
  st->head_dim = cfg->head_dim;
  st->prompt_tokens = (int)g->req.n_prompt;
  st->stop_reason = "max_new_tokens";
}

static int gen_prefill(gen_run_t *g) {
  const int n_prompt = (int)g->req.n_prompt;
  double t0 = MPI_Wtime();
  /* sampled where the logits lie (mk_engine_step_sample): no full-vocabulary gather */
  if (mk_engine_step_sample(g->e, 0, g->req.prompt, n_prompt, g->smp, g->hist, g->n_hist, &g->next, &g->err) != 0)
    return mk_cli_fail(g->ctx, NULL, &g->err);
  g->st.prefill_s = MPI_Wtime() - t0;
  if (sample_kv(g->ctx, g->e, &g->st, n_prompt, &g->err) != 0) return mk_cli_fail(g->ctx, NULL, &g->err);
  if (g->r0 && g->o.progress)
    fprintf(stderr, "[morphkv] prefill: %d tokens in %.3f s (%.1f tok/s)\n", n_prompt,
            g->st.prefill_s, g->st.prefill_s > 0 ? n_prompt / g->st.prefill_s : 0.0);
  return 0;
}

/* Token `id` was sampled: into the history and the text. 1 when a stop string ended the text,
 * 0 to go on, -1 when detokenizing failed (reported). */
static int gen_emit(gen_run_t *g, int32_t id) {
  g->hist[g->n_hist++] = id;
  char piece[512];
  int nb = mk_tok_stream_push(mk_engine_tokenizer(g->e), &g->stream, id, piece, (int)sizeof piece);
  if (nb < 0 || out_append(&g->out, piece, (size_t)nb) != 0) {
    mk_fail(&g->err, "detokenizing token %d failed", id);
    mk_cli_fail(g->ctx, NULL, &g->err);
    return -1;
  }
  if (out_advance(&g->out, g->req.stop, g->req.n_stop)) {
    g->st.stop_reason = "stop_string";
    return 1;
  }
  return 0;
}

/* One forward pass for the token just sampled, and the KV sample every --stats-every tokens. */
static int gen_step(gen_run_t *g, int32_t id, int n_gen) {
  mk_run_stats_t *st = &g->st;
  double t0 = MPI_Wtime();
  if (mk_engine_step_sample(g->e, 0, &id, 1, g->smp, g->hist, g->n_hist, &g->next, &g->err) != 0)
    return mk_cli_fail(g->ctx, NULL, &g->err);
  st->decode_s += MPI_Wtime() - t0;
  st->decode_steps++;
  int n_tok = (int)g->req.n_prompt + st->decode_steps;
  if (n_tok % g->o.stats_every != 0) return 0;
  if (sample_kv(g->ctx, g->e, st, n_tok, &g->err) != 0) return mk_cli_fail(g->ctx, NULL, &g->err);
  if (g->r0 && g->o.progress)
    fprintf(stderr, "\n[morphkv] %d/%d tokens, %.1f tok/s, KV live %lld bytes\n", n_gen,
            g->req.max_new_tokens, st->decode_s > 0 ? st->decode_steps / st->decode_s : 0.0,
            (long long)st->by_step[st->n_by_step - 1][1]);
  return 0;
}

/* Sample, stop rules, forward pass, until a stop or max_new tokens. */
static int gen_decode(gen_run_t *g) {
  mk_run_stats_t *st = &g->st;
  const int max_new = g->req.max_new_tokens;
  double t_gen0 = MPI_Wtime();
  int n_gen = 0;
  while (n_gen < max_new) {
    int32_t id = g->next; /* sampling time is part of the prefill / decode step */
    if (!g->o.ignore_eos && mk_tok_is_eog(mk_engine_tokenizer(g->e), id)) {
      st->stop_reason = "eos";
      break;
    }
    n_gen++;
    int rc = gen_emit(g, id);
    if (rc < 0) return EXIT_FAIL;
    if (rc == 1) break;
    if (n_gen == max_new) break; /* the last token needs no forward pass */
    if ((rc = gen_step(g, id, n_gen)) != 0) return rc;
  }
  if (strcmp(st->stop_reason, "stop_string") != 0) {
    /* the detokenizer's pending bytes, then whatever was held back for the stop strings */
    char piece[512];
    int nb = mk_tok_stream_flush(&g->stream, piece, (int)sizeof piece);
    if (nb > 0 && out_append(&g->out, piece, (size_t)nb) == 0 && out_advance(&g->out, g->req.stop, g->req.n_stop))
      st->stop_reason = "stop_string";
    else
      out_emit(&g->out, g->out.len);
  }
  if (g->r0) {
    fputc('\n', stdout);
    fflush(stdout);
  }
  st->wall_s = MPI_Wtime() - t_gen0;
  st->generated_tokens = n_gen;
  if (sample_kv(g->ctx, g->e, st, (int)g->req.n_prompt + st->decode_steps, &g->err) != 0)
    return mk_cli_fail(g->ctx, NULL, &g->err);
  return 0;
}

/* Statistics (collective gather; rank 0 prints and writes). */
static int gen_report(gen_run_t *g) {
  mk_run_stats_t *st = &g->st;
  st->ranks = calloc((size_t)g->ctx->world, sizeof *st->ranks);
  int status = st->ranks ? 0 : mk_fail(&g->err, "out of memory");
  if (mk_cli_agree(g->ctx, "generate", status, &g->err) != 0) return EXIT_FAIL;
  if (mk_cli_gather_rank_stats(g->ctx, g->e, st->ranks, &g->err) != 0) return mk_cli_fail(g->ctx, NULL, &g->err);
  mk_run_stats_sum(st);
  st->output_ids = g->hist + g->req.n_prompt;
  st->output_text = g->out.buf ? g->out.buf : "";
  if (!g->r0) return EXIT_OK;
  if (!g->o.quiet) mk_run_stats_print(st, stderr);
  if (g->o.stats_json && mk_run_stats_write_json(st, g->o.stats_json, &g->err) != 0) {
    fprintf(stderr, "morphkv generate: %s\n", g->err.msg);
    return EXIT_FAIL;
  }
  return EXIT_OK;
}

static int cmd_generate(int argc, char **argv, mk_ctx_t *ctx) {
  gen_run_t g = {.ctx = ctx, .r0 = ctx->rank == 0, .err = {{0}}};
  mk_gen_opts_default(&g.o);
  int rc = gen_options(&g, argc, argv);
  if (rc < 0 && g.o.batch_file) rc = mk_batch_cli_run(&g.o, ctx); /* src/batch_cli.h */
  if (rc >= 0) {
    mk_gen_opts_free(&g.o);
    return rc;
  }
  mk_request_init(&g.req);
  mk_run_stats_init(&g.st);
  g.out.print = g.r0;
  if ((rc = gen_load(&g)) == 0 && (rc = gen_begin(&g)) == 0) {
    gen_describe(&g);
    if ((rc = gen_prefill(&g)) == 0 && (rc = gen_decode(&g)) == 0) rc = gen_report(&g);
  }
  free(g.out.buf);
  free(g.hist);
  free(g.logits);
  mk_sampler_free(g.smp);
  mk_request_free(&g.req);
  mk_run_stats_free(&g.st);
  mk_engine_close(g.e);
  mk_gen_opts_free(&g.o);
  return rc;
}

/* ---- inspect -------------------------------------------------------------------------------- */

/* The tensor table (GGUF names and order; for a HF directory also the stored name, file, dtype). */
static void print_tensors(const mk_tensor_source_t *src, const mk_hf_t *hf) {
  size_t nt = src->count(src->impl), total = 0;
  printf("tensors:       %zu\n", nt);
  printf("  %-4s %-36s %-6s %-22s %12s%s\n", "#", "name", "type", "shape", "bytes",
         hf ? "  <- stored as (file, dtype)" : "");
  for (size_t i = 0; i < nt; i++) {
    const mk_tensor_info_t *t = src->at(src->impl, i);
    char shape[64] = "";
    size_t off = 0;
    for (int d = 0; d < t->n_dims; d++)
      off += (size_t)snprintf(shape + off, sizeof shape - off, d ? " x %lld" : "%lld", (long long)t->ne[d]);
    printf("  %-4zu %-36s %-6s %-22s %12zu", i, t->name, mk_type_name(t->type), shape, t->nbytes);
    if (hf)
      printf("  <- %s (%s, %s)", mk_hf_tensor_hf_name(hf, i), mk_hf_tensor_file(hf, i),
             mk_type_name((mk_type_t)mk_hf_tensor_file_type(hf, i)));
    putchar('\n');
    total += t->nbytes;
  }
  char b[32];
  printf("tensor bytes:  %zu (%s)\n", total, mk_fmt_bytes(total, b, sizeof b));
}

static void print_value(const mk_gguf_value_t *v) {
  switch (v->type) {
    case MK_GGUF_UINT8:
    case MK_GGUF_UINT16:
    case MK_GGUF_UINT32:
    case MK_GGUF_UINT64: printf("%llu", (unsigned long long)v->v.u64); break;
    case MK_GGUF_INT8:
    case MK_GGUF_INT16:
    case MK_GGUF_INT32:
    case MK_GGUF_INT64: printf("%lld", (long long)v->v.i64); break;
    case MK_GGUF_FLOAT32:
    case MK_GGUF_FLOAT64: printf("%g", v->v.f64); break;
    case MK_GGUF_BOOL: printf("%s", v->v.b ? "true" : "false"); break;
    case MK_GGUF_STRING: {
      uint64_t n = v->v.str.len;
      putchar('"');
      for (uint64_t i = 0; i < n && i < 120; i++) {
        char c = v->v.str.ptr[i];
        if (c == '\n') fputs("\\n", stdout);
        else if ((unsigned char)c < 0x20) printf("\\x%02x", (unsigned char)c);
        else putchar(c);
      }
      putchar('"');
      if (n > 120) printf("... (%llu bytes)", (unsigned long long)n);
      break;
    }
    case MK_GGUF_ARRAY: {
      printf("[%s x %llu]", mk_gguf_vtype_name(v->v.arr.elem_type), (unsigned long long)v->v.arr.n);
      if (v->v.arr.elem_type == MK_GGUF_STRING && v->v.arr.strs) {
        printf(" ");
        for (uint64_t i = 0; i < v->v.arr.n && i < 5; i++) {
          mk_gguf_value_t s = {.type = MK_GGUF_STRING};
          s.v.str = v->v.arr.strs[i];
          print_value(&s);
          printf(i + 1 < v->v.arr.n ? ", " : "");
        }
        if (v->v.arr.n > 5) printf("...");
      }
      break;
    }
  }
}

static int cmd_inspect(int argc, char **argv, mk_ctx_t *ctx) {
  const bool r0 = ctx->rank == 0;
  const char *path = NULL;
  bool all = false;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
      if (r0) usage_inspect(stdout);
      return EXIT_OK;
    }
  }
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--all")) {
      all = true;
    } else if (argv[i][0] == '-' && argv[i][1]) {
      if (r0) {
        fprintf(stderr, "morphkv inspect: unknown flag '%s'\n\n", argv[i]);
        usage_inspect(stderr);
      }
      return EXIT_USAGE;
    } else if (path) {
      if (r0) {
        fprintf(stderr, "morphkv inspect: one model at a time ('%s' and '%s')\n\n", path, argv[i]);
        usage_inspect(stderr);
      }
      return EXIT_USAGE;
    } else {
      path = argv[i];
    }
  }
  if (!path) {
    if (r0) {
      fprintf(stderr, "morphkv inspect: no model file given\n\n");
      usage_inspect(stderr);
    }
    return EXIT_USAGE;
  }
  if (!r0) return EXIT_OK;

  mk_error_t err = {{0}};
  mk_gguf_t *g = NULL;
  mk_hf_t *hf = NULL;
  if (mk_hf_is_dir(path) ? mk_hf_open(path, &hf, &err) != 0 : mk_gguf_open(path, &g, &err) != 0) {
    fprintf(stderr, "morphkv inspect: %s\n", err.msg);
    return EXIT_FAIL;
  }
  if (hf) {
    g = mk_hf_meta(hf);
    printf("directory:     %s (Hugging Face checkpoint: %zu safetensors file%s, %zu bytes; metadata translated "
           "to %zu GGUF keys)\n", path, mk_hf_n_files(hf), mk_hf_n_files(hf) == 1 ? "" : "s", mk_hf_file_bytes(hf),
           mk_gguf_n_kv(g));
  } else {
    printf("file:          %s (%zu bytes, GGUF v%u, alignment %zu, %zu metadata keys)\n", path,
           mk_gguf_file_size(g), mk_gguf_version(g), mk_gguf_alignment(g), mk_gguf_n_kv(g));
  }
  mk_tensor_source_t src = hf ? mk_hf_tensor_source(hf) : mk_gguf_tensor_source(g);
  char *arch = NULL, *name = NULL;
  if (mk_gguf_get_str(g, "general.architecture", &arch, &err) != MK_GGUF_OK) arch = NULL;
  if (mk_gguf_get_str(g, "general.name", &name, &err) != MK_GGUF_OK) name = NULL;
  printf("name:          %s\n", name ? name : "(none)");
  mk_model_config_t cfg;
  if (mk_model_config_read(g, &cfg, &err) == 0) {
    printf("architecture:  %s\n", cfg.arch_name);
    printf("hyperparameters:\n");
    printf("  n_layer %d, n_embd %d, n_head %d, n_kv_head %d, head_dim %d, n_ff %d\n", cfg.n_layer,
           cfg.n_embd, cfg.n_head, cfg.n_kv_head, cfg.head_dim, cfg.n_ff);
    printf("  n_vocab %d, n_ctx_train %d, rope_dim %d, rope_theta %g, rope %s, norm_eps %g\n",
           cfg.n_vocab, cfg.n_ctx_train, cfg.rope_dim, (double)cfg.rope_theta,
           cfg.rope_neox ? "neox" : "normal", (double)cfg.norm_eps);
    printf("  qkv_bias %s, output %s\n", cfg.qkv_bias ? "yes" : "no",
           mk_tensor_find(&src, "output.weight") ? "output.weight" : "tied to token_embd");
  } else {
    printf("architecture:  %s (not supported: %s)\n", arch ? arch : "(none)", err.msg);
  }
  mk_tokenizer_t *tok = NULL;
  char *tmodel = NULL;
  if (mk_gguf_get_str(g, "tokenizer.ggml.model", &tmodel, &err) != MK_GGUF_OK) tmodel = NULL;
  if (mk_tok_load(g, &tok, &err) == 0) {
    printf("tokenizer:     %s (%s), pre \"%s\"%s, vocab %d, bos %d, eos %d, add_bos %s\n",
           tmodel ? tmodel : "?",
           mk_tok_kind(tok) == MK_TOK_BPE ? "byte-level BPE" : "SentencePiece BPE",
           mk_tok_pre_name(tok) ? mk_tok_pre_name(tok) : "", mk_tok_pre_known(tok) ? "" : " (unknown: default regex)",
           mk_tok_n_vocab(tok), mk_tok_bos(tok), mk_tok_eos(tok), mk_tok_add_bos(tok) ? "yes" : "no");
    mk_tok_free(tok);
  } else {
    printf("tokenizer:     %s (not loadable: %s)\n", tmodel ? tmodel : "(none)", err.msg);
  }
  static const char *tmpl_names[] = {"none", "chatml", "llama3", "llama2"};
  mk_chat_tmpl_t ct = mk_chat_detect(g);
  printf("chat template: %s%s\n", (unsigned)ct < 4 ? tmpl_names[ct] : "?",
         mk_gguf_find(g, "tokenizer.chat_template") ? "" : " (the model has none)");

  print_tensors(&src, hf);
  if (all) {
    printf("metadata:\n");
    for (size_t i = 0; i < mk_gguf_n_kv(g); i++) {
      const mk_gguf_kv_t *kv = mk_gguf_kv_at(g, i);
      printf("  %s = ", kv->key);
      print_value(&kv->value);
      putchar('\n');
    }
  }
  free(arch);
  free(name);
  free(tmodel);
  if (hf) mk_hf_close(hf);
  else mk_gguf_close(g);
  return EXIT_OK;
}

/* ---- main ----------------------------------------------------------------------------------- */

static int dispatch(int argc, char **argv, mk_ctx_t *ctx) {
  const bool r0 = ctx->rank == 0;
  if (argc < 2) {
    if (r0) usage_top(stderr);
    return EXIT_USAGE;
  }
  const char *cmd = argv[1];
  if (!strcmp(cmd, "--help") || !strcmp(cmd, "-h") || !strcmp(cmd, "help")) {
    if (r0) usage_top(stdout);
    return EXIT_OK;
  }
  if (!strcmp(cmd, "--version") || !strcmp(cmd, "version")) {
    if (r0) print_version();
    return EXIT_OK;
  }
  if (!strcmp(cmd, "generate")) return cmd_generate(argc - 1, argv + 1, ctx);
  if (!strcmp(cmd, "inspect")) return cmd_inspect(argc - 1, argv + 1, ctx);
  if (!strcmp(cmd, "eval")) return mk_eval_main(argc - 1, argv + 1, ctx);
  if (r0) {
    fprintf(stderr, "morphkv: unknown command '%s'\n\n", cmd);
    usage_top(stderr);
  }
  return EXIT_USAGE;
}

int main(int argc, char **argv) {
  if (MPI_Init(&argc, &argv) != MPI_SUCCESS) {
    fprintf(stderr, "morphkv: MPI_Init failed\n");
    return EXIT_FAIL;
  }
  mk_ctx_t ctx;
  memset(&ctx, 0, sizeof ctx);
  mk_error_t err = {{0}};
  if (mk_ctx_init(&ctx, MPI_COMM_WORLD, &err) != 0) mk_ctx_abort(NULL, err.msg);
  int rc = dispatch(argc, argv, &ctx);
  fflush(stdout);
  mk_ctx_free(&ctx);
  MPI_Finalize();
  return rc;
}
