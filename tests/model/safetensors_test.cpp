// Torch-free safetensors reader/writer: round trip, sharding, every header validation error, and the
// checkpoint writers (hashing while writing, a model shared out over several writers).
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>

#include "shardtune/core/error.h"
#include "shardtune/core/fs.h"
#include "shardtune/model/safetensors.h"

namespace st = shardtune::st;
namespace stdfs = std::filesystem;

namespace {

stdfs::path tmp_dir(const std::string& name) {
  const stdfs::path d = stdfs::path(ST_BINARY_DIR) / "test_tmp" / "safetensors" / name;
  stdfs::remove_all(d);
  stdfs::create_directories(d);
  return d;
}

// A file with a hand-written header and `data_bytes` bytes of data.
stdfs::path raw_file(const stdfs::path& p, const std::string& header, size_t data_bytes, bool lie_length = false) {
  std::ofstream f(p, std::ios::binary);
  uint64_t n = lie_length ? (1ull << 40) : header.size();
  f.write(reinterpret_cast<const char*>(&n), 8);
  f << header << std::string(data_bytes, '\0');
  return p;
}

std::string error_of(const stdfs::path& p) {
  try {
    st::File f(p);
  } catch (const shardtune::Error& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST(model_safetensors, RoundTripKeepsBytesNamesAndMetadata) {
  const auto d = tmp_dir("roundtrip");
  const float a[6] = {1, 2, 3, 4, 5, 6};
  const uint16_t b[3] = {0x3f80, 0x4000, 0xbf80};
  st::write_file(d / "x.safetensors",
                 {{"a.weight", st::DType::F32, {2, 3}, a, sizeof a}, {"b", st::DType::BF16, {3}, b, sizeof b}},
                 {{"format", "pt"}});
  st::File f(d / "x.safetensors");
  ASSERT_EQ(f.tensors().size(), 2u);
  const auto& ta = f.at("a.weight");
  EXPECT_EQ(ta.shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(std::memcmp(f.data(ta), a, sizeof a), 0);
  EXPECT_EQ(f.at("b").dtype, st::DType::BF16);
  EXPECT_EQ(std::memcmp(f.data(f.at("b")), b, sizeof b), 0);
  EXPECT_EQ(f.metadata().at("format"), "pt");
  EXPECT_EQ(f.find("nope"), nullptr);
}

TEST(model_safetensors, ShardedWriteHasIndexAndLoadsBack) {
  const auto d = tmp_dir("sharded");
  std::vector<float> v(1000, 1.5f);
  std::vector<st::TensorRef> refs;
  for (int i = 0; i < 5; ++i) refs.push_back({"t" + std::to_string(i), st::DType::F32, {1000}, v.data(), 4000});
  const auto files = st::write_sharded(d, "model", refs, 8000);
  EXPECT_EQ(files.size(), 3u);
  EXPECT_TRUE(stdfs::exists(d / "model.safetensors.index.json"));
  EXPECT_TRUE(stdfs::exists(d / "model-00001-of-00003.safetensors"));
  EXPECT_EQ(st::model_files(d).size(), 3u);
}

TEST(model_safetensors, MissingTensorNamesFileAndTensor) {
  const auto d = tmp_dir("missing");
  const float a = 1;
  st::write_file(d / "m.safetensors", {{"a", st::DType::F32, {1}, &a, 4}});
  st::File f(d / "m.safetensors");
  try {
    f.at("model.norm.weight");
    FAIL() << "expected Error";
  } catch (const shardtune::Error& e) {
    EXPECT_NE(std::string(e.what()).find("m.safetensors"), std::string::npos);
    EXPECT_NE(std::string(e.what()).find("model.norm.weight"), std::string::npos);
    EXPECT_FALSE(e.hint().empty());
  }
}

TEST(model_safetensors, TruncatedFileIsRejected) {
  const auto d = tmp_dir("truncated");
  std::vector<float> v(64, 2.0f);
  st::write_file(d / "t.safetensors", {{"w.weight", st::DType::F32, {64}, v.data(), 256}});
  stdfs::resize_file(d / "t.safetensors", stdfs::file_size(d / "t.safetensors") - 10);
  const std::string msg = error_of(d / "t.safetensors");
  EXPECT_NE(msg.find("t.safetensors"), std::string::npos) << msg;
  EXPECT_NE(msg.find("w.weight"), std::string::npos) << msg;
  EXPECT_NE(msg.find("truncated"), std::string::npos) << msg;
  // Shorter than the 8-byte length prefix.
  stdfs::resize_file(d / "t.safetensors", 5);
  EXPECT_NE(error_of(d / "t.safetensors").find("too short"), std::string::npos);
}

TEST(model_safetensors, CorruptHeaderIsRejected) {
  const auto d = tmp_dir("corrupt");
  EXPECT_NE(error_of(raw_file(d / "a.safetensors", "{\"x\": {\"dtype\": ", 0)).find("not valid JSON"),
            std::string::npos);
  EXPECT_NE(error_of(raw_file(d / "b.safetensors", "{}", 0, /*lie_length=*/true)).find("header length"),
            std::string::npos);
  EXPECT_NE(error_of(raw_file(d / "c.safetensors", R"({"w": {"dtype": "F99", "shape": [1], "data_offsets": [0, 4]}})", 4))
                .find("unsupported dtype"),
            std::string::npos);
  EXPECT_NE(error_of(raw_file(d / "d.safetensors", R"({"w": {"dtype": "F32", "shape": [1]}})", 4))
                .find("'w'"),
            std::string::npos);
  EXPECT_NE(error_of(raw_file(d / "e.safetensors", "[1, 2]", 0)).find("not a JSON object"), std::string::npos);
}

TEST(model_safetensors, DeeplyNestedHeaderIsRefused) {
  const auto d = tmp_dir("nested");
  const std::string h = "{\"__metadata__\": " + std::string(300000, '[') + std::string(300000, ']') + "}";
  const std::string msg = error_of(raw_file(d / "n.safetensors", h, 0));
  EXPECT_NE(msg.find("n.safetensors"), std::string::npos) << msg;
  EXPECT_NE(msg.find("nested deeper"), std::string::npos) << msg;
}

TEST(model_safetensors, ShapeTimesDtypeMustMatchByteLength) {
  const auto d = tmp_dir("shape");
  const auto p = raw_file(d / "s.safetensors", R"({"q.weight": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 12]}})", 16);
  const std::string msg = error_of(p);
  EXPECT_NE(msg.find("q.weight"), std::string::npos) << msg;
  EXPECT_NE(msg.find("16 bytes"), std::string::npos) << msg;
  EXPECT_NE(msg.find("s.safetensors"), std::string::npos) << msg;
}

TEST(model_safetensors, OverlappingOffsetsAreRejected) {
  const auto d = tmp_dir("overlap");
  const auto p = raw_file(d / "o.safetensors",
                          R"({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
                              "b": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]}})", 24);
  const std::string msg = error_of(p);
  EXPECT_NE(msg.find("overlap"), std::string::npos) << msg;
  EXPECT_NE(msg.find("'a'"), std::string::npos) << msg;
  EXPECT_NE(msg.find("'b'"), std::string::npos) << msg;
  EXPECT_NE(msg.find("o.safetensors"), std::string::npos) << msg;
}

TEST(model_safetensors, OffsetsOutOfRangeOrReversed) {
  const auto d = tmp_dir("range");
  EXPECT_NE(error_of(raw_file(d / "r.safetensors", R"({"a": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]}})", 2))
                .find("past the data section"),
            std::string::npos);
  EXPECT_NE(error_of(raw_file(d / "v.safetensors", R"({"a": {"dtype": "U8", "shape": [0], "data_offsets": [4, 0]}})", 4))
                .find("reversed"),
            std::string::npos);
}

TEST(model_safetensors, ModelFilesExplainsWhatIsMissing) {
  const auto d = tmp_dir("model_files");
  try {
    st::model_files(d);
    FAIL();
  } catch (const shardtune::Error& e) {
    EXPECT_NE(std::string(e.what()).find("model.safetensors"), std::string::npos);
  }
  std::ofstream(d / "model.safetensors.index.json") << R"({"weight_map": {"a": "model-00001-of-00002.safetensors"}})";
  try {
    st::model_files(d);
    FAIL();
  } catch (const shardtune::Error& e) {
    EXPECT_NE(std::string(e.what()).find("model-00001-of-00002.safetensors"), std::string::npos);
  }
}

TEST(model_safetensors, StreamWriterWritesTensorByTensorAndChecksOrder) {
  const auto d = tmp_dir("stream");
  const std::vector<float> a = {1, 2, 3, 4, 5, 6};
  const std::vector<uint16_t> b = {7, 8};
  const std::vector<st::TensorRef> layout = {{"a", st::DType::F32, {2, 3}, nullptr, 24}, {"b", st::DType::BF16, {2}, nullptr, 4}};
  {
    st::StreamWriter w(d / "s.safetensors", layout, {{"format", "pt"}});
    ASSERT_EQ(w.next()->name, "a");
    EXPECT_FALSE(stdfs::exists(d / "s.safetensors"));  // only complete files appear
    w.write(a.data(), 24);
    // The wrong size for the next tensor, and finishing early, are refused.
    EXPECT_THROW(w.write(b.data(), 2), shardtune::Error);
    EXPECT_THROW(w.finish(), shardtune::Error);
    w.write(b.data(), 4);
    EXPECT_EQ(w.next(), nullptr);
    EXPECT_THROW(w.write(b.data(), 4), shardtune::Error);
    w.finish(/*sync=*/true);
  }
  st::File f(d / "s.safetensors");
  ASSERT_EQ(f.tensors().size(), 2u);
  EXPECT_EQ(f.metadata().at("format"), "pt");
  EXPECT_EQ(std::memcmp(f.data(f.at("a")), a.data(), 24), 0);
  EXPECT_EQ(std::memcmp(f.data(f.at("b")), b.data(), 4), 0);
  f.release(f.at("a"));  // the mapping stays valid: released pages are re-read from the file
  EXPECT_EQ(std::memcmp(f.data(f.at("a")), a.data(), 24), 0);
  // A writer dropped unfinished leaves nothing behind.
  {
    st::StreamWriter w(d / "t.safetensors", layout);
    w.write(a.data(), 24);
  }
  size_t left = 0;
  for (const auto& e : stdfs::directory_iterator(d)) left += e.path().filename() != "s.safetensors";
  EXPECT_EQ(left, 0u);
}

TEST(model_safetensors, HashedWriteDigestIsTheFilesSha256) {
  const auto d = tmp_dir("hashed");
  // Odd sizes, over two writeback chunks in all, so chunk boundaries fall inside tensors and the header.
  const uint64_t n = st::StreamWriter::kWritebackChunk / 2 + 12345;
  std::vector<std::vector<uint8_t>> data(5);
  std::vector<st::TensorRef> refs;
  for (size_t i = 0; i < data.size(); ++i) {
    data[i].resize(n + i);
    for (size_t k = 0; k < data[i].size(); ++k) data[i][k] = uint8_t((k * 131 + i * 7) >> 3);
    refs.push_back({"t" + std::to_string(i), st::DType::U8, {int64_t(n + i)}, data[i].data(), n + i});
  }
  const st::WrittenFile w = st::write_file_hashed(d / "h.safetensors", refs, {{"format", "pt"}});
  EXPECT_EQ(w.name, "h.safetensors");
  EXPECT_EQ(w.bytes, stdfs::file_size(d / "h.safetensors"));
  EXPECT_EQ(w.sha256, shardtune::fs::sha256_file(d / "h.safetensors"));  // the independent, read-back digest
  EXPECT_EQ(w.sha256.size(), 64u);
  st::File f(d / "h.safetensors");
  for (size_t i = 0; i < data.size(); ++i)
    EXPECT_EQ(std::memcmp(f.data(f.at("t" + std::to_string(i))), data[i].data(), data[i].size()), 0) << i;
  // The same bytes as the plain writer, and no temporary file left.
  st::write_file(d / "plain.safetensors", refs, {{"format", "pt"}});
  EXPECT_EQ(shardtune::fs::sha256_file(d / "plain.safetensors"), w.sha256);
  EXPECT_EQ(std::distance(stdfs::directory_iterator(d), stdfs::directory_iterator()), 2);
  // Incremental SHA-256 in uneven pieces equals the one-shot digest (and the FIPS 180-2 "abc" vector).
  shardtune::fs::Sha256 h;
  const std::string text = "abc";
  h.update(text.data(), 1);
  h.update(text.data() + 1, 2);
  EXPECT_EQ(h.hex(), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(shardtune::fs::sha256_hex(text), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  // sha256() before finish() is an error, not an empty digest.
  st::StreamWriter early(d / "e.safetensors", refs, {}, true);
  EXPECT_THROW(early.sha256(), shardtune::Error);
}

TEST(model_safetensors, PartRangeIsContiguousBalancedAndCoversEveryTensor) {
  using R = std::pair<size_t, size_t>;
  EXPECT_EQ(st::part_range({10, 10, 10, 10}, 0, 2), R(0, 2));
  EXPECT_EQ(st::part_range({10, 10, 10, 10}, 1, 2), R(2, 4));
  // One big tensor: alone in its part, the small ones in the other.
  EXPECT_EQ(st::part_range({100, 1, 1, 1}, 0, 2), R(0, 1));
  EXPECT_EQ(st::part_range({100, 1, 1, 1}, 1, 2), R(1, 4));
  EXPECT_EQ(st::part_range({1, 1, 100}, 0, 2), R(0, 2));
  // More parts than tensors: some parts are empty; one part takes everything.
  EXPECT_EQ(st::part_range({5, 5}, 0, 4).first, st::part_range({5, 5}, 0, 4).second);
  EXPECT_EQ(st::part_range({5, 5, 5}, 0, 1), R(0, 3));
  EXPECT_EQ(st::part_range({0, 0}, 0, 3), R(0, 2));
  EXPECT_EQ(st::part_range({0, 0}, 2, 3).first, st::part_range({0, 0}, 2, 3).second);
  EXPECT_THROW(st::part_range({1}, 2, 2), shardtune::Error);
  // Any split: the parts follow each other and cover [0, n); no part exceeds its 1/parts by more than a tensor.
  const std::vector<uint64_t> sizes = {7, 300, 12, 12, 90, 1, 1, 64, 64, 64, 5, 200};
  uint64_t total = 0, largest = 0;
  for (auto b : sizes) total += b, largest = std::max(largest, b);
  for (int parts = 1; parts <= 14; ++parts) {
    size_t at = 0;
    for (int k = 0; k < parts; ++k) {
      const auto [a, b] = st::part_range(sizes, k, parts);
      if (a == b) continue;
      EXPECT_EQ(a, at) << parts << " " << k;
      uint64_t bytes = 0;
      for (size_t i = a; i < b; ++i) bytes += sizes[i];
      EXPECT_LE(bytes, total / uint64_t(parts) + largest) << parts << " " << k;
      at = b;
    }
    EXPECT_EQ(at, sizes.size()) << parts;
  }
}

TEST(model_safetensors, WritePartsFormOneShardedModelThatLoadsBack) {
  const auto d = tmp_dir("parts");
  std::vector<std::vector<float>> data;
  std::vector<st::TensorRef> all;
  for (int i = 0; i < 7; ++i) {
    data.emplace_back(size_t(100 + 50 * i));
    for (size_t k = 0; k < data.back().size(); ++k) data.back()[k] = float(i) + float(k) / 1000;
  }
  for (int i = 0; i < 7; ++i)
    all.push_back({"w" + std::to_string(i), st::DType::F32, {int64_t(data[i].size())}, data[i].data(), data[i].size() * 4});
  std::vector<st::WrittenFile> written;
  for (int part = 0; part < 3; ++part) {
    // Each writer is given only its own tensors' data, as a checkpoint's ranks (the others: no pointer).
    std::vector<st::TensorRef> refs = all;
    const auto [a, b] = st::part_range({400, 600, 800, 1000, 1200, 1400, 1600}, part, 3);
    for (size_t i = 0; i < refs.size(); ++i)
      if (i < a || i >= b) refs[i].data = nullptr;
    const auto files = st::write_part(d, "model", refs, part, 3, {{"format", "pt"}});
    EXPECT_EQ(files.size(), part == 0 ? 2u : 1u) << part;  // part 0 also the index
    written.insert(written.end(), files.begin(), files.end());
  }
  for (const auto& w : written) {
    EXPECT_EQ(w.bytes, stdfs::file_size(d / w.name)) << w.name;
    EXPECT_EQ(w.sha256, shardtune::fs::sha256_file(d / w.name)) << w.name;
  }
  EXPECT_TRUE(stdfs::exists(d / "model-00003-of-00003.safetensors"));
  const auto files = st::model_files(d);
  ASSERT_EQ(files.size(), 3u);
  size_t found = 0;
  for (const auto& p : files) {
    st::File f(p);
    for (const auto& t : f.tensors()) {
      const size_t i = size_t(std::stoi(t.name.substr(1)));
      EXPECT_EQ(std::memcmp(f.data(t), data[i].data(), data[i].size() * 4), 0) << t.name;
      ++found;
    }
  }
  EXPECT_EQ(found, all.size());
  // One writer: the plain single file, no index.
  const auto one = tmp_dir("parts_one");
  const auto single = st::write_part(one, "model", all, 0, 1);
  ASSERT_EQ(single.size(), 1u);
  EXPECT_EQ(single[0].name, "model.safetensors");
  EXPECT_FALSE(stdfs::exists(one / "model.safetensors.index.json"));
}
