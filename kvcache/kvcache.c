/* KV-cache storage: one arena for K/V of every head, one for positions, one for policy state.
 * Allocated once in mk_kv_cache_init; the decode path only flips pos[] entries and writes rows. */
#include <stdatomic.h>
#include "kvcache/kvcache.h"

#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kvcache/driver.h"
#include "src/quant.h"

static const char *const policy_names[MK_KV_POLICY_COUNT] = {"full", "morphkv", "streaming", "h2o",
                                                              "snapkv"};

void mk_kv_config_default(mk_kv_config_t *cfg) {
  memset(cfg, 0, sizeof *cfg);
  cfg->policy = MK_KV_FULL;
  cfg->window = 32;
  cfg->capacity = 2048;
  cfg->fusion = MK_KV_FUSION_SUM;
  cfg->gqa = MK_KV_GQA_LOGIT_SUM;
  cfg->sinks = MK_KV_SINKS_DEFAULT;
  cfg->evict_after = 1.0f;
  cfg->dtype = MK_KV_F32;
  cfg->h2o_mode = MK_KV_H2O_GROUP;
  cfg->snapkv_pool = 5;
  cfg->snapkv_maxpool = false;
}

const char *mk_kv_policy_name(mk_kv_policy_kind_t k) {
  return (unsigned)k < MK_KV_POLICY_COUNT ? policy_names[k] : "unknown";
}

int mk_kv_policy_parse(const char *s, mk_kv_policy_kind_t *out) {
  for (int i = 0; i < MK_KV_POLICY_COUNT; i++)
    if (strcmp(s, policy_names[i]) == 0) {
      *out = (mk_kv_policy_kind_t)i;
      return 0;
    }
  return -1;
}

size_t mk_kv_elem_bytes(mk_kv_dtype_t dt) { return dt == MK_KV_F16 ? 2 : 4; }

int mk_kv_cache_init(mk_kv_cache_t *c, const mk_kv_config_t *cfg, const mk_kv_cache_params_t *p,
                     mk_error_t *err) {
  static _Atomic uint64_t next_serial = 1;
  memset(c, 0, sizeof *c);
  c->serial = atomic_fetch_add(&next_serial, 1);
  c->cfg = *cfg;
  c->ops = mk_kv_policy_get(cfg->policy);
  if (!c->ops) return mk_fail(err, "kv cache: policy '%s' is not available", mk_kv_policy_name(cfg->policy));
  if (c->ops->validate(cfg, err) != 0) return -1;
  if (p->n_seq <= 0 || p->n_layer <= 0 || p->n_heads <= 0 || p->head_dim <= 0 || p->max_total <= 0)
    return mk_fail(err, "kv cache: bad geometry (seq %d, layers %d, heads %d, head_dim %d, tokens %d)",
                   p->n_seq, p->n_layer, p->n_heads, p->head_dim, p->max_total);
  int slots = c->ops->slots_needed(cfg, p->max_prompt, p->max_total);
  if (slots <= 0) return mk_fail(err, "kv cache: policy %s needs no slots?", c->ops->name);
  c->n_seq = p->n_seq;
  c->n_layer = p->n_layer;
  c->n_heads = p->n_heads;
  c->head_dim = p->head_dim;
  c->n_slots = slots;
  c->group = p->group;
  size_t n_head_total = (size_t)p->n_seq * p->n_layer * p->n_heads;
  size_t row = (size_t)p->head_dim * mk_kv_elem_bytes(cfg->dtype);
  size_t per_head_kv = 2 * row * (size_t)slots;
  size_t state_bytes = c->ops->state_bytes(cfg, slots, p->head_dim, p->group);
  state_bytes = (state_bytes + 63) & ~(size_t)63;
  c->kv_bytes_alloc = per_head_kv * n_head_total;
  c->state_bytes_alloc = state_bytes * n_head_total;
  c->heads = calloc(n_head_total, sizeof *c->heads);
  c->pos_arena = malloc(sizeof(int32_t) * (size_t)slots * n_head_total);
  c->kv_arena = aligned_alloc(64, (c->kv_bytes_alloc + 63) & ~(size_t)63);
  c->state_arena = state_bytes ? aligned_alloc(64, c->state_bytes_alloc) : NULL;
  if (!c->heads || !c->pos_arena || !c->kv_arena || (state_bytes && !c->state_arena)) {
    mk_kv_cache_free(c);
    return mk_fail(err, "kv cache: out of memory allocating %zu bytes of K/V and %zu of %s state",
                   per_head_kv * n_head_total, state_bytes * n_head_total, cfg ? mk_kv_policy_name(cfg->policy) : "?");
  }
  memset(c->kv_arena, 0, c->kv_bytes_alloc);
  if (c->state_arena) memset(c->state_arena, 0, c->state_bytes_alloc);
  for (int s = 0; s < p->n_seq; s++)
    for (int l = 0; l < p->n_layer; l++)
      for (int h = 0; h < p->n_heads; h++) {
        size_t i = ((size_t)s * p->n_layer + l) * p->n_heads + h;
        mk_kv_head_t *hd = &c->heads[i];
        hd->n_slots = slots;
        hd->head_dim = p->head_dim;
        hd->pos = c->pos_arena + i * (size_t)slots;
        hd->k = (char *)c->kv_arena + i * per_head_kv;
        hd->v = (char *)hd->k + row * (size_t)slots;
        hd->state = state_bytes ? (char *)c->state_arena + i * state_bytes : NULL;
        hd->layer = l;
        hd->kv_head = p->first_kv_head + h;
        hd->seq = s;
        hd->group = p->group > 0 ? p->group : 1;
      }
  for (int s = 0; s < p->n_seq; s++) mk_kv_cache_reset_seq(c, s);
  return 0;
}

void mk_kv_cache_free(mk_kv_cache_t *c) {
  mk_kv_driver_scratch_free(c->drv);
  free(c->heads);
  free(c->pos_arena);
  free(c->kv_arena);
  free(c->state_arena);
  memset(c, 0, sizeof *c);
}

void mk_kv_cache_reset_seq(mk_kv_cache_t *c, int seq) {
  for (int l = 0; l < c->n_layer; l++)
    for (int h = 0; h < c->n_heads; h++) {
      mk_kv_head_t *hd = mk_kv_cache_head(c, seq, l, h);
      for (int i = 0; i < hd->n_slots; i++) hd->pos[i] = -1;
      hd->n_used = 0;
      hd->hi = 0;
      hd->free_hint = 0;
      c->ops->reset(&c->cfg, hd);
    }
}

int mk_kv_acquire(mk_kv_head_t *h, int64_t pos) {
  if (h->n_used >= h->n_slots) return -1;
  for (int i = h->free_hint; i < h->n_slots; i++)
    if (h->pos[i] < 0) {
      h->pos[i] = (int32_t)pos;
      h->n_used++;
      h->free_hint = i + 1;
      if (i + 1 > h->hi) h->hi = i + 1;
      return i;
    }
  return -1;
}

void mk_kv_release(mk_kv_head_t *h, int slot) {
  if (slot >= 0 && slot < h->n_slots && h->pos[slot] >= 0) {
    h->pos[slot] = -1;
    h->n_used--;
    if (slot < h->free_hint) h->free_hint = slot;
  }
}

void mk_kv_write(mk_kv_head_t *h, mk_kv_dtype_t dt, int slot, const float *k, const float *v) {
  int d = h->head_dim;
  if (dt == MK_KV_F16) {
    uint16_t *kd = (uint16_t *)h->k + (size_t)slot * d, *vd = (uint16_t *)h->v + (size_t)slot * d;
    for (int i = 0; i < d; i++) {
      kd[i] = mk_f32_to_f16(k[i]);
      vd[i] = mk_f32_to_f16(v[i]);
    }
  } else {
    memcpy((float *)h->k + (size_t)slot * d, k, sizeof(float) * d);
    memcpy((float *)h->v + (size_t)slot * d, v, sizeof(float) * d);
  }
}

static size_t used_slots(const mk_kv_cache_t *c) {
  size_t n = 0, total = (size_t)c->n_seq * c->n_layer * c->n_heads;
  for (size_t i = 0; i < total; i++) n += (size_t)c->heads[i].n_used;
  return n;
}

static size_t slot_bytes(const mk_kv_cache_t *c) {
  return 2 * (size_t)c->head_dim * mk_kv_elem_bytes(c->cfg.dtype);
}

size_t mk_kv_cache_live_bytes(const mk_kv_cache_t *c) { return used_slots(c) * slot_bytes(c); }

size_t mk_kv_cache_peak_bytes(const mk_kv_cache_t *c) { return c->peak_used_slots * slot_bytes(c); }

void mk_kv_cache_note_peak(mk_kv_cache_t *c) {
  size_t n = used_slots(c);
  if (n > c->peak_used_slots) c->peak_used_slots = n;
}
