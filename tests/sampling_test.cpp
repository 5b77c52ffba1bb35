// Samplers against their definitions: exact distributions on synthetic logits, and draws that
// follow them (chi-square with a fixed seed).
#include <gtest/gtest.h>

#include <cmath>
#include <numeric>

#include "sampling/sampler.h"

namespace whale::sampling {
namespace {

const std::vector<float> kLogits = {2.0f, 1.0f, 0.5f, 0.0f, -1.0f, 3.0f, 0.25f, -0.5f};

std::vector<double> softmax(const std::vector<float>& l, double t) {
  std::vector<double> p(l.size());
  double m = *std::max_element(l.begin(), l.end()), s = 0;
  for (size_t i = 0; i < l.size(); ++i) s += p[i] = std::exp((l[i] - m) / t);
  for (double& x : p) x /= s;
  return p;
}

std::vector<double> distribution(const SamplingParams& p, std::vector<float> logits = kLogits,
                                 std::vector<int32_t> prompt = {}) {
  Sampler s(p, static_cast<int64_t>(logits.size()));
  return s.distribution(logits, prompt);
}

void expect_dist(const std::vector<double>& got, const std::vector<double>& want) {
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i) EXPECT_NEAR(got[i], want[i], 1e-6) << "token " << i;
}

// Keeps only `ids` of p and renormalises.
std::vector<double> restrict(std::vector<double> p, const std::vector<int>& ids) {
  std::vector<double> q(p.size(), 0.0);
  double s = 0;
  for (int i : ids) s += p[static_cast<size_t>(i)];
  for (int i : ids) q[static_cast<size_t>(i)] = p[static_cast<size_t>(i)] / s;
  return q;
}

TEST(Sampling, TemperatureIsSoftmaxOfScaledLogits) {
  SamplingParams p;
  p.top_p = 1.0f;
  p.temperature = 0.7f;
  expect_dist(distribution(p), softmax(kLogits, 0.7));
}

TEST(Sampling, TopKTopPMinP) {
  SamplingParams p;
  p.temperature = 1.0f;
  p.top_p = 1.0f;
  p.top_k = 3;  // ids 5 (3.0), 0 (2.0), 1 (1.0)
  expect_dist(distribution(p), restrict(softmax(kLogits, 1), {5, 0, 1}));
  p.top_k = 0;
  // Sorted probabilities: id5 .547, id0 .201, id1 .074, ... top_p 0.7 needs ids 5 and 0.
  p.top_p = 0.7f;
  expect_dist(distribution(p), restrict(softmax(kLogits, 1), {5, 0}));
  p.top_p = 1.0f;
  p.min_p = 0.1f;  // keep p >= 0.0547: ids 5, 0, 1
  expect_dist(distribution(p), restrict(softmax(kLogits, 1), {5, 0, 1}));
}

TEST(Sampling, PenaltiesAndBias) {
  SamplingParams p;
  p.temperature = 1.0f;
  p.top_p = 1.0f;
  p.logit_bias = {{4, 5.0f}};
  auto l = kLogits;
  l[4] += 5.0f;
  expect_dist(distribution(p), softmax(l, 1));

  p.logit_bias.clear();
  p.repetition_penalty = 2.0f;  // prompt holds ids 5 (positive) and 4 (negative)
  l = kLogits;
  l[5] /= 2.0f;
  l[4] *= 2.0f;
  expect_dist(distribution(p, kLogits, {5, 4}), softmax(l, 1));
}

TEST(Sampling, FrequencyAndPresenceCountGeneratedTokens) {
  SamplingParams p;
  p.temperature = 0.0f;
  p.frequency_penalty = 0.6f;
  p.presence_penalty = 0.5f;
  Sampler s(p, 8);
  std::vector<float> l = kLogits;
  EXPECT_EQ(s.sample(l, {}), 5);  // 3.0 wins
  l = kLogits;
  EXPECT_EQ(s.sample(l, {}), 0);  // id5 now 3.0 - 0.6 - 0.5 = 1.9, below id0's 2.0
  l = kLogits;
  // id5 1.9, id0 2.0 - 1.1 = 0.9: id5 wins again; then 3.0 - 1.2 - 0.5 = 1.3 < id1's 1.0? no.
  EXPECT_EQ(s.sample(l, {}), 5);
  l = kLogits;
  EXPECT_EQ(s.sample(l, {}), 5);  // 3.0 - 2·0.6 - 0.5 = 1.3 beats id1 (1.0) and id0 (0.9)
}

TEST(Sampling, GreedyIsArgmaxWithLowestIdOnTies) {
  SamplingParams p;
  p.temperature = 0.0f;
  Sampler s(p, 4);
  std::vector<float> l = {1.0f, 5.0f, 5.0f, 0.0f};
  EXPECT_EQ(s.sample(l, {}), 1);
}

TEST(Sampling, DrawsFollowTheDistribution) {
  // Chi-square goodness of fit over 20,000 draws; 7 degrees of freedom, critical value at
  // p = 0.001 is 24.32. With a fixed seed the outcome is deterministic.
  for (float t : {0.5f, 1.0f, 1.5f}) {
    SamplingParams p;
    p.temperature = t;
    p.top_p = 1.0f;
    p.seed = 1234;
    Sampler s(p, 8);
    const auto want = softmax(kLogits, t);
    std::vector<int> counts(8, 0);
    const int n = 20000;
    for (int i = 0; i < n; ++i) {
      std::vector<float> l = kLogits;
      counts[static_cast<size_t>(s.sample(l, {}))]++;
    }
    double chi2 = 0;
    for (size_t i = 0; i < 8; ++i) {
      const double e = want[i] * n;
      chi2 += (counts[i] - e) * (counts[i] - e) / e;
    }
    EXPECT_LT(chi2, 24.32) << "temperature " << t;
  }
}

TEST(Sampling, SameSeedSameTokensOtherSeedOthers) {
  auto run = [](uint64_t seed) {
    SamplingParams p;
    p.temperature = 1.0f;
    p.top_p = 1.0f;
    p.seed = seed;
    Sampler s(p, 8);
    std::vector<int32_t> out;
    for (int i = 0; i < 64; ++i) {
      std::vector<float> l = kLogits;
      out.push_back(s.sample(l, {}));
    }
    return out;
  };
  EXPECT_EQ(run(7), run(7));
  EXPECT_NE(run(7), run(8));
}

TEST(Sampling, ValidateNamesTheBadField) {
  auto field_of = [](SamplingParams p) {
    auto s = validate(p, 100);
    return s.ok() ? std::string() : s.error().field;
  };
  SamplingParams p;
  EXPECT_EQ(field_of(p), "");
  p.temperature = -1;
  EXPECT_EQ(field_of(p), "temperature");
  p = {};
  p.temperature = NAN;
  EXPECT_EQ(field_of(p), "temperature");
  p = {};
  p.top_p = 1.5f;
  EXPECT_EQ(field_of(p), "top_p");
  p = {};
  p.top_k = -5;
  EXPECT_EQ(field_of(p), "top_k");
  p = {};
  p.min_p = 2;
  EXPECT_EQ(field_of(p), "min_p");
  p = {};
  p.frequency_penalty = 3;
  EXPECT_EQ(field_of(p), "frequency_penalty");
  p = {};
  p.logit_bias = {{100, 1.0f}};
  EXPECT_EQ(field_of(p), "logit_bias");
}

}  // namespace
}  // namespace whale::sampling
