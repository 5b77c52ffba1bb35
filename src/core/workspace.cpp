#include "core/workspace.h"

#include <algorithm>

namespace whale {
namespace {

constexpr size_t kAlign = 64;
constexpr size_t kMinBlock = size_t{64} << 10;

size_t round_up(size_t n) { return (n + kAlign - 1) / kAlign * kAlign; }

}  // namespace

size_t Workspace::capacity() const {
  size_t total = 0;
  for (const Block& b : blocks_) total += b.size;
  return total;
}

void* Workspace::take_bytes(size_t bytes) {
  bytes = round_up(std::max<size_t>(bytes, 1));
  if (current_ < blocks_.size() && used_ + bytes <= blocks_[current_].size) {
    void* p = blocks_[current_].data + used_;
    used_ += bytes;
    return p;
  }
  // On to the next block; the blocks after the current one hold nothing taken.
  const size_t next = current_ < blocks_.size() && used_ > 0 ? current_ + 1 : current_;
  if (next >= blocks_.size() || blocks_[next].size < bytes) {
    blocks_.resize(std::min(next, blocks_.size()));
    // At least as large as all the blocks before it, so that a pass needs few blocks, and
    // their merge (when all is given back) fits the whole pass the next time.
    Block b;
    b.size = std::max({bytes, capacity(), kMinBlock});
    b.storage = std::make_unique_for_overwrite<std::byte[]>(b.size + kAlign);
    const auto base = reinterpret_cast<uintptr_t>(b.storage.get());
    b.data = b.storage.get() + (round_up(base) - base);
    blocks_.push_back(std::move(b));
  }
  current_ = next;
  used_ = bytes;
  return blocks_[next].data;
}

void Workspace::give_back(size_t block, size_t used) {
  current_ = block;
  used_ = used;
  if (block != 0 || used != 0 || blocks_.empty()) return;
  // Everything is back: keep one block that holds what the pass took, or nothing if that is
  // more than is worth keeping.
  const size_t total = capacity();
  if (total > retain_bytes_) {
    blocks_.clear();
  } else if (blocks_.size() > 1) {
    blocks_.clear();
    take_bytes(total);
    used_ = 0;
  }
}

}  // namespace whale
