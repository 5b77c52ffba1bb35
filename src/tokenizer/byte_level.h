// GPT-2's byte-level alphabet: every byte is shown as a printable code point, so that BPE
// vocabularies can be stored as text. Printable Latin-1 bytes map to themselves; the other 68
// bytes map to U+0100.. in byte order (so ' ' is 'Ġ' U+0120 and '\n' is 'Ċ' U+010A).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace whale::tok {

// The code point that stands for byte b.
uint32_t byte_to_code_point(uint8_t b);

// Maps a vocabulary string back to raw bytes; nullopt if it has a code point outside the
// alphabet (such a token can never be produced by the byte-level pre-tokenizer).
std::optional<std::string> byte_level_decode(std::string_view text);

// Raw bytes to their byte-level spelling (used to write vocabularies).
std::string byte_level_encode(std::string_view bytes);

}  // namespace whale::tok
