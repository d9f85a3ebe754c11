// Step prefetching (one step ahead, one background thread) and validation batches.
#include "shardtune/train/loader.h"

#include "shardtune/core/error.h"

namespace shardtune::train {

void require_objective_data(const data::ShardSet& set, const std::string& objective) {
  const std::string dir = set.info().dir;
  if (objective == "dpo" || objective == "reward") {
    ST_CHECK(set.kind() == data::DataKind::Preference,
             "--data '" + dir + "': --objective " + objective + " trains preference pairs, but this folder holds sequences "
             "(manifest.json: kind \"" + data::kind_name(set.kind()) + "\")",
             "prepare the pairs with shardtune-prep --format preference (README: Preference pairs), or train this "
             "folder with --objective sft");
    return;
  }
  ST_CHECK(set.kind() == data::DataKind::Sequence,
           "--data '" + dir + "': this folder holds preference pairs (manifest.json: kind \"preference\"); "
           "--objective " + objective + " trains sequences",
           "train the pairs with --objective dpo (docs/PREFERENCE.md), or give a folder prepared with --format text, "
           "instruction, input_output or chat");
}

namespace {
data::HostBatch read_batch(data::ShardSet& set, const std::vector<int64_t>& ids, const LoaderPlan& p, bool pack) {
  data::HostBatch b;
  if (set.kind() == data::DataKind::Preference) {  // rows [0,n) chosen, [n,2n) rejected (make_pair_batch)
    std::vector<data::PairSample> pairs(ids.size());
    for (size_t i = 0; i < ids.size(); ++i) set.read_pair(ids[i], pairs[i]);
    b = data::make_pair_batch(pairs, p.seq_len, p.pad_id);
    if (p.ref_logps) {
      const auto& r = *p.ref_logps;
      const size_t n = ids.size();
      b.ref_logps.resize(2 * n);
      for (size_t i = 0; i < n; ++i) {
        ST_CHECK(size_t(2 * ids[i] + 1) < r.size(), "internal: pair " + std::to_string(ids[i]) +
                                                        " beyond the precomputed reference log-probs");
        b.ref_logps[i] = r[size_t(2 * ids[i])];
        b.ref_logps[n + i] = r[size_t(2 * ids[i] + 1)];
      }
    }
  } else {
    std::vector<std::vector<int32_t>> toks(ids.size());
    std::vector<std::vector<uint8_t>> masks(ids.size());
    for (size_t i = 0; i < ids.size(); ++i) set.read(ids[i], toks[i], masks[i]);
    b = data::make_batch(toks, masks, p.seq_len, pack, p.pad_id);
  }
  if (b.T < 2 && !pack) {  // the model needs two positions; a pad column changes nothing
    data::HostBatch w = b;
    w.T = 2;
    w.ids.assign(b.B * 2, p.pad_id);
    w.mask.assign(b.B * 2, 0);
    for (int64_t r = 0; r < b.B; ++r) w.ids[r * 2] = b.ids[r];
    return w;
  }
  return b;
}
}  // namespace

std::vector<data::HostBatch> read_step(data::ShardSet& set, data::GlobalSampler& sampler, const LoaderPlan& p,
                                       int64_t consumed) {
  std::vector<data::HostBatch> out;
  for (int a = 0; a < p.accum(); ++a)
    out.push_back(read_batch(set, sampler.micro_batch(consumed, p.micro_batch, p.world, p.rank, a), p, p.pack));
  return out;
}

StepLoader::StepLoader(data::ShardSet& set, LoaderPlan plan, int64_t consumed, int64_t steps)
    : set_(set), plan_(plan), sampler_((require_objective_data(set, plan.objective), set.size()), plan.seed), next_consumed_(consumed),
      steps_left_(steps) {
  thread_ = std::thread([this] { run(); });
}

StepLoader::~StepLoader() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

void StepLoader::run() {
  try {
    for (;;) {
      int64_t consumed;
      {
        std::unique_lock<std::mutex> lk(mu_);
        cv_.wait(lk, [&] { return stop_ || ready_.size() < 2; });
        if (stop_ || steps_left_ <= 0) return;
        consumed = next_consumed_;
        next_consumed_ += plan_.global_batch;
        --steps_left_;
      }
      auto batches = read_step(set_, sampler_, plan_, consumed);
      {
        std::lock_guard<std::mutex> lk(mu_);
        ready_.push_back(std::move(batches));
      }
      cv_.notify_all();
    }
  } catch (...) {
    std::lock_guard<std::mutex> lk(mu_);
    error_ = std::current_exception();
    cv_.notify_all();
  }
}

std::vector<data::HostBatch> StepLoader::next() {
  std::unique_lock<std::mutex> lk(mu_);
  cv_.wait(lk, [&] { return !ready_.empty() || error_; });
  if (ready_.empty() && error_) std::rethrow_exception(error_);
  auto b = std::move(ready_.front());
  ready_.pop_front();
  cv_.notify_all();
  return b;
}

std::vector<data::HostBatch> read_eval(data::ShardSet& set, const LoaderPlan& p, int64_t batches) {
  require_objective_data(set, p.objective);
  std::vector<data::HostBatch> out;
  const int64_t n = std::min(set.size(), batches * p.global_batch);
  std::vector<int64_t> mine;
  for (int64_t i = p.rank; i < n; i += p.world) mine.push_back(i);
  for (size_t i = 0; i < mine.size(); i += p.micro_batch) {
    std::vector<int64_t> ids(mine.begin() + i, mine.begin() + std::min(mine.size(), i + p.micro_batch));
    out.push_back(read_batch(set, ids, p, false));
  }
  return out;
}

}  // namespace shardtune::train
