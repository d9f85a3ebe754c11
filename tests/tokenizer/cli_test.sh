#!/usr/bin/env bash
# shardtune-tokenize end to end with the byte tokenizer (always available): encode, --add-special,
# --parse-special, --decode round trip, --info, and a clear error for a missing tokenizer.
set -euo pipefail
TOK="$1"
fail() { echo "FAIL: $*"; exit 1; }

out=$(printf 'Hi\n<s>x\n' | "$TOK" --tokenizer byte)
[ "$out" = $'72 105\n60 115 62 120' ] || fail "encode: $out"
out=$(printf 'Hi\n' | "$TOK" --tokenizer byte --add-special)
[ "$out" = "256 72 105" ] || fail "--add-special: $out"
out=$(printf '<s>x</s>\n' | "$TOK" --tokenizer byte --parse-special)
[ "$out" = "256 120 257" ] || fail "--parse-special: $out"
text=$'héllo wörld 😀\tend'
out=$(printf '%s\n' "$text" | "$TOK" --tokenizer byte | "$TOK" --tokenizer byte --decode)
[ "$out" = "$text" ] || fail "--decode round trip: $out"
out=$(printf '256 72 105 257\n' | "$TOK" --tokenizer byte --decode --skip-special)
[ "$out" = "Hi" ] || fail "--skip-special: $out"
info=$("$TOK" --tokenizer byte --info)
grep -q '^vocab_size: 259$' <<<"$info" || fail "--info: $info"
grep -q '^add_bos: true$' <<<"$info" || fail "--info: $info"
if err=$("$TOK" --tokenizer /nonexistent/tokenizer.json --info 2>&1); then fail "missing file accepted"; fi
grep -q '/nonexistent/tokenizer.json' <<<"$err" || fail "error does not name the file: $err"
if err=$(printf 'x y\n' | "$TOK" --tokenizer byte --decode 2>&1); then fail "bad ids accepted"; fi
grep -q "not a token id" <<<"$err" || fail "bad --decode input: $err"
echo "shardtune-tokenize CLI: ok"
