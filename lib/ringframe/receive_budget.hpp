// receive_budget: a per-thread bound on the memory that large frames in
// progress may hold, so that many peers each sending a large frame
// back-pressure (they stop being read) instead of exhausting memory.
//
// A frame longer than one read (connection_options::read_size) reserves its
// whole length from its thread's budget when the connection is about to read
// the rest of it (its header has said how long it is), and gives it back when
// the connection moves past it (the next read_message, or the connection's
// end). It fits when the bytes its thread has reserved, its own included,
// stay within its own connection's limit (connection_options::
// thread_receive_budget): each connection is held to the value it was given,
// whatever other connections of the thread were given. A frame that does not
// fit waits, in arrival order, and its
// connection is not read meanwhile; the connections asking for the most are
// the ones held back, small requests go on. A frame is always admitted when
// nothing else is reserved, so one larger than the whole budget still goes
// through, alone: there is always progress.
//
// What stays outside it, bounded per connection: a partial header and up to
// one read step past it (read_size, doubled up to 8 times while reads come
// back full for frames of at most 2 x read_size, or at a frame's start after
// a large frame of at most 8 x read_size that frame's length plus 1 KiB,
// twice its length on a busy thread that reads pipelined large frames two at
// a time: receive_stream::read_step; a frame that such a read brings whole,
// of up to 16 x read_size, reserves nothing. Held within 8 x read_size, the
// pairs stopped at 63 KiB frames, and 64 KiB ones went back from 1.1 to 1.7
// recvs and sends per message on epoll: review37 F1, left as it is), a
// read between frames into a ring buffer and what it brings whole (16 KiB;
// 64 KiB on epoll, whose buffers are that large so that one recv takes a
// pipelined batch: review47), replies waiting to be sent
// (max_unsent_bytes), bytes a multishot recv holds.
//
// One thread's (like the connections it serves): plain integers, no locks.
#pragma once

#include <ringframe/detail/deferred_call.hpp>

#include <cstddef>
#include <cstdint>

namespace ringframe {

class executor;

namespace detail {
// A frame waiting for room, queued in its budget; once admitted (its bytes
// reserved) it is run on `ex`'s thread as a deferred call.
struct budget_waiter : deferred_call {
  using deferred_call::deferred_call;
  executor* ex = nullptr;
  std::size_t want = 0;
  std::size_t limit = 0;  // its connection's
  budget_waiter* before = nullptr;
  budget_waiter* after = nullptr;
  bool in_queue = false;
  bool admitted = false;
};
}  // namespace detail

class receive_budget {
 public:
  // 256 MiB per thread unless connection_options::thread_receive_budget
  // says otherwise.
  static constexpr std::size_t default_limit = std::size_t{256} << 20;

  // The calling thread's.
  static receive_budget& this_thread() noexcept;

  // For the stats: the limit given to the connection that last reserved or
  // waited (default_limit until one has). Each frame is admitted against its
  // own connection's limit, not this.
  std::size_t limit() const noexcept { return limit_; }
  // Bytes reserved now, and the most ever reserved at once.
  std::size_t used() const noexcept { return used_; }
  std::size_t peak() const noexcept { return peak_; }
  void reset_peak() noexcept { peak_ = used_; }
  // Frames that had to wait, and how many wait now.
  std::uint64_t waits() const noexcept { return waits_; }
  std::size_t waiting() const noexcept { return waiting_; }

  // Reserve `n` bytes now if they fit within `limit` (and nobody waits
  // ahead).
  bool try_reserve(std::size_t n, std::size_t limit) noexcept;
  void release(std::size_t n) noexcept;

  // Queue `w` (it is admitted, reserved, and told through its executor), or
  // take it out of the queue (false: it was admitted already).
  void enqueue(detail::budget_waiter* w) noexcept;
  bool dequeue(detail::budget_waiter* w) noexcept;

 private:
  void admit() noexcept;
  void take(std::size_t n) noexcept {
    used_ += n;
    if (used_ > peak_) peak_ = used_;
  }

  std::size_t limit_ = default_limit;
  std::size_t used_ = 0;
  std::size_t peak_ = 0;
  std::uint64_t waits_ = 0;
  std::size_t waiting_ = 0;
  detail::budget_waiter* head_ = nullptr;
  detail::budget_waiter* tail_ = nullptr;
};

}  // namespace ringframe
