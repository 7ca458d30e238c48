/* Fuzz target: the request message rank 0 broadcasts (parallel/request.c, protobuf-c) on
 * arbitrary bytes, as a receiving rank unpacks it. Properties:
 *   - a refused message leaves a message and an empty request;
 *   - an accepted one passes mk_request_validate (ids inside the vocabulary, limits);
 *   - repack round trip: pack(unpack(x)) unpacks to the same request, and packing that again gives
 *     the same bytes (the encoding is canonical after one round). */
#include <stdlib.h>
#include <string.h>

#include "parallel/request.h"
#include "tests/fuzz/fuzz_common.h"

#define N_VOCAB 49152

static void check_same(const mk_request_t *a, const mk_request_t *b) {
  FUZZ_CHECK(a->kind == b->kind && a->id == b->id && a->n_prompt == b->n_prompt &&
                 a->n_stop == b->n_stop,
             "header differs");
  FUZZ_CHECK(a->n_prompt == 0 || memcmp(a->prompt, b->prompt, a->n_prompt * sizeof *a->prompt) == 0,
             "prompt differs");
  FUZZ_CHECK(memcmp(&a->sampling, &b->sampling, sizeof a->sampling) == 0, "sampling differs");
  FUZZ_CHECK(memcmp(&a->cache, &b->cache, sizeof a->cache) == 0, "cache settings differ");
  for (size_t i = 0; i < a->n_stop; i++)
    FUZZ_CHECK(strcmp(a->stop[i], b->stop[i]) == 0, "stop %zu differs", i);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  mk_request_t r;
  mk_error_t err = {{0}};
  if (mk_request_unpack(data, size, N_VOCAB, &r, &err) != 0) {
    FUZZ_CHECK(err.msg[0], "refused without a message");
    FUZZ_CHECK(r.n_prompt == 0 && r.prompt == NULL && r.n_stop == 0, "refused but not empty");
    return 0;
  }
  FUZZ_CHECK(mk_request_validate(&r, N_VOCAB, &err) == 0, "accepted but invalid: %s", err.msg);
  uint8_t *p1 = NULL, *p2 = NULL;
  size_t n1 = 0, n2 = 0;
  FUZZ_CHECK(mk_request_pack(&r, N_VOCAB, &p1, &n1, &err) == 0, "repack failed: %s", err.msg);
  mk_request_t r2;
  FUZZ_CHECK(mk_request_unpack(p1, n1, N_VOCAB, &r2, &err) == 0, "unpack of repack: %s", err.msg);
  check_same(&r, &r2);
  FUZZ_CHECK(mk_request_pack(&r2, N_VOCAB, &p2, &n2, &err) == 0, "second pack: %s", err.msg);
  FUZZ_CHECK(n1 == n2 && memcmp(p1, p2, n1) == 0, "pack not canonical (%zu vs %zu bytes)", n1, n2);
  free(p1);
  free(p2);
  mk_request_free(&r);
  mk_request_free(&r2);
  return 0;
}
