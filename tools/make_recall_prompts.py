#!/usr/bin/env python3
"""Prompts for `morphkv eval --task recall` (docs/fidelity.md), one JSON object a line:

    {"prompt": "...", "length": 2000, "questions": [{"question": "...", "answer_prefix": "...",
     "answer": " ..."}, ...]}

Each prompt first states a handful of facts (a person's name, a number, a code, a list, a
place), then asks for a long piece of writing on an unrelated topic. `morphkv eval` lets the
full cache write N tokens of it (the reference, replayed by every policy), then appends each
question as a new user turn, followed by the answer prefix, and scores the answer tokens: the
distance between a fact and its question is about N plus the prompt after the fact.
The answer prefix repeats the question's wording so that the answer is the next thing the model
writes; answers start with a space, as they follow the prefix.

    python3 tools/make_recall_prompts.py > tests/golden/recall/recall_prompts.jsonl

Deterministic: the same seed gives the same file.
"""
import argparse
import json
import random
import sys

FIRST = ["Elena", "Marcus", "Priya", "Tomas", "Aiko", "Farid", "Greta", "Kwame", "Lucia", "Oskar",
         "Nadia", "Rafael"]
LAST = ["Marsh", "Okafor", "Lindqvist", "Tanaka", "Moreau", "Castillo", "Novak", "Haddad", "Brennan",
        "Ivanova", "Quint", "Sato"]
PETS = ["Biscuit", "Pepper", "Mango", "Clover", "Juniper", "Waffles", "Pistachio", "Domino"]
CITIES = ["Lisbon", "Oslo", "Nairobi", "Kyoto", "Porto", "Tallinn", "Valparaiso", "Hobart"]
ITEMS = ["apples", "candles", "rice", "batteries", "rope", "lemons", "soap", "matches", "flour",
         "nails", "honey", "string"]
TOPICS = [
    "a lighthouse keeper who restores an old boat over one summer",
    "the history of bread-making in a small mountain village",
    "a botanist cataloguing plants on a remote island",
    "a year in the life of a city library",
    "two siblings who open a bicycle repair shop",
    "a journey by train across a large continent",
    "a beekeeper learning the trade from her grandfather",
    "the building of a stone bridge over a river",
]


def make(rng, topic, words):
    name = "%s %s" % (rng.choice(FIRST), rng.choice(LAST))
    pet = rng.choice(PETS)
    city = rng.choice(CITIES)
    code = "%d" % rng.randint(1000, 9999)
    room = "%d" % rng.randint(100, 899)
    items = rng.sample(ITEMS, 3)
    facts = ("Please remember these facts; I will ask about them later. "
             "The engineer in charge of the project is %s. "
             "The code of the office safe is %s. "
             "The team meets in room %s. "
             "The office cat is called %s. "
             "The company was founded in %s. "
             "The shopping list is: %s, %s and %s." % (name, code, room, pet, city, *items))
    prompt = "%s\n\nNow, unrelated to these facts: write a long, detailed story about %s. " \
             "Write at least %d words." % (facts, topic, words)
    qs = [
        ("What is the code of the office safe? Answer with the code only.", "The code of the office safe is", " " + code),
        ("Who is the engineer in charge of the project? Answer with the full name only.",
         "The engineer in charge of the project is", " " + name),
        ("In which room does the team meet? Answer with the number only.", "The team meets in room", " " + room),
        ("What is the office cat called? Answer with the name only.", "The office cat is called", " " + pet),
        ("Where was the company founded? Answer with the city only.", "The company was founded in", " " + city),
        ("What is the first item on the shopping list? Answer with the item only.",
         "The first item on the shopping list is", " " + items[0]),
    ]
    return {"prompt": prompt, "length": words,
            "questions": [{"question": q, "answer_prefix": p, "answer": a} for q, p, a in qs]}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=8, help="prompts (default 8)")
    ap.add_argument("--words", type=int, default=2000, help="requested words (default 2000)")
    ap.add_argument("--seed", type=int, default=13)
    a = ap.parse_args()
    rng = random.Random(a.seed)
    for i in range(a.n):
        sys.stdout.write(json.dumps(make(rng, TOPICS[i % len(TOPICS)], a.words), ensure_ascii=False) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
