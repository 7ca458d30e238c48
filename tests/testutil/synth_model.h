/* Test helper: writes a small llama-architecture GGUF with deterministic random weights and a
 * byte-level BPE tokenizer ("gpt2": the 256 GPT-2 byte characters, a few merges, <|endoftext|>),
 * so that tests can run the engine on head layouts the demo model does not have (e.g. 8 query
 * heads over 2 KV heads, where T = 3, 4, 8 replicate KV heads).
 *
 * Weights: every matrix entry is uniform in [-a, a) with a = sqrt(3 / fan_in) (variance
 * 1/fan_in), so activations stay O(1) through the layers; token embeddings are uniform in [-1, 1);
 * norm weights are 1 + 0.1 u. Each tensor draws from its own splitmix64 stream derived from
 * (seed, tensor index), so a file is a pure function of the params. Matrices are stored as
 * `wtype` (F32, Q8_0 or Q4_1; the quantized ones need every input width to be a multiple of 32),
 * norms as F32. */
#ifndef MK_SYNTH_MODEL_H
#define MK_SYNTH_MODEL_H

#include <stdbool.h>
#include <stdint.h>

#include "src/quant.h"

typedef struct mk_synth_params {
  int n_layer;     /* default 2 */
  int n_head;      /* default 8 */
  int n_kv_head;   /* default 2 */
  int head_dim;    /* default 16 (n_embd = n_head * head_dim) */
  int n_ff;        /* default 256 */
  int n_ctx;       /* context_length, default 512 */
  mk_type_t wtype; /* matrices (token_embd and output too): F32 (default), Q8_0, Q4_1 */
  bool tied_output; /* default false: a separate output.weight */
  float rope_theta; /* default 10000 */
  float norm_eps;   /* default 1e-5 */
  uint64_t seed;    /* default 1234 */
} mk_synth_params_t;

void mk_synth_params_default(mk_synth_params_t *p);

/* Vocabulary size of every synthetic model (256 byte tokens + merges + <|endoftext|>). */
int mk_synth_n_vocab(void);
/* Id of <|endoftext|> (BOS and EOS). */
int mk_synth_eot_id(void);

/* Writes the model; 0 on success, -1 (with a message on stderr) for invalid params or an I/O
 * error. */
int mk_synth_model_write(const char *path, const mk_synth_params_t *p);

#endif
