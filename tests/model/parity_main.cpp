// Parity of shardtune's models against tests/model/reference.py (independent Python torch code):
// logits, gradients of the masked loss, packed-document logits, bf16 autocast logits and loss (vs the
// reference under torch.autocast), greedy generation, mean CE, save/reload.
// usage: model_parity CASE_DIR            (HF model in CASE_DIR/hf, reference in CASE_DIR/ref.safetensors)
//        model_parity CASE_DIR FILE.bin   (llama2.c import; reference from `reference.py llama2c`)
#include <c10/core/GradMode.h>

#include <cstdio>
#include <filesystem>
#include <string>

#include "shardtune/core/error.h"
#include "shardtune/core/hw.h"
#include "shardtune/model/adapter.h"
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

// bf16 autocast vs reference.py under torch.autocast('cpu', bfloat16), rel = max |diff| / max |ref|.
// Measured (5 cases x 4 weight/data seeds: 1234/7, 1/100, 2/101, 3/102; Xeon with AMX/AVX512_BF16;
// LibTorch 1.13 vs Debian torch 1.13): logits bit-identical in 20/20 (the same rounding points), loss rel
// <= 1.8e-7. A correct kernel on another CPU may differ by an fp32 ulp before some bf16 rounding, so the
// bounds come from the same 20 runs with the reference's weights nudged by +-1 fp32 ulp: worst logits rel
// 1.08e-2 (abs 0.055), worst loss rel 1.6e-4. Bounds = about 2x those. (For scale: bf16 vs the fp32
// reference is 0.9e-2..3.9e-2 rel; moving one rounding point, e.g. HF's attention scale order, 1.4e-2.)
constexpr double kBf16LogitsTol = 2.5e-2;
constexpr double kBf16LossTol = 4e-4;

void check(bool ok, const std::string& what) {
  std::printf("  %-58s %s\n", what.c_str(), ok ? "ok" : "FAIL");
  if (!ok) ++failures;
}

void check_rel(const at::Tensor& a, const at::Tensor& b, double tol, const std::string& what) {
  const double r = rel(a, b);
  const double max_abs = (a.to(at::kDouble) - b.to(at::kDouble)).abs().max().item<double>();
  char buf[200];
  std::snprintf(buf, sizeof buf, "%s rel %.3g abs %.3g (tol %.2g)", what.c_str(), r, max_abs, tol);
  check(a.sizes() == b.sizes() && r <= tol, buf);
}

std::vector<int64_t> as_vec(const at::Tensor& t) {
  const at::Tensor c = t.to(at::kLong).contiguous();
  return std::vector<int64_t>(c.data_ptr<int64_t>(), c.data_ptr<int64_t>() + c.numel());
}

void check_mean_loss(sm::CausalLM& m, const at::Tensor& ids, const at::Tensor& ref, const std::string& what) {
  const auto lr = m.loss(ids, {});
  const at::Tensor mean = (lr.sum / double(lr.count)).reshape({1});
  check_rel(mean, ref, 1e-5, what + " " + std::to_string(mean.item<double>()) + " nats");
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

// LoRA against reference.py's independent LoRA forward (make_lora_case): a PEFT-layout adapter written by
// the reference loads and gives its logits and the gradients of every A and B; fresh adapters (B = 0)
// leave the logits exactly the base model's; merging gives the base+adapter logits.
void check_lora(const stdfs::path& dir, const at::Tensor& ids, const at::Tensor& mask) {
  if (!stdfs::exists(dir / "ref_lora.safetensors")) return;
  auto ref = sm::read_safetensors(dir / "ref_lora.safetensors");
  const stdfs::path hf = dir / "hf", adapter = dir / "adapter";
  auto base = sm::load_model(hf.string());
  at::Tensor base_logits, base_bf16;
  {
    at::NoGradGuard ng;
    base_logits = base->logits(ids);
    sm::AutocastGuard ac(at::kCPU, sm::Precision::BF16);
    base_bf16 = base->logits(ids);
  }
  {
    auto m = sm::load_model(hf.string());
    sm::AdapterConfig c;
    c.r = 4;
    c.alpha = 8;
    c.target_modules = {"all-linear"};
    m->add_lora(c, 7);
    at::NoGradGuard ng;
    check(at::equal(m->logits(ids), base_logits), "LoRA with B = 0: logits bit-identical to the base model's");
    m->freeze_base(at::kFloat);  // the fused q/k/v and gate/up buffers of the frozen base
    check(at::equal(m->logits(ids), base_logits), "LoRA with B = 0, frozen re-laid base: logits bit-identical");
    sm::AutocastGuard ac(at::kCPU, sm::Precision::BF16);
    check(at::equal(m->logits(ids), base_bf16), "LoRA with B = 0 under bf16 autocast: bit-identical");
  }
  auto m = sm::load_model(hf.string());
  const sm::AdapterConfig cfg = sm::read_adapter_config(adapter);
  m->load_lora(cfg, sm::read_adapter_weights(adapter, cfg), adapter.string());
  m->freeze_base(at::kFloat);
  const auto trainable = m->trainable_parameters();
  for (const auto& [name, t] : trainable) t.set_requires_grad(true);
  {
    at::NoGradGuard ng;
    check_rel(m->logits(ids), ref["logits"], 1e-5, "PEFT adapter from reference.py: logits");
  }
  const auto lr = m->loss(ids, mask, {}, 7);
  const at::Tensor loss = lr.sum / double(lr.count);
  check_rel(loss.detach().reshape({1}), ref["loss"], 1e-5, "LoRA masked mean loss");
  loss.backward();
  double worst = 0;
  std::string worst_name;
  size_t n = 0;
  for (const auto& [name, t] : trainable) {
    auto it = ref.find("grad/" + name);
    if (it == ref.end() || !t.grad().defined()) {
      std::printf("  missing gradient for %s\n", name.c_str());
      continue;
    }
    ++n;
    const double r = rel(t.grad(), it->second);
    if (r > worst) worst = r, worst_name = name;
  }
  char buf[200];
  std::snprintf(buf, sizeof buf, "LoRA grads of %zu A/B tensors, worst rel %.3g (%s)", n, worst, worst_name.c_str());
  check(n == trainable.size() && n == 2 * sm::read_adapter_weights(adapter, cfg).size() && worst <= 1e-5, buf);
  bool frozen = true;
  for (const auto& [name, p] : m->hf_parameters()) frozen = frozen && !p.grad().defined() && !p.requires_grad();
  check(frozen, "frozen base: no parameter of the base has a gradient");
  auto merged = sm::load_model(hf.string());
  sm::merge_lora(*merged, adapter);
  at::NoGradGuard ng;
  const at::Tensor ml = merged->logits(ids);
  check_rel(ml, m->logits(ids), 1e-5, "merged weights vs base + adapter: logits");
  check_rel(ml, ref["merged_logits"], 1e-5, "merged weights vs the reference's independent merge");
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
    // bf16 autocast against reference.py's forward under torch.autocast('cpu', bfloat16) (bounds above).
    at::NoGradGuard ng;
    sm::AutocastGuard ac(at::kCPU, sm::Precision::BF16);
    const at::Tensor lg = m->logits(ids);
    check_rel(lg, ref["logits_bf16"], kBf16LogitsTol, "bf16 autocast logits vs torch.autocast");
    std::printf("  (for scale: bf16 logits vs the fp32 reference rel %.3g)\n", rel(lg, ref["logits"]));
    const auto lb = m->loss(ids, mask, {}, 7);
    check_rel((lb.sum / double(lb.count)).reshape({1}), ref["loss_bf16"], kBf16LossTol,
              "bf16 autocast masked mean loss vs torch.autocast");
  }
  check_generation(*m, ref);
  check_roundtrip(*m, dir / "hf", dir / "resaved", ids);
  check_lora(dir, ids, mask);
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
  // Mean next-token CE against the reference's: on random ids (high) and on the model's own greedy
  // continuation (low, as for any trained model); each to 1e-5, so a wrong head or shift fails.
  check_mean_loss(*m, ids, ref["loss"], "mean CE on random ids");
  check_mean_loss(*m, ref["gen_seq"], ref["gen_loss"], "mean CE on its greedy continuation");
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
