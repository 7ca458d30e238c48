/* GGUF reader on the demo model (SmolLM2-135M-Instruct Q4_1): metadata spot checks, and the full
 * tensor table (name, type, shape, absolute data offset, bytes) against the table the `gguf`
 * Python package reads from the same file (tests/golden/gguf/smollm2_tensors.tsv, made by
 * tests/golden/gguf/make_tensor_table.py). */
#define _POSIX_C_SOURCE 200809L

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "src/gguf.h"
#include "tests/testutil/testutil.h"

static mk_gguf_t *open_model(void) {
  const char *path = mk_test_model_path();
  assert_non_null(path);
  mk_gguf_t *g = NULL;
  mk_error_t err = {{0}};
  if (mk_gguf_open(path, &g, &err) != 0) fail_msg("%s", err.msg);
  return g;
}

static void assert_str_eq(mk_gguf_str_t s, const char *want) {
  if (s.len != strlen(want) || memcmp(s.ptr, want, s.len) != 0)
    fail_msg("got '%.*s', want '%s'", (int)s.len, s.ptr, want);
}

static void test_metadata(void **state) {
  mk_gguf_t *g = open_model();
  mk_error_t err = {{0}};
  assert_int_equal(mk_gguf_version(g), 3);
  assert_int_equal(mk_gguf_alignment(g), 32);
  assert_int_equal(mk_gguf_n_kv(g), 33);
  assert_int_equal(mk_gguf_n_tensors(g), 272);

  char *s = NULL;
  assert_int_equal(mk_gguf_get_str(g, "general.architecture", &s, &err), MK_GGUF_OK);
  assert_string_equal(s, "llama");
  free(s);
  assert_int_equal(mk_gguf_get_str(g, "tokenizer.ggml.model", &s, &err), MK_GGUF_OK);
  assert_string_equal(s, "gpt2");
  free(s);
  assert_int_equal(mk_gguf_get_str(g, "tokenizer.ggml.pre", &s, &err), MK_GGUF_OK);
  assert_string_equal(s, "smollm");
  free(s);

  uint32_t u = 0;
  assert_int_equal(mk_gguf_get_u32(g, "llama.block_count", &u, &err), MK_GGUF_OK);
  assert_int_equal(u, 30);
  assert_int_equal(mk_gguf_get_u32(g, "llama.embedding_length", &u, &err), MK_GGUF_OK);
  assert_int_equal(u, 576);
  assert_int_equal(mk_gguf_get_u32(g, "llama.feed_forward_length", &u, &err), MK_GGUF_OK);
  assert_int_equal(u, 1536);
  assert_int_equal(mk_gguf_get_u32(g, "llama.attention.head_count", &u, &err), MK_GGUF_OK);
  assert_int_equal(u, 9);
  assert_int_equal(mk_gguf_get_u32(g, "llama.attention.head_count_kv", &u, &err), MK_GGUF_OK);
  assert_int_equal(u, 3);
  assert_int_equal(mk_gguf_get_u32(g, "llama.context_length", &u, &err), MK_GGUF_OK);
  assert_int_equal(u, 8192);
  assert_int_equal(mk_gguf_get_u32(g, "tokenizer.ggml.eos_token_id", &u, &err), MK_GGUF_OK);
  assert_int_equal(u, 2);
  float f = 0;
  assert_int_equal(mk_gguf_get_f32(g, "llama.rope.freq_base", &f, &err), MK_GGUF_OK);
  assert_true(f == 100000.0f);
  assert_int_equal(mk_gguf_get_f32(g, "llama.attention.layer_norm_rms_epsilon", &f, &err), MK_GGUF_OK);
  assert_true(f == 1e-5f);
  bool b = true;
  assert_int_equal(mk_gguf_get_bool(g, "tokenizer.ggml.add_bos_token", &b, &err), MK_GGUF_OK);
  assert_false(b);
  assert_int_equal(mk_gguf_get_u32(g, "llama.no_such_key", &u, &err), MK_GGUF_MISSING);

  const mk_gguf_value_t *arr = NULL;
  assert_int_equal(mk_gguf_get_arr(g, "tokenizer.ggml.tokens", MK_GGUF_STRING, &arr, &err), MK_GGUF_OK);
  assert_int_equal(arr->v.arr.n, 49152);
  assert_str_eq(arr->v.arr.strs[0], "<|endoftext|>");
  assert_str_eq(arr->v.arr.strs[1], "<|im_start|>");
  assert_str_eq(arr->v.arr.strs[2], "<|im_end|>");
  assert_str_eq(arr->v.arr.strs[100], "t");
  assert_str_eq(arr->v.arr.strs[49151], "ectable");
  assert_int_equal(mk_gguf_get_arr(g, "tokenizer.ggml.merges", MK_GGUF_STRING, &arr, &err), MK_GGUF_OK);
  assert_int_equal(arr->v.arr.n, 48900);
  assert_str_eq(arr->v.arr.strs[0], "\xc4\xa0 t"); /* "Ġ t" */
  assert_int_equal(mk_gguf_get_arr(g, "tokenizer.ggml.token_type", MK_GGUF_INT32, &arr, &err), MK_GGUF_OK);
  assert_int_equal(arr->v.arr.n, 49152);
  int32_t tt;
  memcpy(&tt, arr->v.arr.raw, sizeof tt);
  assert_int_equal(tt, 3); /* control */
  assert_int_equal(mk_gguf_get_arr(g, "general.languages", MK_GGUF_STRING, &arr, &err), MK_GGUF_OK);
  assert_int_equal(arr->v.arr.n, 1);
  assert_str_eq(arr->v.arr.strs[0], "en");

  const mk_tensor_info_t *t = mk_gguf_tensor_find(g, "token_embd.weight");
  assert_non_null(t);
  assert_int_equal(t->type, MK_TYPE_Q8_0);
  assert_int_equal(t->n_dims, 2);
  assert_int_equal(t->ne[0], 576);
  assert_int_equal(t->ne[1], 49152);
  assert_int_equal(t->nbytes, (size_t)49152 * (576 / 32) * 34);
  t = mk_gguf_tensor_find(g, "blk.0.attn_q.weight");
  assert_non_null(t);
  assert_int_equal(t->type, MK_TYPE_Q4_1);
  assert_int_equal(t->n_dims, 2);
  assert_int_equal(t->ne[0], 576);
  assert_int_equal(t->ne[1], 576);
  t = mk_gguf_tensor_find(g, "blk.29.ffn_norm.weight");
  assert_non_null(t);
  assert_int_equal(t->type, MK_TYPE_F32);
  assert_int_equal(t->n_dims, 1);
  assert_int_equal(t->ne[0], 576);
  assert_null(mk_gguf_tensor_find(g, "output.weight")); /* tied to token_embd */

  mk_tensor_source_t src = mk_gguf_tensor_source(g);
  assert_int_equal(src.count(src.impl), 272);
  assert_ptr_equal(mk_tensor_find(&src, "blk.0.attn_q.weight"), mk_gguf_tensor_find(g, "blk.0.attn_q.weight"));
  mk_gguf_close(g);
}

/* Splits line at tabs into at most n fields (in place); returns the count. */
static int split_tabs(char *line, char **fields, int n) {
  int k = 0;
  fields[k++] = line;
  for (char *p = line; *p && k < n; p++)
    if (*p == '\t') {
      *p = 0;
      fields[k++] = p + 1;
    }
  return k;
}

/* The whole table against gguf-py's. The file is also read into memory and opened with
 * mk_gguf_open_memory, which gives absolute offsets (data - buffer); the mmap'd reader must agree
 * with it on everything. */
static void test_tensor_table_golden(void **state) {
  size_t tsv_len = 0;
  char *tsv = mk_test_read_file(mk_test_source_path("tests/golden/gguf/smollm2_tensors.tsv"), &tsv_len);
  assert_non_null(tsv);
  mk_gguf_t *g = open_model();
  size_t file_len = 0;
  uint8_t *file = (uint8_t *)mk_test_read_file(mk_test_model_path(), &file_len);
  assert_non_null(file);
  assert_int_equal(file_len, mk_gguf_file_size(g));
  mk_gguf_t *gm = NULL;
  mk_error_t err = {{0}};
  if (mk_gguf_open_memory(file, file_len, "demo-in-memory", &gm, &err) != 0) fail_msg("%s", err.msg);

  size_t row = 0;
  char *save = NULL;
  for (char *line = strtok_r(tsv, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
    if (line[0] == '#') continue;
    char *fld[6];
    if (split_tabs(line, fld, 6) != 6) fail_msg("golden row %zu: expected 6 fields", row);
    const mk_tensor_info_t *t = mk_gguf_tensor_at(g, row);
    const mk_tensor_info_t *tm = mk_gguf_tensor_at(gm, row);
    if (!t || !tm) fail_msg("golden has more than %zu tensors", row);
    if (strcmp(t->name, fld[0]) != 0) fail_msg("tensor %zu: name '%s', golden '%s'", row, t->name, fld[0]);
    assert_ptr_equal(mk_gguf_tensor_find(g, fld[0]), t);
    if ((long)t->type != strtol(fld[1], NULL, 10))
      fail_msg("tensor '%s': type %d, golden %s (%s)", t->name, (int)t->type, fld[1], fld[2]);
    int64_t ne[4] = {1, 1, 1, 1};
    int n_dims = 0;
    for (char *p = fld[3]; *p && n_dims < 4; n_dims++) {
      char *end;
      ne[n_dims] = strtoll(p, &end, 10);
      p = *end == ',' ? end + 1 : end;
    }
    if (t->n_dims != n_dims) fail_msg("tensor '%s': n_dims %d, golden %d", t->name, t->n_dims, n_dims);
    for (int d = 0; d < 4; d++)
      if (t->ne[d] != ne[d])
        fail_msg("tensor '%s': ne[%d] = %lld, golden %lld", t->name, d, (long long)t->ne[d], (long long)ne[d]);
    unsigned long long off = strtoull(fld[4], NULL, 10), nbytes = strtoull(fld[5], NULL, 10);
    unsigned long long got_off = (unsigned long long)((const uint8_t *)tm->data - file);
    if (got_off != off) fail_msg("tensor '%s': data at file offset %llu, golden %llu", t->name, got_off, off);
    if (t->nbytes != nbytes) fail_msg("tensor '%s': %zu bytes, golden %llu", t->name, t->nbytes, nbytes);
    /* the mmap'd reader agrees with the in-memory one */
    assert_string_equal(tm->name, t->name);
    assert_int_equal(tm->nbytes, t->nbytes);
    assert_int_equal((const uint8_t *)t->data - (const uint8_t *)mk_gguf_tensor_at(g, 0)->data,
                     (const uint8_t *)tm->data - (const uint8_t *)mk_gguf_tensor_at(gm, 0)->data);
    row++;
  }
  assert_int_equal(row, 272);
  assert_int_equal(mk_gguf_n_tensors(g), row);
  /* spot-check that mapped bytes are the file's bytes (last tensor, last bytes) */
  const mk_tensor_info_t *last = mk_gguf_tensor_at(g, row - 1), *lastm = mk_gguf_tensor_at(gm, row - 1);
  assert_memory_equal(last->data, lastm->data, last->nbytes);
  mk_gguf_close(gm);
  mk_gguf_close(g);
  free(file);
  free(tsv);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_metadata),
      cmocka_unit_test(test_tensor_table_golden),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
