#!/usr/bin/python3
"""Bad input reaches the trainer and shardtune-generate as whole programs: damaged shards (wrong rank of
/offsets or /tokens, ids outside the vocabulary, mask 2, checksum mismatch), damaged manifests, shard
paths leaving --data, a config.json that does not describe its weights or is out of range or nested
300,000 deep. Each must exit non-zero with a message naming the file (and dataset, sample or key),
promptly also under mpirun, and leave nothing in --out. Also the verification cache across two runs.
Usage: reader_faults_test.py CASE."""
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from harness import Skip, run, run_case  # noqa: E402

BIN = os.environ["ST_BIN"]
SRC = os.environ["ST_SOURCE"]
TRAIN = os.path.join(BIN, "src", "shardtune")
PREP = os.path.join(BIN, "data_prep", "shardtune-prep")
GENERATE = os.path.join(BIN, "tools", "shardtune-generate")
INSPECT = os.path.join(BIN, "tools", "shardtune-inspect")
MPI = ["mpirun", "--allow-run-as-root", "--oversubscribe", "-np"]
sys.path.insert(0, os.path.join(SRC, "tests", "model"))



def make_model(path, vocab=259):
    import torch  # noqa: F401  (reference.py needs it)
    from reference import llama_cfg, random_weights, save_hf
    cfg = llama_cfg(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2)
    save_hf(cfg, random_weights(cfg, 11, 0.05), path)
    return path


def make_data(tmp, name="data", n=60):
    run(["/usr/bin/python3", os.path.join(SRC, "tools", "demo", "make_task.py"), f"{tmp}/task.jsonl", f"{tmp}/held.jsonl", str(n)])
    out = f"{tmp}/{name}"
    run([PREP, "--input", f"{tmp}/task.jsonl", "--output", out, "--tokenizer", "byte", "--template", "plain",
         "--val-fraction", "0.1", "--max-seq-len", "64", "--shard-tokens", "500", "--quiet"])
    return out


def h5py():
    try:
        import h5py as h
        return h
    except ImportError:
        raise Skip("h5py is not installed for /usr/bin/python3")


def manifest(data):
    return json.load(open(f"{data}/manifest.json"))


def save_manifest(data, m):
    json.dump(m, open(f"{data}/manifest.json", "w"))


def copy_data(src, dst):
    subprocess.run(["cp", "-a", src, dst], check=True)
    return dst


class Case:
    def __init__(self, tmp):
        self.tmp = tmp
        self.model = make_model(f"{tmp}/model")
        self.data = make_data(tmp)
        self.n = 0
        self.env = dict(os.environ, SHARDTUNE_CACHE_DIR=f"{tmp}/cache")

    def fresh_data(self):
        self.n += 1
        return copy_data(self.data, f"{self.tmp}/data{self.n}")

    def train(self, data, ranks=1, ok=False, extra=(), timeout=180):
        self.n += 1
        out = f"{self.tmp}/out{self.n}"
        args = ([*MPI, str(ranks), "-x", "SHARDTUNE_CACHE_DIR"] if ranks > 1 else []) + [
            TRAIN, "--model", self.model, "--data", data, "--out", out, "--steps", "1", "--global-batch", "4",
            "--micro-batch", "2", "--seq-len", "64", "--threads", "1", *extra]
        p = run(args, ok=ok, timeout=timeout, env=self.env)
        return p, out

    def refused(self, data, *needles, ranks=1, extra=()):
        """The trainer must fail, name every needle in its message, and leave --out absent."""
        p, out = self.train(data, ranks=ranks, extra=extra)
        assert p.returncode != 0, p.stdout[-2000:]
        for n in needles:
            assert n in p.stderr, f"'{n}' not in:\n{p.stderr[-3000:]}"
        assert "internal:" not in p.stderr, p.stderr[-2000:]
        assert not os.path.exists(out), f"{out} was created: {os.listdir(out)}"
        return p


def first_train_shard(data):
    return next(s for s in manifest(data)["shards"] if s["split"] == "train")


def rewrite_dataset(path, name, values, dtype=None):
    h = h5py()
    import numpy as np
    with h.File(path, "r+") as f:
        dt = dtype or f[name].dtype
        del f[name]
        f.create_dataset(name, data=np.asarray(values, dtype=dt))


def t_bad_shard_structure(tmp):
    c = Case(tmp)
    import numpy as np
    for name, shape_of in [("offsets", lambda n: (n, 2)), ("tokens", lambda n: (n, 1))]:
        data = c.fresh_data()
        s = first_train_shard(data)
        path = f"{data}/{s['file']}"
        with h5py().File(path, "r") as f:
            old = f[name][...]
        rewrite_dataset(path, name, np.zeros(shape_of(len(old)), dtype=old.dtype))
        # Before: SIGSEGV (heap overflow) in ShardSet::open; under mpirun a hang with orphaned ranks.
        c.refused(data, s["file"], f"'/{name}'", "2 dimensions")
        p = c.refused(data, s["file"], f"'/{name}'", ranks=2)
        assert "Segmentation" not in p.stderr and "signal" not in p.stderr.lower(), p.stderr[-2000:]
        # shardtune-inspect --verify runs the same validation.
        p = run([INSPECT, data, "--verify"], ok=False)
        assert p.returncode != 0 and "INVALID" in p.stdout and f"'/{name}'" in p.stdout, p.stdout[-2000:] + p.stderr
    data = c.fresh_data()
    s = first_train_shard(data)
    with h5py().File(f"{data}/{s['file']}", "r") as f:
        toks = f["tokens"][...]
    rewrite_dataset(f"{data}/{s['file']}", "tokens", toks.astype(np.float32), dtype=np.float32)
    c.refused(data, s["file"], "'/tokens' has type 4-byte float, expected int32")


def t_bad_shard_content(tmp):
    c = Case(tmp)
    # An id >= vocab deep in the last train shard: found before step 1, naming shard and sample.
    data = c.fresh_data()
    shards = [s for s in manifest(data)["shards"] if s["split"] == "train"]
    assert len(shards) >= 2, "the fixture should have several train shards"
    s = shards[-1]
    path = f"{data}/{s['file']}"
    with h5py().File(path, "r") as f:
        toks, offs = f["tokens"][...], f["offsets"][...]
    sample = len(offs) - 2
    toks[offs[sample] + 1] = 300
    rewrite_dataset(path, "tokens", toks)
    c.refused(data, s["file"], f"sample {sample}, token 1", "id 300", "vocabulary")
    c.refused(data, s["file"], f"sample {sample}", ranks=2)
    # A mask value 2: named, not an "internal:" error.
    data = c.fresh_data()
    s = first_train_shard(data)
    path = f"{data}/{s['file']}"
    with h5py().File(path, "r") as f:
        mask = f["loss_mask"][...]
    mask[5] = 2
    rewrite_dataset(path, "loss_mask", mask)
    c.refused(data, s["file"], "loss_mask value 2")
    # A valid id changed: only the checksum can tell.
    data = c.fresh_data()
    s = first_train_shard(data)
    path = f"{data}/{s['file']}"
    with h5py().File(path, "r+") as f:
        f["tokens"][3] = (int(f["tokens"][3]) + 1) % 256
    c.refused(data, s["file"], "sha256", "does not match manifest.json")


def t_bad_manifest(tmp):
    c = Case(tmp)
    data = c.fresh_data()
    m = manifest(data)
    del m["shards"]
    save_manifest(data, m)
    c.refused(data, "manifest.json", "field 'shards' is missing")
    for bad, why in [("../x.h5", "'..' component"), ("/abs.h5", "absolute")]:
        data = c.fresh_data()
        m = manifest(data)
        m["shards"][0]["file"] = bad
        save_manifest(data, m)
        c.refused(data, "manifest.json", bad, why)
    data = c.fresh_data()
    open(f"{data}/manifest.json", "w").write('{"format": ' + "[" * 300000 + "]" * 300000 + "}")
    c.refused(data, "manifest.json", "nested deeper than 128")
    # --data that is missing, or a file (the manifest itself): named as such, not "has no manifest.json".
    c.refused(f"{tmp}/nowhere", f"data folder '{tmp}/nowhere' does not exist", "HINT")
    c.refused(f"{data}/manifest.json", "is a file, not a folder", f"pass the folder that holds it: {data}")


def t_verify_cache(tmp):
    c = Case(tmp)
    data = c.fresh_data()
    before = sorted(os.listdir(data))
    n = len(manifest(data)["shards"])
    p, out = c.train(data, ok=True)
    assert f"data verified: {n} shard(s) checked, 0 known unchanged" in p.stdout + p.stderr, p.stdout[-2000:]
    p, out = c.train(data, ok=True)
    assert f"data verified: 0 shard(s) checked, {n} known unchanged" in p.stdout + p.stderr, p.stdout[-2000:]
    p, out = c.train(data, ok=True, ranks=2, extra=["--verify-data", "full"], timeout=240)
    assert f"data verified: {n} shard(s) checked, 0 known unchanged" in p.stdout + p.stderr, p.stdout[-2000:]
    assert sorted(os.listdir(data)) == before, "the data folder was written to"
    # A shard rewritten after it was verified is verified again (and here found damaged).
    s = first_train_shard(data)
    with h5py().File(f"{data}/{s['file']}", "r+") as f:
        f["tokens"][0] = (int(f["tokens"][0]) + 1) % 256
    c.refused(data, s["file"], "sha256")
    # off skips content checks (the damaged id is still valid, so training runs).
    p, out = c.train(data, ok=True, extra=["--verify-data", "off"])
    assert "data verified" not in p.stdout + p.stderr
    # An unwritable cache folder is a warning, not an error.
    c.env["SHARDTUNE_CACHE_DIR"] = "/dev/null/cache"
    p, out = c.train(c.fresh_data(), ok=True)
    assert "record not written" in p.stderr, p.stderr[-2000:]


def t_model_config(tmp):
    model = make_model(f"{tmp}/model")
    cfg = json.load(open(f"{model}/config.json"))

    def refused(edit, *needles, text=None):
        d = f"{tmp}/m{len(os.listdir(tmp))}"
        copy_data(model, d)
        if text is None:
            j = dict(cfg)
            edit(j)
            text = json.dumps(j)
        open(f"{d}/config.json", "w").write(text)
        # Before: num_hidden_layers 100000 grew to 24 GB until killed (the timeout catches that here).
        p = run([GENERATE, "--model", d, "--prompt-ids", "1 2 3", "--max-new-tokens", "2"], ok=False, timeout=60)
        assert p.returncode != 0, p.stdout
        for n in needles:
            assert n in p.stderr, f"'{n}' not in:\n{p.stderr[-3000:]}"
        p = run([TRAIN, "--model", d, "--data", f"{tmp}/nodata", "--out", f"{tmp}/o", "--steps", "1"], ok=False)
        assert p.returncode != 0 and "config.json" in p.stderr and not os.path.exists(f"{tmp}/o"), p.stderr[-2000:]

    refused(lambda j: j.update(num_hidden_layers=100000), "config.json", "num_hidden_layers is 100000")
    refused(lambda j: j.update(num_hidden_layers=3000), "config.json", "num_hidden_layers is 3000 but the weights hold 2")
    refused(lambda j: j.update(hidden_size=64), "model.embed_tokens.weight", "config key hidden_size gives 64")
    refused(lambda j: j.update(rms_norm_eps=-1), "config.json", "rms_norm_eps is -1")
    refused(None, "config.json: config is not a JSON object", "HINT", text="[1, 2]")
    refused(None, "config.json", "nested deeper than", text='{"model_type": "llama", "x": ' + "[" * 300000 + "]" * 300000 + "}")


if __name__ == "__main__":
    sys.exit(run_case(globals(), "st-reader-faults"))
