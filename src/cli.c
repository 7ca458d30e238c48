/* The front ends' failure rules (see cli.h). */
#include "src/cli.h"

#include <omp.h>
#include <stdio.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "parallel/watchdog.h"
#include "src/tokenizer.h"

int mk_cli_agree(const mk_ctx_t *ctx, const char *cmd, int status, mk_error_t *err) {
  if (ctx->world > 1) status = mk_ctx_agree(ctx, status, err);
  if (status != 0 && ctx->rank == 0) fprintf(stderr, "morphkv %s: %s\n", cmd, err->msg);
  return status;
}

int mk_cli_fail(const mk_ctx_t *ctx, const char *cmd, const mk_error_t *err) {
  if (ctx->world > 1) mk_ctx_abort(ctx, err->msg);
  if (cmd)
    fprintf(stderr, "morphkv %s: %s\n", cmd, err->msg);
  else
    fprintf(stderr, "morphkv: %s\n", err->msg);
  return 1;
}

mk_engine_params_t mk_cli_engine_params(const mk_gen_opts_t *o, const mk_ctx_t *ctx) {
  mk_engine_params_t ep = {.model_path = o->model, .tp = o->tp, .pp = o->pp, .comm = o->comm,
                           .numerics = o->deterministic ? MK_NUMERICS_DETERMINISTIC : MK_NUMERICS_FAST};
  ep.backend.kind = o->backend;
  ep.backend.n_threads = o->threads > 0 ? o->threads : mk_cli_default_threads(ctx);
  ep.backend.simd = o->simd;
  ep.backend.device = -1; /* the node-local rank's GPU, shared round-robin past the visible ones */
  ep.backend.local_rank = ctx->local_rank;
  return ep;
}

int mk_cli_gather_rank_stats(const mk_ctx_t *ctx, const mk_engine_t *e, mk_rank_stats_t *all, mk_error_t *err) {
  mk_engine_stats_t es;
  mk_engine_get_stats(e, &es);
  mk_rank_stats_t mine = mk_rank_stats_of(&es);
  if (ctx->world == 1) {
    all[0] = mine;
    return 0;
  }
  int n = (int)(sizeof mine / sizeof(uint64_t));
  return mk_wd_allgather(ctx->wd, &mine, n, MPI_UINT64_T, all, n, MPI_UINT64_T, ctx->mpi, "statistics", err);
}

int mk_cli_default_threads(const mk_ctx_t *ctx) {
  int avail = omp_get_num_procs();
  long online = sysconf(_SC_NPROCESSORS_ONLN);
  int n = avail;
  if (online > 0 && avail >= online && ctx->local_size > 1) n = avail / ctx->local_size;
  return n < 1 ? 1 : n;
}

void mk_ctx_abort(const mk_ctx_t *ctx, const char *msg) {
  int inited = 0, finalized = 0;
  MPI_Initialized(&inited);
  MPI_Finalized(&finalized);
  int running = inited && !finalized;
  int rank = -1;
  MPI_Comm comm = MPI_COMM_WORLD;
  if (ctx && ctx->world > 0) {
    rank = ctx->rank;
    comm = ctx->mpi;
  } else if (running) {
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  }
  fprintf(stderr, "morphkv: rank %d: %s\n", rank, msg ? msg : "(no message)");
  fflush(stderr);
  fflush(stdout);
  if (running) MPI_Abort(comm, 1);
  _Exit(1); /* MPI_Abort should not return; never hand control back either way */
}

/* The chat rendering of text (malloc'd), or NULL with err. */
static char *render_chat(const mk_engine_t *e, const char *text, const char *chat_template, const char *system,
                         mk_error_t *err) {
  mk_chat_tmpl_t tmpl = MK_CHAT_NONE;
  if (chat_template) {
    if (mk_chat_parse(chat_template, &tmpl) != 0) {
      mk_fail(err, "--chat-template %s: unknown template", chat_template);
      return NULL;
    }
  } else {
    tmpl = mk_chat_detect(mk_engine_gguf(e));
    if (tmpl == MK_CHAT_NONE) {
      mk_fail(err, "--chat: the model has no chat template this build recognises; pass --chat-template "
                   "chatml|llama3|llama2");
      return NULL;
    }
  }
  char *dflt = NULL;
  if (!system && tmpl == MK_CHAT_CHATML) dflt = mk_chat_default_system(mk_engine_gguf(e));
  char *rendered = mk_chat_render(tmpl, system ? system : dflt, text);
  free(dflt);
  if (!rendered) mk_fail(err, "--chat: rendering the template failed");
  return rendered;
}

int mk_cli_encode_prompt(const mk_engine_t *e, const char *text_in, bool chat, const char *chat_template,
                         const char *system, int32_t **ids_out, int *n_out, mk_error_t *err) {
  *ids_out = NULL;
  const mk_tokenizer_t *tok = mk_engine_tokenizer(e);
  char *text = chat ? render_chat(e, text_in, chat_template, system, err) : strdup(text_in);
  if (!text) return chat ? -1 : mk_fail(err, "out of memory");
  bool add_bos = mk_tok_add_bos(tok);
  /* a template (or prompt) that already starts with the BOS text gets no second BOS */
  int32_t bos = mk_tok_bos(tok);
  if (add_bos && bos >= 0) {
    const char *bt = mk_tok_text(tok, bos);
    if (bt && *bt && strncmp(text, bt, strlen(bt)) == 0) add_bos = false;
  }
  size_t len = strlen(text);
  int cap = (int)(len < (size_t)INT_MAX / 2 ? len + 8 : (size_t)INT_MAX / 2);
  int32_t *ids = malloc((size_t)cap * sizeof *ids);
  if (!ids) {
    free(text);
    return mk_fail(err, "out of memory for the prompt's tokens");
  }
  int n = mk_tok_encode(tok, text, len, add_bos, true, ids, cap, err);
  if (n > cap) {
    int32_t *t = realloc(ids, (size_t)n * sizeof *ids);
    if (!t) {
      free(ids);
      free(text);
      return mk_fail(err, "out of memory for the prompt's tokens");
    }
    ids = t;
    n = mk_tok_encode(tok, text, len, add_bos, true, ids, n, err);
  }
  free(text);
  if (n < 0) {
    free(ids);
    return -1;
  }
  if (n == 0) {
    free(ids);
    return mk_fail(err, "the prompt is empty (no tokens)");
  }
  *ids_out = ids;
  *n_out = n;
  return 0;
}
