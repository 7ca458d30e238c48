/* Token sampler.
 *
 * Order of the chain (llama.cpp's default order, so the same settings give the same
 * distribution): repetition penalty -> top-k -> top-p -> min-p -> temperature -> draw.
 * temperature <= 0 short-cuts to greedy after the penalty.
 *
 * Invariants:
 * - Deterministic: candidates are ordered by (logit descending, id ascending), a total order, so
 *   ties never depend on the sort algorithm, and greedy breaks ties to the lowest id. The PRNG is
 *   xoshiro256** seeded through splitmix64 from params.seed; two samplers with the same seed fed
 *   the same logits draw the same tokens (every rank of a tensor-parallel run agrees).
 * - No allocation per call: the candidate array (n_vocab) and the penalty's "seen" stamps
 *   (n_vocab) are allocated by mk_sampler_new.
 * - Softmax sums are in double so the cumulative mass of top-p does not drift with vocab size. */
#include "src/sampler.h"

#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

typedef struct mk_cand {
  float logit;
  int32_t id;
} mk_cand_t;

struct mk_sampler {
  mk_sampler_params_t p;
  int n_vocab;
  uint64_t rng[4];    /* xoshiro256** state */
  mk_cand_t *cand;    /* (n_vocab) candidates of the current call */
  uint32_t *seen;     /* (n_vocab) penalty stamp: seen[id] == stamp means already penalised */
  uint32_t stamp;
};

void mk_sampler_params_default(mk_sampler_params_t *p) {
  p->temperature = 0.8f;
  p->top_k = 40;
  p->top_p = 0.95f;
  p->min_p = 0.05f;
  p->repeat_penalty = 1.0f;
  p->repeat_last_n = 64;
  p->seed = 42;
}

static uint64_t splitmix64(uint64_t *x) {
  uint64_t z = (*x += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

static inline uint64_t rotl64(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

static uint64_t xoshiro_next(uint64_t s[4]) {
  uint64_t result = rotl64(s[1] * 5, 7) * 9;
  uint64_t t = s[1] << 17;
  s[2] ^= s[0];
  s[3] ^= s[1];
  s[1] ^= s[2];
  s[0] ^= s[3];
  s[2] ^= t;
  s[3] = rotl64(s[3], 45);
  return result;
}

/* uniform in [0, 1) with 53 random bits */
static double rng_uniform(mk_sampler_t *s) {
  return (double)(xoshiro_next(s->rng) >> 11) * (1.0 / 9007199254740992.0);
}

int mk_sampler_new(const mk_sampler_params_t *p, int n_vocab, mk_sampler_t **out, mk_error_t *err) {
  *out = NULL;
  if (n_vocab <= 0) return mk_fail(err, "sampler: vocabulary size %d must be positive", n_vocab);
  if (!(p->temperature == p->temperature))
    return mk_fail(err, "sampler: temperature is NaN");
  if (!(p->repeat_penalty > 0.0f))
    return mk_fail(err, "sampler: repeat penalty %g must be > 0", (double)p->repeat_penalty);
  if (p->top_p != p->top_p || p->top_p <= 0.0f)
    return mk_fail(err, "sampler: top-p %g must be in (0, 1] (1 = off)", (double)p->top_p);
  if (p->min_p != p->min_p || p->min_p > 1.0f)
    return mk_fail(err, "sampler: min-p %g must be in [0, 1] (0 = off)", (double)p->min_p);
  if (p->repeat_last_n < -1)
    return mk_fail(err, "sampler: repeat-last-n %d must be >= -1 (-1 = whole history)",
                   p->repeat_last_n);
  mk_sampler_t *s = calloc(1, sizeof *s);
  if (!s) return mk_fail(err, "sampler: out of memory");
  s->p = *p;
  s->n_vocab = n_vocab;
  s->cand = malloc((size_t)n_vocab * sizeof *s->cand);
  s->seen = calloc((size_t)n_vocab, sizeof *s->seen);
  if (!s->cand || !s->seen) {
    mk_sampler_free(s);
    return mk_fail(err, "sampler: out of memory for %d candidates", n_vocab);
  }
  uint64_t x = p->seed;
  for (int i = 0; i < 4; i++) s->rng[i] = splitmix64(&x);
  *out = s;
  return 0;
}

void mk_sampler_free(mk_sampler_t *s) {
  if (!s) return;
  free(s->cand);
  free(s->seen);
  free(s);
}

/* llama.cpp semantics: each distinct token among the last n is penalised once:
 * logit > 0 ? logit / p : logit * p. logits holds ids [v0, v0 + nv) (the whole vocabulary, or
 * one rank's slice: each id's penalty depends on that id alone, so slices agree with the whole). */
static void apply_penalty(mk_sampler_t *s, float *logits, int v0, int nv, const int32_t *history,
                          int n_history) {
  float pen = s->p.repeat_penalty;
  if (pen == 1.0f || s->p.repeat_last_n == 0 || !history || n_history <= 0) return;
  int n = s->p.repeat_last_n < 0 ? n_history
                                 : (n_history < s->p.repeat_last_n ? n_history : s->p.repeat_last_n);
  if (++s->stamp == 0) { /* wrapped: clear the stamps once every 2^32 calls */
    memset(s->seen, 0, (size_t)s->n_vocab * sizeof *s->seen);
    s->stamp = 1;
  }
  for (int i = n_history - n; i < n_history; i++) {
    int32_t id = history[i];
    if (id < 0 || id >= s->n_vocab || s->seen[id] == s->stamp) continue;
    s->seen[id] = s->stamp;
    if (id < v0 || id >= v0 + nv) continue;
    float *l = &logits[id - v0];
    *l = *l > 0.0f ? *l / pen : *l * pen;
  }
}

/* a before b in the candidate order: larger logit first, then lower id */
static inline int cand_before(const mk_cand_t *a, const mk_cand_t *b) {
  return a->logit > b->logit || (a->logit == b->logit && a->id < b->id);
}

static int cand_cmp(const void *pa, const void *pb) {
  const mk_cand_t *a = pa, *b = pb;
  if (cand_before(a, b)) return -1;
  if (cand_before(b, a)) return 1;
  return 0;
}

static inline void cand_swap(mk_cand_t *a, mk_cand_t *b) {
  mk_cand_t t = *a;
  *a = *b;
  *b = t;
}

/* Rearranges c[0..n) so that its first k entries are the k first in candidate order (unsorted).
 * Quickselect with median-of-three pivots; deterministic. */
static void cand_select(mk_cand_t *c, int n, int k) {
  int lo = 0, hi = n - 1;
  while (lo < hi) {
    int mid = lo + (hi - lo) / 2;
    if (cand_before(&c[mid], &c[lo])) cand_swap(&c[mid], &c[lo]);
    if (cand_before(&c[hi], &c[lo])) cand_swap(&c[hi], &c[lo]);
    if (cand_before(&c[hi], &c[mid])) cand_swap(&c[hi], &c[mid]);
    mk_cand_t pivot = c[mid];
    int i = lo, j = hi;
    while (i <= j) {
      while (cand_before(&c[i], &pivot)) i++;
      while (cand_before(&pivot, &c[j])) j--;
      if (i <= j) {
        cand_swap(&c[i], &c[j]);
        i++;
        j--;
      }
    }
    /* now [lo, j] before-or-equal pivot, [i, hi] after-or-equal pivot */
    if (k - 1 <= j) hi = j;
    else if (k - 1 >= i) lo = i;
    else return;
  }
}

static int32_t greedy(const float *logits, int n) {
  int32_t best = 0;
  float bv = logits[0];
  for (int i = 1; i < n; i++) {
    /* strict >: ties keep the lowest id; a NaN never wins */
    if (logits[i] > bv || (bv != bv && logits[i] == logits[i])) {
      bv = logits[i];
      best = i;
    }
  }
  return best;
}

/* candidates: every finite-or-+inf logit (NaN and -inf can never be drawn), ids from v0 */
static int collect(mk_cand_t *c, const float *logits, int v0, int nv) {
  int n = 0;
  for (int i = 0; i < nv; i++) {
    float l = logits[i];
    if (l == l && l != -INFINITY) c[n++] = (mk_cand_t){l, (int32_t)(v0 + i)};
  }
  return n;
}

static int32_t sample_cands(mk_sampler_t *s, mk_cand_t *c, int n);

int32_t mk_sampler_sample(mk_sampler_t *s, float *logits, const int32_t *history, int n_history) {
  const mk_sampler_params_t *p = &s->p;
  apply_penalty(s, logits, 0, s->n_vocab, history, n_history);
  if (p->temperature <= 0.0f) return greedy(logits, s->n_vocab);
  mk_cand_t *c = s->cand;
  int n = collect(c, logits, 0, s->n_vocab);
  if (n == 0) return greedy(logits, s->n_vocab);
  return sample_cands(s, c, n);
}

/* ---- distributed sampling (sampler.h) ---------------------------------------------------------
 * Why the merged candidates give the full vocabulary's token: the penalty is per id; greedy's
 * (max, lowest id) of the whole is the (max, lowest id) of the ranks' local winners; the whole's
 * top-k (by the total order of cand_before) lies inside the union of the local top-k's, so
 * cand_select picks the same set; from there every step depends on the set only: top-p and the
 * final sort order it (n <= top_k <= MK_SAMPLER_MAX_K <= 4096, so the sort always runs), min-p
 * reads its maximum, the draw walks it in that order. The RNG is consumed on the same calls. */

int mk_sampler_cand_count(const mk_sampler_t *s) {
  if (s->p.temperature <= 0.0f) return 1;
  if (s->p.top_k <= 0 || s->p.top_k > MK_SAMPLER_MAX_K) return 0;
  return 1 + s->p.top_k;
}

/* greedy's rule: strict >, so ties keep the first (lowest) id; a NaN never wins over a number */
static inline bool greedy_better(float v, float best) {
  return v > best || (best != best && v == v);
}

void mk_sampler_local(mk_sampler_t *s, float *slice, int v0, int nv, const int32_t *history,
                      int n_history, mk_sample_cand_t *out) {
  apply_penalty(s, slice, v0, nv, history, n_history);
  int32_t g = nv > 0 ? greedy(slice, nv) : 0;
  out[0] = (mk_sample_cand_t){nv > 0 ? slice[g] : NAN, nv > 0 ? v0 + g : -1};
  const int k = mk_sampler_cand_count(s) - 1;
  if (k <= 0) return;
  mk_cand_t *c = s->cand;
  int n = collect(c, slice, v0, nv);
  if (n > k) {
    cand_select(c, n, k);
    n = k;
  }
  for (int i = 0; i < k; i++)
    out[1 + i] = i < n ? (mk_sample_cand_t){c[i].logit, c[i].id} : (mk_sample_cand_t){0.0f, -1};
}

int32_t mk_sampler_merge(mk_sampler_t *s, const mk_sample_cand_t *all, int n_ranks) {
  const int per = mk_sampler_cand_count(s);
  /* the whole vocabulary's greedy choice: ranks hold ascending id ranges, but compare ids anyway */
  int32_t best = -1;
  float bv = NAN;
  for (int r = 0; r < n_ranks; r++) {
    const mk_sample_cand_t *g = &all[(size_t)r * per];
    if (g->id < 0) continue;
    if (best < 0 || greedy_better(g->logit, bv) || (g->logit == bv && g->id < best)) {
      best = g->id;
      bv = g->logit;
    }
  }
  if (best < 0) best = 0;
  if (s->p.temperature <= 0.0f || per <= 1) return best;
  mk_cand_t *c = s->cand;
  int n = 0;
  for (int r = 0; r < n_ranks; r++)
    for (int i = 1; i < per; i++) {
      const mk_sample_cand_t *x = &all[(size_t)r * per + i];
      if (x->id >= 0 && n < s->n_vocab) c[n++] = (mk_cand_t){x->logit, x->id};
    }
  if (n == 0) return best;
  return sample_cands(s, c, n);
}

/* The chain after the penalty, on n >= 1 candidates: top-k, top-p, min-p, temperature, draw. */
static int32_t sample_cands(mk_sampler_t *s, mk_cand_t *c, int n) {
  const mk_sampler_params_t *p = &s->p;
  bool sorted = false;
  if (p->top_k > 0 && p->top_k < n) {
    cand_select(c, n, p->top_k);
    n = p->top_k;
  }
  if (p->top_p < 1.0f) {
    qsort(c, (size_t)n, sizeof *c, cand_cmp);
    sorted = true;
    double mx = c[0].logit, sum = 0.0;
    for (int i = 0; i < n; i++) sum += exp((double)c[i].logit - mx);
    double cum = 0.0, target = (double)p->top_p * sum;
    for (int i = 0; i < n; i++) {
      cum += exp((double)c[i].logit - mx);
      if (cum >= target) {
        n = i + 1;
        break;
      }
    }
  }
  if (p->min_p > 0.0f) {
    /* keep prob >= min_p * max_prob, i.e. logit >= max_logit + log(min_p) */
    float mx = c[0].logit;
    if (!sorted)
      for (int i = 1; i < n; i++) mx = c[i].logit > mx ? c[i].logit : mx;
    float thr = mx + logf(p->min_p);
    int m = 0;
    for (int i = 0; i < n; i++)
      if (c[i].logit >= thr) c[m++] = c[i];
    n = m; /* the max itself always passes, so n >= 1 */
  }
  /* temperature, then draw from the softmax in candidate order. The order after the filters is
   * already deterministic; sorting a small remainder also makes it independent of how top-k
   * happened to leave the array. */
  if (!sorted && n > 1 && n <= 4096) qsort(c, (size_t)n, sizeof *c, cand_cmp);
  float mx = c[0].logit;
  for (int i = 1; i < n; i++) mx = c[i].logit > mx ? c[i].logit : mx;
  if (mx == INFINITY) { /* +inf dominates: the first such candidate in order */
    for (int i = 0; i < n; i++)
      if (c[i].logit == INFINITY) return c[i].id;
  }
  double inv_t = 1.0 / (double)p->temperature, sum = 0.0;
  for (int i = 0; i < n; i++) sum += exp(((double)c[i].logit - mx) * inv_t);
  double u = rng_uniform(s) * sum, cum = 0.0;
  for (int i = 0; i < n; i++) {
    cum += exp(((double)c[i].logit - mx) * inv_t);
    if (u < cum) return c[i].id;
  }
  return c[n - 1].id; /* rounding: u landed at the very top */
}
