#!/usr/bin/python3
"""Tables for tools/bench/lora.sh from WORK/runs/<name>/{metrics.jsonl, log, rss.<rank>, cmd}, as markdown
ready to paste into docs/PERFORMANCE.md (the "<!-- bench:lora begin/end -->" and "bench:lora-phases" blocks),
plus the summary rows behind the README's target table (benchstats.summary, when $BENCH_SUMMARY is set).

Runs: full, lora, qlora (round 1), full.2, lora.2, qlora.2, ... (further rounds), and optionally wide-full,
wide-lora (memory only, another model). Every figure is a median with its range (min-max) over rounds
(per run: the median over its measured steps, every step after the first WARMUP), never a best run.
Sources: tokens/s = tokens of a step / its step_s (the trainer's metrics); memory = the trainer's own
figures in its first metrics line (optimizer_state_bytes: AdamW m + v of this rank; grad_buffer_bytes: its
persistent gradient buffer), the heap in use after each step (heap_bytes, glibc mallinfo2, rank 0) and peak
RSS of every rank (GNU time); QLoRA bytes per parameter = the trainer's measured line (heap growth while
the base is quantized, rank 0).

usage: lora_report.py WORK [--warmup 2] [--np 2] [--zero 0] [--precision fp32] [--threads 1] [--r 16]
"""
import argparse
import glob
import json
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchstats import begin, end, med, met, mr, summary, table  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("work")
ap.add_argument("--warmup", type=int, default=2)
ap.add_argument("--np", type=int, default=2)
ap.add_argument("--zero", type=int, default=0)
ap.add_argument("--precision", default="fp32")
ap.add_argument("--threads", type=int, default=1)
ap.add_argument("--r", type=int, default=16)
a = ap.parse_args()
SPEEDUP_TARGET, MEM_TARGET, BPP_TARGET, QLORA_TARGET = 1.35, 0.02, 0.53, 0.7
PHASES = ("forward_s", "backward_s", "drain_s", "optim_s", "gather_s", "comm_wait_s", "data_wait_s", "step_s")
UNITS = {"B": 1, "KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12}
METHODS = ("full", "lora", "qlora")


def num(s):
    return int(s.replace(",", ""))


def run(name):
    d = os.path.join(a.work, "runs", name)
    if not os.path.isdir(os.path.join(d)) or not os.path.exists(os.path.join(d, "metrics.jsonl")):
        return None
    rows = [j for j in (json.loads(l) for l in open(os.path.join(d, "metrics.jsonl")) if l.strip())
            if j.get("type") == "train"]
    if not rows:
        return None
    m = rows[a.warmup:] if len(rows) > a.warmup else rows
    r = {"name": name, "tps": med(x["tokens"] / x["step_s"] for x in m), "fpt": med(x.get("flops_per_token") for x in m)}
    for k in PHASES:
        r[k] = med(x.get(k) for x in m)
    first = rows[0]
    r["opt"] = first.get("optimizer_state_bytes")
    r["grad"] = first.get("grad_buffer_bytes")
    mem_rows = rows[1:] if len(rows) > 1 else rows
    r["heap"] = med(x["heap_bytes"] for x in mem_rows if x.get("heap_bytes", -1) >= 0)
    log = open(os.path.join(d, "log"), errors="replace").read() if os.path.exists(os.path.join(d, "log")) else ""
    if r["opt"] is None:  # a trainer without the metrics field: the optimizer state it prints
        mo = re.search(r"optimizer state ([0-9.]+) (B|KB|MB|GB|TB) per rank", log)
        r["opt"] = float(mo.group(1)) * UNITS[mo.group(2)] if mo else None
    mo = re.search(r"trainable params: ([0-9,]+) \|\| all params: ([0-9,]+) \|\| trainable%: ([0-9.]+)", log)
    if mo:
        r["trainable"], r["all"], r["trainable_pct"] = num(mo.group(1)), num(mo.group(2)), float(mo.group(3))
    mo = re.search(r"over ([0-9]+) weights, ([0-9,]+) parameters: ([0-9.]+) bytes per parameter measured \(heap "
                   r"growth\), ([0-9.]+) held by the NF4 tensors", log)
    if mo:
        r["q_tensors"], r["q_params"], r["bpp"], r["bpp_held"] = int(mo.group(1)), num(mo.group(2)), float(mo.group(3)), \
            float(mo.group(4))
    rss = {}
    for f in glob.glob(os.path.join(d, "rss.*")):
        try:
            rss[int(f.rsplit(".", 1)[1])] = int(open(f).read().strip().splitlines()[-1].split()[0]) * 1024
        except (ValueError, IndexError):
            pass
    r["rss_max"] = max(rss.values()) if rss else None
    for k in ("load_before", "wall_s"):
        p = os.path.join(d, k)
        r[k] = open(p).read().strip() if os.path.exists(p) else "?"
    return r


def rounds(name):
    out, k = [], 1
    while True:
        p = os.path.join(a.work, "runs", name if k == 1 else f"{name}.{k}")
        if not os.path.isdir(p):
            return out
        r = run(name if k == 1 else f"{name}.{k}")
        if r:
            out.append(r)
        k += 1


def mb(xs):
    return mr([x / 1e6 if x is not None else None for x in xs], "{:.2f}")


def ratios(num_runs, den_runs):
    return [x["tps"] / y["tps"] for x, y in zip(num_runs, den_runs)]


R = {m: rounds(m) for m in METHODS}
n_rounds = min(len(v) for v in R.values())
for m in METHODS:
    R[m] = R[m][:n_rounds]
setting = (f"{a.np} rank{'s' if a.np > 1 else ''} × {a.threads} thread, ZeRO-{a.zero}, --precision {a.precision}, "
           f"r = {a.r}, all-linear")

begin("lora")
print(f"Full fine-tuning vs LoRA vs QLoRA on the same model, data and ranks ({setting}; LoRA/QLoRA: "
      f"`--lora-r {a.r} --lora-alpha {2 * a.r} --lora-targets all-linear`, i.e. q, k, v, o, gate, up, down; QLoRA: "
      "NF4 base with double quantization, dequantized into the compute dtype). A round = one run of each, back to "
      f"back (order rotating); {n_rounds} rounds; steps after the first {a.warmup} measured. tokens/s of a run = "
      "global-batch tokens / its median step_s. Columns: median over rounds (min–max); targets judged on the "
      "median of the per-round ratios.")
print()
if n_rounds == 0:
    print("(no complete round: see the runs' logs)")
else:
    rows = []
    for m in METHODS:
        rs = R[m]
        rows.append([m, len(rs), mr([r["tps"] for r in rs], "{:.0f}"), mr([r["step_s"] for r in rs], "{:.3f}"),
                     mr([r["fpt"] / 1e6 for r in rs], "{:.1f}"), " ".join(r["load_before"] for r in rs)])
    print(table(["method", "rounds", "tok/s (all ranks)", "step_s", "model MFLOP per token (trainer)",
                 "load before each round's run"], rows))
    print()
    rows = []
    for label, nm, dn, target in (("LoRA / full", "lora", "full", SPEEDUP_TARGET),
                                  ("QLoRA / LoRA", "qlora", "lora", QLORA_TARGET),
                                  ("QLoRA / full", "qlora", "full", None)):
        rt = ratios(R[nm], R[dn])
        m = med(rt)
        fl = med(r["fpt"] for r in R[dn]) / med(r["fpt"] for r in R[nm])
        rows.append([label, " ".join(f"{x:.2f}" for x in rt), f"**{m:.2f}x** ({min(rt):.2f}–{max(rt):.2f})",
                     f"{fl:.2f}x", f"≥ {target}x" if target else "—", met(m >= target) if target else "—"])
        if target:
            summary(f"{label.replace('/', 'vs')} step throughput ({setting})", "`tools/bench/lora.sh`", f"≥ {target}x",
                    f"{m:.2f}x (per-round {min(rt):.2f}–{max(rt):.2f}x, {len(rt)} rounds)", m >= target)
    print(table(["throughput", "per-round ratios", "median ratio (range)", "FLOP ratio (trainer's count, the ideal)",
                 "target", "met?"], rows))
    print()

    # ---- memory ----
    print("Optimizer + gradient memory per rank (rank 0): the trainer's own figures, `optimizer_state_bytes` (AdamW "
          "m + v) and `grad_buffer_bytes` (persistent gradient buffer) from its first metrics line; for reference "
          "the measured heap in use after each step (rank 0, median over steps 2..) and peak RSS (max over ranks, "
          "GNU time). Trainable parameters from the line rank 0 prints.")
    print()

    def mem_rows(pairs):
        out = []
        base = None
        for label, rs in pairs:
            og = [r["opt"] + r["grad"] if r["opt"] is not None and r["grad"] is not None else None for r in rs]
            if base is None:
                base = og
            ratio = [x / y if x is not None and y else None for x, y in zip(og, base)]
            t = rs[0] if rs else {}
            out.append([label, f"{t.get('trainable', 0):,}" + (f" ({t['trainable_pct']:.2f}%)" if "trainable_pct" in t else ""),
                        mb([r["opt"] for r in rs]), mb([r["grad"] for r in rs]), mb(og),
                        "**" + mr([100 * x if x is not None else None for x in ratio], "{:.2f}", "%") + "**",
                        mb([r["heap"] for r in rs]), mb([r["rss_max"] for r in rs])])
        return out, base

    rows, _ = mem_rows([(m, R[m]) for m in METHODS])
    print(table(["method", "trainable params (%)", "optimizer state MB", "gradient buffer MB", "optimizer + gradient MB",
                 "vs full", "heap after step MB (rank 0)", "peak RSS MB (max rank)"], rows))
    og = lambda r: r["opt"] + r["grad"] if r["opt"] is not None and r["grad"] is not None else None  # noqa: E731
    mem_ratio = med(og(l) / og(f) for l, f in zip(R["lora"], R["full"]) if og(l) is not None and og(f))
    ok = mem_ratio < MEM_TARGET
    print()
    print(f"LoRA / full optimizer + gradient memory per rank: **{100 * mem_ratio:.2f}%** (target < {100 * MEM_TARGET:.0f}%: "
          f"{met(ok)}). It equals the trainable-parameter ratio (both keep 12 bytes per trainable parameter: fp32 "
          f"gradient, m, v), so it is set by the model's width: an r = {a.r} adapter on a d_in × d_out projection "
          f"holds r·(d_in + d_out) of its d_in·d_out parameters.")
    summary(f"optimizer + gradient memory per rank, LoRA vs full (r = {a.r}, all-linear, bench model)",
            "`tools/bench/lora.sh`", f"< {100 * MEM_TARGET:.0f}% of full", f"{100 * mem_ratio:.2f}%", ok)
    wf, wl = rounds("wide-full"), rounds("wide-lora")
    if wf and wl:
        wide = json.load(open(os.path.join(a.work, "wide.json"))) if os.path.exists(os.path.join(a.work, "wide.json")) else {}
        rows, _ = mem_rows([("full", wf), ("lora", wl)])
        wr = og(wl[0]) / og(wf[0])
        print()
        print(f"The same measurement on a wider random Llama (1 rank, ZeRO-{a.zero}, micro-batch 1: hidden "
              f"{wide.get('hidden', '?')}, intermediate {wide.get('intermediate', '?')}, {wide.get('layers', '?')} layers, "
              f"vocab {wide.get('vocab', '?')}, {wide.get('params', 0) / 1e6:.1f}M parameters; not the benchmark model, "
              "one run each, reported only):")
        print()
        for row, r in zip(rows, (wf[0], wl[0])):
            row.append(f"{r['tps']:.0f}")
        rows[1][-1] += f" (**{wl[0]['tps'] / wf[0]['tps']:.2f}x** full; FLOP ratio {wf[0]['fpt'] / wl[0]['fpt']:.2f}x)"
        print(table(["wide model", "trainable params (%)", "optimizer state MB", "gradient buffer MB",
                     "optimizer + gradient MB", "vs full", "heap after step MB (rank 0)", "peak RSS MB (max rank)",
                     "tok/s"], rows))
        summary(f"optimizer + gradient memory per rank, LoRA vs full (r = {a.r}, all-linear), wider model "
                f"(hidden {wide.get('hidden', '?')}; supplement)", "`tools/bench/lora.sh`", f"< {100 * MEM_TARGET:.0f}% of full",
                f"{100 * wr:.2f}% (reported only: not the benchmark model; LoRA / full throughput there "
                f"{wl[0]['tps'] / wf[0]['tps']:.2f}x)", None)
    print()

    # ---- QLoRA base ----
    q = [r for r in R["qlora"] if "bpp" in r]
    if q:
        b = med(r["bpp"] for r in q)
        ok = b <= BPP_TARGET
        lo = R["lora"]
        saved = [(l["heap"] - r["heap"]) / r["q_params"] for l, r in zip(lo, q) if l["heap"] and r["heap"]]
        print(table(["QLoRA base (rank 0)", "result", "target", "met?"], [
            ["NF4 weights / parameters quantized", f"{q[0]['q_tensors']} / {q[0]['q_params']:,}", "", ""],
            ["bytes per quantized parameter, measured (heap growth while quantizing; the trainer's line)",
             "**" + mr([r["bpp"] for r in q], "{:.4f}") + "**", f"≤ {BPP_TARGET}", met(ok)],
            ["bytes per quantized parameter held by the NF4 tensors (codes + absmax constants, their sizes)",
             mr([r["bpp_held"] for r in q], "{:.4f}"), "", ""],
            ["cross-check: heap after step, LoRA − QLoRA, per quantized parameter (fp32 base = 4 B minus NF4)",
             mr(saved, "{:.3f}"), "", ""]]))
        summary("QLoRA base memory per quantized parameter (measured)", "`tools/bench/lora.sh`", f"≤ {BPP_TARGET} B",
                f"{b:.4f} B (per-round {min(r['bpp'] for r in q):.4f}–{max(r['bpp'] for r in q):.4f})", ok)
end("lora")

begin("lora-phases")
print("Seconds per step by phase (the trainer's metrics): per run the median over its measured steps, then the "
      "median over rounds (min–max). forward and backward include no communication.")
print()
rows = []
for m in METHODS:
    if R[m]:
        rows.append([m] + [mr([r.get(k) for r in R[m]], "{:.3f}") for k in PHASES])
print(table(["method"] + [k[:-2] for k in PHASES], rows))
if n_rounds:
    print()
    print("Differences of those medians (seconds per step; negative = saved), per round then the median over rounds "
          "(min–max):")
    print()
    rows = []
    for label, x, y in (("LoRA − full", "lora", "full"), ("QLoRA − LoRA", "qlora", "lora")):
        rows.append([label] + [mr([p.get(k) - q.get(k) for p, q in zip(R[x], R[y])], "{:+.3f}")
                               for k in ("forward_s", "backward_s", "optim_s", "comm_wait_s", "step_s")])
    print(table(["", "forward", "backward", "optim", "comm_wait", "step"], rows))
end("lora-phases")
print(f"commands (exact, from runs/*/cmd; WORK={a.work}):")
for n in METHODS + ("wide-full", "wide-lora"):
    p = os.path.join(a.work, "runs", n, "cmd")
    if os.path.exists(p):
        print(f"  [{n}] " + open(p).read().strip().replace(a.work, "$WORK"))
