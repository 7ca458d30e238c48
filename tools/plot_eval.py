#!/usr/bin/env python3
"""Plots and tables of a `morphkv eval` output directory (plots need matplotlib).

    python3 tools/plot_eval.py DIR [--smooth N]

Without matplotlib (Debian: python3-matplotlib; PyPI: matplotlib) it writes and prints the tables
only and says "matplotlib not installed: no plots".

Reads DIR/summary.csv and the per-run files DIR/p<line>_<policy>_<budget>.csv written by
`morphkv eval` (or their gzipped copies, .csv.gz, as committed under docs/fidelity/), and
writes, for every budget:
    DIR/kl_<budget>.png   KL(full || policy) against position, one line per policy: the mean
                          over prompts at each position, then a trailing moving average over
                          N positions (default 50), log scale
    DIR/kv_<budget>.png   live K/V bytes against position, one line per policy (the full cache,
                          if it was run, on every plot), mean over prompts
and DIR/kl_vs_budget.png (mean KL per policy against the budget) when there are several budgets,
DIR/kl_dist_<budget>.png (mean KL per distance bucket: how far back the text being continued was
last seen, src/eval_metrics.h), DIR/strata.md (long-range / local / novel positions, and the
metrics without loop positions), DIR/memory.md (every run by total bytes, K/V + scoring state),
DIR/windows.md (MorphKV variants side by side, the best per metric), DIR/recall.md (--task
recall: recall.csv) and DIR/free.md (--task free: free.csv),
DIR/halves.md: mean KL and top-1 agreement over the first and the second half of the
positions, per policy and budget (does the divergence grow along the output?), and DIR/table.md:
the means over all positions of all prompts found in DIR (as in summary.md), so that the output
of several `morphkv eval` runs over disjoint prompts (e.g. --skip) copied into one directory, with
their summary.csv files concatenated, gives one table.
The per-position data are not changed; smoothing only affects the drawing.
"""
import argparse
import csv
import glob
import gzip
import os
import re
import sys

try:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
except ImportError:  # the tables need only the standard library
    plt = None

COLORS = {"full": "black", "morphkv": "tab:red", "streaming": "tab:blue", "h2o": "tab:green",
          "snapkv": "tab:purple"}
ORDER = ["full", "morphkv", "streaming", "h2o", "snapkv"]
# equal KV curves (morphkv, streaming, h2o hold the same budget) stay visible through style
STYLES = {"full": ("-", 1.4), "morphkv": ("-", 3.0), "streaming": ("--", 1.8), "h2o": (":", 2.2),
          "snapkv": ("-.", 1.4)}
# policy: "morphkv", "morphkv-w8"; a per-run file may be gzipped (p37_morphkv_10pct.csv.gz: committed copies)
NAME_RE = re.compile(r"^(p\d+)_([a-z0-9.-]+)_([A-Za-z0-9.-]+?)\.csv(\.gz)?$")


def read_summary(d):
    """rows of DIR/summary.csv (several runs' files may be concatenated: repeated headers are
    skipped)"""
    return _read_csv(os.path.join(d, "summary.csv"))


def read_runs(d):
    """{(policy, budget): {prompt: {"kl": [...], "kv": [...], "agree": [...]}}}"""
    runs = {}
    for path in sorted(glob.glob(os.path.join(d, "p*_*_*.csv")) + glob.glob(os.path.join(d, "p*_*_*.csv.gz"))):
        m = NAME_RE.match(os.path.basename(path))
        if not m:
            continue
        prompt, policy, budget, gz = m.groups()
        if gz and os.path.exists(path[:-3]):
            continue  # both: the plain file wins
        kl, kv, ag, ll, dist, loop = [], [], [], [], [], []
        with (gzip.open(path, "rt", newline="") if gz else open(path, newline="")) as f:
            for row in csv.DictReader(f):
                kl.append(float(row["kl"]))
                kv.append(float(row["kv_bytes"]))
                ag.append(float(row["top1_agree"]))
                ll.append(float(row["loglik"]))
                dist.append(int(row.get("distance", -1)))  # older runs have no distance columns
                loop.append(int(row.get("in_loop", 0)))
        runs.setdefault((policy, budget), {})[prompt] = {"kl": kl, "kv": kv, "agree": ag, "ll": ll,
                                                         "dist": dist, "loop": loop}
    return runs


def mean_over_prompts(per_prompt, key):
    """Mean at each position over the prompts that reach it."""
    n = max(len(v[key]) for v in per_prompt.values())
    out = []
    for t in range(n):
        vals = [v[key][t] for v in per_prompt.values() if t < len(v[key])]
        out.append(sum(vals) / len(vals))
    return out


def moving_average(xs, w):
    out, acc = [], 0.0
    for i, x in enumerate(xs):
        acc += x
        if i >= w:
            acc -= xs[i - w]
        out.append(acc / min(i + 1, w))
    return out


def budget_key(b):
    m = re.match(r"^([0-9.]+)pct$", b)
    if m:
        return (0, float(m.group(1)))
    m = re.match(r"^c(\d+)$", b)
    if m:
        return (1, float(m.group(1)))
    return (2, 0.0)


def budget_title(b):
    m = re.match(r"^([0-9.]+)pct$", b)
    if m:
        return "budget %s%% of the full cache" % m.group(1)
    m = re.match(r"^c(\d+)$", b)
    if m:
        return "capacity C = %s" % m.group(1)
    return b


# distance buckets (src/eval_metrics.h): upper bounds in tokens; -1 = novel (no earlier bigram)
BUCKETS = [(1, 16), (17, 64), (65, 256), (257, 1024), (1025, 1 << 30)]


def bucket_label(lo, hi):
    return ">%d" % (lo - 1) if hi >= 1 << 30 else "%d-%d" % (lo, hi)


def plot_kl_by_distance(a, runs, b, pols, written):
    """DIR/kl_dist_<budget>.png: mean KL per distance bucket (and novel), one line per policy."""
    if not any(d >= 0 for p in pols for r in runs[(p, b)].values() for d in r["dist"]):
        return
    labels = ["novel"] + [bucket_label(lo, hi) for lo, hi in BUCKETS]
    fig, ax = plt.subplots(figsize=(7, 3.8))
    for p in pols:
        sums, counts = [0.0] * len(labels), [0] * len(labels)
        for r in runs[(p, b)].values():
            for kl, d in zip(r["kl"], r["dist"]):
                k = 0 if d < 0 else 1 + next(i for i, (lo, hi) in enumerate(BUCKETS) if d <= hi)
                sums[k] += kl
                counts[k] += 1
        ys = [max(s_ / c, 1e-7) if c else float("nan") for s_, c in zip(sums, counts)]
        ls, lw = STYLES.get(p, ("-", 1.2))
        ax.plot(range(len(labels)), ys, marker="o", label=p, color=COLORS.get(p), linestyle=ls, linewidth=lw)
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels)
    ax.set_yscale("log")
    ax.set_xlabel("distance to the last occurrence of the longest repeated n-gram (tokens)")
    ax.set_ylabel("mean KL(full || policy), nats")
    ax.set_title("%s: KL by distance" % budget_title(b), fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out = os.path.join(a.dir, "kl_dist_%s.png" % b)
    fig.savefig(out, dpi=a.dpi)
    plt.close(fig)
    written.append(out)


def policies_sorted(ps):
    """ORDER by base policy, each base's variants ("morphkv-w8") after it by name: deterministic
    (a set's iteration order of strings changes from one Python process to the next)"""
    def key(p):
        base = p.split("-")[0]
        return (ORDER.index(base) if base in ORDER else len(ORDER), p != base, p)
    return sorted(ps, key=key)


def report(written):
    """Names the files written; without matplotlib also prints the tables (the only output)."""
    for w in written:
        print("plot_eval: wrote %s (%d bytes)" % (w, os.path.getsize(w)))
    if plt is None:
        for w in written:
            if w.endswith(".md"):
                with open(w) as f:
                    print("\n## %s\n\n%s" % (os.path.basename(w), f.read()), end="")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("dir")
    ap.add_argument("--smooth", type=int, default=50, help="moving average over N positions")
    ap.add_argument("--dpi", type=int, default=80)
    a = ap.parse_args()
    if plt is None:
        print("plot_eval: matplotlib not installed: no plots (Debian: apt-get install python3-matplotlib); "
              "tables only", file=sys.stderr)
    runs = read_runs(a.dir)
    if not runs:  # --task free writes no per-position files; a directory may keep only summary.csv
        written = write_extra_tables(a.dir, read_summary(a.dir))
        report(written)
        if not written:
            print("plot_eval: no per-run CSV files, summary.csv, recall.csv or free.csv in %s" % a.dir,
                  file=sys.stderr)
        return 0 if written else 1
    budgets = sorted({b for (p, b) in runs if p != "full"}, key=budget_key)
    written = write_plots(a, runs, budgets) if plt is not None else []
    written.append(write_halves(a.dir, runs, budgets))
    written.append(write_table(a.dir, runs, budgets))
    written += write_extra_tables(a.dir, read_summary(a.dir))
    report(written)
    return 0


def write_plots(a, runs, budgets):
    """kl_<budget>.png, kl_dist_<budget>.png, kv_<budget>.png, kl_vs_budget.png"""
    full = runs.get(("full", "all"))
    written = []
    for b in budgets:
        pols = policies_sorted([p for (p, bb) in runs if bb == b and "-" not in p])  # variants: tables only
        n_prompts = max(len(runs[(p, b)]) for p in pols)
        # KL
        fig, ax = plt.subplots(figsize=(7, 3.8))
        for p in pols:
            y = moving_average(mean_over_prompts(runs[(p, b)], "kl"), a.smooth)
            y = [max(v, 1e-7) for v in y]
            ax.plot(range(len(y)), y, label=p, color=COLORS.get(p), linewidth=1.2)
        ax.set_yscale("log")
        ax.set_xlabel("generated token position")
        ax.set_ylabel("KL(full || policy), nats")
        ax.set_title("%s: mean over %d prompts, %d-position moving average" % (budget_title(b), n_prompts, a.smooth),
                     fontsize=9)
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        out = os.path.join(a.dir, "kl_%s.png" % b)
        fig.savefig(out, dpi=a.dpi)
        plt.close(fig)
        written.append(out)
        plot_kl_by_distance(a, runs, b, pols, written)
        # KV bytes
        fig, ax = plt.subplots(figsize=(7, 3.8))
        series = [(p, runs[(p, b)]) for p in pols]
        if full:
            series = [("full", full)] + series
        for p, per_prompt in series:
            y = [v / 2**20 for v in mean_over_prompts(per_prompt, "kv")]
            ls, lw = STYLES.get(p, ("-", 1.2))
            ax.plot(range(len(y)), y, label=p, color=COLORS.get(p), linewidth=lw, linestyle=ls)
        ax.set_xlabel("generated token position")
        ax.set_ylabel("live K/V (MiB)")
        ax.set_title("%s: KV cache held, mean over %d prompts" % (budget_title(b), n_prompts), fontsize=9)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        out = os.path.join(a.dir, "kv_%s.png" % b)
        fig.savefig(out, dpi=a.dpi)
        plt.close(fig)
        written.append(out)
    if len(budgets) > 1:
        fig, ax = plt.subplots(figsize=(6, 3.8))
        pols = policies_sorted({p for (p, b) in runs if p != "full" and "-" not in p})
        xs = list(range(len(budgets)))
        for p in pols:
            ys = []
            for b in budgets:
                pp = runs.get((p, b))
                if not pp:
                    ys.append(float("nan"))
                    continue
                vals = [v for r in pp.values() for v in r["kl"]]
                ys.append(max(sum(vals) / len(vals), 1e-7))
            ax.plot(xs, ys, marker="o", label=p, color=COLORS.get(p))
        ax.set_xticks(xs)
        ax.set_xticklabels([budget_title(b).replace("budget ", "").replace(" of the full cache", "") for b in budgets])
        ax.set_yscale("log")
        ax.set_xlabel("cache budget")
        ax.set_ylabel("mean KL(full || policy), nats")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        out = os.path.join(a.dir, "kl_vs_budget.png")
        fig.savefig(out, dpi=a.dpi)
        plt.close(fig)
        written.append(out)
    return written


def write_halves(d, runs, budgets):
    """halves.md: first half / second half of the positions"""
    out = os.path.join(d, "halves.md")
    with open(out, "w") as f:
        f.write("| policy | budget | mean KL, 1st half | mean KL, 2nd half | agreement, 1st half | agreement, 2nd half |\n")
        f.write("|---|---|---:|---:|---:|---:|\n")
        for b in ["all"] + budgets:
            for p in policies_sorted({p for (p, bb) in runs if bb == b}):
                h = {"kl": [[], []], "agree": [[], []]}
                for r in runs[(p, b)].values():
                    n = len(r["kl"])
                    for key in h:
                        h[key][0] += r[key][: n // 2]
                        h[key][1] += r[key][n // 2:]
                m = lambda xs: sum(xs) / len(xs) if xs else float("nan")
                f.write("| %s | %s | %.4f | %.4f | %.4f | %.4f |\n" % (p, b, m(h["kl"][0]), m(h["kl"][1]),
                                                                   m(h["agree"][0]), m(h["agree"][1])))
    return out


def write_table(d, runs, budgets):
    """table.md: the overall table, means over all positions of all prompts"""
    summ = read_summary(d)
    out = os.path.join(d, "table.md")
    with open(out, "w") as f:
        prompts = sorted({r["prompt"] for r in summ}) or sorted({p for v in runs.values() for p in v})
        f.write("Prompts: %s. Means over all positions of all prompts.\n\n" % " ".join(prompts))
        f.write("| policy | budget | capacity (mean) | mean KL | top-1 agreement | mean log-lik | peak KV (max) "
                "| policy state | decode tok/s |\n|---|---|---:|---:|---:|---:|---:|---:|---:|\n")
        ref = [r for r in summ if r["budget"] == "reference"]
        if ref:
            n = sum(int(r["positions"]) for r in ref)
            ll = sum(float(r["mean_loglik"]) * int(r["positions"]) for r in ref) / n
            t = sum(int(r["positions"]) / float(r["decode_tok_s"]) for r in ref)
            f.write("| full (reference) | - | - | 0 | 1 | %.4f | %.2f MiB | 0 | %.1f |\n"
                    % (ll, max(int(r["peak_kv_bytes"]) for r in ref) / 2**20, n / t))
        for b in ["all"] + budgets:
            for p in policies_sorted({p for (p, bb) in runs if bb == b}):
                pp = runs[(p, b)]
                kl = [v for r in pp.values() for v in r["kl"]]
                ag = [v for r in pp.values() for v in r["agree"]]
                ll = [v for r in pp.values() for v in r["ll"]]
                rows = [r for r in summ if r["policy"] == p and r["budget"] == b]
                cap = sum(int(r["capacity"]) for r in rows) / len(rows) if rows else float("nan")
                peak = max(int(r["peak_kv_bytes"]) for r in rows) / 2**20 if rows else float("nan")
                state = max(int(r["policy_state_bytes"]) for r in rows) / 2**20 if rows else float("nan")
                n = sum(int(r["positions"]) for r in rows)
                t = sum(int(r["positions"]) / float(r["decode_tok_s"]) for r in rows)
                f.write("| %s | %s | %.0f | %.4f | %.4f | %.4f | %.2f MiB | %.2f MiB | %.1f |\n"
                        % (p, b.replace("pct", "%"), cap, sum(kl) / len(kl), sum(ag) / len(ag), sum(ll) / len(ll),
                           peak, state, n / t if t > 0 else float("nan")))
    return out


def _f(x):
    return float(x) if x not in (None, "") else float("nan")


def strata_rows(summ):
    """{(policy, budget): {stratum: (n, kl, agree, ll)}} weighted over prompts, from summary.csv"""
    out = {}
    for r in summ:
        if r.get("budget") == "reference" or "n_long" not in r or r["n_long"] == "":
            continue
        g = out.setdefault((r["policy"], r["budget"]), {})
        for st in ("long", "local", "novel", "noloop"):
            n = int(r["n_" + st])
            a = g.setdefault(st, [0, 0.0, 0.0, 0.0])
            a[0] += n
            a[1] += n * _f(r["kl_" + st])
            a[2] += n * _f(r["agree_" + st])
            a[3] += n * _f(r["loglik_" + st])
        g.setdefault("all", [0, 0.0, 0.0, 0.0])
        n = int(r["positions"])
        g["all"][0] += n
        g["all"][1] += n * _f(r["mean_kl"])
        g["all"][2] += n * _f(r["top1_agree"])
        g["all"][3] += n * _f(r["mean_loglik"])
        g.setdefault("bytes", [0, 0, 0])
        g["bytes"][0] = max(g["bytes"][0], int(r["peak_kv_bytes"]))
        g["bytes"][1] = max(g["bytes"][1], int(r["policy_state_bytes"]))
        g["bytes"][2] += int(r["capacity"])
        g.setdefault("prompts", [0])[0] += 1
    return out


def _m(a, k):
    return a[k] / a[0] if a[0] else float("nan")


def _cell(a):
    return "%d | %.4f | %.4f | %.4f" % (a[0], _m(a, 1), _m(a, 2), _m(a, 3)) if a[0] else "0 | - | - | -"


def _order(keys):
    def k(pb):
        p, b = pb
        base = p.split("-")[0]
        return (budget_key(b), ORDER.index(base) if base in ORDER else len(ORDER), p)
    return sorted(keys, key=k)


def write_extra_tables(d, summ):
    """strata.md, memory.md, windows.md (from summary.csv), recall.md (recall.csv), free.md (free.csv)"""
    written = []
    st = strata_rows(summ)
    if st:
        out = os.path.join(d, "strata.md")
        with open(out, "w") as f:
            f.write("| policy | budget | n long | KL long | agree long | log-lik long | n local | KL local | "
                    "agree local | log-lik local | n novel | KL novel | agree novel | log-lik novel |\n"
                    "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
            for pb in _order(st):
                g = st[pb]
                f.write("| %s | %s | %s | %s | %s |\n" % (pb[0], pb[1], _cell(g["long"]), _cell(g["local"]),
                                                          _cell(g["novel"])))
            f.write("\nWithout loop positions (inside a repeated 16-gram):\n\n"
                    "| policy | budget | loop positions | kept | mean KL | top-1 agreement | mean log-lik |\n"
                    "|---|---|---:|---:|---:|---:|---:|\n")
            for pb in _order(st):
                g = st[pb]
                f.write("| %s | %s | %d | %s |\n" % (pb[0], pb[1], g["all"][0] - g["noloop"][0], _cell(g["noloop"])))
        written.append(out)
        out = os.path.join(d, "memory.md")
        with open(out, "w") as f:
            f.write("| policy | budget | capacity (mean) | peak K/V | scoring state | total | mean KL | KL long "
                    "| top-1 agreement |\n|---|---|---:|---:|---:|---:|---:|---:|---:|\n")
            for pb in sorted(st, key=lambda pb: (st[pb]["bytes"][0] + st[pb]["bytes"][1], pb)):
                g = st[pb]
                kv, sb = g["bytes"][0], g["bytes"][1]
                f.write("| %s | %s | %.0f | %.2f MiB | %.2f MiB | %.2f MiB | %.4f | %.4f | %.4f |\n"
                        % (pb[0], pb[1], g["bytes"][2] / g["prompts"][0], kv / 2**20, sb / 2**20, (kv + sb) / 2**20,
                           _m(g["all"], 1), _m(g["long"], 1), _m(g["all"], 2)))
        written.append(out)
        mk = [pb for pb in st if pb[0].startswith("morphkv")]
        if len({p for p, b in mk}) > 1:
            out = os.path.join(d, "windows.md")
            with open(out, "w") as f:
                f.write("| variant | budget | mean KL | KL long | KL local | top-1 agreement | mean log-lik |\n"
                        "|---|---|---:|---:|---:|---:|---:|\n")
                for pb in _order(mk):
                    g = st[pb]
                    f.write("| %s | %s | %.4f | %.4f | %.4f | %.4f | %.4f |\n" % (
                        pb[0], pb[1], _m(g["all"], 1), _m(g["long"], 1), _m(g["local"], 1), _m(g["all"], 2),
                        _m(g["all"], 3)))
                f.write("\nBest MorphKV setting per budget and metric:\n\n| budget | metric | best | value |\n"
                        "|---|---|---|---:|\n")
                for b in sorted({b for p, b in mk}, key=budget_key):
                    cands = [p for p, bb in mk if bb == b]
                    for name, key, idx, sign in (("mean KL", "all", 1, 1), ("KL long", "long", 1, 1),
                                                 ("KL local", "local", 1, 1), ("agreement", "all", 2, -1),
                                                 ("log-lik", "all", 3, -1)):
                        vals = [(sign * _m(st[(p, b)][key], idx), p) for p in cands if st[(p, b)][key][0]]
                        if vals:
                            v, p = min(vals)
                            f.write("| %s | %s | %s | %.4f |\n" % (b, name, p, sign * v))
            written.append(out)
    written += write_recall_table(d)
    written += write_free_table(d)
    return written


def _read_csv(path):
    if not os.path.exists(path):
        return []
    rows, header = [], None
    with open(path, newline="") as f:
        for rec in csv.reader(f):
            if header is None or rec == header:
                header = rec
                continue
            rows.append(dict(zip(header, rec)))
    return rows


def write_recall_table(d):
    rows = _read_csv(os.path.join(d, "recall.csv"))
    if not rows:
        return []
    ref = [r for r in rows if r["budget"] == "reference"]
    kept = {(r["prompt"], r["question"]) for r in ref if r["exact"] == "1"}
    dist = [int(r["distance"]) for r in ref]
    out = os.path.join(d, "recall.md")
    with open(out, "w") as f:
        f.write("%d questions (fact-to-question distance %d-%d tokens, mean %.0f); the full cache answers %d "
                "exactly: %d filtered out.\n\n" % (len(ref), min(dist), max(dist), sum(dist) / len(dist),
                                                   len(kept), len(ref) - len(kept)))
        f.write("| policy | budget | kept | exact match (kept) | answer log-lik (kept) | exact match (all) "
                "| answer log-lik (all) |\n|---|---|---:|---:|---:|---:|---:|\n")
        groups = {}
        for r in rows:
            groups.setdefault((r["policy"], r["budget"]), []).append(r)
        for pb in [pb for pb in groups if pb[1] == "reference"] + _order([pb for pb in groups if pb[1] != "reference"]):
            rs = groups[pb]
            k = [r for r in rs if (r["prompt"], r["question"]) in kept]
            m = lambda xs, key: sum(float(x[key]) for x in xs) / len(xs) if xs else float("nan")  # noqa: E731
            f.write("| %s | %s | %d | %.3f | %.3f | %.3f | %.3f |\n" % (
                pb[0], pb[1], len(k), m(k, "exact"), m(k, "answer_loglik"), m(rs, "exact"), m(rs, "answer_loglik")))
        if ref and "nearest" in ref[0]:
            write_recall_restated(f, groups, ref, kept)
    return [out]


def write_recall_restated(f, groups, ref, kept):
    """recall.md, second table: the kept questions split by whether the reference continuation
    restates the answer (recall.csv `nearest` < `distance`: its last copy is nearer than the fact)"""
    rest = {(r["prompt"], r["question"]) for r in ref if 0 < int(r["nearest"]) < int(r["distance"])}
    far = [int(r["distance"]) for r in ref if (r["prompt"], r["question"]) in kept - rest]
    f.write("\nThe reference continuation restates %d of the %d kept answers (nearest copy %s tokens before "
            "the question). Kept questions split by that: only `not restated` measures recall over the "
            "full fact-to-question distance (%s tokens).\n\n" % (
                len(rest & kept), len(kept),
                ", ".join(sorted({r["nearest"] for r in ref if (r["prompt"], r["question"]) in rest & kept},
                                 key=int)) or "-",
                "%d-%d" % (min(far), max(far)) if far else "-"))
    f.write("| policy | budget | not restated | exact (not restated) | log-lik (not restated) | restated "
            "| exact (restated) | log-lik (restated) |\n|---|---|---:|---:|---:|---:|---:|---:|\n")
    m = lambda xs, key: sum(float(x[key]) for x in xs) / len(xs) if xs else float("nan")  # noqa: E731
    for pb in [pb for pb in groups if pb[1] == "reference"] + _order([pb for pb in groups if pb[1] != "reference"]):
        q = [r for r in groups[pb] if (r["prompt"], r["question"]) in kept]
        a = [r for r in q if (r["prompt"], r["question"]) not in rest]
        b = [r for r in q if (r["prompt"], r["question"]) in rest]
        f.write("| %s | %s | %d | %.3f | %.3f | %d | %.3f | %.3f |\n" % (
            pb[0], pb[1], len(a), m(a, "exact"), m(a, "answer_loglik"), len(b), m(b, "exact"),
            m(b, "answer_loglik")))


def write_free_table(d):
    rows = _read_csv(os.path.join(d, "free.csv"))
    if not rows:
        return []
    out = os.path.join(d, "free.md")
    with open(out, "w") as f:
        f.write("| policy | budget | prompts | mean length | length / full | ended by EOS | rep-4 | distinct-2 "
                "| first divergence | loop |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n")
        groups = {}
        for r in rows:
            groups.setdefault((r["policy"], r["budget"]), []).append(r)
        for pb in [pb for pb in groups if pb[1] == "reference"] + _order([pb for pb in groups if pb[1] != "reference"]):
            rs = groups[pb]
            m = lambda key: sum(float(x[key]) for x in rs) / len(rs)  # noqa: E731
            ratio = sum(float(x["length"]) / max(1.0, float(x["full_length"])) for x in rs) / len(rs)
            f.write("| %s | %s | %d | %.1f | %.3f | %d | %.4f | %.4f | %.1f | %.4f |\n" % (
                pb[0], pb[1], len(rs), m("length"), ratio, sum(int(x["ended_eos"]) for x in rs), m("rep4_frac"),
                m("distinct2"), m("first_divergence"), m("loop_frac")))
    return [out]


if __name__ == "__main__":
    sys.exit(main())
