// Derives ops::kQ4Levels, the 16 values of whale's 4-bit code, and measures them against evenly
// spaced codes:
//   build/dev/whale_q4_levels [degrees_of_freedom (default 5; 0 for Gaussian)]
// Samples blocks of 32 from a Student-t distribution, divides each block by its signed element
// of largest |x| (so that element is at +1 and the rest in [-1, 1]), and runs Lloyd's algorithm
// (nearest-level assignment, then each level to the mean of its samples) for 16 levels. The
// levels, scaled to put +1 at 127 and rounded, are the table. It then quantizes fresh blocks
// with each table the way ops::quantize_row_q4 does (a few scales around the peak, each refitted
// by least squares) and prints the squared error relative to the blocks' energy.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "ops/quant.h"

namespace {

constexpr int kBlock = 32;

struct Sampler {
  explicit Sampler(int dof) : dof(dof), t(dof > 0 ? dof : 1), rng(7) {}
  double next() { return dof > 0 ? t(rng) : normal(rng); }
  int dof;
  std::student_t_distribution<double> t;
  std::normal_distribution<double> normal;
  std::mt19937 rng;
};

int nearest(const std::vector<double>& levels, double v) {
  int best = 0;
  for (int j = 1; j < static_cast<int>(levels.size()); ++j) {
    if (std::fabs(v - levels[j]) < std::fabs(v - levels[best])) best = j;
  }
  return best;
}

// Squared error of one block with `levels` (in units of the scale), the best of the scales
// peak / (127 + 2s), s = -4..8, each refitted by least squares; `signed_peak` divides by the
// signed peak (whale's table), otherwise by +max|x| (a symmetric table).
double block_error(const double* x, const std::vector<double>& levels, bool signed_peak) {
  double peak = 0;
  for (int i = 0; i < kBlock; ++i) {
    if (std::fabs(x[i]) > std::fabs(peak)) peak = x[i];
  }
  if (!signed_peak) peak = std::fabs(peak);
  double best = INFINITY;
  for (int s = -4; s <= 8; ++s) {
    const double d = peak / (127.0 + 2.0 * s);
    double xq = 0, qq = 0;
    for (int i = 0; i < kBlock; ++i) {
      const double q = levels[nearest(levels, x[i] / d)];
      xq += x[i] * q;
      qq += q * q;
    }
    const double refit = xq / qq;
    double err = 0;
    for (int i = 0; i < kBlock; ++i) {
      const double e = x[i] - refit * levels[nearest(levels, x[i] / refit)];
      err += e * e;
    }
    best = std::min(best, err);
  }
  return best;
}

}  // namespace

int main(int argc, char** argv) {
  const int dof = argc > 1 ? std::atoi(argv[1]) : 5;
  Sampler sampler(dof);
  std::vector<double> samples;
  for (int b = 0; b < 100000; ++b) {
    double x[kBlock], peak = 0;
    for (double& v : x) {
      v = sampler.next();
      if (std::fabs(v) > std::fabs(peak)) peak = v;
    }
    for (double v : x) samples.push_back(v / peak);
  }
  std::vector<double> levels(16);
  for (int j = 0; j < 16; ++j) levels[j] = -1.0 + 2.0 * j / 15.0;
  for (int iter = 0; iter < 200; ++iter) {
    std::vector<double> sum(16, 0.0), count(16, 0.0);
    for (double v : samples) {
      const int j = nearest(levels, v);
      sum[j] += v;
      count[j] += 1;
    }
    for (int j = 0; j < 16; ++j) {
      if (count[j] > 0) levels[j] = sum[j] / count[j];
    }
  }
  std::printf("Lloyd levels (x 127 / top):");
  const double top = levels[15];
  for (double& l : levels) {
    l = std::round(l * 127.0 / top);
    std::printf(" %g", l);
  }
  std::printf("\nwhale's kQ4Levels:         ");
  std::vector<double> whale(16), even(16);
  for (int j = 0; j < 16; ++j) {
    whale[j] = whale::ops::kQ4Levels[j];
    even[j] = (j - 8) * 127.0 / 8.0;  // scale · (q − 8), in the same units
    std::printf(" %g", whale[j]);
  }
  std::printf("\n");

  for (int dist : {0, dof}) {
    Sampler fresh(dist);
    fresh.rng.seed(11);
    double e_even = 0, e_lloyd = 0, e_whale = 0, energy = 0;
    for (int b = 0; b < 20000; ++b) {
      double x[kBlock];
      for (double& v : x) {
        v = fresh.next();
        energy += v * v;
      }
      e_even += block_error(x, even, /*signed_peak=*/false);
      e_lloyd += block_error(x, levels, true);
      e_whale += block_error(x, whale, true);
    }
    std::printf("%s: relative squared error  even codes %.5f  Lloyd %.5f  kQ4Levels %.5f\n",
                dist > 0 ? "Student-t" : "Gaussian", e_even / energy, e_lloyd / energy,
                e_whale / energy);
  }
  return 0;
}
