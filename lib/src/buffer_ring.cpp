#include <ringframe/buffer_ring.hpp>
#include <ringframe/result.hpp>

#include <sys/mman.h>

#include <cstring>
#include <system_error>

namespace ringframe {

buffer_ring::buffer_ring(io_uring* ring, unsigned count, std::size_t size, std::uint16_t group)
    : ring_(ring), count_(count), size_(size), group_(group) {
  br_bytes_ = count * sizeof(io_uring_buf);
  void* mem = ::mmap(nullptr, br_bytes_, PROT_READ | PROT_WRITE, MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
  if (mem == MAP_FAILED) throw std::system_error(errno_code(errno), "buffer_ring: mmap");
  br_ = static_cast<io_uring_buf_ring*>(mem);
  io_uring_buf_reg reg{};
  reg.ring_addr = reinterpret_cast<std::uintptr_t>(br_);
  reg.ring_entries = count;
  reg.bgid = group;
  if (int r = io_uring_register_buf_ring(ring_, &reg, 0); r < 0) {
    ::munmap(br_, br_bytes_);
    throw std::system_error(errno_code(-r), "buffer_ring: io_uring_register_buf_ring");
  }
  base_.reset(new std::byte[count * stride()]);
  io_uring_buf_ring_init(br_);
  for (unsigned i = 0; i < count; ++i) {
    std::memset(base_.get() + i * stride() + size_, 0, padding);
    io_uring_buf_ring_add(br_, base_.get() + i * stride(), static_cast<unsigned>(size_), static_cast<unsigned short>(i),
                          io_uring_buf_ring_mask(count), static_cast<int>(i));
  }
  io_uring_buf_ring_advance(br_, static_cast<int>(count));
}

buffer_ring::~buffer_ring() {
  io_uring_unregister_buf_ring(ring_, group_);
  ::munmap(br_, br_bytes_);
}

void buffer_ring::recycle(std::uint16_t id) noexcept {
  io_uring_buf_ring_add(br_, base_.get() + static_cast<std::size_t>(id) * stride(), static_cast<unsigned>(size_), id,
                        io_uring_buf_ring_mask(count_), 0);
  io_uring_buf_ring_advance(br_, 1);
}

}  // namespace ringframe
