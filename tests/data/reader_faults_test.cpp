// Bad input to the data readers: shards whose datasets have the wrong rank, dtype or length, ids outside
// the vocabulary, mask values other than 0/1, checksum mismatches, damaged manifests and shard paths
// leaving the folder. Every case must be an Error naming the file (and dataset or sample), never a crash.
// Also the verification cache (hit, miss after a change, full mode, unwritable folder) and rank shares.
#include <gtest/gtest.h>
#include <hdf5.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>

#include "shardtune/core/error.h"
#include "shardtune/core/fs.h"
#include "shardtune/core/json_depth.h"
#include "shardtune/data/dataset.h"
#include "shardtune/data/manifest.h"
#include "shardtune/data/shard.h"
#include "shardtune/data/verify.h"

namespace shardtune::data {
namespace {
namespace stdfs = std::filesystem;
using json = nlohmann::json;

constexpr int64_t kVocab = 259;

struct Folder {
  stdfs::path dir;
  json manifest;
  stdfs::path shard(int i) const { return dir / manifest["shards"][i]["file"].get<std::string>(); }
  void save() const { fs::write_file_atomic(dir / "manifest.json", manifest.dump()); }
  // Re-records shard i's sha256 and counts after a fixture edited it, so only the edit is wrong.
  void rehash(int i) {
    manifest["shards"][i]["sha256"] = fs::sha256_file(shard(i));
    save();
  }
};

// Two train shards of 10 samples (ids 1..60, masks alternating) and one val shard, with real sha256s.
// `edit` may change the data of shard 0 before it is written (the writer does not check ids or masks).
Folder make_folder(const std::function<void(ShardData&)>& edit = nullptr) {
  static int counter = 0;
  Folder f;
  f.dir = stdfs::temp_directory_path() / ("st-faults-" + std::to_string(::getpid()) + "-" + std::to_string(counter++));
  stdfs::remove_all(f.dir);
  stdfs::create_directories(f.dir);
  json shards = json::array();
  for (int s = 0; s < 3; ++s) {
    ShardInfo info;
    info.split = s < 2 ? "train" : "val";
    info.tokenizer_name = "byte";
    info.tokenizer_hash = "h";
    info.vocab_size = kVocab;
    ShardData d;
    for (int i = 0; i < 10; ++i) {
      for (int k = 0; k < 3 + i % 4; ++k) {
        d.tokens.push_back(1 + (i * 7 + k) % 60);
        d.loss_mask.push_back(k % 2);
      }
      d.offsets.push_back(static_cast<int64_t>(d.tokens.size()));
    }
    if (s == 0 && edit) edit(d);
    const std::string name = info.split + "-0000" + std::to_string(s) + ".h5";
    write_shard((f.dir / name).string(), info, d);
    shards.push_back({{"file", name}, {"split", info.split}, {"samples", d.num_samples()}, {"tokens", d.num_tokens()},
                      {"loss_tokens", d.num_loss_tokens()}, {"sha256", fs::sha256_file(f.dir / name)}});
  }
  f.manifest = {{"format", "shardtune-manifest"}, {"format_version", 1},
                {"tokenizer", {{"name", "byte"}, {"hash", "h"}, {"vocab_size", kVocab}, {"bos_id", 256}, {"eos_id", 257}}},
                {"shards", shards}};
  f.save();
  return f;
}

// Replaces dataset `name` of an existing shard by one of HDF5 type `type` and shape `dims` (zeros).
void replace_dataset(const stdfs::path& file, const char* name, hid_t type, std::vector<hsize_t> dims) {
  hid_t f = H5Fopen(file.c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
  ASSERT_GE(f, 0);
  ASSERT_GE(H5Ldelete(f, name, H5P_DEFAULT), 0);
  hid_t space = H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr);
  hid_t ds = H5Dcreate2(f, name, type, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
  ASSERT_GE(ds, 0);
  size_t n = 1;
  for (auto d : dims) n *= d;
  std::vector<char> zeros(n * H5Tget_size(type) + 1, 0);
  if (n) H5Dwrite(ds, type, H5S_ALL, H5S_ALL, H5P_DEFAULT, zeros.data());
  H5Dclose(ds);
  H5Sclose(space);
  H5Fclose(f);
}

std::string open_error(const Folder& f, const std::string& split = "train") {
  try {
    ShardSet::open(f.dir.string(), split, kVocab);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

VerifyResult verify(const Folder& f, VerifyMode mode = VerifyMode::Full, const std::string& cache = "", int rank = 0,
                    int world = 1) {
  VerifyOptions o;
  o.mode = mode;
  o.rank = rank;
  o.world = world;
  o.threads = 2;
  o.cache_dir = cache.empty() ? (f.dir / "cache").string() : cache;
  return verify_data(f.dir.string(), {"train", "val"}, o);
}

#define EXPECT_HAS(msg, part) EXPECT_NE((msg).find(part), std::string::npos) << "missing '" << (part) << "' in: " << (msg)

TEST(data_reader_faults, ValidFolderOpensAndVerifies) {
  Folder f = make_folder();
  EXPECT_EQ(open_error(f), "");
  VerifyResult r = verify(f);
  EXPECT_EQ(r.error, "");
  EXPECT_EQ(r.verified, 3);
}

TEST(data_reader_faults, WrongRankOfOffsetsAndTokensIsAnErrorNamingFileAndDataset) {
  for (const char* name : {"offsets", "tokens", "loss_mask"}) {
    Folder f = make_folder();
    const hid_t type = std::string(name) == "offsets" ? H5T_STD_I64LE
                       : std::string(name) == "tokens" ? H5T_STD_I32LE
                                                       : H5T_STD_U8LE;
    replace_dataset(f.shard(0), name, type, {11, 4});  // 2-D: overflowed the heap in ShardSet::open before
    f.rehash(0);
    const std::string msg = open_error(f);
    EXPECT_HAS(msg, f.shard(0).string());
    EXPECT_HAS(msg, std::string("'/") + name + "'");
    EXPECT_HAS(msg, "2 dimensions");
    EXPECT_HAS(verify(f).error, std::string("'/") + name + "'");  // the content check runs the same validation
    EXPECT_THROW(read_shard(f.shard(0).string()), Error);       // and so does shardtune-inspect
  }
}

TEST(data_reader_faults, ScalarAndWrongTypeDatasetsAreRejected) {
  Folder f = make_folder();
  replace_dataset(f.shard(0), "offsets", H5T_STD_I64LE, {});  // rank 0 (scalar)
  EXPECT_HAS(open_error(f), "0 dimensions");
  Folder g = make_folder();
  replace_dataset(g.shard(0), "tokens", H5T_IEEE_F32LE, {45});
  std::string msg = open_error(g);
  EXPECT_HAS(msg, "'/tokens' has type 4-byte float, expected int32");
  Folder h = make_folder();
  replace_dataset(h.shard(0), "offsets", H5T_STD_I32LE, {11});
  EXPECT_HAS(open_error(h), "'/offsets' has type 4-byte signed integer, expected int64");
}

TEST(data_reader_faults, InconsistentLengthsAndOffsetsAreRejected) {
  Folder f = make_folder();
  replace_dataset(f.shard(0), "loss_mask", H5T_STD_U8LE, {7});
  EXPECT_HAS(open_error(f), "'/loss_mask' has 7 entries");
  Folder g = make_folder();
  g.manifest["shards"][0]["samples"] = 9;
  g.save();
  EXPECT_HAS(open_error(g), "holds 10 samples, manifest.json says 9");
  g.manifest["shards"][0]["samples"] = 10;
  g.manifest["shards"][0]["tokens"] = 42;
  g.save();
  EXPECT_HAS(open_error(g), "holds 43 tokens, manifest.json says 42");
  Folder h = make_folder();
  replace_dataset(h.shard(0), "offsets", H5T_STD_I64LE, {11});  // all zero: ends at 0, tokens has 45
  EXPECT_HAS(open_error(h), "'/offsets' ends at 0");
}

TEST(data_reader_faults, OutOfVocabularyIdIsFoundBeforeTrainingNamingShardAndSample) {
  Folder f = make_folder([](ShardData& d) { d.tokens[d.offsets[7] + 1] = 300; });
  EXPECT_EQ(open_error(f), "");  // structure is fine: the content check finds it
  VerifyResult r = verify(f);
  EXPECT_HAS(r.error, f.shard(0).string());
  EXPECT_HAS(r.error, "sample 7, token 1");
  EXPECT_HAS(r.error, "id 300");
  EXPECT_LT(r.verified, 3);  // the failing shard is not counted as verified
}

TEST(data_reader_faults, BadMaskValueNamesShardAndSampleAlsoWhenVerificationIsOff) {
  Folder f = make_folder([](ShardData& d) { d.loss_mask[d.offsets[4]] = 2; });
  VerifyResult r = verify(f);
  EXPECT_HAS(r.error, f.shard(0).string());
  EXPECT_HAS(r.error, "sample 4, token 0");
  EXPECT_HAS(r.error, "loss_mask value 2");
  EXPECT_EQ(verify(f, VerifyMode::Off).error, "");
  auto set = ShardSet::open(f.dir.string(), "train", kVocab);
  std::vector<int32_t> t;
  std::vector<uint8_t> m;
  try {
    set->read(4, t, m);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_HAS(std::string(e.what()), f.shard(0).string());
    EXPECT_HAS(std::string(e.what()), "sample 4");
  }
}

TEST(data_reader_faults, ChecksumMismatchAndMissingChecksum) {
  Folder f = make_folder();
  f.manifest["shards"][1]["sha256"] = std::string(64, '0');
  f.save();
  VerifyResult r = verify(f);
  EXPECT_HAS(r.error, f.shard(1).string());
  EXPECT_HAS(r.error, "sha256");
  EXPECT_HAS(r.hint, "changed after shardtune-prep wrote it");
  f.manifest["shards"][1].erase("sha256");
  f.save();
  EXPECT_HAS(verify(f).error, "records no sha256");
}

TEST(data_reader_faults, LossTokenCountMustMatchManifest) {
  Folder f = make_folder();
  f.manifest["shards"][2]["loss_tokens"] = 1;
  f.save();
  EXPECT_HAS(verify(f).error, "manifest.json says 1");
}

TEST(data_reader_faults, ManifestFieldsAreCheckedByName) {
  Folder f = make_folder();
  f.manifest.erase("shards");
  f.save();
  std::string msg = open_error(f);
  EXPECT_HAS(msg, "manifest.json");
  EXPECT_HAS(msg, "field 'shards' is missing");
  EXPECT_HAS(verify(f).error, "field 'shards' is missing");  // never throws: returned for the ranks to combine

  Folder g = make_folder();
  g.manifest["shards"][1]["samples"] = "ten";
  g.save();
  EXPECT_HAS(open_error(g), "field 'shards[1].samples' has the wrong type (string)");
  g.manifest["tokenizer"].erase("vocab_size");
  g.save();
  EXPECT_HAS(open_error(g), "field 'tokenizer.vocab_size' is missing");
  g.manifest["tokenizer"] = 5;
  g.save();
  EXPECT_HAS(open_error(g), "field 'tokenizer' has the wrong type");
}

TEST(data_reader_faults, ShardPathsMustStayInsideTheFolder) {
  for (const std::string& bad : {"../x.h5", "sub/../../x.h5", "/abs.h5", ""}) {
    Folder f = make_folder();
    f.manifest["shards"][0]["file"] = bad;
    f.save();
    const std::string msg = open_error(f);
    EXPECT_HAS(msg, "manifest.json: shards[0]");
    EXPECT_HAS(msg, bad.empty() ? "empty" : bad.find("..") != std::string::npos ? "'..' component" : "absolute");
  }
  EXPECT_NO_THROW(check_relative_path("sub/train-00000.h5", "test"));
}

TEST(data_reader_faults, DeeplyNestedManifestIsRefusedBeforeParsing) {
  Folder f = make_folder();
  std::ofstream(f.dir / "manifest.json") << "{\"x\": " << std::string(300000, '[') << std::string(300000, ']') << "}";
  const std::string msg = open_error(f);
  EXPECT_HAS(msg, "manifest.json");
  EXPECT_HAS(msg, "nested deeper than 128");
}

TEST(data_json_depth, CountsOnlyBracketsOutsideStrings) {
  EXPECT_NO_THROW(check_json_depth(R"({"a": "[[[[[[\"{{{{{"})", "t", 2));
  EXPECT_NO_THROW(check_json_depth("[[]]", "t", 2));
  EXPECT_THROW(check_json_depth("[[[]]]", "t", 2), Error);
  EXPECT_THROW(check_json_depth(std::string(129, '{'), "t"), Error);
}

TEST(data_verify_cache, UnchangedShardsAreRecognizedChangedOnesVerifiedAgain) {
  Folder f = make_folder();
  const std::string cache = (f.dir / "cache").string();
  VerifyResult r1 = verify(f, VerifyMode::Auto, cache);
  ASSERT_EQ(r1.error, "");
  EXPECT_EQ(r1.verified, 3);
  EXPECT_EQ(r1.cached, 0);
  EXPECT_EQ(r1.cache_warning, "");
  EXPECT_EQ(std::distance(stdfs::directory_iterator(cache + "/verified"), stdfs::directory_iterator()), 3);
  VerifyResult r2 = verify(f, VerifyMode::Auto, cache);
  EXPECT_EQ(r2.verified, 0);
  EXPECT_EQ(r2.cached, 3);
  EXPECT_EQ(r2.bytes, 0u);
  // Rewriting a shard in place (same size, same content even) changes mtime/ctime: verified again.
  const std::string bytes = fs::read_file(f.shard(1));
  ::usleep(20000);
  std::ofstream(f.shard(1), std::ios::binary | std::ios::trunc) << bytes;
  VerifyResult r3 = verify(f, VerifyMode::Auto, cache);
  EXPECT_EQ(r3.verified, 1);
  EXPECT_EQ(r3.cached, 2);
  // A changed manifest checksum is another key: the cached record does not vouch for it.
  f.manifest["shards"][0]["sha256"] = std::string(64, 'a');
  f.save();
  EXPECT_HAS(verify(f, VerifyMode::Auto, cache).error, "sha256");
  // full ignores the records.
  f.rehash(0);
  VerifyResult r4 = verify(f, VerifyMode::Full, cache);
  EXPECT_EQ(r4.error, "");
  EXPECT_EQ(r4.verified, 3);
}

TEST(data_verify_cache, CorruptedShardAfterVerificationIsCaught) {
  Folder f = make_folder();
  const std::string cache = (f.dir / "cache").string();
  ASSERT_EQ(verify(f, VerifyMode::Auto, cache).error, "");
  std::string bytes = fs::read_file(f.shard(0));
  bytes[bytes.size() - 3] ^= 0x40;  // inside /loss_mask or /tokens data, the last dataset written
  ::usleep(20000);
  std::ofstream(f.shard(0), std::ios::binary | std::ios::trunc) << bytes;
  EXPECT_NE(verify(f, VerifyMode::Auto, cache).error, "");
}

TEST(data_verify_cache, UnwritableCacheIsOnlyAWarning) {
  Folder f = make_folder();
  VerifyResult r = verify(f, VerifyMode::Auto, "/dev/null/shardtune-cache");
  EXPECT_EQ(r.error, "");
  EXPECT_EQ(r.verified, 3);
  EXPECT_HAS(r.cache_warning, "/dev/null/shardtune-cache");
}

TEST(data_verify_cache, DefaultFolderFollowsEnvironment) {
  ::setenv("SHARDTUNE_CACHE_DIR", "/tmp/a", 1);
  EXPECT_EQ(default_cache_dir(), "/tmp/a");
  ::unsetenv("SHARDTUNE_CACHE_DIR");
  ::setenv("XDG_CACHE_HOME", "/tmp/x", 1);
  EXPECT_EQ(default_cache_dir(), "/tmp/x/shardtune");
  ::unsetenv("XDG_CACHE_HOME");
  ::setenv("HOME", "/home/u", 1);
  EXPECT_EQ(default_cache_dir(), "/home/u/.cache/shardtune");
}

TEST(data_verify_share, RanksVerifyDisjointSharesThatCoverEveryShard) {
  Folder f = make_folder([](ShardData& d) { d.tokens[0] = -1; });  // shard 0 is bad: only rank 0 sees it
  VerifyResult r0 = verify(f, VerifyMode::Full, "", 0, 2), r1 = verify(f, VerifyMode::Full, "", 1, 2);
  EXPECT_HAS(r0.error, "sample 0, token 0");
  EXPECT_EQ(r1.error, "");
  EXPECT_EQ(r1.verified, 1);  // shard 1; shard 2 (index 2) belongs to rank 0
  EXPECT_EQ(parse_verify_mode("auto"), VerifyMode::Auto);
  EXPECT_THROW(parse_verify_mode("sometimes"), Error);
}

}  // namespace
}  // namespace shardtune::data
