#!/usr/bin/python3
"""Exact-match evaluation of models on held-out prompts by greedy generation with shardtune-generate:
one process per model (`--prompts-file`, one model load) generates all prompts.

Usage: evaluate.py --generate BIN --heldout FILE.jsonl --model NAME=DIR [--model NAME=DIR ...]
                   [--adapter NAME=ADAPTER_DIR ...] [--n 100] [--examples 5] [--json OUT.json] [--summary FILE]
(--adapter: model NAME is generated with that PEFT LoRA adapter applied, unmerged: shardtune-generate --adapter)"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time


def prompt_text(rec):
    # Exactly what shardtune-prep's "plain" template renders for an instruction record.
    return f"{rec['instruction']}\n{rec['input']}\n" if rec.get("input") else f"{rec['instruction']}\n"


def generate_all(binary, model, recs, adapter=None):
    """Greedy completions (text up to EOS) of every prompt, in order."""
    with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as f:
        for r in recs:
            f.write(json.dumps({"prompt": prompt_text(r)}) + "\n")
        path = f.name
    try:
        max_new = max(len(r["output"].encode()) for r in recs) + 3
        cmd = [binary, "--model", model, "--tokenizer", "byte", "--prompts-file", path, "--max-new-tokens", str(max_new),
               "--temperature", "0", "--threads", "1"] + (["--adapter", adapter] if adapter else [])
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            sys.exit(f"evaluate: {' '.join(cmd)} failed ({r.returncode}):\n{r.stderr}")
        outs = [json.loads(l)["completion"] for l in r.stdout.splitlines() if l.strip()]
        assert len(outs) == len(recs), (len(outs), len(recs))
        return outs
    finally:
        os.unlink(path)


def pct(k, n):
    p = 100 * k / n
    return f"{p:.0f}%" if p == round(p) else f"{p:.1f}%"


def show(s, width):
    s = repr(s)[1:-1]  # newlines and control bytes visible, on one line
    return s if len(s) <= width else s[:width - 1] + "…"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--generate", required=True)
    ap.add_argument("--heldout", required=True)
    ap.add_argument("--model", action="append", required=True, help="NAME=DIR")
    ap.add_argument("--adapter", action="append", default=[], help="NAME=ADAPTER_DIR (a --model NAME)")
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--examples", type=int, default=5)
    ap.add_argument("--json")
    ap.add_argument("--summary", help="write a one-line before/after summary to this file")
    a = ap.parse_args()
    recs = [json.loads(l) for l in open(a.heldout) if l.strip()][:a.n]
    models = [m.split("=", 1) for m in a.model]
    adapters = dict(x.split("=", 1) for x in a.adapter)
    unknown = set(adapters) - {n for n, _ in models}
    if unknown:
        sys.exit(f"evaluate: --adapter for {', '.join(sorted(unknown))}, which no --model names")
    ex = recs[:a.examples]
    results = {}
    for name, path in models:
        t0 = time.time()
        outs = generate_all(a.generate, path, recs, adapters.get(name))
        hits = [o == r["output"] for o, r in zip(outs, recs)]
        results[name] = {"model": path, "accuracy": sum(hits) / len(recs), "correct": sum(hits), "outputs": outs,
                         "exact": hits}
        if name in adapters:
            results[name]["adapter"] = adapters[name]
        print(f"evaluate: {name:<6} {sum(hits):3d}/{len(recs)} exact matches ({pct(sum(hits), len(recs))})"
              f"  [shardtune-generate, greedy, {time.time() - t0:.0f} s]")
    print()
    head = f"  {'prompt input':<14} {'expected':<10}" + "".join(f" {n:<20}" for n, _ in models)
    print(head + "   (outputs of shardtune-generate, greedy)")
    print("  " + "-" * (len(head) - 2))
    for i, r in enumerate(ex):
        row = f"  {show(r['input'], 14):<14} {show(r['output'], 10):<10}"
        for n, _ in models:
            text = results[n]["outputs"][i]
            row += f" {show(text, 16):<16} {'ok' if text == r['output'] and results[n]['exact'][i] else '  '}  "
        print(row)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"instruction": recs[0]["instruction"] if recs else "", "n": len(recs),
                       "inputs": [r["input"] for r in recs], "expected": [r["output"] for r in recs],
                       "models": results}, f, indent=1)
    if a.summary:
        line = f"held-out exact match ({len(recs)} prompts): " + " -> ".join(
            f"{n} {results[n]['correct']}/{len(recs)} ({pct(results[n]['correct'], len(recs))})" for n, _ in models)
        with open(a.summary, "w") as f:
            f.write(line + "\n")


if __name__ == "__main__":
    main()
