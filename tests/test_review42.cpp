// review42: a Unix-domain connect made by connect_op itself on io_uring
// (non-blocking, tried again every millisecond while the listener's backlog
// is full: lib/ringframe/socket.hpp, connect_op; lib/src/socket.cpp,
// connect_unix_now), compared with the epoll backend's, which does the same
// in its retry list (lib/src/backend/epoll_backend.cpp, step::later).
//
// F1 failed first, on both backends; F2 (after F1's fix) on epoll. The
// other cases pin what was checked and found sound: a stop from another
// thread at any moment of the retry, the deadline, the errno of a listener
// that goes away, and the socket's flags afterwards. Each case runs on io_uring and on epoll. Loopback only;
// every wait is bounded.
#include "loopback.hpp"

#include <ringframe/address.hpp>
#include <ringframe/executor.hpp>
#include <ringframe/socket.hpp>
#include <ringframe/timer.hpp>

#include <doctest/doctest.h>

#include <fcntl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <stop_token>
#include <string>
#include <thread>

using namespace ringframe;
using namespace std::chrono_literals;
using clk = std::chrono::steady_clock;

namespace {

using testing::unix_full;

struct connected {
  result<void> r{std::errc::io_error};
  clk::duration took{};
  bool done = false;
};

task<void> connect_sock(ringframe::socket* s, address to, op_options o, connected* out) {
  const auto t0 = clk::now();
  result<void> r = co_await s->connect(to, o);
  out->r = r;
  out->took = clk::now() - t0;
  out->done = true;
}

// Closes `s` as a socket is closed (the executor is told), opens a plain
// Unix socket of its own (the lowest free number: the one just closed),
// then makes room in the listener's backlog.
task<void> close_reuse_make_room(executor* ex, ringframe::socket* s, int listen_fd, int* old_fd, int* fresh,
                                 int* taken) {
  result<void> slept = co_await sleep_for(*ex, 30ms);
  REQUIRE(slept);
  *old_fd = s->fd();
  *s = ringframe::socket{};
  *fresh = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  *taken = ::accept4(listen_fd, nullptr, nullptr, SOCK_CLOEXEC);
  result<void> again = co_await sleep_for(*ex, 100ms);
  REQUIRE(again);
}

// The same, closed behind ringframe's back (release(), then ::close), the
// number taken by a descriptor ringframe never sees.
task<void> close_raw_reuse_make_room(executor* ex, ringframe::socket* s, int listen_fd, int* old_fd, int* fresh,
                                     int* taken) {
  result<void> slept = co_await sleep_for(*ex, 30ms);
  REQUIRE(slept);
  *old_fd = s->release();
  ::close(*old_fd);
  *fresh = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  *taken = ::accept4(listen_fd, nullptr, nullptr, SOCK_CLOEXEC);
  result<void> again = co_await sleep_for(*ex, 100ms);
  REQUIRE(again);
}

task<void> make_room_after(executor* ex, std::chrono::nanoseconds d, int listen_fd, int* taken) {
  result<void> slept = co_await sleep_for(*ex, d);
  REQUIRE(slept);
  *taken = ::accept4(listen_fd, nullptr, nullptr, SOCK_CLOEXEC);
}

// Closes the listener, or (unlink) removes its socket file instead.
task<void> listener_goes_after(executor* ex, std::chrono::nanoseconds d, unix_full* u, bool unlink) {
  result<void> slept = co_await sleep_for(*ex, d);
  REQUIRE(slept);
  if (unlink) {
    ::unlink(u->path.c_str());
  } else {
    ::close(u->fd);
    u->fd = -1;
  }
}

const char* name(backend_kind k) { return k == backend_kind::epoll ? "epoll" : "io_uring"; }
long ms(clk::duration d) { return static_cast<long>(std::chrono::duration_cast<std::chrono::milliseconds>(d).count()); }
std::string what(const result<void>& r) { return r ? std::string("connected") : r.error().message(); }

}  // namespace

// F1: a Unix connect waiting for room in the listener's backlog is tried
// again (connect(2) and, on io_uring, fcntl(2)) by descriptor number. When
// its socket was closed meanwhile (socket::close(), a move-assignment, the
// destructor of a socket that lives apart from the awaiting coroutine), the
// next try went to whatever descriptor had that number by then: a socket
// opened since was connected to the listener in the other's place (and on
// io_uring its O_NONBLOCK flipped and back). On io_uring the kernel's own
// connect (before d143603) held the file, never the number; on epoll the
// retry list was not among the requests that closing a descriptor ends
// (epoll_backend.cpp, forget(): only the read and write queues).
TEST_CASE("review42: a socket closed while its Unix connect waits for room, its number taken again: the new socket is left alone, the connect ends with ECANCELED") {
  testing::on_each_backend([](backend_kind k) {
    unix_full u;
    REQUIRE(u.full());
    executor ex(testing::on(k));
    result<ringframe::socket> s = ringframe::socket::open(ex, AF_UNIX);
    REQUIRE(s);
    connected c;
    int old_fd = -1, fresh = -1, taken = -1;
    ex.spawn(connect_sock(&*s, u.at, {.timeout = 2s}, &c));
    ex.spawn(close_reuse_make_room(&ex, &*s, u.fd, &old_fd, &fresh, &taken));
    ex.run_until_idle();
    INFO(std::string(name(k)) << ": the connect of the closed socket: " << (c.done ? what(c.r) : std::string("not done")) << " after "
                 << ms(c.took) << " ms; old fd " << old_fd << ", new socket's fd " << fresh);
    REQUIRE(fresh >= 0);
    REQUIRE(taken >= 0);
    REQUIRE(fresh == old_fd);  // the number came back (else the case proves nothing)
    sockaddr_storage peer{};
    socklen_t len = sizeof peer;
    const int gp = ::getpeername(fresh, reinterpret_cast<sockaddr*>(&peer), &len);
    const int gp_errno = gp == 0 ? 0 : errno;
    CHECK_MESSAGE(gp != 0, "a socket nobody connected is connected to " << u.path);
    CHECK(gp_errno == ENOTCONN);
    const int flags = ::fcntl(fresh, F_GETFL);
    CHECK((flags & O_NONBLOCK) == 0);
    REQUIRE(c.done);
    REQUIRE(!c.r);
    CHECK(c.r.error() == std::errc::operation_canceled);
    ::close(fresh);
    ::close(taken);
  });
}

// F2: F1 with the socket closed behind ringframe's back (release(), then
// ::close) and its number taken by a descriptor ringframe never sees (here
// a plain socket(2); in a program, say, a library's). After F1's fix
// io_uring's connect_op saw that the number was no longer its socket
// (ECANCELED, the new descriptor untouched) but the epoll backend, told of
// nothing, still connected the new descriptor in its place: the backends
// disagreed, and epoll's other waiting requests are harmless there (the
// new descriptor is not in its epoll set) where this one acts.
TEST_CASE("review42: a socket closed behind ringframe's back while its Unix connect waits for room, its number taken by a plain socket: left alone on both backends") {
  testing::on_each_backend([](backend_kind k) {
    unix_full u;
    REQUIRE(u.full());
    executor ex(testing::on(k));
    result<ringframe::socket> s = ringframe::socket::open(ex, AF_UNIX);
    REQUIRE(s);
    connected c;
    int old_fd = -1, fresh = -1, taken = -1;
    ex.spawn(connect_sock(&*s, u.at, {.timeout = 2s}, &c));
    ex.spawn(close_raw_reuse_make_room(&ex, &*s, u.fd, &old_fd, &fresh, &taken));
    ex.run_until_idle();
    INFO(std::string(name(k)) << ": the connect of the closed socket: " << (c.done ? what(c.r) : std::string("not done"))
                              << " after " << ms(c.took) << " ms; old fd " << old_fd << ", new socket's fd " << fresh);
    REQUIRE(fresh >= 0);
    REQUIRE(taken >= 0);
    REQUIRE(fresh == old_fd);
    sockaddr_storage peer{};
    socklen_t len = sizeof peer;
    const int gp = ::getpeername(fresh, reinterpret_cast<sockaddr*>(&peer), &len);
    const int gp_errno = gp == 0 ? 0 : errno;
    CHECK_MESSAGE(gp != 0, "a socket nobody connected is connected to " << u.path);
    CHECK(gp_errno == ENOTCONN);
    CHECK((::fcntl(fresh, F_GETFL) & O_NONBLOCK) == 0);
    REQUIRE(c.done);
    REQUIRE(!c.r);
    CHECK(c.r.error() == std::errc::operation_canceled);
    ::close(fresh);
    ::close(taken);
  });
}

// Pinned: a stop requested from another thread at any moment of the retry
// (before the first pause, during one, as a pause ends and the connect is
// tried again) ends it with ECANCELED, promptly, the socket's flags as they
// were. (The cancellation's own completion may still be in flight then.)
TEST_CASE("review42: a Unix connect waiting for room, stopped from another thread at any moment: ECANCELED at once, flags as they were") {
  testing::on_each_backend([](backend_kind k) {
    unix_full u;
    REQUIRE(u.full());
    executor ex(testing::on(k));
    for (int i = 0; i < 40; ++i) {
      result<ringframe::socket> s = ringframe::socket::open(ex, AF_UNIX);
      REQUIRE(s);
      const int flags_before = ::fcntl(s->fd(), F_GETFL);
      std::stop_source src;
      std::stop_token tok = src.get_token();
      connected c;
      ex.spawn(connect_sock(&*s, u.at, {.timeout = 3s, .stop = &tok}, &c));
      const auto delay = std::chrono::microseconds(i * 137);  // 0 to ~5 ms: every phase of the 1 ms pauses
      std::thread t([&src, delay] {
        std::this_thread::sleep_for(delay);
        src.request_stop();
      });
      ex.run_until_idle();
      t.join();
      INFO(std::string(name(k)) << ", stop after " << delay.count() << " us: " << (c.done ? what(c.r) : std::string("not done"))
                   << " after " << ms(c.took) << " ms, inflight " << ex.inflight());
      REQUIRE(c.done);
      REQUIRE(!c.r);
      CHECK(c.r.error() == std::errc::operation_canceled);
      CHECK(c.took < 1s);
      CHECK(::fcntl(s->fd(), F_GETFL) == flags_before);
    }
  });
}

// Pinned: the deadline, shorter than one pause and longer than several,
// ends the connect with ETIMEDOUT on both backends (io_uring: the pause's
// timeout request cancelled by its linked deadline), never EINTR or
// ECANCELED; the socket's flags are as before; nothing stays in flight.
TEST_CASE("review42: a Unix connect waiting for room past its deadline: ETIMEDOUT, flags as they were, nothing in flight") {
  testing::on_each_backend([](backend_kind k) {
    unix_full u;
    REQUIRE(u.full());
    executor ex(testing::on(k));
    for (auto timeout : {std::chrono::nanoseconds(200us), std::chrono::nanoseconds(1ms), std::chrono::nanoseconds(30ms)}) {
      result<ringframe::socket> s = ringframe::socket::open(ex, AF_UNIX);
      REQUIRE(s);
      const int flags_before = ::fcntl(s->fd(), F_GETFL);
      connected c;
      ex.run(connect_sock(&*s, u.at, {.timeout = timeout}, &c));
      INFO(std::string(name(k)) << ", timeout " << timeout.count() << " ns: " << what(c.r) << " after " << ms(c.took) << " ms");
      REQUIRE(c.done);
      REQUIRE(!c.r);
      CHECK(c.r.error() == std::errc::timed_out);
      CHECK(c.took >= timeout);
      CHECK(c.took < 1s);
      CHECK(ex.inflight() == 0);
      CHECK(::fcntl(s->fd(), F_GETFL) == flags_before);
    }
  });
}

// Pinned: the listener closed while the connect waits for room (its socket
// file still there): ECONNREFUSED, as a first try would say, on both
// backends; its socket file removed instead: ENOENT.
TEST_CASE("review42: the listener goes away while a Unix connect waits for room: ECONNREFUSED (ENOENT for its file) on both backends") {
  testing::on_each_backend([](backend_kind k) {
    for (int unlinked = 0; unlinked < 2; ++unlinked) {
      unix_full u;
      REQUIRE(u.full());
      executor ex(testing::on(k));
      result<ringframe::socket> s = ringframe::socket::open(ex, AF_UNIX);
      REQUIRE(s);
      connected c;
      ex.spawn(connect_sock(&*s, u.at, {.timeout = 2s}, &c));
      ex.spawn(listener_goes_after(&ex, 20ms, &u, unlinked != 0));
      ex.run_until_idle();
      INFO(std::string(name(k)) << (unlinked ? ", file removed" : ", listener closed") << ": " << what(c.r) << " after " << ms(c.took) << " ms");
      REQUIRE(c.done);
      REQUIRE(!c.r);
      CHECK(c.r.error() == (unlinked ? std::errc::no_such_file_or_directory : std::errc::connection_refused));
      CHECK(c.took < 1s);
    }
  });
}

// Pinned: a socket handed to the executor already non-blocking stays so on
// io_uring after its Unix connect waited for room and succeeded (and a
// blocking one stays blocking: review38); on epoll every socket is
// non-blocking. The connect's deadline, far off, never reports afterwards.
TEST_CASE("review42: a non-blocking socket's Unix connect that waited for room: connected, still non-blocking, its deadline gone") {
  testing::on_each_backend([](backend_kind k) {
    unix_full u;
    REQUIRE(u.full());
    executor ex(testing::on(k));
    const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    REQUIRE(fd >= 0);
    ringframe::socket s(ex, fd);
    connected c;
    int taken = -1;
    ex.spawn(connect_sock(&s, u.at, {.timeout = 2s}, &c));
    ex.spawn(make_room_after(&ex, 20ms, u.fd, &taken));
    ex.run_until_idle();
    INFO(std::string(name(k)) << ": " << what(c.r) << " after " << ms(c.took) << " ms");
    REQUIRE(taken >= 0);
    ::close(taken);
    REQUIRE(c.done);
    CHECK(c.r);
    CHECK(c.took >= 15ms);
    CHECK(c.took < 1s);
    CHECK((::fcntl(s.fd(), F_GETFL) & O_NONBLOCK) != 0);
    CHECK(ex.inflight() == 0);
  });
}
