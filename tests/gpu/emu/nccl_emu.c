/* Emulated NCCL (tests/gpu/emu/nccl/nccl.h) for the CPU emulator of the CUDA backend: every call
 * computes the real collective over MPI on the emulator's device memory, which is host memory, so
 * parallel/comm_nccl.c and the engine above it run unchanged, multi-rank, on a machine with no GPU.
 *
 * Semantics kept from NCCL: a communicator is made from an id that rank 0 creates and the others
 * receive (here: the id carries a 64-bit key; ncclCommInitRank splits MPI_COMM_WORLD by it, ordered
 * by the NCCL rank, and checks the size); in-place all-reduce / all-gather / broadcast; send/recv
 * inside ncclGroupStart/End complete at ncclGroupEnd in any order; async errors are reported by
 * ncclCommGetAsyncError. Each emulated stream is idle: a call returns with its result in place
 * (the emulated cudaStreamSynchronize has nothing to wait for). Sends outside a group copy the
 * buffer and complete later (as a stream would), receives block.
 * Reductions are MPI's (Open MPI gives every rank the same bits, as NCCL's ring does). */
#include <mpi.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "nccl.h"

struct mk_emu_nccl_comm {
  MPI_Comm comm;
  int rank, size;
  ncclResult_t async;
  char last[256];
};

typedef struct pending {
  MPI_Request req;
  void *copy; /* a send's private copy, freed once complete */
} pending_t;

static pending_t *g_pend;
static int g_npend, g_cappend, g_group;

static const char *const k_errors[] = {"no error", "unhandled cuda error", "unhandled system error",
                                       "internal error", "invalid argument", "invalid usage",
                                       "remote process exited or there was a network error",
                                       "NCCL operation in progress"};

const char *ncclGetErrorString(ncclResult_t r) {
  return (unsigned)r < sizeof k_errors / sizeof k_errors[0] ? k_errors[r] : "unknown result code";
}

const char *ncclGetLastError(ncclComm_t comm) { return comm ? comm->last : ""; }

static ncclResult_t fail(ncclComm_t comm, ncclResult_t r, const char *what) {
  if (comm) snprintf(comm->last, sizeof comm->last, "emulated NCCL: %s", what);
  return r;
}

static int mpi_type(ncclDataType_t t, MPI_Datatype *out, size_t *size) {
  switch (t) {
    case ncclInt8: *out = MPI_INT8_T, *size = 1; return 0;
    case ncclUint8: *out = MPI_UINT8_T, *size = 1; return 0;
    case ncclInt32: *out = MPI_INT32_T, *size = 4; return 0;
    case ncclUint32: *out = MPI_UINT32_T, *size = 4; return 0;
    case ncclInt64: *out = MPI_INT64_T, *size = 8; return 0;
    case ncclUint64: *out = MPI_UINT64_T, *size = 8; return 0;
    case ncclFloat32: *out = MPI_FLOAT, *size = 4; return 0;
    case ncclFloat64: *out = MPI_DOUBLE, *size = 8; return 0;
    default: return -1; /* ncclFloat16: no MPI reduction for it */
  }
}

static int mpi_op(ncclRedOp_t op, MPI_Op *out) {
  switch (op) {
    case ncclSum: *out = MPI_SUM; return 0;
    case ncclProd: *out = MPI_PROD; return 0;
    case ncclMax: *out = MPI_MAX; return 0;
    case ncclMin: *out = MPI_MIN; return 0;
    default: return -1; /* ncclAvg: not emulated */
  }
}

static ncclResult_t check_call(ncclComm_t comm, int mpi_rc, const char *what) {
  if (mpi_rc == MPI_SUCCESS) return ncclSuccess;
  comm->async = ncclRemoteError;
  return fail(comm, ncclRemoteError, what);
}

static ncclResult_t complete_pending(void) {
  int rc = MPI_SUCCESS;
  for (int i = 0; i < g_npend; i++) {
    int r = MPI_Wait(&g_pend[i].req, MPI_STATUS_IGNORE);
    if (r != MPI_SUCCESS) rc = r;
    free(g_pend[i].copy);
  }
  g_npend = 0;
  return rc == MPI_SUCCESS ? ncclSuccess : ncclRemoteError;
}

static pending_t *pending_add(void) {
  if (g_npend == g_cappend) {
    int cap = g_cappend ? 2 * g_cappend : 16;
    pending_t *p = realloc(g_pend, sizeof *p * (size_t)cap);
    if (!p) return NULL;
    g_pend = p;
    g_cappend = cap;
  }
  pending_t *p = &g_pend[g_npend++];
  p->copy = NULL;
  return p;
}

ncclResult_t ncclGetUniqueId(ncclUniqueId *id) {
  static unsigned counter;
  memset(id, 0, sizeof *id);
  uint64_t key = ((uint64_t)getpid() << 20) ^ (uint64_t)(++counter);
  snprintf(id->internal, sizeof id->internal, "mk-emu-nccl");
  memcpy(id->internal + 16, &key, sizeof key);
  return ncclSuccess;
}

ncclResult_t ncclCommInitRank(ncclComm_t *out, int nranks, ncclUniqueId id, int rank) {
  *out = NULL;
  if (strncmp(id.internal, "mk-emu-nccl", 16) != 0 || nranks < 1 || rank < 0 || rank >= nranks)
    return ncclInvalidArgument;
  uint64_t key;
  memcpy(&key, id.internal + 16, sizeof key);
  ncclComm_t c = calloc(1, sizeof *c);
  if (!c) return ncclSystemError;
  int color = (int)(key % 0x7fffffffu);
  if (MPI_Comm_split(MPI_COMM_WORLD, color, rank, &c->comm) != MPI_SUCCESS) {
    free(c);
    return ncclSystemError;
  }
  MPI_Comm_set_errhandler(c->comm, MPI_ERRORS_RETURN);
  MPI_Comm_rank(c->comm, &c->rank);
  MPI_Comm_size(c->comm, &c->size);
  if (c->size != nranks || c->rank != rank) {
    MPI_Comm_free(&c->comm);
    free(c);
    return ncclInvalidUsage;
  }
  *out = c;
  return ncclSuccess;
}

ncclResult_t ncclCommFinalize(ncclComm_t comm) {
  if (!comm) return ncclInvalidArgument;
  return complete_pending();
}

ncclResult_t ncclCommDestroy(ncclComm_t comm) {
  if (!comm) return ncclSuccess;
  ncclResult_t r = complete_pending();
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized) MPI_Comm_free(&comm->comm);
  free(comm);
  return r;
}

ncclResult_t ncclCommAbort(ncclComm_t comm) {
  if (!comm) return ncclSuccess;
  for (int i = 0; i < g_npend; i++) free(g_pend[i].copy);
  g_npend = 0;
  free(comm); /* the MPI communicator is left to MPI_Abort / MPI_Finalize */
  return ncclSuccess;
}

ncclResult_t ncclCommGetAsyncError(ncclComm_t comm, ncclResult_t *async) {
  if (!comm) return ncclInvalidArgument;
  *async = comm->async;
  return ncclSuccess;
}

ncclResult_t ncclCommCount(const ncclComm_t comm, int *count) {
  *count = comm->size;
  return ncclSuccess;
}

ncclResult_t ncclCommUserRank(const ncclComm_t comm, int *rank) {
  *rank = comm->rank;
  return ncclSuccess;
}

ncclResult_t ncclAllReduce(const void *send, void *recv, size_t count, ncclDataType_t t, ncclRedOp_t op,
                           ncclComm_t comm, cudaStream_t stream) {
  MPI_Datatype mt;
  MPI_Op mo;
  size_t es;
  if (!comm) return ncclInvalidArgument;
  if (mpi_type(t, &mt, &es) || mpi_op(op, &mo)) return fail(comm, ncclInvalidArgument, "type or op not emulated");
  if (count > (size_t)INT32_MAX) return fail(comm, ncclInvalidArgument, "count over 2^31");
  if (count == 0) return ncclSuccess;
  return check_call(comm, MPI_Allreduce(send == recv ? MPI_IN_PLACE : send, recv, (int)count, mt, mo, comm->comm),
                    "MPI_Allreduce failed");
}

ncclResult_t ncclBroadcast(const void *send, void *recv, size_t count, ncclDataType_t t, int root, ncclComm_t comm,
                           cudaStream_t stream) {
  MPI_Datatype mt;
  size_t es;
  if (!comm || root < 0 || root >= comm->size) return fail(comm, ncclInvalidArgument, "bad root");
  if (mpi_type(t, &mt, &es)) return fail(comm, ncclInvalidArgument, "type not emulated");
  if (count > (size_t)INT32_MAX) return fail(comm, ncclInvalidArgument, "count over 2^31");
  if (comm->rank == root && send != recv) memmove(recv, send, count * es);
  return check_call(comm, MPI_Bcast(recv, (int)count, mt, root, comm->comm), "MPI_Bcast failed");
}

ncclResult_t ncclAllGather(const void *send, void *recv, size_t count, ncclDataType_t t, ncclComm_t comm,
                           cudaStream_t stream) {
  MPI_Datatype mt;
  size_t es;
  if (!comm) return ncclInvalidArgument;
  if (mpi_type(t, &mt, &es)) return fail(comm, ncclInvalidArgument, "type not emulated");
  if (count > (size_t)INT32_MAX) return fail(comm, ncclInvalidArgument, "count over 2^31");
  const void *s = send == (const char *)recv + (size_t)comm->rank * count * es ? MPI_IN_PLACE : send;
  return check_call(comm, MPI_Allgather(s, (int)count, mt, recv, (int)count, mt, comm->comm), "MPI_Allgather failed");
}

ncclResult_t ncclSend(const void *send, size_t count, ncclDataType_t t, int peer, ncclComm_t comm,
                      cudaStream_t stream) {
  MPI_Datatype mt;
  size_t es;
  if (!comm || peer < 0 || peer >= comm->size) return fail(comm, ncclInvalidArgument, "bad peer");
  if (mpi_type(t, &mt, &es)) return fail(comm, ncclInvalidArgument, "type not emulated");
  if (count > (size_t)INT32_MAX) return fail(comm, ncclInvalidArgument, "count over 2^31");
  pending_t *p = pending_add();
  if (!p || !(p->copy = malloc(count > 0 ? count * es : 1))) return fail(comm, ncclSystemError, "out of memory");
  memcpy(p->copy, send, count * es);
  return check_call(comm, MPI_Isend(p->copy, (int)count, mt, peer, 0, comm->comm, &p->req), "MPI_Isend failed");
}

ncclResult_t ncclRecv(void *recv, size_t count, ncclDataType_t t, int peer, ncclComm_t comm, cudaStream_t stream) {
  MPI_Datatype mt;
  size_t es;
  if (!comm || peer < 0 || peer >= comm->size) return fail(comm, ncclInvalidArgument, "bad peer");
  if (mpi_type(t, &mt, &es)) return fail(comm, ncclInvalidArgument, "type not emulated");
  if (count > (size_t)INT32_MAX) return fail(comm, ncclInvalidArgument, "count over 2^31");
  if (!g_group)
    return check_call(comm, MPI_Recv(recv, (int)count, mt, peer, 0, comm->comm, MPI_STATUS_IGNORE),
                      "MPI_Recv failed");
  pending_t *p = pending_add();
  if (!p) return fail(comm, ncclSystemError, "out of memory");
  return check_call(comm, MPI_Irecv(recv, (int)count, mt, peer, 0, comm->comm, &p->req), "MPI_Irecv failed");
}

ncclResult_t ncclGroupStart(void) {
  g_group++;
  return ncclSuccess;
}

ncclResult_t ncclGroupEnd(void) {
  if (g_group <= 0) return ncclInvalidUsage;
  return --g_group == 0 ? complete_pending() : ncclSuccess;
}
