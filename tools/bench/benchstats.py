"""Shared helpers of the tools/bench report scripts: medians with ranges, markdown tables, the paste
markers of docs/PERFORMANCE.md and README.md, and the summary rows behind the README's target table.

Every figure is a median with its range (min-max) over the stated set (rounds, steps or ranks), never a
best run. A block printed between "<!-- bench:NAME begin -->" and "<!-- bench:NAME end -->" replaces the
block of the same name in the docs (tools/bench/paste.py).
"""
import json
import os
import statistics


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else float("nan")


def mr(xs, fmt="{:.2f}", unit=""):
    """'median (min-max)' of xs; a single value (or a range that rounds to one value) prints alone."""
    xs = [x for x in xs if x is not None]
    if not xs:
        return "n/a"
    m = fmt.format(statistics.median(xs)) + unit
    lo, hi = fmt.format(min(xs)), fmt.format(max(xs))
    if len(xs) == 1 or lo == hi:
        return m
    return f"{m} ({lo}–{hi})"


def table(headers, rows):
    """A markdown table, ready to paste."""
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def begin(name):
    print(f"<!-- bench:{name} begin -->")


def end(name):
    print(f"<!-- bench:{name} end -->")


def met(ok):
    return "met" if ok else "**not met**"


def summary(benchmark, script, target, result, ok):
    """One row of the README target table, appended to $BENCH_SUMMARY when set (tools/bench/all.sh)."""
    path = os.environ.get("BENCH_SUMMARY")
    if not path:
        return
    with open(path, "a") as f:
        f.write(json.dumps({"benchmark": benchmark, "script": script, "target": target, "result": result,
                            "met": None if ok is None else bool(ok)}) + "\n")
