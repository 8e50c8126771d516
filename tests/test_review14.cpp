// The fourteenth review: deferred deadline stamping (deadline.hpp, "When"),
// task_group::spawn of a child that cannot be queued, and IPv6 scope ids in
// address (from_ip, host(), to_python()). The F cases fail without their fix.
#include <ringframe/address.hpp>

#include <doctest/doctest.h>

#include <net/if.h>

#include <string>

using namespace ringframe;

// F1: to_python() is the peer as Python prints it ("Connected by ..." lines
// match a Python server's). Python 3.7+ gives an IPv6 peer's host without
// its zone (the scope is the tuple's fourth field): a link-local peer
// accepted on interface 3 is ('fe80::1', 40774, 0, 3), never
// ('fe80::1%d0', 40774, 0, 3). Checked with CPython 3.11: accept() and
// getaddrinfo() both give the host from inet_ntop.
TEST_CASE("review14 F1: to_python() prints a link-local IPv6 host without its zone, as Python does") {
  const unsigned lo = ::if_nametoindex("lo");
  REQUIRE(lo != 0);
  auto named = address::from_ip("fe80::1%lo", 8080);
  REQUIRE(named);
  CHECK(named->to_python() == "('fe80::1', 8080, 0, " + std::to_string(lo) + ")");
  auto numbered = address::from_ip("fe80::1%4000000", 1);
  REQUIRE(numbered);
  CHECK(numbered->to_python() == "('fe80::1', 1, 0, 4000000)");
  // host() and to_string() keep the zone: they are read back by from_ip.
  CHECK(named->host() == "fe80::1%lo");
  CHECK(named->to_string() == "[fe80::1%lo]:8080");
}
