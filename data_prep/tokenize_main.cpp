// shardtune-tokenize: text lines on stdin -> one line of token ids per input line (or ids -> text with
// --decode). For debugging tokenizers and for the parity tests; also --info and a --bench throughput probe.
#include <CLI/CLI.hpp>

#include <time.h>

#include <charconv>
#include <chrono>
#include <cstdio>
#include <iostream>
#include <string>

#include "sentencepiece_tokenizer.h"
#include "shardtune/core/error.h"
#include "shardtune/core/fs.h"

namespace {

using shardtune::TokenId;
using shardtune::Tokenizer;

std::string opt_id(const std::optional<TokenId>& id) { return id ? std::to_string(*id) : "none"; }

void print_info(const Tokenizer& tok) {
  std::printf("name: %s\nsource: %s\nvocab_size: %d\nbos_id: %s\neos_id: %s\npad_id: %s\nadd_bos: %s\nhash: %s\n",
              tok.name.c_str(), tok.source.c_str(), tok.vocab_size(), opt_id(tok.bos_id).c_str(),
              opt_id(tok.eos_id).c_str(), opt_id(tok.pad_id).c_str(), tok.add_bos ? "true" : "false", tok.hash.c_str());
}

// Encodes every line of FILE (newlines excluded) and reports single-thread throughput.
void bench(const Tokenizer& tok, const std::string& file, bool parse_special) {
  std::string text = shardtune::fs::read_file(file);
  size_t tokens = 0, bytes = 0;
  auto run = [&] {
    tokens = bytes = 0;
    size_t pos = 0;
    while (pos < text.size()) {
      size_t nl = text.find('\n', pos);
      if (nl == std::string::npos) nl = text.size();
      tokens += tok.encode(std::string_view(text).substr(pos, nl - pos), parse_special).size();
      bytes += nl - pos;
      pos = nl + 1;
    }
  };
  run();  // warm-up (fills caches, as in a long prep run)
  auto cpu_now = [] {
    timespec ts{};
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
  };
  const double cpu0 = cpu_now();
  auto t0 = std::chrono::steady_clock::now();
  int reps = 0;
  double secs = 0;
  do {
    run();
    ++reps;
    secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  } while (secs < 1.0);
  const double cpu = cpu_now() - cpu0;
  double mb = static_cast<double>(bytes) * reps / 1e6;
  // CPU-time rate is the per-thread figure on a busy machine; wall-clock rate is what a user waits for.
  std::printf("%s: %zu bytes/pass, %zu tokens/pass, %d passes in %.2f s: %.2f MB/s per thread of CPU time "
              "(%.2f MB/s wall, %.0f tokens/s CPU)\n",
              tok.name.c_str(), bytes, tokens, reps, secs, mb / cpu, mb / secs, static_cast<double>(tokens) * reps / cpu);
}

int body(int argc, char** argv) {
  CLI::App app{"shardtune-tokenize: text lines on stdin -> space-separated token ids, one line per line"};
  std::string spec, bench_file;
  bool decode = false, parse_special = false, add_special = false, info = false, skip_special = false;
  app.add_option("--tokenizer", spec, "tokenizer.json, SentencePiece .model, encoder.json,vocab.bpe, a folder, or 'byte'")
      ->required();
  app.add_flag("--decode", decode, "read lines of ids, print text");
  app.add_flag("--parse-special", parse_special, "turn special-token strings in the text into their ids");
  app.add_flag("--add-special", add_special, "prepend BOS when the tokenizer's convention is add_bos");
  app.add_flag("--skip-special", skip_special, "with --decode: leave special tokens out of the text");
  app.add_flag("--info", info, "print name, vocab size, bos/eos/pad ids, add_bos and hash, then exit");
  app.add_option("--bench", bench_file, "encode each line of FILE repeatedly and print MB/s per thread");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }

  auto tok = shardtune::load_tokenizer_any(spec);
  if (info) {
    print_info(*tok);
    return 0;
  }
  if (!bench_file.empty()) {
    bench(*tok, bench_file, parse_special);
    return 0;
  }

  std::ios::sync_with_stdio(false);
  std::string line, out;
  std::vector<TokenId> ids;
  size_t line_no = 0;
  while (std::getline(std::cin, line)) {
    ++line_no;
    out.clear();
    if (decode) {
      ids.clear();
      if (!line.empty() && line.back() == '\r') line.pop_back();  // CRLF files
      size_t pos = 0;
      while (pos < line.size()) {
        while (pos < line.size() && line[pos] == ' ') ++pos;
        if (pos >= line.size()) break;
        size_t end = pos;
        while (end < line.size() && line[end] != ' ') ++end;
        // The whole item must be a non-negative integer ("12x" is not read as 12).
        TokenId id = -1;
        const auto [ptr, ec] = std::from_chars(line.data() + pos, line.data() + end, id);
        ST_CHECK(ec == std::errc() && ptr == line.data() + end && id >= 0,
                 "stdin line " + std::to_string(line_no) + ": '" + line.substr(pos, end - pos) + "' is not a token id",
                 "--decode reads lines of space-separated non-negative integers");
        ids.push_back(id);
        pos = end;
      }
      out = tok->decode(ids, skip_special);
    } else {
      ids = tok->encode(line, parse_special);
      if (add_special && tok->add_bos && tok->bos_id) out = std::to_string(*tok->bos_id);
      for (TokenId id : ids) {
        if (!out.empty()) out += ' ';
        out += std::to_string(id);
      }
    }
    out += '\n';
    std::fwrite(out.data(), 1, out.size(), stdout);
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) { return shardtune::run_guarded("shardtune-tokenize", body, argc, argv); }
