// Test helpers: loopback sockets made with plain blocking calls, so a test's
// setup does not depend on the code under test.
#pragma once

#include <ringframe/address.hpp>
#include <ringframe/executor.hpp>
#include <ringframe/socket.hpp>

#include <doctest/doctest.h>

#include <netinet/in.h>
#include <dirent.h>
#include <poll.h>
#include <sys/time.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>

#include <chrono>
#include <string>
#include <utility>

namespace testing {

// For tests of what only the io_uring backend has (SEND_ZC's held pages, a
// completion queue that overflows): the suite also runs with
// RINGFRAME_BACKEND=epoll, which would otherwise test something else.
inline ringframe::executor_options on_io_uring(ringframe::executor_options o = {}) {
  o.backend = ringframe::backend_kind::io_uring;
  return o;
}

// Options for an executor on backend `k`.
// N turns of the loop that never sleep (what a test steps through by hand).
inline void turns(ringframe::executor& ex, int n) {
  for (int i = 0; i < n; ++i) ex.run_once(false);
}

inline ringframe::executor_options on(ringframe::backend_kind k) {
  ringframe::executor_options o;
  o.backend = k;
  return o;
}

// Runs `body(kind)` once per backend, as a doctest subcase named after it:
// for tests of the seam's contract, which must hold on both whatever
// RINGFRAME_BACKEND says.
template <class F>
void on_each_backend(F body) {
  SUBCASE("io_uring") { body(ringframe::backend_kind::io_uring); }
  SUBCASE("epoll") { body(ringframe::backend_kind::epoll); }
}

// A connected pair of AF_UNIX stream sockets, both owned by `ex`.
inline std::pair<ringframe::socket, ringframe::socket> socket_pair(ringframe::executor& ex) {
  int fds[2];
  REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) == 0);
  return {ringframe::socket(ex, fds[0]), ringframe::socket(ex, fds[1])};
}

// A listener on 127.0.0.1 with a kernel-chosen port.
inline ringframe::socket loopback_listener(ringframe::executor& ex, ringframe::address& bound) {
  auto at = ringframe::address::from_ip("127.0.0.1", 0);
  REQUIRE(at);
  auto l = ringframe::listen(ex, *at);
  REQUIRE(l);
  auto a = l->local_address();
  REQUIRE(a);
  bound = *a;
  return std::move(*l);
}

// A connected TCP pair over 127.0.0.1: {accepted, connecting}. Called as
// `auto [s, c] = ex.run(testing::tcp_pair(&ex));`. Static, not inline:
// clang 14 with sanitizers cannot emit an inline (comdat) coroutine
// ("Cannot represent a difference across sections").
[[maybe_unused]] static ringframe::task<std::pair<ringframe::socket, ringframe::socket>> tcp_pair(ringframe::executor* ex) {
  using namespace std::chrono_literals;
  ringframe::address at;
  ringframe::socket l = loopback_listener(*ex, at);
  ringframe::result<ringframe::socket> c = co_await ringframe::connect(*ex, at, {.timeout = 5s});
  REQUIRE(c);
  ringframe::result<ringframe::socket> s = co_await l.accept(nullptr, {.timeout = 5s});
  REQUIRE(s);
  co_return std::pair<ringframe::socket, ringframe::socket>(std::move(*s), std::move(*c));
}

// Make room for `n` descriptors; fails the test (never skips it) when the
// hard limit is too low.
inline void require_fd_limit(rlim_t n) {
  rlimit rl{};
  REQUIRE(::getrlimit(RLIMIT_NOFILE, &rl) == 0);
  if (rl.rlim_cur < n) {
    INFO("this test needs RLIMIT_NOFILE >= " << n << "; hard limit is " << rl.rlim_max);
    REQUIRE(rl.rlim_max >= n);
    rl.rlim_cur = n;
    REQUIRE(::setrlimit(RLIMIT_NOFILE, &rl) == 0);
  }
}

inline int open_fd_count() {
  int n = 0;
  if (auto* d = ::opendir("/proc/self/fd")) {
    while (::readdir(d)) ++n;
    ::closedir(d);
  }
  return n;
}

// A blocking client socket with 5 s timeouts, connected to `to` (-1 on
// failure).
//
// A connect cut short by EINTR is waited for, not retried (a second connect
// would say EALREADY). No signal is sent in these tests, but a thread that
// owns DEFER_TASKRUN rings may be handed a closed ring's leftover task work
// with a signal-like notification, which a socket call with a timeout
// reports as EINTR (seen under ASan, where teardown is slow enough to
// overlap the next calls).
inline int connect_blocking(const ringframe::address& to) {
  int fd = ::socket(to.family(), SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  timeval tv{5, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  int r = ::connect(fd, to.data(), to.size());
  if (r != 0 && errno == EINTR) {  // the connection goes on: wait for it
    pollfd p{fd, POLLOUT, 0};
    int err = 0;
    socklen_t len = sizeof err;
    while (::poll(&p, 1, 5000) < 0 && errno == EINTR) {
    }
    r = ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) == 0 && err == 0 ? 0 : -1;
  }
  if (r != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

// A Unix-domain listener with backlog 0 whose queue holds one connection:
// the next connect finds it full (a nonblocking one: EAGAIN). Tests may
// close `filler` or `fd` themselves and set them to -1.
struct unix_full {
  int fd = -1;
  int filler = -1;
  std::string path;
  ringframe::address at;
  unix_full() {
    static int made = 0;
    path = "/tmp/rf-unix-full-" + std::to_string(::getpid()) + "-" + std::to_string(made++) + ".sock";
    ::unlink(path.c_str());
    ringframe::result<ringframe::address> a = ringframe::address::from_unix_path(path);
    REQUIRE(a);
    at = *a;
    fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    REQUIRE(fd >= 0);
    REQUIRE(::bind(fd, at.data(), at.size()) == 0);
    REQUIRE(::listen(fd, 0) == 0);
    filler = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    REQUIRE(filler >= 0);
    REQUIRE(::connect(filler, at.data(), at.size()) == 0);
  }
  unix_full(const unix_full&) = delete;
  unix_full& operator=(const unix_full&) = delete;
  ~unix_full() {
    if (filler >= 0) ::close(filler);
    if (fd >= 0) ::close(fd);
    ::unlink(path.c_str());
  }
  // A nonblocking connect is refused room now.
  bool full() const {
    int probe = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    int r = ::connect(probe, at.data(), at.size());
    int e = r == 0 ? 0 : errno;
    ::close(probe);
    return e == EAGAIN;
  }
};

}  // namespace testing
