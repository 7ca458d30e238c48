/* MorphKV on the device: candidate scoring from the Z ring and victim choice (the decode step of
 * docs/morphkv.md §5).
 *
 * For one job = one (sequence, layer, KV head) after a step whose next position is next_pos:
 *   candidates  c = { slot < nscan : 0 <= pos[slot] < next_pos - W }   (outside the recent W)
 *   per ring row r (the last W queries; the row of query q is ring row q mod W):
 *               p_r(c) = exp(Z[r][c] - max_c Z[r]) * (1 / sum_c exp(...))   (kvcache/topk.c)
 *   score(c)    = sum_r p_r(c)  (fusion sum, oldest row first)  |  max_r p_r(c)  (fusion max)
 *   ARGMIN job  victim = the candidate of lowest score, ties to the LARGER position (the policy
 *               keeps higher scores first, then smaller positions); pos[victim] = -1 on the
 *               device and (victim slot, victim pos) is written for the host to mirror.
 *   DUMP job    score of every slot < nscan (-1 for non-candidates) written out; the host does
 *               the top-k (prefill compression, bursty eviction) and uploads pos[].
 * Two kernels over (job, slot split): partial row statistics (max, sum) per split, then
 * combined statistics + scores + partial argmin, the last block of a job reducing the partials
 * (a per-job counter, restored to 0). Deterministic: fixed reduction orders. */
#ifndef MK_CUDA_MORPHKV_CUH
#define MK_CUDA_MORPHKV_CUH

#include "cuda/common.cuh"

enum { MK_MKV_ARGMIN = 1, MK_MKV_DUMP = 2 };

/* Largest window W the kernels take (ring statistics live in shared memory); the backend scores
 * larger windows on the host. */
#define MK_MKV_WMAX 1024

typedef struct mk_cuda_mkv_job {
  int hf;        /* flat head index (seq * n_layer + layer) * n_heads + head */
  int next_pos;  /* position of the next token (decode: t + 1; prefill: prompt length) */
  int nscan;     /* slots [0, nscan) hold every used slot (high-water mark) */
  int mode;      /* MK_MKV_ARGMIN or MK_MKV_DUMP */
  int dump_off;  /* DUMP: scores go to dump + dump_off, (nscan) floats */
} mk_cuda_mkv_job_t;

typedef struct mk_cuda_mkv_args {
  const mk_cuda_mkv_job_t *jobs; /* (n_jobs) device */
  int n_jobs;
  int32_t *pos;        /* cache base (n_heads_total, n_slots) */
  const float *zring;  /* cache base (n_heads_total, W, n_slots) */
  int n_slots, window;
  int fusion_max;      /* 0: sum over rows, 1: max */
  int n_split, split_len;
  float2 *stats;       /* (n_jobs, n_split, W) scratch */
  int4 *best;          /* (n_jobs, n_split) scratch */
  unsigned *counters;  /* (n_jobs) zero on entry, zero on exit */
  int *victims;        /* (n_jobs, 2): slot, pos; -1, -1 when none */
  float *dump;         /* DUMP output base, or NULL */
} mk_cuda_mkv_args_t;

/* Slot splits for a maximum nscan (each split one block per job). */
void mk_cuda_mkv_plan(int max_nscan, int *n_split, int *split_len);

void mk_cuda_morphkv_select(const mk_cuda_mkv_args_t *a, cudaStream_t stream);

#endif
