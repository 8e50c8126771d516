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
// gives it back when it reads nothing, so the contract above holds. There
// each buffer is a byte_block of the thread's pool, made when its id is
// first taken, and lend() hands a filled one over whole: a decoder with
// nothing buffered adopts it instead of copying its bytes out (the ring's
// copy was 4% of the CPU at 50 x 16 x 1 KiB), and the id gets another
// block from the pool when it is taken again.
//
// Two kernel features change what one completion's bytes are, each asked
// for in `features` and granted only where the kernel has it (granted()):
// * incremental consumption (IOU_PBUF_RING_INC, Linux 6.12): a recv takes
//   only the bytes it receives from a buffer, and the next recv continues
//   in the same buffer, at an offset. A completion with IORING_CQE_F_BUF_MORE
//   says the kernel will go on using the buffer: it returns to the ring only
//   after a completion without it, and only once every slice of it the
//   program kept has been released.
// * bundles (IORING_RECVSEND_BUNDLE, Linux 6.10): one recv may fill several
//   buffers, the one its completion names and those after it in ring order
//   (the ring's order, which is the order buffers were given back, not the
//   order of their ids: the ring keeps a map of which buffer sits where).
// consume() turns a completion into its slices, in order, whatever the
// mode; release() gives a slice back. Both assume completions are taken in
// the order the kernel consumed the buffers: the CQE order, which the kernel
// keeps for requests sharing a buffer group from Linux 6.15 (before, a
// single recv's completion and a multishot one's could be swapped: see
// docs/io-path.md).
//
// Each buffer is followed by SIMDJSON_PADDING spare bytes, so its content can
// be parsed in place like the decoder's own buffer.
#pragma once

#include <ringframe/detail/byte_block.hpp>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <type_traits>
#include <vector>

struct io_uring;
struct io_uring_buf_ring;

namespace ringframe {

// What a ring may do beyond whole buffers (outside the class: a default
// argument of its constructor).
struct buffer_ring_features {
  bool incremental = false;  // IOU_PBUF_RING_INC
  bool bundles = false;      // IORING_RECVSEND_BUNDLE
};

class buffer_ring {
 public:
  static constexpr std::size_t padding = 64;

  using features = buffer_ring_features;
  // `len` bytes of a completion, at `offset` in buffer `id`.
  struct slice {
    std::uint16_t id = 0;
    std::uint32_t offset = 0;
    std::uint32_t len = 0;
  };

  // Registers `count` (a power of two) buffers of `size` bytes as group
  // `group` with `ring`; grow() may take it to `max_count` in all. Throws
  // std::system_error when the kernel refuses. A null `ring`: the buffers
  // are handed out by take() instead (the epoll backend), and no feature
  // is granted. Incremental consumption is probed here: a kernel that
  // refuses it (EINVAL) gets a ring without it. Bundles are the backend's
  // to probe (io_uring_params::features): `want.bundles` is taken as is.
  buffer_ring(io_uring* ring, unsigned count, std::size_t size, std::uint16_t group, unsigned max_count = 0,
              features want = {});
  ~buffer_ring();
  buffer_ring(const buffer_ring&) = delete;
  buffer_ring& operator=(const buffer_ring&) = delete;

  // The group a recv armed now should name (the newest part's).
  std::uint16_t group() const noexcept { return parts_.back().group; }
  std::size_t buffer_size() const noexcept { return size_; }
  // Buffers in all parts.
  unsigned count() const noexcept { return total_; }
  // What the kernel granted of what was asked for.
  const features& granted() const noexcept { return granted_; }
  // The most a bundle recv asks for: a few buffers (a larger read goes
  // straight into the connection's own buffer anyway).
  std::size_t bundle_bytes() const noexcept { return 4 * size_; }
  // The first `len` bytes of buffer `id`.
  std::span<std::byte> data(std::uint16_t id, std::size_t len) noexcept {
    if (!ring_) return {blocks_[id]->data(), len};
    const part& p = part_of(id);
    return {p.base.get() + static_cast<std::size_t>(id - p.first_id) * stride(), len};
  }
  std::span<std::byte> data(const slice& s) noexcept { return data(s.id, s.offset + s.len).subspan(s.offset); }

  // A completion that named a buffer (cqe_buffer in `flags`; `res` its
  // result): `each(const slice&)` is called for each slice of its bytes, in
  // order, and returns true to keep the slice (release() it later) or false
  // when done with it. The ring's own accounting (offsets, which buffers
  // the kernel has let go of) is done whatever `each` returns, so every
  // such completion must come here, even one nobody reads. A completion
  // with no bytes (res <= 0) has no slices; with incremental consumption or
  // bundles it consumed no buffer either, and the ring keeps it.
  // `each` must not throw: the ring's state must follow the kernel's.
  template <class F>
  void consume(unsigned flags, int res, F&& each) noexcept {
    static_assert(std::is_nothrow_invocable_r_v<bool, F&, const slice&>, "buffer_ring::consume: a noexcept callable");
    using fn_t = std::remove_reference_t<F>;
    consume_impl(
        flags, res, [](void* ctx, const slice& s) noexcept { return (*static_cast<fn_t*>(ctx))(s); },
        const_cast<void*>(static_cast<const void*>(std::addressof(each))));
  }
  // Give back a slice kept from consume().
  void release(const slice& s) noexcept {
    if (!tracked()) return recycle(s.id);
    unref(s.id);
  }
  // Give buffer `id` back whole (to the kernel, or to the free list): the
  // epoll backend's take() that read nothing. Everything else goes through
  // consume() and release().
  void recycle(std::uint16_t id) noexcept;
  // Without a ring: take a free buffer's id; false when every one is in use
  // (or none has a block and one could not be made).
  bool take(std::uint16_t& id) noexcept {
    if (free_.empty() || (!blocks_[free_.back()] && !make_block(free_.back()) && !free_id_with_block_on_top()))
      return false;
    id = free_.back();
    free_.pop_back();
    return true;
  }
  // Without a ring (lends()): buffer `id`, taken and filled, handed over
  // whole (buffer_size() bytes and the padding, zeroed). The id goes back
  // with recycle() or consume() as usual, and gets a new block when it is
  // taken next.
  bool lends() const noexcept { return !ring_; }
  detail::block_ref lend(std::uint16_t id) noexcept { return std::move(blocks_[id]); }
  // Register a new part with twice as many buffers as the last one; false
  // when that would pass max_count or the kernel refuses (nothing changes).
  bool grow() noexcept;

  // What the features did (tracked rings only: with neither, all stay 0).
  struct counters {
    std::uint64_t partial = 0;   // completions after which the kernel kept their buffer (F_BUF_MORE)
    std::uint64_t bundles = 0;   // completions whose bytes spanned more than one buffer
    unsigned out = 0;            // buffers the kernel let go of that are not back yet (slices kept)
  };
  const counters& stats() const noexcept { return counters_; }

 private:
  struct part {
    io_uring_buf_ring* br = nullptr;
    std::size_t br_bytes = 0;
    std::unique_ptr<std::byte[]> base;
    unsigned first_id = 0;
    unsigned count = 0;
    std::uint16_t group = 0;
    std::uint16_t tail = 0;              // tracked: the next slot given back (mod count)
    std::vector<std::uint16_t> at_slot;  // tracked: which buffer sits in each slot
  };
  std::size_t stride() const noexcept { return size_ + padding; }
  // take() out of memory for the top free id's block: a free id that still
  // has one (not lent since it was recycled) goes on top instead; false
  // when there is none.
  bool free_id_with_block_on_top() noexcept;
  part& part_of(std::uint16_t id) noexcept {
    // Newest first: most buffers are there, and there are few parts.
    for (auto it = parts_.rbegin(); it != parts_.rend(); ++it)
      if (id >= it->first_id) return *it;
    return parts_.front();
  }
  const part& part_of(std::uint16_t id) const noexcept { return const_cast<buffer_ring*>(this)->part_of(id); }
  void add_part(unsigned count, std::uint16_t group);  // throws std::system_error
  // A registered ring with either feature keeps per-buffer state.
  bool tracked() const noexcept { return granted_.incremental || granted_.bundles; }
  using slice_fn = bool (*)(void* ctx, const slice& s) noexcept;
  void consume_impl(unsigned flags, int res, slice_fn fn, void* ctx) noexcept;
  void unref(std::uint16_t id) noexcept {
    if (--refs_[id] == 0) recycle(id);
  }

  bool make_block(std::uint16_t id) noexcept;

  io_uring* ring_;
  std::vector<std::uint16_t> free_;  // without a ring: the buffers not in use
  std::vector<detail::block_ref> blocks_;  // without a ring: each id's memory (none: made when taken)
  std::size_t size_;
  unsigned total_ = 0;
  unsigned max_count_;
  std::vector<part> parts_;
  features granted_;
  counters counters_;
  // Tracked rings only, per buffer id: the bytes the kernel has consumed
  // (incremental), 1 while it may still use the buffer plus 1 per slice
  // kept, and the ring slot it was last put in (part-relative).
  std::vector<std::uint32_t> used_;
  std::vector<std::uint32_t> refs_;
  std::vector<std::uint16_t> slot_;
};

}  // namespace ringframe
