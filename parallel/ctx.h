/* The process context: who this process is in the run and how it talks to the others.
 * Passed explicitly everywhere (no globals), so two contexts could live in one test process. */
#ifndef MK_CTX_H
#define MK_CTX_H

#include <mpi.h>

#include "parallel/comm.h"
#include "src/mk_error.h"

typedef struct mk_ctx {
  int rank, world;             /* in the run's communicator */
  int local_rank, local_size;  /* on this node (MPI_Comm_split_type SHARED) */
  MPI_Comm mpi;                /* duplicate of the run's communicator, owned */
  mk_comm_t *comm;             /* collectives for the forward pass (MPI or NCCL) */
} mk_ctx_t;

/* MPI must be initialised. Builds the context over `world` (usually MPI_COMM_WORLD) with the
 * MPI communicator for collectives. */
int mk_ctx_init(mk_ctx_t *ctx, MPI_Comm world, mk_error_t *err);
void mk_ctx_free(mk_ctx_t *ctx);

/* A rank that fails calls this: it prints "rank R: <msg>" on stderr and aborts every rank
 * (MPI_Abort), so no rank is left waiting in a collective. Does not return. */
void mk_ctx_abort(const mk_ctx_t *ctx, const char *msg) __attribute__((noreturn));

#endif
