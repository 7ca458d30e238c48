/* The full cache: never evicts. The accuracy reference for every other policy. */
#include <stdint.h>

#include "kvcache/kvcache.h"

static int full_validate(const mk_kv_config_t *cfg, mk_error_t *err) { return 0; }
static int full_slots(const mk_kv_config_t *cfg, int max_prompt, int max_total) { return max_total; }
static size_t full_state_bytes(const mk_kv_config_t *cfg, int n_slots, int d, int g) { return 0; }
static unsigned full_needs(const mk_kv_config_t *cfg) { return 0; }
static int full_prefill_rows(const mk_kv_config_t *cfg) { return 0; }
static void full_reset(const mk_kv_config_t *cfg, mk_kv_head_t *h) {}
static void full_observe(const mk_kv_config_t *cfg, mk_kv_head_t *h, const mk_kv_row_t *row) {}
static int full_evict(const mk_kv_config_t *cfg, mk_kv_head_t *h, int64_t next_pos, bool prefill,
                      mk_error_t *err) {
  return 0;
}

const mk_kv_policy_ops_t mk_kv_policy_full = {
    .name = "full",
    .validate = full_validate,
    .slots_needed = full_slots,
    .state_bytes = full_state_bytes,
    .needs = full_needs,
    .prefill_rows = full_prefill_rows,
    .reset = full_reset,
    .observe = full_observe,
    .evict = full_evict,
};
