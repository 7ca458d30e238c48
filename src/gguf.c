/* GGUF reader (versions 2 and 3): parse and validate once, then answer queries.
 *
 * Design note.
 * - The whole file is memory-mapped read-only (or a caller buffer is borrowed) and parsed by a
 *   bounds-checked cursor: every read first asks `cur_need` whether that many bytes remain, so a
 *   truncated file fails at the first field that runs past the end, with that field's name and
 *   offset in the message. Integers are assembled byte by byte (little-endian, no unaligned loads).
 * - No allocation is sized by an unchecked number from the file. Counts are bounded by the bytes
 *   left before anything is allocated: a key-value pair needs at least 14 bytes, a tensor record
 *   33, an array element its element size (8 for a string, 12 for a nested array). So the
 *   reader's memory is at most a small multiple of the file's size, whatever the file says.
 * - Everything the reader owns beyond the mapping (key and tensor-name copies, the kv and tensor
 *   tables, string-array and nested-array element tables) lives in one arena freed by
 *   mk_gguf_close. String values, scalar arrays and tensor data are borrowed from the mapping.
 * - Nested arrays are parsed recursively with a depth limit (MK_GGUF_MAX_DEPTH), so a hostile
 *   file cannot exhaust the stack.
 * - Keys and tensor names are indexed by open-addressing hash tables (FNV-1a, linear probing),
 *   built during the parse; a duplicate is found on insertion and refused.
 * - Tensor records are checked in two passes: shape, type and byte size while reading the table,
 *   then (once the aligned data start is known) offset alignment and that [start, start+nbytes)
 *   lies inside the file. After a successful open every mk_tensor_info_t.data points at nbytes
 *   readable bytes inside the mapping.
 * - Bytes per tensor come from src/quant.h (mk_type_row_bytes), the single source of block sizes.
 *   A type id without a known block size is refused here; a known type the kernels cannot
 *   multiply (mk_type_supported false, e.g. Q8_K) is accepted, so `inspect` can list such files,
 *   and refused by the model binder. */
#define _POSIX_C_SOURCE 200809L

#include "src/gguf.h"

#include <errno.h>
#include <fcntl.h>
#include <float.h>
#include <inttypes.h>
#include <math.h>
#include <stdalign.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define MK_GGUF_MAX_DEPTH 8           /* array nesting levels (an array of arrays is 2) */
#define MK_GGUF_DEFAULT_ALIGNMENT 32
#define MK_GGUF_HEADER_BYTES 24       /* magic, version, n_tensors, n_kv */
#define MK_GGUF_MIN_KV_BYTES 14       /* key len 8 + key >= 1 + type 4 + value >= 1 */
#define MK_GGUF_MIN_TENSOR_BYTES 33   /* name len 8 + name >= 1 + n_dims 4 + ne 8 + type 4 + off 8 */
#define MK_GGUF_NAME_SHOWN 96         /* bytes of a key/name quoted in an error message */

/* ---- arena ----------------------------------------------------------------------------------- */

typedef struct arena_chunk arena_chunk_t;
struct arena_chunk {
  arena_chunk_t *next;
  size_t cap, used;
  alignas(max_align_t) unsigned char data[];
};

typedef struct arena {
  arena_chunk_t *head;
} arena_t;

enum { ARENA_CHUNK = 64 * 1024 };

/* Returns zeroed memory aligned for any type; NULL on overflow or out of memory. */
static void *arena_alloc(arena_t *a, size_t n) {
  const size_t al = alignof(max_align_t);
  if (n == 0) n = 1;
  if (n > SIZE_MAX - al) return NULL;
  n = (n + al - 1) & ~(al - 1);
  arena_chunk_t *c = a->head;
  if (!c || c->cap - c->used < n) {
    size_t cap = n > ARENA_CHUNK ? n : ARENA_CHUNK;
    if (cap > SIZE_MAX - sizeof(arena_chunk_t)) return NULL;
    arena_chunk_t *nc = malloc(sizeof(arena_chunk_t) + cap);
    if (!nc) return NULL;
    nc->cap = cap;
    nc->used = 0;
    if (c && n > ARENA_CHUNK) {
      /* a large block gets its own chunk behind the current one, which keeps its free space */
      nc->next = c->next;
      c->next = nc;
    } else {
      nc->next = c;
      a->head = nc;
    }
    c = nc;
  }
  void *p = c->data + c->used;
  c->used += n;
  memset(p, 0, n);
  return p;
}

static void arena_free(arena_t *a) {
  arena_chunk_t *c = a->head;
  while (c) {
    arena_chunk_t *next = c->next;
    free(c);
    c = next;
  }
  a->head = NULL;
}

/* ---- name index (open addressing) ----------------------------------------------------------- */

typedef struct name_slot {
  const char *name; /* NULL: empty */
  size_t i;
} name_slot_t;

typedef struct name_index {
  name_slot_t *slots;
  size_t mask; /* capacity - 1; capacity a power of two >= 2 * entries */
} name_index_t;

static uint64_t name_hash(const char *s) {
  uint64_t h = 0xcbf29ce484222325ull; /* FNV-1a */
  for (; *s; s++) h = (h ^ (unsigned char)*s) * 0x100000001b3ull;
  return h;
}

static int name_index_init(name_index_t *ix, arena_t *a, size_t n) {
  size_t cap = 8;
  while (cap < n * 2) cap *= 2; /* n is bounded by the file size, so this cannot overflow */
  ix->slots = arena_alloc(a, cap * sizeof(name_slot_t));
  ix->mask = cap - 1;
  return ix->slots ? 0 : -1;
}

/* Returns the index stored under name, or SIZE_MAX. */
static size_t name_index_get(const name_index_t *ix, const char *name) {
  if (!ix->slots) return SIZE_MAX;
  for (size_t k = (size_t)name_hash(name) & ix->mask;; k = (k + 1) & ix->mask) {
    const name_slot_t *s = &ix->slots[k];
    if (!s->name) return SIZE_MAX;
    if (strcmp(s->name, name) == 0) return s->i;
  }
}

/* Inserts name -> i; returns false if the name is already present. */
static bool name_index_put(name_index_t *ix, const char *name, size_t i) {
  for (size_t k = (size_t)name_hash(name) & ix->mask;; k = (k + 1) & ix->mask) {
    name_slot_t *s = &ix->slots[k];
    if (!s->name) {
      s->name = name;
      s->i = i;
      return true;
    }
    if (strcmp(s->name, name) == 0) return false;
  }
}

/* ---- the reader ------------------------------------------------------------------------------ */

struct mk_gguf {
  char *label; /* path, or the caller's label for a buffer */
  const uint8_t *base;
  size_t size;
  bool mapped; /* base is our mmap */

  uint32_t version;
  size_t alignment;
  size_t data_start; /* file offset of the tensor data section */

  size_t n_kv;
  mk_gguf_kv_t *kvs;
  name_index_t kv_index;

  size_t n_tensors;
  mk_tensor_info_t *tensors;
  name_index_t tensor_index;

  arena_t arena;
};

/* Bounds-checked cursor over the file. */
typedef struct cursor {
  const uint8_t *p;
  size_t size, pos;
  const char *label;
  mk_error_t *err;
  arena_t *arena;
  const char *ctx_kind, *ctx_name; /* what is being parsed ("key", "general.name"), for messages */
} cursor_t;

/* Fails with "<label>: <kind> '<name>': <message>" (the context part only when one is set). */
static int cur_fail(const cursor_t *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int cur_fail(const cursor_t *c, const char *fmt, ...) {
  char msg[768];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  if (c->ctx_name)
    return mk_fail(c->err, "%s: %s '%.*s': %s", c->label, c->ctx_kind, MK_GGUF_NAME_SHOWN, c->ctx_name, msg);
  if (c->ctx_kind) return mk_fail(c->err, "%s: %s: %s", c->label, c->ctx_kind, msg);
  return mk_fail(c->err, "%s: %s", c->label, msg);
}

static size_t cur_left(const cursor_t *c) { return c->size - c->pos; }

static int cur_need(const cursor_t *c, size_t n, const char *what) {
  if (n > cur_left(c))
    return cur_fail(c, "truncated: %s at offset %zu needs %zu bytes, %zu left in file (size %zu)", what, c->pos,
                    n, cur_left(c), c->size);
  return 0;
}

static uint64_t load_le(const uint8_t *p, size_t n) {
  uint64_t v = 0;
  for (size_t i = 0; i < n; i++) v |= (uint64_t)p[i] << (8 * i);
  return v;
}

static int cur_u32(cursor_t *c, uint32_t *v, const char *what) {
  if (cur_need(c, 4, what)) return -1;
  *v = (uint32_t)load_le(c->p + c->pos, 4);
  c->pos += 4;
  return 0;
}

static int cur_u64(cursor_t *c, uint64_t *v, const char *what) {
  if (cur_need(c, 8, what)) return -1;
  *v = load_le(c->p + c->pos, 8);
  c->pos += 8;
  return 0;
}

/* u64 length + bytes; the bytes are borrowed. */
static int cur_str(cursor_t *c, mk_gguf_str_t *s, const char *what) {
  uint64_t len = 0;
  size_t at = c->pos;
  if (cur_u64(c, &len, what)) return -1;
  if (len > cur_left(c))
    return cur_fail(c, "%s at offset %zu: string length %" PRIu64 " exceeds the %zu bytes left in file (size %zu)",
                    what, at, len, cur_left(c), c->size);
  s->ptr = (const char *)c->p + c->pos;
  s->len = len;
  c->pos += (size_t)len;
  return 0;
}

/* A key or tensor name: non-empty, no NUL bytes; returns a NUL-terminated arena copy. */
static int cur_name(cursor_t *c, const char **out, const char *what) {
  mk_gguf_str_t s = {0};
  size_t at = c->pos;
  if (cur_str(c, &s, what)) return -1;
  if (s.len == 0) return cur_fail(c, "%s at offset %zu is empty", what, at);
  if (memchr(s.ptr, 0, (size_t)s.len)) return cur_fail(c, "%s at offset %zu contains a NUL byte", what, at);
  char *copy = arena_alloc(c->arena, (size_t)s.len + 1);
  if (!copy) return cur_fail(c, "out of memory copying the %s at offset %zu", what, at);
  memcpy(copy, s.ptr, (size_t)s.len);
  *out = copy;
  return 0;
}

/* Bytes of one scalar value; 0 for STRING, ARRAY and unknown ids. */
static size_t vtype_size(uint32_t t) {
  switch (t) {
    case MK_GGUF_UINT8: case MK_GGUF_INT8: case MK_GGUF_BOOL: return 1;
    case MK_GGUF_UINT16: case MK_GGUF_INT16: return 2;
    case MK_GGUF_UINT32: case MK_GGUF_INT32: case MK_GGUF_FLOAT32: return 4;
    case MK_GGUF_UINT64: case MK_GGUF_INT64: case MK_GGUF_FLOAT64: return 8;
    default: return 0;
  }
}

static bool vtype_valid(uint32_t t) { return t <= MK_GGUF_FLOAT64; }

static bool vtype_is_unsigned(mk_gguf_vtype_t t) {
  return t == MK_GGUF_UINT8 || t == MK_GGUF_UINT16 || t == MK_GGUF_UINT32 || t == MK_GGUF_UINT64;
}
static bool vtype_is_signed(mk_gguf_vtype_t t) {
  return t == MK_GGUF_INT8 || t == MK_GGUF_INT16 || t == MK_GGUF_INT32 || t == MK_GGUF_INT64;
}

const char *mk_gguf_vtype_name(mk_gguf_vtype_t t) {
  switch (t) {
    case MK_GGUF_UINT8: return "uint8";
    case MK_GGUF_INT8: return "int8";
    case MK_GGUF_UINT16: return "uint16";
    case MK_GGUF_INT16: return "int16";
    case MK_GGUF_UINT32: return "uint32";
    case MK_GGUF_INT32: return "int32";
    case MK_GGUF_FLOAT32: return "float32";
    case MK_GGUF_BOOL: return "bool";
    case MK_GGUF_STRING: return "string";
    case MK_GGUF_ARRAY: return "array";
    case MK_GGUF_UINT64: return "uint64";
    case MK_GGUF_INT64: return "int64";
    case MK_GGUF_FLOAT64: return "float64";
  }
  return "unknown";
}

/* Decodes one scalar of type t at p into v (sign-extended / widened). */
static void decode_scalar(mk_gguf_vtype_t t, const uint8_t *p, mk_gguf_value_t *v) {
  uint64_t raw = load_le(p, vtype_size(t));
  switch (t) {
    case MK_GGUF_UINT8: case MK_GGUF_UINT16: case MK_GGUF_UINT32: case MK_GGUF_UINT64:
      v->v.u64 = raw;
      break;
    case MK_GGUF_INT8: v->v.i64 = (int8_t)(uint8_t)raw; break;
    case MK_GGUF_INT16: v->v.i64 = (int16_t)(uint16_t)raw; break;
    case MK_GGUF_INT32: v->v.i64 = (int32_t)(uint32_t)raw; break;
    case MK_GGUF_INT64: memcpy(&v->v.i64, &raw, sizeof raw); break;
    case MK_GGUF_FLOAT32: {
      uint32_t u = (uint32_t)raw;
      float f;
      memcpy(&f, &u, sizeof f);
      v->v.f64 = f;
      break;
    }
    case MK_GGUF_FLOAT64: memcpy(&v->v.f64, &raw, sizeof raw); break;
    case MK_GGUF_BOOL: v->v.b = raw != 0; break;
    default: break;
  }
}

static int parse_value(cursor_t *c, mk_gguf_vtype_t type, mk_gguf_value_t *out, int depth);

/* Array body (after the ARRAY type tag): u32 elem_type | u64 n | n values. depth counts this
 * array's level (a top-level array has depth 1). */
static int parse_array(cursor_t *c, mk_gguf_value_t *out, int depth) {
  size_t at = c->pos;
  uint32_t et = 0;
  uint64_t n = 0;
  if (cur_u32(c, &et, "array element type") || cur_u64(c, &n, "array length")) return -1;
  if (!vtype_valid(et)) return cur_fail(c, "array at offset %zu has unknown element type %" PRIu32, at, et);
  const char *ename = mk_gguf_vtype_name((mk_gguf_vtype_t)et);
  out->v.arr.elem_type = (mk_gguf_vtype_t)et;
  out->v.arr.n = n;
  size_t left = cur_left(c);
  if (et == MK_GGUF_STRING || et == MK_GGUF_ARRAY) {
    size_t min_elem = et == MK_GGUF_STRING ? 8 : 12; /* u64 length; u32 type + u64 length */
    if (n > left / min_elem)
      return cur_fail(c, "array at offset %zu claims %" PRIu64 " %s elements, more than the %zu bytes left can hold",
                      at, n, ename, left);
    if (et == MK_GGUF_ARRAY && depth >= MK_GGUF_MAX_DEPTH)
      return cur_fail(c, "arrays nested deeper than %d levels at offset %zu", MK_GGUF_MAX_DEPTH, at);
    if (n == 0) return 0;
    if (et == MK_GGUF_STRING) {
      mk_gguf_str_t *strs = arena_alloc(c->arena, (size_t)n * sizeof *strs);
      if (!strs) return cur_fail(c, "out of memory for a %" PRIu64 "-string array", n);
      for (uint64_t i = 0; i < n; i++)
        if (cur_str(c, &strs[i], "array string")) return -1;
      out->v.arr.strs = strs;
    } else {
      mk_gguf_value_t *items = arena_alloc(c->arena, (size_t)n * sizeof *items);
      if (!items) return cur_fail(c, "out of memory for a %" PRIu64 "-array array", n);
      for (uint64_t i = 0; i < n; i++)
        if (parse_value(c, MK_GGUF_ARRAY, &items[i], depth + 1)) return -1;
      out->v.arr.items = items;
    }
    return 0;
  }
  size_t es = vtype_size(et);
  if (n > left / es)
    return cur_fail(c, "array at offset %zu claims %" PRIu64 " %s elements (%zu bytes each), more than the %zu bytes left",
                    at, n, ename, es, left);
  const uint8_t *raw = c->p + c->pos;
  if (et == MK_GGUF_BOOL)
    for (uint64_t i = 0; i < n; i++)
      if (raw[i] > 1)
        return cur_fail(c, "bool array element %" PRIu64 " at offset %zu has value %u (not 0 or 1)", i,
                        c->pos + (size_t)i, raw[i]);
  out->v.arr.raw = raw;
  c->pos += (size_t)n * es;
  return 0;
}

static int parse_value(cursor_t *c, mk_gguf_vtype_t type, mk_gguf_value_t *out, int depth) {
  out->type = type;
  if (type == MK_GGUF_ARRAY) return parse_array(c, out, depth);
  if (type == MK_GGUF_STRING) return cur_str(c, &out->v.str, "string value");
  size_t n = vtype_size(type);
  if (cur_need(c, n, "value")) return -1;
  if (type == MK_GGUF_BOOL && c->p[c->pos] > 1)
    return cur_fail(c, "bool at offset %zu has value %u (not 0 or 1)", c->pos, c->p[c->pos]);
  decode_scalar(type, c->p + c->pos, out);
  c->pos += n;
  return 0;
}

/* The name that opens record i (a key-value pair or a tensor record; `record` says which, e.g.
 * "tensor record 3 of 272"): read it, make it the context of later messages ("<kind> '<name>'"),
 * and index it; a name seen before is an error ("duplicate <field> at offset N"). */
static int record_name(cursor_t *c, const char *record, const char *field, const char *kind,
                       name_index_t *ix, size_t i, const char **out) {
  size_t at = c->pos;
  c->ctx_kind = record;
  c->ctx_name = NULL;
  if (cur_name(c, out, field)) return -1;
  c->ctx_kind = kind;
  c->ctx_name = *out;
  if (!name_index_put(ix, *out, i)) return cur_fail(c, "duplicate %s at offset %zu", field, at);
  return 0;
}

static int parse_kvs(mk_gguf_t *g, cursor_t *c) {
  if (g->n_kv == 0) return 0;
  g->kvs = arena_alloc(&g->arena, g->n_kv * sizeof *g->kvs);
  if (!g->kvs || name_index_init(&g->kv_index, &g->arena, g->n_kv))
    return cur_fail(c, "out of memory for %zu key-value pairs", g->n_kv);
  char kind[64];
  for (size_t i = 0; i < g->n_kv; i++) {
    mk_gguf_kv_t *kv = &g->kvs[i];
    snprintf(kind, sizeof kind, "key-value pair %zu of %zu", i, g->n_kv);
    if (record_name(c, kind, "key", "key", &g->kv_index, i, &kv->key)) return -1;
    size_t type_at = c->pos;
    uint32_t type = 0;
    if (cur_u32(c, &type, "value type")) return -1;
    if (!vtype_valid(type)) return cur_fail(c, "unknown value type %" PRIu32 " at offset %zu", type, type_at);
    if (parse_value(c, (mk_gguf_vtype_t)type, &kv->value, 1)) return -1;
  }
  c->ctx_kind = c->ctx_name = NULL;
  return 0;
}

/* general.alignment: an integer, nonzero power of two that fits in u32 (absent: 32). */
static int read_alignment(mk_gguf_t *g, mk_error_t *err) {
  g->alignment = MK_GGUF_DEFAULT_ALIGNMENT;
  const mk_gguf_kv_t *kv = mk_gguf_find(g, "general.alignment");
  if (!kv) return 0;
  const mk_gguf_value_t *v = &kv->value;
  uint64_t a;
  if (vtype_is_unsigned(v->type)) a = v->v.u64;
  else if (vtype_is_signed(v->type) && v->v.i64 > 0) a = (uint64_t)v->v.i64;
  else if (vtype_is_signed(v->type)) a = 0;
  else
    return mk_fail(err, "%s: key 'general.alignment' has type %s, expected an integer", g->label,
                   mk_gguf_vtype_name(v->type));
  if (a == 0 || (a & (a - 1)) != 0 || a > UINT32_MAX)
    return mk_fail(err, "%s: key 'general.alignment' = %" PRIu64 " is not a nonzero power of two (u32)",
                   g->label, a);
  g->alignment = (size_t)a;
  return 0;
}

/* A tensor's data offset as read, and where in the file it was read (for messages). */
typedef struct data_ref {
  uint64_t off;
  size_t at;
} data_ref_t;

static int parse_tensor_table(mk_gguf_t *g, cursor_t *c, data_ref_t *refs) {
  char kind[64];
  for (size_t i = 0; i < g->n_tensors; i++) {
    mk_tensor_info_t *t = &g->tensors[i];
    snprintf(kind, sizeof kind, "tensor record %zu of %zu", i, g->n_tensors);
    if (record_name(c, kind, "tensor name", "tensor", &g->tensor_index, i, &t->name)) return -1;

    size_t dims_at = c->pos;
    uint32_t n_dims = 0;
    if (cur_u32(c, &n_dims, "n_dims")) return -1;
    if (n_dims < 1 || n_dims > MK_MAX_DIMS)
      return cur_fail(c, "n_dims %" PRIu32 " at offset %zu is outside 1..%d", n_dims, dims_at, MK_MAX_DIMS);
    t->n_dims = (int)n_dims;
    int64_t n_elems = 1;
    for (int d = 0; d < MK_MAX_DIMS; d++) t->ne[d] = 1;
    for (uint32_t d = 0; d < n_dims; d++) {
      size_t ne_at = c->pos;
      uint64_t ne = 0;
      if (cur_u64(c, &ne, "dimension")) return -1;
      if (ne == 0 || ne > (uint64_t)INT64_MAX)
        return cur_fail(c, "ne[%" PRIu32 "] = %" PRIu64 " at offset %zu is %s", d, ne, ne_at,
                        ne == 0 ? "zero" : "negative or too large");
      if ((int64_t)ne > INT64_MAX / n_elems)
        return cur_fail(c, "element count overflows at ne[%" PRIu32 "] = %" PRIu64 " (offset %zu)", d, ne, ne_at);
      t->ne[d] = (int64_t)ne;
      n_elems *= (int64_t)ne;
    }

    size_t type_at = c->pos;
    uint32_t type = 0;
    if (cur_u32(c, &type, "tensor type")) return -1;
    /* known = sized; whether the kernels can multiply it is the model binder's question */
    if (type >= MK_TYPE_COUNT || mk_type_block_elems((mk_type_t)type) <= 0 ||
        mk_type_block_bytes((mk_type_t)type) == 0)
      return cur_fail(c, "unknown tensor type id %" PRIu32 " at offset %zu", type, type_at);
    t->type = (mk_type_t)type;
    size_t row = mk_type_row_bytes(t->type, t->ne[0]);
    if (row == 0)
      return cur_fail(c, "row length ne[0] = %" PRId64 " is not a multiple of the %s block size %" PRId64,
                      t->ne[0], mk_type_name(t->type), mk_type_block_elems(t->type));
    uint64_t rows = (uint64_t)(n_elems / t->ne[0]);
    if (rows > SIZE_MAX / row || row * (size_t)rows > c->size)
      return cur_fail(c, "%" PRId64 " elements of %s need more bytes than the whole file (size %zu)", n_elems,
                      mk_type_name(t->type), c->size);
    t->nbytes = row * (size_t)rows;
    refs[i].at = c->pos;
    if (cur_u64(c, &refs[i].off, "tensor data offset")) return -1;
  }
  c->ctx_kind = c->ctx_name = NULL;
  return 0;
}

static int check_tensor_data(mk_gguf_t *g, const data_ref_t *refs, mk_error_t *err) {
  for (size_t i = 0; i < g->n_tensors; i++) {
    mk_tensor_info_t *t = &g->tensors[i];
    uint64_t off = refs[i].off;
    size_t at = refs[i].at;
    if (off % g->alignment != 0)
      return mk_fail(err, "%s: tensor '%.*s': data offset %" PRIu64 " (read at offset %zu) is not a multiple of the alignment %zu",
                     g->label, MK_GGUF_NAME_SHOWN, t->name, off, at, g->alignment);
    size_t room = g->data_start <= g->size ? g->size - g->data_start : 0;
    if (off > room || t->nbytes > room - (size_t)off) {
      if (off <= UINT64_MAX - g->data_start && off + g->data_start <= UINT64_MAX - t->nbytes)
        return mk_fail(err, "%s: tensor '%.*s': data [%" PRIu64 ", %" PRIu64 ") past end of file (size %zu; offset read at %zu)",
                       g->label, MK_GGUF_NAME_SHOWN, t->name, off + g->data_start,
                       off + g->data_start + t->nbytes, g->size, at);
      return mk_fail(err, "%s: tensor '%.*s': data offset %" PRIu64 " (read at offset %zu, relative to data start %zu) past end of file (size %zu)",
                     g->label, MK_GGUF_NAME_SHOWN, t->name, off, at, g->data_start, g->size);
    }
    t->data = g->base + g->data_start + (size_t)off;
  }
  return 0;
}

static int parse(mk_gguf_t *g, mk_error_t *err) {
  cursor_t c = {.p = g->base, .size = g->size, .pos = 0, .label = g->label, .err = err, .arena = &g->arena};
  if (cur_need(&c, 4, "magic")) return -1;
  if (memcmp(g->base, "GGUF", 4) != 0)
    return mk_fail(err, "%s: not a GGUF file (magic %02x %02x %02x %02x at offset 0, expected \"GGUF\")",
                   g->label, g->base[0], g->base[1], g->base[2], g->base[3]);
  c.pos = 4;
  if (cur_u32(&c, &g->version, "version")) return -1;
  if (g->version == 1)
    return mk_fail(err, "%s: GGUF version 1 is not supported (only versions 2 and 3)", g->label);
  if (g->version != 2 && g->version != 3) {
    uint32_t v = g->version;
    uint32_t swapped = (v >> 24) | ((v >> 8) & 0xff00u) | ((v << 8) & 0xff0000u) | (v << 24);
    return mk_fail(err, "%s: unsupported GGUF version %" PRIu32 " at offset 4 (supported: 2, 3)%s", g->label, v,
                   swapped >= 1 && swapped <= 3 ? "; the file looks big-endian" : "");
  }
  uint64_t n_tensors = 0, n_kv = 0;
  if (cur_u64(&c, &n_tensors, "tensor count") || cur_u64(&c, &n_kv, "key-value count")) return -1;
  size_t left = cur_left(&c);
  if (n_kv > left / MK_GGUF_MIN_KV_BYTES)
    return mk_fail(err, "%s: key-value count %" PRIu64 " at offset 16 cannot fit in the %zu bytes left", g->label,
                   n_kv, left);
  if (n_tensors > left / MK_GGUF_MIN_TENSOR_BYTES ||
      n_kv * MK_GGUF_MIN_KV_BYTES > left - n_tensors * MK_GGUF_MIN_TENSOR_BYTES)
    return mk_fail(err, "%s: tensor count %" PRIu64 " at offset 8 cannot fit in the %zu bytes left", g->label,
                   n_tensors, left);
  g->n_kv = (size_t)n_kv;
  g->n_tensors = (size_t)n_tensors;

  if (parse_kvs(g, &c)) return -1;
  if (read_alignment(g, err)) return -1;

  data_ref_t *refs = NULL;
  if (g->n_tensors > 0) {
    g->tensors = arena_alloc(&g->arena, g->n_tensors * sizeof *g->tensors);
    refs = arena_alloc(&g->arena, g->n_tensors * sizeof *refs);
    if (!g->tensors || !refs || name_index_init(&g->tensor_index, &g->arena, g->n_tensors))
      return mk_fail(err, "%s: out of memory for %zu tensor records", g->label, g->n_tensors);
    if (parse_tensor_table(g, &c, refs)) return -1;
  }
  /* c.pos <= size, alignment <= 2^32: no overflow */
  g->data_start = (c.pos + g->alignment - 1) & ~(g->alignment - 1);
  return check_tensor_data(g, refs, err);
}

static mk_gguf_t *reader_new(const char *label) {
  mk_gguf_t *g = calloc(1, sizeof *g);
  if (!g) return NULL;
  size_t n = strlen(label);
  g->label = malloc(n + 1);
  if (!g->label) {
    free(g);
    return NULL;
  }
  memcpy(g->label, label, n + 1);
  return g;
}

int mk_gguf_open_memory(const void *buf, size_t size, const char *label, mk_gguf_t **out,
                        mk_error_t *err) {
  *out = NULL;
  if (!label) label = "(memory)";
  if (!buf && size > 0) return mk_fail(err, "%s: NULL buffer", label);
  mk_gguf_t *g = reader_new(label);
  if (!g) return mk_fail(err, "%s: out of memory", label);
  g->base = buf ? buf : (const uint8_t *)"";
  g->size = size;
  if (parse(g, err)) {
    mk_gguf_close(g);
    return -1;
  }
  *out = g;
  return 0;
}

int mk_gguf_open(const char *path, mk_gguf_t **out, mk_error_t *err) {
  *out = NULL;
  /* O_NONBLOCK: opening a FIFO must not wait for a writer (it is refused below); no effect on
   * regular files */
  int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) return mk_fail(err, "%s: cannot open: %s", path, strerror(errno));
  struct stat st;
  if (fstat(fd, &st) != 0) {
    int e = errno;
    close(fd);
    return mk_fail(err, "%s: cannot stat: %s", path, strerror(e));
  }
  if (!S_ISREG(st.st_mode)) {
    close(fd);
    return mk_fail(err, "%s: not a regular file (a model must be a file that can be mapped)", path);
  }
  if (st.st_size < MK_GGUF_HEADER_BYTES) {
    close(fd);
    return mk_fail(err, "%s: truncated: file size %lld is smaller than the %d-byte GGUF header", path,
                   (long long)st.st_size, MK_GGUF_HEADER_BYTES);
  }
#if SIZE_MAX < UINT64_MAX
  if ((uint64_t)st.st_size > SIZE_MAX) {
    close(fd);
    return mk_fail(err, "%s: file too large to map", path);
  }
#endif
  size_t size = (size_t)st.st_size;
  void *map = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
  int map_errno = errno;
  close(fd); /* the mapping keeps the file referenced */
  if (map == MAP_FAILED) return mk_fail(err, "%s: mmap of %zu bytes failed: %s", path, size, strerror(map_errno));
  mk_gguf_t *g = reader_new(path);
  if (!g) {
    munmap(map, size);
    return mk_fail(err, "%s: out of memory", path);
  }
  g->base = map;
  g->size = size;
  g->mapped = true;
  if (parse(g, err)) {
    mk_gguf_close(g);
    return -1;
  }
  *out = g;
  return 0;
}

void mk_gguf_close(mk_gguf_t *g) {
  if (!g) return;
  if (g->mapped) munmap((void *)g->base, g->size);
  arena_free(&g->arena);
  free(g->label);
  free(g);
}

uint32_t mk_gguf_version(const mk_gguf_t *g) { return g->version; }
size_t mk_gguf_alignment(const mk_gguf_t *g) { return g->alignment; }
const char *mk_gguf_path(const mk_gguf_t *g) { return g->label; }
size_t mk_gguf_file_size(const mk_gguf_t *g) { return g->size; }

size_t mk_gguf_n_kv(const mk_gguf_t *g) { return g->n_kv; }

const mk_gguf_kv_t *mk_gguf_kv_at(const mk_gguf_t *g, size_t i) {
  return i < g->n_kv ? &g->kvs[i] : NULL;
}

const mk_gguf_kv_t *mk_gguf_find(const mk_gguf_t *g, const char *key) {
  size_t i = name_index_get(&g->kv_index, key);
  return i == SIZE_MAX ? NULL : &g->kvs[i];
}

/* ---- typed getters --------------------------------------------------------------------------- */

static int type_error(const mk_gguf_t *g, const mk_gguf_kv_t *kv, const char *want, mk_error_t *err) {
  return mk_fail(err, "%s: key '%s' has type %s, expected %s", g->label, kv->key,
                 mk_gguf_vtype_name(kv->value.type), want);
}

bool mk_gguf_vtype_is_int(mk_gguf_vtype_t t) { return vtype_is_unsigned(t) || vtype_is_signed(t); }

int64_t mk_gguf_arr_int(const mk_gguf_value_t *arr, uint64_t i) {
  const mk_gguf_vtype_t t = arr->v.arr.elem_type;
  if (!mk_gguf_vtype_is_int(t)) return 0;
  mk_gguf_value_t v;
  decode_scalar(t, (const uint8_t *)arr->v.arr.raw + vtype_size(t) * i, &v);
  return vtype_is_signed(t) ? v.v.i64 : (int64_t)v.v.u64;
}

/* Integer value of kv as (negative?, magnitude-ish) pair: returns -1 if kv is not an integer. */
static int int_value(const mk_gguf_kv_t *kv, bool *neg, uint64_t *u, int64_t *s) {
  const mk_gguf_value_t *v = &kv->value;
  if (vtype_is_unsigned(v->type)) {
    *neg = false;
    *u = v->v.u64;
    *s = v->v.u64 > (uint64_t)INT64_MAX ? INT64_MAX : (int64_t)v->v.u64;
    return 0;
  }
  if (vtype_is_signed(v->type)) {
    *neg = v->v.i64 < 0;
    *s = v->v.i64;
    *u = *neg ? 0 : (uint64_t)v->v.i64;
    return 0;
  }
  return -1;
}

/* The integer at key: MK_GGUF_MISSING, -1 (not an integer, with err) or MK_GGUF_OK. */
static int get_int(const mk_gguf_t *g, const char *key, bool *neg, uint64_t *u, int64_t *s,
                   mk_error_t *err) {
  const mk_gguf_kv_t *kv = mk_gguf_find(g, key);
  if (!kv) return MK_GGUF_MISSING;
  if (int_value(kv, neg, u, s)) return type_error(g, kv, "an integer", err);
  return MK_GGUF_OK;
}

int mk_gguf_get_u32(const mk_gguf_t *g, const char *key, uint32_t *out, mk_error_t *err) {
  bool neg = false;
  uint64_t u = 0;
  int64_t s = 0;
  int rc = get_int(g, key, &neg, &u, &s, err);
  if (rc != MK_GGUF_OK) return rc;
  if (neg || u > UINT32_MAX) {
    if (neg) return mk_fail(err, "%s: key '%s' = %" PRId64 " does not fit in uint32", g->label, key, s);
    return mk_fail(err, "%s: key '%s' = %" PRIu64 " does not fit in uint32", g->label, key, u);
  }
  *out = (uint32_t)u;
  return MK_GGUF_OK;
}

int mk_gguf_get_i64(const mk_gguf_t *g, const char *key, int64_t *out, mk_error_t *err) {
  bool neg = false;
  uint64_t u = 0;
  int64_t s = 0;
  int rc = get_int(g, key, &neg, &u, &s, err);
  if (rc != MK_GGUF_OK) return rc;
  if (!neg && u > (uint64_t)INT64_MAX)
    return mk_fail(err, "%s: key '%s' = %" PRIu64 " does not fit in int64", g->label, key, u);
  *out = s;
  return MK_GGUF_OK;
}

int mk_gguf_get_f32(const mk_gguf_t *g, const char *key, float *out, mk_error_t *err) {
  const mk_gguf_kv_t *kv = mk_gguf_find(g, key);
  if (!kv) return MK_GGUF_MISSING;
  const mk_gguf_value_t *v = &kv->value;
  double d;
  if (v->type == MK_GGUF_FLOAT32 || v->type == MK_GGUF_FLOAT64) d = v->v.f64;
  else if (vtype_is_unsigned(v->type)) d = (double)v->v.u64;
  else if (vtype_is_signed(v->type)) d = (double)v->v.i64;
  else return type_error(g, kv, "a number", err);
  if (isfinite(d) && fabs(d) > FLT_MAX)
    return mk_fail(err, "%s: key '%s' = %g does not fit in float32", g->label, key, d);
  *out = (float)d;
  return MK_GGUF_OK;
}

int mk_gguf_get_bool(const mk_gguf_t *g, const char *key, bool *out, mk_error_t *err) {
  const mk_gguf_kv_t *kv = mk_gguf_find(g, key);
  if (!kv) return MK_GGUF_MISSING;
  if (kv->value.type != MK_GGUF_BOOL) return type_error(g, kv, "bool", err);
  *out = kv->value.v.b;
  return MK_GGUF_OK;
}

int mk_gguf_get_str(const mk_gguf_t *g, const char *key, char **out, mk_error_t *err) {
  const mk_gguf_kv_t *kv = mk_gguf_find(g, key);
  if (!kv) return MK_GGUF_MISSING;
  if (kv->value.type != MK_GGUF_STRING) return type_error(g, kv, "string", err);
  const mk_gguf_str_t *s = &kv->value.v.str;
  char *copy = malloc((size_t)s->len + 1);
  if (!copy) return mk_fail(err, "%s: key '%s': out of memory copying a %" PRIu64 "-byte string", g->label, key, s->len);
  if (s->len) memcpy(copy, s->ptr, (size_t)s->len);
  copy[s->len] = 0;
  *out = copy;
  return MK_GGUF_OK;
}

int mk_gguf_get_arr(const mk_gguf_t *g, const char *key, mk_gguf_vtype_t elem_type,
                    const mk_gguf_value_t **out, mk_error_t *err) {
  const mk_gguf_kv_t *kv = mk_gguf_find(g, key);
  if (!kv) return MK_GGUF_MISSING;
  if (kv->value.type != MK_GGUF_ARRAY) return type_error(g, kv, "array", err);
  if (kv->value.v.arr.elem_type != elem_type)
    return mk_fail(err, "%s: key '%s' is an array of %s, expected an array of %s", g->label, key,
                   mk_gguf_vtype_name(kv->value.v.arr.elem_type), mk_gguf_vtype_name(elem_type));
  *out = &kv->value;
  return MK_GGUF_OK;
}

/* ---- tensors --------------------------------------------------------------------------------- */

size_t mk_gguf_n_tensors(const mk_gguf_t *g) { return g->n_tensors; }

const mk_tensor_info_t *mk_gguf_tensor_at(const mk_gguf_t *g, size_t i) {
  return i < g->n_tensors ? &g->tensors[i] : NULL;
}

const mk_tensor_info_t *mk_gguf_tensor_find(const mk_gguf_t *g, const char *name) {
  size_t i = name_index_get(&g->tensor_index, name);
  return i == SIZE_MAX ? NULL : &g->tensors[i];
}

static size_t source_count(const void *impl) { return mk_gguf_n_tensors(impl); }
static const mk_tensor_info_t *source_at(const void *impl, size_t i) { return mk_gguf_tensor_at(impl, i); }
static const mk_tensor_info_t *source_find(const void *impl, const char *name) {
  return mk_gguf_tensor_find(impl, name);
}

mk_tensor_source_t mk_gguf_tensor_source(const mk_gguf_t *g) {
  return (mk_tensor_source_t){
      .impl = (void *)g, .count = source_count, .at = source_at, .find = source_find};
}
