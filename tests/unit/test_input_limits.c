/* Header values the fuzzing campaign of issue 15 found accepted (docs/reliability.md):
 *   - llama.block_count far beyond the tensor table (2^30): mk_model_bind must refuse it, naming
 *     the key, before allocating per-layer state (it used to calloc 2^30 layers first);
 *   - special-token ids outside the vocabulary (BOS = n_vocab, EOS = 2^32 - 1, ...): mk_tok_load
 *     must refuse them, naming the key (they used to be dropped silently, and the run went on
 *     with no BOS/EOS). */
#define _POSIX_C_SOURCE 200809L
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "src/gguf.h"
#include "src/model.h"
#include "src/tokenizer.h"
#include "tests/testutil/synth_model.h"
#include "tests/testutil/testutil.h"

/* The synthetic model's bytes (2 layers), malloc'd. */
static uint8_t *synth_bytes(size_t *size) {
  char path[64];
  snprintf(path, sizeof path, "/tmp/mk_limits_%ld.gguf", (long)getpid());
  mk_synth_params_t p;
  mk_synth_params_default(&p);
  assert_int_equal(mk_synth_model_write(path, &p), 0);
  uint8_t *b = (uint8_t *)mk_test_read_file(path, size);
  unlink(path);
  assert_non_null(b);
  return b;
}

/* Overwrites the uint32 value of metadata key `key` (type tag 4) in a GGUF image. */
static void poke_u32_key(uint8_t *b, size_t size, const char *key, uint32_t v) {
  size_t kl = strlen(key);
  for (size_t i = 8; i + kl + 8 <= size; i++) {
    uint64_t len;
    uint32_t type;
    memcpy(&len, b + i - 8, 8);
    memcpy(&type, b + i + kl, 4);
    if (len == kl && memcmp(b + i, key, kl) == 0 && type == 4) {
      memcpy(b + i + kl + 4, &v, 4);
      return;
    }
  }
  fail_msg("key %s (uint32) not found", key);
}

static void test_block_count_beyond_tensors(void **state) {
  (void)state;
  const uint32_t counts[] = {1u << 30, 3, 0x7fffffffu};
  for (size_t k = 0; k < sizeof counts / sizeof counts[0]; k++) {
    size_t size = 0;
    uint8_t *b = synth_bytes(&size);
    poke_u32_key(b, size, "llama.block_count", counts[k]);
    mk_error_t err = {{0}};
    mk_gguf_t *g = NULL;
    assert_int_equal(mk_gguf_open_memory(b, size, "synth.gguf", &g, &err), 0);
    mk_model_config_t cfg;
    int rc = mk_model_config_read(g, &cfg, &err);
    if (rc == 0) {
      mk_tensor_source_t src = mk_gguf_tensor_source(g);
      mk_model_t m;
      rc = mk_model_bind(&m, &cfg, &src, NULL, &err);
      if (rc == 0) mk_model_free(&m);
    }
    assert_int_equal(rc, -1);
    if (!strstr(err.msg, "block_count")) fail_msg("block_count %u: message '%s' does not name the key", counts[k], err.msg);
    mk_gguf_close(g);
    free(b);
  }
  /* the unpatched file still binds */
  size_t size = 0;
  uint8_t *b = synth_bytes(&size);
  mk_error_t err = {{0}};
  mk_gguf_t *g = NULL;
  assert_int_equal(mk_gguf_open_memory(b, size, "synth.gguf", &g, &err), 0);
  mk_model_config_t cfg;
  assert_int_equal(mk_model_config_read(g, &cfg, &err), 0);
  mk_tensor_source_t src = mk_gguf_tensor_source(g);
  mk_model_t m;
  if (mk_model_bind(&m, &cfg, &src, NULL, &err) != 0) fail_msg("%s", err.msg);
  mk_model_free(&m);
  mk_gguf_close(g);
  free(b);
}

static void test_special_ids_out_of_range(void **state) {
  (void)state;
  const int V = mk_synth_n_vocab();
  struct {
    const char *key;
    uint32_t v;
  } cases[] = {
      {"tokenizer.ggml.bos_token_id", (uint32_t)V},
      {"tokenizer.ggml.eos_token_id", 0xffffffffu},
      {"tokenizer.ggml.bos_token_id", 1u << 31},
  };
  for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
    size_t size = 0;
    uint8_t *b = synth_bytes(&size);
    poke_u32_key(b, size, cases[k].key, cases[k].v);
    mk_error_t err = {{0}};
    mk_gguf_t *g = NULL;
    assert_int_equal(mk_gguf_open_memory(b, size, "synth.gguf", &g, &err), 0);
    mk_tokenizer_t *t = NULL;
    int rc = mk_tok_load(g, &t, &err);
    mk_tok_free(t);
    if (rc != -1) fail_msg("%s = %u was accepted", cases[k].key, cases[k].v);
    if (!strstr(err.msg, cases[k].key)) fail_msg("message '%s' does not name %s", err.msg, cases[k].key);
    mk_gguf_close(g);
    free(b);
  }
  /* the last id is fine */
  size_t size = 0;
  uint8_t *b = synth_bytes(&size);
  poke_u32_key(b, size, "tokenizer.ggml.eos_token_id", (uint32_t)(V - 1));
  mk_error_t err = {{0}};
  mk_gguf_t *g = NULL;
  assert_int_equal(mk_gguf_open_memory(b, size, "synth.gguf", &g, &err), 0);
  mk_tokenizer_t *t = NULL;
  if (mk_tok_load(g, &t, &err) != 0) fail_msg("%s", err.msg);
  assert_int_equal(mk_tok_eos(t), V - 1);
  mk_tok_free(t);
  mk_gguf_close(g);
  free(b);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_block_count_beyond_tensors),
      cmocka_unit_test(test_special_ids_out_of_range),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
