// How far one model's next-token distributions are from a reference's over the same tokens:
// what `whale compare` and the quantization tests report.
#pragma once

#include <cstdint>
#include <span>

namespace whale::model {

struct LogitComparison {
  int64_t positions = 0;
  double mean_kl = 0;         // mean over positions of KL(reference ‖ other), in nats
  double max_kl = 0;
  double top1_agreement = 0;  // fraction of positions with the same argmax
  double max_abs_diff = 0;    // largest |Δ logit|
};

// Both spans hold [positions, vocab] logits.
LogitComparison compare_logits(std::span<const float> reference, std::span<const float> other,
                               int64_t vocab);

}  // namespace whale::model
