#!/usr/bin/env python3
"""Random-init Llama models for tools/gpu-check.sh, written by tests/model/reference.py (HF layout, fp32):
  interop  a small Llama with the Llama 2 vocabulary (32000 ids), so that the data can be prepared with
           the real Llama 2 SentencePiece tokenizer and the output folder carries a tokenizer AutoTokenizer
           loads: hidden 64, 2 layers, 4 heads / 2 KV heads, intermediate 128, 256 positions;
  bench    a ~1.1B-parameter Llama (the TinyLlama-1.1B shape: hidden 2048, 22 layers, 32 heads / 4 KV
           heads (GQA), intermediate 5632, vocab 32000, 2048 positions).
Usage: make_models.py REPO_ROOT {interop|bench} OUT_DIR   (prints the parameter count as JSON)"""
import json
import math
import os
import sys

root, which, out = sys.argv[1:4]
sys.path.insert(0, os.path.join(root, "tests", "model"))
from reference import llama_cfg, param_shapes, random_weights, save_hf  # noqa: E402

if which == "interop":
    cfg = llama_cfg(vocab_size=32000, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                    bos_token_id=1, eos_token_id=2)
    std = 0.05
elif which == "bench":
    cfg = llama_cfg(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
                    num_attention_heads=32, num_key_value_heads=4, max_position_embeddings=2048,
                    bos_token_id=1, eos_token_id=2)
    std = 0.02
else:
    sys.exit(f"make_models.py: unknown model '{which}' (interop or bench)")

params = sum(math.prod(s) for s in param_shapes(cfg).values())
if not os.path.exists(os.path.join(out, "config.json")):
    save_hf(cfg, random_weights(cfg, 1234, std), out)
print(json.dumps({"model": which, "params": params, "hidden": cfg["hidden_size"], "layers": cfg["num_hidden_layers"],
                  "heads": cfg["num_attention_heads"], "kv_heads": cfg["num_key_value_heads"], "vocab": cfg["vocab_size"]}))
