#!/usr/bin/env bash
# Prepares what tools/gpu-check.sh needs on a GPU machine that has CUDA, CMake, ninja and PyTorch but no
# network and none of shardtune's other build dependencies: the Debian 12 .debs (downloaded with
# `apt-get download`, unpacked there with `dpkg -x`) and the ../shared files the checks read, all into
# one ignored folder that travels with the working tree (default build/gpu-carry, at most 64 MiB with it).
# Runs HERE (a Debian 12 machine with apt and network), not on the GPU machine.
#
#   tools/gpu-debs.sh [CARRY_DIR]
#
# Two sets of packages:
#   debs/           always unpacked into the prefix: the libraries and headers the build links and includes
#                   (Open MPI, HDF5, Boost.Serialization, CLI11, nlohmann-json, simdjson, PCRE2,
#                   SentencePiece (CMake requires it: shardtune-prep links it), GoogleTest (the tests'
#                   CMake needs it), OpenSSL headers, pkg-config).
#   debs-fallback/  the shared libraries those depend on that a CUDA image usually has already (libcurl and
#                   its TLS/LDAP/Kerberos chain, numa, ...): gpu-check.sh unpacks them aside and links only a
#                   library that `ldd` reports "not found" into the prefix, so the image's own copies win.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CARRY="${1:-$ROOT/build/gpu-carry}"
SHARED="${SHARDTUNE_SHARED:-$ROOT/../shared}"
LIMIT=$((64 * 1024 * 1024))

CORE=(
  # Open MPI 4.1 (runtime, launcher, compiler wrappers, headers) and what it loads
  libopenmpi3 libopenmpi-dev openmpi-bin openmpi-common libpmix2 libevent-core-2.1-7 libevent-pthreads-2.1-7
  libhwloc15 libfabric1 libucx0 libibverbs1 ibverbs-providers librdmacm1 libnl-3-200
  libnl-route-3-200 libpsm2-2 libpsm-infinipath1 libmunge2 libnuma1 libltdl7
  # HDF5 1.10 C and C++ (serial)
  libhdf5-dev libhdf5-103-1 libhdf5-cpp-103-1 libhdf5-hl-100 libhdf5-hl-cpp-100 libsz2 libaec0
  # header-only and small libraries
  libboost1.74-dev libboost-serialization1.74-dev libboost-serialization1.74.0
  libcli11-dev nlohmann-json3-dev libsimdjson-dev libsimdjson14
  libpcre2-dev libpcre2-8-0 libpcre2-16-0 libpcre2-32-0 libpcre2-posix3
  libsentencepiece-dev libsentencepiece0 libgtest-dev googletest libssl-dev
  pkgconf pkgconf-bin libpkgconf3 zlib1g-dev
)
FALLBACK=(
  libcurl4 libnghttp2-14 libpsl5 librtmp1 libssh2-1 libbrotli1 libldap-2.5-0 libsasl2-2 libidn2-0
  libgssapi-krb5-2 libkrb5-3 libk5crypto3 libkrb5support0 libkeyutils1 libcom-err2 libunistring2
  libgnutls30 libnettle8 libhogweed6 libgmp10 libtasn1-6 libp11-kit0 libffi8 libpciaccess0
  libudev1 libatomic1 libssl3 libzstd1 liblzma5 zlib1g libprotobuf-lite32
)

echo "gpu-debs: this machine: $(. /etc/os-release && echo "$PRETTY_NAME"), $(uname -m), glibc $(ldd --version | head -1 | awk '{print $NF}')"
[ "$(. /etc/os-release && echo "$ID:$VERSION_ID")" = "debian:12" ] ||
  echo "gpu-debs: WARNING: not Debian 12: the packages are this distribution's, gpu-check.sh expects Debian 12's" >&2
[ "$(uname -m)" = x86_64 ] || { echo "gpu-debs: the GPU machine is x86-64; run this on an x86-64 Debian 12" >&2; exit 1; }
command -v apt-get >/dev/null || { echo "gpu-debs: needs apt-get (Debian 12)" >&2; exit 1; }

mkdir -p "$CARRY/debs" "$CARRY/debs-fallback" "$CARRY/shared/models" "$CARRY/shared/tokenizers" "$CARRY/shared/data"
download() {  # DIR PACKAGES...: only the ones not already there (the .deb name starts with the package name)
  local dir=$1 p need=()
  shift
  for p in "$@"; do compgen -G "$dir/${p}_*.deb" >/dev/null || need+=("$p"); done
  [ ${#need[@]} -eq 0 ] && return 0
  (cd "$dir" && apt-get download -q "${need[@]}") || {
    echo "gpu-debs: apt-get download failed for some of: ${need[*]}" >&2
    echo "  ---> HINT: run 'apt-get update' (root) and check the network to the Debian mirrors" >&2
    exit 1
  }
}
download "$CARRY/debs" "${CORE[@]}"
download "$CARRY/debs-fallback" "${FALLBACK[@]}"

# The files the checks read from ../shared (tiny Llama, the Llama 2 SentencePiece tokenizer, a text corpus).
for f in models/stories260K.bin tokenizers/llama2-tokenizer.model data/tinyshakespeare.txt; do
  [ -f "$SHARED/$f" ] || { echo "gpu-debs: $SHARED/$f not found (SHARDTUNE_SHARED names the shared folder)" >&2; exit 1; }
  cmp -s "$SHARED/$f" "$CARRY/shared/$f" || cp "$SHARED/$f" "$CARRY/shared/$f"
done

# What travels: tracked + untracked-not-ignored files of the checkout, plus this folder (carried).
tree_bytes=$(cd "$ROOT" && git ls-files -z --cached --others --exclude-standard | xargs -0 stat -c %s 2>/dev/null |
             awk '{s += $1} END {print s + 0}')
carry_bytes=$(du -sb "$CARRY" | cut -f1)
{
  echo "# made by tools/gpu-debs.sh on $(date -u +%FT%TZ) from $(. /etc/os-release && echo "$PRETTY_NAME")"
  for d in debs debs-fallback; do
    for f in "$CARRY/$d"/*.deb; do printf '%s/%s %s\n' "$d" "$(basename "$f")" "$(stat -c %s "$f")"; done
  done
} > "$CARRY/MANIFEST.txt"
mib() { awk -v b="$1" 'BEGIN {printf "%.1f MiB", b / 1048576}'; }
echo "gpu-debs: $(ls "$CARRY/debs" | wc -l) core debs ($(mib "$(du -sb "$CARRY/debs" | cut -f1)")), " \
     "$(ls "$CARRY/debs-fallback" | wc -l) fallback debs ($(mib "$(du -sb "$CARRY/debs-fallback" | cut -f1)")), " \
     "shared files ($(mib "$(du -sb "$CARRY/shared" | cut -f1)"))"
echo "gpu-debs: carry folder $(mib "$carry_bytes") + working tree $(mib "$tree_bytes") = $(mib $((carry_bytes + tree_bytes))) of the 64 MiB limit"
if [ $((carry_bytes + tree_bytes)) -ge $LIMIT ]; then
  echo "gpu-debs: over the 64 MiB the device tool carries" >&2
  echo "  ---> HINT: drop fallback packages the GPU image has, or untracked files from the checkout" >&2
  exit 1
fi
echo "gpu-debs: ready: carry '${CARRY#"$ROOT"/}' (device tool: carry [\"${CARRY#"$ROOT"/}\"])"
