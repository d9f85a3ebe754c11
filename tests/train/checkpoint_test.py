#!/usr/bin/python3
"""Checkpoint and resume tests with real processes and real mpirun. References: the uninterrupted run of the
same command (exact resume: every later loss and the final weights bit for bit; elastic resume on another
number of ranks: losses to 1e-5). Faults: a stop signal (exit 75, then --resume auto), a failing save (the
previous checkpoint intact), corrupt and truncated checkpoints skipped by --resume auto, options that would
change the run refused. Usage: checkpoint_test.py CASE."""
import json
import os
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_test import FP32, MPI, TRAIN, make_data, make_model, train_lines  # noqa: E402
from harness import run, run_case  # noqa: E402

BASE = ["--global-batch", "12", "--micro-batch", "1", "--seq-len", "128", "--lr", "2e-3", "--warmup-steps", "2",
        "--weight-decay", "0.1", "--eval-batches", "0", *FP32]


class Run:
    def __init__(self, tmp):
        self.tmp = tmp
        self.model = make_model(f"{tmp}/model")
        self.data = make_data(tmp)

    def cmd(self, ranks, out, steps, extra=()):
        return ([*MPI, str(ranks)] if ranks > 1 else []) + [
            TRAIN, "--model", self.model, "--data", self.data, "--out", out, "--steps", str(steps),
            "--metrics", f"{out}.jsonl", *BASE, *extra]

    def train(self, ranks, out, steps, extra=(), ok=True, env=None):
        e = dict(os.environ, **(env or {}))
        return run(self.cmd(ranks, out, steps, extra), ok=ok, env=e)


def losses(out):
    """step -> loss of a --metrics file; a resumed run's redone steps replace the earlier ones."""
    return {l["step"]: l["loss"] for l in train_lines(f"{out}.jsonl")}


def same_files(a, b, names):
    for n in names:
        with open(f"{a}/{n}", "rb") as x, open(f"{b}/{n}", "rb") as y:
            assert x.read() == y.read(), f"{n} differs between {a} and {b}"


def t_ckpt_exact(tmp):
    """Stop at a step (an injected failure), resume on the same ranks: later losses and the final weights
    bit for bit the uninterrupted run's; ZeRO-2 full fine-tuning and LoRA with dropout (its RNG restored)."""
    r = Run(tmp)
    for name, extra, files in (("full", ["--zero", "2"], ["model.safetensors"]),
                               ("lora", ["--method", "lora", "--lora-dropout", "0.1", "--lora-targets", "all-linear"],
                                ["adapter_model.safetensors"])):
        ref = f"{tmp}/{name}-ref"
        r.train(2, ref, 10, extra)
        out = f"{tmp}/{name}"
        p = r.train(2, out, 10, [*extra, "--save-every", "3", "--keep-last", "2"], ok=False,
                    env={"SHARDTUNE_TEST_FAIL": "1:7"})
        assert p.returncode != 0 and sorted(os.listdir(f"{out}/checkpoints")) == ["latest", "step-00000003",
                                                                                 "step-00000006"], p.stderr[-2000:]
        assert open(f"{out}/checkpoints/latest").read().strip() == "step-00000006"
        p = r.train(2, out, 10, [*extra, "--save-every", "3", "--keep-last", "2"])
        assert "resuming from" in p.stdout and "step-00000006" in p.stdout, p.stdout[-2000:]
        a, b = losses(out), losses(ref)
        assert all(a[k] == b[k] for k in range(7, 11)), (a, b)
        same_files(out, ref, files)
        # --keep-last 2: the two newest remain.
        assert sorted(os.listdir(f"{out}/checkpoints")) == ["latest", "step-00000006", "step-00000009"], \
            os.listdir(f"{out}/checkpoints")


def t_ckpt_async(tmp):
    """--async-save: the same checkpoints and bit-identical resume; a crash while a background save is still
    being written leaves the previous checkpoint as latest, and the resumed run still ends bit-identical."""
    r = Run(tmp)
    ref = f"{tmp}/ref"
    r.train(2, ref, 10, ["--zero", "1"])
    out = f"{tmp}/async"
    opts = ["--zero", "1", "--save-every", "3", "--async-save"]
    p = r.train(2, out, 10, opts, ok=False, env={"SHARDTUNE_TEST_FAIL": "0:8"})
    assert "being written in the background" in p.stdout, p.stdout[-1500:]
    assert open(f"{out}/checkpoints/latest").read().strip() == "step-00000006", os.listdir(f"{out}/checkpoints")
    r.train(2, out, 10, opts)
    got, want = losses(out), losses(ref)
    assert all(got[k] == want[k] for k in range(7, 11)), (got, want)
    same_files(out, ref, ["model.safetensors"])
    # The crash comes at the step right after a save was started: that save was never committed.
    out = f"{tmp}/crash"
    r.train(2, out, 10, opts, ok=False, env={"SHARDTUNE_TEST_FAIL": "1:6"})
    ck = sorted(os.listdir(f"{out}/checkpoints"))
    assert open(f"{out}/checkpoints/latest").read().strip() == "step-00000003" and "step-00000006" not in ck, ck
    p = r.train(2, out, 10, opts)
    assert "step-00000003" in p.stdout and "interrupted" in p.stderr + p.stdout, (p.stdout[-1500:], p.stderr[-800:])
    got = losses(out)
    assert all(got[k] == want[k] for k in range(4, 11)), (got, want)
    same_files(out, ref, ["model.safetensors"])


def t_ckpt_elastic(tmp):
    """A checkpoint written by 2 ranks (ZeRO-1) resumes on 4, 3 and 1 rank(s) (ZeRO-2, 1, 0) with no
    conversion: every later loss within 1e-5 of the uninterrupted run; LoRA too."""
    r = Run(tmp)
    ref = f"{tmp}/ref"
    r.train(2, ref, 8, ["--zero", "1"])
    src = f"{tmp}/src"
    r.train(2, src, 8, ["--zero", "1", "--save-every", "4"], ok=False, env={"SHARDTUNE_TEST_FAIL": "0:5"})
    want = losses(ref)
    for ranks, zero in ((4, 2), (3, 1), (1, 0)):
        out = f"{tmp}/on{ranks}"
        p = r.train(ranks, out, 8, ["--zero", str(zero), "--resume", f"{src}/checkpoints/step-00000004"])
        assert "written by 2 rank(s)" in p.stdout, p.stdout[-1500:]
        got = losses(out)
        assert sorted(got) == [5, 6, 7, 8], got
        for k in got:
            assert abs(got[k] - want[k]) <= 1e-5 * abs(want[k]), (ranks, k, got[k], want[k])
    # 4 -> 1 as well.
    src4 = f"{tmp}/src4"
    r.train(4, src4, 8, ["--zero", "2", "--save-every", "4"], ok=False, env={"SHARDTUNE_TEST_FAIL": "0:5"})
    r.train(1, f"{tmp}/from4", 8, ["--resume", f"{src4}/checkpoints/step-00000004"])
    got = losses(f"{tmp}/from4")
    for k in got:
        assert abs(got[k] - want[k]) <= 1e-5 * abs(want[k]), ("4 -> 1", k, got[k], want[k])
    lref, lsrc = f"{tmp}/lref", f"{tmp}/lsrc"
    lora = ["--method", "lora", "--lora-targets", "all-linear", "--zero", "2"]
    r.train(2, lref, 8, lora)
    r.train(2, lsrc, 8, [*lora, "--save-every", "4"], ok=False, env={"SHARDTUNE_TEST_FAIL": "0:5"})
    r.train(1, f"{tmp}/lone", 8, [*lora, "--resume", f"{lsrc}/checkpoints/step-00000004"])
    got, want = losses(f"{tmp}/lone"), losses(lref)
    for k in got:
        assert abs(got[k] - want[k]) <= 1e-5 * abs(want[k]), ("lora", k, got[k], want[k])


def wait_for_step(metrics, step, proc, limit=120):
    t0 = time.time()
    while time.time() - t0 < limit:
        if proc.poll() is not None:
            raise AssertionError(f"the run ended (rc {proc.returncode}) before step {step}")
        try:
            if any(json.loads(l).get("step", 0) >= step for l in open(metrics) if '"train"' in l):
                return
        except (FileNotFoundError, json.JSONDecodeError):
            pass
        time.sleep(0.05)
    raise AssertionError(f"no step {step} within {limit} s")


def t_ckpt_signal(tmp):
    """SIGUSR1 to mpirun (forwarded to every rank) and SIGTERM to a single process: every rank stops at the
    same step boundary, writes a checkpoint, exits 75; rerunning the same command finishes the run with the
    uninterrupted run's losses and weights, bit for bit."""
    r = Run(tmp)
    steps = 150
    ref = f"{tmp}/ref"
    r.train(2, ref, steps)
    for ranks, sig in ((2, signal.SIGUSR1), (1, signal.SIGTERM)):
        out = f"{tmp}/sig{ranks}"
        if ranks == 1:
            r.train(1, f"{out}-ref", steps)
        proc = subprocess.Popen(r.cmd(ranks, out, steps), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_for_step(f"{out}.jsonl", 3, proc)
        proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 75, (proc.returncode, stdout[-1500:], stderr[-1500:])
        assert "exit code 75" in stdout and "checkpoint saved" in stdout, stdout[-1500:]
        stopped = max(losses(out))
        assert stopped < steps, f"the run was not stopped early (step {stopped})"
        assert os.path.exists(f"{out}/checkpoints/step-{stopped:08d}/manifest.json")
        r.train(ranks, out, steps)
        want = losses(ref if ranks == 2 else f"{out}-ref")
        got = losses(out)
        assert all(got[k] == want[k] for k in range(1, steps + 1)), "losses differ from the uninterrupted run"
        same_files(out, ref if ranks == 2 else f"{out}-ref", ["model.safetensors"])


def t_ckpt_fallback(tmp):
    """--resume auto passes over a checkpoint that is corrupt, truncated or unfinished (a warning names the
    file), resumes from the one before and ends as the uninterrupted run; options that would change the run
    are refused with the differences listed; a failing save leaves the previous checkpoint intact."""
    r = Run(tmp)
    ref = f"{tmp}/ref"
    r.train(2, ref, 9)
    want = losses(ref)
    for damage, message in (("flip", "does not match its sha256"), ("truncate", "truncated"),
                            ("manifest", "no manifest.json")):
        out = f"{tmp}/{damage}"
        r.train(2, out, 9, ["--save-every", "3"], ok=False, env={"SHARDTUNE_TEST_FAIL": "0:7"})
        newest = f"{out}/checkpoints/step-00000006"
        if damage == "flip":
            with open(f"{newest}/optimizer-rank00001.safetensors", "r+b") as f:
                f.seek(-3, 2)
                b = f.read(1)
                f.seek(-3, 2)
                f.write(bytes([b[0] ^ 0x10]))
        elif damage == "truncate":
            # 2 ranks: the weights are HF shards, one per rank (model-00001-of-00002.safetensors, ...).
            assert not os.path.exists(f"{newest}/model.safetensors"), os.listdir(newest)
            p = f"{newest}/model-00001-of-00002.safetensors"
            os.truncate(p, os.path.getsize(p) - 100)
        else:
            os.remove(f"{newest}/manifest.json")
        p = r.train(2, out, 9, ["--save-every", "3"])
        assert message in p.stderr + p.stdout and "step-00000006" in p.stderr + p.stdout, (damage, p.stderr[-1500:])
        assert "resuming from" in p.stdout and "step-00000003" in p.stdout, p.stdout[-1500:]
        got = losses(out)
        assert all(got[k] == want[k] for k in range(4, 10)), (damage, got, want)
        same_files(out, ref, ["model.safetensors"])
    # A run that would differ from the checkpointed one is refused, naming what changed; --out untouched.
    out = f"{tmp}/change"
    r.train(2, out, 9, ["--save-every", "3"], ok=False, env={"SHARDTUNE_TEST_FAIL": "0:4"})
    bad = [x if x != "12" else "24" for x in BASE]
    p = run([*MPI, "2", TRAIN, "--model", r.model, "--data", r.data, "--out", out, "--steps", "9", *bad], ok=False)
    assert p.returncode != 0 and "global-batch: 12 in the checkpoint, 24 now" in p.stderr, p.stderr[-1500:]
    assert sorted(os.listdir(out)) == ["checkpoints"], os.listdir(out)
    lower = [x if x != "2e-3" else "1e-3" for x in BASE]
    p = run([*MPI, "2", TRAIN, "--model", r.model, "--data", r.data, "--out", out, "--steps", "12", "--save-every", "3",
             *lower])
    assert "changed since" in p.stdout and "lr: 0.002 in the checkpoint, 0.001 now" in p.stdout, p.stdout[-1500:]
    # Every checkpoint damaged: an error, not a silent fresh start.
    out = f"{tmp}/alldead"
    r.train(1, out, 4, ["--save-every", "2"], ok=False, env={"SHARDTUNE_TEST_FAIL": "0:3"})
    os.remove(f"{out}/checkpoints/step-00000002/manifest.json")
    p = r.train(1, out, 4, ok=False)
    assert p.returncode != 0 and "no checkpoint in" in p.stderr, p.stderr[-1500:]
    # A save that fails on one rank: the error names it and the previous checkpoint; that one still resumes.
    out = f"{tmp}/savefail"
    p = r.train(2, out, 9, ["--save-every", "3"], ok=False, env={"SHARDTUNE_TEST_FAIL": "1:ckpt6"})
    assert p.returncode != 0 and "checkpoint at step 6 failed: rank 1" in p.stderr, p.stderr[-1500:]
    assert "step-00000003" in p.stderr and "is intact" in p.stderr, p.stderr[-1500:]
    assert sorted(os.listdir(f"{out}/checkpoints")) == ["latest", "step-00000003"], os.listdir(f"{out}/checkpoints")
    r.train(2, out, 9, ["--save-every", "3"])
    got = losses(out)
    assert all(got[k] == want[k] for k in range(4, 10)), (got, want)


def t_ckpt_job_end(tmp):
    """SLURM_JOB_END_TIME close ahead and no scheduled save before it: the run saves on its own, once."""
    r = Run(tmp)
    out = f"{tmp}/end"
    env = {"SLURM_JOB_END_TIME": str(int(time.time()) + 20)}
    p = r.train(1, out, 6, ["--save-every", "1000"], env=env)
    assert "the Slurm allocation ends in" in p.stdout and "before the next scheduled checkpoint" in p.stdout, \
        p.stdout[-1500:]
    steps = [d for d in os.listdir(f"{out}/checkpoints") if d.startswith("step-")]
    assert len(steps) == 1 and p.stdout.count("the Slurm allocation ends in") == 1, (steps, p.stdout[-1500:])


def t_collective_timeout(tmp):
    """A rank that hangs (SIGSTOP) mid-training: the other ends the job within the --collective-timeout,
    naming itself and the operation, with exit 124 instead of waiting until the allocation ends."""
    r = Run(tmp)
    out = f"{tmp}/hang"
    proc = subprocess.Popen(r.cmd(2, out, 400, ["--collective-timeout", "3"]), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    wait_for_step(f"{out}.jsonl", 2, proc)
    ranks = subprocess.run(["pgrep", "-f", "--", f"^{TRAIN} --model .* --out {out} "], capture_output=True,
                           text=True).stdout.split()
    assert len(ranks) == 2, ranks
    victim = int(ranks[-1])
    os.kill(victim, signal.SIGSTOP)
    t0 = time.time()
    try:
        stdout, stderr = proc.communicate(timeout=90)
    finally:
        try:
            os.kill(victim, signal.SIGKILL)
        except ProcessLookupError:
            pass
    waited = time.time() - t0
    assert proc.returncode == 124, (proc.returncode, stderr[-1500:])
    assert "has not completed after" in stderr and "--collective-timeout" in stderr and "[rank " in stderr, stderr[-1500:]
    assert waited < 60, f"the job took {waited:.0f} s to end"


if __name__ == "__main__":
    sys.exit(run_case(globals(), "st-ckpt"))
