#include "tokenizer/unicode.h"

#include <algorithm>
#include <array>

namespace whale::tok {
namespace {

struct Range {
  uint32_t first, last;
  uint8_t bits;
};

constexpr Range kRanges[] = {
#include "tokenizer/unicode_tables.inc"
};

std::array<uint8_t, 128> make_ascii() {
  std::array<uint8_t, 128> t{};
  for (const Range& r : kRanges) {
    for (uint32_t cp = r.first; cp <= r.last && cp < 128; ++cp) t[cp] = r.bits;
  }
  return t;
}

const std::array<uint8_t, 128> kAscii = make_ascii();

}  // namespace

uint8_t char_class(uint32_t cp) {
  if (cp < 128) return kAscii[cp];
  const auto it = std::upper_bound(std::begin(kRanges), std::end(kRanges), cp,
                                   [](uint32_t c, const Range& r) { return c < r.first; });
  if (it == std::begin(kRanges)) return 0;
  const Range& r = *(it - 1);
  return cp <= r.last ? r.bits : 0;
}

}  // namespace whale::tok
