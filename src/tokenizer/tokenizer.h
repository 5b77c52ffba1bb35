// A byte-level BPE tokenizer loaded from HF tokenizer.json (+ tokenizer_config.json), giving
// the same ids as HF tokenizers.
//
// Encoding: (added tokens are cut out of the raw text first, in kParseSpecial mode only) →
// each remaining segment goes through the Split pre-tokenizers in order → each piece through
// BPE over its raw bytes. Invalid UTF-8 in the input is replaced by U+FFFD first (one per
// maximal invalid sequence, as HF's lossy conversion does), so encoding never fails on text.
#pragma once

#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "core/error.h"
#include "tokenizer/added_tokens.h"
#include "tokenizer/bpe.h"
#include "tokenizer/pretokenizer.h"

namespace whale::tok {

enum class SpecialTokens {
  kParse,   // added tokens written in the text become their ids (template scaffolding)
  kIgnore,  // everything is plain text (anything a user wrote)
};

// What tokenizer_config.json says, where present.
struct TokenizerConfig {
  std::optional<std::string> bos_token;
  std::optional<std::string> eos_token;
  bool add_bos_token = false;
  std::string chat_template;  // the default template's text, empty if none
};

class Tokenizer {
 public:
  // DIR holding tokenizer.json (and optionally tokenizer_config.json), or a tokenizer.json path.
  static Result<Tokenizer> load(const std::string& path);
  // Parses tokenizer.json text; `source` names it in errors.
  static Result<Tokenizer> from_json(const std::string& json_text, const std::string& source);

  Result<std::vector<int32_t>> encode(std::string_view text, SpecialTokens mode) const;
  // Added tokens are recognised only when they lie inside one of the `scaffolding` ranges
  // (sorted, disjoint): a rendered chat's template text, not what users wrote.
  Result<std::vector<int32_t>> encode_with_scaffolding(std::string_view text,
                                                       std::span<const Span> scaffolding) const;
  // Token ids to text; invalid UTF-8 produced by a cut sequence becomes U+FFFD.
  Result<std::string> decode(std::span<const int32_t> ids) const;

  // Ids are [0, vocab_size()); some ids in the range may be unused.
  int32_t vocab_size() const { return static_cast<int32_t>(token_bytes_.size()); }
  bool is_valid_id(int32_t id) const {
    return id >= 0 && id < vocab_size() && defined_[static_cast<size_t>(id)];
  }
  // The bytes a token decodes to.
  const std::string& token_bytes(int32_t id) const { return token_bytes_[static_cast<size_t>(id)]; }
  // Id of an added token or vocabulary entry spelled exactly `text`.
  std::optional<int32_t> token_id(std::string_view text) const;
  const TokenizerConfig& config() const { return config_; }
  const std::vector<AddedToken>& added_tokens() const { return added_; }

 private:
  Status pre_tokenize(std::string_view text, Span segment, std::vector<Span>& pieces) const;
  // Pre-tokenizes and BPE-encodes the plain segments, appending to ids.
  Status encode_segments(std::string_view text, const std::vector<Segment>& segments,
                         std::vector<int32_t>& ids) const;

  std::unique_ptr<Bpe> bpe_;
  std::vector<SplitPattern> splits_;
  std::vector<AddedToken> added_;
  std::unique_ptr<AddedTokenMatcher> matcher_;
  std::vector<std::string> token_bytes_;  // id -> decoded bytes
  std::vector<bool> defined_;
  TokenizerConfig config_;
};

// Turns a stream of ids into text pieces that are always whole UTF-8 characters.
class StreamDecoder {
 public:
  explicit StreamDecoder(const Tokenizer& tokenizer) : tokenizer_(&tokenizer) {}
  // The text completed by this token (possibly empty while a character is still open).
  Result<std::string> push(int32_t id);
  // What is left at the end of the stream (an unfinished character becomes U+FFFD).
  std::string finish();

 private:
  const Tokenizer* tokenizer_;
  std::string pending_;
};

}  // namespace whale::tok
