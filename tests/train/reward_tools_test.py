#!/usr/bin/python3
"""Reward models beyond training (issue 11): shardtune-score on JSONL, --method qlora, GPT-2, the exporters.
score_input: `shardtune-score --input` on pairs (plain and chat, with and without truncation) gives exactly the
rewards `--data` gives for the same pairs prepared by shardtune-prep, and an independent torch forward's;
completions' rewards equal the chosen rewards of the same texts, {"text"} lines likewise; the tokenizer is
found through the trained folder's shardtune_tokenizer.json. score_errors: bad lines are refused naming the
file and line (bad JSON, missing member, identical chosen/rejected, longer than the model's positions, mixed
kinds), non-zero exit, nothing on stdout. qlora: --objective reward --method qlora trains (the loss falls), saves
the head beside the adapter, and shardtune-score on base + adapter equals torch's rewards of those weights.
gpt2: a GPT2ForSequenceClassification folder trains with the torch loss, saves with the HF config, scores;
from a GPT-2 LM (fresh head, full and LoRA); the LoRA adapter merged scores as base + adapter; gguf refuses it.
export: `shardtune-export checkpoint` of a reward run (full and LoRA) and `merge` of a LoRA reward adapter
score as the trainer's output does; `gguf` refuses a reward model and a reward adapter, naming score.weight.
Usage: reward_tools_test.py CASE   (exit 77 = skipped)"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_test import BIN, PREP, SRC, TRAIN, close, small_cfg, train_lines  # noqa: E402
from harness import run, run_case  # noqa: E402
from dpo_test import PAIRS  # noqa: E402
from reward_test import rm_train, setup  # noqa: E402

sys.path.insert(0, os.path.join(SRC, "tests", "model"))

SCORE = os.path.join(BIN, "tools", "shardtune-score")
EXPORT = os.path.join(BIN, "tools", "shardtune-export")
CHAT = [([{"role": "user", "content": "Say hi."}], "Hi there!", "no"),
        ([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}], "4", "5, I think"),
        ([{"role": "user", "content": "Name a color."}, {"role": "assistant", "content": "Red."},
          {"role": "user", "content": "Another?"}], "Blue.", "Seven.")]


def head_reward(cfg, W, score, ids, mask, lora=None):
    """Torch's reward: score . (final hidden state at the last response token), for Llama and GPT-2 alike: the
    head appended as one more row of the output matrix makes it the last logit (ids never reach that row)."""
    import torch
    from reference import forward
    key = "transformer.wte.weight" if cfg["model_type"] == "gpt2" else (
        "model.embed_tokens.weight" if cfg.get("tie_word_embeddings") else "lm_head.weight")
    out = W[key] if key in W else torch.zeros(0, score.shape[1])
    W2 = {**W, key: torch.cat([out, score.float()])}
    last = int(mask.nonzero()[-1])
    return float(forward(cfg, W2, ids[None], lora=lora)[0, last, -1])


def score(args, ok=True):
    p = run([SCORE, *args, "--threads", "1"], ok=ok)
    return p if not ok else [json.loads(l) for l in p.stdout.splitlines() if l.strip()]


def prep(tmp, src, out, *extra):
    run([PREP, "--input", src, "--output", out, "--tokenizer", "byte", "--format", "preference", "--val-fraction", "0",
         "--quiet", *extra])
    return out


def read_pairs(folder):
    """The (chosen, chosen_mask, rejected, rejected_mask) tensors of a preference folder, in file order."""
    import h5py
    import torch
    m = json.load(open(f"{folder}/manifest.json"))
    out = []
    for s in m["shards"]:
        with h5py.File(f"{folder}/{s['file']}", "r") as h:
            tok, off, mask = h["tokens"][:], h["offsets"][:], h["loss_mask"][:]
        seq = [(torch.tensor(tok[a:b], dtype=torch.long), torch.tensor(mask[a:b], dtype=torch.float32))
               for a, b in zip(off[:-1], off[1:])]
        out += [(*seq[i], *seq[i + 1]) for i in range(0, len(seq), 2)]
    return out


def write_jsonl(path, rows):
    with open(path, "w") as f:
        for r in rows:
            f.write((r if isinstance(r, str) else json.dumps(r)) + "\n")
    return path


def same_pairs(a, b, what):
    """Two shardtune-score outputs of the same pairs (--data's "pair" and --input's "line" aside): equal exactly."""
    assert len(a) == len(b), (what, a, b)
    for x, y in zip(a[:-1], b[:-1]):
        assert (x["chosen"], x["rejected"]) == (y["chosen"], y["rejected"]), (what, x, y)
    assert a[-1] == b[-1], (what, a[-1], b[-1])


def t_score_input(tmp):
    from reference import read_safetensors
    cfg, _, _, pairs = setup(tmp)  # tmp/rm: a reward model; tmp/data: PAIRS prepared; tmp/pairs.jsonl
    rm_train(tmp, "full", 1, 4, 0.01, model=f"{tmp}/rm", steps=2)  # a trained folder: it records its tokenizer
    rec = json.load(open(f"{tmp}/full/shardtune_tokenizer.json"))
    assert rec["tokenizer"]["name"] == "byte", rec
    W = {k: v.float() for k, v in read_safetensors(f"{tmp}/full/model.safetensors").items()}
    model = ["--model", f"{tmp}/full"]
    # plain pairs: --input = --data exactly (the same batches), = torch
    ref = score([*model, "--data", f"{tmp}/data", "--split", "train", "--batch", "3"])
    got = score([*model, "--input", f"{tmp}/pairs.jsonl", "--batch", "3"])  # the tokenizer from the folder's record
    same_pairs(got, ref, "plain pairs")
    assert [r["line"] for r in got[:-1]] == list(range(1, len(PAIRS) + 1)), got
    tc = [head_reward(cfg, W, W["score.weight"], c, cm) for c, cm, _, _ in pairs]
    tr = [head_reward(cfg, W, W["score.weight"], r, rm) for _, _, r, rm in pairs]
    tol = 1e-5 * max(map(abs, tc + tr))
    for i, row in enumerate(got[:-1]):
        assert abs(row["chosen"] - tc[i]) <= tol and abs(row["rejected"] - tr[i]) <= tol, (i, row, tc[i], tr[i])
    # completions {"prompt", "completion"} = the chosen rewards; texts {"text"} = torch on [BOS] text EOS
    comp = write_jsonl(f"{tmp}/comp.jsonl", [{"prompt": p, "completion": c} for p, c, _ in PAIRS])
    rows = score([*model, "--input", comp, "--batch", "5", "--tokenizer", "byte"])
    assert len(rows) == len(PAIRS) + 1 and rows[-1]["completions"] == len(PAIRS), rows
    close([r["reward"] for r in rows[:-1]], [r["chosen"] for r in ref[:-1]], 1e-5, "completion vs chosen reward")
    texts = write_jsonl(f"{tmp}/texts.jsonl", [{"text": p + c} for p, c, _ in PAIRS[:3]])
    rows = score([*model, "--input", texts])
    import torch
    for (p, c, _), row in zip(PAIRS[:3], rows):
        ids = torch.tensor([256] + list((p + c).encode()) + [257])  # byte tokenizer: <s> text </s>
        want = head_reward(cfg, W, W["score.weight"], ids, torch.ones(len(ids)))
        close([row["reward"]], [want], 1e-5, "text reward")
    # chat pairs (message lists, TRL's prompt + chosen/rejected form too) under a chat template
    chat = [{"chosen": pr + [{"role": "assistant", "content": c}], "rejected": pr + [{"role": "assistant", "content": r}]}
            for pr, c, r in CHAT[:2]] + [{"prompt": CHAT[2][0], "chosen": {"role": "assistant", "content": CHAT[2][1]},
                                          "rejected": [{"role": "assistant", "content": CHAT[2][2]}]}]
    write_jsonl(f"{tmp}/chat.jsonl", chat)
    prep(tmp, f"{tmp}/chat.jsonl", f"{tmp}/chat", "--template", "chatml", "--max-seq-len", "200")
    ref = score([*model, "--data", f"{tmp}/chat", "--split", "train"])
    same_pairs(score([*model, "--input", f"{tmp}/chat.jsonl", "--template", "chatml"]), ref, "chat pairs")
    other = score([*model, "--input", f"{tmp}/chat.jsonl", "--template", "plain"])  # the template matters
    assert all(a["chosen"] != b["chosen"] for a, b in zip(other[:-1], ref[:-1])), (other, ref)
    # chat completions = the chosen rewards of the chat pairs
    cc = write_jsonl(f"{tmp}/chat_comp.jsonl", [{"prompt": pr, "completion": [{"role": "assistant", "content": c}]}
                                                for pr, c, _ in CHAT])
    rows = score([*model, "--input", cc, "--template", "chatml"])
    close([r["reward"] for r in rows[:-1]], [r["chosen"] for r in ref[:-1]], 1e-5, "chat completion vs chosen")
    # over-long pairs: prep's truncation (the prompt first, keeping its end) with the same --max-seq-len
    long = write_jsonl(f"{tmp}/long.jsonl", [{"prompt": "A long prompt that will not fit. " * 3 + p, "chosen": c,
                                              "rejected": r} for p, c, r in PAIRS[:4]])
    prep(tmp, long, f"{tmp}/long", "--max-seq-len", "40")
    ref = score([*model, "--data", f"{tmp}/long", "--split", "train"])
    same_pairs(score([*model, "--input", long, "--max-seq-len", "40"]), ref, "truncated pairs")
    cut = read_pairs(f"{tmp}/long")
    assert max(len(c) for c, _, _, _ in cut) == 40, [len(c) for c, _, _, _ in cut]  # truncation did happen
    full = score([*model, "--input", long])  # uncut: other rewards
    assert full[0]["chosen"] != ref[0]["chosen"], (full[0], ref[0])


def t_score_errors(tmp):
    setup(tmp)
    rm = ["--model", f"{tmp}/rm", "--tokenizer", "byte"]

    def fails(lines, *expect, args=()):
        path = write_jsonl(f"{tmp}/bad.jsonl", lines)
        p = score([*rm, "--input", path, *args], ok=False)
        assert p.returncode != 0, p.stdout
        assert p.stdout == "", p.stdout  # nothing that looks like (partial) output
        for e in expect:
            assert e in p.stderr, (e, p.stderr)
    good = {"prompt": "Q?", "chosen": " yes", "rejected": " no"}
    fails([good, '{"prompt": "Q?", "chosen": '], "bad.jsonl:2:", "malformed JSON")
    fails([good, good, {"prompt": "Q?", "chosen": " yes"}], "bad.jsonl:3:", 'missing field "rejected"')
    fails([{"chosen": " yes", "rejected": " no"}], "bad.jsonl:1:", 'missing field "prompt"')
    fails([good, {"prompt": "Q?", "chosen": " same", "rejected": " same"}], "bad.jsonl:2:", "identical")
    fails([{"prompt": "x" * 300, "chosen": " a", "rejected": " b"}], "bad.jsonl:1:", "max_position_embeddings 256",
          "--max-seq-len 256")
    fails([good, {"prompt": "Q?", "completion": " yes"}], "bad.jsonl:2:", "mixes pairs")
    fails([{"prompt": "Q?", "answer": " yes"}], "bad.jsonl:1:", "cannot tell what to score")
    fails([{"prompt": "Q?", "completion": 3}], "bad.jsonl:1:", '"completion"')
    fails([], "holds no lines")
    # options
    write_jsonl(f"{tmp}/ok.jsonl", [good])
    for args, expect in ((["--input", f"{tmp}/ok.jsonl", "--data", f"{tmp}/data"], "excludes"),
                         (["--data", f"{tmp}/data", "--max-seq-len", "10"], "--max-seq-len applies to --input only"),
                         (["--data", f"{tmp}/data", "--tokenizer", "byte"], "--tokenizer applies to --input only"),
                         (["--input", f"{tmp}/ok.jsonl", "--split", "val"], "--split applies to --data only"),
                         (["--input", f"{tmp}/ok.jsonl", "--max-seq-len", "1000"], "exceeds the model's max_position"),
                         (["--input", f"{tmp}/ok.jsonl", "--template", "nope"], "nope"),
                         (["--input", f"{tmp}/missing.jsonl"], "cannot open --input")):
        p = score(["--model", f"{tmp}/rm", *args, *(["--tokenizer", "byte"] if "--input" in args else [])], ok=False)
        assert p.returncode != 0 and expect in p.stderr, (args, p.stderr)
    # a folder without a tokenizer record and no --tokenizer: say what to give
    p = score(["--model", f"{tmp}/rm", "--input", f"{tmp}/ok.jsonl"], ok=False)
    assert p.returncode != 0 and "--tokenizer" in p.stderr, p.stderr
    assert len(score([*rm, "--input", f"{tmp}/ok.jsonl"])) == 2  # the good line alone scores


def lora_weights(path):
    """A PEFT adapter folder as the reference's lora dict, and its head."""
    from reference import read_safetensors
    a = json.load(open(f"{path}/adapter_config.json"))
    T = read_safetensors(f"{path}/adapter_model.safetensors")
    mods = [k[len("base_model.model."):-len(".lora_A.weight")] for k in T if k.endswith(".lora_A.weight")]
    lora = {m: (T[f"base_model.model.{m}.lora_A.weight"].float(), T[f"base_model.model.{m}.lora_B.weight"].float(),
                a["lora_alpha"] / a["r"]) for m in mods}
    return a, lora, T["base_model.model.score.weight"].float()


def t_qlora(tmp):
    import torch
    import torch.nn.functional as F
    from reference import read_safetensors
    cfg, W0, _, pairs = setup(tmp)
    q = ["--method", "qlora", "--lora-targets", "all-linear", "--lora-r", "4"]
    lines = rm_train(tmp, "q", 1, 4, 0.0, steps=6, lr=1e-2, extra=q)
    log = open(f"{tmp}/q.log").read()
    assert "QLoRA" in log and "NF4" in log, log[-2000:]
    losses = [l["loss"] for l in lines]
    assert losses[-1] < losses[0] - 0.05, losses  # it learns
    a, lora, head = lora_weights(f"{tmp}/q")
    assert a["task_type"] == "SEQ_CLS" and a["modules_to_save"] == ["score"], a
    T = read_safetensors(f"{tmp}/q/adapter_model.safetensors")
    assert T["base_model.model.score.weight"].dtype == torch.float32, T["base_model.model.score.weight"].dtype
    # base + adapter through shardtune-score = torch on the same (unquantized) weights
    rows = score(["--model", f"{tmp}/model", "--adapter", f"{tmp}/q", "--data", f"{tmp}/data", "--split", "train"])
    W = {k: v.float() for k, v in read_safetensors(f"{tmp}/model/model.safetensors").items()}
    tc = [head_reward(cfg, W, head, c, cm, lora) for c, cm, _, _ in pairs]
    tr = [head_reward(cfg, W, head, r, rm, lora) for _, _, r, rm in pairs]
    tol = 1e-5 * max(map(abs, tc + tr))
    for i, row in enumerate(rows[:-1]):
        assert abs(row["chosen"] - tc[i]) <= tol and abs(row["rejected"] - tr[i]) <= tol, (i, row, tc[i], tr[i])
    # round trip: a QLoRA run continued from the saved adapter (one step, lr ~0) starts from its head and adapters:
    # its loss is the saved rewards' Bradley-Terry loss (up to NF4's rounding of the base), far from a fresh start's
    scored = float(-F.logsigmoid(torch.tensor(tc) - torch.tensor(tr)).mean())
    again = rm_train(tmp, "q2", 1, 8, 0.0, steps=1, lr=1e-9, extra=["--method", "qlora", "--adapter", f"{tmp}/q"])
    print(f"qlora: losses {losses}, continued {again[0]['loss']}, scored (fp32 base) {scored}")
    assert abs(again[0]["loss"] - scored) <= 0.1 * abs(scored) + 0.02, (again[0], scored)
    assert again[0]["loss"] < losses[0] - 0.05, (again[0], losses)


def gpt2_cfg(**kw):
    from reference import CASES
    return dict(CASES["gpt2"][0], vocab_size=259, n_positions=128, n_ctx=128, **kw)


def t_gpt2(tmp):
    import torch
    import torch.nn.functional as F
    from reference import random_weights, read_safetensors, save_hf
    _, _, _, pairs = setup(tmp)
    cfg = gpt2_cfg()
    W = random_weights(cfg, 5, 0.05)
    save_hf(cfg, W, f"{tmp}/gpt2")  # the causal LM
    head = 0.5 * torch.randn(1, cfg["n_embd"], generator=torch.Generator().manual_seed(3))
    rm_cfg = dict(cfg, architectures=["GPT2ForSequenceClassification"], id2label={"0": "LABEL_0"},
                  label2id={"LABEL_0": 0}, pad_token_id=258)
    save_hf(rm_cfg, {**W, "score.weight": head}, f"{tmp}/gpt2rm")  # HF's GPT2ForSequenceClassification layout
    # from the reward model: step 1's loss and rewards = torch's Bradley-Terry on these weights
    got = rm_train(tmp, "g", 1, 4, 0.0, model=f"{tmp}/gpt2rm", steps=3)
    with torch.no_grad():
        rc = torch.tensor([head_reward(cfg, W, head, c, cm) for c, cm, _, _ in pairs])
        rr = torch.tensor([head_reward(cfg, W, head, r, rm) for _, _, r, rm in pairs])
    close([got[0]["loss"]], [float(-F.logsigmoid(rc - rr).mean())], 1e-5, "GPT-2 reward: loss")
    close([got[0]["rewards/margin"]], [float((rc - rr).mean())], 1e-4, "GPT-2 reward: margin")
    assert got[-1]["loss"] < got[0]["loss"], got
    c = json.load(open(f"{tmp}/g/config.json"))
    assert c["architectures"] == ["GPT2ForSequenceClassification"] and c["num_labels"] == 1, c
    assert c["id2label"] == {"0": "LABEL_0"} and c["pad_token_id"] == 258 and c["model_type"] == "gpt2", c
    T = {k: v.float() for k, v in read_safetensors(f"{tmp}/g/model.safetensors").items()}
    assert "score.weight" in T and "lm_head.weight" not in T and "transformer.wte.weight" in T, sorted(T)
    rows = score(["--model", f"{tmp}/g", "--data", f"{tmp}/data", "--split", "train"])
    want = [head_reward(cfg, T, T["score.weight"], c, cm) for c, cm, _, _ in pairs]
    close([r["chosen"] for r in rows[:-1]], want, 1e-5, "GPT-2 saved reward model: shardtune-score vs torch")
    # from the causal LM: a fresh head (and pad_token_id given as HF needs it for batches), LoRA too
    rm_train(tmp, "g_full", 1, 4, 0.0, model=f"{tmp}/gpt2", steps=2)
    c = json.load(open(f"{tmp}/g_full/config.json"))
    assert c["architectures"] == ["GPT2ForSequenceClassification"] and c["pad_token_id"] == 258, c  # the data's pad
    lines = rm_train(tmp, "g_lora", 1, 4, 0.0, model=f"{tmp}/gpt2", steps=4, lr=1e-2,
                     extra=["--method", "lora", "--lora-targets", "c_attn,c_proj,c_fc"])
    assert lines[-1]["loss"] < lines[0]["loss"], lines
    a, lora, h = lora_weights(f"{tmp}/g_lora")
    assert a["task_type"] == "SEQ_CLS" and a["fan_in_fan_out"] is True, a
    rows = score(["--model", f"{tmp}/gpt2", "--adapter", f"{tmp}/g_lora", "--data", f"{tmp}/data", "--split", "train"])
    want = [head_reward(cfg, W, h, c, cm, lora) for c, cm, _, _ in pairs]
    close([r["chosen"] for r in rows[:-1]], want, 1e-5, "GPT-2 base + reward adapter: shardtune-score vs torch")
    # merged: a complete GPT2ForSequenceClassification folder scoring as base + adapter; gguf refuses it
    run([EXPORT, "merge", "--model", f"{tmp}/gpt2", "--adapter", f"{tmp}/g_lora", "--out", f"{tmp}/g_merged"])
    c = json.load(open(f"{tmp}/g_merged/config.json"))
    assert c["architectures"] == ["GPT2ForSequenceClassification"] and c["num_labels"] == 1, c
    merged = score(["--model", f"{tmp}/g_merged", "--data", f"{tmp}/data", "--split", "train"])
    close([r["chosen"] for r in merged[:-1]], want, 1e-5, "GPT-2 merged reward model vs torch")
    p = run([EXPORT, "gguf", "--model", f"{tmp}/g_merged", "--tokenizer", "byte", "--out", f"{tmp}/g.gguf"], ok=False)
    assert p.returncode != 0 and "score.weight" in p.stderr and "'gpt2'" in p.stderr, p.stderr


def t_export(tmp):
    from reference import read_safetensors
    setup(tmp)
    data = ["--data", f"{tmp}/data", "--split", "train"]
    if not os.path.exists(EXPORT):
        from harness import Skip
        raise Skip("no shardtune-export in this build")
    # full: the last checkpoint exported = the trainer's --out, as a complete HF reward-model folder
    rm_train(tmp, "full", 1, 4, 0.01, steps=2, extra=["--save-every", "2"])
    run([EXPORT, "checkpoint", "--ckpt", f"{tmp}/full/checkpoints", "--out", f"{tmp}/full_x"])
    c = json.load(open(f"{tmp}/full_x/config.json"))
    assert c["architectures"] == ["LlamaForSequenceClassification"] and c["num_labels"] == 1, c
    assert c["pad_token_id"] == 258 and c["id2label"] == {"0": "LABEL_0"}, c
    T = read_safetensors(f"{tmp}/full_x/model.safetensors")
    assert "score.weight" in T and "lm_head.weight" not in T, sorted(T)
    assert os.path.exists(f"{tmp}/full_x/shardtune_tokenizer.json")
    ref = score(["--model", f"{tmp}/full", *data])
    same_pairs(score(["--model", f"{tmp}/full_x", *data]), ref, "checkpoint export (full)")
    same_pairs(score(["--model", f"{tmp}/full_x", "--input", f"{tmp}/pairs.jsonl"]), ref, "export, --input")
    # LoRA: the checkpoint's adapter exported keeps the head; merged into the base = base + adapter
    lora = ["--method", "lora", "--lora-targets", "all-linear", "--lora-r", "4", "--save-every", "2"]
    rm_train(tmp, "lora", 1, 4, 0.01, steps=2, extra=lora)
    run([EXPORT, "checkpoint", "--ckpt", f"{tmp}/lora/checkpoints", "--out", f"{tmp}/lora_x"])
    base = ["--model", f"{tmp}/model"]
    ref = score([*base, "--adapter", f"{tmp}/lora", *data])
    same_pairs(score([*base, "--adapter", f"{tmp}/lora_x", *data]), ref, "checkpoint export (LoRA)")
    run([EXPORT, "merge", "--model", f"{tmp}/model", "--adapter", f"{tmp}/lora", "--out", f"{tmp}/merged"])
    c = json.load(open(f"{tmp}/merged/config.json"))
    assert c["architectures"] == ["LlamaForSequenceClassification"] and c["num_labels"] == 1, c
    assert c["pad_token_id"] == 258 and c["id2label"] == {"0": "LABEL_0"}, c  # the data's pad id, as the trainer's
    T = read_safetensors(f"{tmp}/merged/model.safetensors")
    assert "score.weight" in T and "lm_head.weight" not in T, sorted(T)
    got = score(["--model", f"{tmp}/merged", *data])
    g = [r[k] for r in got[:-1] for k in ("chosen", "rejected")]
    want = [r[k] for r in ref[:-1] for k in ("chosen", "rejected")]
    tol = 1e-5 * max(map(abs, want))  # relative to the rewards' size: a reward near 0 has no relative precision
    assert len(g) == len(want) and all(abs(x - y) <= tol for x, y in zip(g, want)), ("merged vs base + adapter", g, want)
    assert got[-1]["pairs"] == ref[-1]["pairs"], (got[-1], ref[-1])
    # the merge of a reward adapter into a base that is a reward model itself takes the adapter's head
    p = run([EXPORT, "merge", "--model", f"{tmp}/rm", "--adapter", f"{tmp}/lora", "--out", f"{tmp}/merged_rm"])
    T2 = read_safetensors(f"{tmp}/merged_rm/model.safetensors")
    assert (T2["score.weight"] == T["score.weight"]).all(), "the adapter's head, not the base's"
    # gguf: refused, naming score.weight and what to do; nothing written
    for args in ((["--model", f"{tmp}/full"]), (["--model", f"{tmp}/model", "--adapter", f"{tmp}/lora"]),
                 (["--model", f"{tmp}/model", "--adapter", f"{tmp}/lora", "--adapter-gguf"])):
        p = run([EXPORT, "gguf", *args, "--tokenizer", "byte", "--out", f"{tmp}/rm.gguf"], ok=False)
        assert p.returncode != 0, p.stdout
        for e in ("score.weight", "sequence-classification head", "export the base causal LM"):
            assert e in p.stderr, (args, e, p.stderr)
        assert not os.path.exists(f"{tmp}/rm.gguf")


if __name__ == "__main__":
    sys.exit(run_case(globals(), "reward-tools"))
