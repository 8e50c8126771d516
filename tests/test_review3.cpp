// The third review: the backend seam (detail/io_backend.hpp) and the epoll
// backend (lib/src/backend/epoll_backend.cpp). Each case runs the same
// scene on io_uring and on epoll (a subcase each): the contract says both
// behave alike, so io_uring is the reference and the epoll subcase is the
// one under test. Every wait is bounded by a deadline or a timer.
#include "loopback.hpp"

#include <ringframe/buffer_ring.hpp>
#include <ringframe/executor.hpp>
#include <ringframe/socket.hpp>
#include <ringframe/timer.hpp>

#include <doctest/doctest.h>

#include <sys/socket.h>
#include <sys/un.h>
#include <fcntl.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <string>
#include <vector>

using namespace ringframe;
using namespace std::chrono_literals;
using clk = std::chrono::steady_clock;
using testing::on;
using testing::on_each_backend;

namespace {

std::string text(const std::byte* p, std::size_t n) { return std::string(reinterpret_cast<const char*>(p), n); }

struct read_result {
  result<std::size_t> n = errno_code(EINVAL);
  std::byte buf[256];
  std::string str() const { return n ? text(buf, *n) : "<error: " + n.error().message() + ">"; }
};

// A read that waits (so that, on epoll, the descriptor is registered and its
// hint says "empty") and stores what it got. Bounded.
task<void> read_into(ringframe::socket* s, read_result* out, std::chrono::nanoseconds timeout) {
  out->n = co_await s->recv(out->buf, {.timeout = timeout});
}

}  // namespace

// ---------------------------------------------------------------------------
// F1: a short read is taken as "the socket is empty" (drained(): the read
// hint is cleared without EAGAIN). TCP stops a read at the urgent mark, so a
// peer that sends one MSG_OOB byte leaves bytes behind a short read, and no
// edge will come for them: the next read waits for ever (here: its deadline).
TEST_CASE("review3 F1: bytes behind TCP's urgent mark are read by the next recv, not waited for") {
  on_each_backend([](backend_kind k) {
    executor ex(on(k));
    auto [s, c] = ex.run(testing::tcp_pair(&ex));
    read_result first;
    ex.spawn(read_into(&s, &first, 3s));
    ex.run_once(false);  // the read waits (epoll: registered, hint "empty")
    REQUIRE(::send(c.fd(), "abc", 3, 0) == 3);
    REQUIRE(::send(c.fd(), "!", 1, MSG_OOB) == 1);
    REQUIRE(::send(c.fd(), "def", 3, 0) == 3);
    ex.run_until_idle();
    REQUIRE(first.n);
    CHECK(first.str() == "abc");  // stopped at the urgent mark
    read_result second;
    auto t0 = clk::now();
    ex.spawn(read_into(&s, &second, 1500ms));
    ex.run_until_idle();
    INFO("second read: " << second.str() << " after "
                         << std::chrono::duration_cast<std::chrono::milliseconds>(clk::now() - t0).count() << " ms");
    REQUIRE(second.n);  // epoll: ETIMEDOUT, "def" is in the socket the whole time
    CHECK(second.str() == "def");
    CHECK(ex.inflight() == 0);
  });
}

// F1b: the same on a Unix-domain stream (the server's unix:/path): a read
// stops after a segment that carried descriptors (SCM_RIGHTS), with the
// bytes sent after it already queued.
TEST_CASE("review3 F1b: bytes behind a Unix-stream segment that carried a descriptor are read by the next recv") {
  on_each_backend([](backend_kind k) {
    executor ex(on(k));
    auto [a, b] = testing::socket_pair(ex);
    read_result first;
    ex.spawn(read_into(&a, &first, 3s));
    ex.run_once(false);
    int passed = ::dup(b.fd());
    REQUIRE(passed >= 0);
    char data[] = "abc";
    iovec iov{data, 3};
    alignas(cmsghdr) char ctl[CMSG_SPACE(sizeof(int))] = {};
    msghdr mh{};
    mh.msg_iov = &iov;
    mh.msg_iovlen = 1;
    mh.msg_control = ctl;
    mh.msg_controllen = sizeof ctl;
    cmsghdr* cm = CMSG_FIRSTHDR(&mh);
    cm->cmsg_level = SOL_SOCKET;
    cm->cmsg_type = SCM_RIGHTS;
    cm->cmsg_len = CMSG_LEN(sizeof(int));
    std::memcpy(CMSG_DATA(cm), &passed, sizeof(int));
    REQUIRE(::sendmsg(b.fd(), &mh, 0) == 3);
    ::close(passed);
    REQUIRE(::send(b.fd(), "def", 3, 0) == 3);
    ex.run_until_idle();
    REQUIRE(first.n);
    CHECK(first.str() == "abc");  // a read stops after the segment with the descriptor
    read_result second;
    ex.spawn(read_into(&a, &second, 1500ms));
    ex.run_until_idle();
    INFO("second read: " << second.str());
    REQUIRE(second.n);  // epoll: ETIMEDOUT
    CHECK(second.str() == "def");
    CHECK(ex.inflight() == 0);
  });
}

// F2: the same assumption on a message socket (socket::open takes a type;
// socket(ex, fd) takes any descriptor): one datagram shorter than the
// buffer is a short read, while the next datagram is already queued and
// announced. The second read waits for an edge that never comes.
TEST_CASE("review3 F2: two queued SOCK_SEQPACKET messages: the second read gets the second message") {
  on_each_backend([](backend_kind k) {
    executor ex(on(k));
    int fds[2];
    REQUIRE(::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, fds) == 0);
    ringframe::socket a(ex, fds[0]);
    ringframe::socket b(ex, fds[1]);
    read_result first;
    ex.spawn(read_into(&a, &first, 3s));
    ex.run_once(false);
    REQUIRE(::send(b.fd(), "one", 3, 0) == 3);
    REQUIRE(::send(b.fd(), "two", 3, 0) == 3);
    ex.run_until_idle();
    REQUIRE(first.n);
    CHECK(first.str() == "one");
    read_result second;
    ex.spawn(read_into(&a, &second, 1500ms));
    ex.run_until_idle();
    INFO("second read: " << second.str());
    REQUIRE(second.n);  // epoll: ETIMEDOUT
    CHECK(second.str() == "two");
    CHECK(ex.inflight() == 0);
  });
}

// F3: a non-blocking connect() to a Unix-domain listener whose backlog is
// full says EAGAIN (not EINPROGRESS). The epoll backend waits for an edge
// and calls connect() again; but an unconnected Unix stream socket is
// writable (and HUP) from the start, so the one edge comes at once, the
// retry says EAGAIN again, and no further edge ever comes: the connect
// waits out its deadline even after the listener has made room.
namespace {
task<void> connect_to(executor* ex, address at, result<ringframe::socket>* out, clk::duration* took) {
  auto t0 = clk::now();
  *out = co_await ringframe::connect(*ex, at, {.timeout = 2s});
  *took = clk::now() - t0;
}
task<void> accept_one_later(executor* ex, int listen_fd, int* accepted) {
  (void)co_await sleep_for(*ex, 150ms);
  *accepted = ::accept4(listen_fd, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
}
}  // namespace

TEST_CASE("review3 F3: a Unix-domain connect that finds the backlog full completes once the listener makes room") {
  on_each_backend([](backend_kind k) {
    executor ex(on(k));
    std::string name = "@ringframe-review3-f3-" + std::to_string(::getpid()) + (k == backend_kind::epoll ? "-e" : "-u");
    auto at = address::from_unix_path(name);
    REQUIRE(at);
    listen_options lo;
    lo.backlog = 0;
    auto l = ringframe::listen(ex, *at, lo);
    REQUIRE(l);
    // Fill the backlog with plain connects until the kernel says EAGAIN.
    std::vector<int> fillers;
    for (int i = 0; i < 16; ++i) {
      int p = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
      REQUIRE(p >= 0);
      if (::connect(p, at->data(), at->size()) != 0) {
        REQUIRE(errno == EAGAIN);
        ::close(p);
        break;
      }
      fillers.push_back(p);
    }
    REQUIRE(!fillers.empty());
    result<ringframe::socket> got = errno_code(EINVAL);
    clk::duration took{};
    int accepted = -1;
    ex.spawn(connect_to(&ex, *at, &got, &took));
    ex.spawn(accept_one_later(&ex, l->fd(), &accepted));
    ex.run_until_idle();
    CHECK(accepted >= 0);  // room was made after 150 ms
    INFO("connect: " << (got ? std::string("ok") : got.error().message()) << " after "
                     << std::chrono::duration_cast<std::chrono::milliseconds>(took).count() << " ms");
    CHECK(got);  // epoll: ETIMEDOUT after 2 s
    CHECK(took < 1s);
    CHECK(ex.inflight() == 0);
    if (accepted >= 0) ::close(accepted);
    for (int p : fillers) ::close(p);
  });
}

// F4: connect() completion is detected with SO_ERROR and, when that says 0,
// getpeername(): ENOTCONN is taken for "an edge that was not the connect's
// end" and the connect waits again. But SO_ERROR is consumed by whoever
// reads it first: a recv on the same socket (queued on the read side,
// served first) takes the ECONNREFUSED, and the connect then finds no
// error and no peer, and waits for an edge that never comes.
namespace {
task<void> connect_only(ringframe::socket* s, address at, result<void>* out, clk::duration* took) {
  auto t0 = clk::now();
  *out = co_await s->connect(at, {.timeout = 2s});
  *took = clk::now() - t0;
}
}  // namespace

TEST_CASE("review3 F4: a refused TCP connect ends with an error, not its deadline, when a read on the socket saw the error first") {
  on_each_backend([](backend_kind k) {
    executor ex(on(k));
    address at;
    { ringframe::socket l = testing::loopback_listener(ex, at); }  // closed: connecting there is refused
    auto s = ringframe::socket::open(ex, AF_INET);
    REQUIRE(s);
    result<void> c = errno_code(EINVAL);
    clk::duration took{};
    read_result r;
    ex.spawn(connect_only(&*s, at, &c, &took));
    ex.spawn(read_into(&*s, &r, 2s));
    ex.run_until_idle();
    INFO("connect: " << (c ? std::string("ok") : c.error().message()) << " after "
                     << std::chrono::duration_cast<std::chrono::milliseconds>(took).count() << " ms; read: " << r.str());
    REQUIRE_FALSE(c);
    CHECK(c.error() != std::errc::timed_out);  // epoll: ETIMEDOUT after 2 s
    CHECK(took < 1s);
    CHECK(ex.inflight() == 0);
  });
}

// F5: fresh() (accept4 handed out a number) overwrites the number's state
// without ending what still waits there; such a waiter stays in by_key_ and
// timers_, and when its deadline later unlinks it, unlink() rewrites the
// head/tail of the *new* descriptor's queue, detaching the new socket's own
// read: data then arrives for it and nothing reads it. The stale waiter
// here comes from closing a released descriptor while a read waits on it
// (on io_uring well defined: the read keeps the file and times out).
namespace {
task<void> accept_into(ringframe::socket* l, result<ringframe::socket>* out) {
  *out = co_await l->accept(nullptr, {.timeout = 2s});
}
task<void> send_later(executor* ex, int fd, std::chrono::nanoseconds after, const char* what) {
  (void)co_await sleep_for(*ex, after);
  REQUIRE(::send(fd, what, std::strlen(what), MSG_NOSIGNAL) == static_cast<ssize_t>(std::strlen(what)));
}
}  // namespace

TEST_CASE("review3 F5: a read left waiting on a closed number must not take the next socket with that number down with it") {
  on_each_backend([](backend_kind k) {
    executor ex(on(k));
    address at;
    ringframe::socket l = testing::loopback_listener(ex, at);
    int client = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    REQUIRE(client >= 0);
    int fds[2];
    REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) == 0);
    ringframe::socket a(ex, fds[0]);
    read_result stale;
    ex.spawn(read_into(&a, &stale, 300ms));
    ex.run_once(false);  // the read waits on fds[0]
    const int n = a.release();
    ::close(n);  // the number is free; the read still waits
    REQUIRE(::connect(client, at.data(), at.size()) == 0);
    result<ringframe::socket> s = errno_code(EINVAL);
    ex.spawn(accept_into(&l, &s));
    while (!s && s.error() == std::errc::invalid_argument) ex.run_once(true);
    REQUIRE(s);
    REQUIRE(s->fd() == n);  // the accepted connection got the number back
    read_result mine;
    ex.spawn(read_into(&*s, &mine, 2s));
    ex.spawn(send_later(&ex, client, 500ms, "hello"));  // after the stale read's deadline
    ex.run_until_idle();
    REQUIRE_FALSE(stale.n);
    // io_uring: the read keeps the closed file and times out. epoll: the
    // number's return (accept4) ends what still waited on it, ECANCELED
    // (docs/io-path.md, "Differences the kernel forces").
    if (k == backend_kind::io_uring) CHECK(stale.n.error() == std::errc::timed_out);
    else CHECK(stale.n.error() == std::errc::operation_canceled);
    INFO("the new socket's read: " << mine.str());
    REQUIRE(mine.n);  // epoll: ETIMEDOUT, "hello" sits unread in the socket
    CHECK(mine.str() == "hello");
    CHECK(ex.inflight() == 0);
    ::close(client);
    ::close(fds[1]);
  });
}

// ---------------------------------------------------------------------------
// Guards for what was checked and found sound (they pass on both backends).

// A linked deadline and the data arriving in the same turn, many times: each
// read ends exactly once (data or ETIMEDOUT), and every request and timer
// completion is accounted for.
namespace {
task<void> read_n(ringframe::socket* s, int* got_data, int* timed_out, int rounds) {
  for (int i = 0; i < rounds; ++i) {
    std::byte buf[16];
    auto r = co_await s->recv(buf, {.timeout = 5ms});
    if (r) ++*got_data;
    else if (r.error() == std::errc::timed_out) ++*timed_out;
  }
}
task<void> write_n(executor* ex, int fd, int rounds) {
  for (int i = 0; i < rounds; ++i) {
    (void)co_await sleep_for(*ex, 5ms);
    REQUIRE(::send(fd, "x", 1, MSG_NOSIGNAL) == 1);
  }
}
}  // namespace

TEST_CASE("review3 guard: deadlines racing data: one end per read, nothing left in flight") {
  on_each_backend([](backend_kind k) {
    executor ex(on(k));
    auto [a, b] = testing::socket_pair(ex);
    int data = 0, timeouts = 0;
    ex.spawn(read_n(&a, &data, &timeouts, 200));
    ex.spawn(write_n(&ex, b.fd(), 200));
    ex.run_until_idle();
    CHECK(data + timeouts == 200);
    CHECK(data > 0);
    CHECK(ex.inflight() == 0);
  });
}

// stop() with a read, a send to a full socket, an accept and a
// sleep all waiting (the waker's read too): all end with ECANCELED and the
// executor goes away at once.
namespace {
task<void> sleep_long(executor* ex, result<void>* out) { *out = co_await sleep_for(*ex, 10s); }
task<void> send_forever(ringframe::socket* s, result<std::size_t>* out) {
  static std::byte big[1 << 20];
  *out = co_await s->send_all(std::span<const std::byte>(big, sizeof big));
}
task<void> accept_into2(ringframe::socket* l, result<ringframe::socket>* out) { *out = co_await l->accept(); }
}  // namespace

TEST_CASE("review3 guard: stop() ends everything that waits, and the executor is destroyed at once") {
  on_each_backend([](backend_kind k) {
    auto t0 = clk::now();
    {
      executor ex(on(k));
      auto [a, a_peer] = testing::socket_pair(ex);
      auto [b, b_peer] = testing::socket_pair(ex);  // b_peer never reads
      address at;
      ringframe::socket l = testing::loopback_listener(ex, at);
      read_result r1;
      result<std::size_t> sent = std::size_t{0};
      result<ringframe::socket> acc = errno_code(EINVAL);
      result<void> slept;
      ex.spawn(read_into(&a, &r1, 30s));
      ex.spawn(send_forever(&b, &sent));
      ex.spawn(accept_into2(&l, &acc));
      ex.spawn(sleep_long(&ex, &slept));
      for (int i = 0; i < 5; ++i) ex.run_once(false);
      ex.stop();
      ex.run_until_idle();
      REQUIRE_FALSE(r1.n);
      CHECK(r1.n.error() == std::errc::operation_canceled);
      REQUIRE_FALSE(sent);
      CHECK(sent.error() == std::errc::operation_canceled);
      CHECK(acc.error() == std::errc::operation_canceled);
      CHECK(slept.error() == std::errc::operation_canceled);
      CHECK(ex.inflight() == 0);
    }
    CHECK(clk::now() - t0 < 1s);
  });
}
