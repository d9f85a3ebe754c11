#!/usr/bin/python3
"""Preference pairs (issue 11) through shardtune-prep --format preference, shardtune-inspect and the
trainer's refusal, run as real processes. Shards are read back with h5py (an independent HDF5 reader)
and compared with token ids computed here: UTF-8 bytes for the byte tokenizer, python3-sentencepiece
for the Llama-2 tokenizer.
Usage: preference_cli_test.py CASE   (exit 77 = skipped)"""
import json
import os
import subprocess
import sys

import h5py
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from harness import Skip, run_case  # noqa: E402

BIN = os.environ["ST_BIN"]
SRC = os.environ.get("ST_SOURCE", "")
PREP = os.path.join(BIN, "data_prep", "shardtune-prep")
INSPECT = os.path.join(BIN, "tools", "shardtune-inspect")
TRAIN = os.path.join(BIN, "src", "shardtune")
SHARED = os.environ.get("ST_SHARED", "")
BOS, EOS = 256, 257  # byte tokenizer
MPI = ["mpirun", "--allow-run-as-root", "--oversubscribe", "-np"]
SPLIT_OPTS = ["--val-fraction", "0.3", "--shard-tokens", "300", "--max-seq-len", "64", "--seed", "7"]


def run(args, ok=True, **kw):
    p = subprocess.run(args, capture_output=True, text=True, timeout=300, **kw)
    if ok and p.returncode != 0:
        raise AssertionError(f"{args} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    return p


def write_jsonl(tmp, lines, name="pairs.jsonl"):
    path = os.path.join(tmp, name)
    with open(path, "w") as f:
        for l in lines:
            f.write((l if isinstance(l, str) else json.dumps(l, ensure_ascii=False)) + "\n")
    return path


def prep(tmp, lines, out="out", extra=(), ok=True, fmt="preference", name="pairs.jsonl", tokenizer="byte"):
    inp = write_jsonl(tmp, lines, name)
    outdir = os.path.join(tmp, out)
    args = [PREP, "--input", inp, "--output", outdir, "--tokenizer", tokenizer, "--quiet"] + (
        ["--format", fmt] if fmt else []) + list(extra)
    return run(args, ok=ok), outdir, inp


def pairs(outdir, split="train"):
    """[(chosen, chosen_mask, rejected, rejected_mask, prompt_len)] of a split, checking the layout."""
    m = json.load(open(os.path.join(outdir, "manifest.json")))
    assert m.get("kind") == "preference", m.get("kind")
    res = []
    for s in m["shards"]:
        if s["split"] != split:
            continue
        with h5py.File(os.path.join(outdir, s["file"]), "r") as f:
            attr = lambda k: f.attrs[k].decode() if isinstance(f.attrs[k], bytes) else f.attrs[k]  # noqa: E731
            assert attr("kind") == "preference", attr("kind")
            tok, off, mask, pl = f["tokens"][:], f["offsets"][:], f["loss_mask"][:], f["prompt_lens"][:]
            assert pl.dtype == np.int64 and len(off) - 1 == 2 * len(pl) == 2 * s["samples"], (len(off), len(pl), s)
            assert int(f.attrs["num_pairs"]) == len(pl) and int(f.attrs["num_samples"]) == 2 * len(pl)
            assert s["loss_tokens"] == int(mask.sum()) and s["tokens"] == len(tok)
            for i in range(len(pl)):
                c = slice(off[2 * i], off[2 * i + 1])
                r = slice(off[2 * i + 1], off[2 * i + 2])
                res.append((tok[c].tolist(), mask[c].tolist(), tok[r].tolist(), mask[r].tolist(), int(pl[i])))
    return res, m


def expect_plain(prompt, chosen, rejected, eos=True):
    p = [BOS] + list(prompt.encode())
    c = list(chosen.encode()) + ([EOS] if eos else [])
    r = list(rejected.encode()) + ([EOS] if eos else [])
    return (p + c, [0] * len(p) + [1] * len(c), p + r, [0] * len(p) + [1] * len(r), len(p))


def check_eq(got, want, what):
    if got != want:
        raise AssertionError(f"{what}:\n got  {got}\n want {want}")


# ---------------------------------------------------------------------------------------------------
def t_plain(tmp):
    rows = [{"prompt": "2+2=", "chosen": "4", "rejected": "5"},
            {"prompt": "Capital of France? ", "chosen": "Paris.", "rejected": "Berlin, I think."}]
    p, out, inp = prep(tmp, rows)
    got, m = pairs(out)
    check_eq(got, [expect_plain(r["prompt"], r["chosen"], r["rejected"]) for r in rows], "plain pairs")
    c = m["counts"]
    assert c["samples"] == c["train_samples"] == 2 and c["sequences"] == 4 and c["lines"] == 2, c
    assert m["shards"][0]["samples"] == 2, m["shards"]
    # --format auto detects pairs (no other format has "chosen"/"rejected") and writes the same shards.
    _, auto, _ = prep(tmp, rows, out="auto", fmt="auto", name="a.jsonl")
    check_eq(pairs(auto)[0], got, "--format auto vs --format preference")
    # Without EOS (append_eos false in a template), the response ends with its last text token.
    tpl = os.path.join(tmp, "noeos.json")
    json.dump({"name": "noeos", "append_eos": False}, open(tpl, "w"))
    _, noeos, _ = prep(tmp, rows, out="noeos", extra=["--template", tpl], name="b.jsonl")
    check_eq(pairs(noeos)[0], [expect_plain(r["prompt"], r["chosen"], r["rejected"], eos=False) for r in rows], "no EOS")


def chatml_bytes(role, content):
    return list(f"<|im_start|>{role}\n{content}<|im_end|>\n".encode())


def t_chat(tmp):
    # Implicit prompt: the messages shared by "chosen" and "rejected" before their last one.
    history = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
               {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "2+2?"}]
    row = {"chosen": history + [{"role": "assistant", "content": "4"}],
           "rejected": history + [{"role": "assistant", "content": "Five"}]}
    _, out, _ = prep(tmp, [row], extra=["--template", "chatml"])
    (got,), m = pairs(out)
    prompt = [BOS] + sum((chatml_bytes(h["role"], h["content"]) for h in history), []) + list(b"<|im_start|>assistant\n")
    want_c = prompt + list(b"4<|im_end|>\n") + [EOS]
    want_r = prompt + list(b"Five<|im_end|>\n") + [EOS]
    check_eq(got, (want_c, [0] * len(prompt) + [1] * (len(want_c) - len(prompt)),
                   want_r, [0] * len(prompt) + [1] * (len(want_r) - len(prompt)), len(prompt)), "implicit-prompt chat pair")
    # The chosen sequence has the same tokens as the SFT chat format's rendering of that conversation;
    # only the mask differs (the earlier assistant turn is context, not a target, in a pair).
    _, sft, _ = prep(tmp, [{"messages": row["chosen"]}], out="sft", fmt="chat", extra=["--template", "chatml"], name="s.jsonl")
    with h5py.File(os.path.join(sft, "train-00000.h5"), "r") as f:
        check_eq(f["tokens"][:].tolist(), want_c, "chosen vs the chat format's tokens")

    # TRL's conversational form: "prompt" as a message list, the responses as one-message lists or a
    # single message object; all give the same shard content as the implicit form.
    for k, (c, r) in enumerate([([row["chosen"][-1]], [row["rejected"][-1]]), (row["chosen"][-1], row["rejected"][-1])]):
        _, conv, _ = prep(tmp, [{"prompt": history, "chosen": c, "rejected": r}], out=f"conv{k}",
                          extra=["--template", "chatml"], name=f"c{k}.jsonl")
        check_eq(pairs(conv)[0], [got], f"conversational form {k}")
    # A prompt list plus a response list of several messages: the extra messages join the prompt.
    _, conv, _ = prep(tmp, [{"prompt": history[:2], "chosen": history[2:] + [row["chosen"][-1]],
                             "rejected": history[2:] + [row["rejected"][-1]]}], out="conv2",
                      extra=["--template", "chatml"], name="c2.jsonl")
    check_eq(pairs(conv)[0], [got], "conversational form with a multi-message response list")


def t_truncation(tmp):
    # Prompt 1 + 40 bytes, responses 1-2 bytes + EOS: at --max-seq-len 20 the prompt keeps BOS and its
    # last bytes (keep_end), the responses stay whole.
    prompt = "".join(chr(ord("a") + i % 26) for i in range(40))
    rows = [{"prompt": prompt, "chosen": "AB", "rejected": "C"}]
    _, out, _ = prep(tmp, rows, extra=["--max-seq-len", "20"])
    (got,), m = pairs(out)
    kept = 20 - 3  # the longer sequence: prompt + "AB" + EOS fits exactly
    p = [BOS] + list(prompt.encode())[-(kept - 1):]
    check_eq(got, (p + [65, 66, EOS], [0] * kept + [1] * 3, p + [67, EOS], [0] * kept + [1] * 2, kept), "keep-end truncation")
    c = m["counts"]
    assert c["truncated"] == 1 and c["truncated_response"] == 0 and c["samples"] == 1, c
    assert m["options"]["max_seq_len"] == 20

    # Long responses too: the prompt stops at half of --max-seq-len, then the responses lose their ends.
    rows = [{"prompt": prompt, "chosen": "X" * 30, "rejected": "Y" * 25}]
    _, out, _ = prep(tmp, rows, out="both", extra=["--max-seq-len", "16"], name="b.jsonl")
    (got,), m = pairs(out)
    p = [BOS] + list(prompt.encode())[-7:]
    check_eq(got, (p + [ord("X")] * 8, [0] * 8 + [1] * 8, p + [ord("Y")] * 8, [0] * 8 + [1] * 8, 8), "prompt + response cut")
    assert m["counts"]["truncated"] == 1 and m["counts"]["truncated_response"] == 1, m["counts"]
    # Responses that differ only beyond the cut are identical once truncated: dropped, counted.
    rows = [{"prompt": "q", "chosen": "Z" * 30 + "1", "rejected": "Z" * 30 + "2"}, {"prompt": "q", "chosen": "a", "rejected": "b"}]
    _, out, _ = prep(tmp, rows, out="ident", extra=["--max-seq-len", "16"], name="i.jsonl")
    got, m = pairs(out)
    assert len(got) == 1 and m["counts"]["dropped_identical"] == 1, m["counts"]


def t_drop(tmp):
    rows = [{"prompt": "p" * 30, "chosen": "a", "rejected": "b"}, {"prompt": "short", "chosen": "a", "rejected": "bb"}]
    p, out, _ = prep(tmp, rows, extra=["--max-seq-len", "20", "--overlong", "drop"], ok=True)
    got, m = pairs(out)
    check_eq(got, [expect_plain("short", "a", "bb")], "drop keeps the short pair only")
    assert m["counts"]["dropped_overlong"] == 1 and m["counts"]["samples"] == 1, m["counts"]
    # The summary says so (without --quiet).
    inp = write_jsonl(tmp, rows, "d.jsonl")
    p = run([PREP, "--input", inp, "--output", os.path.join(tmp, "loud"), "--tokenizer", "byte", "--format", "preference",
             "--max-seq-len", "20", "--overlong", "drop"])
    assert "dropped 1 pair(s) (1 overlong" in p.stdout + p.stderr, p.stdout + p.stderr
    # --overlong split is for plain text only.
    p, _, _ = prep(tmp, rows, out="split", extra=["--overlong", "split"], ok=False, name="s.jsonl")
    assert p.returncode != 0 and "--overlong split" in p.stderr, p.stderr


def t_invalid(tmp):
    good = {"prompt": "q", "chosen": "yes", "rejected": "no"}
    ident = {"prompt": "q", "chosen": "same", "rejected": "same"}
    p, out, inp = prep(tmp, [good, ident], ok=False)
    assert p.returncode != 0 and f"{inp}:2:" in p.stderr and "identical after tokenization" in p.stderr, p.stderr
    assert "--skip-invalid" in p.stderr and not os.path.exists(out), p.stderr
    p, out, inp = prep(tmp, [good, ident, good], extra=["--skip-invalid"], out="skip", name="s.jsonl")
    got, m = pairs(out)
    assert len(got) == 2 and m["counts"]["skipped_invalid"] == 1, m["counts"]
    assert m["skipped_lines"][0]["line"] == 2 and "identical" in m["skipped_lines"][0]["error"], m["skipped_lines"]
    # Missing or mistyped fields name file, line and field.
    hist = [{"role": "user", "content": "u"}]
    bad = [
        ({"prompt": "q", "chosen": "a"}, 'missing field "rejected"'),
        ({"chosen": "a", "rejected": "b"}, 'missing field "prompt"'),
        ({"prompt": 3, "chosen": "a", "rejected": "b"}, 'field "prompt" must be a string'),
        ({"prompt": "q", "chosen": "a", "rejected": 7}, 'field "rejected" must be a string'),
        ({"prompt": "q", "chosen": 1.5, "rejected": "b"}, 'field "chosen" must be a string, a message list'),
        ({"prompt": "q", "chosen": hist + [{"role": "assistant", "content": "a"}],
          "rejected": hist + [{"role": "assistant", "content": "b"}]}, 'field "prompt" must be a message list'),
        ({"chosen": hist + [{"role": "assistant", "content": "a"}], "rejected": [{"role": "user", "content": "x"},
                                                                                 {"role": "assistant", "content": "b"}]},
         "message 0 of the conversation differs"),
        ({"chosen": hist + [{"role": "user", "content": "a"}], "rejected": hist + [{"role": "assistant", "content": "b"}]},
         'the last message of "chosen" must be the assistant'),
        ({"chosen": [{"role": "assistant", "content": "a"}], "rejected": [{"role": "assistant", "content": "b"}]}, "no prompt"),
        ({"prompt": hist, "chosen": {"role": "user", "content": "a"}, "rejected": {"role": "assistant", "content": "b"}},
         'must have role "assistant"'),
        ({"prompt": hist, "chosen": [{"role": "assistant"}], "rejected": [{"role": "assistant", "content": "b"}]},
         'chosen[0]: missing field "content"'),
    ]
    for k, (row, needle) in enumerate(bad):
        p, out, inp = prep(tmp, [good, good, row], out=f"bad{k}", name=f"bad{k}.jsonl", extra=["--template", "chatml"], ok=False)
        assert p.returncode != 0 and f"{inp}:3: " in p.stderr and needle in p.stderr, (row, p.stderr)
    # --format auto: a folder holds one kind; a sequence line among pairs (and the reverse) is refused by line.
    p, _, inp = prep(tmp, [good, {"text": "plain"}], out="mixed", fmt="auto", name="m.jsonl", ok=False)
    assert p.returncode != 0 and f"{inp}:2:" in p.stderr and "holds preference pairs" in p.stderr, p.stderr
    p, _, inp = prep(tmp, [{"text": "plain"}, good], out="mixed2", fmt="auto", name="m2.jsonl", ok=False)
    assert p.returncode != 0 and f"{inp}:2:" in p.stderr and "holds sequences" in p.stderr, p.stderr


def t_split(tmp):
    # 200 pairs, each line's index in its prompt; small shards; 30% held out. Every pair must land whole
    # in one split and one shard, and the union of both splits is every line once.
    rows = [{"prompt": f"#{i:03d}:", "chosen": "good" * (1 + i % 3), "rejected": "bad" * (1 + i % 4)} for i in range(200)]
    _, out, _ = prep(tmp, rows, extra=SPLIT_OPTS)
    train, m = pairs(out, "train")
    val, _ = pairs(out, "val")
    assert len([s for s in m["shards"] if s["split"] == "train"]) > 3, m["shards"]
    seen = []
    for got in (train, val):
        for c, cm, r, rm, pl in got:
            i = int(bytes(c[2:5]).decode())
            check_eq((c, cm, r, rm, pl), expect_plain(rows[i]["prompt"], rows[i]["chosen"], rows[i]["rejected"]), f"pair {i}")
            seen.append(i)
    assert sorted(seen) == list(range(200)), "every pair exactly once"
    assert 30 < len(val) < 90, len(val)
    assert m["counts"]["train_samples"] == len(train) and m["counts"]["val_samples"] == len(val), m["counts"]


def t_mpi_equal(tmp):
    # The same folder from 2 ranks with 3 threads each as from one rank: identical bytes.
    rows = [{"prompt": f"#{i:03d}:", "chosen": "good" * (1 + i % 3), "rejected": "bad" * (1 + i % 4)} for i in range(200)]
    _, out, inp = prep(tmp, rows, extra=SPLIT_OPTS + ["--threads", "1"])
    m = json.load(open(os.path.join(out, "manifest.json")))
    out2 = os.path.join(tmp, "np2")
    run([*MPI, "2", PREP, "--input", inp, "--output", out2, "--tokenizer", "byte", "--quiet", "--format", "preference",
         "--threads", "3", *SPLIT_OPTS])
    m2 = json.load(open(os.path.join(out2, "manifest.json")))
    assert m["shards"] == m2["shards"] and m["counts"] == m2["counts"], (m["counts"], m2["counts"])
    for s in m["shards"]:
        a, b = open(os.path.join(out, s["file"]), "rb").read(), open(os.path.join(out2, s["file"]), "rb").read()
        assert a == b, f"{s['file']} differs between 1 and 2 ranks"


def t_inspect(tmp):
    rows = [{"prompt": "Capital of France? ", "chosen": "Paris", "rejected": "Rome"},
            {"prompt": "2+2=", "chosen": "4", "rejected": "22"}]
    _, out, _ = prep(tmp, rows)
    p = run([INSPECT, out, "--verify"])
    o = p.stdout
    assert "kind       preference" in o and "pairs" in o and "  ok" in o, o
    assert "pair 0 (sequences 0 and 1): prompt 20 tokens; chosen 26 tokens, 6 trained" in o, o
    assert "prompt   no loss | <s>Capital of France? " in o and "chosen   TRAINED | Paris</s>" in o, o
    assert "rejected TRAINED | Rome</s>" in o, o
    p = run([INSPECT, out, "--sample", "1", "--ids"])
    assert "chosen   TRAINED | 52 257" in p.stdout, p.stdout
    p = run([INSPECT, os.path.join(out, "train-00000.h5"), "--sample", "1", "--tokenizer", "byte"])
    assert "kind=preference" in p.stdout and "2 preference pairs (4 sequences)" in p.stdout and "rejected TRAINED | 22" in p.stdout, p.stdout
    # Verification covers the pair layout: a prompt token marked as a target, chosen and rejected
    # prompts that differ, and a prompt length out of range are each found and named.
    shard = os.path.join(out, "train-00000.h5")
    orig = open(shard, "rb").read()
    for k, (ds, idx, val, needle) in enumerate([("loss_mask", 3, 1, "pair 0 (sequences 0 and 1): chosen token 3 has loss_mask 1"),
                                                ("tokens", 27, 70, "differ within their shared prompt"),
                                                ("prompt_lens", 1, 0, "pair 1 has prompt length 0")]):
        open(shard, "wb").write(orig)
        with h5py.File(shard, "r+") as f:
            f[ds][idx] = val
        p = run([INSPECT, out, "--verify"], ok=False)
        assert p.returncode != 0 and "INVALID" in p.stdout and needle in p.stdout, (ds, p.stdout, p.stderr)
    # A manifest whose kind disagrees with its shards is refused.
    open(shard, "wb").write(orig)
    m = json.load(open(os.path.join(out, "manifest.json")))
    del m["kind"]
    json.dump(m, open(os.path.join(out, "manifest.json"), "w"))
    p = run([INSPECT, out, "--verify"], ok=False)
    assert p.returncode != 0 and "holds preference data, manifest.json says kind 'sequence'" in p.stdout, p.stdout


def t_sequence_unchanged(tmp):
    # Sequence folders keep their old layout: no "kind" in the manifest, no kind attribute or
    # /prompt_lens in shards, and inspect shows samples as before.
    _, out, _ = prep(tmp, [{"instruction": "Capital of France?", "output": "Paris"}], fmt="auto",
                     extra=["--template", "plain"], name="sft.jsonl")
    m = json.load(open(os.path.join(out, "manifest.json")))
    assert "kind" not in m and "sequences" not in m["counts"], m
    with h5py.File(os.path.join(out, "train-00000.h5"), "r") as f:
        assert "kind" not in f.attrs and "prompt_lens" not in f and "num_pairs" not in f.attrs, list(f.attrs)
    p = run([INSPECT, out, "--verify"])
    assert "sample 0:" in p.stdout and "kind       preference" not in p.stdout and "  ok" in p.stdout, p.stdout


def t_real_sentencepiece(tmp):
    model = os.path.join(SHARED, "tokenizers", "llama2-tokenizer.model")
    if not SHARED or not os.path.exists(model):
        raise Skip(f"{model} not found")
    try:
        import sentencepiece as spm
    except ImportError:
        raise Skip("python3-sentencepiece not installed")
    sp = spm.SentencePieceProcessor(model_file=model)
    rows = [{"prompt": "Question: what is the capital of France?\nAnswer:", "chosen": " Paris is the capital.",
             "rejected": " I don't know, maybe Lyon?"},
            {"prompt": "Schreibe ein Haiku über den Herbst.", "chosen": "Blätter fallen leis,\nNebel über dem Feld —",
             "rejected": "Herbst ist kalt."}]
    _, out, _ = prep(tmp, rows, tokenizer=model)
    got, m = pairs(out)
    assert m["tokenizer"]["vocab_size"] == 32000, m["tokenizer"]
    for i, r in enumerate(rows):
        p, c, j = [1] + sp.encode(r["prompt"]), sp.encode(r["chosen"]) + [2], sp.encode(r["rejected"]) + [2]
        check_eq(got[i], (p + c, [0] * len(p) + [1] * len(c), p + j, [0] * len(p) + [1] * len(j), len(p)),
                 f"pair {i} vs python sentencepiece")
    # Keep-end truncation with real tokens: BOS, then the prompt's last tokens.
    _, out, _ = prep(tmp, rows[:1], out="short", tokenizer=model, extra=["--max-seq-len", "16"], name="s.jsonl")
    (g,), _ = pairs(out)
    p = [1] + sp.encode(rows[0]["prompt"])
    c, j = sp.encode(rows[0]["chosen"]) + [2], sp.encode(rows[0]["rejected"]) + [2]
    plen = 16 - max(len(c), len(j)) if 16 - max(len(c), len(j)) >= 8 else 8
    want_p = [1] + p[len(p) - (plen - 1):]
    assert g[4] == plen and g[0][:plen] == want_p and g[2][:plen] == want_p, (g, want_p)
    assert len(g[0]) <= 16 and len(g[2]) <= 16


def t_trainer_refuses(tmp):
    try:
        import torch  # noqa: F401
    except ImportError:
        raise Skip("python3-torch not installed")
    sys.path.insert(0, os.path.join(SRC, "tests", "model"))
    from reference import llama_cfg, random_weights, save_hf
    cfg = llama_cfg(vocab_size=259, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2)
    model = os.path.join(tmp, "model")
    save_hf(cfg, random_weights(cfg, 11, 0.05), model)
    rows = [{"prompt": f"q{i}", "chosen": "yes", "rejected": "no"} for i in range(8)]
    _, data, _ = prep(tmp, rows)
    env = dict(os.environ, SHARDTUNE_CACHE_DIR=os.path.join(tmp, "cache"))
    for ranks in (1, 2):
        out = os.path.join(tmp, f"run{ranks}")
        args = ([*MPI, str(ranks)] if ranks > 1 else []) + [
            TRAIN, "--model", model, "--data", data, "--out", out, "--steps", "1", "--global-batch", "4",
            "--micro-batch", "2", "--seq-len", "64", "--threads", "1"]
        p = run(args, ok=False, env=env)
        assert p.returncode != 0, p.stdout[-2000:]
        assert "this folder holds preference pairs" in p.stderr and "--objective dpo" in p.stderr, p.stderr[-3000:]
        assert data in p.stderr and "internal:" not in p.stderr, p.stderr[-3000:]
        assert not os.path.exists(out), os.listdir(out)


if __name__ == "__main__":
    sys.exit(run_case(globals(), "st-pref"))
