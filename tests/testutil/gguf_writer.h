/* Test helper: writes GGUF v3 files (metadata of every type, tensors with alignment), for reader
 * tests, fuzzing and synthetic models (tensor-parallel tests with random weights). */
#ifndef MK_GGUF_WRITER_H
#define MK_GGUF_WRITER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "src/gguf.h"

typedef struct mk_gguf_writer mk_gguf_writer_t;

mk_gguf_writer_t *mk_gw_new(void);
void mk_gw_free(mk_gguf_writer_t *w);
void mk_gw_set_version(mk_gguf_writer_t *w, uint32_t version); /* default 3 */
void mk_gw_set_alignment(mk_gguf_writer_t *w, uint32_t align); /* also writes general.alignment if != 32 */
void mk_gw_kv_u32(mk_gguf_writer_t *w, const char *key, uint32_t v);
void mk_gw_kv_i32(mk_gguf_writer_t *w, const char *key, int32_t v);
void mk_gw_kv_u64(mk_gguf_writer_t *w, const char *key, uint64_t v);
void mk_gw_kv_f32(mk_gguf_writer_t *w, const char *key, float v);
void mk_gw_kv_bool(mk_gguf_writer_t *w, const char *key, bool v);
void mk_gw_kv_str(mk_gguf_writer_t *w, const char *key, const char *v);
/* Scalar array: elem_type in mk_gguf_vtype_t, n elements of packed little-endian data. */
void mk_gw_kv_arr(mk_gguf_writer_t *w, const char *key, mk_gguf_vtype_t elem_type, const void *data, uint64_t n);
void mk_gw_kv_arr_str(mk_gguf_writer_t *w, const char *key, const char *const *strs, uint64_t n);
/* Any raw value bytes (used for nested arrays and hostile inputs). */
void mk_gw_kv_raw(mk_gguf_writer_t *w, const char *key, mk_gguf_vtype_t type, const void *bytes, size_t n);
/* Tensor with data copied in (nbytes must match type and shape). */
void mk_gw_tensor(mk_gguf_writer_t *w, const char *name, mk_type_t type, int n_dims, const int64_t *ne,
                  const void *data, size_t nbytes);
/* Serialises to a malloc'd buffer. */
void *mk_gw_to_buffer(mk_gguf_writer_t *w, size_t *size);
int mk_gw_write_file(mk_gguf_writer_t *w, const char *path);

/* ---- additions (additive to the interface above) ----------------------------------------------
 * Programmer errors (a tensor whose nbytes does not match its type and shape, an alignment that is
 * not a power of two) and out-of-memory abort with a message: this is test code. mk_gw_to_buffer
 * returns NULL if the buffer cannot be allocated; mk_gw_write_file returns -1 on an I/O error.
 * Versions other than 2 and 3 are written with the v2/v3 layout (only the number differs), which
 * is what a reader's version check needs. */
void mk_gw_kv_i64(mk_gguf_writer_t *w, const char *key, int64_t v);
void mk_gw_kv_f64(mk_gguf_writer_t *w, const char *key, double v);
/* Any scalar type: *value is a C object of the matching type (uint8_t, int16_t, float, bool...). */
void mk_gw_kv_scalar(mk_gguf_writer_t *w, const char *key, mk_gguf_vtype_t type, const void *value);
/* Tensor whose data is borrowed (must stay valid until the last serialisation); for big synthetic
 * models. Same checks as mk_gw_tensor. */
void mk_gw_tensor_borrowed(mk_gguf_writer_t *w, const char *name, mk_type_t type, int n_dims, const int64_t *ne,
                           const void *data, size_t nbytes);
/* Tensor record written exactly as given (any type id, any dims, including invalid ones), with
 * nbytes of data copied in and placed like any other tensor: for hostile-file tests. */
void mk_gw_tensor_raw(mk_gguf_writer_t *w, const char *name, uint32_t type_id, uint32_t n_dims, const uint64_t *ne,
                      const void *data, size_t nbytes);
/* Overrides the data offset recorded in tensor i's record (the data stays where it would be). */
void mk_gw_tensor_set_offset(mk_gguf_writer_t *w, size_t i, uint64_t offset);
/* Whether the data of the last tensor is padded to the alignment (default true, as llama.cpp's
 * and gguf-py's writers do). */
void mk_gw_set_pad_end(mk_gguf_writer_t *w, bool pad);
/* Offset of tensor i's data relative to the data section, as it will be written (override or not). */
uint64_t mk_gw_tensor_offset(const mk_gguf_writer_t *w, size_t i);

/* Byte builder for raw values (nested arrays, hostile encodings), used with mk_gw_kv_raw. All
 * multi-byte values are written little-endian. Start from a zeroed struct; free with
 * mk_gw_bytes_free. */
typedef struct mk_gw_bytes {
  uint8_t *p;
  size_t n, cap;
} mk_gw_bytes_t;
void mk_gw_bytes_free(mk_gw_bytes_t *b);
void mk_gw_put_bytes(mk_gw_bytes_t *b, const void *p, size_t n);
void mk_gw_put_u8(mk_gw_bytes_t *b, uint8_t v);
void mk_gw_put_u16(mk_gw_bytes_t *b, uint16_t v);
void mk_gw_put_u32(mk_gw_bytes_t *b, uint32_t v);
void mk_gw_put_u64(mk_gw_bytes_t *b, uint64_t v);
void mk_gw_put_f32(mk_gw_bytes_t *b, float v);
void mk_gw_put_f64(mk_gw_bytes_t *b, double v);
void mk_gw_put_str(mk_gw_bytes_t *b, const char *s);                /* u64 length + bytes */
void mk_gw_put_arr_header(mk_gw_bytes_t *b, mk_gguf_vtype_t elem_type, uint64_t n); /* u32 + u64 */

#endif
