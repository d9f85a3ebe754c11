#!/usr/bin/python3
"""Tables for tools/bench/train.sh from WORK/runs/<name>/{metrics.jsonl, log, rss.<rank>, cmd}, as markdown
ready to paste into docs/PERFORMANCE.md (between the "<!-- bench:NAME begin/end -->" markers).

Every figure is a median with its range (min-max) over the stated set: rounds (a run NAME is repeated as
NAME.2, NAME.3, ...), measured steps (every step after the first WARMUP) or ranks; "pooled" figures put
the measured steps of all rounds together. Model FLOPs per token are the trainer's own (its metrics field
flops_per_token, src/train/flops.cpp); memory is measured (peak RSS from GNU time around every rank, and
the trainer's rss_peak_bytes / heap_bytes: getrusage and glibc mallinfo2 after each step, rank 0).

usage: train_report.py WORK scaling|comm|memory|mfu [--warmup 2] [--threads 1] [--rounds 3]
"""
import argparse
import glob
import json
import os
import re
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchstats import begin, end, med, met, mr, summary, table  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("work")
ap.add_argument("section", choices=["scaling", "comm", "memory", "mfu"])
ap.add_argument("--warmup", type=int, default=2)
ap.add_argument("--seq", type=int, default=256)  # accepted for older callers; the FLOP count comes from the trainer
ap.add_argument("--threads", type=int, default=1)
ap.add_argument("--rounds", type=int, default=1)  # informative: rounds are found on disk
a = ap.parse_args()
model = json.load(open(os.path.join(a.work, "model.json")))
P = model["params"]
UNITS = {"B": 1, "KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12}
SCALING_TARGET, COMM_TARGET, MEM_TOLERANCE = 1.85, 0.10, 0.10
PHASES = ("forward_s", "backward_s", "drain_s", "optim_s", "gather_s", "comm_wait_s", "data_wait_s", "step_s")


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
        r["tps"] = med(x["tokens"] / x["step_s"] for x in m)  # tokens over all ranks per second, median step
        r["tokens"] = sum(x["tokens"] for x in m)
        r["step_sum"] = sum(x["step_s"] for x in m)
        r["comm_sum"] = sum(x["comm_wait_s"] for x in m)
        r["comm_frac"] = r["comm_sum"] / r["step_sum"]  # share of the run's measured step time spent blocked
        r["comm_frac_max"] = max(x["comm_wait_s"] / x["step_s"] for x in m)
        r["mfu"] = med(x["mfu"] for x in m)
        for k in PHASES:
            if all(k in x for x in m):
                r[k] = med(x[k] for x in m)
        if all("flops_per_token" in x for x in m):
            r["fpt"] = med(x["flops_per_token"] for x in m)
        if all("peak_gflops" in x for x in m):
            r["peak_gflops"] = med(x["peak_gflops"] for x in m)
    # Memory after each step from the trainer (rank 0); step 1 left out (first-step allocations), unless alone.
    mem_rows = rows[1:] if len(rows) > 1 else rows
    if mem_rows and all(x.get("heap_bytes", -1) >= 0 for x in mem_rows):
        r["heap"] = [x["heap_bytes"] for x in mem_rows]
    if rows and rows[-1].get("rss_peak_bytes", -1) >= 0:
        r["rss_peak_rank0"] = rows[-1]["rss_peak_bytes"]
    log = open(os.path.join(d, "log"), errors="replace").read() if os.path.exists(os.path.join(d, "log")) else ""
    mo = re.search(r"optimizer state ([0-9.]+) (B|KB|MB|GB|TB) per rank", log)
    if mo:
        r["opt_bytes"] = float(mo.group(1)) * UNITS[mo.group(2)]
    rss = {}
    for f in glob.glob(os.path.join(d, "rss.*")):
        try:
            fields = open(f).read().strip().splitlines()[-1].split()
            k = int(f.rsplit(".", 1)[1])
            rss[k] = int(fields[0]) * 1024
            if len(fields) >= 4:  # "%M %U %S %e": CPU seconds used / wall seconds of this rank
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
    """The runs of NAME over the interleaved rounds: NAME (round 1), NAME.2, NAME.3, ... (as found on disk)."""
    out, k = [], 1
    while True:
        r = run(name if k == 1 else f"{name}.{k}")
        if r is None:
            return out
        if "tps" in r:
            out.append(r)
        k += 1


def pooled_tps(rs):
    return sum(r["tokens"] for r in rs) / sum(r["step_sum"] for r in rs)


def mb(x):
    return f"{x / 1e6:.1f}"


def show_cmd(names):
    """The exact mpirun command of each run (round 1; later rounds repeat it), with the work dir as $WORK."""
    print(f"commands (exact, from runs/*/cmd; WORK={a.work}):")
    for n in names:
        p = os.path.join(a.work, "runs", n, "cmd")
        if os.path.exists(p):
            print(f"  [{n}] " + open(p).read().strip().replace(a.work, "$WORK"))


def loads(rs):
    return " ".join(r["load_before"] for r in rs)


if a.section == "scaling":
    begin("train-scaling")
    print(f"2 ranks × {a.threads} thread vs 1 rank × {a.threads} thread, same per-rank micro-batch, one micro-step per "
          f"step; steps after the first {a.warmup} measured. tokens/s of a run = global-batch tokens / its median "
          "step_s; a round = one 1-rank and one 2-rank run back to back (alternating which goes first). Columns: "
          "median over rounds (min–max). The target is judged on the median of the per-round ratios; pooled = "
          "all measured steps of all rounds together (Σ tokens / Σ step_s, 2 ranks over 1 rank).")
    print()
    rows, names = [], []
    for z in (0, 1, 2):
        r1s, r2s = rounds(f"s1z{z}"), rounds(f"s2z{z}")
        names += [f"s1z{z}", f"s2z{z}"]
        if not r1s or len(r1s) != len(r2s):
            continue
        ratios = [r2["tps"] / r1["tps"] for r1, r2 in zip(r1s, r2s)]
        m = med(ratios)
        pooled = pooled_tps(r2s) / pooled_tps(r1s)
        rows.append([z, len(ratios), mr([r["tps"] for r in r1s], "{:.0f}"), mr([r["tps"] for r in r2s], "{:.0f}"),
                     " ".join(f"{x:.2f}" for x in ratios), f"**{m:.2f}x** ({min(ratios):.2f}–{max(ratios):.2f})",
                     f"{med(r['tps'] for r in r2s) / med(r['tps'] for r in r1s):.2f}x", f"{pooled:.2f}x",
                     f"≥ {SCALING_TARGET}x", met(m >= SCALING_TARGET), f"{loads(r1s)} / {loads(r2s)}"])
        summary(f"trainer, 2 ranks vs 1 rank (1 thread each), ZeRO-{z}", "`tools/bench/train.sh scaling`",
                f"≥ {SCALING_TARGET}x", f"{m:.2f}x (per-round {min(ratios):.2f}–{max(ratios):.2f}x, {len(ratios)} rounds; "
                f"pooled {pooled:.2f}x)", m >= SCALING_TARGET)
    print(table(["ZeRO", "rounds", "1 rank tok/s", "2 ranks tok/s", "per-round ratios", "median ratio (range)",
                 "ratio of medians", "pooled ratio", "target", "met?", "load before 1r / 2r runs"], rows))
    print()

    # The machine's own limits, measured in the same invocation.
    def gf(f):
        p = os.path.join(a.work, f)
        return json.loads(open(p).read().splitlines()[0])["gflops"] if os.path.exists(p) else None
    probe = []
    c1, c2a, c2b = gf("ceiling_1.jsonl"), gf("ceiling_2a.jsonl"), gf("ceiling_2b.jsonl")
    s1, s2 = rounds("s1z0"), rounds("s2z0")
    if c1 and c2a and c2b:
        ceil = (c2a + c2b) / c1
        probe.append(["fp32 1024³ matmul, 2 concurrent processes / 1 process (train_peak.py, median of 3 windows each)",
                      f"{c2a:.1f} + {c2b:.1f} / {c1:.1f} GFLOP/s = **{ceil:.2f}x**"])
        if s1 and s2:
            probe.append(["ZeRO-0 median ratio / that ceiling (the trainer's parallel efficiency on this machine)",
                          f"{med(r2['tps'] / r1['tps'] for r1, r2 in zip(s1, s2)) / ceil:.2f}"])
    pa, pb = run("p1z0a"), run("p1z0b")
    if pa and pb and "tps" in pa and "tps" in pb and s1:
        both = pa["tps"] + pb["tps"]
        probe.append(["two independent 1-rank ZeRO-0 jobs at once (no communication) / one 1-rank job (median over rounds)",
                      f"{pa['tps']:.0f} + {pb['tps']:.0f} = {both:.0f} tok/s = **{both / med(r['tps'] for r in s1):.2f}x**"])
        if s2:
            probe.append(["2-rank ZeRO-0 (median over rounds) / that independent pair (what DDP costs here)",
                          f"{med(r['tps'] for r in s2) / both:.2f}"])
        names += ["p1z0a", "p1z0b"]
    if probe:
        print("Machine probes in the same invocation:")
        print()
        print(table(["probe", "result"], probe))
        print()

    # Load-independent estimate from CPU time, per round.
    cpu_rows = []
    for z in (0, 1, 2):
        pairs = [(r1, r2) for r1, r2 in zip(rounds(f"s1z{z}"), rounds(f"s2z{z}"))
                 if r1.get("cpu_s") and r2.get("cpu_s") and len(r2["cpu_s"]) == 2]
        if pairs:
            c1s = [r1["cpu_s"][0] for r1, _ in pairs]
            c2s = [statistics.mean(r2["cpu_s"].values()) for _, r2 in pairs]
            cpu_rows.append([z, mr(c1s, "{:.1f}"), mr(c2s, "{:.1f}"),
                             mr([2 * x / y for x, y in zip(c1s, c2s)], "{:.2f}", "x"),
                             mr([statistics.mean(r2["cpu_util"].values()) for _, r2 in pairs], "{:.2f}")])
    if cpu_rows:
        print("CPU time (GNU time user+sys per rank, whole run including start-up), median over rounds (min–max); "
              "CPU-time ratio = 2 × CPU s of the 1-rank run / CPU s per rank of the 2-rank run, a rough estimate "
              "valid only as far as waiting ranks spin (Open MPI's default):")
        print()
        print(table(["ZeRO", "1 rank CPU s", "2 ranks CPU s per rank", "CPU-time ratio", "2 ranks: cores used per rank"],
                    cpu_rows))
    end("train-scaling")

    # Where the time goes: per-phase medians.
    begin("train-phases")
    print(f"Seconds per step by phase: per run the median over its measured steps, then the median over rounds "
          "(min–max). forward and backward include no communication; drain = waiting for the bucket collectives "
          "after backward; comm_wait = all time blocked in communication (drain, all-gather, scalar all-reduces).")
    print()
    ph_rows, adj = [], []
    for z in (0, 1, 2):
        for n in (1, 2):
            rs = rounds(f"s{n}z{z}")
            if not rs:
                continue
            ph_rows.append([z, n] + [mr([r.get(k) for r in rs], "{:.3f}") if any(k in r for r in rs) else "—"
                                     for k in PHASES])
        r1s, r2s = rounds(f"s1z{z}"), rounds(f"s2z{z}")
        if r1s and r2s and all("forward_s" in r for r in r1s + r2s):
            # 2-rank step with its forward + backward at 1-rank speed: the trainer's cost without the machine's slowdown
            c1 = med(r["forward_s"] + r["backward_s"] for r in r1s)
            c2 = med(r["forward_s"] + r["backward_s"] for r in r2s)
            s1m, s2m = med(r["step_s"] for r in r1s), med(r["step_s"] for r in r2s)
            adj.append([z, f"{c2 - c1:+.3f}", f"{2 * s1m / s2m:.2f}x", f"{2 * s1m / (s2m - (c2 - c1)):.2f}x"])
    print(table(["ZeRO", "ranks"] + [k[:-2] for k in PHASES], ph_rows))
    if adj:
        print()
        print("Compute slowdown of two busy ranks (2-rank minus 1-rank forward + backward, medians) and the ratio "
              "with it taken out (2 × 1-rank step / (2-rank step − slowdown)):")
        print()
        print(table(["ZeRO", "forward + backward slowdown s", "2 × step ratio (medians)", "ratio without the slowdown"], adj))
    end("train-phases")
    show_cmd(names)

elif a.section == "comm":
    begin("train-comm")
    print(f"Communication not hidden behind backward, 2 ranks: per run Σ comm_wait_s / Σ step_s over its measured "
          f"steps (after the first {a.warmup}); median over rounds (min–max); pooled = all rounds' steps together; "
          "max = the worst single step. The target is judged on the median.")
    print()
    rows = []
    for z in (0, 1, 2):
        rs = rounds(f"s2z{z}")
        if not rs:
            continue
        fr = [r["comm_frac"] for r in rs]
        m = med(fr)
        pooled = sum(r["comm_sum"] for r in rs) / sum(r["step_sum"] for r in rs)
        rows.append([z, len(rs), mr([r["step_s"] for r in rs], "{:.3f}"), mr([r["comm_wait_s"] for r in rs], "{:.4f}"),
                     " ".join(f"{100 * x:.1f}" for x in fr), f"**{100 * m:.1f}%** ({100 * min(fr):.1f}–{100 * max(fr):.1f})",
                     f"{100 * pooled:.1f}%", f"{100 * max(r['comm_frac_max'] for r in rs):.1f}%",
                     f"≤ {100 * COMM_TARGET:.0f}%", met(m <= COMM_TARGET)])
        summary(f"communication not hidden behind backward, ZeRO-{z}", "`tools/bench/train.sh comm`",
                f"≤ {100 * COMM_TARGET:.0f}% of the step", f"{100 * m:.1f}% (per-round {100 * min(fr):.1f}–{100 * max(fr):.1f}%, "
                f"{len(fr)} rounds)", m <= COMM_TARGET)
    print(table(["ZeRO", "rounds", "step_s", "comm_wait_s", "per-round %", "median (range)", "pooled", "max step",
                 "target", "met?"], rows))
    end("train-comm")
    show_cmd([f"s2z{z}" for z in (0, 1, 2)])

elif a.section == "memory":
    begin("train-memory")
    print("Memory per rank, measured: peak RSS of every rank process (GNU time `%M`, i.e. ru_maxrss; max and min "
          "over ranks) and rank 0's own figures from its metrics: heap in use after each step (glibc mallinfo2 "
          "uordblks + hblkhd; median over steps 2.. (min–max)) and peak RSS at the last step (getrusage). "
          "\"printed\" is the optimizer state rank 0 prints, computed from buffer sizes (for reference only).")
    print()
    names, rows = [], []
    runs = {(n, z): run(f"m{n}z{z}") for n in (1, 2, 4) for z in (0, 1, 2)}
    for n in (1, 2, 4):
        z0 = runs[(n, 0)]
        for z in (0, 1, 2):
            r = runs[(n, z)]
            names.append(f"m{n}z{z}")
            if not r or not r["rss"]:
                rows.append([n, z] + ["(missing run)"] + [""] * 5)
                continue
            rss_max, rss_min = max(r["rss"].values()), min(r["rss"].values())
            d_rss = rss_max - max(z0["rss"].values()) if z0 and z0["rss"] else None
            d_heap = med(r["heap"]) - med(z0["heap"]) if r.get("heap") and z0 and z0.get("heap") else None
            rows.append([n, z, mb(r["opt_bytes"]) if "opt_bytes" in r else "?",
                         mr([x / 1e6 for x in r["heap"]], "{:.1f}") if r.get("heap") else "n/a",
                         f"{d_heap / 1e6:+.1f}" if d_heap is not None else "",
                         mb(r["rss_peak_rank0"]) if "rss_peak_rank0" in r else "n/a",
                         f"{mb(rss_max)} / {mb(rss_min)}", f"{d_rss / 1e6:+.1f}" if d_rss is not None else ""])
    print(table(["N", "ZeRO", "printed optimizer state MB", "heap in use after step MB (rank 0)", "heap − ZeRO-0 same N",
                 "peak RSS MB (rank 0, getrusage)", "peak RSS MB, max / min rank (GNU time)",
                 "peak RSS (max rank) − ZeRO-0 same N"], rows))
    print()
    # Is the sharded memory ∝ 1/N? Model d(N) = M(ZeRO-z, N) − M(ZeRO-0, N) = c + S/N (c: what the stage keeps
    # or drops regardless of N, S: what it shards). Two estimates of S, from N = 1→2 and N = 1→4, must agree.
    print("Is the sharded part ∝ 1/N? With d(N) = measured memory of ZeRO-z − that of ZeRO-0 at the same N "
          "(ZeRO-0 replicates everything; the difference cancels what grows with N, e.g. MPI buffers), d(N) = c + S/N "
          "where S is what the stage shards. S from N = 1→2 is (d(1) − d(2)) / (1 − 1/2), from N = 1→4 "
          "(d(1) − d(4)) / (1 − 1/4); ∝ 1/N holds when the two agree (target: within "
          f"{100 * MEM_TOLERANCE:.0f}%). S / P = sharded bytes per parameter.")
    print()
    fit_rows = []
    for label, get in (("heap in use (rank 0, median over steps)", lambda r: med(r["heap"]) if r and r.get("heap") else None),
                       ("peak RSS (max rank, GNU time)", lambda r: max(r["rss"].values()) if r and r["rss"] else None)):
        for z in (1, 2):
            d = {}
            for n in (1, 2, 4):
                mz, m0 = get(runs[(n, z)]), get(runs[(n, 0)])
                if mz is not None and m0 is not None:
                    d[n] = mz - m0
            if len(d) < 3:
                fit_rows.append([label, z, "(missing runs)"] + [""] * 6)
                continue
            s2, s4 = (d[1] - d[2]) / 0.5, (d[1] - d[4]) / 0.75
            agree = s4 / s2 if s2 else float("nan")
            ok = abs(agree - 1) <= MEM_TOLERANCE and s2 > 0
            fit_rows.append([label, z, " / ".join(f"{d[n] / 1e6:+.1f}" for n in (1, 2, 4)), f"{s2 / 1e6:.1f}", f"{s4 / 1e6:.1f}",
                             f"{s2 / P:.1f} / {s4 / P:.1f}", f"{agree:.3f}", f"within {100 * MEM_TOLERANCE:.0f}%", met(ok)])
            if label.startswith("heap"):
                summary(f"sharded memory per rank ∝ 1/N (N = 1, 2, 4), ZeRO-{z}", "`tools/bench/train.sh memory`",
                        f"∝ 1/N within {100 * MEM_TOLERANCE:.0f}%", f"heap: S from N=1→2 {s2 / 1e6:.1f} MB, from N=1→4 "
                        f"{s4 / 1e6:.1f} MB ({s2 / P:.1f} / {s4 / P:.1f} B per parameter; ratio {agree:.3f})", ok)
    print(table(["measure", "ZeRO", "d(1) / d(2) / d(4) MB", "S from N=1→2 MB", "S from N=1→4 MB", "S / P (B/param)",
                 "ratio of the two S", "target", "met?"], fit_rows))
    b4, z1, z2 = run("m2z2b4"), runs[(2, 1)], runs[(2, 2)]
    if b4 and b4["rss"] and z1 and z1["rss"] and z2 and z2["rss"]:
        print()
        h = lambda r: mr([x / 1e6 for x in r["heap"]], "{:.1f}") if r.get("heap") else "n/a"  # noqa: E731
        print(table(["N = 2", "heap in use after step MB (rank 0)", "peak RSS MB (max rank)"], [
            ["ZeRO-2, --bucket-mb 4", h(b4), mb(max(b4["rss"].values()))],
            ["ZeRO-2, 25 MB buckets", h(z2), mb(max(z2["rss"].values()))],
            ["ZeRO-1", h(z1), mb(max(z1["rss"].values()))]]))
        names.append("m2z2b4")
    end("train-memory")
    show_cmd(names)

elif a.section == "mfu":
    peaks = {}
    p = os.path.join(a.work, "peak.jsonl")
    if os.path.exists(p):
        for line in open(p):
            j = json.loads(line)
            peaks[(j["dtype"], j["n"])] = j
    fpts = sorted({round(r["fpt"]) for n in ("s1z0", "s2z0", "b1z0", "b2z0") for r in rounds(n) if "fpt" in r})
    begin("train-mfu")
    print("MFU: achieved model FLOP/s = the trainer's own FLOPs per token (metrics field `flops_per_token`, "
          "src/train/flops.cpp: 6 × matmul parameters + 12 × L × C × T; lookups not counted) × tokens/s, "
          "against a Python torch matmul peak (train_peak.py, 1 thread, median of 3 windows per size; the larger "
          "of the 1024³ and 2048³ medians) × ranks. Per run: medians over measured steps; then median over "
          "rounds (min–max). The trainer's own mfu uses its start-up probe (`peak_gflops`, per rank).")
    print()
    print("FLOPs per token (trainer): " + (", ".join(f"{x / 1e6:.1f} MFLOP" for x in fpts) if fpts else
                                         "n/a (binary without flops_per_token in its metrics)") +
          "; Python peak, 1 thread: " + ", ".join(f"{k[0]} {k[1]}³ {v['gflops']:.1f} "
                                                  f"({v.get('gflops_min', v['gflops']):.1f}–{v.get('gflops_max', v['gflops']):.1f})"
                                                  for k, v in sorted(peaks.items())) + " GFLOP/s")
    print()
    rows = []
    for name, prec, n in (("s1z0", "fp32", 1), ("s2z0", "fp32", 2), ("b1z0", "bf16", 1), ("b2z0", "bf16", 2)):
        rs = [r for r in rounds(name) if "fpt" in r]
        if not rs:
            rows.append([name, prec, n, "(missing run)"] + [""] * 6)
            continue
        ach = [r["fpt"] * r["tps"] / 1e9 for r in rs]
        pk = max((v["gflops"] for k, v in peaks.items() if k[0] == prec), default=float("nan")) * n * a.threads
        mfu_py = [x / pk for x in ach]
        rows.append([name, prec, n, len(rs), mr([r["tps"] for r in rs], "{:.0f}"),
                     mr([100 * r["mfu"] for r in rs], "{:.1f}", "%"),
                     mr([r.get("peak_gflops") for r in rs], "{:.1f}"), mr(ach, "{:.1f}"), f"{pk:.1f}",
                     "**" + mr([100 * x for x in mfu_py], "{:.1f}", "%") + "**"])
        summary(f"MFU vs Python torch matmul peak, {prec}, {n} rank{'s' if n > 1 else ''}", "`tools/bench/train.sh mfu`",
                "reported", f"{100 * med(mfu_py):.1f}% (trainer's own mfu {100 * med(r['mfu'] for r in rs):.1f}%)", None)
    print(table(["run", "precision", "ranks", "rounds", "tok/s", "trainer mfu", "trainer's peak GFLOP/s per rank",
                 "achieved GFLOP/s", "Python peak × ranks", "MFU vs Python peak"], rows))
    end("train-mfu")
    show_cmd(["s1z0", "s2z0", "b1z0", "b2z0"])
