// buffer_ring: receive buffers handed to the kernel (a provided buffer ring,
// IORING_REGISTER_PBUF_RING, Linux 5.19). A recv with IOSQE_BUFFER_SELECT
// holds no memory while it waits: the kernel picks a buffer only when data
// arrives. So an idle connection costs no receive buffer at all.
//
// Each buffer is followed by SIMDJSON_PADDING spare bytes, so its content can
// be parsed in place like the decoder's own buffer.
#pragma once

#include <liburing.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>

namespace ringframe {

class executor;

class buffer_ring {
 public:
  static constexpr std::size_t padding = 64;

  // Registers `count` (a power of two) buffers of `size` bytes as group
  // `group`. Throws std::system_error when the kernel refuses.
  buffer_ring(io_uring* ring, unsigned count, std::size_t size, std::uint16_t group);
  ~buffer_ring();
  buffer_ring(const buffer_ring&) = delete;
  buffer_ring& operator=(const buffer_ring&) = delete;

  std::uint16_t group() const noexcept { return group_; }
  std::size_t buffer_size() const noexcept { return size_; }
  // The bytes a completion put in buffer `id`.
  std::span<std::byte> data(std::uint16_t id, std::size_t len) noexcept {
    return {base_.get() + static_cast<std::size_t>(id) * stride(), len};
  }
  // Give buffer `id` back to the kernel.
  void recycle(std::uint16_t id) noexcept;

 private:
  std::size_t stride() const noexcept { return size_ + padding; }
  io_uring* ring_;
  io_uring_buf_ring* br_ = nullptr;
  std::size_t br_bytes_ = 0;
  std::unique_ptr<std::byte[]> base_;
  unsigned count_;
  std::size_t size_;
  std::uint16_t group_;
};

}  // namespace ringframe
