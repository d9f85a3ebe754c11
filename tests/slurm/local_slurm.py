"""A real single-node Slurm (Debian 12's slurmctld/slurmd 22.05 + munge) on localhost, for the e2e tests.

Everything lives under one temporary folder: the munge key, socket and log; slurm.conf; the controller's
state and slurmd's spool; the daemons' logs. Ports are picked free at start, so it never meets a system
Slurm or another test's. The daemons run in the foreground as our own children (Popen), so stopping them
ends exactly the processes this harness started, by PID. Use as a context manager:

    with LocalSlurm(tmp) as slurm:
        job = slurm.sbatch(["--time=1", script], env=...)
        slurm.wait_state(job, {"COMPLETED"})

Raises harness.Skip (exit 77) with the reason where Slurm is not installed or will not start here.
Based on ../shared/recipes/slurm-local.sh (known-good settings for this Slurm: pmix, linuxproc, no cgroups).
"""
import getpass
import os
import re
import shutil
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from harness import Skip  # noqa: E402

DAEMONS = {"munged": "/usr/sbin/munged", "slurmctld": "/usr/sbin/slurmctld", "slurmd": "/usr/sbin/slurmd"}
CLIENTS = ("sbatch", "squeue", "scontrol", "scancel", "sinfo", "srun", "munge")
INSTALL_HINT = ("tools/test.sh installs them where it can (root or sudo), or: "
                "apt-get install slurm-wlm slurmctld slurmd slurm-client munge")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _job_fields(text):
    """`scontrol show job -o` output: one line of Key=Value pairs (values have no spaces except Command
    and WorkDir-like paths, which we do not need) -> dict."""
    return dict(m.groups() for m in re.finditer(r"(\w+)=(\S*)", text))


class LocalSlurm:
    def __init__(self, tmp, cpus=None):
        self.base = os.path.join(tmp, "slurm")
        self.cpus = cpus or os.cpu_count()
        self.procs = {}  # name -> Popen, in start order
        self.env = None

    # -- start / stop ---------------------------------------------------------------------------------
    def __enter__(self):
        missing = [p for p in DAEMONS.values() if not os.access(p, os.X_OK)]
        missing += [c for c in CLIENTS if shutil.which(c) is None]
        if missing:
            raise Skip(f"Slurm is not installed (missing {', '.join(missing)}): {INSTALL_HINT}")
        try:
            self._start()
        except Skip:
            self.stop()
            raise
        except Exception:
            self.stop()
            raise
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None and exc_type is not Skip:
            print(f"--- the local Slurm's logs (the test failed: {exc_type.__name__}):\n{self.logs(tail=6000)}", file=sys.stderr)
        self.stop()
        return False

    def _start(self):
        b = self.base
        for d in ("etc", "munge", "state", "spool", "log", "run"):
            os.makedirs(f"{b}/{d}", mode=0o700, exist_ok=True)
        # munge refuses a socket folder others may write to and a key others may read.
        key, sock = f"{b}/munge/munge.key", f"{b}/munge/munge.socket"
        with open(key, "wb") as f:
            f.write(os.urandom(1024))
        os.chmod(key, 0o400)
        self._spawn("munged", [DAEMONS["munged"], "--foreground", "--force", f"--socket={sock}", f"--key-file={key}",
                               f"--log-file={b}/log/munged.log", f"--pid-file={b}/run/munged.pid",
                               f"--seed-file={b}/munge/munged.seed"])
        self._wait(lambda: os.path.exists(sock), 10, "munged did not create its socket")

        host = socket.gethostname().split(".")[0]
        user = getpass.getuser()
        mem_mb = max(1024, os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20 - 1024)
        conf = f"{b}/etc/slurm.conf"
        with open(conf, "w") as f:
            f.write(f"""# Written by tests/slurm/local_slurm.py: a throwaway single-node cluster.
ClusterName=sttest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser={user}
SlurmdUser={user}
AuthType=auth/munge
CredType=cred/munge
# cred_expire: a requeued job waits this + 1 s before it may start again (Slurm's default: 120 s). Starting
# it sooner by hand (scontrol update StartTime=now) races slurmd's revocation of the old credential: a start
# in the same second fails the job (ExitCode 1:0, no output).
AuthInfo=socket={sock},cred_expire=10
StateSaveLocation={b}/state
SlurmdSpoolDir={b}/spool
SlurmctldPidFile={b}/run/slurmctld.pid
SlurmdPidFile={b}/run/slurmd.pid
SlurmctldLogFile={b}/log/slurmctld.log
SlurmdLogFile={b}/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
# A scheduling pass every 2 s (default 60): the requeued job starts as soon as its BeginTime has passed.
SchedulerParameters=sched_interval=2,bf_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=pmix
ReturnToService=2
JobRequeue=1
SlurmdParameters=config_overrides
MailProg=/bin/true
KillWait=10
MinJobAge=600
TmpFS={b}/spool
NodeName={host} NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={mem_mb} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
""")
        self.env = dict(os.environ, SLURM_CONF=conf)
        for k in [k for k in self.env if k.startswith(("SLURM_", "SBATCH_", "SRUN_")) and k != "SLURM_CONF"]:
            del self.env[k]  # a test run inside a Slurm job must not hand its job's settings to ours
        munge_ok = subprocess.run(f"munge -S {sock} -n | unmunge -S {sock}", shell=True, capture_output=True, text=True)
        if "Success" not in munge_ok.stdout:
            raise Skip(f"munge does not work here: {munge_ok.stdout}{munge_ok.stderr} (log {b}/log/munged.log)")
        # -D: foreground (our child); -i: ignore state (fresh cluster); -c: clean start for slurmd.
        self._spawn("slurmctld", [DAEMONS["slurmctld"], "-D", "-i", "-f", conf])
        self._spawn("slurmd", [DAEMONS["slurmd"], "-D", "-c", "-f", conf])

        def node_idle():
            st = self.cmd(["sinfo", "-h", "-N", "-o", "%T"], ok=False).stdout.strip()
            if st.startswith(("down", "drain")):
                self.cmd(["scontrol", "update", f"nodename={host}", "state=resume"], ok=False)
            return st.rstrip("*~#") == "idle"
        self._wait(node_idle, 60, "the node did not become idle")

    def _spawn(self, name, args):
        log = open(f"{self.base}/log/{name}.stdout", "w")
        try:
            self.procs[name] = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=self.env)
        except OSError as e:
            raise Skip(f"cannot start {name}: {e}")
        finally:
            log.close()

    def _wait(self, pred, seconds, what):
        deadline = time.time() + seconds
        while time.time() < deadline:
            for name, p in self.procs.items():
                if p.poll() is not None:
                    raise Skip(f"Slurm cannot start here: {name} exited with {p.returncode}:\n{self.logs(name)}")
            if pred():
                return
            time.sleep(0.3)
        raise Skip(f"Slurm cannot start here: {what} within {seconds} s:\n{self.logs()}")

    def wait_for(self, pred, seconds, what):
        """Polls pred() until true; fails (not skips) after seconds: for a test's own conditions."""
        deadline = time.time() + seconds
        while time.time() < deadline:
            if pred():
                return
            time.sleep(0.3)
        raise AssertionError(f"timed out after {seconds} s waiting for: {what}")

    def stop(self):
        """Cancels every job (so no slurmstepd or job step is left behind), then ends the daemons we started,
        newest first: SIGTERM, and SIGKILL after 15 s."""
        if "slurmctld" in self.procs and self.procs["slurmctld"].poll() is None:
            self.cmd(["scancel", "--user", getpass.getuser()], ok=False)
            deadline = time.time() + 30
            while time.time() < deadline and self.cmd(["squeue", "-h", "-o", "%i"], ok=False).stdout.strip():
                time.sleep(0.5)
        for name in reversed(list(self.procs)):
            p = self.procs[name]
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(15)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        self.procs.clear()

    # -- clients --------------------------------------------------------------------------------------
    def cmd(self, args, ok=True, env=None, timeout=60):
        p = subprocess.run(args, capture_output=True, text=True, env=env or self.env, timeout=timeout)
        if ok and p.returncode != 0:
            raise AssertionError(f"{' '.join(args)} failed ({p.returncode}): {p.stdout}{p.stderr}")
        return p

    def sbatch(self, args, env=None):
        """Submits; env: extra variables for the job (sbatch exports the submitting environment to it)."""
        p = self.cmd(["sbatch", "--parsable", *args], env=dict(self.env, **(env or {})))
        return p.stdout.strip().split(";")[0]

    def job(self, job_id):
        """The job's fields from `scontrol show job` (JobState, Restarts, ExitCode, BatchFlag, ...)."""
        p = self.cmd(["scontrol", "show", "job", "-o", job_id], ok=False)
        return _job_fields(p.stdout) if p.returncode == 0 else {}

    def wait_job(self, job_id, timeout, on_poll=None):
        """Waits until the job has ended (COMPLETED, FAILED, TIMEOUT, CANCELLED, ...); returns its fields.
        A requeued job starts again by Slurm's own rule: after the credential lifetime (BeginTime = requeue +
        cred_expire + 1 s; 10 s here instead of 120), at the next scheduling pass (every 2 s here)."""
        done = {"COMPLETED", "FAILED", "TIMEOUT", "CANCELLED", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE",
                "PREEMPTED"}
        deadline = time.time() + timeout
        while time.time() < deadline:
            j = self.job(job_id)
            if on_poll:
                on_poll(j)
            if j.get("JobState", "") in done:
                return j
            time.sleep(1)
        raise AssertionError(f"job {job_id} did not end within {timeout} s: {self.job(job_id)}\n{self.logs()}")

    def logs(self, *names, tail=3000):
        out = []
        for name in names or ("munged", "slurmctld", "slurmd"):
            for path in (f"{self.base}/log/{name}.log", f"{self.base}/log/{name}.stdout"):
                if os.path.exists(path):
                    out.append(f"--- {path}\n" + open(path, errors="replace").read()[-tail:])
        return "\n".join(out)
