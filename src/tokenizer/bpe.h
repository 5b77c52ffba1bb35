// Byte-pair encoding over raw bytes: a piece starts as single bytes and the adjacent pair with
// the lowest merge rank is merged until no ranked pair is left (leftmost first among equal
// ranks, as HF tokenizers does). Linear-logarithmic in the piece length, so a 100 MB piece is
// fine.
#pragma once

#include <cstdint>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "core/error.h"

namespace whale::tok {

class Bpe {
 public:
  // `tokens[id]` are raw bytes (empty for ids the BPE model does not define); merges are
  // (left, right) pairs of raw byte strings, best first. Every single byte must be a token.
  // `ignore_merges` (HF's flag of that name): a piece that is itself a token is taken whole.
  static Result<Bpe> build(std::vector<std::string> tokens,
                           const std::vector<std::pair<std::string, std::string>>& merges,
                           bool ignore_merges);

  // Appends the ids of `piece` (raw bytes) to `out`. Thread-safe.
  void encode(std::string_view piece, std::vector<int32_t>& out) const;

  Bpe() = default;
  Bpe(Bpe&& other) noexcept;
  Bpe& operator=(Bpe&& other) noexcept;

  int32_t size() const { return static_cast<int32_t>(tokens_.size()); }
  const std::string& token(int32_t id) const { return tokens_[static_cast<size_t>(id)]; }
  // -1 when the bytes are not a token.
  int32_t find(std::string_view bytes) const;

 private:
  struct Merge {
    int32_t rank;
    int32_t merged;
  };
  static uint64_t pair_key(int32_t a, int32_t b) {
    return (uint64_t{static_cast<uint32_t>(a)} << 32) | static_cast<uint32_t>(b);
  }
  void merge_all(std::vector<int32_t>& symbols) const;

  std::vector<std::string> tokens_;
  std::unordered_map<std::string_view, int32_t> ids_;  // views into tokens_
  std::unordered_map<uint64_t, Merge> merges_;
  int32_t byte_ids_[256] = {};
  bool ignore_merges_ = false;

  // Results for short pieces seen before (words repeat a lot in text). Bounded: cleared when
  // full. Guarded by a mutex because one tokenizer serves many threads.
  static constexpr size_t kCacheEntries = 1 << 16;
  static constexpr size_t kCachedPieceBytes = 64;
  mutable std::mutex cache_mutex_;
  mutable std::unordered_map<std::string, std::vector<int32_t>> cache_;
};

}  // namespace whale::tok
