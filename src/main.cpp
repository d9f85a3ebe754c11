// shardtune: the SPMD fine-tuning trainer. One process per rank (mpirun / srun --mpi=pmix).
// Reads top to bottom: parse config -> init dist -> load model -> build data -> loop -> save -> teardown.
#include <ATen/ATen.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "shardtune/core/error.h"
#include "shardtune/core/fs.h"
#include "shardtune/core/log.h"
#include "shardtune/data/dataset.h"
#include "shardtune/data/verify.h"
#include "shardtune/dist/communicator.h"
#include "shardtune/dist/mpi_runtime.h"
#include "shardtune/model/io.h"
#include "shardtune/model/model.h"
#include "shardtune/model/runtime.h"
#include "shardtune/train/config.h"
#include "shardtune/train/loader.h"
#include "shardtune/train/trainer.h"

namespace {

using namespace shardtune;
namespace stdfs = std::filesystem;

// Every rank must run the same configuration: rank 0's table is the reference.
void check_same_config(const dist::MpiRuntime& rt, const std::string& table) {
  std::string ref = rt.broadcast(table, 0);
  int64_t differs = rt.allreduce_max(ref != table ? 1 : 0);
  if (!differs) return;
  if (ref != table) std::fprintf(stderr, "[rank %d] configuration differs from rank 0:\n%s", rt.rank(), table.c_str());
  ST_FAIL("ranks were started with different configurations", "launch every rank with the same options and config file");
}

// Measured fp32/bf16 matmul throughput of this rank (GFLOP/s) with its thread count: the MFU reference.
double measure_peak_gflops(model::Precision p) {
  at::NoGradGuard no_grad;
  const int64_t n = 1024;
  auto dtype = p == model::Precision::BF16 ? at::kBFloat16 : at::kFloat;
  at::Tensor a = at::randn({n, n}).to(dtype), b = at::randn({n, n}).to(dtype);
  at::mm(a, b);  // warm-up
  int reps = 0;
  auto t0 = std::chrono::steady_clock::now();
  double el = 0;
  while (el < 0.3) {
    at::mm(a, b);
    ++reps;
    el = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }
  return 2.0 * n * n * n * reps / el / 1e9;
}

struct Metrics {
  std::unique_ptr<std::ofstream> out;
  explicit Metrics(const std::string& path, int rank) {
    if (path.empty() || rank != 0) return;
    out = std::make_unique<std::ofstream>(path, std::ios::trunc);
    ST_CHECK(out->good(), "cannot write --metrics file '" + path + "'");
  }
  void write(const nlohmann::json& j) {
    if (!out) return;
    *out << j.dump() << "\n";
    out->flush();
  }
};

// Rank 0 makes sure --out is new or empty before any work is done.
void prepare_out(const dist::MpiRuntime& rt, const std::string& out) {
  std::string err;
  if (rt.rank() == 0) {
    try {
      fs::require_absent_or_empty(out, "--out folder");
      stdfs::create_directories(out);
    } catch (const std::exception& e) {
      err = e.what();
    }
  }
  err = rt.broadcast(err, 0);
  ST_CHECK(err.empty(), err, "choose a new --out folder; shardtune never overwrites");
}

void save_final(const model::CausalLM& m, const train::TrainConfig& cfg, const data::DatasetInfo& info) {
  stdfs::path out(cfg.out), staging = stdfs::path(cfg.out) / ".final.partial";
  stdfs::remove_all(staging);
  model::SaveOptions so;
  so.dtype = cfg.save_dtype;
  model::save_hf(m, staging, so);
  nlohmann::json meta = {{"tokenizer", {{"name", info.tokenizer_name}, {"source", info.tokenizer_source},
                                        {"hash", info.tokenizer_hash}, {"bos_id", info.bos_id}, {"eos_id", info.eos_id}}}};
  fs::write_file_atomic(staging / "shardtune_tokenizer.json", meta.dump(2) + "\n");
  for (const auto& e : stdfs::directory_iterator(staging)) stdfs::rename(e.path(), out / e.path().filename());
  stdfs::remove(staging);
}

int train_main(int argc, char** argv, const dist::MpiRuntime& rt) {
  // ---- configuration ----
  train::TrainConfig cfg;
  CLI::App app{"shardtune: data-parallel fine-tuning (launch with mpirun/srun; see README)"};
  cfg.bind(app);
  std::string verify_data = "auto";
  app.add_option("--verify-data", verify_data,
                 "check every shard's sha256, token ids and masks before training: auto (skip shards the "
                 "verification cache knows unchanged), full, off")
      ->check(CLI::IsMember({"auto", "full", "off"}))
      ->capture_default_str();
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return rt.rank() == 0 ? app.exit(e) : (e.get_exit_code() == 0 ? 0 : 2);
  }
  cfg.validate();
  check_same_config(rt, cfg.table());
  const int world = rt.world(), rank = rt.rank();
  model::setup_runtime(cfg.threads);
  ST_CHECK(cfg.device == "cpu" || at::hasCUDA(), "--device cuda but this LibTorch has no CUDA",
           "build against a CUDA LibTorch (CMAKE_PREFIX_PATH) or use --device cpu");
  ST_CHECK(cfg.device == "cpu", "--device cuda is not supported by the trainer yet", "use --device cpu");
  dist::Communicator comm(rt);

  // ---- model and data ----
  auto model = model::load_model(cfg.model);
  const int64_t vocab = model->config().vocab_size;
  auto train_set = data::ShardSet::open(cfg.data, "train", vocab);
  auto val_set = data::ShardSet::open(cfg.data, "val", vocab);
  // Content of every shard (each rank a share), before any sample is used and before --out exists.
  const data::VerifyResult vr =
      data::verify_data(cfg.data, {"train", "val"}, {data::parse_verify_mode(verify_data), rank, world, 0, ""});
  const auto verify_errors = rt.allgather(vr.error), verify_hints = rt.allgather(vr.hint);
  for (size_t r = 0; r < verify_errors.size(); ++r) ST_CHECK(verify_errors[r].empty(), verify_errors[r], verify_hints[r]);
  if (!vr.cache_warning.empty()) log::warn(vr.cache_warning);
  if (verify_data != "off")
    log::info("data verified: " + std::to_string(rt.allreduce_sum(vr.verified)) + " shard(s) checked, " +
              std::to_string(rt.allreduce_sum(vr.cached)) + " known unchanged (cache " + vr.cache_dir + ")");
  const int64_t per_pass = cfg.micro_batch * world;
  ST_CHECK(cfg.global_batch % per_pass == 0,
           "--global-batch " + std::to_string(cfg.global_batch) + " is not a multiple of --micro-batch " +
               std::to_string(cfg.micro_batch) + " x " + std::to_string(world) + " ranks = " + std::to_string(per_pass),
           "gradient accumulation steps = global-batch / (micro-batch x ranks) must be a whole number");
  ST_CHECK(train_set->size() >= cfg.global_batch,
           "the training split of '" + cfg.data + "' has " + std::to_string(train_set->size()) +
               " samples, fewer than one --global-batch of " + std::to_string(cfg.global_batch),
           "prepare more data or lower --global-batch");
  const int64_t steps = cfg.steps > 0 ? cfg.steps
                                      : static_cast<int64_t>(std::ceil(cfg.epochs * train_set->size() / cfg.global_batch));
  prepare_out(rt, cfg.out);

  train::LoaderPlan plan{cfg.global_batch, cfg.micro_batch, cfg.seq_len, world, rank, cfg.pack,
                         std::max<int64_t>(0, train_set->info().pad_id >= 0 ? train_set->info().pad_id : train_set->info().eos_id),
                         cfg.seed};
  train::Trainer trainer(cfg, model, comm);
  const auto precision = model::parse_precision(cfg.precision);
  const double peak = measure_peak_gflops(precision);
  const auto& mc = model->config();
  log::info("shardtune " + std::to_string(world) + " rank(s), configuration:\n" + cfg.table());
  log::info("model: " + std::to_string(trainer.num_params()) + " parameters, " + std::to_string(mc.num_layers) +
            " layers; data: " + std::to_string(train_set->size()) + " train / " + std::to_string(val_set->size()) +
            " val samples (" + train_set->info().tokenizer_name + "); " + std::to_string(steps) + " steps, " +
            std::to_string(plan.accum()) + " micro-step(s) per step; optimizer state " +
            log::human_bytes(static_cast<double>(trainer.optimizer_state_bytes())) + " per rank");

  Metrics metrics(cfg.metrics, rank);
  auto evaluate = [&](int64_t step) {
    if (val_set->size() == 0 || cfg.eval_batches == 0) return;
    auto [sum, count] = trainer.evaluate(train::read_eval(*val_set, plan, cfg.eval_batches));
    if (count == 0) return;
    double loss = sum / count;
    log::info("eval step " + std::to_string(step) + ": val loss " + std::to_string(loss) + ", perplexity " +
              std::to_string(std::exp(loss)));
    metrics.write({{"type", "eval"}, {"step", step}, {"val_loss", loss}, {"val_ppl", std::exp(loss)}, {"val_tokens", count}});
  };

  // ---- training loop ----
  evaluate(0);
  train::StepLoader loader(*train_set, plan, 0, steps);
  // Model FLOPs per trained token: 6 per matmul parameter (forward + backward) plus attention,
  // 12 * L * C * T. Embedding lookups are no matmuls: the input embedding counts only when it is tied
  // to the output head, learned positions never.
  double lookup_params = 0;
  for (const auto& [name, t] : model->hf_parameters())
    if ((!mc.tie_word_embeddings && (name == "model.embed_tokens.weight" || name == "transformer.wte.weight")) ||
        name == "transformer.wpe.weight")
      lookup_params += static_cast<double>(t.numel());
  auto flops_per_token = [&](int64_t row_len) {
    return 6.0 * (static_cast<double>(trainer.num_params()) - lookup_params) +
           12.0 * mc.num_layers * mc.hidden_size * static_cast<double>(row_len);
  };
  log::info("MFU reference: measured " + std::string(cfg.precision) + " matmul peak " +
            std::to_string(static_cast<int>(peak)) + " GFLOP/s per rank (" + std::to_string(cfg.threads) + " thread(s))");
  // Test hook: SHARDTUNE_TEST_FAIL="RANK:STEP" makes that rank throw at that step (failure-path tests).
  const char* fail_at = std::getenv("SHARDTUNE_TEST_FAIL");
  for (int64_t step = 0; step < steps; ++step) {
    if (fail_at && std::to_string(rank) + ":" + std::to_string(step) == fail_at)
      ST_FAIL("injected failure at step " + std::to_string(step) + " (SHARDTUNE_TEST_FAIL)");
    // Time blocked on the prefetch thread: 0 when reading keeps ahead of training (it should).
    const auto wait_start = std::chrono::steady_clock::now();
    auto batches = loader.next();
    const double data_wait_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - wait_start).count();
    train::StepStats s = trainer.train_step(step, steps, batches);
    const double tps = s.tokens / (s.seconds + data_wait_s);
    const double mfu = flops_per_token(batches.empty() ? 0 : batches[0].T) * tps / (peak * 1e9 * world);
    metrics.write({{"type", "train"}, {"step", step + 1}, {"loss", s.loss}, {"lr", s.lr}, {"grad_norm", s.grad_norm},
                   {"tokens", s.tokens}, {"loss_tokens", s.loss_tokens}, {"tokens_per_s", tps}, {"mfu", mfu},
                   {"step_s", s.seconds}, {"comm_wait_s", s.comm_wait_s}, {"forward_s", s.forward_s},
                   {"backward_s", s.backward_s}, {"drain_s", s.drain_s}, {"optim_s", s.optim_s}, {"gather_s", s.gather_s},
                   {"data_wait_s", data_wait_s}});
    if ((step + 1) % cfg.log_every == 0 || step + 1 == steps) {
      char line[256];
      std::snprintf(line, sizeof line, "step %lld/%lld  loss %.4f  lr %.3g  grad_norm %.3f  %.0f tok/s  mfu %.1f%%  comm-wait %.0f ms",
                    static_cast<long long>(step + 1), static_cast<long long>(steps), s.loss, s.lr, s.grad_norm, tps,
                    100 * mfu, 1000 * s.comm_wait_s);
      std::string text = line;
      if (data_wait_s >= 0.001) text += "  data-wait " + std::to_string(static_cast<int>(1000 * data_wait_s)) + " ms";
      log::info(text);
    }
    if (cfg.eval_every > 0 && (step + 1) % cfg.eval_every == 0 && step + 1 != steps) evaluate(step + 1);
  }
  evaluate(steps);

  // ---- final model ----
  if (rank == 0) {
    save_final(*model, cfg, train_set->info());
    log::info("saved the fine-tuned model (Hugging Face layout) to " + cfg.out);
  }
  rt.barrier();
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  shardtune::dist::MpiRuntime rt(&argc, &argv);
  shardtune::log::set_rank(rt.rank(), rt.world());
  try {
    return train_main(argc, argv, rt);
  } catch (const std::exception& e) {
    // One failing rank ends the whole job promptly (no hang in a collective), with its own message.
    if (rt.world() > 1)
      std::fprintf(stderr, "shardtune [rank %d]: %s\n", rt.rank(), shardtune::describe(e).c_str());
    else
      std::fprintf(stderr, "shardtune: %s\n", shardtune::describe(e).c_str());
    std::fflush(stderr);
    rt.abort(1);
  }
}
