/* Process context (see ctx.h). */
#include "parallel/ctx.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "parallel/mpi_check.h"

static int ctx_build(mk_ctx_t *ctx, MPI_Comm world, mk_error_t *err) {
  int wrank = -1;
  MPI_Comm_rank(world, &wrank);
  MK_MPI_CHECK(MPI_Comm_dup(world, &ctx->mpi), wrank, err);
  MK_MPI_CHECK(MPI_Comm_set_errhandler(ctx->mpi, MPI_ERRORS_RETURN), wrank, err);
  MK_MPI_CHECK(MPI_Comm_rank(ctx->mpi, &ctx->rank), wrank, err);
  MK_MPI_CHECK(MPI_Comm_size(ctx->mpi, &ctx->world), wrank, err);
  MPI_Comm node = MPI_COMM_NULL;
  MK_MPI_CHECK(MPI_Comm_split_type(ctx->mpi, MPI_COMM_TYPE_SHARED, ctx->rank, MPI_INFO_NULL, &node),
               ctx->rank, err);
  int rc = MPI_Comm_rank(node, &ctx->local_rank);
  if (rc == MPI_SUCCESS) rc = MPI_Comm_size(node, &ctx->local_size);
  MPI_Comm_free(&node);
  if (rc != MPI_SUCCESS)
    return mk_mpi_fail(err, rc, "MPI_Comm_rank/size(node)", ctx->rank, __FILE__, __LINE__);
  if (mk_watchdog_create(ctx->mpi, MK_WATCHDOG_DEFAULT_S, &ctx->wd, err)) return -1;
  if (mk_comm_mpi_create(ctx->mpi, MK_COMM_MPI_ALLREDUCE, &ctx->comm, err)) return -1;
  ctx->comm->wd = ctx->wd;
  return 0;
}

int mk_ctx_init(mk_ctx_t *ctx, MPI_Comm world, mk_error_t *err) {
  memset(ctx, 0, sizeof *ctx);
  ctx->mpi = MPI_COMM_NULL;
  int inited = 0, finalized = 0;
  MPI_Initialized(&inited);
  MPI_Finalized(&finalized);
  if (!inited || finalized)
    return mk_fail(err, "process context: MPI is not running (call MPI_Init first)");
  if (ctx_build(ctx, world, err)) {
    mk_ctx_free(ctx);
    return -1;
  }
  return 0;
}

void mk_ctx_free(mk_ctx_t *ctx) {
  if (!ctx) return;
  mk_comm_free(ctx->comm);
  ctx->comm = NULL;
  mk_watchdog_free(ctx->wd);
  ctx->wd = NULL;
  int finalized = 0;
  MPI_Finalized(&finalized);
  /* A zeroed ctx has mpi == 0, which is not MPI_COMM_NULL in Open MPI: only free what we made. */
  if (!finalized && ctx->mpi != MPI_COMM_NULL && ctx->mpi != (MPI_Comm)0) MPI_Comm_free(&ctx->mpi);
  ctx->mpi = MPI_COMM_NULL;
}

static void ctx_swap_comm(mk_ctx_t *ctx, mk_comm_t *c) {
  if (ctx->comm) {
    c->bytes_model = ctx->comm->bytes_model;
    c->bytes_score = ctx->comm->bytes_score;
    c->bytes_other = ctx->comm->bytes_other;
  }
  mk_comm_free(ctx->comm);
  c->wd = ctx->wd;
  ctx->comm = c;
}

int mk_ctx_use_mpi(mk_ctx_t *ctx, mk_comm_mpi_mode_t mode, mk_error_t *err) {
  mk_comm_t *c;
  if (mk_comm_mpi_create(ctx->mpi, mode, &c, err)) return -1;
  ctx_swap_comm(ctx, c);
  return 0;
}

#ifdef MORPHKV_HAVE_NCCL
int mk_ctx_use_nccl(mk_ctx_t *ctx, int device, void *cuda_stream, mk_error_t *err) {
  mk_comm_t *c;
  if (mk_comm_nccl_create(ctx->mpi, device, cuda_stream, &c, err)) return -1;
  ctx_swap_comm(ctx, c);
  return 0;
}
#endif

int mk_ctx_agree(const mk_ctx_t *ctx, int status, mk_error_t *err) {
  int mine = status ? ctx->rank : INT_MAX, first = INT_MAX;
  /* err may be NULL on a rank that passes; we still need a buffer for the bcast. */
  mk_error_t local;
  mk_error_t *e = err ? err : &local;
  if (!status || !err) e->msg[0] = '\0';
  if (mk_wd_allreduce(ctx->wd, &mine, &first, 1, MPI_INT, MPI_MIN, ctx->mpi, "failure agreement",
                      e))
    return -1;
  if (first == INT_MAX) return 0;
  char msg[sizeof e->msg];
  if (ctx->rank == first) memcpy(msg, e->msg, sizeof msg);
  msg[sizeof msg - 1] = '\0';
  if (mk_wd_bcast(ctx->wd, msg, (int)sizeof msg, MPI_CHAR, first, ctx->mpi, "failure agreement", e))
    return -1;
  msg[sizeof msg - 1] = '\0';
  return mk_fail(e, "rank %d: %s", first, msg);
}
