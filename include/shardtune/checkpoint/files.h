// The torch-free half of the checkpoint layer: the trainer state (Boost.Serialization text archive), the
// manifest check, and the step folders of a --ckpt-dir. shardtune-inspect uses only this; the trainer and
// shardtune-export use it through checkpoint.h. Format: docs/CHECKPOINTS.md.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <utility>
#include <vector>

namespace shardtune::checkpoint {

namespace stdfs = std::filesystem;

constexpr uint32_t kFormatVersion = 1;
constexpr const char* kManifestFile = "manifest.json";
constexpr const char* kStateFile = "trainer_state.txt";
constexpr const char* kManifestFormat = "shardtune-checkpoint";

// Everything besides tensors that a resumed run needs to continue exactly where this one stopped.
struct TrainerState {
  uint32_t version = kFormatVersion;
  int64_t step = 0;              // optimizer steps completed
  int64_t consumed_samples = 0;  // global data position (the sampler is a function of seed and position)
  int64_t total_steps = 0;
  int world = 1;
  uint64_t seed = 0;
  int64_t optimizer_steps = 0;   // AdamW's t (bias correction)
  int64_t skipped_total = 0, skipped_in_a_row = 0;
  std::vector<std::vector<uint8_t>> dropout_rngs;  // LoRA dropout generator state of every rank
  std::map<std::string, std::string> config;      // option -> value, as the run's table printed them
  std::map<std::string, std::string> source_dtypes;  // the base model's dtypes ("save as loaded")
  std::vector<std::string> params;                // trainable parameters, checkpoint order
  std::vector<int64_t> numels;
};

std::string step_dir_name(int64_t step);  // "step-00000120"

// The step-* folders of `dir` (complete or not), newest first; none when `dir` is not a folder.
std::vector<std::pair<int64_t, stdfs::path>> list_checkpoints(const stdfs::path& dir);

// The first line of <dir>/latest ("step-00000120"), or "none".
std::string latest_name(const stdfs::path& dir);

// "" when the folder is a complete checkpoint whose every file matches the manifest, else why not.
std::string verify(const stdfs::path& ckpt);

TrainerState read_state(const stdfs::path& ckpt);
void write_state(const stdfs::path& path, const TrainerState& state);  // atomically

}  // namespace shardtune::checkpoint
