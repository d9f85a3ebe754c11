// shardtune-inspect on checkpoints (tools/inspect_checkpoint.cpp): torch-free.
#pragma once

#include <filesystem>

namespace shardtune::inspect {

// A checkpoint folder (step-N) or a --ckpt-dir (step-* folders and `latest`)?
bool is_checkpoint_path(const std::filesystem::path& p);

// Prints step, consumed samples, world size at save, method, the configuration and the files; `verify`
// re-checks every file's size and sha256 against the manifest. Returns 0, or throws Error naming what failed.
int inspect_checkpoint(const std::filesystem::path& p, bool verify);

}  // namespace shardtune::inspect
