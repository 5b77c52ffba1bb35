// The Unicode classes the pre-tokenizer patterns test, from Unicode 16.0 tables (the version
// HF tokenizers' regex engine uses; see reference/make_unicode_tables.py).
#pragma once

#include <cstdint>

namespace whale::tok {

enum CharClass : uint8_t {
  kLetter = 1,       // \p{L}
  kMark = 2,         // \p{M}
  kNumber = 4,       // \p{N}
  kPunctuation = 8,  // \p{P}
  kSymbol = 16,      // \p{S}
  kSpace = 32,       // \s (White_Space)
};

// Bitwise OR of the classes of code point cp.
uint8_t char_class(uint32_t cp);

}  // namespace whale::tok
