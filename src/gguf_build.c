/* GGUF metadata block builder (see src/gguf_build.h). Little-endian, byte by byte. */
#include "src/gguf_build.h"

#include <stdlib.h>
#include <string.h>

#include "src/gguf.h"

static void put(mk_gb_t *b, const void *src, size_t n) {
  if (b->oom) return;
  if (b->n + n > b->cap) {
    size_t cap = (b->n + n) * 2 + 256;
    uint8_t *q = realloc(b->p, cap);
    if (!q) {
      b->oom = true;
      return;
    }
    b->p = q;
    b->cap = cap;
  }
  memcpy(b->p + b->n, src, n);
  b->n += n;
}

static void put_le(mk_gb_t *b, uint64_t v, int bytes) {
  uint8_t x[8];
  for (int i = 0; i < bytes; i++) x[i] = (uint8_t)(v >> (8 * i));
  put(b, x, (size_t)bytes);
}

static void put_str(mk_gb_t *b, const char *s) {
  size_t n = strlen(s);
  put_le(b, n, 8);
  put(b, s, n);
}

static void key(mk_gb_t *b, const char *k, mk_gguf_vtype_t t) {
  put_str(b, k);
  put_le(b, (uint32_t)t, 4);
  b->n_kv++;
}

static uint32_t f32_bits(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  return u;
}

void mk_gb_u32(mk_gb_t *b, const char *k, uint32_t v) { key(b, k, MK_GGUF_UINT32), put_le(b, v, 4); }
void mk_gb_i32(mk_gb_t *b, const char *k, int32_t v) { key(b, k, MK_GGUF_INT32), put_le(b, (uint32_t)v, 4); }
void mk_gb_f32(mk_gb_t *b, const char *k, float v) { key(b, k, MK_GGUF_FLOAT32), put_le(b, f32_bits(v), 4); }
void mk_gb_bool(mk_gb_t *b, const char *k, bool v) { key(b, k, MK_GGUF_BOOL), put_le(b, v ? 1 : 0, 1); }
void mk_gb_str(mk_gb_t *b, const char *k, const char *v) { key(b, k, MK_GGUF_STRING), put_str(b, v); }

void mk_gb_arr_str(mk_gb_t *b, const char *k, const char *const *v, uint64_t n) {
  key(b, k, MK_GGUF_ARRAY);
  put_le(b, MK_GGUF_STRING, 4);
  put_le(b, n, 8);
  for (uint64_t i = 0; i < n; i++) put_str(b, v[i]);
}

void mk_gb_arr_i32(mk_gb_t *b, const char *k, const int32_t *v, uint64_t n) {
  key(b, k, MK_GGUF_ARRAY);
  put_le(b, MK_GGUF_INT32, 4);
  put_le(b, n, 8);
  for (uint64_t i = 0; i < n; i++) put_le(b, (uint32_t)v[i], 4);
}

void mk_gb_arr_f32(mk_gb_t *b, const char *k, const float *v, uint64_t n) {
  key(b, k, MK_GGUF_ARRAY);
  put_le(b, MK_GGUF_FLOAT32, 4);
  put_le(b, n, 8);
  for (uint64_t i = 0; i < n; i++) put_le(b, f32_bits(v[i]), 4);
}

uint8_t *mk_gb_finish(mk_gb_t *b, size_t *size) {
  mk_gb_t h = {0};
  put(&h, "GGUF", 4);
  put_le(&h, 3, 4);
  put_le(&h, 0, 8);
  put_le(&h, b->n_kv, 8);
  put(&h, b->p, b->n);
  mk_gb_free(b);
  if (h.oom) {
    mk_gb_free(&h);
    return NULL;
  }
  *size = h.n;
  return h.p;
}

void mk_gb_free(mk_gb_t *b) {
  free(b->p);
  memset(b, 0, sizeof *b);
}
