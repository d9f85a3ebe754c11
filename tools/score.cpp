// shardtune-score: the rewards a reward model (--objective reward's output: an HF folder with score.weight,
// or a base plus the LoRA adapter folder carrying the head) gives preference pairs or single completions.
// --data: the pairs of a shardtune-prep folder, one JSONL line per pair {"pair", "chosen", "rejected"}.
// --input: a JSONL file of pairs ({"line", "chosen", "rejected"} each) or of completions/texts ({"line",
// "reward"} each), tokenized as shardtune-prep tokenizes them (data_prep/score_input.h) with the model
// folder's tokenizer (shardtune_tokenizer.json) or --tokenizer. A summary line ends the output.
// This is a LibTorch process: it never loads libsentencepiece (shardtune_tokenizer only, as generate).
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>
#include <simdjson.h>

#include <filesystem>
#include <fstream>
#include <iostream>

#include "score_input.h"  // data_prep: the records library (no SentencePiece)
#include "shardtune/core/error.h"
#include "shardtune/core/hw.h"
#include "shardtune/data/dataset.h"
#include "shardtune/export/tokenizer_record.h"
#include "shardtune/model/adapter.h"
#include "shardtune/model/io.h"
#include "shardtune/model/runtime.h"
#include "shardtune/tokenizer/tokenizer.h"
#include "shardtune/train/reward.h"

namespace sm = shardtune::model;
namespace sd = shardtune::data;
namespace sp = shardtune::prep;
namespace stdfs = std::filesystem;

namespace {

std::shared_ptr<sm::CausalLM> load_reward_model(const std::string& model_path, const std::string& adapter) {
  auto model = sm::load_model(model_path);
  if (!adapter.empty()) {
    const bool was_reward = model->has_score_head();
    model->add_score_head(0, 0.0);  // a base LM: its head comes from the adapter below
    const bool has = shardtune::train::load_score_from_adapter(*model, adapter);
    ST_CHECK(has || was_reward,
             "--adapter '" + adapter + "' holds no score head (base_model.model.score.weight) and --model is no reward model",
             "give the adapter that shardtune --objective reward --method lora wrote");
    const sm::AdapterConfig acfg = sm::read_adapter_config(adapter);
    model->load_lora(acfg, sm::read_adapter_weights(adapter, acfg), adapter);
  }
  ST_CHECK(model->has_score_head(), "--model '" + model_path + "' is a causal LM, not a reward model (no score.weight)",
           "give the folder shardtune --objective reward saved (or the base with --adapter)");
  model->eval();
  return model;
}

// The rewards of a padded batch's rows at their last response token.
std::vector<double> batch_rewards(sm::CausalLM& model, const sd::HostBatch& hb) {
  const at::Tensor ids = at::from_blob(const_cast<int64_t*>(hb.ids.data()), {hb.B, hb.T}, at::kLong).clone();
  const at::Tensor r = model.rewards(ids, shardtune::train::last_response_positions(hb)).contiguous();
  return std::vector<double>(r.data_ptr<float>(), r.data_ptr<float>() + r.numel());
}

void print_pair(const char* key, int64_t id, double c, double j) {
  std::cout << nlohmann::json{{key, id}, {"chosen", c}, {"rejected", j}}.dump() << "\n";
}

void print_accuracy(int64_t n, int64_t right) {
  std::cout << nlohmann::json{{"pairs", n}, {"accuracy", n ? double(right) / double(n) : 0.0}}.dump() << "\n";
}

int score_folder(sm::CausalLM& model, const std::string& data, const std::string& split, int64_t batch) {
  auto set = sd::ShardSet::open(data, split, model.config().vocab_size);
  ST_CHECK(set->kind() == sd::DataKind::Preference, "--data '" + data + "' holds sequences, not preference pairs",
           "prepare the pairs with shardtune-prep --format preference");
  const int64_t pad = std::max<int64_t>(0, set->info().pad_id >= 0 ? set->info().pad_id : set->info().eos_id);
  int64_t n = 0, right = 0;
  for (int64_t first = 0; first < set->size(); first += batch) {
    std::vector<sd::PairSample> pairs(size_t(std::min(batch, set->size() - first)));
    int64_t longest = 1;
    for (size_t i = 0; i < pairs.size(); ++i) {
      set->read_pair(first + int64_t(i), pairs[i]);
      longest = std::max<int64_t>({longest, int64_t(pairs[i].chosen.size()), int64_t(pairs[i].rejected.size())});
    }
    const std::vector<double> r = batch_rewards(model, sd::make_pair_batch(pairs, longest, pad));
    const int64_t k = int64_t(pairs.size());
    for (int64_t i = 0; i < k; ++i) {
      right += r[size_t(i)] > r[size_t(k + i)];
      print_pair("pair", first + i, r[size_t(i)], r[size_t(k + i)]);
    }
    n += k;
  }
  print_accuracy(n, right);
  return 0;
}

// The tokenizer prep used: --tokenizer, else the one the adapter or model folder records
// (shardtune_tokenizer.json: the byte tokenizer by name, else the Hugging Face files beside it).
std::unique_ptr<shardtune::Tokenizer> resolve_tokenizer(const std::string& spec, const std::vector<std::string>& dirs) {
  if (!spec.empty()) return shardtune::load_tokenizer(spec);
  const char* hint = "give --tokenizer SPEC: the tokenizer shardtune-prep prepared the training data with";
  for (const std::string& d : dirs) {
    if (d.empty()) continue;
    const auto rec = shardtune::exporter::read_record_file(d);
    if (!rec) continue;
    const auto& r = rec->record;
    std::unique_ptr<shardtune::Tokenizer> tok;
    if (r.name == "byte") {
      tok = shardtune::load_tokenizer("byte");
    } else if (rec->hf_files.count("tokenizer.json")) {
      tok = shardtune::load_tokenizer((stdfs::path(d) / "tokenizer.json").string());
    } else if (rec->hf_files.count("vocab.json") && rec->hf_files.count("merges.txt")) {
      tok = shardtune::load_tokenizer(d);
    } else {
      ST_FAIL("the tokenizer '" + r.source + "' (" + r.name + ") recorded in " + d + "/" +
                  shardtune::exporter::kTokenizerRecordFile + " has no tokenizer.json or GPT-2 files in " + d +
                  (rec->hf_files.count("tokenizer.model") ? " (only a SentencePiece tokenizer.model, which a LibTorch "
                                                            "process cannot read)" : std::string()),
              "give --tokenizer with the model's tokenizer.json (a SentencePiece .model is read by shardtune-prep only)");
    }
    // The folder's files must be the tokenizer the record names (special ids, the BOS convention).
    auto same = [](std::optional<shardtune::TokenId> a, int64_t b) { return a ? int64_t(*a) == b : b < 0; };
    ST_CHECK(same(tok->bos_id, r.bos_id) && same(tok->eos_id, r.eos_id) && (!r.add_bos || *r.add_bos == tok->add_bos),
             "the tokenizer files in " + d + " do not match its " + shardtune::exporter::kTokenizerRecordFile +
                 " (BOS/EOS ids or add_bos differ)", hint);
    return tok;
  }
  ST_FAIL("no tokenizer: neither --adapter nor --model holds " + std::string(shardtune::exporter::kTokenizerRecordFile),
          hint);
}

struct Line {
  int64_t number;
  sp::ScoreSample sample;
};

int score_input(sm::CausalLM& model, const std::string& input, const shardtune::Tokenizer& tok,
                const sp::PromptTemplate& tpl, int64_t max_len, int64_t batch) {
  const int64_t positions = model.config().max_position_embeddings;
  std::ifstream in(input, std::ios::binary);
  ST_CHECK(in.good(), "cannot open --input '" + input + "'",
           "give a JSONL file of pairs {\"prompt\", \"chosen\", \"rejected\"} or completions {\"prompt\", \"completion\"}");
  // Every line is tokenized and checked before the first reward is printed: an error leaves no output
  // that looks complete.
  simdjson::dom::parser parser;
  std::vector<Line> lines;
  std::string text;
  int64_t first_pair_line = 0, first_single_line = 0;
  for (int64_t number = 1; std::getline(in, text); ++number) {
    if (number == 1 && text.compare(0, 3, "\xEF\xBB\xBF") == 0) text.erase(0, 3);  // a BOM, as prep skips it
    if (text.find_first_not_of(" \t\r\n") == std::string::npos) continue;
    const std::string where = input + ":" + std::to_string(number);
    Line l{number, {}};
    try {
      l.sample = sp::tokenize_score_line(parser, text, tpl, tok, max_len);
    } catch (const sp::RecordError& e) {
      ST_FAIL(where + ": " + e.message, "fix or remove this line");
    }
    const bool pair = l.sample.kind == sp::ScoreLine::Pair;
    int64_t& first_of_kind = pair ? first_pair_line : first_single_line;
    if (!first_of_kind) first_of_kind = number;
    ST_CHECK(!first_pair_line || !first_single_line,
             where + ": this file mixes pairs (first at line " + std::to_string(first_pair_line) +
                 ") and completions (first at line " + std::to_string(first_single_line) + ")",
             "score pairs and completions from separate files");
    const auto& s = l.sample.seq;
    const int64_t longest = int64_t(std::max(s.chosen.tokens.size(), s.rejected.tokens.size()));
    ST_CHECK(longest <= positions,
             where + ": " + (pair ? "the pair's longer sequence is " : "the sequence is ") + std::to_string(longest) +
                 " tokens, longer than the model's max_position_embeddings " + std::to_string(positions),
             "pass --max-seq-len " + std::to_string(positions) +
                 " to cut it as shardtune-prep --max-seq-len does (the prompt first, keeping its end)");
    for (const auto* seq : {&s.chosen, &s.rejected})
      for (const shardtune::TokenId id : seq->tokens)
        ST_CHECK(id >= 0 && id < model.config().vocab_size,
                 where + ": token id " + std::to_string(id) + " is outside the model's vocabulary of " +
                     std::to_string(model.config().vocab_size),
                 "give the tokenizer the model was trained with (--tokenizer)");
    lines.push_back(std::move(l));
  }
  ST_CHECK(!lines.empty(), "--input '" + input + "' holds no lines to score (empty or blank lines only)",
           "write one JSON object per line: {\"prompt\", \"chosen\", \"rejected\"} or {\"prompt\", \"completion\"}");
  const int64_t pad = tok.pad_id ? *tok.pad_id : tok.eos_id ? *tok.eos_id : 0;
  const bool pairs = first_pair_line > 0;
  int64_t right = 0;
  double sum = 0;
  for (size_t first = 0; first < lines.size(); first += size_t(batch)) {
    const size_t k = std::min(size_t(batch), lines.size() - first);
    int64_t longest = 1;
    for (size_t i = first; i < first + k; ++i)
      longest = std::max<int64_t>({longest, int64_t(lines[i].sample.seq.chosen.tokens.size()),
                                   int64_t(lines[i].sample.seq.rejected.tokens.size())});
    if (pairs) {  // the batch shardtune-score --data builds from the same pairs: rows chosen, then rejected
      std::vector<sd::PairSample> ps(k);
      for (size_t i = 0; i < k; ++i) {
        const sp::TokenizedPair& p = lines[first + i].sample.seq;
        ps[i] = {p.chosen.tokens, p.rejected.tokens, p.chosen.mask, p.rejected.mask, p.prompt_len};
      }
      const std::vector<double> r = batch_rewards(model, sd::make_pair_batch(ps, longest, pad));
      for (size_t i = 0; i < k; ++i) {
        right += r[i] > r[k + i];
        print_pair("line", lines[first + i].number, r[i], r[k + i]);
      }
    } else {
      std::vector<std::vector<int32_t>> toks(k);
      std::vector<std::vector<uint8_t>> masks(k);
      for (size_t i = 0; i < k; ++i) {
        toks[i] = lines[first + i].sample.seq.chosen.tokens;
        masks[i] = lines[first + i].sample.seq.chosen.mask;
      }
      const std::vector<double> r = batch_rewards(model, sd::make_batch(toks, masks, longest, false, pad));
      for (size_t i = 0; i < k; ++i) {
        sum += r[i];
        std::cout << nlohmann::json{{"line", lines[first + i].number}, {"reward", r[i]}}.dump() << "\n";
      }
    }
  }
  const auto n = int64_t(lines.size());
  if (pairs)
    print_accuracy(n, right);
  else
    std::cout << nlohmann::json{{"completions", n}, {"mean_reward", sum / double(n)}}.dump() << "\n";
  return 0;
}

}  // namespace

static int run(int argc, char** argv) {
  std::string model_path, adapter, data, input, split = "val", tokenizer, template_spec = "alpaca";
  int64_t batch = 8, max_len = 0;
  int threads = 0;
  CLI::App app{"Print a reward model's rewards (JSONL) for preference pairs (a shardtune-prep folder or a JSONL file) "
               "or for single completions."};
  app.add_option("--model", model_path, "reward model folder (LlamaForSequenceClassification), or the base with --adapter")
      ->required();
  app.add_option("--adapter", adapter, "PEFT adapter folder of --objective reward --method lora (holds the score head)");
  auto* data_opt = app.add_option("--data", data, "a folder from shardtune-prep --format preference");
  auto* input_opt = app.add_option("--input", input,
                                   "a JSONL file of pairs {\"prompt\", \"chosen\", \"rejected\"} (plain or chat) or of "
                                   "completions {\"prompt\", \"completion\"} / {\"text\"}, tokenized as shardtune-prep does");
  data_opt->excludes(input_opt);
  auto* split_opt = app.add_option("--split", split, "--data: train or val")->capture_default_str();
  auto* tok_opt = app.add_option("--tokenizer", tokenizer,
                                 "--input: tokenizer SPEC (default: the one the model folder records in shardtune_tokenizer.json)");
  auto* tpl_opt = app.add_option("--template", template_spec,
                                 "--input: the prompt template prep used (a built-in name or a JSON file; chat lines and EOS)")
                      ->capture_default_str();
  auto* len_opt = app.add_option("--max-seq-len", max_len,
                                 "--input: cut over-long lines as shardtune-prep --max-seq-len N does (0: never cut; a line "
                                 "longer than max_position_embeddings is then an error)")
                      ->capture_default_str();
  app.add_option("--batch", batch, "pairs (or completions) per forward")->capture_default_str();
  app.add_option("--threads", threads, "intra-op threads (0 = the CPUs of the affinity mask)")->capture_default_str();
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 2;
  }
  ST_CHECK(!data.empty() || !input.empty(), "give --data DIR (a shardtune-prep preference folder) or --input FILE.jsonl");
  for (auto* o : {tok_opt, tpl_opt, len_opt})
    ST_CHECK(!(o->count() && !data.empty()), o->get_name() + " applies to --input only",
             "--data folders were tokenized by shardtune-prep already; drop " + o->get_name());
  ST_CHECK(!(split_opt->count() && !input.empty()), "--split applies to --data only", "drop --split");
  ST_CHECK(split == "train" || split == "val", "--split '" + split + "': use train or val");
  ST_CHECK(batch >= 1, "--batch must be at least 1 (got " + std::to_string(batch) + ")");
  ST_CHECK(max_len >= 0, "--max-seq-len must be >= 0 (got " + std::to_string(max_len) + ")", "0 cuts nothing");
  sm::setup_runtime(threads);
  std::unique_ptr<shardtune::Tokenizer> tok;
  sp::PromptTemplate tpl;
  if (!input.empty()) {  // before the model loads: a wrong tokenizer or template fails fast
    tok = resolve_tokenizer(tokenizer, {adapter, model_path});
    tpl = sp::PromptTemplate::load(template_spec);
  }
  auto model = load_reward_model(model_path, adapter);
  at::NoGradGuard no_grad;
  if (!data.empty()) return score_folder(*model, data, split, batch);
  const int64_t positions = model->config().max_position_embeddings;
  ST_CHECK(max_len <= positions,
           "--max-seq-len " + std::to_string(max_len) + " exceeds the model's max_position_embeddings " +
               std::to_string(positions),
           "give at most " + std::to_string(positions));
  ST_CHECK(tok->vocab_size() <= model->config().vocab_size,
           "the tokenizer has " + std::to_string(tok->vocab_size()) + " ids but the model " + model_path +
               " has a vocabulary of " + std::to_string(model->config().vocab_size),
           "give the tokenizer the model was trained with (--tokenizer)");
  return score_input(*model, input, *tok, tpl, max_len, batch);
}

int main(int argc, char** argv) {
  shardtune::hw::select_blas_core(argv);  // before any torch work: may re-exec with OPENBLAS_CORETYPE set
  return shardtune::run_guarded("shardtune-score", run, argc, argv);
}
