/* Fuzz target: the GGUF reader, the model config, the weight binding and the tokenizer load, on
 * arbitrary bytes (what `morphkv generate/inspect` do with a model file before the first matmul).
 * Properties, beyond "no crash, no leak, no UB":
 *   - every tensor the reader accepts lies inside the buffer, with nbytes = its type's row bytes x
 *     rows, and tensor_find finds it by name;
 *   - an accepted config has positive dimensions, n_head a multiple of n_kv_head, head_dim even;
 *   - a bound model has n_layer layers (block_count was checked against the tensor table);
 *   - a loaded tokenizer has bos/eos either -1 or inside the vocabulary, and encoding a fixed text
 *     gives ids inside the vocabulary whose pieces decode (streamed) to valid UTF-8. */
#include <stdlib.h>
#include <string.h>

#include "src/gguf.h"
#include "src/model.h"
#include "src/tokenizer.h"
#include "tests/fuzz/fuzz_common.h"
#include "tests/testutil/testutil.h"

static void check_tensors(const mk_gguf_t *g, const uint8_t *base, size_t size) {
  size_t n = mk_gguf_n_tensors(g);
  for (size_t i = 0; i < n; i++) {
    const mk_tensor_info_t *t = mk_gguf_tensor_at(g, i);
    const uint8_t *d = t->data;
    FUZZ_CHECK(d >= base && d <= base + size && t->nbytes <= (size_t)(base + size - d),
               "tensor %s outside the buffer", t->name);
    FUZZ_CHECK(mk_gguf_tensor_find(g, t->name) != NULL, "tensor %s not found by name", t->name);
    int64_t rows = t->ne[1] * t->ne[2] * t->ne[3];
    FUZZ_CHECK(t->nbytes == mk_type_row_bytes(t->type, t->ne[0]) * (size_t)rows,
               "tensor %s: %zu bytes for %lld rows", t->name, t->nbytes, (long long)rows);
  }
}

static void check_tokenizer(const mk_tokenizer_t *t) {
  const int V = mk_tok_n_vocab(t);
  FUZZ_CHECK(V > 0, "vocab %d", V);
  FUZZ_CHECK(mk_tok_bos(t) >= -1 && mk_tok_bos(t) < V, "bos %d of %d", mk_tok_bos(t), V);
  FUZZ_CHECK(mk_tok_eos(t) >= -1 && mk_tok_eos(t) < V, "eos %d of %d", mk_tok_eos(t), V);
  static const char text[] = "Hello, world! <|im_start|>user\n\xe2\x82\xac 12345 \x04 caf\xc3\xa9";
  int32_t ids[256];
  mk_error_t err;
  int n = mk_tok_encode(t, text, sizeof text - 1, true, true, ids, 256, &err);
  if (n < 0 || n > 256) return;
  char out[256 * 300];
  size_t o = 0;
  mk_tok_stream_t s = {{0}, 0};
  for (int i = 0; i < n; i++) {
    FUZZ_CHECK(ids[i] >= 0 && ids[i] < V, "id %d of %d", ids[i], V);
    int r = mk_tok_stream_push(t, &s, ids[i], out + o, 300);
    FUZZ_CHECK(r >= 0, "stream push of id %d failed", ids[i]);
    o += (size_t)r;
  }
  o += (size_t)mk_tok_stream_flush(&s, out + o, 300);
  FUZZ_CHECK(mk_test_utf8_valid((const unsigned char *)out, o), "decoded text not UTF-8");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  mk_error_t err = {{0}};
  mk_gguf_t *g = NULL;
  /* a private copy: the reader must not depend on bytes past `size` */
  uint8_t *buf = malloc(size ? size : 1);
  if (!buf) return 0;
  memcpy(buf, data, size);
  if (mk_gguf_open_memory(buf, size, "fuzz.gguf", &g, &err) != 0) {
    FUZZ_CHECK(err.msg[0] != 0, "failure without a message");
    free(buf);
    return 0;
  }
  check_tensors(g, buf, size);
  mk_model_config_t cfg;
  if (mk_model_config_read(g, &cfg, &err) == 0) {
    FUZZ_CHECK(cfg.n_layer > 0 && cfg.n_embd > 0 && cfg.n_head > 0 && cfg.n_kv_head > 0,
               "dims %d %d %d %d", cfg.n_layer, cfg.n_embd, cfg.n_head, cfg.n_kv_head);
    FUZZ_CHECK(cfg.n_head % cfg.n_kv_head == 0 && cfg.head_dim % 2 == 0, "heads");
    mk_tensor_source_t src = mk_gguf_tensor_source(g);
    mk_model_t m;
    if (mk_model_bind(&m, &cfg, &src, NULL, &err) == 0) {
      FUZZ_CHECK(m.layers != NULL && (size_t)m.cfg.n_layer * 9 <= mk_gguf_n_tensors(g),
                 "%d layers bound from %zu tensors", m.cfg.n_layer, mk_gguf_n_tensors(g));
      mk_model_free(&m);
    }
  }
  mk_tokenizer_t *t = NULL;
  if (mk_tok_load(g, &t, &err) == 0) {
    check_tokenizer(t);
    mk_tok_free(t);
  }
  mk_gguf_close(g);
  free(buf);
  return 0;
}
