#!/usr/bin/python3
"""The README's target table from the summary rows the bench reports append (benchstats.summary), as the
"bench:summary" block: every target with its result (median, range) and whether it is met, and one
sentence saying plainly which are met and which not.

usage: summary.py SUMMARY.jsonl RUN_ID_FILE      (RUN_ID_FILE: "date|cpu|commit", written by all.sh)
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchstats import begin, end, table  # noqa: E402

rows = [json.loads(l) for l in open(sys.argv[1])] if os.path.exists(sys.argv[1]) else []
date, cpu, commit = (open(sys.argv[2]).read().strip().split("|") + ["?", "?", "?"])[:3]
judged = [r for r in rows if r["met"] is not None]
missed = [r["benchmark"] for r in judged if not r["met"]]
begin("summary")
print(f"From the run of {date} on {cpu} (commit {commit}; `tools/bench/all.sh`, every table in docs/PERFORMANCE.md): "
      f"**{len(judged) - len(missed)} of {len(judged)} targets met**" +
      (f"; **not met: {'; '.join(missed)}**." if missed else "."))
print()
print(table(["benchmark", "script", "target", "result (median, range over rounds)", "met?"],
            [[r["benchmark"], r["script"], r["target"], r["result"],
              "—" if r["met"] is None else ("met" if r["met"] else "**not met**")] for r in rows]))
end("summary")
