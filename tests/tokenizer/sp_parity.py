#!/usr/bin/env python3
"""Parity of the SentencePiece path: shardtune-tokenize --tokenizer llama2-tokenizer.model vs llama-tokenizer-js.

Runs both on every corpus line (no BOS on either side). A line where they differ is checked against
libsentencepiece's Python binding (Debian python3-sentencepiece) when available: if Python agrees with us,
the line is a known llama-tokenizer-js deviation and is reported but not failed; otherwise the test fails.
Exit 77 (ctest: skipped) when the model or the npm reference is missing.
"""
import argparse
import os
import shutil
import subprocess
import sys


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokenize", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--node-modules", required=True)
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--script", required=True)
    a = ap.parse_args()

    if not os.path.exists(a.model):
        print(f"SKIP: {a.model} not found (../shared absent)")
        return 77
    if not os.path.isdir(os.path.join(a.node_modules, "llama-tokenizer-js")):
        print(f"SKIP: llama-tokenizer-js not installed in {a.node_modules} (tools/test.sh installs it)")
        return 77
    if shutil.which("node") is None:
        print("SKIP: node not found on PATH")
        return 77

    with open(a.corpus, encoding="utf-8") as f:
        lines = f.read().split("\n")
    if lines and lines[-1] == "":
        lines.pop()

    with open(a.corpus, "rb") as f:
        ours = subprocess.run([a.tokenize, "--tokenizer", a.model], stdin=f, capture_output=True, check=True)
    ref = subprocess.run(["node", a.script, a.node_modules, a.corpus], capture_output=True, check=True)
    ours_lines = ours.stdout.decode().split("\n")[: len(lines)]
    ref_lines = ref.stdout.decode().split("\n")[: len(lines)]
    if len(ours_lines) != len(lines) or len(ref_lines) != len(lines):
        print(f"FAIL: line counts differ: corpus {len(lines)}, ours {len(ours_lines)}, reference {len(ref_lines)}")
        return 1

    diffs = [i for i in range(len(lines)) if ours_lines[i] != ref_lines[i]]
    print(f"{len(lines)} lines, {len(diffs)} differ from llama-tokenizer-js")
    if not diffs:
        return 0
    try:
        import sentencepiece as spm  # Debian python3-sentencepiece

        sp = spm.SentencePieceProcessor(model_file=a.model)
    except Exception as e:  # noqa: BLE001
        sp = None
        print(f"(python sentencepiece unavailable: {e})")
    failed = 0
    for i in diffs:
        py = " ".join(map(str, sp.encode(lines[i]))) if sp else None
        verdict = "libsentencepiece (python) agrees with us: reference deviation" if py == ours_lines[i] else "MISMATCH"
        if py != ours_lines[i]:
            failed += 1
        print(f"line {i + 1}: {lines[i]!r}\n  ours: {ours_lines[i]}\n  ref:  {ref_lines[i]}\n  python: {py}\n  -> {verdict}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
