/* The front ends' failure rules (generate, inspect, eval, and the MPI test programs): the one place
 * that decides to print a failure or take the run down. The core library (morphkv_core) never does
 * either; it returns mk_error_t and leaves the decision here (morphkv_frontend).
 *
 * Two situations, as in parallel/ctx.h:
 *   - every rank reaches the same point (options, prompt, cache allocation): mk_cli_agree; all ranks
 *     learn whether any failed and rank 0 prints the first failing rank's message;
 *   - a rank fails where the others may be waiting in a collective (load, forward pass):
 *     mk_cli_fail, which with several ranks calls mk_ctx_abort. */
#ifndef MK_CLI_H
#define MK_CLI_H

#include <stdbool.h>
#include <stdint.h>

#include "parallel/ctx.h"
#include "src/config.h"
#include "src/engine.h"
#include "src/mk_error.h"
#include "src/stats.h"

/* Collective over ctx->mpi (every rank calls it with its own status): returns 0 when every rank
 * passed 0, otherwise -1 on every rank, with rank 0 printing "morphkv <cmd>: <message>" on stderr
 * (its own message, or "rank R: ..." for the lowest failing rank R). */
int mk_cli_agree(const mk_ctx_t *ctx, const char *cmd, int status, mk_error_t *err);

/* A failure on this rank alone. With several ranks: mk_ctx_abort (does not return). With one: prints
 * "morphkv <cmd>: <message>" ("morphkv: <message>" when cmd is NULL) and returns 1, the exit code of
 * a run-time failure. */
int mk_cli_fail(const mk_ctx_t *ctx, const char *cmd, const mk_error_t *err);

/* Threads per rank when --threads is 0: the CPUs this process may use, shared among the ranks of
 * the node unless the launcher already bound each rank to its own set. */
int mk_cli_default_threads(const mk_ctx_t *ctx);

/* The token ids (malloc'd, *n_out > 0) of a prompt text: with chat, rendered in chat_template
 * (NULL: detected from the model) with system (NULL: the template's default); BOS as the model
 * asks unless the text already starts with it; special tokens parsed. `generate` and the batch
 * mode (src/batch_cli.c) both encode this way. */
int mk_cli_encode_prompt(const mk_engine_t *e, const char *text, bool chat, const char *chat_template,
                         const char *system, int32_t **ids_out, int *n_out, mk_error_t *err);

/* The engine parameters of `generate`'s options (one place for the single and the batch mode):
 * model, grid (--tp, --pp), communicator, numerics, backend and threads of this rank. */
mk_engine_params_t mk_cli_engine_params(const mk_gen_opts_t *o, const mk_ctx_t *ctx);

/* Every rank, collectively: this rank's memory, traffic and stage times (mk_rank_stats_of),
 * all-gathered over ctx->mpi into all (ctx->world entries, rank order). */
int mk_cli_gather_rank_stats(const mk_ctx_t *ctx, const mk_engine_t *e, mk_rank_stats_t *all, mk_error_t *err);

/* Prints "morphkv: rank R: <msg>" on stderr and aborts every rank (MPI_Abort with code 1), so no
 * rank is left waiting in a collective. ctx may be NULL (or not yet initialised, zeroed): then
 * MPI_COMM_WORLD is aborted, or the process exits with 1 when MPI is not running. Does not return. */
void mk_ctx_abort(const mk_ctx_t *ctx, const char *msg) __attribute__((noreturn));

#endif
