#!/usr/bin/python3
"""Report of tools/bench/ckpt_async.sh: per round, the median step time of the --async-save run's steps that
ran while a background save was in flight (between its "checkpoint_started" line and the commit) over the
median step time of the run without checkpoints; the snapshot pause; the synchronous save time. Every figure
is a median over rounds with its range. usage: ckpt_async_report.py WORK --rounds N --warmup W"""
import argparse
import json
import statistics as st


def lines(path):
    return [json.loads(l) for l in open(path)]


def med_range(xs, fmt="{:.3f}"):
    return f"{fmt.format(st.median(xs))} ({fmt.format(min(xs))}–{fmt.format(max(xs))})"


ap = argparse.ArgumentParser()
ap.add_argument("work")
ap.add_argument("--rounds", type=int, default=3)
ap.add_argument("--warmup", type=int, default=2)
a = ap.parse_args()
ratios, base, during, snaps, syncs, n_during = [], [], [], [], [], []
for k in range(1, a.rounds + 1):
    none = [l["step_s"] for l in lines(f"{a.work}/runs/none.{k}/metrics.jsonl") if l["type"] == "train" and l["step"] > a.warmup]
    b = st.median(none)
    in_flight, pending, steps_during, snap = False, None, [], []
    for l in lines(f"{a.work}/runs/async.{k}/metrics.jsonl"):
        if l["type"] == "checkpoint_started":
            in_flight = True
            snap.append(l["snapshot_s"])
        elif l["type"] == "checkpoint":
            in_flight = False
        elif l["type"] == "train" and in_flight and l["step"] > a.warmup:
            steps_during.append(l["step_s"])
    s = [l["save_s"] for l in lines(f"{a.work}/runs/sync.{k}/metrics.jsonl") if l["type"] == "checkpoint"]
    d = st.median(steps_during)
    ratios.append(d / b)
    base.append(b)
    during.append(d)
    snaps.append(st.median(snap))
    syncs.append(st.median(s))
    n_during.append(len(steps_during))
r = st.median(ratios)
print("<!-- bench:ckpt-async begin -->")
print("| | median (min–max over rounds) | target | met? |")
print("|---|---|---|---|")
print(f"| step s, no checkpoints | {med_range(base)} | | |")
print(f"| step s while an --async-save save is written ({st.median(n_during):.0f} steps per round) | {med_range(during)} | | |")
print(f"| **ratio** (per round: {' '.join(f'{x:.3f}' for x in ratios)}) | **{r:.3f}x** | ≤ 1.05x | {'met' if r <= 1.05 else '**not met**'} |")
print(f"| step loop paused for the snapshot, s | {med_range(snaps)} | | |")
print(f"| a synchronous save at the same cadence, s | {med_range(syncs)} | | |")
print("<!-- bench:ckpt-async end -->")
