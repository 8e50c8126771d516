// io_backend: the seam between the executor (and every layer above it) and
// the kernel. Everything ringframe asks of the kernel for I/O is one
// io_request; its outcome comes back as one or more completions
// {key, res, flags} that the executor dispatches, in the order they were
// posted, to the `completion` the key names (detail/completion.hpp).
//
// Two backends implement it, side by side in lib/src/backend/:
//   uring_backend.cpp  each request is an SQE; completions are CQEs, copied.
//   epoll_backend.cpp  each request tries its system call at once; only on
//                      EAGAIN does it wait for readiness (edge-triggered
//                      epoll), then tries again. What io_uring has and epoll
//                      lacks (provided buffers, multishot, linked timeouts,
//                      cancellation) is emulated with the same contract.
//
// The contract both keep, and the layers above rely on:
// * a request posts exactly one final completion (no cqe_more flag), after
//   zero or more with cqe_more (multishot: each accepted socket, each buffer
//   of data; zero-copy send: the result, then a cqe_notif completion);
// * a request with a `deadline` also posts one completion for its timer,
//   with key | timer_tag: -ETIME when it fired (and the request then ends
//   with -ECANCELED), -ECANCELED (or -ENOENT) when the request won;
// * a completion is never dispatched from inside submit(): it is posted,
//   and the executor dispatches it from its loop;
// * cancel(key, fd) ends the request with -ECANCELED (if it has not ended), and
//   posts one completion of its own, with key 0;
// * res is a byte count, a descriptor, 0, or -errno, as the system call's.
#pragma once

#include <ringframe/buffer_ring.hpp>

#include <chrono>
#include <climits>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

namespace ringframe {

struct executor_stats;

namespace detail {

// Completion flags. The values are io_uring's (IORING_CQE_F_*, checked in
// uring_backend.cpp), so that backend passes them through untouched.
inline constexpr unsigned cqe_buffer = 1u << 0;  // a provided buffer was used: its id is in the high bits
inline constexpr unsigned cqe_more = 1u << 1;    // more completions follow for this request
inline constexpr unsigned cqe_notif = 1u << 3;   // zero-copy send: the kernel let go of the pages
// Incremental buffer consumption: the buffer named stays with the kernel,
// which puts the next bytes after these (io_uring only; see buffer_ring.hpp).
inline constexpr unsigned cqe_buf_more = 1u << 4;
inline constexpr unsigned cqe_buffer_shift = 16;
inline std::uint16_t buffer_id_of(unsigned flags) noexcept {
  return static_cast<std::uint16_t>(flags >> cqe_buffer_shift);
}

// Layout of the kernel's __kernel_timespec (checked in uring_backend.cpp).
struct kernel_timespec {
  std::int64_t tv_sec = 0;
  std::int64_t tv_nsec = 0;
};

// A completion, copied out of wherever the backend found it.
struct cqe_copy {
  std::uint64_t user_data;
  int res;
  unsigned flags;
};

enum class io_op : std::uint8_t {
  nop,               // completes with 0 (tests, wake-ups)
  accept,            // fd: listener; buf/addr_len: the peer's address (optional); flags: SOCK_*
  accept_multishot,  // a completion (cqe_more) per accepted socket until cancelled or an error
  connect,           // buf/len: the address
  recv,              // buf/len: where; flags: MSG_*
  recv_provided,     // into a buffer of `buffers`, taken when data arrives (cqe_buffer); `bundle`: maybe several
  recv_multishot,    // recv_provided, again and again (cqe_more) until cancelled, EOF or an error
  send,              // buf/len: what; flags: MSG_*; may send less than asked
  send_zero_copy,    // send without copying: the result, then cqe_notif (or just the result)
  sendmsg,           // buf: a msghdr (a gather list); len: its total bytes; flags: MSG_*
  shutdown,          // flags: how
  close,
  read,              // buf/len (eventfd, signalfd)
  timeout,           // `timeout` from now: -ETIME when it fires
};

struct io_request {
  io_op op = io_op::nop;
  int fd = -1;
  int flags = 0;
  void* buf = nullptr;
  std::size_t len = 0;
  unsigned* addr_len = nullptr;  // accept: in/out, socklen_t
  buffer_ring* buffers = nullptr;
  std::uint64_t key = 0;
  // recv_provided, recv_multishot: one completion may fill several buffers
  // (IORING_RECVSEND_BUNDLE) when the ring grants bundles; its bytes are
  // then read with buffer_ring::consume(). The epoll backend fills one.
  bool bundle = false;
  // Read when submitted (the io_uring backend: when its SQE goes to the
  // kernel), so the caller keeps them until the request completes.
  const kernel_timespec* deadline = nullptr;  // absolute CLOCK_MONOTONIC; null: none
  const kernel_timespec* timeout = nullptr;   // io_op::timeout, relative
};

class io_backend {
 public:
  // Completions are appended to `completed` (the executor's queue); what
  // the backend cannot deal with itself it counts in `stats`.
  io_backend(std::vector<cqe_copy>& completed, executor_stats& stats) noexcept
      : completed_(completed), stats_(stats) {}
  virtual ~io_backend() = default;
  io_backend(const io_backend&) = delete;
  io_backend& operator=(const io_backend&) = delete;

  virtual const char* name() const noexcept = 0;        // "io_uring" or "epoll"
  virtual const char* setup_mode() const noexcept = 0;  // how it was set up ("defer-taskrun", "epoll", ...)

  // Queue a request. Throws std::system_error only when the backend itself
  // fails (it cannot submit at all); a request's own failure is its
  // completion's res.
  virtual void submit(const io_request& r) = 0;
  // A plain send (io_op::send) made now, on the caller's stack, for a
  // caller that takes its result at once instead of a completion
  // (send_queue::start, copied bytes only): bytes sent, or -errno. `not_now` when it must be
  // submitted instead: always on io_uring (a send goes to the kernel with
  // the loop's next submission, beside the recvs), and on epoll when the
  // descriptor has sends waiting or said it was full (-EAGAIN, a short
  // send) since its last edge. Never -EAGAIN or -EINTR (those are
  // `not_now`). Nothing is posted, nothing is counted in flight.
  static constexpr int not_now = INT_MIN;
  virtual int send_now(const io_request& r) noexcept {
    (void)r;
    return not_now;
  }
  // Cancel the request `key` (0: every request), made on descriptor `fd`
  // (-1: none or unknown; a hint that spares the epoll backend a table of
  // keys). Never throws; false when it could not be asked now (no room):
  // the caller tries again next turn.
  virtual bool cancel(std::uint64_t key, int fd) noexcept = 0;
  // Hand what is queued to the kernel; when `wait`, sleep until something
  // completes or `max_wait` passes (negative: no limit); then append every
  // completion there is to the executor's queue.
  virtual void run(bool wait, std::chrono::nanoseconds max_wait) = 0;
  // Append the completions that are ready, without a system call where the
  // backend can (safe to call from inside a dispatch).
  virtual void reap() noexcept = 0;
  // The provided receive buffers for this backend (throws when it has none),
  // with what of `want` (buffer_ring::features) the kernel has: see
  // buffer_ring::granted(). The epoll backend grants none.
  virtual std::unique_ptr<buffer_ring> make_buffers(unsigned count, std::size_t size, unsigned max_count,
                                                    buffer_ring::features want) = 0;
  // `fd` is about to be closed, or a descriptor with this number is new:
  // forget what is known of it.
  virtual void forget(int fd) noexcept = 0;

 protected:
  std::vector<cqe_copy>& completed_;
  executor_stats& stats_;
};

}  // namespace detail
}  // namespace ringframe
