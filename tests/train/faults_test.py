#!/usr/bin/python3
"""Trainer faults as real processes: non-finite weights, options, losses and gradient norms (error or
counted skip, never a saved model that looks finished), the atomic final save and its leftover staging
folder, SIGTERM to mpirun. Fixtures are made in the test (tiny random Llama, byte-tokenized task data).
Usage: faults_test.py CASE."""
import os
import signal
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, ".."))
from harness import run_case, run_fails  # noqa: E402
from train_test import GENERATE, MPI, PREP, TRAIN, make_data, make_model, read_safetensors, run, train_lines  # noqa: E402


def base_args(tmp, out, steps=4, model=None, extra=()):
    """The trainer's command line; `extra` options replace the defaults of the same name (CLI11 refuses
    an option given twice)."""
    opts = {"--model": model or f"{tmp}/model", "--data": f"{tmp}/data", "--out": out, "--steps": str(steps),
            "--global-batch": "8", "--micro-batch": "2", "--seq-len": "64", "--lr": "2e-3", "--eval-batches": "0",
            "--metrics": out.rstrip("/") + ".jsonl", "--bucket-mb": "0.02", "--precision": "fp32", "--threads": "1"}
    opts.update(zip(extra[::2], extra[1::2]))
    return [TRAIN] + [x for kv in opts.items() for x in kv]


def setup(tmp):
    make_model(f"{tmp}/model")
    make_data(tmp, 120)


def no_model(out):
    """--out holds nothing that looks like a finished model (absent, empty or only its checkpoint folder), and no
    staging folder is left."""
    left = [n for n in os.listdir(out) if n != "checkpoints"] if os.path.exists(out) else []
    assert not left, f"{out} holds {left}"
    assert not os.path.exists(out.rstrip("/") + ".partial"), "staging folder left behind"


def fails(args, *want, env=None, timeout=180):
    return run_fails(args, *want, env=env, timeout=timeout)


def t_nonfinite_weights(tmp):
    """NaN or Inf in the model file: refused at start, naming the tensor by its HF name, by the trainer and by
    shardtune-generate; a weight that --save-dtype F16 would turn into Inf is refused at the save."""
    import torch  # noqa: F401
    sys.path.insert(0, os.path.join(os.environ["ST_SOURCE"], "tests", "model"))
    from reference import llama_cfg, random_weights, save_hf
    make_data(tmp, 120)
    cfg = llama_cfg(vocab_size=259, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2)
    for bad, name in ((float("nan"), "model.layers.1.mlp.down_proj.weight"), (float("inf"), "model.norm.weight")):
        W = random_weights(cfg, 11, 0.05)
        W[name].view(-1)[3] = bad
        model = f"{tmp}/bad_{bad}"
        save_hf(cfg, W, model)
        out = f"{tmp}/out_{bad}"
        fails(base_args(tmp, out, model=model), name, "not finite", "NaN" if bad != bad else "1 Inf", "HINT")
        no_model(out)
        # shardtune-generate too (it printed ids computed from them).
        fails([GENERATE, "--model", model, "--prompt-ids", "1 2", "--max-new-tokens", "2"], name, "not finite", "HINT")
    # A finite weight that overflows --save-dtype F16 (max 65504) was saved as Inf with exit 0.
    W = random_weights(cfg, 11, 0.05)
    W["model.embed_tokens.weight"][7, 0] = 1e6
    save_hf(cfg, W, f"{tmp}/big")
    out = f"{tmp}/out_f16"
    fails(base_args(tmp, out, steps=1, model=f"{tmp}/big", extra=["--save-dtype", "F16", "--lr", "1e-6"]),
          "model.embed_tokens.weight' does not fit F16", "--save-dtype BF16")
    no_model(out)
    run(base_args(tmp, f"{tmp}/out_bf16", steps=1, model=f"{tmp}/big", extra=["--save-dtype", "BF16", "--lr", "1e-6"]))


def t_nonfinite_options(tmp):
    """Non-finite or absurd numbers are refused by name before anything is loaded."""
    setup(tmp)
    for opt, val in (("--lr", "inf"), ("--lr", "nan"), ("--eps", "nan"), ("--grad-clip", "inf"),
                     ("--weight-decay", "-nan"), ("--beta2", "nan")):
        out = f"{tmp}/o{opt}{val}"
        fails(base_args(tmp, out, extra=[opt, val]), opt, "finite")
        no_model(out)
    fails(base_args(tmp, f"{tmp}/ob", extra=["--bucket-mb", "1e30"]), "--bucket-mb", "absurd")
    fails(base_args(tmp, f"{tmp}/oo", extra=["--on-nonfinite", "ignore"]), "--on-nonfinite")


def t_diverging_lr(tmp):
    """--lr 1e30 --grad-clip 0: the first update blows the weights up; the next step's loss is not finite.
    The run stops there naming the step, before the optimizer applies it, exits non-zero, saves nothing."""
    setup(tmp)
    out = f"{tmp}/out"
    p = fails([*MPI, "2", *base_args(tmp, out, steps=6, extra=["--lr", "1e30", "--grad-clip", "0", "--zero", "1"])],
              "non-finite loss", "stopping before the optimizer applies it", "lower --lr")
    assert "step 2 of 6" in p.stderr or "step 3 of 6" in p.stderr, p.stderr[-2000:]
    no_model(out)
    lines = train_lines(out + ".jsonl")
    assert all(np.isfinite(l["loss"]) for l in lines), lines  # only finished, finite steps were logged


def t_nonfinite_error_names_rank(tmp):
    """A NaN loss on one rank only (test hook SHARDTUNE_TEST_NAN=RANK:STEP): the error names step and rank."""
    setup(tmp)
    out = f"{tmp}/out"
    env = dict(os.environ, SHARDTUNE_TEST_NAN="1:2")
    p = fails([*MPI, "2", "-x", "SHARDTUNE_TEST_NAN", *base_args(tmp, out, steps=5, extra=["--zero", "2"])],
              "step 3 of 5", "loss (nan)", "[local loss non-finite on rank 1]", "gradient norm", "--on-nonfinite skip",
              env=env)
    no_model(out)
    assert len(train_lines(out + ".jsonl")) == 2


def t_nonfinite_skip(tmp):
    """--on-nonfinite skip: the bad step's update is skipped (counted, logged, "skipped": true), the run goes
    on and saves a finite model; the data position (consumed_samples) still advances. Too many skips in a row
    stop the run with an error and no model."""
    setup(tmp)
    out = f"{tmp}/out"
    env = dict(os.environ, SHARDTUNE_TEST_NAN="0:2")
    p = run([*MPI, "2", "-x", "SHARDTUNE_TEST_NAN", *base_args(tmp, out, steps=5, extra=["--zero", "1", "--on-nonfinite",
                                                                                         "skip"])], env=env)
    lines = train_lines(out + ".jsonl")
    assert [l["skipped"] for l in lines] == [False, False, True, False, False], lines
    assert [l["consumed_samples"] for l in lines] == [8, 16, 24, 32, 40], lines
    # JSON has no NaN: the metrics line writes the skipped step's loss as null
    assert lines[2]["loss"] is None and all(np.isfinite(l["loss"]) for i, l in enumerate(lines) if i != 2), lines
    assert "step 3/5 skipped" in p.stdout and "skipped 1 of 5 steps" in p.stdout, p.stdout[-2000:]
    W = read_safetensors(f"{out}/model.safetensors")
    assert all(np.isfinite(w).all() for w in W.values())
    # Skipping leaves the parameters alone: the same run without the bad step's update differs from a
    # clean run, but the first two steps match exactly.
    clean = f"{tmp}/clean"
    run([*MPI, "2", *base_args(tmp, clean, steps=5, extra=["--zero", "1"])])
    ref = train_lines(clean + ".jsonl")
    assert [l["loss"] for l in ref[:2]] == [l["loss"] for l in lines[:2]]
    assert not any(l["skipped"] for l in ref)
    # Every step after the first diverges: more than --max-consecutive-skips in a row is an error.
    out2 = f"{tmp}/out2"
    p = fails(base_args(tmp, out2, steps=8, extra=["--lr", "1e30", "--grad-clip", "0", "--on-nonfinite", "skip",
                                                   "--max-consecutive-skips", "2"]),
              "3 steps in a row skipped", "--max-consecutive-skips 2", "nothing saved")
    no_model(out2)
    skipped = [l["skipped"] for l in train_lines(out2 + ".jsonl")]
    assert skipped.count(True) == 2 and skipped[-2:] == [True, True], skipped


def t_save_atomic(tmp):
    """The final model appears in --out by one rename of <out>.partial; a failed save leaves no model in --out
    and no staging folder; a staging folder left by a killed run is named, with what to do."""
    setup(tmp)
    ok = f"{tmp}/ok"
    run(base_args(tmp, ok, steps=1))
    assert {"config.json", "model.safetensors", "shardtune_tokenizer.json"} <= set(os.listdir(ok)), os.listdir(ok)
    assert not os.path.exists(ok + ".partial") and not any(n.startswith(".") for n in os.listdir(ok))
    # --out given with a trailing slash: the staging folder is still its sibling
    slash = f"{tmp}/slash/"
    run(base_args(tmp, slash, steps=1))
    assert os.path.exists(f"{tmp}/slash/model.safetensors") and not os.path.exists(f"{tmp}/slash.partial")
    # A save that fails half-way (after the weights, before the rest): nothing in --out looks complete.
    bad = f"{tmp}/bad"
    fails(base_args(tmp, bad, steps=1), "injected failure while saving", env=dict(os.environ, SHARDTUNE_TEST_FAIL="0:save"))
    no_model(bad)
    # The same under mpirun: rank 0 saves, the job ends non-zero.
    bad2 = f"{tmp}/bad2"
    fails([*MPI, "2", "-x", "SHARDTUNE_TEST_FAIL", *base_args(tmp, bad2, steps=1)], "injected failure while saving",
          env=dict(os.environ, SHARDTUNE_TEST_FAIL="0:save"))
    no_model(bad2)
    # A leftover staging folder (a run killed while saving) is named in the next run's error.
    left = f"{tmp}/left"
    os.makedirs(left + ".partial")
    open(left + ".partial/model.safetensors", "w").write("half")
    p = fails(base_args(tmp, left, steps=1), f"{left}.partial", "did not finish", f"rm -r '{left}.partial'")
    assert not os.path.exists(left) or not os.listdir(left)
    assert open(left + ".partial/model.safetensors").read() == "half"  # never touched


def t_start_checks(tmp):
    """Found by probing as a user: --threads 100000 hung (minutes, GBs spent starting threads); now refused by
    name; --metrics truncated any existing file. Runs that are valid but not what the user asked for say so at start: --seq-len beyond the model's
    max_position_embeddings (256 here), evaluation asked for on an empty validation split."""
    setup(tmp)
    out = f"{tmp}/thr"
    fails(base_args(tmp, out, steps=1, extra=["--threads", "100000"]), "--threads 100000 is more than the", "HINT")
    no_model(out)
    fails(base_args(tmp, out, extra=["--steps", "-1"]), "--steps and --epochs must not be negative", "HINT")
    fails(base_args(tmp, out, extra=["--micro-batch", "0"]), "must be positive (got 8 and 0)", "HINT")
    p = run(base_args(tmp, f"{tmp}/long", steps=1, extra=["--seq-len", "1024"]))
    assert "--seq-len 1024 is longer than the model's max_position_embeddings 256" in p.stderr, p.stderr[-2000:]
    p = run(base_args(tmp, f"{tmp}/short", steps=1))
    assert "max_position_embeddings" not in p.stderr and "validation split" not in p.stderr, p.stderr[-2000:]
    run([PREP, "--input", f"{tmp}/task.jsonl", "--output", f"{tmp}/noval", "--tokenizer", "byte", "--template", "plain",
         "--val-fraction", "0", "--max-seq-len", "128", "--quiet"])
    p = run(base_args(tmp, f"{tmp}/ev", steps=1, extra=["--data", f"{tmp}/noval", "--eval-every", "1",
                                                        "--eval-batches", "2"]))
    assert "the validation split of" in p.stderr and "is empty: no evaluation will run" in p.stderr, p.stderr[-2000:]
    # --metrics naming a file that is not a metrics file: refused, the file untouched (it was truncated);
    # an earlier run's metrics file is rewritten as before.
    mine = f"{tmp}/mine.jsonl"
    open(mine, "w").write('{"my": "data"}\n')
    fails(base_args(tmp, f"{tmp}/m1", steps=1, extra=["--metrics", mine]), "is not a shardtune metrics file", "HINT")
    assert open(mine).read() == '{"my": "data"}\n'
    no_model(f"{tmp}/m1")
    run(base_args(tmp, f"{tmp}/m2", steps=2, extra=["--metrics", f"{tmp}/short.jsonl"]))
    run(base_args(tmp, f"{tmp}/m3", steps=1, extra=["--metrics", f"{tmp}/short.jsonl"]))
    assert len(train_lines(f"{tmp}/short.jsonl")) == 1  # rewritten, not appended


def start_and_signal(cmd, metrics, sig):
    """Starts cmd, sends sig once the first metrics line is written; returns (returncode, stderr)."""
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and p.poll() is None:
        if os.path.exists(metrics) and open(metrics).read().count('"train"') >= 1:
            break
        time.sleep(0.2)
    assert p.poll() is None, p.communicate()
    p.send_signal(sig)
    try:
        _, stderr = p.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        p.kill()
        raise AssertionError(f"{cmd[0]} did not end within 60 s of signal {sig}")
    print(stderr[-2000:])
    return p.returncode, stderr


def t_sigterm(tmp):
    """SIGTERM to mpirun (forwarded to the ranks): every rank says what happened and at which step, the job
    exits non-zero and no final model appears (mpirun kills the ranks soon after forwarding SIGTERM, so the
    stop checkpoint may or may not be complete: SIGUSR1 is the signal for mpirun jobs, see checkpoint_test.py).
    A single process stops after the step, writes a checkpoint and exits 75."""
    setup(tmp)
    for ranks in (2, 1):
        out = f"{tmp}/out{ranks}"
        cmd = ([*MPI, str(ranks)] if ranks > 1 else []) + base_args(tmp, out, steps=100000)
        rc, stderr = start_and_signal(cmd, out + ".jsonl", signal.SIGTERM)
        assert rc != 0, rc
        if ranks == 1:
            assert rc == 75, rc
            latest = open(f"{out}/checkpoints/latest").read().strip()
            assert os.path.exists(f"{out}/checkpoints/{latest}/manifest.json"), os.listdir(f"{out}/checkpoints")
        # Every rank writes its line at once, but mpirun kills them about a second later: a rank's line that
        # mpirun has not forwarded by then may be lost, so one rank's line is what can be asserted.
        tags = [f"shardtune [rank {r}]: " for r in range(ranks)] if ranks > 1 else ["shardtune: "]
        assert any(t + "received SIGTERM at step " in stderr for t in tags), stderr[-3000:]
        assert "of 100000; stopping; saving a checkpoint after this step, then exiting with 75" in stderr, stderr[-3000:]
        no_model(out)



def t_out_guarded(tmp):
    """--out inside --data is refused; a second job given the --out of a running one fails at start (the
    first holds a lock on it) instead of losing its work at the final save; the first job is unharmed."""
    setup(tmp)
    fails(base_args(tmp, f"{tmp}/data/model-out"), "is inside --data", "HINT")
    assert not os.path.exists(f"{tmp}/data/model-out")
    out = f"{tmp}/out"
    first = subprocess.Popen(base_args(tmp, out, steps=100000), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and first.poll() is None and not (
                os.path.exists(out + ".jsonl") and '"train"' in open(out + ".jsonl").read()):
            time.sleep(0.2)
        assert first.poll() is None, first.communicate()
        fails(base_args(tmp, out, extra=("--metrics", f"{tmp}/second.jsonl")), "another running job is using the --out folder",
              "HINT")
        assert first.poll() is None, "the first job ended"
        assert not os.path.exists(f"{tmp}/second.jsonl")
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=60)
    # Once the first job has ended (its stop signal wrote a checkpoint), its lock is gone: the same command
    # resumes it, here for one more step.
    latest = int(open(f"{out}/checkpoints/latest").read().strip()[len("step-"):])
    p = run(base_args(tmp, out, steps=latest + 1))
    assert "resuming from" in p.stdout and os.path.exists(f"{out}/model.safetensors"), p.stdout[-1500:]


if __name__ == "__main__":
    sys.exit(run_case(globals(), "st-faults"))
