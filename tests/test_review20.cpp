// Review 20: the zero-copy send path after b3de94a (a batch the kernel took
// in full counts as sent; a short one ends at the write timeout). Each F
// case fails before its fix. Zero-copy's held pages and its two CQEs exist
// only on io_uring (epoll sends a copy, with one completion), so these run
// on io_uring whatever RINGFRAME_BACKEND says. Every wait is bounded.
#include "loopback.hpp"

#include <ringframe/executor.hpp>
#include <ringframe/send_queue.hpp>
#include <ringframe/socket.hpp>

#include <doctest/doctest.h>

#include <netinet/in.h>
#include <sys/socket.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <string>
#include <thread>

using namespace ringframe;
using namespace std::chrono_literals;
using clk = std::chrono::steady_clock;

namespace {

// Reads what the peer has now, at most `limit` bytes, without waiting.
std::size_t take_now(int fd, std::size_t limit) {
  std::size_t got = 0;
  char buf[65536];
  while (got < limit) {
    ssize_t n = ::recv(fd, buf, std::min(sizeof buf, limit - got), MSG_DONTWAIT);
    if (n <= 0) break;
    got += static_cast<std::size_t>(n);
  }
  return got;
}

// Everything the kernel took from the queue reaches the peer, orphaned
// pages included: read until nothing has come for a while, running the
// executor meanwhile (its notifications free the orphans).
std::size_t take_all(executor& ex, int fd) {
  std::size_t got = 0;
  auto quiet_since = clk::now();
  while (clk::now() - quiet_since < 300ms) {
    ex.run_once(false);
    std::size_t n = take_now(fd, SIZE_MAX);
    if (n) quiet_since = clk::now();
    got += n;
    std::this_thread::sleep_for(1ms);
  }
  return got;
}

void run_until_failed(executor& ex, send_queue& q, clk::duration bound) {
  const auto t0 = clk::now();
  while (q.current() != send_queue::state::failed && clk::now() - t0 < bound) {
    ex.run_once(false);
    std::this_thread::sleep_for(1ms);
  }
}

// A TCP pair whose receiver holds little: a zero-copy batch larger than both
// buffers is taken only in part, and its pages stay in our send queue (no
// notification) while the peer reads nothing.
struct zc_pair {
  executor ex;
  ringframe::socket a, b;
  explicit zc_pair(executor_options eo, int sndbuf = 32 * 1024) : ex(eo) {
    auto [s, c] = ex.run(testing::tcp_pair(&ex));
    a = std::move(s);
    b = std::move(c);
    REQUIRE(b.set_option(SOL_SOCKET, SO_RCVBUF, 16 * 1024));
    REQUIRE(a.set_option(SOL_SOCKET, SO_SNDBUF, sndbuf));
  }
};

// ---- F2: the bytes of a short zero-copy batch that is given up ----

enum class give_up { deadline, cancel };

void given_up_short_batch_is_counted(give_up how) {
  zc_pair p(testing::on_io_uring());
  std::uint64_t out = 0;
  send_queue::options so;
  so.zero_copy_threshold = 1;
  so.write_timeout = how == give_up::deadline ? 100ms : 0ms;
  send_queue q(p.a, so, &out);
  q.out() = std::string(4 << 20, 'z');
  q.start();
  // The kernel takes what fits; the peer reads nothing, so the pages are held.
  const auto t0 = clk::now();
  while (q.current() != send_queue::state::releasing && clk::now() - t0 < 3s) {
    p.ex.run_once(false);
    std::this_thread::sleep_for(1ms);
  }
  REQUIRE(q.current() == send_queue::state::releasing);
  if (how == give_up::cancel) q.cancel();
  run_until_failed(p.ex, q, 2s);
  REQUIRE(q.current() == send_queue::state::failed);
  CHECK(q.error() == (how == give_up::deadline ? std::errc::timed_out : std::errc::operation_canceled));
  // The kernel took those bytes and the peer gets them: bytes_out says so.
  const std::size_t got = take_all(p.ex, p.b.fd());
  MESSAGE("the peer got " << got << " B, " << out << " B counted out");
  CHECK(got > 0);
  CHECK(out == got);
}

}  // namespace

TEST_CASE("review20 F2a: the bytes the kernel took of a short zero-copy batch ended by the write deadline count as sent") {
  given_up_short_batch_is_counted(give_up::deadline);
}

TEST_CASE("review20 F2b: the bytes the kernel took of a short zero-copy batch whose queue is stopped count as sent") {
  given_up_short_batch_is_counted(give_up::cancel);
}
