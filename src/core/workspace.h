// Scratch memory for one forward pass, handed out by bumping an offset and given back in
// stack order. Once a pass of some shape has run, the next pass of that shape (a decode step)
// allocates nothing: the blocks stay, merged into one. They are freed instead, when everything
// has been given back, if they hold more than `retain_bytes`, so that one very long prompt does
// not keep its activations. Keeping a prefill's memory pays too: synth-v3-1b's 512-token
// prefill takes 93 MB, and memory fresh from the system costs a page fault per 4 KB.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <type_traits>
#include <vector>

namespace whale {

class Workspace {
 public:
  explicit Workspace(size_t retain_bytes = size_t{1} << 30) : retain_bytes_(retain_bytes) {}
  Workspace(const Workspace&) = delete;
  Workspace& operator=(const Workspace&) = delete;

  // n elements, uninitialised (default-initialised), 64-byte aligned; valid until the Scope
  // that was open when they were taken closes.
  template <class T>
  std::span<T> take(int64_t n) {
    static_assert(std::is_trivially_destructible_v<T> && std::is_default_constructible_v<T>);
    auto* p = static_cast<T*>(take_bytes(static_cast<size_t>(n) * sizeof(T)));
    std::uninitialized_default_construct_n(p, n);
    return {p, static_cast<size_t>(n)};
  }

  // Gives back, when it closes, everything taken while it was open.
  class Scope {
   public:
    explicit Scope(Workspace& ws) : ws_(ws), block_(ws.current_), used_(ws.used_) {}
    ~Scope() { ws_.give_back(block_, used_); }
    Scope(const Scope&) = delete;
    Scope& operator=(const Scope&) = delete;

   private:
    Workspace& ws_;
    size_t block_, used_;
  };

  // Bytes held now, in use or not.
  size_t capacity() const;

 private:
  struct Block {
    std::unique_ptr<std::byte[]> storage;
    std::byte* data = nullptr;  // storage, 64-byte aligned
    size_t size = 0;
  };
  void* take_bytes(size_t bytes);
  void give_back(size_t block, size_t used);

  size_t retain_bytes_;
  std::vector<Block> blocks_;
  size_t current_ = 0;  // the block being bumped (blocks_.size() while there is none)
  size_t used_ = 0;     // bytes taken from it
};

}  // namespace whale
