/* GGUF reader and test writer: round trips of every metadata type (nested arrays included),
 * versions 2 and 3, alignment, tensor data; truncation at every byte; targeted hostile files; and a
 * deterministic random-corruption loop that must never crash (CI also runs it under ASan/UBSan).
 *
 * Buffers handed to the reader are always malloc'd at their exact size, so a read one byte past
 * the end is caught by ASan. */
#define _POSIX_C_SOURCE 200809L

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "src/gguf.h"
#include "tests/testutil/gguf_writer.h"
#include "tests/testutil/testutil.h"

#define LABEL "t.gguf"

/* ---- fixtures -------------------------------------------------------------------------------- */

typedef struct tensor_spec {
  const char *name;
  mk_type_t type;
  int n_dims;
  int64_t ne[4];
  size_t nbytes;
} tensor_spec_t;

static const tensor_spec_t k_tensors[] = {
    {"a.f32", MK_TYPE_F32, 2, {4, 3, 1, 1}, 4 * 3 * 4},
    {"b.q8_0", MK_TYPE_Q8_0, 2, {64, 2, 1, 1}, 4 * 34},
    {"c.f16", MK_TYPE_F16, 1, {16, 1, 1, 1}, 16 * 2},
    {"blk.0.d.q4_1", MK_TYPE_Q4_1, 4, {32, 1, 2, 1}, 2 * 20},
};
enum { N_TENSORS = sizeof k_tensors / sizeof k_tensors[0] };

/* Deterministic tensor payload: byte j of tensor i. */
static uint8_t payload(size_t i, size_t j) { return (uint8_t)(i * 37 + j * 11 + 5); }

static const char *const k_strs[] = {"a", "", "\xc3\xbc" "n" "\xc3\xaf" "c" "\xc3\xb6" "de", "a longer string with spaces"};

/* Raw bytes of a nested array value (after the ARRAY tag):
 *   [ u32[1,2,3], string["x","yz"], [ i8[-7] ], u32[] ] */
static void put_nested(mk_gw_bytes_t *b) {
  mk_gw_put_arr_header(b, MK_GGUF_ARRAY, 4);
  mk_gw_put_arr_header(b, MK_GGUF_UINT32, 3);
  for (uint32_t i = 1; i <= 3; i++) mk_gw_put_u32(b, i);
  mk_gw_put_arr_header(b, MK_GGUF_STRING, 2);
  mk_gw_put_str(b, "x");
  mk_gw_put_str(b, "yz");
  mk_gw_put_arr_header(b, MK_GGUF_ARRAY, 1);
  mk_gw_put_arr_header(b, MK_GGUF_INT8, 1);
  mk_gw_put_u8(b, (uint8_t)-7);
  mk_gw_put_arr_header(b, MK_GGUF_UINT32, 0);
}

/* `levels` arrays nested in each other, the innermost holding one uint8 (42). */
static void put_deep(mk_gw_bytes_t *b, int levels) {
  for (int i = 0; i < levels - 1; i++) mk_gw_put_arr_header(b, MK_GGUF_ARRAY, 1);
  mk_gw_put_arr_header(b, MK_GGUF_UINT8, 1);
  mk_gw_put_u8(b, 42);
}

/* A writer holding every metadata type and the tensors above. */
static mk_gguf_writer_t *make_rich(uint32_t version, uint32_t alignment) {
  mk_gguf_writer_t *w = mk_gw_new();
  mk_gw_set_version(w, version);
  if (alignment) mk_gw_set_alignment(w, alignment);
  uint8_t u8 = 200;
  int8_t i8 = -100;
  uint16_t u16 = 60000;
  int16_t i16 = -30000;
  mk_gw_kv_str(w, "general.architecture", "llama");
  mk_gw_kv_scalar(w, "t.u8", MK_GGUF_UINT8, &u8);
  mk_gw_kv_scalar(w, "t.i8", MK_GGUF_INT8, &i8);
  mk_gw_kv_scalar(w, "t.u16", MK_GGUF_UINT16, &u16);
  mk_gw_kv_scalar(w, "t.i16", MK_GGUF_INT16, &i16);
  mk_gw_kv_u32(w, "t.u32", 4000000000u);
  mk_gw_kv_i32(w, "t.i32", -2000000000);
  mk_gw_kv_f32(w, "t.f32", 1.5f);
  mk_gw_kv_bool(w, "t.bool", true);
  mk_gw_kv_bool(w, "t.bool_false", false);
  mk_gw_kv_str(w, "t.str", "hello \xe2\x9c\x93");
  mk_gw_kv_str(w, "t.str_empty", "");
  mk_gw_kv_u64(w, "t.u64", (UINT64_C(1) << 63) + 5);
  mk_gw_kv_i64(w, "t.i64", -(INT64_C(1) << 62));
  mk_gw_kv_f64(w, "t.f64", 3.141592653589793);

  const uint8_t a_u8[] = {1, 2, 255};
  const int8_t a_i8[] = {-1, 0, 127};
  const uint16_t a_u16[] = {0, 65535};
  const int16_t a_i16[] = {-32768, 5};
  const uint32_t a_u32[] = {7, 8, 9, 4294967295u};
  const int32_t a_i32[] = {-5, 6};
  const float a_f32[] = {0.5f, -2.0f, 1e30f};
  const uint8_t a_bool[] = {1, 0, 1};
  const uint64_t a_u64[] = {UINT64_MAX, 0};
  const int64_t a_i64[] = {INT64_MIN, 3};
  const double a_f64[] = {-0.25, 1e300};
  mk_gw_kv_arr(w, "a.u8", MK_GGUF_UINT8, a_u8, 3);
  mk_gw_kv_arr(w, "a.i8", MK_GGUF_INT8, a_i8, 3);
  mk_gw_kv_arr(w, "a.u16", MK_GGUF_UINT16, a_u16, 2);
  mk_gw_kv_arr(w, "a.i16", MK_GGUF_INT16, a_i16, 2);
  mk_gw_kv_arr(w, "a.u32", MK_GGUF_UINT32, a_u32, 4);
  mk_gw_kv_arr(w, "a.i32", MK_GGUF_INT32, a_i32, 2);
  mk_gw_kv_arr(w, "a.f32", MK_GGUF_FLOAT32, a_f32, 3);
  mk_gw_kv_arr(w, "a.bool", MK_GGUF_BOOL, a_bool, 3);
  mk_gw_kv_arr(w, "a.u64", MK_GGUF_UINT64, a_u64, 2);
  mk_gw_kv_arr(w, "a.i64", MK_GGUF_INT64, a_i64, 2);
  mk_gw_kv_arr(w, "a.f64", MK_GGUF_FLOAT64, a_f64, 2);
  mk_gw_kv_arr(w, "a.empty", MK_GGUF_UINT32, NULL, 0);
  mk_gw_kv_arr_str(w, "a.str", k_strs, 4);
  mk_gw_kv_arr_str(w, "a.str_empty", NULL, 0);
  mk_gw_bytes_t b = {0};
  put_nested(&b);
  mk_gw_kv_raw(w, "a.nested", MK_GGUF_ARRAY, b.p, b.n);
  b.n = 0;
  put_deep(&b, 8);
  mk_gw_kv_raw(w, "a.deep8", MK_GGUF_ARRAY, b.p, b.n);
  mk_gw_bytes_free(&b);

  for (size_t i = 0; i < N_TENSORS; i++) {
    const tensor_spec_t *s = &k_tensors[i];
    uint8_t *data = malloc(s->nbytes);
    for (size_t j = 0; j < s->nbytes; j++) data[j] = payload(i, j);
    mk_gw_tensor(w, s->name, s->type, s->n_dims, s->ne, data, s->nbytes);
    free(data);
  }
  return w;
}

enum { N_RICH_KV = 31 }; /* key-value pairs make_rich adds */

/* Serialises w into an exact-size malloc'd buffer. */
static uint8_t *to_buf(mk_gguf_writer_t *w, size_t *size) {
  uint8_t *buf = mk_gw_to_buffer(w, size);
  assert_non_null(buf);
  return buf;
}

static uint8_t *rich_buf(uint32_t version, uint32_t alignment, bool pad_end, size_t *size) {
  mk_gguf_writer_t *w = make_rich(version, alignment);
  mk_gw_set_pad_end(w, pad_end);
  uint8_t *buf = to_buf(w, size);
  mk_gw_free(w);
  return buf;
}

static mk_gguf_t *open_ok(const uint8_t *buf, size_t size) {
  mk_gguf_t *g = NULL;
  mk_error_t err = {{0}};
  int rc = mk_gguf_open_memory(buf, size, LABEL, &g, &err);
  if (rc != 0) fail_msg("open failed: %s", err.msg);
  assert_non_null(g);
  return g;
}

/* Opening must fail, the message must name the label and contain each of the given fragments. */
static void expect_fail(const uint8_t *buf, size_t size, ...) {
  mk_gguf_t *g = (mk_gguf_t *)1;
  mk_error_t err = {{0}};
  int rc = mk_gguf_open_memory(buf, size, LABEL, &g, &err);
  if (rc == 0) {
    mk_gguf_close(g);
    fail_msg("open succeeded, expected a failure");
  }
  assert_int_equal(rc, -1);
  assert_null(g);
  if (!strstr(err.msg, LABEL)) fail_msg("message does not name the file: %s", err.msg);
  va_list ap;
  va_start(ap, size);
  for (const char *frag; (frag = va_arg(ap, const char *)) != NULL;)
    if (!strstr(err.msg, frag)) fail_msg("message lacks '%s': %s", frag, err.msg);
  va_end(ap);
}

/* ---- round trips ----------------------------------------------------------------------------- */

static uint64_t le_at(const void *raw, size_t i, size_t es) {
  const uint8_t *p = (const uint8_t *)raw + i * es;
  uint64_t v = 0;
  for (size_t k = 0; k < es; k++) v |= (uint64_t)p[k] << (8 * k);
  return v;
}

static void assert_str(mk_gguf_str_t s, const char *want) {
  assert_int_equal(s.len, strlen(want));
  assert_memory_equal(s.ptr, want, s.len);
}

static const mk_gguf_value_t *find_value(const mk_gguf_t *g, const char *key, mk_gguf_vtype_t type) {
  const mk_gguf_kv_t *kv = mk_gguf_find(g, key);
  if (!kv) fail_msg("key %s missing", key);
  assert_string_equal(kv->key, key);
  assert_int_equal(kv->value.type, type);
  return &kv->value;
}

static const mk_gguf_value_t *find_arr(const mk_gguf_t *g, const char *key, mk_gguf_vtype_t et, uint64_t n) {
  const mk_gguf_value_t *v = find_value(g, key, MK_GGUF_ARRAY);
  assert_int_equal(v->v.arr.elem_type, et);
  assert_int_equal(v->v.arr.n, n);
  return v;
}

static void check_rich_metadata(const mk_gguf_t *g) {
  assert_int_equal(mk_gguf_n_kv(g), N_RICH_KV + (mk_gguf_alignment(g) != 32 ? 1 : 0));
  assert_string_equal(mk_gguf_kv_at(g, 0)->key, "general.architecture");
  assert_string_equal(mk_gguf_kv_at(g, 1)->key, "t.u8");
  assert_null(mk_gguf_kv_at(g, mk_gguf_n_kv(g)));
  assert_null(mk_gguf_find(g, "no.such.key"));

  assert_int_equal(find_value(g, "t.u8", MK_GGUF_UINT8)->v.u64, 200);
  assert_int_equal(find_value(g, "t.i8", MK_GGUF_INT8)->v.i64, -100);
  assert_int_equal(find_value(g, "t.u16", MK_GGUF_UINT16)->v.u64, 60000);
  assert_int_equal(find_value(g, "t.i16", MK_GGUF_INT16)->v.i64, -30000);
  assert_int_equal(find_value(g, "t.u32", MK_GGUF_UINT32)->v.u64, 4000000000u);
  assert_int_equal(find_value(g, "t.i32", MK_GGUF_INT32)->v.i64, -2000000000);
  assert_true(find_value(g, "t.f32", MK_GGUF_FLOAT32)->v.f64 == 1.5);
  assert_true(find_value(g, "t.bool", MK_GGUF_BOOL)->v.b);
  assert_false(find_value(g, "t.bool_false", MK_GGUF_BOOL)->v.b);
  assert_str(find_value(g, "t.str", MK_GGUF_STRING)->v.str, "hello \xe2\x9c\x93");
  assert_str(find_value(g, "t.str_empty", MK_GGUF_STRING)->v.str, "");
  assert_true(find_value(g, "t.u64", MK_GGUF_UINT64)->v.u64 == (UINT64_C(1) << 63) + 5);
  assert_true(find_value(g, "t.i64", MK_GGUF_INT64)->v.i64 == -(INT64_C(1) << 62));
  assert_true(find_value(g, "t.f64", MK_GGUF_FLOAT64)->v.f64 == 3.141592653589793);

  const mk_gguf_value_t *v;
  v = find_arr(g, "a.u8", MK_GGUF_UINT8, 3);
  assert_int_equal(le_at(v->v.arr.raw, 2, 1), 255);
  v = find_arr(g, "a.i8", MK_GGUF_INT8, 3);
  assert_int_equal((int8_t)le_at(v->v.arr.raw, 0, 1), -1);
  v = find_arr(g, "a.u16", MK_GGUF_UINT16, 2);
  assert_int_equal(le_at(v->v.arr.raw, 1, 2), 65535);
  v = find_arr(g, "a.i16", MK_GGUF_INT16, 2);
  assert_int_equal((int16_t)le_at(v->v.arr.raw, 0, 2), -32768);
  v = find_arr(g, "a.u32", MK_GGUF_UINT32, 4);
  for (size_t i = 0; i < 3; i++) assert_int_equal(le_at(v->v.arr.raw, i, 4), 7 + i);
  assert_int_equal(le_at(v->v.arr.raw, 3, 4), 4294967295u);
  v = find_arr(g, "a.i32", MK_GGUF_INT32, 2);
  assert_int_equal((int32_t)le_at(v->v.arr.raw, 0, 4), -5);
  v = find_arr(g, "a.f32", MK_GGUF_FLOAT32, 3);
  float f[3];
  memcpy(f, v->v.arr.raw, sizeof f);
  assert_true(f[0] == 0.5f && f[1] == -2.0f && f[2] == 1e30f);
  v = find_arr(g, "a.bool", MK_GGUF_BOOL, 3);
  assert_memory_equal(v->v.arr.raw, "\x01\x00\x01", 3);
  v = find_arr(g, "a.u64", MK_GGUF_UINT64, 2);
  assert_true(le_at(v->v.arr.raw, 0, 8) == UINT64_MAX);
  v = find_arr(g, "a.i64", MK_GGUF_INT64, 2);
  assert_true((int64_t)le_at(v->v.arr.raw, 0, 8) == INT64_MIN);
  v = find_arr(g, "a.f64", MK_GGUF_FLOAT64, 2);
  double d[2];
  memcpy(d, v->v.arr.raw, sizeof d);
  assert_true(d[0] == -0.25 && d[1] == 1e300);
  find_arr(g, "a.empty", MK_GGUF_UINT32, 0);
  find_arr(g, "a.str_empty", MK_GGUF_STRING, 0);

  v = find_arr(g, "a.str", MK_GGUF_STRING, 4);
  for (size_t i = 0; i < 4; i++) assert_str(v->v.arr.strs[i], k_strs[i]);

  v = find_arr(g, "a.nested", MK_GGUF_ARRAY, 4);
  const mk_gguf_value_t *it = v->v.arr.items;
  assert_int_equal(it[0].type, MK_GGUF_ARRAY);
  assert_int_equal(it[0].v.arr.elem_type, MK_GGUF_UINT32);
  assert_int_equal(it[0].v.arr.n, 3);
  for (size_t i = 0; i < 3; i++) assert_int_equal(le_at(it[0].v.arr.raw, i, 4), i + 1);
  assert_int_equal(it[1].v.arr.elem_type, MK_GGUF_STRING);
  assert_int_equal(it[1].v.arr.n, 2);
  assert_str(it[1].v.arr.strs[0], "x");
  assert_str(it[1].v.arr.strs[1], "yz");
  assert_int_equal(it[2].v.arr.elem_type, MK_GGUF_ARRAY);
  assert_int_equal(it[2].v.arr.n, 1);
  const mk_gguf_value_t *inner = &it[2].v.arr.items[0];
  assert_int_equal(inner->v.arr.elem_type, MK_GGUF_INT8);
  assert_int_equal((int8_t)le_at(inner->v.arr.raw, 0, 1), -7);
  assert_int_equal(it[3].v.arr.elem_type, MK_GGUF_UINT32);
  assert_int_equal(it[3].v.arr.n, 0);

  v = find_arr(g, "a.deep8", MK_GGUF_ARRAY, 1);
  for (int lvl = 1; lvl <= 8; lvl++) {
    assert_int_equal(v->v.arr.n, 1);
    assert_int_equal(v->v.arr.elem_type, lvl < 8 ? MK_GGUF_ARRAY : MK_GGUF_UINT8);
    if (lvl < 8) v = &v->v.arr.items[0];
  }
  assert_int_equal(le_at(v->v.arr.raw, 0, 1), 42);
}

static void check_rich_tensors(const mk_gguf_t *g, const uint8_t *buf, size_t size, mk_gguf_writer_t *w) {
  assert_int_equal(mk_gguf_n_tensors(g), N_TENSORS);
  assert_null(mk_gguf_tensor_at(g, N_TENSORS));
  size_t align = mk_gguf_alignment(g);
  const uint8_t *first = mk_gguf_tensor_at(g, 0)->data;
  for (size_t i = 0; i < N_TENSORS; i++) {
    const tensor_spec_t *s = &k_tensors[i];
    const mk_tensor_info_t *t = mk_gguf_tensor_at(g, i);
    assert_ptr_equal(mk_gguf_tensor_find(g, s->name), t);
    assert_string_equal(t->name, s->name);
    assert_int_equal(t->type, s->type);
    assert_int_equal(t->n_dims, s->n_dims);
    for (int d = 0; d < 4; d++) assert_int_equal(t->ne[d], s->ne[d]);
    assert_int_equal(t->nbytes, s->nbytes);
    const uint8_t *p = t->data;
    assert_true(p >= buf && p + t->nbytes <= buf + size);
    assert_int_equal((size_t)(p - buf) % align, 0);
    assert_int_equal((uint64_t)(p - first), mk_gw_tensor_offset(w, i) - mk_gw_tensor_offset(w, 0));
    for (size_t j = 0; j < s->nbytes; j++)
      if (p[j] != payload(i, j)) fail_msg("tensor %s byte %zu differs", s->name, j);
  }
  assert_null(mk_gguf_tensor_find(g, "missing"));
}

static void roundtrip(uint32_t version, uint32_t alignment) {
  mk_gguf_writer_t *w = make_rich(version, alignment);
  size_t size;
  uint8_t *buf = to_buf(w, &size);
  mk_gguf_t *g = open_ok(buf, size);
  assert_int_equal(mk_gguf_version(g), version);
  assert_int_equal(mk_gguf_alignment(g), alignment ? alignment : 32);
  assert_int_equal(mk_gguf_file_size(g), size);
  assert_string_equal(mk_gguf_path(g), LABEL);
  if (alignment && alignment != 32) {
    uint32_t a = 0;
    assert_int_equal(mk_gguf_get_u32(g, "general.alignment", &a, NULL), MK_GGUF_OK);
    assert_int_equal(a, alignment);
  }
  check_rich_metadata(g);
  check_rich_tensors(g, buf, size, w);
  mk_gguf_close(g);
  free(buf);
  mk_gw_free(w);
}

static void test_roundtrip_v3(void **state) { roundtrip(3, 0); }
static void test_roundtrip_v2(void **state) { roundtrip(2, 0); }
static void test_alignment_64(void **state) { roundtrip(3, 64); }
static void test_alignment_1(void **state) { roundtrip(3, 1); }
static void test_alignment_4096_v2(void **state) { roundtrip(2, 4096); }

/* The whole file through mmap. */
static void test_open_file(void **state) {
  char path[] = "/tmp/mk_test_gguf_XXXXXX";
  int fd = mkstemp(path);
  assert_true(fd >= 0);
  close(fd);
  mk_gguf_writer_t *w = make_rich(3, 0);
  assert_int_equal(mk_gw_write_file(w, path), 0);
  size_t size;
  uint8_t *buf = to_buf(w, &size);
  size_t file_len = 0;
  char *file = mk_test_read_file(path, &file_len);
  assert_non_null(file);
  assert_int_equal(file_len, size); /* file and buffer serialisations agree byte for byte */
  assert_memory_equal(file, buf, size);
  free(file);

  mk_gguf_t *g = NULL;
  mk_error_t err = {{0}};
  if (mk_gguf_open(path, &g, &err) != 0) fail_msg("%s", err.msg);
  assert_string_equal(mk_gguf_path(g), path);
  assert_int_equal(mk_gguf_file_size(g), size);
  check_rich_metadata(g);
  const mk_tensor_info_t *t = mk_gguf_tensor_find(g, "b.q8_0");
  assert_non_null(t);
  for (size_t j = 0; j < t->nbytes; j++) assert_int_equal(((const uint8_t *)t->data)[j], payload(1, j));
  mk_gguf_close(g);

  /* a missing file and an empty file: errors naming the path */
  unlink(path);
  g = (mk_gguf_t *)1;
  assert_int_equal(mk_gguf_open(path, &g, &err), -1);
  assert_null(g);
  assert_non_null(strstr(err.msg, path));
  FILE *f = fopen(path, "wb");
  assert_non_null(f);
  fclose(f);
  assert_int_equal(mk_gguf_open(path, &g, &err), -1);
  assert_non_null(strstr(err.msg, path));
  assert_non_null(strstr(err.msg, "truncated"));
  unlink(path);
  free(buf);
  mk_gw_free(w);
}

/* ---- getters --------------------------------------------------------------------------------- */

static void test_getters(void **state) {
  mk_gguf_writer_t *w = make_rich(3, 0);
  mk_gw_kv_i32(w, "g.neg", -1);
  mk_gw_kv_u64(w, "g.big", UINT64_C(1) << 40);
  mk_gw_kv_f64(w, "g.huge", 1e300);
  size_t size;
  uint8_t *buf = to_buf(w, &size);
  mk_gguf_t *g = open_ok(buf, size);
  mk_error_t err;
  strcpy(err.msg, "untouched");

  uint32_t u = 77;
  int64_t i = 77;
  float f = 7.0f;
  bool b = false;
  char *s = NULL;
  const mk_gguf_value_t *arr = NULL;

  /* missing: MK_GGUF_MISSING, outputs and err untouched */
  assert_int_equal(mk_gguf_get_u32(g, "nope", &u, &err), MK_GGUF_MISSING);
  assert_int_equal(mk_gguf_get_i64(g, "nope", &i, &err), MK_GGUF_MISSING);
  assert_int_equal(mk_gguf_get_f32(g, "nope", &f, &err), MK_GGUF_MISSING);
  assert_int_equal(mk_gguf_get_bool(g, "nope", &b, &err), MK_GGUF_MISSING);
  assert_int_equal(mk_gguf_get_str(g, "nope", &s, &err), MK_GGUF_MISSING);
  assert_int_equal(mk_gguf_get_arr(g, "nope", MK_GGUF_UINT32, &arr, &err), MK_GGUF_MISSING);
  assert_int_equal(u, 77);
  assert_int_equal(i, 77);
  assert_true(f == 7.0f && !b && !s && !arr);
  assert_string_equal(err.msg, "untouched");

  /* integers widen from any integer type whose value fits */
  assert_int_equal(mk_gguf_get_u32(g, "t.u8", &u, &err), 0);
  assert_int_equal(u, 200);
  assert_int_equal(mk_gguf_get_u32(g, "t.u16", &u, &err), 0);
  assert_int_equal(u, 60000);
  assert_int_equal(mk_gguf_get_u32(g, "t.u32", &u, &err), 0);
  assert_int_equal(u, 4000000000u);
  assert_int_equal(mk_gguf_get_i64(g, "t.i8", &i, &err), 0);
  assert_int_equal(i, -100);
  assert_int_equal(mk_gguf_get_i64(g, "t.i64", &i, &err), 0);
  assert_true(i == -(INT64_C(1) << 62));
  assert_int_equal(mk_gguf_get_i64(g, "g.big", &i, &err), 0);
  assert_true(i == INT64_C(1) << 40);
  assert_int_equal(mk_gguf_get_i64(g, "t.u32", &i, &err), 0);
  assert_int_equal(i, 4000000000);

  /* out of range or wrong type: -1 and a message naming the file and the key */
  strcpy(err.msg, "");
  assert_int_equal(mk_gguf_get_u32(g, "g.neg", &u, &err), -1);
  assert_non_null(strstr(err.msg, "g.neg"));
  assert_non_null(strstr(err.msg, LABEL));
  assert_int_equal(mk_gguf_get_u32(g, "g.big", &u, &err), -1);
  assert_non_null(strstr(err.msg, "g.big"));
  assert_int_equal(mk_gguf_get_i64(g, "t.u64", &i, &err), -1);
  assert_non_null(strstr(err.msg, "t.u64"));
  assert_int_equal(mk_gguf_get_u32(g, "t.str", &u, &err), -1);
  assert_non_null(strstr(err.msg, "string"));
  assert_int_equal(mk_gguf_get_u32(g, "t.f32", &u, &err), -1);
  assert_int_equal(mk_gguf_get_i64(g, "t.bool", &i, &err), -1);
  assert_int_equal(u, 4000000000u); /* failures leave *out alone */

  /* floats: FLOAT32, FLOAT64 and integers */
  assert_int_equal(mk_gguf_get_f32(g, "t.f32", &f, &err), 0);
  assert_true(f == 1.5f);
  assert_int_equal(mk_gguf_get_f32(g, "t.f64", &f, &err), 0);
  assert_true(f == 3.14159265f);
  assert_int_equal(mk_gguf_get_f32(g, "t.i16", &f, &err), 0);
  assert_true(f == -30000.0f);
  assert_int_equal(mk_gguf_get_f32(g, "g.huge", &f, &err), -1);
  assert_non_null(strstr(err.msg, "g.huge"));
  assert_int_equal(mk_gguf_get_f32(g, "t.str", &f, &err), -1);

  assert_int_equal(mk_gguf_get_bool(g, "t.bool", &b, &err), 0);
  assert_true(b);
  assert_int_equal(mk_gguf_get_bool(g, "t.bool_false", &b, &err), 0);
  assert_false(b);
  assert_int_equal(mk_gguf_get_bool(g, "t.u8", &b, &err), -1);

  assert_int_equal(mk_gguf_get_str(g, "t.str", &s, &err), 0);
  assert_string_equal(s, "hello \xe2\x9c\x93");
  free(s);
  assert_int_equal(mk_gguf_get_str(g, "t.str_empty", &s, &err), 0);
  assert_string_equal(s, "");
  free(s);
  s = NULL;
  assert_int_equal(mk_gguf_get_str(g, "a.str", &s, &err), -1);
  assert_null(s);

  assert_int_equal(mk_gguf_get_arr(g, "a.str", MK_GGUF_STRING, &arr, &err), 0);
  assert_ptr_equal(arr, &mk_gguf_find(g, "a.str")->value);
  assert_int_equal(arr->v.arr.n, 4);
  arr = NULL;
  assert_int_equal(mk_gguf_get_arr(g, "a.str", MK_GGUF_INT32, &arr, &err), -1);
  assert_null(arr);
  assert_non_null(strstr(err.msg, "a.str"));
  assert_int_equal(mk_gguf_get_arr(g, "t.u32", MK_GGUF_UINT32, &arr, &err), -1);
  assert_int_equal(mk_gguf_get_arr(g, "a.nested", MK_GGUF_ARRAY, &arr, &err), 0);

  assert_string_equal(mk_gguf_vtype_name(MK_GGUF_FLOAT64), "float64");
  assert_string_equal(mk_gguf_vtype_name(MK_GGUF_ARRAY), "array");
  assert_string_equal(mk_gguf_vtype_name((mk_gguf_vtype_t)99), "unknown");
  mk_gguf_close(g);
  free(buf);
  mk_gw_free(w);
}

static void test_tensor_source(void **state) {
  size_t size;
  uint8_t *buf = rich_buf(3, 0, true, &size);
  mk_gguf_t *g = open_ok(buf, size);
  mk_tensor_source_t src = mk_gguf_tensor_source(g);
  assert_int_equal(src.count(src.impl), N_TENSORS);
  for (size_t i = 0; i < N_TENSORS; i++) {
    const mk_tensor_info_t *t = src.at(src.impl, i);
    assert_ptr_equal(t, mk_gguf_tensor_at(g, i));
    assert_ptr_equal(mk_tensor_find(&src, k_tensors[i].name), t);
  }
  assert_null(mk_tensor_find(&src, "blk.0.d"));
  assert_null(mk_tensor_find(&src, ""));
  mk_gguf_close(g);
  free(buf);
}

/* Many tensors and keys: lookups through the hash indexes find each one. */
static void test_many_names(void **state) {
  mk_gguf_writer_t *w = mk_gw_new();
  char name[64];
  const float zero[4] = {0};
  const int64_t ne[1] = {4};
  for (int i = 0; i < 500; i++) {
    snprintf(name, sizeof name, "blk.%d.ffn_up.weight", i);
    mk_gw_tensor(w, name, MK_TYPE_F32, 1, ne, zero, sizeof zero);
    snprintf(name, sizeof name, "key.%d", i);
    mk_gw_kv_u32(w, name, (uint32_t)i * 3);
  }
  size_t size;
  uint8_t *buf = to_buf(w, &size);
  mk_gguf_t *g = open_ok(buf, size);
  assert_int_equal(mk_gguf_n_tensors(g), 500);
  assert_int_equal(mk_gguf_n_kv(g), 500);
  for (int i = 0; i < 500; i++) {
    snprintf(name, sizeof name, "blk.%d.ffn_up.weight", i);
    const mk_tensor_info_t *t = mk_gguf_tensor_find(g, name);
    assert_non_null(t);
    assert_string_equal(t->name, name);
    assert_ptr_equal(t, mk_gguf_tensor_at(g, (size_t)i));
    snprintf(name, sizeof name, "key.%d", i);
    uint32_t v = 0;
    assert_int_equal(mk_gguf_get_u32(g, name, &v, NULL), 0);
    assert_int_equal(v, (uint32_t)i * 3);
  }
  mk_gguf_close(g);
  free(buf);
  mk_gw_free(w);
}

/* No tensors, no key-value pairs: the smallest valid file is its 24-byte header. */
static void test_empty_file(void **state) {
  mk_gguf_writer_t *w = mk_gw_new();
  size_t size;
  uint8_t *buf = to_buf(w, &size);
  assert_int_equal(size, 24);
  mk_gguf_t *g = open_ok(buf, size);
  assert_int_equal(mk_gguf_n_kv(g), 0);
  assert_int_equal(mk_gguf_n_tensors(g), 0);
  assert_null(mk_gguf_find(g, "general.architecture"));
  assert_null(mk_gguf_tensor_find(g, "x"));
  mk_gguf_close(g);
  free(buf);
  mk_gw_free(w);
}

/* ---- truncation and hostile files ------------------------------------------------------------ */

static void test_truncation_every_offset(void **state) {
  size_t size;
  /* no padding after the last tensor, so every proper prefix cuts into something needed */
  uint8_t *full = rich_buf(3, 0, false, &size);
  mk_gguf_close(open_ok(full, size));
  for (size_t len = 0; len < size; len++) {
    uint8_t *buf = malloc(len ? len : 1);
    memcpy(buf, full, len);
    mk_gguf_t *g = (mk_gguf_t *)1;
    mk_error_t err = {{0}};
    int rc = mk_gguf_open_memory(buf, len, LABEL, &g, &err);
    if (rc == 0) fail_msg("prefix of %zu of %zu bytes opened", len, size);
    assert_int_equal(rc, -1);
    assert_null(g);
    if (err.msg[0] == 0 || !strstr(err.msg, LABEL)) fail_msg("prefix %zu: bad message '%s'", len, err.msg);
    free(buf);
  }
  free(full);
}

/* Writes a little-endian u64/u32 at off. */
static void poke64(uint8_t *buf, size_t off, uint64_t v) {
  for (int i = 0; i < 8; i++) buf[off + (size_t)i] = (uint8_t)(v >> (8 * i));
}
static void poke32(uint8_t *buf, size_t off, uint32_t v) {
  for (int i = 0; i < 4; i++) buf[off + (size_t)i] = (uint8_t)(v >> (8 * i));
}

/* A small file: one key "k" (u32 7) and one F32 [8] tensor "w". */
static mk_gguf_writer_t *small_writer(void) {
  mk_gguf_writer_t *w = mk_gw_new();
  mk_gw_kv_u32(w, "k", 7);
  const float data[8] = {1, 2, 3, 4, 5, 6, 7, 8};
  const int64_t ne[1] = {8};
  mk_gw_tensor(w, "w", MK_TYPE_F32, 1, ne, data, sizeof data);
  return w;
}

static void test_bad_header(void **state) {
  mk_gguf_writer_t *w = small_writer();
  size_t size;
  uint8_t *buf = to_buf(w, &size);
  mk_gguf_close(open_ok(buf, size));

  buf[0] = 'X';
  expect_fail(buf, size, "not a GGUF file", (char *)NULL);
  buf[0] = 'G';
  poke32(buf, 4, 1);
  expect_fail(buf, size, "version 1", (char *)NULL);
  poke32(buf, 4, 4);
  expect_fail(buf, size, "version 4", (char *)NULL);
  poke32(buf, 4, 0x03000000u);
  expect_fail(buf, size, "big-endian", (char *)NULL);
  poke32(buf, 4, 3);
  /* offsets 8 (n_tensors) and 16 (n_kv) */
  poke64(buf, 16, UINT64_C(1) << 60);
  expect_fail(buf, size, "key-value count", "cannot fit", (char *)NULL);
  poke64(buf, 16, 1000);
  expect_fail(buf, size, "key-value count", (char *)NULL);
  poke64(buf, 16, 1);
  poke64(buf, 8, UINT64_MAX);
  expect_fail(buf, size, "tensor count", (char *)NULL);
  poke64(buf, 8, 2); /* fits the byte budget, but the second record is padding */
  expect_fail(buf, size, "tensor record 1 of 2", (char *)NULL);
  poke64(buf, 8, 1);
  /* key length at offset 24 */
  poke64(buf, 24, UINT64_C(1) << 62);
  expect_fail(buf, size, "string length", "offset 24", (char *)NULL);
  poke64(buf, 24, 0);
  expect_fail(buf, size, "empty", (char *)NULL);
  poke64(buf, 24, 1);
  buf[32] = 0;
  expect_fail(buf, size, "NUL", (char *)NULL);
  buf[32] = 'k';
  /* value type at 33 */
  poke32(buf, 33, 13);
  expect_fail(buf, size, "key 'k'", "unknown value type 13", (char *)NULL);
  poke32(buf, 33, MK_GGUF_UINT32);
  mk_gguf_close(open_ok(buf, size));
  /* version 1 written by the writer is refused too */
  mk_gw_set_version(w, 1);
  free(buf);
  buf = to_buf(w, &size);
  expect_fail(buf, size, "version 1", (char *)NULL);
  free(buf);
  mk_gw_free(w);
}

static void test_hostile_values(void **state) {
  mk_gw_bytes_t b = {0};
  size_t size;
  uint8_t *buf;
  mk_gguf_writer_t *w;

  /* string value whose length runs past the end */
  w = mk_gw_new();
  mk_gw_put_u64(&b, UINT64_C(1) << 62);
  mk_gw_put_bytes(&b, "abc", 3);
  mk_gw_kv_raw(w, "s.huge", MK_GGUF_STRING, b.p, b.n);
  buf = to_buf(w, &size);
  expect_fail(buf, size, "key 's.huge'", "string length 4611686018427387904", (char *)NULL);
  free(buf);
  mk_gw_free(w);

  /* scalar array, string array and nested array claiming too many elements */
  const mk_gguf_vtype_t kinds[] = {MK_GGUF_UINT32, MK_GGUF_FLOAT64, MK_GGUF_STRING, MK_GGUF_ARRAY};
  for (size_t k = 0; k < 4; k++) {
    const uint64_t counts[] = {UINT64_MAX, UINT64_C(1) << 61, 1000};
    for (size_t c = 0; c < 3; c++) {
      w = mk_gw_new();
      b.n = 0;
      mk_gw_put_arr_header(&b, kinds[k], counts[c]);
      mk_gw_put_u64(&b, 0);
      mk_gw_kv_raw(w, "arr.huge", MK_GGUF_ARRAY, b.p, b.n);
      buf = to_buf(w, &size);
      expect_fail(buf, size, "arr.huge", (char *)NULL);
      free(buf);
      mk_gw_free(w);
    }
  }

  /* unknown array element type */
  w = mk_gw_new();
  b.n = 0;
  mk_gw_put_arr_header(&b, (mk_gguf_vtype_t)77, 1);
  mk_gw_put_u64(&b, 0);
  mk_gw_kv_raw(w, "arr.type", MK_GGUF_ARRAY, b.p, b.n);
  buf = to_buf(w, &size);
  expect_fail(buf, size, "arr.type", "element type 77", (char *)NULL);
  free(buf);
  mk_gw_free(w);

  /* nesting: 8 levels open, 9 do not */
  for (int levels = 8; levels <= 9; levels++) {
    w = mk_gw_new();
    b.n = 0;
    put_deep(&b, levels);
    mk_gw_kv_raw(w, "deep", MK_GGUF_ARRAY, b.p, b.n);
    buf = to_buf(w, &size);
    if (levels == 8) mk_gguf_close(open_ok(buf, size));
    else expect_fail(buf, size, "key 'deep'", "nested deeper than 8", (char *)NULL);
    free(buf);
    mk_gw_free(w);
  }
  /* a very deep nesting (stack safety) */
  w = mk_gw_new();
  b.n = 0;
  put_deep(&b, 100000);
  mk_gw_kv_raw(w, "deeper", MK_GGUF_ARRAY, b.p, b.n);
  buf = to_buf(w, &size);
  expect_fail(buf, size, "nested deeper", (char *)NULL);
  free(buf);
  mk_gw_free(w);

  /* bool values other than 0/1 */
  w = mk_gw_new();
  uint8_t two = 2;
  mk_gw_kv_raw(w, "b", MK_GGUF_BOOL, &two, 1);
  buf = to_buf(w, &size);
  expect_fail(buf, size, "key 'b'", "bool", (char *)NULL);
  free(buf);
  mk_gw_free(w);
  w = mk_gw_new();
  const uint8_t bools[] = {1, 0, 9};
  mk_gw_kv_arr(w, "ba", MK_GGUF_BOOL, bools, 3);
  buf = to_buf(w, &size);
  expect_fail(buf, size, "key 'ba'", "element 2", (char *)NULL);
  free(buf);
  mk_gw_free(w);

  /* duplicate key */
  w = mk_gw_new();
  mk_gw_kv_u32(w, "dup", 1);
  mk_gw_kv_str(w, "dup", "again");
  buf = to_buf(w, &size);
  expect_fail(buf, size, "duplicate key", "dup", (char *)NULL);
  free(buf);
  mk_gw_free(w);

  mk_gw_bytes_free(&b);
}

static void test_bad_alignment(void **state) {
  const uint32_t bad[] = {0, 3, 48, 100};
  for (size_t i = 0; i < 4; i++) {
    mk_gguf_writer_t *w = small_writer();
    mk_gw_kv_u32(w, "general.alignment", bad[i]);
    size_t size;
    uint8_t *buf = to_buf(w, &size);
    expect_fail(buf, size, "general.alignment", "power of two", (char *)NULL);
    free(buf);
    mk_gw_free(w);
  }
  mk_gguf_writer_t *w = small_writer();
  mk_gw_kv_str(w, "general.alignment", "32");
  size_t size;
  uint8_t *buf = to_buf(w, &size);
  expect_fail(buf, size, "general.alignment", "string", (char *)NULL);
  free(buf);
  mk_gw_free(w);
  w = small_writer();
  mk_gw_kv_i32(w, "general.alignment", -32);
  buf = to_buf(w, &size);
  expect_fail(buf, size, "general.alignment", (char *)NULL);
  free(buf);
  mk_gw_free(w);
  w = small_writer();
  mk_gw_kv_u64(w, "general.alignment", UINT64_C(1) << 40);
  buf = to_buf(w, &size);
  expect_fail(buf, size, "general.alignment", (char *)NULL);
  free(buf);
  mk_gw_free(w);
}

static void test_bad_tensor_offsets(void **state) {
  size_t size;
  uint8_t *buf;
  mk_gguf_writer_t *w;

  /* offset past the end, and offset + nbytes past the end */
  const uint64_t offs[] = {UINT64_C(1) << 40, UINT64_MAX - 31, 32};
  for (size_t i = 0; i < 3; i++) {
    w = small_writer();
    mk_gw_set_pad_end(w, false);
    mk_gw_tensor_set_offset(w, 0, offs[i]);
    buf = to_buf(w, &size);
    expect_fail(buf, size, "tensor 'w'", "past end of file", (char *)NULL);
    free(buf);
    mk_gw_free(w);
  }
  /* misaligned */
  w = small_writer();
  mk_gw_tensor_set_offset(w, 0, 4);
  buf = to_buf(w, &size);
  expect_fail(buf, size, "tensor 'w'", "not a multiple of the alignment 32", (char *)NULL);
  free(buf);
  mk_gw_free(w);
  /* aligned under alignment 8, not under 64 */
  w = small_writer();
  mk_gw_set_alignment(w, 64);
  const float more[8] = {0};
  const int64_t ne[1] = {8};
  mk_gw_tensor(w, "w2", MK_TYPE_F32, 1, ne, more, sizeof more);
  mk_gw_tensor_set_offset(w, 1, 32);
  buf = to_buf(w, &size);
  expect_fail(buf, size, "tensor 'w2'", "alignment 64", (char *)NULL);
  free(buf);
  mk_gw_free(w);
  /* data section starting past the end (the file stops after the records) */
  w = small_writer();
  buf = to_buf(w, &size);
  assert_int_equal(size, 128); /* 74 bytes of header and records, padding to 96, 32 of data */
  size_t cut = 88;
  uint8_t *shortbuf = malloc(cut);
  memcpy(shortbuf, buf, cut);
  expect_fail(shortbuf, cut, "tensor 'w'", "past end", (char *)NULL);
  free(shortbuf);
  free(buf);
  mk_gw_free(w);
}

static void test_bad_tensor_records(void **state) {
  const uint8_t data[64] = {0};
  size_t size;
  uint8_t *buf;
  mk_gguf_writer_t *w;
  struct {
    const char *name;
    uint32_t type, n_dims;
    uint64_t ne[4];
    const char *frag;
  } cases[] = {
      {"unk.type", 99, 1, {16}, "type id 99"},
      {"unk.type17", 17, 1, {16}, "type id 17"},
      {"unk.type_huge", 0xffffffffu, 1, {16}, "type id 4294967295"},
      {"zero.dim", MK_TYPE_F32, 2, {4, 0}, "ne[1] = 0"},
      {"neg.dim", MK_TYPE_F32, 1, {UINT64_MAX}, "negative"},
      {"ovf.dims", MK_TYPE_F32, 3, {UINT64_C(1) << 32, UINT64_C(1) << 32, 4}, "overflow"},
      {"big.tensor", MK_TYPE_F32, 2, {UINT64_C(1) << 20, UINT64_C(1) << 20}, "more bytes than"},
      {"zero.ndims", MK_TYPE_F32, 0, {0}, "n_dims 0"},
      {"five.ndims", MK_TYPE_F32, 5, {1, 1, 1, 1}, "n_dims 5"},
      {"q8.partial", MK_TYPE_Q8_0, 1, {33}, "block size"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    w = mk_gw_new();
    mk_gw_kv_u32(w, "k", 1);
    mk_gw_tensor_raw(w, cases[i].name, cases[i].type, cases[i].n_dims, cases[i].ne, data, sizeof data);
    buf = to_buf(w, &size);
    char want[64];
    snprintf(want, sizeof want, "tensor '%s'", cases[i].name);
    expect_fail(buf, size, want, cases[i].frag, (char *)NULL);
    free(buf);
    mk_gw_free(w);
  }
  /* a known type the kernels do not multiply (Q8_1) is still a valid file: sized, listed */
  w = mk_gw_new();
  const uint64_t ne_q8_1[1] = {32};
  mk_gw_tensor_raw(w, "q8_1", MK_TYPE_Q8_1, 1, ne_q8_1, data, 36);
  buf = to_buf(w, &size);
  mk_gguf_t *g = open_ok(buf, size);
  assert_int_equal(mk_gguf_tensor_at(g, 0)->type, MK_TYPE_Q8_1);
  assert_int_equal(mk_gguf_tensor_at(g, 0)->nbytes, 36);
  mk_gguf_close(g);
  free(buf);
  mk_gw_free(w);
  /* duplicate tensor name; empty tensor name */
  const int64_t ne[1] = {16};
  w = mk_gw_new();
  mk_gw_tensor(w, "same", MK_TYPE_F32, 1, ne, data, sizeof data);
  mk_gw_tensor(w, "same", MK_TYPE_F32, 1, ne, data, sizeof data);
  buf = to_buf(w, &size);
  expect_fail(buf, size, "duplicate tensor name", "same", (char *)NULL);
  free(buf);
  mk_gw_free(w);
  w = mk_gw_new();
  const uint64_t une[1] = {16};
  mk_gw_tensor_raw(w, "", MK_TYPE_F32, 1, une, data, sizeof data);
  buf = to_buf(w, &size);
  expect_fail(buf, size, "tensor name", "empty", (char *)NULL);
  free(buf);
  mk_gw_free(w);
}

/* ---- random corruption ----------------------------------------------------------------------- */

static size_t vsize(mk_gguf_vtype_t t) {
  switch (t) {
    case MK_GGUF_UINT8: case MK_GGUF_INT8: case MK_GGUF_BOOL: return 1;
    case MK_GGUF_UINT16: case MK_GGUF_INT16: return 2;
    case MK_GGUF_UINT32: case MK_GGUF_INT32: case MK_GGUF_FLOAT32: return 4;
    case MK_GGUF_UINT64: case MK_GGUF_INT64: case MK_GGUF_FLOAT64: return 8;
    default: return 0;
  }
}

/* Touches every byte a value refers to (so ASan sees any out-of-buffer pointer); returns a sum. */
static uint64_t touch_value(const mk_gguf_value_t *v, const uint8_t *buf, size_t size) {
  uint64_t sum = 0;
  if (v->type == MK_GGUF_STRING) {
    assert_true((const uint8_t *)v->v.str.ptr >= buf && v->v.str.len <= size &&
                (const uint8_t *)v->v.str.ptr + v->v.str.len <= buf + size);
    for (uint64_t i = 0; i < v->v.str.len; i++) sum += (uint8_t)v->v.str.ptr[i];
  } else if (v->type == MK_GGUF_ARRAY) {
    mk_gguf_vtype_t et = v->v.arr.elem_type;
    if (et == MK_GGUF_STRING) {
      for (uint64_t i = 0; i < v->v.arr.n; i++) {
        mk_gguf_value_t s = {.type = MK_GGUF_STRING, .v.str = v->v.arr.strs[i]};
        sum += touch_value(&s, buf, size);
      }
    } else if (et == MK_GGUF_ARRAY) {
      for (uint64_t i = 0; i < v->v.arr.n; i++) sum += touch_value(&v->v.arr.items[i], buf, size);
    } else {
      size_t n = (size_t)v->v.arr.n * vsize(et);
      const uint8_t *p = v->v.arr.raw;
      assert_true(n <= size);
      if (n) assert_true(p >= buf && p + n <= buf + size);
      for (size_t i = 0; i < n; i++) sum += p[i];
    }
  }
  return sum;
}

static void test_fuzz_corruption(void **state) {
  size_t size;
  uint8_t *orig = rich_buf(3, 0, true, &size);
  uint64_t rng = 0x6767756675757a7aull;
  int opened = 0;
  enum { ITERS = 4000 };
  for (int it = 0; it < ITERS; it++) {
    size_t len = size;
    uint64_t r = mk_test_rand_u64(&rng);
    if (r % 8 == 0) len = (size_t)(mk_test_rand_u64(&rng) % size);
    uint8_t *buf = malloc(len ? len : 1);
    memcpy(buf, orig, len);
    int n_mut = 1 + (int)(mk_test_rand_u64(&rng) % 4);
    for (int m = 0; m < n_mut && len > 0; m++) {
      uint64_t kind = mk_test_rand_u64(&rng) % 4;
      size_t pos = (size_t)(mk_test_rand_u64(&rng) % len);
      uint64_t val = mk_test_rand_u64(&rng);
      if (kind == 0) buf[pos] = (uint8_t)val;                      /* random byte */
      else if (kind == 1) buf[pos] ^= (uint8_t)(1u << (val % 8));   /* bit flip */
      else if (kind == 2) buf[pos] = (uint8_t)(buf[pos] + 1 + val % 3); /* small step */
      else {                                                        /* random/extreme u64 */
        static const uint64_t extremes[] = {0, 1, UINT64_MAX, UINT64_C(1) << 63, 0xffffffffu, 32};
        uint64_t x = val % 3 == 0 ? extremes[(val >> 8) % 6] : val;
        for (size_t k = 0; k < 8 && pos + k < len; k++) buf[pos + k] = (uint8_t)(x >> (8 * k));
      }
    }
    mk_gguf_t *g = NULL;
    mk_error_t err = {{0}};
    int rc = mk_gguf_open_memory(buf, len, LABEL, &g, &err);
    if (rc == 0) {
      opened++;
      assert_non_null(g);
      uint64_t sum = 0;
      for (size_t i = 0; i < mk_gguf_n_kv(g); i++) {
        const mk_gguf_kv_t *kv = mk_gguf_kv_at(g, i);
        assert_true(kv->key[0] != 0);
        assert_ptr_equal(mk_gguf_find(g, kv->key), kv);
        sum += touch_value(&kv->value, buf, len);
        uint32_t u;
        float f;
        mk_error_t e2;
        (void)mk_gguf_get_u32(g, kv->key, &u, &e2);
        (void)mk_gguf_get_f32(g, kv->key, &f, &e2);
      }
      for (size_t i = 0; i < mk_gguf_n_tensors(g); i++) {
        const mk_tensor_info_t *t = mk_gguf_tensor_at(g, i);
        assert_true(t->n_dims >= 1 && t->n_dims <= MK_MAX_DIMS);
        int64_t ne = 1;
        for (int d = 0; d < MK_MAX_DIMS; d++) {
          assert_true(t->ne[d] >= 1);
          ne *= t->ne[d];
        }
        assert_true(ne >= 1);
        assert_int_equal(t->nbytes, mk_type_row_bytes(t->type, t->ne[0]) * (size_t)(ne / t->ne[0]));
        const uint8_t *p = t->data;
        assert_true(t->nbytes <= len && p >= buf && p + t->nbytes <= buf + len);
        assert_int_equal((size_t)(p - buf) % mk_gguf_alignment(g), 0);
        assert_ptr_equal(mk_gguf_tensor_find(g, t->name), t);
        for (size_t j = 0; j < t->nbytes; j++) sum += p[j];
      }
      (void)sum;
      mk_gguf_close(g);
    } else {
      assert_int_equal(rc, -1);
      assert_null(g);
      if (err.msg[0] == 0) fail_msg("iteration %d: failure with an empty message", it);
    }
    free(buf);
  }
  /* some mutations land in tensor data or string bytes and leave a valid file: both paths ran */
  print_message("fuzz: %d of %d corrupted files opened\n", opened, ITERS);
  assert_true(opened > 0 && opened < ITERS);
  free(orig);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_roundtrip_v3),
      cmocka_unit_test(test_roundtrip_v2),
      cmocka_unit_test(test_alignment_64),
      cmocka_unit_test(test_alignment_1),
      cmocka_unit_test(test_alignment_4096_v2),
      cmocka_unit_test(test_open_file),
      cmocka_unit_test(test_getters),
      cmocka_unit_test(test_tensor_source),
      cmocka_unit_test(test_many_names),
      cmocka_unit_test(test_empty_file),
      cmocka_unit_test(test_truncation_every_offset),
      cmocka_unit_test(test_bad_header),
      cmocka_unit_test(test_hostile_values),
      cmocka_unit_test(test_bad_alignment),
      cmocka_unit_test(test_bad_tensor_offsets),
      cmocka_unit_test(test_bad_tensor_records),
      cmocka_unit_test(test_fuzz_corruption),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
