/* Safetensors header parser: a valid file round trip, then each bad input of issue 12 (header
 * length past the end, overlapping and out-of-range offsets, a byte count that disagrees with the
 * shape, bad and unsupported dtypes, malformed JSON, duplicate names, too many dimensions), each
 * checked for the error naming the file and the tensor. Truncation at every byte never crashes.
 * Buffers are malloc'd at their exact size, so ASan catches a read past the end. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "src/safetensors.h"
#include "tests/testutil/st_writer.h"

#define LABEL "shard.safetensors"

static void expect_error(const void *buf, size_t n, const char *want1, const char *want2) {
  mk_st_header_t h;
  mk_error_t err = {{0}};
  int rc = mk_st_parse(buf, n, LABEL, &h, &err);
  if (rc == 0 || !strstr(err.msg, want1) || (want2 && !strstr(err.msg, want2)))
    print_error("rc %d, message: %s (wanted '%s' and '%s')\n", rc, err.msg, want1, want2 ? want2 : "");
  assert_int_equal(rc, -1);
  assert_non_null(strstr(err.msg, LABEL));
  assert_non_null(strstr(err.msg, want1));
  if (want2) assert_non_null(strstr(err.msg, want2));
  assert_int_equal(h.n, 0);
}

static void expect_raw_error(const char *json, const char *want1, const char *want2) {
  mk_st_writer_t *w = mk_stw_new();
  uint8_t data[64] = {0};
  int64_t sh[1] = {8};
  mk_stw_tensor(w, "pad", "F32", 1, sh, data, 32);
  mk_stw_raw_header(w, json);
  size_t n;
  void *b = mk_stw_to_buffer(w, &n);
  expect_error(b, n, want1, want2);
  free(b);
  mk_stw_free(w);
}

static void test_valid(void **state) {
  (void)state;
  mk_st_writer_t *w = mk_stw_new();
  uint16_t bf[6] = {1, 2, 3, 4, 5, 6};
  float f[3] = {1, 2, 3};
  int64_t s23[2] = {2, 3}, s3[1] = {3};
  mk_stw_tensor(w, "model.layers.0.self_attn.q_proj.weight", "BF16", 2, s23, bf, sizeof bf);
  mk_stw_tensor(w, "model.norm.weight", "F32", 1, s3, f, sizeof f);
  mk_stw_tensor(w, "h", "F16", 1, s3, bf, 6);
  mk_stw_tensor(w, "empty", "F32", 2, (int64_t[2]){0, 4}, NULL, 0);
  size_t n;
  uint8_t *b = mk_stw_to_buffer(w, &n);
  mk_st_header_t h;
  mk_error_t err = {{0}};
  assert_int_equal(mk_st_parse(b, n, LABEL, &h, &err), 0);
  assert_int_equal(h.n, 4);
  const mk_st_tensor_t *q = mk_st_find(&h, "model.layers.0.self_attn.q_proj.weight");
  assert_non_null(q);
  assert_int_equal(q->type, MK_TYPE_BF16);
  assert_int_equal(q->n_dims, 2);
  assert_int_equal(q->shape[0], 2);
  assert_int_equal(q->shape[1], 3);
  assert_memory_equal(b + h.data_offset + q->begin, bf, sizeof bf);
  const mk_st_tensor_t *nw = mk_st_find(&h, "model.norm.weight");
  assert_int_equal(nw->type, MK_TYPE_F32);
  assert_memory_equal(b + h.data_offset + nw->begin, f, sizeof f);
  assert_int_equal(mk_st_find(&h, "h")->type, MK_TYPE_F16);
  assert_null(mk_st_find(&h, "absent"));
  mk_st_header_free(&h);
  /* every truncation fails cleanly (or, past the header, may still parse when no data is cut) */
  for (size_t cut = 0; cut < n; cut++) {
    uint8_t *t = malloc(cut ? cut : 1);
    memcpy(t, b, cut);
    if (mk_st_parse(t, cut, LABEL, &h, &err) == 0) mk_st_header_free(&h);
    free(t);
  }
  free(b);
  mk_stw_free(w);
}

static void test_header_len_past_eof(void **state) {
  (void)state;
  mk_st_writer_t *w = mk_stw_new();
  float f[2] = {0};
  mk_stw_tensor(w, "a", "F32", 1, (int64_t[1]){2}, f, sizeof f);
  size_t n;
  uint8_t *b = mk_stw_to_buffer(w, &n);
  free(b);
  mk_stw_set_header_len(w, 1u << 20);
  b = mk_stw_to_buffer(w, &n);
  expect_error(b, n, "header length 1048576 runs past the end of the file", NULL);
  free(b);
  mk_stw_set_header_len(w, UINT64_MAX);
  b = mk_stw_to_buffer(w, &n);
  expect_error(b, n, "runs past the end of the file", NULL);
  free(b);
  expect_error("\x01\x02\x03", 3, "too short", NULL);
  mk_stw_free(w);
}

static void test_offsets(void **state) {
  (void)state;
  /* the data section is 32 bytes (see expect_raw_error) */
  expect_raw_error("{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]},"
                   "\"b\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[8,24]}}",
                   "overlap", "'a'");
  expect_raw_error("{\"a\":{\"dtype\":\"F32\",\"shape\":[10],\"data_offsets\":[0,40]}}", "'a'", "past the end");
  expect_raw_error("{\"w\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,16]}}", "'w'", "need 12");
  expect_raw_error("{\"w\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[16,0]}}", "'w'", "begin <= end");
  expect_raw_error("{\"w\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[-4,12]}}", "'w'", "data_offsets");
  expect_raw_error("{\"w\":{\"dtype\":\"F32\",\"shape\":[4]}}", "'w'", "data_offsets");
  expect_raw_error("{\"w\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296],\"data_offsets\":[0,16]}}", "'w'",
                   "shape[0]");
  expect_raw_error("{\"w\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,4],\"data_offsets\":[0,16]}}", "'w'", "5 dimensions");
  expect_raw_error("{\"w\":{\"dtype\":\"F32\",\"shape\":4,\"data_offsets\":[0,16]}}", "'w'", "shape");
}

static void test_dtype(void **state) {
  (void)state;
  expect_raw_error("{\"w\":{\"dtype\":\"Q4\",\"shape\":[4],\"data_offsets\":[0,16]}}", "'w'", "unknown dtype \"Q4\"");
  expect_raw_error("{\"w\":{\"dtype\":\"I32\",\"shape\":[4],\"data_offsets\":[0,16]}}", "'w'", "I32 is not supported");
  expect_raw_error("{\"w\":{\"dtype\":7,\"shape\":[4],\"data_offsets\":[0,16]}}", "'w'", "dtype");
}

static void test_malformed_json(void **state) {
  (void)state;
  expect_raw_error("{\"w\":{\"dtype\":\"F32\",", "malformed JSON", "line 1");
  expect_raw_error("[1,2,3]", "not an object", NULL);
  expect_raw_error("{\"w\":5}", "'w'", "not an object");
  expect_raw_error("{\"__metadata__\":3}", "__metadata__", NULL);
  expect_raw_error("{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]},"
                   "\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[16,32]}}",
                   "malformed JSON", "duplicate");
  expect_raw_error("{\"a\\u0000b\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}", "malformed JSON", NULL);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_valid),        cmocka_unit_test(test_header_len_past_eof),
      cmocka_unit_test(test_offsets),      cmocka_unit_test(test_dtype),
      cmocka_unit_test(test_malformed_json),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
