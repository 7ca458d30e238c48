/* The table of cache policies. Adding a policy: one file kvcache/policy_<name>.c defining an
 * mk_kv_policy_ops_t, plus one line here. */
#include <stddef.h>

#include "kvcache/kvcache.h"

extern const mk_kv_policy_ops_t mk_kv_policy_full;
extern const mk_kv_policy_ops_t mk_kv_policy_morphkv;
extern const mk_kv_policy_ops_t mk_kv_policy_streaming;
extern const mk_kv_policy_ops_t mk_kv_policy_h2o;
extern const mk_kv_policy_ops_t mk_kv_policy_snapkv;

const mk_kv_policy_ops_t *mk_kv_policy_get(mk_kv_policy_kind_t k) {
  switch (k) {
    case MK_KV_FULL: return &mk_kv_policy_full;
    case MK_KV_MORPHKV: return &mk_kv_policy_morphkv;
    case MK_KV_STREAMING: return &mk_kv_policy_streaming;
    case MK_KV_H2O: return &mk_kv_policy_h2o;
    case MK_KV_SNAPKV: return &mk_kv_policy_snapkv;
    default: return NULL;
  }
}
