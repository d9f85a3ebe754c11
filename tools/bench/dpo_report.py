#!/usr/bin/python3
"""Tables for tools/bench/dpo.sh from WORK/runs/<name>/{metrics.jsonl, log, rss.<rank>}, as markdown ready to
paste into docs/PERFORMANCE.md (the "<!-- bench:dpo begin/end -->" block).

Runs are named METHOD (round 1) and METHOD.K (round K), METHOD lora (adapters-disabled reference), full (frozen
full copy), pre (full with --precompute-ref) or, when present (dpo.sh with DPO_BF16_REF=1), fullbf16 (the frozen
copy in bf16, --ref-dtype bf16). Every figure is a median with its range (min-max) over rounds
(per run: the median over its steps after the first WARMUP), never a best run. Sources: pairs/s = the global
batch's pairs (loss_tokens, which counts pairs for DPO) / step_s; tokens/s = the step's tokens (both rows of
every pair) / step_s; peak RSS = GNU time's maximum resident set of each rank process (the largest rank is
shown, and each rank's own median); heap = heap_bytes after each step (glibc mallinfo2, rank 0); precompute =
the trainer's log line "reference log-probs computed into ... (N ms)".

usage: dpo_report.py WORK [--rounds 3] [--warmup 2] [--np 2]
"""
import argparse
import json
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchstats import begin, end, med, mr, table  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("work")
ap.add_argument("--rounds", type=int, default=3)
ap.add_argument("--warmup", type=int, default=2)
ap.add_argument("--np", type=int, default=2)
a = ap.parse_args()
METHODS = {"lora": "LoRA r16, reference = base with adapters disabled",
           "full": "full, reference = frozen full copy per rank",
           "pre": "full, --precompute-ref (no reference held)"}
OPTIONAL = {"fullbf16": "full, reference = frozen copy in bf16 (--ref-dtype bf16)"}


def run(name):
    d = os.path.join(a.work, "runs", name)
    p = os.path.join(d, "metrics.jsonl")
    if not os.path.exists(p):
        return None
    rows = [j for j in (json.loads(l) for l in open(p) if l.strip()) if j.get("type") == "train"]
    if not rows:
        return None
    m = rows[a.warmup:] if len(rows) > a.warmup else rows
    r = {"pps": med(x["loss_tokens"] / x["step_s"] for x in m), "tps": med(x["tokens"] / x["step_s"] for x in m),
         "step": med(x["step_s"] for x in m)}
    r["heap"] = med(x["heap_bytes"] for x in rows[1:] or rows if x.get("heap_bytes", -1) >= 0)
    rss = []
    for k in range(a.np):
        f = os.path.join(d, f"rss.{k}")
        rss.append(int(open(f).read().split()[0]) * 1024 if os.path.exists(f) else None)
    r["rss"] = rss
    r["rss_max"] = max((x for x in rss if x is not None), default=None)
    log = open(os.path.join(d, "log"), errors="replace").read() if os.path.exists(os.path.join(d, "log")) else ""
    mm = re.search(r"reference log-probs computed into .*?\((\d+) train \+ (\d+) val pairs, (\d+) ms\)", log)
    r["pre_s"] = int(mm.group(3)) / 1000 if mm else None
    r["pre_pairs"] = int(mm.group(1)) + int(mm.group(2)) if mm else None
    return r


def names(m):
    return [m] + [f"{m}.{k}" for k in range(2, a.rounds + 1)]


R = {m: [x for x in (run(n) for n in names(m)) if x] for m in METHODS}
missing = [m for m in METHODS if not R[m]]
if missing:
    sys.exit(f"dpo_report: no metrics for {', '.join(missing)} under {a.work}/runs")
for m, what in OPTIONAL.items():  # a run that is there is reported
    if any(run(n) for n in names(m)):
        METHODS[m] = what
        R[m] = [x for x in (run(n) for n in names(m)) if x]
MB = 1 / 2**20


def col(m, k, fmt="{:.2f}", scale=1.0):
    return mr([x[k] * scale if x[k] is not None else None for x in R[m]], fmt)


def ratio(m1, m2, k):
    """Per-round ratios m1/m2 (round k with round k), median and range."""
    return mr([x[k] / y[k] for x, y in zip(R[m1], R[m2]) if x[k] and y[k]], "{:.2f}", "x")


begin("dpo")
rows = []
for m, what in METHODS.items():
    per_rank = ", ".join(mr([x["rss"][k] * MB for x in R[m] if x["rss"][k]], "{:.0f}") for k in range(a.np))
    rows.append([f"`{m}`: {what}", col(m, "pps"), col(m, "tps", "{:.0f}"), col(m, "step", "{:.3f}"),
                 col(m, "rss_max", "{:.0f}", MB), per_rank, col(m, "heap", "{:.0f}", MB)])
print(table(["run", "pairs/s", "tokens/s", "step s", "peak RSS, largest rank (MiB)",
             "peak RSS per rank (MiB)", "heap after a step, rank 0 (MiB)"], rows))
print()
pre = R["pre"]
print(f"Precompute pass (`pre`, before training, not in its step figures): {col('pre', 'pre_s', '{:.2f}')} s for "
      f"{pre[0]['pre_pairs']} pairs (both splits) = "
      f"{mr([x['pre_pairs'] / x['pre_s'] for x in pre if x['pre_s']], '{:.1f}')} pairs/s.")
print()
print(table(["ratio (per round, median and range)", "pairs/s", "peak RSS, largest rank"],
            [["full / lora", ratio("full", "lora", "pps"), ratio("full", "lora", "rss_max")],
             ["pre / full", ratio("pre", "full", "pps"), ratio("pre", "full", "rss_max")]] +
            ([["fullbf16 / full", ratio("fullbf16", "full", "pps"), ratio("fullbf16", "full", "rss_max")]]
             if "fullbf16" in R else [])))
end("dpo")
