/* The front ends' failure rules (see cli.h). */
#include "src/cli.h"

#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

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
