#!/usr/bin/env python3
"""Independent NumPy reference of MorphKV (the reference order of docs/morphkv.md §3, the rules of §5-§6)
and the golden files that tests/unit/test_kv_golden.c replays through the C policy.

Written from the algorithm's description, not from the C code: no slots, no ring. The cache is a chronological list
of token positions; at every decode step the token is appended, then, if the cache has reached
ceil((C+1)*ea) tokens, it is cut back to C+1 (the W+1 newest are always kept; the other tokens
are candidates; every score is recomputed from the stored post-RoPE queries and keys of the W
previous queries, in float64), then the token "attends" over what is left, and that set is what
the golden file records. The prompt is never cut during prefill (the first cut happens at the
first decode step, as in the authors' code), which the C policy does at prefill end instead (§4): the
attention sets must agree.

Scoring (§5-§7): per query row, a softmax over the candidate columns only; GQA
`logit_sum` sums the g heads' scaled logits before the softmax, `prob_max` takes the max over
heads of the per-head softmax; fusion `sum` or `max` over the rows; keep the top C-W by
(higher score, then smaller position).

Inputs are random, rounded to multiples of 1/64 so that the text files are short and exact. The
C side scores in fp32, so near-ties could legitimately flip; each case's seed is the first one
(from its base seed upward) whose every decision has a gap of at least MIN_GAP between the last
kept and the first released score, and the file records that gap.

Usage: python3 morphkv_ref.py [outdir]   (default: the directory of this script)
"""
import math
import os
import sys

import numpy as np

MIN_GAP = 2e-4
CASES = [
    # name,                W,  C,  P,  T, fusion, gqa,        ea,  base seed
    ("sum_logit_p_lt_c",   4, 12,  8, 40, "sum", "logit_sum", 1.0, 100),
    ("max_logit_p_eq_c",   4, 12, 12, 40, "max", "logit_sum", 1.0, 200),
    ("sum_probmax_p_gt_c", 4, 12, 30, 40, "sum", "prob_max",  1.0, 300),
    ("max_probmax_p_gt_c", 6, 16, 40, 40, "max", "prob_max",  1.0, 400),
    ("sum_logit_p_lt_w",   8, 14,  3, 40, "sum", "logit_sum", 1.0, 500),
    ("max_logit_bursty",   4, 12, 20, 50, "max", "logit_sum", 1.5, 600),
    ("sum_probmax_p_lt_c", 3, 10,  5, 40, "sum", "prob_max",  1.0, 700),
    ("sum_logit_w1",       1,  8, 16, 30, "sum", "logit_sum", 1.0, 800),
]
G, D = 3, 16


class NearTie(Exception):
    pass


def softmax(z):
    z = z - z.max()
    e = np.exp(z)
    return e / e.sum()


def scores(q, k, cand, rows, fusion, gqa):
    """q: (N, G, D), k: (N, D); cand: candidate positions; rows: query positions."""
    kc = k[cand].astype(np.float64)                        # (n, D)
    total = np.zeros(len(cand))
    for i in rows:
        z = q[i].astype(np.float64) @ kc.T / math.sqrt(D)  # (G, n) per-head scaled logits
        if gqa == "logit_sum":
            p = softmax(z.sum(axis=0))
        else:
            p = np.max(np.stack([softmax(zh) for zh in z]), axis=0)
        total = total + p if fusion == "sum" else np.maximum(total, p)
    return total


def simulate(q, k, W, C, P, T, fusion, gqa, ea):
    """Returns the attention set of each decode step and the smallest decision gap."""
    E = max(C + 1, math.ceil((C + 1) * ea - 1e-9))
    cache = list(range(P))          # prefill: nothing is evicted
    steps, min_gap = [], math.inf
    for t in range(P, P + T):
        cache.append(t)
        if len(cache) >= E:
            recent, cand = cache[-(W + 1):], cache[:-(W + 1)]
            keep = C - W
            if len(cand) > keep:
                rows = [i for i in range(t - W, t) if i >= 0]
                s = scores(q, k, cand, rows, fusion, gqa)
                order = sorted(range(len(cand)), key=lambda i: (-s[i], cand[i]))
                gap = s[order[keep - 1]] - s[order[keep]]
                min_gap = min(min_gap, gap)
                if gap < MIN_GAP:
                    raise NearTie()
                cache = sorted([cand[i] for i in order[:keep]] + recent)
        steps.append(list(cache))
    return steps, min_gap


def fmt(x):
    return repr(float(x))


def write_case(outdir, name, W, C, P, T, fusion, gqa, ea, base_seed):
    for seed in range(base_seed, base_seed + 1000):
        rng = np.random.default_rng(seed)
        N = P + T
        q = (np.round(rng.standard_normal((N, G, D)) * 1.5 * 64) / 64).astype(np.float32)
        k = (np.round(rng.standard_normal((N, D)) * 64) / 64).astype(np.float32)
        try:
            steps, gap = simulate(q, k, W, C, P, T, fusion, gqa, ea)
        except NearTie:
            continue
        break
    else:
        raise RuntimeError(f"{name}: no tie-free seed")
    path = os.path.join(outdir, name + ".txt")
    with open(path, "w") as f:
        f.write("# morphkv golden v1, written by morphkv_ref.py (NumPy reference)\n")
        f.write(f"name {name}\nseed {seed}\nW {W}\nC {C}\nP {P}\nT {T}\ng {G}\nd {D}\n")
        f.write(f"fusion {fusion}\ngqa {gqa}\nea {ea}\nmin_gap {gap:.6g}\n")
        f.write("q\n")   # N lines of G*D values: the post-RoPE queries by position
        for i in range(N):
            f.write(" ".join(fmt(x) for x in q[i].reshape(-1)) + "\n")
        f.write("k\n")   # N lines of D values: the post-RoPE keys by position
        for i in range(N):
            f.write(" ".join(fmt(x) for x in k[i]) + "\n")
        f.write("kept\n")  # per decode step t: t, count, sorted positions attended at step t
        for t, s in zip(range(P, P + T), steps):
            f.write(f"{t} {len(s)} " + " ".join(str(p) for p in s) + "\n")
        f.write("end\n")
    return path, seed, gap


def main():
    outdir = sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(os.path.abspath(__file__))
    with open(os.path.join(outdir, "cases.txt"), "w") as idx:
        for c in CASES:
            path, seed, gap = write_case(outdir, *c)
            idx.write(c[0] + "\n")
            print(f"{c[0]}: seed {seed}, min gap {gap:.3g} -> {path}")


if __name__ == "__main__":
    main()
