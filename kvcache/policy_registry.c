/* The table of cache policies. Adding a policy: one file kvcache/policy_<name>.c defining an
 * mk_kv_policy_ops_t, plus one line here. */
#include <stddef.h>

#include "kvcache/kvcache.h"

extern const mk_kv_policy_ops_t mk_kv_policy_full;

const mk_kv_policy_ops_t *mk_kv_policy_get(mk_kv_policy_kind_t k) {
  switch (k) {
    case MK_KV_FULL: return &mk_kv_policy_full;
    default: return NULL;
  }
}
