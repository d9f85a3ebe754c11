#!/usr/bin/python3
"""--objective reward (issue 11: the reward model) as real processes. parity_*: the trainer against an
independent PyTorch reward-model loop (Debian python3-torch; tests/model/reference.py's model, no project code):
per-step Bradley-Terry loss (with and without --center-rewards), rewards metrics and gradient norm for a few
AdamW steps, full fine-tuning and LoRA (the head trained in full beside the adapters). ranks: 1, 2, 4 ranks x
ZeRO-0/2 give the same loss at every step. save_load: the saved folders (HF LlamaForSequenceClassification,
PEFT SEQ_CLS adapter with the head), a saved model loaded back continues from its head, resume = uninterrupted.
eval_errors: val_ metrics on the val split; refusals. score: shardtune-score's rewards of the pairs = torch's on the saved weights (full, and base + LoRA adapter).
Usage: reward_test.py CASE   (exit 77 = skipped)"""
import json
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_test import BIN, MPI, SRC, TRAIN, close, make_model, small_cfg, train_lines  # noqa: E402
from harness import run, run_case, run_fails  # noqa: E402
from dpo_test import OPTS, lr_at, make_pairs, reference_adamw, trainable  # noqa: E402  (the same 8 pairs and loop)

sys.path.insert(0, os.path.join(SRC, "tests", "model"))

METRICS = ["rewards/chosen", "rewards/rejected", "rewards/accuracy", "rewards/margin"]
CENTERS = (0.0, 0.05)
# The parity runs' optimizer: dpo_test's, at a quarter of its learning rate. At 2e-3 AdamW's first steps move
# every weight by ~lr (4% of these weights) and the rewards jump from about +3 to -7..-13 in one step: the
# run is so ill-conditioned that fp32 rounding alone moves step 3 by 2.2e-5 in loss and 1.7e-5 in rewards
# (the torch loop below in fp32 vs the same loop in fp64, measured), for torch as for us, so no fp32
# implementation could meet 1e-5 there. At 5e-4 the same loop in fp32 and fp64 agree within 3.4e-6.
PARITY = dict(OPTS, lr=5e-4, min_lr=5e-5)


def last_index(mask):
    """The last response token of a row: the last position with mask 1."""
    return int(mask.nonzero()[-1])


def reward(cfg, W, score, ids, mask, lora=None):
    """score . (final hidden state at the last response token): the reference model's head is any [V', C]
    matrix, so the [1, C] score head in its place gives the reward at every position."""
    from reference import forward
    return forward(cfg, {**W, "lm_head.weight": score}, ids[None], lora=lora)[0, last_index(mask), 0].float()


def torch_reward(cfg, W0, score0, pairs, center, lora0=None, o=PARITY):
    """An independent reward-model loop (TRL RewardTrainer's loss): mean over pairs of -logsigmoid(rc - rr),
    plus center x mean((rc + rr)^2); clip_grad_norm_, torch.optim.AdamW (decay on >= 2-D tensors, the head
    included), linear warmup then cosine. Full: every weight and the head; LoRA: the adapters and the head."""
    import torch
    import torch.nn.functional as F
    score = score0.clone().requires_grad_(True)
    W, lora, params = trainable(W0, lora0)
    params = params + [score]
    opt = reference_adamw(params, o)
    out = []
    for s in range(o["steps"]):
        for g in opt.param_groups:
            g["lr"] = lr_at(s, o)
        opt.zero_grad()
        rc = torch.stack([reward(cfg, W, score, c, cm, lora) for c, cm, _, _ in pairs])
        rr = torch.stack([reward(cfg, W, score, r, rm, lora) for _, _, r, rm in pairs])
        loss = -F.logsigmoid(rc - rr).mean()
        if center:
            loss = loss + center * torch.mean((rc + rr) ** 2)
        loss.backward()
        gn = float(torch.nn.utils.clip_grad_norm_(params, o["clip"]))
        with torch.no_grad():
            out.append({"loss": float(loss), "grad_norm": gn, "rewards/chosen": float(rc.mean()),
                        "rewards/rejected": float(rr.mean()), "rewards/accuracy": float((rc > rr).float().mean()),
                        "rewards/margin": float((rc - rr).mean()),
                        # the size of what each mean averages: the per-pair rewards and margins
                        "scale": {"rewards/chosen": float(rc.abs().mean()), "rewards/rejected": float(rr.abs().mean()),
                                  "rewards/margin": float((rc - rr).abs().mean())}})
        opt.step()
    return out


def rm_train(tmp, name, ranks, micro, center=0.0, zero=0, extra=(), steps=None, env=None, ok=True, gb=8,
             model=None, eval_batches=0, opts=OPTS, lr=None):
    o = dict(opts, steps=steps or opts["steps"], **({"lr": lr, "min_lr": lr / 10} if lr else {}))
    p = run(([*MPI, str(ranks)] if ranks > 1 else []) + [
        TRAIN, "--model", model or f"{tmp}/model", "--data", f"{tmp}/data", "--out", f"{tmp}/{name}",
        "--objective", "reward", "--center-rewards", str(center), "--global-batch", str(gb),
        "--micro-batch", str(micro), "--zero", str(zero), "--seq-len", "64", "--steps", str(o["steps"]),
        "--lr", str(o["lr"]), "--min-lr", str(o["min_lr"]), "--warmup-steps", str(o["warmup"]), "--schedule",
        "cosine", "--weight-decay", str(o["wd"]), "--grad-clip", str(o["clip"]), "--bucket-mb", "0.02",
        "--metrics", f"{tmp}/{name}.jsonl", "--eval-batches", str(eval_batches), "--threads", "1", "--precision", "fp32",
        *extra], env=env, ok=ok)
    with open(f"{tmp}/{name}.log", "a") as f:
        f.write(p.stdout + p.stderr)
    if not ok:
        return p
    lines = train_lines(f"{tmp}/{name}.jsonl")
    assert len(lines) == o["steps"], lines
    return lines


def compare(got, ref, what):
    """loss and grad norm to 1e-5 relative; each mean reward (and the margin) to 1e-5 relative to the per-pair
    rewards it averages (mean |r_i|: a mean that cancels has no relative error of its own to speak of), and
    never looser than 1e-5 of the larger mean reward (max(|chosen|, |rejected|)). Prints the worst errors."""
    close([l["loss"] for l in got], [r["loss"] for r in ref], 1e-5, f"{what}: loss")
    close([l["grad_norm"] for l in got], [r["grad_norm"] for r in ref], 1e-5, f"{what}: grad norm")
    worst = {}
    for i, (g, r) in enumerate(zip(got, ref)):
        means = max(abs(r["rewards/chosen"]), abs(r["rewards/rejected"]), 1e-2)
        for k in METRICS:
            if k == "rewards/accuracy":
                tol = 0 if abs(r["rewards/margin"]) > 1e-4 else 1
            else:
                tol = 1e-5 * min(r["scale"][k], means)
                worst[k] = max(worst.get(k, 0), abs(g[k] - r[k]) / r["scale"][k])
            assert abs(g[k] - r[k]) <= tol, f"{what}: step {i + 1}: {k} {g[k]} vs torch {r[k]} (tol {tol:.2e})"
    own = {k: max([abs(g[k] - r[k]) / abs(r[k]) for g, r in zip(got, ref) if r[k] != 0], default=0)
           for k in ("loss", "grad_norm", *worst)}
    print(f"{what}: worst relative errors over {len(got)} steps: loss {own['loss']:.1e}, grad_norm "
          f"{own['grad_norm']:.1e}; to the per-pair values " + ", ".join(f"{k} {v:.1e}" for k, v in worst.items()) +
          "; of the means themselves " + ", ".join(f"{k} {own[k]:.1e}" for k in worst))


def write_reward_model(out, cfg, W, score):
    """A reward-model folder as HF's LlamaForSequenceClassification(num_labels=1).save_pretrained writes it."""
    from reference import save_hf
    c = dict(cfg, architectures=["LlamaForSequenceClassification"], id2label={"0": "LABEL_0"},
             label2id={"LABEL_0": 0}, pad_token_id=0)
    save_hf(c, {**{k: v for k, v in W.items() if k != "lm_head.weight"}, "score.weight": score}, out)


def setup(tmp):
    """The causal LM at tmp/model, and the same weights as a reward model with a non-zero head at tmp/rm."""
    import torch
    from reference import random_weights
    torch.set_num_threads(1)
    cfg = small_cfg()
    make_model(f"{tmp}/model")  # the same cfg, seed and scale as random_weights below
    W0 = random_weights(cfg, 11, 0.05)
    score0 = 0.5 * torch.randn(1, cfg["hidden_size"], generator=torch.Generator().manual_seed(5))
    write_reward_model(f"{tmp}/rm", cfg, W0, score0)
    W0 = {k: v for k, v in W0.items() if k != "lm_head.weight"}
    return cfg, W0, score0, make_pairs(tmp)


def t_parity_full(tmp):
    cfg, W0, score0, pairs = setup(tmp)
    for center in CENTERS:
        ref = torch_reward(cfg, W0, score0, pairs, center)
        assert ref[-1]["rewards/margin"] > ref[0]["rewards/margin"], ref  # training moves the margin
        got = rm_train(tmp, f"full_{center}", 1, 4, center, model=f"{tmp}/rm", opts=PARITY)  # 2 micro-batches a step
        compare(got, ref, f"full, --center-rewards {center}")


def t_parity_lora(tmp):
    import torch
    from reference import linear_modules, param_shapes, write_peft_adapter
    cfg, W0, score0, pairs = setup(tmp)
    r, alpha = 4, 8.0
    g = torch.Generator().manual_seed(99)
    shapes = param_shapes(cfg)
    lora = {}
    for m in linear_modules(cfg):
        rows, cols = shapes[m + ".weight"]
        lora[m] = (0.1 * torch.randn(r, cols, generator=g), 0.1 * torch.randn(rows, r, generator=g), alpha / r)
    write_peft_adapter(f"{tmp}/adapter", cfg, lora, r, alpha, False, sorted({m.rsplit(".", 1)[1] for m in lora}))
    for center in CENTERS:
        ref = torch_reward(cfg, W0, score0, pairs, center, lora)
        got = rm_train(tmp, f"lora_{center}", 1, 4, center, model=f"{tmp}/rm", opts=PARITY,
                       extra=["--method", "lora", "--adapter", f"{tmp}/adapter"])
        compare(got, ref, f"LoRA, --center-rewards {center}")


def t_ranks(tmp):
    """1, 2, 4 ranks x ZeRO-0/2 and micro-batch splits: the same reward-model loss at every step, from a causal
    LM (the head fresh from --seed on every rank, rank 0's broadcast)."""
    setup(tmp)
    base = full = rm_train(tmp, "r1", 1, 8, 0.01)
    for ranks, micro, zero in ((1, 2, 2), (2, 4, 0), (2, 1, 2), (4, 2, 0), (4, 1, 2)):
        got = rm_train(tmp, f"r{ranks}_{micro}_{zero}", ranks, micro, 0.01, zero=zero)
        what = f"{ranks} ranks micro {micro} ZeRO-{zero}"
        close([l["loss"] for l in got], [l["loss"] for l in base], 1e-5, what)
    lora = ["--method", "lora", "--lora-targets", "all-linear", "--lora-r", "4"]
    base = rm_train(tmp, "l1", 1, 8, extra=lora)
    got = rm_train(tmp, "l4", 4, 1, zero=2, extra=lora)
    close([l["loss"] for l in got], [l["loss"] for l in base], 1e-5, "LoRA 4 ranks ZeRO-2")
    other = rm_train(tmp, "seed2", 1, 8, 0.01, extra=["--seed", "2"])
    assert abs(other[0]["loss"] - full[0]["loss"]) > 1e-7, (other, full)  # the head comes from --seed


def t_save_load(tmp):
    """Saved folders: full = HF LlamaForSequenceClassification (num_labels 1, id2label, pad_token_id; score.weight,
    no lm_head.weight); LoRA = a PEFT SEQ_CLS adapter with modules_to_save ["score"] and the head. A saved model
    given as --model continues from its head (its first rewards = torch's on the saved weights). A run stopped
    after its step-2 checkpoint and resumed (on 2 ranks) continues with the uninterrupted run's losses."""
    import torch
    from reference import read_safetensors
    cfg, _, _, pairs = setup(tmp)
    lora = ["--method", "lora", "--lora-targets", "all-linear", "--lora-r", "4"]
    for tag, method in (("full", ["--method", "full"]), ("lora", lora)):
        extra = [*method, "--save-every", "2"]
        whole = rm_train(tmp, f"whole_{tag}", 1, 2, 0.01, extra=extra, steps=5, gb=4)
        env = dict(os.environ, SHARDTUNE_TEST_FAIL="0:2")
        p = rm_train(tmp, f"cut_{tag}", 1, 2, 0.01, extra=extra, steps=5, env=env, ok=False, gb=4)
        assert p.returncode != 0 and "injected failure" in p.stderr, p.stderr[-2000:]
        again = rm_train(tmp, f"cut_{tag}", 2, 1, 0.01, extra=extra, steps=5, gb=4)
        assert [l["step"] for l in again] == [1, 2, 3, 4, 5], [l["step"] for l in again]
        close([l["loss"] for l in again], [l["loss"] for l in whole], 1e-5, f"{tag}: resumed vs uninterrupted")
    # full: the folder
    out = f"{tmp}/whole_full"
    c = json.load(open(f"{out}/config.json"))
    assert c["architectures"] == ["LlamaForSequenceClassification"] and c["num_labels"] == 1, c
    assert c["id2label"] == {"0": "LABEL_0"} and c["label2id"] == {"LABEL_0": 0} and c["pad_token_id"] is not None, c
    W = read_safetensors(f"{out}/model.safetensors")
    assert "lm_head.weight" not in W and list(W["score.weight"].shape) == [1, cfg["hidden_size"]], sorted(W)
    # ... loaded back: its first step's rewards and loss are torch's on the saved weights
    Wf = {k: v.float() for k, v in W.items()}
    with torch.no_grad():
        rc = torch.stack([reward(cfg, Wf, Wf["score.weight"], a, am) for a, am, _, _ in pairs])
        rr = torch.stack([reward(cfg, Wf, Wf["score.weight"], b, bm) for _, _, b, bm in pairs])
    again = rm_train(tmp, "from_saved", 1, 8, 0.0, steps=1, model=out)
    close([again[0]["loss"]], [float(-torch.nn.functional.logsigmoid(rc - rr).mean())], 1e-5, "loaded back: loss")
    close([again[0]["rewards/chosen"]], [float(rc.mean())], 1e-4, "loaded back: rewards/chosen")
    # LoRA: the adapter folder
    a = json.load(open(f"{tmp}/whole_lora/adapter_config.json"))
    assert a["task_type"] == "SEQ_CLS" and a["modules_to_save"] == ["score"], a
    T = read_safetensors(f"{tmp}/whole_lora/adapter_model.safetensors")
    assert list(T["base_model.model.score.weight"].shape) == [1, cfg["hidden_size"]], sorted(T)
    assert not any("lm_head" in k for k in T), sorted(T)
    # ... given as --adapter, it continues from its head too (not a fresh one): the same first loss twice
    cont = ["--method", "lora", "--adapter", f"{tmp}/whole_lora"]
    l1 = rm_train(tmp, "from_adapter", 1, 8, 0.0, steps=1, extra=cont)
    l2 = rm_train(tmp, "from_adapter2", 1, 8, 0.0, steps=1, extra=[*cont, "--seed", "9"])
    close([l1[0]["loss"]], [l2[0]["loss"]], 1e-6, "adapter's head, whatever --seed")


def t_score(tmp):
    import torch
    from reference import read_safetensors
    cfg, _, _, pairs = setup(tmp)
    score = os.path.join(BIN, "tools", "shardtune-score")
    rm_train(tmp, "full", 1, 4, 0.01, model=f"{tmp}/rm", steps=2)
    rm_train(tmp, "lora", 1, 4, 0.01, model=f"{tmp}/rm", steps=2,
             extra=["--method", "lora", "--lora-targets", "all-linear", "--lora-r", "4"])
    W = {k: v.float() for k, v in read_safetensors(f"{tmp}/full/model.safetensors").items()}
    base = {k: v.float() for k, v in read_safetensors(f"{tmp}/rm/model.safetensors").items()}
    a = json.load(open(f"{tmp}/lora/adapter_config.json"))
    T = read_safetensors(f"{tmp}/lora/adapter_model.safetensors")
    lora = {k[len("base_model.model."):-len(".lora_A.weight")]: None for k in T if k.endswith(".lora_A.weight")}
    lora = {m: (T[f"base_model.model.{m}.lora_A.weight"].float(), T[f"base_model.model.{m}.lora_B.weight"].float(),
                a["lora_alpha"] / a["r"]) for m in lora}
    for tag, args, Wt, head, lo in (("full", ["--model", f"{tmp}/full"], W, W["score.weight"], None),
                                    ("lora", ["--model", f"{tmp}/rm", "--adapter", f"{tmp}/lora"], base,
                                     T["base_model.model.score.weight"].float(), lora)):
        p = run([score, *args, "--data", f"{tmp}/data", "--split", "train", "--batch", "3", "--threads", "1"])
        rows = [json.loads(l) for l in p.stdout.splitlines() if l.strip()]
        assert len(rows) == len(pairs) + 1 and rows[-1]["pairs"] == len(pairs), rows
        with torch.no_grad():
            rc = [float(reward(cfg, Wt, head, c, cm, lo)) for c, cm, _, _ in pairs]
            rr = [float(reward(cfg, Wt, head, r, rm, lo)) for _, _, r, rm in pairs]
        got_c, got_r = [r["chosen"] for r in rows[:-1]], [r["rejected"] for r in rows[:-1]]
        tol = 1e-5 * max(map(abs, rc + rr))
        for i in range(len(pairs)):
            assert abs(got_c[i] - rc[i]) <= tol and abs(got_r[i] - rr[i]) <= tol, (tag, i, got_c[i], rc[i], got_r[i], rr[i])
        if lo is not None:  # the adapter moves the rewards well beyond the tolerance: the tool must apply it
            with torch.no_grad():
                plain = [float(reward(cfg, Wt, head, c, cm)) for c, cm, _, _ in pairs]
            assert max(abs(x - y) for x, y in zip(plain, rc)) > 100 * tol, (plain, rc)
        acc = sum(c > r for c, r in zip(rc, rr)) / len(pairs)
        assert abs(rows[-1]["accuracy"] - acc) < 1e-9, (tag, rows[-1], acc)


def t_eval_errors(tmp):
    """Evaluation on the val split writes val_loss and the val_ rewards metrics (moving the held-out margin the
    chosen way); refusals name the option: --center-rewards without reward, --pack, a sequence folder."""
    import shutil
    from dpo_test import PAIRS  # noqa: F401  (make_pairs wrote them to pairs.jsonl)
    from train_test import PREP, make_data
    setup(tmp)
    shutil.rmtree(f"{tmp}/data")
    run([PREP, "--input", f"{tmp}/pairs.jsonl", "--output", f"{tmp}/data", "--tokenizer", "byte", "--format",
         "preference", "--val-fraction", "0.4", "--max-seq-len", "64", "--seed", "3", "--quiet"])
    rm_train(tmp, "ev", 1, 2, 0.0, gb=4, extra=["--eval-every", "1"], eval_batches=1)
    ev = [json.loads(l) for l in open(f"{tmp}/ev.jsonl") if json.loads(l)["type"] == "eval"]
    assert [e["step"] for e in ev] == [0, 1, 2, 3], ev
    for e in ev:
        assert all(f"val_{k}" in e for k in METRICS) and math.isfinite(e["val_loss"]), e
    assert ev[-1]["val_rewards/margin"] > ev[0]["val_rewards/margin"], ev
    os.makedirs(f"{tmp}/seq")
    seq = make_data(f"{tmp}/seq", 40)
    base = [TRAIN, "--model", f"{tmp}/model", "--out", f"{tmp}/o", "--steps", "1", "--global-batch", "4"]

    def fails(args, *expect):
        run_fails(base + args, *expect)
        assert not os.path.exists(f"{tmp}/o/config.json")
    fails(["--data", seq, "--objective", "reward"], "--objective reward trains preference pairs")
    fails(["--data", f"{tmp}/data", "--objective", "dpo", "--center-rewards", "0.1"], "--center-rewards applies to")
    fails(["--data", f"{tmp}/data", "--objective", "reward", "--center-rewards", "-1"], "must not be negative")
    fails(["--data", f"{tmp}/data", "--objective", "reward", "--pack"], "--pack with --objective reward")


if __name__ == "__main__":
    sys.exit(run_case(globals(), "reward"))
