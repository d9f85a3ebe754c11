// shardtune-inspect CKPT [--verify]: what a trainer checkpoint holds (trainer state, configuration, files
// with sizes), or, for a --ckpt-dir, every step folder and which one `latest` names. Verification is the
// trainer's own (checkpoint::verify), so inspect and `--resume auto` never disagree about a checkpoint.
#include "inspect_checkpoint.h"

#include <cstdio>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "shardtune/checkpoint/files.h"
#include "shardtune/core/error.h"
#include "shardtune/core/fs.h"
#include "shardtune/core/json_depth.h"
#include "shardtune/core/log.h"

namespace shardtune::inspect {

namespace stdfs = std::filesystem;
namespace ck = shardtune::checkpoint;

namespace {

// The manifest as JSON, or null when it is absent or unreadable (verify() says why).
nlohmann::json read_manifest(const stdfs::path& ckpt) {
  const stdfs::path p = ckpt / ck::kManifestFile;
  std::error_code ec;
  if (!stdfs::is_regular_file(p, ec)) return nullptr;
  try {
    const std::string text = fs::read_file(p);
    check_json_depth(text, p.string());
    nlohmann::json m = nlohmann::json::parse(text);
    return m.is_object() ? m : nlohmann::json(nullptr);
  } catch (const std::exception&) {
    return nullptr;
  }
}

std::string value_or(const std::map<std::string, std::string>& m, const std::string& k, const std::string& dflt) {
  auto it = m.find(k);
  return it == m.end() ? dflt : it->second;
}

// One checkpoint in full. Returns verify()'s answer when `verify`, else "".
std::string print_one(const stdfs::path& ckpt, bool verify) {
  const nlohmann::json m = read_manifest(ckpt);
  std::printf("checkpoint %s", ckpt.string().c_str());
  if (m.is_object())
    std::printf(" (%s version %s)\n", m.value("format", "?").c_str(), m.contains("version") ? m["version"].dump().c_str() : "?");
  else
    std::printf(" (no readable manifest.json: the save did not finish, or the manifest is damaged)\n");
  try {
    const ck::TrainerState st = ck::read_state(ckpt);
    std::printf("step              %lld of %lld\n", static_cast<long long>(st.step), static_cast<long long>(st.total_steps));
    std::printf("consumed samples  %lld\n", static_cast<long long>(st.consumed_samples));
    std::printf("world at save     %d rank(s)\n", st.world);
    std::printf("method            %s\n", value_or(st.config, "method", "?").c_str());
    std::printf("seed              %llu\n", static_cast<unsigned long long>(st.seed));
    std::printf("optimizer steps   %lld (non-finite steps skipped: %lld)\n", static_cast<long long>(st.optimizer_steps),
                static_cast<long long>(st.skipped_total));
    int64_t numel = 0;
    for (auto n : st.numels) numel += n;
    std::printf("trainable         %zu tensors, %lld parameters\n", st.params.size(), static_cast<long long>(numel));
    std::printf("\nconfiguration (as the run recorded it)\n");
    for (const auto& [k, v] : st.config) std::printf("  %-22s %s\n", k.c_str(), v.c_str());
  } catch (const std::exception& e) {
    std::printf("trainer state     unreadable: %s\n", e.what());
  }
  std::printf("\n%-36s %14s  %s\n", "file", "bytes", "sha256 (manifest)");
  uint64_t total = 0;
  if (m.is_object() && m.contains("files") && m["files"].is_array()) {
    for (const auto& f : m["files"]) {
      const std::string name = f.value("name", "?");
      const uint64_t bytes = f.value("bytes", uint64_t(0));
      std::error_code ec;
      const auto actual = stdfs::file_size(ckpt / name, ec);
      std::string note;
      if (ec) note = "  (missing)";
      else if (actual != bytes) note = "  (" + std::to_string(actual) + " bytes on disk)";
      std::printf("%-36s %14llu  %s…%s\n", name.c_str(), static_cast<unsigned long long>(bytes),
                  f.value("sha256", "").substr(0, 16).c_str(), note.c_str());
      total += bytes;
    }
  } else {
    for (const auto& e : stdfs::directory_iterator(ckpt))
      if (e.is_regular_file()) {
        std::printf("%-36s %14llu  (not in a manifest)\n", e.path().filename().string().c_str(),
                    static_cast<unsigned long long>(e.file_size()));
        total += e.file_size();
      }
  }
  std::printf("%-36s %14llu  (%s)\n", "total", static_cast<unsigned long long>(total), log::human_bytes(double(total)).c_str());
  if (!verify) return "";
  const std::string why = ck::verify(ckpt);
  std::printf("\nverify: %s\n", why.empty() ? "ok (every file's size and sha256 match the manifest)" : ("FAILED: " + why).c_str());
  return why;
}

}  // namespace

bool is_checkpoint_path(const stdfs::path& p) {
  std::error_code ec;
  if (!stdfs::is_directory(p, ec)) return false;
  const nlohmann::json m = read_manifest(p);
  if (m.is_object()) return m.value("format", "") == ck::kManifestFormat;
  return stdfs::exists(p / ck::kStateFile, ec) || stdfs::exists(p / "latest", ec) || !ck::list_checkpoints(p).empty();
}

int inspect_checkpoint(const stdfs::path& p, bool verify) {
  const auto steps = ck::list_checkpoints(p);
  std::error_code ec;
  const bool single = stdfs::exists(p / ck::kManifestFile, ec) || stdfs::exists(p / ck::kStateFile, ec);
  if (single) {
    const std::string why = print_one(p, verify);
    ST_CHECK(why.empty(), "checkpoint '" + p.string() + "' does not verify: " + why,
             "a run with --resume auto skips it and resumes from the newest one that verifies");
    return 0;
  }
  // A --ckpt-dir: every step folder, then the one `latest` names (or the newest) in full.
  const std::string latest = ck::latest_name(p);
  std::printf("checkpoint folder %s: %zu checkpoint(s), latest -> %s\n\n", p.string().c_str(), steps.size(), latest.c_str());
  std::printf("%-16s %10s %12s %6s %14s  %s\n", "checkpoint", "step", "consumed", "world", "bytes", verify ? "verify" : "state");
  std::vector<std::string> failed;
  for (const auto& [step, dir] : steps) {
    const nlohmann::json m = read_manifest(dir);
    uint64_t bytes = 0;
    if (m.is_object() && m.contains("files") && m["files"].is_array())
      for (const auto& f : m["files"]) bytes += f.value("bytes", uint64_t(0));
    std::string status = m.is_object() ? "complete (not verified)" : "no manifest (incomplete)";
    if (verify) {
      const std::string why = ck::verify(dir);
      status = why.empty() ? "ok" : "FAILED: " + why;
      if (!why.empty()) failed.push_back(dir.filename().string() + ": " + why);
    }
    std::printf("%-16s %10lld %12s %6s %14llu  %s\n", dir.filename().string().c_str(), static_cast<long long>(step),
                m.is_object() && m.contains("consumed_samples") ? m["consumed_samples"].dump().c_str() : "?",
                m.is_object() && m.contains("world") ? m["world"].dump().c_str() : "?",
                static_cast<unsigned long long>(bytes), status.c_str());
  }
  for (const auto& e : stdfs::directory_iterator(p))
    if (e.path().filename().string().rfind(".tmp-step-", 0) == 0)
      std::printf("%-16s  left by a save that was interrupted (the next --resume auto removes it)\n",
                  e.path().filename().string().c_str());
  ST_CHECK(!steps.empty(), "'" + p.string() + "' holds no step-* checkpoint folder",
           "pass a checkpoint folder (step-N) or the --ckpt-dir of a run (default <out>/checkpoints)");
  stdfs::path shown = steps.front().second;
  if (latest != "none" && stdfs::is_directory(p / latest, ec)) shown = p / latest;
  std::printf("\n");
  print_one(shown, false);
  std::string list;
  for (const auto& f : failed) list += "\n  " + f;
  ST_CHECK(failed.empty(), std::to_string(failed.size()) + " of " + std::to_string(steps.size()) + " checkpoint(s) in '" +
                               p.string() + "' do not verify:" + list,
           "a run with --resume auto skips them and resumes from the newest one that verifies");
  return 0;
}

}  // namespace shardtune::inspect
