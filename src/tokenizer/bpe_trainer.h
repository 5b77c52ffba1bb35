// Trains a byte-level BPE tokenizer with DeepSeek's pre-tokenizer (the same three splits as
// V3, then GPT-2's byte-level alphabet) and writes it as a standard HF tokenizer.json that
// both whale and HF `tokenizers` load.
//
// Text is counted as pre-tokenized pieces (memory grows with the number of distinct pieces,
// not with the corpus); merges are then learned over the distinct pieces weighted by their
// counts, always taking the most frequent adjacent pair (ties: the pair of smaller ids), with
// pair counts kept up to date incrementally.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "core/error.h"

namespace whale::tok {

struct TrainedAddedToken {
  std::string content;
  bool special = false;  // skipped when decoding (HF's "special")
};

struct BpeTrainOptions {
  int32_t vocab_size = 8192;  // all tokens: 256 bytes + merges + special tokens
  int64_t min_frequency = 2;  // a pair seen fewer times is never merged
  // Added tokens, given the last ids.
  std::vector<TrainedAddedToken> added_tokens;
  // Called now and then with the number of merges done and wanted.
  std::function<void(int64_t done, int64_t total)> progress;
};

struct BpeTrainResult {
  std::string tokenizer_json;
  int32_t merges = 0;  // how many were learned (fewer than asked when pairs run out)
  int32_t vocab_size = 0;
  int64_t distinct_pieces = 0;
};

class BpeTrainer {
 public:
  // Pre-tokenizes text (invalid UTF-8 is repaired, as the tokenizer does) and counts its pieces.
  void add_text(std::string_view text);
  int64_t distinct_pieces() const { return int64_t(counts_.size()); }
  Result<BpeTrainResult> train(const BpeTrainOptions& options) const;

 private:
  std::unordered_map<std::string, int64_t> counts_;
};

// DeepSeek-V3's special and control tokens (beginning/end of sentence, padding, FIM, chat
// roles, tool calls), which whale's chat formats and the V3 chat template use.
std::vector<TrainedAddedToken> deepseek_added_tokens();

// Writes DIR/tokenizer.json and DIR/tokenizer_config.json (BOS/EOS, add_bos_token, and the
// given chat template) for a tokenizer trained with deepseek_added_tokens().
Status write_trained_tokenizer(const std::string& dir, const BpeTrainResult& result,
                               const std::string& chat_template);

}  // namespace whale::tok
