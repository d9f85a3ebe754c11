// Trainer state I/O, manifest verification and step-folder listing (see shardtune/checkpoint/files.h).
// No LibTorch here: shardtune-inspect links this alone.
#include "shardtune/checkpoint/files.h"

#include <boost/archive/archive_exception.hpp>
#include <boost/archive/text_iarchive.hpp>
#include <boost/archive/text_oarchive.hpp>
#include <boost/serialization/map.hpp>
#include <boost/serialization/string.hpp>
#include <boost/serialization/vector.hpp>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "shardtune/core/error.h"
#include "shardtune/core/fs.h"
#include "shardtune/core/json_depth.h"

namespace boost::serialization {
template <class Ar>
void serialize(Ar& ar, shardtune::checkpoint::TrainerState& s, unsigned /*version*/) {
  ar & s.version & s.step & s.consumed_samples & s.total_steps & s.world & s.seed & s.optimizer_steps &
      s.skipped_total & s.skipped_in_a_row & s.dropout_rngs & s.config & s.source_dtypes & s.params & s.numels;
}
}  // namespace boost::serialization

namespace shardtune::checkpoint {

namespace {

bool is_step_dir(const std::string& n, int64_t* step) {
  if (n.size() != 13 || n.rfind("step-", 0) != 0) return false;
  for (size_t i = 5; i < n.size(); ++i)
    if (n[i] < '0' || n[i] > '9') return false;
  *step = std::stoll(n.substr(5));
  return true;
}

}  // namespace

std::string step_dir_name(int64_t step) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "step-%08lld", static_cast<long long>(step));
  return buf;
}

std::vector<std::pair<int64_t, stdfs::path>> list_checkpoints(const stdfs::path& dir) {
  std::vector<std::pair<int64_t, stdfs::path>> out;
  std::error_code ec;
  if (!stdfs::is_directory(dir, ec)) return out;
  for (const auto& e : stdfs::directory_iterator(dir)) {
    int64_t step = 0;
    if (e.is_directory() && is_step_dir(e.path().filename().string(), &step)) out.emplace_back(step, e.path());
  }
  std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a.first > b.first; });
  return out;
}

std::string latest_name(const stdfs::path& dir) {
  std::ifstream in(dir / "latest");
  std::string s;
  std::getline(in, s);
  return s.empty() ? "none" : s;
}

void write_state(const stdfs::path& path, const TrainerState& st) {
  std::ostringstream o;
  {
    boost::archive::text_oarchive ar(o);
    ar << st;
  }
  fs::write_file_atomic(path, o.str());
}

std::string verify(const stdfs::path& ckpt) {
  const stdfs::path mpath = ckpt / kManifestFile;
  std::error_code ec;
  if (!stdfs::exists(mpath, ec)) return "no manifest.json (the save did not finish)";
  nlohmann::json m;
  try {
    const std::string text = fs::read_file(mpath);
    check_json_depth(text, mpath.string());
    m = nlohmann::json::parse(text);
  } catch (const std::exception& e) {
    return std::string("manifest.json is not valid JSON (") + e.what() + ")";
  }
  if (!m.is_object() || m.value("format", "") != kManifestFormat)
    return "manifest.json is not a shardtune checkpoint manifest";
  if (m.value("version", 0u) != kFormatVersion)
    return "format version " + std::to_string(m.value("version", 0u)) + ", this build reads " +
           std::to_string(kFormatVersion);
  if (!m.contains("files") || !m["files"].is_array() || m["files"].empty()) return "manifest.json lists no files";
  for (const auto& f : m["files"]) {
    const std::string name = f.value("name", "");
    const stdfs::path p = ckpt / name;
    if (name.empty() || name.find('/') != std::string::npos) return "manifest.json has a bad file name";
    if (!stdfs::exists(p, ec)) return name + " is missing";
    const auto size = stdfs::file_size(p, ec);
    if (ec || size != f.value("bytes", uint64_t(0)))
      return name + " has " + std::to_string(ec ? 0 : size) + " bytes, the manifest says " +
             std::to_string(f.value("bytes", uint64_t(0))) + " (truncated?)";
    if (fs::sha256_file(p) != f.value("sha256", "")) return name + " does not match its sha256 (corrupted)";
  }
  return "";
}

TrainerState read_state(const stdfs::path& ckpt) {
  const stdfs::path p = ckpt / kStateFile;
  TrainerState st;
  try {
    std::istringstream in(fs::read_file(p));
    boost::archive::text_iarchive ar(in);
    ar >> st;
  } catch (const boost::archive::archive_exception& e) {
    ST_FAIL(p.string() + ": not a readable trainer state (" + e.what() + ")", "the checkpoint is damaged: resume from another");
  }
  ST_CHECK(st.version == kFormatVersion, p.string() + ": trainer state version " + std::to_string(st.version) +
                                             ", this build reads " + std::to_string(kFormatVersion));
  return st;
}

}  // namespace shardtune::checkpoint
