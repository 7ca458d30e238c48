/* The request message: pack/unpack round trips, and refusals of corrupt, foreign-version and
 * out-of-range messages. Wrong-version and bad-enum messages are built with the protobuf-c API
 * directly (as another writer would), not through mk_request_pack, which refuses to make them. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "parallel/request.h"
#include "tests/testutil/testutil.h"
#include "parallel/request.pb-c.h"

static char *dup_str(const char *s) {
  char *d = malloc(strlen(s) + 1);
  strcpy(d, s);
  return d;
}

/* A request with every field away from its default. */
static void make_request(mk_request_t *r) {
  mk_request_init(r);
  r->kind = MK_REQUEST_GENERATE;
  r->id = 0x123456789abcULL;
  r->n_prompt = 300;
  r->prompt = malloc(r->n_prompt * sizeof *r->prompt);
  for (size_t i = 0; i < r->n_prompt; i++) r->prompt[i] = (int32_t)((i * 7919u) % 49152u);
  r->sampling.temperature = 0.7f;
  r->sampling.top_k = 40;
  r->sampling.top_p = 0.95f;
  r->sampling.min_p = 0.05f;
  r->sampling.repeat_penalty = 1.1f;
  r->sampling.repeat_last_n = 128;
  r->sampling.seed = 0xfeedfacecafebeefULL;
  r->max_new_tokens = 12000;
  r->cache.policy = MK_KV_MORPHKV;
  r->cache.window = 16;
  r->cache.capacity = 512;
  r->cache.fusion = MK_KV_FUSION_MAX;
  r->cache.gqa = MK_KV_GQA_PROB_MAX;
  r->cache.sinks = 2;
  r->cache.evict_after = 1.25f;
  r->cache.dtype = MK_KV_F16;
  r->cache.h2o_mode = MK_KV_H2O_PER_HEAD;
  r->cache.snapkv_pool = 7;
  r->cache.snapkv_maxpool = true;
  r->n_stop = 2;
  r->stop = malloc(2 * sizeof *r->stop);
  r->stop[0] = dup_str("\n\nUser:");
  r->stop[1] = dup_str("</s> \xc3\xa9"); /* UTF-8 */
}

static void assert_requests_equal(const mk_request_t *a, const mk_request_t *b) {
  assert_int_equal(a->kind, b->kind);
  assert_true(a->id == b->id);
  assert_int_equal(a->n_prompt, b->n_prompt);
  if (a->n_prompt) assert_memory_equal(a->prompt, b->prompt, a->n_prompt * sizeof *a->prompt);
  assert_memory_equal(&a->sampling, &b->sampling, sizeof a->sampling);
  assert_int_equal(a->max_new_tokens, b->max_new_tokens);
  assert_int_equal(a->cache.policy, b->cache.policy);
  assert_int_equal(a->cache.window, b->cache.window);
  assert_int_equal(a->cache.capacity, b->cache.capacity);
  assert_int_equal(a->cache.fusion, b->cache.fusion);
  assert_int_equal(a->cache.gqa, b->cache.gqa);
  assert_int_equal(a->cache.sinks, b->cache.sinks);
  assert_true(a->cache.evict_after == b->cache.evict_after);
  assert_int_equal(a->cache.dtype, b->cache.dtype);
  assert_int_equal(a->cache.h2o_mode, b->cache.h2o_mode);
  assert_int_equal(a->cache.snapkv_pool, b->cache.snapkv_pool);
  assert_int_equal(a->cache.snapkv_maxpool, b->cache.snapkv_maxpool);
  assert_int_equal(a->n_stop, b->n_stop);
  for (size_t i = 0; i < a->n_stop; i++) assert_string_equal(a->stop[i], b->stop[i]);
}

static void test_round_trip(void **state) {
  (void)state;
  mk_request_t r, got;
  mk_error_t err = {{0}};
  make_request(&r);
  uint8_t *buf;
  size_t len;
  assert_int_equal(mk_request_pack(&r, 49152, &buf, &len, &err), 0);
  assert_true(len > 300); /* the prompt alone packs to more than one byte per token */
  assert_int_equal(mk_request_unpack(buf, len, 49152, &got, &err), 0);
  assert_requests_equal(&r, &got);
  mk_request_free(&got);

  /* every policy, including the default full cache, survives the trip */
  for (int p = 0; p < MK_KV_POLICY_COUNT; p++) {
    free(buf);
    r.cache.policy = (mk_kv_policy_kind_t)p;
    assert_int_equal(mk_request_pack(&r, 0, &buf, &len, &err), 0);
    assert_int_equal(mk_request_unpack(buf, len, 0, &got, &err), 0);
    assert_int_equal(got.cache.policy, p);
    mk_request_free(&got);
  }
  free(buf);
  mk_request_free(&r);
  assert_null(r.prompt); /* free re-inits */
  assert_int_equal(r.n_stop, 0);
}

static void test_shutdown_round_trip(void **state) {
  (void)state;
  mk_request_t r, got;
  mk_error_t err;
  mk_request_init(&r);
  r.kind = MK_REQUEST_SHUTDOWN;
  r.id = 7;
  uint8_t *buf;
  size_t len;
  assert_int_equal(mk_request_pack(&r, 100, &buf, &len, &err), 0);
  assert_int_equal(mk_request_unpack(buf, len, 100, &got, &err), 0);
  assert_int_equal(got.kind, MK_REQUEST_SHUTDOWN);
  assert_int_equal(got.id, 7);
  assert_int_equal(got.n_prompt, 0);
  assert_null(got.prompt);
  free(buf);
  mk_request_free(&got);
}

static void expect_unpack_error(const uint8_t *buf, size_t len, int n_vocab, const char *needle) {
  mk_request_t got;
  mk_error_t err = {{0}};
  assert_int_equal(mk_request_unpack(buf, len, n_vocab, &got, &err), -1);
  if (!strstr(err.msg, needle)) {
    print_error("unpack error \"%s\" lacks \"%s\"\n", err.msg, needle);
    fail();
  }
  assert_null(got.prompt); /* left initialised and empty */
  assert_null(got.stop);
}

static void test_corrupt_buffers(void **state) {
  (void)state;
  mk_request_t r;
  mk_error_t err;
  make_request(&r);
  uint8_t *buf;
  size_t len;
  assert_int_equal(mk_request_pack(&r, 49152, &buf, &len, &err), 0);

  /* cut inside the last stop string */
  expect_unpack_error(buf, len - 1, 49152, "do not unpack");
  /* cut inside the packed prompt (field 4 starts right after version, kind, id) */
  expect_unpack_error(buf, 40, 49152, "do not unpack");
  /* garbage */
  uint8_t junk[64];
  memset(junk, 0xff, sizeof junk);
  expect_unpack_error(junk, sizeof junk, 49152, "do not unpack");
  /* an empty buffer is a valid protobuf with every field zero: refused for its version */
  expect_unpack_error(buf, 0, 49152, "version 0");
  /* a prompt token outside the receiver's vocabulary */
  expect_unpack_error(buf, len, 1000, "outside 0..999");

  /* Flip every byte in turn: unpack must either refuse or return a request that validates
   * (never crash or hand back out-of-range fields; run under MORPHKV_SANITIZE for memory). */
  uint8_t *copy = malloc(len);
  int refused = 0;
  for (size_t i = 0; i < len; i++) {
    memcpy(copy, buf, len);
    copy[i] ^= 0xa5;
    mk_request_t got;
    if (mk_request_unpack(copy, len, 49152, &got, &err) == 0) {
      assert_int_equal(mk_request_validate(&got, 49152, &err), 0);
      mk_request_free(&got);
    } else {
      refused++;
    }
  }
  assert_true(refused > 0);
  free(copy);
  free(buf);
  mk_request_free(&r);
}

/* Messages another writer could send: packed with the protobuf-c API directly. */
static size_t pack_raw(const Morphkv__Request *m, uint8_t **buf) {
  size_t n = morphkv__request__get_packed_size(m);
  *buf = malloc(n ? n : 1);
  assert_int_equal(morphkv__request__pack(m, *buf), n);
  return n;
}

static void test_foreign_messages(void **state) {
  (void)state;
  Morphkv__Sampling s = MORPHKV__SAMPLING__INIT;
  s.top_p = 1.0f;
  s.repeat_penalty = 1.0f;
  Morphkv__CacheSettings cs = MORPHKV__CACHE_SETTINGS__INIT;
  cs.evict_after = 1.0f;
  cs.snapkv_pool = 5;
  Morphkv__Request m = MORPHKV__REQUEST__INIT;
  m.version = MK_REQUEST_VERSION;
  m.kind = MORPHKV__REQUEST_KIND__REQUEST_KIND_GENERATE;
  m.sampling = &s;
  m.cache = &cs;
  uint8_t *buf;
  size_t len;

  /* baseline: accepted */
  len = pack_raw(&m, &buf);
  mk_request_t got;
  mk_error_t err;
  assert_int_equal(mk_request_unpack(buf, len, 10, &got, &err), 0);
  mk_request_free(&got);
  free(buf);

  m.version = MK_REQUEST_VERSION + 1;
  len = pack_raw(&m, &buf);
  expect_unpack_error(buf, len, 10, "version 2, this build reads version 1");
  free(buf);
  m.version = MK_REQUEST_VERSION;

  m.kind = MORPHKV__REQUEST_KIND__REQUEST_KIND_UNSPECIFIED;
  len = pack_raw(&m, &buf);
  expect_unpack_error(buf, len, 10, "unknown or missing kind 0");
  free(buf);
  m.kind = MORPHKV__REQUEST_KIND__REQUEST_KIND_GENERATE;

  cs.policy = (Morphkv__KvPolicy)99;
  len = pack_raw(&m, &buf);
  expect_unpack_error(buf, len, 10, "unknown cache policy 99");
  free(buf);
  cs.policy = MORPHKV__KV_POLICY__KV_POLICY_MORPHKV;

  m.cache = NULL;
  len = pack_raw(&m, &buf);
  expect_unpack_error(buf, len, 10, "without cache settings");
  free(buf);
  m.cache = &cs;

  cs.evict_after = 0.5f;
  len = pack_raw(&m, &buf);
  expect_unpack_error(buf, len, 10, "evict_after 0.5");
  free(buf);
  cs.evict_after = 1.0f;

  s.temperature = NAN;
  len = pack_raw(&m, &buf);
  expect_unpack_error(buf, len, 10, "temperature");
  free(buf);
  s.temperature = 0;

  int32_t bad_prompt[3] = {1, -5, 2};
  m.n_prompt = 3;
  m.prompt = bad_prompt;
  len = pack_raw(&m, &buf);
  expect_unpack_error(buf, len, 10, "prompt token 1 has id -5");
  free(buf);
  m.n_prompt = 0;

  char empty[] = "";
  char *stops[1] = {empty};
  m.n_stop = 1;
  m.stop = stops;
  len = pack_raw(&m, &buf);
  expect_unpack_error(buf, len, 10, "stop string 0 has 0 bytes");
  free(buf);
}

static void test_pack_refuses_invalid(void **state) {
  (void)state;
  mk_request_t r;
  mk_error_t err = {{0}};
  uint8_t *buf = (uint8_t *)&r;
  size_t len = 1;
  mk_request_init(&r);
  r.sampling.top_p = 0.0f;
  assert_int_equal(mk_request_pack(&r, 0, &buf, &len, &err), -1);
  assert_non_null(strstr(err.msg, "top_p 0"));
  assert_null(buf);
  assert_int_equal(len, 0);
  mk_request_init(&r);
  r.cache.snapkv_pool = 4;
  assert_int_equal(mk_request_pack(&r, 0, &buf, &len, &err), -1);
  assert_non_null(strstr(err.msg, "snapkv_pool 4"));
  mk_request_init(&r);
  r.kind = (mk_request_kind_t)0;
  assert_int_equal(mk_request_pack(&r, 0, &buf, &len, &err), -1);
  assert_non_null(strstr(err.msg, "unknown kind 0"));
  mk_request_init(&r);
  r.max_new_tokens = -1;
  assert_int_equal(mk_request_pack(&r, 0, &buf, &len, &err), -1);
  assert_non_null(strstr(err.msg, "max_new_tokens -1"));
}

/* Found by tests/fuzz/fuzz_request: a -0.0 temperature or min_p (accepted: >= 0) went out as
 * "no field" and came back +0.0, so sender and receivers held different bits. Now the receiver
 * reads +0.0 and the repacked bytes are the same (mk_request_bcast makes rank 0 run from the
 * unpacked copy as well). */
static void test_negative_zero(void **state) {
  (void)state;
  mk_request_t r, got, again;
  make_request(&r);
  r.sampling.temperature = -0.0f;
  r.sampling.min_p = -0.0f;
  mk_error_t err = {{0}};
  uint8_t *b1 = NULL, *b2 = NULL;
  size_t n1 = 0, n2 = 0;
  assert_int_equal(mk_request_pack(&r, 49152, &b1, &n1, &err), 0);
  assert_int_equal(mk_request_unpack(b1, n1, 49152, &got, &err), 0);
  assert_false(signbit(got.sampling.temperature));
  assert_false(signbit(got.sampling.min_p));
  assert_int_equal(mk_request_pack(&got, 49152, &b2, &n2, &err), 0);
  assert_int_equal(mk_request_unpack(b2, n2, 49152, &again, &err), 0);
  assert_memory_equal(&got.sampling, &again.sampling, sizeof got.sampling);
  /* the fuzzer's input: temperature sent explicitly as -0.0 (fixed32 0x80000000) */
  size_t len = 0;
  char *crash = mk_test_read_file(mk_test_source_path("tests/fuzz/regressions/request/negative_zero_temperature"), &len);
  assert_non_null(crash);
  mk_request_t f;
  assert_int_equal(mk_request_unpack((const uint8_t *)crash, len, 49152, &f, &err), 0);
  assert_false(signbit(f.sampling.temperature));
  free(crash);
  free(b1);
  free(b2);
  mk_request_free(&f);
  mk_request_free(&r);
  mk_request_free(&got);
  mk_request_free(&again);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_round_trip),           cmocka_unit_test(test_shutdown_round_trip),
      cmocka_unit_test(test_corrupt_buffers),      cmocka_unit_test(test_foreign_messages),
      cmocka_unit_test(test_pack_refuses_invalid), cmocka_unit_test(test_negative_zero),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
