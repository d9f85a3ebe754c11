#!/usr/bin/python3
"""The Slurm lifecycle with a real single-node Slurm on localhost (tests/slurm/local_slurm.py): jobs are
submitted from the templates in slurm/ unchanged (sbatch's command line overrides their #SBATCH lines, the
environment names the model, data and output), hit their time-limit signal (--signal=B:USR1@...),
checkpoint, requeue themselves and run again. Usage: slurm_test.py CASE.

  templates        every slurm/*.sbatch parses, carries the same requeue block and the lifecycle options
  requeue_fake     the batch scripts' own logic with a stand-in trainer (tests/slurm/fake_trainer.sh): the
                   srun and the mpirun template, time-limit signal -> exit 75 -> requeue -> rerun -> done;
                   scancel (SIGTERM) -> exit 75 -> NOT requeued
  requeue_trainer  shardtune itself, 2 ranks: the time-limit signal comes mid-training, the job checkpoints,
                   requeues, resumes with --resume auto and ends; every step's loss and the final weights are
                   bit for bit those of the same command run uninterrupted under mpirun (fp32, --threads 1)

A requeued job starts again by Slurm's own rule, after the credential lifetime (set to 10 s in the local
Slurm; 120 s by default). The signal comes at the controller's periodic time-limit check (every 30 s from
its start): the first one ~25-30 s into a job submitted right after the start, later ones ~15-20 s into
each requeued run; the trainer run is sized (~50 s of steps) so it comes mid-training at least once. No timing asserts."""
import glob
import os
import re
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.environ.get("ST_SOURCE", os.path.dirname(os.path.dirname(HERE)))
SLURM_DIR = os.path.join(SRC, "slurm")
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, HERE)
from harness import Skip, run, run_case  # noqa: E402
from local_slurm import LocalSlurm  # noqa: E402

TEMPLATES = sorted(glob.glob(os.path.join(SLURM_DIR, "*.sbatch")))
SRUN_TEMPLATES = ("cpu-single-node.sbatch", "cpu-multi-node.sbatch", "gpu.sbatch")
BLOCK_RE = re.compile(r"^# >>> shardtune requeue block.*?^# <<< end of the shardtune requeue block[^\n]*\n", re.S | re.M)
FAKE = os.path.join(HERE, "fake_trainer.sh")
# mpirun refuses root without these (CI runs as root); the srun path needs nothing.
MPI_ROOT_ENV = {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}


def template(name):
    return os.path.join(SLURM_DIR, name)


def t_templates(tmp):
    names = [os.path.basename(t) for t in TEMPLATES]
    assert set(names) >= {"cpu-single-node.sbatch", "cpu-multi-node.sbatch", "gpu.sbatch", "cpu-mpirun.sbatch"}, names
    blocks = {}
    for path in TEMPLATES:
        name = os.path.basename(path)
        text = open(path).read()
        run(["bash", "-n", path])
        m = BLOCK_RE.search(text)
        assert m, f"{name}: no shardtune requeue block"
        blocks[name] = m.group(0)
        directives = re.findall(r"^#SBATCH\s+(\S+)", text, re.M)
        assert any(re.fullmatch(r"--signal=B:USR1@\d+", d) for d in directives), (name, directives)
        assert "--requeue" in directives and "--open-mode=append" in directives, (name, directives)
        launch = text[m.end():]
        assert launch.count("st_run ") == 1 and "--resume auto" in launch, f"{name}: launch line"
        assert '--threads "$THREADS"' in launch and "THREADS=${SLURM_CPUS_PER_TASK:-1}" in text, name
        # The BLAS core is shardtune's choice: a template never sets it (comments may say so).
        code = "\n".join(l for l in text.splitlines() if not l.lstrip().startswith("#"))
        assert "OPENBLAS_CORETYPE" not in code, f"{name} sets OPENBLAS_CORETYPE"
        if name in SRUN_TEMPLATES:
            assert "srun --mpi=pmix --kill-on-bad-exit=0" in launch, f"{name}: srun line"
        else:
            assert "st_run mpirun" in launch, f"{name}: mpirun line"
    assert "--ntasks-per-socket=1" in open(template("cpu-multi-node.sbatch")).read()
    ref = blocks["cpu-single-node.sbatch"]
    for name, b in blocks.items():
        assert b == ref, f"{name}: the requeue block differs from cpu-single-node.sbatch's (copy it over)"


def job_log(path):
    return open(path, errors="replace").read() if os.path.exists(path) else "(no job log)"


def t_requeue_fake(tmp):
    """Three jobs at once (the fake trainer uses no CPU; the node advertises 6): the srun and the mpirun
    template each get the time-limit SIGUSR1, exit 75 on both ranks, requeue, and finish on the rerun;
    a third job is cancelled with scancel: its ranks exit 75 on SIGTERM and the script does not requeue."""
    with LocalSlurm(tmp, cpus=6) as slurm:
        jobs = {}
        for name in ("cpu-single-node.sbatch", "cpu-mpirun.sbatch", "cancelled"):
            d = f"{tmp}/{name.split('.')[0]}"
            env = dict(SHARDTUNE=FAKE, MODEL=f"{d}/model", DATA=f"{d}/data", OUT=f"{d}/out", SHARDTUNE_ARGS="--steps 7",
                       **MPI_ROOT_ENV)
            tpl = template("cpu-single-node.sbatch" if name == "cancelled" else name)
            # --time=1 with the warning 50 s ahead: it comes at the controller's first time-limit check.
            opts = ["--time=1", "--signal=B:USR1@50"] if name != "cancelled" else ["--time=10"]
            jobs[name] = (slurm.sbatch([*opts, "--nodes=1", "--ntasks-per-node=2", "--cpus-per-task=1",
                                        f"--output={d}.log", f"--chdir={tmp}", tpl], env=env), d)
        # The cancelled job: once both ranks run (their log says "start"), scancel sends SIGTERM.
        job, d = jobs["cancelled"]
        slurm.wait_for(lambda: all(os.path.exists(f"{d}/out/rank{r}.log") for r in (0, 1)), 60, "ranks started")
        slurm.cmd(["scancel", job])
        for name, (job, d) in jobs.items():
            j = slurm.wait_job(job, 200)
            log = job_log(f"{d}.log")
            ranks = [open(f"{d}/out/rank{r}.log").read().split() for r in (0, 1)]
            what = f"{name}: job {j}\nlog:\n{log}\nranks: {ranks}"
            args = open(f"{d}/out/args0.txt").read().split("\n")
            assert "--resume" in args and args[args.index("--resume") + 1] == "auto", what
            assert args[args.index("--threads") + 1] == "1", what
            if name == "cancelled":
                assert j["JobState"] == "CANCELLED" and j["Restarts"] == "0", what
                assert all(r == ["start", "term"] for r in ranks), what
                assert "launcher exited with 75" in log and "NOT requeued" in log, what
                continue
            assert j["JobState"] == "COMPLETED" and j["Restarts"] == "1" and j["ExitCode"] == "0:0", what
            assert all(r == ["start", "usr1", "start", "done"] for r in ranks), what
            for s in ("SIGUSR1 (time limit near)", "launcher exited with 75", f"requeueing job {job}",
                      "(restart 1)", "launcher exited with 0"):
                assert s in log, f"{s!r} not in the log: {what}"


def trainer_has_checkpoints(train):
    p = subprocess.run([train, "--help"], capture_output=True, text=True)
    return all(o in p.stdout for o in ("--save-every", "--resume", "--keep-last"))


def t_requeue_trainer(tmp):
    sys.path.insert(0, os.path.join(SRC, "tests", "train"))
    import numpy as np
    import train_test as tt

    if not trainer_has_checkpoints(tt.TRAIN):
        raise Skip(f"{tt.TRAIN} has no --save-every/--resume/--keep-last (checkpoints not built in)")
    model = tt.make_model(f"{tmp}/model")
    data = tt.make_data(tmp, 600)
    # Sized so the signal (~25-30 s into the job) comes mid-training: a short calibration run measures the
    # step time here, and the run is made ~50 s long (~800 steps of 32 samples on a 2-core CI machine).
    common = ["--global-batch", "32", "--micro-batch", "4", "--seq-len", "128", "--lr", "2e-3", "--warmup-steps", "20",
              "--weight-decay", "0.1", "--grad-clip", "0.5", "--seed", "7", "--precision", "fp32"]
    run([*tt.MPI, "2", tt.TRAIN, "--model", model, "--data", data, "--out", f"{tmp}/calib", "--threads", "1",
         "--metrics", f"{tmp}/calib.jsonl", "--steps", "30", "--resume", "none", *common])
    step_s = sorted(l["step_s"] + l["data_wait_s"] for l in tt.train_lines(f"{tmp}/calib.jsonl"))[15]
    steps = int(min(4000, max(400, 50 / step_s)))
    args = ["--steps", str(steps), *common]
    save = ["--save-every", "50", "--keep-last", "2", "--resume", "auto"]

    # The reference: the same command, uninterrupted, outside Slurm.
    ref_out, ref_metrics = f"{tmp}/ref", f"{tmp}/ref.jsonl"
    run([*tt.MPI, "2", tt.TRAIN, "--model", model, "--data", data, "--out", ref_out, "--threads", "1",
         "--metrics", ref_metrics, *save, *args], timeout=600)
    ref = {l["step"]: l["loss"] for l in tt.train_lines(ref_metrics)}
    assert sorted(ref) == list(range(1, steps + 1)), sorted(ref)[:5]

    out, metrics, log = f"{tmp}/slurm-out", f"{tmp}/slurm.jsonl", f"{tmp}/job.log"
    env = dict(SHARDTUNE=tt.TRAIN, MODEL=model, DATA=data, OUT=out, METRICS=metrics, SAVE_EVERY="50", KEEP_LAST="2",
               SHARDTUNE_ARGS=" ".join(args))
    with LocalSlurm(tmp, cpus=os.cpu_count()) as slurm:
        job = slurm.sbatch(["--time=1", "--signal=B:USR1@50", "--nodes=1", "--ntasks-per-node=2", "--cpus-per-task=1",
                            f"--output={log}", f"--chdir={tmp}", template("cpu-single-node.sbatch")], env=env)
        j = slurm.wait_job(job, 420)
        text = job_log(log)
        what = f"job {j}\nlog (tail):\n{text[-6000:]}"
        assert j["JobState"] == "COMPLETED" and j["ExitCode"] == "0:0", what
        assert int(j["Restarts"]) >= 1, what
        assert "launcher exited with 75" in text and f"requeueing job {job}" in text, what

        # Every train line, the first run's and each resumed run's, has the reference's loss at its step, bit
        # for bit; together they cover every step.
        got = tt.train_lines(metrics)
        seen = set()
        for l in got:
            assert l["loss"] == ref[l["step"]], f"step {l['step']}: loss {l['loss']!r} vs uninterrupted {ref[l['step']]!r}"
            seen.add(l["step"])
        assert seen == set(ref), f"steps missing from the Slurm run: {sorted(set(ref) - seen)[:10]}"
        A, B = tt.read_safetensors(f"{out}/model.safetensors"), tt.read_safetensors(f"{ref_out}/model.safetensors")
        assert A.keys() == B.keys(), (A.keys(), B.keys())
        for k in A:
            assert np.array_equal(A[k], B[k]), f"final weights differ in {k}: max |diff| {np.abs(A[k] - B[k]).max()}"
        stops = re.findall(r"stopped after step \d+ of \d+", text)
        print(f"requeue_trainer: {steps} steps ({step_s * 1000:.0f} ms a step measured), {j['Restarts']} restart(s) "
              f"({'; '.join(stops)}), {len(got)} train lines, every loss and the final weights equal")


if __name__ == "__main__":
    sys.exit(run_case(globals(), "slurm"))
