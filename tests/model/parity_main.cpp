// Parity of shardtune's models against tests/model/reference.py (independent Python torch code):
// logits, gradients of the masked loss, packed-document logits, greedy generation, save/reload.
// usage: model_parity CASE_DIR            (HF model in CASE_DIR/hf, reference in CASE_DIR/ref.safetensors)
//        model_parity CASE_DIR FILE.bin   (llama2.c import; reference from `reference.py llama2c`)
#include <c10/core/GradMode.h>

#include <cstdio>
#include <filesystem>
#include <string>

#include "shardtune/core/error.h"
#include "shardtune/core/hw.h"
#include "shardtune/model/generate.h"
#include "shardtune/model/io.h"
#include "shardtune/model/runtime.h"

namespace sm = shardtune::model;
namespace stdfs = std::filesystem;

namespace {
int failures = 0;

double rel(const at::Tensor& a, const at::Tensor& b) {
  const double den = b.abs().max().item<double>();
  return (a.to(at::kDouble) - b.to(at::kDouble)).abs().max().item<double>() / (den > 0 ? den : 1.0);
}

void check(bool ok, const std::string& what) {
  std::printf("  %-58s %s\n", what.c_str(), ok ? "ok" : "FAIL");
  if (!ok) ++failures;
}

void check_rel(const at::Tensor& a, const at::Tensor& b, double tol, const std::string& what) {
  const double r = rel(a, b);
  char buf[160];
  std::snprintf(buf, sizeof buf, "%s rel %.3g (tol %.0e)", what.c_str(), r, tol);
  check(a.sizes() == b.sizes() && r <= tol, buf);
}

std::vector<int64_t> as_vec(const at::Tensor& t) {
  const at::Tensor c = t.to(at::kLong).contiguous();
  return std::vector<int64_t>(c.data_ptr<int64_t>(), c.data_ptr<int64_t>() + c.numel());
}

void check_generation(sm::CausalLM& m, std::map<std::string, at::Tensor>& ref) {
  sm::GenerateOptions g;
  g.max_new_tokens = ref["gen"].numel();
  const auto got = sm::generate(m, as_vec(ref["gen_prompt"]), g);
  check(got == as_vec(ref["gen"]), "greedy generation of " + std::to_string(g.max_new_tokens) + " tokens identical");
}

void check_roundtrip(const sm::CausalLM& m, const stdfs::path& src_dir, const stdfs::path& out, const at::Tensor& ids) {
  sm::SaveOptions so;
  so.max_shard_bytes = 64 * 1024;  // force several shards + index
  sm::save_hf(m, out, so);
  auto re = sm::load_model(out.string());
  bool same = true;
  for (const auto& [name, p] : m.hf_parameters()) same = same && at::equal(p, re->param(name));
  check(same, "save (sharded) -> reload: every parameter bit-exact");
  at::NoGradGuard ng;
  check(at::equal(const_cast<sm::CausalLM&>(m).logits(ids), re->logits(ids)), "save -> reload: identical logits");
  if (src_dir.empty()) return;
  // Bytes on disk: every tensor of the source files equals the one written (names as written by us).
  std::map<std::string, at::Tensor> written;
  for (const auto& f : shardtune::st::model_files(out))
    for (auto& [k, v] : sm::read_safetensors(f)) written[k] = v;
  bool bytes_same = true;
  size_t n = 0;
  for (const auto& f : shardtune::st::model_files(src_dir)) {
    for (auto& [k, v] : sm::read_safetensors(f)) {
      std::string name = k;
      if (!written.count(name) && written.count("transformer." + name)) name = "transformer." + name;
      if (!written.count(name)) continue;  // buffers such as GPT-2's attn.bias
      bytes_same = bytes_same && v.scalar_type() == written[name].scalar_type() && at::equal(v, written[name]);
      ++n;
    }
  }
  check(bytes_same && n == m.hf_parameters().size(),
        "load -> save: " + std::to_string(n) + " tensors bit-exact vs the source files");
  check(stdfs::exists(out / "model.safetensors.index.json") && stdfs::exists(out / "config.json"),
        "sharded output has model.safetensors.index.json and config.json");
}

int run_hf_case(const stdfs::path& dir) {
  auto ref = sm::read_safetensors(dir / "ref.safetensors");
  auto m = sm::load_model((dir / "hf").string());
  const at::Tensor ids = ref["ids"], mask = ref["loss_mask"];
  {
    at::NoGradGuard ng;
    check_rel(m->logits(ids), ref["logits"], 1e-5, "logits");
    sm::Packing pk;
    pk.doc_ids = ref["packed_doc_ids"];
    const at::Tensor packed = m->logits(ids.narrow(0, 0, 1), pk);
    check_rel(packed, ref["packed_logits"], 1e-5, "packed doc-mask logits vs separate documents");
    check_rel(packed, ref["packed_logits_masked"], 1e-5, "packed doc-mask logits vs reference doc mask");
  }
  // Gradients of the masked mean loss; a small chunk forces several chunks of the fused CE.
  const auto lr = m->loss(ids, mask, {}, /*chunk_tokens=*/7);
  const at::Tensor loss = lr.sum / double(lr.count);
  check_rel(loss.detach().reshape({1}), ref["loss"], 1e-5, "masked mean loss");
  loss.backward();
  double worst = 0;
  std::string worst_name;
  bool all = true;
  for (const auto& [name, p] : m->hf_parameters()) {
    auto it = ref.find("grad/" + name);
    if (it == ref.end() || !p.grad().defined()) {
      all = false;
      std::printf("  missing gradient for %s\n", name.c_str());
      continue;
    }
    const double r = rel(p.grad(), it->second);
    if (r > worst) worst = r, worst_name = name;
  }
  char buf[200];
  std::snprintf(buf, sizeof buf, "grads of %zu params, worst rel %.3g (%s)", m->hf_parameters().size(), worst,
                worst_name.c_str());
  check(all && worst <= 1e-4, buf);
  {
    at::NoGradGuard ng;
    sm::AutocastGuard ac(at::kCPU, sm::Precision::BF16);
    const double r = rel(m->logits(ids), ref["logits"]);
    std::snprintf(buf, sizeof buf, "bf16 autocast logits rel %.3g (tol 5e-2)", r);
    check(r < 5e-2, buf);
  }
  check_generation(*m, ref);
  check_roundtrip(*m, dir / "hf", dir / "resaved", ids);
  return 0;
}

int run_llama2c_case(const stdfs::path& dir, const std::string& bin) {
  auto ref = sm::read_safetensors(dir / "ref.safetensors");
  auto m = sm::load_model(bin);
  at::NoGradGuard ng;
  const at::Tensor ids = ref["ids"];
  check_rel(m->logits(ids), ref["logits"], 1e-5, "llama2.c import logits vs interleaved-RoPE reference");
  check_generation(*m, ref);
  check_roundtrip(*m, {}, dir / "hf", ids);
  // A trained model predicts its own greedy continuation well.
  sm::GenerateOptions g;
  g.max_new_tokens = 128;
  std::vector<int64_t> seq = {1};
  for (int64_t t : sm::generate(*m, seq, g)) seq.push_back(t);
  const auto lr = m->loss(at::tensor(seq, at::kLong).view({1, -1}), {});
  const double ce = lr.sum.item<double>() / double(lr.count);
  char buf[120];
  std::snprintf(buf, sizeof buf, "mean CE on own greedy continuation %.4f nats (< 1.0)", ce);
  check(ce < 1.0, buf);
  return 0;
}
}  // namespace

static int body(int argc, char** argv) {
  ST_CHECK(argc == 2 || argc == 3, "usage: model_parity CASE_DIR [MODEL.bin]");
  sm::setup_runtime(2);
  shardtune::hw::print_blas_status(stdout);
  const stdfs::path dir = argv[1];
  std::printf("model parity: %s\n", dir.filename().c_str());
  if (argc == 3) run_llama2c_case(dir, argv[2]);
  else run_hf_case(dir);
  std::printf("%s\n", failures ? "FAILED" : "PASSED");
  return failures ? 1 : 0;
}

int main(int argc, char** argv) {
  shardtune::hw::select_blas_core(argv);  // may re-exec with OPENBLAS_CORETYPE set
  return shardtune::run_guarded("model_parity", body, argc, argv);
}
