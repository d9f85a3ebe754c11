#!/usr/bin/python3
"""Writes the demo's task data: reverse a short word, as instruction/output JSONL. Deterministic.
Usage: make_task.py OUT_TRAIN.jsonl OUT_HELDOUT.jsonl [N]"""
import json
import random
import sys

rng = random.Random(7)
letters = "abcdefghijklmnopqrstuvwxyz"
n = int(sys.argv[3]) if len(sys.argv) > 3 else 4000
words = set()
while len(words) < n + 200:
    words.add("".join(rng.choice(letters) for _ in range(rng.randint(3, 7))))
words = sorted(words)
rng.shuffle(words)
for path, chunk in ((sys.argv[1], words[:n]), (sys.argv[2], words[n:])):
    with open(path, "w") as f:
        for w in chunk:
            f.write(json.dumps({"instruction": "Reverse the letters of the word.", "input": w, "output": w[::-1]}) + "\n")
