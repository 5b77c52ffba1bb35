// whale quantize: the formats it writes load back as the same model, as close to it as each
// format allows, and bad requests get one clear message.
#include <gtest/gtest.h>

#include <filesystem>
#include <nlohmann/json.hpp>

#include "backends/cpu/cpu_backend.h"
#include "model/accuracy.h"
#include "model/deepseek.h"
#include "model/quantize.h"
#include "tests/test_util.h"

namespace whale {
namespace {

using model::QuantRecipe;

struct Quantized {
  std::string dir;
  model::QuantizeReport report;
};

Quantized quantize(const test::TempDir& tmp, const std::string& fixture, QuantRecipe recipe,
                   ThreadPool& pool) {
  const std::string out = tmp.file(fixture + "-" + model::recipe_name(recipe));
  auto r = model::quantize_checkpoint(test::fixture_dir(fixture), out, recipe, pool, {});
  EXPECT_TRUE(r.ok()) << r.error().to_string();
  return {out, r.ok() ? *r : model::QuantizeReport{}};
}

std::vector<float> all_logits(const std::string& dir, const std::vector<int32_t>& ids,
                              const ops::Backend& ops) {
  auto m = model::Model::load(dir);
  EXPECT_TRUE(m.ok()) << m.error().to_string();
  if (!m.ok()) return {};
  model::KvCache cache(m->config(), static_cast<int64_t>(ids.size()));
  model::ForwardOptions options;
  options.all_logits = true;
  auto logits = m->forward(ops, ids, cache, options);
  EXPECT_TRUE(logits.ok());
  return logits.ok() ? *logits : std::vector<float>{};
}

class QuantizeFixture : public ::testing::TestWithParam<std::string> {};

// Each format against the same model in bf16, over the fixture's token sequence. The fixtures are
// random tiny models whose next-token distributions are nearly flat (their top two logits often
// differ by less than a quantization step moves them), so top-1 agreement is a weak measure here
// and the bounds are on KL; bench/README.md reports both on the benchmark model.
TEST_P(QuantizeFixture, FormatsStayCloseToBf16) {
  ThreadPool pool(2);
  cpu::CpuBackend cpu(pool);
  test::TempDir tmp;
  const std::vector<int32_t> ids = test::fixture_ids(GetParam());
  const Quantized bf16 = quantize(tmp, GetParam(), QuantRecipe::kBf16, pool);
  const std::vector<float> reference = all_logits(bf16.dir, ids, cpu);
  const int64_t vocab = static_cast<int64_t>(reference.size() / ids.size());
  model::LogitComparison q8, q4, mixed;
  for (auto [recipe, out] : {std::pair{QuantRecipe::kQ8, &q8}, std::pair{QuantRecipe::kQ4, &q4},
                             std::pair{QuantRecipe::kQ4Experts, &mixed}}) {
    const Quantized q = quantize(tmp, GetParam(), recipe, pool);
    EXPECT_LT(q.report.bytes_out, bf16.report.bytes_out);
    *out = model::compare_logits(reference, all_logits(q.dir, ids, cpu), vocab);
    ASSERT_EQ(out->positions, static_cast<int64_t>(ids.size()));
  }
  std::printf("%s: q8 KL %.2e top-1 %.3f | q4-experts KL %.2e top-1 %.3f | q4 KL %.2e top-1 %.3f\n",
              GetParam().c_str(), q8.mean_kl, q8.top1_agreement, mixed.mean_kl,
              mixed.top1_agreement, q4.mean_kl, q4.top1_agreement);
  EXPECT_LT(q8.mean_kl, 0.01);
  EXPECT_GE(q8.top1_agreement, 0.9);
  EXPECT_LT(q4.mean_kl, 0.1);
  // More bits, closer: 8-bit everywhere beats 4-bit experts beats 4-bit everywhere.
  EXPECT_LT(q8.mean_kl, mixed.mean_kl);
  EXPECT_LT(mixed.mean_kl, q4.mean_kl);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, QuantizeFixture,
                         ::testing::Values("v3_fp8", "v3_yarn", "v2_lite"));

TEST(Quantize, OutputDescribesItselfAndKeepsSensitiveTensorsFine) {
  ThreadPool pool(2);
  test::TempDir tmp;
  const Quantized q = quantize(tmp, "v3_fp8", QuantRecipe::kQ4Experts, pool);
  const auto config = nlohmann::json::parse(test::read_file(q.dir + "/config.json"));
  EXPECT_FALSE(config.contains("quantization_config"));  // no FP8 blocks left
  EXPECT_EQ(config["whale_quantization"]["recipe"], "q4-experts");
  auto ckpt = Checkpoint::open_dir(q.dir);
  ASSERT_TRUE(ckpt.ok());
  auto dtype = [&](const std::string& name) {
    const StoredTensor* t = ckpt->find(name);
    return t ? std::string(dtype_name(t->view.dtype)) : std::string("missing");
  };
  const std::string l1 = "model.layers.1.";
  EXPECT_EQ(dtype(l1 + "mlp.experts.0.up_proj.weight"), "U8");  // routed expert: 4-bit
  EXPECT_EQ(dtype(l1 + "mlp.experts.0.up_proj.weight_scale"), "F16");
  EXPECT_EQ(dtype(l1 + "mlp.shared_experts.up_proj.weight"), "I8");  // shared: 8-bit
  EXPECT_EQ(dtype(l1 + "self_attn.kv_b_proj.weight"), "BF16");       // read by columns
  EXPECT_EQ(dtype(l1 + "mlp.gate.weight"), "BF16");                   // the router
  EXPECT_EQ(dtype(l1 + "mlp.experts.0.up_proj.weight_scale_inv"), "missing");
  EXPECT_EQ(q.report.tensors_by_form.count("F8_E4M3"), 0u);
}

TEST(Quantize, BlockFormatTensorsAreChecked) {
  ThreadPool pool(2);
  test::TempDir tmp;
  const Quantized q = quantize(tmp, "v2_lite", QuantRecipe::kQ8, pool);
  auto ckpt = Checkpoint::open_dir(q.dir);
  ASSERT_TRUE(ckpt.ok());
  // Rewrite the checkpoint without one scale tensor, then with one of the wrong shape.
  const std::string victim = "model.layers.0.mlp.down_proj.weight_scale";
  for (int variant = 0; variant < 2; ++variant) {
    std::vector<TensorToWrite> tensors;
    std::vector<std::vector<uint8_t>> keep;
    for (const auto& [name, t] : ckpt->tensors()) {
      if (name == victim && variant == 0) continue;
      TensorToWrite w{name, t->view.dtype, t->view.shape, t->view.data};
      if (name == victim) w.shape = {t->view.shape[1], t->view.shape[0]};
      tensors.push_back(w);
    }
    const std::string dir = tmp.file("broken" + std::to_string(variant));
    std::filesystem::create_directories(dir);
    std::filesystem::copy_file(q.dir + "/config.json", dir + "/config.json");
    ASSERT_TRUE(write_safetensors(dir + "/model.safetensors", tensors).ok());
    auto m = model::Model::load(dir);
    ASSERT_FALSE(m.ok());
    const std::string msg = m.error().to_string();
    EXPECT_NE(msg.find(variant == 0 ? victim + ": missing (needed by the I8 weight)"
                                    : victim + ": expected F16 of shape"),
              std::string::npos)
        << msg;
  }
}

TEST(Quantize, BadRequestsAreRefused) {
  ThreadPool pool(2);
  test::TempDir tmp;
  EXPECT_FALSE(model::parse_recipe("q3").ok());
  EXPECT_NE(model::parse_recipe("q3").error().to_string().find("unknown type 'q3'"),
            std::string::npos);
  auto same = model::quantize_checkpoint(test::fixture_dir("v2_lite"),
                                         test::fixture_dir("v2_lite"), QuantRecipe::kQ8, pool, {});
  ASSERT_FALSE(same.ok());
  EXPECT_NE(same.error().to_string().find("the output directory is the input directory"),
            std::string::npos);
  quantize(tmp, "v2_lite", QuantRecipe::kQ8, pool);
  auto again = model::quantize_checkpoint(test::fixture_dir("v2_lite"),
                                          tmp.file("v2_lite-q8"), QuantRecipe::kQ8, pool, {});
  ASSERT_FALSE(again.ok());
  EXPECT_NE(again.error().to_string().find("already exists"), std::string::npos);
  auto missing = model::quantize_checkpoint("/nonexistent", tmp.file("x"), QuantRecipe::kQ8, pool, {});
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.error().to_string().find("config.json not found"), std::string::npos);
}

TEST(Quantize, CommandLine) {
  test::TempDir tmp;
  const std::string whale = WHALE_BINARY;
  const std::string in = test::fixture_dir("v3_fp8"), out = tmp.file("q8");
  std::string text;
  ASSERT_EQ(test::run_command(whale + " quantize " + in + " " + out + " --type q8 2>/dev/null", &text), 0)
      << text;
  EXPECT_NE(text.find("wrote"), std::string::npos) << text;
  ASSERT_EQ(test::run_command(whale + " compare " + in + " " + out + " --tokens 16 --json", &text), 0)
      << text;
  const auto j = nlohmann::json::parse(text);
  EXPECT_EQ(j["positions"], 16);
  // Measured here: top-1 1.0, mean KL 0.0003, max |Δlogit| 0.1 (q8 is close, not identical).
  EXPECT_GE(j["top1_agreement"].get<double>(), 0.75);
  EXPECT_LT(j["mean_kl"].get<double>(), 0.05);
  EXPECT_GT(j["max_abs_logit_diff"].get<double>(), 0.0);
  EXPECT_EQ(test::run_command(whale + " quantize " + in + " " + tmp.file("y") + " --type q3", &text), 2);
  EXPECT_NE(text.find("unknown type 'q3'"), std::string::npos) << text;
  EXPECT_EQ(test::run_command(whale + " compare " + in + " " + test::fixture_dir("v2_lite"), &text), 2);
  EXPECT_NE(text.find("different vocabularies"), std::string::npos) << text;
}

}  // namespace
}  // namespace whale
