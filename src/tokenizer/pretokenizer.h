// HF `Split` pre-tokenizers (behaviour "Isolated"): each regex splits every piece into its
// matches and the gaps between them, all kept as pieces, in order.
//
// Regex engine: Oniguruma, the engine HF tokenizers itself uses (its onig crate bundles
// Oniguruma 6.9.8, the version Debian 12 ships), so \p{..} classes, look-ahead and the Unicode
// tables behave exactly as in the reference; exactness first. The patterns are restricted to an
// allow-list of known tokenizer patterns, so a hostile tokenizer.json cannot bring a
// catastrophically backtracking regex.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "core/error.h"

namespace whale::tok {

// A piece of the input: [begin, end) byte offsets.
struct Span {
  size_t begin, end;
};

class RegexSplit {
 public:
  static Result<RegexSplit> compile(const std::string& pattern);
  RegexSplit(RegexSplit&&) noexcept;
  RegexSplit& operator=(RegexSplit&&) noexcept;
  ~RegexSplit();

  // Splits text[piece] into matches and gaps, appended to out (empty pieces dropped).
  Status split(std::string_view text, Span piece, std::vector<Span>& out) const;

 private:
  RegexSplit() = default;
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// True when the pattern is one of the known tokenizer patterns.
bool is_allowed_pattern(std::string_view pattern);

}  // namespace whale::tok
