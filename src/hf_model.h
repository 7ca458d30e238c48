/* Hugging Face checkpoint directories: config.json + model.safetensors (or shards listed by
 * model.safetensors.index.json) + tokenizer.json / tokenizer_config.json / generation_config.json.
 *
 * The loader exposes a directory through the same two seams as a GGUF file:
 *  - metadata: config.json and the tokenizer files are translated into llama.cpp's GGUF keys
 *    (general.architecture, llama.block_count, tokenizer.ggml.tokens, ...), the mapping of
 *    llama.cpp's convert_hf_to_gguf.py, held in a metadata-only GGUF opened from memory, so
 *    mk_model_config_read, mk_tok_load and mk_chat_detect read it unchanged;
 *  - tensors: a tensor source over the memory-mapped shards under GGUF names, with GGUF shape
 *    order (a safetensors [out, in] weight is ne = [in, out]). Matrices are borrowed from the
 *    mappings (bf16/f16/f32, no copy: a rank touches only the pages of its slices); 1-D tensors
 *    (norms, biases) are converted to f32 copies; llama3 rope_scaling becomes rope_freqs.weight.
 * Transformers' Llama/Qwen2 layout rotates q/k with rotate_half (NeoX pairing) and llama.cpp's
 * converter permutes q/k rows to fit its interleaved RoPE instead; here the rows stay as stored
 * and the metadata says "morphkv.rope_neox" = true.
 *
 * Errors name the file and the tensor: malformed JSON, an unsupported architecture, a missing
 * shard, an index that names a tensor in the wrong file, a shape or dtype that disagrees with
 * config.json, and everything mk_st_parse refuses. */
#ifndef MK_HF_MODEL_H
#define MK_HF_MODEL_H

#include <stdbool.h>
#include <stddef.h>

#include "src/gguf.h"
#include "src/mk_error.h"
#include "src/tensor_source.h"

typedef struct mk_hf mk_hf_t;

/* Whether path is a directory (the CLI's test for "HF checkpoint, not a GGUF file"). */
bool mk_hf_is_dir(const char *path);
int mk_hf_open(const char *dir, mk_hf_t **out, mk_error_t *err);
void mk_hf_close(mk_hf_t *h);

/* The translated metadata (owned by h; never close it yourself). */
mk_gguf_t *mk_hf_meta(const mk_hf_t *h);
mk_tensor_source_t mk_hf_tensor_source(const mk_hf_t *h);

/* For `morphkv inspect`: the i-th tensor's Hugging Face name, its dtype in the file (1-D tensors
 * are served as F32 copies) and the file holding it. i < source count. */
const char *mk_hf_tensor_hf_name(const mk_hf_t *h, size_t i);
int mk_hf_tensor_file_type(const mk_hf_t *h, size_t i);
const char *mk_hf_tensor_file(const mk_hf_t *h, size_t i);
size_t mk_hf_n_files(const mk_hf_t *h);
size_t mk_hf_file_bytes(const mk_hf_t *h); /* total size of the shards */

/* Internal (src/hf_tokenizer.c): writes the tokenizer.* keys from dir's tokenizer files. */
struct mk_gb;
struct json_t;
int mk_hf_tokenizer_meta(const char *dir, const struct json_t *config, int n_vocab, struct mk_gb *b,
                         mk_error_t *err);

#endif
