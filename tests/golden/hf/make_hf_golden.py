#!/usr/bin/env python3
"""Golden data for `--model DIR` on the demo model's Hugging Face checkpoint
(tools/make_hf_checkpoint.py), made by transformers' fp32 forward pass and the `tokenizers`
library: implementations independent of morphkv.

  hf_logits.json     the 10 prompts of tests/golden/logits/smollm2_logits.json: prompt ids from
                     `tokenizers` (tokenizer.json, add_special_tokens=False: SmolLM2 adds no BOS),
                     a greedy continuation of 64 tokens from LlamaForCausalLM in float32 (argmax,
                     no EOS stop, KV-cached decoding) with the top-2 margin at each step, and then the whole sequence
                     evaluated once more with the top-20 (id, logit) pairs at every position.
  hf_tokenizer.jsonl `tokenizers` ids of every UTF-8 string in tests/golden/tokenizer/smollm2.jsonl
                     and of the 10 prompts: {"text", "ids"} (added tokens are matched in the text, as
                     morphkv does with parse_special).

Not run by CI (needs torch). Usage, after tools/make_hf_checkpoint.py:
    ~/.cache/morphkv/venv/bin/pip install torch transformers tokenizers
    ~/.cache/morphkv/venv/bin/python tests/golden/hf/make_hf_golden.py [CHECKPOINT_DIR]
"""
import json
import os
import sys

import torch
import tokenizers
import transformers
from transformers import AutoModelForCausalLM

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(HERE)))
N_NEW, TOP_K = 64, 20


def main():
    ckpt = sys.argv[1] if len(sys.argv) > 1 else os.path.expanduser("~/.cache/morphkv/SmolLM2-135M-Instruct-hf")
    tok = tokenizers.Tokenizer.from_file(os.path.join(ckpt, "tokenizer.json"))
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32, attn_implementation="eager")
    model.eval()
    prompts = [c["text"] for c in json.load(open(os.path.join(ROOT, "tests/golden/logits/smollm2_logits.json")))["cases"]]
    cases = []
    with torch.no_grad():
        for text in prompts:
            ids = tok.encode(text, add_special_tokens=False).ids
            seq, margins = list(ids), []
            out = model(torch.tensor([seq]), use_cache=True)
            for _ in range(N_NEW):
                logits = out.logits[0, -1]
                top2 = torch.topk(logits, 2)
                margins.append(float(top2.values[0] - top2.values[1]))
                seq.append(int(torch.argmax(logits)))  # lowest id on an exact tie, like morphkv
                out = model(torch.tensor([seq[-1:]]), past_key_values=out.past_key_values, use_cache=True)
            logits = model(torch.tensor([seq])).logits[0]
            top = torch.topk(logits, TOP_K, dim=-1)
            cases.append({"text": text, "prompt_ids": ids, "greedy_ids": seq[len(ids):], "greedy_margins": margins,
                          "greedy_min_margin": min(margins),
                          "top": [{"ids": top.indices[p].tolist(), "logits": top.values[p].tolist()} for p in range(len(seq))]})
            print("%-40r -> %r" % (text[:40], tok.decode(seq[len(ids):len(ids) + 12])))
    out = {"generator": "transformers %s, torch %s, fp32, eager attention" % (transformers.__version__, torch.__version__),
           "checkpoint": "tools/make_hf_checkpoint.py (bf16) of SmolLM2-135M-Instruct.Q4_1.gguf", "top_k": TOP_K, "cases": cases}
    with open(os.path.join(HERE, "hf_logits.json"), "w") as f:
        json.dump(out, f)
    with open(os.path.join(HERE, "hf_tokenizer.jsonl"), "w", encoding="utf-8") as f:
        texts = [json.loads(l).get("text") for l in open(os.path.join(ROOT, "tests/golden/tokenizer/smollm2.jsonl"))]
        for t in [t for t in texts if t is not None] + prompts:
            f.write(json.dumps({"text": t, "ids": tok.encode(t, add_special_tokens=False).ids}, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
