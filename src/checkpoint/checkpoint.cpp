// Checkpoint save (parallel per rank, committed by rank 0), resume lookup with fallback (verification and
// state I/O: files.cpp), optimizer state re-partitioned on load, the resume compatibility check (checkpoint.h).
#include "shardtune/checkpoint/checkpoint.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <thread>

#include "shardtune/core/error.h"
#include "shardtune/core/fs.h"
#include "shardtune/core/json_depth.h"
#include "shardtune/core/log.h"
#include "shardtune/dist/mpi_runtime.h"
#include "shardtune/model/io.h"
#include "shardtune/model/safetensors.h"

namespace shardtune::checkpoint {

namespace {

std::string rank_file(int rank) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "optimizer-rank%05d.safetensors", rank);
  return buf;
}

// Asks the kernel to start writing `p`'s dirty pages to disk (a hint: fsync still follows).
void start_writeback(const stdfs::path& p) {
#ifdef __linux__
  const int fd = ::open(p.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return;  // fsync_path reports it
  (void)::sync_file_range(fd, 0, 0, SYNC_FILE_RANGE_WRITE);
  ::close(fd);
#else
  (void)p;
#endif
}

// Phase 1 (collective): rank 0 creates the temporary folder. Empty path: this step is already saved.
stdfs::path begin_save(const dist::MpiRuntime& rt, const stdfs::path& dir, int64_t step) {
  const std::string name = step_dir_name(step);
  const stdfs::path tmp = dir / (".tmp-" + name), final_dir = dir / name;
  std::string err, exists;
  if (rt.rank() == 0) {
    try {
      stdfs::create_directories(dir);
      // A complete one is kept (e.g. a stop right after resuming from this step); one that does not verify
      // (the run resumed past it after a corruption) is replaced, or it would keep shadowing the older ones.
      if (stdfs::exists(final_dir) && verify(final_dir).empty()) exists = "1";
      else {
        if (stdfs::exists(final_dir)) {
          log::warn("replacing '" + final_dir.string() + "', which does not verify: " + verify(final_dir));
          stdfs::remove_all(final_dir);
        }
        stdfs::remove_all(tmp);
        stdfs::create_directory(tmp);
      }
    } catch (const std::exception& e) {
      err = std::string("cannot create '") + tmp.string() + "': " + e.what();
    }
  }
  err = rt.broadcast(err, 0);
  ST_CHECK(err.empty(), "checkpoint at step " + std::to_string(step) + ": " + err,
           "--ckpt-dir must be a writable folder; the previous checkpoint (" + latest_name(dir) + ") is intact");
  return rt.broadcast(exists, 0).empty() ? tmp : stdfs::path();
}

// Phase 2 (local, no collectives: may run on a background thread): this rank's files. Returns the error
// ("" if none) and "name bytes sha256" lines of the files written. The big files are hashed from memory
// while they are written, and the kernel starts writing each chunk to disk at once (st::StreamWriter's
// hash mode), so the disk works while the CPU hashes and copies; the fsyncs at the end wait for what is left.
std::pair<std::string, std::string> write_local(const stdfs::path& tmp, int rank, int world, const TrainerState& state,
                                                const std::vector<StatePiece>& mine, const WeightsWriter& write_weights) {
  // Test hook: SHARDTUNE_TEST_FAIL="RANK:ckpt" fails that rank's part of every save, "RANK:ckptSTEP" of
  // the save at that step (fault tests).
  const char* fail = std::getenv("SHARDTUNE_TEST_FAIL");
  const std::string hook = std::to_string(rank) + ":ckpt";
  const bool inject = fail && (fail == hook || fail == hook + std::to_string(state.step));
  std::string err, lines;
  try {
    const stdfs::path f = tmp / rank_file(rank);
    if (inject) ST_FAIL("injected failure writing " + f.string() + " (SHARDTUNE_TEST_FAIL)");
    std::vector<st::WrittenFile> files;
    files.push_back(write_optimizer_file(f, rank, world, mine));
    write_weights(tmp, &files);
    if (rank == 0) {
      write_state(tmp / kStateFile, state);
      files.push_back({kStateFile, 0, ""});
    }
    // Each rank lists only its own files: the folder also holds the other ranks' (some half written).
    // Writeback of all of them first, so that the first fsync's journal commit covers every file's blocks
    // and the later fsyncs find little to do (one commit instead of one per small file).
    for (const auto& w : files) start_writeback(tmp / w.name);
    for (auto& w : files) {
      const stdfs::path p = tmp / w.name;
      fs::fsync_path(p);
      if (w.sha256.empty()) {  // small files (trainer state, adapter): read back
        w.bytes = stdfs::file_size(p);
        w.sha256 = fs::sha256_file(p);
      }
      ST_CHECK(stdfs::file_size(p) == w.bytes, p.string() + ": " + std::to_string(stdfs::file_size(p)) +
                                                   " bytes on disk, " + std::to_string(w.bytes) + " written");
      lines += (lines.empty() ? "" : "\n") + w.name + " " + std::to_string(w.bytes) + " " + w.sha256;
    }
  } catch (const std::exception& e) {
    err = "rank " + std::to_string(rank) + ": " + e.what();
  }
  return {err, lines};
}

// Phase 3 (collective): every rank's result; rank 0 writes the manifest, renames, moves `latest`, prunes.
stdfs::path commit(const dist::MpiRuntime& rt, const stdfs::path& dir, const stdfs::path& tmp, const TrainerState& state,
                   const std::pair<std::string, std::string>& mine, int keep_last) {
  const int rank = rt.rank();
  const std::string name = step_dir_name(state.step);
  const stdfs::path final_dir = dir / name;
  const auto errors = rt.allgather(mine.first);
  const auto lines = rt.allgather(mine.second);
  std::string first_err;
  for (const auto& e : errors)
    if (first_err.empty() && !e.empty()) first_err = e;
  if (first_err.empty() && rank == 0) {
    try {
      nlohmann::json files = nlohmann::json::array();
      for (const auto& block : lines) {
        std::istringstream in(block);
        std::string fname, sha;
        uint64_t bytes = 0;
        while (in >> fname >> bytes >> sha) files.push_back({{"name", fname}, {"bytes", bytes}, {"sha256", sha}});
      }
      const nlohmann::json manifest = {{"format", kManifestFormat}, {"version", kFormatVersion}, {"step", state.step},
                                       {"consumed_samples", state.consumed_samples}, {"world", state.world},
                                       {"files", files}};
      // Every other file was fsynced by the rank that wrote it before it reported success.
      fs::write_file_atomic(tmp / kManifestFile, manifest.dump(1) + "\n");
      fs::fsync_path(tmp / kManifestFile);
      fs::fsync_path(tmp);
      stdfs::rename(tmp, final_dir);
      fs::fsync_path(dir);
      fs::write_file_atomic(dir / "latest", name + "\n");
      fs::fsync_path(dir);
    } catch (const std::exception& e) {
      first_err = "rank 0: committing " + final_dir.string() + ": " + e.what();
    }
  }
  first_err = rt.broadcast(first_err, 0);
  if (!first_err.empty()) {
    if (rank == 0) {
      std::error_code ec;
      stdfs::remove_all(tmp, ec);
    }
    ST_FAIL("checkpoint at step " + std::to_string(state.step) + " failed: " + first_err +
                "; it was removed, the previous checkpoint (" + latest_name(dir) + " in " + dir.string() +
                ") is intact",
            "free disk space in --ckpt-dir (or give another one) and rerun with --resume auto: training goes on "
            "from the previous checkpoint");
  }
  if (rank == 0 && keep_last > 0) {
    const auto all = list_checkpoints(dir);
    for (size_t i = static_cast<size_t>(keep_last); i < all.size(); ++i) {
      std::error_code ec;
      stdfs::remove_all(all[i].second, ec);
    }
  }
  rt.barrier();
  return final_dir;
}

}  // namespace

at::Tensor host_snapshot(const at::Tensor& t) {
  if (!t.defined()) return t;
  if (t.device().is_cpu()) return t.detach().clone();
  return t.detach().to(at::kCPU);  // a copy, waited for: the values of now
}

st::WrittenFile write_optimizer_file(const stdfs::path& file, int rank, int world, const std::vector<StatePiece>& pieces) {
  std::vector<at::Tensor> keep;  // the host copies the refs point into, alive until the file is written
  std::vector<st::TensorRef> tensors;
  for (const auto& p : pieces)
    for (const auto& [what, t] : {std::pair{"exp_avg/", &p.exp_avg}, std::pair{"exp_avg_sq/", &p.exp_avg_sq}}) {
      ST_CHECK(t->defined() && t->scalar_type() == at::kFloat && t->dim() == 1,
               "internal: optimizer state pieces must be 1-D fp32 tensors ('" + p.param + "')");
      // The bytes as they are: a CPU contiguous piece is written in place, any other (a CUDA tensor, a
      // strided view) through one contiguous host copy of the same values.
      const at::Tensor& h = keep.emplace_back(t->device().is_cpu() && t->is_contiguous() ? *t
                                                                                         : t->to(at::kCPU).contiguous());
      tensors.push_back({what + p.param + "@" + std::to_string(p.start), st::DType::F32, {h.numel()}, h.data_ptr(),
                         uint64_t(h.nbytes())});
    }
  return st::write_file_hashed(file, tensors,
                               {{"format", "pt"}, {"rank", std::to_string(rank)}, {"world", std::to_string(world)}});
}

stdfs::path save(const dist::MpiRuntime& rt, const stdfs::path& dir, const TrainerState& state,
                 const std::vector<StatePiece>& mine, const WeightsWriter& write_weights, int keep_last) {
  const stdfs::path tmp = begin_save(rt, dir, state.step);
  if (tmp.empty()) return dir / step_dir_name(state.step);
  return commit(rt, dir, tmp, state, write_local(tmp, rt.rank(), rt.world(), state, mine, write_weights), keep_last);
}

AsyncSaver::AsyncSaver(const dist::MpiRuntime& rt, stdfs::path dir, int keep_last)
    : rt_(rt), dir_(std::move(dir)), keep_last_(keep_last) {}

AsyncSaver::~AsyncSaver() {
  if (thread_.joinable()) thread_.join();  // an unwinding run: the save is not committed (previous stays latest)
}

void AsyncSaver::start(TrainerState state, std::vector<StatePiece> pieces, WeightsWriter write_weights) {
  finish();
  tmp_ = begin_save(rt_, dir_, state.step);
  if (tmp_.empty()) return;
  state_ = std::move(state);
  done_ = false;
  thread_ = std::thread([this, pieces = std::move(pieces), write_weights = std::move(write_weights)] {
    result_ = write_local(tmp_, rt_.rank(), rt_.world(), state_, pieces, write_weights);
    done_ = true;
  });
}

stdfs::path AsyncSaver::poll() {
  if (tmp_.empty()) return {};
  // Every rank must have written its part before anyone commits.
  if (rt_.allreduce_max(done_.load() ? 0 : 1) != 0) return {};
  return finish();
}

stdfs::path AsyncSaver::finish() {
  if (tmp_.empty()) return {};
  thread_.join();
  const stdfs::path tmp = tmp_;
  tmp_.clear();
  return commit(rt_, dir_, tmp, state_, result_, keep_last_);
}

Resume find_resume(const dist::MpiRuntime& rt, const stdfs::path& dir, const std::string& spec) {
  std::string path, warnings, err;
  if (rt.rank() == 0 && spec != "none") {
    try {
      if (spec == "auto") {
        std::error_code ec;
        if (stdfs::is_directory(dir, ec))
          for (const auto& e : stdfs::directory_iterator(dir)) {
            const std::string n = e.path().filename().string();
            if (n.rfind(".tmp-step-", 0) == 0) {
              warnings += "removed '" + e.path().string() + "', left by a save that was interrupted\n";
              stdfs::remove_all(e.path(), ec);
            }
          }
        for (const auto& [step, p] : list_checkpoints(dir)) {
          const std::string why = verify(p);
          if (why.empty()) {
            path = p.string();
            break;
          }
          warnings += "skipped checkpoint '" + p.string() + "': " + why + "\n";
        }
      } else {
        const std::string why = verify(spec);
        if (!why.empty()) err = "--resume '" + spec + "' is not a usable checkpoint: " + why;
        else path = spec;
      }
    } catch (const std::exception& e) {
      err = e.what();
    }
  }
  err = rt.broadcast(err, 0);
  ST_CHECK(err.empty(), err, "give --resume auto (the newest checkpoint that verifies), another checkpoint folder, or none");
  Resume r;
  r.path = rt.broadcast(path, 0);
  std::istringstream in(rt.broadcast(warnings, 0));
  for (std::string line; std::getline(in, line);)
    if (!line.empty()) r.warnings.push_back(line);
  return r;
}

void load_optimizer(const stdfs::path& ckpt, const std::vector<StatePiece>& targets) {
  struct Piece {
    const st::File* file;
    const st::TensorInfo* m;
    const st::TensorInfo* v;
    int64_t start, numel;
  };
  std::vector<std::unique_ptr<st::File>> files;
  std::map<std::string, std::vector<Piece>> by_param;
  for (const auto& e : stdfs::directory_iterator(ckpt)) {
    const std::string n = e.path().filename().string();
    if (n.rfind("optimizer-rank", 0) != 0) continue;
    files.push_back(std::make_unique<st::File>(e.path()));
    const st::File& f = *files.back();
    for (const auto& t : f.tensors()) {
      if (t.name.rfind("exp_avg/", 0) != 0) continue;
      const std::string key = t.name.substr(8);
      const size_t at = key.rfind('@');
      ST_CHECK(at != std::string::npos && t.dtype == st::DType::F32 && t.shape.size() == 1,
               f.path().string() + ": unexpected tensor '" + t.name + "'", "the checkpoint is damaged");
      const st::TensorInfo& v = f.at("exp_avg_sq/" + key);
      ST_CHECK(v.shape == t.shape && v.dtype == t.dtype, f.path().string() + ": exp_avg and exp_avg_sq of '" + key + "' differ");
      by_param[key.substr(0, at)].push_back({&f, &t, &v, std::stoll(key.substr(at + 1)), t.numel()});
    }
  }
  for (const auto& tg : targets) {
    const int64_t n = tg.exp_avg.numel(), a = tg.start;
    ST_CHECK(tg.exp_avg.dim() == 1 && tg.exp_avg_sq.sizes() == tg.exp_avg.sizes() &&
                 tg.exp_avg.scalar_type() == at::kFloat && tg.exp_avg_sq.scalar_type() == at::kFloat,
             "internal: optimizer targets must be 1-D fp32 pairs of one size ('" + tg.param + "')");
    // Filled in place when on the CPU and contiguous; otherwise (a CUDA tensor, a strided view) through a
    // host buffer copied onto the target once it is complete.
    auto staged = [](const at::Tensor& t) {
      return t.device().is_cpu() && t.is_contiguous() ? t : at::empty(t.sizes(), t.options().device(at::kCPU));
    };
    const at::Tensor hm = staged(tg.exp_avg), hv = staged(tg.exp_avg_sq);
    float* m = hm.data_ptr<float>();
    float* v = hv.data_ptr<float>();
    int64_t covered = 0;
    for (const Piece& p : by_param[tg.param]) {
      const int64_t lo = std::max(a, p.start), hi = std::min(a + n, p.start + p.numel);
      if (lo >= hi) continue;
      const auto* pm = reinterpret_cast<const float*>(p.file->data(*p.m));
      const auto* pv = reinterpret_cast<const float*>(p.file->data(*p.v));
      std::memcpy(m + (lo - a), pm + (lo - p.start), size_t(hi - lo) * 4);
      std::memcpy(v + (lo - a), pv + (lo - p.start), size_t(hi - lo) * 4);
      covered += hi - lo;
    }
    ST_CHECK(covered == n, ckpt.string() + ": the optimizer state of '" + tg.param + "' elements [" + std::to_string(a) +
                               ", " + std::to_string(a + n) + ") is not complete (" + std::to_string(covered) + " found)",
             "the checkpoint is damaged or was written by another configuration");
    if (!hm.is_same(tg.exp_avg)) tg.exp_avg.copy_(hm);
    if (!hv.is_same(tg.exp_avg_sq)) tg.exp_avg_sq.copy_(hv);
  }
}

std::map<std::string, std::string> parse_table(const std::string& table) {
  std::map<std::string, std::string> out;
  std::istringstream in(table);
  for (std::string line; std::getline(in, line);) {
    const size_t eq = line.find(" = ");
    if (eq == std::string::npos) continue;
    std::string k = line.substr(0, eq);
    k.erase(0, k.find_first_not_of(' '));
    k.erase(k.find_last_not_of(' ') + 1);
    out[k] = line.substr(eq + 3);
  }
  return out;
}

std::vector<std::string> incompatible_changes(const std::map<std::string, std::string>& saved,
                                              const std::map<std::string, std::string>& now,
                                              std::vector<std::string>* allowed) {
  // What the resumed run would silently get wrong: other weights, other samples, another order, another
  // objective or adapter shape. Everything else (steps, cadence, logging, threads, ZeRO stage, micro-batch,
  // ranks, even the learning rate) may change and is printed.
  static const std::set<std::string> fixed = {
      "model", "data", "data-manifest-sha256", "model-sha256", "method", "global-batch", "seq-len", "pack", "seed",
      "lora-r", "lora-alpha", "lora-targets", "use-rslora", "lora-dropout", "base-dtype", "compute-dtype",
      "double-quant", "adapter",
      // The loss itself: another objective, DPO loss or its coefficients would continue a different run.
      "objective", "dpo-loss", "beta", "label-smoothing", "simpo-gamma", "center-rewards"};
  std::set<std::string> keys;
  for (const auto& [k, v] : saved) keys.insert(k);
  for (const auto& [k, v] : now) keys.insert(k);
  std::vector<std::string> bad;
  for (const auto& k : keys) {
    auto a = saved.find(k), b = now.find(k);
    const std::string va = a == saved.end() ? "(absent)" : a->second, vb = b == now.end() ? "(absent)" : b->second;
    if (va == vb) continue;
    const std::string line = k + ": " + va + " in the checkpoint, " + vb + " now";
    if (fixed.count(k)) bad.push_back(line);
    else if (allowed) allowed->push_back(line);
  }
  return bad;
}

}  // namespace shardtune::checkpoint
