// Logits to a token id. The steps run in this order, each skipped when at its neutral value:
//   1. logit_bias          logit[t] += bias[t]
//   2. repetition_penalty  for t in prompt + output: logit > 0 ? logit / p : logit · p   (CTRL)
//   3. frequency/presence  for t in output: logit -= frequency · count(t) + presence · [count > 0]
//   4. temperature == 0    → the argmax (greedy); steps 5-9 do not run
//   5. temperature         logit /= T
//   6. top_k               keep the k largest
//   7. softmax
//   8. top_p               keep the smallest set of largest probabilities reaching p
//   9. min_p               keep probabilities ≥ min_p · the largest
//  10. draw from what is left (renormalised) with the request's seeded generator
// Ties (equal logits) resolve to the lower id everywhere, so results repeat exactly.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "core/error.h"

namespace whale::sampling {

struct SamplingParams {
  float temperature = 0.6f;         // 0 = greedy
  int32_t top_k = 0;                // 0 = off
  float top_p = 0.95f;              // 1 = off
  float min_p = 0.0f;               // 0 = off
  float repetition_penalty = 1.0f;  // 1 = off
  float frequency_penalty = 0.0f;   // OpenAI's, in [-2, 2]
  float presence_penalty = 0.0f;    // OpenAI's, in [-2, 2]
  std::vector<std::pair<int32_t, float>> logit_bias;
  uint64_t seed = 0;
};

// Checks every field's range against the vocabulary size; names the bad field.
Status validate(const SamplingParams& p, int64_t vocab_size);

// xoshiro256** seeded by splitmix64: fast, and the same stream on every platform (unlike the
// standard library's distributions).
class Rng {
 public:
  explicit Rng(uint64_t seed);
  uint64_t next();
  double uniform();  // [0, 1)

 private:
  uint64_t s_[4];
};

class Sampler {
 public:
  // `params` must have passed validate().
  Sampler(SamplingParams params, int64_t vocab_size);

  // Picks the next token from `logits` (modified in place) given the prompt and the tokens
  // generated so far, and records it as generated.
  int32_t sample(std::span<float> logits, std::span<const int32_t> prompt);

  // The probabilities step 10 draws from (tests compare them with the definitions).
  std::vector<double> distribution(std::span<float> logits, std::span<const int32_t> prompt) const;

 private:
  void apply_penalties(std::span<float> logits, std::span<const int32_t> prompt) const;
  // distribution() into prob_, whose memory is kept: a sampler allocates nothing per token
  // once its first token is drawn (but for new distinct ids in generated_).
  void fill_distribution(std::span<float> logits, std::span<const int32_t> prompt) const;

  SamplingParams p_;
  int64_t vocab_;
  Rng rng_;
  std::vector<int32_t> counts_;        // [vocab]: times each token was generated
  std::vector<int32_t> generated_;     // the distinct generated tokens, first seen first
  mutable std::vector<uint8_t> seen_;  // [vocab], all zero between calls
  mutable std::vector<double> prob_;   // [vocab]
  mutable std::vector<double> raw_;    // [vocab]: before top-p / min-p
  mutable std::vector<int32_t> cand_;  // [vocab]
};

}  // namespace whale::sampling
