#!/usr/bin/python3
"""Launch checks of the trainer as real mpirun processes: threads vs the rank's affinity mask (the mask
measured independently by a Python probe inside the same kind of mpirun launch), the BLAS core line
(OpenBLAS's own detection read through ctypes), the re-exec that applies a chosen core before MPI_Init,
and the user's OPENBLAS_CORETYPE winning. Usage: launch_test.py CASE."""
import os
import re
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from harness import Skip, run, run_case  # noqa: E402

BIN = os.environ["ST_BIN"]
SRC = os.environ["ST_SOURCE"]
TRAIN = os.path.join(BIN, "src", "shardtune")
PREP = os.path.join(BIN, "data_prep", "shardtune-prep")
HW = os.path.join(BIN, "tools", "shardtune-hw")
MPI = ["mpirun", "--allow-run-as-root", "-np"]  # default binding on purpose (np <= 2: one core per rank)
sys.path.insert(0, os.path.join(SRC, "tests", "model"))



def clean_env(**extra):
    """The environment with no BLAS choice in it (as on a fresh shell), plus `extra`."""
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_CORETYPE", "SHARDTUNE_BLAS_REEXEC")}
    env.update(extra)
    return env


class Setup:
    """A tiny random Llama and a few dozen prepared samples (as tests/train/train_test.py makes them)."""

    def __init__(self, tmp):
        if not os.path.exists(TRAIN):
            raise Skip("no trainer binary (built without LibTorch)")
        import torch  # noqa: F401  (reference.py needs it)
        from reference import llama_cfg, random_weights, save_hf
        cfg = llama_cfg(vocab_size=259, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                        num_attention_heads=2, num_key_value_heads=1)
        self.model = f"{tmp}/model"
        save_hf(cfg, random_weights(cfg, 11, 0.05), self.model)
        run(["/usr/bin/python3", os.path.join(SRC, "tools", "demo", "make_task.py"), f"{tmp}/task.jsonl",
             f"{tmp}/held.jsonl", "40"])
        self.data = f"{tmp}/data"
        run([PREP, "--input", f"{tmp}/task.jsonl", "--output", self.data, "--tokenizer", "byte", "--template", "plain",
             "--val-fraction", "0.1", "--max-seq-len", "64", "--quiet"])
        self.tmp, self.n = tmp, 0

    def train(self, launcher, extra=(), env=None):
        """One optimizer step; returns (stdout, stderr)."""
        self.n += 1
        p = run([*launcher, TRAIN, "--model", self.model, "--data", self.data, "--out", f"{self.tmp}/out{self.n}",
                 "--steps", "1", "--global-batch", "2", "--micro-batch", "1", "--seq-len", "64", "--eval-batches", "0",
                 *extra], env=env if env is not None else clean_env())
        return p.stdout, p.stderr


def cpu_list(ids):
    """Compact ranges, e.g. [0, 1, 2, 5] -> '0-2,5' (as the kernel's Cpus_allowed_list)."""
    ids, out, i = sorted(set(ids)), [], 0
    while i < len(ids):
        j = i
        while j + 1 < len(ids) and ids[j + 1] == ids[j] + 1:
            j += 1
        out.append(str(ids[i]) if i == j else f"{ids[i]}-{ids[j]}")
        i = j + 1
    return ",".join(out)


def probe_masks(np_, extra=()):
    """Affinity mask of every rank of `mpirun -np N [extra]`, measured by Python inside the launch."""
    code = ("import os, socket, sys; sys.stdout.write('PROBE %s %s %s\\n' % (os.environ.get('OMPI_COMM_WORLD_RANK', '0'), "
            "socket.gethostname(), ','.join(map(str, sorted(os.sched_getaffinity(0)))))); sys.stdout.flush()")
    p = run([*MPI, str(np_), *extra, "/usr/bin/python3", "-c", code])
    ranks = {}
    # Parsed from the whole output, not line by line: mpirun may join two ranks' lines (seen once in CI).
    for r, host, cpus in re.findall(r"PROBE (\d+) (\S+?) (\d+(?:,\d+)*)", p.stdout):
        ranks[int(r)] = (host, [int(c) for c in cpus.split(",")])
    assert sorted(ranks) == list(range(np_)), p.stdout
    return [ranks[r] for r in range(np_)]


def threads_section(stdout):
    """The 'threads (...)' line of the start summary and its indented continuation lines."""
    lines = stdout.splitlines()
    start = next(i for i, l in enumerate(lines) if l.startswith("threads ("))
    block = [lines[start]]
    for l in lines[start + 1:]:
        if not l.startswith("  "):
            break
        block.append(l)
    return "\n".join(block)


def cpu_flags():
    for line in open("/proc/cpuinfo"):
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def openblas_detected():
    """OpenBLAS's own core choice, loaded here through ctypes with OPENBLAS_CORETYPE unset."""
    code = ("import ctypes; l = ctypes.CDLL('libblas.so.3'); f = l.openblas_get_corename; f.restype = ctypes.c_char_p; "
            "print(f().decode())")
    p = subprocess.run(["/usr/bin/python3", "-c", code], capture_output=True, text=True, env=clean_env())
    return p.stdout.strip() if p.returncode == 0 else None


GENERIC = {"unknown", "generic", "katmai", "coppermine", "northwood", "prescott", "banias", "atom", "core2", "penryn",
           "dunnington", "nehalem", "athlon", "opteron", "opteron_sse3", "barcelona", "nano", "bobcat"}


def expected_choice(flags, detected):
    """The core shardtune should force over a generic `detected` one, from the flags alone."""
    if detected.lower() not in GENERIC:
        return None
    if {"avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl"} <= flags:
        return "SkylakeX"
    if {"avx2", "fma"} <= flags:
        return "Haswell"
    return "Sandybridge" if "avx" in flags else None


def t_threads_warning(tmp):
    """An explicit --threads larger than the mask Open MPI's default binding leaves a rank: warned, with the fix."""
    s = Setup(tmp)
    (host, mask), = probe_masks(1)
    n = max(2, len(mask) + 1)
    out, err = s.train([*MPI, "1"], ["--threads", str(n)])
    for want in (f"--threads {n} but", "--bind-to none", f"--map-by slot:PE={n}", f"srun --cpus-per-task={n}", "HINT"):
        assert want in err, (want, err)
    assert f"1 rank: {n} threads, affinity mask of {len(mask)} CPU" in threads_section(out), out
    # With a mask large enough (no binding), the same count is not warned about.
    (_, unbound), = probe_masks(1, ["--bind-to", "none"])
    if len(unbound) >= 2:
        out, err = s.train([*MPI, "1", "--bind-to", "none"], ["--threads", "2"])
        assert "affinity mask holds only" not in err, err
        assert "1 rank: 2 threads" in threads_section(out), out


def t_threads_mask(tmp):
    """--threads 0 resolves to the CPUs of each rank's affinity mask (shared evenly by ranks with the same mask)."""
    s = Setup(tmp)
    for np_ in (1, 2):
        probe = probe_masks(np_)
        out, err = s.train([*MPI, str(np_)], ["--threads", "0"])
        section = threads_section(out)
        found = [(int(t), int(c)) for t, c in re.findall(r"(\d+) threads?, affinity mask of (\d+) CPUs?", section)]
        want = []
        for host, mask in probe:
            sharers = sum(1 for h, m in probe if h == host and m == mask)
            want.append((max(1, len(mask) // sharers), len(mask)))
        assert sorted(set(found)) == sorted(set(want)), (found, want, section)
        for _, mask in probe:
            assert cpu_list(mask) in section, (cpu_list(mask), section)
        assert "affinity mask holds only" not in err, err
        if np_ == 1:
            t = want[0][0]
            assert f"GFLOP/s per rank ({t} thread(s))" in out, out
    # --precision auto (the default): bf16 exactly where the CPU computes it natively.
    native = bool({"avx512_bf16", "amx_bf16"} & cpu_flags())
    assert ("precision: auto -> bf16" if native else "precision: auto -> fp32") in out, out
    assert "precision       = auto" in out, out


def t_blas_core(tmp):
    """The printed BLAS core: OpenBLAS's own choice when nothing is set, a re-exec before MPI_Init when a generic
    fallback is detected, and the user's OPENBLAS_CORETYPE kept."""
    detected = openblas_detected()
    if detected is None:
        raise Skip("libblas.so.3 is not OpenBLAS")
    s = Setup(tmp)
    flags = cpu_flags()
    chosen = expected_choice(flags, detected)
    # shardtune-hw --blas-env: exactly one export line or nothing; nothing when the user chose.
    p = run([HW, "--blas-env"], env=clean_env())
    assert p.stdout == (f"export OPENBLAS_CORETYPE={chosen}\n" if chosen else ""), (p.stdout, detected)
    assert run([HW, "--blas-env"], env=clean_env(OPENBLAS_CORETYPE="Prescott")).stdout == ""
    assert run([HW], env=clean_env()).stdout.count("\n") >= 6

    # Nothing set: the core OpenBLAS detects (or, over a generic one, the chosen core).
    out, _ = s.train([*MPI, "1"], ["--precision", "fp32"])
    want = (f"BLAS: OpenBLAS core {chosen} (OPENBLAS_CORETYPE={chosen} set by shardtune; OpenBLAS detected {detected})"
            if chosen else f"BLAS: OpenBLAS core {detected} (its own detection)")
    assert want in out, (want, out)

    # A generic detection (pretended by the test hook) makes every rank re-exec itself before MPI_Init.
    pretend = expected_choice(flags, "Prescott")
    if pretend:
        env = clean_env(SHARDTUNE_TEST_BLAS_DETECTED="Prescott")
        out, err = s.train([*MPI, "2", "-x", "SHARDTUNE_TEST_BLAS_DETECTED"], ["--precision", "fp32"], env=env)
        assert (f"BLAS: OpenBLAS core {pretend} (OPENBLAS_CORETYPE={pretend} set by shardtune; OpenBLAS detected "
                "Prescott)") in out, out
        assert "step 1/1" in out and "ranks differ" not in out, out
        # The user's setting wins over the choice, even with a generic detection.
        env = clean_env(SHARDTUNE_TEST_BLAS_DETECTED="Prescott", OPENBLAS_CORETYPE="Prescott")
        out, err = s.train([*MPI, "1", "-x", "SHARDTUNE_TEST_BLAS_DETECTED", "-x", "OPENBLAS_CORETYPE"],
                           ["--precision", "fp32"], env=env)
        assert "BLAS: OpenBLAS core Prescott (OPENBLAS_CORETYPE=Prescott from the environment)" in out, out
        # ... and a generic core on an AVX2/AVX-512 CPU is warned about, naming the variable.
        if "avx2" in flags:
            assert "generic core Prescott" in err and "HINT" in err and "OPENBLAS_CORETYPE" in err, err

    # A user's valid choice is kept as given.
    mine = "Haswell" if {"avx2", "fma"} <= flags else "Prescott"
    out, err = s.train([*MPI, "1", "-x", "OPENBLAS_CORETYPE"], ["--precision", "fp32"],
                       env=clean_env(OPENBLAS_CORETYPE=mine))
    assert f"BLAS: OpenBLAS core {mine} (OPENBLAS_CORETYPE={mine} from the environment)" in out, out


def t_avx2_only_cpu(tmp):
    """The AMD EPYC of the issue (AVX2, no AVX-512, no native bf16), simulated: the trainer reads the fixture's
    flags (SHARDTUNE_CPUINFO) and is told OpenBLAS fell back to Prescott. It must force Haswell, never an
    AVX-512 core; train in fp32 under --precision auto; and warn with the measured ratio for an explicit bf16."""
    flags = cpu_flags()
    if not {"avx", "avx2", "fma"} <= flags:
        raise Skip("this CPU cannot run the Haswell kernels the simulated EPYC gets")
    s = Setup(tmp)
    fixture = os.path.join(SRC, "tests", "fixtures", "cpuinfo", "amd_epyc_avx2.txt")
    env = clean_env(SHARDTUNE_CPUINFO=fixture, SHARDTUNE_TEST_BLAS_DETECTED="Prescott")
    mpi = [*MPI, "1", "-x", "SHARDTUNE_CPUINFO", "-x", "SHARDTUNE_TEST_BLAS_DETECTED"]
    out, err = s.train(mpi, env=env)
    assert "BLAS: OpenBLAS core Haswell (OPENBLAS_CORETYPE=Haswell set by shardtune; OpenBLAS detected Prescott)" in out, out
    assert "precision: auto -> fp32 (no native bf16" in out and "measured fp32 matmul peak" in out, out
    assert "warning" not in err, err
    out, err = s.train(mpi, ["--precision", "bf16"], env=env)
    m = re.search(r"without native bf16.*GFLOP/s in bf16 vs [\d.]+ in fp32 \(bf16/fp32 = ([\d.]+)\)", err)
    assert m and float(m.group(1)) > 0 and "HINT" in err, err
    assert "step 1/1" in out, out
    # The old unconditional OPENBLAS_CORETYPE=SkylakeX, given by a user: kept, but warned about before the crash
    # it would cause there (the real CPU here runs it, so the run itself goes on).
    if {"avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl"} <= flags:
        out, err = s.train([*mpi, "-x", "OPENBLAS_CORETYPE"], ["--precision", "fp32"],
                           env=dict(env, OPENBLAS_CORETYPE="SkylakeX"))
        assert "OPENBLAS_CORETYPE=SkylakeX needs CPU instructions this CPU lacks (avx512f" in err, err
        assert "Illegal instruction" in err and "HINT: unset OPENBLAS_CORETYPE" in err, err
        assert "BLAS: OpenBLAS core SkylakeX (OPENBLAS_CORETYPE=SkylakeX from the environment)" in out, out


if __name__ == "__main__":
    sys.exit(run_case(globals(), "launch"))
