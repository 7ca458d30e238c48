/* The cache-policy driver: one implementation of the kvcache.h contract for every backend.
 *
 * Per layer, for a batch of spans (src/backend.h mk_seq_span_t), mk_kv_driver_attend runs
 *   [device MorphKV] the device's victims of this layer's last step are released on the host
 *   acquire      a slot for every new token of every span (mk_kv_acquire, lowest free), note peak
 *   pos refresh  a prefill span starts its sequence: the backend's copy of pos[] is refreshed
 *   write        backend kv_write: K/V into the given slots
 *   attend       backend attention, in calls over runs of batch rows; rows the policy reads
 *                (every decode row, the last prefill_rows of a prompt) come back as score rows
 *                (in chunks of at most MK_KV_DRIVER_ROW_FLOATS floats) and are observed in order
 *   evict        per span and head: ops->evict on the host, changed heads pushed to the backend;
 *                or, when the backend scores MorphKV on the device (its mkv_begin says so), the
 *                policy's own trigger (ops->losers) makes one job per head that must lose slots:
 *                one loser is the device's argmin (released at the layer's next step or at sync),
 *                several are scored on the device and chosen here with the policy's top-k.
 * Invariant: the host pos[]/n_used are exact whenever the driver or a caller reads them (after
 * mkv_begin of the layer, or after the backend's sync/download). The backend never acquires,
 * observes or evicts. */
#ifndef MK_KV_DRIVER_H
#define MK_KV_DRIVER_H

#include "kvcache/kvcache.h"
#include "src/backend.h"

/* Score-row floats per attention call: larger prefill row sets are split into several calls. */
#define MK_KV_DRIVER_ROW_FLOATS ((size_t)8 << 20)

/* One layer's write/attend/observe/evict for the batch in p (p->slots, tok0, tok1 are set here). */
int mk_kv_driver_attend(mk_backend_t *b, const mk_attn_params_t *p, mk_error_t *err);

/* Victims chosen on a device: (heads[i], slot_pos[2i] = slot, slot_pos[2i+1] = pos). Each is
 * released if its slot still holds that position (a restarted sequence may have refilled it). */
void mk_kv_driver_apply_victims(mk_kv_cache_t *c, const int *heads, const int *slot_pos, int n);

struct mk_kv_driver_scratch;
void mk_kv_driver_scratch_free(struct mk_kv_driver_scratch *s);

#endif
