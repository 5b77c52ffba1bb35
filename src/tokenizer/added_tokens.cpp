#include "tokenizer/added_tokens.h"

#include <algorithm>
#include <cctype>

#include "tokenizer/utf8.h"

namespace whale::tok {
namespace {

bool is_space(uint32_t cp) {
  return cp == ' ' || (cp >= '\t' && cp <= '\r') || cp == 0x85 || cp == 0xA0 || cp == 0x1680 ||
         (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F ||
         cp == 0x205F || cp == 0x3000;
}

// ASCII approximation of HF's word character (alphanumeric or '_') for single_word tokens.
bool is_word_byte(char c) {
  return std::isalnum(static_cast<unsigned char>(c)) || c == '_' ||
         static_cast<unsigned char>(c) >= 0x80;
}

}  // namespace

AddedTokenMatcher::AddedTokenMatcher(const std::vector<AddedToken>& tokens) : trie_(1) {
  for (const AddedToken& t : tokens) {
    if (t.content.empty()) continue;
    int32_t node = 0;
    for (char ch : t.content) {
      const auto b = static_cast<uint8_t>(ch);
      int32_t next = child(node, b);
      if (next < 0) {
        next = static_cast<int32_t>(trie_.size());
        trie_.emplace_back();
        auto& kids = trie_[static_cast<size_t>(node)].children;
        kids.insert(std::upper_bound(kids.begin(), kids.end(), std::make_pair(b, int32_t{-1})),
                    {b, next});
      }
      node = next;
    }
    trie_[static_cast<size_t>(node)].token = static_cast<int32_t>(tokens_.size());
    tokens_.push_back(t);
  }
}

int32_t AddedTokenMatcher::child(int32_t node, uint8_t b) const {
  const auto& kids = trie_[static_cast<size_t>(node)].children;
  const auto it = std::lower_bound(kids.begin(), kids.end(), std::make_pair(b, int32_t{-1}));
  return it != kids.end() && it->first == b ? it->second : -1;
}

int32_t AddedTokenMatcher::longest_at(std::string_view text, size_t i, size_t* length) const {
  int32_t node = 0, best = -1;
  for (size_t j = i; j < text.size(); ++j) {
    node = child(node, static_cast<uint8_t>(text[j]));
    if (node < 0) break;
    if (trie_[static_cast<size_t>(node)].token >= 0) {
      best = trie_[static_cast<size_t>(node)].token;
      *length = j + 1 - i;
    }
  }
  return best;
}

std::vector<Segment> AddedTokenMatcher::split(std::string_view text) const {
  std::vector<Segment> out;
  size_t plain_begin = 0;
  for (size_t i = 0; i < text.size(); ++i) {
    if (trie_[0].children.empty()) break;
    size_t len = 0;
    const int32_t t = longest_at(text, i, &len);
    if (t < 0) continue;
    const AddedToken& tok = tokens_[static_cast<size_t>(t)];
    size_t begin = i, end = i + len;
    if (tok.single_word && ((begin > 0 && is_word_byte(text[begin - 1])) ||
                            (end < text.size() && is_word_byte(text[end])))) {
      continue;
    }
    if (tok.lstrip) {
      // Back over whitespace that is still unclaimed, code point by code point.
      while (begin > plain_begin) {
        size_t k = begin - 1;
        while (k > plain_begin && (static_cast<uint8_t>(text[k]) & 0xC0) == 0x80) --k;
        size_t probe = k;
        if (!is_space(next_code_point(text, probe))) break;
        begin = k;
      }
    }
    if (tok.rstrip) {
      while (end < text.size()) {
        size_t probe = end;
        if (!is_space(next_code_point(text, probe))) break;
        end = probe;
      }
    }
    if (begin > plain_begin) out.push_back({plain_begin, begin, -1});
    out.push_back({begin, end, tok.id});
    plain_begin = end;
    i = end - 1;
  }
  if (plain_begin < text.size()) out.push_back({plain_begin, text.size(), -1});
  return out;
}

}  // namespace whale::tok
