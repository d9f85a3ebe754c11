#!/usr/bin/python3
"""shardtune-export merge run as a real process, against the independent merge of merge_reference.py:
Llama and GPT-2 (Conv1D, fan_in_fan_out) in fp32, a sharded base, --dtype BF16 and a bf16 base, a llama2.c
.bin base (../shared/models/stories260K.bin), the
errors that must leave no --out behind, and peak memory of a streamed ~320 MB base.
Usage: merge_test.py CASE   (exit 77 = skipped)"""
import json
import os
import shutil
import subprocess
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, HERE)
from harness import Skip, run, run_case  # noqa: E402
import merge_reference as ref  # noqa: E402

EXPORT = os.path.join(os.environ["ST_BIN"], "tools", "shardtune-export")


def merge(base, adapter, out, *extra, ok=True):
    return run([EXPORT, "merge", "--model", base, "--adapter", adapter, "--out", out, *extra], ok=ok)


def make(tmp, kind):
    base, adapter = os.path.join(tmp, kind), os.path.join(tmp, kind + "_adapter")
    run(["/usr/bin/python3", os.path.join(HERE, "merge_reference.py"), "make", kind, base, adapter])
    return base, adapter


def rel_err(a, b):
    a, b = a.double(), b.double()
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item() if b.numel() else 0.0


def compare(base, adapter, out, dtype=None, tol=1e-6):
    """Every tensor of `out` equals the reference merge (same names, files, dtypes, shapes)."""
    want, merged = ref.merge(base, adapter, dtype)
    got = ref.read_model(out)
    assert set(got) == set(want), f"tensor names differ: {sorted(set(got) ^ set(want))[:5]}"
    worst = 0.0
    for n, (fn, t) in want.items():
        gfn, g = got[n]
        assert gfn == fn, f"{n}: in {gfn}, the base has it in {fn}"
        assert g.dtype == t.dtype and g.shape == t.shape, f"{n}: {g.dtype} {list(g.shape)} vs {t.dtype} {list(t.shape)}"
        if n in merged or dtype:
            e = rel_err(g, t)
            worst = max(worst, e)
            assert e <= tol, f"{n}: max rel error {e:.3g} > {tol}"
        else:
            assert torch.equal(g, t), f"{n}: not merged, yet not copied exactly"
    assert merged, "the adapter merged into nothing"
    # The merge changed what it should: each merged weight differs from the base.
    base_w = ref.read_model(base) if os.path.isdir(base) else \
        {n: (None, t) for n, t in ref.read_llama2c(base)[1].items()}
    for n in merged:
        assert not torch.equal(base_w[n][1], got[n][1]), f"{n}: unchanged by the merge"
    return worst, merged


def t_llama(tmp):
    base, adapter = make(tmp, "llama")
    out = os.path.join(tmp, "merged")
    p = merge(base, adapter, out, "--progress-every", "5")
    worst, merged = compare(base, adapter, out)
    assert len(merged) == 6, merged
    assert "merge: 5/" in p.stderr + p.stdout, p.stderr  # progress lines
    assert sorted(os.listdir(out)) == ["config.json", "generation_config.json", "model.safetensors",
                                       "tokenizer_config.json"], os.listdir(out)
    assert open(os.path.join(out, "config.json")).read() == open(os.path.join(base, "config.json")).read()
    assert not os.path.exists(out + ".partial")
    print(f"llama: {len(merged)} weights merged, max rel error {worst:.2e}")


def t_gpt2(tmp):
    base, adapter = make(tmp, "gpt2")
    out = os.path.join(tmp, "merged")
    merge(base, adapter, out)
    worst, merged = compare(base, adapter, out)
    assert "h.0.attn.c_attn.weight" in merged and len(merged) == 6, merged
    assert "h.1.attn.bias" in ref.read_model(out)  # buffers the base carries are kept
    print(f"gpt2: {len(merged)} Conv1D weights merged (fan_in_fan_out), max rel error {worst:.2e}")


def t_sharded(tmp):
    base, adapter = make(tmp, "sharded")
    out = os.path.join(tmp, "merged")
    merge(base, adapter, out)
    compare(base, adapter, out)  # also: every tensor in the file it had in the base
    shards = sorted(f for f in os.listdir(base) if f.endswith(".safetensors"))
    assert len(shards) >= 3, shards
    assert sorted(f for f in os.listdir(out) if f.endswith(".safetensors")) == shards
    for fn in shards:  # same grouping and order within each file
        assert list(ref.read_header(os.path.join(out, fn))[0]) == list(ref.read_header(os.path.join(base, fn))[0]), fn
    index = json.load(open(os.path.join(out, "model.safetensors.index.json")))
    wm = {n: fn for fn in shards for n in ref.read_header(os.path.join(out, fn))[0]}
    assert index["weight_map"] == wm, "weight_map does not list where each tensor is"
    total = sum(e["data_offsets"][1] - e["data_offsets"][0]
                for fn in shards for e in ref.read_header(os.path.join(out, fn))[0].values())
    assert index["metadata"]["total_size"] == total, (index["metadata"], total)
    print(f"sharded: {len(shards)} shards, index of {len(wm)} tensors, total_size {total}")


def t_bf16(tmp):
    base, adapter = make(tmp, "llama")
    out = os.path.join(tmp, "merged")
    merge(base, adapter, out, "--dtype", "BF16")
    worst, _ = compare(base, adapter, out, dtype="BF16", tol=2 ** -8)
    for fn in ("model.safetensors",):
        for n, e in ref.read_header(os.path.join(out, fn))[0].items():
            assert e["dtype"] == "BF16", (n, e["dtype"])
    cfg = json.load(open(os.path.join(out, "config.json")))
    assert cfg["torch_dtype"] == "bfloat16", cfg["torch_dtype"]
    assert {k: v for k, v in cfg.items() if k != "torch_dtype"} == \
        {k: v for k, v in json.load(open(os.path.join(base, "config.json"))).items() if k != "torch_dtype"}
    # A bf16 base keeps bf16 without --dtype; its config is copied as it is.
    base16, adapter16 = make(tmp, "llama_bf16")
    out16 = os.path.join(tmp, "merged16")
    merge(base16, adapter16, out16)
    compare(base16, adapter16, out16, tol=2 ** -8)
    assert {e["dtype"] for e in ref.read_header(os.path.join(out16, "model.safetensors"))[0].values()} == {"BF16"}
    assert json.load(open(os.path.join(out16, "config.json")))["torch_dtype"] == "bfloat16"
    print(f"bf16: --dtype BF16 max rel error {worst:.2e}; a bf16 base stays bf16")


def t_llama2c(tmp):
    model_bin = os.path.join(os.environ.get("ST_SHARED", ""), "models", "stories260K.bin")
    if not os.path.exists(model_bin):
        raise Skip(f"{model_bin} not found (the shared folder is absent)")
    adapter = os.path.join(tmp, "adapter")
    run(["/usr/bin/python3", os.path.join(HERE, "merge_reference.py"), "llama2c-adapter", model_bin, adapter])
    out = os.path.join(tmp, "merged")
    merge(model_bin, adapter, out)
    worst, merged = compare(model_bin, adapter, out)
    assert len(merged) == 10, merged  # q_proj and v_proj of 5 layers; q in HF's RoPE layout
    cfg = json.load(open(os.path.join(out, "config.json")))
    assert cfg["num_hidden_layers"] == 5 and cfg["model_type"] == "llama", cfg
    print(f"llama2c: {len(merged)} weights merged into stories260K, max rel error {worst:.2e}")


def expect_error(tmp, base, adapter, out, *needles, extra=()):
    p = merge(base, adapter, out, *extra, ok=False)
    assert p.returncode != 0, f"exit 0 for {needles}"
    for s in needles:
        assert s in p.stderr, f"stderr lacks {s!r}:\n{p.stderr}"
    assert not os.path.exists(out + ".partial"), "left a staging folder"
    return p


def rewrite_adapter(adapter, dst, edit):
    os.makedirs(dst)
    T = ref.read_safetensors(os.path.join(adapter, "adapter_model.safetensors"))
    edit(T)
    ref.write_safetensors(os.path.join(dst, "adapter_model.safetensors"), T)
    cfg = json.load(open(os.path.join(adapter, "adapter_config.json")))
    json.dump(cfg, open(os.path.join(dst, "adapter_config.json"), "w"))
    return dst


def t_errors(tmp):
    base, adapter = make(tmp, "llama")
    out = os.path.join(tmp, "out")
    q = "base_model.model.model.layers.0.self_attn.q_proj"
    # A module the base does not have (layer 9 of a 2-layer model).
    def extra_layer(T):
        T[q.replace("layers.0", "layers.9") + ".lora_A.weight"] = T[q + ".lora_A.weight"]
        T[q.replace("layers.0", "layers.9") + ".lora_B.weight"] = T[q + ".lora_B.weight"]
    bad = rewrite_adapter(adapter, os.path.join(tmp, "missing"), extra_layer)
    expect_error(tmp, base, bad, out, "module 'model.layers.9.self_attn.q_proj'", "lora_A [4, 64], lora_B [64, 4]",
                 "has no weight 'model.layers.9.self_attn.q_proj.weight'", "HINT")
    assert not os.path.exists(out)
    # A delta of another shape than the weight.
    def wrong_out(T):
        T[q + ".lora_B.weight"] = torch.randn(32, 4)
    bad = rewrite_adapter(adapter, os.path.join(tmp, "shape"), wrong_out)
    expect_error(tmp, base, bad, out, "module 'model.layers.0.self_attn.q_proj'", "[32, 64]", "has shape [64, 64]")
    assert not os.path.exists(out)
    # fan_in_fan_out that does not fit the architecture (a Llama adapter saying Conv1D).
    bad = os.path.join(tmp, "fifo")
    os.makedirs(bad)
    ref.write_safetensors(os.path.join(bad, "adapter_model.safetensors"),
                          ref.read_safetensors(os.path.join(adapter, "adapter_model.safetensors")))
    cfg = json.load(open(os.path.join(adapter, "adapter_config.json")))
    json.dump({**cfg, "fan_in_fan_out": True}, open(os.path.join(bad, "adapter_config.json"), "w"))
    expect_error(tmp, base, bad, out, "fan_in_fan_out is true")
    assert not os.path.exists(out)
    # --out not empty: refused, and what was there is untouched.
    os.makedirs(out)
    open(os.path.join(out, "keep.txt"), "w").write("mine")
    expect_error(tmp, base, adapter, out, "already exists and is not empty")
    assert os.listdir(out) == ["keep.txt"] and open(os.path.join(out, "keep.txt")).read() == "mine"
    # A staging folder left by a killed merge is named, not reused.
    out2 = os.path.join(tmp, "out2")
    os.makedirs(out2 + ".partial")
    p = merge(base, adapter, out2, ok=False)
    assert p.returncode != 0 and "out2.partial" in p.stderr and not os.path.exists(out2), p.stderr
    os.rmdir(out2 + ".partial")
    # A weight that F16 cannot hold fails mid-stream: the staging folder goes, --out never appears.
    big = os.path.join(tmp, "big_values")
    shutil.copytree(base, big)
    T = ref.read_safetensors(os.path.join(big, "model.safetensors"))
    T["model.norm.weight"][0] = 1e6
    ref.write_safetensors(os.path.join(big, "model.safetensors"), T, {"format": "pt"})
    expect_error(tmp, big, adapter, out2, "'model.norm.weight' does not fit F16", extra=("--dtype", "F16"))
    assert not os.path.exists(out2)
    # A bad --dtype, a usage error and a missing adapter folder.
    expect_error(tmp, base, adapter, out2, "--dtype 'int8'", extra=("--dtype", "int8"))
    expect_error(tmp, base, os.path.join(tmp, "nope"), out2, "no such folder")
    assert not os.path.exists(out2)
    p = run([EXPORT, "merge", "--model", base], ok=False)
    assert p.returncode == 2, p.returncode
    p = run([EXPORT], ok=False)
    assert p.returncode == 2, p.returncode
    print("errors: all refused before writing")


def run_measured(args):
    """Runs `args`; its peak RSS in bytes: ru_maxrss of exactly this child (os.wait4)."""
    p = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    err = p.stderr.read()
    _, status, usage = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    assert p.returncode == 0, f"{args} failed ({p.returncode}):\n{err.decode()[-3000:]}"
    return usage.ru_maxrss * 1024


def write_big_base(base, adapter):
    """~320 MB of fp32 in 29 tensors, the largest (the embedding) 41 MB; adapter on every q_proj."""
    c = ref.llama_config(vocab_size=5000, hidden_size=2048, intermediate_size=1024, num_hidden_layers=3,
                         num_attention_heads=16, num_key_value_heads=16, tie_word_embeddings=True)
    shapes = ref.llama_shapes(c)
    os.makedirs(base)
    json.dump(c, open(os.path.join(base, "config.json"), "w"))
    header, off = {"__metadata__": {"format": "pt"}}, 0
    for n, s in shapes.items():
        nbytes = 4 * int(torch.tensor(s).prod())
        header[n] = {"dtype": "F32", "shape": list(s), "data_offsets": [off, off + nbytes]}
        off += nbytes
    h = json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    chunk = torch.full((1 << 20,), 0.01).numpy().tobytes()  # 4 MiB of 0.01
    with open(os.path.join(base, "model.safetensors"), "wb") as f:
        f.write(len(h).to_bytes(8, "little") + h)
        left = off
        while left:
            f.write(chunk[:min(left, len(chunk))])
            left -= min(left, len(chunk))
    mods = {f"model.layers.{l}.self_attn.q_proj": (2048, 2048) for l in range(3)}
    ref.write_adapter(adapter, mods, r=8, alpha=16, fan_in_fan_out=False, seed=3, targets=["q_proj"])
    return off, max(4 * int(torch.tensor(s).prod()) for s in shapes.values())


def t_memory(tmp):
    small, small_adapter = make(tmp, "llama")
    baseline = run_measured([EXPORT, "merge", "--model", small, "--adapter", small_adapter,
                             "--out", os.path.join(tmp, "small_out")])
    base, adapter = os.path.join(tmp, "big"), os.path.join(tmp, "big_adapter")
    total, largest = write_big_base(base, adapter)
    out = os.path.join(tmp, "big_out")
    peak = run_measured([EXPORT, "merge", "--model", base, "--adapter", adapter, "--out", out])
    header, _, start = ref.read_header(os.path.join(out, "model.safetensors"))
    assert os.path.getsize(os.path.join(out, "model.safetensors")) - start == total and len(header) == 29, len(header)
    mb = 1 << 20
    print(f"memory: base {total / mb:.0f} MB, largest tensor {largest / mb:.0f} MB; peak RSS {peak / mb:.0f} MB, "
          f"tiny-merge baseline {baseline / mb:.0f} MB, growth {(peak - baseline) / mb:.0f} MB")
    assert peak < baseline + 3 * largest, \
        f"peak RSS {peak / mb:.0f} MB >= baseline {baseline / mb:.0f} MB + 3 x largest tensor {largest / mb:.0f} MB"


if __name__ == "__main__":
    torch.set_num_threads(2)
    sys.exit(run_case(globals(), "export"))
