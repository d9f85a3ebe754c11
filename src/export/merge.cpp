// Streaming LoRA merge into a Hugging Face folder (see shardtune/export/merge.h). Plan first (adapter,
// base headers, shapes, output layout: all checks), then one pass over the base's tensors in file order.
#include "shardtune/export/merge.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/core/GradMode.h>

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <set>
#include <vector>

#include "shardtune/core/error.h"
#include "shardtune/core/fs.h"
#include "shardtune/core/hw.h"
#include "shardtune/core/json_depth.h"
#include "shardtune/core/log.h"
#include "shardtune/export/hf_tokenizer_files.h"
#include "shardtune/model/adapter.h"
#include "shardtune/model/config.h"
#include "shardtune/model/io.h"
#include "shardtune/model/safetensors.h"

namespace shardtune::exporter {

namespace stdfs = std::filesystem;
namespace sm = shardtune::model;

namespace {

// Files of an HF model folder besides config.json and the weights that a complete export carries along
// from the base, when the adapter is not ours (ours carries the data's tokenizer: hf_tokenizer_files.h).
const char* const kCopiedFiles[] = {"generation_config.json", "tokenizer.json",   "tokenizer_config.json",
                                    "special_tokens_map.json", "tokenizer.model", "vocab.json",
                                    "merges.txt",              "added_tokens.json", "shardtune_tokenizer.json"};

bool is_float(st::DType d) {
  return d == st::DType::F32 || d == st::DType::BF16 || d == st::DType::F16 || d == st::DType::F64;
}

// The reward head has no base tensor to take a dtype from: fp32 as the adapter holds it, unless --dtype.
st::DType score_dtype(const std::string& dtype) { return dtype.empty() ? st::DType::F32 : st::parse_dtype(dtype, "--dtype"); }

std::string shape_text(const at::Tensor& t) {
  std::string s;
  for (int64_t i = 0; i < t.dim(); ++i) s += (i ? "x" : "") + std::to_string(t.size(i));
  return s;
}

std::string torch_dtype_name(const std::string& d) {
  return d == "BF16" ? "bfloat16" : d == "F16" ? "float16" : "float32";
}

// "out/" -> "/abs/out"; its staging sibling "/abs/out.partial".
stdfs::path normalized(const stdfs::path& p) {
  const stdfs::path a = stdfs::absolute(p).lexically_normal();
  return a.filename().empty() ? a.parent_path() : a;
}

// Everything the pass needs, decided (and checked) before a byte is written.
struct Plan {
  sm::AdapterConfig acfg;
  sm::AdapterWeights adapter;
  std::map<std::string, std::string> module_of;  // base tensor name -> adapter module merged into it
  std::vector<std::unique_ptr<st::File>> files;  // base safetensors, in index order
  bool sharded = false;                          // the base has model.safetensors.index.json
  std::vector<std::string> copied;               // other files of the base folder to copy
  std::string config_text;                       // config.json as written
  int64_t max_positions = 0;                     // the base's context (tokenizer_config.json's model_max_length)
  uint64_t total_bytes = 0;                      // tensor bytes of the output
  int64_t total_tensors = 0;
  // A reward adapter's head (--objective reward): the output is a *ForSequenceClassification folder, the
  // base's lm_head.weight (and a base reward model's own score.weight) left out, this head written last.
  at::Tensor score;
  std::set<std::string> dropped;
};

st::DType output_dtype(const st::TensorInfo& t, const std::string& dtype) {
  // Integer and bool buffers (masks, position ids) keep their dtype whatever --dtype says.
  return dtype.empty() || !is_float(t.dtype) ? t.dtype : st::parse_dtype(dtype, "--dtype");
}

Plan plan_hf(const stdfs::path& base, const MergeOptions& o) {
  Plan p;
  const stdfs::path cfg_path = base / "config.json";
  ST_CHECK(stdfs::exists(cfg_path), base.string() + ": no config.json",
           "--model takes a Hugging Face model folder (config.json + model.safetensors) or a llama2.c .bin file");
  const sm::ModelConfig mcfg = sm::ModelConfig::from_file(cfg_path.string());
  p.max_positions = mcfg.max_position_embeddings;
  for (const auto& f : st::model_files(base)) p.files.push_back(std::make_unique<st::File>(f));
  sm::check_hf_weights(mcfg, p.files, cfg_path.string());  // the base is complete and matches its config
  p.sharded = stdfs::exists(base / "model.safetensors.index.json");

  std::map<std::string, std::vector<int64_t>> shapes;
  for (const auto& f : p.files)
    for (const auto& t : f->tensors()) {
      ST_CHECK(!shapes.count(t.name), f->path().string() + ": tensor '" + t.name + "' also appears in another file of " +
                                          base.string(), "the checkpoint is inconsistent; re-download it");
      shapes[t.name] = t.shape;
      const st::DType out = output_dtype(t, o.dtype);
      p.total_bytes += uint64_t(t.numel()) * st::dtype_size(out);
      ++p.total_tensors;
    }

  p.acfg = sm::read_adapter_config(o.adapter);
  p.adapter = sm::read_adapter_weights(o.adapter, p.acfg);
  const auto targets = sm::match_adapter_to_base(p.acfg, p.adapter, shapes, mcfg.arch == sm::Arch::GPT2, o.adapter,
                                                 "the base model " + base.string());
  for (const auto& [module, weight] : targets) p.module_of[weight] = module;
  p.score = sm::read_adapter_score(o.adapter);
  if (p.score.defined()) {
    ST_CHECK(p.score.dim() == 2 && p.score.size(0) == 1 && p.score.size(1) == mcfg.hidden_size,
             o.adapter.string() + ": the reward head base_model.model.score.weight has shape " + shape_text(p.score) +
                 ", the base's hidden size is " + std::to_string(mcfg.hidden_size),
             "merge the adapter into the base model it was trained on");
    for (const char* n : {"lm_head.weight", "score.weight"})
      if (shapes.count(n)) p.dropped.insert(n);
    p.total_bytes = uint64_t(p.score.numel()) * st::dtype_size(score_dtype(o.dtype));
    p.total_tensors = 1;
    for (const auto& f : p.files)
      for (const auto& t : f->tensors())
        if (!p.dropped.count(t.name)) {
          p.total_bytes += uint64_t(t.numel()) * st::dtype_size(output_dtype(t, o.dtype));
          ++p.total_tensors;
        }
  }
  for (const auto& f : p.files)
    for (const auto& t : f->tensors())
      ST_CHECK(!p.module_of.count(t.name) || is_float(t.dtype),
               f->path().string() + ": weight '" + t.name + "' has dtype " + st::dtype_name(t.dtype) +
                   ", which a LoRA delta cannot be added to", "merge into a floating-point (unquantized) base");

  // config.json byte for byte, or with torch_dtype saying what --dtype made of the weights.
  p.config_text = fs::read_file(cfg_path);
  if (p.score.defined()) {  // as the trainer's full save writes a reward model (num_labels 1, pad_token_id, ...)
    sm::ModelConfig rc = mcfg;
    rc.num_labels = 1;
    // pad_token_id as the trainer sets it: the base's, else the data's pad id (the adapter's tokenizer record).
    const auto rec = read_record_file(o.adapter);
    if (rec && rec->record.pad_id >= 0 && rc.raw.is_object() &&
        (!rc.raw.contains("pad_token_id") || rc.raw["pad_token_id"].is_null()))
      rc.raw["pad_token_id"] = rec->record.pad_id;
    nlohmann::ordered_json j = nlohmann::ordered_json::parse(rc.to_json().dump());
    if (!o.dtype.empty()) j["torch_dtype"] = torch_dtype_name(o.dtype);
    p.config_text = j.dump(2) + "\n";
  } else if (!o.dtype.empty()) {
    check_json_depth(p.config_text, cfg_path.string());
    nlohmann::ordered_json j = nlohmann::ordered_json::parse(p.config_text);  // from_file parsed it already
    j["torch_dtype"] = torch_dtype_name(o.dtype);
    p.config_text = j.dump(2) + "\n";
  }
  for (const char* name : kCopiedFiles)
    if (stdfs::is_regular_file(base / name)) p.copied.push_back(name);
  return p;
}

// One pass over the base's files and tensors in file order: each tensor in the output dtype, with the
// adapter's delta added when it has one; the base's mapped bytes are released as soon as they are used,
// so resident memory holds about one tensor (two for a merged one: the weight and its delta).
MergeResult write_hf(const Plan& p, const MergeOptions& o, const stdfs::path& staging) {
  MergeResult r;
  const double scale = p.acfg.scale();
  const int64_t every =
      o.progress_every > 0 ? o.progress_every : std::max<int64_t>(1, (p.total_tensors + 19) / 20);
  nlohmann::json weight_map = nlohmann::json::object();
  at::NoGradGuard no_grad;
  for (const auto& f : p.files) {
    const std::string fname = f->path().filename().string();
    std::vector<st::TensorRef> layout;
    for (const st::TensorInfo& t : f->tensors()) {
      if (p.dropped.count(t.name)) continue;
      const st::DType d = output_dtype(t, o.dtype);
      layout.push_back({t.name, d, t.shape, nullptr, uint64_t(t.numel()) * st::dtype_size(d)});
      weight_map[t.name] = fname;
    }
    const bool head_here = p.score.defined() && &f == &p.files.back();  // the reward head ends the last file
    at::Tensor head;
    if (head_here) {
      const st::DType d = score_dtype(o.dtype);
      head = p.score.to(sm::to_scalar_type(d)).contiguous();
      layout.push_back({"score.weight", d, p.score.sizes().vec(), nullptr, uint64_t(head.nbytes())});
      weight_map["score.weight"] = fname;
    }
    std::map<std::string, std::string> meta = f->metadata();
    meta.emplace("format", "pt");  // transformers expects it; keep the base's other metadata
    st::StreamWriter w(staging / fname, layout, meta);
    for (const st::TensorInfo& t : f->tensors()) {
      if (p.dropped.count(t.name)) {
        f->release(t);
        continue;
      }
      const st::DType d = output_dtype(t, o.dtype);
      auto it = p.module_of.find(t.name);
      if (it == p.module_of.end() && d == t.dtype) {
        w.write(f->data(t), t.nbytes());  // straight from the mapping: no copy
        f->release(t);
      } else {
        at::Tensor x = sm::to_tensor(*f, t);
        f->release(t);
        const bool was_finite = at::isfinite(x).all().item<bool>();
        if (it != p.module_of.end()) {
          // As PEFT's merge: in fp32 (fp64 stays fp64), then cast to the output dtype.
          if (x.scalar_type() != at::kFloat && x.scalar_type() != at::kDouble) x = x.to(at::kFloat);
          x.add_(sm::lora_delta(p.adapter.at(it->second), scale, p.acfg.fan_in_fan_out).to(x.scalar_type()));
          ST_CHECK(at::isfinite(x).all().item<bool>() || !was_finite,
                   "weight '" + t.name + "' of " + f->path().string() + " is not finite after adding the delta of module '" +
                       it->second + "'", "the adapter holds huge values (diverged training?); use an earlier checkpoint");
          ++r.merged;
        }
        const at::Tensor y = x.to(sm::to_scalar_type(d)).contiguous();
        if (d != t.dtype && d != st::DType::F32 && d != st::DType::F64)
          ST_CHECK(!was_finite || at::isfinite(y).all().item<bool>(),
                   "weight '" + t.name + "' does not fit " + st::dtype_name(d) + ": its largest magnitude " +
                       std::to_string(x.abs().max().item<double>()) + " becomes Inf",
                   "use --dtype BF16 or F32 (F16's largest value is 65504)");
        w.write(y.data_ptr(), uint64_t(y.nbytes()));
      }
      ++r.tensors;
      r.bytes += uint64_t(t.numel()) * st::dtype_size(d);
      if (r.tensors % every == 0 || r.tensors == p.total_tensors)
        log::info("merge: " + std::to_string(r.tensors) + "/" + std::to_string(p.total_tensors) + " tensors, " +
                  std::to_string(r.merged) + " merged, " + log::human_bytes(double(r.bytes)) + " written");
    }
    if (head_here) {
      w.write(head.data_ptr(), uint64_t(head.nbytes()));
      ++r.tensors;
      r.bytes += uint64_t(head.nbytes());
    }
    w.finish(/*sync=*/true);
    ++r.files;
  }
  if (p.sharded) {
    const nlohmann::json index = {{"metadata", {{"total_size", r.bytes}}}, {"weight_map", weight_map}};
    fs::write_file_atomic(staging / "model.safetensors.index.json", index.dump(2) + "\n");
  }
  return r;
}

}  // namespace

std::string parse_output_dtype(const std::string& dtype) {
  std::string u;
  for (char c : dtype) u.push_back(char(std::toupper(static_cast<unsigned char>(c))));
  if (u.empty()) return u;
  if (u == "F32" || u == "FP32" || u == "FLOAT32") return "F32";
  if (u == "BF16" || u == "BFLOAT16") return "BF16";
  if (u == "F16" || u == "FP16" || u == "FLOAT16") return "F16";
  ST_FAIL("--dtype '" + dtype + "' is not an output dtype", "give F32, BF16 or F16 (or leave it out: each tensor keeps the base's dtype)");
}

MergeResult merge_adapter(const MergeOptions& opts) {
  MergeOptions o = opts;
  o.dtype = parse_output_dtype(o.dtype);
  ST_CHECK(!o.out.empty(), "--out is empty", "give the folder to write the merged model into");
  const stdfs::path out = normalized(o.out);
  const stdfs::path staging = out.parent_path() / (out.filename().string() + ".partial");
  ST_CHECK(stdfs::exists(o.model), "--model '" + o.model.string() + "': no such file or folder",
           "give a Hugging Face model folder (config.json + model.safetensors) or a llama2.c .bin file");
  ST_CHECK(stdfs::is_directory(o.adapter), "--adapter '" + o.adapter.string() + "': no such folder",
           "give a PEFT LoRA folder (adapter_config.json + adapter_model.safetensors)");
  fs::require_absent_or_empty(out, "--out folder");
  ST_CHECK(!stdfs::exists(staging),
           "the staging folder '" + staging.string() + "' of an earlier merge exists: that merge did not finish, so it "
           "holds an incomplete model",
           "remove it (rm -r '" + staging.string() + "') and rerun, or choose another --out");
  ST_CHECK(stdfs::is_directory(out.parent_path()), "--out '" + o.out.string() + "': the folder " +
                                                     out.parent_path().string() + " that would hold it does not exist",
           "create the parent folder first");
  if (auto cpus = hw::affinity().count; cpus > 0) at::set_num_threads(cpus);

  stdfs::path base = o.model;
  const std::string name = base.filename().string();
  if (!stdfs::is_directory(base) && (name == "config.json" || name.size() > 12 &&
                                     (name.rfind(".safetensors") == name.size() - 12 ||
                                      name.find(".safetensors.index.json") != std::string::npos)))
    base = base.has_parent_path() ? base.parent_path() : stdfs::path(".");

  // ---- plan: every check, before anything is written ----
  Plan p;
  std::shared_ptr<sm::CausalLM> whole;  // a llama2.c .bin: loaded and merged in memory (tiny models)
  int64_t merged_whole = 0;
  if (stdfs::is_directory(base)) {
    p = plan_hf(base, o);
    char scale[32];
    std::snprintf(scale, sizeof scale, "%g", p.acfg.scale());
    log::info("merging the LoRA adapter " + o.adapter.string() + " (r " + std::to_string(p.acfg.r) + ", scale " +
              scale + ", " + std::to_string(p.adapter.size()) + " modules) into " +
              base.string() + " (" + std::to_string(p.total_tensors) + " tensors in " + std::to_string(p.files.size()) +
              " file(s)) -> " + out.string() + (o.dtype.empty() ? "" : " as " + o.dtype));
  } else {
    ST_CHECK(!sm::read_adapter_score(o.adapter).defined(),
             o.adapter.string() + " is a reward model's adapter (its head base_model.model.score.weight), and a llama2.c "
             ".bin base has no reward-model form",
             "merge it into a Hugging Face folder of the base (config.json + model.safetensors)");
    whole = sm::load_model(base.string());
    merged_whole = sm::merge_lora(*whole, o.adapter);  // checks everything before it adds a delta
    log::info("merged the LoRA adapter " + o.adapter.string() + " into " + std::to_string(merged_whole) +
              " weights of " + base.string() + " -> " + out.string());
  }

  // ---- write under <out>.partial, publish by one rename ----
  std::error_code ec;
  ST_CHECK(stdfs::create_directory(staging, ec) && !ec,
           "cannot create the staging folder '" + staging.string() + "'" + (ec ? ": " + ec.message() : ""),
           "the folder that holds --out must be writable (the model is written beside --out, then renamed onto it)");
  MergeResult r;
  try {
    // The tokenizer our adapter's data was prepared with, in Hugging Face form, with the base's generation
    // settings; an adapter PEFT wrote (no shardtune_tokenizer.json) gets the base's tokenizer files below.
    exporter::HfFolderOptions ho;
    ho.model_max_length = whole ? whole->config().max_position_embeddings : p.max_positions;
    if (!whole) ho.base = base;
    const bool carried = carry_hf_tokenizer_files(o.adapter, staging, ho).has_value();
    if (whole) {
      sm::SaveOptions so;
      so.dtype = o.dtype;
      sm::save_hf(*whole, staging, so);
      for (const auto& [n, t] : whole->hf_parameters()) {
        ++r.tensors;
        r.bytes += uint64_t(t.numel()) * st::dtype_size(st::parse_dtype(o.dtype.empty() ? "F32" : o.dtype, "--dtype"));
      }
      r.merged = merged_whole;
      r.files = 1;
    } else {
      r = write_hf(p, o, staging);
      fs::write_file_atomic(staging / "config.json", p.config_text);
      if (!carried)
        for (const auto& n : p.copied) stdfs::copy_file(base / n, staging / n);
    }
    fs::fsync_dir_contents(staging);
    fs::publish_dir(staging, out, "--out folder", "--out must stay an empty folder (or absent) while the merge runs");
    fs::fsync_path(out.parent_path());
  } catch (...) {
    stdfs::remove_all(staging, ec);
    throw;
  }
  log::info("wrote " + out.string() + ": " + std::to_string(r.tensors) + " tensors (" + std::to_string(r.merged) +
            " merged) in " + std::to_string(r.files) + " file(s), " + log::human_bytes(double(r.bytes)));
  return r;
}

}  // namespace shardtune::exporter
