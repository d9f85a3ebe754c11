#!/usr/bin/python3
"""The DPO demo's judge: greedy completions of held-out prompts (tools/demo/evaluate.py's generate_all, one
shardtune-generate process per model) and the task's style rule: a completion is chosen-style when it ends
with "!" (the pairs' chosen responses do, the rejected ones do not). Prints, per model, the win rate
(chosen-style completions / prompts) and how many are the exact chosen answer (the uppercased word + "!").

Usage: dpo_eval.py --generate BIN --heldout FILE.jsonl --model NAME=DIR [--adapter NAME=ADAPTER_DIR]
                   [--n 100] [--examples 5] [--summary FILE]"""
import argparse
import os
import sys
import json

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from evaluate import generate_all, pct, show  # noqa: E402


def chosen_style(text):
    return text.endswith("!")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--generate", required=True)
    ap.add_argument("--heldout", required=True)
    ap.add_argument("--model", action="append", required=True, help="NAME=DIR")
    ap.add_argument("--adapter", action="append", default=[], help="NAME=ADAPTER_DIR")
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--examples", type=int, default=5)
    ap.add_argument("--summary")
    a = ap.parse_args()
    recs = [json.loads(l) for l in open(a.heldout) if l.strip()][:a.n]
    for r in recs:  # room for the "!"
        r["output"] = r["output"] + "!"
    models = [m.split("=", 1) for m in a.model]
    adapters = dict(x.split("=", 1) for x in a.adapter)
    res = {}
    for name, path in models:
        outs = generate_all(a.generate, path, recs, adapters.get(name))
        wins = sum(chosen_style(o) for o in outs)
        exact = sum(o == r["output"] for o, r in zip(outs, recs))
        res[name] = (wins, exact, outs)
        print(f"dpo_eval: {name:<10} chosen-style (ends with '!') {wins:3d}/{len(recs)} ({pct(wins, len(recs))}); "
              f"exact chosen answer {exact}/{len(recs)}")
    print(f"\n  {'input':<10} {'chosen':<10}" + "".join(f" {n:<14}" for n, _ in models))
    for i, r in enumerate(recs[:a.examples]):
        print(f"  {show(r['input'], 10):<10} {show(r['output'], 10):<10}"
              + "".join(f" {show(res[n][2][i], 14):<14}" for n, _ in models))
    if a.summary:
        line = f"DPO, held-out win rate of chosen-style completions ({len(recs)} prompts): " + " -> ".join(
            f"{n} {res[n][0]}/{len(recs)} ({pct(res[n][0], len(recs))})" for n, _ in models)
        with open(a.summary, "w") as f:
            f.write(line + "\n")


if __name__ == "__main__":
    main()
