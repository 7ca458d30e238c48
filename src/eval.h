/* `morphkv eval`: the fidelity harness (issue 3): replays a full-cache greedy reference under each
 * cache policy and budget and records KL, top-1 agreement and log-likelihood per position.
 * argv[0] is "eval"; returns the process exit code (0 ok, 1 failure, 2 usage). Collective: every
 * rank of ctx calls it with the same arguments. */
#ifndef MK_EVAL_H
#define MK_EVAL_H

#include "parallel/ctx.h"

int mk_eval_main(int argc, char **argv, mk_ctx_t *ctx);

#endif
