// Review of the lifetime/ordering fixes (908094b): regression guards that
// pass on the current code, in the style of test_lifetimes.cpp (the real
// kernel, one executor). The cross-thread ones are meant for TSan too.
#include "loopback.hpp"

#include <ringframe/connection.hpp>
#include <ringframe/deadline.hpp>
#include <ringframe/executor.hpp>
#include <ringframe/frame.hpp>
#include <ringframe/socket.hpp>
#include <ringframe/timer.hpp>

#include <doctest/doctest.h>

#include <fcntl.h>
#include <liburing.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <memory>
#include <string>
#include <thread>
#include <vector>

using namespace ringframe;
using namespace std::chrono_literals;
using clk = std::chrono::steady_clock;

namespace {

task<void> queue_big_then_read(connection* c, std::error_code* err, clk::duration* took) {
  // Under max_unsent_bytes: queued, and sent beside the next read's recv.
  result<void> w = co_await c->write(message::binary(std::string(4 << 20, 'w'), "t"));
  REQUIRE(w);
  auto t0 = clk::now();
  result<message_view> m = co_await c->read_message();
  *took = clk::now() - t0;
  *err = m ? std::error_code{} : m.error();
}

void reader_learns_of_send_failure(bool multishot) {
  executor ex;
  auto [srv, peer] = testing::socket_pair(ex);  // the peer neither reads nor writes
  connection_options o;
  o.multishot_recv = multishot;
  o.write_timeout = 20ms;
  o.idle_timeout = 2s;
  o.max_unsent_bytes = 16 << 20;
  connection c(std::move(srv), o);
  std::error_code err;
  clk::duration took{};
  ex.run(queue_big_then_read(&c, &err, &took));
  CHECK(err == std::errc::timed_out);
  // The send's failure (its write timeout) must reach the waiting reader at
  // once (fail_send cancels the recv for that), not at the idle timeout.
  CHECK(took < 1s);
  MESSAGE(std::string(multishot ? "multishot" : "single recv") << ": read_message returned after "
                                                   << std::chrono::duration_cast<std::chrono::milliseconds>(took).count()
                                                   << " ms: " << err.message());
}

}  // namespace

TEST_CASE("R2a: a reader waiting beside a send learns of the send's failure at once (one recv per read)") {
  reader_learns_of_send_failure(false);
}

// ---- regression guards for the cross-thread paths (run them under TSan too) ----

namespace {

task<std::error_code> recv_once(ringframe::socket* s, const std::stop_token* tok) {
  std::byte buf[16];
  result<std::size_t> n = co_await s->recv(buf, {.timeout = 3s, .stop = tok});
  co_return n ? std::error_code{} : n.error();
}

}  // namespace

TEST_CASE("G1: a stop from another thread racing the completion it cancels: always one clean result") {
  executor ex;
  auto [a, b] = testing::socket_pair(ex);
  const int peer_fd = b.fd();  // (clang 14 cannot capture a structured binding)
  int cancelled = 0, received = 0;
  for (int i = 0; i < 400; ++i) {
    std::stop_source src;
    std::stop_token tok = src.get_token();
    // The recv is in the kernel when the other thread both completes it (a
    // byte) and asks for its cancellation, in either order.
    std::thread other([&, i] {
      std::this_thread::sleep_for(std::chrono::microseconds(200 + 37 * (i % 13)));
      const char byte = 'x';
      if (i % 2) REQUIRE(::send(peer_fd, &byte, 1, MSG_DONTWAIT) == 1);
      src.request_stop();
      if (!(i % 2)) REQUIRE(::send(peer_fd, &byte, 1, MSG_DONTWAIT) == 1);
    });
    std::error_code e = ex.run(recv_once(&a, &tok));
    other.join();
    if (!e) ++received;
    else if (e == std::errc::operation_canceled) ++cancelled;
    else FAIL("unexpected: " << e.message());
    char sink[64];
    while (::recv(a.fd(), sink, sizeof sink, MSG_DONTWAIT) > 0) {
    }
  }
  MESSAGE(received << " received, " << cancelled << " cancelled");
  CHECK(received + cancelled == 400);
}

namespace {

task<void> count_up(std::atomic<int>* n, int target, std::stop_source* done) {
  if (n->fetch_add(1) + 1 == target) done->request_stop();
  co_return;
}

task<void> park_until(executor* ex, std::stop_token tok) {
  result<void> r = co_await sleep_for(*ex, 10s, &tok);
  (void)r;
}

}  // namespace

TEST_CASE("G2: spawn_on from four threads at once: every task runs exactly once, on the target's thread") {
  executor target;
  std::atomic<int> n{0};
  std::stop_source done;
  constexpr int per_thread = 500, threads = 4;
  std::vector<std::thread> senders;
  for (int t = 0; t < threads; ++t)
    senders.emplace_back([&] {
      for (int i = 0; i < per_thread; ++i) target.spawn_on(target, count_up(&n, per_thread * threads, &done));
    });
  auto t0 = clk::now();
  target.run(park_until(&target, done.get_token()));
  for (auto& s : senders) s.join();
  target.run_until_idle();
  CHECK(n.load() == per_thread * threads);
  CHECK(clk::now() - t0 < 5s);
}

namespace {

task<void> read_until_stopped(connection* c, std::error_code* err) {
  result<message_view> m = co_await c->read_message();
  *err = m ? std::error_code{} : m.error();
}

}  // namespace

TEST_CASE("G3: a connection's stop token requested on another thread cancels its read through the executor") {
  for (bool multishot : {false, true}) {
    executor ex;
    auto [srv, peer] = testing::socket_pair(ex);
    std::stop_source src;
    srv.set_stop_token(src.get_token());
    connection_options o;
    o.multishot_recv = multishot;
    o.idle_timeout = 3s;  // the backstop: a lost stop shows up as ETIMEDOUT
    connection c(std::move(srv), o);
    std::error_code err;
    std::thread other([&] {
      std::this_thread::sleep_for(30ms);
      src.request_stop();
    });
    auto t0 = clk::now();
    ex.run(read_until_stopped(&c, &err));
    other.join();
    CHECK(err == std::errc::operation_canceled);
    CHECK(clk::now() - t0 < 2s);
  }
}
