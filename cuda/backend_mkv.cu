/* CUDA backend, device MorphKV (cuda/backend_cuda.cuh): the scoring jobs the cache-policy driver
 * (kvcache/driver.c) hands over after the attention that pushed the ring rows.
 *
 * One loser (the steady state of a full cache): the device argmin kernel frees it in the device
 * pos[] and queues (slot, pos); the host learns of it without a stall, at the layer's next
 * mkv_begin (one layer later on the stream) or at sync/download, and the driver releases it
 * (mk_kv_driver_apply_victims). Several losers (prompt compression, bursty eviction): the device
 * writes the scores, this call waits for them, the driver chooses with the policy's top-k and
 * pushes the changed pos[] back (kv_pos_changed). The trigger (how many losers) is the policy's
 * own (mk_kv_policy_ops_t.losers), run by the driver. */
#include <stdlib.h>
#include <string.h>

#include "cuda/backend_cuda.cuh"
#include "cuda/morphkv.cuh"

/* Hands layer L's queued device victims to the driver. */
int cb_mirror_apply(cuda_impl_t *c, cuda_mirror_t *m, int L, mk_error_t *err) {
  if (!m->fast_mkv || !m->log_pending[L]) return 0;
  cudaCheck(err, c->dev, cudaEventSynchronize(m->log_ev[L]));
  const size_t jobs = (size_t)m->n_seq * m->n_heads;
  mk_kv_driver_apply_victims((mk_kv_cache_t *)m->cache, m->log_hf + (size_t)L * jobs, m->log_host + (size_t)L * jobs * 2,
                             m->log_n[L]);
  m->log_pending[L] = false;
  m->log_n[L] = 0;
  return 0;
}

int cb_mirror_apply_all(cuda_impl_t *c, mk_error_t *err) {
  for (int i = 0; i < c->n_mir; i++)
    for (int l = 0; l < c->mir[i]->n_layer; l++)
      if (cb_mirror_apply(c, c->mir[i], l, err) != 0) return -1;
  return 0;
}

int cb_mkv_begin(mk_backend_t *b, mk_kv_cache_t *kc, int layer, bool *on_device, mk_error_t *err) {
  cuda_impl_t *c = cb_impl(b);
  *on_device = false;
  if (cb_sticky(c, err)) return -1;
  cudaCheck(err, c->dev, cudaSetDevice(c->dev));
  cuda_mirror_t *m = NULL;
  if (cb_mirror_get(c, kc, &m, err) != 0) return -1;
  *on_device = m->fast_mkv;
  return cb_mirror_apply(c, m, layer, err);
}

/* Scores of the several-loser jobs into scores (the k-th such job at k * n_slots). */
static int dump_scores(cuda_impl_t *c, cuda_mirror_t *m, const mk_kv_mkv_job_t *jobs, int n_jobs, float *scores,
                       mk_error_t *err) {
  cudaCheck(err, c->dev, cudaStreamSynchronize(c->stream));
  int k = 0;
  for (int j = 0; j < n_jobs; j++) {
    if (jobs[j].losers <= 1) continue;
    cudaCheck(err, c->dev, cudaMemcpy(scores + (size_t)k * m->n_slots, m->dump + (size_t)k * m->n_slots,
                                      sizeof(float) * (size_t)jobs[j].nscan, cudaMemcpyDeviceToHost));
    k++;
  }
  return 0;
}

int cb_mkv_select(mk_backend_t *b, mk_kv_cache_t *kc, int L, const mk_kv_mkv_job_t *jobs, int n_jobs, float *scores,
                  mk_error_t *err) {
  cuda_impl_t *c = cb_impl(b);
  if (cb_sticky(c, err)) return -1;
  cuda_mirror_t *m = NULL;
  if (cb_mirror_get(c, kc, &m, err) != 0) return -1;
  const size_t nj = (size_t)m->n_seq * m->n_heads;
  if (!m->fast_mkv || n_jobs <= 0 || (size_t)n_jobs > nj)
    return mk_fail(err, "cuda backend: %d MorphKV jobs for a cache scored %s", n_jobs, m->fast_mkv ? "on the device" : "on the host");
  int n_argmin = 0, n_dump = 0, job_nscan = 0;
  const size_t bytes = sizeof(mk_cuda_mkv_job_t) * (size_t)n_jobs;
  if (cb_dev_reserve(c, (void **)&c->args, &c->args_cap, bytes, err) != 0) return -1;
  int region;
  mk_cuda_mkv_job_t *dj = (mk_cuda_mkv_job_t *)cb_stage_begin(c, bytes, &region, err);
  if (!dj) return -1;
  int *hf = m->log_hf + (size_t)L * nj;
  for (int j = 0; j < n_jobs; j++) {
    const bool one = jobs[j].losers == 1;
    dj[j].hf = jobs[j].head;
    dj[j].next_pos = jobs[j].next_pos;
    dj[j].nscan = jobs[j].nscan;
    dj[j].mode = one ? MK_MKV_ARGMIN : MK_MKV_DUMP;
    dj[j].dump_off = one ? 0 : n_dump * m->n_slots;
    hf[j] = one ? jobs[j].head : -1;
    n_argmin += one;
    n_dump += !one;
    if (jobs[j].nscan > job_nscan) job_nscan = jobs[j].nscan;
  }
  m->log_n[L] = n_jobs;
  if (cb_stage_end(c, region, c->args, bytes, err) != 0) return -1;
  if (n_dump && !m->dump)
    cudaCheck(err, c->dev, cudaMalloc((void **)&m->dump, nj * m->n_slots * sizeof(float)));
  mk_cuda_mkv_args_t ma;
  memset(&ma, 0, sizeof ma);
  ma.jobs = (const mk_cuda_mkv_job_t *)c->args;
  ma.n_jobs = n_jobs;
  ma.pos = m->pos;
  ma.zring = m->zring;
  ma.n_slots = m->n_slots;
  ma.window = kc->cfg.window;
  ma.fusion_max = kc->cfg.fusion == MK_KV_FUSION_MAX;
  mk_cuda_mkv_plan(job_nscan, &ma.n_split, &ma.split_len);
  ma.stats = m->stats;
  ma.best = m->best;
  ma.counters = m->counters;
  ma.victims = m->victims;
  ma.dump = m->dump;
  mk_cuda_morphkv_select(&ma, c->stream);
  cudaCheckLaunch(err, c->dev, "morphkv select");
  if (n_argmin) {
    cudaCheck(err, c->dev, cudaMemcpyAsync(m->log_host + (size_t)L * nj * 2, m->victims, sizeof(int) * 2 * (size_t)n_jobs,
                                           cudaMemcpyDeviceToHost, c->stream));
    cudaCheck(err, c->dev, cudaEventRecord(m->log_ev[L], c->stream));
    m->log_pending[L] = true;
  } else {
    m->log_n[L] = 0;
  }
  return n_dump ? dump_scores(c, m, jobs, n_jobs, scores, err) : 0;
}
