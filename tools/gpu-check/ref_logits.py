#!/usr/bin/env python3
"""Our --print-logits output against tests/model/reference.py's independent fp32 forward (no transformers
needed: this half of check 3 runs here too): the full fine-tune's folder, and the base with our LoRA
adapter applied the PEFT way (y + B(A(x)) * alpha/r, or alpha/sqrt(r) with use_rslora).
Usage: ref_logits.py REPO_ROOT FULL_DIR OURS_FULL.json BASE_DIR ADAPTER_DIR OURS_LORA.json [TOL]
Prints one line per comparison, JSON on the last line; exit 1 when one is beyond TOL (max abs difference)."""
import json
import math
import os
import sys

root, full, ours_full, base, adapter, ours_lora = sys.argv[1:7]
tol = float(sys.argv[7]) if len(sys.argv) > 7 else 1e-4
sys.path.insert(0, os.path.join(root, "tests", "model"))
import torch  # noqa: E402
from reference import forward, read_safetensors  # noqa: E402


def folder(path):
    return json.load(open(os.path.join(path, "config.json"))), read_safetensors(os.path.join(path, "model.safetensors"))


def ours(path):
    j = json.load(open(path))
    return torch.tensor([j["ids"]]), torch.tensor(j["logits"], dtype=torch.float32).view(*j["shape"])


def lora_of(path):
    conf = json.load(open(os.path.join(path, "adapter_config.json")))
    T = read_safetensors(os.path.join(path, "adapter_model.safetensors"))
    r, alpha = conf["r"], conf["lora_alpha"]
    scale = alpha / math.sqrt(r) if conf.get("use_rslora") else alpha / r
    lora = {}
    for k, A in T.items():
        if k.endswith(".lora_A.weight"):
            m = k[len("base_model.model."):-len(".lora_A.weight")]
            lora[m] = (A.float(), T[k.replace(".lora_A.weight", ".lora_B.weight")].float(), scale)
    return lora


out, ok = {"tol": tol}, True
with torch.no_grad():
    cfg, W = folder(full)
    ids, want = ours(ours_full)
    d = (forward(cfg, {k: v.float() for k, v in W.items()}, ids)[0] - want).abs().max().item()
    out["full"] = d
    ok = ok and d <= tol
    print(f"  reference.py forward vs ours, full fine-tune: max |logit diff| {d:.2e} (tol {tol:g})")
    cfg, W = folder(base)
    lora = lora_of(adapter)
    ids, want = ours(ours_lora)
    got = forward(cfg, {k: v.float() for k, v in W.items()}, ids, lora=lora)[0]
    plain = forward(cfg, {k: v.float() for k, v in W.items()}, ids)[0]
    d, moved = (got - want).abs().max().item(), (want - plain).abs().max().item()
    out["lora"], out["lora_moved"], out["lora_modules"] = d, moved, len(lora)
    ok = ok and d <= tol and moved > 10 * tol
    print(f"  reference.py forward vs ours, base + LoRA adapter ({len(lora)} modules): max |logit diff| {d:.2e}"
          f" (tol {tol:g}); the adapter moves the logits by {moved:.2e}")
out["pass"] = ok
print(json.dumps(out))
sys.exit(0 if ok else 1)
