// load_tokenizer(): turns a SPEC (see tokenizer.h) into a tokenizer, with errors that say what was looked for.
#include <filesystem>

#include "loaders.h"
#include "shardtune/core/error.h"

namespace shardtune {

namespace stdfs = std::filesystem;

namespace {

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

[[noreturn]] void sentencepiece_only(const std::string& spec) {
  ST_FAIL("'" + spec + "' is a SentencePiece model; only shardtune-prep and shardtune-tokenize read .model files, "
          "other programs need the model's tokenizer.json",
          "pass the tokenizer.json (Hugging Face repos ship one next to tokenizer.model); SentencePiece is kept "
          "out of the programs that link libtorch because the two libraries crash in one process");
}

void require_file(const stdfs::path& p, const std::string& spec) {
  ST_CHECK(stdfs::exists(p), "tokenizer file " + p.string() + " does not exist (from spec '" + spec + "')",
           "check the path; a SPEC is 'byte', a tokenizer.json, a folder, or encoder.json,vocab.bpe");
  ST_CHECK(stdfs::is_regular_file(p), "tokenizer path " + p.string() + " is not a regular file",
           "pass the file itself or the folder that holds tokenizer.json");
}

}  // namespace

std::unique_ptr<Tokenizer> load_tokenizer(const std::string& spec) {
  ST_CHECK(!spec.empty(), "empty tokenizer spec", "pass 'byte', a tokenizer.json, a folder, or encoder.json,vocab.bpe");
  if (spec == "byte") return tok::make_byte_tokenizer();
  if (ends_with(spec, ".model")) sentencepiece_only(spec);

  auto comma = spec.find(',');
  if (comma != std::string::npos) {
    stdfs::path a = spec.substr(0, comma), b = spec.substr(comma + 1);
    require_file(a, spec);
    require_file(b, spec);
    return tok::load_gpt2_files(a, b);
  }

  stdfs::path p = spec;
  ST_CHECK(stdfs::exists(p), "tokenizer '" + spec + "' not found (no such file or folder)",
           "a SPEC is 'byte', path/to/tokenizer.json, a folder holding tokenizer.json (or encoder.json + vocab.bpe, "
           "or vocab.json + merges.txt), or encoder.json,vocab.bpe");
  if (stdfs::is_directory(p)) {
    if (stdfs::exists(p / "tokenizer.json")) return tok::load_hf_json(p / "tokenizer.json");
    if (stdfs::exists(p / "encoder.json") && stdfs::exists(p / "vocab.bpe"))
      return tok::load_gpt2_files(p / "encoder.json", p / "vocab.bpe");
    if (stdfs::exists(p / "vocab.json") && stdfs::exists(p / "merges.txt"))
      return tok::load_gpt2_files(p / "vocab.json", p / "merges.txt");
    if (stdfs::exists(p / "tokenizer.model")) sentencepiece_only((p / "tokenizer.model").string());
    ST_FAIL("folder " + spec + " holds no tokenizer (looked for tokenizer.json, encoder.json + vocab.bpe, "
                "vocab.json + merges.txt)",
            "pass the folder of the model's tokenizer files, or one file");
  }
  require_file(p, spec);
  std::string fname = p.filename().string();
  if (fname == "encoder.json" || fname == "vocab.json") {
    for (const char* m : {"vocab.bpe", "merges.txt"})
      if (stdfs::exists(p.parent_path() / m)) return tok::load_gpt2_files(p, p.parent_path() / m);
    ST_FAIL(spec + " is a GPT-2 vocabulary but no vocab.bpe or merges.txt is beside it",
            "pass both files as encoder.json,vocab.bpe");
  }
  return tok::load_hf_json(p);
}

}  // namespace shardtune
