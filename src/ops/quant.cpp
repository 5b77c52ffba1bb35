#include "ops/quant.h"

#include <algorithm>
#include <cmath>

namespace whale::ops {

float quantize_activation_block(const float* x, int8_t* q) {
  float amax = 0;
  bool finite = true;
  for (int64_t i = 0; i < kQuantBlock; ++i) {
    amax = std::max(amax, std::fabs(x[i]));
    finite &= std::fabs(x[i]) < INFINITY;  // false for NaN too
  }
  if (!finite) {  // NaN or inf in: codes 0, and a NaN scale carries it on
    std::fill_n(q, kQuantBlock, int8_t{0});
    return NAN;
  }
  const float scale = amax / 127.0f;
  const float inv = amax > 0 ? 127.0f / amax : 0.0f;
  // Adding and removing 1.5·2^23 rounds to the nearest integer, ties to even, as lrintf does
  // for |v| ≤ 127, in a form the compiler vectorises (this runs for every product of a token).
  constexpr float kRound = 12582912.0f;
  for (int64_t i = 0; i < kQuantBlock; ++i) {
    const float v = std::clamp(x[i] * inv, -127.0f, 127.0f);
    q[i] = static_cast<int8_t>((v + kRound) - kRound);
  }
  return scale;
}

int weight_code(const Matrix& w, int64_t r, int64_t c) {
  const auto* row = static_cast<const uint8_t*>(w.data) + r * w.row_bytes();
  if (w.format == WeightFormat::kQ8) return static_cast<int8_t>(row[c]);
  const int64_t block = c / kQuantBlock, i = c % kQuantBlock, half = kQuantBlock / 2;
  const uint8_t byte = row[block * half + i % half];
  return kQ4Levels[i < half ? byte & 0xF : byte >> 4];
}

namespace {

// Codes of x at scale d (d > 0) in [lo, hi]; returns the squared error and, through best_d, the
// least-squares scale for those codes rounded to f16.
double codes_at(const float* x, float d, int lo, int hi, int* q, float* best_d) {
  double xq = 0, qq = 0;
  for (int64_t i = 0; i < kQuantBlock; ++i) {
    q[i] = static_cast<int>(std::clamp(std::lrintf(x[i] / d), long{lo}, long{hi}));
    xq += double(x[i]) * q[i];
    qq += double(q[i]) * q[i];
  }
  *best_d = qq > 0 ? f16_to_f32(f32_to_f16(static_cast<float>(xq / qq))) : 0.0f;
  double err = 0;
  for (int64_t i = 0; i < kQuantBlock; ++i) {
    const double e = double(x[i]) - double(*best_d) * q[i];
    err += e * e;
  }
  return err;
}

// The f16 scale of one block with codes in [lo, hi], from a small search around max|x| / hi,
// and the codes at that scale (recomputed with the rounded scale).
float quantize_block(const float* x, int lo, int hi, int* q) {
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
    const float d = amax / (static_cast<float>(hi) + 0.25f * static_cast<float>(step));
    float refit;
    const double err = codes_at(x, d, lo, hi, trial, &refit);
    if (err < best_err && refit > 0) {
      best_err = err;
      best = refit;
    }
  }
  if (best == 0) best = f16_to_f32(f32_to_f16(amax / static_cast<float>(hi)));
  for (int64_t i = 0; i < kQuantBlock; ++i) {
    q[i] = static_cast<int>(std::clamp(std::lrintf(x[i] / best), long{lo}, long{hi}));
  }
  return best;
}

}  // namespace

void quantize_row_q8(const float* x, int64_t n, int8_t* codes, uint16_t* scales) {
  int q[kQuantBlock];
  for (int64_t b = 0; b < n / kQuantBlock; ++b) {
    const float d = quantize_block(x + b * kQuantBlock, -127, 127, q);
    scales[b] = f32_to_f16(d);
    for (int64_t i = 0; i < kQuantBlock; ++i) codes[b * kQuantBlock + i] = static_cast<int8_t>(q[i]);
  }
}

namespace {

// The index of the kQ4Levels entry nearest v (ties to the lower one).
int nearest_level(float v) {
  int lo = 0;
  for (int step = 8; step > 0; step /= 2) {  // binary search over the midpoints
    const int mid = lo + step - 1;
    if (mid < 15 && v > 0.5f * (float(kQ4Levels[mid]) + float(kQ4Levels[mid + 1]))) lo = mid + 1;
  }
  return lo;
}

}  // namespace

void quantize_row_q4(const float* x, int64_t n, uint8_t* packed, uint16_t* scales) {
  constexpr int64_t half = kQuantBlock / 2;
  int q[kQuantBlock];
  for (int64_t b = 0; b < n / kQuantBlock; ++b) {
    const float* xb = x + b * kQuantBlock;
    float peak = 0;  // the signed element of largest |x|
    for (int64_t i = 0; i < kQuantBlock; ++i) {
      if (std::fabs(xb[i]) > std::fabs(peak)) peak = xb[i];
    }
    float best = 0;
    if (peak != 0 && std::isfinite(peak)) {
      // Scales around peak / 127, each refitted by least squares for its codes; the one that
      // leaves the least squared error wins.
      double best_err = INFINITY;
      for (int step = -4; step <= 8; ++step) {
        const float d = peak / (127.0f + 2.0f * static_cast<float>(step));
        double xq = 0, qq = 0;
        for (int64_t i = 0; i < kQuantBlock; ++i) {
          const double level = kQ4Levels[nearest_level(xb[i] / d)];
          xq += double(xb[i]) * level;
          qq += level * level;
        }
        const float refit = f16_to_f32(f32_to_f16(static_cast<float>(xq / qq)));
        if (refit == 0 || !std::isfinite(refit)) continue;
        double err = 0;
        for (int64_t i = 0; i < kQuantBlock; ++i) {
          const double e = double(xb[i]) - double(refit) * kQ4Levels[nearest_level(xb[i] / refit)];
          err += e * e;
        }
        if (err < best_err) {
          best_err = err;
          best = refit;
        }
      }
    }
    for (int64_t i = 0; i < kQuantBlock; ++i) q[i] = best != 0 ? nearest_level(xb[i] / best) : 7;
    scales[b] = f32_to_f16(best);
    for (int64_t i = 0; i < half; ++i) {
      packed[b * half + i] = static_cast<uint8_t>(q[i] | (q[i + half] << 4));
    }
  }
}

}  // namespace whale::ops
