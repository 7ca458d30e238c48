#!/usr/bin/env python3
"""Batch-mode benchmark (issue 11, docs/benchmarks.md "Batched generation").

  bench_batch.py MORPHKV MODEL [--prompts N] [--tokens T] [--kv-memory SIZE] [--capacity C]
                 [--window W] [--sweep 1,2,4,...] [--sweep-tokens T] [--threads N] [--itl]

1. Budget: N LongWriter prompts (tests/golden/longwriter) x T generated tokens (--ignore-eos),
   greedy, --max-seqs N, under --kv-memory SIZE: the full cache against MorphKV (C, W). Reports
   sequences admitted at once, aggregate tok/s and wall time (the batch's --stats-json).
2. Sweep: MorphKV's aggregate tok/s for --max-seqs B in --sweep (no budget), T = --sweep-tokens.
3. --itl: prefill chunking. 8 short prompts decode while a ~2,000-token prompt is admitted
   (--max-seqs 9, full cache); for each --prefill-chunk, the forward-pass time of the passes that carry
   prompt chunks against the 8-sequence decode passes (inter-token time of the 8).
The issue's full scale is --prompts 32 --tokens 1000 --kv-memory 256MiB --capacity 256 --window 32.
"""
import argparse, json, os, statistics, subprocess, tempfile

SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
ENV = dict(os.environ, OMP_WAIT_POLICY="passive")


def lw_prompts():
    path = os.path.join(SRC, "tests", "golden", "longwriter", "longbench_write_en.jsonl")
    return [json.loads(l)["prompt"] for l in open(path, encoding="utf-8")]


def run(a, tmp, reqs, extra):
    inp, out, sj = (os.path.join(tmp, n) for n in ("in.jsonl", "out.jsonl", "stats.json"))
    with open(inp, "w", encoding="utf-8") as f:
        for r in reqs:
            f.write(json.dumps(r) + "\n")
    cmd = [a.morphkv, "generate", "--model", a.model, "--batch-file", inp, "--out", out, "--temperature", "0",
           "--ignore-eos", "--threads", str(a.threads), "--quiet", "--stats-json", sj] + extra
    subprocess.run(cmd, check=True, env=ENV)
    st = json.load(open(sj))
    res = [json.loads(l) for l in open(out, encoding="utf-8")]
    assert all("error" not in r for r in res), [r for r in res if "error" in r][:2]
    return st, res


def mkv(a):
    return ["--kv-policy", "morphkv", "--kv-capacity", str(a.capacity), "--kv-window", str(a.window)]


def budget(a, tmp):
    reqs = [{"id": i, "prompt": p, "max_new_tokens": a.tokens} for i, p in enumerate(lw_prompts()[:a.prompts])]
    rows = []
    # MorphKV's slots per head are C + the prefill chunk when a prompt is longer than a chunk (the
    # cache holds every sequence's slots alike), the longest prompt otherwise: a small chunk keeps
    # them near C + 1
    for name, pol in (("full", ["--kv-policy", "full"]),
                      ("morphkv C %d W %d, chunk %d" % (a.capacity, a.window, a.mkv_chunk),
                       mkv(a) + ["--prefill-chunk", str(a.mkv_chunk)])):
        st, res = run(a, tmp, reqs, pol + ["--max-seqs", str(a.prompts), "--kv-memory", a.kv_memory])
        rows.append((name, st))
        print("| %s | %d | %d | %.2f | %.2f | %.1f | %.1f | %d |" % (name, st["kv_seq_bytes"], st["max_running"],
              st["aggregate_tok_s"], st["generated_tokens"] / st["cpu_s"], st["wall_s"], st["cpu_s"],
              st["generated_tokens"]), flush=True)
    w = rows[1][1]["aggregate_tok_s"] / rows[0][1]["aggregate_tok_s"]
    c = rows[0][1]["cpu_s"] / rows[1][1]["cpu_s"]
    print("\nMorphKV / full aggregate tok/s: %.2fx (wall), %.2fx (CPU time)\n" % (w, c), flush=True)


def sweep(a, tmp):
    for B in [int(x) for x in a.sweep.split(",") if x]:
        n = max(B, 2 * B if B < 8 else B)
        reqs = [{"id": i, "prompt": p, "max_new_tokens": a.sweep_tokens}
                for i, p in enumerate((lw_prompts() * 2)[:n])]
        st, _ = run(a, tmp, reqs, mkv(a) + ["--max-seqs", str(B)])
        dec = [p[0] for p in st["passes"] if p[2] == 0 and p[1] == B]
        print("| %d | %d | %.2f | %.2f | %.1f | %s |" % (B, n, st["aggregate_tok_s"], st["generated_tokens"] / st["cpu_s"],
              st["wall_s"],
              "%.1f" % (1e3 * statistics.median(dec)) if dec else "-"), flush=True)


def itl(a, tmp):
    rows = lw_prompts()
    long_p = "Context: " + " ".join(rows[8:33]) + "\n\nTask: " + rows[0]
    reqs = [{"id": i, "prompt": p, "max_new_tokens": 160} for i, p in enumerate(rows[1:9])]
    # a short filler holds the 9th slot for a few steps, so the long prompt is admitted while
    # the 8 decode (admission is first come, first served)
    reqs.append({"id": "filler", "prompt": rows[9], "max_new_tokens": 6})
    reqs.append({"id": "long", "prompt": long_p, "max_new_tokens": 8})
    for chunk in a.chunks.split(","):
        st, res = run(a, tmp, reqs, ["--kv-policy", "full", "--max-seqs", "9", "--prefill-chunk", chunk])
        n_long = [r for r in res if r["id"] == "long"][0]["prompt_tokens"]
        dec8 = [p[0] for p in st["passes"] if p[1] == 8 and p[2] == 0]
        mixed = [p[0] for p in st["passes"] if p[1] >= 8 and p[2] > 0]
        print("| %s | %d | %.1f | %.1f | %d | %.1f |" % (chunk, n_long, 1e3 * statistics.median(dec8),
              1e3 * max(mixed) if mixed else 0.0, len(mixed), max(mixed) / statistics.median(dec8) if mixed else 0),
              flush=True)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("morphkv")
    ap.add_argument("model")
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--tokens", type=int, default=1000)
    ap.add_argument("--kv-memory", default="256MiB")
    ap.add_argument("--capacity", type=int, default=256)
    ap.add_argument("--window", type=int, default=32)
    ap.add_argument("--sweep", default="1,2,4,8,16,32")
    ap.add_argument("--sweep-tokens", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--mkv-chunk", type=int, default=16)
    ap.add_argument("--itl", action="store_true")
    ap.add_argument("--chunks", default="4096,256,64")
    ap.add_argument("--skip-budget", action="store_true")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if not a.skip_budget:
            print("| cache | KV bytes / sequence (full: / token) | admitted at once | tok/s (wall) | tok/s (CPU) | wall s | CPU s | tokens |")
            print("| --- | --- | --- | --- | --- | --- | --- | --- |")
            budget(a, tmp)
        if a.sweep:
            print("| B | requests | tok/s (wall) | tok/s (CPU) | wall s | median decode pass ms |")
            print("| --- | --- | --- | --- | --- | --- |")
            sweep(a, tmp)
        if a.itl:
            print("| --prefill-chunk | long prompt tokens | 8-seq decode pass ms (median) | max pass with a chunk ms | passes with chunks | ratio |")
            print("| --- | --- | --- | --- | --- | --- |")
            itl(a, tmp)
