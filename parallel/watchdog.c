/* The collective watchdog (see watchdog.h for the protocol). */
#define _POSIX_C_SOURCE 200809L
#include "parallel/watchdog.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "parallel/mpi_check.h"

#define WD_TAG 0x6d6b /* counter exchange on wd->diag (nothing else is sent there) */

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

int mk_watchdog_create(MPI_Comm comm, double timeout_s, mk_watchdog_t **out, mk_error_t *err) {
  *out = NULL;
  int rank = -1;
  MPI_Comm_rank(comm, &rank);
  mk_watchdog_t *wd = calloc(1, sizeof *wd);
  if (!wd) return mk_fail(err, "comm watchdog on rank %d: out of memory", rank);
  wd->timeout_s = timeout_s > 0 ? timeout_s : 0;
  wd->diag = MPI_COMM_NULL;
  if (mk_mpi_dup(comm, "comm watchdog", &wd->diag, &wd->rank, &wd->size, err) != 0) {
    mk_watchdog_free(wd);
    return -1;
  }
  *out = wd;
  return 0;
}

void mk_watchdog_free(mk_watchdog_t *wd) {
  if (!wd) return;
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized && wd->diag != MPI_COMM_NULL) MPI_Comm_free(&wd->diag);
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

/* ---- the timeout path ---- */

/* Sends this rank's counter to every peer and collects theirs for up to the grace period.
 * theirs[p] = UINT64_MAX where p did not answer. */
static void exchange_counters(mk_watchdog_t *wd, uint64_t *theirs) {
  const int n = wd->size;
  MPI_Request *rq = malloc(2 * (size_t)n * sizeof *rq);
  static uint64_t mine; /* must outlive the sends: the process aborts right after */
  mine = wd->seq;
  if (!rq) return;
  for (int p = 0; p < n; p++) {
    theirs[p] = UINT64_MAX;
    rq[p] = rq[n + p] = MPI_REQUEST_NULL;
    if (p == wd->rank) continue;
    MPI_Irecv(&theirs[p], 1, MPI_UINT64_T, p, WD_TAG, wd->diag, &rq[p]);
    MPI_Isend(&mine, 1, MPI_UINT64_T, p, WD_TAG, wd->diag, &rq[n + p]);
  }
  const double end = now_s() + mk_watchdog_grace_s(wd);
  long ns = 1000;
  for (;;) {
    int all = 0;
    MPI_Testall(n, rq, &all, MPI_STATUSES_IGNORE); /* receives only: sends may never match */
    if (all || now_s() >= end) break;
    struct timespec d = {0, ns};
    nanosleep(&d, NULL);
    ns = ns * 2 > MK_WAIT_SLEEP_MAX_NS ? MK_WAIT_SLEEP_MAX_NS : ns * 2;
  }
  /* a receive that did not complete must not write into theirs[] later */
  for (int p = 0; p < n; p++) {
    if (rq[p] == MPI_REQUEST_NULL) continue;
    int flag = 0;
    MPI_Test(&rq[p], &flag, MPI_STATUS_IGNORE);
    if (!flag) {
      MPI_Cancel(&rq[p]);
      theirs[p] = UINT64_MAX;
    }
  }
  free(rq); /* the sends stay pending; MPI_Abort follows */
}

/* Appends " P (why)," for every peer that did not arrive; returns how many. */
static int list_missing(const mk_watchdog_t *wd, const uint64_t *theirs, char *msg, size_t cap,
                        size_t *len) {
  int missing = 0;
  for (int p = 0; p < wd->size; p++) {
    if (p == wd->rank || (theirs[p] != UINT64_MAX && theirs[p] >= wd->seq)) continue;
    if (*len >= cap) break;
    if (theirs[p] == UINT64_MAX)
      *len += (size_t)snprintf(msg + *len, cap - *len, "%s rank %d (no answer within %g s)",
                               missing ? "," : "", p, mk_watchdog_grace_s(wd));
    else
      *len += (size_t)snprintf(msg + *len, cap - *len, "%s rank %d (still at collective #%llu)",
                               missing ? "," : "", p, (unsigned long long)theirs[p]);
    missing++;
  }
  return missing;
}

int mk_watchdog_expire(mk_watchdog_t *wd, const char *call, const char *what, const char *detail,
                       mk_error_t *err) {
  char msg[1024];
  uint64_t *theirs = calloc((size_t)wd->size, sizeof *theirs);
  if (theirs) exchange_counters(wd, theirs);
  int n = snprintf(msg, sizeof msg,
                   "comm watchdog: %s (%s, collective #%llu) did not complete within %g s%s%s; "
                   "did not arrive:",
                   call, what, (unsigned long long)wd->seq, wd->timeout_s, detail ? "; " : "",
                   detail ? detail : "");
  size_t len = n > 0 ? (size_t)n : 0;
  int missing = theirs && len < sizeof msg ? list_missing(wd, theirs, msg, sizeof msg, &len) : 0;
  if (!missing && len < sizeof msg)
    snprintf(msg + len, sizeof msg - len, " none found (every peer answered at or past #%llu)",
             (unsigned long long)wd->seq);
  free(theirs);
  return mk_fail(err, "%s", msg);
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
  if (r == 1) {
    char d[128];
    /* a sleep of at most 1 ms that took half the timeout: this process was not running */
    if (gap > wd->timeout_s / 2)
      snprintf(d, sizeof d, "this rank itself did not run for %.1f s (stopped or starved)", gap);
    return mk_watchdog_expire(wd, call, what, gap > wd->timeout_s / 2 ? d : NULL, err);
  }
  return r;
}

/* Starts `icall` (sets req) when the watchdog is on, else runs `bcall`; then waits. */
#define WD_RUN(wd, comm, name, what, err, bcall, icall)                        \
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
    (wd)->seq++;                                                               \
    MK_MPI_CHECK(icall, r_, (err));                                            \
    return mk_watchdog_wait((wd), &req, (name), (what), (err));                \
  } while (0)

int mk_wd_allreduce(mk_watchdog_t *wd, const void *send, void *recv, int count, MPI_Datatype type,
                    MPI_Op op, MPI_Comm comm, const char *what, mk_error_t *err) {
  WD_RUN(wd, comm, "MPI_Iallreduce", what, err,
         MPI_Allreduce(send, recv, count, type, op, comm),
         MPI_Iallreduce(send, recv, count, type, op, comm, &req));
}

int mk_wd_reduce(mk_watchdog_t *wd, const void *send, void *recv, int count, MPI_Datatype type,
                 MPI_Op op, int root, MPI_Comm comm, const char *what, mk_error_t *err) {
  WD_RUN(wd, comm, "MPI_Ireduce", what, err,
         MPI_Reduce(send, recv, count, type, op, root, comm),
         MPI_Ireduce(send, recv, count, type, op, root, comm, &req));
}

int mk_wd_bcast(mk_watchdog_t *wd, void *buf, int count, MPI_Datatype type, int root,
                MPI_Comm comm, const char *what, mk_error_t *err) {
  WD_RUN(wd, comm, "MPI_Ibcast", what, err, MPI_Bcast(buf, count, type, root, comm),
         MPI_Ibcast(buf, count, type, root, comm, &req));
}

int mk_wd_allgather(mk_watchdog_t *wd, const void *send, int scount, MPI_Datatype stype,
                    void *recv, int rcount, MPI_Datatype rtype, MPI_Comm comm, const char *what,
                    mk_error_t *err) {
  WD_RUN(wd, comm, "MPI_Iallgather", what, err,
         MPI_Allgather(send, scount, stype, recv, rcount, rtype, comm),
         MPI_Iallgather(send, scount, stype, recv, rcount, rtype, comm, &req));
}

int mk_wd_send(mk_watchdog_t *wd, const void *buf, int count, int peer, MPI_Comm comm, const char *what,
               mk_error_t *err) {
  WD_RUN(wd, comm, "MPI_Isend", what, err, MPI_Send(buf, count, MPI_BYTE, peer, MK_WD_P2P_TAG, comm),
         MPI_Isend(buf, count, MPI_BYTE, peer, MK_WD_P2P_TAG, comm, &req));
}

int mk_wd_recv(mk_watchdog_t *wd, void *buf, int count, int peer, MPI_Comm comm, const char *what,
               mk_error_t *err) {
  WD_RUN(wd, comm, "MPI_Irecv", what, err,
         MPI_Recv(buf, count, MPI_BYTE, peer, MK_WD_P2P_TAG, comm, MPI_STATUS_IGNORE),
         MPI_Irecv(buf, count, MPI_BYTE, peer, MK_WD_P2P_TAG, comm, &req));
}

int mk_wd_barrier(mk_watchdog_t *wd, MPI_Comm comm, const char *what, mk_error_t *err) {
  WD_RUN(wd, comm, "MPI_Ibarrier", what, err, MPI_Barrier(comm), MPI_Ibarrier(comm, &req));
}
