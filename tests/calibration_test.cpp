// Calibration for the quantizers: what measure_importance records is the mean square of each
// matrix's inputs, and `whale quantize --calibration` carries it into the weights it writes.
#include "model/calibration.h"

#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <random>

#include "model/quantize.h"
#include "ops/quant.h"
#include "ops/ref/ref_backend.h"
#include "tests/test_util.h"

namespace whale {
namespace {

// Σ over the row's elements of importance · (x − its quantized value)², for one format.
double weighted_error(const std::vector<float>& x, const std::vector<float>& importance, bool q4,
                      const float* used_importance) {
  const auto n = static_cast<int64_t>(x.size());
  std::vector<uint8_t> bytes(static_cast<size_t>(q4 ? n / 2 : n));
  std::vector<uint16_t> scales(static_cast<size_t>(n / ops::kQuantBlock));
  if (q4) {
    ops::quantize_row_q4(x.data(), n, bytes.data(), scales.data(), used_importance);
  } else {
    ops::quantize_row_q8(x.data(), n, reinterpret_cast<int8_t*>(bytes.data()), scales.data(),
                         used_importance);
  }
  ops::Matrix m;
  m.format = q4 ? ops::WeightFormat::kQ4 : ops::WeightFormat::kQ8;
  m.dtype = q4 ? DType::kU8 : DType::kI8;
  m.data = bytes.data();
  m.rows = 1;
  m.cols = n;
  m.scale = scales.data();
  m.scale_dtype = DType::kF16;
  m.scale_cols = n / ops::kQuantBlock;
  m.block_rows = 1;
  m.block_cols = ops::kQuantBlock;
  double err = 0;
  for (int64_t c = 0; c < n; ++c) {
    const double e = double(x[c]) - double(m.at(0, c));
    err += importance[c] * e * e;
  }
  return err;
}

// The quantizers choose each block's scale for the least error weighed by the importance given:
// a uniform importance (a power of two, so every weighted sum scales exactly) changes nothing,
// and an uneven one lowers the error it weighs.
TEST(Calibration, ImportanceWeighsTheQuantizersErrors) {
  std::mt19937 rng(11);
  std::student_t_distribution<float> t5(5);
  const int64_t n = 64 * ops::kQuantBlock;
  std::vector<float> x(n), uniform(n, 2.0f), uneven(n);
  for (float& v : x) v = 0.02f * t5(rng);
  // A few columns per block carry most of the activations' energy, as in trained models.
  for (int64_t c = 0; c < n; ++c) uneven[c] = (rng() % 8 == 0) ? 50.0f : 1.0f;
  for (const bool q4 : {true, false}) {
    SCOPED_TRACE(q4 ? "q4" : "q8");
    EXPECT_EQ(weighted_error(x, uneven, q4, uniform.data()),
              weighted_error(x, uneven, q4, nullptr));
    const double plain = weighted_error(x, uneven, q4, nullptr);
    const double weighed = weighted_error(x, uneven, q4, uneven.data());
    // Measured: q4 0.65, q8 0.66 of the plain error.
    EXPECT_LT(weighed, 0.8 * plain);
  }
}

// The layer-0 attention input does not depend on the context: rmsnorm(embedding) ⊙ weight, which
// the test computes by hand for each id. The output head sees every position; the routed experts
// of a MoE layer see top-k rows per token between them; the MTP module is not run.
TEST(Calibration, RecordsTheMeanSquareOfEachMatrixsInputs) {
  auto m = model::Model::load(test::fixture_dir("v3_yarn"));
  ASSERT_TRUE(m.ok()) << m.error().to_string();
  const model::ModelConfig& c = m->config();
  std::vector<int32_t> ids(23);
  std::mt19937 rng(5);
  for (int32_t& id : ids) id = static_cast<int32_t>(rng() % c.vocab_size);
  ops::RefBackend ref;
  auto table = model::measure_importance(*m, ref, ids, /*window=*/8);  // three windows
  ASSERT_TRUE(table.ok()) << table.error().to_string();

  const model::ModelWeights& w = m->weights();
  std::vector<double> expected(c.hidden_size, 0.0);
  for (int32_t id : ids) {
    double ss = 0;
    for (int64_t j = 0; j < c.hidden_size; ++j) ss += double(w.embed.at(id, j)) * w.embed.at(id, j);
    const double inv = 1.0 / std::sqrt(ss / double(c.hidden_size) + c.rms_norm_eps);
    for (int64_t j = 0; j < c.hidden_size; ++j) {
      const double v = w.embed.at(id, j) * inv * w.layers[0].attn_norm.at(0, j);
      expected[j] += v * v / double(ids.size());
    }
  }
  for (const char* name : {"model.layers.0.self_attn.q_a_proj.weight",
                           "model.layers.0.self_attn.kv_a_proj_with_mqa.weight"}) {
    SCOPED_TRACE(name);
    ASSERT_EQ(table->count(name), 1u);
    const model::ColumnImportance& got = table->at(name);
    EXPECT_EQ(got.rows, static_cast<int64_t>(ids.size()));
    ASSERT_EQ(got.mean_square.size(), expected.size());
    for (size_t j = 0; j < expected.size(); ++j) {
      EXPECT_NEAR(got.mean_square[j], expected[j], 1e-4 * expected[j] + 1e-9) << j;
    }
  }
  EXPECT_EQ(table->at("lm_head.weight").rows, static_cast<int64_t>(ids.size()));
  EXPECT_EQ(table->at("model.layers.0.mlp.down_proj.weight").mean_square.size(),
            static_cast<size_t>(c.intermediate_size));
  int64_t expert_rows = 0;
  for (int64_t e = 0; e < c.n_routed_experts; ++e) {
    const auto it =
        table->find("model.layers.1.mlp.experts." + std::to_string(e) + ".up_proj.weight");
    if (it != table->end()) expert_rows += it->second.rows;
  }
  EXPECT_EQ(expert_rows, static_cast<int64_t>(ids.size()) * c.num_experts_per_tok);
  EXPECT_EQ(table->count("model.layers.1.mlp.gate.weight"), 1u);  // the router's input too
  const std::string mtp = "model.layers." + std::to_string(c.num_hidden_layers) + ".eh_proj.weight";
  EXPECT_EQ(table->count(mtp), 0u);

  EXPECT_FALSE(model::measure_importance(*m, ref, {}, 8).ok());
}

// Quantized with calibration, the matrices the calibration reached are written for the least
// error weighed by what it measured (lower than without it), and config.json says which text.
TEST(Calibration, QuantizeWritesWeightsForTheMeasuredInputs) {
  const std::string in = test::fixture_dir("v3_yarn");
  auto m = model::Model::load(in);
  ASSERT_TRUE(m.ok()) << m.error().to_string();
  std::vector<int32_t> ids(64);
  std::mt19937 rng(9);
  for (int32_t& id : ids) id = static_cast<int32_t>(rng() % m->config().vocab_size);
  ops::RefBackend ref;
  model::Calibration cal;
  auto table = model::measure_importance(*m, ref, ids, 32);
  ASSERT_TRUE(table.ok());
  cal.importance = *table;
  cal.text = "ids";
  cal.tokens = 64;

  test::TempDir tmp;
  ThreadPool pool(2);
  const std::string plain = tmp.file("plain"), calibrated = tmp.file("calibrated");
  ASSERT_TRUE(model::quantize_checkpoint(in, plain, model::QuantRecipe::kQ4, pool, {}).ok());
  auto r = model::quantize_checkpoint(in, calibrated, model::QuantRecipe::kQ4, pool, {}, &cal);
  ASSERT_TRUE(r.ok()) << r.error().to_string();

  const auto config = nlohmann::json::parse(test::read_file(calibrated + "/config.json"));
  EXPECT_EQ(config["whale_quantization"]["calibration"]["text"], "ids");
  EXPECT_EQ(config["whale_quantization"]["calibration"]["tokens"], 64);
  EXPECT_FALSE(
      nlohmann::json::parse(test::read_file(plain + "/config.json"))["whale_quantization"].contains(
          "calibration"));

  auto a = model::Model::load(plain), b = model::Model::load(calibrated);
  ASSERT_TRUE(a.ok() && b.ok());
  // Weighed by the measured importance, over a q4 matrix (the shared expert's gate) and a q8 one
  // (layer 0's q_a).
  struct Probe {
    const char* name;
    const ops::Matrix& (*pick)(const model::ModelWeights&);
  };
  const Probe probes[] = {
      {"model.layers.2.mlp.shared_experts.gate_proj.weight",
       [](const model::ModelWeights& w) -> const ops::Matrix& {
         return w.layers[2].experts.shared.gate;
       }},
      {"model.layers.0.self_attn.q_a_proj.weight",
       [](const model::ModelWeights& w) -> const ops::Matrix& { return w.layers[0].attn.q_a; }},
  };
  for (const Probe& p : probes) {
    SCOPED_TRACE(p.name);
    const std::vector<float>& imp = cal.importance.at(p.name).mean_square;
    const ops::Matrix &orig = p.pick(m->weights()), &qa = p.pick(a->weights()),
                      &qb = p.pick(b->weights());
    ASSERT_TRUE(qa.quantized() && qb.quantized());
    EXPECT_EQ(qa.format, qb.format);
    double ea = 0, eb = 0;
    for (int64_t row = 0; row < orig.rows; ++row) {
      for (int64_t col = 0; col < orig.cols; ++col) {
        const double x = orig.at(row, col);
        ea += imp[col] * (x - qa.at(row, col)) * (x - qa.at(row, col));
        eb += imp[col] * (x - qb.at(row, col)) * (x - qb.at(row, col));
      }
    }
    EXPECT_LT(eb, ea);
  }
}

// whale quantize --calibration: the text goes through the input model's tokenizer; bad files
// get a clear message and exit 2.
TEST(Calibration, CommandLine) {
  test::TempDir tmp;
  const std::string whale = WHALE_BINARY;
  const std::string in = std::string(WHALE_SOURCE_DIR) + "/models/whale-mini";
  const std::string passage = tmp.file("passage.txt");
  test::write_file(passage,
                   "In the beginning God created the heavens and the earth. And the earth was "
                   "without form, and void; and darkness was upon the face of the deep.");
  std::string text;
  ASSERT_EQ(
      test::run_command(whale + " quantize " + in + " " + tmp.file("q4") +
                            " --type q4 --calibration " + passage + " --calibration-tokens 12 2>&1",
                        &text),
      0)
      << text;
  EXPECT_NE(text.find("calibrating: 12 tokens"), std::string::npos) << text;
  const auto config = nlohmann::json::parse(test::read_file(tmp.file("q4") + "/config.json"));
  EXPECT_EQ(config["whale_quantization"]["calibration"]["text"], "passage.txt");
  EXPECT_EQ(config["whale_quantization"]["calibration"]["tokens"], 12);

  EXPECT_EQ(test::run_command(whale + " quantize " + in + " " + tmp.file("x") +
                                  " --type q4 --calibration " + tmp.file("absent.txt"),
                              &text),
            2);
  EXPECT_NE(text.find("absent.txt"), std::string::npos) << text;
  test::write_file(tmp.file("empty.txt"), "");
  EXPECT_EQ(test::run_command(whale + " quantize " + in + " " + tmp.file("y") +
                                  " --type q4 --calibration " + tmp.file("empty.txt"),
                              &text),
            2);
  EXPECT_NE(text.find("the text has no tokens"), std::string::npos) << text;
  EXPECT_FALSE(std::filesystem::exists(tmp.file("y")));
  // A model without tokenizer files cannot read the text.
  EXPECT_EQ(test::run_command(whale + " quantize " + test::fixture_dir("v3_fp8") + " " +
                                  tmp.file("z") + " --type q4 --calibration " + passage,
                              &text),
            2);
  EXPECT_NE(text.find("tokenizer.json not found"), std::string::npos) << text;
}

}  // namespace
}  // namespace whale
