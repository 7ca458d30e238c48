#!/usr/bin/env python3
"""Pipeline-parallel benchmark (issue 9, docs/parallel.md "Pipelined micro-batches").

  bench_pp.py MORPHKV MODEL [--prompts N] [--tokens T] [--layouts 1x1,2x1,1x2] [--capacity C]
              [--window W] [--threads N] [--deterministic on|off]

N LongWriter prompts (tests/golden/longwriter) x T generated tokens each (--ignore-eos, greedy),
one batch (--max-seqs N) under MorphKV (C, W), for every layout P x T (P pipeline stages of T
tensor-parallel ranks: mpirun -np P*T ... --pp P). All layouts run one after the other in this
one invocation, so their ratios are measured side by side. For each: aggregate tok/s (generated
tokens / the batch's wall time), its ratio to the first layout, forward passes (pipeline ticks),
the bubble fraction (mean over ranks of the share of engine time spent waiting on other stages),
and bytes per generated token: stage to stage (point-to-point), TP all-reduces (model + score
sync) and the sampling exchange (full logit rows: the TP all-gather, the last stage's broadcast).
On a shared machine the wall clock also measures the other processes. So each row also gives the
busiest rank's CPU seconds of compute (busy_cpu_s: the process's CPU time inside its forward
passes) and "tok/s, a core per rank" = generated tokens / that figure: the throughput if every
rank had its own core and waited for nothing but the slowest stage (an upper bound: it leaves out
the messages' latency).
The outputs of every layout must be equal to the first's (token ids): it is checked, and a
mismatch fails the benchmark. The issue's size is the default: 8 prompts x 256 tokens.
"""
import argparse, json, os, subprocess, sys, tempfile

SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
ENV = dict(os.environ, OMP_WAIT_POLICY="passive", OMP_NUM_THREADS="1",
           OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")


def requests(n, tokens):
    path = os.path.join(SRC, "tests", "golden", "longwriter", "longbench_write_en.jsonl")
    rows = [json.loads(l)["prompt"] for l in open(path, encoding="utf-8")]
    return [{"id": "p%02d" % i, "prompt": rows[i], "max_new_tokens": tokens} for i in range(n)]


def run(a, tmp, pp, tp):
    inp, out, sj = (os.path.join(tmp, x) for x in ("in.jsonl", "out_%dx%d.jsonl" % (pp, tp), "st_%dx%d.json" % (pp, tp)))
    with open(inp, "w", encoding="utf-8") as f:
        for r in requests(a.prompts, a.tokens):
            f.write(json.dumps(r) + "\n")
    cmd = [a.morphkv, "generate", "--model", a.model, "--batch-file", inp, "--out", out, "--max-seqs",
           str(a.prompts), "--temperature", "0", "--ignore-eos", "--threads", str(a.threads), "--quiet",
           "--kv-policy", "morphkv", "--kv-capacity", str(a.capacity), "--kv-window", str(a.window),
           "--deterministic", a.deterministic, "--stats-json", sj]
    if pp * tp > 1:
        cmd = ["mpirun", "--oversubscribe", "-np", str(pp * tp)] + cmd + ["--pp", str(pp)]
    subprocess.run(cmd, check=True, env=ENV)
    res = {json.loads(l)["id"]: json.loads(l)["output_ids"] for l in open(out, encoding="utf-8")}
    return json.load(open(sj)), res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("morphkv")
    ap.add_argument("model")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--layouts", default="1x1,2x1,1x2")
    ap.add_argument("--capacity", type=int, default=48)
    ap.add_argument("--window", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--deterministic", default="on")
    a = ap.parse_args()
    layouts = [tuple(int(v) for v in s.split("x")) for s in a.layouts.split(",")]
    print("| (P, T) | aggregate tok/s | vs %dx%d | busiest rank's compute CPU s | tok/s, a core per rank | vs %dx%d "
          "| forward passes | bubble fraction | per rank idle | p2p bytes/token | all-reduce bytes/token "
          "| sampling bytes/token |" % (layouts[0] + layouts[0]))
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|")
    base_cpu = None
    base, ref = None, None
    with tempfile.TemporaryDirectory() as tmp:
        for pp, tp in layouts:
            st, res = run(a, tmp, pp, tp)
            if ref is None:
                ref = res
            elif res != ref:
                sys.exit("bench_pp: the outputs of %dx%d differ from %dx%d's" % ((pp, tp) + layouts[0]))
            tok_s = st["aggregate_tok_s"]
            base = base or tok_s
            idle = " / ".join("%.2f" % r["idle_frac"] for r in st["ranks"])
            cpu = max(r["busy_cpu_s"] for r in st["ranks"])
            core = st["generated_tokens"] / cpu if cpu > 0 else 0.0
            base_cpu = base_cpu or core
            print("| (%d, %d) | %.1f | %.2fx | %.2f | %.1f | %.2fx | %d | %.2f | %s | %.0f | %.0f | %.0f |" % (
                pp, tp, tok_s, tok_s / base, cpu, core, core / base_cpu, st["forward_passes"], st["bubble_frac"], idle,
                st["p2p_bytes_per_token"], st["allreduce_bytes_per_token"], st["sample_bytes_per_token"]),
                flush=True)
    print("\n%d prompts x %d tokens, MorphKV C %d W %d, --threads %d, --deterministic %s; outputs equal "
          "across layouts" % (a.prompts, a.tokens, a.capacity, a.window, a.threads, a.deterministic))


if __name__ == "__main__":
    main()
