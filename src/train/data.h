// Token shards for training: a small header and token ids, written by `whale data prepare` and
// streamed by the trainer in a seeded shuffle of fixed-length windows.
//
// File layout (little-endian):
//   bytes 0..7    magic "WHALETOK"
//   bytes 8..11   u32 format version (1)
//   bytes 12..15  u32 bytes per token id (2 or 4)
//   bytes 16..23  u64 number of tokens
//   bytes 24..    the ids
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/mapped_file.h"

namespace whale::train {

inline constexpr char kShardMagic[8] = {'W', 'H', 'A', 'L', 'E', 'T', 'O', 'K'};
inline constexpr uint32_t kShardVersion = 1;
inline constexpr size_t kShardHeaderBytes = 24;

// Writes ids as a shard at `path` (u16 when every id fits, else u32), atomically.
Status write_shard(const std::string& path, std::span<const int32_t> ids);

// One mapped shard, validated.
class Shard {
 public:
  static Result<Shard> open(const std::string& path);
  int64_t size() const { return count_; }
  int32_t at(int64_t i) const;
  const std::string& path() const { return file_->path(); }

 private:
  std::shared_ptr<MappedFile> file_;
  int64_t count_ = 0;
  uint32_t width_ = 2;
};

// Windows of `window` tokens from a set of shards (a window never crosses two shards), visited
// in a seeded random order, epoch after epoch: window w of epoch e is the permutation(seed, e)'s
// w-th. The position (epoch, index) is all the state a resume needs.
class WindowStream {
 public:
  // `paths`: shard files, or directories whose files named PREFIX*.bin are taken in name order.
  static Result<WindowStream> open(const std::vector<std::string>& paths, const std::string& prefix,
                                   int64_t window, uint64_t seed);
  // The next window's tokens into out[window]; ids are checked against vocab_size.
  Status next(int32_t* out, int64_t vocab_size);
  int64_t windows() const { return int64_t(starts_.size()); }
  int64_t tokens() const;
  int64_t epoch() const { return epoch_; }
  int64_t index() const { return index_; }
  void seek(int64_t epoch, int64_t index);
  // Window w in file order (no shuffle), for evaluation.
  Status window(int64_t w, int32_t* out, int64_t vocab_size) const;

 private:
  void shuffle();
  std::vector<Shard> shards_;
  std::vector<std::pair<int32_t, int64_t>> starts_;  // (shard, first token) of each window
  std::vector<int64_t> order_;
  int64_t window_ = 0;
  uint64_t seed_ = 0;
  int64_t epoch_ = 0, index_ = 0;
};

struct PrepareOptions {
  std::string tokenizer_dir;
  std::vector<std::string> inputs;  // UTF-8 text files
  std::string out_dir;
  double val_fraction = 0.0;         // the last fraction of each input (at a line break) is held out
  int64_t shard_tokens = 100'000'000;  // the most tokens per shard file
};
struct PrepareReport {
  int64_t train_tokens = 0, val_tokens = 0;
  std::vector<std::string> files;
};
// Tokenizes every input (a beginning-of-sentence token before each, when the tokenizer has one)
// into OUT/train_NNNNN.bin and OUT/val_NNNNN.bin.
Result<PrepareReport> prepare_data(const PrepareOptions& options);

}  // namespace whale::train
