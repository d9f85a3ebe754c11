#!/usr/bin/env python3
"""Throughput of a trainer run from its --metrics JSONL: the median tokens/s of the steady steps (the first
WARMUP steps left out: CUDA context, allocator growth, cuBLAS heuristics), the model FLOPs per token the
trainer wrote (src/train/flops.cpp: 6 * (trained params - lookup tables) + 12 * layers * hidden * row
length), and MFU against the GPU's dense bf16 peak from the table below (nvidia-smi's name).
Usage: bench_report.py METRICS.jsonl GPU_NAME [WARMUP] [TARGET_MFU]   (prints text, then JSON on the last line)"""
import json
import statistics
import sys

# Dense (no sparsity) bf16 tensor-core peaks, TFLOP/s, from the vendors' data sheets (SXM parts).
PEAKS = [("H200", 989.0), ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0), ("GH200", 989.0),
         ("B200", 2250.0), ("B100", 1750.0), ("A100", 312.0), ("L40S", 362.0), ("L4", 121.0), ("A10", 125.0)]

metrics, gpu = sys.argv[1], sys.argv[2]
warmup = int(sys.argv[3]) if len(sys.argv) > 3 else 3
target = float(sys.argv[4]) if len(sys.argv) > 4 else 0.45
steps = [l for l in map(json.loads, open(metrics)) if l.get("type") == "train"]
if len(steps) <= warmup:
    print(json.dumps({"error": f"{len(steps)} steps, need more than the {warmup} warm-up steps"}))
    sys.exit(1)
steady = steps[warmup:]
tps = statistics.median(s["tokens_per_s"] for s in steady)
fpt = steady[-1]["flops_per_token"]
peak = next((p for name, p in PEAKS if name.lower() in gpu.lower()), None)
mfu = fpt * tps / (peak * 1e12) if peak else None
print(f"  steps {len(steps)} (median of steps {warmup + 1}-{len(steps)}): {tps:,.0f} tokens/s, "
      f"{fpt / 1e9:.2f} GFLOP/token, {fpt * tps / 1e12:.1f} TFLOP/s")
if peak:
    print(f"  MFU {100 * mfu:.1f}% of the {gpu} dense bf16 peak {peak:.0f} TFLOP/s "
          f"(target {100 * target:.0f}%: {'met' if mfu >= target else 'NOT met'})")
else:
    print(f"  no bf16 peak known for '{gpu}': add it to PEAKS in {sys.argv[0]}")
print(json.dumps({"steps": len(steps), "warmup": warmup, "tokens_per_s": tps, "flops_per_token": fpt,
                  "tflops": fpt * tps / 1e12, "gpu": gpu, "peak_tflops": peak, "mfu": mfu, "target_mfu": target,
                  "trainer_mfu_field": steady[-1].get("mfu"), "step_tokens": steady[-1].get("tokens")}))
