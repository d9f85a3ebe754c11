#!/usr/bin/python3
"""Matmul peak of this machine with Python torch (Debian python3-torch), independent of shardtune: the
reference for the trainer's MFU. Square n x n matmuls, fp32 and bf16, `--trials` timed windows each:
"gflops" is their median, "gflops_min"/"gflops_max" the range.
Run with OPENBLAS_CORETYPE=SkylakeX (tools/bench/train.sh sets it).

usage: train_peak.py [--threads 1] [--sizes 1024,2048] [--seconds 0.5] [--trials 3] [--dtypes fp32,bf16]
prints one JSON line per (dtype, size): {"dtype", "n", "threads", "gflops", "gflops_min", "gflops_max"}
"""
import argparse
import json
import statistics
import time

import torch

ap = argparse.ArgumentParser()
ap.add_argument("--threads", type=int, default=1)
ap.add_argument("--sizes", default="1024,2048")
ap.add_argument("--seconds", type=float, default=0.5)
ap.add_argument("--trials", type=int, default=3)
ap.add_argument("--dtypes", default="fp32,bf16")
a = ap.parse_args()
torch.set_num_threads(a.threads)
torch.manual_seed(0)

with torch.no_grad():
    for name in a.dtypes.split(","):
        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[name]
        for n in map(int, a.sizes.split(",")):
            x, y = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
            torch.mm(x, y)  # warm-up
            trials = []
            for _ in range(a.trials):
                reps, t0 = 0, time.perf_counter()
                while True:
                    torch.mm(x, y)
                    reps += 1
                    el = time.perf_counter() - t0
                    if el >= a.seconds:
                        break
                trials.append(2.0 * n ** 3 * reps / el / 1e9)
            print(json.dumps({"dtype": name, "n": n, "threads": a.threads, "gflops": round(statistics.median(trials), 2),
                              "gflops_min": round(min(trials), 2), "gflops_max": round(max(trials), 2)}), flush=True)
