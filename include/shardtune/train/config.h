// The trainer's one configuration struct: bound to CLI11 options (and TOML files with the same keys),
// validated once, printed once by rank 0 as a table.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace CLI {
class App;
}

namespace shardtune::train {

struct TrainConfig {
  std::string model, data, out, method = "full";
  int zero = 0;
  int64_t steps = 0;
  double epochs = 0;
  int64_t global_batch = 8, micro_batch = 1, seq_len = 512;
  bool pack = false;
  double lr = 1e-4, min_lr = 0.0;
  int64_t warmup_steps = 0;
  std::string schedule = "cosine";
  double weight_decay = 0.0, grad_clip = 1.0, beta1 = 0.9, beta2 = 0.95, eps = 1e-8;
  uint64_t seed = 1234;
  int64_t eval_every = 0, eval_batches = 4, log_every = 1;
  std::string metrics;
  int threads = 0;                  // 0 = the CPUs of this rank's affinity mask (train/launch.h resolves it)
  std::string precision = "auto";   // auto = bf16 where the hardware computes it natively, else fp32
  std::string device = "cpu";
  double bucket_mb = 25.0;
  std::string grad_reduce_dtype = "fp32";  // fp32 | bf16: gradient buckets' dtype on the wire (sums in fp32)
  std::string save_dtype;  // "" = as loaded
  std::string on_nonfinite = "error";  // a non-finite loss or gradient norm: "error" stops, "skip" skips the update
  int64_t max_consecutive_skips = 10;  // --on-nonfinite skip: stop after more skipped steps than this in a row
  std::string verify_data = "auto";    // shard content check before training: auto (cached) | full | off
  // LoRA / QLoRA (--method lora|qlora); defaults as PEFT's where PEFT has one (targets: its per-model map).
  int64_t lora_r = 16;
  double lora_alpha = 32, lora_dropout = 0.0;
  std::vector<std::string> lora_targets;  // empty = the architecture's default (llama: q_proj,v_proj; gpt2: c_attn)
  std::string lora_init = "default";      // default (Kaiming-uniform A, zero B) | gaussian
  bool use_rslora = false;
  std::string base_dtype = "auto";        // frozen base: auto (bf16 when computing in bf16) | fp32 | bf16
  std::string compute_dtype = "auto";     // QLoRA dequantization target: auto (as --precision) | fp32 | bf16
  bool double_quant = true;               // QLoRA: 8-bit absmax constants
  std::string adapter;                    // continue from this PEFT adapter folder
  // Checkpoints (checkpoint/checkpoint.h, docs/CHECKPOINTS.md).
  int64_t save_every = 0;          // steps; 0 = only on a stop signal and by --save-every-minutes
  double save_every_minutes = 30;  // 0 = off
  int keep_last = 3;               // 0 = keep all
  std::string ckpt_dir;            // "" = <out>/checkpoints
  std::string resume = "auto";     // auto | none | a checkpoint folder
  bool async_save = false;         // write checkpoints on a background thread while training goes on
  double collective_timeout = 300;  // seconds a collective may block once training runs (0 = off)
  // Preference tuning (train/preference.h, docs/PREFERENCE.md): sft = next-token CE on sequences.
  std::string objective = "sft";    // sft | dpo | reward
  std::string dpo_loss = "sigmoid";  // sigmoid | ipo | hinge | robust | simpo | orpo
  double dpo_beta = 0.1, label_smoothing = 0.0;
  bool precompute_ref = false;       // reference log-probs in one pass before training (no reference held)
  std::string ref_dtype = "auto";    // --method full's frozen reference copy: auto (bf16 when computing in bf16) | fp32 | bf16
  double simpo_gamma = 0.5;          // --dpo-loss simpo: target reward margin (TRL's default)
  double center_rewards = 0.0;       // --objective reward: + C * mean((r_chosen + r_rejected)^2) (TRL)

  void bind(CLI::App& app);
  // Checks everything that does not need the world size or the data; throws Error naming the option.
  void validate() const;
  // One "key = value" line per option, in a fixed order (also the cross-rank fingerprint).
  std::string table() const;
};

}  // namespace shardtune::train
