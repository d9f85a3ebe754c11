#!/usr/bin/python3
"""LoRA / QLoRA trainer tests with real processes and real mpirun. References: the 1-rank run for N ranks
(loss per step to 1e-5, ZeRO-0 and ZeRO-2, with and without accumulation), PEFT's naming (fixtures in
tests/fixtures/peft), tests/model/reference.py's independent LoRA forward and merge for what the trained
adapter computes (shardtune-generate --adapter, shardtune-export merge), and the validation loss for QLoRA
on stories260K. No timing asserts. Usage: lora_test.py CASE."""
import json
import math
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_test import (FP32, GENERATE, MPI, SHARED, SRC, TRAIN, BIN, Case, close, eval_losses, make_data,  # noqa: E402
                        read_safetensors, reference_eval_loss, small_cfg, train_lines)
from harness import Skip, run, run_case, run_fails  # noqa: E402

EXPORT = os.path.join(BIN, "tools", "shardtune-export")
LORA = ["--method", "lora", "--lora-targets", "all-linear", "--lora-r", "8", "--lora-alpha", "16"]
FIXTURES = os.path.join(SRC, "tests", "fixtures", "peft")


def make_model(path, **kw):
    """A random Llama like train_test's small one, with `kw` overriding its config."""
    from reference import llama_cfg, random_weights, save_hf
    base = dict(vocab_size=259, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2)
    cfg = llama_cfg(**{**base, **kw})
    save_hf(cfg, random_weights(cfg, 11, 0.05), path)
    return path


def adapter_close(dir_a, dir_b, rel=1e-4):
    A = read_safetensors(f"{dir_a}/adapter_model.safetensors")
    B = read_safetensors(f"{dir_b}/adapter_model.safetensors")
    assert A.keys() == B.keys(), (sorted(A)[:4], sorted(B)[:4])
    for k in A:
        d, scale = np.abs(A[k] - B[k]).max(), np.abs(B[k]).max()
        assert d <= rel * scale, f"adapter tensors differ in {k}: max |diff| {d} vs max |w| {scale}"


def t_lora_ranks(tmp):
    """1, 2 and 4 ranks, ZeRO-0 and ZeRO-2, with and without accumulation: the same loss at every step."""
    c = Case(tmp)
    ref, ref_out = c.train(1, 8, extra=LORA)
    assert ref[-1] < ref[0], ref
    for ranks, micro, zero in ((2, 4, 0), (4, 2, 0), (2, 4, 2), (4, 2, 2), (1, 2, 0), (2, 1, 2), (4, 1, 0)):
        got, out = c.train(ranks, micro, zero=zero, extra=LORA)
        close(got, ref, what=f"LoRA {ranks} ranks micro {micro} ZeRO-{zero}")
        if (ranks, zero) == (4, 2):
            adapter_close(out, ref_out)
    # Only the adapters are trained: the optimizer state is theirs (r 8 on 2 layers x 7 modules).
    line = train_lines(c.metrics)[0]
    assert "consumed_samples" in line, line


def lora_params(cfg, r):
    C, I = cfg["hidden_size"], cfg["intermediate_size"]
    hd = C // cfg["num_attention_heads"]
    kv = cfg["num_key_value_heads"] * hd
    per_layer = sum(r * (i + o) for i, o in ((C, C), (C, kv), (C, kv), (C, C), (C, I), (C, I), (I, C)))
    return per_layer * cfg["num_hidden_layers"]


def check_against_fixture(out, fixture, arch_fan_in_fan_out):
    fx = json.load(open(os.path.join(FIXTURES, fixture)))
    got = read_safetensors(f"{out}/adapter_model.safetensors")
    shapes = {k: list(v.shape) for k, v in got.items()}
    assert shapes == fx["tensors"], (sorted(set(shapes) ^ set(fx["tensors"]))[:6],
                                     [(k, shapes[k], fx["tensors"].get(k)) for k in sorted(shapes)][:4])
    conf = json.load(open(f"{out}/adapter_config.json"))
    required = {"peft_type", "task_type", "r", "lora_alpha", "lora_dropout", "target_modules", "bias", "fan_in_fan_out",
                "use_rslora", "base_model_name_or_path", "init_lora_weights"}
    assert required <= set(conf), sorted(required - set(conf))
    assert set(conf) <= set(fx["config_keys"]), sorted(set(conf) - set(fx["config_keys"]))  # keys PEFT knows
    assert conf["peft_type"] == "LORA" and conf["task_type"] == "CAUSAL_LM" and conf["bias"] == "none", conf
    assert conf["r"] == 8 and conf["lora_alpha"] == 16 and isinstance(conf["target_modules"], list), conf
    assert conf["fan_in_fan_out"] is arch_fan_in_fan_out and conf["init_lora_weights"] is True, conf
    return conf, got


def reference_lora(cfg, W, adapter):
    """The adapter as reference.py's LoRA forward takes it: {module: (A, B, scale)}."""
    import torch
    conf = json.load(open(f"{adapter}/adapter_config.json"))
    scale = conf["lora_alpha"] / (math.sqrt(conf["r"]) if conf.get("use_rslora") else conf["r"])
    t = read_safetensors(f"{adapter}/adapter_model.safetensors")
    lora = {}
    for k in t:
        if k.endswith(".lora_A.weight"):
            m = k[len("base_model.model."):-len(".lora_A.weight")]
            lora[m] = (torch.tensor(t[k]), torch.tensor(t[k.replace("lora_A", "lora_B")]), scale)
    return lora


def load_weights(model_dir):
    import torch
    return {k: torch.tensor(v) for k, v in read_safetensors(f"{model_dir}/model.safetensors").items()}


def t_lora_outputs(tmp):
    """The adapter folder in PEFT layout (names, shapes, config keys against the fixtures), the PEFT line at
    start, what it computes (shardtune-generate --adapter and shardtune-export merge against reference.py),
    and continuing from it with --adapter."""
    import torch
    from reference import forward
    c = Case(tmp)
    _, out = c.train(2, 4, extra=LORA)
    cfg = small_cfg()
    n = lora_params(cfg, 8)
    base = sum(int(np.prod(v.shape)) for v in read_safetensors(f"{c.model}/model.safetensors").values())
    line = f"trainable params: {n:,d} || all params: {n + base:,d} || trainable%: {100 * n / (n + base):.4f}"
    assert line in c.proc.stdout, (line, c.proc.stdout[-2000:])
    assert sorted(os.listdir(out)) == ["adapter_config.json", "adapter_model.safetensors", "shardtune_tokenizer.json"], \
        os.listdir(out)
    conf, tensors = check_against_fixture(out, "llama_all_linear.json", False)
    assert sorted(conf["target_modules"]) == ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj",
                                              "v_proj"], conf
    assert all(np.abs(v).max() > 0 for k, v in tensors.items()), "an adapter tensor is all zero after training"

    # What the trained adapter computes, by the reference's own LoRA forward: greedy ids.
    W = load_weights(c.model)
    lora = reference_lora(cfg, W, out)
    prompt = [256, 85, 112, 112, 101, 114]
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(12):
            ids.append(int(forward(cfg, W, torch.tensor([ids]), lora=lora)[0, -1].argmax()))
    p = run([GENERATE, "--model", c.model, "--adapter", out, "--prompt-ids", " ".join(map(str, prompt)),
             "--max-new-tokens", "12", "--temperature", "0", "--print-ids", "--no-stop"])
    assert [int(x) for x in p.stdout.split()] == ids[len(prompt):], (p.stdout, ids[len(prompt):])
    assert "not merged" in p.stderr, p.stderr

    # Merged by shardtune-export: its logits equal the base + adapter logits (reference.py both ways).
    if os.path.exists(EXPORT):
        merged = f"{tmp}/merged"
        run([EXPORT, "merge", "--model", c.model, "--adapter", out, "--out", merged])
        M = load_weights(merged)
        x = torch.randint(0, 259, (2, 40), generator=torch.Generator().manual_seed(3))
        with torch.no_grad():
            a, b = forward(cfg, M, x), forward(cfg, W, x, lora=lora)
        rel = float((a - b).abs().max() / b.abs().max())
        assert rel <= 1e-5, f"merged vs base + adapter logits: rel {rel:.3g}"
        p = run([GENERATE, "--model", merged, "--prompt-ids", " ".join(map(str, prompt)), "--max-new-tokens", "12",
                 "--temperature", "0", "--print-ids", "--no-stop"])
        assert [int(x) for x in p.stdout.split()] == ids[len(prompt):], (p.stdout, ids[len(prompt):])

    # Continuing from the adapter: the first evaluation is the first run's last one.
    first = eval_losses(c.metrics)
    _, out2 = c.train(1, 8, steps=2, extra=["--method", "lora", "--adapter", out])
    again = eval_losses(c.metrics)
    assert first and abs(again[0] - first[-1]) <= 1e-5 * abs(first[-1]), (again, first)
    conf2 = json.load(open(f"{out2}/adapter_config.json"))
    assert conf2["r"] == 8 and sorted(conf2["target_modules"]) == sorted(conf["target_modules"]), conf2


def t_lora_gpt2(tmp):
    """GPT-2: Conv1D modules (fan_in_fan_out), names and shapes as PEFT's, merge against the reference."""
    import torch
    from reference import CASES, forward, random_weights, save_hf
    cfg = dict(CASES["gpt2"][0], vocab_size=259, n_positions=128, n_ctx=128)
    model = f"{tmp}/gpt2"
    W = random_weights(cfg, 5, 0.05)
    save_hf(cfg, W, model)
    data = make_data(tmp)
    out = f"{tmp}/out"
    p = run([*MPI, "2", TRAIN, "--model", model, "--data", data, "--out", out, "--steps", "4", "--global-batch", "8",
             "--micro-batch", "4", "--seq-len", "128", "--lr", "5e-3", "--method", "lora", "--lora-r", "8",
             "--lora-alpha", "16", "--lora-targets", "c_attn,c_proj,c_fc", *FP32])
    assert "trainable params: " in p.stdout, p.stdout[-1500:]
    conf, _ = check_against_fixture(out, "gpt2_all.json", True)
    assert sorted(conf["target_modules"]) == ["c_attn", "c_fc", "c_proj"], conf
    if os.path.exists(EXPORT):
        merged = f"{tmp}/merged"
        run([EXPORT, "merge", "--model", model, "--adapter", out, "--out", merged])
        M = load_weights(merged)
        lora = reference_lora(cfg, W, out)
        x = torch.randint(0, 259, (2, 40), generator=torch.Generator().manual_seed(3))
        with torch.no_grad():
            a, b = forward(cfg, M, x), forward(cfg, W, x, lora=lora)
        rel = float((a - b).abs().max() / b.abs().max())
        assert rel <= 1e-5, f"GPT-2 merged vs base + adapter logits: rel {rel:.3g}"


def t_lora_errors(tmp):
    """Bad LoRA input: a clear error naming the module and shapes, before any work, and nothing written."""
    c = Case(tmp, n=120)

    def fails(extra, *expect, model=None):
        out = f"{tmp}/bad{len(os.listdir(tmp))}"
        args = [TRAIN, "--model", model or c.model, "--data", c.data, "--out", out, "--steps", "2", "--global-batch",
                "8", "--seq-len", "128", *FP32, *extra]
        p = run_fails(args, *expect)
        assert not os.path.exists(out), f"{out} was created by a failing run"
        return p

    fails(["--method", "lora", "--lora-targets", "q_proj,v_prj"], "'v_prj' matches no module", "q_proj, up_proj, v_proj")
    _, good = c.train(1, 8, steps=1, extra=LORA)
    fails(["--adapter", good], "--adapter", "--method full")
    # An adapter trained on another model size: named module and both shapes.
    other = make_model(f"{tmp}/wide", hidden_size=96, intermediate_size=128)
    fails(["--method", "lora", "--adapter", good], "model.layers.0.self_attn.q_proj", "[8, 64]", "96", model=other)
    # QLoRA: a weight whose size is no multiple of the NF4 block.
    odd = make_model(f"{tmp}/odd", hidden_size=36, intermediate_size=100, num_attention_heads=2, num_key_value_heads=2)
    fails(["--method", "qlora", "--lora-targets", "q_proj"], "q_proj.weight", "not a multiple of the NF4 block of 64",
          model=odd)


def t_lora_peft_adapter(tmp):
    """Training continues from a PEFT-layout adapter written by an independent script (reference.py), with
    its r, alpha and rsLoRA scale: the first evaluation equals the reference's loss with that adapter. Also a
    TOML config with the LoRA keys (a list for lora-targets), and a frozen base held in bf16."""
    import torch
    from reference import write_peft_adapter
    c = Case(tmp)
    cfg = small_cfg()
    W = load_weights(c.model)
    g = torch.Generator().manual_seed(9)
    lora = {}
    for l in range(cfg["num_hidden_layers"]):
        for m, (i, o) in (("self_attn.q_proj", (64, 64)), ("self_attn.v_proj", (64, 32))):
            lora[f"model.layers.{l}.{m}"] = (0.1 * torch.randn(4, i, generator=g), 0.1 * torch.randn(o, 4, generator=g),
                                             12.0 / math.sqrt(4))
    write_peft_adapter(f"{tmp}/peft", cfg, lora, 4, 12.0, True, ["q_proj", "v_proj"])
    want, _ = reference_eval_loss(cfg, W, c.data, 32, 128, lora=lora)
    c.train(1, 8, steps=1, extra=["--method", "lora", "--adapter", f"{tmp}/peft"])
    got = eval_losses(c.metrics)[0]
    assert abs(got - want) <= 1e-5 * abs(want), (got, want)
    assert "r 4, alpha 12 (scale 6, rsLoRA)" in c.proc.stdout, c.proc.stdout[-1500:]
    # TOML: flat keys named like the options; a list for --lora-targets.
    toml = f"{tmp}/lora.toml"
    open(toml, "w").write('method = "lora"\nlora-r = 4\nlora-alpha = 8\nlora-targets = ["q_proj", "down_proj"]\n'
                          'use-rslora = true\nbase-dtype = "bf16"\n')
    ref, _ = c.train(1, 8, steps=3, extra=["--method", "lora", "--lora-r", "4", "--lora-alpha", "8",
                                           "--lora-targets", "q_proj,down_proj", "--use-rslora"])
    got, out = c.train(1, 8, steps=3, extra=["--config", toml])
    for want in ("lora-targets    = q_proj,down_proj", "base-dtype      = bf16", "use-rslora      = true"):
        assert want in c.proc.stdout, (want, c.proc.stdout[:3000])
    assert "base bf16" in c.proc.stdout, c.proc.stdout[-1500:]
    conf = json.load(open(f"{out}/adapter_config.json"))
    assert conf["use_rslora"] is True and sorted(conf["target_modules"]) == ["down_proj", "q_proj"], conf
    # A bf16-held base changes the numbers only by bf16 rounding of the frozen weights.
    close(got, ref, 2e-2, "bf16 base vs fp32 base")
    got2, _ = c.train(2, 4, steps=3, extra=["--config", toml])
    close(got2, got, what="bf16 base: 2 ranks vs 1")


def t_qlora_ranks(tmp):
    """QLoRA: NF4 base, the same loss curve on 1 and 2 ranks (ZeRO-0 and ZeRO-2), lower than where it began."""
    c = Case(tmp)
    q = ["--method", "qlora", "--lora-targets", "all-linear", "--lora-r", "8", "--lora-alpha", "16"]
    ref, _ = c.train(1, 8, extra=q)
    assert ref[-1] < ref[0], ref
    assert "NF4 (double-quantized absmax)" in c.proc.stdout, c.proc.stdout[-2000:]
    for ranks, micro, zero in ((2, 4, 0), (2, 2, 2)):
        got, _ = c.train(ranks, micro, zero=zero, extra=q)
        close(got, ref, what=f"QLoRA {ranks} ranks micro {micro} ZeRO-{zero}")
    lora, _ = c.train(1, 8, extra=LORA)
    assert abs(lora[0] - ref[0]) < 0.05 * abs(lora[0]), (lora, ref)  # NF4 moves the start loss only a little


def t_qlora_stories260k(tmp):
    """A QLoRA fine-tune of the real stories260K lowers its validation loss (2 ranks)."""
    model = os.path.join(SHARED, "models", "stories260K.bin")
    if not os.path.exists(model):
        raise Skip(f"{model} not found (../shared absent)")
    data = make_data(tmp, 600)
    p = run([*MPI, "2", TRAIN, "--model", model, "--data", data, "--out", f"{tmp}/out", "--steps", "30",
             "--global-batch", "16", "--micro-batch", "4", "--seq-len", "128", "--lr", "1e-2", "--warmup-steps", "3",
             "--eval-every", "10", "--metrics", f"{tmp}/m.jsonl", "--method", "qlora", "--lora-targets", "all-linear",
             "--lora-r", "16", "--lora-alpha", "32", "--threads", "1"])
    v = eval_losses(f"{tmp}/m.jsonl")
    assert len(v) == 4 and v[-1] < 0.9 * v[0], v
    assert os.path.exists(f"{tmp}/out/adapter_model.safetensors")
    assert "NF4 (double-quantized absmax)" in p.stdout, p.stdout[-1500:]


def t_qlora_memory(tmp):
    """The NF4 base's heap, measured while quantizing, is at most 0.53 bytes per quantized parameter."""
    c = Case(tmp, n=120)
    c.model = make_model(f"{tmp}/big", hidden_size=512, intermediate_size=1024, num_attention_heads=8,
                         num_key_value_heads=8)
    c.train(1, 8, steps=1, extra=["--method", "qlora", "--lora-targets", "all-linear"])
    import re
    m = re.search(r"([0-9.]+) bytes per parameter measured", c.proc.stdout)
    assert m and float(m.group(1)) <= 0.53, c.proc.stdout[-1500:]


if __name__ == "__main__":
    sys.exit(run_case(globals(), "st-lora"))
