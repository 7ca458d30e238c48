/* Communicator interface: the collectives the sharded forward pass and the cache policies need.
 * Three implementations:
 *   mpi     host buffers (CPU backend)                                       comm_mpi.c
 *   staged  device buffers through pinned host memory and an MPI communicator comm_staged.c
 *           (CUDA backend with --comm mpi: several ranks on one GPU, clusters without NCCL)
 *   nccl    device buffers in place, enqueued on the backend's CUDA stream   comm_nccl.c
 * Every call returns 0 or -1 with err naming the call, file:line and rank (and device for NCCL).
 *
 * Buffers. The data collectives (allreduce_*, bcast, allgather) take BACKEND memory: whatever the
 * backend's ops->alloc returned (host memory on the CPU, device memory on CUDA). The engine hands
 * its activations over without knowing which. allgather_host is the one exception: host buffers
 * in and out on every implementation (NCCL sends them over its MPI side channel), for small
 * exchanges the host computes anyway (the distributed sampler's candidates).
 *
 * How to call it. The engine calls the mk_comm_* functions below, never c->ops directly: they
 * take a tag saying which stat the payload belongs to and add to that byte counter. A payload byte
 * is a byte of this rank's buffer handed to the collective (all-reduce: n * 4; bcast: bytes;
 * allgather: size * bytes_each received); wire traffic depends on the algorithm and is not
 * counted. Nothing is counted when size == 1 (nothing leaves the process), so T = 1 reports 0.
 *
 * Determinism. Replicated computations (KV replicas scoring the same tokens, every rank sampling
 * the same token) need every rank to receive bitwise-identical all-reduce results. NCCL's ring
 * and tree algorithms and Open MPI's allreduce algorithms do that, but MPI only recommends it;
 * MK_COMM_MPI_REDUCE_BCAST (reduce to rank 0, then broadcast) guarantees it at some cost, and
 * tests/mpi checks the default mode bit for bit on 1..4 ranks.
 *
 * Control messages (the request, stop/shutdown) do NOT go through mk_comm_t: they use host
 * memory on ctx->mpi (parallel/request.h), so a device communicator never sees host buffers. */
#ifndef MK_COMM_H
#define MK_COMM_H

#include <stddef.h>
#include <stdint.h>

#include <mpi.h>

#include "parallel/watchdog.h"
#include "src/mk_error.h"

typedef struct mk_comm mk_comm_t;

typedef struct mk_comm_ops {
  const char *name; /* "mpi" or "nccl" */
  int (*allreduce_sum_f32)(mk_comm_t *c, float *buf, size_t n, mk_error_t *err);
  int (*allreduce_max_f32)(mk_comm_t *c, float *buf, size_t n, mk_error_t *err);
  int (*bcast)(mk_comm_t *c, void *buf, size_t bytes, int root, mk_error_t *err);
  /* recv holds size * bytes_each, rank-major */
  int (*allgather)(mk_comm_t *c, const void *send, void *recv, size_t bytes_each, mk_error_t *err);
  /* as allgather, on host buffers whatever the implementation */
  int (*allgather_host)(mk_comm_t *c, const void *send, void *recv, size_t bytes_each, mk_error_t *err);
  /* MPI: MPI_Barrier. NCCL: waits for the stream (and checks async errors), then MPI_Barrier. */
  int (*barrier)(mk_comm_t *c, mk_error_t *err);
  void (*free)(mk_comm_t *c);
} mk_comm_ops_t;

struct mk_comm {
  const mk_comm_ops_t *ops;
  void *impl;
  int rank, size;
  uint64_t bytes_model; /* payload bytes of the model's own all-reduces */
  uint64_t bytes_score; /* payload bytes of cache-policy score synchronization */
  uint64_t bytes_sample; /* payload bytes of the LM-head exchange (full logits or sampler candidates) */
  uint64_t bytes_other; /* everything else (checks, ...) */
  mk_watchdog_t *wd;    /* borrowed (the ctx's); NULL: unbounded blocking waits */
  int tag;              /* mk_comm_tag_t of the collective in progress (watchdog messages) */
};

/* Which counter a collective's payload is added to. */
typedef enum mk_comm_tag {
  MK_COMM_MODEL = 0, /* the two all-reduces per layer */
  MK_COMM_SCORE,     /* MorphKV / H2O / SnapKV replica score synchronization */
  MK_COMM_SAMPLE,    /* the LM-head exchange: full-logit gathers, distributed-sampling candidates */
  MK_COMM_OTHER,
} mk_comm_tag_t;

/* Counted entry points (parallel/comm.c). Collective: every rank of c calls them in the same
 * order with the same n / bytes / root. */
int mk_comm_allreduce_sum_f32(mk_comm_t *c, mk_comm_tag_t tag, float *buf, size_t n,
                              mk_error_t *err);
int mk_comm_allreduce_max_f32(mk_comm_t *c, mk_comm_tag_t tag, float *buf, size_t n,
                              mk_error_t *err);
int mk_comm_bcast(mk_comm_t *c, mk_comm_tag_t tag, void *buf, size_t bytes, int root,
                  mk_error_t *err);
int mk_comm_allgather(mk_comm_t *c, mk_comm_tag_t tag, const void *send, void *recv,
                      size_t bytes_each, mk_error_t *err);
int mk_comm_allgather_host(mk_comm_t *c, mk_comm_tag_t tag, const void *send, void *recv,
                           size_t bytes_each, mk_error_t *err);
int mk_comm_barrier(mk_comm_t *c, mk_error_t *err);
void mk_comm_free(mk_comm_t *c); /* NULL is fine */

/* ---- implementations ---- */

typedef enum mk_comm_mpi_mode {
  MK_COMM_MPI_ALLREDUCE = 0, /* MPI_Allreduce (default) */
  MK_COMM_MPI_REDUCE_BCAST,  /* MPI_Reduce to rank 0 + MPI_Bcast: identical bits by construction */
} mk_comm_mpi_mode_t;

/* Host-memory collectives over a duplicate of `comm` (owned by the mk_comm_t, errors returned). */
int mk_comm_mpi_create(MPI_Comm comm, mk_comm_mpi_mode_t mode, mk_comm_t **out, mk_error_t *err);

struct mk_backend;
/* Device buffers of `be` (borrowed) through pinned host staging buffers (be->ops->host_alloc) and
 * `inner`, a host communicator (owned from here on, also on failure). Each data collective
 * downloads its payload, runs inner's collective, uploads the result: correct on any backend,
 * two copies per call. */
int mk_comm_staged_create(mk_comm_t *inner, struct mk_backend *be, mk_comm_t **out, mk_error_t *err);

/* Device-memory collectives (comm_nccl.c; defined only in a build with NCCL, or in the emulated
 * build of tests/gpu against the emulated NCCL; weak, so callers test it for NULL). Collective
 * over `comm`: rank 0 makes the ncclUniqueId and broadcasts it over MPI, then every rank calls
 * ncclCommInitRank on `device` (this call does cudaSetDevice). `cuda_stream` is a cudaStream_t
 * (NULL = the legacy default stream), borrowed. Ops enqueue on that stream and return without
 * waiting; barrier waits. */
int mk_comm_nccl_create(MPI_Comm comm, int device, void *cuda_stream, mk_comm_t **out,
                        mk_error_t *err) __attribute__((weak));

#endif
