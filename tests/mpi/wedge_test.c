/* A rank wedges while its peers are inside the score-sync all-reduce (run by wedge_test.sh in
 * mode "self", under mpirun).
 *
 *   wedge_test MODEL STOP_RANK TIMEOUT_S [AT]
 * Opens the demo model on every rank, sets the collective watchdog to TIMEOUT_S, starts a MorphKV
 * run (logit_sum, W = 8, C = 48: evicting, and with 3 KV heads over 2 ranks one head is replicated,
 * so every layer's step ends with a score-sync all-reduce of the replicated head's query sum),
 * prefills and decodes greedily. The communicator's all-reduce is wrapped: on rank STOP_RANK the
 * AT-th score-sync all-reduce (default 200, well into decoding) first prints "wedge_test: rank R
 * stops itself (pid P) before score-sync all-reduce #AT" and raises SIGSTOP. The peers are then
 * waiting in that all-reduce; the watchdog must take every rank down, naming rank STOP_RANK and
 * the score sync. Reaching the end of the decode prints FAIL (the wedge was not noticed). */
#define _POSIX_C_SOURCE 200809L
#include <mpi.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "parallel/ctx.h"
#include "src/cli.h" /* mk_ctx_abort */
#include "src/engine.h"

static const mk_comm_ops_t *real_ops;
static mk_comm_ops_t wrapped_ops;
static int stop_rank = -1, stop_at = 200, n_score;

static int wrapped_allreduce_sum(mk_comm_t *c, float *buf, size_t n, mk_error_t *err) {
  if (c->tag == MK_COMM_SCORE && ++n_score == stop_at && c->rank == stop_rank) {
    fprintf(stderr, "wedge_test: rank %d stops itself (pid %ld) before score-sync all-reduce #%d\n",
            c->rank, (long)getpid(), n_score);
    fflush(stderr);
    raise(SIGSTOP);
  }
  return real_ops->allreduce_sum_f32(c, buf, n, err);
}

/* An engine error ends the job as the CLI does (the watchdog's diagnosis arrives this way). */
static void die(const mk_ctx_t *ctx, const mk_error_t *err) { mk_ctx_abort(ctx, err->msg); }

int main(int argc, char **argv) {
  MPI_Init(&argc, &argv);
  mk_ctx_t ctx;
  mk_error_t err = {{0}};
  if (mk_ctx_init(&ctx, MPI_COMM_WORLD, &err) != 0) mk_ctx_abort(NULL, err.msg);
  if (argc < 4) mk_ctx_abort(&ctx, "usage: wedge_test MODEL STOP_RANK TIMEOUT_S [AT]");
  stop_rank = atoi(argv[2]);
  mk_watchdog_set_timeout(ctx.wd, atof(argv[3]));
  if (argc > 4) stop_at = atoi(argv[4]);
  real_ops = ctx.comm->ops;
  wrapped_ops = *real_ops;
  wrapped_ops.allreduce_sum_f32 = wrapped_allreduce_sum;
  ctx.comm->ops = &wrapped_ops;

  mk_engine_params_t ep = {.model_path = argv[1],
                           .backend = {.kind = MK_BACKEND_CPU, .n_threads = 1, .simd = -1}};
  mk_engine_t *e = NULL;
  if (mk_engine_open(&e, &ep, &ctx, &err) != 0) die(&ctx, &err);
  mk_kv_config_t kv;
  mk_kv_config_default(&kv);
  kv.policy = MK_KV_MORPHKV;
  kv.gqa = MK_KV_GQA_LOGIT_SUM;
  kv.window = 8;
  kv.capacity = 48;
  const char *text = "Once upon a time, in a small village by the sea, there lived";
  int32_t ids[512];
  int np = mk_tok_encode(mk_engine_tokenizer(e), text, strlen(text), false, false, ids, 64, &err);
  if (np <= 0) die(&ctx, &err);
  const int n_new = 400;
  const int V = mk_engine_n_vocab(e);
  float *logits = malloc(sizeof(float) * (size_t)V);
  if (!logits || mk_engine_begin(e, &kv, 1, np, np + n_new + 1, &err) != 0) die(&ctx, &err);
  if (mk_engine_step(e, 0, ids, np, false, logits, &err) != 0) die(&ctx, &err);
  for (int t = 0; t < n_new; t++) {
    int32_t best = 0;
    for (int v = 1; v < V; v++)
      if (logits[v] > logits[best]) best = v;
    if (mk_engine_step(e, 0, &best, 1, false, logits, &err) != 0) die(&ctx, &err);
  }
  printf("FAIL: wedge_test: %d tokens decoded, %d score syncs, and no rank stopped\n", n_new, n_score);
  free(logits);
  mk_engine_close(e);
  mk_ctx_free(&ctx);
  MPI_Finalize();
  return 1;
}
