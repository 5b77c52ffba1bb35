#include "tokenizer/pretokenizer.h"

#include "tokenizer/unicode.h"
#include "tokenizer/utf8.h"

namespace whale::tok {
namespace {

// The patterns as they read in tokenizer.json after JSON decoding (\r and \n inside the
// classes are the characters themselves).
constexpr std::string_view kDigitsRegex = R"(\p{N}{1,3})";
constexpr std::string_view kCjkKanaRegex = "[\u4E00-\u9FA5\u3040-\u309F\u30A0-\u30FF]+";
constexpr std::string_view kWordsRegex =
    "[!\"#$%&'()*+,\\-./"
    ":;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+|"
    " ?[\\p{P}\\p{S}]+[\r\n]*|\\s*[\r\n]+|\\s+(?!\\S)|\\s+";

constexpr size_t kNone = std::string_view::npos;

// A decoded character of the piece being split.
struct Char {
  uint32_t cp;
  uint8_t cls;
  size_t next;  // byte offset after it
};

class Scanner {
 public:
  Scanner(std::string_view text, size_t end) : s_(text), end_(end) {}
  size_t end() const { return end_; }
  Char at(size_t i) const {
    const auto b = static_cast<uint8_t>(s_[i]);
    if (b < 0x80) return {b, char_class(b), i + 1};
    size_t j = i;
    const uint32_t cp = next_code_point(s_, j);
    return {cp, char_class(cp), j};
  }
  // End of the run of characters from i whose class intersects `mask`.
  size_t run(size_t i, uint8_t mask) const {
    while (i < end_) {
      const Char c = at(i);
      if (!(c.cls & mask)) break;
      i = c.next;
    }
    return i;
  }
  size_t run_if(size_t i, bool (*pred)(uint32_t)) const {
    while (i < end_) {
      const Char c = at(i);
      if (!pred(c.cp)) break;
      i = c.next;
    }
    return i;
  }

 private:
  std::string_view s_;
  size_t end_;
};

bool is_cr_lf(uint32_t cp) { return cp == '\r' || cp == '\n'; }
bool is_ascii_letter(uint32_t cp) { return (cp | 0x20) >= 'a' && (cp | 0x20) <= 'z'; }
bool is_cjk_kana(uint32_t cp) {
  return (cp >= 0x4E00 && cp <= 0x9FA5) || (cp >= 0x3040 && cp <= 0x30FF);
}
// The first class of the words pattern: ASCII punctuation and symbols.
bool is_ascii_punct(uint32_t cp) {
  return cp < 128 && cp > ' ' && cp != 0x7F && !is_ascii_letter(cp) && !(cp >= '0' && cp <= '9');
}

// Where a match of the words pattern starting at i ends, or kNone. The alternatives are tried
// in order, each with the backtracking a regex engine would do.
size_t match_words(const Scanner& sc, size_t i) {
  const Char c0 = sc.at(i);
  const bool has_next = c0.next < sc.end();
  const Char c1 = has_next ? sc.at(c0.next) : Char{0, 0, c0.next};
  // [!"#...~][A-Za-z]+
  if (is_ascii_punct(c0.cp) && has_next && is_ascii_letter(c1.cp)) {
    return sc.run_if(c1.next, is_ascii_letter);
  }
  // [^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+
  const bool optional_ok = !is_cr_lf(c0.cp) && !(c0.cls & (kLetter | kPunctuation | kSymbol));
  if (optional_ok && has_next && (c1.cls & (kLetter | kMark)))
    return sc.run(c1.next, kLetter | kMark);
  if (c0.cls & (kLetter | kMark)) return sc.run(c0.next, kLetter | kMark);
  // ' ?[\p{P}\p{S}]+[\r\n]*'
  size_t ps = kNone;
  if (c0.cp == ' ' && has_next && (c1.cls & (kPunctuation | kSymbol))) ps = c1.next;
  if (c0.cls & (kPunctuation | kSymbol)) ps = c0.next;
  if (ps != kNone) return sc.run_if(sc.run(ps, kPunctuation | kSymbol), is_cr_lf);
  if (!(c0.cls & kSpace)) return kNone;
  // The whitespace alternatives share the run of spaces from i.
  size_t last_cr_lf = kNone, last_start = i, k = i;
  while (k < sc.end()) {
    const Char c = sc.at(k);
    if (!(c.cls & kSpace)) break;
    if (is_cr_lf(c.cp)) last_cr_lf = k;
    last_start = k;
    k = c.next;
  }
  // \s*[\r\n]+ : up to and including the last CR/LF of the run.
  if (last_cr_lf != kNone) return last_cr_lf + 1;
  // \s+(?!\S) : the whole run at the end of the text, else all but its last space.
  if (k == sc.end()) return k;
  if (last_start > i) return last_start;
  // \s+
  return k;
}

}  // namespace

Result<SplitPattern> parse_split_pattern(const std::string& regex) {
  if (regex == kDigitsRegex) return SplitPattern::kDigits;
  if (regex == kCjkKanaRegex) return SplitPattern::kCjkKana;
  if (regex == kWordsRegex) return SplitPattern::kWords;
  return make_error("unknown Split pattern \"" + regex.substr(0, 80) + "\"", "pre_tokenizer", {},
                    "whale knows the pre-tokenizer patterns of DeepSeek's tokenizers");
}

void split(SplitPattern pattern, std::string_view text, Span piece, std::vector<Span>& out) {
  const Scanner sc(text, piece.end);
  size_t gap = piece.begin, i = piece.begin;
  while (i < piece.end) {
    size_t end = kNone;
    switch (pattern) {
      case SplitPattern::kDigits: {
        size_t j = i;
        for (int n = 0; n < 3 && j < piece.end; ++n) {
          const Char c = sc.at(j);
          if (!(c.cls & kNumber)) break;
          j = c.next;
        }
        if (j > i) end = j;
        break;
      }
      case SplitPattern::kCjkKana: {
        const size_t j = sc.run_if(i, is_cjk_kana);
        if (j > i) end = j;
        break;
      }
      case SplitPattern::kWords:
        end = match_words(sc, i);
        break;
    }
    if (end == kNone) {
      i = sc.at(i).next;
      continue;
    }
    if (i > gap) out.push_back({gap, i});
    out.push_back({i, end});
    gap = i = end;
  }
  if (piece.end > gap) out.push_back({gap, piece.end});
}

}  // namespace whale::tok
