/* Sharding plan: exhaustive checks over every T from 1 to n_head for several shapes (the demo
 * model's 9/3 heads, Llama/Qwen-like shapes, synthetic 8/2), plus the refusals. The properties are
 * checked against brute-force recomputation from the plan's own definition (a query head's KV head
 * is h / (n_head / n_kv_head)), not against the plan's internal arithmetic. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "parallel/plan.h"

typedef struct shape {
  const char *name;
  mk_plan_dims_t d;
} shape_t;

static const shape_t shapes[] = {
    /* n_head, n_kv, head_dim, n_ff, n_vocab, n_embd, ff_align, vocab_align */
    {"smollm2-135m 9/3", {9, 3, 64, 1536, 49152, 576, 32, 32}},
    {"llama3-8b 32/8", {32, 8, 128, 14336, 128256, 4096, 256, 32}},
    {"synthetic 8/2", {8, 2, 16, 256, 1000, 128, 32, 32}},
    {"qwen2.5-7b 28/4", {28, 4, 128, 18944, 152064, 3584, 32, 32}},
    {"synthetic 40/10", {40, 10, 128, 13824, 32000, 5120, 256, 64}},
    {"llama-70b 64/8", {64, 8, 128, 28672, 128256, 8192, 256, 32}},
    {"mha 12/12", {12, 12, 64, 3072, 50257, 768, 1, 1}},
    {"mqa 16/1", {16, 1, 64, 4096, 32000, 1024, 32, 32}},
};

/* Checks one contiguous partition of [0, n) given per-rank [b, e): starts at 0, no gaps, no
 * overlap, ends at n, each part non-empty, sizes within one `unit` of each other. */
static void check_partition(const char *what, const shape_t *s, int tp, const int *b, const int *e,
                            int n, int unit) {
  int lo = n, hi = 0;
  for (int r = 0; r < tp; r++) {
    int expect_b = r == 0 ? 0 : e[r - 1];
    if (b[r] != expect_b || e[r] <= b[r]) {
      print_error("%s, T=%d, rank %d: %s range [%d, %d) (expected to start at %d, non-empty)\n",
                  s->name, tp, r, what, b[r], e[r], expect_b);
      fail();
    }
    int len = e[r] - b[r];
    if (len < lo) lo = len;
    if (len > hi) hi = len;
  }
  assert_int_equal(e[tp - 1], n);
  /* Balanced within one unit (the vocab's last partial block may make it shorter still). */
  if (hi - lo > unit && !(strcmp(what, "vocab") == 0 && hi - lo < 2 * unit)) {
    print_error("%s, T=%d: %s range sizes %d..%d differ by more than %d\n", s->name, tp, what, lo,
                hi, unit);
    fail();
  }
}

/* The whole-world query against the per-rank plans and the brute-force holder counts. */
static void check_world(const shape_t *s, int tp, const mk_plan_t *p, const int *holders) {
  int vb[128], vl[128], rep[1024], n_rep = 0, widest = 0;
  mk_plan_world_t w;
  mk_error_t err;
  memset(rep, 0xff, sizeof rep);
  if (mk_plan_world(&s->d, tp, vb, vl, rep, &w, &err) != 0) {
    print_error("%s, T=%d: world plan refused: %s\n", s->name, tp, err.msg);
    fail();
  }
  assert_int_equal(w.tp, tp);
  for (int r = 0; r < tp; r++) {
    assert_int_equal(vb[r], p[r].vocab_begin);
    assert_int_equal(vl[r], p[r].vocab_end - p[r].vocab_begin);
    if (vl[r] > widest) widest = vl[r];
  }
  assert_int_equal(w.vocab_slice_max, widest);
  for (int k = 0; k < s->d.n_kv_head; k++)
    if (holders[k] > 1) {
      if (n_rep >= w.n_rep || rep[n_rep] != k) {
        print_error("%s, T=%d: replicated KV head %d missing from the world plan (entry %d)\n",
                    s->name, tp, k, n_rep);
        fail();
      }
      n_rep++;
    }
  assert_int_equal(w.n_rep, n_rep);
  assert_int_equal(rep[n_rep], -1); /* nothing written past the list */
  assert_int_equal(w.n_rep > 0, p[0].any_replicated);
  /* NULL arrays: the same counts */
  mk_plan_world_t w2;
  assert_int_equal(mk_plan_world(&s->d, tp, NULL, NULL, NULL, &w2, &err), 0);
  assert_int_equal(w2.n_rep, w.n_rep);
  assert_int_equal(w2.vocab_slice_max, w.vocab_slice_max);
}

static void check_shape_all_tp(const shape_t *s) {
  const mk_plan_dims_t *d = &s->d;
  const int g = d->n_head / d->n_kv_head;
  mk_error_t err;
  assert_int_equal(mk_plan_max_tp(d, &err), d->n_head); /* these shapes are head-limited */
  for (int tp = 1; tp <= d->n_head; tp++) {
    static mk_plan_t p[128];
    int qb[128], qe[128], fb[128], fe[128], vb[128], ve[128];
    int holders[1024];
    memset(holders, 0, sizeof holders);
    for (int r = 0; r < tp; r++) {
      if (mk_plan_make(d, tp, r, &p[r], &err) != 0) {
        print_error("%s, T=%d, rank %d refused: %s\n", s->name, tp, r, err.msg);
        fail();
      }
      assert_int_equal(p[r].tp, tp);
      assert_int_equal(p[r].rank, r);
      qb[r] = p[r].q_begin, qe[r] = p[r].q_end;
      fb[r] = p[r].ff_begin, fe[r] = p[r].ff_end;
      vb[r] = p[r].vocab_begin, ve[r] = p[r].vocab_end;
      assert_int_equal(p[r].ff_begin % d->ff_align, 0);
      assert_int_equal(p[r].ff_end % d->ff_align, 0);
      assert_int_equal(p[r].vocab_begin % d->vocab_align, 0);
      /* KV heads held = exactly the KV heads of the owned query heads. */
      assert_true(p[r].kv_begin >= 0 && p[r].kv_end <= d->n_kv_head);
      for (int k = 0; k < d->n_kv_head; k++) {
        int needed = 0;
        for (int h = p[r].q_begin; h < p[r].q_end; h++) needed |= (h / g == k);
        int held = k >= p[r].kv_begin && k < p[r].kv_end;
        if (needed != held) {
          print_error("%s, T=%d, rank %d: KV head %d needed=%d held=%d (q [%d,%d) kv [%d,%d))\n",
                      s->name, tp, r, k, needed, held, p[r].q_begin, p[r].q_end, p[r].kv_begin,
                      p[r].kv_end);
          fail();
        }
        holders[k] += held;
      }
    }
    check_partition("query-head", s, tp, qb, qe, d->n_head, 1);
    check_partition("ff", s, tp, fb, fe, d->n_ff, d->ff_align);
    check_partition("vocab", s, tp, vb, ve, d->n_vocab, d->vocab_align);

    bool any = false;
    for (int k = 0; k < d->n_kv_head; k++) {
      assert_true(holders[k] >= 1);
      any |= holders[k] > 1;
    }
    for (int r = 0; r < tp; r++) {
      assert_int_equal(p[r].any_replicated, any);
      for (int k = p[r].kv_begin; k < p[r].kv_end; k++) {
        int i = k - p[r].kv_begin;
        assert_int_equal(p[r].kv_replicas[i], holders[k]);
        /* the first holder really holds it, and the one before it does not */
        int f = p[r].kv_first_rank[i];
        assert_true(f >= 0 && f <= r);
        assert_true(k >= p[f].kv_begin && k < p[f].kv_end);
        if (f > 0) assert_false(k >= p[f - 1].kv_begin && k < p[f - 1].kv_end);
      }
    }
    check_world(s, tp, p, holders);
    if (d->n_kv_head % tp == 0 && any) {
      print_error("%s, T=%d divides n_kv_head %d but KV heads are replicated\n", s->name, tp,
                  d->n_kv_head);
      fail();
    }
    if (tp == 1) {
      assert_int_equal(p[0].q_end, d->n_head);
      assert_int_equal(p[0].kv_end - p[0].kv_begin, d->n_kv_head);
      assert_int_equal(p[0].ff_end, d->n_ff);
      assert_int_equal(p[0].vocab_end, d->n_vocab);
      assert_false(p[0].any_replicated);
    }
  }
}

static void test_all_shapes_all_tp(void **state) {
  (void)state;
  for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) check_shape_all_tp(&shapes[i]);
}

/* The demo model over 2 ranks, written out by hand: 9 heads in groups of 3 -> 5 + 4 query heads;
 * the cut falls inside group 1 (heads 3,4,5), so KV head 1 lives on both ranks. */
static void test_demo_model_t2_by_hand(void **state) {
  (void)state;
  mk_plan_t a, b;
  mk_error_t err;
  assert_int_equal(mk_plan_make(&shapes[0].d, 2, 0, &a, &err), 0);
  assert_int_equal(mk_plan_make(&shapes[0].d, 2, 1, &b, &err), 0);
  assert_int_equal(a.q_begin, 0), assert_int_equal(a.q_end, 5);
  assert_int_equal(a.kv_begin, 0), assert_int_equal(a.kv_end, 2);
  assert_int_equal(a.kv_replicas[0], 1), assert_int_equal(a.kv_replicas[1], 2);
  assert_int_equal(b.q_begin, 5), assert_int_equal(b.q_end, 9);
  assert_int_equal(b.kv_begin, 1), assert_int_equal(b.kv_end, 3);
  assert_int_equal(b.kv_replicas[0], 2), assert_int_equal(b.kv_replicas[1], 1);
  assert_int_equal(b.kv_first_rank[0], 0), assert_int_equal(b.kv_first_rank[1], 1);
  assert_true(a.any_replicated && b.any_replicated);
  /* 1536 = 48 blocks of 32 -> 24 blocks each */
  assert_int_equal(a.ff_end, 768), assert_int_equal(b.ff_begin, 768),
      assert_int_equal(b.ff_end, 1536);
  assert_int_equal(a.vocab_end, 24576);

  /* T = 3 = n_kv: one whole group per rank, nothing replicated */
  mk_plan_t c;
  for (int r = 0; r < 3; r++) {
    assert_int_equal(mk_plan_make(&shapes[0].d, 3, r, &c, &err), 0);
    assert_int_equal(c.kv_end - c.kv_begin, 1);
    assert_int_equal(c.kv_begin, r);
    assert_int_equal(c.kv_replicas[0], 1);
    assert_false(c.any_replicated);
  }
  /* T = 9: one query head each, every KV head on 3 ranks */
  assert_int_equal(mk_plan_make(&shapes[0].d, 9, 4, &c, &err), 0);
  assert_int_equal(c.q_begin, 4);
  assert_int_equal(c.kv_begin, 1);
  assert_int_equal(c.kv_replicas[0], 3);
  assert_int_equal(c.kv_first_rank[0], 3);
}

/* The 8/2 synthetic model with a vocab of 1000 = 31 blocks of 32 + 8: the last rank's range ends
 * at 1000. */
static void test_vocab_partial_block(void **state) {
  (void)state;
  mk_plan_t p;
  mk_error_t err;
  assert_int_equal(mk_plan_make(&shapes[2].d, 3, 2, &p, &err), 0);
  assert_int_equal(p.vocab_end, 1000);
  assert_int_equal(p.vocab_begin, 22 * 32); /* 32 blocks over 3: 11, 11, 10 */
}

static void expect_refusal(const mk_plan_dims_t *d, int tp, int rank, const char *needle1,
                           const char *needle2) {
  mk_plan_t p;
  mk_error_t err = {{0}};
  assert_int_equal(mk_plan_make(d, tp, rank, &p, &err), -1);
  if (!strstr(err.msg, needle1) || (needle2 && !strstr(err.msg, needle2))) {
    print_error("T=%d rank %d: message \"%s\" lacks \"%s\" / \"%s\"\n", tp, rank, err.msg, needle1,
                needle2 ? needle2 : "");
    fail();
  }
}

static void test_refusals(void **state) {
  (void)state;
  const mk_plan_dims_t *demo = &shapes[0].d;
  /* too many ranks for the heads: says why and which T works */
  expect_refusal(demo, 10, 0, "9 query heads", "use T <= 9");
  expect_refusal(demo, 10, 0, "T in {1, 3}", NULL);
  expect_refusal(&shapes[1].d, 33, 5, "32 query heads", "use T <= 32");
  expect_refusal(&shapes[1].d, 33, 5, "T in {1, 2, 4, 8}", NULL);
  expect_refusal(demo, 0, 0, "T=0", ">= 1");
  expect_refusal(demo, -2, 0, "T=-2", NULL);
  expect_refusal(demo, 2, 2, "rank 2", "0..1");
  expect_refusal(demo, 2, -1, "rank -1", NULL);

  /* the MLP limits T: 8 heads but only 2 blocks of 32 hidden units */
  mk_plan_dims_t small_ff = {8, 2, 16, 64, 1000, 128, 32, 32};
  mk_error_t err;
  assert_int_equal(mk_plan_max_tp(&small_ff, &err), 2);
  expect_refusal(&small_ff, 3, 0, "MLP has 64 hidden units = 2 blocks of 32", "use T <= 2");
  /* the vocabulary limits T: 100 rows in blocks of 32 = 4 blocks (last partial) */
  mk_plan_dims_t small_vocab = {8, 2, 16, 256, 100, 128, 32, 32};
  assert_int_equal(mk_plan_max_tp(&small_vocab, &err), 4);
  expect_refusal(&small_vocab, 5, 0, "vocabulary has 100 rows = 4 blocks", "use T <= 4");
  mk_plan_t p;
  assert_int_equal(mk_plan_make(&small_vocab, 4, 3, &p, &err), 0);
  assert_int_equal(p.vocab_begin, 96), assert_int_equal(p.vocab_end, 100);

  /* invalid dims */
  mk_plan_dims_t bad = *demo;
  bad.n_kv_head = 4;
  expect_refusal(&bad, 1, 0, "not a multiple of n_kv_head", NULL);
  bad = *demo;
  bad.n_ff = 1540;
  expect_refusal(&bad, 1, 0, "n_ff 1540 is not a multiple of ff_align 32", NULL);
  bad = *demo;
  bad.ff_align = 0;
  expect_refusal(&bad, 1, 0, "ff_align 0", NULL);
  bad = *demo;
  bad.n_head = 0;
  expect_refusal(&bad, 1, 0, "invalid model dims", NULL);
  assert_int_equal(mk_plan_max_tp(&bad, &err), -1);
  expect_refusal(NULL, 1, 0, "no model dims", NULL);

  /* the world query refuses what the per-rank plan refuses, with its message */
  mk_plan_world_t w;
  mk_error_t werr = {{0}};
  assert_int_equal(mk_plan_world(demo, 10, NULL, NULL, NULL, &w, &werr), -1);
  assert_non_null(strstr(werr.msg, "use T <= 9"));
  assert_int_equal(mk_plan_world(demo, 0, NULL, NULL, NULL, &w, &werr), -1);
  assert_non_null(strstr(werr.msg, "T=0"));
  /* the demo model over 2 ranks by hand: KV head 1 is replicated, slices 24576 + 24576 */
  int vb[2], vl[2], rep[3];
  assert_int_equal(mk_plan_world(demo, 2, vb, vl, rep, &w, &werr), 0);
  assert_int_equal(w.n_rep, 1), assert_int_equal(rep[0], 1);
  assert_int_equal(vb[1], 24576), assert_int_equal(vl[1], 49152 - 24576);
  assert_int_equal(w.vocab_slice_max, 24576);
  /* T = 9: every KV head replicated */
  assert_int_equal(mk_plan_world(demo, 9, NULL, NULL, rep, &w, &werr), 0);
  assert_int_equal(w.n_rep, 3);
  assert_int_equal(rep[0], 0), assert_int_equal(rep[1], 1), assert_int_equal(rep[2], 2);
}

/* ---- the PP x TP grid ---- */

/* Every (n_layer, P, T, rank) for n_layer 1..40, P 1..n_layer, T 1..5: stages partition the layers
 * contiguously in stage order, sizes differ by at most one, larger stages first; TP groups are T
 * consecutive ranks; prev/next pair up (next of r is the rank whose prev is r); first/last stages
 * hold the embeddings / LM head. Recomputed by brute force from the definitions. */
static void test_grid_exhaustive(void **state) {
  (void)state;
  mk_error_t err;
  for (int L = 1; L <= 40; L++)
    for (int P = 1; P <= L; P++)
      for (int T = 1; T <= 5; T++) {
        assert_int_equal(mk_grid_tp(L, P * T, P, &err), T);
        int owner[40], lo = L, hi = 0;
        static mk_grid_t all[200];
        memset(owner, 0xff, sizeof owner);
        for (int r = 0; r < P * T; r++)
          if (mk_grid_make(L, P, T, r, &all[r], &err) != 0) {
            print_error("L=%d P=%d T=%d rank %d refused: %s\n", L, P, T, r, err.msg);
            fail();
          }
        for (int r = 0; r < P * T; r++) {
          const mk_grid_t g = all[r];
          assert_int_equal(g.pp, P), assert_int_equal(g.tp, T), assert_int_equal(g.world, P * T);
          assert_int_equal(g.rank, r);
          /* stage-major: ranks of one stage are consecutive */
          for (int q = 0; q < P * T; q++) {
            const mk_grid_t h = all[q];
            bool same_stage = q / T == r / T;
            assert_int_equal(h.stage == g.stage, same_stage);
            if (same_stage) {
              assert_int_equal(h.layer_begin, g.layer_begin), assert_int_equal(h.layer_end, g.layer_end);
            }
            if (q == g.next) assert_int_equal(h.prev, r);
            if (q == g.prev) assert_int_equal(h.next, r);
          }
          assert_int_equal(g.tp_rank, r - g.stage * T);
          assert_true(g.stage >= 0 && g.stage < P);
          assert_int_equal(g.first, g.stage == 0), assert_int_equal(g.last, g.stage == P - 1);
          assert_int_equal(g.prev, g.first ? -1 : r - T);
          assert_int_equal(g.next, g.last ? -1 : r + T);
          int n = g.layer_end - g.layer_begin;
          assert_true(n >= 1);
          if (n < lo) lo = n;
          if (n > hi) hi = n;
          for (int l = g.layer_begin; l < g.layer_end; l++) {
            assert_true(owner[l] == -1 || owner[l] == g.stage);
            owner[l] = g.stage;
          }
        }
        assert_true(hi - lo <= 1);
        for (int l = 0; l < L; l++) {
          assert_true(owner[l] >= 0);
          if (l > 0) assert_true(owner[l] == owner[l - 1] || owner[l] == owner[l - 1] + 1);
          /* larger stages first: stage sizes never increase */
          if (l > 0 && owner[l] != owner[l - 1] && owner[l - 1] > 0) {
            int cur = 0, prev = 0;
            for (int k = 0; k < L; k++) cur += owner[k] == owner[l - 1], prev += owner[k] == owner[l - 1] - 1;
            assert_true(prev >= cur);
          }
        }
        assert_int_equal(owner[0], 0), assert_int_equal(owner[L - 1], P - 1);
      }
}

/* The demo model (30 layers) over 4 stages by hand: 8, 8, 7, 7; and (P, T) = (2, 2). */
static void test_grid_demo_by_hand(void **state) {
  (void)state;
  mk_error_t err;
  const int b[4] = {0, 8, 16, 23}, e[4] = {8, 16, 23, 30};
  for (int s = 0; s < 4; s++) {
    mk_grid_t g;
    assert_int_equal(mk_grid_make(30, 4, 1, s, &g, &err), 0);
    assert_int_equal(g.layer_begin, b[s]), assert_int_equal(g.layer_end, e[s]);
  }
  mk_grid_t g;
  assert_int_equal(mk_grid_make(30, 2, 2, 3, &g, &err), 0);
  assert_int_equal(g.stage, 1), assert_int_equal(g.tp_rank, 1);
  assert_int_equal(g.layer_begin, 15), assert_int_equal(g.layer_end, 30);
  assert_int_equal(g.prev, 1), assert_int_equal(g.next, -1);
  assert_true(g.last && !g.first);
  assert_int_equal(mk_grid_make(30, 2, 2, 1, &g, &err), 0);
  assert_int_equal(g.next, 3), assert_int_equal(g.prev, -1);
  /* one stage: everything, no neighbours */
  assert_int_equal(mk_grid_make(30, 1, 3, 2, &g, &err), 0);
  assert_true(g.first && g.last), assert_int_equal(g.layer_end, 30), assert_int_equal(g.prev, -1);
}

static void expect_grid_refusal(int L, int world, int pp, const char *n1, const char *n2) {
  mk_error_t err = {{0}};
  assert_int_equal(mk_grid_tp(L, world, pp, &err), -1);
  if (!strstr(err.msg, n1) || (n2 && !strstr(err.msg, n2))) {
    print_error("L=%d world=%d P=%d: \"%s\" lacks \"%s\" / \"%s\"\n", L, world, pp, err.msg, n1, n2 ? n2 : "");
    fail();
  }
}

static void test_grid_refusals(void **state) {
  (void)state;
  /* 6 ranks, --pp 4: names the layouts that work */
  expect_grid_refusal(30, 6, 4, "not divisible by --pp 4", "P=1 x T=6, P=2 x T=3, P=3 x T=2, P=6 x T=1");
  /* more stages than layers */
  expect_grid_refusal(4, 5, 5, "model has 4 layers", "P=1 x T=5");
  expect_grid_refusal(2, 4, 4, "stage would hold none", "P=1 x T=4, P=2 x T=2");
  expect_grid_refusal(30, 4, 0, "--pp 0 must be >= 1", "P=4 x T=1");
  expect_grid_refusal(30, 4, -1, "--pp -1", NULL);
  expect_grid_refusal(0, 4, 1, "0 layers", NULL);
  mk_grid_t g;
  mk_error_t err = {{0}};
  assert_int_equal(mk_grid_make(30, 2, 2, 4, &g, &err), -1);
  assert_non_null(strstr(err.msg, "rank 4 is outside 0..3"));
  assert_int_equal(mk_grid_make(30, 2, 0, 0, &g, &err), -1);
  assert_non_null(strstr(err.msg, "T=0"));
  assert_int_equal(mk_grid_make(3, 4, 1, 0, &g, &err), -1);
  assert_non_null(strstr(err.msg, "3 layers"));
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_all_shapes_all_tp),
      cmocka_unit_test(test_demo_model_t2_by_hand),
      cmocka_unit_test(test_vocab_partial_block),
      cmocka_unit_test(test_refusals),
      cmocka_unit_test(test_grid_exhaustive),
      cmocka_unit_test(test_grid_demo_by_hand),
      cmocka_unit_test(test_grid_refusals),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
