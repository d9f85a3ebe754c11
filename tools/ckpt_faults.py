#!/usr/bin/python3
"""Checkpoint fault trials (issue 10): real 2-rank runs of a tiny random Llama (tests/train/train_test.py's
model and data), hurt in the ways a cluster hurts them, then resumed with --resume auto:

  kill-train    SIGKILL of one rank (random rank, random step) while it trains
  kill-save     SIGKILL of one rank while a checkpoint is being written (.tmp-step-* exists)
  truncate      a file of the newest checkpoint cut short before the resume
  bitflip       one bit of a file of the newest checkpoint flipped before the resume
  full-disk     --ckpt-dir on a 2 MiB tmpfs (root only): the second save does not fit

After each one it checks, with its own manifest check (sha256 and size of every file, independent of the
trainer's): the resume started from the newest checkpoint that verifies (and said so), no checkpoint whose
save was reported complete was lost or damaged, a damaged one was skipped with a warning naming its file,
and every loss of the resumed run equals the uninterrupted reference run's bit for bit (same world size),
as do the final weights. A full disk must fail with an error saying the previous checkpoint is intact,
and leave it verifying. Prints a summary table; exit status 1 if any trial failed.

Usage: tools/ckpt_faults.py [--trials 24] [--seed 1] [--build build] [--keep DIR]"""
import argparse
import collections
import glob
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 12
MPI = ["mpirun", "--allow-run-as-root", "--oversubscribe", "-np", "2"]


def setup_imports(build):
    os.environ.setdefault("ST_BIN", os.path.abspath(build))
    os.environ.setdefault("ST_SOURCE", ROOT)
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    sys.path.insert(0, os.path.join(ROOT, "tests", "train"))
    import train_test  # noqa: E402  (make_model, make_data, the trainer's path and fp32 flags)
    return train_test


# ---- an independent checkpoint check (not the trainer's code) ----

def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verifies(ckpt):
    """'' if every file of the manifest has its size and sha256, else why not."""
    try:
        m = json.load(open(os.path.join(ckpt, "manifest.json")))
    except (OSError, ValueError) as e:
        return f"manifest: {e.__class__.__name__}"
    for f in m["files"]:
        p = os.path.join(ckpt, f["name"])
        if not os.path.exists(p):
            return f"{f['name']} missing"
        if os.path.getsize(p) != f["bytes"]:
            return f"{f['name']} size"
        if sha256(p) != f["sha256"]:
            return f"{f['name']} sha256"
    return ""


def checkpoints(ckpt_dir):
    """step -> folder of every step-* folder, and the steps that verify."""
    all_ = {int(os.path.basename(p)[5:]): p for p in glob.glob(os.path.join(ckpt_dir, "step-*"))}
    return all_, sorted(s for s, p in all_.items() if not verifies(p))


def metrics_lines(path, kind):
    if not os.path.exists(path):
        return []
    out = []
    for line in open(path):
        try:
            j = json.loads(line)
        except ValueError:
            continue  # a line cut by the kill
        if j.get("type") == kind:
            out.append(j)
    return out


def raw_weights(path):
    """name -> (dtype, shape, bytes) of a safetensors file: equal maps are equal models, bit for bit."""
    data = open(path, "rb").read()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    body = data[8 + n:]
    return {k: (v["dtype"], v["shape"], body[v["data_offsets"][0]:v["data_offsets"][1]])
            for k, v in header.items() if k != "__metadata__"}


class Trials:
    def __init__(self, tt, tmp, rng):
        self.tt, self.tmp, self.rng = tt, tmp, rng
        self.model = tt.make_model(f"{tmp}/model")
        self.data = tt.make_data(tmp)
        self.n = 0
        self.results = []  # (kind, outcome, ok, detail)

    def args(self, out, metrics, extra=()):
        t = self.tt
        return [*MPI, t.TRAIN, "--model", self.model, "--data", self.data, "--out", out, "--steps", str(STEPS),
                "--global-batch", "8", "--micro-batch", "2", "--seq-len", "128", "--zero", "1", "--lr", "2e-3",
                "--warmup-steps", "2", "--weight-decay", "0.1", "--grad-clip", "0.5", "--metrics", metrics,
                "--bucket-mb", "0.02", *t.FP32, *extra]

    def reference(self):
        out = f"{self.tmp}/reference"
        p = subprocess.run(self.args(out, out + ".jsonl", ["--save-every", "1"]), capture_output=True, text=True)
        assert p.returncode == 0, p.stderr[-3000:]
        self.ref_losses = [l["loss"] for l in metrics_lines(out + ".jsonl", "train")]
        assert len(self.ref_losses) == STEPS
        self.ref_weights = raw_weights(f"{out}/model.safetensors")
        self.ref_save_s = [l["save_s"] for l in metrics_lines(out + ".jsonl", "checkpoint")]

    # ---- the pieces of a trial ----

    def rank_pids(self, out):
        """pid of each rank of the job writing to `out` (its command line names our --out)."""
        pids = {}
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            try:
                cmd = open(f"/proc/{d}/cmdline", "rb").read().split(b"\0")
                if not cmd or os.path.basename(cmd[0]) != b"shardtune" or out.encode() not in cmd:
                    continue
                env = open(f"/proc/{d}/environ", "rb").read().split(b"\0")
            except OSError:
                continue
            for e in env:
                if e.startswith(b"OMPI_COMM_WORLD_RANK="):
                    pids[int(e.split(b"=")[1])] = int(d)
        return pids

    def start(self, out, metrics, extra=(), env=None):
        return subprocess.Popen(self.args(out, metrics, extra), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=env)

    def finish(self, p, timeout=120):
        try:
            so, se = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            so, se = p.communicate()
            return None, se  # a hang
        return p.returncode, se

    def resume_and_check(self, out, ckpt_dir, saved_steps, save_args, extra=(), expect_skipped=None, keep=0):
        """--resume auto; checks it starts from the newest verifying checkpoint, that every save reported
        complete (the newest `keep` of them with --keep-last keep) still verifies, the later losses and the
        final weights equal the reference's."""
        all_, good = checkpoints(ckpt_dir)
        # A save may be committed (and have pruned an older one) before its metrics line was written.
        newest_kept = sorted(set(saved_steps) | set(good))[-keep:] if keep else saved_steps
        kept = [s for s in saved_steps if s in newest_kept]
        lost = [s for s in kept if s not in good]
        if lost:
            return False, f"completed checkpoint(s) {lost} lost or damaged"
        newest = good[-1] if good else 0
        metrics = f"{out}-resume.jsonl"
        p = self.start(out, metrics, ["--resume", "auto", *save_args, *extra])
        rc, se = self.finish(p)
        if rc != 0:
            return False, f"resume failed ({rc}): {se[-600:]}"
        res = metrics_lines(metrics, "resume")
        got_step = res[0]["step"] if res else 0
        if got_step != newest:
            return False, f"resumed from step {got_step}, the newest verifying checkpoint is {newest}"
        if expect_skipped:
            name, fname = expect_skipped
            want = f"skipped checkpoint '{name}': {fname}"
            if want not in se:
                return False, f"no warning naming {fname}: {se[-800:]}"
        losses = [l["loss"] for l in metrics_lines(metrics, "train")]
        if losses != self.ref_losses[newest:]:
            bad = next(i for i, (a, b) in enumerate(zip(losses + [None] * STEPS, self.ref_losses[newest:])) if a != b)
            return False, f"loss at step {newest + bad + 1} differs from the reference"
        if raw_weights(f"{out}/model.safetensors") != self.ref_weights:
            return False, "final weights differ from the reference"
        # The resumed run's own saves replaced what the fault left: every checkpoint kept now verifies.
        bad = {s: verifies(p) for s, p in checkpoints(ckpt_dir)[0].items() if verifies(p)}
        if bad:
            return False, f"after the resumed run, checkpoints {bad} do not verify"
        return True, f"resumed at step {newest}"

    def new_run(self):
        self.n += 1
        out = f"{self.tmp}/t{self.n:02d}"
        return out, f"{out}/checkpoints", f"{out}.jsonl"

    # ---- trial kinds ----

    def kill_train(self):
        out, ck, metrics = self.new_run()
        every, victim = self.rng.choice([1, 2, 3]), self.rng.randrange(2)
        keep = self.rng.choice([0, 2])
        at = self.rng.randrange(1, STEPS - 1)  # after this many steps' metrics lines
        delay = self.rng.uniform(0, 0.05)
        save_args = ["--save-every", str(every), "--keep-last", str(keep)]
        p = self.start(out, metrics, save_args)
        deadline = time.time() + 120
        while p.poll() is None and time.time() < deadline and len(metrics_lines(metrics, "train")) < at:
            time.sleep(0.002)
        time.sleep(delay)
        pids = self.rank_pids(out)
        if p.poll() is not None or victim not in pids:
            p.kill()
            self.finish(p)
            return "kill-train", "not-hit", True, "the run ended before the kill"
        os.kill(pids[victim], signal.SIGKILL)
        t0 = time.time()
        rc, _ = self.finish(p)
        if rc is None:
            return "kill-train", "HANG", False, "mpirun did not end after a rank was killed"
        saved = [l["step"] for l in metrics_lines(metrics, "checkpoint")]
        ok, detail = self.resume_and_check(out, ck, saved, save_args, keep=keep)
        return "kill-train", "resumed" if ok else "FAILED", ok, (
            f"rank {victim} killed after step {at} (+{delay * 1000:.0f} ms), --save-every {every} --keep-last {keep}, job ended "
            f"{time.time() - t0:.1f} s later (rc {rc}); {detail}")

    def kill_save(self):
        out, ck, metrics = self.new_run()
        victim = self.rng.randrange(2)
        target = self.rng.randrange(1, STEPS - 1)  # the save of this step
        keep = self.rng.choice([0, 2])
        save_args = ["--save-every", "1", "--keep-last", str(keep)]
        p = self.start(out, metrics, save_args)
        tmpdir = f"{ck}/.tmp-step-{target:08d}"
        deadline = time.time() + 120
        pids, hit = {}, False
        while p.poll() is None and time.time() < deadline:
            if not pids or len(pids) < 2:
                pids = self.rank_pids(out)
            if os.path.exists(tmpdir):
                hit = True
                break
            if os.path.exists(f"{ck}/step-{target:08d}"):
                break
            time.sleep(0.0005)
        if p.poll() is not None or victim not in pids:
            p.kill()
            self.finish(p)
            return "kill-save", "not-hit", True, "the run ended before the kill"
        os.kill(pids[victim], signal.SIGKILL)
        during = os.path.exists(tmpdir)  # still being written when the rank died
        rc, _ = self.finish(p)
        if rc is None:
            return "kill-save", "HANG", False, "mpirun did not end after a rank was killed during a save"
        saved = [l["step"] for l in metrics_lines(metrics, "checkpoint")]
        _, good = checkpoints(ck)
        ok, detail = self.resume_and_check(out, ck, saved, save_args, keep=keep)
        outcome = ("resumed" if ok else "FAILED") + (" (kill inside the write)" if hit and during else " (kill just after it)")
        return "kill-save", outcome, ok, (f"rank {victim} killed {'during' if hit and during else 'after'} the save of "
                                          f"step {target}, --keep-last {keep}; verifying before resume: {good[-3:]}; {detail}")

    def damage(self, kind):
        """A run stopped by an injected failure at step 7 (--save-every 2: checkpoints 2, 4, 6), then one file
        of the newest checkpoint truncated or bit-flipped: the resume skips it, naming the file."""
        out, ck, metrics = self.new_run()
        save_args = ["--save-every", "2", "--keep-last", "0"]
        p = self.start(out, metrics, save_args, env={**os.environ, "SHARDTUNE_TEST_FAIL": "1:7"})
        rc, se = self.finish(p)
        if rc in (0, None):
            return kind, "FAILED", False, f"the injected failure did not stop the run (rc {rc})"
        newest = f"{ck}/step-00000006"
        files = sorted(f for f in os.listdir(newest) if f != "manifest.json")
        victim = self.rng.choice(files)
        path = f"{newest}/{victim}"
        size = os.path.getsize(path)
        if kind == "truncate":
            os.truncate(path, self.rng.randrange(size))
        else:
            with open(path, "r+b") as f:
                at = self.rng.randrange(size)
                f.seek(at)
                b = f.read(1)[0]
                f.seek(at)
                f.write(bytes([b ^ (1 << self.rng.randrange(8))]))
        # The damaged one must not count as "saved and kept"; 2 and 4 must survive.
        ok, detail = self.resume_and_check(out, ck, [2, 4], save_args, expect_skipped=(newest, victim))
        return kind, "skipped, resumed" if ok else "FAILED", ok, f"{victim} of step 6 damaged; {detail}"

    def full_disk(self):
        out, ck, metrics = self.new_run()
        if os.geteuid() != 0:
            return "full-disk", "skipped", True, "not root: cannot mount a tmpfs"
        os.makedirs(ck)
        m = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", ck], capture_output=True, text=True)
        if m.returncode != 0:
            return "full-disk", "skipped", True, f"mount not allowed: {m.stderr.strip()}"
        try:
            save_args = ["--save-every", "2", "--keep-last", "0", "--ckpt-dir", ck]
            p = self.start(out, metrics, save_args)
            rc, se = self.finish(p)
            if rc in (0, None):
                return "full-disk", "FAILED", False, f"the run did not fail on a full --ckpt-dir (rc {rc})"
            saved = [l["step"] for l in metrics_lines(metrics, "checkpoint")]
            all_, good = checkpoints(ck)
            leftovers = [d for d in os.listdir(ck) if d.startswith(".tmp-")]
            prev = f"step-{saved[-1]:08d}" if saved else "none"
            said = f"the previous checkpoint ({prev} in {ck}) is intact" in se
            if not saved or good != saved or leftovers or not said:
                return "full-disk", "FAILED", False, (f"saved {saved}, verifying {good}, leftovers {leftovers}, "
                                                      f"error names the intact checkpoint: {said}; {se[-800:]}")
            # Space freed (the tmpfs grown): the resume goes on from the intact checkpoint.
            subprocess.run(["mount", "-o", "remount,size=64m", ck], check=True)
            ok, detail = self.resume_and_check(out, ck, saved, save_args)
            said = next(l for l in se.splitlines() if "is intact" in l)
            said = said[said.find("checkpoint at step"):]
            said = said if len(said) < 320 else said[:150] + " … " + said[-150:]
            return "full-disk", "error, intact, resumed" if ok else "FAILED", ok, (
                f"saves {saved} fit, the next failed with the previous one intact (\"{said}\"); {detail}")
        finally:
            subprocess.run(["umount", ck], capture_output=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=24)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--keep", help="keep the trials' folders here instead of a temporary folder")
    a = ap.parse_args()
    tt = setup_imports(a.build)
    rng = random.Random(a.seed)
    tmp = a.keep or tempfile.mkdtemp(prefix="ckpt-faults-")
    os.makedirs(tmp, exist_ok=True)
    t0 = time.time()
    try:
        T = Trials(tt, tmp, rng)
        T.reference()
        # Each kind at least twice, the kills most often; the rest random.
        plan = ["kill-train", "kill-save", "truncate", "bitflip", "full-disk", "kill-train", "kill-save",
                "truncate", "bitflip"]
        while len(plan) < a.trials:
            plan.append(rng.choice(["kill-train", "kill-save", "kill-train", "kill-save", "truncate", "bitflip"]))
        for i, kind in enumerate(plan[:a.trials]):
            fn = {"kill-train": T.kill_train, "kill-save": T.kill_save, "full-disk": T.full_disk,
                  "truncate": lambda: T.damage("truncate"), "bitflip": lambda: T.damage("bitflip")}[kind]
            r = fn()
            T.results.append(r)
            print(f"[{i + 1:2d}/{a.trials}] {r[0]:<10} {'ok  ' if r[2] else 'FAIL'} {r[1]}: {r[3]}", flush=True)
            if not a.keep:
                for d in glob.glob(f"{tmp}/t*"):
                    shutil.rmtree(d, ignore_errors=True) if os.path.isdir(d) else os.remove(d)
    finally:
        if not a.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    rows = collections.Counter((k, o) for k, o, _, _ in T.results)
    failed = sum(not ok for _, _, ok, _ in T.results)
    print(f"\nsummary: {len(T.results)} trials, {failed} failed, 2 ranks, {STEPS} steps each, "
          f"{time.time() - t0:.0f} s (seed {a.seed})\n")
    print(f"| trial | outcome | count |\n|---|---|---|")
    for (k, o), n in sorted(rows.items()):
        print(f"| {k} | {o} | {n} |")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
