#include "train/optimizer.h"

#include <algorithm>
#include <cmath>
#include <numeric>

namespace whale::train {

double Schedule::lr(int64_t step) const {
  if (step < warmup_steps) return peak_lr * double(step + 1) / double(warmup_steps);
  const double span = double(std::max<int64_t>(1, total_steps - warmup_steps));
  const double progress = std::min(1.0, double(step - warmup_steps) / span);
  return min_lr + 0.5 * (peak_lr - min_lr) * (1.0 + std::cos(M_PI * progress));
}

AdamW::AdamW(const ParamLayout& layout, AdamWSettings settings)
    : layout_(&layout), settings_(settings), m_(size_t(layout.total), 0.0f),
      v_(size_t(layout.total), 0.0f) {}

void AdamW::update(ParamSet<float>& params, const ParamSet<float>& grads, double lr) {
  ++step_;
  const double b1 = settings_.beta1, b2 = settings_.beta2;
  const double c1 = 1.0 - std::pow(b1, double(step_));
  const double c2 = 1.0 - std::pow(b2, double(step_));
  const float step_size = float(lr / c1);
  const float inv_c2_sqrt = float(1.0 / std::sqrt(c2));
  const float eps = float(settings_.eps);
  for (const ParamInfo& info : layout_->params) {
    float* p = params.values.data() + info.offset;
    const float* g = grads.values.data() + info.offset;
    float* m = m_.data() + info.offset;
    float* v = v_.data() + info.offset;
    const float keep = info.decay ? float(1.0 - lr * settings_.weight_decay) : 1.0f;
    for (int64_t i = 0; i < info.numel; ++i) {
      p[i] *= keep;
      m[i] = float(b1) * m[i] + float(1.0 - b1) * g[i];
      v[i] = float(b2) * v[i] + float(1.0 - b2) * g[i] * g[i];
      p[i] -= step_size * m[i] / (std::sqrt(v[i]) * inv_c2_sqrt + eps);
    }
  }
}

double global_norm(const std::vector<float>& grads) {
  double ss = 0;
  for (float g : grads) ss += double(g) * double(g);
  return std::sqrt(ss);
}

double clip_gradients(std::vector<float>& grads, double max_norm) {
  const double norm = global_norm(grads);
  const double factor = max_norm / (norm + 1e-6);
  if (max_norm > 0 && factor < 1.0) {
    for (float& g : grads) g = float(double(g) * factor);
  }
  return norm;
}

void update_biases(ParamSet<float>& params, const std::vector<std::vector<int64_t>>& counts,
                   double gamma) {
  for (size_t l = 0; l < counts.size(); ++l) {
    const auto& c = counts[l];
    const double mean = double(std::accumulate(c.begin(), c.end(), int64_t{0})) / double(c.size());
    for (size_t e = 0; e < c.size(); ++e) {
      const double diff = mean - double(c[e]);
      const double sign = diff > 0 ? 1.0 : (diff < 0 ? -1.0 : 0.0);
      params.biases[l][e] = float(double(params.biases[l][e]) + gamma * sign);
    }
  }
}

double max_over_mean(const std::vector<int64_t>& counts) {
  const int64_t total = std::accumulate(counts.begin(), counts.end(), int64_t{0});
  if (total == 0) return 1.0;
  const double mean = double(total) / double(counts.size());
  return double(*std::max_element(counts.begin(), counts.end())) / mean;
}

}  // namespace whale::train
