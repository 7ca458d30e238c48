/* The counted entry points of mk_comm_t (see comm.h): add the payload to the tagged counter, then
 * dispatch to the implementation. */
#include "parallel/comm.h"

static uint64_t *counter(mk_comm_t *c, mk_comm_tag_t tag) {
  switch (tag) {
    case MK_COMM_MODEL:
      return &c->bytes_model;
    case MK_COMM_SCORE:
      return &c->bytes_score;
    case MK_COMM_SAMPLE:
      return &c->bytes_sample;
    default:
      return &c->bytes_other;
  }
}

static void count(mk_comm_t *c, mk_comm_tag_t tag, uint64_t bytes) {
  c->tag = (int)tag;
  if (c->size > 1) *counter(c, tag) += bytes;
}

int mk_comm_allreduce_sum_f32(mk_comm_t *c, mk_comm_tag_t tag, float *buf, size_t n,
                              mk_error_t *err) {
  count(c, tag, (uint64_t)n * sizeof(float));
  return c->ops->allreduce_sum_f32(c, buf, n, err);
}

int mk_comm_allreduce_max_f32(mk_comm_t *c, mk_comm_tag_t tag, float *buf, size_t n,
                              mk_error_t *err) {
  count(c, tag, (uint64_t)n * sizeof(float));
  return c->ops->allreduce_max_f32(c, buf, n, err);
}

int mk_comm_bcast(mk_comm_t *c, mk_comm_tag_t tag, void *buf, size_t bytes, int root,
                  mk_error_t *err) {
  count(c, tag, bytes);
  return c->ops->bcast(c, buf, bytes, root, err);
}

int mk_comm_allgather(mk_comm_t *c, mk_comm_tag_t tag, const void *send, void *recv,
                      size_t bytes_each, mk_error_t *err) {
  count(c, tag, (uint64_t)bytes_each * (uint64_t)c->size);
  return c->ops->allgather(c, send, recv, bytes_each, err);
}

int mk_comm_allgather_host(mk_comm_t *c, mk_comm_tag_t tag, const void *send, void *recv,
                           size_t bytes_each, mk_error_t *err) {
  count(c, tag, (uint64_t)bytes_each * (uint64_t)c->size);
  return c->ops->allgather_host(c, send, recv, bytes_each, err);
}

int mk_comm_barrier(mk_comm_t *c, mk_error_t *err) {
  c->tag = MK_COMM_OTHER;
  return c->ops->barrier(c, err);
}

void mk_comm_free(mk_comm_t *c) {
  if (c) c->ops->free(c);
}
