#!/usr/bin/python3
"""Independent LoRA merge reference for shardtune-export merge (plain torch; imports nothing from shardtune).

Writes random Hugging Face base folders (Llama, GPT-2 with Conv1D weights and without the "transformer."
prefix, sharded) and random PEFT-layout adapters (B != 0), and merges an adapter into a base with PEFT's
delta (get_delta_weight): W + transpose(B @ A, fan_in_fan_out) * lora_alpha / r, summed in fp32 and cast
to the output dtype once (PEFT on a bf16 base would round the delta to bf16 before adding it).
Debian has no `safetensors` module, so this file reads and writes the format itself.

usage: merge_reference.py make KIND BASE_DIR ADAPTER_DIR   (KIND: llama | gpt2 | sharded | llama_bf16)
       merge_reference.py llama2c-adapter MODEL.bin ADAPTER_DIR
       merge_reference.py merge BASE_DIR ADAPTER_DIR OUT.safetensors [DTYPE]
"""
import json
import math
import os
import struct
import sys

import torch

# ---------------------------------------------------------------- safetensors: tests/model/reference.py's
# own reader/writer (that file is the other independent torch reference; it imports nothing of shardtune)
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "model"))
from reference import read_header, read_safetensors, write_safetensors  # noqa: E402, F401 (merge_test uses read_header)


def read_model(base):
    """tensor name -> (file name, tensor) of an HF folder, single file or sharded."""
    index = os.path.join(base, "model.safetensors.index.json")
    files = sorted(set(json.load(open(index))["weight_map"].values())) if os.path.exists(index) else ["model.safetensors"]
    out = {}
    for fn in files:
        for name, t in read_safetensors(os.path.join(base, fn)).items():
            out[name] = (fn, t)
    return out


# ---------------------------------------------------------------- random bases and adapters
def llama_config(**kw):
    c = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 97, "hidden_size": 64,
         "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
         "max_position_embeddings": 128, "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": False,
         "hidden_act": "silu", "torch_dtype": "float32", "bos_token_id": 1, "eos_token_id": 2}
    c.update(kw)
    return c


def llama_shapes(c):
    C, I, V, H, Hkv = (c["hidden_size"], c["intermediate_size"], c["vocab_size"], c["num_attention_heads"],
                       c["num_key_value_heads"])
    hd = C // H
    s = {"model.embed_tokens.weight": (V, C)}
    for l in range(c["num_hidden_layers"]):
        p = f"model.layers.{l}."
        s.update({p + "input_layernorm.weight": (C,), p + "self_attn.q_proj.weight": (H * hd, C),
                  p + "self_attn.k_proj.weight": (Hkv * hd, C), p + "self_attn.v_proj.weight": (Hkv * hd, C),
                  p + "self_attn.o_proj.weight": (C, H * hd), p + "post_attention_layernorm.weight": (C,),
                  p + "mlp.gate_proj.weight": (I, C), p + "mlp.up_proj.weight": (I, C),
                  p + "mlp.down_proj.weight": (C, I)})
    s["model.norm.weight"] = (C,)
    if not c["tie_word_embeddings"]:
        s["lm_head.weight"] = (V, C)
    return s


def gpt2_config():
    return {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": 101, "n_embd": 64, "n_layer": 2,
            "n_head": 4, "n_positions": 64, "n_ctx": 64, "n_inner": None, "layer_norm_epsilon": 1e-5,
            "activation_function": "gelu_new", "tie_word_embeddings": True, "torch_dtype": "float32"}


def gpt2_shapes(c):
    C, V, P = c["n_embd"], c["vocab_size"], c["n_positions"]
    s = {"wte.weight": (V, C), "wpe.weight": (P, C)}  # the original checkpoints' names: no "transformer."
    for l in range(c["n_layer"]):
        p = f"h.{l}."
        s.update({p + "ln_1.weight": (C,), p + "ln_1.bias": (C,), p + "attn.c_attn.weight": (C, 3 * C),
                  p + "attn.c_attn.bias": (3 * C,), p + "attn.c_proj.weight": (C, C), p + "attn.c_proj.bias": (C,),
                  p + "ln_2.weight": (C,), p + "ln_2.bias": (C,), p + "mlp.c_fc.weight": (C, 4 * C),
                  p + "mlp.c_fc.bias": (4 * C,), p + "mlp.c_proj.weight": (4 * C, C), p + "mlp.c_proj.bias": (C,)})
    s.update({"ln_f.weight": (C,), "ln_f.bias": (C,)})
    return s


def random_tensors(shapes, seed):
    g = torch.Generator().manual_seed(seed)
    return {n: (1.0 + 0.1 * torch.randn(s, generator=g)) if len(s) == 1 else 0.02 * torch.randn(s, generator=g)
            for n, s in shapes.items()}


def write_base(base, config, W, shard_every=0):
    os.makedirs(base, exist_ok=True)
    json.dump(config, open(os.path.join(base, "config.json"), "w"), indent=2)
    json.dump({"bos_token_id": 1, "eos_token_id": 2}, open(os.path.join(base, "generation_config.json"), "w"))
    json.dump({"model_max_length": 64}, open(os.path.join(base, "tokenizer_config.json"), "w"))
    names = list(W)
    if not shard_every:
        write_safetensors(os.path.join(base, "model.safetensors"), W, {"format": "pt"})
        return
    groups = [names[i:i + shard_every] for i in range(0, len(names), shard_every)]
    wm = {}
    for i, g in enumerate(groups):
        fn = f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors"
        write_safetensors(os.path.join(base, fn), {n: W[n] for n in g}, {"format": "pt"})
        wm.update({n: fn for n in g})
    json.dump({"metadata": {"total_size": 0}, "weight_map": wm},
              open(os.path.join(base, "model.safetensors.index.json"), "w"))


def write_adapter(adapter, modules, r, alpha, fan_in_fan_out, seed, targets):
    """modules: PEFT module path -> (in, out). PEFT keys, no adapter name; B random so the merge matters."""
    os.makedirs(adapter, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    T = {}
    for m, (fan_in, fan_out) in modules.items():
        T[f"base_model.model.{m}.lora_A.weight"] = 0.1 * torch.randn(r, fan_in, generator=g)
        T[f"base_model.model.{m}.lora_B.weight"] = 0.1 * torch.randn(fan_out, r, generator=g)
    write_safetensors(os.path.join(adapter, "adapter_model.safetensors"), T, {"format": "pt"})
    cfg = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": r, "lora_alpha": alpha, "lora_dropout": 0.0,
           "target_modules": targets, "bias": "none", "fan_in_fan_out": fan_in_fan_out, "use_rslora": False,
           "base_model_name_or_path": "random", "init_lora_weights": True}
    json.dump(cfg, open(os.path.join(adapter, "adapter_config.json"), "w"), indent=2)


def make(kind, base, adapter):
    if kind in ("llama", "sharded", "llama_bf16"):
        c = llama_config(torch_dtype="bfloat16" if kind == "llama_bf16" else "float32")
        W = random_tensors(llama_shapes(c), 11)
        if kind == "llama_bf16":
            W = {n: t.to(torch.bfloat16) for n, t in W.items()}
        write_base(base, c, W, shard_every=5 if kind == "sharded" else 0)
        mods = {}
        for l in range(c["num_hidden_layers"]):
            for n in ("q_proj", "v_proj"):
                w = W[f"model.layers.{l}.self_attn.{n}.weight"]
                mods[f"model.layers.{l}.self_attn.{n}"] = (w.shape[1], w.shape[0])  # Linear [out, in]
            w = W[f"model.layers.{l}.mlp.down_proj.weight"]
            mods[f"model.layers.{l}.mlp.down_proj"] = (w.shape[1], w.shape[0])
        write_adapter(adapter, mods, r=4, alpha=8, fan_in_fan_out=False, seed=5, targets=["q_proj", "v_proj", "down_proj"])
    elif kind == "gpt2":
        c = gpt2_config()
        W = random_tensors(gpt2_shapes(c), 12)
        W.update({f"h.{l}.attn.bias": torch.ones(1, 1, 64, 64).tril() for l in range(c["n_layer"])})  # old buffers
        write_base(base, c, W)
        mods = {}
        for l in range(c["n_layer"]):
            for n in ("attn.c_attn", "attn.c_proj", "mlp.c_fc"):
                w = W[f"h.{l}.{n}.weight"]
                mods[f"transformer.h.{l}.{n}"] = (w.shape[0], w.shape[1])  # Conv1D [in, out]
        write_adapter(adapter, mods, r=8, alpha=16, fan_in_fan_out=True, seed=6, targets=["c_attn", "c_proj", "c_fc"])
    else:
        raise SystemExit(f"unknown kind {kind}")


def read_llama2c(path):
    """llama2.c legacy .bin -> (HF config subset, HF-named fp32 tensors). Q/K rows go from Meta's interleaved
    RoPE layout to HF's rotate_half one with transformers' convert_llama_weights_to_hf `permute`."""
    buf = open(path, "rb").read()
    dim, hidden, L, H, Hkv, vocab, seq = struct.unpack("<7i", buf[:28])
    shared, V = vocab > 0, abs(vocab)
    flat = torch.frombuffer(bytearray(buf[28:]), dtype=torch.float32)
    off = 0

    def take(*shape):
        nonlocal off
        n = math.prod(shape)
        t = flat[off:off + n].reshape(shape).clone()
        off += n
        return t

    def permute(w, heads):
        d1, d2 = w.shape
        return w.view(heads, d1 // heads // 2, 2, d2).transpose(1, 2).reshape(d1, d2)

    kv = Hkv * (dim // H)
    W = {"model.embed_tokens.weight": take(V, dim)}
    rms_att, wq, wk, wv, wo = take(L, dim), take(L, dim, dim), take(L, kv, dim), take(L, kv, dim), take(L, dim, dim)
    rms_ffn, w1, w2, w3 = take(L, dim), take(L, hidden, dim), take(L, dim, hidden), take(L, hidden, dim)
    for l in range(L):
        p = f"model.layers.{l}."
        W.update({p + "input_layernorm.weight": rms_att[l], p + "self_attn.q_proj.weight": permute(wq[l], H),
                  p + "self_attn.k_proj.weight": permute(wk[l], Hkv), p + "self_attn.v_proj.weight": wv[l],
                  p + "self_attn.o_proj.weight": wo[l], p + "post_attention_layernorm.weight": rms_ffn[l],
                  p + "mlp.gate_proj.weight": w1[l], p + "mlp.down_proj.weight": w2[l], p + "mlp.up_proj.weight": w3[l]})
    W["model.norm.weight"] = take(dim)
    take(seq, dim // H)  # freq_cis (real and imaginary halves)
    if not shared:
        W["lm_head.weight"] = take(V, dim)
    return {"num_hidden_layers": L, "num_attention_heads": H}, W


def make_llama2c_adapter(model_bin, adapter):
    _, W = read_llama2c(model_bin)
    mods = {}
    for n, w in W.items():
        if n.endswith(("q_proj.weight", "v_proj.weight")):
            mods[n[:-len(".weight")]] = (w.shape[1], w.shape[0])
    write_adapter(adapter, mods, r=4, alpha=8, fan_in_fan_out=False, seed=9, targets=["q_proj", "v_proj"])


# ---------------------------------------------------------------- the reference merge
def merge(base, adapter, dtype=None):
    """tensor name -> (file, merged tensor): fp32 sum, then the base's (or the given) dtype."""
    cfg = json.load(open(os.path.join(adapter, "adapter_config.json")))
    r, alpha = cfg["r"], cfg.get("lora_alpha", 8)
    scale = alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r
    fifo = cfg.get("fan_in_fan_out", False)
    A = read_safetensors(os.path.join(adapter, "adapter_model.safetensors"))
    model = read_model(base) if os.path.isdir(base) else \
        {n: ("model.safetensors", t) for n, t in read_llama2c(base)[1].items()}
    out = {n: (fn, t) for n, (fn, t) in model.items()}
    merged = set()
    for k, a in A.items():
        if not k.endswith(".lora_A.weight"):
            continue
        m = k[len("base_model.model."):-len(".lora_A.weight")]
        b = A[k.replace(".lora_A.weight", ".lora_B.weight")]
        name = m + ".weight"
        if name not in model and name.startswith("transformer."):
            name = name[len("transformer."):]
        fn, w = model[name]
        delta = b.float() @ a.float()
        if fifo:
            delta = delta.T
        out[name] = (fn, (w.float() + delta * scale).to(w.dtype))
        merged.add(name)
    if dtype:
        dt = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}[dtype]
        out = {n: (fn, t.to(dt) if t.is_floating_point() else t) for n, (fn, t) in out.items()}
    return out, merged


if __name__ == "__main__":
    torch.set_num_threads(2)
    if len(sys.argv) == 5 and sys.argv[1] == "make":
        make(sys.argv[2], sys.argv[3], sys.argv[4])
    elif len(sys.argv) == 4 and sys.argv[1] == "llama2c-adapter":
        make_llama2c_adapter(sys.argv[2], sys.argv[3])
    elif len(sys.argv) in (5, 6) and sys.argv[1] == "merge":
        res, _ = merge(sys.argv[2], sys.argv[3], sys.argv[5] if len(sys.argv) == 6 else None)
        write_safetensors(sys.argv[4], {n: t for n, (_, t) in res.items()})
    else:
        print(__doc__)
        sys.exit(2)
