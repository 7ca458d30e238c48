/* Sharding plan (see plan.h for the rules). Pure arithmetic: no MPI, no allocation, so every rank
 * computes every other rank's plan identically and the tests can enumerate all (T, rank). */
#include "parallel/plan.h"

#include <stdio.h>
#include <string.h>

/* Contiguous near-equal split of n units over t parts: part r gets [*b, *e). */
static void split_even(int n, int t, int r, int *b, int *e) {
  int base = n / t, rem = n % t;
  *b = r * base + (r < rem ? r : rem);
  *e = *b + base + (r < rem ? 1 : 0);
}

static int check_dims(const mk_plan_dims_t *d, mk_error_t *err) {
  if (!d) return mk_fail(err, "sharding plan: no model dims");
  if (d->n_head < 1 || d->n_kv_head < 1 || d->head_dim < 1 || d->n_ff < 1 || d->n_vocab < 1 ||
      d->n_embd < 1)
    return mk_fail(err,
                   "sharding plan: invalid model dims (n_head %d, n_kv_head %d, head_dim %d, "
                   "n_ff %d, n_vocab %d, n_embd %d): all must be >= 1",
                   d->n_head, d->n_kv_head, d->head_dim, d->n_ff, d->n_vocab, d->n_embd);
  if (d->n_head % d->n_kv_head != 0)
    return mk_fail(err, "sharding plan: n_head %d is not a multiple of n_kv_head %d", d->n_head,
                   d->n_kv_head);
  if (d->ff_align < 1 || d->vocab_align < 1)
    return mk_fail(err, "sharding plan: ff_align %d and vocab_align %d must be >= 1", d->ff_align,
                   d->vocab_align);
  if (d->n_ff % d->ff_align != 0)
    return mk_fail(err,
                   "sharding plan: n_ff %d is not a multiple of ff_align %d (ffn_down rows could "
                   "not be sliced on block boundaries)",
                   d->n_ff, d->ff_align);
  return 0;
}

static int vocab_blocks(const mk_plan_dims_t *d) {
  return (int)(((int64_t)d->n_vocab + d->vocab_align - 1) / d->vocab_align);
}

int mk_plan_max_tp(const mk_plan_dims_t *d, mk_error_t *err) {
  if (check_dims(d, err)) return -1;
  int m = d->n_head;
  if (d->n_ff / d->ff_align < m) m = d->n_ff / d->ff_align;
  if (vocab_blocks(d) < m) m = vocab_blocks(d);
  return m;
}

/* "1, 3" : the T <= max that divide n_kv_head (no KV replication). */
static void no_replication_list(const mk_plan_dims_t *d, int max_tp, char *buf, size_t n) {
  size_t used = 0;
  buf[0] = '\0';
  for (int t = 1; t <= max_tp && t <= d->n_kv_head; t++) {
    if (d->n_kv_head % t) continue;
    int k = snprintf(buf + used, n - used, "%s%d", used ? ", " : "", t);
    if (k < 0 || (size_t)k >= n - used) break;
    used += (size_t)k;
  }
}

int mk_plan_make(const mk_plan_dims_t *d, int tp, int rank, mk_plan_t *out, mk_error_t *err) {
  int max_tp = mk_plan_max_tp(d, err);
  if (max_tp < 0) return -1;
  if (tp < 1) return mk_fail(err, "sharding plan: tensor-parallel degree T=%d must be >= 1", tp);
  if (tp > max_tp) {
    char ok[256];
    no_replication_list(d, max_tp, ok, sizeof ok);
    const char *why;
    char whybuf[256];
    if (tp > d->n_head) {
      snprintf(whybuf, sizeof whybuf, "the model has %d query heads, so some rank would own none",
               d->n_head);
    } else if (tp > d->n_ff / d->ff_align) {
      snprintf(whybuf, sizeof whybuf,
               "the MLP has %d hidden units = %d blocks of %d, so some rank would own none",
               d->n_ff, d->n_ff / d->ff_align, d->ff_align);
    } else {
      snprintf(whybuf, sizeof whybuf,
               "the vocabulary has %d rows = %d blocks of %d, so some rank would own none",
               d->n_vocab, vocab_blocks(d), d->vocab_align);
    }
    why = whybuf;
    return mk_fail(err,
                   "sharding plan: T=%d ranks cannot work: %s; use T <= %d (every T from 1 to %d "
                   "works; T in {%s} needs no KV-head replication)",
                   tp, why, max_tp, max_tp, ok);
  }
  if (rank < 0 || rank >= tp)
    return mk_fail(err, "sharding plan: rank %d is outside 0..%d (T=%d)", rank, tp - 1, tp);

  const int g = d->n_head / d->n_kv_head; /* query heads per KV head */
  mk_plan_t p;
  memset(&p, 0, sizeof p);
  p.tp = tp;
  p.rank = rank;
  split_even(d->n_head, tp, rank, &p.q_begin, &p.q_end);
  p.kv_begin = p.q_begin / g;
  p.kv_end = (p.q_end - 1) / g + 1;
  if (p.kv_end - p.kv_begin > MK_PLAN_MAX_KV_HELD)
    return mk_fail(err, "sharding plan: rank %d would hold %d KV heads, more than the %d supported",
                   rank, p.kv_end - p.kv_begin, MK_PLAN_MAX_KV_HELD);

  /* Replication: a KV head k is held by every rank whose query range meets [k*g, (k+1)*g).
   * Those ranks are contiguous; count them and note the first. */
  for (int r = 0; r < tp; r++) {
    int qb, qe;
    split_even(d->n_head, tp, r, &qb, &qe);
    int kb = qb / g, ke = (qe - 1) / g + 1;
    for (int k = kb; k < ke; k++) {
      if (k >= p.kv_begin && k < p.kv_end) {
        int i = k - p.kv_begin;
        if (p.kv_replicas[i] == 0) p.kv_first_rank[i] = r;
        p.kv_replicas[i]++;
      }
    }
    /* A group cut by this rank's range boundary is shared with a neighbour. */
    if (qb % g != 0 || qe % g != 0) p.any_replicated = true;
  }

  int ffb, ffe;
  split_even(d->n_ff / d->ff_align, tp, rank, &ffb, &ffe);
  p.ff_begin = ffb * d->ff_align;
  p.ff_end = ffe * d->ff_align;

  int vb, ve;
  split_even(vocab_blocks(d), tp, rank, &vb, &ve);
  p.vocab_begin = (int)((int64_t)vb * d->vocab_align);
  int64_t vend = (int64_t)ve * d->vocab_align;
  p.vocab_end = vend > d->n_vocab ? d->n_vocab : (int)vend;

  *out = p;
  return 0;
}

/* Ranks' query ranges are contiguous and non-empty, so their KV ranges are monotone: a head held by
 * ranks r1 < r2 is held by every rank between, in particular by two neighbours. A replicated head
 * is therefore the last KV head of rank r that is also the first of rank r + 1. */
int mk_plan_world(const mk_plan_dims_t *d, int tp, int *vocab_begin, int *vocab_len, int *rep_heads,
                  mk_plan_world_t *out, mk_error_t *err) {
  mk_plan_t p0;
  if (mk_plan_make(d, tp, 0, &p0, err) != 0) return -1; /* refuses T < 1 as well */
  mk_plan_world_t w = {.tp = tp};
  int prev_kv_end = 0, last_rep = -1;
  for (int r = 0; r < tp; r++) {
    mk_plan_t p;
    if (mk_plan_make(d, tp, r, &p, err) != 0) return -1;
    int len = p.vocab_end - p.vocab_begin;
    if (vocab_begin) vocab_begin[r] = p.vocab_begin;
    if (vocab_len) vocab_len[r] = len;
    if (len > w.vocab_slice_max) w.vocab_slice_max = len;
    if (r > 0 && p.kv_begin == prev_kv_end - 1 && p.kv_begin != last_rep) {
      if (rep_heads) rep_heads[w.n_rep] = p.kv_begin;
      w.n_rep++;
      last_rep = p.kv_begin;
    }
    prev_kv_end = p.kv_end;
  }
  *out = w;
  return 0;
}

/* "1, 2, 4 (T = 4, 2, 1)": the P that divide the world and leave every stage a layer. */
static void grid_layouts(int n_layer, int world, char *buf, size_t n) {
  size_t used = 0;
  buf[0] = '\0';
  for (int p = 1; p <= world && p <= n_layer; p++) {
    if (world % p) continue;
    int k = snprintf(buf + used, n - used, "%sP=%d x T=%d", used ? ", " : "", p, world / p);
    if (k < 0 || (size_t)k >= n - used) break;
    used += (size_t)k;
  }
}

int mk_grid_tp(int n_layer, int world, int pp, mk_error_t *err) {
  if (n_layer < 1) return mk_fail(err, "pipeline grid: the model has %d layers", n_layer);
  if (world < 1) return mk_fail(err, "pipeline grid: world of %d ranks", world);
  char ok[512];
  grid_layouts(n_layer, world, ok, sizeof ok);
  if (pp < 1) return mk_fail(err, "pipeline grid: --pp %d must be >= 1 (layouts of %d ranks: %s)", pp, world, ok);
  if (pp > n_layer)
    return mk_fail(err,
                   "pipeline grid: --pp %d stages but the model has %d layers, so a stage would hold "
                   "none; layouts of %d ranks that work: %s",
                   pp, n_layer, world, ok);
  if (world % pp)
    return mk_fail(err,
                   "pipeline grid: %d ranks are not divisible by --pp %d (world = P x T); layouts of "
                   "%d ranks that work: %s",
                   world, pp, world, ok);
  return world / pp;
}

int mk_grid_make(int n_layer, int pp, int tp, int rank, mk_grid_t *out, mk_error_t *err) {
  if (tp < 1) return mk_fail(err, "pipeline grid: T=%d must be >= 1", tp);
  if (pp >= 1 && tp > INT32_MAX / pp) return mk_fail(err, "pipeline grid: P=%d x T=%d overflows", pp, tp);
  if (mk_grid_tp(n_layer, pp >= 1 ? pp * tp : tp, pp, err) < 0) return -1;
  const int world = pp * tp;
  if (rank < 0 || rank >= world)
    return mk_fail(err, "pipeline grid: rank %d is outside 0..%d (P=%d x T=%d)", rank, world - 1, pp, tp);
  mk_grid_t g = {.pp = pp, .tp = tp, .world = world, .rank = rank};
  g.stage = rank / tp;
  g.tp_rank = rank % tp;
  split_even(n_layer, pp, g.stage, &g.layer_begin, &g.layer_end);
  g.first = g.stage == 0;
  g.last = g.stage == pp - 1;
  g.prev = g.first ? -1 : rank - tp;
  g.next = g.last ? -1 : rank + tp;
  *out = g;
  return 0;
}
