#!/usr/bin/env python3
"""Interop with the real Hugging Face stack (tools/gpu-check.sh, check 3), all on the CPU in fp32:
  - transformers' AutoModelForCausalLM loads our fine-tuned full output folder and its logits on fixed ids
    equal ours (shardtune-generate --print-logits on the same folder) to TOL (max absolute difference);
  - peft's PeftModel.from_pretrained loads our LoRA adapter folder on the base model and gives the logits
    of our adapter model (shardtune-generate --model BASE --adapter ADAPTER --print-logits); the adapter
    must also move the logits away from the base's by more than 10 * TOL, or the comparison says nothing;
  - transformers' AutoTokenizer loads the output folder's tokenizer: 32000 ids, encode/decode round trip,
    and (reported, not failed) whether its ids equal SentencePiece's own for the same text.
Usage: hf_interop.py FULL_DIR OURS_FULL.json BASE_DIR ADAPTER_DIR OURS_LORA.json [TOL]
Prints one line per check, then JSON on the last line; exit 1 when a check fails."""
import json
import os
import sys

import torch

full, ours_full, base, adapter, ours_lora = sys.argv[1:6]
tol = float(sys.argv[6]) if len(sys.argv) > 6 else 1e-4
torch.manual_seed(0)
result, ok = {"tol": tol}, True


def load(path):
    from transformers import AutoModelForCausalLM
    try:
        m = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    except TypeError:  # transformers < 4.56 names it torch_dtype
        m = AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.float32)
    return m.eval()


def ours(path):
    j = json.load(open(path))
    return j["ids"], torch.tensor(j["logits"], dtype=torch.float32).view(*j["shape"])


def logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float()


def check(name, good, detail):
    global ok
    ok = ok and good
    print(f"  {name}: {'PASS' if good else 'FAIL'}  {detail}")


try:
    import transformers
    result["transformers"] = transformers.__version__
    ids, want = ours(ours_full)
    got = logits(load(full), ids)
    d = (got - want).abs().max().item()
    result["full"] = {"max_abs_diff": d, "logit_scale": want.abs().max().item(), "tokens": len(ids)}
    check("transformers AutoModelForCausalLM, full fine-tune", got.shape == want.shape and d <= tol,
          f"max |logit diff| {d:.2e} (tol {tol:g}) over {len(ids)} positions x {want.shape[1]} ids")
except Exception as e:  # noqa: BLE001  (any failure to load is the finding)
    check("transformers AutoModelForCausalLM, full fine-tune", False, f"{type(e).__name__}: {e}")
    result["full"] = {"error": str(e)}

try:
    import peft
    result["peft"] = peft.__version__
    ids, want = ours(ours_lora)
    base_model = load(base)
    plain = logits(base_model, ids)
    got = logits(peft.PeftModel.from_pretrained(base_model, adapter).eval(), ids)
    d, moved = (got - want).abs().max().item(), (want - plain).abs().max().item()
    result["lora"] = {"max_abs_diff": d, "adapter_moved_logits_by": moved, "tokens": len(ids)}
    check("peft PeftModel.from_pretrained, LoRA adapter", d <= tol and moved > 10 * tol,
          f"max |logit diff| {d:.2e} (tol {tol:g}); the adapter moves the base's logits by {moved:.2e}")
except Exception as e:  # noqa: BLE001
    check("peft PeftModel.from_pretrained, LoRA adapter", False, f"{type(e).__name__}: {e}")
    result["lora"] = {"error": str(e)}

try:
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(full)
    text = "Once upon a time, there was a little girl named Lily."
    enc = tok(text, add_special_tokens=False)["input_ids"]
    back = tok.decode(enc, skip_special_tokens=True)
    info = {"class": type(tok).__name__, "len": len(tok), "ids": enc[:16], "roundtrip": back == text}
    sp_path = os.path.join(full, "tokenizer.model")
    if os.path.exists(sp_path):
        import sentencepiece
        info["sentencepiece_ids_equal"] = sentencepiece.SentencePieceProcessor(model_file=sp_path).encode(text) == enc
    result["tokenizer"] = info
    check("transformers AutoTokenizer", len(tok) == 32000 and back == text,
          f"{info['class']}, {len(tok)} ids, round trip {'equal' if back == text else repr(back)}, "
          f"same ids as SentencePiece: {info.get('sentencepiece_ids_equal')}")
except Exception as e:  # noqa: BLE001
    check("transformers AutoTokenizer", False, f"{type(e).__name__}: {e}")
    result["tokenizer"] = {"error": str(e)}

result["pass"] = ok
print(json.dumps(result))
sys.exit(0 if ok else 1)
