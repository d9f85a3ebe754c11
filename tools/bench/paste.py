#!/usr/bin/python3
"""Pastes the blocks of a tools/bench/all.sh report into the docs: every "<!-- bench:NAME begin -->" ...
"<!-- bench:NAME end -->" block of REPORT replaces the block of the same name (markers included) in each
FILE. Prints what it replaced and every block left unfilled; changes nothing else.

usage: paste.py REPORT [FILE...]        (default FILEs: README.md docs/PERFORMANCE.md)
"""
import os
import re
import sys

BLOCK = re.compile(r"<!-- bench:([\w-]+) begin -->\n.*?<!-- bench:\1 end -->", re.S)
root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
report = open(sys.argv[1]).read()
blocks = {m.group(1): m.group(0) for m in BLOCK.finditer(report)}
if not blocks:
    sys.exit(f"paste.py: no bench blocks in {sys.argv[1]}: give the output of tools/bench/all.sh")
files = sys.argv[2:] or [os.path.join(root, "README.md"), os.path.join(root, "docs", "PERFORMANCE.md")]
used = set()
for path in files:
    text = open(path).read()
    done, missing = [], []

    def sub(m):
        if m.group(1) in blocks:
            done.append(m.group(1))
            used.add(m.group(1))
            return blocks[m.group(1)]
        missing.append(m.group(1))
        return m.group(0)
    new = BLOCK.sub(sub, text)
    if new != text:
        with open(path, "w") as f:
            f.write(new)
    print(f"{path}: replaced {', '.join(done) or 'nothing'}" + (f"; NOT in the report (left as is): {', '.join(missing)}"
                                                                if missing else ""))
unused = sorted(set(blocks) - used)
if unused:
    print("report blocks with no place in the docs: " + ", ".join(unused))
