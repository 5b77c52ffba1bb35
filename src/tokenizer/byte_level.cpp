#include "tokenizer/byte_level.h"

#include <array>

#include "tokenizer/utf8.h"

namespace whale::tok {
namespace {

bool printable(uint32_t b) {
  return (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
}

struct Tables {
  std::array<uint32_t, 256> to_cp{};
  std::array<int16_t, 0x200> from_cp{};  // code point -> byte, -1 if none
  Tables() {
    from_cp.fill(-1);
    uint32_t next = 0x100;
    for (uint32_t b = 0; b < 256; ++b) {
      to_cp[b] = printable(b) ? b : next++;
      from_cp[to_cp[b]] = static_cast<int16_t>(b);
    }
  }
};

const Tables& tables() {
  static const Tables t;
  return t;
}

}  // namespace

uint32_t byte_to_code_point(uint8_t b) { return tables().to_cp[b]; }

std::optional<std::string> byte_level_decode(std::string_view text) {
  if (!is_valid_utf8(text)) return std::nullopt;
  std::string out;
  for (size_t i = 0; i < text.size();) {
    const uint32_t cp = next_code_point(text, i);
    if (cp >= tables().from_cp.size() || tables().from_cp[cp] < 0) return std::nullopt;
    out += static_cast<char>(tables().from_cp[cp]);
  }
  return out;
}

std::string byte_level_encode(std::string_view bytes) {
  std::string out;
  for (char c : bytes) append_utf8(out, byte_to_code_point(static_cast<uint8_t>(c)));
  return out;
}

}  // namespace whale::tok
