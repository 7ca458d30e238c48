/* mk_comm_t over NCCL (device buffers, GPU path). Compiled only with MORPHKV_HAVE_NCCL; otherwise
 * this is an empty translation unit. tests/gpu compiles it a second time against the emulated
 * NCCL (tests/gpu/emu/nccl/nccl.h), whose collectives run over MPI on the emulator's device memory.
 *
 * Bootstrap: every rank selects its device, rank 0 makes the ncclUniqueId, the ranks agree that
 * all of that worked (one MPI all-reduce, so a failing rank 0 cannot leave the others waiting in
 * the bcast), the id is broadcast over MPI, then ncclCommInitRank.
 * Ops enqueue on the borrowed stream and return at once; errors of earlier asynchronous work are
 * picked up by ncclCommGetAsyncError at the next op or at barrier, which polls the stream and the
 * async error under the collective watchdog (ncclCommAbort, then MPI_Abort, on timeout).
 * Teardown order (NCCL docs): wait for the stream, ncclCommFinalize, ncclCommDestroy, then the
 * MPI duplicate. */
#ifdef MORPHKV_HAVE_NCCL

#include <cuda_runtime.h>
#include <limits.h>
#include <nccl.h>
#include <stdlib.h>
#include <string.h>

#include "parallel/comm.h"
#include "parallel/mpi_check.h"

typedef struct nccl_impl {
  ncclComm_t nc;
  cudaStream_t stream; /* borrowed */
  MPI_Comm mpi;        /* owned duplicate: id broadcast and barrier */
  int device;
} nccl_impl_t;

static int nccl_fail(mk_error_t *err, ncclResult_t r, ncclComm_t nc, const char *call, int rank,
                     int device, const char *file, int line) {
  const char *last = nc ? ncclGetLastError(nc) : NULL;
  return mk_fail(err, "%s:%d: %s failed on rank %d (device %d): %s%s%s", file, line, call, rank,
                 device, ncclGetErrorString(r), last && *last ? ": " : "", last ? last : "");
}

static int cuda_fail(mk_error_t *err, cudaError_t e, const char *call, int rank, int device,
                     const char *file, int line) {
  return mk_fail(err, "%s:%d: %s failed on rank %d (device %d): %s (%s)", file, line, call, rank,
                 device, cudaGetErrorString(e), cudaGetErrorName(e));
}

#define NCCL_CHECK(call, nc, rank, dev, err)                                               \
  do {                                                                                     \
    ncclResult_t mk_nccl_r_ = (call);                                                      \
    if (mk_nccl_r_ != ncclSuccess)                                                         \
      return nccl_fail((err), mk_nccl_r_, (nc), #call, (rank), (dev), __FILE__, __LINE__); \
  } while (0)

#define CUDA_CHECK(call, rank, dev, err)                                             \
  do {                                                                               \
    cudaError_t mk_cuda_e_ = (call);                                                 \
    if (mk_cuda_e_ != cudaSuccess)                                                   \
      return cuda_fail((err), mk_cuda_e_, #call, (rank), (dev), __FILE__, __LINE__); \
  } while (0)

/* Reports an error an earlier enqueued operation left on the communicator. */
static int check_async(mk_comm_t *c, mk_error_t *err) {
  nccl_impl_t *m = c->impl;
  ncclResult_t ar = ncclSuccess;
  NCCL_CHECK(ncclCommGetAsyncError(m->nc, &ar), m->nc, c->rank, m->device, err);
  if (ar != ncclSuccess && ar != ncclInProgress)
    return nccl_fail(err, ar, m->nc, "an earlier NCCL operation (async error)", c->rank, m->device,
                     __FILE__, __LINE__);
  return 0;
}

static int nccl_reduce(mk_comm_t *c, float *buf, size_t n, ncclRedOp_t op, mk_error_t *err) {
  nccl_impl_t *m = c->impl;
  if (n == 0) return 0;
  NCCL_CHECK(ncclAllReduce(buf, buf, n, ncclFloat32, op, m->nc, m->stream), m->nc, c->rank,
             m->device, err);
  return check_async(c, err);
}

static int nccl_allreduce_sum_f32(mk_comm_t *c, float *buf, size_t n, mk_error_t *err) {
  return nccl_reduce(c, buf, n, ncclSum, err);
}

static int nccl_allreduce_max_f32(mk_comm_t *c, float *buf, size_t n, mk_error_t *err) {
  return nccl_reduce(c, buf, n, ncclMax, err);
}

static int nccl_bcast(mk_comm_t *c, void *buf, size_t bytes, int root, mk_error_t *err) {
  nccl_impl_t *m = c->impl;
  if (root < 0 || root >= c->size)
    return mk_fail(err, "ncclBroadcast on rank %d (device %d): root %d is outside 0..%d", c->rank,
                   m->device, root, c->size - 1);
  if (bytes == 0) return 0;
  NCCL_CHECK(ncclBroadcast(buf, buf, bytes, ncclUint8, root, m->nc, m->stream), m->nc, c->rank,
             m->device, err);
  return check_async(c, err);
}

static int nccl_allgather(mk_comm_t *c, const void *send, void *recv, size_t bytes_each,
                          mk_error_t *err) {
  nccl_impl_t *m = c->impl;
  if (bytes_each == 0) return 0;
  NCCL_CHECK(ncclAllGather(send, recv, bytes_each, ncclUint8, m->nc, m->stream), m->nc, c->rank,
             m->device, err);
  return check_async(c, err);
}

/* Point-to-point on device buffers, enqueued on the stream like the collectives (the watchdog
 * bounds the wait in barrier / the next synchronising call, where a dead peer surfaces). */
static int nccl_send(mk_comm_t *c, const void *buf, size_t bytes, int peer, mk_error_t *err) {
  nccl_impl_t *m = c->impl;
  if (bytes == 0) return 0;
  NCCL_CHECK(ncclSend(buf, bytes, ncclUint8, peer, m->nc, m->stream), m->nc, c->rank, m->device, err);
  return check_async(c, err);
}

static int nccl_recv(mk_comm_t *c, void *buf, size_t bytes, int peer, mk_error_t *err) {
  nccl_impl_t *m = c->impl;
  if (bytes == 0) return 0;
  NCCL_CHECK(ncclRecv(buf, bytes, ncclUint8, peer, m->nc, m->stream), m->nc, c->rank, m->device, err);
  return check_async(c, err);
}

/* Host buffers: over the MPI side channel (NCCL itself only moves device memory). */
static int nccl_allgather_host(mk_comm_t *c, const void *send, void *recv, size_t bytes_each,
                               mk_error_t *err) {
  nccl_impl_t *m = c->impl;
  if (bytes_each > (size_t)INT_MAX)
    return mk_fail(err, "MPI_Allgather on rank %d: %zu bytes per rank is more than %d", c->rank,
                   bytes_each, INT_MAX);
  MK_MPI_CHECK(MPI_Allgather(send, (int)bytes_each, MPI_BYTE, recv, (int)bytes_each, MPI_BYTE,
                             m->mpi),
               c->rank, err);
  return 0;
}

/* One poll of the stream for the watchdog's bounded wait (parallel/watchdog.h): 1 when the
 * stream is idle, 0 while work is pending, -1 on a CUDA error or an NCCL async error. */
static int nccl_poll(void *arg, mk_error_t *err) {
  mk_comm_t *c = arg;
  nccl_impl_t *m = c->impl;
  if (check_async(c, err)) return -1;
  cudaError_t e = cudaStreamQuery(m->stream);
  if (e == cudaErrorNotReady) return 0;
  if (e != cudaSuccess)
    return cuda_fail(err, e, "cudaStreamQuery", c->rank, m->device, __FILE__, __LINE__);
  return 1;
}

/* Waits for the stream without blocking in the driver: bounded by the watchdog when it is on;
 * on timeout the communicator is aborted (ncclCommAbort frees kernels stuck waiting on a peer),
 * then -1 with mk_watchdog_expire's diagnosis (the ranks that did not arrive); the caller's error
 * path ends the job. */
static int nccl_barrier(mk_comm_t *c, mk_error_t *err) {
  nccl_impl_t *m = c->impl;
  double timeout = mk_watchdog_on(c->wd) ? c->wd->timeout_s : 0;
  int r = mk_wait_bounded(nccl_poll, c, timeout, NULL, err);
  if (r < 0) return -1;
  if (r == 1) {
    ncclCommAbort(m->nc);
    m->nc = NULL;
    return mk_watchdog_expire(c->wd, "cudaStreamQuery (NCCL stream)", "nccl barrier",
                              "ncclCommAbort done", err);
  }
  return mk_wd_barrier(c->wd, m->mpi, "nccl barrier", err);
}

static void nccl_free(mk_comm_t *c) {
  nccl_impl_t *m = c->impl;
  if (m->nc) {
    cudaSetDevice(m->device);
    cudaStreamSynchronize(m->stream);
    ncclCommFinalize(m->nc);
    ncclCommDestroy(m->nc);
  }
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized && m->mpi != MPI_COMM_NULL) MPI_Comm_free(&m->mpi);
  free(m);
  free(c);
}

static const mk_comm_ops_t nccl_ops = {
    .name = "nccl",
    .allreduce_sum_f32 = nccl_allreduce_sum_f32,
    .allreduce_max_f32 = nccl_allreduce_max_f32,
    .bcast = nccl_bcast,
    .allgather = nccl_allgather,
    .allgather_host = nccl_allgather_host,
    .send = nccl_send,
    .recv = nccl_recv,
    .barrier = nccl_barrier,
    .free = nccl_free,
};

/* Everything up to and including ncclCommInitRank; c->impl is set, cleanup is the caller's. */
static int nccl_bootstrap(mk_comm_t *c, MPI_Comm comm, mk_error_t *err) {
  nccl_impl_t *m = c->impl;
  if (mk_mpi_dup(comm, "NCCL communicator", &m->mpi, &c->rank, &c->size, err) != 0) return -1;

  /* Local steps that may fail, then agree before anyone waits on the id. */
  mk_error_t local = {{0}};
  int bad = 0;
  ncclUniqueId id;
  memset(&id, 0, sizeof id);
  int ndev = 0;
  cudaError_t ce = cudaGetDeviceCount(&ndev);
  if (ce != cudaSuccess) {
    bad = cuda_fail(&local, ce, "cudaGetDeviceCount", c->rank, m->device, __FILE__, __LINE__);
  } else if (m->device < 0 || m->device >= ndev) {
    bad = mk_fail(&local, "NCCL communicator on rank %d: device %d is outside 0..%d", c->rank,
                  m->device, ndev - 1);
  } else if ((ce = cudaSetDevice(m->device)) != cudaSuccess) {
    bad = cuda_fail(&local, ce, "cudaSetDevice", c->rank, m->device, __FILE__, __LINE__);
  } else if (c->rank == 0) {
    ncclResult_t r = ncclGetUniqueId(&id);
    if (r != ncclSuccess)
      bad = nccl_fail(&local, r, NULL, "ncclGetUniqueId", c->rank, m->device, __FILE__, __LINE__);
  }
  int mine = bad ? c->rank : INT_MAX, first = INT_MAX;
  MK_MPI_CHECK(MPI_Allreduce(&mine, &first, 1, MPI_INT, MPI_MIN, m->mpi), c->rank, err);
  if (first != INT_MAX) {
    if (bad) return mk_fail(err, "%s", local.msg);
    return mk_fail(err, "NCCL communicator on rank %d: rank %d failed to set up its device",
                   c->rank, first);
  }
  MK_MPI_CHECK(MPI_Bcast(&id, (int)sizeof id, MPI_BYTE, 0, m->mpi), c->rank, err);
  NCCL_CHECK(ncclCommInitRank(&m->nc, c->size, id, c->rank), NULL, c->rank, m->device, err);
  return 0;
}

int mk_comm_nccl_create(MPI_Comm comm, int device, void *cuda_stream, mk_comm_t **out,
                        mk_error_t *err) {
  *out = NULL;
  int rank = -1;
  MPI_Comm_rank(comm, &rank);
  mk_comm_t *c = calloc(1, sizeof *c);
  nccl_impl_t *m = calloc(1, sizeof *m);
  if (!c || !m) {
    free(c), free(m);
    return mk_fail(err, "NCCL communicator on rank %d: out of memory", rank);
  }
  m->mpi = MPI_COMM_NULL;
  m->stream = (cudaStream_t)cuda_stream;
  m->device = device;
  c->ops = &nccl_ops;
  c->impl = m;
  c->rank = rank;
  if (nccl_bootstrap(c, comm, err)) {
    nccl_free(c);
    return -1;
  }
  *out = c;
  return 0;
}

#endif /* MORPHKV_HAVE_NCCL */
