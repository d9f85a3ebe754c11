#!/usr/bin/python3
"""Report of tools/bench/gguf.sh: `shardtune-export gguf` wall time per dtype against dd (conv=fsync) writing
the same bytes, and cp + sync of the source safetensors; median (min-max) over the rounds, ratio of the medians.
usage: gguf_report.py TIMES   (lines "DTYPE BYTES EXPORT_S DD_S", "cp BYTES 0 CP_S", "tiny BYTES EXPORT_S 0")"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchstats import med, mr, table  # noqa: E402

rows, cp, tiny = {}, [], []
for line in open(sys.argv[1]):
    kind, nbytes, a, b = line.split()
    if kind == "cp":
        cp.append((int(nbytes), float(b)))
        continue
    if kind == "tiny":
        tiny.append((int(nbytes), float(a)))
        continue
    r = rows.setdefault(kind, {"bytes": int(nbytes), "export": [], "dd": []})
    r["export"].append(float(a))
    r["dd"].append(float(b))
out = []
for kind, r in rows.items():
    mib = r["bytes"] / 2**20
    out.append([f"export --dtype {kind}", f"{mib:.1f}", mr(r["export"], "{:.2f}"), mr(r["dd"], "{:.2f}"),
                f"{med(r['export']) / med(r['dd']):.2f}x", f"{mib / med(r['export']):.0f}", len(r["export"])])
if cp:
    mib = cp[0][0] / 2**20
    s = [c[1] for c in cp]
    out.append(["cp + sync of the fp32 safetensors", f"{mib:.1f}", mr(s, "{:.2f}"), "", "", f"{mib / med(s):.0f}", len(s)])
if tiny:
    s = [t[1] for t in tiny]
    out.append([f"fixed cost: export of a tiny model (same vocabulary), f32", f"{tiny[0][0] / 2**20:.1f}",
                mr(s, "{:.2f}"), "", "", "", len(s)])
print(table(["what", "MiB written", "seconds (median, range)", "dd conv=fsync, same bytes", "ratio (medians)",
             "MiB/s", "rounds"], out))
