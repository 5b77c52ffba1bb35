#include "tokenizer/bpe.h"

#include <algorithm>
#include <queue>

namespace whale::tok {

Bpe::Bpe(Bpe&& other) noexcept { *this = std::move(other); }

Bpe& Bpe::operator=(Bpe&& other) noexcept {
  // ids_ holds views into tokens_: moving the vector keeps its buffer, so the views stay valid.
  tokens_ = std::move(other.tokens_);
  ids_ = std::move(other.ids_);
  merges_ = std::move(other.merges_);
  std::copy(std::begin(other.byte_ids_), std::end(other.byte_ids_), std::begin(byte_ids_));
  ignore_merges_ = other.ignore_merges_;
  return *this;
}

Result<Bpe> Bpe::build(std::vector<std::string> tokens,
                       const std::vector<std::pair<std::string, std::string>>& merges,
                       bool ignore_merges) {
  Bpe bpe;
  bpe.ignore_merges_ = ignore_merges;
  bpe.tokens_ = std::move(tokens);
  bpe.ids_.reserve(bpe.tokens_.size());
  for (size_t id = 0; id < bpe.tokens_.size(); ++id) {
    if (bpe.tokens_[id].empty()) continue;
    // The first id wins if a spelling repeats (it cannot in a valid tokenizer.json).
    bpe.ids_.emplace(bpe.tokens_[id], static_cast<int32_t>(id));
  }
  for (int b = 0; b < 256; ++b) {
    const char c = static_cast<char>(b);
    const int32_t id = bpe.find(std::string_view(&c, 1));
    if (id < 0) {
      return make_error("byte " + std::to_string(b) + " has no token", "model.vocab", {},
                        "a byte-level BPE vocabulary holds all 256 bytes");
    }
    bpe.byte_ids_[b] = id;
  }
  bpe.merges_.reserve(merges.size());
  for (size_t rank = 0; rank < merges.size(); ++rank) {
    const auto& [left, right] = merges[rank];
    const int32_t a = bpe.find(left), b = bpe.find(right), m = bpe.find(left + right);
    if (a < 0 || b < 0 || m < 0) {
      return make_error("merge " + std::to_string(rank) + " uses a token missing from the vocab",
                        "model.merges");
    }
    // A repeated merge keeps its first (best) rank.
    bpe.merges_.emplace(pair_key(a, b), Merge{static_cast<int32_t>(rank), m});
  }
  return bpe;
}

int32_t Bpe::find(std::string_view bytes) const {
  const auto it = ids_.find(bytes);
  return it == ids_.end() ? -1 : it->second;
}

void Bpe::merge_all(std::vector<int32_t>& sym) const {
  const auto n = static_cast<int32_t>(sym.size());
  // Doubly linked list over positions; a merged-away position gets id -1.
  std::vector<int32_t> prev(static_cast<size_t>(n)), next(static_cast<size_t>(n));
  for (int32_t i = 0; i < n; ++i) {
    prev[static_cast<size_t>(i)] = i - 1;
    next[static_cast<size_t>(i)] = i + 1 < n ? i + 1 : -1;
  }
  struct Candidate {
    int32_t rank, pos;
    bool operator>(const Candidate& o) const {
      return rank != o.rank ? rank > o.rank : pos > o.pos;
    }
  };
  std::priority_queue<Candidate, std::vector<Candidate>, std::greater<>> heap;
  auto push = [&](int32_t pos) {
    const int32_t nx = next[static_cast<size_t>(pos)];
    if (nx < 0) return;
    const auto it =
        merges_.find(pair_key(sym[static_cast<size_t>(pos)], sym[static_cast<size_t>(nx)]));
    if (it != merges_.end()) heap.push({it->second.rank, pos});
  };
  for (int32_t i = 0; i + 1 < n; ++i) push(i);
  while (!heap.empty()) {
    const Candidate top = heap.top();
    heap.pop();
    const auto p = static_cast<size_t>(top.pos);
    if (sym[p] < 0 || next[p] < 0) continue;
    const auto nx = static_cast<size_t>(next[p]);
    const auto it = merges_.find(pair_key(sym[p], sym[nx]));
    if (it == merges_.end() || it->second.rank != top.rank) continue;  // stale candidate
    sym[p] = it->second.merged;
    sym[nx] = -1;
    next[p] = next[nx];
    if (next[p] >= 0) prev[static_cast<size_t>(next[p])] = top.pos;
    if (prev[p] >= 0) push(prev[p]);
    push(top.pos);
  }
  size_t w = 0;
  for (int32_t id : sym) {
    if (id >= 0) sym[w++] = id;
  }
  sym.resize(w);
}

void Bpe::encode(std::string_view piece, std::vector<int32_t>& out) const {
  if (piece.empty()) return;
  if (ignore_merges_) {
    if (const int32_t id = find(piece); id >= 0) {
      out.push_back(id);
      return;
    }
  }
  if (piece.size() == 1) {
    out.push_back(byte_ids_[static_cast<uint8_t>(piece[0])]);
    return;
  }
  const bool cacheable = piece.size() <= kCachedPieceBytes;
  if (cacheable) {
    std::lock_guard lock(cache_mutex_);
    const auto it = cache_.find(std::string(piece));
    if (it != cache_.end()) {
      out.insert(out.end(), it->second.begin(), it->second.end());
      return;
    }
  }
  std::vector<int32_t> sym(piece.size());
  for (size_t i = 0; i < piece.size(); ++i) sym[i] = byte_ids_[static_cast<uint8_t>(piece[i])];
  merge_all(sym);
  out.insert(out.end(), sym.begin(), sym.end());
  if (cacheable) {
    std::lock_guard lock(cache_mutex_);
    if (cache_.size() >= kCacheEntries) cache_.clear();
    cache_.emplace(std::string(piece), std::move(sym));
  }
}

}  // namespace whale::tok
