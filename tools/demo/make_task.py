#!/usr/bin/python3
"""Writes the demo's task data as Alpaca-style instruction/input/output JSONL. Deterministic (fixed seed);
held-out words never occur in the training file.
Usage: make_task.py OUT_TRAIN.jsonl OUT_HELDOUT.jsonl [N_TRAIN] [--task upper|reverse] [--heldout 200]
                    [--excited-fraction F]  (that fraction of training answers ends with "!": the DPO demo's
                    SFT model then knows both styles, the plain one as its greedy choice; held-out answers are plain)"""
import argparse
import json
import random

TASKS = {
    "upper": ("Uppercase:", str.upper),
    "reverse": ("Reverse:", lambda w: w[::-1]),
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("train")
    ap.add_argument("heldout")
    ap.add_argument("n", nargs="?", type=int, default=4000)
    ap.add_argument("--task", choices=sorted(TASKS), default="upper")
    ap.add_argument("--heldout-n", type=int, default=200)
    ap.add_argument("--min-len", type=int, default=3)
    ap.add_argument("--max-len", type=int, default=7)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--excited-fraction", type=float, default=0.0)
    a = ap.parse_args()
    instruction, fn = TASKS[a.task]
    rng = random.Random(a.seed)
    letters = "abcdefghijklmnopqrstuvwxyz"
    words = set()
    while len(words) < a.n + a.heldout_n:
        words.add("".join(rng.choice(letters) for _ in range(rng.randint(a.min_len, a.max_len))))
    words = sorted(words)
    rng.shuffle(words)
    excited = random.Random(a.seed + 1)
    for path, chunk in ((a.train, words[:a.n]), (a.heldout, words[a.n:])):
        with open(path, "w") as f:
            for w in chunk:
                bang = path == a.train and excited.random() < a.excited_fraction
                f.write(json.dumps({"instruction": instruction, "input": w, "output": fn(w) + ("!" if bang else "")}) + "\n")
    print(f"make_task: '{instruction}' {a.n} training + {a.heldout_n} held-out words "
          f"({a.min_len}-{a.max_len} letters) -> {a.train}, {a.heldout}")


if __name__ == "__main__":
    main()
