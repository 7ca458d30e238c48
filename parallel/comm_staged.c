/* mk_comm_t for device buffers over a host communicator (comm.h, "staged"): each data collective
 * copies its payload from the backend's memory into a pinned host buffer, runs the inner (MPI)
 * collective there and copies the result back. This is what --comm mpi means with the CUDA
 * backend: several ranks sharing one GPU (NCCL refuses that) or a cluster without NCCL.
 *
 * Invariants: the staging buffer only grows (no allocation per token once the largest payload
 * has been seen); the backend's download/upload wait for its stream, so a payload is complete
 * before MPI reads it and the result is in place before the next op runs; the inner
 * communicator's own counters are never used (mk_comm_* counts on the outer one). */
#include <stdlib.h>
#include <string.h>

#include "parallel/comm.h"
#include "src/backend.h"

typedef struct staged_impl {
  mk_comm_t *inner; /* owned */
  mk_backend_t *be; /* borrowed */
  void *stage;      /* be->ops->host_alloc */
  size_t cap;
} staged_impl_t;

/* The inner communicator, told the outer one's watchdog and the tag of the call in progress. */
static mk_comm_t *inner_of(mk_comm_t *c) {
  staged_impl_t *m = c->impl;
  m->inner->wd = c->wd;
  m->inner->tag = c->tag;
  return m->inner;
}

static int stage_reserve(mk_comm_t *c, size_t bytes, mk_error_t *err) {
  staged_impl_t *m = c->impl;
  if (bytes <= m->cap) return 0;
  size_t want = bytes + bytes / 2 + 256;
  m->be->ops->host_free(m->be, m->stage);
  m->stage = m->be->ops->host_alloc(m->be, want);
  m->cap = m->stage ? want : 0;
  if (!m->stage)
    return mk_fail(err, "staged communicator on rank %d: no %zu bytes of pinned host memory", c->rank, want);
  return 0;
}

static int staged_reduce(mk_comm_t *c, float *buf, size_t n, bool max, mk_error_t *err) {
  staged_impl_t *m = c->impl;
  const size_t bytes = n * sizeof(float);
  if (c->size == 1 || n == 0) return 0;
  if (stage_reserve(c, bytes, err) || m->be->ops->download(m->be, m->stage, buf, bytes, err)) return -1;
  mk_comm_t *in = inner_of(c);
  if ((max ? in->ops->allreduce_max_f32 : in->ops->allreduce_sum_f32)(in, m->stage, n, err)) return -1;
  return m->be->ops->upload(m->be, buf, m->stage, bytes, err);
}

static int staged_sum(mk_comm_t *c, float *buf, size_t n, mk_error_t *err) {
  return staged_reduce(c, buf, n, false, err);
}

static int staged_max(mk_comm_t *c, float *buf, size_t n, mk_error_t *err) {
  return staged_reduce(c, buf, n, true, err);
}

static int staged_bcast(mk_comm_t *c, void *buf, size_t bytes, int root, mk_error_t *err) {
  staged_impl_t *m = c->impl;
  if (root < 0 || root >= c->size)
    return mk_fail(err, "staged bcast on rank %d: root %d is outside 0..%d", c->rank, root, c->size - 1);
  if (c->size == 1 || bytes == 0) return 0;
  if (stage_reserve(c, bytes, err)) return -1;
  if (c->rank == root && m->be->ops->download(m->be, m->stage, buf, bytes, err)) return -1;
  if (inner_of(c)->ops->bcast(m->inner, m->stage, bytes, root, err)) return -1;
  return c->rank == root ? 0 : m->be->ops->upload(m->be, buf, m->stage, bytes, err);
}

static int staged_allgather(mk_comm_t *c, const void *send, void *recv, size_t bytes_each, mk_error_t *err) {
  staged_impl_t *m = c->impl;
  const size_t total = bytes_each * (size_t)c->size;
  if (bytes_each == 0) return 0;
  if (stage_reserve(c, total, err)) return -1;
  char *mine = (char *)m->stage + (size_t)c->rank * bytes_each;
  if (m->be->ops->download(m->be, mine, send, bytes_each, err)) return -1;
  if (c->size > 1 && inner_of(c)->ops->allgather(m->inner, mine, m->stage, bytes_each, err)) return -1;
  return m->be->ops->upload(m->be, recv, m->stage, total, err);
}

static int staged_allgather_host(mk_comm_t *c, const void *send, void *recv, size_t bytes_each, mk_error_t *err) {
  mk_comm_t *in = inner_of(c);
  return in->ops->allgather_host(in, send, recv, bytes_each, err);
}

static int staged_barrier(mk_comm_t *c, mk_error_t *err) {
  staged_impl_t *m = c->impl;
  if (m->be->ops->sync(m->be, err)) return -1;
  return inner_of(c)->ops->barrier(m->inner, err);
}

static void staged_free(mk_comm_t *c) {
  staged_impl_t *m = c->impl;
  if (m->stage) m->be->ops->host_free(m->be, m->stage);
  mk_comm_free(m->inner);
  free(m);
  free(c);
}

static const mk_comm_ops_t staged_ops = {
    .name = "mpi-staged",
    .allreduce_sum_f32 = staged_sum,
    .allreduce_max_f32 = staged_max,
    .bcast = staged_bcast,
    .allgather = staged_allgather,
    .allgather_host = staged_allgather_host,
    .barrier = staged_barrier,
    .free = staged_free,
};

int mk_comm_staged_create(mk_comm_t *inner, mk_backend_t *be, mk_comm_t **out, mk_error_t *err) {
  *out = NULL;
  mk_comm_t *c = calloc(1, sizeof *c);
  staged_impl_t *m = calloc(1, sizeof *m);
  if (!c || !m || !be->ops->host_alloc || !be->ops->download || !be->ops->upload) {
    int rank = inner->rank;
    bool oom = !c || !m;
    free(c), free(m);
    mk_comm_free(inner);
    return oom ? mk_fail(err, "staged communicator on rank %d: out of memory", rank)
               : mk_fail(err, "staged communicator on rank %d: backend %s cannot stage host copies", rank,
                         be->ops->name);
  }
  m->inner = inner;
  m->be = be;
  c->ops = &staged_ops;
  c->impl = m;
  c->rank = inner->rank;
  c->size = inner->size;
  *out = c;
  return 0;
}
