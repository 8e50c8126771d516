// byte_block: a receive buffer that a decoder and the sends in flight can
// share, so received content is echoed or forwarded from where it was
// received (a gather list into the block) instead of being copied into a
// send buffer.
//
// One thread's (like the connection that owns it): the count is a plain
// integer. The last reference gives the block back to a per-thread pool of
// size classes (up to 4 MiB), or frees it. The rule that makes sharing safe
// is the decoder's: it never writes over, moves or reuses bytes of a block
// that someone else still holds (it writes only past what it has received,
// or takes another block).
#pragma once

#include <cstddef>
#include <cstdint>
#include <utility>

namespace ringframe::detail {

class byte_block {
 public:
  // Zeroed bytes after capacity(): simdjson may read that far past the end
  // of a document (SIMDJSON_PADDING, checked in frame.cpp).
  static constexpr std::size_t tail_padding = 64;
  // Capacities the pool keeps: the smallest is the common receive buffer;
  // above it, four classes per power of two (p * 5/4, 6/4, 7/4, 2).
  static constexpr std::size_t smallest_class = 16 * 1024;
  static constexpr std::size_t largest_class = std::size_t{4} << 20;

  // A block of at least `cap` bytes (a class size, rounded up, when it is
  // in the pooled range), with one reference: from the pool, or new.
  // Throws std::bad_alloc.
  static byte_block* make(std::size_t cap);
  // The capacity make(n) would give.
  static std::size_t round_up(std::size_t n) noexcept;

  std::byte* data() noexcept { return reinterpret_cast<std::byte*>(this + 1); }
  const std::byte* data() const noexcept { return reinterpret_cast<const std::byte*>(this + 1); }
  std::size_t capacity() const noexcept { return cap_; }
  bool shared() const noexcept { return refs_ > 1; }
  bool contains(const void* p, std::size_t n) const noexcept {
    auto* b = static_cast<const std::byte*>(p);
    return b >= data() && n <= cap_ && b - data() <= static_cast<std::ptrdiff_t>(cap_ - n);
  }
  void add_ref() noexcept { ++refs_; }
  void release() noexcept {
    if (--refs_ == 0) recycle(this);
  }

  // Bytes the calling thread's pool holds (for tests and stats).
  static std::size_t pooled_bytes() noexcept;

 private:
  explicit byte_block(std::size_t cap) noexcept : cap_(cap) {}
  static byte_block* fresh(std::size_t cap);  // a new one, not the pool's
  static void recycle(byte_block* b) noexcept;

  std::size_t cap_;
  std::uint32_t refs_ = 1;
};
static_assert(sizeof(byte_block) == 16, "data() stays 16-byte aligned");

// An owning reference (like an intrusive_ptr).
class block_ref {
 public:
  block_ref() noexcept = default;
  // Adopts the reference `b` comes with.
  explicit block_ref(byte_block* b) noexcept : b_(b) {}
  block_ref(const block_ref& o) noexcept : b_(o.b_) {
    if (b_) b_->add_ref();
  }
  block_ref(block_ref&& o) noexcept : b_(std::exchange(o.b_, nullptr)) {}
  block_ref& operator=(block_ref o) noexcept {
    std::swap(b_, o.b_);
    return *this;
  }
  ~block_ref() { reset(); }
  void reset() noexcept {
    if (b_) std::exchange(b_, nullptr)->release();
  }
  byte_block* get() const noexcept { return b_; }
  byte_block* operator->() const noexcept { return b_; }
  explicit operator bool() const noexcept { return b_ != nullptr; }

 private:
  byte_block* b_ = nullptr;
};

}  // namespace ringframe::detail
