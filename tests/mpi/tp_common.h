/* Helpers shared by the tensor-parallel engine tests (tp_engine_test.c, tp_synth_test.c). */
#ifndef MK_TP_COMMON_H
#define MK_TP_COMMON_H

#include <stdint.h>
#include <stdio.h>

#include "kvcache/kvcache.h"
#include "parallel/ctx.h"
#include "src/cli.h" /* mk_ctx_abort */

static int fails;
#define CHECK(cond, ...)                     \
  do {                                       \
    if (!(cond)) {                           \
      fprintf(stderr, "FAIL: " __VA_ARGS__); \
      fputc('\n', stderr);                   \
      fails++;                               \
    }                                        \
  } while (0)

static inline void die(mk_ctx_t *ctx, const mk_error_t *err) { mk_ctx_abort(ctx, err->msg); }

static inline int argmax(const float *x, int n) {
  int a = 0;
  for (int i = 1; i < n; i++)
    if (x[i] > x[a]) a = i;
  return a;
}

/* Sorted kept positions of (layer, local head) of sequence 0; returns the count. */
static inline int kept_positions(mk_kv_cache_t *c, int layer, int local_head, int32_t *out) {
  mk_kv_head_t *h = mk_kv_cache_head(c, 0, layer, local_head);
  int n = 0;
  for (int s = 0; s < h->n_slots; s++)
    if (h->pos[s] >= 0) out[n++] = h->pos[s];
  for (int i = 1; i < n; i++)
    for (int j = i; j > 0 && out[j - 1] > out[j]; j--) {
      int32_t t = out[j];
      out[j] = out[j - 1];
      out[j - 1] = t;
    }
  return n;
}

#endif
