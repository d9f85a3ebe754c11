// shardtune-fuzz: a small mutation fuzzer over the readers of untrusted input (HDF5 shard + manifest,
// safetensors header, model config.json, prep's JSONL records). Torch-free; meant to be built with
// -DSHARDTUNE_SANITIZE=address (ASan + UBSan) by tools/fuzz/run.sh, which also keeps reproducers.
//
//   shardtune-fuzz make-seeds DIR                 write seed inputs for every target into DIR/<target>/
//   shardtune-fuzz run TARGET SEEDS OUT SECONDS   mutate seeds for SECONDS; OUT/current links to the input in flight
//   shardtune-fuzz replay TARGET FILE             run one input (a reproducer) once
//
// Outcomes per input: accepted, rejected with shardtune::Error (the expected answer to bad input), or a
// finding: any other exception escaping a reader (a raw library message instead of ours) is written to
// OUT/finding-N and counted; a crash or sanitizer report ends the process and run.sh keeps OUT/current.
#include <hdf5.h>
#include <simdjson.h>
#include <unistd.h>

#include <algorithm>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "record.h"
#include "shardtune/core/error.h"
#include "shardtune/core/fs.h"
#include "shardtune/data/dataset.h"
#include "shardtune/data/manifest.h"
#include "shardtune/data/shard.h"
#include "shardtune/data/verify.h"
#include "shardtune/model/config.h"
#include "shardtune/model/safetensors.h"
#include "shardtune/tokenizer/tokenizer.h"
#include "template.h"

namespace {

namespace stdfs = std::filesystem;
using namespace shardtune;
using json = nlohmann::json;
using Bytes = std::string;

struct Rng {
  uint64_t s;
  uint64_t next() {
    uint64_t z = (s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  size_t below(size_t n) { return n ? static_cast<size_t>(next() % n) : 0; }
  bool chance(int percent) { return below(100) < static_cast<size_t>(percent); }
};

void write_bytes(const stdfs::path& p, const Bytes& b) {
  std::ofstream f(p, std::ios::binary | std::ios::trunc);
  f.write(b.data(), static_cast<std::streamsize>(b.size()));
}

// ---- mutations: bit flips, interesting bytes and integers, truncation, chunk copies, deep nesting ----

const uint64_t kInteresting[] = {0, 1, 2, 7, 8, 0x7f, 0x80, 0xff, 0x7fff, 0xffff, 0x7fffffff, 0x80000000ull,
                                 0xffffffffull, 0x100000000ull, 0x7fffffffffffffffull, 0x8000000000000000ull,
                                 ~0ull, 1ull << 40};
const char* kNumbers[] = {"-1", "0", "1", "100000", "2147483648", "9223372036854775807", "18446744073709551616",
                          "1e308", "-1e308", "1e-320", "99999999999999999999999", "0.5", "-0"};

void mutate_once(Bytes& b, Rng& r, bool text) {
  switch (r.below(text ? 10 : 8)) {
    case 0:  // bit flip
      if (!b.empty()) b[r.below(b.size())] ^= static_cast<char>(1u << r.below(8));
      break;
    case 1:  // interesting byte
      if (!b.empty()) b[r.below(b.size())] = static_cast<char>(kInteresting[r.below(8)]);
      break;
    case 2:  // interesting little-endian integer of 1, 2, 4 or 8 bytes (lengths, dims, offsets)
      if (b.size() >= 8) {
        const size_t w = size_t(1) << r.below(4), at = r.below(b.size() - w + 1);
        const uint64_t v = kInteresting[r.below(std::size(kInteresting))];
        for (size_t i = 0; i < w; ++i) b[at + i] = static_cast<char>((v >> (8 * i)) & 0xff);
      }
      break;
    case 3:  // truncate
      if (!b.empty()) b.resize(r.below(b.size()));
      break;
    case 4: {  // delete a range
      if (b.empty()) break;
      const size_t at = r.below(b.size()), n = 1 + r.below(std::min<size_t>(64, b.size() - at));
      b.erase(at, n);
      break;
    }
    case 5: {  // duplicate a range elsewhere
      if (b.empty()) break;
      const size_t at = r.below(b.size()), n = 1 + r.below(std::min<size_t>(64, b.size() - at));
      const Bytes piece = b.substr(at, n);
      b.insert(r.below(b.size() + 1), piece);
      break;
    }
    case 6:  // random byte
      if (!b.empty()) b[r.below(b.size())] = static_cast<char>(r.next());
      break;
    case 7:  // add a tail
      b += Bytes(1 + r.below(16), static_cast<char>(r.next()));
      break;
    case 8: {  // text: replace a number by an extreme one (huge sizes, negatives, overflow)
      std::vector<size_t> starts;
      for (size_t i = 0; i < b.size(); ++i)
        if ((b[i] >= '0' && b[i] <= '9') && (i == 0 || !(b[i - 1] >= '0' && b[i - 1] <= '9'))) starts.push_back(i);
      if (starts.empty()) break;
      size_t at = starts[r.below(starts.size())], end = at;
      while (end < b.size() && ((b[end] >= '0' && b[end] <= '9') || b[end] == '.' || b[end] == 'e')) ++end;
      b.replace(at, end - at, kNumbers[r.below(std::size(kNumbers))]);
      break;
    }
    case 9: {  // text: deep nesting at a value position
      const size_t depth = r.chance(50) ? 100 + r.below(200) : 1000 + r.below(300000);
      size_t at = b.find(':', r.below(b.size() + 1));
      if (at == Bytes::npos) at = b.find(':');
      if (at == Bytes::npos) break;
      const char open = r.chance(50) ? '[' : '{';
      Bytes nest;
      if (open == '[') nest = Bytes(depth, '[') + "1" + Bytes(depth, ']') + ",";
      else for (size_t i = 0; i < depth; ++i) nest += "{\"k\":";
      if (open == '{') nest += "1" + Bytes(depth, '}') + ",";
      b.insert(at + 1, nest);
      break;
    }
  }
}

// ---- structural shard generator: datasets of random rank, shape, dtype and contents ----

hid_t random_type(Rng& r) {
  const hid_t types[] = {H5T_STD_I32LE, H5T_STD_I64LE, H5T_STD_U8LE, H5T_STD_I8LE, H5T_STD_U32LE,
                         H5T_IEEE_F32LE, H5T_IEEE_F64LE, H5T_STD_I32BE, H5T_STD_I64BE};
  return types[r.below(std::size(types))];
}

// Writes a shard whose every dataset is usually right and sometimes wrong in rank, dims, type or values,
// plus a manifest whose counts usually agree. Returns false if HDF5 refused the random layout.
bool generate_shard(const stdfs::path& dir, Rng& r) {
  stdfs::remove(dir / "train-00000.h5");
  const int n = static_cast<int>(r.below(20));
  std::vector<int64_t> offsets{0};
  for (int i = 0; i < n; ++i) offsets.push_back(offsets.back() + static_cast<int64_t>(r.below(8)));
  const int64_t nt = offsets.back();
  if (r.chance(10) && n > 1) offsets[1 + r.below(n)] = static_cast<int64_t>(kInteresting[r.below(std::size(kInteresting))]);
  std::vector<int64_t> tokens(nt), mask(nt);
  for (auto& t : tokens) t = r.chance(2) ? static_cast<int64_t>(kInteresting[r.below(std::size(kInteresting))]) : int64_t(r.below(259));
  for (auto& m : mask) m = r.chance(2) ? 2 : int64_t(r.below(2));
  H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
  hid_t fcpl = H5Pcreate(H5P_FILE_CREATE);
  hid_t f = H5Fcreate((dir / "train-00000.h5").c_str(), H5F_ACC_TRUNC, fcpl, H5P_DEFAULT);
  H5Pclose(fcpl);
  if (f < 0) return false;
  auto dataset = [&](const char* name, hid_t good_type, const std::vector<int64_t>& v) {
    const size_t kind = r.below(100);
    if (kind < 3) return;  // absent
    if (kind < 5) {        // a group where a dataset should be
      H5Gclose(H5Gcreate2(f, name, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT));
      return;
    }
    std::vector<hsize_t> dims{v.size()};
    bool chunked = false;
    if (kind < 15) {  // another rank
      dims.assign(r.below(4), 0);
      for (auto& d : dims) d = 1 + r.below(6);
    } else if (kind < 22) {  // another length
      dims[0] = r.chance(20) ? (hsize_t(1) << (20 + r.below(30))) : r.below(v.size() + 3);
      chunked = dims[0] > 4096;
    }
    const hid_t type = kind >= 22 && kind < 30 ? random_type(r) : good_type;
    hid_t space = dims.empty() ? H5Screate(H5S_SCALAR) : H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr);
    hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
    if (chunked) {
      hsize_t chunk = 1024;
      H5Pset_chunk(dcpl, 1, &chunk);
    }
    hid_t ds = H5Dcreate2(f, name, type, space, H5P_DEFAULT, dcpl, H5P_DEFAULT);
    size_t count = 1;
    for (auto d : dims) count *= d;
    if (ds >= 0 && !chunked) {
      std::vector<int64_t> buf(count);
      for (size_t i = 0; i < count; ++i) buf[i] = i < v.size() ? v[i] : static_cast<int64_t>(r.next() % 300);
      H5Dwrite(ds, H5T_NATIVE_INT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf.data());
    }
    if (ds >= 0) H5Dclose(ds);
    H5Pclose(dcpl);
    H5Sclose(space);
  };
  dataset("tokens", H5T_STD_I32LE, tokens);
  dataset("offsets", H5T_STD_I64LE, offsets);
  dataset("loss_mask", H5T_STD_U8LE, mask);
  auto str_attr = [&](const char* name, const std::string& value) {
    if (r.chance(3)) return;
    hid_t t = H5Tcopy(H5T_C_S1);
    H5Tset_size(t, std::max<size_t>(1, value.size()));
    hid_t s = H5Screate(H5S_SCALAR);
    hid_t a = H5Acreate2(f, name, t, s, H5P_DEFAULT, H5P_DEFAULT);
    if (a >= 0) H5Awrite(a, t, value.empty() ? "" : value.data()), H5Aclose(a);
    H5Sclose(s);
    H5Tclose(t);
  };
  auto int_attr = [&](const char* name, int64_t value) {
    if (r.chance(3)) return;
    if (r.chance(5)) value = static_cast<int64_t>(kInteresting[r.below(std::size(kInteresting))]);
    hid_t s = H5Screate(H5S_SCALAR);
    hid_t a = H5Acreate2(f, name, H5T_STD_I64LE, s, H5P_DEFAULT, H5P_DEFAULT);
    if (a >= 0) H5Awrite(a, H5T_NATIVE_INT64, &value), H5Aclose(a);
    H5Sclose(s);
  };
  str_attr("format", data::kShardMagic);
  int_attr("format_version", data::kShardVersion);
  str_attr("split", "train");
  str_attr("tokenizer_name", "byte");
  str_attr("tokenizer_hash", "h");
  int_attr("vocab_size", 259);
  int_attr("bos_id", 256);
  int_attr("eos_id", 257);
  int_attr("pad_id", -1);
  str_attr("template", "plain");
  str_attr("source_files", "[]");
  int_attr("num_samples", n);
  int_attr("num_tokens", nt);
  H5Fclose(f);
  int64_t ones = 0;
  for (auto m : mask) ones += m == 1;
  json shard = {{"file", "train-00000.h5"}, {"split", "train"}, {"samples", r.chance(90) ? n : n + 1},
                {"tokens", r.chance(90) ? nt : nt - 1}, {"loss_tokens", ones},
                {"sha256", r.chance(80) ? fs::sha256_file(dir / "train-00000.h5") : std::string(64, '0')}};
  json m = {{"format", "shardtune-manifest"}, {"format_version", 1},
            {"tokenizer", {{"name", "byte"}, {"hash", "h"}, {"vocab_size", 259}, {"bos_id", 256}, {"eos_id", 257}}},
            {"shards", {shard}}};
  write_bytes(dir / "manifest.json", m.dump());
  return true;
}

// ---- the readers under test ----

// Errors caught inside a runner (several readers per input): the input counts as rejected.
int64_t g_rejections = 0;
#define REJECTS(stmt)           \
  try {                         \
    stmt;                       \
  } catch (const Error&) {      \
    ++g_rejections;             \
  }

void read_folder(const stdfs::path& dir) {
  REJECTS({
    auto set = data::ShardSet::open(dir.string(), "train", 259);
    std::vector<int32_t> t;
    std::vector<uint8_t> m;
    for (int64_t i = 0; i < std::min<int64_t>(set->size(), 1000); ++i) {
      set->length(i);
      REJECTS(set->read(i, t, m));
    }
  });
  data::VerifyOptions o;
  o.mode = data::VerifyMode::Full;
  o.threads = 2;
  o.cache_dir = (dir / "cache").string();
  // Never throws by contract (an escape is a finding); a failure is in the result.
  if (!data::verify_data(dir.string(), {"train", "val"}, o).error.empty()) ++g_rejections;
}

void run_shard(const stdfs::path& file) {
  REJECTS(data::read_shard(file.string(), 259));
  read_folder(file.parent_path());
}

void run_safetensors(const stdfs::path& file) {
  st::File f(file);
  uint64_t sum = 0;
  for (const auto& t : f.tensors()) {  // touch the first and last byte: the mapping must hold them
    sum += t.numel();
    if (t.nbytes()) sum += f.data(t)[0] + f.data(t)[t.nbytes() - 1];
  }
  if (sum == 42) std::fputc(' ', stderr);
}

void run_config(const stdfs::path& file) {
  model::ModelConfig c = model::ModelConfig::from_file(file.string());
  size_t n = c.expected_tensors().size();
  n += c.to_json().dump().size();
  if (n == 42) std::fputc(' ', stderr);
}

void run_record(const stdfs::path& file, uint64_t seed) {
  static simdjson::dom::parser parser;
  static const auto tok = load_tokenizer("byte");
  static const auto tpl = prep::PromptTemplate::load("alpaca");
  static const auto chat = prep::PromptTemplate::load("chatml");
  const std::string text = fs::read_file(file);
  size_t start = 0;
  const prep::Format formats[] = {prep::Format::Auto, prep::Format::Text, prep::Format::Instruction,
                                  prep::Format::InputOutput, prep::Format::Chat};
  int64_t ok = 0, bad = 0;  // the input counts as rejected when no line of it makes a sample
  while (start <= text.size()) {
    size_t end = text.find('\n', start);
    if (end == std::string::npos) end = text.size();
    try {
      prep::Record rec = prep::parse_record(parser, std::string_view(text).substr(start, end - start), formats[seed % 5]);
      prep::build_sample(rec, rec.format == prep::Format::Chat ? chat : tpl, *tok);
      ++ok;
    } catch (const prep::RecordError&) {
      ++bad;
    } catch (const Error&) {
      ++bad;
    }
    start = end + 1;
  }
  if (ok == 0 && bad > 0) ++g_rejections;
}

// ---- seeds ----

void make_seeds(const stdfs::path& root) {
  const stdfs::path sh = root / "shard", st_dir = root / "safetensors", cfg = root / "config", rec = root / "record",
                    man = root / "manifest";
  for (const auto& d : {sh, st_dir, cfg, rec, man}) stdfs::create_directories(d);
  data::ShardInfo info;
  info.split = "train";
  info.tokenizer_name = "byte";
  info.tokenizer_hash = "h";
  info.vocab_size = 259;
  info.bos_id = 256;
  info.eos_id = 257;
  for (int s = 0; s < 2; ++s) {
    data::ShardData d;
    for (int i = 0; i < 6 + 4 * s; ++i) {
      for (int k = 0; k < 2 + i % 5; ++k) {
        d.tokens.push_back((i * 13 + k) % 259);
        d.loss_mask.push_back(k > 0);
      }
      d.offsets.push_back(static_cast<int64_t>(d.tokens.size()));
    }
    const stdfs::path p = sh / ("seed" + std::to_string(s) + ".h5");
    stdfs::remove(p);
    data::write_shard(p.string(), info, d);
  }
  // The manifest target's folder: one train and one val shard and their manifest (the seed).
  json shards = json::array();
  for (int s = 0; s < 2; ++s) {
    const std::string name = s ? "val-00000.h5" : "train-00000.h5";
    info.split = s ? "val" : "train";
    data::ShardData d;
    for (int i = 0; i < 5; ++i) {
      for (int k = 0; k < 3; ++k) d.tokens.push_back(i + k), d.loss_mask.push_back(k == 2);
      d.offsets.push_back(static_cast<int64_t>(d.tokens.size()));
    }
    stdfs::remove(man / name);
    data::write_shard((man / name).string(), info, d);
    shards.push_back({{"file", name}, {"split", info.split}, {"samples", d.num_samples()}, {"tokens", d.num_tokens()},
                      {"loss_tokens", d.num_loss_tokens()}, {"sha256", fs::sha256_file(man / name)}});
  }
  json m = {{"format", "shardtune-manifest"}, {"format_version", 1},
            {"tokenizer", {{"name", "byte"}, {"hash", "h"}, {"vocab_size", 259}, {"bos_id", 256}, {"eos_id", 257},
                           {"source", "byte"}}},
            {"counts", {{"samples", 10}}}, {"shards", shards}};
  write_bytes(man / "seed-manifest.json", m.dump(2));
  // safetensors: a few tensors of several dtypes and shapes.
  std::vector<float> w(6 * 4, 0.5f);
  std::vector<uint16_t> h(8, 0x3c00);
  std::vector<int64_t> ids(3, 7);
  st::write_file(st_dir / "seed0.safetensors",
                 {{"a.weight", st::DType::F32, {6, 4}, w.data(), w.size() * 4},
                  {"b.bias", st::DType::F16, {8}, h.data(), h.size() * 2},
                  {"c", st::DType::I64, {3, 1}, ids.data(), ids.size() * 8},
                  {"empty", st::DType::BF16, {0, 5}, nullptr, 0}},
                 {{"format", "pt"}});
  st::write_file(st_dir / "seed1.safetensors", {{"x", st::DType::F32, {2, 3}, w.data(), 24}});
  // config.json: Llama (GQA, llama3 RoPE), Qwen2, GPT-2.
  json llama = {{"architectures", {"LlamaForCausalLM"}}, {"model_type", "llama"}, {"vocab_size", 32}, {"hidden_size", 16},
                {"intermediate_size", 24}, {"num_hidden_layers", 2}, {"num_attention_heads", 4},
                {"num_key_value_heads", 2}, {"rms_norm_eps", 1e-5}, {"max_position_embeddings", 64},
                {"rope_theta", 500000.0}, {"tie_word_embeddings", false}, {"bos_token_id", 1}, {"eos_token_id", {2, 3}},
                {"rope_scaling", {{"rope_type", "llama3"}, {"factor", 8.0}, {"low_freq_factor", 1.0},
                                  {"high_freq_factor", 4.0}, {"original_max_position_embeddings", 8192}}}};
  write_bytes(cfg / "seed-llama.json", llama.dump(2));
  json qwen = llama;
  qwen["model_type"] = "qwen2";
  qwen["rope_scaling"] = nullptr;
  qwen["head_dim"] = 8;
  write_bytes(cfg / "seed-qwen2.json", qwen.dump(2));
  json gpt2 = {{"architectures", {"GPT2LMHeadModel"}}, {"model_type", "gpt2"}, {"vocab_size", 50}, {"n_embd", 16},
               {"n_layer", 2}, {"n_head", 2}, {"n_positions", 32}, {"n_inner", nullptr}, {"layer_norm_epsilon", 1e-5},
               {"activation_function", "gelu_new"}};
  write_bytes(cfg / "seed-gpt2.json", gpt2.dump(2));
  // JSONL: every record format, unicode, escapes.
  write_bytes(rec / "seed.jsonl",
              "{\"text\": \"Once upon a time \\u00e9\\ud83d\\ude00 there was\"}\n"
              "{\"instruction\": \"Add\", \"input\": \"1 2\", \"output\": \"3\"}\n"
              "{\"instruction\": \"Say hi\", \"input\": null, \"output\": \"hi\"}\n"
              "{\"input\": \"question\", \"output\": \"answer\"}\n"
              "{\"messages\": [{\"role\": \"system\", \"content\": \"be brief\"}, {\"role\": \"user\", \"content\": "
              "\"hello\"}, {\"role\": \"assistant\", \"content\": \"hi\"}]}\n");
}

// ---- the loop ----

using Runner = std::function<void(const stdfs::path& input, uint64_t seed)>;

struct Target {
  bool text;               // JSON/text mutations apply
  std::string input_name;  // the file name the reader sees
  Runner run;
};

std::map<std::string, Target> targets() {
  return {
      {"shard", {false, "train-00000.h5", [](const stdfs::path& p, uint64_t) { run_shard(p); }}},
      {"manifest", {true, "manifest.json", [](const stdfs::path& p, uint64_t) { read_folder(p.parent_path()); }}},
      {"safetensors", {true, "input.safetensors", [](const stdfs::path& p, uint64_t) { REJECTS(run_safetensors(p)); }}},
      {"config", {true, "config.json", [](const stdfs::path& p, uint64_t) { REJECTS(run_config(p)); }}},
      {"record", {true, "input.jsonl", [](const stdfs::path& p, uint64_t s) { run_record(p, s); }}},
  };
}

int run_loop(const std::string& name, const stdfs::path& seeds, const stdfs::path& out, double seconds) {
  auto all = targets();
  ST_CHECK(all.count(name), "unknown target '" + name + "'", "targets: shard manifest safetensors config record");
  const Target& t = all.at(name);
  stdfs::create_directories(out);
  std::vector<stdfs::path> seed_files;
  for (const auto& e : stdfs::directory_iterator(seeds))
    if (e.is_regular_file() && e.path().filename().string().rfind("seed", 0) == 0) seed_files.push_back(e.path());
  std::sort(seed_files.begin(), seed_files.end());
  std::vector<Bytes> corpus;
  for (const auto& p : seed_files) corpus.push_back(fs::read_file(p));
  ST_CHECK(!corpus.empty(), "no seed files in '" + seeds.string() + "'", "run shardtune-fuzz make-seeds first");
  if (name == "manifest")  // the shards the manifest seed describes
    for (const auto& e : stdfs::directory_iterator(seeds))
      if (e.path().extension() == ".h5") stdfs::copy_file(e.path(), out / e.path().filename(), stdfs::copy_options::overwrite_existing);
  Bytes seed_manifest;
  if (name == "shard") {  // the manifest describing the first seed shard
    const data::Shard s0 = data::read_shard(seed_files[0].string());
    json m = {{"format", "shardtune-manifest"}, {"format_version", 1},
              {"tokenizer", {{"name", "byte"}, {"hash", "h"}, {"vocab_size", 259}}},
              {"shards", {{{"file", "train-00000.h5"}, {"split", "train"}, {"samples", s0.data.num_samples()},
                           {"tokens", s0.data.num_tokens()}, {"loss_tokens", s0.data.num_loss_tokens()},
                           {"sha256", fs::sha256_hex(corpus[0])}}}}};
    seed_manifest = m.dump();
  }
  // Share of shard inputs made by the structural generator (the rest are byte mutations of seeds).
  const char* gp = std::getenv("FUZZ_GENERATE_PERCENT");
  const int generate_percent = gp ? std::atoi(gp) : 40;
  Rng rng{static_cast<uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count())};
  const stdfs::path input = out / t.input_name;
  // OUT/current names the input in flight: the reproducer, should it crash (run.sh copies it).
  stdfs::remove(out / "current");
  stdfs::create_symlink(t.input_name, out / "current");
  H5open();
  ssize_t open_before = H5Fget_obj_count(H5F_OBJ_ALL, H5F_OBJ_ALL);  // baseline (0 in the normal build)
  const auto t0 = std::chrono::steady_clock::now();
  int64_t execs = 0, accepted = 0, rejected = 0, findings = 0;
  for (;; ++execs) {
    const double el = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (el >= seconds) break;
    bool generated = false;
    if (name == "shard" && rng.chance(generate_percent)) {
      generated = generate_shard(out, rng);
    }
    if (!generated) {
      if (name == "shard") write_bytes(out / "manifest.json", seed_manifest);
      Bytes b = corpus[rng.below(corpus.size())];
      for (size_t k = 0, n = 1 + rng.below(4); k < n; ++k) mutate_once(b, rng, t.text);
      write_bytes(input, b);
    }
    std::string finding;
    g_rejections = 0;
    try {
      t.run(input, rng.next());
      ++(g_rejections ? rejected : accepted);
    } catch (const std::exception& e) {
      finding = e.what();  // not our Error: the user would see a raw library message (or worse)
    }
    // Every HDF5 file object a reader (or the generator) opened must be closed again, on error paths too.
    if (const ssize_t open_ids = H5Fget_obj_count(H5F_OBJ_ALL, H5F_OBJ_ALL); finding.empty() && open_ids > open_before) {
      finding = std::to_string(open_ids - open_before) + " HDF5 file object(s) left open";
      open_before = open_ids;
    }
    if (!finding.empty()) {
      ++findings;
      const stdfs::path keep = out / ("finding-" + std::to_string(findings));
      stdfs::copy_file(input, keep, stdfs::copy_options::overwrite_existing);
      std::fprintf(stderr, "FINDING %s: %s (input kept as %s)\n", name.c_str(), finding.c_str(), keep.c_str());
    }
  }
  const double el = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (open_before) std::printf("(HDF5 reported %lld file objects open before the first input)\n", static_cast<long long>(open_before));
  std::printf("target %-12s %8lld execs in %5.1f s (%6.0f/s): %lld accepted, %lld rejected with an Error, %lld findings\n",
              name.c_str(), static_cast<long long>(execs), el, execs / el, static_cast<long long>(accepted),
              static_cast<long long>(rejected), static_cast<long long>(findings));
  return findings ? 3 : 0;
}

int fuzz_main(int argc, char** argv) {
  const std::string usage = "usage: shardtune-fuzz make-seeds DIR | run TARGET SEEDS OUT SECONDS | replay TARGET FILE";
  ST_CHECK(argc >= 3, usage);
  const std::string cmd = argv[1];
  if (cmd == "make-seeds") {
    make_seeds(argv[2]);
    return 0;
  }
  if (cmd == "run") {
    ST_CHECK(argc == 6, usage);
    return run_loop(argv[2], argv[3], argv[4], std::stod(argv[5]));
  }
  if (cmd == "replay") {
    ST_CHECK(argc == 4, usage);
    auto all = targets();
    ST_CHECK(all.count(argv[2]), std::string("unknown target '") + argv[2] + "'");
    // In the reproducer's own folder (run.sh's OUT/<target>: the manifest target's shards lie there).
    const stdfs::path dir = stdfs::absolute(argv[3]).parent_path();
    if (stdfs::absolute(argv[3]) != dir / all.at(argv[2]).input_name)
      stdfs::copy_file(argv[3], dir / all.at(argv[2]).input_name, stdfs::copy_options::overwrite_existing);
    all.at(argv[2]).run(dir / all.at(argv[2]).input_name, 0);
    std::printf("replay %s: no crash\n", argv[3]);
    return 0;
  }
  ST_FAIL(usage);
}

}  // namespace

int main(int argc, char** argv) { return shardtune::run_guarded("shardtune-fuzz", fuzz_main, argc, argv); }
