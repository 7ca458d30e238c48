/* Process context (see ctx.h). */
#include "parallel/ctx.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "parallel/mpi_check.h"
#include "src/backend.h"

static int ctx_build(mk_ctx_t *ctx, MPI_Comm world, mk_error_t *err) {
  if (mk_mpi_dup(world, "process context", &ctx->mpi, &ctx->rank, &ctx->world, err) != 0) return -1;
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
  ctx->pp = 1;
  ctx->tp = ctx->world;
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
  mk_comm_free(ctx->tp_comm);
  ctx->tp_comm = NULL;
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

int mk_ctx_split_stages(mk_ctx_t *ctx, int tp, mk_error_t *err) {
  if (tp < 1 || ctx->world % tp)
    return mk_fail(err, "rank %d: cannot split %d ranks into TP groups of %d", ctx->rank, ctx->world, tp);
  if (tp == ctx->tp && (ctx->tp_comm || tp == ctx->world)) return 0; /* already split so: engines share it */
  mk_comm_free(ctx->tp_comm);
  ctx->tp_comm = NULL;
  ctx->pp = ctx->world / tp;
  ctx->tp = tp;
  ctx->stage = ctx->rank / tp;
  if (ctx->pp == 1) return 0; /* the world is the TP group */
  MPI_Comm stage = MPI_COMM_NULL;
  MK_MPI_CHECK(MPI_Comm_split(ctx->mpi, ctx->stage, ctx->rank, &stage), ctx->rank, err);
  int rc = mk_comm_mpi_create(stage, MK_COMM_MPI_ALLREDUCE, &ctx->tp_comm, err);
  MPI_Comm_free(&stage);
  if (rc) return -1;
  ctx->tp_comm->wd = ctx->wd;
  return 0;
}

mk_comm_t *mk_ctx_tp_comm(const mk_ctx_t *ctx) {
  return ctx->tp_comm ? ctx->tp_comm : ctx->comm;
}

static void ctx_swap_comm(mk_ctx_t *ctx, mk_comm_t *c) {
  if (ctx->comm) {
    c->bytes_model = ctx->comm->bytes_model;
    c->bytes_score = ctx->comm->bytes_score;
    c->bytes_sample = ctx->comm->bytes_sample;
    c->bytes_other = ctx->comm->bytes_other;
    c->bytes_p2p = ctx->comm->bytes_p2p;
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

int mk_ctx_use_nccl(mk_ctx_t *ctx, int device, void *cuda_stream, mk_error_t *err) {
  mk_comm_t *c;
  if (!mk_comm_nccl_create)
    return mk_fail(err, "rank %d: this morphkv was built without NCCL (use --comm mpi)", ctx->rank);
  if (mk_comm_nccl_create(ctx->mpi, device, cuda_stream, &c, err)) return -1;
  ctx_swap_comm(ctx, c);
  return 0;
}

/* Whether two ranks of this node report the same physical GPU; fills `why` for the first pair.
 * Collective over ctx->mpi (the node communicator is split from it). Returns -1 on MPI errors. */
static int node_shares_gpu(mk_ctx_t *ctx, const mk_backend_t *be, bool *shared, mk_error_t *why,
                           mk_error_t *err) {
  *shared = false;
  MPI_Comm node = MPI_COMM_NULL;
  MK_MPI_CHECK(MPI_Comm_split_type(ctx->mpi, MPI_COMM_TYPE_SHARED, ctx->rank, MPI_INFO_NULL, &node),
               ctx->rank, err);
  enum { ID = sizeof be->comm.device_id };
  char *ids = calloc((size_t)ctx->local_size, ID);
  int rc = ids ? MPI_Allgather(be->comm.device_id, ID, MPI_CHAR, ids, ID, MPI_CHAR, node) : MPI_ERR_NO_MEM;
  MPI_Comm_free(&node);
  if (rc != MPI_SUCCESS) {
    free(ids);
    return mk_mpi_fail(err, rc, "MPI_Allgather(GPU ids of this node)", ctx->rank, __FILE__, __LINE__);
  }
  for (int i = 0; i < ctx->local_size && !*shared; i++)
    for (int j = i + 1; j < ctx->local_size && !*shared; j++) {
      if (strncmp(ids + (size_t)i * ID, ids + (size_t)j * ID, ID) != 0) continue;
      char host[MPI_MAX_PROCESSOR_NAME] = "?";
      int len = 0;
      MPI_Get_processor_name(host, &len);
      const char *vis = getenv("CUDA_VISIBLE_DEVICES");
      *shared = true;
      mk_fail(why,
              "--comm nccl: local ranks %d and %d of node %s both use GPU %.32s (CUDA_VISIBLE_DEVICES=%s), "
              "and NCCL needs one GPU per rank; give each rank its own GPU (e.g. CUDA_VISIBLE_DEVICES per "
              "local rank) or use --comm mpi, which stages through host memory",
              i, j, host, ids + (size_t)i * ID, vis ? vis : "unset");
    }
  free(ids);
  return 0;
}

/* mk_ctx_agree on `mine`, then the agreed message into err. */
static int agree_into(mk_ctx_t *ctx, int st, mk_error_t *mine, mk_error_t *err) {
  if (mk_ctx_agree(ctx, st, mine) == 0) return 0;
  memcpy(err->msg, mine->msg, sizeof err->msg);
  return -1;
}

int mk_ctx_comm_for_backend(mk_ctx_t *ctx, mk_comm_kind_t want, mk_backend_t *be, mk_comm_t **out,
                            mk_error_t *err) {
  *out = NULL;
  mk_error_t mine = {{0}};
  int st = 0;
  if (!be->comm.device_memory) {
    if (want == MK_COMM_KIND_NCCL)
      st = mk_fail(&mine, "--comm nccl needs the CUDA backend (NCCL moves device memory); backend %s "
                          "keeps host memory: use --comm mpi or auto", be->ops->name);
    return agree_into(ctx, st, &mine, err); /* the caller uses ctx->comm, the host MPI communicator */
  }
  bool shared = false;
  if (node_shares_gpu(ctx, be, &shared, &mine, err) != 0) return -1;
  int flag = shared, anyshared = 0;
  MK_MPI_CHECK(MPI_Allreduce(&flag, &anyshared, 1, MPI_INT, MPI_MAX, ctx->mpi), ctx->rank, err);
  bool nccl = false;
  if (want == MK_COMM_KIND_NCCL) {
    nccl = true;
    if (!mk_comm_nccl_create)
      st = mk_fail(&mine, "--comm nccl: this morphkv was built without NCCL; use --comm mpi");
    else if (shared)
      st = -1; /* node_shares_gpu wrote the message */
  } else if (want == MK_COMM_KIND_AUTO) {
    nccl = mk_comm_nccl_create && (ctx->pp > 1 ? ctx->tp : ctx->world) > 1 && !anyshared;
  }
  if (agree_into(ctx, st, &mine, err) != 0) return -1;
  /* the TP group: this rank's pipeline stage after mk_ctx_split_stages, else the world (the
   * communicators below duplicate it) */
  MPI_Comm group = ctx->mpi;
  if (ctx->pp > 1) MK_MPI_CHECK(MPI_Comm_split(ctx->mpi, ctx->stage, ctx->rank, &group), ctx->rank, err);
  mk_comm_t *c = NULL;
  if (nccl) {
    st = mk_comm_nccl_create(group, be->comm.device, be->comm.stream, &c, &mine);
  } else {
    mk_comm_t *inner = NULL;
    st = mk_comm_mpi_create(group, MK_COMM_MPI_ALLREDUCE, &inner, &mine);
    if (st == 0) st = mk_comm_staged_create(inner, be, &c, &mine);
  }
  if (group != ctx->mpi) MPI_Comm_free(&group);
  if (agree_into(ctx, st, &mine, err) != 0) {
    mk_comm_free(c);
    return -1;
  }
  c->wd = ctx->wd; /* bounded waits, as on ctx->comm */
  *out = c;
  return 0;
}

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
