#!/usr/bin/python3
"""Tables for tools/bench/lora.sh from WORK/runs/<name>/{metrics.jsonl, log, rss.<rank>, cmd}, as markdown
ready to paste into docs/PERFORMANCE.md (the "<!-- bench:lora begin/end -->" and "bench:lora-phases" blocks),
plus the summary rows behind the README's target table (benchstats.summary, when $BENCH_SUMMARY is set).

Runs are named PRECISION-MODEL-METHOD (round 1) and PRECISION-MODEL-METHOD.K (round K): MODEL h1024 (the
judged model, methods full, lora, qlora) or h384 (tools/bench/train.sh's model, full and lora). Every figure
is a median with its range (min-max) over rounds (per run: the median over its measured steps, every step
after the first WARMUP), never a best run. Sources: tokens/s = tokens of a step / its step_s (the
trainer's metrics); memory = the trainer's own figures in its first metrics line (optimizer_state_bytes:
AdamW m + v of this rank; grad_buffer_bytes: its persistent gradient buffer), the heap in use after each
step (heap_bytes, glibc mallinfo2, rank 0) and peak RSS of every rank (GNU time); QLoRA bytes per parameter
= the trainer's measured line (heap growth while the base is quantized, rank 0).

usage: lora_report.py WORK [--precisions "auto fp32"] [--warmup 2] [--np 2] [--zero 0] [--threads 1] [--r 16]
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
ap.add_argument("--precisions", default="auto")
ap.add_argument("--warmup", type=int, default=2)
ap.add_argument("--np", type=int, default=2)
ap.add_argument("--zero", type=int, default=0)
ap.add_argument("--threads", type=int, default=1)
ap.add_argument("--r", type=int, default=16)
a = ap.parse_args()
SPEEDUP_TARGET, MEM_TARGET, BPP_TARGET, QLORA_TARGET = 1.35, 0.02, 0.53, 0.7
PHASES = ("forward_s", "backward_s", "drain_s", "optim_s", "gather_s", "comm_wait_s", "data_wait_s", "step_s")
UNITS = {"B": 1, "KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12}
MODELS = {"h1024": ("full", "lora", "qlora"), "h384": ("full", "lora")}
PRECS = a.precisions.split()


def model_info(m):
    p = os.path.join(a.work, f"{m}.json")
    return json.load(open(p)) if os.path.exists(p) else {}


def model_text(m):
    j = model_info(m)
    if m == "h384":
        return (f"the `train.sh` model (hidden {j.get('hidden', 384)}, {j.get('layers', 6)} layers, "
                f"{j.get('params', 0) / 1e6:.1f}M parameters)")
    return (f"hidden {j.get('hidden', '?')}, {j.get('layers', '?')} layers, {j.get('heads', '?')} / "
            f"{j.get('kv_heads', '?')} heads, intermediate {j.get('intermediate', '?')}, vocab {j.get('vocab', '?')}, "
            f"{j.get('params', 0) / 1e6:.1f}M parameters")


def num(s):
    return int(s.replace(",", ""))


def run(name):
    d = os.path.join(a.work, "runs", name)
    if not os.path.exists(os.path.join(d, "metrics.jsonl")):
        return None
    rows = [j for j in (json.loads(l) for l in open(os.path.join(d, "metrics.jsonl")) if l.strip())
            if j.get("type") == "train"]
    if not rows:
        return None
    m = rows[a.warmup:] if len(rows) > a.warmup else rows
    r = {"name": name, "tps": med(x["tokens"] / x["step_s"] for x in m), "fpt": med(x.get("flops_per_token") for x in m),
         "tokens": rows[0]["tokens"]}
    for k in PHASES:
        r[k] = med(x.get(k) for x in m)
    r["opt"] = rows[0].get("optimizer_state_bytes")
    r["grad"] = rows[0].get("grad_buffer_bytes")
    mem_rows = rows[1:] if len(rows) > 1 else rows
    r["heap"] = med(x["heap_bytes"] for x in mem_rows if x.get("heap_bytes", -1) >= 0)
    log = open(os.path.join(d, "log"), errors="replace").read() if os.path.exists(os.path.join(d, "log")) else ""
    if r["opt"] is None:  # a trainer without the metrics field: the optimizer state it prints
        mo = re.search(r"optimizer state ([0-9.]+) (B|KB|MB|GB|TB) per rank", log)
        r["opt"] = float(mo.group(1)) * UNITS[mo.group(2)] if mo else None
    mo = re.search(r"precision: (\S+)(?: -> (\w+))?", log)
    r["precision"] = (mo.group(2) or mo.group(1)) if mo else "?"
    mo = re.search(r"trainable params: ([0-9,]+) \|\| all params: ([0-9,]+) \|\| trainable%: ([0-9.]+)", log)
    if mo:
        r["trainable"], r["all"], r["trainable_pct"] = num(mo.group(1)), num(mo.group(2)), float(mo.group(3))
    mo = re.search(r"over ([0-9]+) weights, ([0-9,]+) parameters: ([0-9.]+) bytes per parameter measured \(heap "
                   r"growth\), ([0-9.]+) held by the NF4 tensors", log)
    if mo:
        r["q_tensors"], r["q_params"] = int(mo.group(1)), num(mo.group(2))
        r["bpp"], r["bpp_held"] = float(mo.group(3)), float(mo.group(4))
    rss = {}
    for f in glob.glob(os.path.join(d, "rss.*")):
        try:
            rss[int(f.rsplit(".", 1)[1])] = int(open(f).read().strip().splitlines()[-1].split()[0]) * 1024
        except (ValueError, IndexError):
            pass
    r["rss_max"] = max(rss.values()) if rss else None
    p = os.path.join(d, "load_before")
    r["load_before"] = open(p).read().strip() if os.path.exists(p) else "?"
    return r


def rounds(name):
    out, k = [], 1
    while os.path.isdir(os.path.join(a.work, "runs", name if k == 1 else f"{name}.{k}")):
        r = run(name if k == 1 else f"{name}.{k}")
        if r:
            out.append(r)
        k += 1
    return out


def og(r):
    return r["opt"] + r["grad"] if r.get("opt") is not None and r.get("grad") is not None else None


def mb(xs):
    return mr([x / 1e6 if x is not None else None for x in xs], "{:.2f}")


R = {}  # (precision, model, method) -> runs, cut to the rounds complete for that precision and model
for p in PRECS:
    for model, methods in MODELS.items():
        rs = {m: rounds(f"{p}-{model}-{m}") for m in methods}
        n = min(len(v) for v in rs.values())
        for m in methods:
            R[(p, model, m)] = rs[m][:n]


def ratio(p, model, x, y):
    return [u["tps"] / v["tps"] for u, v in zip(R[(p, model, x)], R[(p, model, y)])]


def resolved(p):
    rs = [r for k, v in R.items() if k[0] == p for r in v]
    names = sorted({r["precision"] for r in rs})
    return p if not names or names == [p] else f"{p} → {'/'.join(names)}"


setting = f"{a.np} ranks × {a.threads} thread, ZeRO-{a.zero}, r = {a.r}, all-linear"
begin("lora")
print(f"Full fine-tuning vs LoRA vs QLoRA, the same data and ranks in one run ({setting}; LoRA/QLoRA: "
      f"`--lora-r {a.r} --lora-alpha {2 * a.r} --lora-targets all-linear`, i.e. q, k, v, o, gate, up, down; QLoRA: NF4 "
      "base with double quantization, dequantized into the compute dtype). Judged model **h1024**: "
      f"{model_text('h1024')}; beside it **h384**: {model_text('h384')}. A round = one run of each method of a "
      f"model, back to back (order rotating); steps after the first {a.warmup} measured; tokens/s of a run = "
      "global-batch tokens / its median step_s. Columns: median over rounds (min–max); targets judged on the "
      "median of the per-round ratios.")
print()
first = True
for p in PRECS:
    if not any(R[(p, "h1024", m)] for m in MODELS["h1024"]):
        print(f"(--precision {p}: no complete round; see the runs' logs)")
        continue
    print(f"**--precision {resolved(p)}**")
    print()
    rows = []
    for model, methods in MODELS.items():
        for m in methods:
            rs = R[(p, model, m)]
            if rs:
                rows.append([model, m, len(rs), rs[0]["tokens"], mr([r["tps"] for r in rs], "{:.0f}"),
                             mr([r["step_s"] for r in rs], "{:.3f}"), mr([r["fpt"] / 1e6 for r in rs], "{:.1f}"),
                             " ".join(r["load_before"] for r in rs)])
    print(table(["model", "method", "rounds", "tokens per step", "tok/s (all ranks)", "step_s",
                 "model MFLOP per token (trainer)", "load before each round's run"], rows))
    print()
    rows = []
    for model, label, x, y, target, judged in (("h1024", "LoRA / full", "lora", "full", SPEEDUP_TARGET, True),
                                               ("h1024", "QLoRA / LoRA", "qlora", "lora", QLORA_TARGET, True),
                                               ("h1024", "QLoRA / full", "qlora", "full", None, False),
                                               ("h384", "LoRA / full", "lora", "full", SPEEDUP_TARGET, False)):
        rt = ratio(p, model, x, y)
        if not rt:
            continue
        m = med(rt)
        fl = med(r["fpt"] for r in R[(p, model, y)]) / med(r["fpt"] for r in R[(p, model, x)])
        rows.append([model, label, " ".join(f"{v:.2f}" for v in rt), f"**{m:.2f}x** ({min(rt):.2f}–{max(rt):.2f})",
                     f"{fl:.2f}x", f"≥ {target}x" if target else "—",
                     (met(m >= target) if judged else f"({'above' if m >= target else 'below'}; not judged)")
                     if target else "—"])
        if target:
            what = "hidden 1024 model" if model == "h1024" else "train.sh model, hidden 384"
            summary(f"{label.replace(' / ', ' vs ')} step throughput ({what}, --precision {resolved(p)})",
                    "`tools/bench/lora.sh`", f"≥ {target}x" if judged else f"(≥ {target}x judged at hidden 1024)",
                    f"{m:.2f}x (per-round {min(rt):.2f}–{max(rt):.2f}x, {len(rt)} rounds)",
                    m >= target if judged else None)
    print(table(["model", "throughput", "per-round ratios", "median ratio (range)",
                 "FLOP ratio (trainer's count, the ideal)", "target", "met?"], rows))
    print()

    if not first:
        continue
    first = False
    # ---- memory (the same at every precision: fp32 gradients and AdamW moments) ----
    print(f"Optimizer + gradient memory per rank (rank 0; from the --precision {resolved(p)} runs — the trainer keeps "
          "fp32 gradients and AdamW moments at any precision): the trainer's own figures, `optimizer_state_bytes` "
          "(AdamW m + v) and `grad_buffer_bytes` (persistent gradient buffer) from its first metrics line; for "
          "reference the measured heap in use after each step (rank 0, median over steps 2..) and peak RSS (max "
          "over ranks, GNU time). Trainable parameters from the line rank 0 prints.")
    print()
    rows, mem = [], {}
    for model, methods in MODELS.items():
        base = [og(r) for r in R[(p, model, "full")]]
        for m in methods:
            rs = R[(p, model, m)]
            if not rs:
                continue
            v = [og(r) for r in rs]
            rel = [x / y if x is not None and y else None for x, y in zip(v, base)]
            mem[(model, m)] = med(rel)
            t = rs[0]
            rows.append([model, m, f"{t.get('trainable', 0):,}" + (f" ({t['trainable_pct']:.2f}%)" if "trainable_pct" in t else ""),
                         mb([r["opt"] for r in rs]), mb([r["grad"] for r in rs]), mb(v),
                         "**" + mr([100 * x if x is not None else None for x in rel], "{:.2f}", "%") + "**",
                         mb([r["heap"] for r in rs]), mb([r["rss_max"] for r in rs])])
    print(table(["model", "method", "trainable params (%)", "optimizer state MB", "gradient buffer MB",
                 "optimizer + gradient MB", "vs full", "heap after step MB (rank 0)", "peak RSS MB (max rank)"], rows))
    print()
    if ("h1024", "lora") in mem:
        x = mem[("h1024", "lora")]
        print(f"LoRA / full optimizer + gradient memory per rank, h1024: **{100 * x:.2f}%** (target < "
              f"{100 * MEM_TARGET:.0f}%: {met(x < MEM_TARGET)})" +
              (f"; h384: {100 * mem[('h384', 'lora')]:.2f}%" if ("h384", "lora") in mem else "") +
              ". The ratio is the trainable-parameter ratio (12 bytes per trainable parameter either way: fp32 "
              f"gradient, m, v), set by the width: an r = {a.r} adapter on a d_in × d_out projection has r·(d_in + "
              "d_out) of its d_in·d_out parameters.")
        summary(f"optimizer + gradient memory per rank, LoRA vs full (r = {a.r}, all-linear, hidden 1024 model)",
                "`tools/bench/lora.sh`", f"< {100 * MEM_TARGET:.0f}% of full", f"{100 * x:.2f}%", x < MEM_TARGET)
        if ("h384", "lora") in mem:
            summary(f"optimizer + gradient memory per rank, LoRA vs full (r = {a.r}, all-linear, train.sh model, "
                    "hidden 384)", "`tools/bench/lora.sh`", f"(< {100 * MEM_TARGET:.0f}% judged at hidden 1024)",
                    f"{100 * mem[('h384', 'lora')]:.2f}%", None)
        print()
    # ---- QLoRA base ----
    q = [r for r in R[(p, "h1024", "qlora")] if "bpp" in r]
    if q:
        b = med(r["bpp"] for r in q)
        saved = [(l["heap"] - r["heap"]) / r["q_params"] for l, r in zip(R[(p, "h1024", "lora")], q)
                 if l["heap"] and r["heap"]]
        print(table([f"QLoRA base, h1024 (rank 0, --precision {resolved(p)})", "result", "target", "met?"], [
            ["NF4 weights / parameters quantized", f"{q[0]['q_tensors']} / {q[0]['q_params']:,}", "", ""],
            ["bytes per quantized parameter, measured (heap growth while quantizing; the trainer's line)",
             "**" + mr([r["bpp"] for r in q], "{:.4f}") + "**", f"≤ {BPP_TARGET}", met(b <= BPP_TARGET)],
            ["bytes per quantized parameter held by the NF4 tensors (codes + absmax constants, their sizes)",
             mr([r["bpp_held"] for r in q], "{:.4f}"), "", ""],
            ["cross-check: heap after step, LoRA − QLoRA, per quantized parameter (the base held in the LoRA "
             "run's dtype minus NF4)", mr(saved, "{:.3f}"), "", ""]]))
        summary("QLoRA base memory per quantized parameter (measured, hidden 1024 model)", "`tools/bench/lora.sh`",
                f"≤ {BPP_TARGET} B", f"{b:.4f} B (per-round {min(r['bpp'] for r in q):.4f}–{max(r['bpp'] for r in q):.4f})",
                b <= BPP_TARGET)
        print()
end("lora")

begin("lora-phases")
print("Seconds per step by phase (the trainer's metrics): per run the median over its measured steps, then the "
      "median over rounds (min–max). forward and backward include no communication. Below: the differences of "
      "those per-run medians, per round, then the median over rounds (negative = saved).")
for p in PRECS:
    rows, diffs = [], []
    for model, methods in MODELS.items():
        for m in methods:
            if R[(p, model, m)]:
                rows.append([model, m] + [mr([r.get(k) for r in R[(p, model, m)]], "{:.3f}") for k in PHASES])
        for label, x, y in (("LoRA − full", "lora", "full"), ("QLoRA − LoRA", "qlora", "lora")):
            if x in methods and R[(p, model, x)]:
                diffs.append([model, label] + [mr([u.get(k) - v.get(k) for u, v in zip(R[(p, model, x)], R[(p, model, y)])],
                                                  "{:+.3f}") for k in ("forward_s", "backward_s", "optim_s", "comm_wait_s", "step_s")])
    if not rows:
        continue
    print()
    print(f"**--precision {resolved(p)}**")
    print()
    print(table(["model", "method"] + [k[:-2] for k in PHASES], rows))
    print()
    print(table(["model", "", "forward", "backward", "optim", "comm_wait", "step"], diffs))
end("lora-phases")
print(f"commands (exact, from runs/*/cmd, round 1; WORK={a.work}):")
for p in PRECS:
    for model, methods in MODELS.items():
        for m in methods:
            c = os.path.join(a.work, "runs", f"{p}-{model}-{m}", "cmd")
            if os.path.exists(c):
                print(f"  [{p}-{model}-{m}] " + open(c).read().strip().replace(a.work, "$WORK"))
