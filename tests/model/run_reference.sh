#!/bin/sh
# Runs tests/model/reference.py with Debian's python3-torch; exit 77 (ctest skip) when it or the input
# is unavailable. With a trailing model_parity binary (llama2c mode) also runs the comparison.
#   run_reference.sh reference.py make OUT
#   run_reference.sh reference.py llama2c MODEL.bin OUT MODEL_PARITY
set -e
py=/usr/bin/python3
if ! "$py" -c "import torch, numpy" 2>/dev/null; then
  echo "SKIP: $py with torch+numpy (Debian python3-torch) not available"; exit 77
fi
ref=$1; mode=$2
if [ "$mode" = make ]; then
  exec "$py" "$ref" make "$3"
fi
bin=$3; out=$4; parity=$5
if [ ! -f "$bin" ]; then
  echo "SKIP: $bin not found (the shared folder with models/stories260K.bin is absent)"; exit 77
fi
"$py" "$ref" llama2c "$bin" "$out"
exec "$parity" "$out" "$bin"
