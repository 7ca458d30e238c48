/* Settings of `morphkv generate`: one table of options serves the command-line flags, the JSON
 * config files and the help text, so the three cannot drift apart.
 *
 * A config key is the long flag name without the dashes and with '_' for '-' ("max_new_tokens"
 * for --max-new-tokens). Precedence: defaults < config file (--config) < flags, whatever the
 * order of the flags on the command line. An unknown key or flag is an error that names it.
 * String values of path options (model, prompt_file, stats_json) expand ${VAR}, ${VAR:-default}
 * and a leading "~/", so a config file can point into the model cache. */
#ifndef MK_CONFIG_H
#define MK_CONFIG_H

#include <stdbool.h>
#include <stdio.h>

#include "kvcache/kvcache.h"
#include "parallel/comm_kind.h"
#include "src/backend.h"
#include "src/mk_error.h"
#include "src/sampler.h"

#define MK_VERSION_STRING "0.1.0" /* keep equal to project(VERSION) in CMakeLists.txt */
#define MK_GEN_MAX_STOP 16

typedef struct mk_gen_opts {
  char *model;
  char *prompt;
  char *prompt_file;
  bool chat;
  char *chat_template; /* NULL: detect from the model */
  char *system;
  int max_new_tokens;
  int ctx_size;        /* 0: the model's training context */
  mk_sampler_params_t sampling;
  int threads;         /* 0: online CPUs / ranks on this node */
  char *stats_json;
  int stats_every;     /* kv_bytes_by_step sampling interval (tokens) */
  char *stop[MK_GEN_MAX_STOP];
  int n_stop;
  mk_kv_config_t kv;
  mk_backend_kind_t backend;
  int simd;            /* -1: best available, else mk_simd_t */
  int tp;              /* 0: the world size */
  bool deterministic;   /* --deterministic on: MK_NUMERICS_DETERMINISTIC (default off) */
  mk_comm_kind_t comm; /* --comm (auto) */
  float comm_timeout;  /* seconds a collective may wait before the job is aborted; 0 = off */
  bool ignore_eos;     /* keep generating past end-of-generation tokens (benchmarks) */
  bool quiet, progress;
  char *config;        /* the config file that was loaded, if any */
  /* batch mode (src/batch.h, src/batch_cli.c) */
  char *batch_file;    /* JSONL requests, "-" = stdin */
  char *out;           /* JSONL results, "-" = stdout (the default) */
  bool ordered;        /* results in input order */
  int max_seqs;        /* sequences decoding together (default 8) */
  int prefill_chunk;   /* prompt tokens per forward pass (default 512) */
  size_t kv_memory;    /* KV budget in bytes over all ranks, 0 = none */
} mk_gen_opts_t;

void mk_gen_opts_default(mk_gen_opts_t *o);
void mk_gen_opts_free(mk_gen_opts_t *o);

/* Sets one option from text. name: flag form ("max-new-tokens") or key form ("max_new_tokens").
 * value may be NULL for booleans (= true). Errors name the option and the value. */
int mk_gen_opts_set(mk_gen_opts_t *o, const char *name, const char *value, mk_error_t *err);

/* Applies a JSON object (a config file) to o. label names the source in messages. */
int mk_gen_opts_load_json_text(mk_gen_opts_t *o, const char *text, const char *label,
                               mk_error_t *err);
int mk_gen_opts_load_json(mk_gen_opts_t *o, const char *path, mk_error_t *err);

/* Parses the flags of `generate` (argv[0] is the subcommand name and is skipped): first the
 * --config file, then every other flag. *help is set when --help/-h was seen (then nothing else
 * is checked). Positional arguments are an error. */
int mk_gen_opts_parse_args(mk_gen_opts_t *o, int argc, char **argv, bool *help, mk_error_t *err);

/* Checks what only makes sense once everything is set (a model and exactly one prompt source,
 * positive limits, the cache policy's own validation). */
int mk_gen_opts_check(const mk_gen_opts_t *o, mk_error_t *err);

/* The option table as help text. */
void mk_gen_opts_usage(FILE *f);

/* Expands ${VAR}, ${VAR:-default} and a leading "~/" (malloc'd result; NULL on a malformed
 * reference, with err). */
char *mk_expand_path(const char *s, mk_error_t *err);

#endif
