// The prep job: phase 1 tokenizes this rank's lines into spool files (threads, ordered); phase 2 cuts the
// global sample stream into shards (identical for any rank/thread count) and writes them; rank 0 writes
// manifest.json last and renames the staging folder onto --output.
#include "prep.h"

#include <simdjson.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <thread>

#include "chat_template.h"
#include "inputs.h"
#include "ordered_pool.h"
#include "preference.h"
#include "record.h"
#include "sentencepiece_tokenizer.h"
#include "shardtune/core/error.h"
#include "shardtune/core/fs.h"
#include "shardtune/core/hw.h"
#include "shardtune/core/log.h"
#include "shardtune/data/shard.h"
#include "shardtune/dist/mpi_runtime.h"
#include "shardtune/tokenizer/source_files.h"
#include "template.h"

namespace shardtune::prep {

namespace stdfs = std::filesystem;
using ojson = nlohmann::ordered_json;

void PrepOptions::validate() const {
  ST_CHECK(!inputs.empty(), "no --input given", "pass one or more JSONL files with --input FILE");
  ST_CHECK(!output.empty(), "no --output given", "pass the folder to create with --output DIR");
  ST_CHECK(!tokenizer.empty(), "no --tokenizer given", "pass a tokenizer.json, a SentencePiece .model, GPT-2 files or 'byte'");
  parse_format(format);
  ST_CHECK(max_seq_len >= 2, "--max-seq-len must be at least 2 (got " + std::to_string(max_seq_len) + ")");
  ST_CHECK(overlong == "truncate" || overlong == "drop" || overlong == "split",
           "unknown --overlong '" + overlong + "'", "use truncate, drop or split");
  ST_CHECK(overlong != "split" || format == "text", "--overlong split applies to plain text only",
           "use --format text, or --overlong truncate|drop for prompt/response data");
  ST_CHECK(val_fraction >= 0.0 && val_fraction < 1.0, "--val-fraction must be in [0, 1) (got " + std::to_string(val_fraction) + ")");
  ST_CHECK(shard_tokens >= max_seq_len, "--shard-tokens must be at least --max-seq-len");
  ST_CHECK(threads >= 0, "--threads must be >= 0 (0 = the CPUs of the affinity mask)", "give 0 (the CPUs this rank may run on) or a thread count");
  // --threads 100000 aborted ("terminate called", thread creation failed) and left a staging folder.
  hw::check_threads_limit(threads, "give 0 (the CPUs of the affinity mask) or at most the cores of this machine");
}

namespace {

enum Split { kTrain = 0, kVal = 1 };
const char* kSplitName[2] = {"train", "val"};

// Counts in samples, which are pairs for preference data (truncated, dropped_* then count pairs).
struct Stats {
  int64_t lines = 0, samples = 0, empty = 0, truncated = 0, dropped_overlong = 0, dropped_no_target = 0,
          split_pieces = 0, skipped_invalid = 0;
  int64_t truncated_response = 0, dropped_identical = 0;  // preference data only
  void add(const Stats& o) {
    lines += o.lines; samples += o.samples; empty += o.empty; truncated += o.truncated;
    dropped_overlong += o.dropped_overlong; dropped_no_target += o.dropped_no_target;
    split_pieces += o.split_pieces; skipped_invalid += o.skipped_invalid;
    truncated_response += o.truncated_response; dropped_identical += o.dropped_identical;
  }
  std::vector<int64_t*> fields() {
    return {&lines, &samples, &empty, &truncated, &dropped_overlong, &dropped_no_target, &split_pieces,
            &skipped_invalid, &truncated_response, &dropped_identical};
  }
};

// What one folder holds: all sequences or all pairs. Under --format auto, decided by the first line that
// parses as a JSON object (`detected_at` names it), so every rank and thread decides the same.
struct DataKindChoice {
  bool pairs = false;
  std::string detected_at;  // "" unless --format auto found a pair
};

struct Skipped {
  int file;
  int64_t line;
  std::string error;
};

struct ChunkResult {
  std::vector<Sample> samples;  // pairs: chosen then rejected
  std::vector<uint8_t> split;
  std::vector<int64_t> prompt_len;  // per sample: the pair's prompt length on its chosen, else -1
  std::vector<Skipped> skipped;
  Stats stats;
};

uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// Train/val assignment depends only on (seed, file, line): the same for any rank or thread count.
Split choose_split(uint64_t seed, int file, int64_t line, double val_fraction) {
  if (val_fraction <= 0) return kTrain;
  uint64_t h = splitmix64(splitmix64(seed ^ (static_cast<uint64_t>(file) << 40)) ^ static_cast<uint64_t>(line));
  return (h >> 11) * 0x1.0p-53 < val_fraction ? kVal : kTrain;
}

bool blank(std::string_view s) {
  return std::all_of(s.begin(), s.end(), [](char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n'; });
}

int64_t count_targets(const std::vector<uint8_t>& m) { return std::count(m.begin(), m.end(), 1); }

// Applies the overlong policy; appends 0..n samples to `out`.
void finish_sample(Sample&& s, const PrepOptions& opt, Split split, ChunkResult& out) {
  const auto L = static_cast<size_t>(opt.max_seq_len);
  auto push = [&](Sample&& x) {
    if (count_targets(x.mask) == 0) {
      ++out.stats.dropped_no_target;
      return;
    }
    out.samples.push_back(std::move(x));
    out.split.push_back(split);
    out.prompt_len.push_back(-1);
    ++out.stats.samples;
  };
  if (s.tokens.size() <= L) return push(std::move(s));
  if (opt.overlong == "drop") {
    ++out.stats.dropped_overlong;
  } else if (opt.overlong == "truncate") {
    s.tokens.resize(L);
    s.mask.resize(L);
    if (count_targets(s.mask) > 0) ++out.stats.truncated;  // else push() counts it as dropped
    push(std::move(s));
  } else {  // split (text): consecutive pieces of L tokens
    for (size_t at = 0; at < s.tokens.size(); at += L) {
      size_t end = std::min(s.tokens.size(), at + L);
      if (end - at < 2) break;  // a one-token tail carries no prediction
      Sample piece;
      piece.tokens.assign(s.tokens.begin() + at, s.tokens.begin() + end);
      piece.mask.assign(s.mask.begin() + at, s.mask.begin() + end);
      piece.mask[0] = 0;  // the first token of a piece has no context in it
      ++out.stats.split_pieces;
      push(std::move(piece));
    }
  }
}

// Applies the overlong policy to a pair; appends both sequences (or nothing) to `out`.
void finish_pair(TokenizedPair&& p, const PrepOptions& opt, std::optional<TokenId> bos, Split split, ChunkResult& out) {
  bool response_cut = false;
  switch (fit_pair(p, opt.max_seq_len, opt.overlong == "drop", bos, response_cut)) {
    case PairFit::Dropped: ++out.stats.dropped_overlong; return;
    case PairFit::DroppedIdentical: ++out.stats.dropped_identical; return;
    case PairFit::NoResponse: ++out.stats.dropped_no_target; return;
    case PairFit::Truncated: ++out.stats.truncated; out.stats.truncated_response += response_cut; break;
    case PairFit::Fits: break;
  }
  const auto plen = static_cast<size_t>(p.prompt_len);
  if (p.chosen.tokens.size() <= plen || p.rejected.tokens.size() <= plen) {  // no response token (append_eos off)
    ++out.stats.dropped_no_target;
    return;
  }
  out.samples.push_back(std::move(p.chosen));
  out.samples.push_back(std::move(p.rejected));
  out.split.insert(out.split.end(), 2, split);
  out.prompt_len.push_back(p.prompt_len);
  out.prompt_len.push_back(-1);
  ++out.stats.samples;
}

// Tokenizes one chunk of lines. A bad line throws an Error naming file:line unless --skip-invalid.
ChunkResult process_chunk(const Chunk& c, const std::vector<const MappedFile*>& files, const PrepOptions& opt,
                          Format format, const DataKindChoice& kind, const PromptTemplate& tpl, const Tokenizer& tok) {
  thread_local simdjson::dom::parser parser;
  ChunkResult out;
  int64_t line = c.first_line;
  size_t pos = 0;
  // A UTF-8 byte-order mark (as some Windows editors write) is skipped at the start of a file only.
  if (c.first_line == 1 && c.text.substr(0, 3) == "\xEF\xBB\xBF") pos = 3;
  while (pos < c.text.size()) {
    size_t nl = c.text.find('\n', pos);
    std::string_view text = c.text.substr(pos, (nl == std::string_view::npos ? c.text.size() : nl) - pos);
    pos = nl == std::string_view::npos ? c.text.size() : nl + 1;
    const int64_t this_line = line++;
    if (blank(text)) continue;
    ++out.stats.lines;
    try {
      Record rec = parse_record(parser, text, format);
      if (rec.format == Format::Text && rec.text.empty()) {
        ++out.stats.empty;
        continue;
      }
      if (opt.overlong == "split" && rec.format != Format::Text)
        throw RecordError{"--overlong split applies to plain text, but this line is " + std::string(format_name(rec.format))};
      if ((rec.format == Format::Preference) != kind.pairs)
        throw RecordError{kind.pairs ? "this line is " + std::string(format_name(rec.format)) +
                                           " data, but this folder holds preference pairs (detected from " +
                                           kind.detected_at + "); one folder holds one kind of data"
                                     : std::string("this line is a preference pair (\"chosen\"/\"rejected\"), but this "
                                                   "folder holds sequences (the first line is not a pair); prepare "
                                                   "pairs in their own folder with --format preference")};
      const Split split = choose_split(opt.seed, c.file, this_line, opt.val_fraction);
      if (kind.pairs)
        finish_pair(build_pair(rec, tpl, tok), opt, tok.add_bos ? tok.bos_id : std::nullopt, split, out);
      else
        finish_sample(build_sample(rec, tpl, tok), opt, split, out);
    } catch (const RecordError& e) {
      std::string where = files[c.file]->path() + ":" + std::to_string(this_line);
      if (!opt.skip_invalid)
        ST_FAIL(where + ": " + e.message, "fix or remove this line, or pass --skip-invalid to skip bad lines (they are listed in manifest.json)");
      ++out.stats.skipped_invalid;
      out.skipped.push_back({c.file, this_line, e.message});
    }
  }
  return out;
}

// Per-rank spool of one split: tokens and mask appended in order, sample lengths kept in memory.
struct Spool {
  std::unique_ptr<FILE, int (*)(FILE*)> tok{nullptr, &std::fclose}, msk{nullptr, &std::fclose};
  std::vector<int64_t> lens;
  std::vector<int64_t> prompt_lens;  // preference data: one per pair
  std::vector<char> tok_buf, msk_buf;
  std::string base;

  void open(const std::string& b) {
    base = b;
    tok.reset(std::fopen((b + ".tok").c_str(), "wb"));
    msk.reset(std::fopen((b + ".msk").c_str(), "wb"));
    ST_CHECK(tok && msk, "cannot create spool file '" + b + ".*'", "check free space and permissions of the output folder");
    tok_buf.resize(1 << 20);
    msk_buf.resize(1 << 18);
    std::setvbuf(tok.get(), tok_buf.data(), _IOFBF, tok_buf.size());
    std::setvbuf(msk.get(), msk_buf.data(), _IOFBF, msk_buf.size());
  }
  void append(const Sample& s) {
    bool ok = std::fwrite(s.tokens.data(), sizeof(TokenId), s.tokens.size(), tok.get()) == s.tokens.size() &&
              std::fwrite(s.mask.data(), 1, s.mask.size(), msk.get()) == s.mask.size();
    ST_CHECK(ok, "cannot write spool file '" + base + ".*' (disk full?)");
    lens.push_back(static_cast<int64_t>(s.tokens.size()));
  }
  void close() {
    bool ok = std::fflush(tok.get()) == 0 && std::fflush(msk.get()) == 0;
    ST_CHECK(ok, "cannot write spool file '" + base + ".*' (disk full?)");
    tok.reset();
    msk.reset();
    std::string lens_bytes(reinterpret_cast<const char*>(lens.data()), lens.size() * sizeof(int64_t));
    fs::write_file_atomic(base + ".len", lens_bytes);
    std::string plen_bytes(reinterpret_cast<const char*>(prompt_lens.data()), prompt_lens.size() * sizeof(int64_t));
    fs::write_file_atomic(base + ".plen", plen_bytes);
  }
};

std::string spool_base(const stdfs::path& staging, int rank, int split) {
  return (staging / (".spool-" + std::to_string(rank) + "-" + kSplitName[split])).string();
}

std::vector<int64_t> read_lens(const std::string& base, const char* ext = ".len") {
  std::string bytes = fs::read_file(base + ext);
  std::vector<int64_t> v(bytes.size() / sizeof(int64_t));
  std::memcpy(v.data(), bytes.data(), v.size() * sizeof(int64_t));
  return v;
}

// A shard is a contiguous range of the global sample stream of one split (pairs: of its pair stream,
// so a pair never straddles two shards).
struct ShardPlan {
  int split;
  int index;  // within the split
  int64_t first, last;  // global sample (pair) range [first, last)
  int64_t tokens;
};

std::vector<ShardPlan> plan_shards(int split, const std::vector<int64_t>& lens, int64_t shard_tokens) {
  std::vector<ShardPlan> out;
  int64_t start = 0, tokens = 0;
  for (int64_t i = 0; i < static_cast<int64_t>(lens.size()); ++i) {
    if (tokens > 0 && tokens + lens[i] > shard_tokens) {
      out.push_back({split, static_cast<int>(out.size()), start, i, tokens});
      start = i;
      tokens = 0;
    }
    tokens += lens[i];
  }
  if (tokens > 0) out.push_back({split, static_cast<int>(out.size()), start, static_cast<int64_t>(lens.size()), tokens});
  return out;
}

std::string shard_name(const ShardPlan& p) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%s-%05d.h5", kSplitName[p.split], p.index);
  return buf;
}

// Reads [from, to) elements of type T from a spool file.
template <class T>
void read_range(const std::string& path, int64_t from, int64_t count, std::vector<T>& out) {
  std::ifstream in(path, std::ios::binary);
  ST_CHECK(in.good(), "cannot open spool file '" + path + "'", "is the output folder on a file system shared by all ranks?");
  in.seekg(static_cast<std::streamoff>(from * sizeof(T)));
  size_t old = out.size();
  out.resize(old + count);
  in.read(reinterpret_cast<char*>(out.data() + old), static_cast<std::streamsize>(count * sizeof(T)));
  ST_CHECK(in.gcount() == static_cast<std::streamsize>(count * sizeof(T)), "spool file '" + path + "' is shorter than expected");
}

std::string json_array_of(const std::vector<std::string>& v) { return ojson(v).dump(); }

int write_shards_and_manifest(const PrepOptions& opt, const dist::MpiRuntime& rt, const stdfs::path& staging,
                              const stdfs::path& out_dir, const Tokenizer& tok, const PromptTemplate& tpl, Stats stats,
                              const std::vector<Skipped>& skipped, const std::vector<std::unique_ptr<MappedFile>>& mapped,
                              bool pairs);

// --format auto: the kind of the first line (in input order) that parses as a JSON object.
DataKindChoice choose_kind(const PrepOptions& opt, const std::vector<const MappedFile*>& files) {
  DataKindChoice k;
  if (opt.format == "preference") k.pairs = true;
  if (opt.format != "auto") return k;
  simdjson::dom::parser parser;
  for (const MappedFile* f : files) {
    std::string_view v = f->view();
    size_t pos = v.substr(0, 3) == "\xEF\xBB\xBF" ? 3 : 0;
    for (int64_t line = 1; pos < v.size(); ++line) {
      size_t nl = v.find('\n', pos);
      std::string_view text = v.substr(pos, (nl == std::string_view::npos ? v.size() : nl) - pos);
      pos = nl == std::string_view::npos ? v.size() : nl + 1;
      if (blank(text)) continue;
      simdjson::dom::element doc;
      if (parser.parse(text.data(), text.size(), true).get(doc) || !doc.is_object()) continue;  // reported later
      simdjson::dom::object obj = doc.get_object().value_unsafe();
      k.pairs = !obj["chosen"].error() || !obj["rejected"].error();
      if (k.pairs) k.detected_at = f->path() + ":" + std::to_string(line);
      return k;
    }
  }
  return k;
}

}  // namespace

int run_prep(const PrepOptions& opt, const dist::MpiRuntime& rt) {
  opt.validate();
  const int rank = rt.rank(), world = rt.world();
  const int threads = opt.threads > 0 ? opt.threads : std::max(1, hw::affinity().count);  // the CPUs this rank may run on

  // Rank 0 checks the output folder and creates a hidden staging folder beside it; others learn its name.
  const stdfs::path out_dir = stdfs::absolute(opt.output).lexically_normal();
  std::string staging_or_error;
  if (rank == 0) {
    try {
      fs::require_absent_or_empty(out_dir, "output folder");
      stdfs::create_directories(out_dir.parent_path());
      stdfs::path staging = out_dir.parent_path() / ("." + out_dir.filename().string() + ".partial-" + std::to_string(::getpid()));
      stdfs::create_directory(staging);
      staging_or_error = "ok:" + staging.string();
    } catch (const std::exception& e) {
      staging_or_error = "error:" + describe(e);
    }
  }
  staging_or_error = rt.broadcast(staging_or_error, 0);
  if (staging_or_error.rfind("error:", 0) == 0) {
    if (rank == 0) std::fprintf(stderr, "shardtune-prep: %s\n", staging_or_error.c_str() + 6);
    return 1;
  }
  const stdfs::path staging = staging_or_error.substr(3);

  // ---- phase 1: tokenize this rank's lines into spools -------------------------------------------
  Stats stats;
  std::vector<Skipped> skipped;
  std::unique_ptr<Tokenizer> tok;
  PromptTemplate tpl;
  std::vector<std::unique_ptr<MappedFile>> mapped;
  DataKindChoice kind;
  int failed = 0;
  try {
    tok = load_tokenizer_any(opt.tokenizer);
    tpl = PromptTemplate::load(opt.template_spec);
    const Format format = parse_format(opt.format);
    std::vector<const MappedFile*> files;
    for (const auto& p : opt.inputs) {
      mapped.push_back(std::make_unique<MappedFile>(p));
      files.push_back(mapped.back().get());
    }
    check_distinct_inputs(files);
    kind = choose_kind(opt, files);
    std::vector<Chunk> chunks = plan_chunks(files, rank, world, 256 << 10);
    uint64_t my_bytes = 0;
    for (const auto& c : chunks) my_bytes += c.text.size();

    Spool spools[2];
    for (int s = 0; s < 2; ++s) spools[s].open(spool_base(staging, rank, s));
    log::Progress progress("prep", my_bytes, "B");
    uint64_t done_bytes = 0;
    std::function<ChunkResult(size_t)> work = [&](size_t i) {
      return process_chunk(chunks[i], files, opt, format, kind, tpl, *tok);
    };
    std::function<void(size_t, ChunkResult&&)> consume = [&](size_t i, ChunkResult&& r) {
      for (size_t k = 0; k < r.samples.size(); ++k) {
        spools[r.split[k]].append(r.samples[k]);
        if (r.prompt_len[k] >= 0) spools[r.split[k]].prompt_lens.push_back(r.prompt_len[k]);
      }
      stats.add(r.stats);
      for (auto& s : r.skipped) skipped.push_back(std::move(s));
      done_bytes += chunks[i].text.size();
      if (!opt.quiet) progress.update(done_bytes);
    };
    ordered_parallel<ChunkResult>(chunks.size(), threads, static_cast<size_t>(threads) * 4, work, consume);
    if (!opt.quiet) progress.finish();
    for (auto& s : spools) s.close();
  } catch (const std::exception& e) {
    if (world > 1)
      std::fprintf(stderr, "shardtune-prep [rank %d]: %s\n", rank, describe(e).c_str());
    else
      std::fprintf(stderr, "shardtune-prep: %s\nshardtune-prep: nothing was written\n", describe(e).c_str());
    failed = 1;
  }
  if (rt.allreduce_max(failed)) {
    rt.barrier();
    if (rank == 0) {
      std::error_code ec;
      stdfs::remove_all(staging, ec);
      if (world > 1) std::fprintf(stderr, "shardtune-prep: failed (see the message above); nothing was written\n");
    }
    return 1;
  }
  if (rt.allreduce_sum(stats.samples) == 0) {
    // Say why, with counts: "all dropped" alone leaves a user guessing (the usual cause is a template
    // whose prompt alone fills --max-seq-len, e.g. alpaca's ~150 bytes with the byte tokenizer).
    const int64_t lines = rt.allreduce_sum(stats.lines), empty = rt.allreduce_sum(stats.empty),
                  overlong = rt.allreduce_sum(stats.dropped_overlong),
                  no_target = rt.allreduce_sum(stats.dropped_no_target),
                  invalid = rt.allreduce_sum(stats.skipped_invalid);
    if (rank == 0) {
      std::error_code ec;
      stdfs::remove_all(staging, ec);
      const std::string L = std::to_string(opt.max_seq_len);
      std::fprintf(stderr,
                   "shardtune-prep: error: no samples were produced from %lld line(s): %lld blank or empty, %lld longer "
                   "than --max-seq-len %s and dropped, %lld with no response token left within --max-seq-len %s, "
                   "%lld skipped as invalid\n  ---> HINT: %s; nothing was written\n",
                   (long long)lines, (long long)empty, (long long)overlong, L.c_str(), (long long)no_target, L.c_str(),
                   (long long)invalid,
                   no_target > 0 ? "the prompt (template included) fills --max-seq-len: raise --max-seq-len or use a "
                                   "shorter --template (e.g. plain)"
                                 : "check --format, --max-seq-len and --overlong");
    }
    return 1;
  }
  try {
    return write_shards_and_manifest(opt, rt, staging, out_dir, *tok, tpl, stats, skipped, mapped, kind.pairs);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "shardtune-prep [rank %d]: %s\n  nothing was published\n", rank, describe(e).c_str());
    std::error_code ec;
    stdfs::remove_all(staging, ec);
    rt.abort(1);
  }
}

namespace {

int write_shards_and_manifest(const PrepOptions& opt, const dist::MpiRuntime& rt, const stdfs::path& staging,
                              const stdfs::path& out_dir, const Tokenizer& tok, const PromptTemplate& tpl,
                              Stats stats, const std::vector<Skipped>& skipped,
                              const std::vector<std::unique_ptr<MappedFile>>& mapped, bool pairs) {
  const int rank = rt.rank(), world = rt.world();
  const int64_t unit = pairs ? 2 : 1;  // sequences per sample
  // ---- phase 2: cut the global stream into shards; rank k % world writes shard k --------------------
  std::vector<std::vector<int64_t>> lens(world * 2);    // [rank * 2 + split]: sample lengths of that spool
  std::vector<std::vector<int64_t>> starts(world * 2);  // token offset of each sample in it (prefix sums)
  std::vector<std::vector<int64_t>> plens(world * 2);   // pairs: prompt length of each pair of that spool
  std::vector<ShardPlan> plans;
  std::vector<int64_t> split_total_samples(2, 0);
  for (int s = 0; s < 2; ++s) {
    std::vector<int64_t> all;
    for (int r = 0; r < world; ++r) {
      const auto& L = lens[r * 2 + s] = read_lens(spool_base(staging, r, s));
      auto& st = starts[r * 2 + s];
      st.assign(1, 0);
      for (int64_t n : L) st.push_back(st.back() + n);
      if (pairs) {
        plens[r * 2 + s] = read_lens(spool_base(staging, r, s), ".plen");
        ST_CHECK(L.size() == 2 * plens[r * 2 + s].size(), "internal: spool of rank " + std::to_string(r) + " holds " +
                                                              std::to_string(L.size()) + " sequences for " +
                                                              std::to_string(plens[r * 2 + s].size()) + " pairs");
        for (size_t i = 0; i < L.size(); i += 2) all.push_back(L[i] + L[i + 1]);  // shards are cut between pairs
      } else {
        all.insert(all.end(), L.begin(), L.end());
      }
    }
    split_total_samples[s] = static_cast<int64_t>(all.size());
    for (auto& p : plan_shards(s, all, opt.shard_tokens)) plans.push_back(p);
  }
  data::ShardInfo info;
  info.tokenizer_name = tok.name;
  info.tokenizer_hash = tok.hash;
  info.vocab_size = tok.vocab_size();
  info.bos_id = tok.bos_id.value_or(-1);
  info.eos_id = tok.eos_id.value_or(-1);
  info.pad_id = tok.pad_id.value_or(-1);
  info.template_name = opt.format == "text" ? "" : tpl.name;
  info.source_files = json_array_of(opt.inputs);
  if (pairs) info.kind = data::kKindPreference;

  std::string my_shards;  // "index\tsha256\tloss_tokens\n" per shard written here
  for (size_t k = rank; k < plans.size(); k += world) {
    const ShardPlan& p = plans[k];
    data::ShardData d;
    // Walk the ranks' spools of this split; sample g of the split lives in the rank whose range holds g.
    // Ranges here count sequences (pair k = sequences 2k, 2k+1).
    int64_t g0 = 0;
    for (int r = 0; r < world; ++r) {
      const auto& L = lens[r * 2 + p.split];
      int64_t g1 = g0 + static_cast<int64_t>(L.size());
      int64_t a = std::max(p.first * unit, g0), b = std::min(p.last * unit, g1);
      if (a < b) {
        if (pairs) {
          const auto& pl = plens[r * 2 + p.split];
          d.prompt_lens.insert(d.prompt_lens.end(), pl.begin() + (a - g0) / 2, pl.begin() + (b - g0) / 2);
        }
        const auto& st = starts[r * 2 + p.split];
        const int64_t tok_from = st[a - g0], count = st[b - g0] - tok_from;
        for (int64_t i = a - g0; i < b - g0; ++i) d.offsets.push_back(d.offsets.back() + L[i]);
        std::string base = spool_base(staging, r, p.split);
        read_range<int32_t>(base + ".tok", tok_from, count, d.tokens);
        read_range<uint8_t>(base + ".msk", tok_from, count, d.loss_mask);
      }
      g0 = g1;
    }
    info.split = kSplitName[p.split];
    std::string path = (staging / shard_name(p)).string();
    data::write_shard(path, info, d);
    my_shards += std::to_string(k) + "\t" + fs::sha256_file(path) + "\t" + std::to_string(d.num_loss_tokens()) + "\n";
  }

  // ---- phase 3: totals and manifest (rank 0), then publish ---------------------------------------
  std::vector<std::string> shard_lines = rt.allgather(my_shards);
  for (int64_t* f : stats.fields()) *f = rt.allreduce_sum(*f);
  ojson my_skipped = ojson::array();
  for (const auto& s : skipped)
    if (my_skipped.size() < 1000) my_skipped.push_back({{"file", opt.inputs[s.file]}, {"line", s.line}, {"error", s.error}});
  std::vector<std::string> all_skipped = rt.allgather(my_skipped.dump());
  std::vector<std::string> in_hashes;
  if (rank == 0)
    for (const auto& p : opt.inputs) in_hashes.push_back(fs::sha256_file(p));

  if (rank == 0) {
    std::vector<std::pair<std::string, int64_t>> sha(plans.size());
    for (const auto& block : shard_lines) {
      size_t pos = 0;
      while (pos < block.size()) {
        size_t nl = block.find('\n', pos);
        std::string line = block.substr(pos, nl - pos);
        pos = nl + 1;
        size_t t1 = line.find('\t'), t2 = line.find('\t', t1 + 1);
        size_t k = std::stoul(line.substr(0, t1));
        sha[k] = {line.substr(t1 + 1, t2 - t1 - 1), std::stoll(line.substr(t2 + 1))};
      }
    }
    ojson m;
    m["format"] = "shardtune-manifest";
    m["format_version"] = 1;
    m["created_by"] = "shardtune-prep " SHARDTUNE_VERSION;
    // Absent (older manifests, and sequence data still) = "sequence". For "preference" every sample
    // count below (counts.*samples, shards[].samples) counts pairs; tokens count both sequences.
    if (pairs) m["kind"] = data::kKindPreference;
    m["tokenizer"] = {{"name", tok.name}, {"source", opt.tokenizer}, {"hash", tok.hash}, {"vocab_size", tok.vocab_size()},
                      {"bos_id", info.bos_id}, {"eos_id", info.eos_id}, {"pad_id", info.pad_id}, {"add_bos", tok.add_bos}};
    // What a model folder written later needs to carry this tokenizer in Hugging Face form: its files
    // (absolute: the trainer may run elsewhere) and the special tokens' strings (a .model cannot be read
    // where libtorch is loaded).
    auto token = [&](std::optional<TokenId> id) { return id ? ojson(tok.token_text(*id)) : ojson(nullptr); };
    m["tokenizer"]["unk_id"] = tok.unk_id.value_or(-1);
    m["tokenizer"]["bos_token"] = token(tok.bos_id);
    m["tokenizer"]["eos_token"] = token(tok.eos_id);
    m["tokenizer"]["pad_token"] = token(tok.pad_id);
    m["tokenizer"]["unk_token"] = token(tok.unk_id);
    ojson files = ojson::array();
    for (const auto& f : tokenizer_source_files(tok)) files.push_back({{"path", f}, {"sha256", fs::sha256_file(f)}});
    m["tokenizer"]["files"] = files;
    m["format_kind"] = opt.format;
    m["template"] = {{"name", tpl.name}, {"source", opt.template_spec}, {"hash", tpl.hash}};
    // The chat turns as a Hugging Face chat template (absent for text data, which used no template).
    if (opt.format != "text") {
      const std::string chat = hf_chat_template(tpl, tok.add_bos && tok.bos_id, tpl.append_eos && tok.eos_id);
      if (!chat.empty()) m["template"]["chat_template"] = chat;
    }
    m["options"] = {{"max_seq_len", opt.max_seq_len}, {"overlong", opt.overlong}, {"val_fraction", opt.val_fraction},
                    {"seed", opt.seed}, {"shard_tokens", opt.shard_tokens}, {"skip_invalid", opt.skip_invalid}};
    ojson inputs = ojson::array();
    for (size_t i = 0; i < opt.inputs.size(); ++i)
      inputs.push_back({{"path", opt.inputs[i]}, {"bytes", mapped[i]->view().size()}, {"sha256", in_hashes[i]}});
    m["inputs"] = inputs;
    int64_t tokens[2] = {0, 0}, loss[2] = {0, 0};
    ojson shards = ojson::array();
    for (size_t k = 0; k < plans.size(); ++k) {
      const auto& p = plans[k];
      tokens[p.split] += p.tokens;
      loss[p.split] += sha[k].second;
      shards.push_back({{"file", shard_name(p)}, {"split", kSplitName[p.split]}, {"samples", p.last - p.first},
                        {"tokens", p.tokens}, {"loss_tokens", sha[k].second}, {"sha256", sha[k].first}});
    }
    m["counts"] = {{"lines", stats.lines},
                   {"samples", stats.samples},
                   {"train_samples", split_total_samples[0]},
                   {"val_samples", split_total_samples[1]},
                   {"train_tokens", tokens[0]},
                   {"val_tokens", tokens[1]},
                   {"train_loss_tokens", loss[0]},
                   {"val_loss_tokens", loss[1]},
                   {"empty_skipped", stats.empty},
                   {"truncated", stats.truncated},
                   {"dropped_overlong", stats.dropped_overlong},
                   {"dropped_no_target", stats.dropped_no_target},
                   {"split_pieces", stats.split_pieces},
                   {"skipped_invalid", stats.skipped_invalid}};
    if (pairs) {
      m["counts"]["sequences"] = stats.samples * 2;
      m["counts"]["truncated_response"] = stats.truncated_response;  // of the truncated pairs, those whose responses were cut too
      m["counts"]["dropped_identical"] = stats.dropped_identical;    // identical once truncated
    }
    ojson sk = ojson::array();
    for (const auto& block : all_skipped)
      for (auto& e : ojson::parse(block))
        if (sk.size() < 1000) sk.push_back(e);
    m["skipped_lines"] = sk;  // first 1000; the full count is counts.skipped_invalid
    m["shards"] = shards;

    for (int r = 0; r < world; ++r)
      for (int s = 0; s < 2; ++s)
        for (const char* ext : {".tok", ".msk", ".len", ".plen"}) stdfs::remove(spool_base(staging, r, s) + ext);
    fs::write_file_atomic(staging / "manifest.json", m.dump(2) + "\n");
    fs::publish_dir(staging, out_dir);
    if (!opt.quiet) {
      const std::string what = pairs ? " pair(s)" : " sample(s)";
      log::info("wrote " + std::to_string(plans.size()) + " shard(s) to " + out_dir.string() + ": " +
                std::to_string(split_total_samples[0]) + " train / " + std::to_string(split_total_samples[1]) +
                (pairs ? " val preference pairs, " : " val samples, ") + std::to_string(tokens[0] + tokens[1]) + " tokens");
      if (stats.skipped_invalid) log::info("skipped " + std::to_string(stats.skipped_invalid) + " invalid line(s); see manifest.json");
      if (stats.truncated)
        log::info("truncated " + std::to_string(stats.truncated) + what + " to --max-seq-len" +
                  (pairs ? " (prompt first, keeping its end; " + std::to_string(stats.truncated_response) +
                               " with responses cut too)" : ""));
      if (stats.dropped_overlong + stats.dropped_no_target + stats.dropped_identical)
        log::info("dropped " + std::to_string(stats.dropped_overlong + stats.dropped_no_target + stats.dropped_identical) +
                  what + " (" + std::to_string(stats.dropped_overlong) + " overlong, " +
                  std::to_string(stats.dropped_no_target) + " with no target tokens" +
                  (pairs ? ", " + std::to_string(stats.dropped_identical) + " identical once truncated" : "") + ")");
    }
  }
  rt.barrier();
  return 0;
}

}  // namespace

}  // namespace shardtune::prep
