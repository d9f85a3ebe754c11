// TrainConfig: CLI11 binding, validation and the printed table.
#include "shardtune/train/config.h"

#include <CLI/CLI.hpp>
#include <cmath>
#include <sstream>
#include <utility>

#include "shardtune/core/error.h"
#include "shardtune/core/hw.h"

namespace shardtune::train {

void TrainConfig::bind(CLI::App& app) {
  app.set_config("--config", "", "TOML file; keys are the long option names (e.g. global-batch = 32)");
  app.allow_config_extras(CLI::config_extras_mode::error);  // a misspelt key is an error, not ignored
  app.add_option("--model", model, "Hugging Face model folder or llama2.c .bin")->required();
  app.add_option("--data", data, "folder written by shardtune-prep")->required();
  app.add_option("--out", out, "output folder (new or empty): final model in HF layout")->required();
  app.add_option("--method", method, "full | lora | qlora")->capture_default_str();
  app.add_option("--zero", zero, "0 = DDP, 1 = optimizer state partitioned, 2 = + gradients partitioned")->capture_default_str();
  app.add_option("--steps", steps, "optimizer steps (or use --epochs)")->capture_default_str();
  app.add_option("--epochs", epochs, "passes over the training split (when --steps is 0)")->capture_default_str();
  app.add_option("--global-batch", global_batch, "samples per optimizer step, over all ranks")->capture_default_str();
  app.add_option("--micro-batch", micro_batch, "samples per rank per forward")->capture_default_str();
  app.add_option("--seq-len", seq_len, "longest row in tokens (samples are truncated to it)")->capture_default_str();
  app.add_flag("--pack,!--no-pack", pack, "pack samples into rows of --seq-len with document masks");
  app.add_option("--objective", objective,
                 "sft (next-token loss on sequences) | dpo (preference pairs) | reward (a reward model on the pairs)")
      ->capture_default_str();
  app.add_option("--center-rewards", center_rewards,
                 "--objective reward: coefficient C of C * mean((r_chosen + r_rejected)^2) (TRL's center_rewards_coefficient)")
      ->capture_default_str();
  app.add_option("--dpo-loss", dpo_loss,
                 "--objective dpo: sigmoid | ipo | hinge | robust | simpo | orpo (docs/PREFERENCE.md)")
      ->capture_default_str();
  app.add_option("--beta", dpo_beta, "--objective dpo: the DPO temperature beta")->capture_default_str();
  app.add_flag("--precompute-ref", precompute_ref,
               "--objective dpo: compute the reference log-probs once before training, kept in --ckpt-dir (no "
               "reference model held while training)");
  app.add_option("--ref-dtype", ref_dtype,
                 "--objective dpo --method full: the frozen reference copy's weights: auto (bf16 when --precision "
                 "computes in bf16) | fp32 | bf16 (half the memory; its log-probs still summed in fp32)")
      ->capture_default_str();
  app.add_option("--simpo-gamma", simpo_gamma, "--dpo-loss simpo: the target reward margin gamma")->capture_default_str();
  app.add_option("--label-smoothing", label_smoothing,
                 "--objective dpo: assumed fraction of flipped labels (sigmoid: cDPO; robust: rDPO), in [0, 0.5)")
      ->capture_default_str();
  app.add_option("--lr", lr, "peak learning rate")->capture_default_str();
  app.add_option("--min-lr", min_lr, "final learning rate of the cosine/linear schedule")->capture_default_str();
  app.add_option("--warmup-steps", warmup_steps, "linear warmup steps")->capture_default_str();
  app.add_option("--schedule", schedule, "cosine | linear | constant")->capture_default_str();
  app.add_option("--weight-decay", weight_decay, "AdamW decoupled weight decay (not on norms and biases)")->capture_default_str();
  app.add_option("--grad-clip", grad_clip, "global gradient-norm clip (0 = off)")->capture_default_str();
  app.add_option("--beta1", beta1, "AdamW beta1")->capture_default_str();
  app.add_option("--beta2", beta2, "AdamW beta2")->capture_default_str();
  app.add_option("--eps", eps, "AdamW epsilon")->capture_default_str();
  app.add_option("--seed", seed, "seed of the data order")->capture_default_str();
  app.add_option("--eval-every", eval_every, "evaluate on the validation split every N steps (0 = only at the end)")->capture_default_str();
  app.add_option("--eval-batches", eval_batches, "global batches of validation data per evaluation")->capture_default_str();
  app.add_option("--log-every", log_every, "print a progress line every N steps")->capture_default_str();
  app.add_option("--metrics", metrics, "JSONL file: one line per step and per evaluation");
  app.add_option("--threads", threads,
                 "torch threads per rank (0 = the CPUs of the rank's affinity mask, shared by ranks bound alike)")
      ->capture_default_str();
  app.add_option("--precision", precision,
                 "auto | fp32 | bf16 (autocast; weights and optimizer stay fp32); auto = bf16 where the CPU computes "
                 "it natively (AVX512_BF16/AMX), else fp32")
      ->capture_default_str();
  app.add_option("--device", device, "cpu | cuda")->capture_default_str();
  app.add_option("--bucket-mb", bucket_mb, "gradient bucket size for overlapped communication")->capture_default_str();
  app.add_option("--grad-reduce-dtype", grad_reduce_dtype,
                 "fp32 | bf16: dtype gradient buckets travel in between ranks (bf16: half the traffic, summed in "
                 "fp32; weights and optimizer stay fp32)")
      ->capture_default_str();
  app.add_option("--save-dtype", save_dtype, "dtype of the saved model: F32 | BF16 | F16 (default: as loaded)");
  app.add_option("--on-nonfinite", on_nonfinite, "a NaN/Inf loss or gradient norm: error (stop) | skip (skip that update)")
      ->capture_default_str();
  app.add_option("--max-consecutive-skips", max_consecutive_skips, "--on-nonfinite skip: stop after more steps than this skipped in a row")
      ->capture_default_str();
  app.add_option("--verify-data", verify_data,
                 "check every shard's sha256, token ids and masks before training: auto (skip shards the "
                 "verification cache knows unchanged), full, off")
      ->capture_default_str();
  app.add_option("--lora-r", lora_r, "LoRA rank")->capture_default_str();
  app.add_option("--lora-alpha", lora_alpha, "LoRA alpha (scale alpha/r, or alpha/sqrt(r) with --use-rslora)")->capture_default_str();
  app.add_option("--lora-dropout", lora_dropout, "dropout on the adapters' input while training")->capture_default_str();
  app.add_option("--lora-targets", lora_targets,
                 "modules to adapt, comma-separated: llama q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj; "
                 "gpt2 c_attn,c_proj,c_fc; or all-linear (default: q_proj,v_proj / c_attn, as PEFT)")
      ->delimiter(',');
  app.add_option("--lora-init", lora_init, "default (PEFT: Kaiming-uniform A, zero B) | gaussian (A ~ N(0, 1/r), zero B)")
      ->capture_default_str();
  app.add_flag("--use-rslora,!--no-use-rslora", use_rslora, "rank-stabilized LoRA: scale alpha/sqrt(r)");
  app.add_option("--base-dtype", base_dtype, "frozen base weights: auto (bf16 when --precision computes in bf16) | fp32 | bf16")
      ->capture_default_str();
  app.add_option("--compute-dtype", compute_dtype, "QLoRA: dtype NF4 weights are dequantized into: auto (as --precision) | fp32 | bf16")
      ->capture_default_str();
  app.add_flag("--double-quant,!--no-double-quant", double_quant, "QLoRA: quantize the NF4 absmax constants to 8 bits");
  app.add_option("--adapter", adapter, "continue LoRA/QLoRA training from this PEFT adapter folder (ours or PEFT's)");
  app.add_option("--save-every", save_every, "checkpoint every N steps (0 = off; stop signals always save)")->capture_default_str();
  app.add_option("--save-every-minutes", save_every_minutes, "checkpoint every M minutes of training (0 = off)")
      ->capture_default_str();
  app.add_option("--keep-last", keep_last, "checkpoints kept (the newest; 0 = all)")->capture_default_str();
  app.add_option("--ckpt-dir", ckpt_dir, "checkpoint folder (default: <out>/checkpoints)");
  app.add_option("--resume", resume,
                 "auto (the newest checkpoint in --ckpt-dir that verifies, else a fresh start) | none | a checkpoint folder")
      ->capture_default_str();
  app.add_flag("--async-save,!--no-async-save", async_save,
               "write checkpoints in the background from a snapshot taken at a step boundary (costs one copy of "
               "the trainable weights and this rank's optimizer share in memory)");
  app.add_option("--collective-timeout", collective_timeout,
                 "seconds one collective may block during training before the rank ends the job, naming the operation "
                 "(a peer died or hangs; 0 = off)")
      ->capture_default_str();
}

void TrainConfig::validate() const {
  // NaN passes every comparison below as false or true alike: refuse non-finite values first, by name.
  for (auto [name, v] : {std::pair<const char*, double>{"--lr", lr}, {"--min-lr", min_lr}, {"--epochs", epochs},
                         {"--weight-decay", weight_decay}, {"--grad-clip", grad_clip}, {"--beta1", beta1},
                         {"--beta2", beta2}, {"--eps", eps}, {"--bucket-mb", bucket_mb}, {"--beta", dpo_beta},
                         {"--label-smoothing", label_smoothing}, {"--simpo-gamma", simpo_gamma},
                         {"--center-rewards", center_rewards}})
    ST_CHECK(std::isfinite(v), std::string(name) + " must be a finite number (got " + std::to_string(v) + ")",
             "give an ordinary value, e.g. --lr 1e-4");
  ST_CHECK(bucket_mb <= 65536, "--bucket-mb " + std::to_string(bucket_mb) + " is absurdly large (over 64 GiB)",
           "the default 25 is right for most runs");
  ST_CHECK(epochs <= 1e6, "--epochs " + std::to_string(epochs) + " is absurdly large", "use a few passes, or --steps");
  ST_CHECK(on_nonfinite == "error" || on_nonfinite == "skip", "unknown --on-nonfinite '" + on_nonfinite + "'",
           "use error or skip");
  ST_CHECK(max_consecutive_skips >= 0, "--max-consecutive-skips must not be negative");
  ST_CHECK(verify_data == "auto" || verify_data == "full" || verify_data == "off",
           "unknown --verify-data '" + verify_data + "'", "use auto, full or off");
  ST_CHECK(method == "full" || method == "lora" || method == "qlora", "unknown --method '" + method + "'",
           "use full, lora or qlora");
  ST_CHECK(!precompute_ref || objective == "dpo", "--precompute-ref applies to --objective dpo only",
           "drop --precompute-ref, or give --objective dpo");
  ST_CHECK(ref_dtype == "auto" || ref_dtype == "fp32" || ref_dtype == "bf16", "unknown --ref-dtype '" + ref_dtype + "'",
           "use auto, fp32 or bf16");
  ST_CHECK(ref_dtype == "auto" || objective == "dpo", "--ref-dtype applies to --objective dpo only",
           "drop --ref-dtype, or give --objective dpo");
  ST_CHECK(objective == "sft" || objective == "dpo" || objective == "reward", "unknown --objective '" + objective + "'",
           "use sft (sequences), dpo or reward (preference pairs from shardtune-prep --format preference)");
  ST_CHECK(center_rewards == 0 || objective == "reward", "--center-rewards applies to --objective reward only",
           "drop --center-rewards, or give --objective reward");
  ST_CHECK(center_rewards >= 0, "--center-rewards must not be negative (got " + std::to_string(center_rewards) + ")",
           "TRL suggests 0.01; 0 turns the term off");
  ST_CHECK(!pack || objective != "reward", "--pack with --objective reward: a packed row would mix pairs",
           "drop --pack; pairs are padded to the longest sequence of each micro-batch");
  if (objective == "dpo") {
    ST_CHECK(dpo_loss == "sigmoid" || dpo_loss == "ipo" || dpo_loss == "hinge" || dpo_loss == "robust" ||
                 dpo_loss == "simpo" || dpo_loss == "orpo",
             "unknown --dpo-loss '" + dpo_loss + "'", "use sigmoid, ipo, hinge, robust, simpo or orpo (docs/PREFERENCE.md)");
    ST_CHECK(dpo_beta > 0, "--beta must be positive (got " + std::to_string(dpo_beta) + ")",
             "the DPO temperature; 0.1 is the usual value");
    ST_CHECK(label_smoothing >= 0 && label_smoothing < 0.5,
             "--label-smoothing must lie in [0, 0.5) (got " + std::to_string(label_smoothing) + ")",
             "the assumed fraction of flipped preference labels, e.g. 0.1");
    ST_CHECK(label_smoothing == 0 || dpo_loss == "sigmoid" || dpo_loss == "robust" || dpo_loss == "simpo",
             "--label-smoothing applies to --dpo-loss sigmoid, robust or simpo, not " + dpo_loss,
             "drop --label-smoothing, or use --dpo-loss sigmoid (cDPO), robust or simpo");
    ST_CHECK(!precompute_ref || (dpo_loss != "simpo" && dpo_loss != "orpo"),
             "--precompute-ref with --dpo-loss " + dpo_loss + ": this loss uses no reference model",
             "drop --precompute-ref");
    // --ref-dtype sets the dtype of the full-fine-tuning reference copy (live, or the --precompute-ref pass's):
    // given explicitly where no such copy exists, it would silently do nothing.
    ST_CHECK(ref_dtype == "auto" || (dpo_loss != "simpo" && dpo_loss != "orpo"),
             "--ref-dtype " + ref_dtype + " with --dpo-loss " + dpo_loss + ": this loss uses no reference model",
             "drop --ref-dtype");
    ST_CHECK(ref_dtype == "auto" || method == "full",
             "--ref-dtype " + ref_dtype + " with --method " + method +
                 ": the reference is the policy's own base with the adapters disabled (no copy is held), so its "
                 "dtype is the base's",
             "drop --ref-dtype; --base-dtype bf16 holds the frozen base (policy and reference alike) in bf16");
    ST_CHECK(!pack, "--pack with --objective dpo: a packed row would mix pairs (and their log-probs)",
             "drop --pack; pairs are padded to the longest sequence of each micro-batch");
  }
  ST_CHECK(adapter.empty() || method != "full",
           "--adapter '" + adapter + "' with --method full: an adapter is trained with --method lora or qlora",
           "give --method lora (or qlora) to continue training the adapter, or merge it first (shardtune-export merge) "
           "and fine-tune the merged model with --method full");
  ST_CHECK(lora_r > 0 && lora_r <= 65536, "--lora-r must be between 1 and 65536 (got " + std::to_string(lora_r) + ")",
           "typical ranks are 8 to 64");
  ST_CHECK(std::isfinite(lora_alpha) && lora_alpha > 0, "--lora-alpha must be a positive number", "e.g. twice --lora-r");
  ST_CHECK(lora_dropout >= 0 && lora_dropout < 1, "--lora-dropout must be in [0, 1) (got " + std::to_string(lora_dropout) + ")");
  ST_CHECK(lora_init == "default" || lora_init == "gaussian", "unknown --lora-init '" + lora_init + "'",
           "use default or gaussian");
  for (const auto& t : lora_targets)
    ST_CHECK(!t.empty(), "--lora-targets has an empty name", "give names separated by single commas, e.g. q_proj,v_proj");
  ST_CHECK(base_dtype == "auto" || base_dtype == "fp32" || base_dtype == "bf16", "unknown --base-dtype '" + base_dtype + "'",
           "use auto, fp32 or bf16");
  ST_CHECK(save_every >= 0 && std::isfinite(save_every_minutes) && save_every_minutes >= 0 && keep_last >= 0,
           "--save-every, --save-every-minutes and --keep-last must not be negative");
  ST_CHECK(!resume.empty(), "--resume needs a value", "auto, none, or a checkpoint folder");
  ST_CHECK(std::isfinite(collective_timeout) && collective_timeout >= 0, "--collective-timeout must be 0 (off) or positive seconds");
  ST_CHECK(compute_dtype == "auto" || compute_dtype == "fp32" || compute_dtype == "bf16",
           "unknown --compute-dtype '" + compute_dtype + "'", "use auto, fp32 or bf16");
  ST_CHECK(zero >= 0 && zero <= 2, "--zero must be 0, 1 or 2 (got " + std::to_string(zero) + ")");
  // Negative first: "--steps -1" must not read as "give --steps N".
  ST_CHECK(steps >= 0 && epochs >= 0, "--steps and --epochs must not be negative (got --steps " +
           std::to_string(steps) + ", --epochs " + std::to_string(epochs) + ")", "give --steps N or --epochs E");
  ST_CHECK(steps > 0 || epochs > 0, "give --steps N or --epochs E", "--steps counts optimizer steps; --epochs passes over the data");
  ST_CHECK(global_batch > 0 && micro_batch > 0, "--global-batch and --micro-batch must be positive (got " +
           std::to_string(global_batch) + " and " + std::to_string(micro_batch) + ")",
           "global-batch = micro-batch x ranks x accumulation steps, e.g. --global-batch 32 --micro-batch 4");
  ST_CHECK(seq_len >= 2, "--seq-len must be at least 2 (got " + std::to_string(seq_len) + ")",
           "give the longest row in tokens, e.g. --seq-len 1024");
  ST_CHECK(lr > 0 && min_lr >= 0 && min_lr <= lr, "need 0 < --lr and 0 <= --min-lr <= --lr");
  ST_CHECK(warmup_steps >= 0, "--warmup-steps must not be negative");
  ST_CHECK(schedule == "cosine" || schedule == "linear" || schedule == "constant", "unknown --schedule '" + schedule + "'",
           "use cosine, linear or constant");
  ST_CHECK(weight_decay >= 0 && grad_clip >= 0, "--weight-decay and --grad-clip must not be negative");
  ST_CHECK(beta1 >= 0 && beta1 < 1 && beta2 >= 0 && beta2 < 1 && eps > 0, "AdamW needs 0 <= beta < 1 and eps > 0");
  ST_CHECK(eval_every >= 0 && eval_batches >= 0 && log_every >= 1, "--eval-every/--eval-batches >= 0, --log-every >= 1");
  ST_CHECK(threads >= 0, "--threads must not be negative (got " + std::to_string(threads) + ")",
           "give 0 (the CPUs of each rank's affinity mask) or a thread count");
  hw::check_threads_limit(threads, "give 0 (the CPUs of each rank's affinity mask) or at most the CPUs a rank has");
  ST_CHECK(precision == "auto" || precision == "fp32" || precision == "bf16", "unknown --precision '" + precision + "'",
           "use auto, fp32 or bf16");
  ST_CHECK(device == "cpu" || device == "cuda", "unknown --device '" + device + "'", "use cpu or cuda");
  // Refused here, before any rank loads a model or starts NCCL (CausalLM::move_to would refuse later).
  ST_CHECK(device != "cuda" || method != "qlora",
           "--device cuda with --method qlora is not supported yet: the NF4 base has no CUDA kernels here",
           "use --method lora (a bf16 or fp32 frozen base, --base-dtype) on the GPU, or --device cpu for QLoRA "
           "(docs/GPU.md, Limits)");
  ST_CHECK(bucket_mb > 0, "--bucket-mb must be positive");
  ST_CHECK(grad_reduce_dtype == "fp32" || grad_reduce_dtype == "bf16",
           "unknown --grad-reduce-dtype '" + grad_reduce_dtype + "'",
           "use fp32 (the default) or bf16 (buckets travel in bf16, summed in fp32)");
  ST_CHECK(save_dtype.empty() || save_dtype == "F32" || save_dtype == "BF16" || save_dtype == "F16",
           "unknown --save-dtype '" + save_dtype + "'", "use F32, BF16 or F16");
}

std::string TrainConfig::table() const {
  std::ostringstream o;
  auto row = [&](const char* k, const auto& v) {
    const size_t n = std::string(k).size();
    o << "  " << k << std::string(n < 16 ? 16 - n : 1, ' ') << "= " << v << "\n";
  };
  row("model", model);
  row("data", data);
  row("out", out);
  row("method", method);
  row("zero", zero);
  row("steps", steps);
  row("epochs", epochs);
  row("global-batch", global_batch);
  row("micro-batch", micro_batch);
  row("seq-len", seq_len);
  row("pack", pack ? "true" : "false");
  row("lr", lr);
  row("min-lr", min_lr);
  row("warmup-steps", warmup_steps);
  row("schedule", schedule);
  row("weight-decay", weight_decay);
  row("grad-clip", grad_clip);
  row("beta1", beta1);
  row("beta2", beta2);
  row("eps", eps);
  row("seed", seed);
  row("eval-every", eval_every);
  row("eval-batches", eval_batches);
  row("log-every", log_every);
  row("metrics", metrics.empty() ? "(none)" : metrics);
  row("threads", threads);
  row("precision", precision);
  row("device", device);
  row("bucket-mb", bucket_mb);
  // Only when not the default: the table of a run without it (its checkpoints' fingerprint) is unchanged.
  if (grad_reduce_dtype != "fp32") row("grad-reduce-dtype", grad_reduce_dtype);
  row("save-dtype", save_dtype.empty() ? "(as loaded)" : save_dtype);
  row("on-nonfinite", on_nonfinite);
  row("max-consecutive-skips", max_consecutive_skips);
  row("verify-data", verify_data);
  row("save-every", save_every);
  row("save-every-minutes", save_every_minutes);
  row("keep-last", keep_last);
  row("ckpt-dir", ckpt_dir.empty() ? "(<out>/checkpoints)" : ckpt_dir);
  row("resume", resume);
  row("async-save", async_save ? "true" : "false");
  row("collective-timeout", collective_timeout);
  if (objective != "sft") {  // only then: an SFT run's table (its checkpoints' fingerprint) is unchanged
    row("objective", objective);
    if (objective == "reward") row("center-rewards", center_rewards);
  }
  if (objective == "dpo") {
    row("dpo-loss", dpo_loss);
    row("beta", dpo_beta);
    row("label-smoothing", label_smoothing);
    if (dpo_loss == "simpo") row("simpo-gamma", simpo_gamma);
    if (precompute_ref) row("precompute-ref", "true");
    // only where it takes effect (a full copy is loaded), so other runs' fingerprints are unchanged
    if (method == "full" && dpo_loss != "simpo" && dpo_loss != "orpo") row("ref-dtype", ref_dtype);
  }
  if (method != "full") {
    std::string targets;
    for (const auto& t : lora_targets) targets += (targets.empty() ? "" : ",") + t;
    row("lora-r", lora_r);
    row("lora-alpha", lora_alpha);
    row("lora-dropout", lora_dropout);
    row("lora-targets", targets.empty() ? "(architecture default)" : targets);
    row("lora-init", lora_init);
    row("use-rslora", use_rslora ? "true" : "false");
    row("base-dtype", base_dtype);
    row("adapter", adapter.empty() ? "(new)" : adapter);
    if (method == "qlora") {
      row("compute-dtype", compute_dtype);
      row("double-quant", double_quant ? "true" : "false");
    }
  }
  return o.str();
}

}  // namespace shardtune::train
