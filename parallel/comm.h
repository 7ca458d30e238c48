/* Communicator interface: the collectives the sharded forward pass and the cache policies need,
 * with an MPI implementation (CPU path) and an NCCL one (GPU path). Every call returns 0 or -1
 * with err naming the call and the rank. Byte counters feed the stats. */
#ifndef MK_COMM_H
#define MK_COMM_H

#include <stddef.h>
#include <stdint.h>

#include "src/mk_error.h"

typedef struct mk_comm mk_comm_t;

typedef struct mk_comm_ops {
  const char *name;
  int (*allreduce_sum_f32)(mk_comm_t *c, float *buf, size_t n, mk_error_t *err);
  int (*allreduce_max_f32)(mk_comm_t *c, float *buf, size_t n, mk_error_t *err);
  int (*bcast)(mk_comm_t *c, void *buf, size_t bytes, int root, mk_error_t *err);
  /* recv holds size * bytes_each, rank-major */
  int (*allgather)(mk_comm_t *c, const void *send, void *recv, size_t bytes_each, mk_error_t *err);
  int (*barrier)(mk_comm_t *c, mk_error_t *err);
  void (*free)(mk_comm_t *c);
} mk_comm_ops_t;

struct mk_comm {
  const mk_comm_ops_t *ops;
  void *impl;
  int rank, size;
  uint64_t bytes_model;  /* payload bytes of the model's own all-reduces */
  uint64_t bytes_score;  /* payload bytes of cache-policy score synchronization */
  uint64_t bytes_other;
};

#endif
