/* `morphkv generate --batch-file IN --out OUT`: the JSONL front end of src/batch.h.
 *
 * Rank 0 opens both files before any work (a missing input or an unwritable output fails
 * first), reads and tokenizes every line, and sends the valid requests to every rank as
 * protobuf-c messages (parallel/request.h: one GENERATE message per request, request_id = its
 * index, then a SHUTDOWN message ending the stream). Every rank then submits the same requests in
 * the same order and steps the same batch (the schedule does not depend on time). Rank 0 writes
 * one JSON line per finished request, flushed at once (--ordered: in input order), and the
 * progress on stderr. A line that cannot run (bad JSON, a wrong type, an unknown key, a prompt
 * too long for the context or the budget) gets an error result with its line number. */
#ifndef MK_BATCH_CLI_H
#define MK_BATCH_CLI_H

#include "parallel/ctx.h"
#include "src/config.h"

/* Runs the batch of o (o->batch_file set, options checked). Returns the exit code: 0 when the run
 * completed (error results included), 1 on a run-time failure, with the message on stderr. */
int mk_batch_cli_run(const mk_gen_opts_t *o, mk_ctx_t *ctx);

#endif
