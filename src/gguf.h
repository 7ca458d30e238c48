/* GGUF reader (versions 2 and 3).
 *
 * File layout (all little-endian):
 *   magic "GGUF" | u32 version | u64 n_tensors | u64 n_kv          (v1 used u32 counts: refused)
 *   n_kv x { string key | u32 value_type | value }
 *   n_tensors x { string name | u32 n_dims | u64 ne[n_dims] | u32 type | u64 offset }
 *   padding to `general.alignment` (default 32) | tensor data (offsets relative to its start)
 *   string = u64 len | bytes (not NUL-terminated); array = u32 elem_type | u64 n | n values.
 *
 * Invariant: every length, count, offset and dimension is checked against the file size before
 * use, so a truncated or hostile file yields an error naming the offending field, never a crash
 * or an unbounded allocation. Tensor data is memory-mapped and borrowed: mk_tensor_info_t.data
 * points into the mapping, valid until mk_gguf_close. */
#ifndef MK_GGUF_H
#define MK_GGUF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "src/mk_error.h"
#include "src/tensor_source.h"

typedef enum mk_gguf_vtype {
  MK_GGUF_UINT8 = 0,
  MK_GGUF_INT8 = 1,
  MK_GGUF_UINT16 = 2,
  MK_GGUF_INT16 = 3,
  MK_GGUF_UINT32 = 4,
  MK_GGUF_INT32 = 5,
  MK_GGUF_FLOAT32 = 6,
  MK_GGUF_BOOL = 7,
  MK_GGUF_STRING = 8,
  MK_GGUF_ARRAY = 9,
  MK_GGUF_UINT64 = 10,
  MK_GGUF_INT64 = 11,
  MK_GGUF_FLOAT64 = 12,
} mk_gguf_vtype_t;

typedef struct mk_gguf_str {
  const char *ptr; /* borrowed from the mapping; NOT NUL-terminated */
  uint64_t len;
} mk_gguf_str_t;

typedef struct mk_gguf_value mk_gguf_value_t;
struct mk_gguf_value {
  mk_gguf_vtype_t type;
  union {
    uint64_t u64; /* any unsigned integer type, widened */
    int64_t i64;  /* any signed integer type, widened */
    double f64;   /* FLOAT32 / FLOAT64, widened */
    bool b;
    mk_gguf_str_t str;
    struct {
      mk_gguf_vtype_t elem_type;
      uint64_t n;
      const void *raw;              /* scalar elements: packed little-endian in the mapping */
      const mk_gguf_str_t *strs;    /* elem_type STRING: n entries (owned by the reader) */
      const mk_gguf_value_t *items; /* elem_type ARRAY (nested): n entries (owned by the reader) */
    } arr;
  } v;
};

typedef struct mk_gguf_kv {
  const char *key; /* NUL-terminated copy */
  mk_gguf_value_t value;
} mk_gguf_kv_t;

typedef struct mk_gguf mk_gguf_t;

/* Opens and validates a file (memory-mapped). On failure *out is NULL and err names the file
 * and the problem ("model.gguf: tensor 'blk.3.attn_q.weight': data [off, off+n) past end of
 * file (size S)"). */
int mk_gguf_open(const char *path, mk_gguf_t **out, mk_error_t *err);
/* Same, over a caller-owned buffer that must outlive the reader (tests, fuzzing). */
int mk_gguf_open_memory(const void *buf, size_t size, const char *label, mk_gguf_t **out,
                        mk_error_t *err);
void mk_gguf_close(mk_gguf_t *g);

uint32_t mk_gguf_version(const mk_gguf_t *g);
size_t mk_gguf_alignment(const mk_gguf_t *g);
const char *mk_gguf_path(const mk_gguf_t *g);
size_t mk_gguf_file_size(const mk_gguf_t *g);

size_t mk_gguf_n_kv(const mk_gguf_t *g);
const mk_gguf_kv_t *mk_gguf_kv_at(const mk_gguf_t *g, size_t i);
const mk_gguf_kv_t *mk_gguf_find(const mk_gguf_t *g, const char *key); /* NULL if absent */

/* Typed getters. Integers accept any integer value type whose value fits; floats accept
 * FLOAT32/FLOAT64 and integers. Missing key: returns `missing` (1) without touching *out and
 * without setting err, so callers can apply defaults; wrong type / out of range: -1 with err. */
enum { MK_GGUF_OK = 0, MK_GGUF_MISSING = 1 };
int mk_gguf_get_u32(const mk_gguf_t *g, const char *key, uint32_t *out, mk_error_t *err);
int mk_gguf_get_i64(const mk_gguf_t *g, const char *key, int64_t *out, mk_error_t *err);
int mk_gguf_get_f32(const mk_gguf_t *g, const char *key, float *out, mk_error_t *err);
int mk_gguf_get_bool(const mk_gguf_t *g, const char *key, bool *out, mk_error_t *err);
/* *out is a malloc'd NUL-terminated copy (caller frees). */
int mk_gguf_get_str(const mk_gguf_t *g, const char *key, char **out, mk_error_t *err);
/* Array getter: *out points at the stored value (type ARRAY). */
int mk_gguf_get_arr(const mk_gguf_t *g, const char *key, mk_gguf_vtype_t elem_type,
                    const mk_gguf_value_t **out, mk_error_t *err);

/* The tensor table as a format-neutral source (valid while g is open). */
mk_tensor_source_t mk_gguf_tensor_source(const mk_gguf_t *g);
size_t mk_gguf_n_tensors(const mk_gguf_t *g);
const mk_tensor_info_t *mk_gguf_tensor_at(const mk_gguf_t *g, size_t i);
const mk_tensor_info_t *mk_gguf_tensor_find(const mk_gguf_t *g, const char *name);

const char *mk_gguf_vtype_name(mk_gguf_vtype_t t);
bool mk_gguf_vtype_is_int(mk_gguf_vtype_t t); /* one of the eight integer types */
/* Element i of an array of integers (arr->v.arr.elem_type an integer type, i < n), sign-extended;
 * a uint64 above INT64_MAX wraps. 0 for a non-integer array. */
int64_t mk_gguf_arr_int(const mk_gguf_value_t *arr, uint64_t i);

#endif
