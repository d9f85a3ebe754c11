#!/usr/bin/env python3
"""Per-step losses of two trainer runs (their --metrics JSONL files) compared: the largest relative
difference |a - b| / |b| over the steps, printed per step and as JSON on the last line.
Usage: compare_losses.py REFERENCE.jsonl OTHER.jsonl [LABEL]"""
import json
import sys


def losses(path):
    return [l["loss"] for l in map(json.loads, open(path)) if l.get("type") == "train"]


ref, other = losses(sys.argv[1]), losses(sys.argv[2])
label = sys.argv[3] if len(sys.argv) > 3 else "other"
if not ref or len(ref) != len(other):
    print(json.dumps({"label": label, "error": f"step counts differ: {len(ref)} vs {len(other)}"}))
    sys.exit(1)
rel = [abs(a - b) / abs(b) for a, b in zip(other, ref)]
for i, (a, b, r) in enumerate(zip(ref, other, rel)):
    print(f"  step {i + 1:3d}  reference {a:.6f}  {label} {b:.6f}  rel {r:.2e}")
print(json.dumps({"label": label, "steps": len(ref), "max_rel": max(rel), "first_rel": rel[0],
                  "worst_step": rel.index(max(rel)) + 1, "ref_first": ref[0], "ref_last": ref[-1]}))
