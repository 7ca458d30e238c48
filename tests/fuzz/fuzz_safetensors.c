/* Fuzz target: the safetensors header parser (mk_st_parse) on arbitrary bytes, what `--model DIR`
 * does with every shard before binding a weight. Properties, beyond "no crash, no leak, no UB":
 *   - every accepted tensor's [begin, end) lies inside the data section, end - begin equals its
 *     elements x element size, and its dtype is F32, F16 or BF16;
 *   - no two accepted tensors' byte ranges overlap, and mk_st_find finds each by its name;
 *   - a rejected input leaves an empty header and a message naming the label. */
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "src/safetensors.h"
#include "tests/fuzz/fuzz_common.h"

static void check_header(const mk_st_header_t *h, size_t size) {
  FUZZ_CHECK(h->data_offset >= 8 && h->data_offset <= size, "data offset %llu of %zu",
             (unsigned long long)h->data_offset, size);
  uint64_t data = size - h->data_offset;
  for (size_t i = 0; i < h->n; i++) {
    const mk_st_tensor_t *t = &h->t[i];
    FUZZ_CHECK(t->begin <= t->end && t->end <= data, "tensor %s outside the data", t->name);
    int es = t->type == MK_TYPE_F32 ? 4 : (t->type == MK_TYPE_F16 || t->type == MK_TYPE_BF16) ? 2 : 0;
    FUZZ_CHECK(es > 0, "tensor %s has type %d", t->name, (int)t->type);
    uint64_t numel = 1;
    for (int d = 0; d < t->n_dims; d++) numel *= (uint64_t)t->shape[d];
    FUZZ_CHECK(numel * (uint64_t)es == t->end - t->begin, "tensor %s: size", t->name);
    FUZZ_CHECK(mk_st_find(h, t->name) == t, "tensor %s not found by name", t->name);
    for (size_t j = 0; j < i; j++) {
      const mk_st_tensor_t *u = &h->t[j];
      bool empty = t->begin == t->end || u->begin == u->end;
      FUZZ_CHECK(empty || t->end <= u->begin || u->end <= t->begin, "tensors %s and %s overlap", t->name, u->name);
    }
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  uint8_t *buf = malloc(size ? size : 1); /* the parser must not read past `size` */
  if (!buf) return 0;
  if (size) memcpy(buf, data, size);
  mk_st_header_t h;
  mk_error_t err = {{0}};
  if (mk_st_parse(buf, size, "fuzz.safetensors", &h, &err) == 0) {
    check_header(&h, size);
    mk_st_header_free(&h);
  } else {
    FUZZ_CHECK(h.n == 0 && h.t == NULL, "rejected input left %zu tensors", h.n);
    FUZZ_CHECK(strstr(err.msg, "fuzz.safetensors") != NULL, "message without the label: %s", err.msg);
  }
  free(buf);
  return 0;
}
