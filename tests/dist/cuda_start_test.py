#!/usr/bin/python3
"""`shardtune --device cuda` where this build cannot run it, as real trainer runs (one rank without a
launcher, and two ranks under mpirun): a clear error naming what is missing (no NCCL backend, or a
CPU-only LibTorch, as CMake found them), a non-zero exit, every rank stopping, and nothing written.
And `shardtune --version`: it states whether this build compiled the NCCL backend, which must match
what CMake found (so a build that silently drops the backend fails here). Usage: cuda_start_test.py CASE."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from harness import Skip, run, run_case  # noqa: E402

BIN = os.environ["ST_BIN"]
TRAIN = os.path.join(BIN, "src", "shardtune")
HAVE_NCCL = os.environ["ST_HAVE_NCCL"] in ("1", "ON", "TRUE")
TORCH_CUDA = os.environ["ST_TORCH_CUDA"] in ("1", "ON", "TRUE")
MPI = ["mpirun", "--allow-run-as-root", "--oversubscribe", "-np"]


def expected_refusal():
    if not HAVE_NCCL:
        return "built without the NCCL backend"
    if not TORCH_CUDA:
        return "is a CPU-only build"
    raise Skip("this build has NCCL and a CUDA LibTorch: --device cuda is checked on a GPU (tools/gpu-check.sh)")


def refuse(tmp, launcher):
    want = expected_refusal()
    out, metrics = f"{tmp}/run/out", f"{tmp}/run/metrics.jsonl"
    # Inputs that do not exist: the device is refused before anything is read or written.
    p = run([*launcher, TRAIN, "--device", "cuda", "--model", f"{tmp}/no-model", "--data", f"{tmp}/no-data",
             "--out", out, "--metrics", metrics, "--steps", "1", "--global-batch", "2", "--micro-batch", "1",
             "--seq-len", "16"], ok=False, timeout=120)
    text = p.stdout + p.stderr
    assert p.returncode != 0, f"--device cuda was accepted by a build that cannot run it:\n{text[-3000:]}"
    assert want in text, f"expected '{want}' in the output:\n{text[-3000:]}"
    assert "--device cpu" in text, f"the hint should offer --device cpu:\n{text[-3000:]}"
    assert "not supported by the trainer yet" not in text, text[-3000:]
    assert not os.path.exists(f"{tmp}/run"), f"files were written: {os.listdir(tmp)}"
    return text


def t_refuse_one_rank(tmp):
    if not os.path.exists(TRAIN):
        raise Skip("no trainer binary (built without LibTorch)")
    refuse(tmp, [])


def t_refuse_two_ranks(tmp):
    if not os.path.exists(TRAIN):
        raise Skip("no trainer binary (built without LibTorch)")
    text = refuse(tmp, [*MPI, "2"])
    # Both ranks stop on the same problem (agreed before any GPU work), neither hangs.
    for r in (0, 1):
        assert f"[rank {r}]" in text, f"rank {r} did not report:\n{text[-3000:]}"


def t_version(tmp):
    if not os.path.exists(TRAIN):
        raise Skip("no trainer binary (built without LibTorch)")
    p = run([TRAIN, "--version"], timeout=60)
    text = p.stdout
    assert text.startswith("shardtune "), text
    assert "LibTorch " in text, text
    assert ("with CUDA" in text) == TORCH_CUDA, f"CMake found a LibTorch {'with' if TORCH_CUDA else 'without'} CUDA:\n{text}"
    if HAVE_NCCL:
        assert "NCCL backend: built (NCCL " in text, f"CMake found CUDA + NCCL, but the binary has no NCCL backend:\n{text}"
    else:
        assert "NCCL backend: not built" in text, text
    assert ("--device cuda available" in text) == (HAVE_NCCL and TORCH_CUDA), text


if __name__ == "__main__":
    sys.exit(run_case(globals(), "cuda-start"))
