// shardtune-export: write models for other tools. One subcommand per target: `merge` (a PEFT LoRA adapter
// merged into its Hugging Face base, streamed one tensor at a time); `gguf` and `hf` come with later issues.
#include <CLI/CLI.hpp>

#include "shardtune/core/error.h"
#include "shardtune/core/hw.h"
#include "shardtune/export/merge.h"

namespace {

// Options of `merge`, bound to their CLI11 subcommand.
struct MergeCommand {
  shardtune::exporter::MergeOptions opts;
  std::string model, adapter, out;
  CLI::App* app = nullptr;

  void add_to(CLI::App& parent) {
    app = parent.add_subcommand("merge", "merge a PEFT LoRA adapter into its base; writes a complete Hugging Face folder");
    app->add_option("--model", model, "base: HF folder (config.json + model.safetensors or shards) or llama2.c .bin")
        ->required();
    app->add_option("--adapter", adapter, "PEFT LoRA folder (adapter_config.json + adapter_model.safetensors)")->required();
    app->add_option("--out", out, "output folder (must be absent or empty)")->required();
    app->add_option("--dtype", opts.dtype, "F32, BF16 or F16 (default: each tensor's dtype in the base)");
    app->add_option("--progress-every", opts.progress_every, "a progress line every N tensors (0: about 20 lines)")
        ->capture_default_str();
  }
  int run() {
    opts.model = model;
    opts.adapter = adapter;
    opts.out = out;
    shardtune::exporter::merge_adapter(opts);
    return 0;
  }
};

}  // namespace

static int run(int argc, char** argv) {
  CLI::App app{"Export models: `shardtune-export merge` merges a PEFT LoRA adapter into its base model."};
  app.require_subcommand(1);
  MergeCommand merge;
  merge.add_to(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 2;
  }
  if (*merge.app) return merge.run();
  return 2;
}

int main(int argc, char** argv) {
  shardtune::hw::select_blas_core(argv);  // before any torch work: may re-exec with OPENBLAS_CORETYPE set
  return shardtune::run_guarded("shardtune-export", run, argc, argv);
}
