/* The collective watchdog: bounded waits, so that a wedged rank (SIGSTOPped, stuck in a driver,
 * spinning) takes the job down within --comm-timeout seconds instead of hanging it forever.
 *
 * How it works. Every collective and point-to-point call on a watched channel is started
 * non-blocking (MPI_Iallreduce, MPI_Ibcast, MPI_Isend, ...) and waited on by mk_wait_bounded:
 * MPI_Test in a short spin (MK_WAIT_SPIN_NS, so the latency of a decode step does not suffer),
 * then nanosleep growing from 1 us to 1 ms, so a rank that waits burns no core.
 *
 * The invariant (what makes the diagnosis right under pipeline stages, where the ranks of
 * different stages run different collectives). Every rank counts what it starts, per channel:
 *   - collectives per MEMBERSHIP: one counter for each set of ranks a communicator spans (the
 *     world; each stage's TP group), shared by every communicator with that membership (ctx->mpi
 *     and ctx->comm are both "the world"). All members of a set start the same collectives on
 *     those communicators in the same order (MPI's rule for one communicator; across communicators
 *     of one membership, any other order of blocking collectives could deadlock), so on every
 *     member the k-th collective of a set is the same call, and equal counters mean "in the same
 *     call". Ranks outside the set do not count it; counters of different sets are never compared.
 *     The membership is cached on each communicator as an MPI attribute (freed with it).
 *   - point-to-point per peer: sends started to each world rank and receives started from each;
 *     messages of one pair match in order, so this rank's k-th receive from p is p's k-th send to
 *     this rank.
 * When a wait runs past the timeout, the rank exchanges a state record with every peer over a
 * private duplicate of the world (non-blocking point-to-point, a grace period of
 * mk_watchdog_grace_s): the call it waits in and on which channel (membership or peer, and its
 * number there), its collective counters per membership, its point-to-point counters. A peer
 * that never answers is wedged, dead or still computing; one that answers but says it did not run
 * itself for over half the timeout (it was stopped, and Open MPI's SIGCONT on the way to killing
 * the job woke it) counts as such a root cause too, wherever its counters are. For the wait on
 * hand:
 *   collective #k of set S: members of S that did not answer, or answer with a count on S below k;
 *   receive #k from p:      p, if it did not answer or has started fewer than k sends to us;
 *   send #k to p:           p, if it did not answer or has posted fewer than k receives from us.
 * Those "did not arrive". A peer that answered is alive and is itself waiting somewhere: the same
 * rule applied to its record, followed transitively, finds the root cause (the ranks that did not
 * answer), so a stage-1 rank waiting on the activations of a healthy stage-0 rank, which waits in
 * its TP all-reduce for a stopped TP peer, names the stopped rank. The message:
 *   "comm watchdog: MPI_Irecv (stage-to-stage activations, message #12 from rank 0) did not
 *    complete within 5 s; did not arrive: rank 0 (alive, has sent 11 messages to this rank: waiting
 *    in MPI_Iallreduce (model, collective #345 of ranks 0-1)); root cause: rank 1 (no answer
 *    within 2.5 s)"
 * (the root cause is only added when it differs from the list). The caller's error path turns it
 * into the end of the job (the CLI prints it with the rank and calls MPI_Abort). Peers waiting
 * time out too and reach their own diagnosis; every one names the same root cause.
 *
 * A timeout of 0 switches the watchdog off: the helpers below then make the plain blocking MPI
 * calls (which Open MPI waits on by polling, i.e. a busy core) and count nothing; every rank sets
 * the same timeout, so the counters stay comparable. The generic loop (mk_wait_bounded) is
 * separate from MPI so the NCCL communicator polls cudaStreamQuery + ncclCommGetAsyncError with it
 * and calls ncclCommAbort before mk_watchdog_expire (a wait outside any channel: its diagnosis
 * lists the peers that did not answer). */
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

#define MK_WD_MAX_CHANS 8 /* memberships counted (world + TP group + spare); more: uncounted */

/* One membership's collective counter. */
typedef struct mk_wd_chan {
  uint64_t id;        /* hash of the members' ranks in diag */
  uint64_t seq;       /* collectives started on communicators of this membership */
  uint64_t *bits;     /* member bitmap over diag ranks, owned */
  int size, first;    /* members, lowest member */
} mk_wd_chan_t;

/* What this rank is waiting in (kind MK_WD_NONE between waits). */
enum { MK_WD_NONE = 0, MK_WD_COLL, MK_WD_SEND, MK_WD_RECV };
typedef struct mk_wd_wait {
  int kind;
  int chan;     /* MK_WD_COLL: index in chans */
  int peer;     /* MK_WD_SEND / MK_WD_RECV: diag (world) rank */
  uint64_t seq; /* its number on the channel / in the pair */
  const char *call, *what;
} mk_wd_wait_t;

typedef struct mk_watchdog {
  double timeout_s; /* 0: off */
  int rank, size;   /* in diag */
  MPI_Comm diag;    /* owned duplicate, only for the state exchange after a timeout */
  uint64_t gen;     /* unique per watchdog in this process (tags the memberships cached on comms) */
  int n_chans;
  mk_wd_chan_t chans[MK_WD_MAX_CHANS];
  uint64_t *sent, *recvd; /* [size]: point-to-point started to / from each diag rank */
  mk_wd_wait_t cur;
  double stalled_s; /* set on a timeout: > 0 when this rank itself did not run that long */
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

/* Waits for *req (the call wd->cur describes; the mk_wd_* helpers set it). On timeout: -1 with err
 * holding the diagnosis (mk_watchdog_expire). MPI failure: -1 with err naming call and rank. */
int mk_watchdog_wait(mk_watchdog_t *wd, MPI_Request *req, const char *call, const char *what,
                     mk_error_t *err);
/* The timeout path: state exchange, then -1 with err = the diagnosis of wd->cur's wait (a wait
 * outside the helpers, e.g. NCCL's stream: kind MK_WD_NONE, the peers that did not answer). `detail` may add a
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
