// shardtune-prep: JSONL -> tokenized HDF5 shards + manifest.json. Runs alone or as `mpirun -np N`.
#include <CLI/CLI.hpp>

#include "prep.h"
#include "shardtune/core/cli_config.h"
#include "shardtune/core/error.h"
#include "shardtune/core/log.h"
#include "shardtune/dist/mpi_runtime.h"

namespace {

int prep_main(int argc, char** argv) {
  using namespace shardtune;
  prep::PrepOptions o;
  CLI::App app{"shardtune-prep: convert JSONL into pre-tokenized HDF5 shards (see docs/FORMAT.md)"};
  app.set_config("--config", "", "TOML file with the same keys as the long options");
  app.allow_config_extras(CLI::config_extras_mode::error);
  app.add_option("--input", o.inputs, "JSONL input file (repeatable); lines: {\"text\"}, {\"instruction\",\"input\",\"output\"}, "
                 "{\"input\",\"output\"}, {\"messages\":[{\"role\",\"content\"}]} or pairs {\"prompt\",\"chosen\",\"rejected\"}")->required();
  app.add_option("--output", o.output, "folder to create (must not exist or be empty)")->required();
  app.add_option("--tokenizer", o.tokenizer, "tokenizer.json, SentencePiece .model, GPT-2 encoder.json,vocab.bpe (or a folder), or 'byte'")->required();
  app.add_option("--format", o.format, "auto|text|instruction|input_output|chat|preference (prompt/chosen/rejected pairs)")->capture_default_str();
  app.add_option("--template", o.template_spec, "prompt template: built-in name (alpaca, chatml, plain) or JSON file")->capture_default_str();
  app.add_option("--max-seq-len", o.max_seq_len, "longest sample in tokens, including BOS/EOS")->capture_default_str();
  app.add_option("--overlong", o.overlong, "what to do with longer samples: truncate|drop|split (split: text only)")->capture_default_str();
  app.add_option("--val-fraction", o.val_fraction, "fraction of lines held out for validation")->capture_default_str();
  app.add_option("--seed", o.seed, "seed of the train/val assignment")->capture_default_str();
  app.add_option("--shard-tokens", o.shard_tokens, "tokens per shard file (approximate upper bound)")->capture_default_str();
  app.add_flag("--skip-invalid", o.skip_invalid, "skip bad lines (counted and listed in manifest.json) instead of failing");
  app.add_option("--threads", o.threads, "tokenizer threads per rank (0 = the CPUs of this rank's affinity mask)")->capture_default_str();
  app.add_flag("--quiet", o.quiet, "no progress output");
  if (int rc = cli::parse(app, argc, argv, "shardtune-prep"); rc >= 0) return rc;
  dist::MpiRuntime rt(&argc, &argv);
  log::set_rank(rt.rank(), rt.world());
  return prep::run_prep(o, rt);
}

}  // namespace

int main(int argc, char** argv) { return shardtune::run_guarded("shardtune-prep", prep_main, argc, argv); }
