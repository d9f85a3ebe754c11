"""The real llama.cpp (npm node-llama-cpp, tests/export/llama_cpp_run.mjs) for the GGUF tests.

    import llama_cpp
    llama_cpp.require()                                  # raises harness.Skip with the reason when absent
    llama_cpp.tokenize(gguf, corpus, special=False, bos=False, vocab_only=False) -> {"lines": [[ids]], ...}
    llama_cpp.greedy(gguf, prompt_ids, n, lora=None, lora_scale=1.0) -> {"ids": [...], "margins": [...]}

Where node-llama-cpp lives: $ST_LLAMA_CPP (ctest passes CMake's SHARDTUNE_LLAMA_CPP, the node_modules
folder tools/setup.sh st_install_llama_cpp fills), else <build>/node_llama/node_modules from $ST_BIN.
"""
import json
import os
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
from harness import Skip  # noqa: E402

RUNNER = os.path.join(HERE, "llama_cpp_run.mjs")


def node_modules():
    nm = os.environ.get("ST_LLAMA_CPP")
    if not nm and os.environ.get("ST_BIN"):
        nm = os.path.join(os.environ["ST_BIN"], "node_llama", "node_modules")
    return nm


def require():
    """Skip (exit 77) with a clear message unless node and node-llama-cpp are installed."""
    nm = node_modules()
    if shutil.which("node") is None:
        raise Skip("node not found on PATH (tools/setup.sh installs nodejs)")
    if not nm or not os.path.isfile(os.path.join(nm, "node-llama-cpp", "dist", "index.js")):
        raise Skip(f"node-llama-cpp (the real llama.cpp) not installed in {nm} "
                   "(tools/test.sh installs it: tools/setup.sh st_install_llama_cpp)")


def _run(args, timeout):
    env = dict(os.environ, ST_LLAMA_NODE_MODULES=node_modules())
    p = subprocess.run(["node", RUNNER, *args], capture_output=True, text=True, timeout=timeout, env=env)
    if p.returncode != 0:
        raise AssertionError(f"llama.cpp ({' '.join(args)}) failed ({p.returncode}):\n{p.stdout[-2000:]}\n{p.stderr[-4000:]}")
    return json.loads(p.stdout)


def tokenize(gguf, corpus, special=False, bos=False, vocab_only=False, timeout=120):
    args = ["tokenize", str(gguf), str(corpus)]
    args += ["--special"] if special else []
    args += ["--bos"] if bos else []
    args += ["--vocab-only"] if vocab_only else []
    return _run(args, timeout)


def greedy(gguf, prompt_ids, n, lora=None, lora_scale=1.0, timeout=120):
    args = ["greedy", str(gguf), json.dumps([int(i) for i in prompt_ids]), str(int(n))]
    if lora:
        args += ["--lora", str(lora), "--lora-scale", repr(float(lora_scale))]
    return _run(args, timeout)
