// whale quantize: the formats it writes load back as the same model, as close to it as each
// format allows, and bad requests get one clear message.
#include "model/quantize.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <nlohmann/json.hpp>
#include <random>

#include "backends/cpu/cpu_backend.h"
#include "model/accuracy.h"
#include "model/deepseek.h"
#include "ops/quant.h"
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

// The dtype a checkpoint stores `name` in, or "missing".
std::string stored_dtype(const Checkpoint& ckpt, const std::string& name) {
  const StoredTensor* t = ckpt.find(name);
  return t ? std::string(dtype_name(t->view.dtype)) : std::string("missing");
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
  EXPECT_EQ(config["whale_quantization"]["q4_levels"], ops::kQ4LevelsName);
  auto ckpt = Checkpoint::open_dir(q.dir);
  ASSERT_TRUE(ckpt.ok());
  auto dtype = [&](const std::string& name) { return stored_dtype(*ckpt, name); };
  const std::string l1 = "model.layers.1.";
  EXPECT_EQ(dtype(l1 + "mlp.experts.0.up_proj.weight"), "U8");  // routed expert: 4-bit
  EXPECT_EQ(dtype(l1 + "mlp.experts.0.up_proj.weight_scale"), "F16");
  EXPECT_EQ(dtype(l1 + "mlp.shared_experts.up_proj.weight"), "I8");  // shared: 8-bit
  EXPECT_EQ(dtype(l1 + "self_attn.kv_b_proj.weight"), "I8");         // 8-bit in every recipe
  EXPECT_EQ(dtype(l1 + "mlp.gate.weight"), "BF16");                   // the router
  EXPECT_EQ(dtype(l1 + "mlp.experts.0.up_proj.weight_scale_inv"), "missing");
  EXPECT_EQ(dtype("model.embed_tokens.weight"), "BF16");  // read one row per token
  EXPECT_EQ(q.report.tensors_by_form.count("F8_E4M3"), 0u);

  // q4: 4-bit except the head, the dense layers' FFNs, attention's down-projections and kv_b
  // (8-bit).
  const Quantized q4 = quantize(tmp, "v3_fp8", QuantRecipe::kQ4, pool);
  auto ckpt4 = Checkpoint::open_dir(q4.dir);
  ASSERT_TRUE(ckpt4.ok());
  auto dtype4 = [&](const std::string& name) { return stored_dtype(*ckpt4, name); };
  EXPECT_EQ(dtype4("model.layers.0.mlp.down_proj.weight"), "I8");  // dense layer 0
  EXPECT_EQ(dtype4(l1 + "mlp.shared_experts.down_proj.weight"), "U8");
  EXPECT_EQ(dtype4(l1 + "self_attn.o_proj.weight"), "U8");
  EXPECT_EQ(dtype4(l1 + "self_attn.q_b_proj.weight"), "U8");
  EXPECT_EQ(dtype4(l1 + "self_attn.q_a_proj.weight"), "I8");
  EXPECT_EQ(dtype4(l1 + "self_attn.kv_a_proj_with_mqa.weight"), "I8");
  EXPECT_EQ(dtype4(l1 + "self_attn.kv_b_proj.weight"), "I8");
  EXPECT_EQ(dtype4("lm_head.weight"), "I8");
  EXPECT_EQ(dtype4("model.embed_tokens.weight"), "BF16");

  // q8: 8-bit except the head (bf16).
  const Quantized q8 = quantize(tmp, "v3_fp8", QuantRecipe::kQ8, pool);
  auto ckpt8 = Checkpoint::open_dir(q8.dir);
  ASSERT_TRUE(ckpt8.ok());
  auto dtype8 = [&](const std::string& name) { return stored_dtype(*ckpt8, name); };
  EXPECT_EQ(dtype8("lm_head.weight"), "BF16");
  EXPECT_EQ(dtype8(l1 + "mlp.experts.0.up_proj.weight"), "I8");
  EXPECT_EQ(dtype8(l1 + "self_attn.o_proj.weight"), "I8");
}

// 4-bit weights are only read with the level table they were written with: a config.json
// without whale_quantization.q4_levels (an older whale's q4, value = scale · (code − 8)) or with
// another table is refused by name.
TEST(Quantize, FourBitWeightsNeedTheirLevelTable) {
  ThreadPool pool(2);
  test::TempDir tmp;
  const Quantized q = quantize(tmp, "v2_lite", QuantRecipe::kQ4, pool);
  ASSERT_TRUE(model::Model::load(q.dir).ok());
  auto config = nlohmann::json::parse(test::read_file(q.dir + "/config.json"));
  for (const char* levels : {"", "some-other-table"}) {
    if (*levels) {
      config["whale_quantization"]["q4_levels"] = levels;
    } else {
      config["whale_quantization"].erase("q4_levels");
    }
    test::write_file(q.dir + "/config.json", config.dump());
    auto m = model::Model::load(q.dir);
    ASSERT_FALSE(m.ok()) << levels;
    const std::string msg = m.error().to_string();
    EXPECT_NE(msg.find("whale_quantization.q4_levels"), std::string::npos) << msg;
    EXPECT_NE(msg.find("rewrite the model with whale quantize"), std::string::npos) << msg;
  }
}

// The defined 4-bit value of each code is scale · kQ4Levels[code]; the quantizer finds, for a
// block that is exactly a scaled copy of the levels, those codes and that scale.
TEST(Quantize, FourBitCodesAreTheLevels) {
  float row[ops::kQuantBlock];
  const float d = 1.0f / 128;  // exact in f16
  for (int i = 0; i < ops::kQuantBlock; ++i) row[i] = d * ops::kQ4Levels[(i * 7) % 16];
  uint8_t packed[ops::kQuantBlock / 2];
  uint16_t scale;
  ops::quantize_row_q4(row, ops::kQuantBlock, packed, &scale);
  ops::Matrix m;
  m.format = ops::WeightFormat::kQ4;
  m.dtype = DType::kU8;
  m.data = packed;
  m.rows = 1;
  m.cols = ops::kQuantBlock;
  m.scale = &scale;
  m.scale_dtype = DType::kF16;
  m.scale_cols = 1;
  m.block_rows = 1;
  m.block_cols = ops::kQuantBlock;
  for (int i = 0; i < ops::kQuantBlock; ++i) {
    EXPECT_EQ(ops::weight_code(m, 0, i), ops::kQ4Levels[(i * 7) % 16]) << i;
    EXPECT_NEAR(m.at(0, i), row[i], 1e-5f) << i;
  }
  // Random rows: every code is the level nearest x / scale.
  std::mt19937 rng(3);
  std::student_t_distribution<float> t5(5);
  for (int trial = 0; trial < 200; ++trial) {
    for (float& v : row) v = 0.02f * t5(rng);
    ops::quantize_row_q4(row, ops::kQuantBlock, packed, &scale);
    const float s = f16_to_f32(scale);
    ASSERT_NE(s, 0.0f);
    for (int i = 0; i < ops::kQuantBlock; ++i) {
      const float v = row[i] / s, got = std::fabs(v - ops::weight_code(m, 0, i));
      for (int8_t level : ops::kQ4Levels) EXPECT_LE(got, std::fabs(v - level) + 1e-3f) << i;
    }
  }
  // Subnormal and huge blocks do not trip the quantizer (127 / peak overflows for the first).
  for (const float tiny : {1e-40f, 3e38f}) {
    for (int i = 0; i < ops::kQuantBlock; ++i) row[i] = tiny * float(i % 7 - 3) / 3.0f;
    ops::quantize_row_q4(row, ops::kQuantBlock, packed, &scale);
    EXPECT_TRUE(std::isfinite(f16_to_f32(scale))) << tiny;
  }
  // Negative peaks get a negative scale.
  for (int i = 0; i < ops::kQuantBlock; ++i) row[i] = -d * ops::kQ4Levels[(i * 7) % 16];
  ops::quantize_row_q4(row, ops::kQuantBlock, packed, &scale);
  EXPECT_LT(f16_to_f32(scale), 0.0f);
  for (int i = 0; i < ops::kQuantBlock; ++i) EXPECT_NEAR(m.at(0, i), row[i], 1e-5f) << i;
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
  EXPECT_EQ(j["kv_cache"], "f32");
  // A model against itself with a bf16 cache: close (a logit moves by about 0.01 on these
  // fixtures), not identical.
  ASSERT_EQ(test::run_command(
                whale + " compare " + in + " " + in + " --tokens 16 --kv-cache bf16 --json", &text),
            0)
      << text;
  const auto kv = nlohmann::json::parse(text);
  EXPECT_EQ(kv["kv_cache"], "bf16");
  EXPECT_GE(kv["top1_agreement"].get<double>(), 0.9);
  EXPECT_LT(kv["mean_kl"].get<double>(), 0.01);
  EXPECT_GT(kv["max_abs_logit_diff"].get<double>(), 0.0);
  // Read a token at a time with an f32 cache, a model is its own reference: decode's kernels and
  // attention form give prefill's logits.
  ASSERT_EQ(test::run_command(whale + " compare " + in + " " + in + " --tokens 16 --decode --json",
                              &text),
            0)
      << text;
  const auto decoded = nlohmann::json::parse(text);
  EXPECT_EQ(decoded["decode"], true);
  EXPECT_EQ(decoded["positions"], 16);
  EXPECT_EQ(decoded["top1_agreement"].get<double>(), 1.0);
  EXPECT_LT(decoded["max_abs_logit_diff"].get<double>(), 1e-4);
  EXPECT_EQ(test::run_command(whale + " quantize " + in + " " + tmp.file("y") + " --type q3", &text), 2);
  EXPECT_NE(text.find("unknown type 'q3'"), std::string::npos) << text;
  EXPECT_EQ(test::run_command(whale + " compare " + in + " " + test::fixture_dir("v2_lite"), &text), 2);
  EXPECT_NE(text.find("different vocabularies"), std::string::npos) << text;
}

// whale compare --text scores a text's tokens (by the reference's tokenizer) in independent
// sequences of --window positions.
TEST(Quantize, CompareScoresATextInWindows) {
  test::TempDir tmp;
  const std::string whale = WHALE_BINARY;
  const std::string in = std::string(WHALE_SOURCE_DIR) + "/models/whale-mini";
  const std::string out = tmp.file("q8");
  std::string text;
  ASSERT_EQ(
      test::run_command(whale + " quantize " + in + " " + out + " --type q8 2>/dev/null", &text), 0)
      << text;
  const std::string passage = tmp.file("passage.txt");
  test::write_file(passage,
                   "In the beginning God created the heavens and the earth. "
                   "It is a truth universally acknowledged, that a single man in "
                   "possession of a good fortune, must be in want of a wife.");
  ASSERT_EQ(test::run_command(
                whale + " compare " + in + " " + out + " --text " + passage + " --window 8 --json",
                &text),
            0)
      << text;
  const auto j = nlohmann::json::parse(text);
  EXPECT_EQ(j["window"], 8);
  EXPECT_EQ(j["text"], passage);
  EXPECT_GT(j["positions"].get<int64_t>(), 20);  // every token of the passage
  EXPECT_GE(j["top1_agreement"].get<double>(), 0.8);
  EXPECT_LT(j["mean_kl"].get<double>(), 0.05);
  ASSERT_EQ(test::run_command(
                whale + " compare " + in + " " + out + " --text " + passage + " --tokens 5 --json",
                &text),
            0)
      << text;
  EXPECT_EQ(nlohmann::json::parse(text)["positions"], 5);

  EXPECT_EQ(test::run_command(
                whale + " compare " + in + " " + out + " --text " + tmp.file("absent.txt"), &text),
            2);
  EXPECT_NE(text.find("absent.txt"), std::string::npos) << text;
  test::write_file(tmp.file("empty.txt"), "");
  EXPECT_EQ(test::run_command(
                whale + " compare " + in + " " + out + " --text " + tmp.file("empty.txt"), &text),
            2);
  EXPECT_NE(text.find("the text has no tokens"), std::string::npos) << text;
}

}  // namespace
}  // namespace whale
