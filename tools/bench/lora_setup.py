#!/usr/bin/python3
"""The model of tools/bench/lora.sh's judged runs: a random-init Llama in Hugging Face layout, hidden 1024,
intermediate 2816, 4 layers, 16 heads / 4 KV heads, vocab 8192 (the byte tokenizer's ids fit), untied:
61.9M parameters. LoRA's own work (skinny GEMMs of width r) shrinks against the base's as 1/hidden, so the
LoRA-vs-full targets are judged at this width; the train.sh model (hidden 384) is run beside it.

usage: lora_setup.py REPO_ROOT OUT_DIR        writes OUT_DIR (once); prints the parameter counts as JSON.
"""
import json
import os
import sys

root, out = sys.argv[1:3]
sys.path.insert(0, os.path.join(root, "tests", "model"))
from reference import llama_cfg, param_shapes, random_weights, save_hf  # noqa: E402

cfg = llama_cfg(vocab_size=8192, hidden_size=1024, intermediate_size=2816, num_hidden_layers=4,
                num_attention_heads=16, num_key_value_heads=4, max_position_embeddings=2048)
P = 0
for s in param_shapes(cfg).values():
    n = 1
    for d in s:
        n *= d
    P += n
if not os.path.exists(os.path.join(out, "config.json")):
    save_hf(cfg, random_weights(cfg, 4321, 0.02), out)
C, V, L = cfg["hidden_size"], cfg["vocab_size"], cfg["num_hidden_layers"]
print(json.dumps({"params": P, "embed_params": V * C, "hidden": C, "intermediate": cfg["intermediate_size"],
                  "layers": L, "heads": cfg["num_attention_heads"], "kv_heads": cfg["num_key_value_heads"], "vocab": V}))
