/* Selection and scoring helpers shared by the eviction policies (morphkv, h2o, snapkv).
 *
 * Rank order (docs/morphkv.md §6): slot a ranks above slot b when score[a] > score[b], or the scores
 * are equal and pos[a] < pos[b] (the older token wins a tie). NaN scores rank as -INFINITY.
 * Positions are unique within a head, so this is a strict total order: every selection below is
 * deterministic whatever the algorithm, and replicas of a head agree bit for bit.
 *
 * Nothing here allocates: callers pass scratch that lives in their state arena. */
#ifndef MK_KV_TOPK_H
#define MK_KV_TOPK_H

#include <stdbool.h>
#include <stdint.h>

/* Reorders cand[0..n) (slot indices) so that cand[0..keep) are the `keep` best slots by
 * (score[slot] desc, pos[slot] asc) and cand[keep..n) the others, each part in no particular
 * order. score and pos are indexed by slot. n - keep == 1 (the steady state of a full cache) is
 * one O(n) scan for the worst slot; otherwise a quickselect (median of three, average O(n)). */
void mk_kv_select_top(int *cand, int n, int keep, const float *score, const int32_t *pos);

/* True when slot a ranks above slot b in the order above. */
bool mk_kv_ranks_above(int a, int b, const float *score, const int32_t *pos);

/* Softmax of row over the candidate slots, fp32 and max-subtracted:
 * p[i] = exp(row[cand[i]] - m) / sum_j exp(row[cand[j]] - m), m = max_i row[cand[i]].
 * row: (n_slots) indexed by slot; p: (n) indexed like cand. Returns false (p untouched) when
 * the row has no finite candidate entry (all -INFINITY or NaN): such a row carries no score. */
bool mk_kv_softmax_cand(const float *row, const int *cand, int n, float *p);

#endif
