// The backend seam (detail/io_backend.hpp): choosing a backend, and the
// contract both keep, each case run on io_uring and on epoll explicitly
// (the rest of the suite runs on either, with meson test --setup epoll).
// Most cases here are about what the epoll backend emulates and where
// readiness has pitfalls of its own: an end that comes with the last data
// (no further edge), a descriptor closed while an operation waits on it,
// linked deadlines, cancellation, provided buffers that run out.
#include "loopback.hpp"

#include <ringframe/buffer_ring.hpp>
#include <ringframe/executor.hpp>
#include <ringframe/socket.hpp>
#include <ringframe/timer.hpp>

#include <doctest/doctest.h>

#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <string>

using namespace ringframe;
using namespace std::chrono_literals;
using clk = std::chrono::steady_clock;
using testing::on;
using testing::on_each_backend;

namespace {

task<result<std::size_t>> recv_once(ringframe::socket* s, std::span<std::byte> buf, std::chrono::nanoseconds timeout) {
  co_return co_await s->recv(buf, {.timeout = timeout});
}

// (The deadline only bounds a test that fails: it is never reached here.)
task<void> recv_into(ringframe::socket* s, result<std::size_t>* out) {
  std::byte buf[64];
  *out = co_await s->recv(buf, {.timeout = 3s});
}

task<result<provided_recv>> recv_provided_once(ringframe::socket* s, buffer_ring* br) {
  co_return co_await s->recv_provided(*br, {.timeout = 2s});
}

}  // namespace

TEST_CASE("backend names parse, and an explicit backend is the one that runs") {
  backend_kind k{};
  CHECK(parse_backend_kind("epoll", k));
  CHECK(k == backend_kind::epoll);
  CHECK(parse_backend_kind("io_uring", k));
  CHECK(k == backend_kind::io_uring);
  CHECK(parse_backend_kind("io-uring", k));
  CHECK(parse_backend_kind("auto", k));
  CHECK(k == backend_kind::automatic);
  CHECK_FALSE(parse_backend_kind("kqueue", k));
  CHECK_FALSE(parse_backend_kind("", k));
  CHECK(std::string(to_string(backend_kind::epoll)) == "epoll");

  executor e(on(backend_kind::epoll));
  CHECK(e.backend() == backend_kind::epoll);
  CHECK(std::string(e.backend_name()) == "epoll");
  CHECK(std::string(e.setup_mode()) == "epoll");
  CHECK(e.fallback_reason().empty());
  executor u(on(backend_kind::io_uring));  // this machine allows io_uring
  CHECK(u.backend() == backend_kind::io_uring);
  CHECK(std::string(u.backend_name()) == "io_uring");
}

TEST_CASE("RINGFRAME_BACKEND picks the backend of an automatic executor, and a bad value is an error") {
  const char* before = std::getenv("RINGFRAME_BACKEND");
  const std::string saved = before ? before : "";
  ::setenv("RINGFRAME_BACKEND", "epoll", 1);
  {
    executor ex;
    CHECK(ex.backend() == backend_kind::epoll);
    executor explicit_uring(on(backend_kind::io_uring));  // an explicit choice wins
    CHECK(explicit_uring.backend() == backend_kind::io_uring);
  }
  ::setenv("RINGFRAME_BACKEND", "io_uring", 1);
  {
    executor ex;
    CHECK(ex.backend() == backend_kind::io_uring);
  }
  ::setenv("RINGFRAME_BACKEND", "sometimes", 1);
  try {
    executor ex;
    FAIL("a bad RINGFRAME_BACKEND was accepted");
  } catch (const setup_error& e) {
    CHECK(std::string(e.what()).find("RINGFRAME_BACKEND='sometimes'") != std::string::npos);
  }
  if (before) ::setenv("RINGFRAME_BACKEND", saved.c_str(), 1);
  else ::unsetenv("RINGFRAME_BACKEND");
}

TEST_CASE("the last bytes and the peer's end arriving together: the read after them sees the end at once") {
  // Readiness pitfall: a short read looks like "nothing left", but the FIN
  // is still queued and no further edge will announce it.
  on_each_backend([](backend_kind k) {
    executor ex(on(k));
    auto [a, b] = testing::socket_pair(ex);
    result<std::size_t> first = errno_code(EINVAL);
    ex.spawn(recv_into(&a, &first));
    ex.run_once(false);  // the read waits (on epoll: the socket is registered)
    REQUIRE(::send(b.fd(), "abc", 3, 0) == 3);
    REQUIRE(::shutdown(b.fd(), SHUT_WR) == 0);  // one edge for both
    ex.run_until_idle();
    REQUIRE(first);
    CHECK(*first == 3);
    std::byte buf[64];
    auto t0 = clk::now();
    result<std::size_t> end = ex.run(recv_once(&a, buf, 2s));
    REQUIRE(end);  // not ETIMEDOUT: the end was reported, not waited for
    CHECK(*end == 0);
    CHECK(clk::now() - t0 < 1s);
  });
}

TEST_CASE("a peer's end that comes while a read waits ends the read") {
  on_each_backend([](backend_kind k) {
    executor ex(on(k));
    auto [a, b] = testing::socket_pair(ex);
    result<std::size_t> got = errno_code(EINVAL);
    ex.spawn(recv_into(&a, &got));
    ex.run_once(false);  // the read waits
    REQUIRE(::shutdown(b.fd(), SHUT_WR) == 0);
    ex.run_until_idle();
    REQUIRE(got);
    CHECK(*got == 0);
  });
}

TEST_CASE("a deadline ends a read that waits, with ETIMEDOUT, not before it is due") {
  on_each_backend([](backend_kind k) {
    executor ex(on(k));
    auto [a, b] = testing::socket_pair(ex);
    std::byte buf[16];
    auto t0 = clk::now();
    result<std::size_t> r = ex.run(recv_once(&a, buf, 30ms));
    auto took = clk::now() - t0;
    REQUIRE_FALSE(r);
    CHECK(r.error() == std::errc::timed_out);
    CHECK(took >= 30ms);
    CHECK(took < 2s);
    CHECK(ex.inflight() == 0);  // the request and its timer both completed
  });
}

TEST_CASE("closing a socket whose read waits (epoll): the read ends with ECANCELED, nothing waits on a dead descriptor") {
  // On epoll a closed descriptor leaves the interest set, so nothing would
  // ever end that read; the socket tells its executor as it closes. (On
  // io_uring the kernel holds the file until the read ends by itself.)
  executor ex(on(backend_kind::epoll));
  auto [a, b] = testing::socket_pair(ex);
  result<std::size_t> got = std::size_t{0};
  ex.spawn(recv_into(&a, &got));
  ex.run_once(false);
  REQUIRE(ex.inflight() == 2);  // the read and its deadline's timer
  a = ringframe::socket();  // closes it
  auto t0 = clk::now();
  ex.run_until_idle();
  CHECK(clk::now() - t0 < 1s);
  REQUIRE_FALSE(got);
  CHECK(got.error() == std::errc::operation_canceled);
  CHECK(ex.inflight() == 0);
}

TEST_CASE("stop() ends every waiting operation with ECANCELED") {
  on_each_backend([](backend_kind k) {
    executor ex(on(k));
    auto [a, b] = testing::socket_pair(ex);
    result<std::size_t> r1 = std::size_t{0}, r2 = std::size_t{0};
    ex.spawn(recv_into(&a, &r1));
    ex.spawn(recv_into(&b, &r2));
    ex.run_once(false);
    ex.stop();
    ex.run_until_idle();
    REQUIRE_FALSE(r1);
    REQUIRE_FALSE(r2);
    CHECK(r1.error() == std::errc::operation_canceled);
    CHECK(r2.error() == std::errc::operation_canceled);
  });
}

TEST_CASE("provided buffers: a recv takes one only when data comes, gives it back, and none free is ENOBUFS") {
  on_each_backend([](backend_kind k) {
    executor_options o = on(k);
    o.receive_buffers = 2;
    o.receive_buffers_max = 2;
    executor ex(o);
    buffer_ring* br = ex.receive_buffers();
    REQUIRE(br);
    auto [a, b] = testing::socket_pair(ex);
    REQUIRE(::send(b.fd(), "hello", 5, 0) == 5);
    result<provided_recv> r = ex.run(recv_provided_once(&a, br));
    REQUIRE(r);
    REQUIRE(r->has_buffer);
    CHECK(r->len == 5);
    CHECK(std::string(reinterpret_cast<const char*>(br->data(r->id, r->len).data()), r->len) == "hello");
    // Hold this one, take the other, then ask again with none free.
    REQUIRE(::send(b.fd(), "world", 5, 0) == 5);
    result<provided_recv> r2 = ex.run(recv_provided_once(&a, br));
    REQUIRE(r2);
    REQUIRE(r2->has_buffer);
    CHECK(r2->id != r->id);
    REQUIRE(::send(b.fd(), "!", 1, 0) == 1);
    result<provided_recv> r3 = ex.run(recv_provided_once(&a, br));
    REQUIRE_FALSE(r3);
    CHECK(r3.error() == std::errc::no_buffer_space);
    br->release(r->slice());
    br->release(r2->slice());
    result<provided_recv> r4 = ex.run(recv_provided_once(&a, br));  // the "!" was not lost
    REQUIRE(r4);
    CHECK(r4->len == 1);
    br->release(r4->slice());
  });
}

// A pipelined batch of small frames longer than 16 KiB (128 requests of 180
// bytes) came to the epoll backend in two recvs, each followed by a send of
// the replies it held: twice the ceiling's system calls, 0.44x its rate at
// 10 x 128 x 64 B. Its buffers are handed out one at a time and copied
// from at once, so they can be as large as a socket's usual batch; io_uring
// keeps 16 KiB ones (the kernel holds them until it fills them).
TEST_CASE("provided buffers: on epoll one recv takes a batch of up to 64 KiB; on io_uring a buffer is 16 KiB") {
  on_each_backend([](backend_kind k) {
    executor ex(on(k));
    buffer_ring* br = ex.receive_buffers();
    REQUIRE(br);
    const std::size_t expect = k == backend_kind::epoll ? 64 * 1024 : 16 * 1024;
    CHECK(br->buffer_size() == expect);
    auto [a, b] = testing::socket_pair(ex);
    std::string batch(40000, '\0');
    for (std::size_t i = 0; i < batch.size(); ++i) batch[i] = static_cast<char>('a' + i % 23);
    REQUIRE(::send(b.fd(), batch.data(), batch.size(), 0) == static_cast<ssize_t>(batch.size()));
    result<provided_recv> r = ex.run(recv_provided_once(&a, br));
    REQUIRE(r);
    REQUIRE(r->has_buffer);
    const std::size_t want = std::min(batch.size(), expect);
    CHECK(r->len == want);
    CHECK(std::string(reinterpret_cast<const char*>(br->data(r->id, r->len).data()), r->len) == batch.substr(0, want));
    br->release(r->slice());
  });
}

namespace {
task<result<void>> sleep_20ms(executor* ex) { co_return co_await sleep_for(*ex, 20ms); }
}  // namespace

TEST_CASE("sleep_for sleeps at least its time on both backends") {
  on_each_backend([](backend_kind k) {
    executor ex(on(k));
    auto t0 = clk::now();
    result<void> r = ex.run(sleep_20ms(&ex));
    CHECK(r);
    CHECK(clk::now() - t0 >= 20ms);
  });
}
