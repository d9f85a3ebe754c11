"""Runner shared by the Python CLI test scripts: `script.py CASE` runs t_CASE(tmpdir) in a fresh
temporary folder; Skip exits 77 (ctest SKIP_RETURN_CODE), failures exit non-zero with the traceback."""
import shutil
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
