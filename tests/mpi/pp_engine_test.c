/* Pipeline-parallel engine test (run under mpirun -np P*T): the engine on a P x T grid
 * (src/engine.c: each stage binds and caches only its layers, activations flow stage to stage,
 * the last stage samples and every rank gets the token) against the single-process engine that
 * rank 0 runs beside it (mk_engine_open with ctx = NULL).
 *
 *   pp_engine_test P MODEL|synth POLICY [W C]     (MK_PP_STEPS: greedy tokens, default 128;
 *                                                  MK_PP_FAIL_RANK=R: rank R calls mk_ctx_abort at
 *                                                  step 3 while the other stages wait on it;
 *                                                  MK_PP_BACKEND=cuda: both engines on the CUDA
 *                                                  backend, e.g. the kernel emulator's build;
 *                                                  MK_PP_PROMPT_TOKENS=N: the prompt's first N
 *                                                  tokens only)
 * synth: a 6-layer synthetic model (tests/testutil/synth_model.h, F32 weights, 8/2 heads; head dim
 * 16, 64 on CUDA), so that P = 5 splits 6 layers 2,1,1,1,1.
 * Checks (deterministic numerics, so T > 1 is held to the same bits as the TP tests):
 * 1. teacher-forced logits of a prompt: bitwise identical to one process, on every rank;
 * 2. MK_PP_STEPS greedy tokens through mk_engine_step_sample: identical to one process, and the
 *    same stream on every rank;
 * 3. kept positions of every (layer, KV head) after every step, gathered from the rank that holds
 *    the layer: identical to the single process's cache (evicting policies);
 * 4. at T = 1: the ranks' weight, KV and policy-state bytes sum to the single-process figures;
 *    stage-to-stage bytes are exactly (tokens fed) x n_embd x 4 on every stage but the last.
 * Prints "PASS: pp_engine_test ..." or "FAIL ..." (ctest matches FAIL). */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "parallel/ctx.h"
#include "src/cli.h" /* mk_ctx_abort */
#include "src/engine.h"
#include "src/sampler.h"
#include "tests/mpi/tp_common.h"
#include "tests/testutil/synth_model.h"

static uint64_t fnv(const void *p, size_t n) {
  const unsigned char *b = p;
  uint64_t h = 1469598103934665603ULL;
  for (size_t i = 0; i < n; i++) h = (h ^ b[i]) * 1099511628211ULL;
  return h;
}

/* The same value on every rank? */
static int everywhere(mk_ctx_t *ctx, uint64_t v) {
  uint64_t lo = v, hi = v;
  MPI_Allreduce(MPI_IN_PLACE, &lo, 1, MPI_UINT64_T, MPI_MIN, ctx->mpi);
  MPI_Allreduce(MPI_IN_PLACE, &hi, 1, MPI_UINT64_T, MPI_MAX, ctx->mpi);
  return lo == hi;
}

/* Rank 0 writes a synthetic model with n_layer layers; every rank gets its path. */
static void write_synth(mk_ctx_t *ctx, int n_layer, int head_dim, char *path, size_t n) {
  int wrc = 0;
  if (ctx->rank == 0) {
    const char *tmp = getenv("TMPDIR");
    snprintf(path, n, "%s/mk_pp_synth_XXXXXX", tmp && *tmp ? tmp : "/tmp");
    int fd = mkstemp(path);
    if (fd < 0) wrc = -1;
    else close(fd);
    mk_synth_params_t sp;
    mk_synth_params_default(&sp);
    sp.n_layer = n_layer;
    if (head_dim > 0) sp.head_dim = head_dim;
    if (wrc == 0) wrc = mk_synth_model_write(path, &sp);
  }
  MPI_Bcast(&wrc, 1, MPI_INT, 0, ctx->mpi);
  if (wrc != 0) mk_ctx_abort(ctx, "cannot write the synthetic model");
  MPI_Bcast(path, (int)n, MPI_CHAR, 0, ctx->mpi);
}

/* Kept positions of every (layer, KV head) of sequence 0, from the rank holding it, against ref
 * (rank 0). Rows of slots+1 (count first), -2 where this rank does not hold the (layer, head).
 * Returns the number of sets that differ (rank 0). */
static long compare_kept(mk_ctx_t *ctx, mk_engine_t *pp, mk_engine_t *ref, int32_t *mine, int32_t *all, int32_t *refk) {
  const mk_model_config_t *cfg = mk_engine_config(pp);
  mk_engine_stats_t st;
  mk_engine_get_stats(pp, &st);
  mk_kv_cache_t *c = mk_engine_cache(pp);
  const int L = cfg->n_layer, KVH = cfg->n_kv_head, row = c->n_slots + 1;
  const size_t each = (size_t)L * KVH * row;
  for (size_t i = 0; i < each; i++) mine[i] = -2;
  for (int l = st.layer_begin; l < st.layer_end; l++)
    for (int j = 0; j < c->n_heads; j++) {
      int32_t *r = mine + ((size_t)l * KVH + c->heads[j].kv_head) * row;
      r[0] = kept_positions(c, l - st.layer_begin, j, r + 1);
    }
  MPI_Gather(mine, (int)each, MPI_INT32_T, all, (int)each, MPI_INT32_T, 0, ctx->mpi);
  if (ctx->rank != 0) return 0;
  long differ = 0, held = 0;
  mk_kv_cache_t *cr = mk_engine_cache(ref);
  for (int l = 0; l < L; l++)
    for (int h = 0; h < KVH; h++) {
      int nr = kept_positions(cr, l, h, refk);
      for (int r = 0; r < ctx->world; r++) {
        const int32_t *x = all + (size_t)r * each + ((size_t)l * KVH + h) * row;
        if (x[0] == -2) continue;
        held++;
        if (x[0] != nr || memcmp(x + 1, refk, sizeof(int32_t) * (size_t)nr) != 0) differ++;
      }
    }
  if (held < (long)L * KVH) differ += (long)L * KVH - held; /* some (layer, head) held nowhere */
  return differ;
}

/* 4: the per-rank byte figures at T = 1 sum to one process's. */
static void check_sums(mk_ctx_t *ctx, mk_engine_t *pp, mk_engine_t *ref, int tp, const char *what) {
  mk_engine_stats_t s;
  mk_engine_get_stats(pp, &s);
  uint64_t v[3] = {s.weight_bytes, s.kv_alloc_bytes, s.policy_state_bytes}, sum[3];
  printf("rank %d stage %d layers [%d, %d): weight %llu B, KV %llu B, policy state %llu B, sent stage-to-stage "
         "%llu B\n", ctx->rank, s.stage, s.layer_begin, s.layer_end, (unsigned long long)v[0],
         (unsigned long long)v[1], (unsigned long long)v[2], (unsigned long long)s.comm_p2p_bytes);
  MPI_Reduce(v, sum, 3, MPI_UINT64_T, MPI_SUM, 0, ctx->mpi);
  if (ctx->rank != 0 || tp != 1) return;
  mk_engine_stats_t r;
  mk_engine_get_stats(ref, &r);
  printf("%s: sums over ranks: weight %llu (one process %zu), KV %llu (%zu), policy state %llu (%zu)\n", what,
         (unsigned long long)sum[0], r.weight_bytes, (unsigned long long)sum[1], r.kv_alloc_bytes,
         (unsigned long long)sum[2], r.policy_state_bytes);
  CHECK(sum[0] == r.weight_bytes && sum[1] == r.kv_alloc_bytes && sum[2] == r.policy_state_bytes,
        "per-rank byte figures do not sum to the single process's");
}

int main(int argc, char **argv) {
  MPI_Init(&argc, &argv);
  mk_ctx_t ctx;
  mk_error_t err = {{0}};
  if (mk_ctx_init(&ctx, MPI_COMM_WORLD, &err) != 0) mk_ctx_abort(NULL, err.msg);
  if (argc < 4) mk_ctx_abort(&ctx, "usage: pp_engine_test P MODEL|synth POLICY [W C]");
  mk_watchdog_set_timeout(ctx.wd, 120); /* a lost message fails in 2 minutes, not 5 */
  const int P = atoi(argv[1]), T = P > 0 ? ctx.world / P : 0;
  const char *steps = getenv("MK_PP_STEPS");
  const int n_new = steps && atoi(steps) > 0 ? atoi(steps) : 128;
  const char *fr = getenv("MK_PP_FAIL_RANK"); /* that rank aborts at step 3 (fail_test.sh) */
  const int fail_rank = fr && *fr ? atoi(fr) : -1;
  mk_kv_config_t kv;
  mk_kv_config_default(&kv);
  if (mk_kv_policy_parse(argv[3], &kv.policy) != 0) mk_ctx_abort(&ctx, "unknown policy");
  if (argc >= 6) kv.window = atoi(argv[4]), kv.capacity = atoi(argv[5]);
  char path[512] = {0};
  const bool synth = strcmp(argv[2], "synth") == 0;
  const char *be = getenv("MK_PP_BACKEND");
  const bool cuda = be && strcmp(be, "cuda") == 0;
  if (synth) write_synth(&ctx, 6, cuda ? 64 : 0, path, sizeof path); /* CUDA attention: head dims 64, 128, 256 */
  else snprintf(path, sizeof path, "%s", argv[2]);
  mk_engine_params_t ep = {.model_path = path,
                           .backend = {.kind = cuda ? MK_BACKEND_CUDA : MK_BACKEND_CPU, .n_threads = 1, .simd = -1,
                                       .device = -1, .local_rank = ctx.local_rank},
                           .numerics = MK_NUMERICS_DETERMINISTIC, .pp = P};
  mk_engine_t *pp = NULL, *ref = NULL;
  if (mk_engine_open(&pp, &ep, &ctx, &err) != 0) die(&ctx, &err);
  ep.pp = 0;
  if (ctx.rank == 0 && mk_engine_open(&ref, &ep, NULL, &err) != 0) die(&ctx, &err);
  char what[96];
  snprintf(what, sizeof what, "P=%d x T=%d %s %s%s", P, T, synth ? "synth" : "demo", argv[3], cuda ? " cuda" : "");
  const int V = mk_engine_n_vocab(pp);

  const char *text = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16,";
  int32_t ids[256];
  int np = mk_tok_encode(mk_engine_tokenizer(pp), text, strlen(text), false, false, ids, 256, &err);
  if (np <= 0 || np > 200) die(&ctx, &err);
  const char *pt = getenv("MK_PP_PROMPT_TOKENS"); /* a shorter prompt (the emulator's tests) */
  if (pt && atoi(pt) > 0 && atoi(pt) < np) np = atoi(pt);
  const int total = np + n_new + 1;

  /* 1. teacher-forced logits */
  float *lt = malloc(sizeof(float) * (size_t)np * V), *lr = malloc(sizeof(float) * (size_t)np * V);
  if (mk_engine_begin(pp, &kv, 1, total, total, &err) || mk_engine_step(pp, 0, ids, np, true, lt, &err)) die(&ctx, &err);
  CHECK(everywhere(&ctx, fnv(lt, sizeof(float) * (size_t)np * V)), "%s: ranks got different logits", what);
  if (ctx.rank == 0) {
    if (mk_engine_begin(ref, &kv, 1, total, total, &err) || mk_engine_step(ref, 0, ids, np, true, lr, &err))
      die(&ctx, &err);
    long differ = 0;
    for (size_t i = 0; i < (size_t)np * V; i++) differ += memcmp(&lt[i], &lr[i], sizeof(float)) != 0;
    printf("%s: teacher-forced logits over %d positions: %ld of %ld values differ from one process\n", what, np,
           differ, (long)np * V);
    CHECK(differ == 0, "%s: teacher-forced logits differ from one process", what);
  }

  /* 2 + 3. greedy tokens through the sampling path, caches compared at every step */
  mk_sampler_params_t sp;
  mk_sampler_params_default(&sp);
  sp.temperature = 0;
  mk_sampler_t *smp = NULL, *smr = NULL;
  if (mk_sampler_new(&sp, V, &smp, &err) || (ctx.rank == 0 && mk_sampler_new(&sp, V, &smr, &err))) die(&ctx, &err);
  if (mk_engine_begin(pp, &kv, 1, total, total, &err)) die(&ctx, &err);
  if (ctx.rank == 0 && mk_engine_begin(ref, &kv, 1, total, total, &err)) die(&ctx, &err);
  mk_kv_cache_t *c = mk_engine_cache(pp);
  const mk_model_config_t *cfg = mk_engine_config(pp);
  size_t each = (size_t)cfg->n_layer * cfg->n_kv_head * (c->n_slots + 1);
  int32_t *mine = malloc(sizeof(int32_t) * each), *all = malloc(sizeof(int32_t) * each * ctx.world);
  int32_t *refk = malloc(sizeof(int32_t) * (size_t)(c->n_slots + 1)), *hist = malloc(sizeof(int32_t) * total);
  memcpy(hist, ids, sizeof(int32_t) * (size_t)np);
  int n_hist = np, diverged = -1;
  long kept_differ = 0;
  for (int step = 0; step <= n_new; step++) {
    const int32_t *in = step == 0 ? ids : &hist[n_hist - 1];
    int nin = step == 0 ? np : 1;
    int32_t tok = -1, tr = -1;
    if (mk_engine_step_sample(pp, 0, in, nin, smp, hist, n_hist, &tok, &err)) die(&ctx, &err);
    if (ctx.rank == 0 && mk_engine_step_sample(ref, 0, in, nin, smr, hist, n_hist, &tr, &err)) die(&ctx, &err);
    if (fail_rank == ctx.rank && step == 3) { /* the others are already in the next step's waits */
      mk_fail(&err, "bad config: stage %d cannot go on (test-induced failure)", ctx.rank / T);
      mk_ctx_abort(&ctx, err.msg);
    }
    if (ctx.rank == 0 && tr != tok && diverged < 0) diverged = step;
    MPI_Bcast(&tr, 1, MPI_INT32_T, 0, ctx.mpi); /* keep feeding one process's stream */
    if (kv.policy != MK_KV_FULL || step == n_new) kept_differ += compare_kept(&ctx, pp, ref, mine, all, refk);
    hist[n_hist++] = tr;
    if (step == n_new) break;
  }
  CHECK(everywhere(&ctx, fnv(hist, sizeof(int32_t) * (size_t)n_hist)), "%s: ranks hold different token streams", what);
  if (ctx.rank == 0) {
    printf("%s: %d greedy tokens %s one process; kept-position sets differing: %ld\n", what, n_new,
           diverged < 0 ? "identical to" : "DIVERGE from", kept_differ);
    CHECK(diverged < 0, "%s: greedy tokens diverge from one process at step %d", what, diverged);
    CHECK(kept_differ == 0, "%s: %ld kept-position sets differ from one process", what, kept_differ);
  }
  check_sums(&ctx, pp, ref, T, what);
  mk_engine_stats_t s;
  mk_engine_get_stats(pp, &s);
  /* teacher-forced run np tokens, then the sampled run np + n_new tokens */
  uint64_t want = s.stage == P - 1 ? 0 : (uint64_t)(2 * np + n_new) * cfg->n_embd * sizeof(float);
  CHECK(s.comm_p2p_bytes == want, "%s: rank %d sent %llu stage-to-stage bytes, expected %llu", what, ctx.rank,
        (unsigned long long)s.comm_p2p_bytes, (unsigned long long)want);
  int f = fails, any = 0;
  MPI_Allreduce(&f, &any, 1, MPI_INT, MPI_SUM, ctx.mpi);
  if (ctx.rank == 0) printf("%s: pp_engine_test %s\n", any ? "FAIL" : "PASS", what);
  free(lt), free(lr), free(mine), free(all), free(refk), free(hist);
  mk_sampler_free(smp);
  mk_sampler_free(smr);
  mk_engine_close(pp);
  mk_engine_close(ref);
  if (synth && ctx.rank == 0) unlink(path);
  mk_ctx_free(&ctx);
  MPI_Finalize();
  return any ? 1 : 0;
}
