#!/usr/bin/env python3
"""Two small made-up tokenizer.json files and their ids by the `tokenizers` library (independent
of morphkv), for the tokenizer.json translation (src/hf_tokenizer.c) beyond the demo model's
byte-level Digits + ByteLevel pre-tokenizer:

  tok_spm/tokenizer.json     SentencePiece-style BPE as Llama 2 / Mistral publish it: normalizer
                             Prepend("\u2581") + Replace(" ", "\u2581"), no pre-tokenizer, byte
                             fallback to <0xXX> tokens, decoder Replace + ByteFallback + Fuse + Strip
  tok_split/tokenizer.json   byte-level BPE with Llama 3's Split regex (case-insensitive (?i:...)
                             contractions, 1-3 digit groups) + ByteLevel(use_regex=false), an added
                             special token and an added normal token
  hf_tok_cases.json          {"spm": [{"text", "ids"}], "split": [...]}: tokenizers' encode(text,
                             add_special_tokens=False).ids

    ~/.cache/morphkv/venv/bin/python tests/golden/hf/make_hf_tokenizer_golden.py
"""
import json
import os

import tokenizers

HERE = os.path.dirname(os.path.abspath(__file__))
SP = "\u2581"
TEXTS = ["hello world", "Hello  World!", " leading", "trailing ", "hell\u00f6 \u20ac 12345", "a\nb\n\nc", "ab  cd",
         "I'M here, you'LL see 007", "<|end|>x<|end|>", "tok<extra>tok", "", "\u4f60\u597d"]


def gpt2_chars():
    keep = [b for b in range(256) if 0x21 <= b <= 0x7E or 0xA1 <= b <= 0xAC or 0xAE <= b <= 0xFF]
    out, n = {}, 0
    for b in range(256):
        out[b] = chr(b) if b in keep else chr(256 + n)
        n += b not in keep
    return out


def added(i, content, special):
    return {"id": i, "content": content, "single_word": False, "lstrip": False, "rstrip": False,
            "normalized": False, "special": special}


def spm():
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for b in range(256):
        vocab["<0x%02X>" % b] = 3 + b
    merges = [(SP, "h"), ("e", "l"), ("el", "l"), (SP + "h", "ell"), ("o", "r"), (SP, "w"), (SP + "w", "or"),
              ("l", "d"), (SP + "wor", "ld"), (SP, "a"), ("b", "c")]
    for ch in [SP, "h", "e", "l", "o", "w", "r", "d", "a", "b", "c", "H", "W", "!"]:
        vocab.setdefault(ch, len(vocab))
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    return {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [added(0, "<unk>", True), added(1, "<s>", True), added(2, "</s>", True)],
        "normalizer": {"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": SP},
                                                           {"type": "Replace", "pattern": {"String": " "}, "content": SP}]},
        "pre_tokenizer": None, "post_processor": None,
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": SP}, "content": " "}, {"type": "ByteFallback"},
            {"type": "Fuse"}, {"type": "Strip", "content": " ", "start": 1, "stop": 0}]},
        "model": {"type": "BPE", "dropout": None, "unk_token": "<unk>", "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": True, "byte_fallback": True, "ignore_merges": False,
                  "vocab": vocab, "merges": [[a, b] for a, b in merges]},
    }


LLAMA3_RE = ("(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|"
             "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+")


def split():
    ch = gpt2_chars()
    vocab = {ch[b]: b for b in range(256)}
    merges = [("h", "e"), ("l", "l"), ("he", "ll"), ("\u0120", "w"), ("o", "r"), ("\u0120w", "or"), ("0", "0"),
              ("'", "L"), ("'L", "L"), ("\u0120", "y")]
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    n = len(vocab)
    return {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [added(n, "<|end|>", True), added(n + 1, "<extra>", False)],
        "normalizer": None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": LLAMA3_RE}, "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]},
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": True,
                  "vocab": vocab, "merges": [a + " " + b for a, b in merges]},
    }


def main():
    cases = {}
    for name, tj in (("spm", spm()), ("split", split())):
        d = os.path.join(HERE, "tok_" + name)
        os.makedirs(d, exist_ok=True)
        path = os.path.join(d, "tokenizer.json")
        with open(path, "w", encoding="utf-8") as f:
            json.dump(tj, f, ensure_ascii=False, indent=1)
        tok = tokenizers.Tokenizer.from_file(path)
        cases[name] = [{"text": t, "ids": tok.encode(t, add_special_tokens=False).ids} for t in TEXTS]
        cases[name + "_n_vocab"] = tok.get_vocab_size(with_added_tokens=True)
    with open(os.path.join(HERE, "hf_tok_cases.json"), "w", encoding="utf-8") as f:
        json.dump(cases, f, ensure_ascii=False, indent=1)
    print(json.dumps(cases, ensure_ascii=False)[:1500])


if __name__ == "__main__":
    main()
