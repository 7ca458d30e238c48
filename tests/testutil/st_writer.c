/* Test helper: safetensors writer (see st_writer.h). */
#include "tests/testutil/st_writer.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct mk_st_writer {
  char *json;      /* generated header so far: "{...", or the raw override */
  size_t json_len, json_cap;
  int raw;         /* json is a raw override */
  uint8_t *data;
  size_t data_len;
  uint64_t hdr_len_override;
  int has_override;
  int no_pad;
};

static void *xrealloc(void *p, size_t n) {
  void *q = realloc(p, n ? n : 1);
  if (!q) {
    fputs("st_writer: out of memory\n", stderr);
    abort();
  }
  return q;
}

static void put(mk_st_writer_t *w, const char *s) {
  size_t n = strlen(s);
  if (w->json_len + n + 1 > w->json_cap) {
    w->json_cap = (w->json_len + n + 1) * 2;
    w->json = xrealloc(w->json, w->json_cap);
  }
  memcpy(w->json + w->json_len, s, n + 1);
  w->json_len += n;
}

mk_st_writer_t *mk_stw_new(void) {
  mk_st_writer_t *w = xrealloc(NULL, sizeof *w);
  memset(w, 0, sizeof *w);
  put(w, "{");
  return w;
}

void mk_stw_free(mk_st_writer_t *w) {
  if (!w) return;
  free(w->json);
  free(w->data);
  free(w);
}

void mk_stw_tensor(mk_st_writer_t *w, const char *name, const char *dtype, int n_dims, const int64_t *shape,
                   const void *data, size_t nbytes) {
  char buf[512];
  snprintf(buf, sizeof buf, "%s\"%s\":{\"dtype\":\"%s\",\"shape\":[", w->json_len > 1 ? "," : "", name, dtype);
  put(w, buf);
  for (int d = 0; d < n_dims; d++) {
    snprintf(buf, sizeof buf, "%s%" PRId64, d ? "," : "", shape[d]);
    put(w, buf);
  }
  snprintf(buf, sizeof buf, "],\"data_offsets\":[%zu,%zu]}", w->data_len, w->data_len + nbytes);
  put(w, buf);
  w->data = xrealloc(w->data, w->data_len + nbytes);
  if (nbytes) memcpy(w->data + w->data_len, data, nbytes);
  w->data_len += nbytes;
}

void mk_stw_raw_header(mk_st_writer_t *w, const char *json) {
  w->json_len = 0;
  w->raw = 1;
  put(w, json);
}

void mk_stw_set_header_len(mk_st_writer_t *w, uint64_t n) {
  w->hdr_len_override = n;
  w->has_override = 1;
}

void mk_stw_set_pad(mk_st_writer_t *w, int pad) { w->no_pad = !pad; }

void *mk_stw_to_buffer(mk_st_writer_t *w, size_t *size) {
  if (!w->raw && !w->no_pad) /* pad the header with spaces to a multiple of 8, as safetensors does */
    while ((w->json_len + 1) % 8) put(w, " ");
  size_t jl = w->json_len + (w->raw ? 0 : 1);
  size_t total = 8 + jl + w->data_len;
  uint8_t *b = xrealloc(NULL, total);
  uint64_t n = w->has_override ? w->hdr_len_override : jl;
  for (int i = 0; i < 8; i++) b[i] = (uint8_t)(n >> (8 * i));
  memcpy(b + 8, w->json, w->json_len);
  if (!w->raw) b[8 + w->json_len] = '}';
  if (w->data_len) memcpy(b + 8 + jl, w->data, w->data_len);
  *size = total;
  return b;
}

int mk_stw_write_file(mk_st_writer_t *w, const char *path) {
  size_t n;
  void *b = mk_stw_to_buffer(w, &n);
  FILE *f = fopen(path, "wb");
  int rc = f && fwrite(b, 1, n, f) == n ? 0 : -1;
  if (f && fclose(f) != 0) rc = -1;
  free(b);
  return rc;
}
