#define _POSIX_C_SOURCE 200809L
#include "tests/testutil/testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

const char *mk_test_model_path(void) {
  const char *p = getenv("MORPHKV_TEST_MODEL");
  struct stat st;
  if (!p || stat(p, &st) != 0) {
    fprintf(stderr, "demo model not found (MORPHKV_TEST_MODEL=%s); run launch/fetch-model.sh\n",
            p ? p : "(unset)");
    return NULL;
  }
  return p;
}

const char *mk_test_source_path(const char *rel) {
  static char buf[4096];
  const char *root = getenv("MORPHKV_SOURCE_DIR");
  snprintf(buf, sizeof buf, "%s/%s", root ? root : ".", rel);
  return buf;
}

char *mk_test_read_file(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  if (fseek(f, 0, SEEK_END) != 0) { fclose(f); return NULL; }
  long n = ftell(f);
  if (n < 0) { fclose(f); return NULL; }
  rewind(f);
  char *buf = malloc((size_t)n + 1);
  if (!buf) { fclose(f); return NULL; }
  if (fread(buf, 1, (size_t)n, f) != (size_t)n) { free(buf); fclose(f); return NULL; }
  fclose(f);
  buf[n] = 0;
  if (len) *len = (size_t)n;
  return buf;
}

uint64_t mk_test_rand_u64(uint64_t *s) {
  uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

float mk_test_rand_f32(uint64_t *s) {
  return (float)((double)(mk_test_rand_u64(s) >> 11) * (1.0 / 9007199254740992.0) * 2.0 - 1.0);
}

int mk_test_utf8_valid(const unsigned char *s, size_t n) {
  size_t i = 0;
  while (i < n) {
    unsigned c = s[i];
    int k = c < 0x80 ? 0 : (c >> 5) == 6 ? 1 : (c >> 4) == 14 ? 2 : (c >> 3) == 30 ? 3 : -1;
    if (k < 0 || n - i <= (size_t)k) return 0;
    uint32_t cp = k == 0 ? c : k == 1 ? (c & 0x1f) : k == 2 ? (c & 0x0f) : (c & 0x07);
    for (int j = 1; j <= k; j++) {
      if ((s[i + (size_t)j] & 0xc0) != 0x80) return 0;
      cp = cp << 6 | (s[i + (size_t)j] & 0x3f);
    }
    if ((k == 1 && cp < 0x80) || (k == 2 && cp < 0x800) || (k == 3 && cp < 0x10000) ||
        cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
      return 0;
    i += (size_t)k + 1;
  }
  return 1;
}

char *mk_test_stream_decode(const mk_tokenizer_t *t, const int32_t *ids, size_t n, size_t *out_len) {
  size_t cap = 64 + n * 64, o = 0;
  char *out = malloc(cap);
  if (!out) return NULL;
  mk_tok_stream_t s = {{0}, 0};
  char buf[256];
  for (size_t i = 0; i <= n; i++) {
    int r = i < n ? mk_tok_stream_push(t, &s, ids[i], buf, (int)sizeof buf)
                  : mk_tok_stream_flush(&s, buf, (int)sizeof buf);
    if (r < 0 || o + (size_t)r >= cap || !mk_test_utf8_valid((const unsigned char *)buf, (size_t)r)) {
      free(out);
      return NULL;
    }
    memcpy(out + o, buf, (size_t)r);
    o += (size_t)r;
  }
  out[o] = 0;
  *out_len = o;
  return out;
}

int mk_test_run_binary(const char *const *args, const char *log_path) {
  const char *bin = getenv("MORPHKV_BINARY");
  if (!bin) {
    fprintf(stderr, "MORPHKV_BINARY is not set (run through ctest)\n");
    return -1;
  }
  const char *argv[64];
  int n = 0;
  argv[n++] = bin;
  for (int i = 0; args[i] && n < 63; i++) argv[n++] = args[i];
  argv[n] = NULL;
  pid_t pid = fork();
  if (pid < 0) return -1;
  if (pid == 0) {
    FILE *lf = freopen(log_path, "w", stderr);
    (void)lf;
    if (!freopen("/dev/null", "w", stdout)) _exit(126);
    setenv("OMP_WAIT_POLICY", "passive", 1); /* read by the child's OpenMP runtime at start */
    execv(argv[0], (char *const *)argv);
    _exit(127);
  }
  int status = 0;
  if (waitpid(pid, &status, 0) != pid) return -1;
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}
