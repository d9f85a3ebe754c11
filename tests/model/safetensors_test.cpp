// Torch-free safetensors reader/writer: round trip, sharding, and every header validation error.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>

#include "shardtune/core/error.h"
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
