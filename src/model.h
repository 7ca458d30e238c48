/* Model configuration and weights of the Llama family (llama: Llama 2/3.x, Mistral, SmolLM2;
 * qwen2: QKV bias, NeoX RoPE), bound from a tensor source and sliced by a sharding plan.
 *
 * Shapes (GGUF order, ne[0] = input features): attn_q (n_embd, n_head*d), attn_k/v
 * (n_embd, n_kv*d), attn_output (n_head*d, n_embd), ffn_gate/up (n_embd, n_ff),
 * ffn_down (n_ff, n_embd), token_embd / output (n_embd, n_vocab). A rank keeps the rows of
 * q/k/v/gate/up/output it owns and the column blocks of attn_output/ffn_down it owns (column
 * slices of quantized rows must fall on block boundaries). */
#ifndef MK_MODEL_H
#define MK_MODEL_H

#include <stdbool.h>
#include <stdint.h>

#include "parallel/plan.h"
#include "src/gguf.h"
#include "src/mk_error.h"
#include "src/quant.h"
#include "src/tensor_source.h"

typedef enum mk_arch { MK_ARCH_LLAMA = 0, MK_ARCH_QWEN2 = 1 } mk_arch_t;

typedef struct mk_model_config {
  mk_arch_t arch;
  char arch_name[32];
  char name[128];
  int n_layer, n_embd, n_head, n_kv_head, head_dim, n_ff, n_vocab, n_ctx_train, rope_dim;
  float rope_theta, norm_eps;
  bool rope_neox, qkv_bias, tied_output;
} mk_model_config_t;

typedef struct mk_layer_w {
  mk_qmat_t wq, wk, wv, wo, w_gate, w_up, w_down; /* sliced for this rank */
  const float *attn_norm, *ffn_norm;              /* (n_embd) */
  const float *bq, *bk, *bv;                      /* qwen2 biases, sliced; NULL otherwise */
} mk_layer_w_t;

typedef struct mk_model {
  mk_model_config_t cfg;
  mk_plan_t plan;
  mk_qmat_t tok_embd;   /* (n_vocab rows of n_embd), full table */
  mk_qmat_t output;     /* rows [vocab_begin, vocab_end) */
  const float *out_norm;
  const float *rope_freqs; /* (rope_dim/2) or NULL */
  mk_layer_w_t *layers;  /* (n_layer); only [layer_begin, layer_end) bound (pipeline stage) */
  int layer_begin, layer_end;
  size_t weight_bytes;  /* bytes of the slices this rank reads (its layers; output on the last stage) */
} mk_model_t;

/* Reads hyperparameters from GGUF metadata; refuses unknown architectures by name. */
int mk_model_config_read(const mk_gguf_t *g, mk_model_config_t *cfg, mk_error_t *err);
/* Plan dims for this model. ff_align is the column chunk of ffn_down (a multiple of its block
 * size, see model.c): the plan splits the MLP in whole chunks. */
void mk_model_plan_dims(const mk_model_config_t *cfg, const mk_tensor_source_t *src, mk_plan_dims_t *d);
/* The column chunk of attn_output: lcm(head_dim, block size), i.e. whole query heads. */
int mk_model_attn_out_chunk(const mk_model_config_t *cfg, const mk_tensor_source_t *src);
/* Refuses a tensor-parallel degree whose plan is impossible or whose weight slices would cut a
 * quantization block, naming the degrees that work. */
int mk_model_check_tp(const mk_model_config_t *cfg, const mk_tensor_source_t *src, int tp, mk_error_t *err);
/* Binds (and slices) weights. plan NULL = everything. Errors name the tensor. */
int mk_model_bind(mk_model_t *m, const mk_model_config_t *cfg, const mk_tensor_source_t *src,
                  const mk_plan_t *plan, mk_error_t *err);
/* As mk_model_bind, for one pipeline stage: binds only layers [layer_begin, layer_end) (layer_end
 * < 0: to the last), and counts output.weight in weight_bytes only on the stage ending at the last
 * layer (parallel/plan.h mk_grid_t). */
int mk_model_bind_layers(mk_model_t *m, const mk_model_config_t *cfg, const mk_tensor_source_t *src,
                         const mk_plan_t *plan, int layer_begin, int layer_end, mk_error_t *err);
void mk_model_free(mk_model_t *m);

#endif
