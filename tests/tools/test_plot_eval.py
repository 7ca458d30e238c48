#!/usr/bin/env python3
"""tools/plot_eval.py without matplotlib, and its tables' row order (ctest: plot_eval_tables).

    python3 tests/tools/test_plot_eval.py SOURCE_DIR

On copies of committed `morphkv eval` outputs (docs/fidelity/issue13/):
- replay/ (per-position CSVs + summary.csv), with `import matplotlib` made to fail: exit 0, says
  "matplotlib not installed: no plots", writes no PNG, prints the tables, and writes table.md,
  halves.md, strata.md, memory.md, windows.md byte-equal to the committed ones (made with
  matplotlib present: the tables do not depend on it);
- the per-run CSVs gzipped (.csv.gz, how large runs are committed): the same tables;
- the same under two PYTHONHASHSEED values: byte-equal tables (rows were once ordered by a
  set's iteration order, which changes from one process to the next);
- recall/ and penalty/ keep only summary.csv (+ recall.csv): their strata.md, memory.md and
  recall.md are rebuilt byte-equal from those alone (the script used to exit 1 there).
"""
import glob
import gzip
import os
import shutil
import subprocess
import sys
import tempfile

NOMPL = ("import runpy, sys; sys.modules['matplotlib'] = None; sys.argv = sys.argv[1:]; "
         "runpy.run_path(sys.argv[0], run_name='__main__')")


def run(script, d, seed, no_mpl):
    env = dict(os.environ, PYTHONHASHSEED=str(seed))
    cmd = [sys.executable, "-c", NOMPL, script, d] if no_mpl else [sys.executable, script, d]
    return subprocess.run(cmd, env=env, capture_output=True, text=True)


def check(cond, what):
    if not cond:
        sys.exit("FAIL: " + what)


def fresh(src, tmp, name, keep):
    d = os.path.join(tmp, name)
    os.makedirs(d)
    for f in glob.glob(os.path.join(src, "*")):
        if keep(os.path.basename(f)):
            shutil.copy(f, d)
    return d


def main():
    root = sys.argv[1]
    script = os.path.join(root, "tools", "plot_eval.py")
    golden = os.path.join(root, "docs", "fidelity", "issue13")
    inputs = lambda f: f.endswith(".csv") or f.endswith(".txt")  # noqa: E731
    with tempfile.TemporaryDirectory() as tmp:
        outs = []
        for seed in (1, 2):
            d = fresh(os.path.join(golden, "replay"), tmp, "replay%d" % seed, inputs)
            r = run(script, d, seed, no_mpl=True)
            check(r.returncode == 0, "replay without matplotlib exited %d: %s" % (r.returncode, r.stderr))
            check("matplotlib not installed: no plots" in r.stderr, "no 'matplotlib not installed' message")
            check(not glob.glob(os.path.join(d, "*.png")), "PNG written without matplotlib")
            check("| morphkv | 10% | 67 | 0.0898 |" in r.stdout, "table.md not printed:\n" + r.stdout[:2000])
            for t in ("table.md", "halves.md", "strata.md", "memory.md", "windows.md"):
                with open(os.path.join(d, t)) as a, open(os.path.join(golden, "replay", t)) as b:
                    check(a.read() == b.read(), "replay/%s differs from the committed one (seed %d)" % (t, seed))
            outs.append(open(os.path.join(d, "table.md")).read())
        check(outs[0] == outs[1], "table.md depends on PYTHONHASHSEED")
        d = fresh(os.path.join(golden, "replay"), tmp, "replay-gz", inputs)
        for f in glob.glob(os.path.join(d, "p*_*_*.csv")):
            with open(f, "rb") as a, gzip.open(f + ".gz", "wb") as b:
                b.write(a.read())
            os.remove(f)
        r = run(script, d, 1, no_mpl=True)
        check(r.returncode == 0, "replay with .csv.gz files exited %d: %s" % (r.returncode, r.stderr))
        for t in ("table.md", "strata.md", "halves.md"):
            with open(os.path.join(d, t)) as a, open(os.path.join(golden, "replay", t)) as b:
                check(a.read() == b.read(), "replay/%s from .csv.gz files differs" % t)
        for name, tables in (("recall", ("strata.md", "memory.md", "recall.md")),
                             ("penalty", ("strata.md", "memory.md"))):
            d = fresh(os.path.join(golden, name), tmp, name, inputs)
            r = run(script, d, 3, no_mpl=True)
            check(r.returncode == 0, "%s (summary.csv only) exited %d: %s" % (name, r.returncode, r.stderr))
            for t in tables:
                with open(os.path.join(d, t)) as a, open(os.path.join(golden, name, t)) as b:
                    check(a.read() == b.read(), "%s/%s differs from the committed one" % (name, t))
    print("PASS: plot_eval tables without matplotlib, deterministic order, summary-only directories")


if __name__ == "__main__":
    main()
