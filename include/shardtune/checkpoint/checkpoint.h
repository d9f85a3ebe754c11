// Checkpoints: one folder per step, written by every rank in parallel under a temporary name, committed
// by rank 0 (a manifest with the size and SHA-256 of every file, written last; one rename; `latest`
// replaced atomically). State is keyed by parameter name and element offset, never by rank, so a
// checkpoint written by N ranks resumes on M. Format and guarantees: docs/CHECKPOINTS.md.
//
//   <ckpt-dir>/step-00000120/
//     config.json + model.safetensors       full fine-tuning: every trainable weight, fp32; with N > 1 ranks
//       (or model-0000k-of-0000N.safetensors   in HF's sharded layout, each rank writing the weights of one
//        + model.safetensors.index.json)      share, so that every rank writes about 1/N of the bytes
//     adapter_config.json + adapter_model.safetensors    LoRA / QLoRA: the adapter (a PEFT folder)
//     optimizer-rank00000.safetensors ...   AdamW exp_avg / exp_avg_sq, each rank the elements it owns:
//                                           "exp_avg/<param>@<first element>" [length] (and exp_avg_sq/)
//     trainer_state.txt                     TrainerState (Boost.Serialization text archive)
//     manifest.json                         format, step, world size, every file's bytes and sha256
//   <ckpt-dir>/latest                       "step-00000120"
#pragma once

#include <ATen/ATen.h>

#include <atomic>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "shardtune/checkpoint/files.h"
#include "shardtune/model/safetensors.h"

namespace shardtune::dist {
class MpiRuntime;
}

namespace shardtune::checkpoint {

namespace stdfs = std::filesystem;

// A piece of the AdamW state: `numel` elements of parameter `param` from element `start`; exp_avg and
// exp_avg_sq are views into the optimizer's buffers.
struct StatePiece {
  std::string param;
  int64_t start = 0;
  at::Tensor exp_avg, exp_avg_sq;
};

// A copy of `t` that a background writer may read while training goes on (--async-save): CPU tensors are
// cloned, CUDA ones copied to the host (no device memory held by the snapshot). Undefined stays undefined.
at::Tensor host_snapshot(const at::Tensor& t);

// Writes `pieces` as one optimizer-rankNNNNN.safetensors file (hashed while written, not fsynced). The
// pieces may live on any device and be strided views: the file holds their values, the same bytes as for
// contiguous CPU tensors of those values (a non-CPU or strided piece goes through one contiguous host copy).
st::WrittenFile write_optimizer_file(const stdfs::path& file, int rank, int world, const std::vector<StatePiece>& pieces);

// This rank's share of the model (or adapter) files: writes them into `folder` (which every rank writes at
// once: only its own files, nothing removed) and lists each one in *written, with its SHA-256 when it was
// hashed while written ("" otherwise: the checkpoint hashes that file by reading it). The checkpoint
// fsyncs every listed file. The share is bound when the writer is made (model::SaveOptions::part/parts).
using WeightsWriter = std::function<void(const stdfs::path& folder, std::vector<st::WrittenFile>* written)>;

// Collective (every rank, same step). Writes <dir>/step-N: every rank writes `mine` and runs
// `write_weights` (its share of the weights), rank 0 also the trainer state; each file is hashed from
// memory while it is written where the writer can. Then rank 0 commits and keeps the newest `keep_last`
// (0 = all). On a failure anywhere (a full disk, a removed folder) the temporary folder is removed and
// every rank throws an Error naming the rank, the file and the previous checkpoint, which is left as it was.
stdfs::path save(const dist::MpiRuntime& rt, const stdfs::path& dir, const TrainerState& state,
                 const std::vector<StatePiece>& mine, const WeightsWriter& write_weights, int keep_last);

// --async-save: the files of a save are written by a background thread while training goes on, from a
// snapshot taken at a step boundary (the pieces and what write_weights captures must be copies); the
// save is committed (collective) at the first step boundary where every rank has written its part, and a
// new save first waits for the one in flight. Until it is committed the previous checkpoint stays latest.
class AsyncSaver {
 public:
  AsyncSaver(const dist::MpiRuntime& rt, stdfs::path dir, int keep_last);
  ~AsyncSaver();
  AsyncSaver(const AsyncSaver&) = delete;
  AsyncSaver& operator=(const AsyncSaver&) = delete;

  // Collective: finishes the save in flight, then starts this one.
  void start(TrainerState state, std::vector<StatePiece> pieces, WeightsWriter write_weights);
  // Collective (one scalar all-reduce while a save is in flight): commits it if every rank is done.
  // Returns the committed folder, or empty.
  stdfs::path poll();
  // Collective: waits for the save in flight and commits it (empty: none was in flight).
  stdfs::path finish();
  bool busy() const { return !tmp_.empty(); }

 private:
  const dist::MpiRuntime& rt_;
  stdfs::path dir_, tmp_;
  int keep_last_;
  TrainerState state_;
  std::thread thread_;
  std::atomic<bool> done_{false};
  std::pair<std::string, std::string> result_;
};

struct Resume {
  stdfs::path path;                   // empty: nothing to resume from
  std::vector<std::string> warnings;  // checkpoints passed over and why
};
// spec "auto": the newest verifying checkpoint in `dir` (none: empty path); "none": empty; else a
// checkpoint folder that must verify (Error otherwise). Rank 0 looks, every rank gets the answer.
Resume find_resume(const dist::MpiRuntime& rt, const stdfs::path& dir, const std::string& spec);

// Fills every target piece from the optimizer files of `ckpt`, whatever partition wrote them. Error
// naming the parameter when an element is missing. Targets may be on any device (a CUDA optimizer: the
// values are assembled on the host, then copied onto the target) and strided.
void load_optimizer(const stdfs::path& ckpt, const std::vector<StatePiece>& targets);

// The options a resumed run must keep (model, data, batch, sequence, method and LoRA shape, seed...): one
// line per difference, "global-batch: 8 in the checkpoint, 16 now"; `allowed` gets the other changes.
std::vector<std::string> incompatible_changes(const std::map<std::string, std::string>& saved,
                                              const std::map<std::string, std::string>& now,
                                              std::vector<std::string>* allowed);

// "key = value" lines of TrainConfig::table() as a map.
std::map<std::string, std::string> parse_table(const std::string& table);

}  // namespace shardtune::checkpoint
