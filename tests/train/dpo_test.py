#!/usr/bin/python3
"""--objective dpo (issue 11) as real processes. parity_*: the trainer against an independent PyTorch DPO loop
(Debian python3-torch; tests/model/reference.py's model, no project code): per-step loss, rewards/logps metrics
and gradient norm for a few AdamW steps on the same weights and pairs, each --dpo-loss, full fine-tuning (a
frozen reference copy) and LoRA (the reference = the base with the adapter disabled). ranks: 1, 2, 4 ranks x
ZeRO-0/2 (and micro-batch splits) give the same DPO loss at every step. errors: what --objective refuses.
Usage: dpo_test.py CASE   (exit 77 = skipped)"""
import json
import math
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_test import MPI, PREP, SRC, TRAIN, close, make_model, small_cfg, train_lines  # noqa: E402
from harness import run, run_case, run_fails  # noqa: E402

sys.path.insert(0, os.path.join(SRC, "tests", "model"))

# 8 pairs (the whole train split is one global batch, so the sampler's order cannot matter).
PAIRS = [("Q: 2+2?\nA:", " 4", " 5, I think"), ("Name a color:", " blue", " seven"),
         ("Say hi.", " Hi there!", " no"), ("Capital of France?", " Paris", " Lyon or so"),
         ("Count to 3:", " 1 2 3", " 1 2"), ("Opposite of hot:", " cold", " warm-ish"),
         ("Spell cat:", " c-a-t", " k-a-t"), ("Is ice cold?", " Yes.", " Maybe not")]
OPTS = {"steps": 3, "lr": 2e-3, "min_lr": 2e-4, "warmup": 1, "wd": 0.1, "clip": 1.0}
METRICS = ["rewards/chosen", "rewards/rejected", "rewards/accuracy", "rewards/margin", "logps/chosen", "logps/rejected"]
LOSSES = [("sigmoid", 0.1, 0.0), ("sigmoid", 0.2, 0.1), ("robust", 0.1, 0.2), ("hinge", 0.5, 0.0), ("ipo", 0.1, 0.0),
          ("simpo", 2.0, 0.0), ("simpo", 2.0, 0.1), ("orpo", 0.1, 0.0)]
SIMPO_GAMMA = 0.8  # not the default 0.5, so the option is seen to reach the loss
REFERENCE_FREE = ("simpo", "orpo")
# --ref-dtype bf16 vs fp32 (t_ref_bf16): worst differences measured over its 3 steps, with headroom (see there).
# Measured: loss 2.8e-4, grad norm 4.2e-4 relative, rewards within 1.4e-4 of beta x |logps| (the reference's
# log-probs move by ~1e-4 relative when its weights are rounded to bf16). Bound: bf16's unit roundoff 2^-9.
BF16_REF_TOL = dict.fromkeys(["loss", "grad_norm", "rewards/chosen", "rewards/rejected", "rewards/margin"], 2 ** -9)


def make_pairs(tmp):
    """The pairs as a byte-tokenized preference folder; returns [(chosen, chosen_mask, rejected, rejected_mask)]
    as torch tensors, read back with h5py in file order."""
    import h5py
    import torch
    with open(f"{tmp}/pairs.jsonl", "w") as f:
        for p, c, r in PAIRS:
            f.write(json.dumps({"prompt": p, "chosen": c, "rejected": r}) + "\n")
    run([PREP, "--input", f"{tmp}/pairs.jsonl", "--output", f"{tmp}/data", "--tokenizer", "byte", "--format",
         "preference", "--val-fraction", "0", "--max-seq-len", "64", "--quiet"])
    m = json.load(open(f"{tmp}/data/manifest.json"))
    out = []
    for s in m["shards"]:
        with h5py.File(f"{tmp}/data/{s['file']}", "r") as h:
            tok, off, mask = h["tokens"][:], h["offsets"][:], h["loss_mask"][:]
        seq = [(torch.tensor(tok[a:b], dtype=torch.long), torch.tensor(mask[a:b], dtype=torch.float32))
               for a, b in zip(off[:-1], off[1:])]
        out += [(*seq[i], *seq[i + 1]) for i in range(0, len(seq), 2)]
    assert len(out) == len(PAIRS), len(out)
    return out


def seq_logp(cfg, W, ids, mask, lora=None):
    """Sum of log p(token) over the target tokens (mask 1, position >= 1), and their count."""
    import torch
    from reference import forward
    logits = forward(cfg, W, ids[None], lora=lora)[0].float()
    lp = torch.log_softmax(logits[:-1], -1).gather(1, ids[1:, None])[:, 0]
    return (lp * mask[1:]).sum(), mask[1:].sum()


def pair_losses(kind, beta, ls, logits, pc=None, pr=None):
    """TRL DPOTrainer's per-pair losses (SimPO as TRL's CPOTrainer, ORPO per pair as its paper), written out
    here independently of the trainer; simpo and orpo take the policy's averaged log-probs pc, pr."""
    import torch
    import torch.nn.functional as F
    if kind == "simpo":
        z = beta * (pc - pr) - SIMPO_GAMMA
        return -F.logsigmoid(z) * (1 - ls) - F.logsigmoid(-z) * ls
    if kind == "orpo":
        log_odds = (pc - pr) - (torch.log1p(-torch.exp(pc)) - torch.log1p(-torch.exp(pr)))
        return -pc - beta * F.logsigmoid(log_odds)
    if kind == "sigmoid":
        return -F.logsigmoid(beta * logits) * (1 - ls) - F.logsigmoid(-beta * logits) * ls
    if kind == "robust":
        return (-F.logsigmoid(beta * logits) * (1 - ls) + F.logsigmoid(-beta * logits) * ls) / (1 - 2 * ls)
    if kind == "hinge":
        return (1 - beta * logits).clamp_min(0)
    if kind == "ipo":
        return (logits - 1 / (2 * beta)) ** 2
    raise ValueError(kind)


def trainable(W0, lora0):
    """The reference loop's weights: (W, lora, params) for full fine-tuning (every weight trained) or LoRA
    (the base fixed, the adapters' A and B trained), each a fresh leaf copy of the starting values."""
    if lora0 is None:
        W = {k: v.clone().requires_grad_(True) for k, v in W0.items()}
        return W, None, list(W.values())
    lora = {m: (A.clone().requires_grad_(True), B.clone().requires_grad_(True), s) for m, (A, B, s) in lora0.items()}
    return W0, lora, [t for A, B, _ in lora.values() for t in (A, B)]


def reference_adamw(params, o):
    """The trainer's AdamW: weight decay on matrices only, betas (0.9, 0.95), eps 1e-8."""
    import torch
    return torch.optim.AdamW([{"params": [p for p in params if p.dim() >= 2], "weight_decay": o["wd"]},
                              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}],
                             lr=o["lr"], betas=(0.9, 0.95), eps=1e-8)


def lr_at(s, o):
    """The trainer's schedule at step s: linear warmup, then cosine to min_lr."""
    lr, min_lr, warmup, steps = o["lr"], o["min_lr"], o["warmup"], o["steps"]
    if s < warmup:
        return lr * (s + 1) / warmup
    return min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * min(1.0, (s - warmup) / (steps - warmup))))


def torch_dpo(cfg, W0, pairs, kind, beta, ls, lora0=None):
    """An independent DPO loop: the reference is W0 (no adapter); the policy W0 trained whole, or W0 frozen plus
    `lora0` ({module: (A, B, scale)}) trained. Mean loss over all pairs, clip_grad_norm_, torch.optim.AdamW
    (decay on >= 2-D tensors), linear warmup then cosine. IPO: log-probs averaged over response tokens (TRL).
    simpo/orpo: no reference. Returns per step {"loss", "grad_norm", METRICS...}."""
    import torch
    o = OPTS
    with torch.no_grad():
        ref = [[seq_logp(cfg, W0, ids, m) for ids, m in ((c, cm), (r, rm))] for c, cm, r, rm in pairs]
    W, lora, params = trainable(W0, lora0)
    opt = reference_adamw(params, o)
    out = []
    for s in range(o["steps"]):
        for g in opt.param_groups:
            g["lr"] = lr_at(s, o)
        opt.zero_grad()
        pol = [[seq_logp(cfg, W, ids, m, lora) for ids, m in ((c, cm), (r, rm))] for c, cm, r, rm in pairs]
        norm = (lambda lp, n: lp / n) if kind in ("ipo", *REFERENCE_FREE) else (lambda lp, n: lp)
        pc = torch.stack([norm(*p[0]) for p in pol])
        pr = torch.stack([norm(*p[1]) for p in pol])
        if kind in REFERENCE_FREE:  # no reference: rewards are beta x the averaged log-probs (TRL)
            rc = rr = torch.zeros_like(pc)
        else:
            rc = torch.stack([norm(*p[0]) for p in ref])
            rr = torch.stack([norm(*p[1]) for p in ref])
        loss = pair_losses(kind, beta, ls, (pc - pr) - (rc - rr), pc, pr).mean()
        loss.backward()
        gn = float(torch.nn.utils.clip_grad_norm_(params, o["clip"]))
        with torch.no_grad():
            ch, rj = beta * (pc - rc), beta * (pr - rr)
            row = {"loss": float(loss), "grad_norm": gn, "rewards/chosen": float(ch.mean()),
                   "rewards/rejected": float(rj.mean()), "rewards/accuracy": float((ch > rj).float().mean()),
                   "rewards/margin": float((ch - rj).mean()), "logps/chosen": float(pc.mean()),
                   "logps/rejected": float(pr.mean()),
                   # the size of what each mean averages: per-pair rewards (and margins), and log-probs
                   "scale": {"rewards/chosen": float(ch.abs().mean()), "rewards/rejected": float(rj.abs().mean()),
                             "rewards/margin": float((ch - rj).abs().mean()), "logps/chosen": float(pc.abs().mean()),
                             "logps/rejected": float(pr.abs().mean())}}
        out.append(row)
        opt.step()
    return out


def dpo_train(tmp, name, ranks, micro, kind, beta, ls, zero=0, extra=(), steps=None, env=None, ok=True, gb=8, eval_batches=0, precision="fp32"):
    o = dict(OPTS, steps=steps or OPTS["steps"])
    p = run(([*MPI, str(ranks)] if ranks > 1 else []) + [
        TRAIN, "--model", f"{tmp}/model", "--data", f"{tmp}/data", "--out", f"{tmp}/{name}", "--objective", "dpo",
        "--dpo-loss", kind, "--beta", str(beta), "--simpo-gamma", str(SIMPO_GAMMA), "--label-smoothing", str(ls), "--global-batch", str(gb),
        "--micro-batch", str(micro), "--zero", str(zero), "--seq-len", "64", "--steps", str(o["steps"]),
        "--lr", str(o["lr"]), "--min-lr", str(o["min_lr"]), "--warmup-steps", str(o["warmup"]), "--schedule",
        "cosine", "--weight-decay", str(o["wd"]), "--grad-clip", str(o["clip"]), "--bucket-mb", "0.02",
        "--metrics", f"{tmp}/{name}.jsonl", "--eval-batches", str(eval_batches), "--threads", "1", "--precision", precision, *extra], env=env, ok=ok)
    with open(f"{tmp}/{name}.log", "a") as f:
        f.write(p.stdout + p.stderr)
    if not ok:
        return p
    lines = train_lines(f"{tmp}/{name}.jsonl")
    assert len(lines) == o["steps"], lines
    return lines


def compare(got, ref, beta, what):
    """loss and grad norm to 1e-5 relative. Each mean of the metrics (rewards, margin, logps) to 1e-5 relative to
    the per-pair values it averages (mean_i |x_i|, the torch loop's "scale"): each mean is a sum of per-pair
    terms, and one that nearly cancels (LoRA ipo, step 1: rewards/chosen 7.3e-5 from per-pair rewards of 1.4e-2)
    has no relative error of its own in fp32 (torch's fp32 loop differs from its fp64 run by 1.9e-4 there).
    Never looser than 1e-5 of beta x |logps| (a reward is beta x a difference of two such sums). Before the
    first update of full fine-tuning the policy is the reference: every reward is 0 and must be exactly 0.
    Prints the worst errors."""
    close([l["loss"] for l in got], [r["loss"] for r in ref], 1e-5, f"{what}: loss")
    close([l["grad_norm"] for l in got], [r["grad_norm"] for r in ref], 1e-5, f"{what}: grad norm")
    worst = {}
    for i, (g, r) in enumerate(zip(got, ref)):
        logps = max(abs(r["logps/chosen"]), abs(r["logps/rejected"]))
        for k in METRICS:
            if k == "rewards/accuracy":
                tol = 0 if abs(r["rewards/margin"]) > 1e-4 else 1  # ties within rounding may count either way
            else:
                tol = 1e-5 * min(r["scale"][k], beta * logps if k.startswith("rewards/") else logps)
                if r["scale"][k] > 0:
                    worst[k] = max(worst.get(k, 0), abs(g[k] - r[k]) / r["scale"][k])
            assert abs(g[k] - r[k]) <= tol, f"{what}: step {i + 1}: {k} {g[k]} vs torch {r[k]} (tol {tol:.2e})"
    own = {k: max([abs(g[k] - r[k]) / abs(r[k]) for g, r in zip(got, ref) if r[k] != 0], default=0)
           for k in ("loss", "grad_norm", *worst)}
    print(f"{what}: worst relative errors over {len(got)} steps: loss {own['loss']:.1e}, grad_norm "
          f"{own['grad_norm']:.1e}; to the per-pair values " + ", ".join(f"{k} {v:.1e}" for k, v in worst.items()) +
          "; of the means themselves " + ", ".join(f"{k} {own[k]:.1e}" for k in worst))


def setup(tmp):
    import torch
    from reference import random_weights
    torch.set_num_threads(1)
    cfg = small_cfg()
    make_model(f"{tmp}/model")  # the same cfg, seed and scale as random_weights below
    return cfg, random_weights(cfg, 11, 0.05), make_pairs(tmp)


def t_parity_full(tmp):
    cfg, W0, pairs = setup(tmp)
    for kind, beta, ls in LOSSES:
        ref = torch_dpo(cfg, W0, pairs, kind, beta, ls)
        assert ref[-1]["rewards/margin"] > ref[0]["rewards/margin"], (kind, ref)  # training moves the margin
        name = f"{kind}_{ls}"
        got = dpo_train(tmp, name, 1, 4, kind, beta, ls)  # 2 micro-batches per step
        compare(got, ref, beta, f"full, {kind} beta {beta} ls {ls}")


def t_parity_lora(tmp):
    import torch
    from reference import linear_modules, param_shapes, write_peft_adapter
    cfg, W0, pairs = setup(tmp)
    # A non-zero adapter on every projection: the policy differs from the reference from step 1 on.
    r, alpha = 4, 8.0
    g = torch.Generator().manual_seed(99)
    shapes = param_shapes(cfg)
    lora = {}
    for m in linear_modules(cfg):
        rows, cols = shapes[m + ".weight"]
        lora[m] = (0.1 * torch.randn(r, cols, generator=g), 0.1 * torch.randn(rows, r, generator=g), alpha / r)
    write_peft_adapter(f"{tmp}/adapter", cfg, lora, r, alpha, False, sorted({m.rsplit(".", 1)[1] for m in lora}))
    for kind, beta, ls in LOSSES:
        ref = torch_dpo(cfg, W0, pairs, kind, beta, ls, lora)
        assert abs(ref[0]["rewards/margin"]) > 1e-3, ref  # the adapter is not a no-op at step 1
        got = dpo_train(tmp, f"lora_{kind}_{ls}", 1, 4, kind, beta, ls,
                        extra=["--method", "lora", "--adapter", f"{tmp}/adapter"])
        compare(got, ref, beta, f"LoRA, {kind} beta {beta} ls {ls}")


def t_ranks(tmp):
    """1, 2, 4 ranks x ZeRO-0/2 and micro-batch splits: the same DPO loss (and margin) at every step."""
    setup(tmp)
    base = dpo_train(tmp, "r1", 1, 8, "sigmoid", 0.1, 0.0)
    for ranks, micro, zero in ((1, 2, 2), (2, 4, 0), (2, 1, 2), (4, 2, 0), (4, 1, 2)):
        got = dpo_train(tmp, f"r{ranks}_{micro}_{zero}", ranks, micro, "sigmoid", 0.1, 0.0, zero=zero)
        what = f"{ranks} ranks micro {micro} ZeRO-{zero}"
        close([l["loss"] for l in got], [l["loss"] for l in base], 1e-5, what)
        close([l["rewards/margin"] for l in got[1:]], [l["rewards/margin"] for l in base[1:]], 1e-3, what + " margin")
    lora = ["--method", "lora", "--lora-targets", "all-linear", "--lora-r", "4"]
    base = dpo_train(tmp, "l1", 1, 8, "sigmoid", 0.1, 0.0, extra=lora)
    got = dpo_train(tmp, "l4", 4, 1, "sigmoid", 0.1, 0.0, zero=2, extra=lora)
    close([l["loss"] for l in got], [l["loss"] for l in base], 1e-5, "LoRA 4 ranks ZeRO-2")


def t_resume(tmp):
    """A DPO run stopped after its step-2 checkpoint and resumed (on 2 ranks: the data position counts pairs,
    not rank-local samples) continues with the uninterrupted run's losses; full and LoRA."""
    setup(tmp)
    for method in (["--method", "full"], ["--method", "lora", "--lora-targets", "all-linear", "--lora-r", "4"]):
        tag = method[1]
        extra = [*method, "--save-every", "2"]
        # global batch 4: 2 steps per pass over the 8 pairs, so the data position matters
        whole = dpo_train(tmp, f"whole_{tag}", 1, 2, "sigmoid", 0.1, 0.0, extra=extra, steps=5, gb=4)
        env = dict(os.environ, SHARDTUNE_TEST_FAIL="0:2")
        p = dpo_train(tmp, f"cut_{tag}", 1, 2, "sigmoid", 0.1, 0.0, extra=extra, steps=5, env=env, ok=False, gb=4)
        assert p.returncode != 0 and "injected failure" in p.stderr, p.stderr[-2000:]
        if tag == "full":  # another loss would continue a different run: refused, naming the option
            bad = dpo_train(tmp, f"cut_{tag}", 1, 2, "ipo", 0.1, 0.0, extra=extra, steps=5, ok=False, gb=4)
            assert bad.returncode != 0 and "cannot resume" in bad.stderr, bad.stderr[-2000:]
            assert "dpo-loss: sigmoid in the checkpoint, ipo now" in bad.stderr, bad.stderr[-2000:]
        again = dpo_train(tmp, f"cut_{tag}", 2, 1, "sigmoid", 0.1, 0.0, extra=extra, steps=5, gb=4)
        # the metrics file holds steps 1-2 of the first run, then the resumed run's 3-5
        assert [l["step"] for l in again] == [1, 2, 3, 4, 5], [l["step"] for l in again]
        close([l["loss"] for l in again], [l["loss"] for l in whole], 1e-5, f"{tag}: resumed vs uninterrupted")
        assert again[-1]["consumed_samples"] == 20, again[-1]


def t_precompute(tmp):
    """--precompute-ref gives the live reference's losses and metrics (full: frozen copy; LoRA: adapters off;
    computed on 2 ranks, each a share of the pairs); the table is kept in the checkpoint folder and a resumed
    run reuses it (and still continues the uninterrupted run's losses)."""
    setup(tmp)
    lora = ["--method", "lora", "--lora-targets", "all-linear", "--lora-r", "4"]
    for tag, extra, kind, ranks in (("full", [], "sigmoid", 1), ("full_ipo", [], "ipo", 1), ("lora", lora, "sigmoid", 2)):
        live = dpo_train(tmp, f"live_{tag}", 1, 4, kind, 0.1, 0.0, extra=extra)
        pre = dpo_train(tmp, f"pre_{tag}", ranks, 2, kind, 0.1, 0.0, extra=[*extra, "--precompute-ref"])
        log = open(f"{tmp}/pre_{tag}.log").read()
        assert "reference log-probs computed into" in log and "precomputed" in log, log[-2000:]
        assert os.path.isfile(f"{tmp}/pre_{tag}/checkpoints/reference_logps.safetensors")
        for k in ["loss", "grad_norm", *METRICS]:
            ref = [l[k] for l in live]
            tol = 1e-5 if k in ("loss", "grad_norm") else 1e-5 * max(1.0, max(abs(v) for v in ref))
            for i, (g, r) in enumerate(zip([l[k] for l in pre], ref)):
                assert abs(g - r) <= tol * (abs(r) if k in ("loss", "grad_norm") else 1), \
                    f"{tag}: step {i + 1}: {k} precomputed {g} vs live {r}"
    # resume (on 2 ranks): the table is read back, not recomputed
    extra = ["--precompute-ref", "--save-every", "2"]
    whole = dpo_train(tmp, "pw", 1, 2, "sigmoid", 0.1, 0.0, extra=extra, steps=5, gb=4)
    env = dict(os.environ, SHARDTUNE_TEST_FAIL="0:2")
    p = dpo_train(tmp, "pc", 1, 2, "sigmoid", 0.1, 0.0, extra=extra, steps=5, env=env, ok=False, gb=4)
    assert p.returncode != 0 and "injected failure" in p.stderr, p.stderr[-2000:]
    open(f"{tmp}/pc.log", "w").close()
    again = dpo_train(tmp, "pc", 2, 1, "sigmoid", 0.1, 0.0, extra=extra, steps=5, gb=4)  # rank 0 sends the table
    log = open(f"{tmp}/pc.log").read()
    assert "reference log-probs reused from" in log and "resuming from" in log, log[-2000:]
    close([l["loss"] for l in again], [l["loss"] for l in whole], 1e-5, "precomputed reference, resumed")


def t_eval(tmp):
    """Evaluation on the val split reports the loss and the same metrics (val_ prefixed): before training the
    policy is the reference (full), so the sigmoid loss is log 2 and every reward 0; --precompute-ref's val
    table gives the live reference's numbers at every evaluation; --precision bf16 runs (finite losses)."""
    import shutil
    setup(tmp)
    shutil.rmtree(f"{tmp}/data")
    run([PREP, "--input", f"{tmp}/pairs.jsonl", "--output", f"{tmp}/data", "--tokenizer", "byte", "--format",
         "preference", "--val-fraction", "0.4", "--max-seq-len", "64", "--seed", "3", "--quiet"])
    m = json.load(open(f"{tmp}/data/manifest.json"))
    n_val = sum(s["samples"] for s in m["shards"] if s["split"] == "val")
    assert n_val >= 2, m["shards"]

    def evals(name):
        return [json.loads(l) for l in open(f"{tmp}/{name}.jsonl") if json.loads(l)["type"] == "eval"]
    ev = ["--eval-every", "1"]
    dpo_train(tmp, "e_live", 1, 2, "sigmoid", 0.1, 0.0, extra=ev, gb=4, eval_batches=1)
    dpo_train(tmp, "e_pre", 2, 1, "sigmoid", 0.1, 0.0, extra=[*ev, "--precompute-ref"], gb=4, eval_batches=1)
    live, pre = evals("e_live"), evals("e_pre")
    assert [e["step"] for e in live] == [0, 1, 2, 3] == [e["step"] for e in pre], (live, pre)
    assert abs(live[0]["val_loss"] - math.log(2)) < 1e-6 and live[0]["val_rewards/margin"] == 0, live[0]
    assert live[0]["val_tokens"] == min(n_val, 4), live[0]  # pairs evaluated
    for a, b in zip(pre, live):
        for k in ["val_loss", *[f"val_{k}" for k in METRICS]]:
            assert abs(a[k] - b[k]) <= 1e-5 * max(1.0, abs(b[k])), (k, a, b)
    assert live[-1]["val_rewards/margin"] > 0, live[-1]  # training moved held-out pairs the chosen way
    bf = dpo_train(tmp, "e_bf16", 1, 2, "sigmoid", 0.1, 0.0, gb=4, precision="bf16")
    assert all(math.isfinite(l["loss"]) for l in bf) and abs(bf[0]["loss"] - math.log(2)) < 1e-3, bf
    assert reference_row(tmp, "e_bf16")["dtype"] == "bf16"  # --ref-dtype auto: bf16 when computing in bf16
    assert reference_row(tmp, "e_live")["dtype"] == "fp32"


def t_errors(tmp):
    """Pairs need --objective dpo; dpo needs pairs; --pack and bad loss options are refused by name."""
    from train_test import make_data
    setup(tmp)
    os.makedirs(f"{tmp}/seq")
    seq = make_data(f"{tmp}/seq", 40)
    base = [TRAIN, "--model", f"{tmp}/model", "--out", f"{tmp}/o", "--steps", "1", "--global-batch", "8"]

    def fails(args, *expect):
        run_fails(base + args, *expect)
        assert not os.path.exists(f"{tmp}/o/config.json")
    fails(["--data", f"{tmp}/data"], "this folder holds preference pairs", "--objective sft trains sequences",
          "train the pairs with --objective dpo")
    fails(["--data", seq, "--objective", "dpo"], "--objective dpo trains preference pairs", "--format preference")
    fails(["--data", f"{tmp}/data", "--objective", "dpo", "--pack"], "--pack with --objective dpo")
    fails(["--data", f"{tmp}/data", "--objective", "dpo", "--dpo-loss", "kto"], "unknown --dpo-loss 'kto'")
    fails(["--data", f"{tmp}/data", "--objective", "dpo", "--beta", "0"], "--beta must be positive")
    fails(["--data", f"{tmp}/data", "--objective", "dpo", "--dpo-loss", "hinge", "--label-smoothing", "0.1"],
          "--label-smoothing applies to")
    fails(["--data", f"{tmp}/data", "--objective", "dpo", "--dpo-loss", "orpo", "--label-smoothing", "0.1"],
          "--label-smoothing applies to")
    fails(["--data", f"{tmp}/data", "--objective", "rlhf"], "unknown --objective 'rlhf'")
    fails(["--data", f"{tmp}/data", "--objective", "dpo", "--dpo-loss", "simpo", "--precompute-ref"],
          "this loss uses no reference model")
    fails(["--data", seq, "--precompute-ref"], "--precompute-ref applies to --objective dpo only")
    # --ref-dtype where no reference copy exists: refused by name, not silently ignored
    fails(["--data", f"{tmp}/data", "--objective", "dpo", "--ref-dtype", "fp16"], "unknown --ref-dtype 'fp16'")
    fails(["--data", seq, "--ref-dtype", "bf16"], "--ref-dtype applies to --objective dpo only")
    fails(["--data", f"{tmp}/data", "--objective", "dpo", "--dpo-loss", "orpo", "--ref-dtype", "bf16"],
          "--ref-dtype bf16 with --dpo-loss orpo: this loss uses no reference model")
    for method in ("lora", "qlora"):
        fails(["--data", f"{tmp}/data", "--objective", "dpo", "--method", method, "--ref-dtype", "fp32"],
              f"--ref-dtype fp32 with --method {method}: the reference is the policy's own base", "--base-dtype bf16")


def reference_row(tmp, name):
    """The metrics file's "reference" row (the last one: a resumed run writes its own)."""
    rows = [json.loads(l) for l in open(f"{tmp}/{name}.jsonl") if json.loads(l)["type"] == "reference"]
    assert rows, f"{name}: no reference row"
    return rows[-1]


def t_ref_bf16(tmp):
    """--ref-dtype bf16 (full fine-tuning, 2 ranks): the frozen reference copy holds its matrices in bf16 (its
    bytes, in the log and the metrics' reference row, are what the model's shapes give: 2 per matrix element, 4
    per norm element, about half of fp32's) and its log-probs, summed in fp32, keep the loss and rewards within
    bf16's rounding of the fp32 reference's (measured). --precompute-ref with it gives the live bf16 reference's
    losses (1e-5); a checkpoint of an fp32-reference run resumes with --ref-dtype bf16 (a printed change)."""
    from reference import param_shapes
    cfg, _, _ = setup(tmp)
    shapes = param_shapes(cfg).values()
    fp32_bytes = 4 * sum(math.prod(s) for s in shapes)
    bf16_bytes = sum((2 if len(s) >= 2 else 4) * math.prod(s) for s in shapes)
    f32 = dpo_train(tmp, "rf32", 2, 2, "sigmoid", 0.1, 0.0, extra=["--ref-dtype", "fp32"])
    b16 = dpo_train(tmp, "rb16", 2, 2, "sigmoid", 0.1, 0.0, extra=["--ref-dtype", "bf16"])
    row = {"type": "reference", "step": 0, "reference": "copy"}
    assert reference_row(tmp, "rf32") == dict(row, dtype="fp32", bytes=fp32_bytes), reference_row(tmp, "rf32")
    assert reference_row(tmp, "rb16") == dict(row, dtype="bf16", bytes=bf16_bytes), reference_row(tmp, "rb16")
    assert bf16_bytes < 0.51 * fp32_bytes, (bf16_bytes, fp32_bytes)
    log = open(f"{tmp}/rb16.log").read()
    assert f"a frozen copy of --model, loaded once per rank: bf16 weights" in log and f"({bf16_bytes} bytes)" in log, log[-3000:]
    # The bf16 copy is the one used: before the first update the fp32 copy's rewards are exactly 0, the bf16 one's not.
    assert f32[0]["rewards/margin"] == 0 and b16[0]["rewards/margin"] != 0, (f32[0], b16[0])
    err = {k: max(abs(a[k] - b[k]) / (abs(b[k]) if k in ("loss", "grad_norm") else b["scale"])
                  for a, b in zip(b16, [dict(x, scale=0.1 * max(abs(x["logps/chosen"]), abs(x["logps/rejected"])))
                                        for x in f32]))
           for k in ("loss", "grad_norm", "rewards/chosen", "rewards/rejected", "rewards/margin")}
    print("bf16 vs fp32 reference, worst over 3 steps: loss, grad norm relative; rewards relative to beta x |logps|: " +
          ", ".join(f"{k} {v:.1e}" for k, v in err.items()))
    for k, tol in BF16_REF_TOL.items():
        assert err[k] <= tol, f"bf16 reference: {k} differs from the fp32 reference's by {err[k]:.2e} > {tol}"
    assert err["loss"] > 0, err  # the two really differ (else this test tests nothing)
    # --precompute-ref computes the table with the same bf16 copy: the live bf16 reference's losses
    pre = dpo_train(tmp, "pb16", 2, 2, "sigmoid", 0.1, 0.0, extra=["--ref-dtype", "bf16", "--precompute-ref"])
    assert "the pass's copy of --model in bf16" in open(f"{tmp}/pb16.log").read()
    assert reference_row(tmp, "pb16")["reference"] == "precomputed"
    close([l["loss"] for l in pre], [l["loss"] for l in b16], 1e-5, "precomputed bf16 reference vs live")
    # resume: a run checkpointed with the fp32 copy continues with the bf16 one (the reference is always
    # reloaded from --model; the change is printed)
    extra = ["--save-every", "2"]
    env = dict(os.environ, SHARDTUNE_TEST_FAIL="0:2")
    p = dpo_train(tmp, "cut", 1, 4, "sigmoid", 0.1, 0.0, extra=[*extra, "--ref-dtype", "fp32"], env=env, ok=False)
    assert p.returncode != 0 and "injected failure" in p.stderr, p.stderr[-2000:]
    again = dpo_train(tmp, "cut", 2, 2, "sigmoid", 0.1, 0.0, extra=[*extra, "--ref-dtype", "bf16"])
    log = open(f"{tmp}/cut.log").read()
    assert "resuming from" in log and "ref-dtype: fp32 in the checkpoint, bf16 now" in log, log[-3000:]
    assert reference_row(tmp, "cut")["dtype"] == "bf16"
    close([l["loss"] for l in again[:2]], [l["loss"] for l in f32[:2]], 1e-5, "steps 1-2 (fp32 reference)")
    close([again[2]["loss"]], [f32[2]["loss"]], BF16_REF_TOL["loss"], "step 3 resumed with the bf16 reference")


def t_reference_kinds(tmp):
    """Which reference each run holds, as the log says: a frozen copy (full), the base with adapters off
    (LoRA, QLoRA), none (simpo, orpo); every one trains."""
    setup(tmp)
    cases = [([], "sigmoid", "a frozen copy of --model"), (["--method", "lora"], "sigmoid", "adapters disabled"),
             (["--method", "qlora", "--lora-targets", "all-linear"], "ipo", "adapters disabled"),
             ([], "simpo", "none (reference-free"), (["--method", "lora"], "orpo", "none (reference-free")]
    for i, (extra, kind, says) in enumerate(cases):
        lines = dpo_train(tmp, f"k{i}", 1, 4, kind, 0.1, 0.0, extra=extra, steps=2)
        log = open(f"{tmp}/k{i}.log").read()
        assert says in log, (extra, kind, log[-2000:])
        kind_row = {"a frozen copy": "copy", "adapters disabled": "adapters_disabled", "none (": "none"}
        assert reference_row(tmp, f"k{i}")["reference"] == next(v for k, v in kind_row.items() if k in says)
        assert all(math.isfinite(l["loss"]) for l in lines), lines


if __name__ == "__main__":
    sys.exit(run_case(globals(), "dpo"))
