// Router selection on hand-made logits, each case worked out from the definitions.
#include <gtest/gtest.h>

#include <cmath>

#include "model/moe.h"

namespace whale::model {
namespace {

ModelConfig router_config(TopkMethod method, ScoringFunc scoring, int64_t experts, int64_t groups,
                          int64_t topk_group, int64_t k, bool norm, double scale) {
  ModelConfig c;
  c.family = scoring == ScoringFunc::kSigmoid ? Family::kDeepseekV3 : Family::kDeepseekV2;
  c.n_routed_experts = experts;
  c.n_group = groups;
  c.topk_group = topk_group;
  c.num_experts_per_tok = k;
  c.topk_method = method;
  c.scoring_func = scoring;
  c.norm_topk_prob = norm;
  c.routed_scaling_factor = scale;
  return c;
}

float sigmoid(float x) { return 1.0f / (1.0f + std::exp(-x)); }

TEST(Router, NoauxTcRanksGroupsByTopTwoSumAndWeighsUnbiased) {
  // 8 experts in 4 groups of 2; keep 2 groups; pick 2.
  const ModelConfig c =
      router_config(TopkMethod::kNoauxTc, ScoringFunc::kSigmoid, 8, 4, 2, 2, true, 2.5);
  const float logits[8] = {3.0f, -3.0f, 1.0f, 1.0f, 0.5f, 0.4f, -1.0f, 2.5f};
  // Bias lifts expert 5 so group 2 (experts 4, 5) beats group 3 (6, 7) on the biased top-2 sum.
  const float bias[8] = {0, 0, 0, 0, 0, 0.6f, 0, 0};
  int32_t idx[2];
  float w[2];
  route_token(c, logits, bias, idx, w);
  // Group sums (biased): g0 = σ(3)+σ(-3) = 1.0, g1 = 2σ(1) = 1.462, g2 = σ(.5)+σ(.4)+.6 = 1.821,
  // g3 = σ(-1)+σ(2.5) = 1.193 → keep g2, g1. Best biased experts there: 5 (1.199), then 2 or 3.
  EXPECT_EQ(idx[0], 5);
  EXPECT_EQ(idx[1], 2);  // tie with 3 goes to the lower index
  const float s5 = sigmoid(0.4f), s2 = sigmoid(1.0f);
  EXPECT_NEAR(w[0], 2.5f * s5 / (s5 + s2), 1e-6);  // unbiased weights, normalised, scaled
  EXPECT_NEAR(w[1], 2.5f * s2 / (s5 + s2), 1e-6);
}

TEST(Router, GreedySoftmaxWithoutNormalisation) {
  const ModelConfig c =
      router_config(TopkMethod::kGreedy, ScoringFunc::kSoftmax, 4, 1, 1, 2, false, 1.0);
  const float logits[4] = {0.0f, 2.0f, 1.0f, -1.0f};
  int32_t idx[2];
  float w[2];
  route_token(c, logits, nullptr, idx, w);
  const double z = 1 + std::exp(2.0) + std::exp(1.0) + std::exp(-1.0);
  EXPECT_EQ(idx[0], 1);
  EXPECT_EQ(idx[1], 2);
  EXPECT_NEAR(w[0], std::exp(2.0) / z, 1e-6);
  EXPECT_NEAR(w[1], std::exp(1.0) / z, 1e-6);
}

TEST(Router, GroupLimitedGreedyRanksGroupsByMax) {
  // 6 experts in 3 groups of 2; keep 1 group; pick 2; scale 16.
  const ModelConfig c = router_config(TopkMethod::kGroupLimitedGreedy, ScoringFunc::kSoftmax, 6, 3,
                                      1, 2, false, 16.0);
  // Group 0 has the single best expert (0) but group 1 would win on a sum.
  const float logits[6] = {3.0f, -5.0f, 2.5f, 2.5f, 0.0f, 0.0f};
  int32_t idx[2];
  float w[2];
  route_token(c, logits, nullptr, idx, w);
  EXPECT_EQ(idx[0], 0);
  EXPECT_EQ(idx[1], 1);  // the only other expert of the kept group
  double z = 0;
  for (float l : logits) z += std::exp(double(l));
  EXPECT_NEAR(w[0], 16 * std::exp(3.0) / z, 1e-5);
  EXPECT_NEAR(w[1], 16 * std::exp(-5.0) / z, 1e-6);
}

TEST(Router, V2NormalisesInsteadOfScaling) {
  // DeepSeek's V2 code: with norm_topk_prob and top-k > 1 the weights are normalised and the
  // routed_scaling_factor is not applied.
  const ModelConfig c =
      router_config(TopkMethod::kGreedy, ScoringFunc::kSoftmax, 4, 1, 1, 2, true, 16.0);
  const float logits[4] = {0.0f, 2.0f, 1.0f, -1.0f};
  int32_t idx[2];
  float w[2];
  route_token(c, logits, nullptr, idx, w);
  EXPECT_NEAR(w[0], std::exp(2.0) / (std::exp(2.0) + std::exp(1.0)), 1e-6);
  EXPECT_NEAR(w[0] + w[1], 1.0, 1e-6);
}

}  // namespace
}  // namespace whale::model
