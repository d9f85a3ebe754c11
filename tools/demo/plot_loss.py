#!/usr/bin/python3
"""Draws train and validation loss curves from shardtune --metrics JSONL files into one PNG, one panel
per run. Usage: plot_loss.py OUT.png [--title TEXT] [--note TEXT] NAME=METRICS.jsonl [NAME=METRICS.jsonl ...]
(--title: the figure title, default "shardtune: loss curves"; --note: a second title line)"""
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def read(path):
    train, val = [], []
    for line in open(path):
        if not line.strip():
            continue
        j = json.loads(line)
        if j.get("type") == "train":
            train.append((j["step"], j["loss"]))
        elif j.get("type") == "eval":
            val.append((j["step"], j["val_loss"]))
    return train, val


def smooth(ys, k):
    out, acc = [], []
    for y in ys:
        acc.append(y)
        if len(acc) > k:
            acc.pop(0)
        out.append(sum(acc) / len(acc))
    return out


def main():
    out, args, note, heading = sys.argv[1], sys.argv[2:], None, "shardtune: loss curves"
    while args[:1] in (["--note"], ["--title"]):
        if args[0] == "--note":
            note = args[1]
        else:
            heading = args[1]
        args = args[2:]
    if not args or any("=" not in a for a in args):
        sys.exit("usage: plot_loss.py OUT.png [--title TEXT] [--note TEXT] NAME=METRICS.jsonl [...]")
    runs = [a.split("=", 1) for a in args]
    for _, path in runs:
        if not os.path.isfile(path):
            sys.exit(f"plot_loss: {path}: no such metrics file (shardtune --metrics FILE writes one)")
    fig, axes = plt.subplots(1, len(runs), figsize=(6.5 * len(runs), 4.6), squeeze=False)
    for ax, (title, path) in zip(axes[0], runs):
        train, val = read(path)
        if train:
            s, l = zip(*train)
            ax.plot(s, l, color="tab:blue", alpha=0.25, linewidth=0.8, label="train loss (per step)")
            ax.plot(s, smooth(l, max(1, len(l) // 40)), color="tab:blue", linewidth=1.8,
                    label="train loss (moving average)")
        if val:
            s, l = zip(*val)
            ax.plot(s, l, "o-", color="tab:orange", linewidth=1.8, markersize=4, label="validation loss")
            ax.annotate(f"{l[-1]:.2g}", (s[-1], l[-1]), textcoords="offset points", xytext=(-4, 10),
                        color="tab:orange", ha="right")
        ys = [y for _, y in train + val if y > 0]
        log = bool(ys) and max(ys) / min(ys) > 20
        if log:
            ax.set_yscale("log")
        ax.set_title(title)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("cross-entropy (nats per trained token)" + (", log scale" if log else ""))
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.suptitle(heading + (f"\n{note}" if note else ""))
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(f"plot_loss: wrote {out}")


if __name__ == "__main__":
    main()
