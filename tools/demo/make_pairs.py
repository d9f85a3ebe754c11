#!/usr/bin/python3
"""Writes the DPO demo's preference pairs from the demo's task data: for each training word the prompt is
exactly what the task's SFT prompt renders ("Uppercase:\\nkelp\\n", the plain template), the chosen
response is the task's answer in the "excited" style (the answer followed by "!") and the rejected one the
plain answer the SFT model was taught. The style rule (tools/demo/dpo_eval.py) judges a completion
chosen-style when it ends with "!". Usage: make_pairs.py TRAIN.jsonl OUT_PAIRS.jsonl [N]"""
import json
import sys


def main():
    src, out = sys.argv[1], sys.argv[2]
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 2000
    recs = [json.loads(l) for l in open(src) if l.strip()][:n]
    with open(out, "w") as f:
        for r in recs:
            prompt = f"{r['instruction']}\n{r['input']}\n"
            plain = r["output"].rstrip("!")
            f.write(json.dumps({"prompt": prompt, "chosen": plain + "!", "rejected": plain}) + "\n")
    print(f"make_pairs: {len(recs)} pairs (chosen: answer + '!', rejected: the plain answer) -> {out}")


if __name__ == "__main__":
    main()
