/* Tensor parallelism with replicated KV heads (run under mpirun -np T): a synthetic model with 8
 * query heads over 2 KV heads (tests/testutil/synth_model.h, random F32 weights), MorphKV
 * evicting, T ranks against the single-process engine that rank 0 runs beside them.
 *
 *   tp_synth_test [W C [f32|q8_0|q4_1 [HEAD_DIM [cpu|cuda [auto|mpi|nccl]]]]]
 *                                                     (default 4 24 f32 16 cpu auto)
 * cuda runs both engines on the CUDA backend (tests/gpu builds this file against the emulated
 * backend and emulated NCCL as tp_synth_emu_test); the last argument is the --comm choice.
 *
 * The quantized weight types are for manual runs (the deterministic numerics keep them equal to
 * T = 1 as well, although their matmuls round activations to 8 bits); they need HEAD_DIM a
 * multiple of 32 (default 32 for them), since attn_output is sliced by columns on query-head
 * boundaries and a column slice of a quantized row must fall on 32-element blocks.
 *
 * With 4 query heads per KV head, T = 3, 4 and 8 cut KV groups, so both KV heads are replicated
 * (T = 2 splits on group boundaries; T = 1 has nothing to split). Checked at the end of the
 * prefill (the prompt is longer than C, so the first compression happens there) and after each
 * of N_NEW greedy decode steps:
 *  - every replica of a KV head holds the same token positions, per layer (required);
 *  - those positions equal the single-process cache's (required: with F32 weights there is no
 *    8-bit activation rounding, T > 1 differs from T = 1 only in the summation order of the
 *    row-parallel partial sums, ~1e-7 relative, far below the gaps between eviction scores);
 *  - the greedy token (argmax of the T-rank logits, fed to both engines) equals T = 1's argmax at
 *    every step (required, 0 divergences);
 *  - the logits equal T = 1's bit for bit (deterministic numerics, src/engine.c);
 *  - the score-sync bytes are exactly what the engine should send: per layer and row the policy
 *    reads (W prefill rows, 1 per decode step), the all-gather of the replicated heads' query
 *    vectors, T x (most such query heads on one rank) x head_dim floats,
 *    0 when nothing is replicated, and per decode token under half the model's all-reduce bytes;
 *  - distributed sampling (mk_engine_step_sample) picks, at every step of greedy, top-k/top-p/
 *    min-p/temperature and repetition-penalty runs, the token that mk_sampler_sample picks from
 *    the full gathered logits of a second T-rank engine fed the same tokens, and its exchange is
 *    T x 8 bytes per token (greedy) or T x (1 + top_k) x 8 (top-k settings).
 * Prints "PASS: tp_synth_test ..." or "FAIL ..." (ctest matches FAIL). */
#include <math.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "parallel/ctx.h"
#include "parallel/plan.h"
#include "src/cli.h" /* mk_ctx_abort */
#include "src/engine.h"
#include "tests/testutil/synth_model.h"
#include "tests/mpi/tp_common.h"

/* decode steps: 96, or MK_TP_SYNTH_STEPS (the emulated backend runs fewer: it is slow) */
static int N_NEW = 96;
/* sampling-check steps per sampler setting: 24, or MK_TP_SYNTH_SAMPLE_STEPS (1..24) */
static int N_SAMPLE = 24;


/* Results of comparing kept positions, accumulated on rank 0. */
typedef struct cmp_stats {
  long replica_checks, replica_mismatch; /* (step, layer, head, extra replica) */
  long ref_checks, ref_mismatch;         /* (step, layer, head) against T = 1 */
  long evicted_sets;                     /* sets holding fewer positions than seen */
  long nonsuffix_sets;                   /* sets that kept some token older than the last ones */
  int max_kept;
} cmp_stats_t;

/* Gathers every rank's kept positions of every (layer, KV head) to rank 0 and compares them
 * with each other and with the reference cache. n_past: tokens seen. Collective. */
static void compare_kept(mk_ctx_t *ctx, mk_engine_t *tp, mk_engine_t *ref, int n_past, int step, int32_t *mine,
                         int32_t *all, int32_t *refk, cmp_stats_t *cs) {
  const mk_model_config_t *cfg = mk_engine_config(tp);
  mk_kv_cache_t *ct = mk_engine_cache(tp);
  const int L = cfg->n_layer, KVH = cfg->n_kv_head, row_len = ct->n_slots + 1;
  for (int l = 0; l < L; l++) {
    for (int i = 0; i < row_len * KVH; i++) mine[i] = -2;
    const int kv0 = ct->heads[0].kv_head; /* global index of local head 0 */
    for (int j = 0; j < ct->n_heads; j++) {
      int32_t *row = mine + (size_t)(kv0 + j) * row_len;
      row[0] = kept_positions(ct, l, j, row + 1);
    }
    MPI_Gather(mine, row_len * KVH, MPI_INT32_T, all, row_len * KVH, MPI_INT32_T, 0, ctx->mpi);
    if (ctx->rank != 0) continue;
    mk_kv_cache_t *cr = mk_engine_cache(ref);
    for (int h = 0; h < KVH; h++) {
      const int nr = kept_positions(cr, l, h, refk);
      const int32_t *first = NULL;
      for (int r = 0; r < ctx->world; r++) {
        const int32_t *row = all + ((size_t)r * KVH + h) * row_len;
        if (row[0] == -2) continue; /* rank r does not hold head h */
        if (!first) {
          first = row;
          cs->ref_checks++;
          if (row[0] != nr || memcmp(row + 1, refk, sizeof(int32_t) * (size_t)nr) != 0) {
            if (cs->ref_mismatch < 5)
              fprintf(stderr, "step %d layer %d KV head %d: kept positions (%d) differ from T=1's (%d)\n", step, l,
                      h, row[0], nr);
            cs->ref_mismatch++;
          }
          if (row[0] > cs->max_kept) cs->max_kept = row[0];
          if (row[0] < n_past) cs->evicted_sets++;
          /* a suffix would be exactly the last row[0] positions */
          if (row[0] > 0 && row[1] != n_past - row[0]) cs->nonsuffix_sets++;
          continue;
        }
        cs->replica_checks++;
        if (row[0] != first[0] || memcmp(row + 1, first + 1, sizeof(int32_t) * (size_t)row[0]) != 0) {
          if (cs->replica_mismatch < 5)
            fprintf(stderr, "step %d layer %d KV head %d: replica on rank %d differs from the first replica\n", step,
                    l, h, r);
          cs->replica_mismatch++;
        }
      }
    }
  }
}

/* Distributed sampling against the full gather: engine a samples with mk_engine_step_sample, engine
 * b (a second T-rank engine on the same model) gathers full logits for mk_sampler_sample; both are
 * fed a's token. Same seeds, so the tokens must be equal at every step. Collective. */
static void check_sampling(mk_ctx_t *ctx, mk_engine_t *a, const mk_engine_params_t *ep, const mk_kv_config_t *kv,
                           const int32_t *prompt, int np) {
  mk_error_t err = {{0}};
  mk_engine_t *b = NULL;
  if (mk_engine_open(&b, ep, ctx, &err) != 0) die(ctx, &err);
  const int V = mk_engine_n_vocab(a), T = ctx->world, n_new = N_SAMPLE;
  mk_sampler_params_t set[4];
  for (int i = 0; i < 4; i++) mk_sampler_params_default(&set[i]);
  set[0].temperature = 0.0f;                           /* greedy */
  set[1].seed = 7;                                     /* T 0.8, top-k 40, top-p 0.95, min-p 0.05 */
  set[2].temperature = 1.5f, set[2].top_k = 5, set[2].top_p = 1.0f, set[2].min_p = 0.0f, set[2].seed = 9;
  set[3].repeat_penalty = 1.3f, set[3].top_k = 12, set[3].temperature = 1.2f, set[3].seed = 11;
  float *logits = malloc(sizeof(float) * (size_t)V);
  int32_t *hist = malloc(sizeof(int32_t) * (size_t)(np + n_new + 1));
  if (!logits || !hist) mk_ctx_abort(ctx, "out of memory");
  for (int k = 0; k < 4; k++) {
    mk_sampler_t *sa = NULL, *sb = NULL;
    if (mk_sampler_new(&set[k], V, &sa, &err) || mk_sampler_new(&set[k], V, &sb, &err)) die(ctx, &err);
    if (mk_engine_begin(a, kv, 1, np, np + n_new + 1, &err) || mk_engine_begin(b, kv, 1, np, np + n_new + 1, &err))
      die(ctx, &err);
    memcpy(hist, prompt, sizeof(int32_t) * (size_t)np);
    int nh = np, differ = 0;
    mk_engine_stats_t s0, s1;
    int32_t next = 0, got[32], want[32];
    /* a alone first (its exchange is counted alone: on the CPU both engines count on ctx->comm) */
    if (mk_engine_step_sample(a, 0, prompt, np, sa, hist, nh, &next, &err)) die(ctx, &err);
    mk_engine_get_stats(a, &s0);
    for (int step = 0; step < n_new; step++) {
      got[step] = next;
      hist[nh++] = next;
      if (mk_engine_step_sample(a, 0, &got[step], 1, sa, hist, nh, &next, &err)) die(ctx, &err);
    }
    mk_engine_get_stats(a, &s1);
    /* then b on the same tokens, sampling from the full gathered logits */
    nh = np;
    if (mk_engine_step(b, 0, prompt, np, false, logits, &err)) die(ctx, &err);
    for (int step = 0; step < n_new; step++) {
      want[step] = mk_sampler_sample(sb, logits, hist, nh);
      if (want[step] != got[step] && differ++ < 3)
        fprintf(stderr, "FAIL: rank %d sampler %d step %d: distributed sampling chose %d, the full gather %d\n",
                ctx->rank, k, step, got[step], want[step]);
      hist[nh++] = got[step];
      if (mk_engine_step(b, 0, &got[step], 1, false, logits, &err)) die(ctx, &err);
    }
    const int per = mk_sampler_cand_count(sa);
    const double bytes = (double)(s1.comm_sample_bytes - s0.comm_sample_bytes) / n_new;
    const double expect = T > 1 ? (double)T * per * sizeof(mk_sample_cand_t) : 0;
    if (ctx->rank == 0)
      printf("T=%d sampler %d (temp %.2f, top-k %d, top-p %.2f, min-p %.2f, penalty %.2f): %d of %d tokens equal to "
             "the full gather; sampling exchange %.1f bytes per token (expected %.0f)\n",
             T, k, (double)set[k].temperature, set[k].top_k, (double)set[k].top_p, (double)set[k].min_p,
             (double)set[k].repeat_penalty, n_new - differ, n_new, bytes, expect);
    CHECK(differ == 0, "sampler %d: %d tokens differ from the full gather's", k, differ);
    CHECK(bytes == expect, "sampler %d: %.1f sampling bytes per token, expected %.0f", k, bytes, expect);
    mk_sampler_free(sa);
    mk_sampler_free(sb);
  }
  free(logits);
  free(hist);
  mk_engine_close(b);
}

int main(int argc, char **argv) {
  MPI_Init(&argc, &argv);
  mk_ctx_t ctx;
  mk_error_t err = {{0}};
  if (mk_ctx_init(&ctx, MPI_COMM_WORLD, &err) != 0) mk_ctx_abort(NULL, err.msg);
  mk_kv_config_t kv;
  mk_kv_config_default(&kv);
  kv.policy = MK_KV_MORPHKV;
  kv.gqa = MK_KV_GQA_LOGIT_SUM;
  kv.window = argc >= 3 ? atoi(argv[1]) : 4;
  kv.capacity = argc >= 3 ? atoi(argv[2]) : 24;
  mk_synth_params_t sp;
  mk_synth_params_default(&sp);
  const char *wname = argc >= 4 ? argv[3] : "f32";
  if (strcmp(wname, "f32") == 0) sp.wtype = MK_TYPE_F32;
  else if (strcmp(wname, "q8_0") == 0) sp.wtype = MK_TYPE_Q8_0;
  else if (strcmp(wname, "q4_1") == 0) sp.wtype = MK_TYPE_Q4_1;
  else mk_ctx_abort(&ctx, "usage: tp_synth_test [W C [f32|q8_0|q4_1 [HEAD_DIM]]]");
  sp.head_dim = argc >= 5 ? atoi(argv[4]) : sp.wtype == MK_TYPE_F32 ? 16 : 32;
  const bool cuda = argc >= 6 && strcmp(argv[5], "cuda") == 0;
  const char *cname = argc >= 7 ? argv[6] : "auto";
  const mk_comm_kind_t comm = !strcmp(cname, "nccl") ? MK_COMM_KIND_NCCL
                              : !strcmp(cname, "mpi") ? MK_COMM_KIND_MPI : MK_COMM_KIND_AUTO;
  const int T = ctx.world;
  const char *steps = getenv("MK_TP_SYNTH_STEPS");
  if (steps && atoi(steps) > 0 && atoi(steps) <= 96) N_NEW = atoi(steps);
  const char *ssteps = getenv("MK_TP_SYNTH_SAMPLE_STEPS");
  if (ssteps && atoi(ssteps) > 0 && atoi(ssteps) <= 24) N_SAMPLE = atoi(ssteps);

  /* rank 0 writes the model; every rank opens it after the broadcast of its path */
  char path[512] = {0};
  int wrc = 0;
  if (ctx.rank == 0) {
    const char *tmp = getenv("TMPDIR");
    snprintf(path, sizeof path, "%s/mk_synth_XXXXXX", tmp && *tmp ? tmp : "/tmp");
    int fd = mkstemp(path);
    if (fd < 0) wrc = -1;
    else close(fd);
    if (wrc == 0) wrc = mk_synth_model_write(path, &sp);
  }
  MPI_Bcast(&wrc, 1, MPI_INT, 0, ctx.mpi);
  if (wrc != 0) mk_ctx_abort(&ctx, "cannot write the synthetic model");
  MPI_Bcast(path, sizeof path, MPI_CHAR, 0, ctx.mpi);
  MPI_Barrier(ctx.mpi);

  mk_engine_params_t ep = {.model_path = path,
                           .backend = {.kind = cuda ? MK_BACKEND_CUDA : MK_BACKEND_CPU, .n_threads = 1, .simd = -1,
                                       .device = -1, .local_rank = ctx.local_rank},
                           .comm = comm,
                           .numerics = MK_NUMERICS_DETERMINISTIC};
  mk_engine_t *tp = NULL, *ref = NULL;
  if (mk_engine_open(&tp, &ep, &ctx, &err) != 0) die(&ctx, &err);
  {
    mk_engine_stats_t es;
    mk_engine_get_stats(tp, &es);
    if (ctx.rank == 0) printf("T=%d backend %s, communicator %s\n", T, cuda ? "cuda" : "cpu", es.comm);
    if (T > 1 && comm != MK_COMM_KIND_AUTO)
      CHECK(strcmp(es.comm, cuda && comm == MK_COMM_KIND_MPI ? "mpi-staged" : cname) == 0,
            "--comm %s gave communicator %s", cname, es.comm);
  }
  if (ctx.rank == 0 && mk_engine_open(&ref, &ep, NULL, &err) != 0) die(&ctx, &err);
  const mk_model_config_t *cfg = mk_engine_config(tp);
  const int V = mk_engine_n_vocab(tp), L = cfg->n_layer, KVH = cfg->n_kv_head, d = cfg->head_dim;

  /* The plan of every rank (the same pure function the engine used), and the replicated heads. */
  mk_plan_dims_t dims;
  mk_tensor_source_t src = mk_gguf_tensor_source(mk_engine_gguf(tp));
  mk_model_plan_dims(cfg, &src, &dims);
  int holders[64] = {0}, n_rep = 0, vocab_slice_max = 0, qb[64], qe[64], max_loc_o = 0, max_loc_d = 0;
  if (KVH > 64 || V > 1024) mk_ctx_abort(&ctx, "synthetic model larger than this test's tables");
  for (int r = 0; r < T; r++) {
    mk_plan_t pr;
    if (mk_plan_make(&dims, T, r, &pr, &err) != 0) die(&ctx, &err);
    for (int h = pr.kv_begin; h < pr.kv_end; h++) holders[h]++;
    if (r < 64) qb[r] = pr.q_begin, qe[r] = pr.q_end;
    /* chunks of the row-parallel layers: whole query heads of attn_output, ff_align of ffn_down */
    int co = (pr.q_end - pr.q_begin) * cfg->head_dim / mk_model_attn_out_chunk(cfg, &src);
    int cd = (pr.ff_end - pr.ff_begin) / dims.ff_align;
    if (co > max_loc_o) max_loc_o = co;
    if (cd > max_loc_d) max_loc_d = cd;
    if (pr.vocab_end - pr.vocab_begin > vocab_slice_max) vocab_slice_max = pr.vocab_end - pr.vocab_begin;
    if (ctx.rank == 0)
      printf("T=%d plan rank %d: query heads [%d,%d) KV heads [%d,%d) ff [%d,%d) vocab [%d,%d)\n", T, r, pr.q_begin,
             pr.q_end, pr.kv_begin, pr.kv_end, pr.ff_begin, pr.ff_end, pr.vocab_begin, pr.vocab_end);
  }
  for (int h = 0; h < KVH; h++) n_rep += holders[h] > 1;
  /* The ordered score sync all-gathers the query vectors of the replicated heads: each rank sends
   * as many head_dim vectors per row and layer as the rank with the most such query heads. */
  int qs_m = 0, g = cfg->n_head / KVH;
  for (int r = 0; r < T && r < 64; r++) {
    int cnt = 0;
    for (int h = 0; h < KVH; h++)
      for (int u = h * g; u < (h + 1) * g && holders[h] > 1; u++) cnt += u >= qb[r] && u < qe[r];
    if (cnt > qs_m) qs_m = cnt;
  }
  if (ctx.rank == 0) {
    printf("T=%d: model %d layers, %d query heads, %d KV heads, head_dim %d, n_ff %d, vocab %d, weights %s; "
           "replicated KV heads:",
           T, L, cfg->n_head, KVH, d, cfg->n_ff, V, wname);
    for (int h = 0; h < KVH; h++)
      if (holders[h] > 1) printf(" %d (on %d ranks)", h, holders[h]);
    printf("%s\n", n_rep ? "" : " none");
  }
  const bool expect_rep = n_rep > 0;
  if (T == 3 || T == 4 || T == 8) CHECK(n_rep == KVH, "T=%d should replicate all %d KV heads, plan replicates %d", T, KVH, n_rep);
  if (T == 1 || T == 2) CHECK(n_rep == 0, "T=%d should replicate nothing, plan replicates %d", T, n_rep);

  const char *text = "the cat and the dog went to the park in the morning, then it ran home.";
  int32_t ids[256];
  int np = mk_tok_encode(mk_engine_tokenizer(tp), text, strlen(text), false, false, ids, 256, &err);
  if (np < 0) die(&ctx, &err);
  if (np <= kv.capacity || np > 200) mk_ctx_abort(&ctx, "prompt length must exceed C (and be <= 200)");
  const int total = np + N_NEW + 1;
  if (mk_engine_begin(tp, &kv, 1, np, total, &err) != 0) die(&ctx, &err);
  if (ctx.rank == 0 && mk_engine_begin(ref, &kv, 1, np, total, &err) != 0) die(&ctx, &err);
  {
    /* the engine's cache holds exactly the KV heads of this rank's plan */
    mk_plan_t pr;
    if (mk_plan_make(&dims, T, ctx.rank, &pr, &err) != 0) die(&ctx, &err);
    mk_kv_cache_t *c = mk_engine_cache(tp);
    CHECK(c->n_heads == pr.kv_end - pr.kv_begin && c->heads[0].kv_head == pr.kv_begin,
          "rank %d: cache holds %d KV heads from %d, plan says [%d,%d)", ctx.rank, c->n_heads, c->heads[0].kv_head,
          pr.kv_begin, pr.kv_end);
  }

  mk_kv_cache_t *ct = mk_engine_cache(tp);
  const int row_len = ct->n_slots + 1;
  int32_t *mine = malloc(sizeof(int32_t) * (size_t)row_len * KVH);
  int32_t *all = malloc(sizeof(int32_t) * (size_t)row_len * KVH * T);
  int32_t *refk = malloc(sizeof(int32_t) * (size_t)row_len);
  float *logit_t = malloc(sizeof(float) * V), *logit_r = malloc(sizeof(float) * V);
  if (!mine || !all || !refk || !logit_t || !logit_r) mk_ctx_abort(&ctx, "out of memory");
  cmp_stats_t cs = {0};

  /* prefill: the first compression happens at its end */
  if (mk_engine_step(tp, 0, ids, np, false, logit_t, &err) != 0) die(&ctx, &err);
  if (ctx.rank == 0 && mk_engine_step(ref, 0, ids, np, false, logit_r, &err) != 0) die(&ctx, &err);
  compare_kept(&ctx, tp, ref, np, -1, mine, all, refk, &cs);
  mk_engine_stats_t s0, s1;
  mk_engine_get_stats(tp, &s0);

  /* greedy decode: the TP argmax feeds both engines */
  int diverged = 0, first_div = -1, distinct = 0;
  double max_logit_diff = 0;
  char seen[1024] = {0};
  for (int step = 0; step < N_NEW; step++) {
    int32_t tok = argmax(logit_t, V);
    if (ctx.rank == 0) {
      for (int i = 0; i < V; i++) {
        double df = fabs((double)logit_t[i] - logit_r[i]);
        if (df > max_logit_diff) max_logit_diff = df;
      }
      if (argmax(logit_r, V) != tok) {
        if (first_div < 0) first_div = step;
        diverged++;
      }
      if (tok < (int)sizeof seen && !seen[tok]) {
        seen[tok] = 1;
        distinct++;
      }
    }
    MPI_Bcast(&tok, 1, MPI_INT32_T, 0, ctx.mpi); /* all ranks already agree; keep them in lockstep */
    if (mk_engine_step(tp, 0, &tok, 1, false, logit_t, &err) != 0) die(&ctx, &err);
    if (ctx.rank == 0 && mk_engine_step(ref, 0, &tok, 1, false, logit_r, &err) != 0) die(&ctx, &err);
    compare_kept(&ctx, tp, ref, np + step + 1, step, mine, all, refk, &cs);
  }
  mk_engine_get_stats(tp, &s1);

  if (ctx.rank == 0) {
    const double per_row = (double)L * T * qs_m * d * sizeof(float); /* all-gathered query vectors per layer */
    const double score_dec = (double)(s1.comm_score_bytes - s0.comm_score_bytes) / N_NEW;
    const double model_dec = (double)(s1.comm_model_bytes - s0.comm_model_bytes) / N_NEW;
    /* per layer: the all-gathers of the chunk partials of attn_output and ffn_down (T slots of
     * the most chunks one rank holds, n_embd floats each); the logit slices count as sampling */
    const double model_expect =
        T > 1 ? (double)L * T * (max_loc_o + max_loc_d) * cfg->n_embd * sizeof(float) : 0;
    const double gather_dec = (double)(s1.comm_sample_bytes - s0.comm_sample_bytes) / N_NEW;
    const double gather_expect = T > 1 ? (double)T * vocab_slice_max * sizeof(float) : 0;
    const int pre_rows = np < kv.window ? np : kv.window;
    printf("T=%d morphkv W=%d C=%d: prompt %d tokens, %d greedy tokens (%d distinct), %d identical to T=1's argmax "
           "(max |logit diff| %.3g)\n",
           T, kv.window, kv.capacity, np, N_NEW, distinct, N_NEW - diverged, max_logit_diff);
    printf("T=%d kept positions: %ld replica comparisons, %ld mismatches; %ld of %ld (step, layer, head) sets differ "
           "from T=1; %ld sets evicted something, %ld kept an older token than the last ones; max kept %d (slots %d)\n",
           T, cs.replica_checks, cs.replica_mismatch, cs.ref_mismatch, cs.ref_checks, cs.evicted_sets,
           cs.nonsuffix_sets, cs.max_kept, ct->n_slots);
    printf("T=%d comm bytes: prefill score sync %llu (expected %.0f = %d rows x %.0f); per decode token: score sync "
           "%.1f (expected %.0f), model all-reduces %.1f (expected %.0f), full logit gather %.1f (expected %.0f); "
           "ratio %.4f\n",
           T, (unsigned long long)s0.comm_score_bytes, per_row * pre_rows, pre_rows, per_row, score_dec, per_row,
           model_dec, model_expect, gather_dec, gather_expect, model_dec > 0 ? score_dec / model_dec : 0.0);
    CHECK(model_dec == model_expect, "model all-reduce %.1f bytes per decode token, expected %.0f", model_dec,
          model_expect);
    CHECK(gather_dec == gather_expect, "logit gather %.1f bytes per decode token, expected %.0f", gather_dec,
          gather_expect);
    CHECK(cs.replica_mismatch == 0, "%ld replica kept-position mismatches", cs.replica_mismatch);
    CHECK(!expect_rep || cs.replica_checks > 0, "no replica was compared although KV heads are replicated");
    CHECK(cs.ref_mismatch == 0, "%ld kept-position sets differ from T=1", cs.ref_mismatch);
    CHECK(cs.evicted_sets == cs.ref_checks, "MorphKV did not evict at every check (%ld of %ld)", cs.evicted_sets,
          cs.ref_checks);
    CHECK(cs.nonsuffix_sets > 0, "MorphKV only ever kept the most recent tokens");
    CHECK(diverged == 0, "%d greedy tokens differ from T=1's (first at step %d)", diverged, first_div);
    CHECK(model_dec == model_expect, "model bytes %.1f per decode token, expected %.0f", model_dec, model_expect);
    CHECK(max_logit_diff == 0, "logits differ from T=1 by up to %.3g (deterministic numerics)", max_logit_diff);
    CHECK(distinct >= 2, "greedy decoding produced a single token");
    if (n_rep > 0) {
      CHECK((double)s0.comm_score_bytes == per_row * pre_rows, "prefill score sync %llu bytes, expected %.0f",
            (unsigned long long)s0.comm_score_bytes, per_row * pre_rows);
      CHECK(score_dec == per_row, "score sync %.1f bytes per decode token, expected %.0f", score_dec, per_row);
      CHECK(score_dec < 0.5 * model_dec, "score sync / model all-reduce = %.3f, not < 0.5", score_dec / model_dec);
    } else {
      CHECK(s1.comm_score_bytes == 0, "score sync %llu bytes without replicated heads",
            (unsigned long long)s1.comm_score_bytes);
    }
  }
  check_sampling(&ctx, tp, &ep, &kv, ids, np);
  int f = fails, any = 0;
  MPI_Allreduce(&f, &any, 1, MPI_INT, MPI_SUM, ctx.mpi);
  if (ctx.rank == 0) printf("%s: tp_synth_test T=%d W=%d C=%d %s\n", any ? "FAIL" : "PASS", T, kv.window, kv.capacity, wname);
  free(mine);
  free(all);
  free(refk);
  free(logit_t);
  free(logit_r);
  mk_engine_close(tp);
  mk_engine_close(ref);
  MPI_Barrier(ctx.mpi);
  if (ctx.rank == 0) unlink(path);
  mk_ctx_free(&ctx);
  MPI_Finalize();
  return any ? 1 : 0;
}
