/* Test helper: writes safetensors files (and whole tiny Hugging Face checkpoint directories are
 * built from it in the tests). Entries are written in the order added, data packed back to back;
 * a raw header can replace the generated one for hostile-input tests. Aborts on out of memory
 * (test code). */
#ifndef MK_ST_WRITER_H
#define MK_ST_WRITER_H

#include <stddef.h>
#include <stdint.h>

typedef struct mk_st_writer mk_st_writer_t;

mk_st_writer_t *mk_stw_new(void);
void mk_stw_free(mk_st_writer_t *w);
/* dtype: any string (written as given); shape row-major; nbytes of data copied. */
void mk_stw_tensor(mk_st_writer_t *w, const char *name, const char *dtype, int n_dims, const int64_t *shape,
                   const void *data, size_t nbytes);
/* Replaces the generated JSON header by `json` (the data section is kept). */
void mk_stw_raw_header(mk_st_writer_t *w, const char *json);
/* Overrides the header length field (e.g. past the end of the file). */
void mk_stw_set_header_len(mk_st_writer_t *w, uint64_t n);
/* Header padding to 8 bytes (the reference writer's; default on). Off: data may be misaligned. */
void mk_stw_set_pad(mk_st_writer_t *w, int pad);
void *mk_stw_to_buffer(mk_st_writer_t *w, size_t *size);
int mk_stw_write_file(mk_st_writer_t *w, const char *path);

#endif
