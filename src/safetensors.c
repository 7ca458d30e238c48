/* Safetensors header parser (see src/safetensors.h for the layout and the invariant).
 *
 * Design note: the header length is checked against the buffer before Jansson sees a byte;
 * Jansson parses exactly N bytes (json_loadb, duplicate keys rejected); every number is checked
 * as an integer in range before it is used in arithmetic, element counts are multiplied with
 * overflow checks, and overlap is found by sorting the byte ranges. The result owns copies of
 * the names only; the caller keeps the buffer. */
#include "src/safetensors.h"

#include <inttypes.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

typedef struct dtype_def {
  const char *name;
  int bytes;
  mk_type_t type; /* MK_TYPE_COUNT: a valid safetensors dtype this engine does not compute with */
} dtype_def_t;

static const dtype_def_t DTYPES[] = {
    {"F32", 4, MK_TYPE_F32},        {"F16", 2, MK_TYPE_F16},        {"BF16", 2, MK_TYPE_BF16},
    {"F64", 8, MK_TYPE_COUNT},      {"I64", 8, MK_TYPE_COUNT},      {"U64", 8, MK_TYPE_COUNT},
    {"I32", 4, MK_TYPE_COUNT},      {"U32", 4, MK_TYPE_COUNT},      {"I16", 2, MK_TYPE_COUNT},
    {"U16", 2, MK_TYPE_COUNT},      {"I8", 1, MK_TYPE_COUNT},       {"U8", 1, MK_TYPE_COUNT},
    {"BOOL", 1, MK_TYPE_COUNT},     {"F8_E4M3", 1, MK_TYPE_COUNT},  {"F8_E5M2", 1, MK_TYPE_COUNT},
};

const char *mk_st_dtype_name(mk_type_t t) {
  for (size_t i = 0; i < 3; i++)
    if (DTYPES[i].type == t) return DTYPES[i].name;
  return "?";
}

void mk_st_header_free(mk_st_header_t *h) {
  if (!h) return;
  for (size_t i = 0; i < h->n; i++) free(h->t[i].name);
  free(h->t);
  memset(h, 0, sizeof *h);
}

const mk_st_tensor_t *mk_st_find(const mk_st_header_t *h, const char *name) {
  for (size_t i = 0; i < h->n; i++)
    if (strcmp(h->t[i].name, name) == 0) return &h->t[i];
  return NULL;
}

/* A non-negative JSON integer, or -1. */
static int64_t json_nonneg(const json_t *v) {
  if (!json_is_integer(v)) return -1;
  json_int_t x = json_integer_value(v);
  return x < 0 ? -1 : (int64_t)x;
}

static int parse_dtype(const json_t *v, const char *label, const char *name, mk_st_tensor_t *t, int *bytes,
                       mk_error_t *err) {
  const char *s = json_string_value(v);
  if (!s) return mk_fail(err, "%s: tensor '%s': \"dtype\" is missing or not a string", label, name);
  for (size_t i = 0; i < sizeof DTYPES / sizeof DTYPES[0]; i++) {
    if (strcmp(DTYPES[i].name, s) != 0) continue;
    if (DTYPES[i].type == MK_TYPE_COUNT)
      return mk_fail(err, "%s: tensor '%s': dtype %s is not supported (F32, F16, BF16)", label, name, s);
    t->type = DTYPES[i].type;
    *bytes = DTYPES[i].bytes;
    return 0;
  }
  return mk_fail(err, "%s: tensor '%s': unknown dtype \"%.32s\"", label, name, s);
}

/* shape and data_offsets of one entry; checks the byte count against the data section. */
static int parse_extent(const json_t *obj, const char *label, const char *name, int elem_bytes, uint64_t data_size,
                        mk_st_tensor_t *t, mk_error_t *err) {
  const json_t *shape = json_object_get(obj, "shape");
  if (!json_is_array(shape)) return mk_fail(err, "%s: tensor '%s': \"shape\" is missing or not an array", label, name);
  size_t nd = json_array_size(shape);
  if (nd > MK_ST_MAX_DIMS)
    return mk_fail(err, "%s: tensor '%s': %zu dimensions (at most %d)", label, name, nd, MK_ST_MAX_DIMS);
  uint64_t numel = 1;
  t->n_dims = (int)nd;
  for (size_t d = 0; d < MK_ST_MAX_DIMS; d++) t->shape[d] = 1;
  for (size_t d = 0; d < nd; d++) {
    int64_t x = json_nonneg(json_array_get(shape, d));
    if (x < 0 || (uint64_t)x > data_size)
      return mk_fail(err, "%s: tensor '%s': shape[%zu] is not an integer in [0, %" PRIu64 "]", label, name, d, data_size);
    t->shape[d] = x;
    if (x != 0 && numel > UINT64_MAX / (uint64_t)x) numel = UINT64_MAX; /* caught below */
    else numel *= (uint64_t)x;
  }
  const json_t *off = json_object_get(obj, "data_offsets");
  if (!json_is_array(off) || json_array_size(off) != 2)
    return mk_fail(err, "%s: tensor '%s': \"data_offsets\" is not an array [begin, end]", label, name);
  int64_t b = json_nonneg(json_array_get(off, 0)), e = json_nonneg(json_array_get(off, 1));
  if (b < 0 || e < 0 || b > e)
    return mk_fail(err, "%s: tensor '%s': data_offsets must be integers 0 <= begin <= end", label, name);
  if ((uint64_t)e > data_size)
    return mk_fail(err, "%s: tensor '%s': data_offsets [%" PRId64 ", %" PRId64 ") run past the end of the data "
                   "(%" PRIu64 " bytes)", label, name, b, e, data_size);
  if (numel > data_size || numel * (uint64_t)elem_bytes != (uint64_t)(e - b))
    return mk_fail(err, "%s: tensor '%s': data_offsets [%" PRId64 ", %" PRId64 ") hold %" PRId64 " bytes, but the "
                   "shape and dtype need %" PRIu64, label, name, b, e, e - b,
                   numel > data_size ? UINT64_MAX : numel * (uint64_t)elem_bytes);
  t->begin = (uint64_t)b;
  t->end = (uint64_t)e;
  return 0;
}

static int cmp_begin(const void *a, const void *b) {
  const mk_st_tensor_t *x = *(const mk_st_tensor_t *const *)a, *y = *(const mk_st_tensor_t *const *)b;
  return x->begin < y->begin ? -1 : x->begin > y->begin ? 1 : (x->end > y->end) - (x->end < y->end);
}

static int check_overlap(const mk_st_header_t *h, const char *label, mk_error_t *err) {
  if (h->n < 2) return 0;
  const mk_st_tensor_t **s = malloc(h->n * sizeof *s);
  if (!s) return mk_fail(err, "%s: out of memory", label);
  for (size_t i = 0; i < h->n; i++) s[i] = &h->t[i];
  qsort(s, h->n, sizeof *s, cmp_begin);
  int rc = 0;
  for (size_t i = 0; i + 1 < h->n && rc == 0; i++)
    if (s[i]->end > s[i + 1]->begin && s[i + 1]->end > s[i + 1]->begin)
      rc = mk_fail(err, "%s: tensors '%s' [%" PRIu64 ", %" PRIu64 ") and '%s' [%" PRIu64 ", %" PRIu64 ") overlap",
                   label, s[i]->name, s[i]->begin, s[i]->end, s[i + 1]->name, s[i + 1]->begin, s[i + 1]->end);
  free(s);
  return rc;
}

static int parse_entries(json_t *root, const char *label, uint64_t data_size, mk_st_header_t *h, mk_error_t *err) {
  h->t = calloc(json_object_size(root) ? json_object_size(root) : 1, sizeof *h->t);
  if (!h->t) return mk_fail(err, "%s: out of memory", label);
  const char *key;
  json_t *v;
  json_object_foreach(root, key, v) {
    if (strcmp(key, "__metadata__") == 0) {
      if (!json_is_object(v)) return mk_fail(err, "%s: \"__metadata__\" is not an object", label);
      continue;
    }
    if (!json_is_object(v)) return mk_fail(err, "%s: tensor '%s': entry is not an object", label, key);
    mk_st_tensor_t *t = &h->t[h->n];
    int bytes = 0;
    if (parse_dtype(json_object_get(v, "dtype"), label, key, t, &bytes, err) != 0 ||
        parse_extent(v, label, key, bytes, data_size, t, err) != 0)
      return -1;
    if (!(t->name = strdup(key))) return mk_fail(err, "%s: out of memory", label);
    h->n++;
  }
  return check_overlap(h, label, err);
}

int mk_st_parse(const void *buf, size_t size, const char *label, mk_st_header_t *out, mk_error_t *err) {
  memset(out, 0, sizeof *out);
  const uint8_t *p = buf;
  if (size < 8) return mk_fail(err, "%s: %zu bytes, too short for a safetensors header length", label, size);
  uint64_t n = 0;
  for (int i = 7; i >= 0; i--) n = (n << 8) | p[i];
  if (n > size - 8)
    return mk_fail(err, "%s: header length %" PRIu64 " runs past the end of the file (size %zu)", label, n, size);
  if (n > MK_ST_MAX_HEADER)
    return mk_fail(err, "%s: header length %" PRIu64 " exceeds the format's limit of %u bytes", label, n, MK_ST_MAX_HEADER);
  json_error_t je;
  json_t *root = json_loadb((const char *)p + 8, (size_t)n, JSON_REJECT_DUPLICATES, &je);
  if (!root)
    return mk_fail(err, "%s: malformed JSON header at line %d, column %d: %s", label, je.line, je.column, je.text);
  int rc;
  if (!json_is_object(root)) {
    rc = mk_fail(err, "%s: the JSON header is not an object", label);
  } else {
    out->data_offset = 8 + n;
    rc = parse_entries(root, label, (uint64_t)size - 8 - n, out, err);
  }
  json_decref(root);
  if (rc != 0) mk_st_header_free(out);
  return rc;
}
