#!/usr/bin/python3
"""Tables for tools/bench/step.sh from DIR/<precision>.<round>.<st|py>.json (one JSON line each, with every
timed step of that run: tools/bench/step_bench.cpp and step_ref.py).

Per run: tokens/s = tokens of a step / median step time. Per side: median over rounds (range min-max).
Ratio of medians (the result judged against the target, >= 1.1x) and the per-round ratios (shardtune /
Python of the same round). Phases of the shardtune step: median over every timed step of every round.

usage: step_report.py DIR [--threads 2] [--steps 5] [--rounds 3]
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchstats import begin, end, med, met, mr, summary, table  # noqa: E402

TARGET = 1.1
ap = argparse.ArgumentParser()
ap.add_argument("dir")
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--steps", type=int, default=5)
ap.add_argument("--rounds", type=int, default=3)
a = ap.parse_args()


def load(prec, r, side):
    p = os.path.join(a.dir, f"{prec}.{r}.{side}.json")
    if not os.path.exists(p):
        return None
    lines = [l for l in open(p) if l.strip().startswith("{")]
    return json.loads(lines[-1]) if lines else None


def tps(run):
    return run["tokens_per_step"] / med(run["step_s"])


rows, phase_rows = [], []
for prec in ("fp32", "bf16"):
    pairs = [(load(prec, r, "st"), load(prec, r, "py")) for r in range(1, a.rounds + 1)]
    pairs = [(s, p) for s, p in pairs if s and p]
    if not pairs:
        rows.append([prec] + ["(missing runs)"] * 8)
        continue
    st, py = [tps(s) for s, _ in pairs], [tps(p) for _, p in pairs]
    ratios = [x / y for x, y in zip(st, py)]
    ratio = med(st) / med(py)
    rows.append([prec if prec == "fp32" else "bf16 (autocast)", mr(st, "{:.0f}"), mr(py, "{:.0f}"),
                 f"**{ratio:.2f}x**", " ".join(f"{x:.2f}" for x in ratios), mr(ratios, "{:.2f}", "x"),
                 f"≥ {TARGET}x", met(ratio >= TARGET)])
    summary(f"one training step vs Python torch, {prec}", "`tools/bench/step.sh`", f"≥ {TARGET}x",
            f"{ratio:.2f}x" + (f" (per-round {min(ratios):.2f}–{max(ratios):.2f}x, {len(ratios)} rounds)" if len(ratios) > 1
                               else " (1 round)"), ratio >= TARGET)
    allst = [x for s, _ in pairs for x in s["step_s"]]
    allpy = [x for _, p in pairs for x in p["step_s"]]
    ph = {k: [x for s, _ in pairs for x in s.get(k, [])] for k in ("forward_s", "backward_s", "optim_s")}
    phase_rows.append([prec, mr(ph["forward_s"], "{:.3f}"), mr(ph["backward_s"], "{:.3f}"), mr(ph["optim_s"], "{:.3f}"),
                       mr(allst, "{:.3f}"), mr(allpy, "{:.3f}"), len(allst)])

begin("step")
print(f"One training step, batch 8 × seq 256 = 2048 tokens, {a.threads} threads; {a.rounds} round(s) × {a.steps} timed "
      "steps per side (after 1 warm-up step). tokens/s of a run = 2048 / its median step time; columns: median over "
      "rounds (min–max). The target is judged on the ratio of the medians.")
print()
print(table(["precision", "shardtune tokens/s", "Python torch tokens/s", "ratio of medians", "per-round ratios",
             "per-round ratio median (range)", "target", "met?"], rows))
print()
print("Phases of one step (seconds, median over every timed step of every round, min–max):")
print()
print(table(["precision", "shardtune forward", "shardtune backward", "shardtune AdamW", "shardtune step",
             "Python torch step", "steps per side"], phase_rows))
end("step")
