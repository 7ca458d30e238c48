/* The collective watchdog: bounded waits, so that a wedged rank (SIGSTOPped, stuck in a driver,
 * spinning) takes the job down within --comm-timeout seconds instead of hanging it forever.
 *
 * How it works. Every collective on a watched channel is started non-blocking (MPI_Iallreduce,
 * MPI_Ibcast, ...) and waited on by mk_wait_bounded: MPI_Test in a short spin (MK_WAIT_SPIN_NS,
 * so the latency of a decode step does not suffer), then nanosleep growing from 1 us to 1 ms, so
 * a rank that waits burns no core. Every rank counts the collectives it starts (wd->seq); all
 * ranks start the same collectives in the same order, so equal counters mean "in the same call".
 * When a wait runs past the timeout, the rank exchanges its counter with every peer over a
 * private duplicate communicator (non-blocking point-to-point, a grace period of
 * mk_watchdog_grace_s): a peer that never answers, or answers with a smaller counter, did not
 * arrive. The wait then fails with "comm watchdog: <call> (<purpose>, collective #N) did not
 * complete within T s; did not arrive: rank(s) ...", which the caller's error path turns into the
 * end of the job (the CLI prints it with the rank and calls MPI_Abort). Peers waiting in the same
 * call time out too and reach the same diagnosis.
 *
 * A timeout of 0 switches the watchdog off: the helpers below then make the plain blocking MPI
 * calls (which Open MPI waits on by polling, i.e. a busy core). The generic loop
 * (mk_wait_bounded) is separate from MPI so the NCCL communicator polls cudaStreamQuery +
 * ncclCommGetAsyncError with it and calls ncclCommAbort before mk_watchdog_expire. */
#ifndef MK_WATCHDOG_H
#define MK_WATCHDOG_H

#include <stdint.h>

#include <mpi.h>

#include "src/mk_error.h"

#define MK_WATCHDOG_DEFAULT_S 300.0 /* --comm-timeout default */
#define MK_WAIT_SPIN_NS 50000L      /* busy polling before the first sleep */
#define MK_WAIT_SLEEP_MAX_NS 1000000L

/* One test of a pending operation: 1 done, 0 not yet, -1 failed (err filled). */
typedef int (*mk_wait_test_fn)(void *arg, mk_error_t *err);

/* Calls test until it is done: spins MK_WAIT_SPIN_NS, then sleeps between tests (1 us doubling
 * to MK_WAIT_SLEEP_MAX_NS). timeout_s <= 0: no limit. Returns 0 done, 1 timed out, -1 failed.
 * max_gap_s (may be NULL): the longest time between two tests of the sleeping phase; far above
 * 1 ms it means this process itself was not running (SIGSTOP, an overloaded node). */
int mk_wait_bounded(mk_wait_test_fn test, void *arg, double timeout_s, double *max_gap_s,
                    mk_error_t *err);

typedef struct mk_watchdog {
  double timeout_s; /* 0: off */
  uint64_t seq;     /* collectives started under the watchdog on this rank */
  int rank, size;   /* in diag */
  MPI_Comm diag;    /* owned duplicate, only for the counter exchange after a timeout */
} mk_watchdog_t;

/* Collective over comm (duplicates it). timeout_s >= 0. */
int mk_watchdog_create(MPI_Comm comm, double timeout_s, mk_watchdog_t **out, mk_error_t *err);
void mk_watchdog_free(mk_watchdog_t *wd); /* NULL is fine */
/* Every rank must set the same value (the CLI parses the same argv on every rank). */
void mk_watchdog_set_timeout(mk_watchdog_t *wd, double timeout_s);
/* True when waits are bounded (wd non-NULL and timeout > 0). */
int mk_watchdog_on(const mk_watchdog_t *wd);
/* Grace period of the counter exchange: timeout / 2, clamped to [0.5, 5] s. */
double mk_watchdog_grace_s(const mk_watchdog_t *wd);

/* Waits for *req (a collective this rank started as number wd->seq). On timeout: -1 with err
 * holding the diagnosis (mk_watchdog_expire). MPI failure: -1 with err naming call and rank. */
int mk_watchdog_wait(mk_watchdog_t *wd, MPI_Request *req, const char *call, const char *what,
                     mk_error_t *err);
/* The timeout path: counter exchange, then -1 with err = the diagnosis. `detail` may add a
 * sentence (NULL for none). The core never prints or exits: the caller's error path ends the job
 * (the CLI's mk_cli_fail -> mk_ctx_abort prints "rank R: <diagnosis>" and calls MPI_Abort). */
int mk_watchdog_expire(mk_watchdog_t *wd, const char *call, const char *what, const char *detail,
                       mk_error_t *err);

/* Collectives under the watchdog (blocking MPI calls when it is off or wd is NULL). `what` names
 * the purpose in the timeout message ("model", "score sync", "request", ...). Return 0, or -1
 * with err = "file:line: MPI_X failed on rank R: ...". */
int mk_wd_allreduce(mk_watchdog_t *wd, const void *send, void *recv, int count, MPI_Datatype type,
                    MPI_Op op, MPI_Comm comm, const char *what, mk_error_t *err);
int mk_wd_reduce(mk_watchdog_t *wd, const void *send, void *recv, int count, MPI_Datatype type,
                 MPI_Op op, int root, MPI_Comm comm, const char *what, mk_error_t *err);
int mk_wd_bcast(mk_watchdog_t *wd, void *buf, int count, MPI_Datatype type, int root,
                MPI_Comm comm, const char *what, mk_error_t *err);
int mk_wd_allgather(mk_watchdog_t *wd, const void *send, int scount, MPI_Datatype stype,
                    void *recv, int rcount, MPI_Datatype rtype, MPI_Comm comm, const char *what,
                    mk_error_t *err);
/* Point-to-point under the watchdog (tag MK_WD_P2P_TAG on comm); count in bytes. */
#define MK_WD_P2P_TAG 4242
int mk_wd_send(mk_watchdog_t *wd, const void *buf, int count, int peer, MPI_Comm comm, const char *what,
               mk_error_t *err);
int mk_wd_recv(mk_watchdog_t *wd, void *buf, int count, int peer, MPI_Comm comm, const char *what,
               mk_error_t *err);
int mk_wd_barrier(mk_watchdog_t *wd, MPI_Comm comm, const char *what, mk_error_t *err);

#endif
