// Tokenizer metadata for GGUF files (tokenizer.ggml.*), torch-free and without libsentencepiece, from the
// same SPECs shardtune-prep accepts:
//   - a SentencePiece `.model` (its protobuf read directly): tokenizer.ggml.model = "llama", tokens, scores,
//     token_type (NORMAL 1, UNKNOWN 2, CONTROL 3, USER_DEFINED 4, UNUSED 5, BYTE 6);
//   - a Hugging Face tokenizer.json: byte-level BPE -> "gpt2" with tokens, merges, token_type and the
//     tokenizer.ggml.pre llama.cpp needs for its pre-tokenizer regex; SentencePiece-style BPE (Llama 2 /
//     Mistral, byte_fallback) -> "llama" with scores derived as llama.cpp's converter does;
//   - GPT-2 encoder.json + vocab.bpe (or vocab.json + merges.txt) -> "gpt2", pre "gpt-2".
// Plus bos/eos/unk/padding token ids, add_bos_token/add_eos_token and tokenizer.chat_template when given.
// A tokenizer that cannot be expressed (the byte tokenizer, an unsupported pre-tokenizer) or whose
// vocabulary does not fit the model is an Error naming the SPEC and what to do; nothing is written.
#pragma once

#include <cstdint>
#include <string>

#include "shardtune/export/gguf.h"

namespace shardtune::gguf {

struct VocabOptions {
  std::string spec;            // tokenizer SPEC (docs/TOKENIZERS.md)
  int64_t model_vocab = 0;     // rows of the model's embedding; tokenizer ids must fit (padded to it)
  std::string chat_template;   // "" = none written
};

// Sets every tokenizer.ggml.* key on `w`. Returns the number of tokens written (= model_vocab).
int64_t add_tokenizer_metadata(Writer& w, const VocabOptions& opts);

}  // namespace shardtune::gguf
