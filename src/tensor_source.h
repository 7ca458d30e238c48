/* Format-neutral view of a model file's tensors: name -> (type, shape, bytes).
 *
 * The engine (src/model.c) binds weights only through this interface, so a safetensors reader can
 * plug in beside GGUF. Data pointers are borrowed from a memory map owned by the source; they stay
 * valid until the source is closed. Shapes use GGUF order: ne[0] is the contiguous (row) length,
 * so a weight matrix W applied as y = W x has ne[0] = in_features, ne[1] = out_features. */
#ifndef MK_TENSOR_SOURCE_H
#define MK_TENSOR_SOURCE_H

#include <stddef.h>
#include <stdint.h>

#include "src/quant.h"

#define MK_MAX_DIMS 4

typedef struct mk_tensor_info {
  const char *name;
  mk_type_t type;
  int n_dims;
  int64_t ne[MK_MAX_DIMS]; /* unused dims are 1 */
  const void *data;        /* borrowed, inside the source's mapping */
  size_t nbytes;
} mk_tensor_info_t;

typedef struct mk_tensor_source {
  void *impl;
  size_t (*count)(const void *impl);
  const mk_tensor_info_t *(*at)(const void *impl, size_t i);
  const mk_tensor_info_t *(*find)(const void *impl, const char *name); /* NULL if absent */
} mk_tensor_source_t;

static inline const mk_tensor_info_t *mk_tensor_find(const mk_tensor_source_t *s, const char *name) {
  return s->find(s->impl, name);
}

#endif
