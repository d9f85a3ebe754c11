#!/usr/bin/env bash
# The main job on a fresh clone, end to end with an embedded default (no cluster, no GPU, no files from
# outside the repo, no network after the package install): install what is missing, build, then
#   1. make a tiny random Llama (fixed seed) and pre-train it briefly with shardtune on a generated generic
#      corpus -> the "base model" (it writes English-like words but has never seen the task);
#   2. make task data (uppercase a word: "Uppercase:\nkelp\n" -> "KELP"), prepare shards on 2 MPI ranks;
#   3. fine-tune the base model on 2 MPI ranks (DDP, CPU);
#   4. evaluate before/after: exact match of greedy generations on 200 held-out words (shardtune-generate
#      --prompts-file: one process per model generates every prompt);
#   5. LoRA: train an adapter for the same task on the same ranks (--method lora, the base frozen), merge it
#      into a full model (shardtune-export merge), and evaluate both ways: the base with the adapter applied
#      unmerged (shardtune-generate --adapter) and the merged model must give the same exact-match score;
#   6. export the tuned model to GGUF (shardtune-export gguf, f16, byte tokenizer) and, where node-llama-cpp is
#      installed (tools/setup.sh st_install_llama_cpp; the step is skipped otherwise), show the real llama.cpp's
#      greedy answers to DEMO_GGUF_N held-out prompts next to shardtune-generate's and whether they agree;
#   7. write the loss curves (train + validation, every run) to demo-out/loss.png;
#   DEMO_MODE=dpo: 30% of the fine-tuning answers end with "!" (the tuned model knows both styles, greedy picks
#      the plain one), then after step 4 preference tuning of the tuned model: pairs whose chosen answer ends
#      with "!" and rejected is the plain answer (tools/demo/make_pairs.py), LoRA --objective dpo (default
#      --dpo-loss orpo, reference-free; with sigmoid/ipo/... the reference is the tuned model with the adapters
#      disabled), the held-out win rate of chosen-style completions before/after (tools/demo/dpo_eval.py) and
#      the loss and rewards/margin curves in demo-out/dpo.png.
# Knobs (environment): DEMO_DIR (output folder, default demo-out/), DEMO_TASK (upper|reverse),
# DEMO_PRETRAIN_STEPS (0: no pre-training), DEMO_STEPS (fine-tune), DEMO_EVAL_N (held-out prompts),
# DEMO_NP (ranks: 1, 2 or 4; default 2), DEMO_SKIP_BUILD=1 (use the binaries already in BUILD_DIR),
# DEMO_LORA=0 (skip the LoRA part), DEMO_LORA_STEPS, DEMO_LORA_R, DEMO_LORA_LR, DEMO_GGUF_N (0: no GGUF step),
# DEMO_MODE (unset, or dpo), DEMO_DPO_STEPS, DEMO_DPO_LR, DEMO_DPO_BETA, DEMO_DPO_LOSS (orpo; sigmoid, ipo, ...).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
if [ "${DEMO_SKIP_BUILD:-0}" = 1 ]; then
  [ -x "$BUILD_DIR/src/shardtune" ] || { echo "demo: DEMO_SKIP_BUILD=1 but $BUILD_DIR has no shardtune" >&2; exit 1; }
else
  st_install_apt
  st_build
  # llama.cpp for the GGUF step (node-llama-cpp, ~85 MB): the demo runs without it.
  st_install_llama_cpp || echo "demo: node-llama-cpp did not install: the llama.cpp step will be skipped"
fi

OUT="${DEMO_DIR:-$ROOT/demo-out}"
TASK="${DEMO_TASK:-upper}"
PRETRAIN_STEPS="${DEMO_PRETRAIN_STEPS:-120}"
STEPS="${DEMO_STEPS:-800}"
EVAL_N="${DEMO_EVAL_N:-200}"
NP="${DEMO_NP:-2}"
LORA="${DEMO_LORA:-1}"
LORA_STEPS="${DEMO_LORA_STEPS:-800}"
LORA_R="${DEMO_LORA_R:-64}"
LORA_LR="${DEMO_LORA_LR:-2e-3}"
GGUF_N="${DEMO_GGUF_N:-2}"
MODE="${DEMO_MODE:-}"
DPO_STEPS="${DEMO_DPO_STEPS:-40}"
DPO_LR="${DEMO_DPO_LR:-1e-3}"
DPO_BETA="${DEMO_DPO_BETA:-0.5}"
DPO_LOSS="${DEMO_DPO_LOSS:-orpo}"
PY=/usr/bin/python3   # Debian's python3 with python3-torch/numpy/h5py/matplotlib (tools/setup.sh installs them)
MPIRUN=(mpirun -np "$NP")
[ "$(id -u)" -eq 0 ] && MPIRUN+=(--allow-run-as-root)
MPIRUN+=(--oversubscribe)
PREP="$BUILD_DIR/data_prep/shardtune-prep"
TRAIN="$BUILD_DIR/src/shardtune"
GEN="$BUILD_DIR/tools/shardtune-generate"
EXPORT="$BUILD_DIR/tools/shardtune-export"

# Outputs of a previous run are replaced (shardtune itself never overwrites: each run gets new folders).
mkdir -p "$OUT"
rm -rf "$OUT"/{base-init,base,tuned,lora,merged,corpus-shards,shards} "$OUT"/*.jsonl \
  "$OUT"/{eval.json,eval-lora.json,summary.txt,summary-lora.txt,loss.png,tuned.gguf} \
  "$OUT"/{dpo,pairs,dpo.png,summary-dpo.txt}
T0=$SECONDS
stage() { echo; echo "== demo [$((SECONDS - T0)) s]: $*"; }

TITLE="$([ "$TASK" = upper ] && echo "uppercase a word" || echo "reverse a word")"

stage "base model: tiny random Llama (fixed seed)$([ "$PRETRAIN_STEPS" -gt 0 ] && echo ", briefly pre-trained on a generated generic corpus")"
$PY "$ROOT/tools/demo/make_base.py" "$OUT/base-init" --hidden 128 --layers 2 --heads 4 --seed 1234
PLOTS=()
if [ "$PRETRAIN_STEPS" -gt 0 ]; then
  $PY "$ROOT/tools/demo/make_corpus.py" "$OUT/corpus.jsonl" 4000
  "${MPIRUN[@]}" "$PREP" --input "$OUT/corpus.jsonl" --output "$OUT/corpus-shards" --tokenizer byte \
    --max-seq-len 128 --val-fraction 0.02 --threads 1 --quiet
  "${MPIRUN[@]}" "$TRAIN" --model "$OUT/base-init" --data "$OUT/corpus-shards" --out "$OUT/base" \
    --steps "$PRETRAIN_STEPS" --global-batch 8 --micro-batch $((8 / NP)) --seq-len 128 --pack --lr 3e-3 \
    --warmup-steps 20 --schedule cosine --min-lr 3e-4 --eval-every 20 --eval-batches 4 --log-every 40 --threads 1 \
    --metrics "$OUT/pretrain.jsonl"
  PLOTS+=("pre-training: generic generated corpus ($PRETRAIN_STEPS steps)=$OUT/pretrain.jsonl")
else
  cp -r "$OUT/base-init" "$OUT/base"   # DEMO_PRETRAIN_STEPS=0: the random model is the base
fi

stage "task data ($TITLE), shardtune-prep on $NP ranks (byte tokenizer, plain template, 2% validation)"
$PY "$ROOT/tools/demo/make_task.py" "$OUT/train.jsonl" "$OUT/heldout.jsonl" 20000 --task "$TASK" \
  $([ "$MODE" = dpo ] && echo --excited-fraction 0.3)
"${MPIRUN[@]}" "$PREP" --input "$OUT/train.jsonl" --output "$OUT/shards" --tokenizer byte --template plain \
  --max-seq-len 64 --val-fraction 0.02 --threads 1 --quiet
"$BUILD_DIR/tools/shardtune-inspect" "$OUT/shards" --verify

stage "fine-tune the base model on $NP ranks: $STEPS steps x 32 samples (full, DDP, --precision auto, CPU)"
"${MPIRUN[@]}" "$TRAIN" --model "$OUT/base" --data "$OUT/shards" --out "$OUT/tuned" \
  --steps "$STEPS" --global-batch 32 --micro-batch $((32 / NP)) --seq-len 64 --lr 3e-3 --warmup-steps 30 \
  --schedule cosine --eval-every 50 --eval-batches 4 --log-every 50 --threads 1 --metrics "$OUT/finetune.jsonl"

stage "generate before/after (greedy) on $EVAL_N held-out words the model never trained on"
# One prompt through shardtune-generate's text path (byte tokenizer), base and fine-tuned model.
PROMPT="$(head -1 "$OUT/heldout.jsonl" | $PY -c 'import json,sys; r=json.load(sys.stdin); print(r["instruction"] + "\n" + r["input"])')"$'\n'
echo "shardtune-generate --tokenizer byte --temperature 0 --prompt $(printf '%q' "$PROMPT")"
for m in base tuned; do
  "$GEN" --model "$OUT/$m" --tokenizer byte --prompt "$PROMPT" --max-new-tokens 24 --temperature 0 --threads 1 |
    $PY -c 'import sys; p, m = sys.argv[1], sys.argv[2]; t = sys.stdin.buffer.read().decode("utf-8", "replace")[:-1]
print(f"  {m:<6} -> {t[len(p):]!r}" if t.startswith(p) else f"  {m:<6} -> (whole text) {t!r}")' "$PROMPT" "$m"
done
echo
$PY "$ROOT/tools/demo/evaluate.py" --generate "$GEN" --heldout "$OUT/heldout.jsonl" --n "$EVAL_N" \
  --model base="$OUT/base" --model tuned="$OUT/tuned" --examples 5 --json "$OUT/eval.json" --summary "$OUT/summary.txt"
SUMMARY="$(cat "$OUT/summary.txt")"
PLOTS+=("fine-tuning: $TITLE ($STEPS steps)=$OUT/finetune.jsonl")

DPO_SUMMARY=""
if [ "$MODE" = dpo ]; then
  stage "DPO: preference pairs (chosen: the answer + '!', rejected: the plain answer), shardtune-prep --format preference"
  $PY "$ROOT/tools/demo/make_pairs.py" "$OUT/train.jsonl" "$OUT/pairs.jsonl" 4000
  "${MPIRUN[@]}" "$PREP" --input "$OUT/pairs.jsonl" --output "$OUT/pairs" --tokenizer byte --format preference \
    --template plain --max-seq-len 64 --val-fraction 0.02 --threads 1 --quiet
  stage "DPO on $NP ranks: LoRA r 16 on the fine-tuned model, --dpo-loss $DPO_LOSS ($(case $DPO_LOSS in orpo|simpo) echo "no reference" ;; *) echo "reference = the same model with the adapters disabled" ;; esac)), $DPO_STEPS steps x 32 pairs, beta $DPO_BETA"
  "${MPIRUN[@]}" "$TRAIN" --objective dpo --dpo-loss "$DPO_LOSS" --beta "$DPO_BETA" --method lora --lora-r 16 --lora-alpha 32 \
    --lora-targets all-linear --model "$OUT/tuned" --data "$OUT/pairs" --out "$OUT/dpo" --steps "$DPO_STEPS" \
    --global-batch 32 --micro-batch $((32 / NP)) --seq-len 64 --lr "$DPO_LR" --warmup-steps 5 --schedule cosine \
    --eval-every 20 --eval-batches 2 --log-every 10 --threads 1 --metrics "$OUT/dpo.jsonl"
  stage "DPO before/after (greedy) on $EVAL_N held-out prompts: win rate of chosen-style completions (ends with '!')"
  $PY "$ROOT/tools/demo/dpo_eval.py" --generate "$GEN" --heldout "$OUT/heldout.jsonl" --n "$EVAL_N" \
    --model tuned="$OUT/tuned" --model tuned+dpo="$OUT/tuned" --adapter tuned+dpo="$OUT/dpo" \
    --summary "$OUT/summary-dpo.txt"
  DPO_SUMMARY="$(cat "$OUT/summary-dpo.txt")"
  $PY "$ROOT/tools/demo/plot_dpo.py" "$OUT/dpo.png" "$OUT/dpo.jsonl" \
    --title "shardtune demo: LoRA --objective dpo --dpo-loss $DPO_LOSS toward answers ending in '!' ($NP MPI ranks, CPU)" --note "$DPO_SUMMARY"
fi

LORA_SUMMARY=""
if [ "$LORA" != 0 ]; then
  # The adapter must learn to copy letters through attention with the embeddings and head frozen: on this
  # 2-layer, hidden-128 base it learns far more slowly than full fine-tuning (at r 16 it stays on the
  # plateau where it writes the right number of capitals but guesses them; r 64 leaves it sooner).
  stage "LoRA on $NP ranks: $LORA_STEPS steps x 32 samples, r $LORA_R on every linear module, the base frozen -> adapter $OUT/lora"
  "${MPIRUN[@]}" "$TRAIN" --method lora --lora-r "$LORA_R" --lora-alpha $((2 * LORA_R)) --lora-targets all-linear \
    --model "$OUT/base" --data "$OUT/shards" --out "$OUT/lora" \
    --steps "$LORA_STEPS" --global-batch 32 --micro-batch $((32 / NP)) --seq-len 64 --lr "$LORA_LR" --warmup-steps 30 \
    --schedule cosine --eval-every 50 --eval-batches 4 --log-every 50 --threads 1 --metrics "$OUT/lora.jsonl"
  ls "$OUT/lora"
  PLOTS+=("LoRA: $TITLE ($LORA_STEPS steps, r $LORA_R)=$OUT/lora.jsonl")
  EVAL=(--model base="$OUT/base" --model base+adapter="$OUT/base" --adapter base+adapter="$OUT/lora")
  if [ -x "$EXPORT" ]; then
    stage "merge the adapter into the base: shardtune-export merge -> $OUT/merged (a full HF model)"
    "$EXPORT" merge --model "$OUT/base" --adapter "$OUT/lora" --out "$OUT/merged"
    EVAL+=(--model merged="$OUT/merged")
  else
    stage "merge skipped: $EXPORT is not built (cmake --build $BUILD_DIR --target shardtune-export)"
  fi
  stage "LoRA before/after (greedy) on the same $EVAL_N held-out words: base, base + adapter (unmerged), merged"
  $PY "$ROOT/tools/demo/evaluate.py" --generate "$GEN" --heldout "$OUT/heldout.jsonl" --n "$EVAL_N" "${EVAL[@]}" \
    --examples 5 --json "$OUT/eval-lora.json" --summary "$OUT/summary-lora.txt"
  # The adapter applied on top and merged into the weights are the same model: same score (and, greedy, the
  # same text for every prompt up to float rounding of the merge).
  $PY - "$OUT/eval-lora.json" <<'PYEOF'
import json, sys
m = json.load(open(sys.argv[1]))["models"]
if "merged" in m:
    a, b = m["base+adapter"], m["merged"]
    same = sum(x == y for x, y in zip(a["outputs"], b["outputs"]))
    print(f"adapter unmerged vs merged: {a['correct']} vs {b['correct']} exact matches; identical outputs on "
          f"{same}/{len(a['outputs'])} prompts")
    if a["correct"] != b["correct"]:
        sys.exit("demo: the merged model's exact-match score differs from the unmerged adapter's")
PYEOF
  LORA_SUMMARY="LoRA: $(cat "$OUT/summary-lora.txt")"
fi

if [ "$GGUF_N" -gt 0 ] && [ -x "$EXPORT" ]; then
  stage "export the tuned model to GGUF for llama.cpp / Ollama / LM Studio -> $OUT/tuned.gguf (f16)"
  "$EXPORT" gguf --model "$OUT/tuned" --tokenizer byte --dtype f16 --out "$OUT/tuned.gguf"
  "$BUILD_DIR/tools/shardtune-inspect" "$OUT/tuned.gguf" | tail -1
  stage "the same held-out prompts in the real llama.cpp (node-llama-cpp) and shardtune-generate (greedy)"
  ST_LLAMA_CPP="$BUILD_DIR/node_llama/node_modules" $PY "$ROOT/tools/demo/llama_cpp_answer.py" \
    --gguf "$OUT/tuned.gguf" --model "$OUT/tuned" --generate "$GEN" --heldout "$OUT/heldout.jsonl" --n "$GGUF_N" ||
    echo "demo: llama.cpp's answers or tokens differ from shardtune-generate's (see above)" >&2
  echo "run it in llama.cpp: llama-completion -m $OUT/tuned.gguf -no-cnv -p \"\$(printf '$([ "$TASK" = upper ] && echo Uppercase || echo Reverse):\\nkelp\\n')\" -n 8 --temp 0   (README: The demo)"
fi

stage "loss curves -> $OUT/loss.png"
$PY "$ROOT/tools/demo/plot_loss.py" "$OUT/loss.png" --title "shardtune demo: loss curves ($NP MPI ranks, CPU)" \
  --note "$SUMMARY${LORA_SUMMARY:+
$LORA_SUMMARY}" "${PLOTS[@]}"

stage "done in $((SECONDS - T0)) s (after the build)"
echo "$SUMMARY"
[ -n "$LORA_SUMMARY" ] && echo "$LORA_SUMMARY"
[ -n "$DPO_SUMMARY" ] && echo "$DPO_SUMMARY (curves: $OUT/dpo.png)"
echo "outputs in $OUT: base/ and tuned/ (HF models), pretrain.jsonl + finetune.jsonl (metrics), eval.json, loss.png$([ -f "$OUT/tuned.gguf" ] && echo ", tuned.gguf")"
[ "$LORA" != 0 ] && echo "  LoRA: lora/ (PEFT adapter), lora.jsonl (metrics), eval-lora.json$([ -d "$OUT/merged" ] && echo ", merged/ (HF model)")"
true
