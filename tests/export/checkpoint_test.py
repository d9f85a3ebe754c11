#!/usr/bin/python3
"""shardtune-export checkpoint and shardtune-inspect on checkpoints, against real 2-rank runs: the export of
the checkpoint written at the last step equals the run's final model, tensor bytes for tensor bytes (F32;
the base model's own dtype by default; a LoRA run's adapter), and bad input is refused (a corrupt or
truncated checkpoint, a non-empty --out) with nothing written. Usage: checkpoint_test.py CASE."""
import json
import os
import struct
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "train"))
from train_test import BIN, Case, make_model, small_cfg  # noqa: E402
from harness import run, run_case  # noqa: E402

EXPORT = os.path.join(BIN, "tools", "shardtune-export")
INSPECT = os.path.join(BIN, "tools", "shardtune-inspect")
STEPS = 4
SAVE = ["--save-every", "2"]  # checkpoints at steps 2 and 4 (the last)


def raw_tensors(path):
    """name -> (dtype, shape, bytes) of a safetensors file: compares any dtype exactly."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    return {k: (v["dtype"], v["shape"], data[v["data_offsets"][0]:v["data_offsets"][1]])
            for k, v in header.items() if k != "__metadata__"}


def same_tensors(a, b, what):
    A, B = raw_tensors(a), raw_tensors(b)
    assert A.keys() == B.keys(), (what, sorted(set(A) ^ set(B))[:6])
    for k in A:
        assert A[k][:2] == B[k][:2], (what, k, A[k][:2], B[k][:2])
        assert A[k][2] == B[k][2], f"{what}: tensor {k} differs"
    return A


def export(ckpt, out, *extra, ok=True):
    return run([EXPORT, "checkpoint", "--ckpt", ckpt, "--out", out, *extra], ok=ok)


def trained(tmp, extra=(), ranks=2):
    c = Case(tmp)
    _, out = c.train(ranks, 2, zero=1, steps=STEPS, extra=[*SAVE, *extra])
    ckpt = f"{out}/checkpoints/step-{STEPS:08d}"
    assert os.path.isdir(ckpt), os.listdir(f"{out}/checkpoints")
    return c, out, ckpt


def t_full(tmp):
    """Full fine-tuning, 2 ranks ZeRO-1: the last checkpoint exported (F32, and by default: the base is F32)
    equals --out; BF16 gives BF16 tensors and torch_dtype; inspect shows the checkpoint and verifies it."""
    _, out, ckpt = trained(tmp)
    for name, extra in (("f32", ["--dtype", "F32"]), ("default", [])):
        e = f"{tmp}/export-{name}"
        export(ckpt, e, *extra)
        same_tensors(f"{e}/model.safetensors", f"{out}/model.safetensors", name)
        assert json.load(open(f"{e}/config.json")) == json.load(open(f"{out}/config.json")), name
        assert not os.path.exists(e + ".partial")
    # The --ckpt-dir stands for its `latest` (step 4).
    export(f"{out}/checkpoints", f"{tmp}/export-dir")
    same_tensors(f"{tmp}/export-dir/model.safetensors", f"{out}/model.safetensors", "ckpt-dir")
    export(ckpt, f"{tmp}/export-bf16", "--dtype", "bf16")
    T = raw_tensors(f"{tmp}/export-bf16/model.safetensors")
    assert T and all(v[0] == "BF16" for v in T.values()), {k: v[0] for k, v in T.items()}
    assert json.load(open(f"{tmp}/export-bf16/config.json"))["torch_dtype"] == "bfloat16"
    # The step-2 checkpoint is an earlier model: its export differs from --out.
    export(f"{out}/checkpoints/step-00000002", f"{tmp}/export-2")
    assert raw_tensors(f"{tmp}/export-2/model.safetensors") != raw_tensors(f"{out}/model.safetensors")

    p = run([INSPECT, ckpt, "--verify"])
    for want in (f"step              {STEPS} of {STEPS}", "consumed samples  32", "world at save     2 rank(s)",
                 "method            full", "global-batch", "model.safetensors", "trainer_state.txt",
                 "optimizer-rank00001.safetensors", "verify: ok"):
        assert want in p.stdout, (want, p.stdout)
    p = run([INSPECT, f"{out}/checkpoints", "--verify"])
    assert "2 checkpoint(s), latest -> step-00000004" in p.stdout and p.stdout.count(" ok\n") == 2, p.stdout


def t_bf16_base(tmp):
    """A BF16 base model: the default export is BF16, as the run's final model (saved as loaded)."""
    import torch
    from reference import random_weights, save_hf
    cfg = small_cfg(torch_dtype="bfloat16")
    c = Case(tmp)
    save_hf(cfg, {k: v.to(torch.bfloat16) for k, v in random_weights(cfg, 11, 0.05).items()}, f"{tmp}/model-bf16")
    c.model = f"{tmp}/model-bf16"
    _, out = c.train(2, 2, zero=1, steps=STEPS, extra=SAVE)
    ckpt = f"{out}/checkpoints/step-{STEPS:08d}"
    # Checkpoints hold fp32; with 2 ranks the weights are two HF shards, one written by each rank.
    shards = json.load(open(f"{ckpt}/model.safetensors.index.json"))["weight_map"]
    assert sorted(set(shards.values())) == ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"], shards
    assert all(v[0] == "F32" for f in set(shards.values()) for v in raw_tensors(f"{ckpt}/{f}").values())
    export(ckpt, f"{tmp}/e")
    T = same_tensors(f"{tmp}/e/model.safetensors", f"{out}/model.safetensors", "bf16 base")
    assert all(v[0] == "BF16" for v in T.values())


def t_lora(tmp):
    """LoRA, 2 ranks: the export is a PEFT adapter folder equal to the run's final adapter."""
    _, out, ckpt = trained(tmp, ["--method", "lora", "--lora-targets", "all-linear", "--lora-r", "4", "--lora-alpha", "8"])
    export(ckpt, f"{tmp}/e")
    # (the byte tokenizer of these runs has no Hugging Face form: shardtune_tokenizer.json alone records it)
    assert sorted(os.listdir(f"{tmp}/e")) == ["adapter_config.json", "adapter_model.safetensors", "shardtune_tokenizer.json"], \
        os.listdir(f"{tmp}/e")
    same_tensors(f"{tmp}/e/adapter_model.safetensors", f"{out}/adapter_model.safetensors", "adapter")
    assert json.load(open(f"{tmp}/e/adapter_config.json")) == json.load(open(f"{out}/adapter_config.json"))
    p = run([INSPECT, ckpt])
    assert "method            lora" in p.stdout, p.stdout


def refused(p, *want):
    assert p.returncode != 0, p.stdout + p.stderr
    for w in want:
        assert w in p.stderr, (w, p.stderr[-3000:])


def t_errors(tmp):
    """A bit-flipped and a truncated checkpoint file, a non-empty --out, a folder that is no checkpoint:
    refused with the reason, nothing written; inspect --verify fails naming the file."""
    _, out, ckpt = trained(tmp, ranks=1)
    e = f"{tmp}/e"
    os.makedirs(e)
    open(f"{e}/mine.txt", "w").write("keep")
    refused(export(ckpt, e, ok=False), "--out folder", "not empty")
    assert os.listdir(e) == ["mine.txt"]
    refused(export(f"{tmp}/data", f"{tmp}/e2", ok=False), "not a shardtune checkpoint manifest")  # a shard folder
    refused(export(f"{tmp}/model", f"{tmp}/e2", ok=False), "neither a checkpoint")
    refused(export(ckpt, f"{tmp}/e2", "--dtype", "int8", ok=False), "--dtype 'int8'")

    flipped = f"{out}/checkpoints/step-00000002"
    with open(f"{flipped}/model.safetensors", "r+b") as f:
        f.seek(os.path.getsize(f"{flipped}/model.safetensors") - 5)
        b = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([b[0] ^ 0x10]))
    refused(export(flipped, f"{tmp}/e3", ok=False), "does not verify", "model.safetensors does not match its sha256")
    assert not os.path.exists(f"{tmp}/e3") and not os.path.exists(f"{tmp}/e3.partial")
    p = run([INSPECT, flipped, "--verify"], ok=False)
    refused(p, "does not verify", "model.safetensors")
    assert "verify: FAILED: model.safetensors does not match its sha256" in p.stdout, p.stdout

    state = f"{ckpt}/trainer_state.txt"
    os.truncate(state, os.path.getsize(state) // 2)
    refused(export(ckpt, f"{tmp}/e4", ok=False), "trainer_state.txt has", "truncated")
    assert not os.path.exists(f"{tmp}/e4")
    p = run([INSPECT, f"{out}/checkpoints", "--verify"], ok=False)
    refused(p, "2 of 2 checkpoint(s)", "step-00000002: model.safetensors", "step-00000004: trainer_state.txt")


if __name__ == "__main__":
    sys.exit(run_case(globals(), "export-ckpt"))
