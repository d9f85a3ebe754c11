// shardtune-score: the rewards a reward model (--objective reward's output: an HF folder with score.weight,
// or a base plus the LoRA adapter folder carrying the head) gives the preference pairs of a shardtune-prep
// folder: one JSONL line per pair {"pair", "chosen", "rejected"} and a summary line with the accuracy.
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <iostream>

#include "shardtune/core/error.h"
#include "shardtune/core/hw.h"
#include "shardtune/data/dataset.h"
#include "shardtune/model/adapter.h"
#include "shardtune/model/io.h"
#include "shardtune/model/runtime.h"
#include "shardtune/train/reward.h"

namespace sm = shardtune::model;
namespace sd = shardtune::data;

static int run(int argc, char** argv) {
  std::string model_path, adapter, data, split = "val";
  int64_t batch = 8;
  int threads = 0;
  CLI::App app{"Print a reward model's rewards for the preference pairs of a shardtune-prep folder (JSONL)."};
  app.add_option("--model", model_path, "reward model folder (LlamaForSequenceClassification), or the base with --adapter")
      ->required();
  app.add_option("--adapter", adapter, "PEFT adapter folder of --objective reward --method lora (holds the score head)");
  app.add_option("--data", data, "a folder from shardtune-prep --format preference")->required();
  app.add_option("--split", split, "train or val")->capture_default_str();
  app.add_option("--batch", batch, "pairs per forward")->capture_default_str();
  app.add_option("--threads", threads, "intra-op threads (0 = the CPUs of the affinity mask)")->capture_default_str();
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 2;
  }
  ST_CHECK(split == "train" || split == "val", "--split '" + split + "': use train or val");
  ST_CHECK(batch >= 1, "--batch must be at least 1 (got " + std::to_string(batch) + ")");
  sm::setup_runtime(threads);
  auto model = sm::load_model(model_path);
  if (!adapter.empty()) {
    ST_CHECK(model->has_score_head() || model->config().arch == sm::Arch::Llama,
             "--model '" + model_path + "' is not a Llama-family model", "give the adapter's own base");
    const bool was_reward = model->has_score_head();
    model->add_score_head(0, 0.0);  // a base LM: its head comes from the adapter below
    const bool has = shardtune::train::load_score_from_adapter(*model, adapter);
    ST_CHECK(has || was_reward,
             "--adapter '" + adapter + "' holds no score head (base_model.model.score.weight) and --model is no reward model",
             "give the adapter that shardtune --objective reward --method lora wrote");
    const sm::AdapterConfig acfg = sm::read_adapter_config(adapter);
    model->load_lora(acfg, sm::read_adapter_weights(adapter, acfg), adapter);
  }
  ST_CHECK(model->has_score_head(), "--model '" + model_path + "' is a causal LM, not a reward model (no score.weight)",
           "give the folder shardtune --objective reward saved (or the base with --adapter)");
  model->eval();
  auto set = sd::ShardSet::open(data, split, model->config().vocab_size);
  ST_CHECK(set->kind() == sd::DataKind::Preference, "--data '" + data + "' holds sequences, not preference pairs",
           "prepare the pairs with shardtune-prep --format preference");
  const int64_t pad = std::max<int64_t>(0, set->info().pad_id >= 0 ? set->info().pad_id : set->info().eos_id);
  at::NoGradGuard no_grad;
  int64_t n = 0, right = 0;
  for (int64_t first = 0; first < set->size(); first += batch) {
    std::vector<sd::PairSample> pairs(size_t(std::min(batch, set->size() - first)));
    int64_t longest = 1;
    for (size_t i = 0; i < pairs.size(); ++i) {
      set->read_pair(first + int64_t(i), pairs[i]);
      longest = std::max<int64_t>({longest, int64_t(pairs[i].chosen.size()), int64_t(pairs[i].rejected.size())});
    }
    const sd::HostBatch hb = sd::make_pair_batch(pairs, longest, pad);
    const at::Tensor ids = at::from_blob(const_cast<int64_t*>(hb.ids.data()), {hb.B, hb.T}, at::kLong).clone();
    const at::Tensor r = model->rewards(ids, shardtune::train::last_response_positions(hb));
    const int64_t k = hb.B / 2;
    for (int64_t i = 0; i < k; ++i) {
      const double c = r[i].item<double>(), j = r[k + i].item<double>();
      right += c > j;
      std::cout << nlohmann::json{{"pair", first + i}, {"chosen", c}, {"rejected", j}}.dump() << "\n";
    }
    n += k;
  }
  std::cout << nlohmann::json{{"pairs", n}, {"accuracy", n ? double(right) / double(n) : 0.0}}.dump() << "\n";
  return 0;
}

int main(int argc, char** argv) {
  shardtune::hw::select_blas_core(argv);  // before any torch work: may re-exec with OPENBLAS_CORETYPE set
  return shardtune::run_guarded("shardtune-score", run, argc, argv);
}
