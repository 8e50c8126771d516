// Helpers of the tests that drive a send_queue and read what it sent:
// test_send_queue.cpp, test_large_frames.cpp, test_review8.cpp, test_review20.cpp.
#pragma once

#include "loopback.hpp"

#include <ringframe/detail/byte_block.hpp>
#include <ringframe/send_queue.hpp>
#include <ringframe/socket.hpp>
#include <ringframe/task.hpp>

#include <doctest/doctest.h>

#include <sys/socket.h>

#include <chrono>
#include <coroutine>
#include <string>
#include <thread>
#include <vector>

namespace testing {

// A TCP pair whose receiver holds little: a zero-copy batch larger than
// both socket buffers is taken in part (SEND_ZC's `releasing`).
struct zero_copy_pair {
  ringframe::executor ex;
  ringframe::socket a, b;
  explicit zero_copy_pair(ringframe::executor_options eo, int sndbuf = 32 * 1024) : ex(eo) {
    auto [s, c] = ex.run(tcp_pair(&ex));
    a = std::move(s);
    b = std::move(c);
    REQUIRE(b.set_option(SOL_SOCKET, SO_RCVBUF, 16 * 1024));
    REQUIRE(a.set_option(SOL_SOCKET, SO_SNDBUF, sndbuf));
  }
};

// Turns the loop (without waiting in it) until `done()` or `bound` has passed.
template <class Done>
void turn_until(ringframe::executor& ex, Done done, std::chrono::steady_clock::duration bound) {
  const auto t0 = std::chrono::steady_clock::now();
  while (!done() && std::chrono::steady_clock::now() - t0 < bound) {
    ex.run_once(false);
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
}

// co_await: until the queue has nothing in the kernel.
struct wait_empty {
  ringframe::send_queue* q;
  ringframe::detail::send_waiter node;
  bool await_ready() const noexcept { return !q->busy(); }
  void await_suspend(std::coroutine_handle<> h) noexcept {
    node.h = h;
    q->wait(&node);
  }
  void await_resume() const noexcept {}
};

// Reads until `n` bytes have come (each recv within `timeout`).
// (static: clang cannot emit an inline coroutine from a header under ASan.)
[[maybe_unused]] static ringframe::task<std::string> read_exactly(ringframe::socket* s, std::size_t n,
                                                 std::chrono::nanoseconds timeout) {
  std::string got;
  std::vector<std::byte> buf(1 << 16);
  while (got.size() < n) {
    ringframe::result<std::size_t> r = co_await s->recv(buf, {.timeout = timeout});
    REQUIRE(r);
    REQUIRE(*r > 0);
    got.append(reinterpret_cast<const char*>(buf.data()), *r);
  }
  co_return got;
}

// Fills `s`'s send buffer (and its peer's receive buffer) with raw bytes,
// behind the executor's back, so that its next send must wait for room:
// on epoll a send is made at once when the socket takes it (send_queue
// starts a batch with io_backend::send_now), and only one that waits is in
// flight. drain_received() on the peer makes the room.
inline std::size_t fill_send_buffer(const ringframe::socket& s) {
  static const char junk[4096] = {};
  std::size_t n = 0;
  for (;;) {
    ssize_t k = ::send(s.fd(), junk, sizeof junk, MSG_DONTWAIT | MSG_NOSIGNAL);
    if (k <= 0) break;
    n += static_cast<std::size_t>(k);
  }
  return n;
}
// Reads (and drops) whatever has come, without waiting; returns how much.
inline std::size_t drain_received(const ringframe::socket& s) {
  char buf[1 << 16];
  std::size_t n = 0;
  for (;;) {
    ssize_t k = ::recv(s.fd(), buf, sizeof buf, MSG_DONTWAIT);
    if (k <= 0) break;
    n += static_cast<std::size_t>(k);
  }
  return n;
}

// `n` bytes of block `b` from `from`, as text.
inline std::string text_of(const ringframe::detail::block_ref& b, std::size_t from, std::size_t n) {
  return {reinterpret_cast<const char*>(b->data()) + from, n};
}

}  // namespace testing
