#!/usr/bin/python3
"""Tables for tools/bench/train.sh from WORK/runs/<name>/{metrics.jsonl, log, rss.<rank>, cmd}.

usage: train_report.py WORK scaling|comm|memory|mfu [--warmup 2] [--seq 256] [--threads 1]
"""
import argparse
import glob
import json
import os
import re
import statistics

ap = argparse.ArgumentParser()
ap.add_argument("work")
ap.add_argument("section", choices=["scaling", "comm", "memory", "mfu"])
ap.add_argument("--warmup", type=int, default=2)
ap.add_argument("--seq", type=int, default=256)
ap.add_argument("--threads", type=int, default=1)
ap.add_argument("--rounds", type=int, default=1)
a = ap.parse_args()
model = json.load(open(os.path.join(a.work, "model.json")))
P = model["params"]
UNITS = {"B": 1, "KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12}


def run(name):
    d = os.path.join(a.work, "runs", name)
    if not os.path.isdir(d):
        return None
    rows = []
    if os.path.exists(os.path.join(d, "metrics.jsonl")):
        for line in open(os.path.join(d, "metrics.jsonl")):
            j = json.loads(line)
            if j.get("type") == "train":
                rows.append(j)
    m = rows[a.warmup:] if len(rows) > a.warmup else rows
    r = {"name": name, "rows": rows, "measured": m}
    if m:
        tok, sec = sum(x["tokens"] for x in m), sum(x["step_s"] for x in m)
        r["tps"] = tok / sec                      # tokens over all ranks / wall time of the measured steps
        r["step_s"] = statistics.mean(x["step_s"] for x in m)
        r["step_s_min"] = min(x["step_s"] for x in m)
        r["tokens"] = m[0]["tokens"]
        fr = [x["comm_wait_s"] / x["step_s"] for x in m]
        r["comm_frac"] = statistics.mean(fr)
        r["comm_frac_max"] = max(fr)
        r["comm_s"] = statistics.mean(x["comm_wait_s"] for x in m)
        r["mfu"] = statistics.mean(x["mfu"] for x in m)
    log = open(os.path.join(d, "log"), errors="replace").read() if os.path.exists(os.path.join(d, "log")) else ""
    mo = re.search(r"optimizer state ([0-9.]+) (B|KB|MB|GB|TB) per rank", log)
    if mo:
        r["opt_bytes"] = float(mo.group(1)) * UNITS[mo.group(2)]
    mo = re.search(r"model: (\d+) parameters", log)
    if mo:
        r["params"] = int(mo.group(1))
    rss = {}
    for f in glob.glob(os.path.join(d, "rss.*")):
        try:
            fields = open(f).read().strip().splitlines()[-1].split()
            rss[int(f.rsplit(".", 1)[1])] = int(fields[0]) * 1024
            if len(fields) >= 4:  # "%M %U %S %e": CPU seconds used / wall seconds of this rank
                k = int(f.rsplit(".", 1)[1])
                r.setdefault("cpu_s", {})[k] = float(fields[1]) + float(fields[2])
                r.setdefault("cpu_util", {})[k] = (float(fields[1]) + float(fields[2])) / max(float(fields[3]), 1e-9)
        except (ValueError, IndexError):
            pass
    r["rss"] = rss
    for k in ("load_before", "load_after"):
        p = os.path.join(d, k)
        r[k] = open(p).read().strip() if os.path.exists(p) else "?"
    return r


def rounds(name):
    """The runs of NAME over the interleaved rounds: NAME (round 1), NAME.2, NAME.3, ..."""
    out = []
    for k in range(1, a.rounds + 1):
        r = run(name if k == 1 else f"{name}.{k}")
        if r and "tps" in r:
            out.append(r)
    return out


def mb(x):
    return f"{x / 1e6:8.1f}"


def show_cmd(names):
    print("commands (exact, from runs/*/cmd):")
    for n in names:
        p = os.path.join(a.work, "runs", n, "cmd")
        if os.path.exists(p):
            print(f"  [{n}] " + open(p).read().strip())


if a.section == "scaling":
    print("== 1. throughput scaling: 2 ranks x 1 thread vs 1 rank x 1 thread, same per-rank micro-batch")
    print(f"   tokens/s = tokens of the global batch / step_s, summed over steps {a.warmup + 1}.. (first {a.warmup} skipped)")
    print(f"   {a.rounds} interleaved round(s); per round: ratio = 2-rank tok/s / 1-rank tok/s of that round; "
          "result = median over rounds")
    print(f"{'zero':>4} {'1 rank tok/s':>13} {'2 ranks tok/s':>14} {'per-round ratios':>24} {'median':>7} {'target':>7}  load 1r/2r (round 1)")
    base0 = run("s1z0")
    names = []
    for z in (0, 1, 2):
        r1s, r2s = rounds(f"s1z{z}"), rounds(f"s2z{z}")
        names += [f"s1z{z}", f"s2z{z}"]  # later rounds: the same commands
        if not r1s or len(r1s) != len(r2s):
            print(f"{z:>4}  (missing runs)")
            continue
        ratios = [r2["tps"] / r1["tps"] for r1, r2 in zip(r1s, r2s)]
        med = statistics.median(ratios)
        ok = "met" if med >= 1.85 else "MISSED"
        t1 = statistics.median(r["tps"] for r in r1s)
        t2 = statistics.median(r["tps"] for r in r2s)
        print(f"{z:>4} {t1:13.0f} {t2:14.0f} {' '.join(f'{x:.2f}x' for x in ratios):>24} {med:6.2f}x {ok:>7}  "
              f"{r1s[0]['load_before']}/{r2s[0]['load_before']}")
    print("   tok/s columns: median over rounds; tok/s of a run = tokens of the measured steps / their summed step_s")
    print("   target: ratio >= 1.85x (ZeRO-0)")

    def gf(f):
        p = os.path.join(a.work, f)
        return json.loads(open(p).read().splitlines()[0])["gflops"] if os.path.exists(p) else None
    c1, c2a, c2b = gf("ceiling_1.jsonl"), gf("ceiling_2a.jsonl"), gf("ceiling_2b.jsonl")
    if c1 and c2a and c2b:
        ceil = (c2a + c2b) / c1
        print(f"   machine ceiling: fp32 1024^3 matmul, 1 process {c1:.1f} GFLOP/s, 2 concurrent processes "
              f"{c2a:.1f} + {c2b:.1f} = {c2a + c2b:.1f} GFLOP/s -> {ceil:.2f}x")
        if base0 and "tps" in base0 and run("s2z0") and "tps" in run("s2z0"):
            print(f"   ZeRO-0 ratio / machine ceiling = {run('s2z0')['tps'] / base0['tps'] / ceil:.2f} (parallel efficiency of"
                  " the trainer itself, relative to what two busy cores of this machine deliver)")
    pa, pb = run("p1z0a"), run("p1z0b")
    if pa and pb and "tps" in pa and "tps" in pb and base0 and "tps" in base0:
        both = pa["tps"] + pb["tps"]
        print(f"   control: two independent 1-rank ZeRO-0 jobs at the same time (no communication): {pa['tps']:.0f} + "
              f"{pb['tps']:.0f} = {both:.0f} tok/s -> {both / base0['tps']:.2f}x of one job alone")
        r2 = run("s2z0")
        if r2 and "tps" in r2:
            print(f"   2-rank ZeRO-0 / independent pair = {r2['tps'] / both:.2f} (what DDP itself costs on this machine)")
        names += ["p1z0a", "p1z0b"]
    print("   load-independent estimate from CPU time (GNU time user+sys per rank, whole run incl. ~startup):")
    print(f"{'zero':>4} {'1 rank CPU s':>13} {'2 ranks CPU s/rank':>19} {'CPU-time ratio':>15}")
    for z in (0, 1, 2):
        r1, r2 = run(f"s1z{z}"), run(f"s2z{z}")
        c1 = r1.get("cpu_s") if r1 else None
        c2 = r2.get("cpu_s") if r2 else None
        if c1 and c2 and len(c2) == 2:
            m2 = statistics.mean(c2.values())
            print(f"{z:>4} {c1[0]:13.1f} {m2:19.1f} {2 * c1[0] / m2:14.2f}x")
    print("   CPU-time ratio = 2 x CPU s of the 1-rank run / CPU s per rank of the 2-rank run; a rough estimate of the"
          " ratio two dedicated cores would give, valid only as far as waiting ranks spin (Open MPI does by default)")
    for n in ("s1z0", "s2z0", "p1z0a"):
        r = run(n)
        if r and r.get("cpu_util"):
            print(f"   CPU use per rank ({n}): " + ", ".join(f"rank {k}: {v:.2f} cores" for k, v in sorted(r["cpu_util"].items())))
    show_cmd(names)

elif a.section == "comm":
    print(f"== 2. communication not hidden: mean over steps {a.warmup + 1}.. of comm_wait_s / step_s, 2 ranks")
    print(f"   per run: mean over its measured steps; result = median over {a.rounds} round(s)")
    print(f"{'zero':>4} {'step_s':>8} {'comm_wait_s':>12} {'per-round mean frac':>24} {'median':>7} {'max step frac':>13} {'target':>7}")
    for z in (0, 1, 2):
        rs = [r for r in rounds(f"s2z{z}") if "comm_frac" in r]
        if not rs:
            print(f"{z:>4}  (missing run s2z{z})")
            continue
        fr = [r["comm_frac"] for r in rs]
        med = statistics.median(fr)
        ok = "met" if med <= 0.10 else "MISSED"
        print(f"{z:>4} {statistics.median(r['step_s'] for r in rs):8.3f} {statistics.median(r['comm_s'] for r in rs):12.4f} "
              f"{' '.join(f'{100 * x:.1f}%' for x in fr):>24} {100 * med:6.2f}% {100 * max(r['comm_frac_max'] for r in rs):12.2f}% {ok:>7}")
    print("   target: mean fraction <= 10%")
    show_cmd([f"s2z{z}" for z in (0, 1, 2)])  # later rounds: the same commands

elif a.section == "memory":
    print("== 3. memory per rank: optimizer state printed by rank 0 vs formula, and peak RSS (GNU time, every rank)")
    print(f"   P = {P} parameters; formula: ZeRO-0 8 B x P (m, v; replicated), ZeRO-1/2 12 B x P / N (m, v, fp32 master shard)")
    print(f"{'N':>2} {'zero':>4} {'opt printed MB':>15} {'formula MB':>11} {'printed/formula':>16} {'x N vs N=1':>11} "
          f"{'peak RSS MB (max rank)':>23} {'min rank':>9} {'RSS - ZeRO-0 same N':>20}")
    names = []
    opt1 = {}
    for n in (1, 2, 4):
        z0 = run(f"m{n}z0")
        for z in (0, 1, 2):
            r = run(f"m{n}z{z}")
            names.append(f"m{n}z{z}")
            if not r or "opt_bytes" not in r:
                print(f"{n:>2} {z:>4}  (missing run m{n}z{z})")
                continue
            formula = 8 * P if z == 0 else 12 * P / n
            if n == 1:
                opt1[z] = r["opt_bytes"]
            scale = r["opt_bytes"] * (n if z > 0 else 1) / opt1.get(z, float("nan"))
            rss_max = max(r["rss"].values()) if r["rss"] else float("nan")
            rss_min = min(r["rss"].values()) if r["rss"] else float("nan")
            d0 = rss_max - max(z0["rss"].values()) if z0 and z0["rss"] and r["rss"] else float("nan")
            print(f"{n:>2} {z:>4} {mb(r['opt_bytes']):>15} {mb(formula):>11} {r['opt_bytes'] / formula:16.3f} "
                  f"{scale:11.3f} {mb(rss_max):>23} {mb(rss_min):>9} {d0 / 1e6:+20.1f}")
    print("   'x N vs N=1': printed state x N (ZeRO-1/2; x 1 for replicated ZeRO-0) / printed state at N=1;"
          " 1.000 = exactly proportional to 1/N (target: within 10%)")
    print("   model of persistent fp32 bytes per rank: ZeRO-0 16P, ZeRO-1 8P + 16P/N (params 4P, flat grad 4P, owned grad"
          " 4P/N, m/v/master 12P/N), ZeRO-2 ideally 4P + 16P/N + one bucket of gradients")
    for n in (1, 2, 4):
        z0, z1, z2 = (run(f"m{n}z{z}") for z in (0, 1, 2))
        if all(r and r["rss"] for r in (z0, z1, z2)):
            m0, m1, m2 = (max(r["rss"].values()) for r in (z0, z1, z2))
            print(f"   N={n}: RSS saving ZeRO-1 vs 0 {(m0 - m1) / 1e6:7.1f} MB (persistent-buffer model {(16 * P - 8 * P - 16 * P / n) / 1e6:7.1f}),"
                  f" ZeRO-2 vs 1 {(m1 - m2) / 1e6:7.1f} MB (ideal model up to {(4 * P) / 1e6:.1f} minus one bucket)")
    b4, z1, z2 = run("m2z2b4"), run("m2z1"), run("m2z2")
    if b4 and b4["rss"] and z1 and z1["rss"] and z2 and z2["rss"]:
        m1, m2, mb4 = max(z1["rss"].values()), max(z2["rss"].values()), max(b4["rss"].values())
        print(f"   N=2 ZeRO-2 with --bucket-mb 4: peak RSS {mb4 / 1e6:.1f} MB (25 MB buckets: {m2 / 1e6:.1f}, ZeRO-1: {m1 / 1e6:.1f});"
              f" smaller buckets should leave only ~4 MB of full gradients live")
        names.append("m2z2b4")
    show_cmd(names)

elif a.section == "mfu":
    peaks = {}
    p = os.path.join(a.work, "peak.jsonl")
    if os.path.exists(p):
        for line in open(p):
            j = json.loads(line)
            peaks[(j["dtype"], j["n"])] = j["gflops"]
    L, C, V, T = model["layers"], model["hidden"], model["vocab"], a.seq
    std = 6 * (P - model["embed_params"]) + 12 * L * C * T  # PaLM-style: matmul params (not the embedding lookup) + attention
    print("== 4. MFU: the trainer's mfu vs achieved model FLOP/s over a Python torch matmul peak")
    print(f"   model FLOPs/token (standard): 6 x {P - model['embed_params']} matmul params + 12 x L x C x T = {std / 1e6:.1f} MFLOP")
    print(f"   trainer's FLOPs/token (src/main.cpp): 6 x {P} (all params, incl. the embedding lookup) + 12 x L x C x T"
          f" = {(6 * P + 12 * L * C * T) / 1e6:.1f} MFLOP")
    print("   python peak (GFLOP/s, 1 thread): " + ", ".join(f"{k[0]} n={k[1]}: {v:.1f}" for k, v in sorted(peaks.items())))
    print(f"{'run':>5} {'prec':>5} {'ranks':>5} {'tok/s':>8} {'trainer mfu':>12} {'trainer peak/rank':>18} "
          f"{'achieved GFLOP/s':>17} {'python peak':>12} {'MFU vs python peak':>19}")
    for name, prec, n in (("s1z0", "fp32", 1), ("s2z0", "fp32", 2), ("b1z0", "bf16", 1), ("b2z0", "bf16", 2)):
        r = run(name)
        if not (r and "tps" in r):
            print(f"{name:>5}  (missing run)")
            continue
        trainer_flops = 6 * P + 12 * L * C * T
        # back out the peak the trainer measured: mfu = flops * tps / (peak * world), per step
        tp = [trainer_flops * x["tokens"] / x["step_s"] / (x["mfu"] * n) / 1e9 for x in r["measured"] if x["mfu"] > 0]
        trainer_peak = statistics.mean(tp) if tp else float("nan")
        achieved = std * r["tps"] / 1e9
        pk = max((v for k, v in peaks.items() if k[0] == prec), default=float("nan")) * n * a.threads
        print(f"{name:>5} {prec:>5} {n:>5} {r['tps']:8.0f} {100 * r['mfu']:11.1f}% {trainer_peak:18.1f} {achieved:17.1f} "
              f"{pk:12.1f} {100 * achieved / pk:18.1f}%")
    print("   python peak for N ranks = best single-thread matmul x N (one core per rank)")
    show_cmd(["s1z0", "s2z0", "b1z0", "b2z0"])
