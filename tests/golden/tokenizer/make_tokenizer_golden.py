#!/usr/bin/env python3
"""Golden tokenizer data for the demo model (SmolLM2-135M-Instruct, gpt2 BPE, pre "smollm").

Independent implementation: llama.cpp through llama-cpp-python (vocab only), and jinja2 for the
chat template stored in the GGUF file.

    python3 tests/golden/tokenizer/make_tokenizer_golden.py [model.gguf]

Writes, next to this script:
  smollm2.jsonl      one line per case: {"text": str, "special": bool, "ids": [...], "detok": str}
                     or, for byte strings that are not valid UTF-8, "hex" instead of "text".
                     ids = llm.tokenize(text, add_bos=False, special=special);
                     detok = llm.detokenize(ids, special=True) (UTF-8, invalid bytes as U+FFFD).
  smollm2_chat.jsonl one line per chat case: {"template": "chatml", "user": str, "prompt": str,
                     "ids": [...]}: prompt = the GGUF chat template rendered by jinja2 for one user
                     message with add_generation_prompt, ids = its tokens with special=True.
  synthetic.json     small made-up vocabularies (no model needed): an SPM ("llama") vocab with
                     scores and <0xXX> byte tokens, and a byte-level BPE ("gpt2") vocab under
                     several tokenizer.ggml.pre names. Each vocab is written to a temporary GGUF
                     with the gguf package, loaded by llama.cpp (vocab_only) and tokenized; the
                     C unit test rebuilds the same GGUF with tests/testutil/gguf_writer and
                     compares: {"vocabs": [{"name", "model", "pre", "tokens", "types", "scores",
                     "merges", "bos", "eos", "unk", "add_space_prefix"?, "cases": [{"text",
                     "add_bos", "special", "ids"}]}]}.
"""
import json
import os
import sys

import tempfile

import gguf
import jinja2
from llama_cpp import Llama

HERE = os.path.dirname(os.path.abspath(__file__))
MODEL = sys.argv[1] if len(sys.argv) > 1 else os.path.expanduser(
    "~/.cache/morphkv/SmolLM2-135M-Instruct.Q4_1.gguf")

LONG = (
    "The quick brown fox jumps over the lazy dog. In 1969, Neil Armstrong became the first "
    "person to walk on the Moon; his words (\"That's one small step for [a] man, one giant leap "
    "for mankind.\") were heard by ~650 million people. Today, we've got smartphones that're "
    "millions of times faster than the Apollo Guidance Computer -- which ran at 0.043 MHz with "
    "2,048 words of RAM! Isn't that remarkable? Well, I'd say it's 100% remarkable...\n\n"
    "    Indented line with    multiple   spaces\tand\ttabs.\r\nWindows line ending above.")

TEXTS = [
    # English
    "Hello world",
    "Hello, world!",
    "The capital of France is Paris.",
    "What is the meaning of life, the universe, and everything?",
    " leading space",
    "trailing space ",
    "  two leading spaces",
    "ALL CAPS SENTENCE HERE",
    "mIxEd CaSe WoRdS",
    "a",
    " ",
    "I",
    # contractions
    "it's don't they're we've I'm you'll he'd",
    "IT'S DON'T THEY'RE WE'VE I'M YOU'LL HE'D",
    "He'S here, it's 'S",
    "'s 't 're 've 'm 'll 'd",
    "rock 'n' roll ''quoted'' 'single'",
    # Unicode
    "Café déjà vu, naïve façade, jalapeño, Ångström, Øresund",
    "Größe, Straße, Übermäßig",
    "日本語のテキストです。",
    "中文测试：你好，世界！",
    "한국어 텍스트",
    "مرحبا بالعالم",
    "Привет, мир! Как дела?",
    "नमस्ते दुनिया",
    "Ελληνικά γράμματα",
    "עברית",
    "ไทย ภาษา",
    "e\u0301 combining acute, n\u0303",
    "\u00a0non-breaking\u00a0space and\u2009thin space",
    "zero\u200bwidth\u200bspace",
    "ﬁ ligature, ½ fraction, ² superscript, ① circled",
    # code
    "def foo(x):\n    return x * 2\n",
    "for i in range(10):\n\tprint(i)\n",
    "#include <stdio.h>\nint main(void) { printf(\"hi\\n\"); return 0; }\n",
    "{\"key\": \"value\", \"n\": [1, 2, 3], \"ok\": true, \"none\": null}",
    "x = a->b[i] << 2 | ~c && !d || e != f;",
    "SELECT * FROM users WHERE id = 42;",
    "<html><body><p class=\"x\">Hi</p></body></html>",
    "https://example.com/path?query=1&b=two#frag",
    # whitespace
    "   ",
    "\t",
    "\n",
    "\n\n\n",
    "a\n\nb",
    "a  b   c    d",
    "tabs\t\tand\t spaces \t mixed",
    "line1\r\nline2\r\n",
    "word    ",
    "  \n  \n",
    "end with newline\n",
    # digits
    "1234567",
    "3.14159265358979",
    "12345678901234567890",
    "2024-01-15 and 15/01/2024 at 12:34:56",
    "$1,234.56 or €99,99",
    "v1.2.3 a1b2c3 0x1F 1e-9",
    "-42 +7 1000000",
    "٣ ٤ ٥ Arabic-Indic digits",
    # emoji
    "😀",
    "I love 🍕 and 🎉!",
    "👨‍👩‍👧‍👦 family",
    "🇫🇷🇯🇵 flags",
    "👍🏽 thumbs",
    "❤️ heart",
    # punctuation
    "!!!???...",
    "Hello!!! How are you???",
    "--- *** ___ === +++",
    "(parens) [brackets] {braces} <angles>",
    "\"quoted\" 'single' `backtick`",
    "@#$%^&*()_+-=",
    "…—–«»“”‘’",
    # special tokens inside text
    "<|im_start|>user\nhi<|im_end|>",
    "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
    "text<|endoftext|>more",
    "<|im_start|><|im_end|>",
    "< |im_start| >",
    "<|im_start",
    "<repo_name>x<file_sep>y",
    # empty and long
    "",
    LONG,
]

# Byte strings that are not valid UTF-8 (stored as hex).
BYTES = [
    b"\xff\xfeabc",
    b"a\x80b",
    b"\xf0\x9f\x98",
    b"ok \xc3",
]


def main():
    llm = Llama(model_path=MODEL, vocab_only=True, verbose=False)
    n = 0
    with open(os.path.join(HERE, "smollm2.jsonl"), "w", encoding="utf-8") as f:
        for text in TEXTS:
            has_special = "<" in text
            for special in ([False, True] if has_special else [False]):
                ids = llm.tokenize(text.encode("utf-8"), add_bos=False, special=special)
                detok = llm.detokenize(ids, special=True).decode("utf-8", errors="replace")
                f.write(json.dumps({"text": text, "special": special, "ids": ids, "detok": detok},
                                   ensure_ascii=False) + "\n")
                n += 1
        for b in BYTES:
            try:
                ids = llm.tokenize(b, add_bos=False, special=False)
            except Exception as e:  # llama.cpp may refuse invalid UTF-8
                print("skip", b, e, file=sys.stderr)
                continue
            detok = llm.detokenize(ids, special=True).decode("utf-8", errors="replace")
            f.write(json.dumps({"hex": b.hex(), "special": False, "ids": ids, "detok": detok},
                               ensure_ascii=False) + "\n")
            n += 1
    print("wrote", n, "cases")

    template = llm.metadata["tokenizer.chat_template"]
    env = jinja2.Environment(loader=jinja2.BaseLoader())
    tmpl = env.from_string(template)
    users = ["Hello!", "What is the capital of France?", "Write a haiku about the sea.\nMake it sad.",
             "  spaces around  "]
    with open(os.path.join(HERE, "smollm2_chat.jsonl"), "w", encoding="utf-8") as f:
        for u in users:
            prompt = tmpl.render(messages=[{"role": "user", "content": u}],
                                 add_generation_prompt=True, bos_token="", eos_token="")
            ids = llm.tokenize(prompt.encode("utf-8"), add_bos=False, special=True)
            f.write(json.dumps({"template": "chatml", "user": u, "prompt": prompt, "ids": ids},
                               ensure_ascii=False) + "\n")

    synthetic()


# ---- synthetic vocabularies -----------------------------------------------------------------

def gpt2_byte_chars():
    """GPT-2 byte -> unicode table (the public definition from the GPT-2 encoder)."""
    keep = list(range(0x21, 0x7F)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    out, n = {}, 0
    for b in range(256):
        if b in keep:
            out[b] = chr(b)
        else:
            out[b] = chr(256 + n)
            n += 1
    return out


def bpe_vocab():
    bc = gpt2_byte_chars()
    specials = [("<|endoftext|>", 3), ("<|im_start|>", 3), ("<|im_end|>", 3), ("<|eot_id|>", 3),
                ("<|user_tok|>", 4)]
    tokens = [t for t, _ in specials]
    types = [ty for _, ty in specials]
    for b in range(256):
        tokens.append(bc[b])
        types.append(1)
    merges = []
    # merges in rank order; each result becomes a token
    for a, b in [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("i", "n"), ("Ġt", "h"), ("Ġth", "in"),
                 ("Ġthe", "n"), ("e", "r"), ("l", "l"), ("he", "ll"), ("hell", "o"), ("Ġ", "w"),
                 ("o", "r"), ("Ġw", "or"), ("Ġwor", "ld"), ("l", "d"), ("1", "2"), ("12", "3"),
                 ("4", "5"), ("Ġ", "Ġ"), ("ĠĠ", "ĠĠ"), ("Ċ", "Ċ"), ("'", "s"), ("'", "t"),
                 ("Ã", "©"), ("h", "Ã©"), ("hÃ©", "ll"), ("t", "he"), ("Ġ", "the"), ("I", "T"),
                 ("æĹ", "¥"), ("æ", "Ĺ")]:
        merges.append(a + " " + b)
        if a + b not in tokens:
            tokens.append(a + b)
            types.append(1)
    return tokens, types, merges


def spm_vocab():
    tokens = ["<unk>", "<s>", "</s>"] + ["<0x%02X>" % b for b in range(256)]
    types = [2, 3, 3] + [6] * 256
    scores = [0.0] * len(tokens)
    # (piece, score): a higher score merges first
    pieces = [("▁", -1.0), ("h", -2.0), ("e", -2.0), ("l", -2.0), ("o", -2.0), ("w", -2.0),
              ("r", -2.0), ("d", -2.0), ("he", -3.0), ("ll", -4.0), ("▁h", -5.0), ("▁he", -6.0),
              ("hell", -7.0), ("hello", -8.0), ("▁hello", -9.0), ("or", -10.0), ("▁w", -11.0),
              ("▁wor", -12.0), ("ld", -13.0), ("▁world", -14.0), ("▁▁", -15.0),
              ("▁▁▁▁", -16.0), ("日", -17.0), ("本", -17.5), ("日本", -18.0), ("lo", -3.5),
              ("<|user|>", 0.0)]
    for p, sc in pieces:
        tokens.append(p)
        types.append(4 if p == "<|user|>" else 1)
        scores.append(sc)
    return tokens, types, scores


BPE_TEXTS = ["hello world", "the thin then", "  the  ", "123456789", "12 123 1234",
             "it's IT'S it'S", "a\n\nb  \n c", "héllo wörld", "日本 語", "x<|im_start|>y<|eot_id|>",
             "<|user_tok|> the", "", " ", "\t\tthe", "don't stop 12,345.67", "the    end",
             "Hello!!! ...", "   \n\n   x"]
SPM_TEXTS = ["hello world", "hello", " hello", "  hello  world ", "xyz é", "<s>hello</s>",
             "hello\nworld", "日本", "<|user|>hello", "hellohello", "", "wor ld", "    hello",
             "he llo"]


def write_gguf(path, model, tokens, types, scores=None, merges=None, pre=None, bos=1, eos=2,
               unk=None, add_space_prefix=None):
    w = gguf.GGUFWriter(path, "llama")
    w.add_block_count(1)
    w.add_context_length(128)
    w.add_embedding_length(8)
    w.add_feed_forward_length(16)
    w.add_head_count(1)
    w.add_head_count_kv(1)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_tokenizer_model(model)
    if pre is not None:
        w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(types)
    if scores is not None:
        w.add_token_scores(scores)
    if merges is not None:
        w.add_token_merges(merges)
    w.add_bos_token_id(bos)
    w.add_eos_token_id(eos)
    if unk is not None:
        w.add_unk_token_id(unk)
    if add_space_prefix is not None:
        w.add_add_space_prefix(add_space_prefix)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def run_cases(path, texts):
    llm = Llama(model_path=path, vocab_only=True, verbose=False)
    cases = []
    for text in texts:
        for add_bos in (False, True):
            for special in (False, True):
                ids = llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=special)
                cases.append({"text": text, "add_bos": add_bos, "special": special, "ids": ids})
    del llm
    return cases


def synthetic():
    vocabs = []
    with tempfile.TemporaryDirectory() as td:
        path = os.path.join(td, "v.gguf")
        tokens, types, scores = spm_vocab()
        for name, asp in (("spm", None), ("spm_noprefix", False)):
            write_gguf(path, "llama", tokens, types, scores=scores, bos=1, eos=2, unk=0,
                       add_space_prefix=asp)
            v = {"name": name, "model": "llama", "tokens": tokens, "types": types,
                 "scores": scores, "bos": 1, "eos": 2, "unk": 0,
                 "cases": run_cases(path, SPM_TEXTS)}
            if asp is not None:
                v["add_space_prefix"] = asp
            vocabs.append(v)
        tokens, types, merges = bpe_vocab()
        for pre in ("gpt-2", "llama-bpe", "qwen2", "smollm", "default"):
            write_gguf(path, "gpt2", tokens, types, merges=merges, pre=pre, bos=0, eos=0)
            vocabs.append({"name": "bpe_" + pre, "model": "gpt2", "pre": pre, "tokens": tokens,
                           "types": types, "merges": merges, "bos": 0, "eos": 0,
                           "cases": run_cases(path, BPE_TEXTS)})
    with open(os.path.join(HERE, "synthetic.json"), "w", encoding="utf-8") as f:
        json.dump({"vocabs": vocabs}, f, ensure_ascii=False)
    print("wrote", len(vocabs), "synthetic vocabularies")


if __name__ == "__main__":
    main()
