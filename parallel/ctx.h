/* The process context: who this process is in the run and how it talks to the others.
 * Passed explicitly everywhere (no globals), so two contexts could live in one test process.
 *
 * Two channels: ctx->mpi (host memory, control messages such as the request, failure agreement)
 * and ctx->comm (the forward pass's collectives on host buffers: MPI). An engine on a device
 * backend gets its own communicator on device buffers (NCCL, or MPI staged through pinned host
 * memory) from mk_ctx_comm_for_backend. Both are private duplicates of the run's communicator with
 * MPI_ERRORS_RETURN, so MPI failures come back as mk_error_t messages naming call and rank.
 *
 * Failure rule: a rank that cannot go on calls mk_ctx_abort, which takes every rank down (no rank
 * is left waiting in a collective); it lives in the front ends (src/cli.h), since the library
 * never prints or exits. Where all ranks reach the same point anyway, mk_ctx_agree lets them fail
 * together with the failing rank's own message (rank 0 can then print it). */
#ifndef MK_CTX_H
#define MK_CTX_H

#include <mpi.h>

#include "parallel/comm.h"
#include "parallel/comm_kind.h"
#include "src/mk_error.h"

typedef struct mk_ctx {
  int rank, world;            /* in the run's communicator */
  int local_rank, local_size; /* on this node (MPI_Comm_split_type SHARED) */
  MPI_Comm mpi;               /* duplicate of the run's communicator, owned */
  mk_comm_t *comm;            /* collectives for the forward pass (MPI or NCCL), owned */
  mk_watchdog_t *wd;          /* bounds every wait on mpi and comm (parallel/watchdog.h), owned;
                                 timeout MK_WATCHDOG_DEFAULT_S until mk_watchdog_set_timeout */
  /* The PP x TP grid (parallel/plan.h mk_grid_t), after mk_ctx_split_stages: stage = rank / tp.
   * tp_comm carries the TP collectives of this rank's stage only (host MPI, owned; NULL until the
   * split, or when tp == world: then ctx->comm is the TP group). Stage-to-stage point-to-point and
   * the token broadcast run on ctx->comm, the whole world. */
  int pp, tp, stage;
  mk_comm_t *tp_comm;
} mk_ctx_t;

/* MPI must be initialised. Collective over `world` (usually MPI_COMM_WORLD). Builds the context
 * with the MPI communicator (MK_COMM_MPI_ALLREDUCE) for collectives. On failure nothing is left
 * allocated. */
int mk_ctx_init(mk_ctx_t *ctx, MPI_Comm world, mk_error_t *err);
/* Local (not collective once MPI is finalized); frees comm and mpi. Safe on a zeroed ctx. */
void mk_ctx_free(mk_ctx_t *ctx);

/* Replaces ctx->comm with an MPI communicator of the given mode (collective). Counters carry
 * over. */
int mk_ctx_use_mpi(mk_ctx_t *ctx, mk_comm_mpi_mode_t mode, mk_error_t *err);
/* Replaces ctx->comm with an NCCL communicator on `device` and `cuda_stream` (a cudaStream_t;
 * see mk_comm_nccl_create). Collective. Counters carry over. Fails in a build without NCCL. */
int mk_ctx_use_nccl(mk_ctx_t *ctx, int device, void *cuda_stream, mk_error_t *err);

/* Splits the world into P = world / tp stages of tp consecutive ranks (stage-major, see
 * parallel/plan.h) and makes ctx->tp_comm, the MPI communicator of this rank's stage, under
 * ctx->wd. Collective over ctx->mpi; every rank passes the same tp, which must divide the world.
 * The same tp again keeps the communicator (several engines on one ctx share it); another tp
 * replaces it, so engines opened with the old grid must be closed first. */
int mk_ctx_split_stages(mk_ctx_t *ctx, int tp, mk_error_t *err);
/* The communicator of this rank's TP group: tp_comm after a split into several stages, else comm. */
mk_comm_t *mk_ctx_tp_comm(const mk_ctx_t *ctx);

struct mk_backend;
/* The communicator for the forward pass of an engine on backend `be` (src/backend.h: be->comm says
 * whether its buffers are device memory, and which stream and GPU it uses). Collective over
 * ctx->mpi; every rank passes the same `want`.
 *   host memory (CPU backend): *out = NULL, meaning ctx->comm (MPI); `nccl` is an error.
 *   device memory (CUDA):      a new communicator, owned by the caller, bound to be:
 *                              `nccl`: NCCL on be's stream, in place on device buffers;
 *                              `mpi`:  MPI staged through pinned host buffers (comm_staged.c);
 *                              `auto`: NCCL where the build has it, world > 1 and no two ranks of
 *                                      a node share a GPU; staged MPI otherwise.
 * `nccl` with two ranks of a node on one GPU (NCCL does not support it) is refused before any NCCL
 * call, with a message naming the node, the local ranks, the GPU, CUDA_VISIBLE_DEVICES and
 * --comm mpi. Every rank returns the same status, with the first failing rank's message. After
 * mk_ctx_split_stages into several stages the communicator spans this rank's stage (its TP group)
 * only, and `auto` asks for more than one rank per stage. */
int mk_ctx_comm_for_backend(mk_ctx_t *ctx, mk_comm_kind_t want, struct mk_backend *be, mk_comm_t **out,
                            mk_error_t *err);

/* Collective over ctx->mpi: every rank passes its own status (0 or -1, with *err filled when -1).
 * Returns 0 when every rank passed 0. Otherwise returns -1 on every rank, with err set everywhere
 * to "rank R: <R's message>" for the lowest failing rank R. */
int mk_ctx_agree(const mk_ctx_t *ctx, int status, mk_error_t *err);

#endif
