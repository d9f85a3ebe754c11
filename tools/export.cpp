// shardtune-export: write models for other tools. One subcommand per target: `merge` (a PEFT LoRA adapter
// merged into its Hugging Face base, streamed one tensor at a time), `checkpoint` (a trainer checkpoint as
// an HF model or PEFT adapter), `gguf` (a model, adapter merged or not, or a LoRA adapter as GGUF for llama.cpp).
#include <CLI/CLI.hpp>

#include "shardtune/core/error.h"
#include "shardtune/core/hw.h"
#include "shardtune/export/checkpoint_export.h"
#include "shardtune/export/gguf_model.h"
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

// Options of `checkpoint`.
struct CheckpointCommand {
  shardtune::exporter::CheckpointExportOptions opts;
  std::string ckpt, out;
  CLI::App* app = nullptr;

  void add_to(CLI::App& parent) {
    app = parent.add_subcommand("checkpoint",
                                "a trainer checkpoint as a Hugging Face model folder (full fine-tuning) or a PEFT "
                                "adapter folder (LoRA / QLoRA); the checkpoint must verify");
    app->add_option("--ckpt", ckpt, "checkpoint folder (<ckpt-dir>/step-N), or a --ckpt-dir (its `latest`)")->required();
    app->add_option("--out", out, "output folder (must be absent or empty)")->required();
    app->add_option("--dtype", opts.dtype,
                    "F32, BF16 or F16 (default: the dtypes of the base model the run loaded; an adapter as saved)");
  }
  int run() {
    opts.ckpt = ckpt;
    opts.out = out;
    shardtune::exporter::export_checkpoint(opts);
    return 0;
  }
};

// Options of `gguf`.
struct GgufCommand {
  shardtune::exporter::GgufOptions opts;
  std::string model, adapter, out;
  CLI::App* app = nullptr;

  void add_to(CLI::App& parent) {
    app = parent.add_subcommand("gguf",
                                "a model as one GGUF file for llama.cpp / Ollama / LM Studio (a LoRA adapter merged on "
                                "the way), or with --adapter-gguf the adapter alone as a GGUF LoRA file");
    app->add_option("--model", model, "HF folder (config.json + model.safetensors or shards) or llama2.c .bin")
        ->required();
    app->add_option("--adapter", adapter, "PEFT LoRA folder: merged into the model, or written alone with --adapter-gguf");
    app->add_flag("--adapter-gguf", opts.adapter_only,
                  "write --adapter as a GGUF LoRA adapter file (llama-cli --lora FILE) instead of merging it; "
                  "--model is its base");
    app->add_option("--tokenizer", opts.tokenizer,
                    "tokenizer SPEC as for shardtune-prep (tokenizer.model, tokenizer.json, GPT-2 files, byte); "
                    "required for a model file");
    app->add_option("--out", out, "output .gguf file (must not exist)")->required();
    app->add_option("--dtype", opts.dtype, "f32, f16, bf16 or q8_0 (1-D tensors stay F32)")->capture_default_str();
    app->add_option("--name", opts.name, "general.name (default: the model folder's name)");
    app->add_option("--chat-template", opts.chat_template,
                    "tokenizer.chat_template (default: the model folder's tokenizer_config.json chat_template)");
  }
  int run() {
    opts.model = model;
    opts.adapter = adapter;
    opts.out = out;
    shardtune::exporter::export_gguf(opts);
    return 0;
  }
};

}  // namespace

static int run(int argc, char** argv) {
  CLI::App app{"Export models: `shardtune-export merge` merges a PEFT LoRA adapter into its base model; "
               "`shardtune-export checkpoint` turns a trainer checkpoint into an HF model or PEFT adapter; "
               "`shardtune-export gguf` writes a GGUF file for llama.cpp."};
  app.require_subcommand(1);
  MergeCommand merge;
  merge.add_to(app);
  CheckpointCommand checkpoint;
  checkpoint.add_to(app);
  GgufCommand gguf;
  gguf.add_to(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 2;
  }
  if (*merge.app) return merge.run();
  if (*checkpoint.app) return checkpoint.run();
  if (*gguf.app) return gguf.run();
  return 2;
}

int main(int argc, char** argv) {
  shardtune::hw::select_blas_core(argv);  // before any torch work: may re-exec with OPENBLAS_CORETYPE set
  return shardtune::run_guarded("shardtune-export", run, argc, argv);
}
