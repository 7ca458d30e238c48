/* A GGUF v3 metadata block built in memory (no tensors), for formats whose metadata the engine
 * reads through the GGUF getters: the Hugging Face loader (src/hf_model.c) translates config.json
 * and tokenizer.json into llama.cpp's GGUF keys, as llama.cpp's converter does, and opens the
 * result with mk_gguf_open_memory. Out of memory is remembered and reported by mk_gb_finish. */
#ifndef MK_GGUF_BUILD_H
#define MK_GGUF_BUILD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct mk_gb {
  uint8_t *p;
  size_t n, cap;
  uint64_t n_kv;
  bool oom;
} mk_gb_t;

void mk_gb_u32(mk_gb_t *b, const char *key, uint32_t v);
void mk_gb_i32(mk_gb_t *b, const char *key, int32_t v);
void mk_gb_f32(mk_gb_t *b, const char *key, float v);
void mk_gb_bool(mk_gb_t *b, const char *key, bool v);
void mk_gb_str(mk_gb_t *b, const char *key, const char *v);
void mk_gb_arr_str(mk_gb_t *b, const char *key, const char *const *v, uint64_t n);
void mk_gb_arr_i32(mk_gb_t *b, const char *key, const int32_t *v, uint64_t n);
void mk_gb_arr_f32(mk_gb_t *b, const char *key, const float *v, uint64_t n);
/* The whole file (header + kvs) as a malloc'd buffer; NULL if memory ran out. Frees b's bytes. */
uint8_t *mk_gb_finish(mk_gb_t *b, size_t *size);
void mk_gb_free(mk_gb_t *b);

#endif
