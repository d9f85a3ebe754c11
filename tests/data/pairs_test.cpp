// Data layer for preference pairs (issue 11): ShardSet reads each pair whole with its prompt length and
// refuses sequence reads on pairs (and pair reads on sequences); the sampler's global batch of pairs is
// the same set for 1, 2 and 4 ranks; pair batches put chosen rows before rejected ones; verification
// and reads find a broken pair layout; old manifests (no "kind") still read as sequences.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <functional>
#include <nlohmann/json.hpp>
#include <set>

#include "shardtune/core/error.h"
#include "shardtune/core/fs.h"
#include "shardtune/data/dataset.h"
#include "shardtune/data/shard.h"
#include "shardtune/data/verify.h"

namespace shardtune::data {
namespace {
namespace stdfs = std::filesystem;

// Pair i: prompt [256, 10 + i % 7 repeated 2 + i % 3 times], chosen response [100 + i, 1..], rejected
// [200 - i % 50, ...] of lengths 1 + i % 4 and 2 + i % 3.
PairSample pair_of(int i) {
  PairSample p;
  std::vector<int32_t> prompt{256};
  for (int k = 0; k < 2 + i % 3; ++k) prompt.push_back(10 + i % 7);
  p.prompt_len = static_cast<int64_t>(prompt.size());
  p.chosen = prompt;
  p.rejected = prompt;
  for (int k = 0; k < 1 + i % 4; ++k) p.chosen.push_back(100 + (i + k) % 100);
  for (int k = 0; k < 2 + i % 3; ++k) p.rejected.push_back(200 - (i + k) % 50);
  p.chosen_mask.assign(p.chosen.size(), 1);
  p.rejected_mask.assign(p.rejected.size(), 1);
  std::fill(p.chosen_mask.begin(), p.chosen_mask.begin() + p.prompt_len, 0);
  std::fill(p.rejected_mask.begin(), p.rejected_mask.begin() + p.prompt_len, 0);
  return p;
}

// A train split of `n` pairs in two shards, as shardtune-prep writes it. `with_kind` false writes the
// manifest without "kind" (as before issue 11) to show that it then means sequences.
stdfs::path make_pair_folder(int n, bool with_kind = true, const std::function<void(ShardData&)>& damage = nullptr) {
  static int counter = 0;
  stdfs::path dir = stdfs::temp_directory_path() / ("st-pairs-" + std::to_string(::getpid()) + "-" + std::to_string(counter++));
  stdfs::remove_all(dir);
  stdfs::create_directories(dir);
  ShardInfo info;
  info.split = "train";
  info.tokenizer_name = "byte";
  info.tokenizer_hash = "h";
  info.vocab_size = 259;
  info.kind = kKindPreference;
  nlohmann::json shards = nlohmann::json::array();
  for (int s = 0; s < 2; ++s) {
    ShardData d;
    for (int i = s * n / 2; i < (s + 1) * n / 2; ++i) {
      PairSample p = pair_of(i);
      for (auto [t, m] : {std::pair{&p.chosen, &p.chosen_mask}, std::pair{&p.rejected, &p.rejected_mask}}) {
        d.tokens.insert(d.tokens.end(), t->begin(), t->end());
        d.loss_mask.insert(d.loss_mask.end(), m->begin(), m->end());
        d.offsets.push_back(static_cast<int64_t>(d.tokens.size()));
      }
      d.prompt_lens.push_back(p.prompt_len);
    }
    if (damage && s == 1) damage(d);
    std::string name = "train-0000" + std::to_string(s) + ".h5";
    write_shard((dir / name).string(), info, d);
    shards.push_back({{"file", name}, {"split", "train"}, {"samples", d.num_pairs()}, {"tokens", d.num_tokens()},
                      {"loss_tokens", d.num_loss_tokens()}, {"sha256", fs::sha256_file(dir / name)}});
  }
  nlohmann::json m = {{"format", "shardtune-manifest"}, {"format_version", 1},
                      {"tokenizer", {{"name", "byte"}, {"hash", "h"}, {"vocab_size", 259}, {"bos_id", 256}, {"eos_id", 257}}},
                      {"shards", shards}};
  if (with_kind) m["kind"] = "preference";
  fs::write_file_atomic(dir / "manifest.json", m.dump());
  return dir;
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(PairSet, ReadsEveryPairWhole) {
  auto dir = make_pair_folder(30);
  auto set = ShardSet::open(dir.string(), "train", 259);
  ASSERT_EQ(set->kind(), DataKind::Preference);
  ASSERT_EQ(set->size(), 30);  // pairs
  EXPECT_EQ(set->info().num_sequences, 60);
  PairSample got;
  for (int i = 0; i < 30; ++i) {
    const PairSample want = pair_of(i);
    set->read_pair(i, got);
    EXPECT_EQ(got.chosen, want.chosen) << i;
    EXPECT_EQ(got.rejected, want.rejected) << i;
    EXPECT_EQ(got.chosen_mask, want.chosen_mask) << i;
    EXPECT_EQ(got.rejected_mask, want.rejected_mask) << i;
    EXPECT_EQ(got.prompt_len, want.prompt_len) << i;
    EXPECT_EQ(set->prompt_len(i), want.prompt_len) << i;
    EXPECT_EQ(set->pair_lengths(i), (std::pair<int64_t, int64_t>(want.chosen.size(), want.rejected.size()))) << i;
  }
  EXPECT_THROW(set->read_pair(30, got), Error);
  // Sequence reads are refused on pairs, so no caller can take a pair apart by accident.
  std::vector<int32_t> t;
  std::vector<uint8_t> m;
  EXPECT_NE(error_of([&] { set->read(0, t, m); }).find("holds preference pairs"), std::string::npos);
  EXPECT_THROW(set->length(0), Error);
  // And the verifier checks every pair: structure, masks, shared prompts, sha256.
  const VerifyResult vr = verify_data(dir.string(), {"train"}, {VerifyMode::Full, 0, 1, 1, (dir / "cache").string()});
  EXPECT_EQ(vr.error, "");
  EXPECT_EQ(vr.verified, 2);
}

TEST(PairSet, OldManifestWithoutKindIsSequenceData) {
  // A manifest written before issue 11 has no "kind": it means sequences. Pair shards under such a
  // manifest are refused (their kind attribute disagrees), naming the shard.
  auto dir = make_pair_folder(10, /*with_kind=*/false);
  EXPECT_NE(error_of([&] { ShardSet::open(dir.string(), "train", 259); })
                .find("holds preference data, manifest.json says kind 'sequence'"),
            std::string::npos);
  // An unknown kind is an error naming the field.
  nlohmann::json m = nlohmann::json::parse(fs::read_file(dir / "manifest.json"));
  m["kind"] = "triples";
  fs::write_file_atomic(dir / "manifest.json", m.dump());
  EXPECT_NE(error_of([&] { ShardSet::open(dir.string(), "train", 259); }).find("field 'kind' is 'triples'"), std::string::npos);
}

TEST(PairSet, DamagedPairLayoutIsFound) {
  // A prompt token marked as a target.
  auto mask_dir = make_pair_folder(10, true, [](ShardData& d) { d.loss_mask[1] = 1; });
  auto set = ShardSet::open(mask_dir.string(), "train", 259);
  PairSample got;
  EXPECT_NE(error_of([&] { set->read_pair(5, got); }).find("pair 0 (sequences 0 and 1): chosen token 1 has loss_mask 1"),
            std::string::npos);
  VerifyResult vr = verify_data(mask_dir.string(), {"train"}, {VerifyMode::Full, 0, 1, 1, (mask_dir / "cache").string()});
  EXPECT_NE(vr.error.find("chosen token 1 has loss_mask 1"), std::string::npos) << vr.error;
  // Chosen and rejected prompts that differ.
  auto prompt_dir = make_pair_folder(10, true, [](ShardData& d) { d.tokens[d.offsets[1] + 1] = 42; });
  vr = verify_data(prompt_dir.string(), {"train"}, {VerifyMode::Full, 0, 1, 1, (prompt_dir / "cache").string()});
  EXPECT_NE(vr.error.find("differ within their shared prompt"), std::string::npos) << vr.error;
  // A prompt length that leaves a sequence without a response: refused at open.
  auto len_dir = make_pair_folder(10, true, [](ShardData& d) { d.prompt_lens[2] = 100; });
  EXPECT_NE(error_of([&] { ShardSet::open(len_dir.string(), "train", 259); }).find("pair 2 has prompt length 100"),
            std::string::npos);
  // The writer refuses an odd sequence count or a missing prompt length.
  ShardInfo info;
  info.kind = kKindPreference;
  ShardData d;
  d.tokens = {1, 2, 3};
  d.loss_mask = {0, 1, 1};
  d.offsets = {0, 3};
  EXPECT_THROW(write_shard((len_dir / "odd.h5").string(), info, d), Error);
}

TEST(PairSet, VerificationWindowsCutBetweenPairs) {
  // Shards of more than 2^20 tokens are verified in several read windows; for pairs the windows are cut
  // between pairs. A clean folder passes (every pair checked, or an internal error says otherwise), and
  // a damaged pair near the end of the big shard, in a later window, is found and named.
  const int n = 170000;  // about 1.15M tokens per shard
  auto clean = make_pair_folder(n);
  VerifyResult vr = verify_data(clean.string(), {"train"}, {VerifyMode::Full, 0, 1, 2, (clean / "cache").string()});
  EXPECT_EQ(vr.error, "");
  EXPECT_EQ(vr.verified, 2);
  int64_t last = 0;
  auto bad = make_pair_folder(n, true, [&](ShardData& d) {
    ASSERT_GT(d.num_tokens(), int64_t(1) << 20);
    last = d.num_pairs() - 2;
    d.loss_mask[d.offsets[2 * last + 1] + 1] = 1;  // the rejected sequence's token 1 is a prompt token
  });
  vr = verify_data(bad.string(), {"train"}, {VerifyMode::Full, 0, 1, 2, (bad / "cache").string()});
  EXPECT_NE(vr.error.find("pair " + std::to_string(last) + " (sequences " + std::to_string(2 * last) + " and " +
                          std::to_string(2 * last + 1) + "): rejected token 1 has loss_mask 1"),
            std::string::npos)
      << vr.error;
  stdfs::remove_all(clean);
  stdfs::remove_all(bad);
}

TEST(PairSet, SequenceSetRefusesPairReads) {
  auto dir = make_pair_folder(4);
  // Rewrite as a sequence folder: sequence shards, manifest without kind.
  stdfs::path seq = dir.string() + "-seq";
  stdfs::create_directories(seq);
  ShardInfo info;
  info.split = "train";
  info.tokenizer_hash = "h";
  info.vocab_size = 259;
  ShardData d;
  d.tokens = {256, 5, 6};
  d.loss_mask = {0, 1, 1};
  d.offsets = {0, 3};
  write_shard((seq / "train-00000.h5").string(), info, d);
  nlohmann::json m = {{"format", "shardtune-manifest"}, {"format_version", 1},
                      {"tokenizer", {{"name", "byte"}, {"hash", "h"}, {"vocab_size", 259}}},
                      {"shards", {{{"file", "train-00000.h5"}, {"split", "train"}, {"samples", 1}, {"tokens", 3},
                                   {"loss_tokens", 2}}}}};
  fs::write_file_atomic(seq / "manifest.json", m.dump());
  auto set = ShardSet::open(seq.string(), "train", 259);
  EXPECT_EQ(set->kind(), DataKind::Sequence);
  EXPECT_EQ(set->size(), 1);
  PairSample got;
  EXPECT_NE(error_of([&] { set->read_pair(0, got); }).find("holds sequences, not preference pairs"), std::string::npos);
}

TEST(PairSampler, GlobalBatchOfPairsIsTheSameForAnyWorld) {
  // 37 pairs, global batch 8 pairs, 4 steps (crossing an epoch): for 1, 2 and 4 ranks (micro-batch 8 /
  // 4 / 1 with 1, 1 and 2 micro-steps) the pairs of each step are the same set, and each pair read has
  // its own two sequences.
  auto dir = make_pair_folder(36 + 1 + 1);  // 38 pairs: 19 per shard
  auto set = ShardSet::open(dir.string(), "train", 259);
  const int64_t G = 8;
  for (int64_t step = 0; step < 6; ++step) {
    std::multiset<int64_t> want;
    {
      GlobalSampler s(set->size(), 99);
      for (int64_t id : s.micro_batch(step * G, G, 1, 0, 0)) want.insert(id);
    }
    ASSERT_EQ(want.size(), 8u);
    for (auto [world, micro] : {std::pair{2, 4}, std::pair{4, 1}}) {
      std::multiset<int64_t> got;
      const int accum = static_cast<int>(G / (micro * world));
      for (int rank = 0; rank < world; ++rank) {
        GlobalSampler s(set->size(), 99);  // each rank its own sampler, as each process has
        for (int a = 0; a < accum; ++a)
          for (int64_t id : s.micro_batch(step * G, micro, world, rank, a)) {
            ASSERT_GE(id, 0);
            ASSERT_LT(id, set->size());
            got.insert(id);
          }
      }
      EXPECT_EQ(got, want) << "step " << step << ", world " << world;
    }
    for (int64_t id : want) {
      PairSample p;
      set->read_pair(id, p);
      EXPECT_EQ(p.chosen, pair_of(static_cast<int>(id)).chosen);
      EXPECT_EQ(p.rejected, pair_of(static_cast<int>(id)).rejected);
    }
  }
}

TEST(PairBatch, ChosenRowsThenRejectedRowsPadded) {
  std::vector<PairSample> pairs{pair_of(0), pair_of(5)};
  HostBatch b = make_pair_batch(pairs, 64, 258);
  ASSERT_EQ(b.B, 4);
  int64_t longest = 0;
  for (const auto& p : pairs) longest = std::max<int64_t>({longest, (int64_t)p.chosen.size(), (int64_t)p.rejected.size()});
  ASSERT_EQ(b.T, longest);
  EXPECT_TRUE(b.doc_ids.empty());
  const std::vector<const std::vector<int32_t>*> rows{&pairs[0].chosen, &pairs[1].chosen, &pairs[0].rejected, &pairs[1].rejected};
  int64_t targets = 0;
  for (int r = 0; r < 4; ++r)
    for (int64_t t = 0; t < b.T; ++t) {
      const bool in = t < static_cast<int64_t>(rows[r]->size());
      EXPECT_EQ(b.ids[r * b.T + t], in ? (*rows[r])[t] : 258) << r << "," << t;
      targets += b.mask[r * b.T + t];
    }
  int64_t want = 0;
  for (const auto& p : pairs) want += (p.chosen.size() - p.prompt_len) + (p.rejected.size() - p.prompt_len);
  EXPECT_EQ(targets, want);
  EXPECT_EQ(b.loss_tokens, want);
}

}  // namespace
}  // namespace shardtune::data
