// A SentencePiece `.model` read directly from its protobuf wire format (sentencepiece_model.proto's
// ModelProto), without libsentencepiece: this code is linked into programs that load LibTorch, and the
// two libraries must never share a process. Only the fields GGUF export needs are kept; every other
// field is skipped by its wire type, so newer models with more fields still read.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

namespace shardtune::sp {

// ModelProto.SentencePiece.Type; the values are those of the proto (and of llama.cpp's token types).
enum class PieceType : int32_t { NORMAL = 1, UNKNOWN = 2, CONTROL = 3, USER_DEFINED = 4, UNUSED = 5, BYTE = 6 };

// TrainerSpec.ModelType.
enum class ModelType : int32_t { UNIGRAM = 1, BPE = 2, WORD = 3, CHAR = 4 };

struct Piece {
  std::string piece;
  float score = 0.0f;
  PieceType type = PieceType::NORMAL;
};

struct Model {
  std::vector<Piece> pieces;  // in id order
  // TrainerSpec (proto defaults where the field is absent)
  ModelType model_type = ModelType::UNIGRAM;
  bool byte_fallback = false;
  int32_t unk_id = 0, bos_id = 1, eos_id = 2, pad_id = -1;  // -1 = none
  // NormalizerSpec
  std::string normalizer_name;      // "identity", "nmt_nfkc", ... ("" when absent)
  bool has_charsmap = false;        // a non-empty precompiled_charsmap (a normalization table)
  bool add_dummy_prefix = true;
  bool remove_extra_whitespaces = true;
  bool escape_whitespaces = true;
};

// Reads and checks `path` (Error naming the file and the byte offset of a malformed field).
Model read_model(const std::filesystem::path& path);
// The same from bytes already in memory; `name` is used in error messages.
Model parse_model(const std::string& bytes, const std::string& name);

}  // namespace shardtune::sp
