// socket and address: the primitives over loopback, and their errors.
#include "loopback.hpp"

#include <ringframe/address.hpp>
#include <ringframe/executor.hpp>
#include <ringframe/socket.hpp>
#include <ringframe/timer.hpp>

#include <doctest/doctest.h>

#include <net/if.h>
#include <netinet/in.h>

#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <numeric>
#include <string>
#include <vector>

using namespace ringframe;
using namespace std::chrono_literals;

namespace {

std::vector<std::byte> pattern(std::size_t n) {
  std::vector<std::byte> v(n);
  for (std::size_t i = 0; i < n; ++i) v[i] = std::byte(static_cast<unsigned char>((i * 131) ^ (i >> 9)));
  return v;
}

task<void> send_everything(ringframe::socket* s, const std::vector<std::byte>* data, std::size_t* sent,
                           bool zero_copy = false) {
  result<std::size_t> n = zero_copy ? co_await s->send_all_zero_copy(*data) : co_await s->send_all(*data);
  CHECK(n);
  if (n) *sent = *n;
  result<void> sh = co_await s->shutdown(SHUT_WR);
  CHECK(sh);
}

// Reads slowly, in small pieces, so the sender's socket buffer fills and
// its sends come back short.
task<void> read_slowly(executor* ex, ringframe::socket* s, std::vector<std::byte>* into) {
  std::vector<std::byte> buf(7001);
  for (int i = 0;; ++i) {
    if (i % 64 == 0) {
      result<void> slept = co_await sleep_for(*ex, 1ms);
      CHECK(slept);
    }
    result<std::size_t> n = co_await s->recv(buf);
    REQUIRE(n);
    if (*n == 0) break;
    into->insert(into->end(), buf.begin(), buf.begin() + static_cast<long>(*n));
  }
}

task<void> accept_one(ringframe::socket* listener, ringframe::socket* out, address* peer) {
  result<ringframe::socket> s = co_await listener->accept(peer);
  REQUIRE(s);
  *out = std::move(*s);
}

task<std::error_code> connect_to(executor* ex, address to, ringframe::socket* out) {
  result<ringframe::socket> s = co_await ringframe::connect(*ex, to, {.timeout = 5s});
  if (!s) co_return s.error();
  *out = std::move(*s);
  co_return std::error_code{};
}

// A connected TCP pair over loopback, made with the library's accept/connect.
std::pair<ringframe::socket, ringframe::socket> tcp_pair(executor& ex, const char* host = "127.0.0.1") {
  auto at = address::from_ip(host, 0);
  REQUIRE(at);
  auto l = ringframe::listen(ex, *at);
  REQUIRE(l);
  auto bound = l->local_address();
  REQUIRE(bound);
  ringframe::socket server_side, client_side;
  address peer;
  ex.spawn(accept_one(&*l, &server_side, &peer));
  std::error_code ec = ex.run(connect_to(&ex, *bound, &client_side));
  REQUIRE(!ec);
  ex.run_until_idle();
  REQUIRE(server_side.is_open());
  auto cl = client_side.local_address();
  REQUIRE(cl);
  CHECK(peer.to_string() == cl->to_string());  // accept reported the real peer
  return {std::move(server_side), std::move(client_side)};
}

task<std::size_t> recv_once(ringframe::socket* s) {
  std::byte buf[64];
  result<std::size_t> n = co_await s->recv(buf, {.timeout = 5s});
  REQUIRE(n);
  co_return *n;
}

task<std::error_code> recv_error(ringframe::socket* s) {
  std::byte buf[64];
  result<std::size_t> n = co_await s->recv(buf, {.timeout = 5s});
  co_return n ? std::error_code{} : n.error();
}

task<std::error_code> send_until_error(ringframe::socket* s) {
  std::vector<std::byte> chunk(64 * 1024);
  for (int i = 0; i < 1000; ++i) {
    result<std::size_t> n = co_await s->send_all(chunk, {.timeout = 5s});
    if (!n) co_return n.error();
  }
  co_return std::error_code{};
}

task<void> echo_once(ringframe::socket* s) {
  std::byte buf[256];
  result<std::size_t> n = co_await s->recv(buf);
  REQUIRE(n);
  result<std::size_t> m = co_await s->send_all(std::span<const std::byte>(buf, *n));
  REQUIRE(m);
}

task<std::string> ask(ringframe::socket* s, std::string text) {
  result<std::size_t> n = co_await s->send_all(text);
  REQUIRE(n);
  std::string got(text.size(), '\0');
  std::size_t have = 0;
  while (have < got.size()) {
    result<std::size_t> r = co_await s->recv(std::as_writable_bytes(std::span(got.data() + have, got.size() - have)));
    REQUIRE(r);
    if (*r == 0) break;
    have += *r;
  }
  got.resize(have);
  co_return got;
}

void set_linger_zero(ringframe::socket& s) {
  linger lg{1, 0};
  REQUIRE(::setsockopt(s.fd(), SOL_SOCKET, SO_LINGER, &lg, sizeof lg) == 0);
}

}  // namespace

TEST_CASE("send_all finishes short sends of a multi-megabyte buffer") {
  executor ex;
  auto [srv, cli] = tcp_pair(ex);
  // A small send buffer makes every send come back short.
  REQUIRE(cli.set_option(SOL_SOCKET, SO_SNDBUF, 16 * 1024));
  const auto data = pattern(8 * 1024 * 1024 + 13);
  std::vector<std::byte> got;
  std::size_t sent = 0;
  ex.spawn(send_everything(&cli, &data, &sent));
  ex.spawn(read_slowly(&ex, &srv, &got));
  ex.run_until_idle();
  CHECK(sent == data.size());
  CHECK(got.size() == data.size());
  CHECK(got == data);
}

TEST_CASE("recv returns 0 when the peer closes") {
  executor ex;
  auto [srv, cli] = tcp_pair(ex);
  ringframe::socket gone = std::move(cli);
  gone = ringframe::socket();  // closes
  CHECK(ex.run(recv_once(&srv)) == 0);
}

TEST_CASE("a peer reset is ECONNRESET on recv, and an error on send") {
  executor ex;
  {
    auto [srv, cli] = tcp_pair(ex);
    set_linger_zero(cli);
    cli = ringframe::socket();  // RST
    CHECK(ex.run(recv_error(&srv)) == std::errc::connection_reset);
  }
  {
    auto [srv, cli] = tcp_pair(ex);
    set_linger_zero(cli);
    cli = ringframe::socket();
    std::error_code ec = ex.run(send_until_error(&srv));
    CHECK((ec == std::errc::connection_reset || ec == std::errc::broken_pipe));
  }
}

TEST_CASE("connecting where nobody listens is ECONNREFUSED") {
  executor ex;
  address bound;
  { auto l = testing::loopback_listener(ex, bound); }  // port now free
  ringframe::socket s;
  CHECK(ex.run(connect_to(&ex, bound, &s)) == std::errc::connection_refused);
}

TEST_CASE("listening on a port in use is EADDRINUSE") {
  executor ex;
  address bound;
  auto l = testing::loopback_listener(ex, bound);
  auto again = ringframe::listen(ex, bound, {.reuse_address = false});
  REQUIRE_FALSE(again);
  CHECK(again.error() == std::errc::address_in_use);
}

TEST_CASE("IPv6 loopback") {
  executor ex;
  auto [srv, cli] = tcp_pair(ex, "::1");
  ex.spawn(echo_once(&srv));
  CHECK(ex.run(ask(&cli, "over v6")) == "over v6");
}

TEST_CASE("Unix-domain sockets, by path and abstract") {
  executor ex;
  for (std::string path : {std::string("/tmp/ringframe-test-") + std::to_string(::getpid()) + ".sock",
                           std::string("@ringframe-test-") + std::to_string(::getpid())}) {
    ::unlink(path.c_str());
    auto at = address::from_unix_path(path);
    REQUIRE(at);
    auto l = ringframe::listen(ex, *at);
    REQUIRE(l);
    ringframe::socket server_side, client_side;
    address peer;
    ex.spawn(accept_one(&*l, &server_side, &peer));
    REQUIRE(!ex.run(connect_to(&ex, *at, &client_side)));
    ex.run_until_idle();
    ex.spawn(echo_once(&server_side));
    CHECK(ex.run(ask(&client_side, "over unix")) == "over unix");
    CHECK(at->to_string() == "unix:" + path);
    if (path[0] == '/') ::unlink(path.c_str());
  }
}

// A link-local IPv6 address means nothing without its interface: the scope
// is parsed ("%lo" or "%1"), kept and printed back (the loopback interface
// has no link-local address to connect over). Python prints such a peer as ('fe80::1', port, flowinfo, scope_id):
// its host has no zone (review14 F1).
TEST_CASE("IPv6 addresses keep their scope id (link-local), in and out") {
  const unsigned lo = ::if_nametoindex("lo");
  REQUIRE(lo != 0);
  auto named = address::from_ip("fe80::1%lo", 8080);
  REQUIRE(named);
  CHECK(named->to_string() == "[fe80::1%lo]:8080");
  CHECK(named->to_python() == "('fe80::1', 8080, 0, " + std::to_string(lo) + ")");
  CHECK(reinterpret_cast<const sockaddr_in6*>(named->data())->sin6_scope_id == lo);
  auto numbered = address::from_ip("[fe80::1%" + std::to_string(lo) + "]", 8080);
  REQUIRE(numbered);
  CHECK(numbered->to_string() == "[fe80::1%lo]:8080");
  CHECK_FALSE(address::from_ip("fe80::1%no-such-interface-here", 1));
  CHECK_FALSE(address::from_ip("fe80::1%", 1));
  CHECK_FALSE(address::from_ip("127.0.0.1%lo", 1));  // a scope belongs to IPv6 only
  // An interface index no interface has is still a scope id (printed as
  // the number), as getnameinfo does.
  auto unknown = address::from_ip("fe80::1%4000000", 1);
  REQUIRE(unknown);
  CHECK(unknown->to_string() == "[fe80::1%4000000]:1");
  auto plain = address::from_ip("::1", 80);
  REQUIRE(plain);
  CHECK(plain->to_python() == "('::1', 80, 0, 0)");
}

TEST_CASE("addresses parse, print and resolve") {
  auto v4 = address::from_ip("127.0.0.1", 65432);
  REQUIRE(v4);
  CHECK(v4->to_python() == "('127.0.0.1', 65432)");
  CHECK(v4->to_string() == "127.0.0.1:65432");
  auto v6 = address::from_ip("[::1]", 80);
  REQUIRE(v6);
  CHECK(v6->to_string() == "[::1]:80");
  CHECK_FALSE(address::from_ip("not-an-ip", 1));
  auto local = address::resolve("localhost", 7);
  REQUIRE(local);
  CHECK(!local->empty());
  CHECK(local->front().port() == 7);
  auto bad = address::resolve("no-such-host.invalid", 7);
  REQUIRE_FALSE(bad);
  CHECK(bad.error().category() == resolver_category());
  CHECK(parse_port("65432").value() == 65432);
  CHECK_FALSE(parse_port("65536"));
  CHECK_FALSE(parse_port("-1"));
  CHECK_FALSE(parse_port("80x"));
  CHECK_FALSE(parse_port(""));
}

task<std::error_code> close_through_ring(ringframe::socket* s) {
  result<void> r = co_await s->close();
  co_return r.error();
}

TEST_CASE("sockets close their descriptor, through the ring or on destruction") {
  executor ex;
  int before = testing::open_fd_count();
  {
    auto [a, b] = testing::socket_pair(ex);
    CHECK(testing::open_fd_count() == before + 2);
    CHECK(!ex.run(close_through_ring(&a)));
    CHECK_FALSE(a.is_open());
    CHECK(testing::open_fd_count() == before + 1);
    CHECK(ex.run(recv_once(&b)) == 0);  // the peer saw the close
    CHECK(ex.run(close_through_ring(&a)) == std::errc::bad_file_descriptor);  // closing twice is an error, not a crash
  }
  CHECK(testing::open_fd_count() == before);
}

#include <ringframe/acceptor.hpp>

namespace {
task<void> take_n(acceptor* acc, int n, std::vector<ringframe::socket>* out, std::error_code* last) {
  for (int i = 0; i < n; ++i) {
    result<ringframe::socket> s = co_await acc->next();
    if (!s) {
      *last = s.error();
      co_return;
    }
    out->push_back(std::move(*s));
  }
  result<ringframe::socket> s = co_await acc->next();  // now stop
  *last = s ? std::error_code{} : s.error();
}

task<void> connect_n(executor* ex, address to, int n, std::vector<ringframe::socket>* out) {
  for (int i = 0; i < n; ++i) {
    result<ringframe::socket> s = co_await ringframe::connect(*ex, to, {.timeout = 5s});
    REQUIRE(s);
    out->push_back(std::move(*s));
  }
}

task<void> stop_soon(executor* ex, std::stop_source* src) {
  result<void> r = co_await sleep_for(*ex, 20ms);
  CHECK(r);
  src->request_stop();
}
}  // namespace

TEST_CASE("a multishot acceptor yields many connections from one request, then stops cleanly") {
  executor ex;
  address bound;
  auto l = testing::loopback_listener(ex, bound);
  std::stop_source src;
  std::stop_token tok = src.get_token();
  std::vector<ringframe::socket> accepted, clients;
  std::error_code last;
  {
    acceptor acc(l, &tok);
    ex.spawn(take_n(&acc, 50, &accepted, &last));
    ex.spawn(connect_n(&ex, bound, 50, &clients));
    for (int i = 0; i < 10000 && accepted.size() < 50; ++i) ex.run_once(true);
    REQUIRE(accepted.size() == 50);
    ex.spawn(stop_soon(&ex, &src));
    ex.run_until_idle();
    CHECK_FALSE(acc.armed());
  }
  CHECK(last == std::errc::operation_canceled);
  for (auto& s : accepted) CHECK(s.peer_address());
}


TEST_CASE("zero-copy send_all delivers every byte, short sends included, and holds the buffer to the end") {
  executor ex;
  auto [srv, cli] = tcp_pair(ex);
  REQUIRE(cli.set_option(SOL_SOCKET, SO_SNDBUF, 16 * 1024));
  const auto data = pattern(4 * 1024 * 1024 + 7);
  std::vector<std::byte> got;
  std::size_t sent = 0;
  ex.spawn(send_everything(&cli, &data, &sent, true));
  ex.spawn(read_slowly(&ex, &srv, &got));
  ex.run_until_idle();
  CHECK(sent == data.size());
  CHECK(got == data);
  CHECK(ex.inflight() == 0);  // every notification was consumed
}
