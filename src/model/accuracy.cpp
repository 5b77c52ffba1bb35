#include "model/accuracy.h"

#include <algorithm>
#include <cmath>
#include <vector>

namespace whale::model {
namespace {

// log softmax of one row, in double.
void log_softmax(const float* x, int64_t n, std::vector<double>* out) {
  out->resize(static_cast<size_t>(n));
  const double m = *std::max_element(x, x + n);
  double sum = 0;
  for (int64_t i = 0; i < n; ++i) sum += std::exp(double(x[i]) - m);
  const double log_sum = m + std::log(sum);
  for (int64_t i = 0; i < n; ++i) (*out)[static_cast<size_t>(i)] = double(x[i]) - log_sum;
}

}  // namespace

LogitComparison compare_logits(std::span<const float> reference, std::span<const float> other,
                               int64_t vocab) {
  LogitComparison c;
  if (vocab <= 0 || reference.size() != other.size()) return c;
  c.positions = static_cast<int64_t>(reference.size()) / vocab;
  std::vector<double> lp, lq;
  int64_t agree = 0;
  for (int64_t t = 0; t < c.positions; ++t) {
    const float* a = reference.data() + t * vocab;
    const float* b = other.data() + t * vocab;
    log_softmax(a, vocab, &lp);
    log_softmax(b, vocab, &lq);
    double kl = 0;
    for (size_t i = 0; i < lp.size(); ++i) kl += std::exp(lp[i]) * (lp[i] - lq[i]);
    c.mean_kl += kl;
    c.max_kl = std::max(c.max_kl, kl);
    agree += (std::max_element(a, a + vocab) - a) == (std::max_element(b, b + vocab) - b);
    for (int64_t i = 0; i < vocab; ++i)
      c.max_abs_diff = std::max(c.max_abs_diff, std::fabs(double(a[i]) - double(b[i])));
  }
  if (c.positions > 0) {
    c.mean_kl /= double(c.positions);
    c.top1_agreement = double(agree) / double(c.positions);
  }
  return c;
}

}  // namespace whale::model
