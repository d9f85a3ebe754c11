// HDF5 shard writer/reader over the HDF5 C API (RAII handles; object time tracking off for determinism).
#include "shardtune/data/shard.h"

#include <hdf5.h>

#include <algorithm>
#include <cstring>
#include <numeric>
#include <tuple>

#include "h5.h"
#include "layout.h"
#include "shardtune/core/error.h"

namespace shardtune::data {
namespace {

void write_string_attr(hid_t obj, const char* name, const std::string& value) {
  H5 type(H5Tcopy(H5T_C_S1), H5Tclose);
  H5Tset_size(type.get(), std::max<size_t>(1, value.size()));
  H5Tset_strpad(type.get(), H5T_STR_NULLPAD);
  H5 space(H5Screate(H5S_SCALAR), H5Sclose);
  H5 attr(H5Acreate2(obj, name, type.get(), space.get(), H5P_DEFAULT, H5P_DEFAULT), H5Aclose);
  ST_CHECK(attr.ok(), std::string("HDF5: cannot create attribute ") + name);
  std::string padded = value.empty() ? std::string(1, '\0') : value;
  ST_CHECK(H5Awrite(attr.get(), type.get(), padded.data()) >= 0, std::string("HDF5: cannot write attribute ") + name);
}

void write_int_attr(hid_t obj, const char* name, int64_t value) {
  H5 space(H5Screate(H5S_SCALAR), H5Sclose);
  H5 attr(H5Acreate2(obj, name, H5T_STD_I64LE, space.get(), H5P_DEFAULT, H5P_DEFAULT), H5Aclose);
  ST_CHECK(attr.ok() && H5Awrite(attr.get(), H5T_NATIVE_INT64, &value) >= 0,
           std::string("HDF5: cannot write attribute ") + name);
}

template <class T>
void write_dataset(hid_t file, hid_t dcpl, const char* name, hid_t file_type, hid_t mem_type, const std::vector<T>& v) {
  hsize_t dims[1] = {static_cast<hsize_t>(v.size())};
  H5 space(H5Screate_simple(1, dims, nullptr), H5Sclose);
  H5 ds(H5Dcreate2(file, name, file_type, space.get(), H5P_DEFAULT, dcpl, H5P_DEFAULT), H5Dclose);
  ST_CHECK(ds.ok(), std::string("HDF5: cannot create dataset ") + name);
  if (!v.empty())
    ST_CHECK(H5Dwrite(ds.get(), mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, v.data()) >= 0,
             std::string("HDF5: cannot write dataset ") + name + " (disk full?)");
}

bool has_attr(hid_t obj, const char* name) { return H5Aexists(obj, name) > 0; }

std::string read_string_attr(hid_t obj, const char* name, const std::string& path) {
  ST_CHECK(has_attr(obj, name), "shard '" + path + "' lacks attribute '" + name + "'",
           "the file was not written by shardtune-prep (or by an incompatible version); re-run shardtune-prep");
  H5 attr(H5Aopen(obj, name, H5P_DEFAULT), H5Aclose);
  H5 type(H5Aget_type(attr.get()), H5Tclose);
  ST_CHECK(H5Tget_class(type.get()) == H5T_STRING, "shard '" + path + "': attribute '" + name + "' is not a string");
  ST_CHECK(!H5Tis_variable_str(type.get()), "shard '" + path + "': attribute '" + name + "' is a variable-length string");
  size_t n = H5Tget_size(type.get());
  std::string out(n, '\0');
  H5 mem(H5Tcopy(H5T_C_S1), H5Tclose);
  H5Tset_size(mem.get(), n);
  H5Tset_strpad(mem.get(), H5T_STR_NULLPAD);
  ST_CHECK(H5Aread(attr.get(), mem.get(), out.data()) >= 0, "shard '" + path + "': cannot read attribute '" + name + "'");
  out.resize(std::strlen(out.c_str()));
  return out;
}

int64_t read_int_attr(hid_t obj, const char* name, const std::string& path) {
  ST_CHECK(has_attr(obj, name), "shard '" + path + "' lacks attribute '" + name + "'",
           "the file was not written by shardtune-prep (or by an incompatible version); re-run shardtune-prep");
  H5 attr(H5Aopen(obj, name, H5P_DEFAULT), H5Aclose);
  int64_t v = 0;
  ST_CHECK(H5Aread(attr.get(), H5T_NATIVE_INT64, &v) >= 0, "shard '" + path + "': cannot read attribute '" + name + "'");
  return v;
}

template <class T>
std::vector<T> read_dataset(hid_t file, const char* name, hid_t mem_type, const std::string& path) {
  ST_CHECK(H5Lexists(file, name, H5P_DEFAULT) > 0, "shard '" + path + "' has no dataset '" + name + "'",
           "the file is incomplete or not a shardtune shard; re-run shardtune-prep");
  H5 ds(H5Dopen2(file, name, H5P_DEFAULT), H5Dclose);
  H5 space(H5Dget_space(ds.get()), H5Sclose);
  ST_CHECK(H5Sget_simple_extent_ndims(space.get()) == 1, "shard '" + path + "': dataset '" + name + "' is not 1-D");
  hsize_t n = 0;
  H5Sget_simple_extent_dims(space.get(), &n, nullptr);
  std::vector<T> v(n);
  if (n) ST_CHECK(H5Dread(ds.get(), mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, v.data()) >= 0,
                  "shard '" + path + "': cannot read dataset '" + name + "' (truncated or corrupt file?)");
  return v;
}

ShardInfo read_info(hid_t file, const std::string& path) {
  ST_CHECK(has_attr(file, "format") && read_string_attr(file, "format", path) == kShardMagic,
           "'" + path + "' is not a shardtune shard (missing format = \"" + kShardMagic + "\")",
           "pass a folder written by shardtune-prep");
  int64_t version = read_int_attr(file, "format_version", path);
  ST_CHECK(version == kShardVersion,
           "shard '" + path + "' has format_version " + std::to_string(version) + ", this build reads " +
               std::to_string(kShardVersion),
           "re-run shardtune-prep with this version of shardtune");
  ShardInfo info;
  info.split = read_string_attr(file, "split", path);
  info.tokenizer_name = read_string_attr(file, "tokenizer_name", path);
  info.tokenizer_hash = read_string_attr(file, "tokenizer_hash", path);
  info.vocab_size = read_int_attr(file, "vocab_size", path);
  info.bos_id = read_int_attr(file, "bos_id", path);
  info.eos_id = read_int_attr(file, "eos_id", path);
  info.pad_id = read_int_attr(file, "pad_id", path);
  info.template_name = read_string_attr(file, "template", path);
  info.source_files = read_string_attr(file, "source_files", path);
  if (has_attr(file, "kind")) info.kind = read_string_attr(file, "kind", path);
  ST_CHECK(info.kind == kKindSequence || info.kind == kKindPreference,
           "shard '" + path + "' has kind '" + info.kind + "', this build reads '" + kKindSequence + "' and '" +
               kKindPreference + "'",
           "re-run shardtune-prep with this version of shardtune");
  return info;
}

H5 open_for_read(const std::string& path) {
  QuietHdf5 quiet;
  ST_CHECK(H5Fis_hdf5(path.c_str()) > 0, "'" + path + "' is not a readable HDF5 file",
           "check the path; a shard that was cut short by a crash is never given its final name, so re-run shardtune-prep");
  H5 file(H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT), H5Fclose);
  ST_CHECK(file.ok(), "cannot open HDF5 file '" + path + "'");
  return file;
}

}  // namespace

int64_t ShardData::num_loss_tokens() const {
  return std::accumulate(loss_mask.begin(), loss_mask.end(), int64_t{0});
}

void write_shard(const std::string& path, const ShardInfo& info, const ShardData& d) {
  ST_CHECK(static_cast<int64_t>(d.loss_mask.size()) == d.num_tokens() && d.offsets.back() == d.num_tokens(),
           "internal: inconsistent shard data for '" + path + "'");
  ST_CHECK(d.offsets.front() == 0 && std::is_sorted(d.offsets.begin(), d.offsets.end()),
           "internal: shard offsets for '" + path + "' are not monotone");
  const bool pairs = info.kind == kKindPreference;
  ST_CHECK(!pairs || (d.num_samples() % 2 == 0 && static_cast<int64_t>(d.prompt_lens.size()) == d.num_pairs()),
           "internal: preference shard '" + path + "' needs an even sequence count and one prompt length per pair");
  ST_CHECK(pairs || d.prompt_lens.empty(), "internal: prompt lengths given for the sequence shard '" + path + "'");
  QuietHdf5 quiet;
  // No object timestamps and fixed library-version bounds: the same data gives the same bytes.
  H5 fcpl(H5Pcreate(H5P_FILE_CREATE), H5Pclose);
  H5Pset_obj_track_times(fcpl.get(), false);
  H5 fapl(H5Pcreate(H5P_FILE_ACCESS), H5Pclose);
  H5Pset_libver_bounds(fapl.get(), H5F_LIBVER_V18, H5F_LIBVER_V18);
  H5 file(H5Fcreate(path.c_str(), H5F_ACC_EXCL, fcpl.get(), fapl.get()), H5Fclose);
  ST_CHECK(file.ok(), "cannot create shard '" + path + "'", "check that the folder is writable and the file does not exist");
  H5 dcpl(H5Pcreate(H5P_DATASET_CREATE), H5Pclose);
  H5Pset_obj_track_times(dcpl.get(), false);
  write_dataset(file.get(), dcpl.get(), "tokens", H5T_STD_I32LE, H5T_NATIVE_INT32, d.tokens);
  write_dataset(file.get(), dcpl.get(), "offsets", H5T_STD_I64LE, H5T_NATIVE_INT64, d.offsets);
  write_dataset(file.get(), dcpl.get(), "loss_mask", H5T_STD_U8LE, H5T_NATIVE_UINT8, d.loss_mask);
  if (pairs) write_dataset(file.get(), dcpl.get(), "prompt_lens", H5T_STD_I64LE, H5T_NATIVE_INT64, d.prompt_lens);
  write_string_attr(file.get(), "format", kShardMagic);
  write_int_attr(file.get(), "format_version", kShardVersion);
  write_string_attr(file.get(), "split", info.split);
  write_string_attr(file.get(), "tokenizer_name", info.tokenizer_name);
  write_string_attr(file.get(), "tokenizer_hash", info.tokenizer_hash);
  write_int_attr(file.get(), "vocab_size", info.vocab_size);
  write_int_attr(file.get(), "bos_id", info.bos_id);
  write_int_attr(file.get(), "eos_id", info.eos_id);
  write_int_attr(file.get(), "pad_id", info.pad_id);
  write_string_attr(file.get(), "template", info.template_name);
  write_string_attr(file.get(), "source_files", info.source_files);
  write_int_attr(file.get(), "num_samples", d.num_samples());
  write_int_attr(file.get(), "num_tokens", d.num_tokens());
  if (pairs) {
    write_string_attr(file.get(), "kind", info.kind);
    write_int_attr(file.get(), "num_pairs", d.num_pairs());
  }
  ST_CHECK(H5Fflush(file.get(), H5F_SCOPE_GLOBAL) >= 0, "cannot flush shard '" + path + "' (disk full?)");
}


namespace {

std::string type_desc(hid_t type) {
  const H5T_class_t c = H5Tget_class(type);
  const std::string bytes = std::to_string(H5Tget_size(type)) + "-byte ";
  if (c == H5T_INTEGER) return bytes + (H5Tget_sign(type) == H5T_SGN_NONE ? "unsigned integer" : "signed integer");
  if (c == H5T_FLOAT) return bytes + "float";
  if (c == H5T_STRING) return "string";
  return "non-numeric type (class " + std::to_string(static_cast<int>(c)) + ")";
}

// One 1-D integer dataset: returns its length after checking kind, storage, type and rank.
hsize_t check_dataset(hid_t file, const char* name, size_t elem_size, bool is_signed, const char* want,
                      const std::string& path, uint64_t file_size) {
  const std::string ds_name = std::string("/") + name;
  const std::string where = "shard '" + path + "': dataset '" + ds_name + "'";
  const std::string rerun = "the shard is corrupt or not written by shardtune-prep; re-run shardtune-prep";
  ST_CHECK(H5Lexists(file, name, H5P_DEFAULT) > 0, "shard '" + path + "' has no dataset '" + ds_name + "'",
           "the file is incomplete or not a shardtune shard; re-run shardtune-prep");
  H5 ds(H5Dopen2(file, name, H5P_DEFAULT), H5Dclose);
  ST_CHECK(ds.ok(), where + " is not a dataset (a group?) or cannot be opened", rerun);
  // External and virtual storage would read other files than the one verified: refused.
  H5 dcpl(H5Dget_create_plist(ds.get()), H5Pclose);
  const H5D_layout_t lay = H5Pget_layout(dcpl.get());
  ST_CHECK((lay == H5D_CONTIGUOUS || lay == H5D_CHUNKED || lay == H5D_COMPACT) && H5Pget_external_count(dcpl.get()) == 0,
           where + " uses external or virtual storage (data outside this file)", rerun);
  H5 type(H5Dget_type(ds.get()), H5Tclose);
  ST_CHECK(H5Tget_class(type.get()) == H5T_INTEGER && H5Tget_size(type.get()) == elem_size &&
               (H5Tget_sign(type.get()) != H5T_SGN_NONE) == is_signed,
           where + " has type " + type_desc(type.get()) + ", expected " + want, rerun);
  H5 space(H5Dget_space(ds.get()), H5Sclose);
  const int ndims = H5Sget_simple_extent_ndims(space.get());
  ST_CHECK(ndims == 1 && H5Sget_simple_extent_type(space.get()) == H5S_SIMPLE,
           where + " has " + std::to_string(ndims) + " dimensions, expected 1", rerun);
  hsize_t n = 0;
  H5Sget_simple_extent_dims(space.get(), &n, nullptr);  // safe: exactly one dimension
  // Even compressed, no real shard stores more than 64 elements per byte of file.
  const uint64_t max_elems = (file_size + 4096) * 64 / elem_size;
  ST_CHECK(n <= max_elems, where + " claims " + std::to_string(n) + " elements, more than a file of " +
                               std::to_string(file_size) + " bytes can hold", rerun);
  return n;
}

}  // namespace

ShardLayout check_shard_layout(hid_t file, const std::string& path, int64_t expect_samples) {
  const std::string rerun = "the shard is corrupt; re-run shardtune-prep";
  hsize_t file_size = 0;
  ST_CHECK(H5Fget_filesize(file, &file_size) >= 0, "shard '" + path + "': cannot get the file size");
  const hsize_t nt = check_dataset(file, "tokens", 4, true, "int32", path, file_size);
  const hsize_t no = check_dataset(file, "offsets", 8, true, "int64", path, file_size);
  const hsize_t nm = check_dataset(file, "loss_mask", 1, false, "uint8", path, file_size);
  const std::string where = "shard '" + path + "': ";
  ST_CHECK(no >= 1, where + "dataset '/offsets' is empty (it holds n_samples + 1 entries)", rerun);
  ST_CHECK(nm == nt, where + "dataset '/loss_mask' has " + std::to_string(nm) + " entries, '/tokens' " +
                         std::to_string(nt), rerun);
  if (expect_samples >= 0)
    ST_CHECK(static_cast<int64_t>(no - 1) == expect_samples,
             where + "dataset '/offsets' holds " + std::to_string(no - 1) + " samples, manifest.json says " +
                 std::to_string(expect_samples), "the folder mixes outputs of different prep runs; re-run shardtune-prep");
  for (const char* attr : {"num_samples", "num_tokens"}) {
    if (!has_attr(file, attr)) continue;
    const int64_t v = read_int_attr(file, attr, path);
    const int64_t want = attr[4] == 's' ? static_cast<int64_t>(no - 1) : static_cast<int64_t>(nt);
    ST_CHECK(v == want, where + "attribute '" + attr + "' is " + std::to_string(v) + " but the datasets hold " +
                            std::to_string(want), rerun);
  }
  ShardLayout out;
  out.num_tokens = static_cast<int64_t>(nt);
  out.offsets = read_dataset<int64_t>(file, "offsets", H5T_NATIVE_INT64, path);
  const auto& o = out.offsets;
  ST_CHECK(static_cast<hsize_t>(o.size()) == no && o.front() == 0,
           where + "dataset '/offsets' must start at 0, starts at " + std::to_string(o.front()), rerun);
  for (size_t i = 1; i < o.size(); ++i)
    ST_CHECK(o[i] >= o[i - 1], where + "dataset '/offsets' decreases at sample " + std::to_string(i - 1), rerun);
  ST_CHECK(o.back() == out.num_tokens, where + "dataset '/offsets' ends at " + std::to_string(o.back()) +
                                           " but '/tokens' has " + std::to_string(nt) + " entries", rerun);
  return out;
}


int64_t check_token_chunk(const int32_t* ids, const uint8_t* mask, size_t n, int64_t first, const std::vector<int64_t>& offsets,
                          int64_t vocab, const std::string& path) {
  int64_t ones = 0;
  for (size_t k = 0; k < n; ++k) {
    const bool id_ok = ids[k] >= 0 && ids[k] < vocab;
    if (id_ok && mask[k] <= 1) {
      ones += mask[k];
      continue;
    }
    const int64_t pos = first + static_cast<int64_t>(k);
    const int64_t sample = std::upper_bound(offsets.begin(), offsets.end(), pos) - offsets.begin() - 1;
    const std::string at = "shard '" + path + "': sample " + std::to_string(sample) + ", token " +
                           std::to_string(pos - offsets[sample]) + " (position " + std::to_string(pos) + " of /tokens)";
    ST_CHECK(id_ok, at + " holds id " + std::to_string(ids[k]) + ", outside the vocabulary [0, " + std::to_string(vocab) + ")",
             "the shard does not match its tokenizer or is corrupt; re-run shardtune-prep");
    ST_FAIL(at + " has loss_mask value " + std::to_string(mask[k]) + " (must be 0 or 1)",
            "the shard is corrupt; re-run shardtune-prep");
  }
  return ones;
}

std::vector<int64_t> check_pair_layout(hid_t file, const std::string& path, const std::vector<int64_t>& offsets) {
  const std::string rerun = "the shard is corrupt; re-run shardtune-prep";
  const std::string where = "shard '" + path + "': ";
  const int64_t n = static_cast<int64_t>(offsets.size()) - 1;
  ST_CHECK(n % 2 == 0, where + "a preference shard holds " + std::to_string(n) +
                           " sequences, an odd number (each pair is a chosen and a rejected sequence)", rerun);
  hsize_t file_size = 0;
  ST_CHECK(H5Fget_filesize(file, &file_size) >= 0, where + "cannot get the file size");
  const hsize_t np = check_dataset(file, "prompt_lens", 8, true, "int64", path, file_size);
  ST_CHECK(static_cast<int64_t>(np) == n / 2, where + "dataset '/prompt_lens' has " + std::to_string(np) +
                                                  " entries for " + std::to_string(n / 2) + " pairs", rerun);
  if (has_attr(file, "num_pairs"))
    ST_CHECK(read_int_attr(file, "num_pairs", path) == n / 2,
             where + "attribute 'num_pairs' is " + std::to_string(read_int_attr(file, "num_pairs", path)) +
                 " but the datasets hold " + std::to_string(n / 2) + " pairs", rerun);
  std::vector<int64_t> pl = read_dataset<int64_t>(file, "prompt_lens", H5T_NATIVE_INT64, path);
  for (int64_t p = 0; p < n / 2; ++p) {
    const int64_t shorter = std::min(offsets[2 * p + 1] - offsets[2 * p], offsets[2 * p + 2] - offsets[2 * p + 1]);
    ST_CHECK(pl[p] >= 1 && pl[p] < shorter,
             where + "pair " + std::to_string(p) + " has prompt length " + std::to_string(pl[p]) +
                 ", outside [1, " + std::to_string(shorter) + ") (its shorter sequence has " + std::to_string(shorter) +
                 " tokens)", rerun);
  }
  return pl;
}

void check_pair_chunk(const int32_t* ids, const uint8_t* mask, int64_t first, const std::vector<int64_t>& offsets,
                      const std::vector<int64_t>& prompt_lens, int64_t pair_begin, int64_t pair_end,
                      const std::string& path) {
  const std::string rerun = "the shard is corrupt; re-run shardtune-prep";
  for (int64_t p = pair_begin; p < pair_end; ++p) {
    const int64_t plen = prompt_lens[p];
    const int64_t c = offsets[2 * p] - first, r = offsets[2 * p + 1] - first, end = offsets[2 * p + 2] - first;
    const std::string at = "shard '" + path + "': pair " + std::to_string(p) + " (sequences " + std::to_string(2 * p) +
                           " and " + std::to_string(2 * p + 1) + ")";
    for (auto [a, b, name] : {std::tuple{c, r, "chosen"}, std::tuple{r, end, "rejected"}})
      for (int64_t t = a; t < b; ++t)
        ST_CHECK(mask[t] == (t - a >= plen ? 1 : 0),
                 at + ": " + name + " token " + std::to_string(t - a) + " has loss_mask " + std::to_string(mask[t]) +
                     ", but the prompt is its first " + std::to_string(plen) + " tokens (mask 0) and the rest is the response (mask 1)",
                 rerun);
    ST_CHECK(std::equal(ids + c, ids + c + plen, ids + r),
             at + ": the chosen and rejected sequences differ within their shared prompt of " + std::to_string(plen) + " tokens",
             rerun);
  }
}

ShardInfo read_shard_info(const std::string& path) {
  H5 file = open_for_read(path);
  QuietHdf5 quiet;
  return read_info(file.get(), path);
}

Shard read_shard(const std::string& path, int64_t expect_vocab) {
  H5 file = open_for_read(path);
  QuietHdf5 quiet;
  Shard s;
  s.info = read_info(file.get(), path);
  ShardLayout layout = check_shard_layout(file.get(), path);  // before any data is read
  s.data.offsets = std::move(layout.offsets);
  s.data.tokens = read_dataset<int32_t>(file.get(), "tokens", H5T_NATIVE_INT32, path);
  s.data.loss_mask = read_dataset<uint8_t>(file.get(), "loss_mask", H5T_NATIVE_UINT8, path);
  const auto& d = s.data;
  const std::string where = "shard '" + path + "': ";
  const std::string rerun = "the shard is corrupt; re-run shardtune-prep";
  ST_CHECK(static_cast<int64_t>(d.tokens.size()) == layout.num_tokens && d.loss_mask.size() == d.tokens.size(),
           where + "/tokens or /loss_mask changed size while being read", rerun);
  ST_CHECK(s.info.vocab_size > 0, where + "vocab_size attribute is not positive", rerun);
  check_token_chunk(d.tokens.data(), d.loss_mask.data(), d.tokens.size(), 0, d.offsets, s.info.vocab_size, path);
  if (s.info.kind == kKindPreference) {
    s.data.prompt_lens = check_pair_layout(file.get(), path, d.offsets);
    check_pair_chunk(d.tokens.data(), d.loss_mask.data(), 0, d.offsets, d.prompt_lens, 0, d.num_pairs(), path);
  }
  if (expect_vocab > 0)
    ST_CHECK(s.info.vocab_size == expect_vocab,
             where + "was tokenized with vocab size " + std::to_string(s.info.vocab_size) + " (" +
                 s.info.tokenizer_name + "), the model expects " + std::to_string(expect_vocab),
             "prepare the data with the model's own tokenizer");
  return s;
}

}  // namespace shardtune::data
