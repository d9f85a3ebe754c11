#!/usr/bin/python3
"""Exact-match evaluation of models on held-out prompts by greedy generation.

All N prompts are scored in one process with an independent PyTorch implementation of the model
(tests/model/reference.py, the one shardtune's parity tests compare against), batched by prompt length:
spawning shardtune-generate once per prompt costs about a second each on a small CPU. The first few
prompts are also generated with shardtune-generate itself, those outputs are the ones shown, and the two
implementations must agree on them.

Usage: evaluate.py --generate BIN --heldout FILE.jsonl --model NAME=DIR [--model NAME=DIR ...]
                   [--n 100] [--examples 5] [--jobs 2] [--json OUT.json]"""
import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tests", "model"))
os.environ.setdefault("ST_REF_THREADS", "1")  # one thread: faster than two on a busy small CPU
import torch  # noqa: E402
from reference import forward, read_safetensors  # noqa: E402

BOS, EOS = 256, 257  # byte tokenizer: 256 byte ids, then <s>, </s>, <pad>


def prompt_ids(rec):
    # Exactly what shardtune-prep's "plain" template renders for an instruction record (BOS first).
    text = f"{rec['instruction']}\n{rec['input']}\n" if rec.get("input") else f"{rec['instruction']}\n"
    return [BOS] + list(text.encode())


def decode(out):
    """ids -> (text up to EOS, whether EOS came)."""
    stopped = EOS in out
    if stopped:
        out = out[:out.index(EOS)]
    text = bytes(t for t in out if t < 256).decode("utf-8", errors="replace")
    if any(t >= 256 for t in out):
        text += "<special>"
    return text, stopped


def load(path):
    cfg = json.load(open(os.path.join(path, "config.json")))
    W = read_safetensors(os.path.join(path, "model.safetensors"))
    return cfg, {k: v.float() for k, v in W.items()}


def greedy_batch(cfg, W, prompts, max_new):
    """Greedy continuations of equal-length prompts, all in one batch (no KV cache: the model is tiny)."""
    ids = torch.tensor(prompts)
    with torch.no_grad():
        for _ in range(max_new):
            nxt = forward(cfg, W, ids)[:, -1].argmax(-1, keepdim=True)
            ids = torch.cat([ids, nxt], 1)
            if bool((ids[:, len(prompts[0]):] == EOS).any(1).all()):
                break
    return [row[len(prompts[0]):] for row in ids.tolist()]


def reference_outputs(path, recs):
    cfg, W = load(path)
    groups = {}
    for i, r in enumerate(recs):
        groups.setdefault(len(prompt_ids(r)), []).append(i)
    outs = [None] * len(recs)
    for idx in groups.values():
        max_new = max(len(recs[i]["output"].encode()) for i in idx) + 3
        for i, o in zip(idx, greedy_batch(cfg, W, [prompt_ids(recs[i]) for i in idx], max_new)):
            outs[i] = decode(o)
    return outs


def shardtune_generate(binary, model, rec):
    ids = prompt_ids(rec)
    cmd = [binary, "--model", model, "--prompt-ids", " ".join(map(str, ids)),
           "--max-new-tokens", str(len(rec["output"].encode()) + 3), "--temperature", "0", "--print-ids", "--threads", "1"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"evaluate: {' '.join(cmd)} failed ({r.returncode}):\n{r.stderr}")
    return decode([int(t) for t in r.stdout.split()])


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
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--examples", type=int, default=5)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--json")
    ap.add_argument("--summary", help="write a one-line before/after summary to this file")
    a = ap.parse_args()
    recs = [json.loads(l) for l in open(a.heldout) if l.strip()][:a.n]
    models = [m.split("=", 1) for m in a.model]
    ex = recs[:a.examples]
    results, disagree = {}, 0
    for name, path in models:
        t0 = time.time()
        outs = reference_outputs(path, recs)
        hits = [text == r["output"] and stopped for (text, stopped), r in zip(outs, recs)]
        t1 = time.time()
        with ThreadPoolExecutor(a.jobs) as pool:
            st = list(pool.map(lambda r: shardtune_generate(a.generate, path, r), ex))
        agree = sum(s == o for s, o in zip(st, outs))
        disagree += len(ex) - agree
        results[name] = {"model": path, "accuracy": sum(hits) / len(recs), "correct": sum(hits),
                         "outputs": [o[0] for o in outs], "exact": hits,
                         "shardtune_generate_examples": [s[0] for s in st], "examples_agree": agree}
        print(f"evaluate: {name:<6} {sum(hits):3d}/{len(recs)} exact matches ({pct(sum(hits), len(recs))})"
              f"  [greedy, {t1 - t0:.0f} s]; shardtune-generate agrees on {agree}/{len(ex)} examples"
              f" [{time.time() - t1:.0f} s]")
    print()
    head = f"  {'prompt input':<14} {'expected':<10}" + "".join(f" {n:<20}" for n, _ in models)
    print(head + "   (outputs of shardtune-generate, greedy)")
    print("  " + "-" * (len(head) - 2))
    for i, r in enumerate(ex):
        row = f"  {show(r['input'], 14):<14} {show(r['output'], 10):<10}"
        for n, _ in models:
            text = results[n]["shardtune_generate_examples"][i]
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
    if disagree:
        print(f"evaluate: WARNING: shardtune-generate and the reference differ on {disagree} example(s)")


if __name__ == "__main__":
    main()
