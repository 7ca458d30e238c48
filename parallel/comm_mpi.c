/* mk_comm_t over MPI (host buffers). The communicator is a private duplicate with
 * MPI_ERRORS_RETURN, so forward-pass collectives can never match a control message sent on
 * ctx->mpi, and a failing call becomes an mk_error_t naming the call and the rank.
 * MPI counts are ints: large buffers go in chunks of MK_MPI_CHUNK elements (every rank cuts the
 * same chunks, so results stay identical across ranks).
 * Waits go through the ctx's watchdog (c->wd, parallel/watchdog.h): non-blocking collectives
 * with a bounded, sleeping wait; plain blocking calls when it is off or c->wd is NULL. */
#include <limits.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "parallel/comm.h"
#include "parallel/mpi_check.h"

#define MK_MPI_CHUNK ((size_t)1 << 30)

typedef struct mpi_impl {
  MPI_Comm comm;
  mk_comm_mpi_mode_t mode;
} mpi_impl_t;

static MPI_Comm comm_of(mk_comm_t *c) {
  return ((mpi_impl_t *)c->impl)->comm;
}

/* The purpose named in watchdog messages. */
static const char *purpose(const mk_comm_t *c) {
  switch (c->tag) {
    case MK_COMM_MODEL:
      return "model";
    case MK_COMM_SCORE:
      return "score sync";
    case MK_COMM_SAMPLE:
      return "sampled token / logits";
    case MK_COMM_P2P:
      return "stage-to-stage activations";
    default:
      return "other";
  }
}

static int reduce_f32(mk_comm_t *c, float *buf, size_t n, MPI_Op op, mk_error_t *err) {
  if (c->size == 1) return 0;
  mpi_impl_t *m = c->impl;
  for (size_t off = 0; off < n; off += MK_MPI_CHUNK) {
    int k = (int)(n - off < MK_MPI_CHUNK ? n - off : MK_MPI_CHUNK);
    float *p = buf + off;
    const char *what = purpose(c);
    if (m->mode == MK_COMM_MPI_REDUCE_BCAST) {
      if (mk_wd_reduce(c->wd, c->rank == 0 ? MPI_IN_PLACE : p, p, k, MPI_FLOAT, op, 0, m->comm,
                       what, err) ||
          mk_wd_bcast(c->wd, p, k, MPI_FLOAT, 0, m->comm, what, err))
        return -1;
    } else if (mk_wd_allreduce(c->wd, MPI_IN_PLACE, p, k, MPI_FLOAT, op, m->comm, what, err)) {
      return -1;
    }
  }
  return 0;
}

static int mpi_allreduce_sum_f32(mk_comm_t *c, float *buf, size_t n, mk_error_t *err) {
  return reduce_f32(c, buf, n, MPI_SUM, err);
}

static int mpi_allreduce_max_f32(mk_comm_t *c, float *buf, size_t n, mk_error_t *err) {
  return reduce_f32(c, buf, n, MPI_MAX, err);
}

static int mpi_bcast(mk_comm_t *c, void *buf, size_t bytes, int root, mk_error_t *err) {
  if (root < 0 || root >= c->size)
    return mk_fail(err, "MPI_Bcast on rank %d: root %d is outside 0..%d", c->rank, root,
                   c->size - 1);
  if (c->size == 1) return 0;
  for (size_t off = 0; off < bytes; off += MK_MPI_CHUNK) {
    int k = (int)(bytes - off < MK_MPI_CHUNK ? bytes - off : MK_MPI_CHUNK);
    if (mk_wd_bcast(c->wd, (char *)buf + off, k, MPI_BYTE, root, comm_of(c), purpose(c), err))
      return -1;
  }
  return 0;
}

static int mpi_allgather(mk_comm_t *c, const void *send, void *recv, size_t bytes_each,
                         mk_error_t *err) {
  if (bytes_each > (size_t)INT_MAX)
    return mk_fail(err, "MPI_Allgather on rank %d: %zu bytes per rank is more than %d", c->rank,
                   bytes_each, INT_MAX);
  if (c->size == 1) {
    if (recv != send) memmove(recv, send, bytes_each);
    return 0;
  }
  const void *s = send == (char *)recv + (size_t)c->rank * bytes_each ? MPI_IN_PLACE : send;
  return mk_wd_allgather(c->wd, s, (int)bytes_each, MPI_BYTE, recv, (int)bytes_each, MPI_BYTE,
                         comm_of(c), purpose(c), err);
}

/* In chunks of MK_MPI_CHUNK bytes, each its own message (both sides cut the same chunks). */
static int mpi_p2p(mk_comm_t *c, void *buf, size_t bytes, int peer, bool send, mk_error_t *err) {
  for (size_t off = 0; off < bytes; off += MK_MPI_CHUNK) {
    int k = (int)(bytes - off < MK_MPI_CHUNK ? bytes - off : MK_MPI_CHUNK);
    char *p = (char *)buf + off;
    if (send ? mk_wd_send(c->wd, p, k, peer, comm_of(c), purpose(c), err)
             : mk_wd_recv(c->wd, p, k, peer, comm_of(c), purpose(c), err))
      return -1;
  }
  return 0;
}

static int mpi_send(mk_comm_t *c, const void *buf, size_t bytes, int peer, mk_error_t *err) {
  return mpi_p2p(c, (void *)buf, bytes, peer, true, err);
}

static int mpi_recv(mk_comm_t *c, void *buf, size_t bytes, int peer, mk_error_t *err) {
  return mpi_p2p(c, buf, bytes, peer, false, err);
}

static int mpi_barrier(mk_comm_t *c, mk_error_t *err) {
  return mk_wd_barrier(c->wd, comm_of(c), "barrier", err);
}

static void mpi_free(mk_comm_t *c) {
  mpi_impl_t *m = c->impl;
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized && m->comm != MPI_COMM_NULL) MPI_Comm_free(&m->comm);
  free(m);
  free(c);
}

static const mk_comm_ops_t mpi_ops = {
    .name = "mpi",
    .allreduce_sum_f32 = mpi_allreduce_sum_f32,
    .allreduce_max_f32 = mpi_allreduce_max_f32,
    .bcast = mpi_bcast,
    .allgather = mpi_allgather,
    .allgather_host = mpi_allgather,
    .send = mpi_send,
    .recv = mpi_recv,
    .barrier = mpi_barrier,
    .free = mpi_free,
};

int mk_comm_mpi_create(MPI_Comm comm, mk_comm_mpi_mode_t mode, mk_comm_t **out, mk_error_t *err) {
  *out = NULL;
  if (mode != MK_COMM_MPI_ALLREDUCE && mode != MK_COMM_MPI_REDUCE_BCAST)
    return mk_fail(err, "MPI communicator: unknown mode %d", (int)mode);
  int rank = -1;
  MPI_Comm_rank(comm, &rank);
  mk_comm_t *c = calloc(1, sizeof *c);
  mpi_impl_t *m = calloc(1, sizeof *m);
  if (!c || !m) {
    free(c), free(m);
    return mk_fail(err, "MPI communicator on rank %d: out of memory", rank);
  }
  m->comm = MPI_COMM_NULL;
  m->mode = mode;
  c->ops = &mpi_ops;
  c->impl = m;
  c->rank = rank;
  if (mk_mpi_dup(comm, "MPI communicator", &m->comm, &c->rank, &c->size, err) != 0) {
    mpi_free(c);
    return -1;
  }
  *out = c;
  return 0;
}
