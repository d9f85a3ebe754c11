#!/usr/bin/python3
"""Report of tools/bench/ckpt.sh: checkpoint save time (the trainer's save_s) against dd writing the same
bytes with conv=fsync, median (min-max) over every save of every round, and the ratio of the medians.
usage: ckpt_report.py RUNS_DIR"""
import glob
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchstats import mr, med, table  # noqa: E402

save, dd, nbytes = [], [], []
for d in sorted(glob.glob(os.path.join(sys.argv[1], "r*"))):
    lines = [json.loads(l) for l in open(f"{d}/metrics.jsonl")]
    save += [l["save_s"] for l in lines if l.get("type") == "checkpoint"]
    dd += [float(x) for x in open(f"{d}/dd_s").read().split()]
    nbytes += [int(x) for x in open(f"{d}/bytes").read().split()]
ratio = med(save) / med(dd)
mb = [b / 2**20 for b in nbytes]
print(table(["what", "MiB per save", "seconds (median, range)", "MiB/s (median)", "n"], [
    ["checkpoint save (save_s)", mr(mb, "{:.1f}"), mr(save, "{:.3f}"), f"{med(mb) / med(save):.0f}", len(save)],
    ["dd conv=fsync, same bytes", mr(mb, "{:.1f}"), mr(dd, "{:.3f}"), f"{med(mb) / med(dd):.0f}", len(dd)],
]))
print(f"\nratio save / dd (medians): {ratio:.2f}x (target <= 1.2x: {'met' if ratio <= 1.2 else 'NOT met'})")
