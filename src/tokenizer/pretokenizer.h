// HF `Split` pre-tokenizers (behaviour "Isolated"): each pattern splits every piece into its
// matches and the gaps between them, all kept as pieces, in order.
//
// The patterns are DeepSeek's (V3 through V4 use the same three), matched by hand-written code
// over Unicode 16.0 tables rather than by a regex engine. Exactness decided it: HF tokenizers
// runs these regexes on an Oniguruma with Unicode 16.0 tables while Debian 12's Oniguruma has
// older ones, which split text with recently added letters differently. Speed agrees: the
// matchers are linear, allocation-free and several times faster than a regex search. Any other
// pattern is refused, so a tokenizer.json cannot bring a catastrophically backtracking regex.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "core/error.h"

namespace whale::tok {

// A piece of the input: [begin, end) byte offsets.
struct Span {
  size_t begin, end;
};

enum class SplitPattern {
  kDigits,   // \p{N}{1,3}
  kCjkKana,  // [一-龥぀-ゟ゠-ヿ]+
  kWords,    // DeepSeek's general pattern (punctuation-led words, letters, symbols, spaces)
};

// The pattern a tokenizer.json regex string stands for; an error for any other string.
Result<SplitPattern> parse_split_pattern(const std::string& regex);

// Splits text[piece] (valid UTF-8) into matches and gaps, appended to out.
void split(SplitPattern pattern, std::string_view text, Span piece, std::vector<Span>& out);

}  // namespace whale::tok
