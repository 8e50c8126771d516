// Review of a6945e2..1d8eb44, points 3-5: the epoll backend's raw system
// calls (recv/send through syscall()), frame_decoder::next_repeat's
// need_more shortcut, and executor::deadline_list_for's cached list.
#include "loopback.hpp"
#include "send_helpers.hpp"

#include <ringframe/deadline.hpp>
#include <ringframe/executor.hpp>
#include <ringframe/frame.hpp>
#include <ringframe/message.hpp>
#include <ringframe/send_queue.hpp>
#include <ringframe/socket.hpp>

#include <doctest/doctest.h>

#include <sys/socket.h>

#include <chrono>
#include <cstring>
#include <string>
#include <vector>

using namespace ringframe;
using namespace std::chrono_literals;

namespace {

using testing::on;
using testing::on_each_backend;

task<result<std::size_t>> recv_once(ringframe::socket* s, std::span<std::byte> buf, std::chrono::nanoseconds t) {
  co_return co_await s->recv(buf, {.timeout = t});
}
task<result<std::size_t>> send_once(ringframe::socket* s, std::span<const std::byte> buf) {
  co_return co_await s->send(buf);
}

std::string frame_of(std::string_view content) {
  message m = message::binary(std::string(content), "binary/custom-client-binary-type");
  std::string out;
  REQUIRE(encode_frame(m, out));
  return out;
}

struct fired_flag {
  deadline d{&fired_flag::fire};
  int times = 0;
  static void fire(deadline* self) { ++reinterpret_cast<fired_flag*>(self)->times; }
};

}  // namespace

// ---- point 3: recv/send by syscall() report as the wrappers did ----

TEST_CASE("review46: recv by syscall: data, short reads, EOF (0), a wait (EAGAIN), a reset; send: EPIPE") {
  on_each_backend([](backend_kind k) {
    executor ex(on(k));
    auto [a, b] = ex.run(testing::tcp_pair(&ex));
    std::vector<std::byte> buf(64);
    // Nothing there: waits (EAGAIN inside), times out.
    auto r = ex.run(recv_once(&a, buf, 50ms));
    CHECK(!r);
    // Data then a short read.
    const std::string hello = "hello";
    auto s = ex.run(send_once(&b, std::as_bytes(std::span(hello.data(), hello.size()))));
    REQUIRE(s);
    CHECK(*s == 5);
    r = ex.run(recv_once(&a, buf, 5s));
    REQUIRE(r);
    CHECK(*r == 5);
    CHECK(std::memcmp(buf.data(), "hello", 5) == 0);
    // The peer's FIN: 0, twice.
    REQUIRE(::shutdown(b.fd(), SHUT_WR) == 0);
    r = ex.run(recv_once(&a, buf, 5s));
    REQUIRE(r);
    CHECK(*r == 0);
    r = ex.run(recv_once(&a, buf, 5s));
    REQUIRE(r);
    CHECK(*r == 0);
    // The peer resets: a send fails with EPIPE or ECONNRESET (errno through syscall()).
    linger l{1, 0};
    REQUIRE(::setsockopt(b.fd(), SOL_SOCKET, SO_LINGER, &l, sizeof l) == 0);
    { ringframe::socket gone = std::move(b); }
    std::error_code last;
    for (int i = 0; i < 4 && !last; ++i) {
      auto w = ex.run(send_once(&a, std::as_bytes(std::span(hello.data(), hello.size()))));
      if (!w) last = w.error();
    }
    CHECK((last == std::errc::broken_pipe || last == std::errc::connection_reset));
  });
}

TEST_CASE("review46: a Unix stream pair: send by SYS_sendto with no address, recv by SYS_recvfrom") {
  on_each_backend([](backend_kind k) {
    executor ex(on(k));
    auto [a, b] = testing::socket_pair(ex);
    const std::string big(300000, 'x');
    send_queue q(a, {});
    q.out() = big;
    q.start();
    std::string got = ex.run(testing::read_exactly(&b, big.size(), 5s));
    ex.run_until_idle();
    CHECK(got == big);
    CHECK(q.current() == send_queue::state::idle);
  });
}

// ---- point 4: next_repeat's need_more shortcut keeps next_slow's state ----

TEST_CASE("review46: after a repeated frame, 0 or 1 byte left: need_more, and the rest is decoded whole") {
  const std::string f1 = frame_of("first"), f2 = frame_of("other"), f3 = frame_of("third");
  for (std::size_t left : {0u, 1u}) {
    CAPTURE(left);
    frame_decoder d;
    message_view m;
    d.feed(f1);
    REQUIRE(d.next(m) == frame_decoder::status::message);  // parsed: cached
    d.feed(f2 + f3.substr(0, left));
    REQUIRE(d.next(m) == frame_decoder::status::message);  // next_repeat
    CHECK(std::string_view(reinterpret_cast<const char*>(m.content.data()), m.content.size()) == "other");
    CHECK(d.next(m) == frame_decoder::status::need_more);  // the shortcut
    CHECK(d.buffered() == left);
    CHECK(d.mid_frame() == (left > 0));
    CHECK(d.frame_length() == 0);
    CHECK(d.next(m) == frame_decoder::status::need_more);
    if (left == 0) {
      d.shrink_if_idle();
      CHECK(d.capacity() == 0);
    }
    // The rest, one byte at a time.
    for (std::size_t i = left; i + 1 < f3.size(); ++i) {
      d.feed(f3.substr(i, 1));
      REQUIRE(d.next(m) == frame_decoder::status::need_more);
    }
    d.feed(f3.substr(f3.size() - 1));
    REQUIRE(d.next(m) == frame_decoder::status::message);
    CHECK(std::string_view(reinterpret_cast<const char*>(m.content.data()), m.content.size()) == "third");
    CHECK(d.next(m) == frame_decoder::status::need_more);
    CHECK(d.buffered() == 0);
  }
}

TEST_CASE("review46: after the shortcut, prepare() and commit() continue the stream") {
  const std::string f1 = frame_of("aaaa"), f2 = frame_of("bbbb");
  frame_decoder d;
  message_view m;
  d.feed(f1);
  REQUIRE(d.next(m) == frame_decoder::status::message);
  d.feed(f1 + f2.substr(0, 1));
  REQUIRE(d.next(m) == frame_decoder::status::message);
  REQUIRE(d.next(m) == frame_decoder::status::need_more);
  auto span = d.prepare(16);
  REQUIRE(span.size() >= 1);
  const std::size_t n = std::min(span.size(), f2.size() - 1);
  std::memcpy(span.data(), f2.data() + 1, n);
  d.commit(n);
  if (n < f2.size() - 1) d.feed(f2.substr(1 + n));
  REQUIRE(d.next(m) == frame_decoder::status::message);
  CHECK(std::string_view(reinterpret_cast<const char*>(m.content.data()), m.content.size()) == "bbbb");
}

// ---- point 5: the cached deadline list is the executor's own, for the duration asked ----

TEST_CASE("review46: deadlines armed alternately on two executors and durations go to their own lists") {
  executor ex1, ex2;
  fired_flag a1, b1, a2, b2;
  a1.d.arm(ex1, 20ms);
  a2.d.arm(ex2, 20ms);   // ex2's own list, not ex1's cached one
  b2.d.arm(ex2, 400ms);
  b1.d.arm(ex1, 400ms);
  a1.d.arm(ex1, 20ms);   // re-armed: cached list is 400ms's
  const auto until = std::chrono::steady_clock::now() + 2s;
  while (a2.times == 0 && std::chrono::steady_clock::now() < until) ex2.run_once(false);
  CHECK(a2.times == 1);
  CHECK(a1.times == 0);  // on ex1, which has not turned
  CHECK(b2.times == 0);
  while (a1.times == 0 && std::chrono::steady_clock::now() < until) ex1.run_once(false);
  CHECK(a1.times == 1);
  CHECK(b1.times == 0);
  b1.d.cancel();
  b2.d.cancel();
}
