#include "tokenizer/pretokenizer.h"

#include <oniguruma.h>

#include <array>
#include <mutex>

namespace whale::tok {
namespace {

// Pre-tokenizer patterns of known byte-level BPE tokenizers (as they read after JSON decoding).
constexpr std::array<std::string_view, 5> kAllowedPatterns = {
    // DeepSeek-V3 / R1 / V3.1 / V3.2: digits in runs of 1-3, CJK and kana runs, the rest.
    R"(\p{N}{1,3})",
    "[\u4E00-\u9FA5\u3040-\u309F\u30A0-\u30FF]+",
    "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+|"
    " ?[\\p{P}\\p{S}]+[\r\n]*|\\s*[\r\n]+|\\s+(?!\\S)|\\s+",
    // GPT-2's pattern (HF ByteLevel with use_regex).
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)",
    // Single digits (some tokenizers split every digit).
    R"(\p{N})",
};

void init_oniguruma() {
  static std::once_flag once;
  std::call_once(once, [] {
    OnigEncoding encodings[] = {ONIG_ENCODING_UTF8};
    onig_initialize(encodings, 1);
  });
}

}  // namespace

bool is_allowed_pattern(std::string_view pattern) {
  for (std::string_view p : kAllowedPatterns) {
    if (p == pattern) return true;
  }
  return false;
}

struct RegexSplit::Impl {
  OnigRegex regex = nullptr;
  ~Impl() {
    if (regex) onig_free(regex);
  }
};

RegexSplit::RegexSplit(RegexSplit&&) noexcept = default;
RegexSplit& RegexSplit::operator=(RegexSplit&&) noexcept = default;
RegexSplit::~RegexSplit() = default;

Result<RegexSplit> RegexSplit::compile(const std::string& pattern) {
  if (!is_allowed_pattern(pattern)) {
    return make_error("unknown Split pattern \"" + pattern.substr(0, 80) + "\"", "pre_tokenizer",
                      {}, "whale accepts the patterns of known tokenizers only");
  }
  init_oniguruma();
  RegexSplit r;
  r.impl_ = std::make_unique<Impl>();
  OnigErrorInfo info;
  const auto* p = reinterpret_cast<const OnigUChar*>(pattern.data());
  const int rc = onig_new(&r.impl_->regex, p, p + pattern.size(), ONIG_OPTION_NONE,
                          ONIG_ENCODING_UTF8, ONIG_SYNTAX_DEFAULT, &info);
  if (rc != ONIG_NORMAL) {
    OnigUChar message[ONIG_MAX_ERROR_MESSAGE_LEN];
    onig_error_code_to_str(message, rc, &info);
    return make_error("regex does not compile: " + std::string(reinterpret_cast<char*>(message)),
                      "pre_tokenizer");
  }
  return r;
}

Status RegexSplit::split(std::string_view text, Span piece, std::vector<Span>& out) const {
  // The regex sees only the piece: look-ahead stops at its end, as in HF.
  const auto* base = reinterpret_cast<const OnigUChar*>(text.data() + piece.begin);
  const size_t len = piece.end - piece.begin;
  const OnigUChar* end = base + len;
  OnigRegion* region = onig_region_new();
  size_t prev = 0, pos = 0;
  Status status = ok_status();
  while (pos <= len) {
    const int r = onig_search(impl_->regex, base, end, base + pos, end, region, ONIG_OPTION_NONE);
    if (r == ONIG_MISMATCH) break;
    if (r < 0) {
      status = make_error("regex search failed (code " + std::to_string(r) + ")", "pre_tokenizer");
      break;
    }
    const auto mb = static_cast<size_t>(region->beg[0]), me = static_cast<size_t>(region->end[0]);
    if (mb > prev) out.push_back({piece.begin + prev, piece.begin + mb});
    if (me > mb) out.push_back({piece.begin + mb, piece.begin + me});
    prev = me;
    // An empty match moves on by one character (none of the allowed patterns has one).
    pos = me > mb ? me : me + 1;
    while (me == mb && pos < len && (base[pos] & 0xC0) == 0x80) ++pos;
  }
  if (len > prev) out.push_back({piece.begin + prev, piece.end});
  onig_region_free(region, 1);
  return status;
}

}  // namespace whale::tok
