#!/usr/bin/env python3
"""Adds recall.csv's `nearest` column to `morphkv eval --task recall` runs made before eval wrote
it (docs/fidelity/issue13/recall, recall-1000 prompt 0, recall-2000 prompt 0); on newer runs it
prints eval's own value beside its own (an independent check).

    python3 tools/recall_nearest.py MODEL.gguf PROMPTS.jsonl RUN_DIR SINGLE_Q_DIR [--write]

nearest = the question's position - the last copy of the answer in the prompt or the reference
continuation (src/eval.c). The reference's token ids are in RUN_DIR/p<line>_reference.txt, the
vocabulary is read from the GGUF file (byte-level BPE pieces, decoded here), a copy in the
continuation is a window of answer_tokens ids that decodes to the answer string. The fact's position
in the prompt comes from SINGLE_Q_DIR, a 1-token run with one question per prompt line, where the
question sits at prompt + 1 (fact = prompt tokens + 1 - distance). docs/fidelity/issue13/single-q
holds it: single_q.jsonl (prompt lines 0 and 1 of tests/golden/recall/recall_prompts.jsonl, once
per question with only that question, "src": [line, question]) and the output of

    morphkv eval --model M --prompts single_q.jsonl --task recall --new-tokens 1 --policies full \
      --threads 1 --no-plot --out SINGLE_Q_DIR
"""
import csv
import json
import os
import struct
import sys

SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}


def gguf_tokens(path):
    f = open(path, "rb")
    magic, ver, nt, nkv = struct.unpack("<IIQQ", f.read(24))
    rd_str = lambda: f.read(struct.unpack("<Q", f.read(8))[0]).decode("utf-8", "replace")

    def skip(t):
        if t == 8:
            rd_str()
        elif t == 9:
            et, n = struct.unpack("<IQ", f.read(12))
            if et == 8:
                return [rd_str() for _ in range(n)]
            f.seek(SIZES[et] * n, 1)
        else:
            f.seek(SIZES[t], 1)

    for _ in range(nkv):
        key = rd_str()
        t = struct.unpack("<I", f.read(4))[0]
        v = skip(t)
        if key == "tokenizer.ggml.tokens":
            return v
    raise SystemExit("no tokens")


def byte_decoder():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


def main():
    model, prompts_file, run_dir, single_q = sys.argv[1:5]
    toks = gguf_tokens(model)
    bd = byte_decoder()
    dec = lambda ids: bytes(bd[ch] for i in ids for ch in toks[i] if ch in bd).decode("utf-8", "replace")
    prompts = [json.loads(l) for l in open(prompts_file)]
    rows = list(csv.DictReader(open(os.path.join(run_dir, "recall.csv"))))
    seqs = {}
    for r in rows:
        p = r["prompt"]
        if p in seqs:
            continue
        txt = open(os.path.join(run_dir, p + "_reference.txt")).read().split("\n")
        hdr = txt[0].split()  # "# prompt line 0, 143 prompt tokens, 1000 generated tokens"
        n_prompt = int(hdr[hdr.index("prompt", 3) - 1])
        ids = [int(x) for x in txt[1].split()[2:]]
        seqs[p] = (n_prompt, ids)
    # fact positions from a 1-token run with one question per prompt line (runs/single_q): there the
    # question sits at n_prompt + 1, so fact = n_prompt + 1 - distance
    sq = list(csv.DictReader(open(os.path.join(single_q, "recall.csv"))))
    sqn = {r["prompt"]: int(r["prompt_tokens"]) for r in csv.DictReader(open(os.path.join(single_q, "summary.csv")))
           if r["budget"] == "reference"}
    src = [json.loads(l)["src"] for l in open(os.path.join(single_q, "single_q.jsonl"))]
    fact_of = {}
    for r in sq:
        if r["budget"] != "reference":
            continue
        i = int(r["prompt"][1:])
        fact_of[tuple(src[i])] = sqn[r["prompt"]] + 1 - int(r["distance"])
    out = {}
    for p, (n_prompt, ids) in seqs.items():
        line = int(p[1:])
        qs = prompts[line]["questions"]
        ref = {int(r["question"]): r for r in rows if r["prompt"] == p and r["budget"] == "reference"}
        for k, q in enumerate(qs):
            na, dist = int(ref[k]["answer_tokens"]), int(ref[k]["distance"])
            fact = fact_of[(line, k)]
            pos = fact + dist
            hits = [i for i in range(len(ids) - na + 1) if dec(ids[i:i + na]) == q["answer"]]
            near = pos - (n_prompt + hits[-1]) if hits else dist
            out[(p, str(k))] = near
            c = ref[k].get("nearest")
            print("%s q%d %r: fact at %d, distance %d, restated %d times, nearest %d%s" % (
                p, k, q["answer"], fact, dist, len(hits), near, "" if c is None else " (eval: %s)" % c))
    if len(sys.argv) > 5 and sys.argv[5] == "--write":
        hdr = list(rows[0].keys())
        if "nearest" not in hdr:
            hdr.append("nearest")
        with open(os.path.join(run_dir, "recall.csv"), "w", newline="") as f:
            w = csv.DictWriter(f, hdr)
            w.writeheader()
            for r in rows:
                r["nearest"] = out[(r["prompt"], r["question"])]
                w.writerow(r)


main()
