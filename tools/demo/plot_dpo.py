#!/usr/bin/python3
"""Draws a DPO run's curves from its shardtune --metrics JSONL into one PNG: the loss (train, and val when
evaluated), and the rewards (rewards/chosen, rewards/rejected, rewards/margin) with rewards/accuracy.
Usage: plot_dpo.py OUT.png METRICS.jsonl [--title TEXT] [--note TEXT]"""
import argparse
import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("metrics")
    ap.add_argument("--title", default="shardtune: DPO")
    ap.add_argument("--note")
    a = ap.parse_args()
    rows = [json.loads(l) for l in open(a.metrics) if l.strip()]
    tr = [r for r in rows if r.get("type") == "train"]
    ev = [r for r in rows if r.get("type") == "eval"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.6))
    s = [r["step"] for r in tr]
    ax1.plot(s, [r["loss"] for r in tr], color="tab:blue", label="train loss")
    if ev:
        ax1.plot([r["step"] for r in ev], [r["val_loss"] for r in ev], "o-", color="tab:orange", label="val loss")
        ax1.set_xlabel("optimizer step"); ax1.set_ylabel("loss (--dpo-loss of the run)"); ax1.grid(alpha=0.3); ax1.legend()
    ax1.set_title("loss")
    for k, c in (("rewards/margin", "tab:green"), ("rewards/chosen", "tab:blue"), ("rewards/rejected", "tab:red")):
        ax2.plot(s, [r[k] for r in tr], color=c, label=k)
    ax2.set_xlabel("optimizer step"); ax2.set_ylabel("reward (docs/PREFERENCE.md, Metrics)"); ax2.grid(alpha=0.3)
    ax3 = ax2.twinx()
    ax3.plot(s, [r["rewards/accuracy"] for r in tr], color="gray", alpha=0.5, label="rewards/accuracy (right)")
    ax3.set_ylim(-0.05, 1.05); ax3.set_ylabel("accuracy")
    h1, l1 = ax2.get_legend_handles_labels(); h2, l2 = ax3.get_legend_handles_labels()
    ax2.legend(h1 + h2, l1 + l2, loc="best"); ax2.set_title("rewards and margin")
    fig.suptitle(a.title + (f"\n{a.note}" if a.note else ""))
    fig.tight_layout()
    fig.savefig(a.out, dpi=110)
    print(f"plot_dpo: wrote {a.out}")


if __name__ == "__main__":
    main()
