/* GGUF writer for tests: metadata is serialised into a byte buffer as it is added; tensors are
 * kept as records (data copied or borrowed) and laid out at serialisation time.
 *
 * Layout written (v2/v3, little-endian): header | key-value pairs in the order added (plus
 * general.alignment at the end when the alignment is not 32 and the caller did not add that key)
 * | tensor records | zero padding to the alignment | each tensor's data at an aligned offset
 * relative to the data start, in the order added, zero padding between (and, unless switched
 * off, after the last). One serialiser walks this layout for three sinks: counting bytes, filling
 * a buffer, writing a file, so the three cannot disagree. */
#include "tests/testutil/gguf_writer.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct gw_tensor {
  char *name;
  uint32_t type;
  uint32_t n_dims;
  uint64_t ne[MK_MAX_DIMS];
  const void *data; /* owned or borrowed */
  void *owned;
  size_t nbytes;
  bool offset_set;
  uint64_t offset; /* override */
} gw_tensor_t;

struct mk_gguf_writer {
  uint32_t version;
  uint32_t alignment;
  bool pad_end;
  bool has_alignment_key; /* the caller wrote general.alignment itself */
  mk_gw_bytes_t kv;       /* serialised key-value pairs */
  uint64_t n_kv;
  gw_tensor_t *tensors;
  size_t n_tensors, cap_tensors;
};

static void gw_die(const char *what) {
  fprintf(stderr, "gguf_writer: %s\n", what);
  abort();
}

static void *gw_xmalloc(size_t n) {
  void *p = malloc(n ? n : 1);
  if (!p) gw_die("out of memory");
  return p;
}

static char *gw_strdup(const char *s) {
  size_t n = strlen(s) + 1;
  char *p = gw_xmalloc(n);
  memcpy(p, s, n);
  return p;
}

/* ---- byte builder ---------------------------------------------------------------------------- */

void mk_gw_bytes_free(mk_gw_bytes_t *b) {
  free(b->p);
  b->p = NULL;
  b->n = b->cap = 0;
}

void mk_gw_put_bytes(mk_gw_bytes_t *b, const void *p, size_t n) {
  if (n == 0) return;
  if (n > SIZE_MAX - b->n) gw_die("byte buffer overflow");
  if (b->n + n > b->cap) {
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->n + n) {
      if (cap > SIZE_MAX / 2) gw_die("byte buffer overflow");
      cap *= 2;
    }
    uint8_t *np = realloc(b->p, cap);
    if (!np) gw_die("out of memory");
    b->p = np;
    b->cap = cap;
  }
  memcpy(b->p + b->n, p, n);
  b->n += n;
}

static void put_le(mk_gw_bytes_t *b, uint64_t v, size_t n) {
  uint8_t tmp[8];
  for (size_t i = 0; i < n; i++) tmp[i] = (uint8_t)(v >> (8 * i));
  mk_gw_put_bytes(b, tmp, n);
}

void mk_gw_put_u8(mk_gw_bytes_t *b, uint8_t v) { put_le(b, v, 1); }
void mk_gw_put_u16(mk_gw_bytes_t *b, uint16_t v) { put_le(b, v, 2); }
void mk_gw_put_u32(mk_gw_bytes_t *b, uint32_t v) { put_le(b, v, 4); }
void mk_gw_put_u64(mk_gw_bytes_t *b, uint64_t v) { put_le(b, v, 8); }

void mk_gw_put_f32(mk_gw_bytes_t *b, float v) {
  uint32_t u;
  memcpy(&u, &v, sizeof u);
  put_le(b, u, 4);
}

void mk_gw_put_f64(mk_gw_bytes_t *b, double v) {
  uint64_t u;
  memcpy(&u, &v, sizeof u);
  put_le(b, u, 8);
}

void mk_gw_put_str(mk_gw_bytes_t *b, const char *s) {
  size_t n = strlen(s);
  mk_gw_put_u64(b, n);
  mk_gw_put_bytes(b, s, n);
}

void mk_gw_put_arr_header(mk_gw_bytes_t *b, mk_gguf_vtype_t elem_type, uint64_t n) {
  mk_gw_put_u32(b, (uint32_t)elem_type);
  mk_gw_put_u64(b, n);
}

/* ---- writer ---------------------------------------------------------------------------------- */

mk_gguf_writer_t *mk_gw_new(void) {
  mk_gguf_writer_t *w = calloc(1, sizeof *w);
  if (!w) gw_die("out of memory");
  w->version = 3;
  w->alignment = 32;
  w->pad_end = true;
  return w;
}

void mk_gw_free(mk_gguf_writer_t *w) {
  if (!w) return;
  for (size_t i = 0; i < w->n_tensors; i++) {
    free(w->tensors[i].name);
    free(w->tensors[i].owned);
  }
  free(w->tensors);
  mk_gw_bytes_free(&w->kv);
  free(w);
}

void mk_gw_set_version(mk_gguf_writer_t *w, uint32_t version) { w->version = version; }

void mk_gw_set_alignment(mk_gguf_writer_t *w, uint32_t align) {
  if (align == 0 || (align & (align - 1)) != 0) gw_die("alignment must be a nonzero power of two");
  w->alignment = align;
}

void mk_gw_set_pad_end(mk_gguf_writer_t *w, bool pad) { w->pad_end = pad; }

static void kv_begin(mk_gguf_writer_t *w, const char *key, mk_gguf_vtype_t type) {
  if (strcmp(key, "general.alignment") == 0) w->has_alignment_key = true;
  mk_gw_put_str(&w->kv, key);
  mk_gw_put_u32(&w->kv, (uint32_t)type);
  w->n_kv++;
}

void mk_gw_kv_u32(mk_gguf_writer_t *w, const char *key, uint32_t v) {
  kv_begin(w, key, MK_GGUF_UINT32);
  mk_gw_put_u32(&w->kv, v);
}

void mk_gw_kv_i32(mk_gguf_writer_t *w, const char *key, int32_t v) {
  kv_begin(w, key, MK_GGUF_INT32);
  mk_gw_put_u32(&w->kv, (uint32_t)v);
}

void mk_gw_kv_u64(mk_gguf_writer_t *w, const char *key, uint64_t v) {
  kv_begin(w, key, MK_GGUF_UINT64);
  mk_gw_put_u64(&w->kv, v);
}

void mk_gw_kv_i64(mk_gguf_writer_t *w, const char *key, int64_t v) {
  kv_begin(w, key, MK_GGUF_INT64);
  mk_gw_put_u64(&w->kv, (uint64_t)v);
}

void mk_gw_kv_f32(mk_gguf_writer_t *w, const char *key, float v) {
  kv_begin(w, key, MK_GGUF_FLOAT32);
  mk_gw_put_f32(&w->kv, v);
}

void mk_gw_kv_f64(mk_gguf_writer_t *w, const char *key, double v) {
  kv_begin(w, key, MK_GGUF_FLOAT64);
  mk_gw_put_f64(&w->kv, v);
}

void mk_gw_kv_bool(mk_gguf_writer_t *w, const char *key, bool v) {
  kv_begin(w, key, MK_GGUF_BOOL);
  mk_gw_put_u8(&w->kv, v ? 1 : 0);
}

void mk_gw_kv_str(mk_gguf_writer_t *w, const char *key, const char *v) {
  kv_begin(w, key, MK_GGUF_STRING);
  mk_gw_put_str(&w->kv, v);
}

void mk_gw_kv_scalar(mk_gguf_writer_t *w, const char *key, mk_gguf_vtype_t type, const void *value) {
  switch (type) {
    case MK_GGUF_UINT8: case MK_GGUF_INT8: {
      uint8_t v;
      memcpy(&v, value, 1);
      kv_begin(w, key, type);
      mk_gw_put_u8(&w->kv, v);
      return;
    }
    case MK_GGUF_UINT16: case MK_GGUF_INT16: {
      uint16_t v;
      memcpy(&v, value, 2);
      kv_begin(w, key, type);
      mk_gw_put_u16(&w->kv, v);
      return;
    }
    case MK_GGUF_UINT32: case MK_GGUF_INT32: case MK_GGUF_FLOAT32: {
      uint32_t v;
      memcpy(&v, value, 4);
      kv_begin(w, key, type);
      mk_gw_put_u32(&w->kv, v);
      return;
    }
    case MK_GGUF_UINT64: case MK_GGUF_INT64: case MK_GGUF_FLOAT64: {
      uint64_t v;
      memcpy(&v, value, 8);
      kv_begin(w, key, type);
      mk_gw_put_u64(&w->kv, v);
      return;
    }
    case MK_GGUF_BOOL: {
      bool v;
      memcpy(&v, value, sizeof v);
      mk_gw_kv_bool(w, key, v);
      return;
    }
    case MK_GGUF_STRING: case MK_GGUF_ARRAY: break;
  }
  gw_die("mk_gw_kv_scalar: not a scalar type");
}

static size_t scalar_size(mk_gguf_vtype_t t) {
  switch (t) {
    case MK_GGUF_UINT8: case MK_GGUF_INT8: case MK_GGUF_BOOL: return 1;
    case MK_GGUF_UINT16: case MK_GGUF_INT16: return 2;
    case MK_GGUF_UINT32: case MK_GGUF_INT32: case MK_GGUF_FLOAT32: return 4;
    case MK_GGUF_UINT64: case MK_GGUF_INT64: case MK_GGUF_FLOAT64: return 8;
    case MK_GGUF_STRING: case MK_GGUF_ARRAY: break;
  }
  return 0;
}

void mk_gw_kv_arr(mk_gguf_writer_t *w, const char *key, mk_gguf_vtype_t elem_type, const void *data, uint64_t n) {
  size_t es = scalar_size(elem_type);
  if (es == 0) gw_die("mk_gw_kv_arr: element type must be a scalar (use kv_arr_str or kv_raw)");
  if (n > SIZE_MAX / es) gw_die("mk_gw_kv_arr: array too large");
  kv_begin(w, key, MK_GGUF_ARRAY);
  mk_gw_put_arr_header(&w->kv, elem_type, n);
  mk_gw_put_bytes(&w->kv, data, (size_t)n * es);
}

void mk_gw_kv_arr_str(mk_gguf_writer_t *w, const char *key, const char *const *strs, uint64_t n) {
  kv_begin(w, key, MK_GGUF_ARRAY);
  mk_gw_put_arr_header(&w->kv, MK_GGUF_STRING, n);
  for (uint64_t i = 0; i < n; i++) mk_gw_put_str(&w->kv, strs[i]);
}

void mk_gw_kv_raw(mk_gguf_writer_t *w, const char *key, mk_gguf_vtype_t type, const void *bytes, size_t n) {
  kv_begin(w, key, type);
  mk_gw_put_bytes(&w->kv, bytes, n);
}

/* ---- tensors --------------------------------------------------------------------------------- */

static gw_tensor_t *tensor_push(mk_gguf_writer_t *w, const char *name) {
  if (w->n_tensors == w->cap_tensors) {
    size_t cap = w->cap_tensors ? 2 * w->cap_tensors : 16;
    gw_tensor_t *nt = realloc(w->tensors, cap * sizeof *nt);
    if (!nt) gw_die("out of memory");
    w->tensors = nt;
    w->cap_tensors = cap;
  }
  gw_tensor_t *t = &w->tensors[w->n_tensors++];
  memset(t, 0, sizeof *t);
  t->name = gw_strdup(name);
  return t;
}

static void tensor_add(mk_gguf_writer_t *w, const char *name, mk_type_t type, int n_dims, const int64_t *ne,
                       const void *data, size_t nbytes, bool copy) {
  char msg[256];
  if (n_dims < 1 || n_dims > MK_MAX_DIMS) {
    snprintf(msg, sizeof msg, "tensor '%s': n_dims %d outside 1..%d", name, n_dims, MK_MAX_DIMS);
    gw_die(msg);
  }
  size_t rows = 1;
  for (int d = 1; d < n_dims; d++) {
    if (ne[d] < 1) gw_die("tensor dimension < 1");
    rows *= (size_t)ne[d];
  }
  size_t row = ne[0] >= 1 ? mk_type_row_bytes(type, ne[0]) : 0;
  if (row == 0 || row * rows != nbytes) {
    snprintf(msg, sizeof msg, "tensor '%s': %zu bytes given, type %d and shape need %zu", name, nbytes, (int)type,
             row * rows);
    gw_die(msg);
  }
  gw_tensor_t *t = tensor_push(w, name);
  t->type = (uint32_t)type;
  t->n_dims = (uint32_t)n_dims;
  for (int d = 0; d < n_dims; d++) t->ne[d] = (uint64_t)ne[d];
  t->nbytes = nbytes;
  if (copy) {
    t->owned = gw_xmalloc(nbytes);
    if (nbytes) memcpy(t->owned, data, nbytes);
    t->data = t->owned;
  } else {
    t->data = data;
  }
}

void mk_gw_tensor(mk_gguf_writer_t *w, const char *name, mk_type_t type, int n_dims, const int64_t *ne,
                  const void *data, size_t nbytes) {
  tensor_add(w, name, type, n_dims, ne, data, nbytes, true);
}

void mk_gw_tensor_borrowed(mk_gguf_writer_t *w, const char *name, mk_type_t type, int n_dims, const int64_t *ne,
                           const void *data, size_t nbytes) {
  tensor_add(w, name, type, n_dims, ne, data, nbytes, false);
}

void mk_gw_tensor_raw(mk_gguf_writer_t *w, const char *name, uint32_t type_id, uint32_t n_dims, const uint64_t *ne,
                      const void *data, size_t nbytes) {
  gw_tensor_t *t = tensor_push(w, name);
  t->type = type_id;
  t->n_dims = n_dims;
  t->nbytes = nbytes;
  /* records may claim any n_dims; only the first MK_MAX_DIMS dims are kept, and more are written
   * as 1 (enough for hostile tests, which care about the count) */
  for (uint32_t d = 0; d < n_dims && d < MK_MAX_DIMS; d++) t->ne[d] = ne[d];
  t->owned = gw_xmalloc(nbytes);
  if (nbytes) memcpy(t->owned, data, nbytes);
  t->data = t->owned;
}

void mk_gw_tensor_set_offset(mk_gguf_writer_t *w, size_t i, uint64_t offset) {
  if (i >= w->n_tensors) gw_die("mk_gw_tensor_set_offset: no such tensor");
  w->tensors[i].offset_set = true;
  w->tensors[i].offset = offset;
}

static uint64_t align_up(uint64_t x, uint64_t a) { return (x + a - 1) / a * a; }

/* Natural (laid-out) offset of tensor i's data relative to the data section. */
static uint64_t natural_offset(const mk_gguf_writer_t *w, size_t i) {
  uint64_t off = 0;
  for (size_t k = 0; k < i; k++) off = align_up(off + w->tensors[k].nbytes, w->alignment);
  return off;
}

uint64_t mk_gw_tensor_offset(const mk_gguf_writer_t *w, size_t i) {
  if (i >= w->n_tensors) gw_die("mk_gw_tensor_offset: no such tensor");
  return w->tensors[i].offset_set ? w->tensors[i].offset : natural_offset(w, i);
}

/* ---- serialisation --------------------------------------------------------------------------- */

typedef struct sink {
  uint8_t *buf; /* fill this buffer, or */
  FILE *f;      /* write this file, or neither: just count */
  size_t pos;
  bool failed;
} sink_t;

static void sink_put(sink_t *s, const void *p, size_t n) {
  if (n == 0) return;
  if (s->buf) memcpy(s->buf + s->pos, p, n);
  else if (s->f && !s->failed && fwrite(p, 1, n, s->f) != n) s->failed = true;
  s->pos += n;
}

static void sink_zeros(sink_t *s, size_t n) {
  static const uint8_t zeros[64];
  while (n > 0) {
    size_t k = n < sizeof zeros ? n : sizeof zeros;
    sink_put(s, zeros, k);
    n -= k;
  }
}

static void sink_bytes(sink_t *s, const mk_gw_bytes_t *b) { sink_put(s, b->p, b->n); }

static bool auto_alignment_key(const mk_gguf_writer_t *w) {
  return w->alignment != 32 && !w->has_alignment_key;
}

static void serialise(const mk_gguf_writer_t *w, sink_t *s) {
  mk_gw_bytes_t b = {0};
  mk_gw_put_bytes(&b, "GGUF", 4);
  mk_gw_put_u32(&b, w->version);
  mk_gw_put_u64(&b, w->n_tensors);
  mk_gw_put_u64(&b, w->n_kv + (auto_alignment_key(w) ? 1 : 0));
  sink_bytes(s, &b);
  sink_bytes(s, &w->kv);
  b.n = 0;
  if (auto_alignment_key(w)) {
    mk_gw_put_str(&b, "general.alignment");
    mk_gw_put_u32(&b, MK_GGUF_UINT32);
    mk_gw_put_u32(&b, w->alignment);
  }
  uint64_t off = 0; /* natural data offsets, accumulated */
  for (size_t i = 0; i < w->n_tensors; i++) {
    const gw_tensor_t *t = &w->tensors[i];
    mk_gw_put_str(&b, t->name);
    mk_gw_put_u32(&b, t->n_dims);
    for (uint32_t d = 0; d < t->n_dims; d++) mk_gw_put_u64(&b, d < MK_MAX_DIMS ? t->ne[d] : 1);
    mk_gw_put_u32(&b, t->type);
    mk_gw_put_u64(&b, t->offset_set ? t->offset : off);
    off = align_up(off + t->nbytes, w->alignment);
  }
  sink_bytes(s, &b);
  mk_gw_bytes_free(&b);
  if (w->n_tensors == 0) return;
  size_t data_start = (size_t)align_up(s->pos, w->alignment);
  sink_zeros(s, data_start - s->pos);
  for (size_t i = 0; i < w->n_tensors; i++) {
    const gw_tensor_t *t = &w->tensors[i];
    sink_put(s, t->data, t->nbytes);
    if (i + 1 < w->n_tensors || w->pad_end) sink_zeros(s, (size_t)align_up(s->pos, w->alignment) - s->pos);
  }
}

void *mk_gw_to_buffer(mk_gguf_writer_t *w, size_t *size) {
  sink_t count = {0};
  serialise(w, &count);
  uint8_t *buf = malloc(count.pos ? count.pos : 1);
  if (!buf) return NULL;
  sink_t fill = {.buf = buf};
  serialise(w, &fill);
  *size = fill.pos;
  return buf;
}

int mk_gw_write_file(mk_gguf_writer_t *w, const char *path) {
  FILE *f = fopen(path, "wb");
  if (!f) return -1;
  sink_t s = {.f = f};
  serialise(w, &s);
  if (fclose(f) != 0) s.failed = true;
  return s.failed ? -1 : 0;
}
