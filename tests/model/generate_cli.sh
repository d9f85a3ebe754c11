#!/bin/sh
# shardtune-generate end to end, against tests/model/reference.py (independent PyTorch code):
#  - greedy ids (--temperature 0) equal the reference's greedy ids for the same weights: a random HF
#    Llama (the model_ref fixture, prompt given comma-separated) and the real stories260K (llama2.c);
#  - --print-logits equals the reference's fp32 logits (1e-4) and refuses --prompts-file;
#  - top-p sampling: every sampled first token lies in the nucleus computed from the reference logits;
#    top-p 1e-6 equals greedy; the same seed repeats the ids, another seed changes them;
#  - bad options exit 1 naming the option or the offending item, never with a LibTorch backtrace, and an
#    allocation failure (a 140 TB KV cache) prints one "out of memory" line with a hint.
#   generate_cli.sh SHARDTUNE_GENERATE SHARED_DIR REF_DIR REFERENCE_PY
set -u
gen=$1; stories=$2/models/stories260K.bin; refdir=$3; refpy=$4
py=/usr/bin/python3
hf=$refdir/llama_gqa_untied
fail() { echo "FAIL: $*"; exit 1; }
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
have_py=0; "$py" -c "import numpy" 2>/dev/null && have_py=1
[ -f "$hf/ref.safetensors" ] && [ $have_py = 1 ] || hf=""
[ -f "$stories" ] || stories=""
[ -n "$hf" ] || [ -n "$stories" ] || { echo "SKIP: neither $refdir/llama_gqa_untied (model_ref fixture) nor $2/models/stories260K.bin"; exit 77; }

# st NAME FILE [T TOP_P]: an integer tensor of a reference file as space-separated ids; with T and TOP_P,
# the top-p nucleus of the reference next-token logits after the 5-token prompt (logits[0, 4]), computed
# as generate.cpp defines it: the smallest most-probable prefix whose mass reaches TOP_P.
st() {
  "$py" - "$@" <<'PY'
import json, struct, sys
import numpy as np
name, path = sys.argv[1], sys.argv[2]
with open(path, "rb") as f:
    n = struct.unpack("<Q", f.read(8))[0]
    h = json.loads(f.read(n))
    e = h[name]
    f.seek(8 + n + e["data_offsets"][0])
    a = np.frombuffer(f.read(e["data_offsets"][1] - e["data_offsets"][0]), {"I64": np.int64, "F32": np.float32}[e["dtype"]])
a = a.reshape(e["shape"])
if len(sys.argv) == 3:
    print(" ".join(str(int(x)) for x in a.reshape(-1)))
else:
    t, top_p = float(sys.argv[3]), float(sys.argv[4])
    l = a[0, 4].astype(np.float64)
    p = np.exp((l - l.max()) / t)
    order = np.argsort(-p, kind="stable")
    c = np.cumsum(p[order]) / p.sum()
    k = int(np.searchsorted(c, top_p) + 1)
    print(" ".join(str(int(x)) for x in order[:k]))
PY
}
ids() { "$gen" --print-ids --no-stop "$@"; }

if [ -n "$hf" ]; then
  prompt=$(st gen_prompt "$hf/ref.safetensors" | tr ' ' ',')
  want=$(st gen "$hf/ref.safetensors")
  got=$(ids --model "$hf/hf" --prompt-ids "$prompt" --max-new-tokens 32 --temperature 0) || fail "generate failed"
  [ "$got" = "$want" ] || fail "greedy ids differ from reference.py's for the same weights:
  got  $got
  want $want"
  tiny=$(ids --model "$hf/hf" --prompt-ids "$prompt" --max-new-tokens 32 --temperature 0.8 --top-p 1e-6 --seed 3)
  [ "$tiny" = "$want" ] || fail "top-p 1e-6 should be greedy: $tiny"
  nucleus=$(st logits "$hf/ref.safetensors" 2.0 0.2)
  n=$(echo "$nucleus" | wc -w)
  [ "$n" -ge 3 ] && [ "$n" -le 40 ] || fail "test setup: a nucleus of $n tokens cannot tell top-p from full sampling"
  seen=""
  for seed in 1 2 3 4 5 6; do
    first=$(ids --model "$hf/hf" --prompt-ids "$prompt" --max-new-tokens 1 --temperature 2.0 --top-p 0.2 --seed $seed)
    case " $nucleus " in *" $first "*) ;; *) fail "seed $seed sampled $first, outside the top-p 0.2 nucleus (temperature 2) {$nucleus}";; esac
    case " $seen " in *" $first "*) ;; *) seen="$seen $first";; esac
  done
  [ $(echo $seen | wc -w) -ge 2 ] || fail "6 seeds sampled only {$seen}: the seed does not reach the sampler"
  echo "random llama: greedy = reference ($want); top-p 0.2 samples {$seen} within the $n-token nucleus"
  # --print-logits (tools/gpu-check's interop checks read it): the reference's fp32 logits of row 0.
  row0=$(st ids "$hf/ref.safetensors" | cut -d' ' -f1-24 | tr ' ' ',')
  "$gen" --model "$hf/hf" --prompt-ids "$row0" --print-logits > "$tmp/logits.json" 2>/dev/null || fail "--print-logits failed"
  "$py" - "$tmp/logits.json" "$hf/ref.safetensors" <<'PY' || fail "--print-logits differs from reference.py's logits"
import json, struct, sys
import numpy as np
j = json.load(open(sys.argv[1]))
with open(sys.argv[2], "rb") as f:
    n = struct.unpack("<Q", f.read(8))[0]
    e = json.loads(f.read(n))["logits"]
    f.seek(8 + n + e["data_offsets"][0])
    ref = np.frombuffer(f.read(e["data_offsets"][1] - e["data_offsets"][0]), np.float32).reshape(e["shape"])[0]
got = np.array(j["logits"], np.float32).reshape(j["shape"])
assert got.shape == ref.shape, (got.shape, ref.shape)
d = float(np.abs(got - ref).max())
print(f"random llama: --print-logits = reference.py logits (max abs diff {d:.1e} over {got.shape})")
sys.exit(0 if d <= 1e-4 else 1)
PY
  "$gen" --model "$hf/hf" --prompts-file "$tmp/none.jsonl" --print-logits > /dev/null 2> "$tmp/err" && fail "--print-logits with --prompts-file accepted"
  grep -q "print-logits takes one prompt" "$tmp/err" || fail "--print-logits + --prompts-file: $(cat "$tmp/err")"
fi

if [ -n "$stories" ] && [ $have_py = 1 ] && "$py" -c "import torch" 2>/dev/null; then
  "$py" "$refpy" llama2c "$stories" "$tmp/s260" > /dev/null || fail "reference.py llama2c failed"
  want=$(st gen "$tmp/s260/ref.safetensors")
  got=$(ids --model "$stories" --prompt-ids "1" --max-new-tokens 32 --temperature 0) || fail "generate failed"
  [ "$got" = "$want" ] || fail "stories260K greedy ids differ from reference.py llama2c:
  got  $got
  want $want"
  echo "stories260K: greedy = reference"
fi
if [ -n "$stories" ]; then
  s() { ids --model "$stories" --prompt-ids "1" --max-new-tokens 32 --temperature 1.0 --top-p 0.9 "$@"; }
  a=$(s --seed 7); b=$(s --seed 7); c=$(s --seed 8)
  [ "$(echo "$a" | wc -w)" -eq 32 ] || fail "sampling gave '$a'"
  [ "$a" = "$b" ] || fail "same seed, different ids:
  $a
  $b"
  [ "$a" != "$c" ] || fail "seeds 7 and 8 sampled the same 32 ids: $a"
  greedy=$(ids --model "$stories" --prompt-ids "1" --max-new-tokens 32 --temperature 0)
  tiny=$(ids --model "$stories" --prompt-ids "1" --max-new-tokens 32 --temperature 1.0 --top-p 1e-6 --seed 7)
  [ "$tiny" = "$greedy" ] || fail "stories260K: top-p 1e-6 should be greedy"
  [ "$a" != "$greedy" ] || fail "temperature 1.0 sampling equals greedy"
  echo "stories260K: seed 7 twice equal, seed 8 differs; top-p 1e-6 = greedy"
fi

# ---- bad input: exit 1, the option or item named, no LibTorch backtrace ----
model=${hf:+$hf/hf}; model=${model:-$stories}
expect_error() {  # WANT ARGS...
  want=$1; shift
  err=$("$gen" --model "$model" "$@" 2>&1); rc=$?
  [ $rc -eq 1 ] || fail "$* should exit 1 (got $rc): $err"
  echo "$err" | grep -qF -- "$want" || fail "$*: expected '$want' in: $err"
  echo "$err" | grep -q "frame #\|Exception raised" && fail "$*: LibTorch backtrace printed: $err"
  return 0
}
expect_error "'x' (item 3) is not an integer" --prompt-ids "1,2,x"
expect_error "'1.5' (item 1) is not an integer" --prompt-ids "1.5"
expect_error "'-3' (item 2) is negative" --prompt-ids "1 -3"
expect_error "prompt id 99999 (item 2) is outside the vocabulary" --prompt-ids "1, 99999"
expect_error "--max-new-tokens must be at least 1" --prompt-ids 1 --max-new-tokens -5
expect_error "--max-new-tokens must be at least 1" --prompt-ids 1 --max-new-tokens 0
expect_error "--temperature must be a finite number >= 0" --prompt-ids 1 --temperature -1
expect_error "--temperature must be a finite number >= 0" --prompt-ids 1 --temperature nan
expect_error "--top-p must be in (0, 1]" --prompt-ids 1 --top-p 0
expect_error "--top-p must be in (0, 1]" --prompt-ids 1 --top-p 1.5
expect_error "--threads must be >= 0" --prompt-ids 1 --threads -1
# --threads 100000 spent minutes and GBs starting threads (found probing); now refused before loading.
expect_error "--threads 100000 is more than the" --prompt-ids 1 --threads 100000
# A continuation cut at max_position_embeddings says so on stderr (it was silent: 254 of 1000 tokens).
maxpos=$("$py" -c "import json, sys; print(json.load(open(sys.argv[1]))['max_position_embeddings'])" "$model/config.json" 2>/dev/null)
if [ -n "$hf" ] && [ -n "$maxpos" ]; then
  "$gen" --model "$model" --prompt-ids "1" --max-new-tokens $((maxpos + 10)) --print-ids --no-stop > "$tmp/cut.out" 2> "$tmp/cut.err" ||
    fail "generation up to max_position_embeddings failed: $(cat "$tmp/cut.err")"
  [ "$(wc -w < "$tmp/cut.out")" -eq $((maxpos - 1)) ] || fail "expected $((maxpos - 1)) ids, got $(wc -w < "$tmp/cut.out")"
  grep -q "generated $((maxpos - 1)) of --max-new-tokens $((maxpos + 10)).*max_position_embeddings $maxpos" "$tmp/cut.err" ||
    fail "no note that max_position_embeddings cut the continuation: $(cat "$tmp/cut.err")"
fi
# An empty --prompts-file was exit 0 with no output at all.
: > "$tmp/empty.jsonl"
if [ -f "$stories" ]; then
  err=$("$gen" --model "$stories" --prompts-file "$tmp/empty.jsonl" --tokenizer byte 2>&1) && fail "an empty --prompts-file was accepted: $err"
  echo "$err" | grep -q "empty.jsonl' holds no prompts" && echo "$err" | grep -q HINT || fail "empty --prompts-file: $err"
fi
# A --prompts-file line nested 300,000 deep: refused by the depth pre-scan, naming file and line.
"$py" -c "import sys; open(sys.argv[1], 'w').write('{\"prompt\": ' + '[' * 300000 + ']' * 300000 + '}\n')" "$tmp/deep.jsonl"
[ -f "$stories" ] && "$gen" --model "$stories" --prompts-file "$tmp/deep.jsonl" --tokenizer byte --max-new-tokens 1 \
  > "$tmp/deep.out" 2>&1 && fail "a --prompts-file line nested 300,000 deep was accepted"
[ -f "$stories" ] && { grep -q "deep.jsonl:1: JSON nested deeper than" "$tmp/deep.out" || fail "deep --prompts-file line: $(cat "$tmp/deep.out")"; }
# A tokenizer with more ids (byte: 259) than the model's vocabulary: refused before any id reaches the embedding.
[ -n "$hf" ] && expect_error "has a vocabulary of" --prompt "hi" --tokenizer byte  # the random Llama: 97 ids
err=$("$gen" --model /nonexistent/model --prompt-ids "1" 2>&1); rc=$?
[ $rc -eq 1 ] && echo "$err" | grep -q "HINT" || fail "missing model should exit 1 with a hint: $err"
spaced=$(ids --model "$model" --prompt-ids "1 2 3" --max-new-tokens 4 --temperature 0)
commas=$(ids --model "$model" --prompt-ids "1,2, 3" --max-new-tokens 4 --temperature 0)
[ -n "$spaced" ] && [ "$spaced" = "$commas" ] || fail "comma-separated ids differ from space-separated: '$commas' vs '$spaced'"

# ---- allocation failure: one line with the size and a hint ----
if [ -n "$hf" ]; then
  cp -r "$hf/hf" "$tmp/huge"
  "$py" -c "
import json, sys
p = sys.argv[1] + '/config.json'; c = json.load(open(p)); c['max_position_embeddings'] = 2 ** 24
json.dump(c, open(p, 'w'))" "$tmp/huge"
  # 2^24 positions (the largest config.json may ask for) need GBs of KV cache: with the address space
  # limited to 3 GB (the program itself needs well under 1 GB), that allocation fails for real.
  (ulimit -v 3000000; "$gen" --model "$tmp/huge" --prompt-ids 1 --max-new-tokens 100000000) > "$tmp/oom.txt" 2>&1; rc=$?
  err=$(grep -v "^BLAS: " "$tmp/oom.txt")  # the BLAS core line is informational
  [ $rc -eq 1 ] || fail "absurd KV cache should exit 1 (got $rc): $err"
  echo "$err" | head -1 | grep -q "error: out of memory: tried to allocate [0-9.]* GB$" || fail "no one-line out-of-memory message: $err"
  echo "$err" | grep -q "HINT" || fail "out-of-memory message without a hint: $err"
  [ "$(echo "$err" | wc -l)" -le 3 ] || fail "out-of-memory message is not short: $err"
  echo "allocation failure: $(echo "$err" | head -1)"
fi
echo "PASSED"
