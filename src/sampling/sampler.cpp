#include "sampling/sampler.h"

#include <algorithm>
#include <cmath>
#include <numeric>

namespace whale::sampling {

Status validate(const SamplingParams& p, int64_t vocab_size) {
  auto bad = [](const char* field, const std::string& why) { return make_error(why, field); };
  if (!std::isfinite(p.temperature) || p.temperature < 0 || p.temperature > 100) {
    return bad("temperature", "must be in [0, 100]");
  }
  if (p.top_k < 0) return bad("top_k", "must be 0 (off) or positive");
  if (!std::isfinite(p.top_p) || p.top_p <= 0 || p.top_p > 1)
    return bad("top_p", "must be in (0, 1]");
  if (!std::isfinite(p.min_p) || p.min_p < 0 || p.min_p > 1)
    return bad("min_p", "must be in [0, 1]");
  if (!std::isfinite(p.repetition_penalty) || p.repetition_penalty <= 0 ||
      p.repetition_penalty > 10) {
    return bad("repetition_penalty", "must be in (0, 10]");
  }
  if (!std::isfinite(p.frequency_penalty) || std::fabs(p.frequency_penalty) > 2) {
    return bad("frequency_penalty", "must be in [-2, 2]");
  }
  if (!std::isfinite(p.presence_penalty) || std::fabs(p.presence_penalty) > 2) {
    return bad("presence_penalty", "must be in [-2, 2]");
  }
  for (const auto& [id, bias] : p.logit_bias) {
    if (id < 0 || id >= vocab_size) {
      return bad("logit_bias", "token id " + std::to_string(id) + " is outside the vocabulary");
    }
    if (!std::isfinite(bias) || std::fabs(bias) > 100)
      return bad("logit_bias", "values must be in [-100, 100]");
  }
  return ok_status();
}

namespace {
uint64_t splitmix64(uint64_t& x) {
  uint64_t z = (x += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}
uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
}  // namespace

Rng::Rng(uint64_t seed) {
  for (auto& s : s_) s = splitmix64(seed);
}

uint64_t Rng::next() {
  const uint64_t result = rotl(s_[1] * 5, 7) * 9;
  const uint64_t t = s_[1] << 17;
  s_[2] ^= s_[0];
  s_[3] ^= s_[1];
  s_[1] ^= s_[2];
  s_[0] ^= s_[3];
  s_[2] ^= t;
  s_[3] = rotl(s_[3], 45);
  return result;
}

double Rng::uniform() { return static_cast<double>(next() >> 11) * 0x1.0p-53; }

Sampler::Sampler(SamplingParams params, int64_t vocab_size)
    : p_(std::move(params)),
      vocab_(vocab_size),
      rng_(p_.seed),
      counts_(static_cast<size_t>(vocab_size), 0),
      seen_(static_cast<size_t>(vocab_size), 0) {
  generated_.reserve(256);
}

void Sampler::apply_penalties(std::span<float> logits, std::span<const int32_t> prompt) const {
  for (const auto& [id, bias] : p_.logit_bias) logits[static_cast<size_t>(id)] += bias;
  if (p_.repetition_penalty != 1.0f) {
    // Each id of the prompt or the output once, however often it occurs.
    auto penalise = [&](int32_t id) {
      if (id < 0 || id >= vocab_ || seen_[static_cast<size_t>(id)]) return;
      seen_[static_cast<size_t>(id)] = 1;
      float& l = logits[static_cast<size_t>(id)];
      l = l > 0 ? l / p_.repetition_penalty : l * p_.repetition_penalty;
    };
    for (int32_t id : prompt) penalise(id);
    for (int32_t id : generated_) penalise(id);
    for (int32_t id : prompt) {
      if (id >= 0 && id < vocab_) seen_[static_cast<size_t>(id)] = 0;
    }
    for (int32_t id : generated_) seen_[static_cast<size_t>(id)] = 0;
  }
  if (p_.frequency_penalty != 0.0f || p_.presence_penalty != 0.0f) {
    for (int32_t id : generated_) {
      logits[static_cast<size_t>(id)] -=
          p_.frequency_penalty * static_cast<float>(counts_[static_cast<size_t>(id)]) +
          p_.presence_penalty;
    }
  }
}

std::vector<double> Sampler::distribution(std::span<float> logits,
                                          std::span<const int32_t> prompt) const {
  fill_distribution(logits, prompt);
  return prob_;
}

void Sampler::fill_distribution(std::span<float> logits, std::span<const int32_t> prompt) const {
  apply_penalties(logits, prompt);
  prob_.assign(logits.size(), 0.0);
  if (p_.temperature == 0.0f) {
    prob_[static_cast<size_t>(std::max_element(logits.begin(), logits.end()) - logits.begin())] =
        1.0;
    return;
  }
  // No full sort of the vocabulary: top-k takes the k largest with nth_element, and top-p
  // sorts only as long a prefix of the largest as it needs. Order: larger logit first, lower
  // id first among equals.
  auto by_logit = [&](int32_t a, int32_t b) {
    return logits[static_cast<size_t>(a)] > logits[static_cast<size_t>(b)] ||
           (logits[static_cast<size_t>(a)] == logits[static_cast<size_t>(b)] && a < b);
  };
  std::vector<int32_t>& cand = cand_;
  std::vector<double>& prob = raw_;
  cand.resize(logits.size());
  std::iota(cand.begin(), cand.end(), 0);
  prob.resize(logits.size());  // only the candidates' entries are written and read
  if (p_.top_k > 0 && static_cast<size_t>(p_.top_k) < cand.size()) {
    std::nth_element(cand.begin(), cand.begin() + p_.top_k, cand.end(), by_logit);
    cand.resize(static_cast<size_t>(p_.top_k));
  }
  float max_logit = -INFINITY;
  for (int32_t id : cand) max_logit = std::max(max_logit, logits[static_cast<size_t>(id)]);
  double sum = 0;
  for (int32_t id : cand) {
    const auto i = static_cast<size_t>(id);
    prob[i] = std::exp((double(logits[i]) - max_logit) / double(p_.temperature));
    sum += prob[i];
  }
  for (int32_t id : cand) prob[static_cast<size_t>(id)] /= sum;

  size_t keep = cand.size();
  if (p_.top_p < 1.0f) {
    // Sort a growing prefix until it holds top_p of the mass.
    for (size_t m = std::min<size_t>(64, cand.size());; m = std::min(cand.size(), m * 4)) {
      std::partial_sort(cand.begin(), cand.begin() + static_cast<long>(m), cand.end(), by_logit);
      double cum = 0;
      size_t n = 0;
      while (n < m && cum < p_.top_p) cum += prob[static_cast<size_t>(cand[n++])];
      if (cum >= p_.top_p || m == cand.size()) {
        keep = n;
        break;
      }
    }
  }
  if (p_.min_p > 0.0f) {
    // The largest probability is the first candidate once sorted, else found by a scan.
    double top = 0;
    for (size_t i = 0; i < keep; ++i) top = std::max(top, prob[static_cast<size_t>(cand[i])]);
    const double floor = p_.min_p * top;
    size_t w = 0;
    for (size_t i = 0; i < keep; ++i) {
      if (prob[static_cast<size_t>(cand[i])] >= floor) cand[w++] = cand[i];
    }
    keep = w;
  }
  // Renormalise what is kept; everything else gets probability 0.
  double kept = 0;
  for (size_t i = 0; i < keep; ++i) kept += prob[static_cast<size_t>(cand[i])];
  for (size_t i = 0; i < keep; ++i) {
    const auto id = static_cast<size_t>(cand[i]);
    prob_[id] = prob[id] / kept;
  }
}

int32_t Sampler::sample(std::span<float> logits, std::span<const int32_t> prompt) {
  int32_t chosen;
  if (p_.temperature == 0.0f) {
    apply_penalties(logits, prompt);
    chosen = static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
  } else {
    fill_distribution(logits, prompt);
    const std::vector<double>& prob = prob_;
    double u = rng_.uniform();
    chosen = -1;
    for (size_t i = 0; i < prob.size(); ++i) {
      if (prob[i] <= 0) continue;
      chosen = static_cast<int32_t>(i);
      if (u < prob[i]) break;
      u -= prob[i];
    }
  }
  if (chosen >= 0 && chosen < vocab_ && counts_[static_cast<size_t>(chosen)]++ == 0)
    generated_.push_back(chosen);
  return chosen;
}

}  // namespace whale::sampling
