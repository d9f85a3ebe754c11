// Checkpoint -> Hugging Face model or PEFT adapter (see shardtune/export/checkpoint_export.h). The weights
// go through the model layer's own reader and writer, the ones the trainer's final save uses, so an export
// of the last step's checkpoint equals the run's final model (bit for bit in F32).
#include "shardtune/export/checkpoint_export.h"

#include <ATen/ATen.h>

#include <utility>
#include <vector>

#include "shardtune/checkpoint/files.h"
#include "shardtune/core/error.h"
#include "shardtune/core/fs.h"
#include "shardtune/core/log.h"
#include "shardtune/export/hf_tokenizer_files.h"
#include "shardtune/export/merge.h"
#include "shardtune/model/io.h"
#include "shardtune/model/model.h"

namespace shardtune::exporter {

namespace stdfs = std::filesystem;
namespace ck = shardtune::checkpoint;
namespace sm = shardtune::model;

namespace {

// Files a run may keep beside the weights that an exported folder carries along (checkpoints from before
// shardtune_tokenizer.json was written into them).
const char* const kCarried[] = {"generation_config.json", "tokenizer.json",   "tokenizer_config.json",
                                "special_tokens_map.json", "tokenizer.model", "vocab.json",
                                "merges.txt",              "added_tokens.json", "shardtune_tokenizer.json"};

stdfs::path normalized(const stdfs::path& p) {
  const stdfs::path a = stdfs::absolute(p).lexically_normal();
  return a.filename().empty() ? a.parent_path() : a;
}

// A --ckpt-dir stands for the checkpoint its `latest` names.
stdfs::path resolve_checkpoint(const stdfs::path& p) {
  std::error_code ec;
  ST_CHECK(stdfs::is_directory(p, ec), "--ckpt '" + p.string() + "': no such folder",
           "give a checkpoint folder (<ckpt-dir>/step-N) or a --ckpt-dir holding `latest`");
  if (stdfs::exists(p / ck::kManifestFile, ec) || stdfs::exists(p / ck::kStateFile, ec)) return p;
  const std::string latest = ck::latest_name(p);
  ST_CHECK(latest != "none" && stdfs::is_directory(p / latest, ec),
           "--ckpt '" + p.string() + "' is neither a checkpoint (no manifest.json) nor a checkpoint folder with `latest`",
           "give a checkpoint folder (<ckpt-dir>/step-N); `shardtune-inspect DIR --verify` lists them");
  return p / latest;
}

// The tokenizer side of the folder: from the identity the checkpoint keeps (shardtune_tokenizer.json), else
// from the run's data manifest (older checkpoints), else whatever tokenizer files the checkpoint holds.
void write_tokenizer(const stdfs::path& ckpt, const stdfs::path& staging, const ck::TrainerState& state,
                     const sm::CausalLM* model) {
  auto option = [&](const char* key) {
    auto it = state.config.find(key);
    return it == state.config.end() ? std::string() : it->second;
  };
  HfFolderOptions ho;
  ho.model = model != nullptr;
  std::error_code ec;
  if (const std::string base = option("model"); !base.empty() && stdfs::is_directory(base, ec)) ho.base = base;
  if (model) {
    ho.model_max_length = model->config().max_position_embeddings;
  } else if (!ho.base.empty() && stdfs::is_regular_file(ho.base / "config.json", ec)) {
    try {
      ho.model_max_length = sm::ModelConfig::from_file((ho.base / "config.json").string()).max_position_embeddings;
    } catch (const std::exception&) {
      // left out of tokenizer_config.json: the base's config.json is not what the run trained on
    }
  }
  if (carry_hf_tokenizer_files(ckpt, staging, ho)) return;
  try {
    const std::string data = option("data");
    ST_CHECK(!data.empty(), "the checkpoint's configuration names no --data");
    write_hf_tokenizer_files(staging, record_from_manifest(data::read_manifest(data)), ho);
    return;
  } catch (const std::exception& e) {
    log::warn("checkpoint " + ckpt.string() + " records no tokenizer and its data's manifest cannot be read (" +
              e.what() + "): the export gets no tokenizer files");
  }
  for (const char* name : kCarried)
    if (stdfs::is_regular_file(ckpt / name, ec) && !stdfs::exists(staging / name, ec))
      stdfs::copy_file(ckpt / name, staging / name);
}

// The adapter's tensors in `dtype` (a copy when dtype is ""), as PEFT reads them.
void write_adapter(const stdfs::path& ckpt, const stdfs::path& staging, const std::string& dtype) {
  stdfs::copy_file(ckpt / "adapter_config.json", staging / "adapter_config.json");
  if (dtype.empty()) {
    stdfs::copy_file(ckpt / "adapter_model.safetensors", staging / "adapter_model.safetensors");
    return;
  }
  const at::ScalarType t = sm::to_scalar_type(st::parse_dtype(dtype, "--dtype"));
  std::vector<std::pair<std::string, at::Tensor>> tensors;
  for (auto& [name, x] : sm::read_safetensors(ckpt / "adapter_model.safetensors"))
    tensors.emplace_back(name, x.is_floating_point() ? x.to(t).contiguous() : x);
  sm::write_safetensors(staging / "adapter_model.safetensors", tensors);
}

}  // namespace

CheckpointExportResult export_checkpoint(const CheckpointExportOptions& opts) {
  const std::string dtype = parse_output_dtype(opts.dtype);
  ST_CHECK(!opts.out.empty(), "--out is empty", "give the folder to write the exported model into");
  const stdfs::path ckpt = resolve_checkpoint(opts.ckpt);
  const stdfs::path out = normalized(opts.out);
  const stdfs::path staging = out.parent_path() / (out.filename().string() + ".partial");
  fs::require_absent_or_empty(out, "--out folder");
  ST_CHECK(!stdfs::exists(staging),
           "the staging folder '" + staging.string() + "' of an earlier export exists: that export did not finish, so "
           "it holds an incomplete model",
           "remove it (rm -r '" + staging.string() + "') and rerun, or choose another --out");
  ST_CHECK(stdfs::is_directory(out.parent_path()), "--out '" + opts.out.string() + "': the folder " +
                                                       out.parent_path().string() + " that would hold it does not exist",
           "create the parent folder first");

  // ---- the checkpoint: every file against its manifest, then what it holds ----
  const std::string why = ck::verify(ckpt);
  ST_CHECK(why.empty(), "checkpoint '" + ckpt.string() + "' does not verify: " + why,
           "export another checkpoint (`shardtune-inspect " + ckpt.parent_path().string() +
               " --verify` shows which verify); this one is incomplete or damaged");
  const ck::TrainerState state = ck::read_state(ckpt);
  CheckpointExportResult r;
  r.ckpt = ckpt;
  r.step = state.step;
  r.adapter = stdfs::exists(ckpt / "adapter_config.json");
  ST_CHECK(r.adapter || stdfs::exists(ckpt / "config.json"),
           "checkpoint '" + ckpt.string() + "' holds neither config.json (full fine-tuning) nor adapter_config.json (LoRA)",
           "this is not a checkpoint written by the shardtune trainer");
  std::shared_ptr<sm::CausalLM> model;
  if (!r.adapter) {
    model = sm::load_model(ckpt.string());  // checks the weights against config.json
    model->source_dtypes = state.source_dtypes;  // "as loaded": the base model's dtypes, not the checkpoint's fp32
  }
  log::info("exporting " + std::string(r.adapter ? "the LoRA adapter" : "the model") + " of checkpoint " + ckpt.string() +
            " (step " + std::to_string(state.step) + " of " + std::to_string(state.total_steps) + ") -> " + out.string() +
            (dtype.empty() ? (r.adapter ? " (as saved)" : " (in the base model's dtypes)") : " as " + dtype));

  // ---- write under <out>.partial, publish by one rename ----
  std::error_code ec;
  ST_CHECK(stdfs::create_directory(staging, ec) && !ec,
           "cannot create the staging folder '" + staging.string() + "'" + (ec ? ": " + ec.message() : ""),
           "the folder that holds --out must be writable (the model is written beside --out, then renamed onto it)");
  try {
    if (r.adapter) {
      write_adapter(ckpt, staging, dtype);
    } else {
      sm::SaveOptions so;
      so.dtype = dtype;
      sm::save_hf(*model, staging, so);
    }
    write_tokenizer(ckpt, staging, state, model.get());
    fs::fsync_dir_contents(staging);
    fs::publish_dir(staging, out, "--out folder", "--out must stay an empty folder (or absent) while the export runs");
    fs::fsync_path(out.parent_path());
  } catch (...) {
    stdfs::remove_all(staging, ec);
    throw;
  }
  log::info("wrote " + out.string() + (r.adapter ? " (PEFT adapter)" : " (Hugging Face model)"));
  return r;
}

}  // namespace shardtune::exporter
