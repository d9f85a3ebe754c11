#!/usr/bin/python3
"""Writes the demo's starting model: a tiny Llama (byte vocabulary: 256 bytes + <s> </s> <pad>) with
random weights from a fixed seed, in Hugging Face layout (config.json + model.safetensors). Needs only
numpy; the same seed gives the same bytes.
Usage: make_base.py OUT_DIR [--hidden 128] [--layers 2] [--heads 4] [--seed 1234]"""
import argparse
import json
import os
import struct

import numpy as np


def write_safetensors(path, tensors):
    header, off = {"__metadata__": {"format": "pt"}}, 0
    for name, a in tensors.items():
        header[name] = {"dtype": "F32", "shape": list(a.shape), "data_offsets": [off, off + a.nbytes]}
        off += a.nbytes
    h = json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path + ".tmp", "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for a in tensors.values():
            f.write(np.ascontiguousarray(a, dtype="<f4").tobytes())
    os.replace(path + ".tmp", path)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--seed", type=int, default=1234)
    a = ap.parse_args()
    C, L, H, V = a.hidden, a.layers, a.heads, 259
    inter = (8 * C // 3 + 7) // 8 * 8
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": V, "hidden_size": C,
           "intermediate_size": inter, "num_hidden_layers": L, "num_attention_heads": H, "num_key_value_heads": H,
           "max_position_embeddings": 256, "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "rope_scaling": None,
           "tie_word_embeddings": False, "attention_bias": False, "hidden_act": "silu", "torch_dtype": "float32",
           "bos_token_id": 256, "eos_token_id": 257, "pad_token_id": 258}
    rng = np.random.default_rng(a.seed)
    std = 0.02
    W = {"model.embed_tokens.weight": rng.normal(0, std, (V, C))}
    for l in range(L):
        p = f"model.layers.{l}."
        W[p + "input_layernorm.weight"] = np.ones(C)
        for n in "qkvo":
            W[p + f"self_attn.{n}_proj.weight"] = rng.normal(0, std, (C, C))
        W[p + "post_attention_layernorm.weight"] = np.ones(C)
        W[p + "mlp.gate_proj.weight"] = rng.normal(0, std, (inter, C))
        W[p + "mlp.up_proj.weight"] = rng.normal(0, std, (inter, C))
        W[p + "mlp.down_proj.weight"] = rng.normal(0, std, (C, inter))
    W["model.norm.weight"] = np.ones(C)
    W["lm_head.weight"] = rng.normal(0, std, (V, C))
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
        f.write("\n")
    write_safetensors(os.path.join(a.out, "model.safetensors"), {k: v.astype(np.float32) for k, v in W.items()})
    n = sum(v.size for v in W.values())
    print(f"make_base: tiny Llama, {L} layers, hidden {C}, {H} heads, vocab {V}: {n:,} parameters -> {a.out}")


if __name__ == "__main__":
    main()
