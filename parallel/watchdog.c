/* The collective watchdog (see watchdog.h for the protocol). */
#define _POSIX_C_SOURCE 200809L
#include "parallel/watchdog.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "parallel/mpi_check.h"

#define WD_TAG 0x6d6b /* state exchange on wd->diag (nothing else is sent there) */

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

int mk_wait_bounded(mk_wait_test_fn test, void *arg, double timeout_s, double *max_gap_s,
                    mk_error_t *err) {
  int r = test(arg, err);
  if (r) return r < 0 ? -1 : 0;
  const double t0 = now_s(), spin_end = t0 + 1e-9 * (double)MK_WAIT_SPIN_NS;
  double last = t0;
  if (max_gap_s) *max_gap_s = 0;
  do {
    r = test(arg, err);
    if (r) return r < 0 ? -1 : 0;
  } while (now_s() < spin_end);
  long ns = 1000;
  for (;;) {
    struct timespec d = {0, ns};
    nanosleep(&d, NULL);
    ns = ns * 2 > MK_WAIT_SLEEP_MAX_NS ? MK_WAIT_SLEEP_MAX_NS : ns * 2;
    r = test(arg, err);
    if (r) return r < 0 ? -1 : 0;
    double t = now_s();
    if (max_gap_s && t - last > *max_gap_s) *max_gap_s = t - last;
    last = t;
    if (timeout_s > 0 && t - t0 >= timeout_s) return 1;
  }
}

/* ---- channels: which membership a communicator spans ---- */

/* Cached on a communicator (MPI attribute, freed with it): its members as ranks of `diag`. */
typedef struct wd_members {
  uint64_t gen; /* the watchdog it was made for (mk_watchdog_t.gen: handles may be reused) */
  uint64_t id;
  int size;
  int *rank; /* rank[i] = diag rank of comm rank i */
} wd_members_t;

static int members_keyval = MPI_KEYVAL_INVALID;

static int members_delete(MPI_Comm comm, int keyval, void *val, void *extra) {
  (void)comm, (void)keyval, (void)extra;
  wd_members_t *m = val;
  if (m) free(m->rank);
  free(m);
  return MPI_SUCCESS;
}

/* Translates comm's ranks into diag's; NULL with err when a rank is outside diag. */
static wd_members_t *members_make(const mk_watchdog_t *wd, MPI_Comm comm, mk_error_t *err) {
  MPI_Group g = MPI_GROUP_NULL, dg = MPI_GROUP_NULL;
  int n = 0;
  MPI_Comm_group(comm, &g);
  MPI_Comm_group(wd->diag, &dg);
  MPI_Group_size(g, &n);
  wd_members_t *m = calloc(1, sizeof *m);
  int *in = malloc(sizeof(int) * (size_t)(n > 0 ? n : 1));
  if (m) m->rank = malloc(sizeof(int) * (size_t)(n > 0 ? n : 1));
  int bad = !m || !in || !m->rank;
  if (!bad) {
    for (int i = 0; i < n; i++) in[i] = i;
    MPI_Group_translate_ranks(g, n, in, dg, m->rank);
    m->gen = wd->gen;
    m->size = n;
    m->id = 1469598103934665603ULL; /* FNV-1a over the member ranks */
    for (int i = 0; i < n && !bad; i++) {
      bad = m->rank[i] == MPI_UNDEFINED || m->rank[i] < 0 || m->rank[i] >= wd->size;
      m->id = (m->id ^ (uint64_t)(uint32_t)m->rank[i]) * 1099511628211ULL;
    }
  }
  free(in);
  MPI_Group_free(&g);
  MPI_Group_free(&dg);
  if (bad) {
    members_delete(comm, 0, m, NULL);
    mk_fail(err, "comm watchdog on rank %d: a communicator of %d ranks is not inside the watchdog's world "
                 "of %d (or out of memory)", wd->rank, n, wd->size);
    return NULL;
  }
  return m;
}

static const wd_members_t *members_of(const mk_watchdog_t *wd, MPI_Comm comm, mk_error_t *err) {
  if (members_keyval == MPI_KEYVAL_INVALID &&
      MPI_Comm_create_keyval(MPI_COMM_NULL_COPY_FN, members_delete, &members_keyval, NULL) != MPI_SUCCESS) {
    mk_fail(err, "comm watchdog on rank %d: MPI_Comm_create_keyval failed", wd->rank);
    return NULL;
  }
  void *val = NULL;
  int flag = 0;
  MPI_Comm_get_attr(comm, members_keyval, &val, &flag);
  if (flag && val && ((wd_members_t *)val)->gen == wd->gen) return val;
  wd_members_t *m = members_make(wd, comm, err);
  if (m && MPI_Comm_set_attr(comm, members_keyval, m) != MPI_SUCCESS) {
    members_delete(comm, 0, m, NULL);
    mk_fail(err, "comm watchdog on rank %d: MPI_Comm_set_attr failed", wd->rank);
    return NULL;
  }
  return m;
}

#define WORDS(n) (((size_t)(n) + 63) / 64)

/* The counter of m's membership (registered on first use); -1 when the table is full. */
static int chan_of(mk_watchdog_t *wd, const wd_members_t *m) {
  for (int i = 0; i < wd->n_chans; i++)
    if (wd->chans[i].id == m->id) return i;
  if (wd->n_chans == MK_WD_MAX_CHANS) return -1;
  mk_wd_chan_t *c = &wd->chans[wd->n_chans];
  c->bits = calloc(WORDS(wd->size), sizeof(uint64_t));
  if (!c->bits) return -1;
  c->id = m->id;
  c->seq = 0;
  c->size = m->size;
  c->first = wd->size;
  for (int i = 0; i < m->size; i++) {
    c->bits[m->rank[i] / 64] |= 1ULL << (m->rank[i] % 64);
    if (m->rank[i] < c->first) c->first = m->rank[i];
  }
  return wd->n_chans++;
}

/* Counts the call this rank is about to start and records it as the wait in progress. */
static int wd_begin(mk_watchdog_t *wd, MPI_Comm comm, int kind, int peer, const char *call,
                    const char *what, mk_error_t *err) {
  const wd_members_t *m = members_of(wd, comm, err);
  if (!m) return -1;
  mk_wd_wait_t *w = &wd->cur;
  *w = (mk_wd_wait_t){.kind = kind, .chan = -1, .peer = -1, .call = call, .what = what};
  if (kind == MK_WD_COLL) {
    w->chan = chan_of(wd, m);
    if (w->chan < 0) w->kind = MK_WD_NONE;
    else w->seq = ++wd->chans[w->chan].seq;
  } else if (peer < 0 || peer >= m->size) {
    w->kind = MK_WD_NONE; /* MPI refuses it right after */
  } else {
    w->peer = m->rank[peer];
    w->seq = kind == MK_WD_SEND ? ++wd->sent[w->peer] : ++wd->recvd[w->peer];
  }
  return 0;
}

int mk_watchdog_create(MPI_Comm comm, double timeout_s, mk_watchdog_t **out, mk_error_t *err) {
  *out = NULL;
  int rank = -1;
  MPI_Comm_rank(comm, &rank);
  mk_watchdog_t *wd = calloc(1, sizeof *wd);
  if (!wd) return mk_fail(err, "comm watchdog on rank %d: out of memory", rank);
  static uint64_t generation;
  wd->gen = ++generation;
  wd->timeout_s = timeout_s > 0 ? timeout_s : 0;
  wd->diag = MPI_COMM_NULL;
  if (mk_mpi_dup(comm, "comm watchdog", &wd->diag, &wd->rank, &wd->size, err) != 0) {
    mk_watchdog_free(wd);
    return -1;
  }
  wd->sent = calloc((size_t)wd->size, sizeof *wd->sent);
  wd->recvd = calloc((size_t)wd->size, sizeof *wd->recvd);
  if (!wd->sent || !wd->recvd) {
    mk_watchdog_free(wd);
    return mk_fail(err, "comm watchdog on rank %d: out of memory", rank);
  }
  *out = wd;
  return 0;
}

void mk_watchdog_free(mk_watchdog_t *wd) {
  if (!wd) return;
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized && wd->diag != MPI_COMM_NULL) MPI_Comm_free(&wd->diag);
  for (int i = 0; i < wd->n_chans; i++) free(wd->chans[i].bits);
  free(wd->sent);
  free(wd->recvd);
  free(wd);
}

void mk_watchdog_set_timeout(mk_watchdog_t *wd, double timeout_s) {
  if (wd) wd->timeout_s = timeout_s > 0 ? timeout_s : 0;
}

int mk_watchdog_on(const mk_watchdog_t *wd) {
  return wd && wd->timeout_s > 0 && wd->size > 1;
}

double mk_watchdog_grace_s(const mk_watchdog_t *wd) {
  double g = wd->timeout_s / 2;
  return g < 0.5 ? 0.5 : g > 5 ? 5 : g;
}

/* ---- the timeout path: state records ---- */

/* What a rank tells its peers after a timeout; followed by sent[size], recvd[size] and the member
 * bitmap (WORDS(size) words) of the channel it waits on. */
typedef struct wd_record {
  uint32_t magic;
  int32_t kind, peer, chan_size, chan_first, n_chans;
  uint64_t chan_id, seq;
  uint64_t stalled_ms; /* > 0: this rank itself did not run that long (stopped or starved) */
  char call[32], what[40];
  uint64_t chan_ids[MK_WD_MAX_CHANS], chan_seqs[MK_WD_MAX_CHANS];
} wd_record_t;
_Static_assert(sizeof(wd_record_t) % sizeof(uint64_t) == 0, "records are arrays of uint64_t");
#define WD_MAGIC 0x6d6b7764u
#define WD_LIST_ALIVE 3 /* alive ranks named in "did not arrive" */

typedef struct wd_diag {
  const mk_watchdog_t *wd;
  uint64_t *all; /* size records of rw words */
  size_t rw;
  char *have;    /* have[p]: p answered (have[rank] = 1) */
} wd_diag_t;

static const wd_record_t *rec(const wd_diag_t *d, int p) {
  return (const wd_record_t *)(d->all + (size_t)p * d->rw);
}
static const uint64_t *rec_sent(const wd_diag_t *d, int p) { return (const uint64_t *)(rec(d, p) + 1); }
static const uint64_t *rec_recvd(const wd_diag_t *d, int p) { return rec_sent(d, p) + d->wd->size; }
static int rec_member(const wd_diag_t *d, int x, int p) {
  const uint64_t *bits = rec_recvd(d, x) + d->wd->size;
  return (int)((bits[p / 64] >> (p % 64)) & 1);
}
/* p answered, but had itself been stopped (it answers once it runs again, e.g. after Open MPI's
 * SIGCONT on the way to killing the job): a root cause like a rank that does not answer. */
static int rec_stalled(const wd_diag_t *d, int p) { return d->have[p] && rec(d, p)->stalled_ms > 0; }

static uint64_t rec_chan_seq(const wd_diag_t *d, int p, uint64_t id) {
  const wd_record_t *r = rec(d, p);
  for (int i = 0; i < r->n_chans && i < MK_WD_MAX_CHANS; i++)
    if (r->chan_ids[i] == id) return r->chan_seqs[i];
  return 0;
}

/* This rank's record, into r (rw words). */
static void record_fill(const mk_watchdog_t *wd, const char *call, const char *what, uint64_t *words,
                        size_t rw) {
  memset(words, 0, rw * sizeof *words);
  wd_record_t *r = (wd_record_t *)words;
  const mk_wd_wait_t *w = &wd->cur;
  r->magic = WD_MAGIC;
  r->kind = w->kind;
  r->peer = w->peer;
  r->seq = w->seq;
  r->stalled_ms = (uint64_t)(wd->stalled_s * 1000);
  snprintf(r->call, sizeof r->call, "%s", call);
  snprintf(r->what, sizeof r->what, "%s", what);
  r->n_chans = wd->n_chans;
  for (int i = 0; i < wd->n_chans; i++) {
    r->chan_ids[i] = wd->chans[i].id;
    r->chan_seqs[i] = wd->chans[i].seq;
  }
  uint64_t *sent = (uint64_t *)(r + 1), *recvd = sent + wd->size, *bits = recvd + wd->size;
  memcpy(sent, wd->sent, sizeof(uint64_t) * (size_t)wd->size);
  memcpy(recvd, wd->recvd, sizeof(uint64_t) * (size_t)wd->size);
  if (w->kind == MK_WD_COLL) {
    const mk_wd_chan_t *c = &wd->chans[w->chan];
    r->chan_id = c->id;
    r->chan_size = c->size;
    r->chan_first = c->first;
    memcpy(bits, c->bits, sizeof(uint64_t) * WORDS(wd->size));
  }
}

/* Sends this rank's record to every peer and collects theirs for up to the grace period. */
static void exchange_records(const mk_watchdog_t *wd, wd_diag_t *d) {
  const int n = wd->size;
  MPI_Request *rq = malloc(2 * (size_t)n * sizeof *rq);
  /* must outlive the sends, which a wedged peer never matches: the process aborts right after,
   * so this is not freed */
  uint64_t *mine = malloc(d->rw * sizeof *mine);
  if (!rq || !mine) {
    free(rq);
    free(mine);
    return;
  }
  memcpy(mine, d->all + (size_t)wd->rank * d->rw, d->rw * sizeof *mine);
  const int count = (int)(d->rw * sizeof *mine);
  for (int p = 0; p < n; p++) {
    rq[p] = rq[n + p] = MPI_REQUEST_NULL;
    if (p == wd->rank) continue;
    MPI_Irecv(d->all + (size_t)p * d->rw, count, MPI_BYTE, p, WD_TAG, wd->diag, &rq[p]);
    MPI_Isend(mine, count, MPI_BYTE, p, WD_TAG, wd->diag, &rq[n + p]);
  }
  const double end = now_s() + mk_watchdog_grace_s(wd);
  long ns = 1000;
  for (;;) {
    int all = 0;
    MPI_Testall(n, rq, &all, MPI_STATUSES_IGNORE); /* receives only: sends may never match */
    if (all || now_s() >= end) break;
    struct timespec ts = {0, ns};
    nanosleep(&ts, NULL);
    ns = ns * 2 > MK_WAIT_SLEEP_MAX_NS ? MK_WAIT_SLEEP_MAX_NS : ns * 2;
  }
  for (int p = 0; p < n; p++) {
    if (p == wd->rank) continue;
    int flag = rq[p] == MPI_REQUEST_NULL;
    if (!flag) MPI_Test(&rq[p], &flag, MPI_STATUS_IGNORE);
    if (!flag) MPI_Cancel(&rq[p]); /* must not write into d->all later: all is not freed either */
    d->have[p] = flag && rec(d, p)->magic == WD_MAGIC;
  }
  free(rq); /* the sends stay pending; MPI_Abort follows */
}
/* ---- the timeout path: diagnosis ---- */

typedef struct wd_msg {
  char buf[sizeof(((mk_error_t *)0)->msg)];
  size_t len;
} wd_msg_t;

static void app(wd_msg_t *m, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void app(wd_msg_t *m, const char *fmt, ...) {
  if (m->len >= sizeof m->buf - 1) return;
  va_list ap;
  va_start(ap, fmt);
  int k = vsnprintf(m->buf + m->len, sizeof m->buf - m->len, fmt, ap);
  va_end(ap);
  if (k > 0) m->len += (size_t)k;
  if (m->len > sizeof m->buf - 1) m->len = sizeof m->buf - 1;
}

static void app_stalled(wd_msg_t *m, const wd_diag_t *d, int q) {
  app(m, " rank %d (did not run for %.1f s: stopped or starved)", q, 1e-3 * (double)rec(d, q)->stalled_ms);
}

/* "MPI_Iallreduce (model, collective #345 of ranks 0-1)", from rank p's record. */
static void app_wait(wd_msg_t *m, const wd_diag_t *d, int p) {
  const wd_record_t *r = rec(d, p);
  const unsigned long long k = (unsigned long long)r->seq;
  app(m, "%.32s (%.40s", r->call, r->what);
  if (r->kind == MK_WD_COLL && r->chan_size == d->wd->size)
    app(m, ", collective #%llu of the world)", k);
  else if (r->kind == MK_WD_COLL) {
    int contiguous = 1;
    for (int q = r->chan_first; q < r->chan_first + r->chan_size && q < d->wd->size; q++)
      contiguous &= rec_member(d, p, q);
    if (contiguous) app(m, ", collective #%llu of ranks %d-%d)", k, r->chan_first, r->chan_first + r->chan_size - 1);
    else app(m, ", collective #%llu of %d ranks from rank %d)", k, r->chan_size, r->chan_first);
  } else if (r->kind == MK_WD_SEND)
    app(m, ", message #%llu to rank %d)", k, r->peer);
  else if (r->kind == MK_WD_RECV)
    app(m, ", message #%llu from rank %d)", k, r->peer);
  else
    app(m, ")");
}

/* The ranks x's wait needs that have not reached it (see watchdog.h), or that reached it but were
 * stopped there, into out; how many. */
static int blockers(const wd_diag_t *d, int x, int *out) {
  const wd_record_t *r = rec(d, x);
  const int n = d->wd->size, p = r->peer;
  int k = 0;
  if (r->kind == MK_WD_COLL) {
    for (int q = 0; q < n; q++)
      if (q != x && rec_member(d, x, q) &&
          (!d->have[q] || rec_stalled(d, q) || rec_chan_seq(d, q, r->chan_id) < r->seq))
        out[k++] = q;
  } else if (r->kind == MK_WD_RECV || r->kind == MK_WD_SEND) {
    if (p < 0 || p >= n) return 0;
    const uint64_t *theirs = d->have[p] ? (r->kind == MK_WD_RECV ? rec_sent(d, p) : rec_recvd(d, p)) : NULL;
    if (!theirs || rec_stalled(d, p) || theirs[x] < r->seq) out[k++] = p;
  } else {
    for (int q = 0; q < n; q++)
      if (q != x && (!d->have[q] || rec_stalled(d, q))) out[k++] = q;
  }
  return k;
}

/* " rank q (...)" for q, a rank that x's wait needs. */
static void app_blocker(wd_msg_t *m, const wd_diag_t *d, int x, int q) {
  if (!d->have[q]) {
    app(m, " rank %d (no answer within %g s)", q, mk_watchdog_grace_s(d->wd));
    return;
  }
  if (rec_stalled(d, q)) {
    app_stalled(m, d, q);
    return;
  }
  const wd_record_t *r = rec(d, x);
  const char *who = x == d->wd->rank ? "this rank" : "it";
  if (r->kind == MK_WD_COLL)
    app(m, " rank %d (alive, at collective #%llu there: waiting in ", q,
        (unsigned long long)rec_chan_seq(d, q, r->chan_id));
  else if (r->kind == MK_WD_RECV)
    app(m, " rank %d (alive, has sent %llu messages to %s: waiting in ", q,
        (unsigned long long)rec_sent(d, q)[x], who);
  else
    app(m, " rank %d (alive, has posted %llu receives from %s: waiting in ", q,
        (unsigned long long)rec_recvd(d, q)[x], who);
  app_wait(m, d, q);
  app(m, ")");
}

/* Follows the alive blockers transitively from `direct`; appends "; root cause: ..." unless the
 * root cause is just the direct list's ranks that did not answer. */
static void app_root_cause(wd_msg_t *m, const wd_diag_t *d, const int *direct, int n_direct) {
  const int n = d->wd->size;
  int *queue = malloc(sizeof(int) * (size_t)n * 3), *b = queue ? queue + n : NULL, *root = b ? b + n : NULL;
  char *seen = calloc((size_t)n, 1);
  int head = 0, tail = 0, roots = 0, new_root = 0;
  if (!queue || !seen) {
    free(queue), free(seen);
    return;
  }
  seen[d->wd->rank] = 1;
  for (int i = 0; i < n_direct; i++) seen[direct[i]] = 1, queue[tail++] = direct[i];
  while (head < tail) {
    const int q = queue[head++], alive = d->have[q] && !rec_stalled(d, q), nb = alive ? blockers(d, q, b) : 0;
    if (!alive || nb == 0) {
      root[roots++] = q;
      new_root |= alive || head > n_direct; /* alive, or reached through an alive rank */
    }
    for (int i = 0; i < nb; i++)
      if (!seen[b[i]]) seen[b[i]] = 1, queue[tail++] = b[i];
  }
  if (new_root || !roots) app(m, "; root cause:");
  for (int i = 0; i < roots && new_root; i++) {
    int q = root[i];
    app(m, "%s", i ? "," : "");
    if (!d->have[q]) {
      app(m, " rank %d (no answer within %g s)", q, mk_watchdog_grace_s(d->wd));
      continue;
    }
    if (rec_stalled(d, q)) {
      app_stalled(m, d, q);
      continue;
    }
    app(m, " rank %d (alive, in ", q);
    app_wait(m, d, q);
    app(m, ", which every peer has reached: a lost message or mismatched calls)");
  }
  if (!roots) app(m, " not found (the alive ranks wait on each other in a cycle: mismatched calls)");
  free(queue);
  free(seen);
}

int mk_watchdog_expire(mk_watchdog_t *wd, const char *call, const char *what, const char *detail,
                       mk_error_t *err) {
  const int n = wd->size;
  wd_diag_t d = {wd, NULL, sizeof(wd_record_t) / sizeof(uint64_t) + 2 * (size_t)n + WORDS(n), NULL};
  d.all = calloc((size_t)n * d.rw, sizeof *d.all); /* not freed: late receives may land (see exchange) */
  d.have = calloc((size_t)n, 1);
  int *direct = malloc(sizeof(int) * (size_t)n);
  wd_msg_t m = {.len = 0};
  if (!d.all || !d.have || !direct) {
    free(d.have), free(direct);
    return mk_fail(err, "comm watchdog: %s (%s) did not complete within %g s (rank %d, out of memory for the "
                   "diagnosis)", call, what, wd->timeout_s, wd->rank);
  }
  record_fill(wd, call, what, d.all + (size_t)wd->rank * d.rw, d.rw);
  d.have[wd->rank] = 1;
  exchange_records(wd, &d);
  app(&m, "comm watchdog: ");
  app_wait(&m, &d, wd->rank);
  app(&m, " did not complete within %g s%s%s; did not arrive:", wd->timeout_s, detail ? "; " : "",
      detail ? detail : "");
  /* every rank that did not answer (or was stopped); alive ones up to WD_LIST_ALIVE, so that the
   * root cause, last, still fits the message on a large world */
  int nd = blockers(&d, wd->rank, direct), listed = 0, alive = 0;
  for (int i = 0; i < nd; i++) {
    const int q = direct[i], up = d.have[q] && !rec_stalled(&d, q);
    if (up && ++alive > WD_LIST_ALIVE) continue;
    app(&m, "%s", listed++ ? "," : "");
    app_blocker(&m, &d, wd->rank, q);
  }
  if (alive > WD_LIST_ALIVE) app(&m, " and %d more alive ranks waiting elsewhere", alive - WD_LIST_ALIVE);
  if (!nd)
    app(&m, " none found (every peer %s)", wd->cur.kind == MK_WD_NONE ? "answered" : "answered at or past it");
  else
    app_root_cause(&m, &d, direct, nd);
  free(direct);
  free(d.have);
  return mk_fail(err, "%s", m.buf);
}

/* ---- waits ---- */

typedef struct mpi_wait {
  MPI_Request *req;
  const char *call;
  int rank;
} mpi_wait_t;

static int mpi_test(void *arg, mk_error_t *err) {
  mpi_wait_t *w = arg;
  int flag = 0;
  int rc = MPI_Test(w->req, &flag, MPI_STATUS_IGNORE);
  if (rc != MPI_SUCCESS) return mk_mpi_fail(err, rc, w->call, w->rank, __FILE__, __LINE__);
  return flag;
}

int mk_watchdog_wait(mk_watchdog_t *wd, MPI_Request *req, const char *call, const char *what,
                     mk_error_t *err) {
  mpi_wait_t w = {req, call, wd->rank};
  double gap = 0;
  int r = mk_wait_bounded(mpi_test, &w, wd->timeout_s, &gap, err);
  if (r == 0) wd->cur.kind = MK_WD_NONE;
  if (r == 1) {
    wd->stalled_s = gap > wd->timeout_s / 2 ? gap : 0;
    char d[128];
    /* a sleep of at most 1 ms that took half the timeout: this process was not running */
    if (gap > wd->timeout_s / 2)
      snprintf(d, sizeof d, "this rank itself did not run for %.1f s (stopped or starved)", gap);
    return mk_watchdog_expire(wd, call, what, gap > wd->timeout_s / 2 ? d : NULL, err);
  }
  return r;
}

/* Starts `icall` (sets req) when the watchdog is on, else runs `bcall`; then waits. */
#define WD_RUN(wd, comm, kind, peer, name, what, err, bcall, icall)                      \
  do {                                                                         \
    int r_ = -1;                                                               \
    if (!mk_watchdog_on(wd)) {                                                 \
      int rc_ = (bcall);                                                       \
      if (rc_ == MPI_SUCCESS) return 0;                                        \
      MPI_Comm_rank((comm), &r_);                                              \
      return mk_mpi_fail((err), rc_, #bcall, r_, __FILE__, __LINE__);          \
    }                                                                          \
    r_ = (wd)->rank;                                                           \
    MPI_Request req = MPI_REQUEST_NULL;                                        \
    if (wd_begin((wd), (comm), (kind), (peer), (name), (what), (err))) return -1; \
    MK_MPI_CHECK(icall, r_, (err));                                            \
    return mk_watchdog_wait((wd), &req, (name), (what), (err));                \
  } while (0)

int mk_wd_allreduce(mk_watchdog_t *wd, const void *send, void *recv, int count, MPI_Datatype type,
                    MPI_Op op, MPI_Comm comm, const char *what, mk_error_t *err) {
  WD_RUN(wd, comm, MK_WD_COLL, -1, "MPI_Iallreduce", what, err,
         MPI_Allreduce(send, recv, count, type, op, comm),
         MPI_Iallreduce(send, recv, count, type, op, comm, &req));
}

int mk_wd_reduce(mk_watchdog_t *wd, const void *send, void *recv, int count, MPI_Datatype type,
                 MPI_Op op, int root, MPI_Comm comm, const char *what, mk_error_t *err) {
  WD_RUN(wd, comm, MK_WD_COLL, -1, "MPI_Ireduce", what, err,
         MPI_Reduce(send, recv, count, type, op, root, comm),
         MPI_Ireduce(send, recv, count, type, op, root, comm, &req));
}

int mk_wd_bcast(mk_watchdog_t *wd, void *buf, int count, MPI_Datatype type, int root,
                MPI_Comm comm, const char *what, mk_error_t *err) {
  WD_RUN(wd, comm, MK_WD_COLL, -1, "MPI_Ibcast", what, err, MPI_Bcast(buf, count, type, root, comm),
         MPI_Ibcast(buf, count, type, root, comm, &req));
}

int mk_wd_allgather(mk_watchdog_t *wd, const void *send, int scount, MPI_Datatype stype,
                    void *recv, int rcount, MPI_Datatype rtype, MPI_Comm comm, const char *what,
                    mk_error_t *err) {
  WD_RUN(wd, comm, MK_WD_COLL, -1, "MPI_Iallgather", what, err,
         MPI_Allgather(send, scount, stype, recv, rcount, rtype, comm),
         MPI_Iallgather(send, scount, stype, recv, rcount, rtype, comm, &req));
}

int mk_wd_send(mk_watchdog_t *wd, const void *buf, int count, int peer, MPI_Comm comm, const char *what,
               mk_error_t *err) {
  WD_RUN(wd, comm, MK_WD_SEND, peer, "MPI_Isend", what, err, MPI_Send(buf, count, MPI_BYTE, peer, MK_WD_P2P_TAG, comm),
         MPI_Isend(buf, count, MPI_BYTE, peer, MK_WD_P2P_TAG, comm, &req));
}

int mk_wd_recv(mk_watchdog_t *wd, void *buf, int count, int peer, MPI_Comm comm, const char *what,
               mk_error_t *err) {
  WD_RUN(wd, comm, MK_WD_RECV, peer, "MPI_Irecv", what, err,
         MPI_Recv(buf, count, MPI_BYTE, peer, MK_WD_P2P_TAG, comm, MPI_STATUS_IGNORE),
         MPI_Irecv(buf, count, MPI_BYTE, peer, MK_WD_P2P_TAG, comm, &req));
}

int mk_wd_barrier(mk_watchdog_t *wd, MPI_Comm comm, const char *what, mk_error_t *err) {
  WD_RUN(wd, comm, MK_WD_COLL, -1, "MPI_Ibarrier", what, err, MPI_Barrier(comm), MPI_Ibarrier(comm, &req));
}
