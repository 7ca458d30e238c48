/* Test helper: writes a small llama- or qwen2-architecture GGUF with deterministic random weights
 * and a byte-level BPE tokenizer ("gpt2": the 256 GPT-2 byte characters, a few merges,
 * <|endoftext|>), so that tests can run the engine on layouts and architecture features the demo
 * model does not have (e.g. 8 query heads over 2 KV heads, where T = 3, 4, 8 replicate KV heads;
 * qwen2's QKV biases and NeoX RoPE; Llama-3 rope_freqs; a separate output matrix).
 *
 * Weights: a file is a pure function of the params, by this rule (tests/golden/arch/
 * make_arch_golden.py reproduces it bit for bit in NumPy; keep the two in step):
 *
 *   splitmix64(s): s += 0x9E3779B97F4A7C15; z = s; z = (z ^ z >> 30) * 0xBF58476D1CE4E5B9;
 *                  z = (z ^ z >> 27) * 0x94D049BB133111EB; return z ^ z >> 31      (all mod 2^64)
 *   Tensor number k has its own stream: s = seed ^ (0x9E3779B97F4A7C15 * (k + 1)); one draw is
 *   discarded, then the elements take one draw x each, in file order (row-major: element
 *   r * cols + c for output row r, input column c), through
 *     u = (float)((double)(x >> 11) * 2^-53 * 2.0 - 1.0)    uniform in [-1, 1), one rounding
 *   and then, in single precision with every operation rounded (no fused multiply-add: the project
 *   compiles ISO C11, where GCC does not contract):
 *     matrices:             w = a * u, a = sqrtf(3.0f / (float)fan_in) (variance 1/fan_in, so
 *                           activations stay O(1)); token_embd: a = 1.0f
 *     norm weights:         w = 1.0f + 0.1f * u
 *     attn_{q,k,v}.bias:    w = 0.5f * u
 *     rope_freqs.weight:    w = 2.5f + 1.5f * u       (factors in [1, 4))
 *   Tensor numbers (L = n_layer): token_embd 0, output_norm 1, output 2 (reserved when tied);
 *   layer l: 3 + 9l + j for j = 0..8 = attn_norm, ffn_norm, attn_q, attn_k, attn_v, attn_output,
 *   ffn_gate, ffn_up, ffn_down; rope_freqs 3 + 9L; qwen2 biases of layer l: 4 + 9L + 3l + j for
 *   j = 0..2 = attn_q.bias, attn_k.bias, attn_v.bias.
 * Matrices are stored as `wtype` (F32, Q8_0 or Q4_1; the quantized ones need every input width to
 * be a multiple of 32; only F32 keeps the rule's values exactly), norms, biases and rope_freqs as
 * F32. Metadata keys are "<arch>.*" (llama.block_count or qwen2.block_count, ...). */
#ifndef MK_SYNTH_MODEL_H
#define MK_SYNTH_MODEL_H

#include <stdbool.h>
#include <stdint.h>

#include "src/quant.h"

typedef enum mk_synth_arch {
  MK_SYNTH_LLAMA = 0, /* normal RoPE (pairs 2i, 2i+1), no biases */
  MK_SYNTH_QWEN2 = 1, /* attn_q/k/v.bias (F32), NeoX RoPE (pairs i, i + rope_dim/2) */
} mk_synth_arch_t;

typedef struct mk_synth_params {
  int n_layer;     /* default 2 */
  int n_head;      /* default 8 */
  int n_kv_head;   /* default 2 */
  int head_dim;    /* default 16 (n_embd = n_head * head_dim) */
  int n_ff;        /* default 256 */
  int n_ctx;       /* context_length, default 512 */
  mk_type_t wtype; /* matrices (token_embd and output too): F32 (default), Q8_0, Q4_1 */
  bool tied_output; /* default false: a separate output.weight; true: logits use token_embd */
  float rope_theta; /* default 10000 */
  float norm_eps;   /* default 1e-5 */
  uint64_t seed;    /* default 1234 */
  mk_synth_arch_t arch; /* default MK_SYNTH_LLAMA */
  bool with_rope_freqs; /* default false; true: rope_freqs.weight, head_dim/2 factors in [1, 4) */
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
