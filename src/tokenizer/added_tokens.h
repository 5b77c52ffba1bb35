// Added tokens (special or not) found in raw text before pre-tokenization, leftmost-longest,
// with HF's lstrip / rstrip / single_word options.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace whale::tok {

struct AddedToken {
  int32_t id = 0;
  std::string content;
  bool special = false;
  bool lstrip = false;       // the match also swallows whitespace on its left
  bool rstrip = false;       // ... and on its right
  bool single_word = false;  // only matches when not inside a word
};

// A piece of text to tokenize, or an added token already identified.
struct Segment {
  size_t begin, end;   // byte range in the text
  int32_t token = -1;  // the added token's id, or -1 for plain text
};

class AddedTokenMatcher {
 public:
  explicit AddedTokenMatcher(const std::vector<AddedToken>& tokens);
  // Splits text into plain segments and added tokens (none empty).
  std::vector<Segment> split(std::string_view text) const;
  bool empty() const { return tokens_.empty(); }

 private:
  struct Node {
    std::vector<std::pair<uint8_t, int32_t>> children;  // sorted by byte
    int32_t token = -1;                                 // index into tokens_ when a token ends here
  };
  int32_t child(int32_t node, uint8_t b) const;
  // Longest token starting at i (index into tokens_, or -1), and its length.
  int32_t longest_at(std::string_view text, size_t i, size_t* length) const;

  std::vector<AddedToken> tokens_;
  std::vector<Node> trie_;
};

}  // namespace whale::tok
