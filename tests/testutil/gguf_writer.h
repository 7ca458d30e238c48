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

#endif
