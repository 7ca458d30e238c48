#!/usr/bin/env python3
"""Golden logits and greedy continuations for the demo model, made by llama.cpp
(llama-cpp-python), an implementation independent of morphkv.

For each prompt: the prompt is tokenized by llama.cpp (so this data does not depend on our
tokenizer), a greedy continuation of 64 tokens is generated (argmax of the logits, one token at a
time), and then the whole sequence (prompt + continuation) is evaluated once more with logits at
every position; the top-20 (id, logit) pairs of every position are stored.

Not run by CI. Usage:
    pip install llama-cpp-python
    python3 tests/golden/logits/make_logits_golden.py ~/.cache/morphkv/SmolLM2-135M-Instruct.Q4_1.gguf
Writes tests/golden/logits/smollm2_logits.json next to this script.
"""
import json
import os
import sys

import numpy as np
from llama_cpp import Llama, __version__ as llama_cpp_version

PROMPTS = [
    "The capital of France is",
    "Once upon a time, in a small village by the sea, there lived",
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
    "1, 2, 3, 4, 5, 6, 7, 8, 9, 10,",
    "The alphabet in order: A B C D E F",
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "<|im_start|>user\nList the days of the week.<|im_end|>\n<|im_start|>assistant\n",
    "Monday, Tuesday, Wednesday,",
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "<|im_start|>user\nWrite a Python function that adds two numbers.<|im_end|>\n<|im_start|>assistant\n",
    "January, February, March, April,",
]
N_NEW = 64
TOP = 20


def main():
    model = sys.argv[1] if len(sys.argv) > 1 else os.path.expanduser(
        "~/.cache/morphkv/SmolLM2-135M-Instruct.Q4_1.gguf")
    llm = Llama(model_path=model, n_ctx=512, n_threads=2, n_batch=512, logits_all=True,
                verbose=False)
    cases = []
    for text in PROMPTS:
        prompt = llm.tokenize(text.encode(), add_bos=False, special=True)
        llm.reset()
        llm.eval(prompt)
        seq = list(prompt)
        for _ in range(N_NEW):
            logits = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float32)
            tok = int(np.argmax(logits))
            seq.append(tok)
            if tok == llm.token_eos():
                break
            llm.eval([tok])
        # teacher-forced logits of the whole sequence in one pass
        llm.reset()
        llm.eval(seq)
        positions = []
        for i in range(len(seq)):
            row = np.array(llm.scores[i], dtype=np.float32)
            top = np.argsort(-row, kind="stable")[:TOP]
            positions.append({"ids": [int(t) for t in top], "logits": [float(row[t]) for t in top]})
        # smallest top-2 margin along the greedy path: below ~0.25 the two engines' 8-bit
        # activation rounding can legitimately pick different tokens (see test_logits.c)
        margins = [positions[len(prompt) - 1 + i]["logits"][0] - positions[len(prompt) - 1 + i]["logits"][1]
                   for i in range(len(seq) - len(prompt))]
        cases.append({"text": text, "prompt_ids": [int(t) for t in prompt],
                      "greedy_min_margin": float(min(margins)),
                      "greedy_ids": [int(t) for t in seq[len(prompt):]], "top": positions})
        print(f"{len(prompt)} prompt tokens, {len(seq) - len(prompt)} generated: "
              f"{llm.detokenize(seq[len(prompt):]).decode(errors='replace')!r}", file=sys.stderr)
    out = {"generator": f"llama-cpp-python {llama_cpp_version}", "model": os.path.basename(model),
           "top_k": TOP, "cases": cases}
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "smollm2_logits.json")
    with open(path, "w") as f:
        json.dump(out, f, separators=(",", ":"))
    print("wrote", path, file=sys.stderr)


if __name__ == "__main__":
    main()
