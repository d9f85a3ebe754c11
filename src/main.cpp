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
#include <functional>
#include <nlohmann/json.hpp>
#include <optional>

#include "shardtune/checkpoint/checkpoint.h"
#include "shardtune/core/cli_config.h"
#include "shardtune/core/error.h"
#include "shardtune/core/fs.h"
#include "shardtune/core/hw.h"
#include "shardtune/core/log.h"
#include "shardtune/core/mem.h"
#include "shardtune/core/signals.h"
#include "shardtune/data/dataset.h"
#include "shardtune/data/verify.h"
#include "shardtune/dist/communicator.h"
#include "shardtune/dist/mpi_runtime.h"
#include "shardtune/dist/watchdog.h"
#include "shardtune/export/hf_tokenizer_files.h"
#include "shardtune/model/adapter.h"
#include "shardtune/model/io.h"
#include "shardtune/model/model.h"
#include "shardtune/model/runtime.h"
#include "shardtune/train/config.h"
#include "shardtune/train/flops.h"
#include "shardtune/train/launch.h"
#include "shardtune/train/loader.h"
#include "shardtune/train/method.h"
#include "shardtune/train/preference.h"
#include "shardtune/train/reward.h"
#include "shardtune/train/reference_cache.h"
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
  // `append`: a resumed run continues its metrics file (the steps it redoes after the checkpoint are
  // written again, marked by a "resume" line).
  Metrics(const std::string& path, int rank, bool append) {
    if (path.empty() || rank != 0) return;
    refuse_foreign_file(path);
    out = std::make_unique<std::ofstream>(path, append ? std::ios::app : std::ios::trunc);
    ST_CHECK(out->good(), "cannot write --metrics file '" + path + "'",
             "give a file path in a folder that exists and is writable");
  }
  // An earlier run's metrics file may be rewritten (reruns, benchmarks); a file that is not one (a
  // user's own data, a typo naming another file) must never be truncated.
  static void refuse_foreign_file(const std::string& path) {
    std::ifstream in(path);
    std::string first;
    if (!in.good() || !std::getline(in, first) || first.empty()) return;  // absent or empty
    bool ours = false;
    try {
      const auto j = nlohmann::json::parse(first);
      ours = j.is_object() && j.contains("type") && j.contains("step");
    } catch (const nlohmann::json::exception&) {
    }
    ST_CHECK(ours, "--metrics file '" + path + "' exists and is not a shardtune metrics file",
             "choose another --metrics path; shardtune only rewrites its own metrics files");
  }
  void write(const nlohmann::json& j) {
    if (!out) return;
    *out << j.dump() << "\n";
    out->flush();
  }
};

// The final model is written whole into this sibling of --out, then renamed onto --out at once.
stdfs::path out_dir(const std::string& out) {
  stdfs::path p = stdfs::absolute(out).lexically_normal();
  return p.filename().empty() ? p.parent_path() : p;  // "run/" -> "run"
}
stdfs::path staging_dir(const std::string& out) {
  const stdfs::path p = out_dir(out);
  return p.parent_path() / (p.filename().string() + ".partial");
}

// Rank 0 makes sure --out is new, empty, or holds nothing but this run's checkpoint folder, and that no
// earlier save was left half-written, before any work.
void prepare_out(const dist::MpiRuntime& rt, const std::string& out, const std::string& data, const stdfs::path& ckpt_dir) {
  std::string err, hint = "choose a new --out folder; shardtune never overwrites";
  if (rt.rank() == 0) {
    try {
      // The model written into the data folder would sit among the shards (and a later prep of that
      // folder would refuse it or count it): keep outputs apart from inputs.
      const stdfs::path o = stdfs::weakly_canonical(stdfs::absolute(out)), d = stdfs::weakly_canonical(stdfs::absolute(data));
      const auto rel = o.lexically_relative(d);
      ST_CHECK(rel.empty() || *rel.begin() == "..", "--out '" + out + "' is inside --data '" + data + "'",
               "write the model outside the data folder, e.g. next to it");
      const stdfs::path staging = staging_dir(out);
      std::error_code ec;
      if (stdfs::exists(staging, ec)) {
        err = "the staging folder '" + staging.string() + "' of an earlier run's final save exists: that save did not "
              "finish (the run was killed or the disk failed while saving), so it holds an incomplete model";
        hint = "remove it (rm -r '" + staging.string() + "') and rerun, or choose another --out";
      } else {
        const stdfs::path ck = stdfs::weakly_canonical(stdfs::absolute(ckpt_dir));
        if (stdfs::is_directory(o, ec))
          for (const auto& e : stdfs::directory_iterator(o))
            if (stdfs::weakly_canonical(e.path()) != ck) fs::require_absent_or_empty(out, "--out folder");
        stdfs::create_directories(out);
        // Two jobs given the same --out would both pass the check above and the later one would lose its
        // work at the final save: the first to start holds --out until it ends.
        fs::lock_dir_for_process(out, "--out folder");
      }
    } catch (const Error& e) {
      err = e.what();
      if (!e.hint().empty()) hint = e.hint();
    } catch (const std::exception& e) {
      err = e.what();
    }
  }
  err = rt.broadcast(err, 0);
  hint = rt.broadcast(hint, 0);
  ST_CHECK(err.empty(), err, hint);
}

// The model (or adapter) files of a run, as the final save and every checkpoint write them. With
// `snapshot` (--async-save) the tensors are copied now and the writer may run later on another thread;
// otherwise it reads the live model when called. A checkpoint gives each rank a share (part `part` of
// `parts`: model::SaveOptions; the adapter is small and written by part 0 alone); the final save writes the
// whole model (parts 0).
checkpoint::WeightsWriter model_writer(const model::CausalLM& m, const std::string& dtype, bool snapshot, int part = 0,
                                       int parts = 0) {
  at::NoGradGuard no_grad;
  if (m.has_lora()) {
    // LoRA/QLoRA: the adapter alone, in PEFT layout (the base is --model, unchanged).
    if (part != 0) return [](const stdfs::path&, std::vector<shardtune::st::WrittenFile>*) {};
    model::AdapterWeights w = m.lora_weights();
    if (snapshot)
      for (auto& [k, p] : w) p = {checkpoint::host_snapshot(p.A), checkpoint::host_snapshot(p.B)};
    at::Tensor score;  // a reward model's head, saved beside the adapter (PEFT modules_to_save ["score"])
    if (m.has_score_head()) score = snapshot ? checkpoint::host_snapshot(m.param("score.weight")) : m.param("score.weight");
    return [cfg = m.lora_config(), w, score](const stdfs::path& d, std::vector<shardtune::st::WrittenFile>* written) {
      model::write_adapter_config(d, cfg);
      model::write_adapter_weights(d, w);
      if (score.defined()) train::write_score_to_adapter(d, score);
      if (written)
        for (const char* n : {"adapter_config.json", "adapter_model.safetensors"}) written->push_back({n, 0, ""});
    };
  }
  auto params = m.hf_parameters();
  model::SaveOptions so;
  so.dtype = dtype;
  so.part = part;
  so.parts = parts;
  if (snapshot) {
    // Only this share's tensors are copied; the others stand in by shape and dtype (save_hf reads no data of theirs).
    std::vector<bool> read(params.size(), false);
    for (size_t i : model::save_hf_reads(params, m.source_dtypes, so)) read[i] = true;
    for (size_t i = 0; i < params.size(); ++i) {
      at::Tensor& t = params[i].second;
      t = read[i] ? checkpoint::host_snapshot(t) : at::empty(t.sizes(), t.options().device(at::kMeta));
    }
  }
  return [cfg = m.config(), params, dtypes = m.source_dtypes, so](const stdfs::path& d,
                                                                  std::vector<shardtune::st::WrittenFile>* written) {
    model::SaveOptions o = so;
    o.written = written;
    model::save_hf(cfg, params, dtypes, d, o);
  };
}

// A checkpoint's weights and the identity of the data's tokenizer (shardtune-export checkpoint writes its
// files from it).
// Every rank writes its share of the weights; rank 0 alone writes the record (one small file).
checkpoint::WeightsWriter with_tokenizer(checkpoint::WeightsWriter write, const exporter::TokenizerRecord& tok, int rank) {
  return [write = std::move(write), tok, rank](const stdfs::path& d, std::vector<st::WrittenFile>* written) {
    write(d, written);
    if (rank != 0) return;
    exporter::write_tokenizer_record(d, tok);
    if (written) written->push_back({exporter::kTokenizerRecordFile, 0, ""});  // in the manifest like every file
  };
}

// Writes the whole model folder under <out>.partial, syncs every file and the folder, then publishes it:
// renamed onto --out in one step when --out is empty; when --out holds the checkpoint folder, each file
// is renamed into --out with config.json (adapter_config.json) last, so --out never looks like a complete
// model before it is one. A failed save removes its staging folder; one left by a killed run is named by
// prepare_out next time.
void save_final(const model::CausalLM& m, const train::TrainConfig& cfg, const exporter::TokenizerRecord& tok,
                bool inject_failure) {
  const stdfs::path out = out_dir(cfg.out), staging = staging_dir(cfg.out);
  std::error_code made_ec;
  const bool made = stdfs::create_directory(staging, made_ec);
  ST_CHECK(!made_ec, "cannot create the staging folder '" + staging.string() + "' to save the model: " + made_ec.message(),
           "the folder that holds --out must be writable (the model is written beside --out, then renamed onto it)");
  ST_CHECK(made, "cannot save: the staging folder '" + staging.string() + "' already exists",
           "another run is saving to the same --out? remove the folder once no run uses it");
  try {
    model_writer(m, cfg.save_dtype, false)(staging, nullptr);
    if (inject_failure) ST_FAIL("injected failure while saving the final model (SHARDTUNE_TEST_FAIL)");
    // The tokenizer in Hugging Face form (tokenizer files, tokenizer_config.json, generation_config.json for
    // a whole model) and shardtune_tokenizer.json; never fails the run for the tokenizer's sake (it warns).
    exporter::HfFolderOptions ho;
    ho.model = !m.has_lora();
    ho.model_max_length = m.config().max_position_embeddings;
    std::error_code dir_ec;
    if (stdfs::is_directory(cfg.model, dir_ec)) ho.base = cfg.model;
    exporter::write_hf_tokenizer_files(staging, tok, ho);
    fs::fsync_dir_contents(staging);
    bool empty = true;
    for ([[maybe_unused]] const auto& e : stdfs::directory_iterator(out)) empty = false;
    if (empty) {
      fs::publish_dir(staging, out, "--out folder", "--out must stay an empty folder (or absent) while the run trains");
    } else {
      const std::string last = m.has_lora() ? "adapter_config.json" : "config.json";
      for (const auto& e : stdfs::directory_iterator(staging))
        if (e.path().filename() != last) stdfs::rename(e.path(), out / e.path().filename());
      fs::fsync_path(out);
      stdfs::rename(staging / last, out / last);
      stdfs::remove(staging);
    }
    fs::fsync_path(out);
    fs::fsync_path(out.parent_path());
  } catch (...) {
    std::error_code ec;
    stdfs::remove_all(staging, ec);
    throw;
  }
}

// What must not change when a run resumes, beyond the options: the data and model contents.
std::map<std::string, std::string> run_identity(const train::TrainConfig& cfg) {
  auto m = checkpoint::parse_table(cfg.table());
  // (Absent files are reported by the data and model loaders, with their own messages.)
  std::error_code ec;
  const stdfs::path manifest = stdfs::path(cfg.data) / "manifest.json", model = cfg.model;
  const stdfs::path model_file = stdfs::is_directory(model, ec) ? model / "config.json" : model;
  m["data-manifest-sha256"] = stdfs::is_regular_file(manifest, ec) ? fs::sha256_file(manifest) : "";
  m["model-sha256"] = stdfs::is_regular_file(model_file, ec) ? fs::sha256_file(model_file) : "";
  return m;
}

int train_main(int argc, char** argv, const dist::MpiRuntime& rt) {
  // ---- configuration ----
  train::TrainConfig cfg;
  CLI::App app{"shardtune: data-parallel fine-tuning (launch with mpirun/srun; see README)"};
  cfg.bind(app);
  app.set_version_flag("--version", "shardtune " SHARDTUNE_VERSION "\n" + dist::Communicator::build_summary());
  if (int rc = cli::parse(app, argc, argv, "shardtune", rt.rank() == 0); rc >= 0) return rc;  // --config: FILE:LINE errors
  cfg.validate();
  check_same_config(rt, cfg.table());
  const int world = rt.world(), rank = rt.rank();
  signals::install_stop_handlers("shardtune", rank, world,
                                 "saving a checkpoint after this step, then exiting with 75 (rerun with --resume auto)");
  const train::Launch launch = train::resolve_launch(rt, cfg);  // threads, BLAS core, precision of every rank
  model::setup_runtime(launch.threads);
  log::info("shardtune " + std::to_string(world) + " rank(s), configuration:\n" + cfg.table());
  log::info("build: " + dist::Communicator::build_summary());
  launch.report();  // BLAS core, threads and affinity per rank, precision; warnings
  dist::Communicator comm(rt);
  // --device cuda: the build is checked, this rank's GPU picked by its place on the node (one rank per
  // GPU) and the NCCL communicator created on it, on this (main) thread before the model loads.
  const at::Device device =
      cfg.device == "cuda" ? at::Device(at::kCUDA, static_cast<c10::DeviceIndex>(dist::start_cuda(comm, cfg.collective_timeout)))
                           : at::Device(at::kCPU);

  // ---- model and data ----
  // ---- resume: the newest checkpoint that verifies (--resume auto), a given one, or none ----
  const stdfs::path ckpt_dir = cfg.ckpt_dir.empty() ? out_dir(cfg.out) / "checkpoints" : stdfs::path(cfg.ckpt_dir);
  const checkpoint::Resume resume = checkpoint::find_resume(rt, ckpt_dir, cfg.resume);
  for (const auto& w : resume.warnings) log::warn(w);
  std::optional<checkpoint::TrainerState> resumed;
  const auto identity = run_identity(cfg);
  if (!resume.path.empty()) {
    resumed = checkpoint::read_state(resume.path);
    std::vector<std::string> allowed;
    const auto bad = checkpoint::incompatible_changes(resumed->config, identity, &allowed);
    std::string list;
    for (const auto& b : bad) list += "\n  " + b;
    ST_CHECK(bad.empty(), "cannot resume from '" + resume.path.string() + "': the run would not be the one it continues:" + list,
             "rerun with the options of the checkpointed run, or start a new run (another --out, or --resume none with "
             "another --ckpt-dir)");
    std::string changes;
    for (const auto& a : allowed) changes += "\n  " + a;
    log::info("resuming from " + resume.path.string() + " (step " + std::to_string(resumed->step) + " of " +
              std::to_string(resumed->total_steps) + ", written by " + std::to_string(resumed->world) + " rank(s))" +
              (changes.empty() ? std::string() : "; changed since:" + changes));
  } else if (rank == 0) {
    // A fresh start beside another run's checkpoints would mix the two (and a save at a step already there
    // would keep the other run's).
    const bool any = !checkpoint::list_checkpoints(ckpt_dir).empty();
    ST_CHECK(!any || cfg.resume != "auto",
             "no checkpoint in '" + ckpt_dir.string() + "' verifies (see the warnings above), so the run cannot go on",
             "resume one explicitly with --resume PATH, or start over with another --out (or --ckpt-dir)");
    ST_CHECK(!any, "--resume none, but '" + ckpt_dir.string() + "' holds checkpoints of an earlier run",
             "resume them (--resume auto), or start the new run with another --out (or --ckpt-dir)");
  }
  rt.barrier();
  // Full fine-tuning resumes from the checkpoint's weights; LoRA from the base plus the checkpoint's adapter.
  const bool lora = cfg.method != "full";
  auto model = model::load_model(resumed && !lora ? resume.path.string() : cfg.model);
  if (resumed && !lora) model->source_dtypes = resumed->source_dtypes;
  train::TrainConfig method_cfg = cfg;
  if (resumed && lora) method_cfg.adapter = resume.path.string();
  if (cfg.objective == "reward") {
    // The scalar head: kept when --model (or the checkpoint) is a reward model, else fresh from --seed with
    // HF's N(0, initializer_range); with LoRA the adapter folder (--adapter, or the checkpoint) may carry it.
    const auto& raw = model->config().raw;
    const double init_std = raw.contains("initializer_range") && raw["initializer_range"].is_number()
                                ? raw["initializer_range"].get<double>() : 0.02;
    model->add_score_head(cfg.seed, init_std, data::read_manifest(cfg.data).pad_id);  // the data's pad id for HF
    if (lora && !method_cfg.adapter.empty() && train::load_score_from_adapter(*model, method_cfg.adapter))
      log::info("reward head score.weight loaded from " + method_cfg.adapter);
  }
  const train::MethodSummary method = train::apply_method(*model, method_cfg, launch.precision.precision);
  // LoRA dropout masks: each rank its own generator; a resumed run on the same ranks continues each one,
  // on another number of ranks they are seeded afresh (the masks then differ from an uninterrupted run's).
  model->seed_dropout(cfg.seed + uint64_t(resumed ? resumed->step : 0), rank);
  if (resumed && resumed->world == world && size_t(rank) < resumed->dropout_rngs.size())
    model->set_dropout_rng_state(resumed->dropout_rngs[size_t(rank)]);
  if (device.is_cuda()) model->move_to(device);  // the trainer then builds its buffers on the GPU
  const int64_t vocab = model->config().vocab_size;
  auto train_set = data::ShardSet::open(cfg.data, "train", vocab);
  auto val_set = data::ShardSet::open(cfg.data, "val", vocab);
  train::require_objective_data(*train_set, cfg.objective);  // sequences for sft, pairs for dpo
  // The tokenizer the data was prepared with, as its manifest says now: what the saved folders carry.
  const exporter::TokenizerRecord tok_record = exporter::record_from_manifest(data::read_manifest(cfg.data));
  // Content of every shard (each rank a share), before any sample is used and before --out exists.
  const data::VerifyResult vr =
      data::verify_data(cfg.data, {"train", "val"}, {data::parse_verify_mode(cfg.verify_data), rank, world, 0, ""});
  const auto verify_errors = rt.allgather(vr.error), verify_hints = rt.allgather(vr.hint);
  for (size_t r = 0; r < verify_errors.size(); ++r) ST_CHECK(verify_errors[r].empty(), verify_errors[r], verify_hints[r]);
  if (!vr.cache_warning.empty()) log::warn(vr.cache_warning);
  // Not errors (the run is valid), but a user who asked for them should hear that they do not happen.
  const int64_t max_pos = model->config().max_position_embeddings;
  if (rank == 0 && cfg.seq_len > max_pos)
    log::warn("--seq-len " + std::to_string(cfg.seq_len) + " is longer than the model's max_position_embeddings " +
              std::to_string(max_pos) + " (" + cfg.model + "): positions beyond it were never trained\n"
              "  ---> HINT: give --seq-len " + std::to_string(max_pos) + " or less, unless the model is meant to be "
              "extended (then raise max_position_embeddings in its config.json)");
  if (rank == 0 && val_set->size() == 0 && (cfg.eval_every > 0 || cfg.eval_batches > 0))
    log::warn("the validation split of '" + cfg.data + "' is empty: no evaluation will run (--eval-every " +
              std::to_string(cfg.eval_every) + ", --eval-batches " + std::to_string(cfg.eval_batches) + ")\n"
              "  ---> HINT: prepare the data with --val-fraction above 0 (e.g. 0.05), or give --eval-batches 0");
  if (cfg.verify_data != "off")
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
  prepare_out(rt, cfg.out, cfg.data, ckpt_dir);

  train::LoaderPlan plan{cfg.global_batch, cfg.micro_batch, cfg.seq_len, world, rank, cfg.pack,
                         std::max<int64_t>(0, train_set->info().pad_id >= 0 ? train_set->info().pad_id : train_set->info().eos_id),
                         cfg.seed};
  plan.objective = cfg.objective;
  train::Trainer trainer(cfg, model, comm);
  const auto objective = train::make_objective(cfg, *model);  // null for sft; dpo: the reference model
  trainer.set_objective(objective);
  const train::ReferenceInfo ref_info = train::reference_info(cfg, *model, objective.get());
  if (!ref_info.line.empty()) log::info(ref_info.line);
  train::LoaderPlan eval_plan = plan;  // the val split's own reference table with --precompute-ref
  if (cfg.precompute_ref) {
    const auto t0 = std::chrono::steady_clock::now();
    const train::ReferenceTable ref = train::precompute_reference(cfg, *model, *train_set, *val_set, plan, comm, ckpt_dir);
    plan.ref_logps = ref.train;
    eval_plan.ref_logps = ref.val;
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    log::info(std::string(ref.reused ? "reference log-probs reused from " : "reference log-probs computed into ") +
              ref.file.string() + " (" + std::to_string(train_set->size()) + " train + " +
              std::to_string(val_set->size()) + " val pairs, " + std::to_string(static_cast<int>(1000 * secs)) + " ms)");
  }
  if (resumed) {
    checkpoint::load_optimizer(resume.path, trainer.optimizer_targets());
    trainer.set_counters({resumed->optimizer_steps, resumed->skipped_total, resumed->skipped_in_a_row});
  }
  if (!method.detail.empty()) log::info(method.detail);
  log::info(method.line);
  const auto precision = launch.precision.precision;
  const char* precision_name = precision == model::Precision::BF16 ? "bf16" : "fp32";
  const double peak = measure_peak_gflops(precision);
  const auto& mc = model->config();
  if (cfg.precision == "bf16" && !hw::native_bf16(hw::cpu().flags) && rank == 0) {
    // Emulated bf16 is measured (up to ~40x slower than fp32), so the user sees what it costs here.
    char msg[320];
    const double fp32 = measure_peak_gflops(model::Precision::FP32);
    std::snprintf(msg, sizeof msg,
                  "--precision bf16 on a CPU without native bf16 (no avx512_bf16/amx_bf16): measured matmuls run "
                  "%.1f GFLOP/s in bf16 vs %.1f in fp32 (bf16/fp32 = %.3f)\n  ---> HINT: use --precision auto or fp32 "
                  "on this CPU",
                  peak, fp32, peak / std::max(fp32, 1e-9));
    log::warn(msg);
  }
  log::info("model: " + std::to_string(trainer.num_params()) + " parameters, " + std::to_string(mc.num_layers) +
            " layers; data: " + std::to_string(train_set->size()) + " train / " + std::to_string(val_set->size()) +
            " val samples (" + train_set->info().tokenizer_name + "); " + std::to_string(steps) + " steps, " +
            std::to_string(plan.accum()) + " micro-step(s) per step; optimizer state " +
            log::human_bytes(static_cast<double>(trainer.optimizer_state_bytes())) + " per rank");

  Metrics metrics(cfg.metrics, rank, resumed.has_value());
  if (resumed)
    metrics.write({{"type", "resume"}, {"step", resumed->step}, {"checkpoint", resume.path.string()},
                   {"world", world}, {"world_at_save", resumed->world}});
  if (!ref_info.kind.empty())  // dpo: what the reference is and the memory its copy takes per rank
    metrics.write({{"type", "reference"}, {"step", resumed ? resumed->step : 0}, {"reference", ref_info.kind},
                   {"dtype", ref_info.dtype}, {"bytes", ref_info.bytes}});
  auto evaluate = [&](int64_t step) {
    if (val_set->size() == 0 || cfg.eval_batches == 0) return;
    auto [sum, count] = trainer.evaluate(train::read_eval(*val_set, eval_plan, cfg.eval_batches));
    if (count == 0) return;
    double loss = sum / count;
    std::string text = "eval step " + std::to_string(step) + ": val loss " + std::to_string(loss);
    if (cfg.objective == "sft") text += ", perplexity " + std::to_string(std::exp(loss));
    for (const auto& [k, v] : trainer.eval_metrics()) text += ", " + k + " " + std::to_string(v);
    log::info(text);
    nlohmann::json row = {{"type", "eval"}, {"step", step}, {"val_loss", loss}, {"val_ppl", std::exp(loss)}, {"val_tokens", count}};
    for (const auto& [k, v] : trainer.eval_metrics()) row["val_" + k] = v;  // dpo: rewards/..., logps/...
    metrics.write(row);
  };

  // ---- training loop ----
  const int64_t first_step = resumed ? resumed->step : 0;
  ST_CHECK(first_step <= steps, "the checkpoint is at step " + std::to_string(first_step) + ", beyond --steps " +
                                    std::to_string(steps), "give more --steps (or --epochs) to continue training");
  if (!resumed) evaluate(0);
  // The data position: samples of the global stream trained on so far.
  int64_t consumed_samples = resumed ? resumed->consumed_samples : 0;
  train::StepLoader loader(*train_set, plan, consumed_samples, steps - first_step);

  // ---- checkpoints ----
  const auto source_dtypes = model->source_dtypes;
  checkpoint::AsyncSaver async_saver(rt, ckpt_dir, cfg.keep_last);
  auto save_checkpoint = [&](int64_t done) {
    const auto t0 = std::chrono::steady_clock::now();
    checkpoint::TrainerState st;
    st.step = done;
    st.consumed_samples = consumed_samples;
    st.total_steps = steps;
    st.world = world;
    st.seed = cfg.seed;
    const auto c = trainer.counters();
    st.optimizer_steps = c.optimizer_steps;
    st.skipped_total = c.skipped_total;
    st.skipped_in_a_row = c.skipped_in_a_row;
    {
      const auto mine = model->dropout_rng_state();
      for (const auto& s : rt.allgather(std::string(mine.begin(), mine.end())))
        st.dropout_rngs.emplace_back(s.begin(), s.end());
    }
    st.config = identity;
    st.source_dtypes = source_dtypes;
    for (const auto& [name, t] : model->trainable_parameters()) {
      st.params.push_back(name);
      st.numels.push_back(t.numel());
    }
    if (cfg.async_save) {
      // The snapshot is taken now, on this thread; the files are written in the background.
      std::vector<checkpoint::StatePiece> pieces;
      for (const auto& p : trainer.optimizer_share())  // host copies: no GPU memory held while writing
        pieces.push_back({p.param, p.start, checkpoint::host_snapshot(p.exp_avg), checkpoint::host_snapshot(p.exp_avg_sq)});
      async_saver.start(std::move(st), std::move(pieces), with_tokenizer(model_writer(*model, "F32", true, rank, world), tok_record, rank));
      const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      log::info("checkpoint of step " + std::to_string(done) + " is being written in the background (snapshot " +
                std::to_string(static_cast<int>(1000 * secs)) + " ms)");
      metrics.write({{"type", "checkpoint_started"}, {"step", done}, {"snapshot_s", secs}});
      return secs;
    }
    const auto path = checkpoint::save(rt, ckpt_dir, st, trainer.optimizer_share(),
                                       with_tokenizer(model_writer(*model, "F32", false, rank, world), tok_record, rank), cfg.keep_last);
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    log::info("checkpoint saved: " + path.string() + " (step " + std::to_string(done) + ", " +
              std::to_string(static_cast<int>(1000 * secs)) + " ms)");
    metrics.write({{"type", "checkpoint"}, {"step", done}, {"path", path.string()}, {"save_s", secs}});
    return secs;
  };
  auto committed = [&](const stdfs::path& path) {
    if (path.empty()) return;
    log::info("checkpoint saved: " + path.string() + " (written in the background)");
    metrics.write({{"type", "checkpoint"}, {"path", path.string()}, {"async", true}});
  };
  auto last_save = std::chrono::steady_clock::now();
  double last_save_s = 0, step_s_ema = 0;
  bool saved_for_end = false;
  // Slurm's end of the allocation (epoch seconds), when the job has one.
  const char* end_env = std::getenv("SLURM_JOB_END_TIME");
  const double job_end = end_env ? std::atof(end_env) : 0;
  auto flops_per_token = [&](int64_t row_len) { return train::flops_per_token(*model, trainer.num_params(), row_len); };
  log::info("MFU reference: measured " + std::string(precision_name) + " matmul peak " +
            std::to_string(static_cast<int>(peak)) + " GFLOP/s per rank (" + std::to_string(launch.threads) + " thread(s))");
  // Test hook: SHARDTUNE_TEST_FAIL="RANK:STEP" makes that rank throw at that step, "RANK:save" while it
  // saves the final model (failure-path tests).
  const char* fail_at = std::getenv("SHARDTUNE_TEST_FAIL");
  auto injected = [&](const std::string& when) { return fail_at && std::to_string(rank) + ":" + when == fail_at; };
  // From here on every collective is bounded: a dead or hung peer ends the job (slow start-up work such as
  // data verification or the first load is not counted).
  if (world > 1) dist::start_watchdog(cfg.collective_timeout, rank);
  for (int64_t step = first_step; step < steps; ++step) {
    signals::set_progress(step + 1, steps);
    if (injected(std::to_string(step)))
      ST_FAIL("injected failure at step " + std::to_string(step) + " (SHARDTUNE_TEST_FAIL)");
    // Time blocked on the prefetch thread: 0 when reading keeps ahead of training (it should).
    const auto wait_start = std::chrono::steady_clock::now();
    auto batches = loader.next();
    const double data_wait_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - wait_start).count();
    train::StepStats s = trainer.train_step(step, steps, batches);
    consumed_samples += cfg.global_batch;
    const double tps = s.tokens / (s.seconds + data_wait_s);
    const double fpt = flops_per_token(batches.empty() ? 0 : batches[0].T);
    const double mfu = fpt * tps / (peak * 1e9 * world);
    const mem::MemoryStats ms = mem::measure_memory();  // rank 0's, after the step (tools/bench/train.sh)
    nlohmann::json row = {{"type", "train"}, {"step", step + 1}, {"loss", s.loss}, {"lr", s.lr}, {"grad_norm", s.grad_norm},
                   {"tokens", s.tokens}, {"loss_tokens", s.loss_tokens}, {"tokens_per_s", tps}, {"mfu", mfu},
                   {"step_s", s.seconds}, {"comm_wait_s", s.comm_wait_s}, {"forward_s", s.forward_s},
                   {"backward_s", s.backward_s}, {"drain_s", s.drain_s}, {"optim_s", s.optim_s}, {"gather_s", s.gather_s},
                   {"data_wait_s", data_wait_s}, {"consumed_samples", consumed_samples}, {"skipped", s.skipped},
                   {"flops_per_token", fpt}, {"peak_gflops", peak},
                   {"rss_peak_bytes", ms.rss_peak_bytes}, {"heap_bytes", ms.heap_bytes}, {"heap_held_bytes", ms.heap_held_bytes}};
    for (const auto& [k, v] : s.metrics) row[k] = v;  // dpo: rewards/chosen, ..., logps/rejected
    if (step == 0) {
      // Rank 0's persistent optimizer and gradient buffers, once (tools/bench/lora.sh: LoRA vs full).
      row["optimizer_state_bytes"] = trainer.optimizer_state_bytes();
      row["grad_buffer_bytes"] = trainer.grad_buffer_bytes();
    }
    metrics.write(row);
    if (s.skipped)
      log::info("step " + std::to_string(step + 1) + "/" + std::to_string(steps) + " skipped: non-finite " + s.nonfinite +
                " (--on-nonfinite skip; " + std::to_string(trainer.skipped_steps()) + " skipped so far)");
    if ((step + 1) % cfg.log_every == 0 || step + 1 == steps) {
      char line[256];
      std::snprintf(line, sizeof line, "step %lld/%lld  loss %.4f  lr %.3g  grad_norm %.3f  %.0f tok/s  mfu %.1f%%  comm-wait %.0f ms",
                    static_cast<long long>(step + 1), static_cast<long long>(steps), s.loss, s.lr, s.grad_norm, tps,
                    100 * mfu, 1000 * s.comm_wait_s);
      std::string text = line;
      for (const auto& [k, v] : s.metrics) {
        char m[96];
        std::snprintf(m, sizeof m, "  %s %.4f", k.c_str(), v);
        text += m;
      }
      if (data_wait_s >= 0.001) text += "  data-wait " + std::to_string(static_cast<int>(1000 * data_wait_s)) + " ms";
      log::info(text);
    }
    if (cfg.eval_every > 0 && (step + 1) % cfg.eval_every == 0 && step + 1 != steps) evaluate(step + 1);

    // Checkpoint every --save-every steps, every --save-every-minutes (rank 0's clock), before Slurm's end
    // of the allocation when the next scheduled save would come too late, and on a stop signal (SIGUSR1,
    // SIGTERM: every rank agrees at this step boundary, saves, and the run exits with 75).
    const int64_t done = step + 1;
    step_s_ema = step_s_ema == 0 ? s.seconds : 0.8 * step_s_ema + 0.2 * s.seconds;
    int64_t due = 0;
    if (rank == 0) {
      const double since = std::chrono::duration<double>(std::chrono::steady_clock::now() - last_save).count();
      if (cfg.save_every_minutes > 0 && since >= 60 * cfg.save_every_minutes) due = 1;
      if (job_end > 0 && !saved_for_end && done < steps) {
        const double now = std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
        double next = cfg.save_every > 0 ? double(cfg.save_every - done % cfg.save_every) * step_s_ema : 1e18;
        if (cfg.save_every_minutes > 0) next = std::min(next, 60 * cfg.save_every_minutes - since);
        if (job_end - now < next + 3 * step_s_ema + 2 * last_save_s + 30) {
          due = 2;
          saved_for_end = true;
          log::info("the Slurm allocation ends in " + std::to_string(static_cast<int>(job_end - now)) +
                    " s, before the next scheduled checkpoint: saving now");
        }
      }
    }
    due = rt.allreduce_max(due);
    const bool stop = rt.allreduce_max(signals::received() ? 1 : 0) > 0;
    if (async_saver.busy()) committed(async_saver.poll());
    if (stop || due > 0 || (cfg.save_every > 0 && done % cfg.save_every == 0)) {
      last_save_s = save_checkpoint(done);
      last_save = std::chrono::steady_clock::now();
    }
    if (stop) {
      committed(async_saver.finish());
      log::info("stopped after step " + std::to_string(done) + " of " + std::to_string(steps) +
                " on a signal, checkpoint written; exit code 75: rerun (or requeue) with --resume auto to go on");
      std::fflush(nullptr);
      return 75;
    }
  }
  committed(async_saver.finish());
  evaluate(steps);
  if (trainer.skipped_steps() > 0)
    log::info("skipped " + std::to_string(trainer.skipped_steps()) + " of " + std::to_string(steps) +
              " steps with a non-finite loss or gradient norm (--on-nonfinite skip)");

  // ---- final model ----
  trainer.check_weights_finite("after the last step, before saving");
  if (rank == 0) {
    save_final(*model, cfg, tok_record, injected("save"));
    log::info(model->has_lora() ? "saved the adapter (PEFT layout: adapter_config.json + adapter_model.safetensors) to " + cfg.out
                                : "saved the fine-tuned model (Hugging Face layout) to " + cfg.out);
  }
  rt.barrier();
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  shardtune::hw::select_blas_core(argv);  // before MPI_Init and any torch work: may re-exec with OPENBLAS_CORETYPE
  shardtune::dist::MpiRuntime rt(&argc, &argv);
  shardtune::log::set_rank(rt.rank(), rt.world());
  try {
    return train_main(argc, argv, rt);
  } catch (const std::exception& e) {
    shardtune::signals::quiet();  // the launcher's SIGTERM to the other ranks is no news after this message
    // One failing rank ends the whole job promptly (no hang in a collective), with its own message.
    if (rt.world() > 1)
      std::fprintf(stderr, "shardtune [rank %d]: %s\n", rt.rank(), shardtune::describe(e).c_str());
    else
      std::fprintf(stderr, "shardtune: %s\n", shardtune::describe(e).c_str());
    std::fflush(stderr);
    rt.abort(1);
  }
}
