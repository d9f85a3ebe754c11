// shardtune-generate: sample a continuation from a model (HF folder or llama2.c .bin), optionally with a
// PEFT LoRA adapter applied on top (not merged), using a KV cache. Temperature 0 is greedy.
#include <CLI/CLI.hpp>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>

#include <charconv>
#include <cmath>
#include <cstdio>
#include <iostream>

#include "shardtune/core/error.h"
#include "shardtune/core/hw.h"
#include "shardtune/core/json_depth.h"
#include "shardtune/core/log.h"
#include "shardtune/model/generate.h"
#include "shardtune/model/adapter.h"
#include "shardtune/model/io.h"
#include "shardtune/model/runtime.h"
#ifdef ST_HAVE_TOKENIZER
#include "shardtune/tokenizer/tokenizer.h"
#endif

namespace sm = shardtune::model;

namespace {

// "1 2 3", "1,2,3" or "1, 2, 3" -> ids. Every item must be a whole non-negative integer: "1,2,x" and
// "1.5" are refused naming the item (std::stoll would read "1,2,x" as [1]).
std::vector<int64_t> parse_prompt_ids(const std::string& text) {
  std::vector<int64_t> ids;
  size_t pos = 0, item = 0;
  auto sep = [](char c) { return c == ' ' || c == ',' || c == '\t' || c == '\n'; };
  while (pos < text.size()) {
    while (pos < text.size() && sep(text[pos])) ++pos;
    if (pos >= text.size()) break;
    size_t end = pos;
    while (end < text.size() && !sep(text[end])) ++end;
    const std::string w = text.substr(pos, end - pos);
    ++item;
    int64_t v = 0;
    const auto [ptr, ec] = std::from_chars(w.data(), w.data() + w.size(), v);
    ST_CHECK(ec != std::errc::result_out_of_range, "--prompt-ids: '" + w + "' (item " + std::to_string(item) + ") is too large");
    ST_CHECK(ec == std::errc() && ptr == w.data() + w.size(),
             "--prompt-ids: '" + w + "' (item " + std::to_string(item) + ") is not an integer",
             "give token ids separated by spaces or commas, e.g. \"1 2 3\" or \"1,2,3\"");
    ST_CHECK(v >= 0, "--prompt-ids: '" + w + "' (item " + std::to_string(item) + ") is negative",
             "token ids are 0 .. vocab_size-1");
    ids.push_back(v);
    pos = end;
  }
  ST_CHECK(!ids.empty(), "--prompt-ids has no ids", "give at least one token id, e.g. the BOS id");
  return ids;
}

// Range checks before anything is loaded: a bad value must not surface later as a LibTorch error.
void check_sampling_options(const sm::GenerateOptions& g, int threads) {
  ST_CHECK(g.max_new_tokens >= 1, "--max-new-tokens must be at least 1 (got " + std::to_string(g.max_new_tokens) + ")",
           "give how many tokens to generate after the prompt, e.g. 64");
  ST_CHECK(std::isfinite(g.temperature) && g.temperature >= 0,
           "--temperature must be a finite number >= 0 (got " + std::to_string(g.temperature) + ")",
           "0 is greedy; 0.7-1.0 are usual for sampling");
  ST_CHECK(g.top_p > 0 && g.top_p <= 1, "--top-p must be in (0, 1] (got " + std::to_string(g.top_p) + ")",
           "1 samples from the whole distribution; 0.9 keeps the most likely tokens holding 90% of the mass");
  ST_CHECK(threads >= 0, "--threads must be >= 0 (got " + std::to_string(threads) + ")", "give 0 (the CPUs of the affinity mask) or a thread count");
  shardtune::hw::check_threads_limit(threads, "give 0 (the CPUs of the affinity mask) or at most the CPUs it holds");
  const auto mask = shardtune::hw::affinity();
  if (threads > mask.count && mask.count > 0)
    shardtune::log::warn("--threads " + std::to_string(threads) + " but the affinity mask holds only " +
                         std::to_string(mask.count) + " CPUs (" + mask.list + "): slower than fewer threads\n"
                         "  ---> HINT: give --threads 0 (the CPUs of the affinity mask)");
}

// The KV cache and the positions end at max_position_embeddings: say so (after generating, so that an
// allocation failure stays the first line) instead of returning fewer tokens than asked without a word.
void note_position_limit(size_t prompt_len, size_t generated, int64_t max_new, int64_t max_positions) {
  if (int64_t(generated) < max_new && int64_t(prompt_len + generated) >= max_positions)
    shardtune::log::warn("generated " + std::to_string(generated) + " of --max-new-tokens " + std::to_string(max_new) +
                         ": the " + std::to_string(prompt_len) + "-token prompt and its continuation reached "
                         "max_position_embeddings " + std::to_string(max_positions) + " (config.json)");
}

}  // namespace

static int run(int argc, char** argv) {
  std::string model_path, adapter, prompt, tokenizer_spec, prompt_ids, precision = "fp32";
  sm::GenerateOptions g;
  int threads = 0;
  bool print_ids = false, no_stop = false, print_logits = false;
  CLI::App app{"Sample from a causal LM (Hugging Face folder or llama2.c .bin) with a KV cache."};
  app.add_option("--model", model_path, "HF model folder (config.json + safetensors) or llama2.c .bin")->required();
  app.add_option("--adapter", adapter,
                 "PEFT LoRA folder (adapter_config.json + adapter_model.safetensors), applied on top of the model "
                 "without merging");
  app.add_option("--prompt", prompt, "prompt text (needs --tokenizer)");
  app.add_option("--tokenizer", tokenizer_spec, "tokenizer SPEC: tokenizer.json, GPT-2 files or a folder, or 'byte'");
  app.add_option("--prompt-ids", prompt_ids, "prompt as token ids, e.g. \"1 2 3\" or \"1,2,3\"");
  std::string prompts_file;
  app.add_option("--prompts-file", prompts_file,
                 "JSONL with {\"prompt\": TEXT} per line (needs --tokenizer): one model load for many prompts; prints "
                 "one JSON line {\"prompt\", \"completion\"} per prompt");
  app.add_option("--max-new-tokens", g.max_new_tokens, "tokens to generate")->capture_default_str();
  app.add_option("--temperature", g.temperature, "0 = greedy")->capture_default_str();
  app.add_option("--top-p", g.top_p, "nucleus sampling mass")->capture_default_str();
  app.add_option("--seed", g.seed, "sampling seed")->capture_default_str();
  app.add_option("--threads", threads, "intra-op threads (0 = the CPUs of the affinity mask)")->capture_default_str();
  app.add_option("--precision", precision, "fp32, bf16 (autocast) or auto (bf16 where the CPU computes it natively)")
      ->capture_default_str();
  app.add_flag("--print-ids", print_ids, "print the generated ids instead of text");
  app.add_flag("--no-stop", no_stop, "do not stop at the EOS token");
  app.add_flag("--print-logits", print_logits,
               "print the prompt's logits (one forward, no generation) as one JSON line {ids, shape, logits} and exit");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 2;
  }
  ST_CHECK((!prompt.empty()) + (!prompt_ids.empty()) + (!prompts_file.empty()) == 1,
           "give exactly one of --prompt, --prompt-ids or --prompts-file",
           "--prompt and --prompts-file need --tokenizer; --prompt-ids takes space- or comma-separated ids");
  ST_CHECK(!print_logits || prompts_file.empty(), "--print-logits takes one prompt, not --prompts-file",
           "give --prompt-ids (or --prompt with --tokenizer)");
  check_sampling_options(g, threads);
  // Ids are checked for syntax now and against the vocabulary once the model is loaded.
  std::vector<int64_t> ids = prompt_ids.empty() ? std::vector<int64_t>{} : parse_prompt_ids(prompt_ids);
  sm::setup_runtime(threads);
  shardtune::hw::print_blas_status(stderr);  // stderr: stdout carries only ids, text or JSONL

  auto model = sm::load_model(model_path);
  if (!adapter.empty()) {
    const sm::AdapterConfig acfg = sm::read_adapter_config(adapter);
    model->load_lora(acfg, sm::read_adapter_weights(adapter, acfg), adapter);
    model->freeze_base(at::kFloat);
    // stderr: stdout carries only ids, text or JSONL
    std::fprintf(stderr, "applied LoRA adapter %s (r %lld, %zu modules), not merged\n", adapter.c_str(),
                 static_cast<long long>(acfg.r), model->lora_weights().size());
  }
  model->eval();
  // The trainer refuses NaN/Inf weights at load; so does generation (it printed ids computed from them).
  sm::check_weights_finite(*model, "in " + model_path,
                           "the model file is damaged or came from a diverged run; use another checkpoint");

#ifdef ST_HAVE_TOKENIZER
  std::unique_ptr<shardtune::Tokenizer> tok;
  if (!tokenizer_spec.empty()) tok = shardtune::load_tokenizer(tokenizer_spec);
  // A tokenizer with more ids than the model has rows would index past the embedding table.
  if (tok)
    ST_CHECK(tok->vocab_size() <= model->config().vocab_size,
             "the tokenizer '" + tokenizer_spec + "' has " + std::to_string(tok->vocab_size()) + " ids but the model " +
                 model_path + " has a vocabulary of " + std::to_string(model->config().vocab_size),
             "give the tokenizer the model was trained with (a fine-tuned folder names it in shardtune_tokenizer.json)");
  if (!prompts_file.empty()) {
    ST_CHECK(tok != nullptr, "--prompts-file needs --tokenizer");
    if (!no_stop) g.stop_id = tok->eos_id ? std::optional<int64_t>(*tok->eos_id) : model->config().eos_token_id;
    sm::AutocastGuard ac(at::kCPU, sm::parse_precision(precision));
    std::ifstream in(prompts_file);
    ST_CHECK(in.good(), "cannot open --prompts-file '" + prompts_file + "'", "check the path (a JSONL file of {\"prompt\": \"...\"} lines)");
    std::string line;
    int64_t prompts = 0;
    for (int64_t lineno = 1; std::getline(in, line); ++lineno) {
      if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
      ++prompts;
      shardtune::check_json_depth(line, prompts_file + ":" + std::to_string(lineno));
      nlohmann::json j;
      try {
        j = nlohmann::json::parse(line);
      } catch (const nlohmann::json::exception& e) {
        ST_FAIL(prompts_file + ":" + std::to_string(lineno) + ": malformed JSON: " + e.what());
      }
      ST_CHECK(j.is_object() && j.contains("prompt") && j["prompt"].is_string(),
               prompts_file + ":" + std::to_string(lineno) + ": expected {\"prompt\": \"...\"}");
      const std::string text = j["prompt"].get<std::string>();
      std::vector<int64_t> p;
      if (tok->add_bos && tok->bos_id) p.push_back(*tok->bos_id);
      for (auto t : tok->encode(text)) p.push_back(t);
      const std::vector<int64_t> out = sm::generate(*model, p, g);
      note_position_limit(p.size(), out.size(), g.max_new_tokens, model->config().max_position_embeddings);
      std::vector<shardtune::TokenId> cont(out.begin(), out.end());
      // A completion may end inside a multi-byte character (or be any bytes): written with U+FFFD, never an error.
      std::cout << nlohmann::json{{"prompt", text}, {"completion", tok->decode(cont, /*skip_special=*/true)}}
                       .dump(-1, ' ', false, nlohmann::json::error_handler_t::replace)
                << "\n";
    }
    ST_CHECK(prompts > 0, "--prompts-file '" + prompts_file + "' holds no prompts (empty or blank lines only)",
             "write one {\"prompt\": \"...\"} JSON object per line");
    return 0;
  }
#else
  ST_CHECK(tokenizer_spec.empty() && prompts_file.empty(), "this build has no tokenizer library", "use --prompt-ids");
#endif
  if (prompt_ids.empty()) {
#ifdef ST_HAVE_TOKENIZER
    ST_CHECK(tok != nullptr, "--prompt needs --tokenizer", "or give --prompt-ids");
    if (tok->add_bos && tok->bos_id) ids.push_back(*tok->bos_id);
    for (auto t : tok->encode(prompt)) ids.push_back(t);
#else
    ST_FAIL("--prompt needs a tokenizer, which this build lacks", "use --prompt-ids");
#endif
  }
  const int64_t V = model->config().vocab_size;
  for (size_t i = 0; i < ids.size(); ++i)
    ST_CHECK(ids[i] >= 0 && ids[i] < V,
             "prompt id " + std::to_string(ids[i]) + " (item " + std::to_string(i + 1) +
                 ") is outside the vocabulary [0, " + std::to_string(V) + ")",
             "the model " + model_path + " has " + std::to_string(V) + " token ids");
  if (print_logits) {
    // For comparisons with other implementations (tools/gpu-check/hf_interop.py): [T, V] row-major, fp32.
    at::NoGradGuard no_grad;
    sm::AutocastGuard ac(at::kCPU, sm::parse_precision(precision));
    const at::Tensor lg =
        model->logits(at::tensor(ids, at::kLong).unsqueeze(0)).squeeze(0).to(at::kFloat).contiguous();
    const float* p = lg.data_ptr<float>();
    nlohmann::json j{{"ids", ids}, {"shape", {lg.size(0), lg.size(1)}}, {"logits", std::vector<float>(p, p + lg.numel())}};
    std::cout << j.dump() << "\n";
    return 0;
  }
  if (!no_stop) {
    g.stop_id = model->config().eos_token_id;
#ifdef ST_HAVE_TOKENIZER
    if (tok && tok->eos_id) g.stop_id = *tok->eos_id;
#endif
  }
  sm::AutocastGuard ac(at::kCPU, sm::parse_precision(precision));
  const std::vector<int64_t> out = sm::generate(*model, ids, g);
  note_position_limit(ids.size(), out.size(), g.max_new_tokens, model->config().max_position_embeddings);
  if (print_ids) {
    for (size_t i = 0; i < out.size(); ++i) std::printf("%s%lld", i ? " " : "", static_cast<long long>(out[i]));
    std::printf("\n");
    return 0;
  }
#ifdef ST_HAVE_TOKENIZER
  if (tok) {
    // Prompt and continuation decoded together, so pieces that span the boundary render correctly.
    std::vector<shardtune::TokenId> all(ids.begin(), ids.end());
    all.insert(all.end(), out.begin(), out.end());
    std::cout << tok->decode(all, /*skip_special=*/true) << "\n";
    return 0;
  }
#endif
  // No tokenizer: ids are all we can print.
  for (size_t i = 0; i < out.size(); ++i) std::printf("%s%lld", i ? " " : "", static_cast<long long>(out[i]));
  std::printf("\n");
  return 0;
}

int main(int argc, char** argv) {
  shardtune::hw::select_blas_core(argv);  // before any torch work: may re-exec with OPENBLAS_CORETYPE set
  return shardtune::run_guarded("shardtune-generate", run, argc, argv);
}
