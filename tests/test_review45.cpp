// Review of 3b2eb1c: on epoll, send_queue::start() makes the send itself
// (io_backend::send_now) and takes its result at once.
#include "loopback.hpp"
#include "send_helpers.hpp"

#include <ringframe/connection.hpp>
#include <ringframe/executor.hpp>
#include <ringframe/message.hpp>
#include <ringframe/send_queue.hpp>
#include <ringframe/socket.hpp>
#include <ringframe/timer.hpp>

#include <doctest/doctest.h>

#include <sys/socket.h>

#include <chrono>
#include <string>

using namespace ringframe;
using namespace std::chrono_literals;

namespace {

using testing::on;
using testing::on_each_backend;

task<void> nap(executor* ex, std::chrono::nanoseconds d) { (void)co_await sleep_for(*ex, d); }

// Turns the loop (without blocking) until done() or 5 s pass, draining the
// peer's receive buffer on each turn.
template <class F>
bool turn_draining(executor& ex, const ringframe::socket& peer, std::string& got, F done) {
  const auto until = std::chrono::steady_clock::now() + 5s;
  while (!done() && std::chrono::steady_clock::now() < until) {
    char buf[1 << 16];
    for (;;) {
      ssize_t k = ::recv(peer.fd(), buf, sizeof buf, MSG_DONTWAIT);
      if (k <= 0) break;
      got.append(buf, static_cast<std::size_t>(k));
    }
    ex.run_once(false);
  }
  return done();
}

}  // namespace

// ---- F1: the batch that follows a completion leaves the write deadline armed ----
//
// progress_or_throw() ends a batch and, when bytes were queued meanwhile,
// calls start() again without cancelling the write deadline (start() re-armed
// it before). On epoll start()'s fast path sends those bytes whole and
// returns without arming or cancelling it: the old deadline fires on an idle
// queue, sets timed_out_, and the next start() fails with ETIMEDOUT although
// every byte went out in time.

TEST_CASE("review45 F1: a batch sent whole after a completion does not leave the last write deadline to fire") {
  on_each_backend([](backend_kind k) {
    executor ex(on(k));
    // AF_UNIX: room comes back as soon as the peer reads (no TCP window).
    auto [a, b] = testing::socket_pair(ex);
    REQUIRE(a.set_option(SOL_SOCKET, SO_SNDBUF, 16384));
    send_queue::options o;
    o.write_timeout = 300ms;
    send_queue q(a, o);
    const std::size_t filled = testing::fill_send_buffer(a);
    REQUIRE(filled > 0);
    q.out() = "first";
    q.start();
    REQUIRE(q.busy());  // waits for room, under its write deadline
    q.out() = "second";  // written while the first batch is out
    std::string got;
    REQUIRE(turn_draining(ex, b, got, [&] { return !q.busy(); }));
    REQUIRE(turn_draining(ex, b, got, [&] { return got.size() == filled + 11; }));
    CHECK(got.substr(filled) == "firstsecond");
    CHECK_FALSE(q.failed());
    // Idle for longer than write_timeout, then one more reply.
    ex.run(nap(&ex, 600ms));
    q.out() = "third";
    q.start();
    INFO("error: " << q.error().message());
    CHECK_FALSE(q.failed());
    REQUIRE(turn_draining(ex, b, got, [&] { return !q.busy(); }));
    REQUIRE(turn_draining(ex, b, got, [&] { return got.size() >= filled + 16 || q.failed(); }));
    CHECK(got.substr(filled) == "firstsecondthird");
  });
}

// The same through a connection: two coroutines flush (a broadcaster's
// write beside the reply in flight); 600 ms later,
// with write_timeout 300 ms, the next write fails with ETIMEDOUT.
namespace {
struct flushed {
  bool done = false;
  std::error_code err;
};
task<void> write_and_flush(connection_handle h, std::string text, flushed* f) {
  connection* c = h.get();
  REQUIRE(c);
  result<void> w = co_await c->write(message::json(text));
  if (w) w = co_await c->flush();
  if (!w) f->err = w.error();
  f->done = true;
}
}  // namespace

TEST_CASE("review45 F1: a connection idle for longer than write_timeout after two overlapping flushes can still write") {
  on_each_backend([](backend_kind k) {
    executor ex(on(k));
    // AF_UNIX: room comes back as soon as the peer reads (no TCP window).
    auto [a, b] = testing::socket_pair(ex);
    REQUIRE(a.set_option(SOL_SOCKET, SO_SNDBUF, 16384));
    const std::size_t filled = testing::fill_send_buffer(a);
    REQUIRE(filled > 0);
    connection_options co;
    co.write_timeout = 300ms;
    co.idle_timeout = 0ns;
    co.message_timeout = 0ns;
    connection conn(std::move(a), co);
    flushed f1, f2, f3;
    ex.spawn(write_and_flush(conn.handle(), "{\"n\":1}", &f1));
    ex.run_once(false);  // f1's flush waits for room
    ex.spawn(write_and_flush(conn.handle(), "{\"n\":2}", &f2));
    std::string got;
    REQUIRE(turn_draining(ex, b, got, [&] { return f1.done && f2.done; }));
    CHECK_FALSE(f1.err);
    CHECK_FALSE(f2.err);
    ex.run(nap(&ex, 600ms));
    ex.spawn(write_and_flush(conn.handle(), "{\"n\":3}", &f3));
    REQUIRE(turn_draining(ex, b, got, [&] { return f3.done; }));
    INFO("third write: " << f3.err.message());
    CHECK_FALSE(f3.err);
    CHECK(conn.send_error() == std::error_code{});
  });
}

// ---- F2: a large batch's buffer stays pinned to an idle connection ----
//
// progress_or_throw() frees a batch buffer larger than keep_capacity once
// the queue is idle, but not when bytes written meanwhile follow (it calls
// start() first). start() used to swap that (empty) buffer into queued_,
// and the next completion freed it. On epoll start()'s fast path now sends
// the follow-up from queued_ and returns: the flight's empty buffer keeps
// its capacity for as long as replies keep going out whole, i.e. for the
// life of a connection that sends small replies.
//
// Measured with glibc's mallinfo2 (a buffer this large is mmapped: hblkhd);
// under ASan, whose allocator glibc does not see, the check is vacuous.

#include <malloc.h>

namespace {
std::size_t mmapped_bytes() { return mallinfo2().hblkhd; }
}  // namespace

TEST_CASE("review45 F2: a batch larger than keep_capacity does not stay pinned when a small one followed it") {
  on_each_backend([](backend_kind k) {
    executor ex(on(k));
    auto [a, b] = testing::socket_pair(ex);
    send_queue::options o;  // keep_capacity: 4 MiB
    send_queue q(a, o);
    const std::size_t before = mmapped_bytes();
    const std::size_t big = 32u << 20;
    q.out() = std::string(big, 'x');
    q.start();
    REQUIRE(q.busy());  // far more than the socket holds
    q.out() = "small";  // written while the big batch is out
    std::size_t received = 0;
    const auto until = std::chrono::steady_clock::now() + 10s;
    while ((q.busy() || received < big + 5) && std::chrono::steady_clock::now() < until) {
      received += testing::drain_received(b);
      ex.run_once(false);
    }
    REQUIRE_FALSE(q.busy());
    REQUIRE(received == big + 5);
    CHECK_FALSE(q.failed());
    CHECK(q.out().capacity() <= o.keep_capacity);
    const std::size_t after = mmapped_bytes();
    INFO("mmapped before " << before << ", idle after " << after);
    CHECK(after < before + o.keep_capacity);
  });
}
