#!/usr/bin/env python3
"""morphkv vs llama.cpp on the same model, prompt and thread count.

Measures prompt processing (a prompt of exactly --prompt-tokens tokens, default 512) and decode
(--gen-tokens tokens, default 128, end-of-generation ignored so both produce the same count) for
`morphkv generate` and for llama.cpp through llama-cpp-python, repeats each --reps times and
reports the median. Prints a Markdown table with both figures and their ratio, the machine
(lscpu model name, cores) and the commands, and writes it to docs/benchmarks.md under the
heading "## Engine vs llama.cpp" (the rest of the file is kept).

Decode tok/s: morphkv's decode_tok_s from --stats-json (forward-pass time of the steps after the
prefill); llama.cpp's from its own perf counters (t_eval_ms / n_eval), both excluding sampling.
Prefill tok/s: morphkv's prefill_tok_s; llama.cpp's n_p_eval / t_p_eval_ms.

usage: python3 tests/bench/bench_vs_llamacpp.py [--model M] [--binary build/morphkv]
       [--threads N] [--reps 3] [--no-write]
"""
import argparse
import datetime
import json
import os
import re
import shlex
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
DEFAULT_MODEL = os.path.join(
    os.environ.get("MORPHKV_CACHE", os.path.expanduser("~/.cache/morphkv")),
    "SmolLM2-135M-Instruct.Q4_1.gguf")
SECTION = "## Engine vs llama.cpp"

PARAGRAPH = (
    "The history of computing is a story of abstraction. Early machines were programmed by "
    "rewiring panels and flipping switches; later, stored programs let the same hardware run "
    "different tasks. Assemblers gave names to instructions, compilers turned formulas into "
    "machine code, and operating systems shared one computer among many users. Each layer hid "
    "the details of the one below it, so that people could think about larger problems. Today a "
    "single sentence typed into a search box passes through dozens of such layers, from the "
    "browser's script engine down to the transistors that switch billions of times a second. "
)


def machine():
    model, cores, threads = "unknown CPU", os.cpu_count(), os.cpu_count()
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        f = dict(
            (k.strip(), v.strip()) for k, v in
            (line.split(":", 1) for line in out.splitlines() if ":" in line))
        model = f.get("Model name", model)
        cps = int(f.get("Core(s) per socket", 0) or 0)
        sockets = int(f.get("Socket(s)", 1) or 1)
        if cps:
            cores = cps * sockets
        threads = int(f.get("CPU(s)", threads))
    except (OSError, subprocess.CalledProcessError, ValueError):
        pass
    return model, cores, threads


def make_prompt(llm, n_tokens):
    """Text that tokenizes (with the model's BOS rule) to exactly n_tokens tokens."""
    text = PARAGRAPH * (n_tokens // 40 + 4)
    words = text.split(" ")
    lo, hi = 1, len(words)
    # the longest word prefix with at most n_tokens tokens (token count grows with the prefix)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if len(llm.tokenize(" ".join(words[:mid]).encode(), add_bos=True, special=True)) <= n_tokens:
            lo = mid
        else:
            hi = mid - 1
    cand = " ".join(words[:lo])
    ids = llm.tokenize(cand.encode(), add_bos=True, special=True)
    # pad with single-token characters until the count is exact
    while len(ids) < n_tokens:
        cand += "."
        ids = llm.tokenize(cand.encode(), add_bos=True, special=True)
    if len(ids) != n_tokens:
        sys.exit(f"bench: could not build a prompt of exactly {n_tokens} tokens (got {len(ids)})")
    return cand, ids


def run_llamacpp(llm, ids, gen_tokens):
    import llama_cpp
    import numpy as np
    llm.reset()
    llama_cpp.llama_perf_context_reset(llm._ctx.ctx)
    llm.eval(ids)
    toks = []
    for i in range(gen_tokens):
        # the last evaluated token's logits (llm.scores is only filled with logits_all=True)
        logits = np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(llm.n_vocab(),))
        tok = int(np.argmax(logits))
        toks.append(tok)
        if i + 1 < gen_tokens:  # the last token needs no forward pass (as in morphkv)
            llm.eval([tok])
    p = llama_cpp.llama_perf_context(llm._ctx.ctx)
    pp = p.n_p_eval / (p.t_p_eval_ms / 1e3) if p.t_p_eval_ms > 0 else float("nan")
    tg = p.n_eval / (p.t_eval_ms / 1e3) if p.t_eval_ms > 0 else float("nan")
    return pp, tg, p.n_p_eval, p.n_eval


def run_morphkv(cmd, stats_path):
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"bench: morphkv failed ({r.returncode}):\n{r.stderr}")
    with open(stats_path) as f:
        s = json.load(f)
    return s["prefill_tok_s"], s["decode_tok_s"], s["prompt_tokens"], s["decode_steps"]


def update_doc(path, section_text):
    old = ""
    if os.path.exists(path):
        with open(path) as f:
            old = f.read()
    if not old:
        old = "# Benchmarks\n\n"
    pat = re.compile(r"^## Engine vs llama\.cpp\n.*?(?=^## |\Z)", re.S | re.M)
    if pat.search(old):
        new = pat.sub(lambda _: section_text, old)
    else:
        new = old.rstrip("\n") + "\n\n" + section_text
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(new)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--binary", default=os.path.join(ROOT, "build", "morphkv"))
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--prompt-tokens", type=int, default=512)
    ap.add_argument("--gen-tokens", type=int, default=128)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--doc", default=os.path.join(ROOT, "docs", "benchmarks.md"))
    ap.add_argument("--no-write", action="store_true", help="print only, leave docs/ alone")
    a = ap.parse_args()

    if not os.path.exists(a.model):
        sys.exit(f"bench: model {a.model} not found (run launch/fetch-model.sh)")
    if not os.access(a.binary, os.X_OK):
        sys.exit(f"bench: {a.binary} not found (run launch/build.sh)")
    try:
        import llama_cpp
        from llama_cpp import Llama
    except ImportError:
        sys.exit("bench: llama-cpp-python is missing (pip install llama-cpp-python)")

    llm = Llama(model_path=a.model, n_ctx=a.prompt_tokens + a.gen_tokens + 16, n_batch=a.prompt_tokens,
                n_ubatch=a.prompt_tokens, n_threads=a.threads, n_threads_batch=a.threads,
                verbose=False)
    text, ids = make_prompt(llm, a.prompt_tokens)
    tmp = tempfile.mkdtemp(prefix="mk_bench_")
    prompt_file = os.path.join(tmp, "prompt.txt")
    with open(prompt_file, "w") as f:
        f.write(text)
    stats = os.path.join(tmp, "stats.json")
    cmd = [a.binary, "generate", "--model", a.model, "--prompt-file", prompt_file,
           "--temperature", "0", "--max-new-tokens", str(a.gen_tokens), "--ignore-eos",
           "--threads", str(a.threads), "--stats-json", stats, "--quiet"]

    load = os.getloadavg()
    mk_pp, mk_tg, ll_pp, ll_tg = [], [], [], []
    run_llamacpp(llm, ids, 8)  # warm-up (page in the weights)
    run_morphkv(cmd[:cmd.index("--max-new-tokens") + 1] + ["8"] + cmd[cmd.index("--max-new-tokens") + 2:], stats)
    for rep in range(a.reps):
        pp, tg, n_p, n_d = run_morphkv(cmd, stats)
        if n_p != a.prompt_tokens:
            sys.exit(f"bench: morphkv tokenized the prompt to {n_p} tokens, llama.cpp to {a.prompt_tokens}")
        mk_pp.append(pp)
        mk_tg.append(tg)
        pp, tg, n_p, n_d = run_llamacpp(llm, ids, a.gen_tokens)
        ll_pp.append(pp)
        ll_tg.append(tg)
        print(f"rep {rep + 1}: morphkv pp {mk_pp[-1]:.1f} tg {mk_tg[-1]:.1f} | "
              f"llama.cpp pp {ll_pp[-1]:.1f} tg {ll_tg[-1]:.1f} tok/s", file=sys.stderr)

    med = statistics.median
    cpu, cores, hw_threads = machine()
    when = datetime.date.today().isoformat()
    ver = getattr(llama_cpp, "__version__", "?")
    mk_cmd = " ".join(shlex.quote(c) for c in cmd).replace(tmp, "$TMP").replace(
        os.path.expanduser("~"), "~").replace(ROOT + "/", "")
    rows = [
        ("prompt processing (%d-token prompt)" % a.prompt_tokens, med(mk_pp), med(ll_pp)),
        ("decode (%d tokens)" % a.gen_tokens, med(mk_tg), med(ll_tg)),
    ]
    lines = [
        SECTION,
        "",
        f"Model `{os.path.basename(a.model)}`, {a.threads} thread(s) for both engines, greedy, "
        f"median of {a.reps} runs; measured {when}.",
        f"Machine: {cpu}, {cores} cores ({hw_threads} hardware threads); load average "
        f"{load[0]:.2f} at the start (other work on the machine slows both engines).",
        "",
        "| phase | morphkv tok/s | llama.cpp tok/s | morphkv / llama.cpp |",
        "| --- | ---: | ---: | ---: |",
    ]
    for name, m, l in rows:
        lines.append(f"| {name} | {m:.1f} | {l:.1f} | {m / l:.2f} |")
    lines += [
        "",
        f"llama.cpp: llama-cpp-python {ver} (n_batch = n_ubatch = {a.prompt_tokens}, its perf "
        "counters, sampling excluded). morphkv: `prefill_tok_s` and `decode_tok_s` of "
        "`--stats-json` (forward passes only).",
        "",
        "Commands:",
        "",
        "```",
        "python3 " + " ".join(shlex.quote(x) for x in sys.argv).replace(
            os.path.expanduser("~"), "~").replace(ROOT + "/", ""),
        f"# morphkv side, per run:",
        mk_cmd,
        "```",
        "",
    ]
    section = "\n".join(lines)
    print(section)
    if not a.no_write:
        update_doc(a.doc, section)
        print(f"bench: wrote the section to {a.doc}", file=sys.stderr)


if __name__ == "__main__":
    main()
