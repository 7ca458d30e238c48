#!/usr/bin/env python3
"""Merges `morphkv eval` output directories that ran disjoint prompt subsets (e.g. two processes
with --n-prompts K and --skip K --n-prompts K, to use both cores) into one directory, and writes
the merged summary table.

    python3 tools/merge_eval.py OUT DIR1 DIR2 ...

Copies the per-run CSVs and texts, concatenates summary.csv (one header; a prompt's reference row
once), recall.csv and free.csv, and writes
OUT/summary.md: per policy and budget, the mean over prompts of each prompt's mean KL, top-1
agreement and log-likelihood (every prompt has the same number of positions, so this equals the
mean over all positions), the max over prompts of the peak KV bytes and policy state bytes, the
mean capacity, and the mean decode tok/s. Then run tools/plot_eval.py OUT for the plots.
"""
import csv
import glob
import os
import shutil
import sys
from collections import OrderedDict


def mib(b):
    return f"{b / 1048576:.2f} MiB"


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    out, dirs = sys.argv[1], sys.argv[2:]
    os.makedirs(out, exist_ok=True)
    rows, header = [], None
    for d in dirs:
        with open(os.path.join(d, "summary.csv")) as f:
            r = list(csv.reader(f))
        if not r:
            continue
        header = header or r[0]
        rows += r[1:]
        # only prompts the run finished (summary.csv has their rows); skip one still being written
        done = {row[0] for row in r[1:]}
        for f in glob.glob(os.path.join(d, "p*_*.csv")) + glob.glob(os.path.join(d, "p*_*.csv.gz")) + \
                glob.glob(os.path.join(d, "p*_*.txt")):
            if os.path.basename(f).split("_")[0] in done:
                shutil.copy(f, out)
    # the same prompt's reference row from several runs (same reference): once
    seen, uniq = set(), []
    for r in rows:
        key = tuple(r[:3]) if r[2] == "reference" else None
        if key and key in seen:
            continue
        seen.add(key)
        uniq.append(r)
    rows = uniq
    for name in ("recall.csv", "free.csv"):  # --task recall / free: concatenated, one header
        parts = [os.path.join(d, name) for d in dirs if os.path.exists(os.path.join(d, name))]
        if parts:
            with open(os.path.join(out, name), "w", newline="") as f:
                w, hdr = csv.writer(f), None
                for p in parts:
                    with open(p) as g:
                        r = list(csv.reader(g))
                    if r and hdr is None:
                        hdr = r[0]
                        w.writerow(hdr)
                    w.writerows(r[1:])
    with open(os.path.join(out, "summary.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    idx = {k: i for i, k in enumerate(header)}
    groups = OrderedDict()
    prompts = sorted({r[idx["prompt"]] for r in rows})
    for r in rows:
        groups.setdefault((r[idx["policy"]], r[idx["budget"]]), []).append(r)
    lines = ["# morphkv eval summary (merged)", "",
             f"Prompts: {len(prompts)} ({' '.join(prompts)}); merged from {', '.join(dirs)}.", "",
             "| policy | budget | capacity (mean) | mean KL | top-1 agreement | mean log-lik | peak KV | policy state | decode tok/s |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for (pol, bud), rs in groups.items():
        n = len(rs)
        mean = lambda k: sum(float(r[idx[k]]) for r in rs) / n  # noqa: E731
        mx = lambda k: max(int(r[idx[k]]) for r in rs)  # noqa: E731
        name = "full (reference)" if bud == "reference" else pol
        lines.append(f"| {name} | {bud} | {mean('capacity'):.0f} | {mean('mean_kl'):.4f} | "
                     f"{mean('top1_agree'):.4f} | {mean('mean_loglik'):.4f} | {mib(mx('peak_kv_bytes'))} | "
                     f"{mib(mx('policy_state_bytes'))} | {mean('decode_tok_s'):.1f} |")
        if n != len(prompts):
            lines[-1] += f" (only {n} prompts)"
    with open(os.path.join(out, "summary.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
