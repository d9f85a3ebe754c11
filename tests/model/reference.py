#!/usr/bin/python3
"""Independent reference for shardtune's models (plain torch ops; imports nothing from the project).

Creates random-init models in Hugging Face layout (config.json + safetensors), and writes, for fixed
tokens, the reference logits, gradients of the masked mean loss w.r.t. every parameter, greedy
generations, per-document logits of a packed row, and logits and loss under torch.autocast(bf16), to
<case>/ref.safetensors.
Also reads llama2.c legacy .bin files and runs them with llama2.c's own interleaved RoPE.

usage: reference.py make OUT_DIR            (all random cases)
       reference.py llama2c MODEL.bin OUT_DIR
"""
import json
import math
import os
import struct
import sys

import numpy as np
import torch

torch.set_num_threads(int(os.environ.get("ST_REF_THREADS", "2")))

# ---------------------------------------------------------------- safetensors (own reader/writer)
NAME_OF = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64",
           torch.int64: "I64", torch.int32: "I32", torch.uint8: "U8", torch.bool: "BOOL"}
DTYPE_OF = {v: k for k, v in NAME_OF.items()}


def write_safetensors(path, tensors, metadata=None):
    header, blobs, off = {}, [], 0
    if metadata:
        header["__metadata__"] = metadata
    for name, t in tensors.items():
        t = t.detach().contiguous()
        raw = t.view(torch.uint8).numpy().tobytes() if t.numel() else b""
        header[name] = {"dtype": NAME_OF[t.dtype], "shape": list(t.shape), "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    h = json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def read_header(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
    meta = header.pop("__metadata__", {})
    return header, meta, 8 + n


def read_safetensors(path):
    header, _, start = read_header(path)
    with open(path, "rb") as f:
        buf = f.read()
    out = {}
    for name, e in header.items():
        b, end = e["data_offsets"]
        dt = DTYPE_OF[e["dtype"]]
        raw = bytearray(buf[start + b:start + end])
        t = torch.frombuffer(raw, dtype=torch.uint8) if raw else torch.empty(0, dtype=torch.uint8)
        out[name] = t.view(dt).reshape(e["shape"]).clone()
    return out


# ---------------------------------------------------------------- models
def llama_inv_freq(cfg):
    hd = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    base = cfg.get("rope_theta", 10000.0)
    inv = 1.0 / (base ** (torch.arange(0, hd, 2, dtype=torch.int64).float() / hd))
    rs = cfg.get("rope_scaling")
    if rs and rs.get("rope_type", rs.get("type")) == "llama3":
        factor, lo, hi = rs["factor"], rs["low_freq_factor"], rs["high_freq_factor"]
        old = rs["original_max_position_embeddings"]
        lo_wl, hi_wl = old / lo, old / hi
        wl = 2 * math.pi / inv
        new = torch.where(wl > lo_wl, inv / factor, inv)
        smooth = (old / wl - lo) / (hi - lo)
        smoothed = (1 - smooth) * new / factor + smooth * new
        medium = ~(wl < hi_wl) * ~(wl > lo_wl)
        inv = torch.where(medium, smoothed, new)
    return inv


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


def rmsnorm(x, w, eps):
    return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def attend(q, k, v, positions, doc_ids):
    # q [B,H,T,hd], k/v [B,Hkv,T,hd]
    H, Hkv = q.shape[1], k.shape[1]
    k = k.repeat_interleave(H // Hkv, dim=1)
    v = v.repeat_interleave(H // Hkv, dim=1)
    B, T = q.shape[0], q.shape[2]
    # scale * q k^T as one GEMM (alpha): under autocast the scale is applied before the bf16 rounding, as
    # shardtune does. (HF rounds q k^T to bf16, then divides: for a head_dim whose root is no power of 2,
    # e.g. 8 or 128, that moves one rounding point; measured on llama_bias_headdim: bf16 logits rel 1.4e-2.)
    # (A materialized zero input: with beta=0 and an expanded one, torch 1.13 gave different scores once a
    # backward pass had run in the process.)
    s = torch.baddbmm(q.new_zeros(B * H, T, T), q.reshape(B * H, T, -1), k.reshape(B * H, T, -1).transpose(1, 2),
                      alpha=1.0 / math.sqrt(q.shape[-1]))
    s = s.view(B, H, T, T)
    allowed = torch.ones(T, T, dtype=torch.bool).tril()[None, None]
    if doc_ids is not None:
        allowed = allowed & (doc_ids[:, None, :, None] == doc_ids[:, None, None, :])
    s = s.masked_fill(~allowed, float("-inf"))
    # As HF's eager attention: softmax in fp32, probabilities back in v's dtype (bf16 under autocast).
    return torch.softmax(s.float(), dim=-1).to(v.dtype) @ v


def with_lora(x, y, name, lora):
    """PEFT's LoRA forward: y + lora_B(lora_A(x)) * scaling, for module `name` when `lora` has it."""
    if lora and name in lora:
        A, B, scale = lora[name]
        y = y + (x @ A.t()) @ B.t() * scale
    return y


def llama_forward(cfg, W, ids, positions=None, doc_ids=None, lora=None):
    B, T = ids.shape
    C, H = cfg["hidden_size"], cfg["num_attention_heads"]
    Hkv = cfg.get("num_key_value_heads", H)
    hd = cfg.get("head_dim") or C // H
    eps = cfg["rms_norm_eps"]
    if positions is None:
        positions = torch.arange(T)[None].expand(B, T)
    ang = positions[..., None].float() * llama_inv_freq(cfg)
    ang = torch.cat([ang, ang], -1)[:, None]
    cos, sin = ang.cos(), ang.sin()

    def lin(x, name):  # nn.Linear: under autocast the bias is added inside the bf16 op, as HF
        return with_lora(x, torch.nn.functional.linear(x, W[name + ".weight"], W.get(name + ".bias")), name, lora)

    x = W["model.embed_tokens.weight"][ids]
    for l in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{l}."
        h = rmsnorm(x, W[p + "input_layernorm.weight"], eps)
        q = lin(h, p + "self_attn.q_proj").view(B, T, H, hd).transpose(1, 2)
        k = lin(h, p + "self_attn.k_proj").view(B, T, Hkv, hd).transpose(1, 2)
        v = lin(h, p + "self_attn.v_proj").view(B, T, Hkv, hd).transpose(1, 2)
        # As HF's apply_rotary_pos_emb: cos/sin in q's dtype, so the rotation runs in bf16 under autocast.
        c, sn = cos.to(q.dtype), sin.to(q.dtype)
        q = q * c + rotate_half(q) * sn
        k = k * c + rotate_half(k) * sn
        y = attend(q, k, v, positions, doc_ids).transpose(1, 2).reshape(B, T, H * hd)
        x = x + lin(y, p + "self_attn.o_proj")
        h = rmsnorm(x, W[p + "post_attention_layernorm.weight"], eps)
        x = x + lin(torch.nn.functional.silu(lin(h, p + "mlp.gate_proj")) * lin(h, p + "mlp.up_proj"),
                    p + "mlp.down_proj")
    x = rmsnorm(x, W["model.norm.weight"], eps)
    head = W["model.embed_tokens.weight"] if cfg.get("tie_word_embeddings") else W["lm_head.weight"]
    return x @ head.t()


def gelu_new(x):
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


def gpt2_forward(cfg, W, ids, positions=None, doc_ids=None, lora=None):
    B, T = ids.shape
    C, H = cfg["n_embd"], cfg["n_head"]
    hd, eps = C // H, cfg["layer_norm_epsilon"]
    if positions is None:
        positions = torch.arange(T)[None].expand(B, T)
    ln = lambda x, n: torch.nn.functional.layer_norm(x, (C,), W[n + ".weight"], W[n + ".bias"], eps)
    # HF Conv1D is addmm(bias, x, w): one op, so under autocast the bias is added before the bf16 rounding.
    conv = lambda x, n: with_lora(x, torch.addmm(W[n + ".bias"], x.reshape(-1, x.shape[-1]), W[n + ".weight"]).view(
        *x.shape[:-1], -1), n, lora)
    x = W["transformer.wte.weight"][ids] + W["transformer.wpe.weight"][positions]
    for l in range(cfg["n_layer"]):
        p = f"transformer.h.{l}."
        qkv = conv(ln(x, p + "ln_1"), p + "attn.c_attn")
        q, k, v = [t.view(B, T, H, hd).transpose(1, 2) for t in qkv.split(C, dim=2)]
        y = attend(q, k, v, positions, doc_ids).transpose(1, 2).reshape(B, T, C)
        x = x + conv(y, p + "attn.c_proj")
        x = x + conv(gelu_new(conv(ln(x, p + "ln_2"), p + "mlp.c_fc")), p + "mlp.c_proj")
    x = ln(x, "transformer.ln_f")
    return x @ W["transformer.wte.weight"].t()


def forward(cfg, W, ids, positions=None, doc_ids=None, lora=None):
    fn = gpt2_forward if cfg["model_type"] == "gpt2" else llama_forward
    return fn(cfg, W, ids, positions, doc_ids, lora)


def masked_mean_loss(logits, ids, mask):
    # loss_mask[t] = 1: token t is a target predicted from position t-1.
    ce = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1),
                                           reduction="none")
    m = mask[:, 1:].reshape(-1).float()
    return (ce * m).sum() / m.sum()


def greedy(cfg, W, prompt, n):
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            logits = forward(cfg, W, torch.tensor([ids]))
            ids.append(int(logits[0, -1].argmax()))
    return ids[len(prompt):]


# ---------------------------------------------------------------- random models
def param_shapes(cfg):
    if cfg["model_type"] == "gpt2":
        C, I, V, P = cfg["n_embd"], cfg.get("n_inner") or 4 * cfg["n_embd"], cfg["vocab_size"], cfg["n_positions"]
        s = {"transformer.wte.weight": (V, C), "transformer.wpe.weight": (P, C)}
        for l in range(cfg["n_layer"]):
            p = f"transformer.h.{l}."
            s.update({p + "ln_1.weight": (C,), p + "ln_1.bias": (C,), p + "attn.c_attn.weight": (C, 3 * C),
                      p + "attn.c_attn.bias": (3 * C,), p + "attn.c_proj.weight": (C, C), p + "attn.c_proj.bias": (C,),
                      p + "ln_2.weight": (C,), p + "ln_2.bias": (C,), p + "mlp.c_fc.weight": (C, I),
                      p + "mlp.c_fc.bias": (I,), p + "mlp.c_proj.weight": (I, C), p + "mlp.c_proj.bias": (C,)})
        s.update({"transformer.ln_f.weight": (C,), "transformer.ln_f.bias": (C,)})
        return s
    C, I, V, H = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"], cfg["num_attention_heads"]
    Hkv = cfg.get("num_key_value_heads", H)
    hd = cfg.get("head_dim") or C // H
    qkv_bias = cfg.get("attention_bias", False) or cfg["model_type"] == "qwen2"
    s = {"model.embed_tokens.weight": (V, C)}
    for l in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{l}."
        s[p + "input_layernorm.weight"] = (C,)
        for n, o in (("q", H * hd), ("k", Hkv * hd), ("v", Hkv * hd)):
            s[p + f"self_attn.{n}_proj.weight"] = (o, C)
            if qkv_bias:
                s[p + f"self_attn.{n}_proj.bias"] = (o,)
        s[p + "self_attn.o_proj.weight"] = (C, H * hd)
        if cfg.get("attention_bias", False):
            s[p + "self_attn.o_proj.bias"] = (C,)
        s[p + "post_attention_layernorm.weight"] = (C,)
        s[p + "mlp.gate_proj.weight"] = (I, C)
        s[p + "mlp.up_proj.weight"] = (I, C)
        s[p + "mlp.down_proj.weight"] = (C, I)
    s["model.norm.weight"] = (C,)
    if not cfg.get("tie_word_embeddings", False):
        s["lm_head.weight"] = (V, C)
    return s


def random_weights(cfg, seed, std):
    g = torch.Generator().manual_seed(seed)
    W = {}
    for name, shape in param_shapes(cfg).items():
        if len(shape) == 1 and name.endswith(".weight"):
            W[name] = 1.0 + 0.1 * torch.randn(shape, generator=g)
        elif name.endswith(".bias"):
            W[name] = 0.1 * torch.randn(shape, generator=g)
        else:
            W[name] = std * torch.randn(shape, generator=g)
    return W


def save_hf(cfg, W, out, shard_every=0, strip_gpt2_prefix=False):
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    names = list(W)
    disk = {n: (n[len("transformer."):] if strip_gpt2_prefix and n.startswith("transformer.") else n) for n in names}
    if strip_gpt2_prefix:  # old GPT-2 checkpoints also carry the causal-mask buffers
        extra = {f"h.{l}.attn.bias": torch.ones(1, 1, 4, 4).tril() for l in range(cfg["n_layer"])}
    else:
        extra = {}
    if not shard_every:
        write_safetensors(os.path.join(out, "model.safetensors"), {**{disk[n]: W[n] for n in names}, **extra},
                          {"format": "pt"})
        return
    groups = [names[i:i + shard_every] for i in range(0, len(names), shard_every)]
    wm = {}
    for i, g in enumerate(groups):
        fn = f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors"
        write_safetensors(os.path.join(out, fn), {disk[n]: W[n] for n in g}, {"format": "pt"})
        wm.update({disk[n]: fn for n in g})
    with open(os.path.join(out, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": 0}, "weight_map": wm}, f)


def llama_cfg(**kw):
    c = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 97, "hidden_size": 64,
         "intermediate_size": 160, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
         "max_position_embeddings": 256, "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "rope_scaling": None,
         "tie_word_embeddings": False, "attention_bias": False, "hidden_act": "silu", "torch_dtype": "float32"}
    c.update(kw)
    return c


CASES = {
    "llama_gqa_untied": (llama_cfg(), {}),
    "llama_mqa_tied_llama3": (llama_cfg(num_key_value_heads=1, tie_word_embeddings=True, rope_theta=500000.0,
                                        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                                      "high_freq_factor": 4.0,
                                                      "original_max_position_embeddings": 32}),
                              {"shard_every": 7}),
    "llama_bias_headdim": (llama_cfg(num_key_value_heads=4, attention_bias=True, head_dim=8), {}),
    "qwen2_qkv_bias": (llama_cfg(architectures=["Qwen2ForCausalLM"], model_type="qwen2", rope_theta=1000000.0), {}),
    "gpt2": ({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": 101, "n_embd": 64,
              "n_layer": 2, "n_head": 4, "n_positions": 128, "n_ctx": 128, "n_inner": None,
              "layer_norm_epsilon": 1e-5, "activation_function": "gelu_new", "tie_word_embeddings": True},
             {"strip_gpt2_prefix": True}),
}


def autocast_bf16():
    """The region shardtune's --precision bf16 opens (model::AutocastGuard sets the same CPU autocast state):
    matmuls in bf16, the reference's own ops otherwise, so differences left are op order and rounding."""
    return torch.autocast("cpu", dtype=torch.bfloat16)


def make_case(name, out_root, weight_seed=1234, data_seed=7):
    cfg, save_kw = CASES[name]
    out = os.path.join(out_root, name)
    W = random_weights(cfg, seed=weight_seed, std=0.15)
    save_hf(cfg, W, os.path.join(out, "hf"), **save_kw)
    V = cfg["vocab_size"]
    g = torch.Generator().manual_seed(data_seed)
    B, T = 2, 24
    ids = torch.randint(0, V, (B, T), generator=g)
    mask = (torch.rand(B, T, generator=g) > 0.3).long()
    params = {n: t.clone().requires_grad_(True) for n, t in W.items()}
    logits = forward(cfg, params, ids)
    loss = masked_mean_loss(logits, ids, mask)
    loss.backward()
    ref = {"ids": ids, "loss_mask": mask, "logits": logits.detach(), "loss": loss.detach().reshape(1)}
    for n, p in params.items():
        ref["grad/" + n] = p.grad
    # The same forward under bf16 autocast: logits and masked mean loss (CE on the bf16 logits, in fp32).
    with torch.no_grad(), autocast_bf16():
        logits_bf16 = forward(cfg, W, ids).float()
    ref["logits_bf16"] = logits_bf16
    ref["loss_bf16"] = masked_mean_loss(logits_bf16, ids, mask).reshape(1)
    # Packed row: three documents; reference = separate forwards, concatenated.
    docs = [7, 10, 7]
    doc_ids = torch.cat([torch.full((n,), i) for i, n in enumerate(docs)])[None]
    with torch.no_grad():
        parts, s = [], 0
        for n in docs:
            parts.append(forward(cfg, W, ids[:1, s:s + n]))
            s += n
        ref["packed_doc_ids"] = doc_ids
        ref["packed_logits"] = torch.cat(parts, dim=1)
        # And the same through the reference's own doc mask (positions restart per document).
        pos = torch.cat([torch.arange(n) for n in docs])[None]
        ref["packed_logits_masked"] = forward(cfg, W, ids[:1], pos, doc_ids)
    prompt = ids[0, :5].tolist()
    ref["gen_prompt"] = torch.tensor(prompt)
    ref["gen"] = torch.tensor(greedy(cfg, W, prompt, 32))
    write_safetensors(os.path.join(out, "ref.safetensors"), ref)
    make_lora_case(cfg, W, ids, mask, out, rslora=(name == "llama_bias_headdim"))


# ---------------------------------------------------------------- LoRA adapters (PEFT layout)
def linear_modules(cfg):
    """Every projection's module path (PEFT's all-linear on a causal LM: all Linear/Conv1D but the head)."""
    return [n[:-len(".weight")] for n, s in param_shapes(cfg).items()
            if len(s) == 2 and n.endswith(".weight") and ("layers." in n or ".h." in n)]


def write_peft_adapter(out, cfg, lora, r, alpha, rslora, targets):
    """An adapter folder as PEFT's save_pretrained writes it: adapter_config.json and adapter_model.safetensors
    with keys base_model.model.<module>.lora_A.weight [r, in] / lora_B.weight [out, r]."""
    os.makedirs(out, exist_ok=True)
    conf = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": r, "lora_alpha": alpha, "lora_dropout": 0.0,
            "target_modules": targets, "bias": "none", "fan_in_fan_out": cfg["model_type"] == "gpt2",
            "use_rslora": rslora, "base_model_name_or_path": "reference", "init_lora_weights": True,
            "inference_mode": True, "modules_to_save": None, "revision": None}
    with open(os.path.join(out, "adapter_config.json"), "w") as f:
        json.dump(conf, f, indent=2)
    t = {}
    for m, (A, B, _) in lora.items():
        t[f"base_model.model.{m}.lora_A.weight"] = A
        t[f"base_model.model.{m}.lora_B.weight"] = B
    write_safetensors(os.path.join(out, "adapter_model.safetensors"), t, {"format": "pt"})


def merge_reference(cfg, W, lora):
    """W + scale * B @ A per module (transposed for GPT-2's Conv1D, whose weight is [in, out])."""
    M = dict(W)
    for m, (A, B, s) in lora.items():
        d = (B @ A) * s
        M[m + ".weight"] = W[m + ".weight"] + (d.t() if cfg["model_type"] == "gpt2" else d)
    return M


def make_lora_case(cfg, W, ids, mask, out, rslora):
    """A random non-zero adapter on every projection, written in PEFT layout, and the reference's logits,
    masked-loss gradients w.r.t. every A and B, and logits of the independently merged weights."""
    r, alpha = 4, 8.0
    scale = alpha / math.sqrt(r) if rslora else alpha / r
    g = torch.Generator().manual_seed(4321)
    shapes = param_shapes(cfg)
    lora = {}
    for m in linear_modules(cfg):
        rows, cols = shapes[m + ".weight"]
        fan_in, fan_out = (rows, cols) if cfg["model_type"] == "gpt2" else (cols, rows)
        lora[m] = (0.2 * torch.randn(r, fan_in, generator=g), 0.2 * torch.randn(fan_out, r, generator=g), scale)
    short = sorted({m.rsplit(".", 1)[1] for m in lora})
    write_peft_adapter(os.path.join(out, "adapter"), cfg, lora, r, alpha, rslora, short)
    params = {m: (A.clone().requires_grad_(True), B.clone().requires_grad_(True), s) for m, (A, B, s) in lora.items()}
    logits = forward(cfg, W, ids, lora=params)
    loss = masked_mean_loss(logits, ids, mask)
    loss.backward()
    ref = {"logits": logits.detach(), "loss": loss.detach().reshape(1)}
    for m, (A, B, _) in params.items():
        ref[f"grad/{m}.lora_A.weight"] = A.grad
        ref[f"grad/{m}.lora_B.weight"] = B.grad
    with torch.no_grad():
        ref["merged_logits"] = forward(cfg, merge_reference(cfg, W, lora), ids)
    write_safetensors(os.path.join(out, "ref_lora.safetensors"), ref)


# ---------------------------------------------------------------- llama2.c legacy .bin
def llama2c_forward(hp, W, ids):
    """llama2.c model.py semantics: Meta/interleaved RoPE via complex multiplication."""
    dim, hidden, L, H, Hkv, V, S = hp
    hd = dim // H
    T = ids.shape[1]
    freqs = 1.0 / (10000.0 ** (torch.arange(0, hd, 2)[: hd // 2].float() / hd))
    fc = torch.polar(torch.ones(T, hd // 2), torch.outer(torch.arange(T).float(), freqs))

    def rope(x):  # x [B,T,h,hd], pairs (0,1), (2,3), ...
        xc = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))
        return torch.view_as_real(xc * fc[None, :, None, :]).flatten(3)

    x = W["tok"][ids]
    B = ids.shape[0]
    for l in range(L):
        h = rmsnorm(x, W["rms_att"][l], 1e-5)
        q = rope((h @ W["wq"][l].t()).view(B, T, H, hd))
        k = rope((h @ W["wk"][l].t()).view(B, T, Hkv, hd))
        v = (h @ W["wv"][l].t()).view(B, T, Hkv, hd)
        y = attend(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), None, None)
        x = x + y.transpose(1, 2).reshape(B, T, dim) @ W["wo"][l].t()
        h = rmsnorm(x, W["rms_ffn"][l], 1e-5)
        x = x + (torch.nn.functional.silu(h @ W["w1"][l].t()) * (h @ W["w3"][l].t())) @ W["w2"][l].t()
    x = rmsnorm(x, W["rms_final"], 1e-5)
    return x @ W["cls"].t()


def llama2c(path, out):
    with open(path, "rb") as f:
        hp = list(struct.unpack("<7i", f.read(28)))
        data = torch.from_numpy(np.frombuffer(f.read(), dtype=np.float32).copy())
    shared = hp[5] > 0
    hp[5] = abs(hp[5])
    dim, hidden, L, H, Hkv, V, S = hp
    kv = dim // H * Hkv
    off = 0

    def take(*shape):
        nonlocal off
        n = int(np.prod(shape))
        t = data[off:off + n].view(*shape)
        off += n
        return t

    W = {"tok": take(V, dim), "rms_att": take(L, dim), "wq": take(L, dim, dim), "wk": take(L, kv, dim),
         "wv": take(L, kv, dim), "wo": take(L, dim, dim), "rms_ffn": take(L, dim), "w1": take(L, hidden, dim),
         "w2": take(L, dim, hidden), "w3": take(L, hidden, dim), "rms_final": take(dim)}
    take(S, dim // H)  # freq_cis
    W["cls"] = W["tok"] if shared else take(V, dim)
    os.makedirs(out, exist_ok=True)
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(3, V, (2, 32), generator=g)
    ids[:, 0] = 1
    with torch.no_grad():
        logits = llama2c_forward(hp, W, ids)
        gen = [1]
        for _ in range(32):
            gen.append(int(llama2c_forward(hp, W, torch.tensor([gen]))[0, -1].argmax()))
        seq = torch.tensor([gen])
        # Mean CE over every next token: of the random ids, and of the model's own greedy continuation
        # (a trained model predicts that one well: a number far from the random ids' loss).
        loss = masked_mean_loss(logits, ids, torch.ones_like(ids))
        gen_loss = masked_mean_loss(llama2c_forward(hp, W, seq), seq, torch.ones_like(seq))
    write_safetensors(os.path.join(out, "ref.safetensors"),
                      {"ids": ids, "logits": logits, "loss": loss.reshape(1), "gen_prompt": torch.tensor([1]),
                       "gen": torch.tensor(gen[1:]), "gen_seq": seq, "gen_loss": gen_loss.reshape(1)})


if __name__ == "__main__":
    if sys.argv[1] == "make":
        for name in CASES:
            make_case(name, sys.argv[2])
        print("reference: wrote", ", ".join(CASES), "under", sys.argv[2])
    elif sys.argv[1] == "llama2c":
        llama2c(sys.argv[2], sys.argv[3])
        print("reference: llama2.c", sys.argv[2], "->", sys.argv[3])
    else:
        sys.exit(__doc__)
