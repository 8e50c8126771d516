#include <ringframe/buffer_ring.hpp>
#include <ringframe/detail/io_backend.hpp>
#include <ringframe/result.hpp>

#include "backend/uring_compat.hpp"

#include <liburing.h>
#include <sys/mman.h>

#include <algorithm>
#include <cstring>
#include <new>
#include <system_error>
#include <utility>

namespace ringframe {

static_assert(detail::cqe_buf_more == IORING_CQE_F_BUF_MORE);

buffer_ring::buffer_ring(io_uring* ring, unsigned count, std::size_t size, std::uint16_t group, unsigned max_count,
                         features want)
    : ring_(ring), size_(size), max_count_(max_count > count ? max_count : count) {
  if (ring_) granted_ = want;  // incremental: until the kernel says otherwise, below
  add_part(count, group);
}

void buffer_ring::add_part(unsigned count, std::uint16_t group) {
  part p;
  p.count = count;
  p.group = group;
  p.first_id = total_;
  // Everything that can throw is allocated before the ring changes (review12
  // F1): grow() promises that a failure changes nothing. A parts_ that could
  // not take the new part once its ids were on the free list (epoll) handed
  // out ids with no memory behind them; once the kernel had registered its
  // group (io_uring), the group stayed registered and every later grow()
  // failed with EEXIST.
  parts_.reserve(parts_.size() + 1);
  if (!ring_) {  // handed out by take(), each made then (blocks_)
    // Lowest id on top: a quiet server reuses the same few buffers (warm in
    // the cache, and the rest never made).
    blocks_.resize(total_ + count);
    free_.reserve(total_ + count);
    for (unsigned i = count; i-- > 0;) free_.push_back(static_cast<std::uint16_t>(p.first_id + i));
    total_ += count;
    parts_.push_back(std::move(p));
    return;
  }
  // Not touched until the kernel fills them: resident memory grows with use.
  p.base.reset(new std::byte[count * stride()]);
  if (tracked()) {  // allocated before the kernel knows of the part: nothing to undo if this throws
    p.at_slot.resize(count);
    used_.resize(total_ + count, 0);
    refs_.resize(total_ + count, 1);
    slot_.resize(total_ + count, 0);
  }
  p.br_bytes = count * sizeof(io_uring_buf);
  void* mem = ::mmap(nullptr, p.br_bytes, PROT_READ | PROT_WRITE, MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
  if (mem == MAP_FAILED) throw std::system_error(errno_code(errno), "buffer_ring: mmap");
  p.br = static_cast<io_uring_buf_ring*>(mem);
  io_uring_buf_reg reg{};
  reg.ring_addr = reinterpret_cast<std::uintptr_t>(p.br);
  reg.ring_entries = count;
  reg.bgid = group;
  if (granted_.incremental) detail::set_buf_reg_flags(reg, detail::pbuf_ring_inc);
  int r = io_uring_register_buf_ring(ring_, &reg, 0);
  if (r == -EINVAL && granted_.incremental && parts_.empty()) {
    // The probe: a kernel before 6.12 refuses the flag. Whole buffers, then
    // (the executor says so once).
    granted_.incremental = false;
    detail::set_buf_reg_flags(reg, 0);
    r = io_uring_register_buf_ring(ring_, &reg, 0);
  }
  if (r < 0) {
    ::munmap(p.br, p.br_bytes);
    throw std::system_error(errno_code(-r), "buffer_ring: io_uring_register_buf_ring");
  }
  // From here on nothing throws: the kernel knows of the part.
  io_uring_buf_ring_init(p.br);
  for (unsigned i = 0; i < count; ++i) {
    std::memset(p.base.get() + i * stride() + size_, 0, padding);
    const auto id = static_cast<std::uint16_t>(p.first_id + i);
    io_uring_buf_ring_add(p.br, p.base.get() + i * stride(), static_cast<unsigned>(size_), id,
                          io_uring_buf_ring_mask(count), static_cast<int>(i));
    if (tracked()) {
      p.at_slot[i] = id;
      slot_[id] = static_cast<std::uint16_t>(i);
    }
  }
  io_uring_buf_ring_advance(p.br, static_cast<int>(count));
  p.tail = static_cast<std::uint16_t>(count);  // the kernel's tail is 16 bits too
  total_ += count;
  parts_.push_back(std::move(p));  // reserved above: does not throw
}

buffer_ring::~buffer_ring() {
  for (part& p : parts_) {
    if (!ring_) continue;
    io_uring_unregister_buf_ring(ring_, p.group);
    ::munmap(p.br, p.br_bytes);
  }
}

bool buffer_ring::make_block(std::uint16_t id) noexcept {
  static_assert(detail::byte_block::tail_padding >= padding);
  try {
    // The pool's block of this size (a class of its own: a power of two),
    // the one the last decoder that adopted a buffer gave back.
    blocks_[id] = detail::block_ref(detail::byte_block::make(size_));
    return true;
  } catch (const std::bad_alloc&) {
    return false;  // as if every buffer were in use: the recv reads into the decoder instead
  }
}

bool buffer_ring::free_id_with_block_on_top() noexcept {
  for (auto it = free_.rbegin(); it != free_.rend(); ++it) {
    if (blocks_[*it]) {
      std::swap(*it, free_.back());
      return true;
    }
  }
  return false;
}

[[gnu::hot]] void buffer_ring::recycle(std::uint16_t id) noexcept {
  if (!ring_) {
    free_.push_back(id);  // reserved for every id: never allocates
    return;
  }
  part& p = part_of(id);
  const unsigned mask = io_uring_buf_ring_mask(p.count);
  if (tracked()) {
    --counters_.out;
    const auto slot = static_cast<std::uint16_t>(p.tail & mask);
    p.at_slot[slot] = id;
    slot_[id] = slot;
    used_[id] = 0;
    refs_[id] = 1;  // the kernel's
  }
  ++p.tail;
  io_uring_buf_ring_add(p.br, p.base.get() + static_cast<std::size_t>(id - p.first_id) * stride(),
                        static_cast<unsigned>(size_), id, mask, 0);
  io_uring_buf_ring_advance(p.br, 1);
}

[[gnu::hot]] void buffer_ring::consume_impl(unsigned flags, int res, slice_fn fn, void* ctx) noexcept {
  const std::uint16_t id = detail::buffer_id_of(flags);
  if (!tracked()) {  // one whole buffer per completion
    if (res > 0 && fn(ctx, slice{id, 0, static_cast<std::uint32_t>(res)})) return;
    recycle(id);
    return;
  }
  // No bytes: the kernel committed nothing (its zero-length commit leaves
  // the buffer where it was, a partly used one included), so the buffer
  // is still in the ring.
  if (res <= 0) return;
  const bool kernel_keeps_last = (flags & detail::cqe_buf_more) != 0;
  const part& p = part_of(id);
  const unsigned mask = p.count - 1;
  std::uint32_t left = static_cast<std::uint32_t>(res);
  std::uint16_t cur = id;
  unsigned slot = slot_[id];
  // The bytes fill the named buffer from where the kernel last stopped in
  // it (incremental), then the buffers after it in ring order from their
  // start (a bundle). Every buffer but the last is used up; the last is
  // too unless the kernel says it keeps it. At most one pass of the ring
  // (more would be a completion this ring did not make).
  for (unsigned n = 0; n < p.count; ++n) {
    const std::uint32_t off = used_[cur];
    const std::uint32_t room = static_cast<std::uint32_t>(size_) - off;
    const std::uint32_t len = std::min(left, room);
    left -= len;
    if (fn(ctx, slice{cur, off, len})) ++refs_[cur];
    if (left == 0 && kernel_keeps_last) {
      used_[cur] = off + len;
      ++counters_.partial;
      return;
    }
    ++counters_.out;
    unref(cur);  // the kernel is done with it
    if (left == 0) return;
    if (n == 0) ++counters_.bundles;
    slot = (slot + 1) & mask;
    cur = p.at_slot[slot];
  }
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
