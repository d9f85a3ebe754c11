#!/usr/bin/env python3
"""Failure paths of the MPI layer as real mpirun jobs (2 ranks): a rank that fails while a collective is
in flight (unwinding, or an explicit abandon) must print its error and end the job, never hang; a
thread level below the one we need stops at start with a message and a hint.
Usage: faults_test.py MPIEXEC PROGRAM CASE   (PROGRAM: dist_communicator_test)."""
import os
import signal
import subprocess
import sys

MPIEXEC, PROG, CASE = sys.argv[1:4]
TIMEOUT = 60  # far above a prompt abort (about a second); a hang is what this catches


def run(extra, env_vars=None):
    env = dict(os.environ, **(env_vars or {}))
    export = [x for k in (env_vars or {}) for x in ("-x", k)]
    cmd = [MPIEXEC, "--allow-run-as-root", "--oversubscribe", "-np", "2", *export, PROG, *extra]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
    try:
        out, err = p.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        # On a hang end the whole job: SIGTERM lets mpirun kill its ranks; then whatever is left in its group.
        p.terminate()
        try:
            p.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        p.communicate()
        sys.exit(f"FAIL {CASE}: the job did not end within {TIMEOUT} s (a rank blocked instead of aborting)")
    return p.returncode, out, err


def expect(cond, what, err):
    if not cond:
        sys.exit(f"FAIL {CASE}: {what}\n--- stderr ---\n{err[-3000:]}")


if CASE == "abandon_unwind":
    rc, out, err = run(["--abandon-unwind"])
    expect(rc != 0, "exit status 0", err)
    expect("[rank 1]" in err and "injected failure with a collective in flight" in err, "rank 1's message missing", err)
elif CASE == "abandon_explicit":
    rc, out, err = run(["--abandon-explicit"])
    expect(rc != 0, "exit status 0", err)
    expect("[rank 1]" in err and "was abandoned" in err and "no collective can follow" in err,
           "the refusal after an abandoned collective (message and hint) missing", err)
elif CASE == "thread_level":
    rc, out, err = run([], {"SHARDTUNE_TEST_MPI_THREAD_PROVIDED": "single"})
    expect(rc != 0, "exit status 0", err)
    expect("provides only MPI_THREAD_SINGLE" in err and "needs MPI_THREAD_FUNNELED" in err and "HINT" in err,
           "the thread-level message with its hint missing", err)
    expect("communicator_test:" not in out, "the program ran past the failed MPI setup", err)
else:
    sys.exit(f"unknown case {CASE}")
print(f"{CASE}: ok")
