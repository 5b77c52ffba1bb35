#include "ops/quant.h"

#include <algorithm>
#include <cmath>

namespace whale::ops {

int weight_code(const Matrix& w, int64_t r, int64_t c) {
  const auto* row = static_cast<const uint8_t*>(w.data) + r * w.row_bytes();
  if (w.format == WeightFormat::kQ8) return static_cast<int8_t>(row[c]);
  const int64_t block = c / kQuantBlock, i = c % kQuantBlock, half = kQuantBlock / 2;
  const uint8_t byte = row[block * half + i % half];
  return kQ4Levels[i < half ? byte & 0xF : byte >> 4];
}

namespace {

constexpr int kQ8Max = 127;

// q8 codes of x at scale d (d > 0); returns the squared error, each element's weighed by
// weight[i] (1 without weights), and through best_d the weighted least-squares scale for those
// codes rounded to f16.
double q8_codes_at(const float* x, const float* weight, float d, int* q, float* best_d) {
  double xq = 0, qq = 0;
  for (int64_t i = 0; i < kQuantBlock; ++i) {
    q[i] = static_cast<int>(std::clamp(std::lrintf(x[i] / d), long{-kQ8Max}, long{kQ8Max}));
    const double wi = weight ? weight[i] : 1.0;
    xq += wi * double(x[i]) * q[i];
    qq += wi * double(q[i]) * q[i];
  }
  *best_d = qq > 0 ? f16_to_f32(f32_to_f16(static_cast<float>(xq / qq))) : 0.0f;
  double err = 0;
  for (int64_t i = 0; i < kQuantBlock; ++i) {
    const double e = double(x[i]) - double(*best_d) * q[i];
    err += (weight ? weight[i] : 1.0) * e * e;
  }
  return err;
}

// The f16 scale of one q8 block, from a small search around max|x| / 127, and the codes at
// that scale (recomputed with the rounded scale). `weight`: as in q8_codes_at.
float quantize_block_q8(const float* x, const float* weight, int* q) {
  float amax = 0;
  for (int64_t i = 0; i < kQuantBlock; ++i) amax = std::max(amax, std::fabs(x[i]));
  if (amax == 0 || !std::isfinite(amax)) {
    std::fill_n(q, kQuantBlock, 0);
    return 0.0f;
  }
  float best = 0;
  double best_err = INFINITY;
  int trial[kQuantBlock];
  for (int step = -4; step <= 8; ++step) {
    const float d = amax / (static_cast<float>(kQ8Max) + 0.25f * static_cast<float>(step));
    float refit;
    const double err = q8_codes_at(x, weight, d, trial, &refit);
    if (err < best_err && refit > 0) {
      best_err = err;
      best = refit;
    }
  }
  if (best == 0) best = f16_to_f32(f32_to_f16(amax / static_cast<float>(kQ8Max)));
  for (int64_t i = 0; i < kQuantBlock; ++i) {
    q[i] = static_cast<int>(std::clamp(std::lrintf(x[i] / best), long{-kQ8Max}, long{kQ8Max}));
  }
  return best;
}

// The index of the kQ4Levels entry nearest v (ties to the lower one), by table: the level
// nearest the start of v's unit interval, or the next one if v is past their midpoint (an
// interval of width 1 holds at most one midpoint: the levels are 10 or more apart). Written by
// hand because the quantizer calls it for every weight and scale it tries.
class NearestLevel {
 public:
  NearestLevel() {
    for (int j = 0; j < 15; ++j) mid_[j] = 0.5f * (float(kQ4Levels[j]) + float(kQ4Levels[j + 1]));
    mid_[15] = INFINITY;
    for (int c = 0; c <= 2 * kReach; ++c) {
      int k = 0;
      while (k < 15 && float(c - kReach) > mid_[k]) ++k;
      start_[c] = static_cast<int8_t>(k);
    }
  }
  // |v| beyond kReach is clamped (the outermost levels are nearest there anyway); written so
  // that a NaN (0 · ∞ from a subnormal block) lands at the bottom instead of reaching the cast.
  int operator()(float v) const {
    if (!(v > float(-kReach))) v = float(-kReach);
    if (!(v < float(kReach) - 0.5f)) v = float(kReach) - 0.5f;
    const int k = start_[static_cast<int>(std::floor(v)) + kReach];
    return v > mid_[k] ? k + 1 : k;
  }

 private:
  static constexpr int kReach = 192;
  int8_t start_[2 * kReach + 1];
  float mid_[16];
};

}  // namespace

void quantize_row_q8(const float* x, int64_t n, int8_t* codes, uint16_t* scales,
                     const float* importance) {
  int q[kQuantBlock];
  for (int64_t b = 0; b < n / kQuantBlock; ++b) {
    const float* imp = importance ? importance + b * kQuantBlock : nullptr;
    const float d = quantize_block_q8(x + b * kQuantBlock, imp, q);
    scales[b] = f32_to_f16(d);
    for (int64_t i = 0; i < kQuantBlock; ++i)
      codes[b * kQuantBlock + i] = static_cast<int8_t>(q[i]);
  }
}

void quantize_row_q4(const float* x, int64_t n, uint8_t* packed, uint16_t* scales,
                     const float* importance) {
  static const NearestLevel nearest;
  constexpr int64_t half = kQuantBlock / 2;
  int q[kQuantBlock];
  for (int64_t b = 0; b < n / kQuantBlock; ++b) {
    const float* xb = x + b * kQuantBlock;
    float peak = 0;  // the signed element of largest |x|
    bool finite = true;
    double xx = 0;
    for (int64_t i = 0; i < kQuantBlock; ++i) {
      finite &= std::fabs(xb[i]) < INFINITY;  // false for NaN too
      if (std::fabs(xb[i]) > std::fabs(peak)) peak = xb[i];
      xx += double(xb[i]) * xb[i];
    }
    float best = 0;
    if (peak != 0 && finite) {
      // Each element's error weighs rms(x) + |x| (large weights matter more; llama.cpp's k-quants
      // weigh theirs so when they have no importance data). On whale-mini this lowered q4's KL
      // against bf16 on every text (Emma 0.00351 → 0.00347, Moby Dick 0.00468 → 0.00449, GPL-3
      // 0.00437 → 0.00406, random ids 0.00634 → 0.00558), and the finer, wider search below
      // (25 scales a 127th of the peak apart, where there were 13 two apart) is part of that.
      // With importance data, that weight is multiplied by the column's importance.
      double weight[kQuantBlock], wxx = 0;
      const double rms = std::sqrt(xx / kQuantBlock);
      const float* imp = importance ? importance + b * kQuantBlock : nullptr;
      for (int64_t i = 0; i < kQuantBlock; ++i) {
        weight[i] = (rms + std::fabs(double(xb[i]))) * (imp ? double(imp[i]) : 1.0);
        wxx += weight[i] * double(xb[i]) * xb[i];
      }
      // Scales around peak / 127: the codes at each, and the weighted least-squares scale for
      // those codes; the one that leaves the least weighted squared error
      // (Σw·x² − (Σw·x·l)² / Σw·l²) wins.
      double best_err = INFINITY;
      for (int step = -8; step <= 16; ++step) {
        const float inv = (127.0f + static_cast<float>(step)) / peak;
        double xl = 0, ll = 0;
        for (int64_t i = 0; i < kQuantBlock; ++i) {
          const double level = kQ4Levels[nearest(xb[i] * inv)];
          xl += weight[i] * double(xb[i]) * level;
          ll += weight[i] * level * level;
        }
        const double err = wxx - xl * xl / ll;
        if (err < best_err) {
          best_err = err;
          best = static_cast<float>(xl / ll);
        }
      }
      best = f16_to_f32(f32_to_f16(best));
      if (!std::isfinite(best)) best = 0;  // beyond f16's range
    }
    const float inv = best != 0 ? 1.0f / best : 0.0f;
    for (int64_t i = 0; i < kQuantBlock; ++i) q[i] = nearest(best != 0 ? xb[i] * inv : 0.0f);
    scales[b] = f32_to_f16(best);
    for (int64_t i = 0; i < half; ++i) {
      packed[b * half + i] = static_cast<uint8_t>(q[i] | (q[i + half] << 4));
    }
  }
}

}  // namespace whale::ops
