// SentencePiece `.model` tokenizers (via libsentencepiece) and the loader that prep-side programs use.
// Only shardtune-prep / shardtune-tokenize link this: libsentencepiece and libtorch crash in one process.
#pragma once

#include <memory>
#include <string>

#include "shardtune/tokenizer/tokenizer.h"

namespace shardtune {

// Loads a SentencePiece model file (name "sentencepiece", add_bos=true, bos/eos/pad from the model).
std::unique_ptr<Tokenizer> load_sentencepiece(const std::string& model_path);

// Like load_tokenizer(), and also accepts a SentencePiece ".model" file (or a folder whose only
// tokenizer is tokenizer.model).
std::unique_ptr<Tokenizer> load_tokenizer_any(const std::string& spec);

}  // namespace shardtune
