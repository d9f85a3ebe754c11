// shardtune-inspect: what a shard folder (manifest + shards) or one shard holds, with a decoded sample
// (or preference pair: prompt, chosen, rejected) whose prompt (no loss) and trained parts are marked; or what a
// trainer checkpoint holds (inspect_checkpoint.cpp), or a GGUF file's metadata and tensor table (inspect_gguf.cpp).
// `--verify` re-checks every shard (checkpoint file) and checksum.
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "inspect_checkpoint.h"
#include "inspect_gguf.h"
#include "sentencepiece_tokenizer.h"
#include "shardtune/core/error.h"
#include "shardtune/core/fs.h"
#include "shardtune/data/manifest.h"
#include "shardtune/data/shard.h"
#include "shardtune/data/verify.h"

namespace {

namespace stdfs = std::filesystem;
using json = nlohmann::ordered_json;
using namespace shardtune;

// Tokens [a, b) of the shard as runs of equal loss_mask, one line each: "[section ]no loss | text".
void print_runs(const data::ShardData& d, int64_t a, int64_t b, const Tokenizer* tok, bool show_ids, const char* section) {
  const bool tty = isatty(fileno(stdout));
  for (int64_t s = a; s < b;) {
    int64_t e = s;
    while (e < b && d.loss_mask[e] == d.loss_mask[s]) ++e;
    std::vector<TokenId> ids(d.tokens.begin() + s, d.tokens.begin() + e);
    const char* label = d.loss_mask[s] ? "TRAINED " : "no loss ";
    std::string body;
    if (tok && !show_ids) {
      body = tok->decode(ids);
    } else {
      for (auto id : ids) body += std::to_string(id) + " ";
    }
    if (tty)
      std::printf("%s%s%s| %s\033[0m\n", d.loss_mask[s] ? "\033[32m" : "\033[2m", section, label, body.c_str());
    else
      std::printf("%s%s| %s\n", section, label, body.c_str());
    s = e;
  }
}

int64_t ones(const data::ShardData& d, int64_t a, int64_t b) {
  return std::count(d.loss_mask.begin() + a, d.loss_mask.begin() + b, 1);
}

// `index` is a sample of a sequence shard, or a pair of a preference shard.
void print_sample(const data::Shard& shard, int64_t index, const std::string& tokenizer_spec, bool show_ids) {
  const auto& d = shard.data;
  const bool pairs = shard.info.kind == data::kKindPreference;
  const int64_t n = pairs ? d.num_pairs() : d.num_samples();
  if (n == 0) return;
  ST_CHECK(index >= 0 && index < n, "--sample " + std::to_string(index) + " is out of range (the shard has " +
                                        std::to_string(n) + (pairs ? " pairs)" : " samples)"));
  std::unique_ptr<Tokenizer> tok;
  std::string why;
  try {
    if (!tokenizer_spec.empty()) tok = load_tokenizer_any(tokenizer_spec);
  } catch (const std::exception& e) {
    why = e.what();
  }
  if (!pairs) {
    int64_t a = d.offsets[index], b = d.offsets[index + 1];
    std::printf("\nsample %lld: %lld tokens, %lld trained (loss_mask = 1)\n", static_cast<long long>(index),
                static_cast<long long>(b - a), static_cast<long long>(ones(d, a, b)));
    print_runs(d, a, b, tok.get(), show_ids, "");
  } else {
    // The prompt once (it is the same in both sequences), then each response.
    const int64_t c = d.offsets[2 * index], r = d.offsets[2 * index + 1], end = d.offsets[2 * index + 2];
    const int64_t plen = d.prompt_lens[index];
    std::printf("\npair %lld (sequences %lld and %lld): prompt %lld tokens; chosen %lld tokens, %lld trained; "
                "rejected %lld tokens, %lld trained (loss_mask = 1)\n",
                static_cast<long long>(index), static_cast<long long>(2 * index), static_cast<long long>(2 * index + 1),
                static_cast<long long>(plen), static_cast<long long>(r - c), static_cast<long long>(ones(d, c, r)),
                static_cast<long long>(end - r), static_cast<long long>(ones(d, r, end)));
    print_runs(d, c, c + plen, tok.get(), show_ids, "prompt   ");
    print_runs(d, c + plen, r, tok.get(), show_ids, "chosen   ");
    print_runs(d, r + plen, end, tok.get(), show_ids, "rejected ");
  }
  if (!tok && !why.empty()) std::printf("(ids shown: tokenizer not loadable: %s)\n", why.c_str());
}

void print_shard(const std::string& path) {
  data::ShardInfo i = data::read_shard_info(path);
  std::printf("%s: split=%s kind=%s tokenizer=%s (sha256 %s…) vocab=%lld bos=%lld eos=%lld pad=%lld template=%s sources=%s\n",
              path.c_str(), i.split.c_str(), i.kind.c_str(), i.tokenizer_name.c_str(), i.tokenizer_hash.substr(0, 12).c_str(),
              static_cast<long long>(i.vocab_size), static_cast<long long>(i.bos_id), static_cast<long long>(i.eos_id),
              static_cast<long long>(i.pad_id), i.template_name.c_str(), i.source_files.c_str());
}

int inspect_main(int argc, char** argv) {
  CLI::App app{"shardtune-inspect: print what a shard folder, shard file, checkpoint or GGUF file holds"};
  std::string target, tokenizer;
  int64_t sample = 0;
  bool verify = false, ids = false;
  app.add_option("path", target, "a folder written by shardtune-prep, one .h5 shard, a checkpoint folder (step-N), a --ckpt-dir or a .gguf file")->required();
  app.add_option("--sample", sample, "which sample (preference data: which pair) of the first shard to show")->capture_default_str();
  app.add_option("--tokenizer", tokenizer, "tokenizer for decoding (default: the one recorded in manifest.json)");
  app.add_flag("--ids", ids, "show token ids instead of text");
  app.add_flag("--verify", verify, "validate every shard (checkpoint file) and compare its size and sha256 with the manifest");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  if (inspect::is_checkpoint_path(target)) return inspect::inspect_checkpoint(target, verify);
  if (stdfs::is_regular_file(target) && inspect::is_gguf_path(target)) return inspect::inspect_gguf(target);
  if (stdfs::is_regular_file(target)) {
    print_shard(target);
    data::Shard s = data::read_shard(target);
    if (s.info.kind == data::kKindPreference)
      std::printf("%lld preference pairs (%lld sequences), %lld tokens, %lld trained tokens\n",
                  static_cast<long long>(s.data.num_pairs()), static_cast<long long>(s.data.num_samples()),
                  static_cast<long long>(s.data.num_tokens()), static_cast<long long>(s.data.num_loss_tokens()));
    else
      std::printf("%lld samples, %lld tokens, %lld trained tokens\n", static_cast<long long>(s.data.num_samples()),
                  static_cast<long long>(s.data.num_tokens()), static_cast<long long>(s.data.num_loss_tokens()));
    print_sample(s, sample, tokenizer, ids);
    return 0;
  }
  stdfs::path manifest_path = stdfs::path(target) / "manifest.json";
  ST_CHECK(stdfs::is_regular_file(manifest_path), "'" + target + "' has no manifest.json",
           "pass a folder written by shardtune-prep (an unfinished one has no manifest) or a .h5 shard");
  // The checked reader first (every field, shard paths inside the folder), then the raw JSON for printing.
  const data::Manifest man = data::read_manifest(target);
  json m = json::parse(fs::read_file(manifest_path));
  const json& t = m["tokenizer"];
  const json tpl = m.contains("template") && m["template"].is_object() ? m["template"] : json::object();
  std::printf("shard folder %s (manifest format_version %d)\n", target.c_str(), m.value("format_version", 0));
  std::printf("tokenizer  %s from %s, vocab %lld, bos %lld, eos %lld, add_bos %s\n", man.tokenizer_name.c_str(),
              man.tokenizer_source.c_str(), static_cast<long long>(man.vocab_size), static_cast<long long>(man.bos_id),
              static_cast<long long>(man.eos_id), t.value("add_bos", false) ? "yes" : "no");
  std::printf("format     %s, template %s\n", m.value("format_kind", "?").c_str(), tpl.value("name", "?").c_str());
  if (man.kind == data::DataKind::Preference)
    std::printf("kind       preference: each sample is a (chosen, rejected) pair of sequences; sample counts count pairs\n");
  std::printf("counts    ");
  if (m.contains("counts") && m["counts"].is_object())
    for (auto& [k, v] : m["counts"].items()) std::printf(" %s=%s", k.c_str(), v.dump().c_str());
  std::printf("\n\n%-18s %-6s %10s %12s %12s  %s\n", "shard", "split",
              man.kind == data::DataKind::Preference ? "pairs" : "samples", "tokens", "trained", "sha256");
  int bad = 0;
  for (const auto& s : man.shards) {
    std::string status;
    if (verify) {
      try {
        data::verify_shard(s, man.vocab_size);  // the trainer's own check: structure, ids, masks, counts, sha256
        status = "  ok";
      } catch (const std::exception& e) {
        status = std::string("  INVALID: ") + e.what();
      }
      bad += status != "  ok";
    }
    std::printf("%-18s %-6s %10lld %12lld %12lld  %s…%s\n", s.file.c_str(), s.split.c_str(),
                static_cast<long long>(s.samples), static_cast<long long>(s.tokens),
                static_cast<long long>(s.loss_tokens), s.sha256.substr(0, 16).c_str(), status.c_str());
  }
  if (!man.shards.empty() && bad == 0)
    print_sample(data::read_shard(man.shards[0].path), sample, tokenizer.empty() ? man.tokenizer_source : tokenizer, ids);
  ST_CHECK(bad == 0, std::to_string(bad) + " shard(s) failed verification", "re-run shardtune-prep to regenerate the folder");
  return 0;
}

}  // namespace

int main(int argc, char** argv) { return shardtune::run_guarded("shardtune-inspect", inspect_main, argc, argv); }
