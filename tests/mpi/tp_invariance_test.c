/* Layout and batch invariance of the engine, bit for bit (issue 10; run under mpirun -np T).
 *
 *   tp_invariance_test MODEL GOLDEN_JSON DUMP write|check [N_NEW [N_PROMPTS]]
 * For each cache policy (full; MorphKV W 8, C 48) and each prompt (the issue's bicycle prompt plus
 * the 10 golden prompts of tests/golden/logits; N_PROMPTS keeps the first ones), on this T:
 *   - N_NEW (256) greedy tokens, the logits of every step (hashed, FNV-1a over the fp32 bits) and,
 *     after every step, the slot -> position map of every (layer, KV head) (hashed per KV head);
 *   - teacher-forced logits: the prompt and the generated tokens prefilled at once, every row;
 *   - with the full cache, prefill and decode agree bitwise: prefill row np-1+i equals step i;
 *   - a batch: 4 different prompts prefilled as 4 sequences, then 64 steps of
 *     mk_engine_decode_batch, each row's logits and kept positions equal to that prompt's
 *     single-sequence run.
 * `write` (T = 1) stores all of it in DUMP; `check` (any T) recomputes it and requires every
 * hash equal to DUMP: tokens, logits and kept positions identical to the single process. Each rank
 * checks the KV heads it holds. Prints "PASS: tp_invariance_test" or "FAIL: ...". */
#include <jansson.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "parallel/ctx.h"
#include "src/cli.h" /* mk_ctx_abort */
#include "src/engine.h"
#include "tests/mpi/tp_common.h"

#define MAX_PROMPTS 16
#define MAX_PROMPT_TOK 256
#define BATCH 4
#define BATCH_STEPS 64

static uint64_t fnv(uint64_t h, const void *p, size_t n) {
  const unsigned char *b = p;
  for (size_t i = 0; i < n; i++) h = (h ^ b[i]) * 1099511628211ULL;
  return h;
}
#define FNV0 1469598103934665603ULL

typedef struct {
  int np;
  int32_t ids[MAX_PROMPT_TOK];
} prompt_t;

/* Per (policy, prompt): tokens, step hashes, teacher-forced hashes, kept hashes. */
typedef struct {
  int32_t *tok;     /* (n_new) */
  uint64_t *step;   /* (n_new) logits L_i, from which token i is taken */
  uint64_t *tf;     /* (np + n_new - 1) teacher-forced rows */
  uint64_t *kept;   /* (n_new - 1, n_kv) after decode step i */
} run_t;

typedef struct {
  mk_ctx_t *ctx;
  mk_engine_t *e;
  int V, n_kv, n_new;
  bool check;
  long compared, mismatched;
  float *logits;
} tctx_t;

static void expect(tctx_t *t, uint64_t got, uint64_t want, const char *what, int a, int b, int c) {
  t->compared++;
  if (got == want) return;
  if (t->mismatched < 8 && (t->ctx->rank == 0 || strstr(what, "kept")))
    fprintf(stderr, "FAIL: rank %d T=%d: %s (%d, %d, %d) differs from the single process\n", t->ctx->rank,
            t->ctx->world, what, a, b, c);
  t->mismatched++;
}

/* Hash of the slot -> position map of global KV head h (held here as local head j) of seq s. */
static uint64_t kept_hash(mk_kv_cache_t *c, int s, int j) {
  uint64_t h = FNV0;
  for (int l = 0; l < c->n_layer; l++) {
    mk_kv_head_t *kh = mk_kv_cache_head(c, s, l, j);
    h = fnv(h, kh->pos, sizeof(int32_t) * (size_t)kh->hi); /* used slots: the sizes of two runs may differ */
  }
  return h;
}

static void kept_step(tctx_t *t, int s, uint64_t *row /* (n_kv) */, const char *what, int a, int b) {
  mk_kv_cache_t *c = mk_engine_cache(t->e);
  for (int j = 0; j < c->n_heads; j++) {
    int g = c->heads[j].kv_head; /* heads[0..n_heads) are sequence 0, layer 0 */
    uint64_t h = kept_hash(c, s, j);
    if (t->check)
      expect(t, h, row[g], what, a, b, g);
    else
      row[g] = h;
  }
}

static void record(tctx_t *t, uint64_t *slot, uint64_t h, const char *what, int a, int b, int c) {
  if (t->check)
    expect(t, h, *slot, what, a, b, c);
  else
    *slot = h;
}

static void die_e(tctx_t *t, mk_error_t *err) { die(t->ctx, err); }

/* Greedy run + teacher-forced prefill of one prompt. */
static void one_run(tctx_t *t, const mk_kv_config_t *kv, int pi, const prompt_t *p, run_t *r) {
  mk_error_t err = {{0}};
  const int n = t->n_new, V = t->V, total = p->np + n;
  if (mk_engine_begin(t->e, kv, 1, p->np, total, &err) != 0) die_e(t, &err);
  if (mk_engine_step(t->e, 0, p->ids, p->np, false, t->logits, &err) != 0) die_e(t, &err);
  for (int i = 0; i < n; i++) {
    record(t, &r->step[i], fnv(FNV0, t->logits, sizeof(float) * (size_t)V), "step logits (prompt, step, -)", pi, i, 0);
    int32_t tok = argmax(t->logits, V);
    if (t->check && tok != r->tok[i]) {
      expect(t, (uint64_t)tok, (uint64_t)r->tok[i], "greedy token (prompt, step, -)", pi, i, 0);
    }
    r->tok[i] = tok;
    if (i == n - 1) break;
    if (mk_engine_step(t->e, 0, &tok, 1, false, t->logits, &err) != 0) die_e(t, &err);
    kept_step(t, 0, r->kept + (size_t)i * t->n_kv, "kept positions (prompt, step, KV head)", pi, i);
  }
  /* teacher-forced: prompt + tokens 0..n-2 at once */
  const int ntf = p->np + n - 1;
  int32_t *ids = malloc(sizeof(int32_t) * (size_t)ntf);
  float *lg = malloc(sizeof(float) * (size_t)ntf * V);
  memcpy(ids, p->ids, sizeof(int32_t) * (size_t)p->np);
  memcpy(ids + p->np, r->tok, sizeof(int32_t) * (size_t)(n - 1));
  if (mk_engine_begin(t->e, kv, 1, ntf, ntf, &err) != 0) die_e(t, &err);
  if (mk_engine_step(t->e, 0, ids, ntf, true, lg, &err) != 0) die_e(t, &err);
  for (int i = 0; i < ntf; i++) {
    uint64_t h = fnv(FNV0, lg + (size_t)i * V, sizeof(float) * (size_t)V);
    record(t, &r->tf[i], h, "teacher-forced logits (prompt, row, -)", pi, i, 0);
    /* prefill and decode agree bitwise when nothing is evicted (full cache) */
    if (kv->policy == MK_KV_FULL && i >= p->np - 1)
      expect(t, h, r->step[i - (p->np - 1)], "prefill row vs decode step (prompt, step, -)", pi, i - (p->np - 1), 0);
  }
  free(ids);
  free(lg);
}

/* BATCH prompts as BATCH sequences, decoded together; each row against its single-sequence run. */
static void batch_run(tctx_t *t, const mk_kv_config_t *kv, const prompt_t *p, run_t *r) {
  mk_error_t err = {{0}};
  int maxp = 0;
  for (int s = 0; s < BATCH; s++) maxp = p[s].np > maxp ? p[s].np : maxp;
  if (mk_engine_begin(t->e, kv, BATCH, maxp, maxp + BATCH_STEPS + 1, &err) != 0) die_e(t, &err);
  float *lg = malloc(sizeof(float) * BATCH * (size_t)t->V);
  for (int s = 0; s < BATCH; s++) {
    if (mk_engine_step(t->e, s, p[s].ids, p[s].np, false, lg, &err) != 0) die_e(t, &err);
    expect(t, fnv(FNV0, lg, sizeof(float) * (size_t)t->V), r[s].step[0], "batch prefill (seq, -, -)", s, 0, 0);
  }
  int seqs[BATCH];
  int32_t ids[BATCH];
  bool saved = t->check;
  t->check = true; /* the batch is always compared with the single-sequence runs of this process */
  for (int j = 0; j < BATCH_STEPS && j + 1 < t->n_new; j++) {
    for (int s = 0; s < BATCH; s++) seqs[s] = s, ids[s] = r[s].tok[j];
    if (mk_engine_decode_batch(t->e, seqs, ids, BATCH, lg, &err) != 0) die_e(t, &err);
    for (int s = 0; s < BATCH; s++) {
      expect(t, fnv(FNV0, lg + (size_t)s * t->V, sizeof(float) * (size_t)t->V), r[s].step[j + 1],
             "batch step logits (seq, step, -)", s, j, 0);
      kept_step(t, s, r[s].kept + (size_t)j * t->n_kv, "batch kept positions (seq, step, KV head)", s, j);
    }
  }
  t->check = saved;
  free(lg);
}

static int load_prompts(const char *golden, const mk_tokenizer_t *tok, int max_n, prompt_t *out, mk_error_t *err) {
  const char *issue = "Explain how a bicycle gear works.";
  int n = 0;
  out[n].np = mk_tok_encode(tok, issue, strlen(issue), true, false, out[n].ids, MAX_PROMPT_TOK, err);
  if (out[n].np <= 0 || out[n].np > MAX_PROMPT_TOK) return -1;
  n++;
  json_error_t je;
  json_t *g = json_load_file(golden, 0, &je);
  if (!g) return mk_fail(err, "%s: %s (line %d)", golden, je.text, je.line);
  json_t *cases = json_object_get(g, "cases");
  for (size_t c = 0; c < json_array_size(cases) && n < max_n; c++, n++) {
    json_t *ids = json_object_get(json_array_get(cases, c), "prompt_ids");
    out[n].np = (int)json_array_size(ids);
    if (out[n].np <= 0 || out[n].np > MAX_PROMPT_TOK) break;
    for (int i = 0; i < out[n].np; i++) out[n].ids[i] = (int32_t)json_integer_value(json_array_get(ids, (size_t)i));
  }
  json_decref(g);
  return n;
}

int main(int argc, char **argv) {
  MPI_Init(&argc, &argv);
  (void)fails; /* tp_common.h's CHECK counter: this test counts its own mismatches */
  mk_ctx_t ctx;
  mk_error_t err = {{0}};
  if (mk_ctx_init(&ctx, MPI_COMM_WORLD, &err) != 0) mk_ctx_abort(NULL, err.msg);
  if (argc < 5) mk_ctx_abort(&ctx, "usage: tp_invariance_test MODEL GOLDEN_JSON DUMP write|check [N_NEW [N_PROMPTS]]");
  tctx_t t = {.ctx = &ctx, .check = strcmp(argv[4], "check") == 0, .n_new = argc > 5 ? atoi(argv[5]) : 256};
  if (!t.check && ctx.world != 1) mk_ctx_abort(&ctx, "write the dump with one rank");
  mk_engine_params_t ep = {.model_path = argv[1], .backend = {.kind = MK_BACKEND_CPU, .n_threads = 1, .simd = -1},
                           .numerics = MK_NUMERICS_DETERMINISTIC};
  if (mk_engine_open(&t.e, &ep, &ctx, &err) != 0) die(&ctx, &err);
  t.V = mk_engine_n_vocab(t.e);
  t.n_kv = mk_engine_config(t.e)->n_kv_head;
  t.logits = malloc(sizeof(float) * (size_t)t.V);
  prompt_t *pr = calloc(MAX_PROMPTS, sizeof *pr);
  int max_pr = argc > 6 ? atoi(argv[6]) : MAX_PROMPTS;
  if (max_pr < BATCH || max_pr > MAX_PROMPTS) mk_ctx_abort(&ctx, "N_PROMPTS must be 4..16");
  int n_pr = load_prompts(argv[2], mk_engine_tokenizer(t.e), max_pr, pr, &err);
  if (n_pr < BATCH) die(&ctx, &err);

  mk_kv_config_t kvs[2];
  mk_kv_config_default(&kvs[0]);
  mk_kv_config_default(&kvs[1]);
  kvs[1].policy = MK_KV_MORPHKV;
  kvs[1].window = 8;
  kvs[1].capacity = 48;
  /* dump: every run's arrays back to back, in (policy, prompt) order */
  size_t per = 0;
  for (int i = 0; i < n_pr; i++)
    per += (size_t)t.n_new * (4 + 8) + (size_t)(pr[i].np + t.n_new - 1) * 8 + (size_t)(t.n_new - 1) * t.n_kv * 8;
  size_t bytes = 2 * per;
  char *dump = calloc(1, bytes);
  if (t.check) {
    FILE *f = fopen(argv[3], "rb");
    if (!f || fread(dump, 1, bytes, f) != bytes) mk_ctx_abort(&ctx, "cannot read the T=1 dump (run the write step first)");
    fclose(f);
  }
  run_t runs[2][MAX_PROMPTS];
  char *cur = dump;
  for (int k = 0; k < 2; k++)
    for (int i = 0; i < n_pr; i++) {
      run_t *r = &runs[k][i];
      r->tok = (int32_t *)cur, cur += sizeof(int32_t) * (size_t)t.n_new;
      r->step = (uint64_t *)cur, cur += 8 * (size_t)t.n_new;
      r->tf = (uint64_t *)cur, cur += 8 * (size_t)(pr[i].np + t.n_new - 1);
      r->kept = (uint64_t *)cur, cur += 8 * (size_t)(t.n_new - 1) * t.n_kv;
    }
  for (int k = 0; k < 2; k++) {
    long before = t.compared;
    for (int i = 0; i < n_pr; i++) one_run(&t, &kvs[k], i, &pr[i], &runs[k][i]);
    batch_run(&t, &kvs[k], pr, runs[k]);
    if (ctx.rank == 0)
      printf("T=%d %s: %d prompts x %d greedy tokens, teacher-forced rows, %d-sequence batch: %ld hashes compared%s\n",
             ctx.world, mk_kv_policy_name(kvs[k].policy), n_pr, t.n_new, BATCH, t.compared - before,
             t.check ? " with the T=1 dump" : " (batch vs single sequence)");
  }
  if (!t.check && ctx.rank == 0) {
    FILE *f = fopen(argv[3], "wb");
    if (!f || fwrite(dump, 1, bytes, f) != bytes) mk_ctx_abort(&ctx, "cannot write the dump");
    fclose(f);
  }
  long m = t.mismatched, all = 0, c = t.compared, call = 0;
  MPI_Allreduce(&m, &all, 1, MPI_LONG, MPI_SUM, ctx.mpi);
  MPI_Allreduce(&c, &call, 1, MPI_LONG, MPI_SUM, ctx.mpi);
  mk_engine_stats_t st;
  mk_engine_get_stats(t.e, &st);
  if (ctx.rank == 0) {
    printf("T=%d: %ld of %ld comparisons (all ranks) differ; comm bytes: model %llu, score sync %llu\n", ctx.world, all,
           call, (unsigned long long)st.comm_model_bytes, (unsigned long long)st.comm_score_bytes);
    printf("%s: tp_invariance_test T=%d %s\n", all ? "FAIL" : "PASS", ctx.world, argv[4]);
  }
  free(dump);
  free(pr);
  free(t.logits);
  mk_engine_close(t.e);
  mk_ctx_free(&ctx);
  MPI_Finalize();
  return all ? 1 : 0;
}
