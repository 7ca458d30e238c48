/* The request rank 0 hands to every rank: prompt token ids, sampling and cache settings, stop
 * strings, or a shutdown. On the wire it is the protobuf-c message morphkv.Request
 * (parallel/request.proto), so its layout is versioned and checked on receipt instead of a raw
 * struct copied between processes.
 *
 * Engine use (every rank, collectively, between generations):
 *   mk_request_t req;                 // rank 0: filled from the CLI; others: anything
 *   if (mk_request_bcast(&ctx, &req, model_n_vocab, &err)) mk_ctx_abort(&ctx, err.msg);
 *   if (req.kind == MK_REQUEST_SHUTDOWN) ...
 *   ...
 *   mk_request_free(&req);            // every rank, rank 0 included if it allocated with these
 * Every rank, rank 0 included, ends up with a deep copy it owns (prompt, stop strings) unpacked
 * from the same bytes, so the requests are bitwise identical across ranks. */
#ifndef MK_REQUEST_H
#define MK_REQUEST_H

#include <stddef.h>
#include <stdint.h>

#include "kvcache/kvcache.h"
#include "parallel/ctx.h"
#include "src/sampler.h"
#include "src/mk_error.h"

#define MK_REQUEST_VERSION 1u

/* Limits checked on receipt (and before sending). */
#define MK_REQUEST_MAX_PROMPT (1 << 24) /* tokens */
#define MK_REQUEST_MAX_STOP 64          /* stop strings */
#define MK_REQUEST_MAX_STOP_LEN 1024    /* bytes per stop string */
#define MK_REQUEST_MAX_BYTES ((size_t)1 << 30)

typedef enum mk_request_kind {
  MK_REQUEST_GENERATE = 1,
  MK_REQUEST_SHUTDOWN = 2,
} mk_request_kind_t;

typedef struct mk_request {
  mk_request_kind_t kind;
  uint64_t id;
  int32_t *prompt; /* (n_prompt) token ids, malloc'd */
  size_t n_prompt;
  /* the sampler's own parameters (src/sampler.h), checked on receipt: temperature >= 0,
   * top_k >= 0, top_p in (0, 1], min_p in [0, 1], repeat_penalty > 0, repeat_last_n >= 0 */
  mk_sampler_params_t sampling;
  int max_new_tokens; /* >= 0 */
  mk_kv_config_t cache;
  char **stop; /* (n_stop) NUL-terminated strings, each malloc'd, array malloc'd */
  size_t n_stop;
} mk_request_t;

/* Sampling defaults: greedy, top_k 0, top_p 1, min_p 0, penalty 1, last_n 64, seed 0,
 * max_new_tokens 0. Cache: mk_kv_config_default. kind GENERATE, nothing allocated. */
void mk_request_init(mk_request_t *r);
void mk_request_free(mk_request_t *r); /* frees prompt and stop, then re-inits */

/* Range checks (see the limits above); n_vocab > 0 also bounds the token ids. */
int mk_request_validate(const mk_request_t *r, int n_vocab, mk_error_t *err);

/* Validates, then packs into a malloc'd buffer (*buf, *len). */
int mk_request_pack(const mk_request_t *r, int n_vocab, uint8_t **buf, size_t *len,
                    mk_error_t *err);
/* Unpacks and validates (version, kind, enums, ranges); on success *out is a fresh request the
 * caller frees. On failure *out is left initialised and empty. */
int mk_request_unpack(const uint8_t *buf, size_t len, int n_vocab, mk_request_t *out,
                      mk_error_t *err);

/* Collective over ctx->mpi (host memory). Rank 0 validates and packs *req and broadcasts the
 * length then the bytes; every rank unpacks and validates into *req (rank 0's own *req is freed
 * and replaced by the unpacked copy; on the other ranks whatever *req held is overwritten, not
 * freed). All ranks then agree: the result is 0 everywhere, or -1 everywhere
 * with err = "rank R: <why>" naming the first rank that failed. The bytes are added to
 * ctx->comm->bytes_other. */
int mk_request_bcast(const mk_ctx_t *ctx, mk_request_t *req, int n_vocab, mk_error_t *err);

#endif
