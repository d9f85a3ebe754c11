#!/usr/bin/python3
"""Inputs for tools/bench/train.sh: a random-init ~15.7M-parameter Llama in Hugging Face layout (the same
shape as tools/bench/step.sh: hidden 384, 6 layers, 6 heads / 2 KV heads, intermediate 1024, vocab 8192)
and a JSONL text corpus cut from tinyshakespeare into long lines (shardtune-prep --overlong split then
makes full rows of --max-seq-len tokens).

usage: train_setup.py REPO_ROOT SHARED_DIR WORK_DIR
writes WORK_DIR/model/ and WORK_DIR/corpus.jsonl; prints the parameter counts as JSON.
"""
import json
import os
import sys

root, shared, work = sys.argv[1:4]
sys.path.insert(0, os.path.join(root, "tests", "model"))
from reference import llama_cfg, param_shapes, random_weights, save_hf  # noqa: E402

cfg = llama_cfg(vocab_size=8192, hidden_size=384, intermediate_size=1024, num_hidden_layers=6,
                num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=2048)
shapes = param_shapes(cfg)
P = 0
for s in shapes.values():
    n = 1
    for d in s:
        n *= d
    P += n
model_dir = os.path.join(work, "model")
if not os.path.exists(os.path.join(model_dir, "config.json")):
    save_hf(cfg, random_weights(cfg, 1234, 0.02), model_dir)

corpus = os.path.join(work, "corpus.jsonl")
if not os.path.exists(corpus):
    text = open(os.path.join(shared, "data", "tinyshakespeare.txt"), encoding="utf-8").read()
    with open(corpus, "w") as f:
        for i in range(0, len(text), 4096):
            f.write(json.dumps({"text": text[i:i + 4096]}) + "\n")

C, V, L = cfg["hidden_size"], cfg["vocab_size"], cfg["num_hidden_layers"]
print(json.dumps({"params": P, "embed_params": V * C, "hidden": C, "layers": L, "vocab": V}))
