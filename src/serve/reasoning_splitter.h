// Splits a streamed answer into reasoning (before </think>) and content.
#pragma once

#include <algorithm>
#include <string>
#include <string_view>
#include <utility>

namespace whale::serve {

inline constexpr std::string_view kThinkEnd = "</think>";

class ReasoningSplitter {
 public:
  explicit ReasoningSplitter(bool thinking) : after_think_(thinking), thinking_(thinking) {}
  // Returns (reasoning, content) pieces that are final now.
  std::pair<std::string, std::string> push(std::string_view text) {
    if (!thinking_) return {{}, strip_leading_newlines(std::string(text))};
    held_ += text;
    const size_t end = held_.find(kThinkEnd);
    if (end != std::string::npos) {
      thinking_ = false;
      std::string reasoning = held_.substr(0, end);
      std::string content = strip_leading_newlines(held_.substr(end + kThinkEnd.size()));
      held_.clear();
      return {reasoning, content};
    }
    size_t keep = 0;
    for (size_t n = std::min(kThinkEnd.size() - 1, held_.size()); n > 0; --n) {
      if (held_.compare(held_.size() - n, n, kThinkEnd, 0, n) == 0) {
        keep = n;
        break;
      }
    }
    std::string out = held_.substr(0, held_.size() - keep);
    held_.erase(0, held_.size() - keep);
    return {out, {}};
  }
  std::pair<std::string, std::string> flush() {
    std::string rest = std::move(held_);
    held_.clear();
    if (thinking_) return {rest, {}};
    return {{}, strip_leading_newlines(rest)};
  }
  bool thinking() const { return thinking_; }

 private:
  // The answer after </think> usually opens with blank lines; they are not content. They may
  // arrive in pieces after the tag, so this lasts until the first other character.
  std::string strip_leading_newlines(std::string s) {
    if (!after_think_) return s;
    const size_t n = s.find_first_not_of('\n');
    if (n == std::string::npos) return {};
    after_think_ = false;
    return s.substr(n);
  }
  bool after_think_;  // strip newlines until content starts (only after a </think>)
  bool thinking_;
  std::string held_;
};

}  // namespace whale::serve
