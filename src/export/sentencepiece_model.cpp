// SentencePiece ModelProto read from the protobuf wire format (see sentencepiece_model.h for why not
// libsentencepiece). Wire format: each field is a varint key (field number << 3 | wire type) followed by
// a varint (type 0), 8 bytes (1), a length-prefixed blob (2: strings, bytes, sub-messages) or 4 bytes (5).
// Field numbers are those of sentencepiece_model.proto: ModelProto {pieces 1, trainer_spec 2,
// normalizer_spec 3}, SentencePiece {piece 1, score 2, type 3}, TrainerSpec {model_type 3, byte_fallback 35,
// unk_id 40, bos_id 41, eos_id 42, pad_id 43}, NormalizerSpec {name 1, precompiled_charsmap 2,
// add_dummy_prefix 3, remove_extra_whitespaces 4, escape_whitespaces 5}.
#include "shardtune/export/sentencepiece_model.h"

#include <cstring>
#include <string_view>

#include "shardtune/core/error.h"
#include "shardtune/core/fs.h"

namespace shardtune::sp {

namespace {

const char* const kHint = "is this a SentencePiece tokenizer.model? The file may be truncated or of another format";

// A cursor over one message's bytes; `base` is the message's offset in the file, for error messages.
class Reader {
 public:
  Reader(std::string_view data, size_t base, const std::string& name) : data_(data), base_(base), name_(name) {}
  bool done() const { return pos_ >= data_.size(); }
  size_t offset() const { return base_ + pos_; }

  uint64_t varint() {
    uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      if (pos_ >= data_.size()) fail("truncated varint");
      const auto b = static_cast<uint8_t>(data_[pos_++]);
      v |= static_cast<uint64_t>(b & 0x7f) << shift;
      if (!(b & 0x80)) return v;
    }
    fail("varint longer than 10 bytes");
  }
  // Length-delimited payload (wire type 2); returns it and its absolute offset.
  std::pair<std::string_view, size_t> blob() {
    const uint64_t n = varint();
    if (n > data_.size() - pos_) fail("length " + std::to_string(n) + " runs past the end of its message");
    std::string_view out = data_.substr(pos_, n);
    const size_t at = offset();
    pos_ += n;
    return {out, at};
  }
  float fixed32_float() {
    if (data_.size() - pos_ < 4) fail("truncated 32-bit field");
    uint8_t b[4];
    std::memcpy(b, data_.data() + pos_, 4);
    pos_ += 4;
    const uint32_t bits = static_cast<uint32_t>(b[0]) | static_cast<uint32_t>(b[1]) << 8 |
                          static_cast<uint32_t>(b[2]) << 16 | static_cast<uint32_t>(b[3]) << 24;
    float f;
    std::memcpy(&f, &bits, 4);
    return f;
  }
  void skip(uint32_t wire) {
    switch (wire) {
      case 0: varint(); break;
      case 1: advance(8); break;
      case 2: blob(); break;
      case 5: advance(4); break;
      default: fail("unknown wire type " + std::to_string(wire));  // 3/4 (groups) are not used by this proto
    }
  }
  [[noreturn]] void fail(const std::string& what) const {
    ST_FAIL(name_ + ": malformed SentencePiece model at byte " + std::to_string(offset()) + ": " + what, kHint);
  }

 private:
  void advance(size_t n) {
    if (data_.size() - pos_ < n) fail("truncated field");
    pos_ += n;
  }
  std::string_view data_;
  size_t pos_ = 0, base_;
  const std::string& name_;
};

// Reads the next key; returns false at the end of the message.
bool next_key(Reader& r, uint32_t& field, uint32_t& wire) {
  if (r.done()) return false;
  const uint64_t key = r.varint();
  field = static_cast<uint32_t>(key >> 3);
  wire = static_cast<uint32_t>(key & 7);
  if (field == 0) r.fail("field number 0");
  return true;
}

// Checks that a known field has the wire type the proto gives it (a mismatch means a corrupt file).
void expect(Reader& r, uint32_t field, uint32_t wire, uint32_t want) {
  if (wire != want)
    r.fail("field " + std::to_string(field) + " has wire type " + std::to_string(wire) + ", expected " + std::to_string(want));
}

// int32 fields are sign-extended to 64 bits on the wire (-1 is ten bytes).
int32_t as_int32(uint64_t v) { return static_cast<int32_t>(static_cast<int64_t>(v)); }

Piece parse_piece(std::string_view data, size_t base, const std::string& name) {
  Reader r(data, base, name);
  Piece p;
  uint32_t field, wire;
  while (next_key(r, field, wire)) {
    if (field == 1) {
      expect(r, field, wire, 2);
      p.piece = std::string(r.blob().first);
    } else if (field == 2) {
      expect(r, field, wire, 5);
      p.score = r.fixed32_float();
    } else if (field == 3) {
      expect(r, field, wire, 0);
      const int32_t t = as_int32(r.varint());
      if (t < 1 || t > 6) r.fail("piece '" + p.piece + "' has unknown type " + std::to_string(t));
      p.type = static_cast<PieceType>(t);
    } else {
      r.skip(wire);
    }
  }
  return p;
}

void parse_trainer(std::string_view data, size_t base, const std::string& name, Model& m) {
  Reader r(data, base, name);
  uint32_t field, wire;
  while (next_key(r, field, wire)) {
    switch (field) {
      case 3: expect(r, field, wire, 0); m.model_type = static_cast<ModelType>(as_int32(r.varint())); break;
      case 35: expect(r, field, wire, 0); m.byte_fallback = r.varint() != 0; break;
      case 40: expect(r, field, wire, 0); m.unk_id = as_int32(r.varint()); break;
      case 41: expect(r, field, wire, 0); m.bos_id = as_int32(r.varint()); break;
      case 42: expect(r, field, wire, 0); m.eos_id = as_int32(r.varint()); break;
      case 43: expect(r, field, wire, 0); m.pad_id = as_int32(r.varint()); break;
      default: r.skip(wire);
    }
  }
}

void parse_normalizer(std::string_view data, size_t base, const std::string& name, Model& m) {
  Reader r(data, base, name);
  uint32_t field, wire;
  while (next_key(r, field, wire)) {
    switch (field) {
      case 1: expect(r, field, wire, 2); m.normalizer_name = std::string(r.blob().first); break;
      case 2: expect(r, field, wire, 2); m.has_charsmap = !r.blob().first.empty(); break;
      case 3: expect(r, field, wire, 0); m.add_dummy_prefix = r.varint() != 0; break;
      case 4: expect(r, field, wire, 0); m.remove_extra_whitespaces = r.varint() != 0; break;
      case 5: expect(r, field, wire, 0); m.escape_whitespaces = r.varint() != 0; break;
      default: r.skip(wire);
    }
  }
}

}  // namespace

Model parse_model(const std::string& bytes, const std::string& name) {
  Model m;
  Reader r(bytes, 0, name);
  uint32_t field, wire;
  while (next_key(r, field, wire)) {
    if (field >= 1 && field <= 3) {
      expect(r, field, wire, 2);
      auto [data, at] = r.blob();
      if (field == 1) m.pieces.push_back(parse_piece(data, at, name));
      if (field == 2) parse_trainer(data, at, name, m);
      if (field == 3) parse_normalizer(data, at, name, m);
    } else {
      r.skip(wire);  // self_test_data, denormalizer_spec, extensions
    }
  }
  ST_CHECK(!m.pieces.empty(), name + ": no pieces (an empty or non-SentencePiece file)", kHint);
  const auto n = static_cast<int32_t>(m.pieces.size());
  for (auto [what, id] : {std::pair{"unk_id", m.unk_id}, {"bos_id", m.bos_id}, {"eos_id", m.eos_id}, {"pad_id", m.pad_id}})
    ST_CHECK(id >= -1 && id < n, name + ": trainer_spec." + what + " = " + std::to_string(id) + " is outside its " +
                                     std::to_string(n) + " pieces", kHint);
  return m;
}

Model read_model(const std::filesystem::path& path) { return parse_model(fs::read_file(path), path.string()); }

}  // namespace shardtune::sp
