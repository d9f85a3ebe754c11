#!/usr/bin/python3
"""The demo's GGUF check: the tuned model's answers from the real llama.cpp (npm node-llama-cpp, through
tests/export/llama_cpp.py) next to shardtune-generate's, for the first N held-out prompts.

llama.cpp tokenizes each prompt line from the GGUF file's own tokenizer metadata (which must give the byte
tokenizer's ids, the UTF-8 bytes, and BOS <s>), then both decode greedily from the same ids (<s> + the prompt's
bytes); answers are cut at </s>.
Prints both answers and whether they agree; exit 1 when one differs, 0 with a note when node-llama-cpp is absent.
Usage: llama_cpp_answer.py --gguf tuned.gguf --model TUNED_DIR --generate shardtune-generate --heldout FILE [--n 2]"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "tests"))
sys.path.insert(0, os.path.join(HERE, "..", "..", "tests", "export"))
from harness import Skip  # noqa: E402
import llama_cpp  # noqa: E402

BOS, EOS = 256, 257  # the byte tokenizer's


def until_eos(ids):
    return ids[:ids.index(EOS)] if EOS in ids else ids


def text(ids):
    return bytes(i for i in ids if i < 256).decode("utf-8", "replace")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--model", required=True, help="the HF folder the GGUF file was exported from")
    ap.add_argument("--generate", required=True, help="the shardtune-generate binary")
    ap.add_argument("--heldout", required=True, help="held-out JSONL (instruction, input, output)")
    ap.add_argument("--n", type=int, default=2)
    ap.add_argument("--max-new-tokens", type=int, default=24)
    a = ap.parse_args()
    try:
        llama_cpp.require()
    except Skip as e:
        print(f"llama.cpp check skipped: {e}")
        return 0
    with open(a.heldout) as f:
        rows = [json.loads(line) for line, _ in zip(f, range(a.n))]
    prompts = [r["instruction"] + "\n" + r["input"] + "\n" for r in rows]
    # llama.cpp tokenizes each prompt line (its runner reads one text per line) from the file's own metadata:
    # every line must come back as its UTF-8 bytes, as the byte tokenizer gives them.
    lines = [line for p in prompts for line in p.split("\n")[:-1]]
    with tempfile.TemporaryDirectory() as tmp:
        corpus = os.path.join(tmp, "prompt_lines.txt")
        with open(corpus, "w", encoding="utf-8") as f:
            f.write("".join(line + "\n" for line in lines))
        tok = llama_cpp.tokenize(a.gguf, corpus)
    bad = [(line, ids) for line, ids in zip(lines, tok["lines"]) if ids != list(line.encode("utf-8"))]
    for line, ids in bad:
        print(f"llama.cpp tokenizes {line!r} as {ids}, not as its bytes {list(line.encode('utf-8'))}")
    if tok["bos"] != BOS or not tok["add_bos"]:
        print(f"llama.cpp's BOS is {tok['bos']} (add_bos {tok['add_bos']}), the byte tokenizer's {BOS} (add_bos true)")
        bad.append(("<s>", tok["bos"]))
    disagree = 0
    for p in prompts:
        ids = [BOS] + list(p.encode("utf-8"))
        st = subprocess.run([a.generate, "--model", a.model, "--prompt-ids", ",".join(map(str, ids)),
                             "--max-new-tokens", str(a.max_new_tokens), "--temperature", "0", "--print-ids",
                             "--no-stop", "--threads", "1"], capture_output=True, text=True, check=True)
        ours = until_eos([int(x) for x in st.stdout.split()])
        theirs = until_eos(llama_cpp.greedy(a.gguf, ids, a.max_new_tokens)["ids"])
        same = ours == theirs
        disagree += not same
        print(f"  prompt {p!r}\n    shardtune-generate -> {text(ours)!r}\n    llama.cpp          -> {text(theirs)!r}"
              f"   {'same answer' if same else 'DIFFERENT'}")
    print(f"llama.cpp (GGUF) vs shardtune-generate: {len(prompts) - disagree}/{len(prompts)} answers agree"
          f"{'' if not bad else f'; {len(bad)} tokenization mismatches'}")
    return 1 if disagree or bad else 0


if __name__ == "__main__":
    sys.exit(main())
