// Review 2 of 4858310..HEAD (the connection split): regression guards that
// pass on the current code (tests/test_review2_failing.cpp has the findings).
#include "loopback.hpp"

#include <ringframe/connection.hpp>
#include <ringframe/deadline.hpp>
#include <ringframe/executor.hpp>
#include <ringframe/frame.hpp>
#include <ringframe/socket.hpp>
#include <ringframe/timer.hpp>

#include <doctest/doctest.h>

#include <liburing.h>
#include <sys/socket.h>
#include <fcntl.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <string>
#include <thread>

using namespace ringframe;
using namespace std::chrono_literals;
using clk = std::chrono::steady_clock;

namespace {

task<std::pair<ringframe::socket, ringframe::socket>> tcp_pair(executor* ex) {
  address at;
  ringframe::socket l = testing::loopback_listener(*ex, at);
  result<ringframe::socket> c = co_await ringframe::connect(*ex, at, {.timeout = 5s});
  REQUIRE(c);
  result<ringframe::socket> s = co_await l.accept(nullptr, {.timeout = 5s});
  REQUIRE(s);
  co_return std::pair<ringframe::socket, ringframe::socket>(std::move(*s), std::move(*c));
}

// Backstop as in R6: after 3 s the peer reads, the pages are released.
struct rescuer {
  int fd;
  std::atomic<bool> finished{false}, rescued{false};
  std::thread t;
  explicit rescuer(int peer_fd) : fd(peer_fd) {
    t = std::thread([this] {
      for (int i = 0; i < 300 && !finished; ++i) std::this_thread::sleep_for(10ms);
      if (finished) return;
      rescued = true;
      char buf[65536];
      while (!finished)
        if (::recv(fd, buf, sizeof buf, MSG_DONTWAIT) <= 0) std::this_thread::sleep_for(1ms);
    });
  }
  void done() {
    finished = true;
    t.join();
  }
};

// Fill the path to a peer that does not read (its window closes), then give
// the sender's buffer room again: a SEND_ZC is then taken whole at once
// (its result comes at once, with F_MORE) while its pages wait in the
// write queue for the peer, so the notification does not come.
void close_window(int fd) {
  int small = 4096;
  REQUIRE(::setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &small, sizeof small) == 0);
  int fl = ::fcntl(fd, F_GETFL);
  REQUIRE(::fcntl(fd, F_SETFL, fl | O_NONBLOCK) == 0);
  std::string junk(65536, 'j');
  for (int idle = 0; idle < 20;) {
    if (::send(fd, junk.data(), junk.size(), MSG_NOSIGNAL) > 0) idle = 0;
    else { ++idle; std::this_thread::sleep_for(1ms); }
  }
  REQUIRE(::fcntl(fd, F_SETFL, fl) == 0);
  int big = 8 << 20;
  REQUIRE(::setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &big, sizeof big) == 0);
}

task<void> zc_flush(connection* c, std::error_code* err, bool* done) {
  REQUIRE(c->write(message::binary(std::string(8 << 10, 'z'), "t")).await_ready());
  result<void> f = co_await c->flush();
  *err = f ? std::error_code{} : f.error();
  *done = true;
}

task<void> later(executor* ex, std::chrono::milliseconds d, std::stop_source* src) {
  result<void> slept = co_await sleep_for(*ex, d);
  REQUIRE(slept);
  if (src) src->request_stop();
  else ex->stop();
}

// The batch is taken whole (its result, F_MORE, is dispatched: releasing)
// and its pages wait behind a closed window; a stop afterwards ends the flush.
void zc_stop_after_result(bool executor_stop) {
  executor ex;
  auto [s, c] = ex.run(tcp_pair(&ex));
  int rcv = 4096;
  REQUIRE(::setsockopt(c.fd(), SOL_SOCKET, SO_RCVBUF, &rcv, sizeof rcv) == 0);
  close_window(s.fd());
  std::stop_source src;
  s.set_stop_token(src.get_token());
  connection_options wo;
  wo.zero_copy_threshold = 1;
  wo.write_timeout = 0s;
  connection writer(std::move(s), wo);
  rescuer r(c.fd());
  std::error_code err;
  bool done = false;
  ex.spawn(zc_flush(&writer, &err, &done));
  ex.spawn(later(&ex, 100ms, executor_stop ? nullptr : &src));
  ex.run_until_idle();
  r.done();
  CHECK(done);
  CHECK(!r.rescued);
  CHECK(err == std::errc::operation_canceled);
}

task<void> reader(connection* c, std::error_code* err, bool* done, clk::time_point* at) {
  result<message_view> m = co_await c->read_message();
  *err = m ? std::error_code{} : m.error();
  *done = true;
  *at = clk::now();
}

}  // namespace

TEST_CASE("review2: executor::stop() after a fully taken SEND_ZC's result ends the flush whose pages a closed window holds") {
  zc_stop_after_result(true);
}

TEST_CASE("review2: the connection's stop after a fully taken SEND_ZC's result ends the flush whose pages a closed window holds") {
  zc_stop_after_result(false);
}

TEST_CASE("review2: a peer that stalls mid-frame gets the message timeout, reported once as ETIMEDOUT") {
  executor ex;
  auto [s, c] = testing::socket_pair(ex);
  connection_options o;
  o.message_timeout = 100ms;
  o.idle_timeout = 0s;
  connection conn(std::move(s), o);
  std::string frame;
  REQUIRE(encode_frame(message::binary(std::string(1000, 'x'), "t"), frame));
  REQUIRE(::send(c.fd(), frame.data(), 10, MSG_NOSIGNAL) == 10);
  std::error_code err;
  bool done = false;
  clk::time_point ended{};
  auto t0 = clk::now();
  ex.spawn(reader(&conn, &err, &done, &ended));
  ex.run_until_idle();
  REQUIRE(done);
  CHECK(err == std::errc::timed_out);
  CHECK(ended - t0 < 1s);
}
