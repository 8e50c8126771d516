// Listeners made with plain system calls for connect tests: one on the
// loopback address of a family, and a "blackhole" whose SYNs are never
// answered (shared by test_happy_eyeballs and test_review38).
#pragma once

#include "loopback.hpp"

#include <ringframe/address.hpp>

#include <doctest/doctest.h>

#include <sys/socket.h>
#include <unistd.h>

#include <cstdint>

namespace testing {

inline ringframe::address loopback(int family, std::uint16_t port) {
  ringframe::result<ringframe::address> a =
      ringframe::address::from_ip(family == AF_INET6 ? "::1" : "127.0.0.1", port);
  REQUIRE(a);
  return *a;
}

// A listener (plain system calls) on the loopback address of `family`.
struct plain_listener {
  int fd = -1;
  ringframe::address at;
  plain_listener(int family, int backlog) {
    fd = ::socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    REQUIRE(fd >= 0);
    ringframe::address want = loopback(family, 0);
    REQUIRE(::bind(fd, want.data(), want.size()) == 0);
    REQUIRE(::listen(fd, backlog) == 0);
    *at.size_ptr() = ringframe::address::capacity();
    REQUIRE(::getsockname(fd, at.data(), at.size_ptr()) == 0);
  }
  ~plain_listener() { ::close(fd); }
  plain_listener(const plain_listener&) = delete;
  plain_listener& operator=(const plain_listener&) = delete;
};

// An address whose SYNs are never answered: backlog 0, and its accept
// queue (one connection) filled by `filler`, never accepted.
struct blackhole {
  plain_listener l;
  int filler = -1;
  explicit blackhole(int family) : l(family, 0) {
    filler = connect_blocking(l.at);
    REQUIRE(filler >= 0);
  }
  ~blackhole() { ::close(filler); }
  blackhole(const blackhole&) = delete;
  blackhole& operator=(const blackhole&) = delete;
  const ringframe::address& at() const { return l.at; }
};

}  // namespace testing
