/* Shared helpers for the tests. */
#ifndef MK_TESTUTIL_H
#define MK_TESTUTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "src/tokenizer.h"

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
/* Decodes ids by streaming one token at a time (mk_tok_stream_push, then flush): malloc'd,
 * NUL-terminated, length in *out_len. NULL if a push or the flush fails, or if a push returned
 * bytes that are not whole, valid UTF-8 characters (mk_test_utf8_valid). */
char *mk_test_stream_decode(const mk_tokenizer_t *t, const int32_t *ids, size_t n, size_t *out_len);

/* Runs $MORPHKV_BINARY with args (NULL-terminated), stderr to log_path, stdout to /dev/null, and
 * OMP_WAIT_POLICY=passive; returns its exit code (128 + signal), or -1 if it could not run. */
int mk_test_run_binary(const char *const *args, const char *log_path);

#endif
