/* Shared helpers for the tests. */
#ifndef MK_TESTUTIL_H
#define MK_TESTUTIL_H

#include <stddef.h>
#include <stdint.h>

/* Path of the demo model (env MORPHKV_TEST_MODEL); the test fails if it is missing. */
const char *mk_test_model_path(void);
/* $MORPHKV_SOURCE_DIR/rel, in a static buffer. */
const char *mk_test_source_path(const char *rel);
/* Reads a whole file (malloc'd, NUL-terminated); NULL on failure. */
char *mk_test_read_file(const char *path, size_t *len);
/* Deterministic PRNG (splitmix64) for test data. */
uint64_t mk_test_rand_u64(uint64_t *state);
float mk_test_rand_f32(uint64_t *state); /* uniform in [-1, 1) */

/* 1 if s[0..n) is well-formed UTF-8 (RFC 3629: no overlong forms, no surrogates, <= U+10FFFF). */
int mk_test_utf8_valid(const unsigned char *s, size_t n);

#endif
