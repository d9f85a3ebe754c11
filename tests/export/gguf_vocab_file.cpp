// Test helper: writes a tensor-less GGUF holding only a tiny Llama's hyperparameters and the tokenizer
// metadata of SPEC (add_tokenizer_metadata), which llama.cpp loads with vocab_only to tokenize.
// usage: gguf_vocab_file SPEC OUT.gguf [MODEL_VOCAB]   (MODEL_VOCAB default: the tokenizer's own size)
#include <cstdio>
#include <string>

#include "shardtune/core/error.h"
#include "shardtune/export/gguf.h"
#include "shardtune/export/gguf_vocab.h"
#include "shardtune/tokenizer/tokenizer.h"
#include "shardtune/export/sentencepiece_model.h"

namespace {

int body(int argc, char** argv) {
  if (argc < 3 || argc > 4) {
    std::fprintf(stderr, "usage: gguf_vocab_file SPEC OUT.gguf [MODEL_VOCAB]\n");
    return 2;
  }
  const std::string spec = argv[1];
  int64_t vocab = argc == 4 ? std::stoll(argv[3]) : 0;
  if (vocab == 0) {
    const bool sp = spec.size() > 6 && spec.compare(spec.size() - 6, 6, ".model") == 0;
    vocab = sp ? static_cast<int64_t>(shardtune::sp::read_model(spec).pieces.size())
               : shardtune::load_tokenizer(spec)->vocab_size();
  }
  shardtune::gguf::Writer w;
  w.set("general.architecture", std::string("llama"));
  w.set("general.name", std::string("vocab-only"));
  w.set("llama.context_length", uint32_t{256});
  w.set("llama.embedding_length", uint32_t{64});
  w.set("llama.block_count", uint32_t{1});
  w.set("llama.feed_forward_length", uint32_t{128});
  w.set("llama.attention.head_count", uint32_t{4});
  w.set("llama.attention.head_count_kv", uint32_t{4});
  w.set("llama.rope.dimension_count", uint32_t{16});
  w.set("llama.attention.layer_norm_rms_epsilon", 1e-5f);
  w.set("llama.vocab_size", static_cast<uint32_t>(vocab));
  shardtune::gguf::add_tokenizer_metadata(w, {spec, vocab, ""});
  w.write(argv[2], /*overwrite=*/true);
  return 0;
}

}  // namespace

int main(int argc, char** argv) { return shardtune::run_guarded("gguf_vocab_file", body, argc, argv); }
