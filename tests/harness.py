"""Runner shared by the Python CLI test scripts: `script.py CASE` runs t_CASE(tmpdir) in a fresh
temporary folder; Skip exits 77 (ctest SKIP_RETURN_CODE), failures exit non-zero with the traceback."""
import shutil
import subprocess
import sys
import tempfile


class Skip(Exception):
    pass


def run_case(namespace, prefix):
    case = sys.argv[1]
    tmp = tempfile.mkdtemp(prefix=f"{prefix}-{case}-")
    try:
        namespace["t_" + case](tmp)
    except Skip as s:
        print(f"SKIPPED: {s}")
        return 77
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"{case}: passed")
    return 0


def run(args, ok=True, timeout=300, env=None):
    """Runs a command, capturing its output; with ok, a non-zero exit fails with the output's tails."""
    p = subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=env)
    if ok and p.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return p


def run_fails(args, *want, timeout=300, env=None):
    """Runs a command that must fail: a non-zero exit, and every string of `want` in its stderr."""
    p = run(args, ok=False, timeout=timeout, env=env)
    assert p.returncode != 0, (p.returncode, p.stdout[-2000:])
    for w in want:
        assert w in p.stderr, (w, p.stderr[-3000:])
    return p
