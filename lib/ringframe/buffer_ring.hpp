// buffer_ring: receive buffers handed to the kernel (a provided buffer ring,
// IORING_REGISTER_PBUF_RING, Linux 5.19). A recv with IOSQE_BUFFER_SELECT
// holds no memory while it waits: the kernel picks a buffer only when data
// arrives. So an idle connection costs no receive buffer at all.
//
// It can grow: a registered ring cannot be resized, so grow() registers a
// new part, with twice as many buffers as the last one, under a new group,
// and recvs armed from then on name that group. Buffer ids run on across the parts, so data() and
// recycle() need only the id a completion carries, whichever part it came
// from; older parts keep serving the recvs armed before.
//
// On the epoll backend the same buffers are handed out by take() from a
// free list: a recv takes one only when data is there to read into it, and
// gives it back when it reads nothing, so the contract above holds.
//
// Each buffer is followed by SIMDJSON_PADDING spare bytes, so its content can
// be parsed in place like the decoder's own buffer.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

struct io_uring;
struct io_uring_buf_ring;

namespace ringframe {

class buffer_ring {
 public:
  static constexpr std::size_t padding = 64;

  // Registers `count` (a power of two) buffers of `size` bytes as group
  // `group` with `ring`; grow() may take it to `max_count` in all. Throws
  // std::system_error when the kernel refuses. A null `ring`: the buffers
  // are handed out by take() instead (the epoll backend).
  buffer_ring(io_uring* ring, unsigned count, std::size_t size, std::uint16_t group, unsigned max_count = 0);
  ~buffer_ring();
  buffer_ring(const buffer_ring&) = delete;
  buffer_ring& operator=(const buffer_ring&) = delete;

  // The group a recv armed now should name (the newest part's).
  std::uint16_t group() const noexcept { return parts_.back().group; }
  std::size_t buffer_size() const noexcept { return size_; }
  // Buffers in all parts.
  unsigned count() const noexcept { return total_; }
  // The bytes a completion put in buffer `id`.
  std::span<std::byte> data(std::uint16_t id, std::size_t len) noexcept {
    const part& p = part_of(id);
    return {p.base.get() + static_cast<std::size_t>(id - p.first_id) * stride(), len};
  }
  // Give buffer `id` back (to the kernel, or to the free list).
  void recycle(std::uint16_t id) noexcept;
  // Without a ring: take a free buffer's id; false when every one is in use.
  bool take(std::uint16_t& id) noexcept {
    if (free_.empty()) return false;
    id = free_.back();
    free_.pop_back();
    return true;
  }
  // Register a new part with twice as many buffers as the last one; false
  // when that would pass max_count or the kernel refuses (nothing changes).
  bool grow() noexcept;

 private:
  struct part {
    io_uring_buf_ring* br = nullptr;
    std::size_t br_bytes = 0;
    std::unique_ptr<std::byte[]> base;
    unsigned first_id = 0;
    unsigned count = 0;
    std::uint16_t group = 0;
  };
  std::size_t stride() const noexcept { return size_ + padding; }
  const part& part_of(std::uint16_t id) const noexcept {
    // Newest first: most buffers are there, and there are few parts.
    for (auto it = parts_.rbegin(); it != parts_.rend(); ++it)
      if (id >= it->first_id) return *it;
    return parts_.front();
  }
  void add_part(unsigned count, std::uint16_t group);  // throws std::system_error

  io_uring* ring_;
  std::vector<std::uint16_t> free_;  // without a ring: the buffers not in use
  std::size_t size_;
  unsigned total_ = 0;
  unsigned max_count_;
  std::vector<part> parts_;
};

}  // namespace ringframe
