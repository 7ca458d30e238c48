/* MPI integration test of the PP x TP grid's communication (parallel/ctx.h mk_ctx_split_stages,
 * parallel/comm.h mk_comm_send / mk_comm_recv) on real ranks:
 *   mpirun -np W pp_grid_test T          split W ranks into W/T stages of T; check that TP
 *                                        all-reduces stay inside a stage, that activations flow
 *                                        stage to stage on every TP lane (bitwise), that the
 *                                        last stage's token reaches every rank, and the counters
 *   mpirun -np W pp_grid_test T fail R   rank R (a middle stage) reports a bad config and calls
 *                                        mk_ctx_abort while its neighbours wait in send/recv
 *                                        (fail_test.sh: the job must die within 10 s)
 *   mpirun -np W pp_grid_test T wedge R  rank R never sends; its next stage's recv must fail
 *                                        under the watchdog (1 s) instead of hanging
 *   mpirun -np W pp_grid_test T stop R   every stage receives, runs a TP all-reduce, sends; rank
 *                                        R prints "wedge_test: rank R stops itself" and raises
 *                                        SIGSTOP before its all-reduce (wedge_test.sh self: every
 *                                        healthy rank's diagnosis must name R, none a healthy one:
 *                                        its TP peers wait in the all-reduce, the next stage in
 *                                        recv, directly from R or from R's alive TP peer, earlier
 *                                        stages in the closing world barrier; every rank aborts
 *                                        2 s after its diagnosis, so that all of them are printed)
 * Rank 0 prints "PASS: ..." or "FAIL: ..." (normal mode). */
#define _POSIX_C_SOURCE 200809L /* nanosleep */
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "parallel/ctx.h"
#include "parallel/plan.h"
#include "src/cli.h" /* mk_ctx_abort */
#include "tests/mpi/tp_common.h" /* CHECK, fails */

static int g_rank = -1;

#define MUST(call, err)                                                                          \
  do {                                                                                           \
    if ((call) != 0) {                                                                           \
      fprintf(stderr, "FAIL rank %d: %s:%d: %s: %s\n", g_rank, __FILE__, __LINE__, #call, (err).msg); \
      MPI_Abort(MPI_COMM_WORLD, 2);                                                              \
    }                                                                                            \
  } while (0)

enum { N_LAYER = 30, N = 3 * 576 }; /* (n = 3 tokens, n_embd = 576) of float activations */

/* The stage loop's data path with a stand-in for the layers: stage s adds (s + 1) * (i % 7) to
 * element i; the exact result is known in closed form, so any lost, reordered or crossed message
 * (another lane's data) shows as a mismatch. */
static void run_pipeline(mk_ctx_t *ctx, const mk_grid_t *g) {
  mk_error_t err = {{0}};
  float *x = malloc(sizeof(float) * N);
  for (int step = 0; step < 4; step++) {
    if (g->first)
      for (int i = 0; i < N; i++) x[i] = (float)(i + 1000 * g->tp_rank + step);
    else
      MUST(mk_comm_recv(ctx->comm, x, sizeof(float) * N, g->prev, &err), err);
    for (int i = 0; i < N; i++) x[i] += (float)((g->stage + 1) * (i % 7));
    if (!g->last) MUST(mk_comm_send(ctx->comm, x, sizeof(float) * N, g->next, &err), err);
    int tri = g->pp * (g->pp + 1) / 2, bad = 0;
    if (g->last)
      for (int i = 0; i < N; i++) bad += x[i] != (float)(i + 1000 * g->tp_rank + step + tri * (i % 7));
    CHECK(!bad, "step %d: %d activation elements wrong on the last stage (lane %d)", step, bad, g->tp_rank);
    /* the token: sampled on the last stage's TP rank 0, broadcast over the world */
    int tok = g->last && g->tp_rank == 0 ? 17 + step : -1;
    MUST(mk_comm_bcast(ctx->comm, MK_COMM_SAMPLE, &tok, sizeof tok, ctx->world - g->tp, &err), err);
    CHECK(tok == 17 + step, "step %d: token %d, expected %d", step, tok, 17 + step);
  }
  uint64_t expect = g->last ? 0 : 4ULL * sizeof(float) * N;
  CHECK(ctx->comm->bytes_p2p == expect, "bytes_p2p %llu, expected %llu",
        (unsigned long long)ctx->comm->bytes_p2p, (unsigned long long)expect);
  free(x);
}

static int run_checks(mk_ctx_t *ctx, int tp) {
  mk_error_t err = {{0}};
  mk_grid_t g;
  int pp = mk_grid_tp(N_LAYER, ctx->world, ctx->world / tp, &err) == tp ? ctx->world / tp : -1;
  MUST(pp < 0 ? -1 : mk_grid_make(N_LAYER, pp, tp, ctx->rank, &g, &err), err);
  MUST(mk_ctx_split_stages(ctx, tp, &err), err);
  CHECK(ctx->pp == pp && ctx->tp == tp && ctx->stage == g.stage, "ctx grid %d x %d stage %d", ctx->pp,
        ctx->tp, ctx->stage);
  mk_comm_t *tc = mk_ctx_tp_comm(ctx);
  CHECK(tc->size == tp && tc->rank == g.tp_rank, "TP communicator: rank %d of %d, expected %d of %d", tc->rank,
        tc->size, g.tp_rank, tp);
  /* a TP all-reduce sums the world ranks of this stage only */
  float v = (float)ctx->rank;
  MUST(mk_comm_allreduce_sum_f32(tc, MK_COMM_MODEL, &v, 1, &err), err);
  float want = (float)(g.stage * tp * tp + tp * (tp - 1) / 2);
  CHECK(v == want, "stage %d TP all-reduce gave %g, expected %g", g.stage, v, want);
  run_pipeline(ctx, &g);
  /* peers outside the communicator (or oneself) are refused with a message */
  CHECK(mk_comm_send(ctx->comm, &v, 4, ctx->world, &err) == -1 && strstr(err.msg, "is not another rank"),
        "bad peer accepted: %s", err.msg);
  CHECK(mk_comm_recv(ctx->comm, &v, 4, ctx->rank, &err) == -1, "recv from self accepted");
  int total = 0;
  MPI_Allreduce(&fails, &total, 1, MPI_INT, MPI_SUM, ctx->mpi);
  if (ctx->rank == 0) {
    if (total)
      printf("FAIL: %d check(s) failed over P=%d x T=%d\n", total, pp, tp);
    else
      printf("PASS: P=%d x T=%d: TP groups, stage-to-stage activations, token broadcast\n", pp, tp);
  }
  return total ? 1 : 0;
}

/* mk_ctx_abort's message at once, its MPI_Abort two seconds later, so that every healthy rank's
 * diagnosis is printed before the first abort takes the job down (they all time out within the
 * grace period of each other). */
static void abort_late(const mk_ctx_t *ctx, const char *msg) {
  fprintf(stderr, "morphkv: rank %d: %s\n", ctx->rank, msg);
  fflush(stderr);
  struct timespec ts = {2, 0};
  nanosleep(&ts, NULL);
  MPI_Abort(ctx->mpi, 1);
}

/* Mode stop: one step of the stage loop with a TP all-reduce, rank bad_rank stopping before it. */
static void run_stop(mk_ctx_t *ctx, const mk_grid_t *g, int bad_rank) {
  mk_error_t err = {{0}};
  float x[64] = {0};
  if (!g->first && mk_comm_recv(ctx->comm, x, sizeof x, g->prev, &err)) abort_late(ctx, err.msg);
  if (ctx->rank == bad_rank) {
    fprintf(stderr, "wedge_test: rank %d stops itself (pid %ld) before its stage's TP all-reduce\n", ctx->rank,
            (long)getpid());
    fflush(stderr);
    raise(SIGSTOP);
  }
  if (mk_comm_allreduce_sum_f32(mk_ctx_tp_comm(ctx), MK_COMM_MODEL, x, 64, &err)) abort_late(ctx, err.msg);
  if (!g->last && mk_comm_send(ctx->comm, x, sizeof x, g->next, &err)) abort_late(ctx, err.msg);
  if (mk_comm_barrier(ctx->comm, &err)) abort_late(ctx, err.msg);
}

/* Rank R fails (fail), goes silent (wedge) or stops (stop) in the middle of the pipeline. */
static int run_failure(mk_ctx_t *ctx, int tp, int bad_rank, int wedge, int stop) {
  mk_error_t err = {{0}};
  mk_grid_t g;
  MUST(mk_grid_make(N_LAYER, ctx->world / tp, tp, ctx->rank, &g, &err), err);
  MUST(mk_ctx_split_stages(ctx, tp, &err), err);
  mk_watchdog_set_timeout(ctx->wd, 1.0);
  if (stop) {
    run_stop(ctx, &g, bad_rank);
    return 3; /* not reached: the barrier cannot complete */
  }
  float x[64] = {0};
  if (ctx->rank == bad_rank) {
    if (!wedge) {
      mk_fail(&err, "bad config: stage %d cannot map its layers (test-induced failure)", g.stage);
      mk_ctx_abort(ctx, err.msg);
    }
    struct timespec ts = {30, 0};
    nanosleep(&ts, NULL); /* never sends; the job must be down long before this returns */
    return 3;
  }
  if (!g.first && mk_comm_recv(ctx->comm, x, sizeof x, g.prev, &err)) mk_ctx_abort(ctx, err.msg);
  if (!g.last && mk_comm_send(ctx->comm, x, sizeof x, g.next, &err)) mk_ctx_abort(ctx, err.msg);
  /* everyone then meets in a world collective that the bad rank never joins */
  if (mk_comm_barrier(ctx->comm, &err)) mk_ctx_abort(ctx, err.msg);
  return 3; /* not reached: the barrier cannot complete */
}

int main(int argc, char **argv) {
  MPI_Init(&argc, &argv);
  mk_ctx_t ctx;
  mk_error_t err = {{0}};
  if (mk_ctx_init(&ctx, MPI_COMM_WORLD, &err) != 0) {
    fprintf(stderr, "FAIL: %s\n", err.msg);
    MPI_Abort(MPI_COMM_WORLD, 2);
  }
  g_rank = ctx.rank;
  int tp = argc >= 2 ? atoi(argv[1]) : 1, rc;
  if (argc >= 4)
    rc = run_failure(&ctx, tp, atoi(argv[3]), strcmp(argv[2], "wedge") == 0, strcmp(argv[2], "stop") == 0);
  else rc = run_checks(&ctx, tp);
  mk_ctx_free(&ctx);
  MPI_Finalize();
  return rc;
}
