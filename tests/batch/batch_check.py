#!/usr/bin/env python3
"""Batch mode against runs alone (issue 11), on the demo model.

  batch_check.py equal  MORPHKV MODEL POLICY [--np N]   16 prompts of mixed lengths and
        max_new_tokens, --max-seqs 4, greedy, --deterministic on: every batch result equals the
        prompt run alone by `morphkv generate` (token ids and text, bitwise). With --np N the
        batch runs under `mpirun -np N` and is compared with the single-process batch instead
        (which the np-1 test compares with the runs alone); --pp P makes those N ranks P pipeline
        stages, with micro-batches of the 4 sequences in flight across them. Malformed lines are in the input:
        each must give an error result with its line number, and the rest must run.
  batch_check.py budget MORPHKV MODEL                  --kv-memory: a budget below one sequence is
        refused with the numbers; a budget of 2.5 MorphKV sequences runs two at once (--ordered:
        results in input order, though the shorter ones finish first); a
        missing input or an unwritable output fails before any work.
  batch_check.py pipe   MORPHKV MODEL                  pipeline stages (--pp 2 over 2 ranks): one
        long prompt fed in chunks flows through the stages (one chunk enters every tick, no
        tick waits for the previous chunk to leave the last stage), and the stats JSON gives
        each rank's stage, the stage-to-stage bytes (exactly tokens fed x n_embd x 4 from
        stage 0, none from the last) and its idle share; the output equals one process's.
  batch_check.py kill   MORPHKV MODEL                  kill -9 mid-run: every line written is
        a whole JSON result equal to the uninterrupted run's.
Prompts: LongWriter prompts (tests/golden/longwriter), every fourth one lengthened to a few
hundred tokens, so the full cache's --prefill-chunk 48 splits them and MorphKV (C 64, W 16)
compresses them at the prefill and evicts while decoding.
"""
import json, os, signal, subprocess, sys, tempfile, time

SRC = os.environ.get("MORPHKV_SOURCE_DIR", os.path.join(os.path.dirname(__file__), "..", ".."))
ENV = dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="passive",
           OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
POLICY = {"full": ["--kv-policy", "full", "--prefill-chunk", "48"],
          "morphkv": ["--kv-policy", "morphkv", "--kv-capacity", "64", "--kv-window", "16",
                      "--prefill-chunk", "512"]}
COMMON = ["--temperature", "0", "--deterministic", "on", "--threads", "1", "--quiet"]
BAD = ['{"prompt": "unterminated', '[1, 2]', '{"prompt": 7}', '{"prompt": "x", "max_new_tokens": -1}',
       '{"prompt": "x", "nope": true}', '{"messages": [{"role": "assistant", "content": "x"}]}']


def prompts(n=16, long=True):
    path = os.path.join(SRC, "tests", "golden", "longwriter", "longbench_write_en.jsonl")
    rows = [json.loads(l)["prompt"] for l in open(path, encoding="utf-8")]
    out = []
    for i in range(n):
        p = rows[i]
        if long and i % 4 == 3:  # a long one: a few other prompts before it as context
            p = "Context: " + " ".join(rows[20 + i: 22 + i]) + "\n\nTask: " + p
        out.append({"id": "p%02d" % i, "prompt": p, "max_new_tokens": [3, 17, 9, 24, 6, 12, 30, 1][i % 8]})
    return out


def write_input(path, reqs, bad=True):
    lines, bad_lines = [], {}
    for i, r in enumerate(reqs):
        lines.append(json.dumps(r))
        if bad and i % 3 == 2 and len(bad_lines) < len(BAD):
            lines.append(BAD[len(bad_lines)])
            bad_lines[len(lines)] = BAD[len(bad_lines)]
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    return bad_lines


def run_batch(exe, model, policy, inp, out, np_=1, extra=()):
    cmd = [exe, "generate", "--model", model, "--batch-file", inp, "--out", out, "--max-seqs", "4"]
    if np_ > 1 and PP > 1:
        cmd += ["--pp", str(PP)]
    cmd += POLICY[policy] + COMMON + list(extra)
    if np_ > 1:
        cmd = ["mpirun", "--oversubscribe", "-np", str(np_)] + cmd
    subprocess.run(cmd, check=True, env=ENV)
    return [json.loads(l) for l in open(out, encoding="utf-8")]


def run_alone(exe, model, policy, r, tmp):
    pf, sj = os.path.join(tmp, "prompt.txt"), os.path.join(tmp, "alone.json")
    with open(pf, "w", encoding="utf-8") as f:
        f.write(r["prompt"])
    cmd = [exe, "generate", "--model", model, "--prompt-file", pf, "--max-new-tokens",
           str(r["max_new_tokens"]), "--stats-json", sj] + POLICY[policy][:-2] + COMMON
    subprocess.run(cmd, check=True, env=ENV, stdout=subprocess.DEVNULL)
    return json.load(open(sj))


def check_errors(res, bad_lines, n_ok):
    errs = {r["line"]: r for r in res if "error" in r}
    assert sorted(errs) == sorted(bad_lines), "error lines %s, expected %s" % (sorted(errs), sorted(bad_lines))
    for line, r in errs.items():
        assert r["id"] == line and r["error"], r
    ok = [r for r in res if "error" not in r]
    assert len(ok) == n_ok, "%d results, expected %d" % (len(ok), n_ok)
    return {r["id"]: r for r in ok}


PP = 1  # --pp P: the --np N batch runs P pipeline stages (micro-batches in flight)


def equal(exe, model, policy, np_):
    reqs = prompts()
    with tempfile.TemporaryDirectory() as tmp:
        inp, out = os.path.join(tmp, "in.jsonl"), os.path.join(tmp, "out.jsonl")
        bad = write_input(inp, reqs)
        got = check_errors(run_batch(exe, model, policy, inp, out, np_), bad, len(reqs))
        if np_ > 1:
            ref = check_errors(run_batch(exe, model, policy, inp, out + ".1"), bad, len(reqs))
        else:
            ref = {r["id"]: run_alone(exe, model, policy, r, tmp) for r in reqs}
        for r in reqs:
            g, w = got[r["id"]], ref[r["id"]]
            w_text = w.get("output_text", w.get("text"))
            assert g["output_ids"] == w["output_ids"], "%s (%s, np %d): batch %s, alone %s" % (
                r["id"], policy, np_, g["output_ids"], w["output_ids"])
            assert g["text"] == w_text, "%s: text %r vs %r" % (r["id"], g["text"], w_text)
            assert g["stop_reason"] == w["stop_reason"], (g["stop_reason"], w["stop_reason"])
            assert g["prompt_tokens"] == w["prompt_tokens"]
        lens = sorted(got[r["id"]]["prompt_tokens"] for r in reqs)
        print("PASS: %d results equal (%s, np %d, pp %d; prompts %d..%d tokens; %d error lines)" % (
            len(reqs), policy, np_, PP, lens[0], lens[-1], len(bad)))


def pipe(exe, model):
    r = max(prompts()[3::4], key=lambda q: len(q["prompt"]))  # the longest of the long ones
    r["max_new_tokens"] = 12
    with tempfile.TemporaryDirectory() as tmp:
        inp, out, sj = (os.path.join(tmp, n) for n in ("in.jsonl", "out.jsonl", "stats.json"))
        write_input(inp, [r], bad=False)
        ref = run_batch(exe, model, "full", inp, out + ".1")
        global PP
        PP = 2
        got = run_batch(exe, model, "full", inp, out, 2, ["--stats-json", sj])
        assert [g["output_ids"] for g in got] == [w["output_ids"] for w in ref], (got, ref)
        st = json.load(open(sj))
        n = got[0]["prompt_tokens"]
        chunks = [min(48, n - k) for k in range(0, n, 48)]
        prefill = [p[2] for p in st["passes"][:len(chunks)]]
        assert prefill == chunks, "prompt chunks per tick %s, expected %s (one per tick)" % (prefill, chunks)
        assert st["passes"][len(chunks)][1:] == [0, 0], st["passes"][len(chunks)]  # drains: the sample is in flight
        fed = n + got[0]["generated_tokens"] - 1  # the last token sampled is never fed
        ranks = st["ranks"]
        assert [x["stage"] for x in ranks] == [0, 1], ranks
        assert ranks[0]["comm_p2p_bytes"] == fed * 576 * 4 and ranks[1]["comm_p2p_bytes"] == 0, (fed, ranks)
        assert all(0.0 <= x["idle_frac"] <= 1.0 and x["busy_s"] > 0 for x in ranks), ranks
        assert abs(st["bubble_frac"] - sum(x["idle_frac"] for x in ranks) / 2) < 1e-9, st
        print("PASS: %d-token prompt in %d chunks, one per tick through 2 stages; %d bytes stage to stage; "
              "idle %.2f / %.2f" % (n, len(chunks), ranks[0]["comm_p2p_bytes"], ranks[0]["idle_frac"],
                                    ranks[1]["idle_frac"]))


def kill(exe, model):
    reqs = prompts(12, long=False)
    for r in reqs:
        r["max_new_tokens"] = 12
    with tempfile.TemporaryDirectory() as tmp:
        inp, out = os.path.join(tmp, "in.jsonl"), os.path.join(tmp, "out.jsonl")
        write_input(inp, reqs, bad=False)
        full = {r["id"]: r for r in run_batch(exe, model, "full", inp, out + ".ref")}
        cmd = [exe, "generate", "--model", model, "--batch-file", inp, "--out", out, "--max-seqs", "2"]
        p = subprocess.Popen(cmd + POLICY["full"] + COMMON, env=ENV)
        t0 = time.time()
        while time.time() - t0 < 300:
            if os.path.exists(out) and open(out, "rb").read().count(b"\n") >= 3:
                break
            time.sleep(0.02)
        p.send_signal(signal.SIGKILL)
        p.wait()
        data = open(out, "rb").read()
        lines = data.split(b"\n")
        assert lines[-1] == b"", "the last line is cut: %r" % lines[-1][-80:]
        got = [json.loads(l) for l in lines[:-1]]
        assert 3 <= len(got) < len(reqs), "%d lines after the kill" % len(got)
        for g in got:
            assert g == {**full[g["id"]], **{k: g[k] for k in ("queue_s", "prefill_s", "decode_s")}}, g["id"]
        print("PASS: killed after %d of %d results; every line whole and equal to the full run's" % (len(got), len(reqs)))


def budget(exe, model):
    reqs = prompts(4, long=False)
    for r, n in zip(reqs, (60, 20, 45, 10)):
        r["max_new_tokens"] = n  # 60 + any prompt > C + 1 = 65: the cache holds C + 1 slots
    with tempfile.TemporaryDirectory() as tmp:
        inp, out, sj = (os.path.join(tmp, n) for n in ("in.jsonl", "out.jsonl", "stats.json"))
        write_input(inp, reqs, bad=False)
        base = [exe, "generate", "--model", model, "--batch-file", inp, "--out", out, "--max-seqs", "8"]
        base += POLICY["morphkv"] + COMMON
        p = subprocess.run(base + ["--kv-memory", "100KiB"], env=ENV, capture_output=True, text=True)
        assert p.returncode == 1 and "holds not even one sequence" in p.stderr and "102400" in p.stderr, p.stderr
        # SmolLM2-135M: 30 layers x 3 KV heads x 65 slots (C+1) x 2 x 64 x 4 bytes of K/V + the ring
        subprocess.run(base + ["--stats-json", sj], env=ENV, check=True)
        one = json.load(open(sj))["kv_seq_bytes"]
        assert one >= 30 * 3 * 65 * 2 * 64 * 4 and one < 2 * 30 * 3 * 65 * 2 * 64 * 4, one
        subprocess.run(base + ["--kv-memory", str(2 * one + one // 2), "--stats-json", sj, "--ordered"], env=ENV,
                       check=True)
        st = json.load(open(sj))
        assert st["max_running"] == 2 and st["cache_seqs"] == 2 and st["results"] == len(reqs), st
        order = [json.loads(l)["id"] for l in open(out, encoding="utf-8")]
        assert order == [r["id"] for r in reqs], order  # --ordered: input order
        for args, what in (([ "--batch-file", os.path.join(tmp, "missing.jsonl")], "missing.jsonl"),
                           (["--out", os.path.join(tmp, "no", "such", "dir.jsonl")], "dir.jsonl")):
            cmd = list(base)
            i = cmd.index(args[0])
            cmd[i + 1] = args[1]
            t0 = time.time()
            p = subprocess.run(cmd, env=ENV, capture_output=True, text=True)
            assert p.returncode == 1 and what in p.stderr and "No such file" in p.stderr, p.stderr
            assert "batch:" not in p.stderr, p.stderr
        print("PASS: budget refused below one sequence (%d bytes each), two admitted at 2.5x, bad files fail first" % one)


if __name__ == "__main__":
    mode, exe, model = sys.argv[1:4]
    if "--deterministic" in sys.argv:  # e.g. --deterministic off: is the fast path batch-invariant too?
        COMMON[COMMON.index("--deterministic") + 1] = sys.argv[sys.argv.index("--deterministic") + 1]
    if "--pp" in sys.argv:
        PP = int(sys.argv[sys.argv.index("--pp") + 1])
    if mode == "equal":
        np_ = int(sys.argv[sys.argv.index("--np") + 1]) if "--np" in sys.argv else 1
        equal(exe, model, sys.argv[4], np_)
    elif mode == "pipe":
        pipe(exe, model)
    elif mode == "budget":
        budget(exe, model)
    else:
        kill(exe, model)
