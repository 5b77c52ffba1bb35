// splitmix64: a tiny seedable generator that gives the same numbers on every platform and
// standard library (weights of synthetic and freshly initialised models, data shuffles).
#pragma once

#include <cstdint>

namespace whale {

struct SplitMix64 {
  uint64_t state = 0;
  uint64_t next() {
    uint64_t z = (state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  // Uniform in (0, 1).
  double open_unit() { return (double(next() >> 11) + 0.5) * 0x1.0p-53; }
};

}  // namespace whale
