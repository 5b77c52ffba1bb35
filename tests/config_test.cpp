#include "model/config.h"

#include <gtest/gtest.h>

#include <cmath>
#include <nlohmann/json.hpp>

#include "model/model_info.h"
#include "model/rope_yarn.h"
#include "tests/test_util.h"

namespace whale::model {
namespace {

using nlohmann::json;

json v3_json() {
  return json::parse(
      test::read_file(std::string(WHALE_TEST_DATA_DIR) + "/deepseek_v3_config/config.json"));
}

// The error text for a config, or "" if it parses.
std::string error_of(const json& j) {
  auto c = parse_config(j.dump(), "config.json");
  return c.ok() ? "" : c.error().to_string();
}

TEST(Config, ParsesRealV3Values) {
  auto c = parse_config(v3_json().dump(), "config.json");
  ASSERT_TRUE(c.ok()) << c.error().to_string();
  EXPECT_EQ(c->family, Family::kDeepseekV3);
  EXPECT_EQ(c->q_lora_rank, 1536);
  EXPECT_EQ(c->topk_method, TopkMethod::kNoauxTc);
  ASSERT_TRUE(c->rope_scaling.has_value());
  EXPECT_EQ(c->rope_scaling->factor, 40);
  ASSERT_TRUE(c->fp8.has_value());
  EXPECT_EQ(c->fp8->block_rows, 128);
  EXPECT_FALSE(c->fp8->scale_ue8m0);
  EXPECT_FALSE(c->is_moe_layer(2));
  EXPECT_TRUE(c->is_moe_layer(3));
  EXPECT_TRUE(c->is_moe_layer(61));
}

TEST(Config, RealV3SizesMatchPublishedFigures) {
  auto c = parse_config(v3_json().dump(), "config.json");
  ASSERT_TRUE(c.ok());
  const ModelSummary s = summarize(*c, nullptr);
  EXPECT_NEAR(double(s.params_total), 671.0e9, 0.1e9);  // "671B total"
  EXPECT_NEAR(double(s.params_active), 37.5e9, 0.6e9);  // "37B activated"
  EXPECT_EQ(s.kv_cache_bytes_per_token_bf16, 70272);    // 61 × 576 × 2
  EXPECT_EQ(s.dense_layers, 3);
  EXPECT_EQ(s.moe_layers, 58);
}

TEST(Config, YarnTablesMatchTheSpec) {
  auto c = parse_config(v3_json().dump(), "config.json");
  ASSERT_TRUE(c.ok());
  const RopeTables t = make_rope_tables(*c);
  ASSERT_EQ(t.inv_freq.size(), 32u);
  EXPECT_NEAR(t.inv_freq[0], 1.0, 1e-7);
  EXPECT_NEAR(t.inv_freq[10], 0.0562341, 1e-6);
  EXPECT_NEAR(t.inv_freq[23], 3.33380e-5, 1e-9);
  EXPECT_NEAR(t.inv_freq[31], 3.33380e-6, 1e-10);
  EXPECT_FLOAT_EQ(t.amplitude, 1.0f);
  EXPECT_NEAR(attention_softmax_scale(*c), 0.13523378, 1e-6);

  json v2 = json::parse(
      test::read_file(std::string(WHALE_TEST_DATA_DIR) + "/deepseek_v2_lite_config/config.json"));
  auto c2 = parse_config(v2.dump(), "config.json");
  ASSERT_TRUE(c2.ok()) << c2.error().to_string();
  EXPECT_NEAR(attention_softmax_scale(*c2), 0.11472139, 1e-6);
  EXPECT_FALSE(c2->q_lora_rank.has_value());
  EXPECT_EQ(c2->topk_method, TopkMethod::kGreedy);
}

TEST(Config, UnknownModelType) {
  json j = v3_json();
  j["model_type"] = "llama";
  EXPECT_NE(error_of(j).find("model_type: unsupported model_type \"llama\""), std::string::npos)
      << error_of(j);
}

TEST(Config, MissingAndIllTypedFields) {
  json j = v3_json();
  j.erase("hidden_size");
  EXPECT_NE(error_of(j).find("hidden_size: required field is missing"), std::string::npos);
  j = v3_json();
  j["hidden_size"] = "7168";
  EXPECT_NE(error_of(j).find("hidden_size: must be an integer, got string"), std::string::npos);
  j = v3_json();
  j["num_hidden_layers"] = -1;
  EXPECT_NE(error_of(j).find("num_hidden_layers"), std::string::npos);
  j = v3_json();
  j["rope_scaling"]["factor"] = "forty";
  EXPECT_NE(error_of(j).find("rope_scaling.factor: must be a number"), std::string::npos);
  j = v3_json();
  j.erase("q_lora_rank");
  EXPECT_NE(error_of(j).find("q_lora_rank: required field is missing"), std::string::npos);
  j = v3_json();
  j["quantization_config"]["weight_block_size"] = {128};
  EXPECT_NE(error_of(j).find("quantization_config.weight_block_size"), std::string::npos);
  j = v3_json();
  j["hidden_size"] = 1e30;
  EXPECT_NE(error_of(j).find("hidden_size"), std::string::npos);
  j = v3_json();
  j["vocab_size"] = 99999999999999ll;
  EXPECT_NE(error_of(j).find("vocab_size"), std::string::npos);
  EXPECT_NE(error_of(json::array()).find("must be a JSON object"), std::string::npos);
  auto bad = parse_config("{\"model_type\": ", "config.json");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.error().to_string().find("not valid JSON"), std::string::npos);
}

TEST(Config, InconsistentValues) {
  json j = v3_json();
  j["n_group"] = 7;  // 256 experts do not split into 7 groups
  EXPECT_NE(error_of(j).find("n_group: n_routed_experts (256) is not divisible by n_group (7)"),
            std::string::npos)
      << error_of(j);
  j = v3_json();
  j["topk_group"] = 1;
  j["num_experts_per_tok"] = 40;  // one group holds 32 experts
  EXPECT_NE(error_of(j).find("num_experts_per_tok: top-k 40 is larger than the 32 experts"),
            std::string::npos)
      << error_of(j);
  j = v3_json();
  j["topk_group"] = 9;
  EXPECT_NE(error_of(j).find("topk_group"), std::string::npos);
  j = v3_json();
  j["qk_rope_head_dim"] = 63;
  EXPECT_NE(error_of(j).find("qk_rope_head_dim: must be even"), std::string::npos);
  j = v3_json();
  j["scoring_func"] = "softmax";
  EXPECT_NE(error_of(j).find("deepseek_v3 routes with"), std::string::npos);
  j = v3_json();
  j["rope_scaling"]["type"] = "dynamic";
  EXPECT_NE(error_of(j).find("unsupported rope scaling"), std::string::npos);
  j = v3_json();
  j["quantization_config"]["quant_method"] = "gptq";
  EXPECT_NE(error_of(j).find("quantization_config.quant_method"), std::string::npos);
}

TEST(Config, HugeButInRangeValuesAreRejectedCheaply) {
  json j = v3_json();
  j["n_routed_experts"] = 0;
  EXPECT_NE(error_of(j).find("n_routed_experts: must be in [1,"), std::string::npos) << error_of(j);
  j = v3_json();
  j["num_hidden_layers"] = 1000000000;
  EXPECT_NE(error_of(j).find("num_hidden_layers: must be at most 256"), std::string::npos)
      << error_of(j);
  j = v3_json();
  j["num_hidden_layers"] = 256;
  j["n_routed_experts"] = 1024;
  j["n_group"] = 8;
  EXPECT_NE(error_of(j).find("layers × experts"), std::string::npos) << error_of(j);
  j = v3_json();
  j["hidden_size"] = 1 << 20;
  j["intermediate_size"] = 1 << 20;
  j["vocab_size"] = 1 << 24;
  EXPECT_NE(error_of(j).find("parameters, beyond any model"), std::string::npos) << error_of(j);
  j = v3_json();
  j["eos_token_id"] = "x";
  EXPECT_NE(error_of(j).find("eos_token_id: must be an integer"), std::string::npos) << error_of(j);
  j["eos_token_id"] = {1, 2};
  EXPECT_EQ(error_of(j), "");
  j["rope_parameters"] = 5;
  EXPECT_NE(error_of(j).find("rope_parameters: must be an object"), std::string::npos);
}

TEST(Config, YarnWithoutMscaleFollowsTransformers) {
  // transformers: mscale absent → attention factor 0.1·ln(factor) + 1, not a ratio.
  json j = v3_json();
  j["rope_scaling"].erase("mscale");
  auto c = parse_config(j.dump(), "config.json");
  ASSERT_TRUE(c.ok());
  EXPECT_NEAR(make_rope_tables(*c).amplitude, 0.1 * std::log(40.0) + 1, 1e-6);
}

TEST(Config, AcceptsV31ScaleFormatAndRopeParameters) {
  json j = v3_json();
  j["quantization_config"]["scale_fmt"] = "ue8m0";
  auto c = parse_config(j.dump(), "config.json");
  ASSERT_TRUE(c.ok());
  EXPECT_TRUE(c->fp8->scale_ue8m0);

  // transformers v5 spelling.
  j = v3_json();
  json rp = j["rope_scaling"];
  rp.erase("type");
  rp["rope_type"] = "yarn";
  rp["rope_theta"] = 10000;
  j.erase("rope_scaling");
  j.erase("rope_theta");
  j["rope_parameters"] = rp;
  c = parse_config(j.dump(), "config.json");
  ASSERT_TRUE(c.ok()) << c.error().to_string();
  ASSERT_TRUE(c->rope_scaling.has_value());
  EXPECT_EQ(c->rope_scaling->factor, 40);
}

}  // namespace
}  // namespace whale::model
