/* The engine: model + tokenizer + backend + KV cache, and the forward pass.
 *
 * Forward pass of one batch (n tokens from one or more sequences), for this rank's shard:
 *   x = embed(ids)                                                  (n, n_embd), replicated
 *   per layer:
 *     q,k,v = rmsnorm(x) Wq|Wk|Wv  (+bias)   column-parallel: local heads only
 *     rope(q), rope(k)                         keys are cached post-RoPE
 *     qsum  = per-KV-head sum of q             only if the cache policy scores by logit sums;
 *                                              all-reduced when some KV head is replicated
 *     att   = attention(q, cache)              writes K/V to slots, runs the cache policy
 *     x    += rowpar(att Wo)                   row-parallel (all-reduce, or the ordered chunk sum)
 *     x    += rowpar(swiglu(rmsnorm(x) Wgate, rmsnorm(x) Wup) Wdown)
 *   logits = rmsnorm(x) Wout                   vocab-parallel rows: all-gathered (one collective
 *                                              per step for all output rows), or sampled where
 *                                              they lie (mk_engine_step_sample)
 * Every rank ends with the same full logits, or the same sampled token.
 *
 * Invariance (MK_NUMERICS_DETERMINISTIC, --deterministic on; README "Numerics"). The logits do not
 * depend on the rank count T nor on the batch:
 * - rowpar: the output is the left-to-right sum of the partials of fixed column chunks (one
 *   query head of attn_output; the plan's ff unit of ffn_down), whatever T is. A rank computes
 *   the partials of its chunks, all ranks all-gather them and add all n_chunks of them in chunk
 *   order; T = 1 computes every chunk and adds them in the same order (mk_matmul_chunks).
 * - column-parallel products (Q/K/V, gate/up, LM head) and every kernel give a row the same bits
 *   whatever rows or tokens share the call (src/quant.h), so slices and batches change nothing.
 * - the replicated-KV query sum: every rank all-gathers the query vectors of the replicated heads
 *   (not partial sums) and adds them in head order, the order group_qsum uses for the others.
 * - RMSNorm, RoPE, attention and softmax are per row and per head, in slot order.
 * MK_NUMERICS_FAST keeps the old path: one matmul per layer and an all-reduce of the rank
 * partials (their grouping depends on T).
 *
 * Collectives. Every payload handed to the communicator is backend memory (device memory on
 * CUDA): e->comm is ctx->comm (MPI, host memory) on the CPU backend and a communicator bound to
 * the backend (NCCL, or MPI staged through pinned memory) on a device backend
 * (mk_ctx_comm_for_backend). Payloads that are not contiguous (the replicated heads' query sums,
 * padded vocabulary slices) are packed with ops->copy2d first, so each is one collective. The
 * deterministic query-sum gather is small and runs on host memory (mk_comm_allgather_host).
 *
 * Pipeline stages (--pp P, parallel/plan.h mk_grid_t). The world is P stages of T ranks; a rank
 * binds, prepares and caches only its stage's layers [layer_begin, layer_end) (cache layer index =
 * l - layer_begin), the first stage embeds, the others receive x (n, n_embd) from the same TP rank
 * of the previous stage, and every stage but the last sends x on (stage_p2p). e->comm is then the
 * stage's TP group (ctx->tp_comm); the point-to-point messages and the broadcasts of the last
 * stage's logits / sampled token run on the world (ctx->comm), so every rank calls forward() with
 * the same batches in the same order and keeps the same token stream. Pure PP changes no
 * arithmetic: each layer runs exactly as it would in one process. On a device backend the rows go
 * through pinned host memory (MPI staging) and each stage's TP group has its own communicator
 * bound to the backend (NCCL or staged MPI over the stage's ranks, mk_ctx_comm_for_backend).
 *
 * Pipelined micro-batches (mk_engine_pipe_tick). With several sequences the stages work at once:
 * at tick t a new micro-batch enters stage 0 and stage s runs the one that entered at tick t - s,
 * so a micro-batch leaves the last stage P - 1 ticks after it entered. Each tick is, on every
 * rank: receive the input rows (stage > 0), run the layers (the last stage: the head), broadcast
 * what the micro-batch leaving the last stage produced (its logits, or the token ids the last
 * stage picked from them: mk_engine_pipe_share_tokens), send the rows on (stage < P - 1). The
 * sends of tick t are received at tick t + 1, after the broadcast every rank joins, so no cycle
 * of waits exists. A micro-batch's positions are fixed when it enters (n_past advances then), and
 * every stage runs the micro-batches in the order they entered, so each stage's cache sees the
 * same spans in the same order as without pipelining: the arithmetic is unchanged. */
#define _POSIX_C_SOURCE 200809L
#include "src/engine.h"

#include "kvcache/driver.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "parallel/ctx.h"
#include "parallel/plan.h"
#include "src/hf_model.h"

/* A row-parallel layer's fixed column chunks (deterministic numerics). */
typedef struct rp_chunks {
  int chunk_cols; /* columns per chunk (the last may be shorter) */
  int n_chunks;   /* over the whole matrix */
  int max_loc;    /* most chunks one rank holds: every rank's all-gather slot holds that many */
  int *idx;       /* (n_chunks) global chunk k sits at part idx[k] of the gathered buffer */
} rp_chunks_t;

/* Tokens per all-gather of chunk partials (bounds the buffers at prefill). */
#define MK_RP_SLAB 128

typedef struct layer_bw {
  mk_bweight_t wq, wk, wv, wo, w_gate, w_up, w_down;
  float *attn_norm, *ffn_norm, *bq, *bk, *bv; /* backend memory */
} layer_bw_t;

/* One forward pass's batch as every stage needs it: the spans, the token ids (used by the first
 * stage), the output rows. Grow-only buffers. */
typedef struct micro_batch {
  int n_tok, n_spans, n_out;
  mk_seq_span_t *spans;
  int32_t *ids;
  int *rows;
  int cap_tok, cap_spans;
  bool live; /* false: an empty tick (nothing entered the pipeline) */
} micro_batch_t;

static void mb_free(micro_batch_t *mb) {
  free(mb->spans);
  free(mb->ids);
  free(mb->rows);
  memset(mb, 0, sizeof *mb);
}

struct mk_engine {
  mk_ctx_t *ctx; /* NULL: a world of one */
  mk_gguf_t *g;  /* the GGUF file, or a HF directory's translated metadata (owned by hf) */
  mk_hf_t *hf;   /* --model DIR: a Hugging Face checkpoint (src/hf_model.h); NULL for GGUF */
  mk_tokenizer_t *tok;
  mk_model_t model;
  mk_backend_t be;
  layer_bw_t *lw;
  mk_bweight_t tok_embd, output;
  float *out_norm, *rope_freqs;
  int n_q, n_kv, d, n_ff_loc, n_vocab_loc, vocab_slice_max;
  int *q_to_kv; /* (n_q) */
  int *vocab_begin_r, *vocab_len_r; /* (tp) every rank's vocabulary slice */
  /* activations, backend memory, capacity cap_tok rows */
  int cap_tok;
  float *x, *xn, *q, *k, *v, *qsum, *att, *o, *fg, *fu, *logits_loc;
  float *x_host; /* host (cap_tok, n_embd): x staged stage to stage on a device backend (pp > 1) */
  /* Replicated-head score sync: the KV heads held by more than one rank (same list on every
   * rank), and for each the local index here or -1. Only their query sums are all-reduced. */
  int n_rep, *rep_local;
  float *qsum_glob;   /* host (d): one ordered query sum */
  /* deterministic numerics */
  bool fast;                 /* MK_NUMERICS_FAST */
  rp_chunks_t rp_o, rp_down; /* attn_output, ffn_down */
  float *parts, *gath;       /* backend: (max_loc, slab, n_embd), (tp, max_loc, slab, n_embd) */
  /* Ordered query sum of replicated heads: this rank sends the vectors of its query heads that
   * read a replicated KV head (qs_send_u: local query heads, qs_n of them; qs_m = the most any
   * rank sends); qs_src[i*g + k] = where query head k of replicated head i sits in the gather. */
  int qs_n, qs_m, *qs_send_u, *qs_src;
  float *qs_send, *qs_recv;  /* host (n, qs_m, d), (tp, n, qs_m, d) */
  float *qsum_pack;   /* backend (n, n_rep, d): the all-reduced payload */
  float *zeros;       /* backend (n, d), never written: the slots of heads this rank lacks */
  /* LM-head exchange, grow-only, sized by output rows (cap_out) */
  int cap_out;
  float *logits_pack; /* backend (rows, vocab_slice_max): this rank's slice, padded */
  float *logits_all;  /* backend (tp, rows, vocab_slice_max): all-gather target */
  float *logits_pad;  /* host copy of logits_all */
  float *logits_host; /* host (vocab_slice_max): the sampled row's slice */
  float *logits_whole; /* host (n_vocab): the sampled row, where the sampler needs all of it */
  mk_sample_cand_t *cand_mine, *cand_all; /* host: the distributed sampler's exchange */
  int cap_cand;
  mk_comm_t *comm;    /* the forward pass's TP collectives (this stage's group); NULL in a world of one */
  mk_grid_t grid;     /* pipeline position (pp 1: one stage, every layer) */
  bool own_comm;      /* device backends: made for this engine */
  int32_t *pos_buf;
  int *prow; /* (cap_tok) policy rows of the batch */
  mk_kv_cache_t cache;
  bool have_cache;
  int n_seq;
  int *n_past;
  /* pipelined micro-batches (mk_engine_pipe_tick): pipe[t % pp] entered at tick t */
  micro_batch_t *pipe;
  long long pipe_tick;
  micro_batch_t mb_once; /* mk_engine_step_items' batch */
  /* where this rank's engine time goes (mk_engine_stats_t busy_s / stage_wait_s) */
  double t_busy, t_stage_wait;
  double t_busy_cpu; /* CPU seconds of the process over the same spans as t_busy */
};

const mk_model_config_t *mk_engine_config(const mk_engine_t *e) { return &e->model.cfg; }
const mk_tokenizer_t *mk_engine_tokenizer(const mk_engine_t *e) { return e->tok; }
const mk_gguf_t *mk_engine_gguf(const mk_engine_t *e) { return e->g; }
int mk_engine_n_vocab(const mk_engine_t *e) { return e->model.cfg.n_vocab; }
mk_kv_cache_t *mk_engine_cache(mk_engine_t *e) { return e->have_cache ? &e->cache : NULL; }
int mk_engine_n_past(const mk_engine_t *e, int seq) {
  return (e->have_cache && seq >= 0 && seq < e->n_seq) ? e->n_past[seq] : 0;
}

static int tp_of(const mk_engine_t *e) { return e->model.plan.tp; }

static float *upload_vec(mk_engine_t *e, const float *host, size_t n, mk_error_t *err) {
  float *p = e->be.ops->alloc(&e->be, n * sizeof(float));
  if (!p) {
    mk_fail(err, "out of backend memory");
    return NULL;
  }
  if (e->be.ops->upload(&e->be, p, host, n * sizeof(float), err) != 0) return NULL;
  return p;
}

static int prepare_weights(mk_engine_t *e, mk_error_t *err) {
  const mk_model_t *m = &e->model;
  const mk_backend_ops_t *o = e->be.ops;
  int L = m->cfg.n_layer, ne = m->cfg.n_embd;
  e->lw = calloc((size_t)L, sizeof *e->lw);
  if (!e->lw) return mk_fail(err, "out of memory");
  (void)L;
  if (e->grid.first && o->weight_prepare(&e->be, &m->tok_embd, &e->tok_embd, err)) return -1;
  if (e->grid.last && o->weight_prepare(&e->be, &m->output, &e->output, err)) return -1;
  if (e->grid.last && !(e->out_norm = upload_vec(e, m->out_norm, (size_t)ne, err))) return -1;
  if (m->rope_freqs && !(e->rope_freqs = upload_vec(e, m->rope_freqs, (size_t)m->cfg.rope_dim / 2, err))) return -1;
  for (int l = e->grid.layer_begin; l < e->grid.layer_end; l++) { /* this stage's layers only */
    const mk_layer_w_t *s = &m->layers[l];
    layer_bw_t *w = &e->lw[l];
    if (o->weight_prepare(&e->be, &s->wq, &w->wq, err) || o->weight_prepare(&e->be, &s->wk, &w->wk, err) ||
        o->weight_prepare(&e->be, &s->wv, &w->wv, err) || o->weight_prepare(&e->be, &s->wo, &w->wo, err) ||
        o->weight_prepare(&e->be, &s->w_gate, &w->w_gate, err) ||
        o->weight_prepare(&e->be, &s->w_up, &w->w_up, err) ||
        o->weight_prepare(&e->be, &s->w_down, &w->w_down, err)) {
      mk_error_prefix(err, "layer %d", l);
      return -1;
    }
    if (!(w->attn_norm = upload_vec(e, s->attn_norm, (size_t)ne, err))) return -1;
    if (!(w->ffn_norm = upload_vec(e, s->ffn_norm, (size_t)ne, err))) return -1;
    if (s->bq) {
      if (!(w->bq = upload_vec(e, s->bq, (size_t)e->n_q * e->d, err))) return -1;
      if (!(w->bk = upload_vec(e, s->bk, (size_t)e->n_kv * e->d, err))) return -1;
      if (!(w->bv = upload_vec(e, s->bv, (size_t)e->n_kv * e->d, err))) return -1;
    }
  }
  return 0;
}

/* Chunk layout of a row-parallel layer of `total` columns of which rank r holds [beg[r], end[r])
 * (every beg[r] a chunk boundary: the plan and mk_model_check_tp see to that). */
static int rp_init(rp_chunks_t *c, int chunk_cols, int total, const int *beg, const int *end, int world) {
  c->chunk_cols = chunk_cols;
  c->n_chunks = (total + chunk_cols - 1) / chunk_cols;
  c->max_loc = 0;
  for (int r = 0; r < world; r++) {
    int n = (end[r] - beg[r] + chunk_cols - 1) / chunk_cols;
    if (n > c->max_loc) c->max_loc = n;
  }
  c->idx = malloc(sizeof(int) * (size_t)c->n_chunks);
  if (!c->idx) return -1;
  for (int r = 0; r < world; r++)
    for (int j = 0; j < (end[r] - beg[r] + chunk_cols - 1) / chunk_cols; j++)
      c->idx[beg[r] / chunk_cols + j] = r * c->max_loc + j;
  return 0;
}

/* Where every rank's query heads of replicated KV heads go in the ordered query-sum gather. */
static int qs_init(mk_engine_t *e, const mk_plan_t *pl, int world) {
  const mk_model_config_t *c = &e->model.cfg;
  const int g = c->n_head / c->n_kv_head, rank = e->model.plan.rank;
  int *holders = calloc((size_t)c->n_kv_head, sizeof(int)), *cnt = calloc((size_t)world, sizeof(int));
  e->qs_src = malloc(sizeof(int) * (size_t)(e->n_rep ? e->n_rep : 1) * g);
  e->qs_send_u = malloc(sizeof(int) * (size_t)(e->n_rep ? e->n_rep : 1) * g);
  int rc = holders && cnt && e->qs_src && e->qs_send_u ? 0 : -1;
  for (int r = 0; r < world && rc == 0; r++)
    for (int h = pl[r].kv_begin; h < pl[r].kv_end; h++) holders[h]++;
  for (int pass = 0; pass < 2 && rc == 0; pass++) { /* pass 0 counts, pass 1 fills */
    int i = 0;
    memset(cnt, 0, sizeof(int) * (size_t)world);
    for (int h = 0; h < c->n_kv_head; h++) {
      if (holders[h] < 2) continue;
      for (int k = 0; k < g; k++) {
        int u = h * g + k, r = 0;
        while (!(u >= pl[r].q_begin && u < pl[r].q_end)) r++;
        if (pass == 1) {
          e->qs_src[i * g + k] = r * e->qs_m + cnt[r];
          if (r == rank) e->qs_send_u[cnt[r]] = u - pl[r].q_begin;
        }
        cnt[r]++;
      }
      i++;
    }
    if (pass == 0)
      for (int r = 0; r < world; r++)
        if (cnt[r] > e->qs_m) e->qs_m = cnt[r];
  }
  if (rc == 0) e->qs_n = cnt[rank];
  free(holders);
  free(cnt);
  return rc;
}

/* Deterministic numerics: the chunk layouts of attn_output and ffn_down and the ordered query sum. */
static int numerics_init(mk_engine_t *e, const mk_tensor_source_t *src, int world, mk_error_t *err) {
  const mk_model_config_t *c = &e->model.cfg;
  mk_plan_dims_t dims;
  mk_model_plan_dims(c, src, &dims);
  mk_plan_t *pl = malloc(sizeof *pl * (size_t)world);
  int *b = malloc(sizeof(int) * 4 * (size_t)world);
  if (!pl || !b) {
    free(pl);
    free(b);
    return mk_fail(err, "out of memory");
  }
  int rc = 0;
  if (world == 1) pl[0] = e->model.plan;
  for (int r = 0; r < world && world > 1 && rc == 0; r++) rc = mk_plan_make(&dims, world, r, &pl[r], err);
  for (int r = 0; r < world && rc == 0; r++) {
    b[r] = pl[r].q_begin * c->head_dim, b[world + r] = pl[r].q_end * c->head_dim;
    b[2 * world + r] = pl[r].ff_begin, b[3 * world + r] = pl[r].ff_end;
  }
  if (rc == 0 && (rp_init(&e->rp_o, mk_model_attn_out_chunk(c, src), c->n_head * c->head_dim, b, b + world, world) ||
                  rp_init(&e->rp_down, dims.ff_align, c->n_ff, b + 2 * world, b + 3 * world, world) ||
                  (e->n_rep > 0 && qs_init(e, pl, world))))
    rc = mk_fail(err, "out of memory");
  free(pl);
  free(b);
  return rc;
}

/* The end of mk_engine_open on every rank: all ranks learn whether any failed (so that none waits
 * in a collective for a rank that gave up, and every rank can say why), then the communicator for
 * this backend. status: this rank's so far (0, or -1 with err). */
static int open_comm(mk_engine_t *e, int status, mk_comm_kind_t want, mk_error_t *err) {
  if (e->ctx->world > 1 ? mk_ctx_agree(e->ctx, status, err) != 0 : status != 0) return -1;
  mk_comm_t *c = NULL;
  if (e->grid.pp > 1 && mk_ctx_split_stages(e->ctx, e->grid.tp, err) != 0) return -1;
  if (mk_ctx_comm_for_backend(e->ctx, want, &e->be, &c, err) != 0) return -1;
  e->own_comm = c != NULL;
  e->comm = c ? c : mk_ctx_tp_comm(e->ctx);
  return 0;
}

/* This rank's plan (planp NULL for a world of one: the model owns everything). */
static int plan_rank(const mk_model_config_t *cfg, const mk_tensor_source_t *src, int world, int rank,
                     mk_plan_t *plan, const mk_plan_t **planp, mk_error_t *err) {
  *planp = NULL;
  if (world <= 1) return 0;
  mk_plan_dims_t dims;
  mk_model_plan_dims(cfg, src, &dims);
  if (mk_model_check_tp(cfg, src, world, err) != 0) return -1;
  if (mk_plan_make(&dims, world, rank, plan, err) != 0) return -1;
  *planp = plan;
  return 0;
}

/* What this rank needs to know about all the others (parallel/plan.h, mk_plan_world): every
 * rank's vocabulary slice for the LM-head all-gather, and the replicated KV heads with their local
 * index here (or -1) for the score sync. The same lists on every rank. */
static int plan_world(mk_engine_t *e, const mk_tensor_source_t *src, int world, mk_error_t *err) {
  const mk_model_config_t *cfg = &e->model.cfg;
  const mk_plan_t *pl = &e->model.plan;
  e->vocab_begin_r = calloc((size_t)world, sizeof(int));
  e->vocab_len_r = calloc((size_t)world, sizeof(int));
  e->rep_local = malloc(sizeof(int) * (size_t)cfg->n_kv_head);
  if (!e->vocab_begin_r || !e->vocab_len_r || !e->rep_local) return mk_fail(err, "out of memory");
  e->vocab_len_r[0] = e->vocab_slice_max = e->n_vocab_loc;
  if (world <= 1) return 0;
  mk_plan_dims_t dims;
  mk_plan_world_t w;
  mk_model_plan_dims(cfg, src, &dims);
  if (mk_plan_world(&dims, world, e->vocab_begin_r, e->vocab_len_r, e->rep_local, &w, err) != 0) return -1;
  e->vocab_slice_max = w.vocab_slice_max;
  e->n_rep = w.n_rep;
  for (int i = 0; i < e->n_rep; i++) {
    int h = e->rep_local[i];
    e->rep_local[i] = (h >= pl->kv_begin && h < pl->kv_end) ? h - pl->kv_begin : -1;
  }
  return 0;
}

/* The pipeline grid (parallel/plan.h): P stages of T = world / P ranks. *world and *rank become the
 * TP group's size and this rank's index in it, which is all the TP plan sees. */
static int open_grid(mk_engine_t *e, const mk_engine_params_t *p, const mk_model_config_t *cfg, int *world,
                     int *rank, mk_error_t *err) {
  const int w = e->ctx ? e->ctx->world : 1, pp = p->pp > 1 ? p->pp : 1;
  int tp = mk_grid_tp(cfg->n_layer, w, pp, err);
  if (tp < 0) return -1;
  if (p->tp > 0 && p->tp != tp)
    return mk_fail(err, "--tp %d does not match the number of ranks (%d) over %d pipeline stage%s; launch with "
                   "mpirun -np %d", p->tp, w, pp, pp == 1 ? "" : "s", p->tp * pp);
  if (mk_grid_make(cfg->n_layer, pp, tp, e->ctx ? e->ctx->rank : 0, &e->grid, err) != 0) return -1;
  *world = tp;
  *rank = e->grid.tp_rank;
  return 0;
}

int mk_engine_open(mk_engine_t **out, const mk_engine_params_t *p, mk_ctx_t *ctx, mk_error_t *err) {
  *out = NULL;
  mk_engine_t *e = calloc(1, sizeof *e);
  if (!e) return mk_fail(err, "out of memory");
  e->ctx = ctx;
  mk_model_config_t cfg;
  if (mk_hf_is_dir(p->model_path)) {
    if (mk_hf_open(p->model_path, &e->hf, err) != 0) goto fail;
    e->g = mk_hf_meta(e->hf);
  } else if (mk_gguf_open(p->model_path, &e->g, err) != 0) {
    goto fail;
  }
  if (mk_model_config_read(e->g, &cfg, err) != 0) goto fail;
  mk_tensor_source_t src = e->hf ? mk_hf_tensor_source(e->hf) : mk_gguf_tensor_source(e->g);
  if (cfg.n_vocab == 0) {
    const mk_tensor_info_t *emb = mk_tensor_find(&src, "token_embd.weight");
    if (emb) cfg.n_vocab = (int)emb->ne[1];
  }
  int world = 1, rank = 0;
  if (open_grid(e, p, &cfg, &world, &rank, err) != 0) goto fail;
  mk_plan_t plan;
  const mk_plan_t *planp;
  if (plan_rank(&cfg, &src, world, rank, &plan, &planp, err) != 0) goto fail;
  if (mk_model_bind_layers(&e->model, &cfg, &src, planp, e->grid.layer_begin, e->grid.layer_end, err) != 0) {
    mk_error_prefix(err, "%s", p->model_path);
    goto fail;
  }
  if (mk_tok_load(e->g, &e->tok, err) != 0) {
    mk_error_prefix(err, "%s: tokenizer", p->model_path);
    goto fail;
  }
  const mk_plan_t *pl = &e->model.plan;
  e->d = cfg.head_dim;
  e->n_q = pl->q_end - pl->q_begin;
  e->n_kv = pl->kv_end - pl->kv_begin;
  e->n_ff_loc = pl->ff_end - pl->ff_begin;
  e->n_vocab_loc = pl->vocab_end - pl->vocab_begin;
  if (plan_world(e, &src, world, err) != 0) goto fail;
  e->q_to_kv = malloc(sizeof(int) * (size_t)e->n_q);
  if (!e->q_to_kv) {
    mk_fail(err, "out of memory");
    goto fail;
  }
  int g = cfg.n_head / cfg.n_kv_head;
  for (int i = 0; i < e->n_q; i++) e->q_to_kv[i] = (pl->q_begin + i) / g - pl->kv_begin;
  e->fast = p->numerics == MK_NUMERICS_FAST;
  if (numerics_init(e, &src, world, err) != 0) goto fail;
  if (mk_backend_init(&e->be, &p->backend, err) != 0) goto fail;
  if (!e->fast && (!e->be.ops->matmul_chunks || !e->be.ops->sum_parts)) {
    mk_fail(err, "backend %s has no chunked matmul, so it cannot keep the deterministic numerics; run with "
            "--deterministic off", e->be.ops->name);
    goto fail;
  }
  if (prepare_weights(e, err) != 0) goto fail;
  if (ctx && open_comm(e, 0, p->comm, err) != 0) goto fail_agreed;
  *out = e;
  return 0;
fail:
  if (ctx) open_comm(e, -1, p->comm, err);
fail_agreed:
  mk_engine_close(e);
  return -1;
}

static void free_acts(mk_engine_t *e) {
  if (!e->be.ops) return;
  float **bufs[] = {&e->x, &e->xn, &e->q, &e->k, &e->v, &e->qsum, &e->att, &e->o, &e->fg, &e->fu, &e->logits_loc};
  for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) {
    if (*bufs[i]) e->be.ops->dealloc(&e->be, *bufs[i]);
    *bufs[i] = NULL;
  }
  if (e->parts) e->be.ops->dealloc(&e->be, e->parts);
  if (e->gath) e->be.ops->dealloc(&e->be, e->gath);
  e->parts = e->gath = NULL;
  free(e->qs_send);
  free(e->qs_recv);
  free(e->qsum_glob);
  free(e->prow);
  e->qs_send = e->qs_recv = e->qsum_glob = NULL;
  e->prow = NULL;
  float **more[] = {&e->qsum_pack, &e->zeros, &e->logits_pack, &e->logits_all};
  for (size_t i = 0; i < sizeof more / sizeof more[0]; i++) {
    if (*more[i]) e->be.ops->dealloc(&e->be, *more[i]);
    *more[i] = NULL;
  }
  if (e->logits_pad) e->be.ops->host_free(&e->be, e->logits_pad);
  if (e->logits_host) e->be.ops->host_free(&e->be, e->logits_host);
  if (e->x_host) e->be.ops->host_free(&e->be, e->x_host);
  e->x_host = NULL;
  free(e->logits_whole);
  free(e->cand_mine);
  free(e->cand_all);
  e->logits_whole = NULL;
  free(e->pos_buf);
  e->logits_pad = e->logits_host = NULL;
  e->cand_mine = e->cand_all = NULL;
  e->pos_buf = NULL;
  e->cap_tok = e->cap_out = e->cap_cand = 0;
}

void mk_engine_close(mk_engine_t *e) {
  if (!e) return;
  free_acts(e);
  if (e->own_comm) mk_comm_free(e->comm);
  e->comm = NULL;
  if (e->have_cache) mk_kv_cache_free(&e->cache);
  if (e->be.ops) {
    const mk_backend_ops_t *o = e->be.ops;
    if (e->lw) {
      for (int l = 0; l < e->model.cfg.n_layer; l++) {
        layer_bw_t *w = &e->lw[l];
        mk_bweight_t *ws[] = {&w->wq, &w->wk, &w->wv, &w->wo, &w->w_gate, &w->w_up, &w->w_down};
        for (int i = 0; i < 7; i++) o->weight_release(&e->be, ws[i]);
        float *vs[] = {w->attn_norm, w->ffn_norm, w->bq, w->bk, w->bv};
        for (int i = 0; i < 5; i++)
          if (vs[i]) o->dealloc(&e->be, vs[i]);
      }
    }
    o->weight_release(&e->be, &e->tok_embd);
    o->weight_release(&e->be, &e->output);
    if (e->out_norm) o->dealloc(&e->be, e->out_norm);
    if (e->rope_freqs) o->dealloc(&e->be, e->rope_freqs);
    o->free(&e->be);
  }
  free(e->lw);
  free(e->q_to_kv);
  free(e->rep_local);
  free(e->rp_o.idx);
  free(e->rp_down.idx);
  free(e->qs_src);
  free(e->qs_send_u);
  free(e->vocab_begin_r);
  free(e->vocab_len_r);
  free(e->n_past);
  for (int i = 0; e->pipe && i < mk_engine_pipe_depth(e); i++) mb_free(&e->pipe[i]);
  free(e->pipe);
  mb_free(&e->mb_once);
  mk_model_free(&e->model);
  mk_tok_free(e->tok);
  if (e->hf) mk_hf_close(e->hf);
  else mk_gguf_close(e->g);
  free(e);
}

static int ensure_acts(mk_engine_t *e, int n, mk_error_t *err) {
  if (n <= e->cap_tok) return 0;
  free_acts(e);
  const mk_model_config_t *c = &e->model.cfg;
  const mk_backend_ops_t *o = e->be.ops;
  size_t N = (size_t)n, D = (size_t)e->d;
  struct { float **p; size_t n; } want[] = {
      {&e->x, N * c->n_embd},          {&e->xn, N * c->n_embd},
      {&e->q, N * e->n_q * D},         {&e->k, N * e->n_kv * D},
      {&e->v, N * e->n_kv * D},        {&e->qsum, N * (e->n_kv ? e->n_kv : 1) * D},
      {&e->att, N * e->n_q * D},       {&e->o, N * c->n_embd},
      {&e->fg, N * (e->n_ff_loc ? e->n_ff_loc : 1)}, {&e->fu, N * (e->n_ff_loc ? e->n_ff_loc : 1)},
      {&e->logits_loc, N * e->vocab_slice_max},
  };
  for (size_t i = 0; i < sizeof want / sizeof want[0]; i++)
    if (!(*want[i].p = o->alloc(&e->be, want[i].n * sizeof(float))))
      return mk_fail(err, "out of memory for activations of %d tokens", n);
  if (e->n_rep > 0 && (!(e->qsum_pack = o->alloc(&e->be, N * (size_t)e->n_rep * D * sizeof(float))) ||
                       !(e->zeros = o->alloc(&e->be, N * D * sizeof(float)))))
    return mk_fail(err, "out of memory for the score sync of %d tokens", n);
  e->logits_host = o->host_alloc(&e->be, (size_t)e->vocab_slice_max * sizeof(float));
  if (e->grid.pp > 1 && e->be.comm.device_memory && !(e->x_host = o->host_alloc(&e->be, N * c->n_embd * sizeof(float))))
    return mk_fail(err, "out of pinned host memory for the stage-to-stage rows of %d tokens", n);
  e->pos_buf = malloc(N * sizeof(int32_t));
  e->prow = malloc(N * sizeof(int));
  e->qsum_glob = malloc(D * sizeof(float));
  if (!e->logits_host || !e->pos_buf || !e->prow || !e->qsum_glob) return mk_fail(err, "out of memory for %d tokens", n);
  const int tp = tp_of(e);
  if (!e->fast && tp > 1) {
    int ml = e->rp_o.max_loc > e->rp_down.max_loc ? e->rp_o.max_loc : e->rp_down.max_loc;
    size_t part = (size_t)ml * (size_t)(n < MK_RP_SLAB ? n : MK_RP_SLAB) * c->n_embd;
    e->parts = o->alloc(&e->be, part * sizeof(float)); /* the padding of the all-gather slot is sent too */
    e->gath = o->alloc(&e->be, part * (size_t)tp * sizeof(float));
    size_t qs = N * (size_t)(e->qs_m ? e->qs_m : 1) * D;
    e->qs_send = calloc(qs, sizeof(float));
    e->qs_recv = malloc(qs * (size_t)tp * sizeof(float));
    if (!e->parts || !e->gath || !e->qs_send || !e->qs_recv)
      return mk_fail(err, "out of memory for the chunk partials of %d tokens", n);
  }
  e->cap_tok = n;
  return 0;
}

/* The LM-head all-gather buffers for n_out rows (grow-only; only for tp > 1). */
static int ensure_gather(mk_engine_t *e, int n_out, mk_error_t *err) {
  if (n_out <= e->cap_out) return 0;
  const mk_backend_ops_t *o = e->be.ops;
  float **dev[] = {&e->logits_pack, &e->logits_all};
  for (int i = 0; i < 2; i++)
    if (*dev[i]) o->dealloc(&e->be, *dev[i]), *dev[i] = NULL;
  if (e->logits_pad) o->host_free(&e->be, e->logits_pad);
  const size_t row = (size_t)n_out * e->vocab_slice_max * sizeof(float);
  e->cap_out = 0;
  e->logits_pack = o->alloc(&e->be, row);
  e->logits_all = o->alloc(&e->be, row * (size_t)tp_of(e));
  e->logits_pad = o->host_alloc(&e->be, row * (size_t)tp_of(e));
  if (!e->logits_pack || !e->logits_all || !e->logits_pad)
    return mk_fail(err, "out of memory for the logits of %d rows", n_out);
  e->cap_out = n_out;
  return 0;
}

int mk_engine_begin(mk_engine_t *e, const mk_kv_config_t *kv, int n_seq, int max_prompt, int max_total,
                    mk_error_t *err) {
  const mk_model_config_t *c = &e->model.cfg;
  if (e->have_cache) {
    mk_kv_cache_free(&e->cache);
    e->have_cache = false;
  }
  free(e->n_past);
  e->n_past = NULL;
  e->pipe_tick = 0;
  for (int i = 0; e->pipe && i < mk_engine_pipe_depth(e); i++) e->pipe[i].live = false;
  e->t_busy = e->t_stage_wait = e->t_busy_cpu = 0;
  if (n_seq <= 0) return mk_fail(err, "need at least one sequence");
  if (max_prompt <= 0 || max_total < max_prompt)
    return mk_fail(err, "bad run length: prompt %d tokens, total %d", max_prompt, max_total);
  if (max_total > c->n_ctx_train)
    return mk_fail(err, "%d tokens (prompt + new tokens) exceed the model's context of %d tokens",
                   max_total, c->n_ctx_train);
  if (e->n_kv <= 0) return mk_fail(err, "this rank holds no KV heads");
  if (e->n_rep > 0) {
    /* Replicas stay in lockstep only through the query-sum identity (logit_sum scoring). Rules
     * that are nonlinear in q (per-head softmax) would need per-row probability sync. */
    const mk_kv_policy_ops_t *po = mk_kv_policy_get(kv->policy);
    unsigned nd = po ? po->needs(kv) : 0;
    if (nd & (MK_KV_NEED_PROB_SUM | MK_KV_NEED_PER_HEAD))
      return mk_fail(err, "cache policy %s%s scores with per-head probabilities, which tensor parallelism over %d ranks "
                     "cannot keep identical on KV heads replicated across ranks; use a rank count that divides the "
                     "%d KV heads, or morphkv with --kv-gqa logit_sum",
                     mk_kv_policy_name(kv->policy), kv->policy == MK_KV_MORPHKV ? " (prob_max)" : "",
                     e->model.plan.tp, c->n_kv_head);
  }
  mk_kv_cache_params_t cp = {.n_seq = n_seq,
                             .n_layer = e->grid.layer_end - e->grid.layer_begin, /* this stage's */
                             .n_heads = e->n_kv,
                             .head_dim = e->d,
                             .group = c->n_head / c->n_kv_head,
                             .max_prompt = max_prompt,
                             .max_total = max_total,
                             .first_kv_head = e->model.plan.kv_begin};
  if (mk_kv_cache_init(&e->cache, kv, &cp, err) != 0) return -1;
  e->have_cache = true;
  e->n_seq = n_seq;
  e->n_past = calloc((size_t)n_seq, sizeof(int));
  if (!e->n_past) return mk_fail(err, "out of memory");
  return 0;
}

void mk_engine_reset_seq(mk_engine_t *e, int seq) {
  if (!e->have_cache || seq < 0 || seq >= e->n_seq) return;
  mk_kv_cache_reset_seq(&e->cache, seq);
  e->n_past[seq] = 0;
}

static int comm_allreduce(mk_engine_t *e, float *buf, size_t n, bool score, mk_error_t *err) {
  return mk_comm_allreduce_sum_f32(e->comm, score ? MK_COMM_SCORE : MK_COMM_MODEL, buf, n, err);
}

/* Score sync for replicated KV heads (kvcache/kvcache.h): logits are linear in q, so the group's
 * summed logit row is K . (sum of the group's queries). Every replica all-reduces its partial query
 * sum of each replicated head and then scores with the identical total, so all replicas make the
 * same eviction decisions. Only the rows the policy will read are sent: every decode row, and the
 * last prefill_rows rows of a prefill. They are packed on the backend into qsum_pack (rows, n_rep,
 * d), zeros where this rank lacks the head, so the layer's sync is one all-reduce on backend memory.
 * Returns the number of rows synced, or -1. */
static int pack_rows(mk_engine_t *e, const mk_seq_span_t *spans, int n_spans, bool unpack, mk_error_t *err) {
  const mk_backend_ops_t *o = e->be.ops;
  const size_t d = (size_t)e->d, nr = (size_t)e->n_rep, loc = (size_t)e->n_kv * d, f = sizeof(float);
  const int pre = e->cache.ops->prefill_rows(&e->cache.cfg);
  int rows = 0;
  for (int s = 0; s < n_spans;) {
    /* a run of adjacent rows: consecutive spans whose read rows touch */
    int first = spans[s].prefill && spans[s].n > pre ? spans[s].n - pre : 0;
    int t0 = spans[s].row + first, t1 = spans[s].row + spans[s].n;
    for (s++; s < n_spans && !spans[s].prefill && spans[s].row == t1; s++) t1 += spans[s].n;
    for (size_t i = 0; i < nr; i++) {
      float *pk = e->qsum_pack + ((size_t)rows * nr + i) * d;
      int rc;
      if (e->rep_local[i] < 0)
        rc = unpack ? 0 : o->copy2d(&e->be, pk, nr * d * f, e->zeros, d * f, d * f, (size_t)(t1 - t0), err);
      else {
        float *q = e->qsum + (size_t)t0 * loc + (size_t)e->rep_local[i] * d;
        rc = unpack ? o->copy2d(&e->be, q, loc * f, pk, nr * d * f, d * f, (size_t)(t1 - t0), err)
                    : o->copy2d(&e->be, pk, nr * d * f, q, loc * f, d * f, (size_t)(t1 - t0), err);
      }
      if (rc) return -1;
    }
    rows += t1 - t0;
  }
  return rows;
}

/* The policy rows of a batch, in order: every decode row, the last prefill_rows of a prefill. */
static int policy_rows(const mk_engine_t *e, const mk_seq_span_t *spans, int n_spans, int *rows) {
  const int pre = e->cache.ops->prefill_rows(&e->cache.cfg);
  int n = 0;
  for (int s = 0; s < n_spans; s++) {
    int first = spans[s].prefill && spans[s].n > pre ? spans[s].n - pre : 0;
    for (int t = spans[s].row + first; t < spans[s].row + spans[s].n; t++) rows[n++] = t;
  }
  return n;
}

/* Deterministic score sync: the query vectors (not partial sums) of every replicated head's query
 * heads are all-gathered, one collective per layer for all policy rows, and every replica adds
 * them in head order (0 + q_0 + q_1 + ..., as group_qsum does for the heads it holds whole), so
 * the sum has the same bits for every T. */
static int sync_rows_ordered(mk_engine_t *e, const mk_seq_span_t *spans, int n_spans, mk_error_t *err) {
  const mk_backend_ops_t *o = e->be.ops;
  const int d = e->d, m = e->qs_m, g = e->model.cfg.n_head / e->model.cfg.n_kv_head;
  int *rows = e->prow;
  const int n = policy_rows(e, spans, n_spans, rows);
  if (n == 0) return 0;
  for (int i = 0; i < n; i++)
    for (int j = 0; j < e->qs_n; j++)
      if (o->download(&e->be, e->qs_send + ((size_t)i * m + j) * d,
                      e->q + ((size_t)rows[i] * e->n_q + e->qs_send_u[j]) * d, sizeof(float) * (size_t)d, err))
        return -1;
  const size_t each = (size_t)n * m * d; /* floats per rank */
  if (mk_comm_allgather_host(e->comm, MK_COMM_SCORE, e->qs_send, e->qs_recv, each * sizeof(float), err) != 0)
    return -1;
  float *sum = e->qsum_glob;
  for (int i = 0; i < n; i++)
    for (int h = 0; h < e->n_rep; h++) {
      if (e->rep_local[h] < 0) continue;
      for (int j = 0; j < d; j++) sum[j] = 0.0f;
      for (int k = 0; k < g; k++) {
        int src = e->qs_src[h * g + k]; /* rank * m + slot */
        const float *v = e->qs_recv + (size_t)(src / m) * each + ((size_t)i * m + src % m) * d;
        for (int j = 0; j < d; j++) sum[j] += v[j];
      }
      if (o->upload(&e->be, e->qsum + ((size_t)rows[i] * e->n_kv + e->rep_local[h]) * d, sum,
                    sizeof(float) * (size_t)d, err))
        return -1;
    }
  return n;
}

/* out(n, n_embd) = in(n, cols) W^T of a row-parallel layer, summed over all ranks. */
static int row_parallel(mk_engine_t *e, const mk_bweight_t *w, const rp_chunks_t *rc, const float *in, int n,
                        float *out, mk_error_t *err) {
  const mk_backend_ops_t *o = e->be.ops;
  mk_backend_t *b = &e->be;
  const int tp = tp_of(e), ne = e->model.cfg.n_embd;
  if (e->fast) {
    if (o->matmul(b, w, in, n, out, err)) return -1;
    return tp > 1 ? comm_allreduce(e, out, (size_t)n * ne, false, err) : 0;
  }
  if (tp == 1) return o->matmul_chunks(b, w, in, n, rc->chunk_cols, NULL, out, err);
  for (int t0 = 0; t0 < n; t0 += MK_RP_SLAB) {
    const int m = n - t0 < MK_RP_SLAB ? n - t0 : MK_RP_SLAB;
    const size_t part = (size_t)m * ne, each = part * (size_t)rc->max_loc;
    if (o->matmul_chunks(b, w, in + (size_t)t0 * w->host.cols, m, rc->chunk_cols, e->parts, NULL, err)) return -1;
    if (mk_comm_allgather(e->comm, MK_COMM_MODEL, e->parts, e->gath, sizeof(float) * each, err) != 0)
      return -1;
    if (o->sum_parts(b, out + (size_t)t0 * ne, e->gath, rc->idx, rc->n_chunks, part, err)) return -1;
  }
  return 0;
}

static int sync_rows(mk_engine_t *e, const mk_seq_span_t *spans, int n_spans, mk_error_t *err) {
  int rows = pack_rows(e, spans, n_spans, false, err);
  if (rows <= 0) return rows;
  if (mk_comm_allreduce_sum_f32(e->comm, MK_COMM_SCORE, e->qsum_pack, (size_t)rows * e->n_rep * e->d, err) != 0)
    return -1;
  return pack_rows(e, spans, n_spans, true, err);
}

/* The LM-head exchange for full logits: every rank's vocabulary slice of n_out rows, padded to the
 * widest slice, in one all-gather; then the host puts the slices in place. */
static int gather_logits(mk_engine_t *e, int n_out, float *logits, mk_error_t *err) {
  const mk_backend_ops_t *o = e->be.ops;
  mk_backend_t *b = &e->be;
  const int V = e->model.cfg.n_vocab, vl = e->n_vocab_loc, vm = e->vocab_slice_max, tp = tp_of(e);
  const size_t f = sizeof(float);
  if (ensure_gather(e, n_out, err) != 0) return -1;
  const float *send = e->logits_loc;
  if (vl != vm) {
    if (o->copy2d(b, e->logits_pack, vm * f, e->logits_loc, vl * f, vl * f, (size_t)n_out, err)) return -1;
    send = e->logits_pack;
  }
  if (mk_comm_allgather(e->comm, MK_COMM_SAMPLE, send, e->logits_all, (size_t)n_out * vm * f, err) != 0) return -1;
  if (o->download(b, e->logits_pad, e->logits_all, (size_t)tp * n_out * vm * f, err)) return -1;
  for (int r = 0; r < tp; r++)
    for (int i = 0; i < n_out; i++)
      memcpy(logits + (size_t)i * V + e->vocab_begin_r[r], e->logits_pad + ((size_t)r * n_out + i) * vm,
             f * (size_t)e->vocab_len_r[r]);
  return 0;
}

/* An op of layer l failed: the op put its name and cause in err; add the layer. */
static int layer_failed(mk_error_t *err, int l) {
  mk_error_prefix(err, "layer %d", l);
  return -1;
}

static double clock_s(clockid_t id) {
  struct timespec ts;
  clock_gettime(id, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}
static double now_s(void) { return clock_s(CLOCK_MONOTONIC); }

/* Pipeline: what the last stage computed (full logits, or the sampled token ids) reaches every rank
 * (world broadcast from the last stage's TP rank 0), so every rank keeps the same token stream.
 * Time spent here and in the stage-to-stage messages is waiting on other stages (t_stage_wait). */
static int bcast_from_last(mk_engine_t *e, void *buf, size_t bytes, mk_error_t *err) {
  const double t0 = now_s();
  int rc = mk_comm_bcast(e->ctx->comm, MK_COMM_SAMPLE, buf, bytes, e->grid.world - e->grid.tp, err);
  e->t_stage_wait += now_s() - t0;
  return rc;
}

static int bcast_logits(mk_engine_t *e, int n_out, float *logits, mk_error_t *err) {
  return bcast_from_last(e, logits, sizeof(float) * (size_t)n_out * e->model.cfg.n_vocab, err);
}

/* Stage to stage: x (n, n_embd) from this rank to the same TP rank of the next stage, or from the
 * previous stage here. The world communicator is MPI on host memory, so a device backend stages
 * the rows through pinned host memory (x_host). */
static int stage_p2p(mk_engine_t *e, bool send, int n, mk_error_t *err) {
  const size_t bytes = sizeof(float) * (size_t)n * e->model.cfg.n_embd;
  const mk_backend_ops_t *o = e->be.ops;
  const bool staged = e->be.comm.device_memory;
  void *buf = staged ? (void *)e->x_host : (void *)e->x;
  const double t0 = now_s();
  int rc;
  if (send)
    rc = (staged && o->download(&e->be, buf, e->x, bytes, err)) || o->sync(&e->be, err) ||
         mk_comm_send(e->ctx->comm, buf, bytes, e->grid.next, err);
  else
    rc = mk_comm_recv(e->ctx->comm, buf, bytes, e->grid.prev, err) ||
         (staged && o->upload(&e->be, e->x, buf, bytes, err));
  e->t_stage_wait += now_s() - t0;
  return rc ? -1 : 0;
}

/* This stage's layers over the batch in e->x (n rows at positions from spans). */
static int run_layers(mk_engine_t *e, int n, const mk_seq_span_t *spans, int n_spans, mk_error_t *err) {
  const mk_model_config_t *c = &e->model.cfg;
  const mk_backend_ops_t *o = e->be.ops;
  mk_backend_t *b = &e->be;
  const int d = e->d, ne = c->n_embd;
  const bool need_qsum = (e->cache.ops->needs(&e->cache.cfg) & MK_KV_NEED_LOGIT_SUM) != 0;
  const bool sync_qsum = need_qsum && e->n_rep > 0;
  const mk_grid_t *gr = &e->grid;
  for (int l = gr->layer_begin; l < gr->layer_end; l++) {
    const layer_bw_t *w = &e->lw[l];
    if (o->rmsnorm(b, e->xn, e->x, w->attn_norm, n, ne, c->norm_eps, err) ||
        o->matmul(b, &w->wq, e->xn, n, e->q, err) || o->matmul(b, &w->wk, e->xn, n, e->k, err) ||
        o->matmul(b, &w->wv, e->xn, n, e->v, err))
      return layer_failed(err, l);
    if (w->bq && (o->add_bias(b, e->q, w->bq, n, e->n_q * d, err) ||
                  o->add_bias(b, e->k, w->bk, n, e->n_kv * d, err) ||
                  o->add_bias(b, e->v, w->bv, n, e->n_kv * d, err)))
      return layer_failed(err, l);
    mk_rope_params_t rq = {.x = e->q, .pos = e->pos_buf, .n_tok = n, .n_head = e->n_q, .head_dim = d,
                           .rope_dim = c->rope_dim, .theta = c->rope_theta, .neox = c->rope_neox,
                           .freq_factors = e->rope_freqs};
    mk_rope_params_t rk = rq;
    rk.x = e->k;
    rk.n_head = e->n_kv;
    if (o->rope(b, &rq, err) || o->rope(b, &rk, err)) return layer_failed(err, l);
    if (need_qsum) {
      if (o->group_qsum(b, e->qsum, e->q, n, e->n_q, e->n_kv, d, e->q_to_kv, err)) return layer_failed(err, l);
      if (sync_qsum && (e->fast ? sync_rows(e, spans, n_spans, err) : sync_rows_ordered(e, spans, n_spans, err)) < 0)
        return -1;
    }
    mk_attn_params_t ap = {.layer = l - gr->layer_begin, .n_tok = n, /* the stage's cache */ .n_spans = n_spans, .spans = spans, .q = e->q,
                           .k = e->k, .v = e->v, .qsum = need_qsum ? e->qsum : NULL, .out = e->att,
                           .n_q = e->n_q, .n_kv = e->n_kv, .head_dim = d, .q_to_kv = e->q_to_kv,
                           .cache = &e->cache};
    if (mk_kv_driver_attend(b, &ap, err) != 0) return -1;
    if (row_parallel(e, &w->wo, &e->rp_o, e->att, n, e->o, err) != 0) return layer_failed(err, l);
    if (o->add(b, e->x, e->o, (size_t)n * ne, err) ||
        o->rmsnorm(b, e->xn, e->x, w->ffn_norm, n, ne, c->norm_eps, err) ||
        o->matmul(b, &w->w_gate, e->xn, n, e->fg, err) || o->matmul(b, &w->w_up, e->xn, n, e->fu, err) ||
        o->swiglu(b, e->fg, e->fg, e->fu, (size_t)n * e->n_ff_loc, err))
      return layer_failed(err, l);
    if (row_parallel(e, &w->w_down, &e->rp_down, e->fg, n, e->o, err) != 0) return layer_failed(err, l);
    if (o->add(b, e->x, e->o, (size_t)n * ne, err)) return layer_failed(err, l);
  }
  mk_kv_cache_note_peak(&e->cache);
  return 0;
}

/* The last stage's head: output rows out_rows[0..n_out) normalised and projected onto this rank's
 * vocabulary slice; with logits, the full rows gathered there (host), else left in e->logits_loc
 * for the sampler. */
static int head_logits(mk_engine_t *e, const int *out_rows, int n_out, float *logits, mk_error_t *err) {
  const mk_model_config_t *c = &e->model.cfg;
  const mk_backend_ops_t *o = e->be.ops;
  mk_backend_t *b = &e->be;
  const int ne = c->n_embd;
  if (n_out == 0) return o->sync(b, err);
  for (int i = 0; i < n_out; i++)
    if (o->rmsnorm(b, e->xn + (size_t)i * ne, e->x + (size_t)out_rows[i] * ne, e->out_norm, 1, ne, c->norm_eps,
                   err) != 0)
      return -1;
  if (o->matmul(b, &e->output, e->xn, n_out, e->logits_loc, err)) {
    mk_error_prefix(err, "LM head");
    return -1;
  }
  if (!logits) return 0; /* the sampler reads e->logits_loc */
  if (tp_of(e) == 1 ? o->download(b, logits, e->logits_loc, sizeof(float) * (size_t)n_out * c->n_vocab, err)
                    : gather_logits(e, n_out, logits, err))
    return -1;
  return o->sync(b, err);
}

/* This stage's part of one forward pass: the input rows (embedded on the first stage, received
 * from the previous one otherwise), the layers, and on the last stage the head. */
static int stage_run(mk_engine_t *e, const micro_batch_t *mb, float *logits, mk_error_t *err) {
  const int n = mb->n_tok;
  if (ensure_acts(e, n, err) != 0) return -1;
  for (int s = 0; s < mb->n_spans; s++)
    for (int i = 0; i < mb->spans[s].n; i++) e->pos_buf[mb->spans[s].row + i] = mb->spans[s].pos0 + i;
  if (!e->grid.first && stage_p2p(e, false, n, err) != 0) return -1;
  const double t0 = now_s(), c0 = clock_s(CLOCK_PROCESS_CPUTIME_ID);
  int rc = e->grid.first ? e->be.ops->embed(&e->be, &e->tok_embd, mb->ids, n, e->x, err) : 0;
  if (rc == 0) rc = run_layers(e, n, mb->spans, mb->n_spans, err);
  if (rc == 0 && e->grid.last) rc = head_logits(e, mb->rows, mb->n_out, logits, err);
  e->t_busy += now_s() - t0;
  e->t_busy_cpu += clock_s(CLOCK_PROCESS_CPUTIME_ID) - c0;
  return rc;
}

/* Runs the batch on every stage in turn; writes full-vocabulary logits of rows out_rows[0..n_out)
 * to logits (host, every rank), or, with logits NULL, leaves this rank's slice of them in
 * e->logits_loc on the last stage (mk_engine_step_sample). */
static int forward(mk_engine_t *e, const int32_t *ids, int n, const mk_seq_span_t *spans, int n_spans,
                   const int *out_rows, int n_out, float *logits, mk_error_t *err) {
  micro_batch_t mb = {.n_tok = n, .n_spans = n_spans, .n_out = n_out, .spans = (mk_seq_span_t *)spans,
                      .ids = (int32_t *)ids, .rows = (int *)out_rows, .live = true};
  if (stage_run(e, &mb, logits, err) != 0) return -1;
  if (!e->grid.last && stage_p2p(e, true, n, err) != 0) return -1;
  return e->grid.pp > 1 && n_out > 0 && logits ? bcast_logits(e, n_out, logits, err) : 0;
}

/* The arguments of a step: a begun run, a valid sequence, tokens in the vocabulary, room left. */
static int check_step(const mk_engine_t *e, const char *fn, int seq, const int32_t *ids, int n, mk_error_t *err) {
  if (!e->have_cache) return mk_fail(err, "%s before mk_engine_begin", fn);
  if (seq < 0 || seq >= e->n_seq) return mk_fail(err, "sequence %d out of range (%d)", seq, e->n_seq);
  if (n <= 0) return mk_fail(err, "no tokens to feed");
  const int V = e->model.cfg.n_vocab;
  for (int i = 0; i < n; i++)
    if (ids[i] < 0 || ids[i] >= V) return mk_fail(err, "token id %d out of range (vocabulary %d)", ids[i], V);
  if (e->n_past[seq] + n > e->model.cfg.n_ctx_train)
    return mk_fail(err, "sequence %d would reach %d tokens, past the model's context of %d", seq,
                   e->n_past[seq] + n, e->model.cfg.n_ctx_train);
  return 0;
}

int mk_engine_step(mk_engine_t *e, int seq, const int32_t *ids, int n, bool all_logits, float *logits,
                   mk_error_t *err) {
  if (check_step(e, "mk_engine_step", seq, ids, n, err) != 0) return -1;
  const int V = e->model.cfg.n_vocab;
  if (e->n_past[seq] == 0) {
    mk_seq_span_t sp = {.seq = seq, .row = 0, .n = n, .pos0 = 0, .prefill = true};
    int last = n - 1;
    int *rows = NULL;
    int n_out = logits ? (all_logits ? n : 1) : 0;
    if (all_logits && logits) {
      rows = malloc(sizeof(int) * (size_t)n);
      if (!rows) return mk_fail(err, "out of memory");
      for (int i = 0; i < n; i++) rows[i] = i;
    }
    int r = forward(e, ids, n, &sp, 1, rows ? rows : &last, n_out, logits, err);
    free(rows);
    if (r != 0) return -1;
    e->n_past[seq] = n;
    return 0;
  }
  for (int i = 0; i < n; i++) {
    mk_seq_span_t sp = {.seq = seq, .row = 0, .n = 1, .pos0 = e->n_past[seq], .prefill = false};
    int row0 = 0;
    bool want = logits && (all_logits || i == n - 1);
    float *dst = !want ? NULL : (all_logits ? logits + (size_t)i * V : logits);
    if (forward(e, ids + i, 1, &sp, 1, &row0, want ? 1 : 0, dst, err) != 0) return -1;
    e->n_past[seq]++;
  }
  return 0;
}

/* The next token from the last forward's output row (e->logits_loc holds this rank's slice). */
static int sample_token(mk_engine_t *e, mk_sampler_t *smp, const int32_t *hist, int n_hist, int32_t *next,
                        mk_error_t *err) {
  const mk_backend_ops_t *o = e->be.ops;
  mk_backend_t *b = &e->be;
  const int tp = tp_of(e), vl = e->n_vocab_loc, V = e->model.cfg.n_vocab;
  const int per = tp > 1 ? mk_sampler_cand_count(smp) : 0;
  if (per == 0) { /* one rank, or settings that need every logit: the whole row here */
    if (!e->logits_whole && !(e->logits_whole = malloc(sizeof(float) * (size_t)V)))
      return mk_fail(err, "out of memory for %d logits", V);
    if (tp == 1 ? o->download(b, e->logits_whole, e->logits_loc, sizeof(float) * (size_t)V, err)
                : gather_logits(e, 1, e->logits_whole, err))
      return -1;
    if (o->sync(b, err)) return -1;
    *next = mk_sampler_sample(smp, e->logits_whole, hist, n_hist);
    return 0;
  }
  if (per > e->cap_cand) {
    free(e->cand_mine);
    free(e->cand_all);
    e->cand_mine = malloc(sizeof *e->cand_mine * (size_t)per);
    e->cand_all = malloc(sizeof *e->cand_all * (size_t)per * tp);
    e->cap_cand = e->cand_mine && e->cand_all ? per : 0;
    if (!e->cap_cand) return mk_fail(err, "out of memory for %d sampling candidates", per * tp);
  }
  if (o->download(b, e->logits_host, e->logits_loc, sizeof(float) * (size_t)vl, err) || o->sync(b, err)) return -1;
  mk_sampler_local(smp, e->logits_host, e->model.plan.vocab_begin, vl, hist, n_hist, e->cand_mine);
  if (mk_comm_allgather_host(e->comm, MK_COMM_SAMPLE, e->cand_mine, e->cand_all, sizeof *e->cand_mine * (size_t)per,
                             err) != 0)
    return -1;
  *next = mk_sampler_merge(smp, e->cand_all, tp);
  return 0;
}

int mk_engine_step_sample(mk_engine_t *e, int seq, const int32_t *ids, int n, mk_sampler_t *smp,
                          const int32_t *history, int n_history, int32_t *next, mk_error_t *err) {
  if (check_step(e, "mk_engine_step_sample", seq, ids, n, err) != 0) return -1;
  if (n > 1 && e->n_past[seq] > 0 && mk_engine_step(e, seq, ids, n - 1, false, NULL, err) != 0) return -1;
  const bool prefill = e->n_past[seq] == 0;
  const int nf = prefill ? n : 1;
  const int32_t *fi = prefill ? ids : ids + n - 1;
  mk_seq_span_t sp = {.seq = seq, .row = 0, .n = nf, .pos0 = e->n_past[seq], .prefill = prefill};
  int last = nf - 1;
  if (forward(e, fi, nf, &sp, 1, &last, 1, NULL, err) != 0) return -1;
  e->n_past[seq] += nf;
  if (e->grid.pp == 1) return sample_token(e, smp, history, n_history, next, err);
  /* pipeline: the last stage samples (its TP group as without stages), every rank gets the token */
  int32_t tok = -1;
  if (e->grid.last && sample_token(e, smp, history, n_history, &tok, err) != 0) return -1;
  if (bcast_from_last(e, &tok, sizeof tok, err) != 0) return -1;
  *next = tok;
  return 0;
}

int mk_engine_decode_batch(mk_engine_t *e, const int *seqs, const int32_t *ids, int n, float *logits,
                           mk_error_t *err) {
  if (!e->have_cache) return mk_fail(err, "mk_engine_decode_batch before mk_engine_begin");
  if (n <= 0 || n > 4096) return mk_fail(err, "bad batch size %d", n);
  mk_seq_span_t *sp = malloc(sizeof *sp * (size_t)n);
  int *rows = malloc(sizeof(int) * (size_t)n);
  if (!sp || !rows) {
    free(sp);
    free(rows);
    return mk_fail(err, "out of memory");
  }
  int rc = 0;
  for (int i = 0; i < n && rc == 0; i++) {
    if (seqs[i] < 0 || seqs[i] >= e->n_seq || e->n_past[seqs[i]] == 0)
      rc = mk_fail(err, "sequence %d is not prefilled", seqs[i]);
    else if (ids[i] < 0 || ids[i] >= e->model.cfg.n_vocab)
      rc = mk_fail(err, "token id %d out of range", ids[i]);
    else if (e->n_past[seqs[i]] + 1 > e->model.cfg.n_ctx_train)
      rc = mk_fail(err, "sequence %d reached the model's context of %d tokens", seqs[i], e->model.cfg.n_ctx_train);
    for (int j = 0; j < i && rc == 0; j++)
      if (seqs[j] == seqs[i]) rc = mk_fail(err, "sequence %d appears twice in one batch", seqs[i]);
    sp[i] = (mk_seq_span_t){.seq = seqs[i], .row = i, .n = 1, .pos0 = rc ? 0 : e->n_past[seqs[i]], .prefill = false};
    rows[i] = i;
  }
  if (rc == 0) rc = forward(e, ids, n, sp, n, rows, logits ? n : 0, logits, err);
  if (rc == 0)
    for (int i = 0; i < n; i++) e->n_past[seqs[i]]++;
  free(sp);
  free(rows);
  return rc;
}

/* Checks of one item of mk_engine_step_items (the batch's earlier items are items[0..i)). */
static int item_check(const mk_engine_t *e, const mk_engine_item_t *items, int i, mk_error_t *err) {
  const mk_engine_item_t *it = &items[i];
  if (it->seq < 0 || it->seq >= e->n_seq) return mk_fail(err, "sequence %d out of range (%d)", it->seq, e->n_seq);
  if (it->n <= 0 || !it->ids) return mk_fail(err, "sequence %d: no tokens to feed", it->seq);
  for (int j = 0; j < i; j++)
    if (items[j].seq == it->seq) return mk_fail(err, "sequence %d appears twice in one batch", it->seq);
  for (int j = 0; j < it->n; j++)
    if (it->ids[j] < 0 || it->ids[j] >= e->model.cfg.n_vocab)
      return mk_fail(err, "sequence %d: token id %d out of range (vocabulary %d)", it->seq, it->ids[j],
                     e->model.cfg.n_vocab);
  if ((long)e->n_past[it->seq] + it->n > e->model.cfg.n_ctx_train)
    return mk_fail(err, "sequence %d would reach %ld tokens, past the model's context of %d", it->seq,
                   (long)e->n_past[it->seq] + it->n, e->model.cfg.n_ctx_train);
  return 0;
}

/* Checks the items and fills mb with their spans (positions from n_past, which is not advanced
 * here), ids and output rows. n_items 0: an empty micro-batch. */
static int mb_fill(mk_engine_t *e, micro_batch_t *mb, const mk_engine_item_t *items, int n_items, mk_error_t *err) {
  int n_tok = 0, n_out = 0;
  for (int i = 0; i < n_items; i++) {
    if (item_check(e, items, i, err) != 0) return -1;
    n_tok += items[i].n;
    n_out += items[i].want_logits;
  }
  if (n_tok > mb->cap_tok) {
    free(mb->ids);
    free(mb->rows);
    mb->ids = malloc(sizeof *mb->ids * (size_t)n_tok);
    mb->rows = malloc(sizeof *mb->rows * (size_t)n_tok);
    mb->cap_tok = mb->ids && mb->rows ? n_tok : 0;
    if (!mb->cap_tok) return mk_fail(err, "out of memory for a batch of %d tokens", n_tok);
  }
  if (n_items > mb->cap_spans) {
    free(mb->spans);
    mb->spans = malloc(sizeof *mb->spans * (size_t)n_items);
    mb->cap_spans = mb->spans ? n_items : 0;
    if (!mb->spans) return mk_fail(err, "out of memory for a batch of %d sequences", n_items);
  }
  mb->n_tok = n_tok, mb->n_spans = n_items, mb->n_out = n_out, mb->live = n_items > 0;
  for (int i = 0, row = 0, o = 0; i < n_items; i++) {
    const int s = items[i].seq;
    mb->spans[i] = (mk_seq_span_t){.seq = s, .row = row, .n = items[i].n, .pos0 = e->n_past[s], .prefill = e->n_past[s] == 0};
    memcpy(mb->ids + row, items[i].ids, sizeof *mb->ids * (size_t)items[i].n);
    row += items[i].n;
    if (items[i].want_logits) mb->rows[o++] = row - 1;
  }
  return 0;
}

static void advance_past(mk_engine_t *e, const mk_engine_item_t *items, int n_items) {
  for (int i = 0; i < n_items; i++) e->n_past[items[i].seq] += items[i].n;
}

int mk_engine_step_items(mk_engine_t *e, const mk_engine_item_t *items, int n_items, float *logits,
                         mk_error_t *err) {
  if (!e->have_cache) return mk_fail(err, "mk_engine_step_items before mk_engine_begin");
  if (n_items <= 0 || n_items > e->n_seq) return mk_fail(err, "bad batch of %d items (%d sequences)", n_items, e->n_seq);
  micro_batch_t *mb = &e->mb_once;
  if (mb_fill(e, mb, items, n_items, err) != 0) return -1;
  if (mb->n_out > 0 && !logits) return mk_fail(err, "mk_engine_step_items: logits wanted but no buffer");
  if (forward(e, mb->ids, mb->n_tok, mb->spans, mb->n_spans, mb->rows, mb->n_out, logits, err) != 0) return -1;
  advance_past(e, items, n_items);
  return 0;
}

int mk_engine_pipe_depth(const mk_engine_t *e) { return e->grid.pp > 1 ? e->grid.pp : 1; }

bool mk_engine_pipe_has_logits(const mk_engine_t *e) { return e->grid.last; }

int mk_engine_pipe_share_tokens(mk_engine_t *e, int32_t *ids, int n, mk_error_t *err) {
  return e->grid.pp <= 1 || n <= 0 ? 0 : bcast_from_last(e, ids, sizeof *ids * (size_t)n, err);
}

int mk_engine_pipe_tick(mk_engine_t *e, const mk_engine_item_t *items, int n_items, float *logits,
                        bool logits_everywhere, int *n_logits, mk_error_t *err) {
  *n_logits = 0;
  if (!e->have_cache) return mk_fail(err, "mk_engine_pipe_tick before mk_engine_begin");
  if (n_items < 0 || n_items > e->n_seq) return mk_fail(err, "bad batch of %d items (%d sequences)", n_items, e->n_seq);
  const int P = mk_engine_pipe_depth(e), s = e->grid.stage;
  if (!e->pipe && !(e->pipe = calloc((size_t)P, sizeof *e->pipe))) return mk_fail(err, "out of memory");
  const long long t = e->pipe_tick;
  micro_batch_t *in = &e->pipe[t % P];
  if (mb_fill(e, in, items, n_items, err) != 0) return -1;
  if (in->n_out > 0 && !logits) return mk_fail(err, "mk_engine_pipe_tick: logits wanted but no buffer");
  advance_past(e, items, n_items);
  e->pipe_tick++;
  micro_batch_t *mine = t >= s ? &e->pipe[(t - s) % P] : NULL;        /* this stage's work now */
  micro_batch_t *out = t >= P - 1 ? &e->pipe[(t - P + 1) % P] : NULL; /* leaving the last stage */
  if (mine && mine->live && stage_run(e, mine, logits, err) != 0) return -1;
  if (out && out->live && out->n_out > 0) {
    if (P > 1 && logits_everywhere && bcast_logits(e, out->n_out, logits, err) != 0) return -1;
    *n_logits = out->n_out;
  }
  if (mine && mine->live && !e->grid.last && stage_p2p(e, true, mine->n_tok, err) != 0) return -1;
  if (out) out->live = false;
  return 0;
}

void mk_engine_get_stats(const mk_engine_t *e, mk_engine_stats_t *s) {
  memset(s, 0, sizeof *s);
  s->weight_bytes = e->model.weight_bytes;
  if (e->have_cache) {
    s->kv_live_bytes = mk_kv_cache_live_bytes(&e->cache);
    s->kv_peak_bytes = mk_kv_cache_peak_bytes(&e->cache);
    s->kv_alloc_bytes = e->cache.kv_bytes_alloc;
    s->policy_state_bytes = e->cache.state_bytes_alloc;
    s->kv_slots = e->cache.n_slots;
  }
  s->comm = e->comm ? e->comm->ops->name : "none";
  s->pp = e->grid.pp;
  s->stage = e->grid.stage;
  s->layer_begin = e->grid.layer_begin;
  s->layer_end = e->grid.layer_end;
  if (e->comm) {
    s->comm_model_bytes = e->comm->bytes_model;
    s->comm_score_bytes = e->comm->bytes_score;
    s->comm_sample_bytes = e->comm->bytes_sample;
  }
  s->busy_s = e->t_busy;
  s->busy_cpu_s = e->t_busy_cpu;
  s->stage_wait_s = e->t_stage_wait;
  if (e->grid.pp > 1) { /* the world communicator carries the activations and the token / logits */
    s->comm_p2p_bytes = e->ctx->comm->bytes_p2p;
    s->comm_sample_bytes += e->ctx->comm->bytes_sample;
  }
}
