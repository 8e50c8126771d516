#include <ringframe/buffer_ring.hpp>
#include <ringframe/result.hpp>

#include <liburing.h>
#include <sys/mman.h>

#include <cstring>
#include <system_error>

namespace ringframe {

buffer_ring::buffer_ring(io_uring* ring, unsigned count, std::size_t size, std::uint16_t group, unsigned max_count)
    : ring_(ring), size_(size), max_count_(max_count > count ? max_count : count) {
  add_part(count, group);
}

void buffer_ring::add_part(unsigned count, std::uint16_t group) {
  part p;
  p.count = count;
  p.group = group;
  p.first_id = total_;
  if (!ring_) {  // handed out by take()
    p.base.reset(new std::byte[count * stride()]);
    for (unsigned i = 0; i < count; ++i) std::memset(p.base.get() + i * stride() + size_, 0, padding);
    // Lowest id on top: a quiet server reuses the same few buffers (warm in
    // the cache, and the rest never touched).
    free_.reserve(total_ + count);
    for (unsigned i = count; i-- > 0;) free_.push_back(static_cast<std::uint16_t>(p.first_id + i));
    total_ += count;
    parts_.push_back(std::move(p));
    return;
  }
  p.br_bytes = count * sizeof(io_uring_buf);
  void* mem = ::mmap(nullptr, p.br_bytes, PROT_READ | PROT_WRITE, MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
  if (mem == MAP_FAILED) throw std::system_error(errno_code(errno), "buffer_ring: mmap");
  p.br = static_cast<io_uring_buf_ring*>(mem);
  io_uring_buf_reg reg{};
  reg.ring_addr = reinterpret_cast<std::uintptr_t>(p.br);
  reg.ring_entries = count;
  reg.bgid = group;
  if (int r = io_uring_register_buf_ring(ring_, &reg, 0); r < 0) {
    ::munmap(p.br, p.br_bytes);
    throw std::system_error(errno_code(-r), "buffer_ring: io_uring_register_buf_ring");
  }
  // Not touched until the kernel fills them: resident memory grows with use.
  p.base.reset(new std::byte[count * stride()]);
  io_uring_buf_ring_init(p.br);
  for (unsigned i = 0; i < count; ++i) {
    std::memset(p.base.get() + i * stride() + size_, 0, padding);
    io_uring_buf_ring_add(p.br, p.base.get() + i * stride(), static_cast<unsigned>(size_),
                          static_cast<unsigned short>(p.first_id + i), io_uring_buf_ring_mask(count), static_cast<int>(i));
  }
  io_uring_buf_ring_advance(p.br, static_cast<int>(count));
  total_ += count;
  parts_.push_back(std::move(p));
}

buffer_ring::~buffer_ring() {
  for (part& p : parts_) {
    if (!ring_) continue;
    io_uring_unregister_buf_ring(ring_, p.group);
    ::munmap(p.br, p.br_bytes);
  }
}

void buffer_ring::recycle(std::uint16_t id) noexcept {
  if (!ring_) {
    free_.push_back(id);  // reserved for every id: never allocates
    return;
  }
  const part& p = part_of(id);
  io_uring_buf_ring_add(p.br, p.base.get() + static_cast<std::size_t>(id - p.first_id) * stride(),
                        static_cast<unsigned>(size_), id, io_uring_buf_ring_mask(p.count), 0);
  io_uring_buf_ring_advance(p.br, 1);
}

bool buffer_ring::grow() noexcept {
  // Twice the last part: a power of two, as the kernel requires of a ring.
  const unsigned more = 2 * parts_.back().count;
  // Ids are 16 bits, as the kernel's buffer ids are.
  if (total_ + more > max_count_ || total_ + more > 65536) return false;
  try {
    add_part(more, static_cast<std::uint16_t>(parts_.back().group + 1));
    return true;
  } catch (const std::exception&) {  // the kernel refused, or no memory: keep what there is
    return false;
  }
}

}  // namespace ringframe
