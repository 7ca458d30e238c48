/* StreamingLLM (Xiao et al. 2024; docs/morphkv.md §10): keep the first S tokens of the sequence ("attention
 * sinks") and the most recent ones, C+1 = S + R in all at attention time, the current token
 * included. No scores and no state.
 *
 * Positions stay original: keys are cached after RoPE at their absolute positions (the paper
 * re-rotates by position within the cache; we do not). After evict(next_pos) the head holds the
 * positions [0, S) and [next_pos - (C - S), next_pos), so the next token brings it to C+1; a full
 * cache releases exactly one slot per step, the oldest non-sink token. A long prompt is cut to
 * the same set at prefill end. */
#include <stdint.h>

#include "kvcache/kvcache.h"

static int st_validate(const mk_kv_config_t *cfg, mk_error_t *err) {
  if (cfg->sinks < MK_KV_SINKS_DEFAULT)
    return mk_fail(err, "streaming: kv sinks %d must be >= 0", cfg->sinks);
  if (cfg->capacity <= mk_kv_sinks(cfg))
    return mk_fail(err, "streaming: kv capacity %d must exceed kv sinks %d", cfg->capacity,
                   mk_kv_sinks(cfg));
  return 0;
}

static int st_slots(const mk_kv_config_t *cfg, int max_prompt, int max_total) {
  int need = cfg->capacity + 1;
  if (max_prompt > need) need = max_prompt;
  if (max_total >= max_prompt && max_total > 0 && max_total < need) need = max_total;
  return need;
}

static size_t st_state_bytes(const mk_kv_config_t *cfg, int n_slots, int d, int g) { return 0; }
static unsigned st_needs(const mk_kv_config_t *cfg) { return 0; }
static int st_prefill_rows(const mk_kv_config_t *cfg) { return 0; }
static void st_reset(const mk_kv_config_t *cfg, mk_kv_head_t *h) {}
static void st_observe(const mk_kv_config_t *cfg, mk_kv_head_t *h, const mk_kv_row_t *row) {}

static int st_evict(const mk_kv_config_t *cfg, mk_kv_head_t *h, int64_t next_pos, bool prefill,
                    mk_error_t *err) {
  if (h->n_used <= cfg->capacity) return 0; /* positions are contiguous apart from the sinks */
  const int S = mk_kv_sinks(cfg);
  int64_t recent_from = next_pos - (cfg->capacity - S);
  for (int j = 0; j < h->n_slots; j++) {
    int32_t p = h->pos[j];
    if (p >= S && p < recent_from) mk_kv_release(h, j);
  }
  return 0;
}

const mk_kv_policy_ops_t mk_kv_policy_streaming = {
    .name = "streaming",
    .validate = st_validate,
    .slots_needed = st_slots,
    .state_bytes = st_state_bytes,
    .needs = st_needs,
    .prefill_rows = st_prefill_rows,
    .reset = st_reset,
    .observe = st_observe,
    .evict = st_evict,
};
