#include "model/rope_yarn.h"

#include <algorithm>
#include <cmath>
#include <numbers>

namespace whale::model {

double yarn_mscale(double scale, double m) {
  return scale <= 1.0 ? 1.0 : 0.1 * m * std::log(scale) + 1.0;
}

RopeTables make_rope_tables(const ModelConfig& c) {
  const int64_t dim = c.qk_rope_head_dim;
  RopeTables t;
  t.inv_freq.resize(static_cast<size_t>(dim / 2));
  for (int64_t i = 0; i < dim / 2; ++i) {
    t.inv_freq[static_cast<size_t>(i)] =
        static_cast<float>(1.0 / std::pow(c.rope_theta, double(2 * i) / double(dim)));
  }
  if (!c.rope_scaling) return t;

  const YarnScaling& y = *c.rope_scaling;
  // Dimension whose wavelength completes `rotations` turns over the original context.
  auto correction_dim = [&](double rotations) {
    return double(dim) *
           std::log(double(y.original_max_position_embeddings) /
                    (rotations * 2 * std::numbers::pi)) /
           (2 * std::log(c.rope_theta));
  };
  const double low = std::max(std::floor(correction_dim(y.beta_fast)), 0.0);
  double high = std::min(std::ceil(correction_dim(y.beta_slow)), double(dim - 1));
  if (low == high) high += 0.001;  // avoid a zero-width ramp
  for (int64_t i = 0; i < dim / 2; ++i) {
    const double ramp = std::clamp((double(i) - low) / (high - low), 0.0, 1.0);
    const double base = t.inv_freq[static_cast<size_t>(i)];
    t.inv_freq[static_cast<size_t>(i)] =
        static_cast<float>(base * (1 - ramp) + base / y.factor * ramp);
  }
  // transformers' rule: explicit attention_factor, else mscale ratio when both are given,
  // else the plain YaRN correction. Released DeepSeek configs give 1.
  if (y.attention_factor) {
    t.amplitude = static_cast<float>(*y.attention_factor);
  } else if (y.mscale != 0 && y.mscale_all_dim != 0) {
    t.amplitude = static_cast<float>(yarn_mscale(y.factor, y.mscale) /
                                     yarn_mscale(y.factor, y.mscale_all_dim));
  } else {
    t.amplitude = static_cast<float>(yarn_mscale(y.factor, 1.0));
  }
  return t;
}

float attention_softmax_scale(const ModelConfig& c) {
  double scale = 1.0 / std::sqrt(double(c.qk_head_dim()));
  if (c.rope_scaling && c.rope_scaling->mscale_all_dim != 0) {
    const double m = yarn_mscale(c.rope_scaling->factor, c.rope_scaling->mscale_all_dim);
    scale *= m * m;
  }
  return static_cast<float>(scale);
}

}  // namespace whale::model
