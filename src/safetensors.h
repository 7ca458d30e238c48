/* Safetensors header parser (a pure function over a byte buffer, for tests and fuzzing).
 *
 * File layout: u64 little-endian N | N bytes of UTF-8 JSON | data. The JSON is an object whose
 * keys are tensor names (plus an optional "__metadata__" object of strings); each value is
 *   {"dtype": "BF16"|"F16"|"F32"|..., "shape": [d0, d1, ...], "data_offsets": [begin, end]}
 * with offsets relative to the start of the data (byte 8 + N). Shapes are row-major: the LAST
 * dimension is contiguous, so a torch Linear weight [out, in] is GGUF ne = [in, out].
 *
 * Invariant: after a successful parse every tensor's [begin, end) lies inside the buffer's data
 * section, end - begin = elements x element size, no two tensors' byte ranges overlap, names are
 * unique and the dtype is one the engine computes with (F32, F16, BF16); any other input is an
 * error naming the label (file) and the tensor. Parsing uses Jansson (the project's JSON library). */
#ifndef MK_SAFETENSORS_H
#define MK_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "src/mk_error.h"
#include "src/quant.h"

#define MK_ST_MAX_DIMS 4
#define MK_ST_MAX_HEADER (100u << 20) /* the format's own limit on N (100 MB) */

typedef struct mk_st_tensor {
  char *name;
  mk_type_t type;
  int n_dims;                    /* 0 = a scalar */
  int64_t shape[MK_ST_MAX_DIMS]; /* row-major, as in the file */
  uint64_t begin, end;           /* relative to data_offset */
} mk_st_tensor_t;

typedef struct mk_st_header {
  size_t n;
  mk_st_tensor_t *t;    /* in file order of the JSON object */
  uint64_t data_offset; /* 8 + N: where the data section starts in the buffer */
} mk_st_header_t;

/* Parses and validates the header of buf[0, size). label names the file in error messages. */
int mk_st_parse(const void *buf, size_t size, const char *label, mk_st_header_t *out, mk_error_t *err);
void mk_st_header_free(mk_st_header_t *h);
/* The tensor named name, or NULL (linear search; callers index it themselves if it matters). */
const mk_st_tensor_t *mk_st_find(const mk_st_header_t *h, const char *name);
/* "F32", "F16", "BF16" for the types a header can hold. */
const char *mk_st_dtype_name(mk_type_t t);

#endif
