// Connecting to a host with several addresses: connect(host, port) and
// framed_client::connect (RFC 8305, "happy eyeballs"). A first address that
// never answers must not keep a working second one from connecting before
// the deadline; the families are interleaved; a cancelled connect ends at
// once with ECANCELED instead of going on to the next address.
//
// The host "happy-eyeballs.test" is answered by the resolver's test hook
// (detail::resolver_test_answer) with the addresses a test sets, each with
// its own port. A blackholed address is a loopback listener with backlog 0
// whose accept queue holds one connection already: Linux drops the SYNs of
// the next ones, which stay in SYN_SENT (checked once per run, below).
// Each test runs on io_uring and on epoll; every wait is bounded.
#include "blackhole.hpp"
#include "loopback.hpp"

#include <ringframe/address.hpp>
#include <ringframe/executor.hpp>
#include <ringframe/framed_client.hpp>
#include <ringframe/resolver.hpp>
#include <ringframe/socket.hpp>
#include <ringframe/timer.hpp>

#include <doctest/doctest.h>

#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <mutex>
#include <stop_token>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

using namespace ringframe;
using namespace std::chrono_literals;
using clk = std::chrono::steady_clock;

namespace {

constexpr std::string_view test_host = "happy-eyeballs.test";

std::mutex answer_lock;
std::vector<address> answer;

bool answer_test_host(std::string_view host, std::uint16_t, std::vector<address>& out) {
  if (host != test_host) return false;
  std::lock_guard<std::mutex> g(answer_lock);
  out = answer;
  return true;
}

// While it lives, test_host resolves to `addrs`, in that order.
struct answer_guard {
  explicit answer_guard(std::vector<address> addrs) {
    {
      std::lock_guard<std::mutex> g(answer_lock);
      answer = std::move(addrs);
    }
    detail::resolver_test_answer = &answer_test_host;
  }
  ~answer_guard() { detail::resolver_test_answer = nullptr; }
  answer_guard(const answer_guard&) = delete;
  answer_guard& operator=(const answer_guard&) = delete;
};

using testing::blackhole;
using testing::loopback;
using testing::plain_listener;

// Whether a connect to a blackhole stays unanswered here for 1.5 s (past
// the first SYN retransmission); checked once per process, so that a kernel
// that behaves otherwise fails this check loudly rather than every test
// below in some other way.
bool blackholes_hold() {
  static const bool held = [] {
    blackhole b(AF_INET);
    int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) return false;
    int r = ::connect(fd, b.at().data(), b.at().size());
    bool pending = r != 0 && errno == EINPROGRESS;
    if (pending) {
      pollfd p{fd, POLLOUT, 0};
      pending = ::poll(&p, 1, 1500) == 0;
    }
    ::close(fd);
    return pending;
  }();
  return held;
}

// An address no socket can be opened for (family 255: EAFNOSUPPORT): an
// attempt on it fails at once, in a way that shows it was made.
address unusable_address() {
  sockaddr_storage ss{};
  ss.ss_family = 255;
  return address(reinterpret_cast<const sockaddr*>(&ss), sizeof(sockaddr_in));
}

struct outcome {
  result<ringframe::socket> sock{std::errc::io_error};
  clk::duration took{};
  bool done = false;
};

// The connect succeeded, to `want`.
void check_connected_to(const outcome& o, const address& want) {
  REQUIRE(o.sock);
  result<address> peer = o.sock->peer_address();
  REQUIRE(peer);
  CHECK(peer->to_string() == want.to_string());
}

task<void> connect_by_name(executor* ex, connect_options o, outcome* out) {
  const auto t0 = clk::now();
  task<result<ringframe::socket>> c = ringframe::connect(*ex, std::string(test_host), 1, o);
  out->sock = co_await std::move(c);
  out->took = clk::now() - t0;
  out->done = true;
}

struct client_outcome {
  result<framed_client> client{std::errc::io_error};
  clk::duration took{};
};

task<void> client_by_name(executor* ex, framed_client_options o, std::stop_token stop, client_outcome* out) {
  const auto t0 = clk::now();
  task<result<framed_client>> c = framed_client::connect(*ex, std::string(test_host), 1, o, stop);
  out->client = co_await std::move(c);
  out->took = clk::now() - t0;
}

task<void> stop_after(executor* ex, std::chrono::nanoseconds d, std::stop_source* src) {
  result<void> slept = co_await sleep_for(*ex, d);
  REQUIRE(slept);
  src->request_stop();
}

task<void> sleep_a_while(executor* ex, std::chrono::nanoseconds d) {
  result<void> slept = co_await sleep_for(*ex, d);
  REQUIRE(slept);
}

}  // namespace

TEST_CASE("happy eyeballs: a SYN to a full accept queue is never answered here (what the tests below rely on)") {
  CHECK(blackholes_hold());
}

TEST_CASE("connect(host, port): a blackholed first address does not hold back the second until the timeout") {
  REQUIRE(blackholes_hold());
  testing::on_each_backend([](backend_kind k) {
    blackhole first(AF_INET6);
    plain_listener second(AF_INET, 16);
    answer_guard g({first.at(), second.at});
    executor ex(testing::on(k));
    outcome o;
    ex.run(connect_by_name(&ex, {.timeout = 3s}, &o));
    INFO("took " << std::chrono::duration_cast<std::chrono::milliseconds>(o.took).count() << " ms");
    check_connected_to(o, second.at);
    // The second is tried after the stagger delay (250 ms), not after the
    // first attempt's 3 s.
    CHECK(o.took < 1500ms);
  });
}

TEST_CASE("framed_client::connect: a blackholed first address does not hold back the second until connect_timeout") {
  REQUIRE(blackholes_hold());
  testing::on_each_backend([](backend_kind k) {
    blackhole first(AF_INET);
    plain_listener second(AF_INET, 16);
    answer_guard g({first.at(), second.at});
    executor ex(testing::on(k));
    framed_client_options fo;
    fo.connect_timeout = 3s;
    client_outcome o;
    ex.run(client_by_name(&ex, fo, {}, &o));
    INFO("took " << std::chrono::duration_cast<std::chrono::milliseconds>(o.took).count() << " ms");
    REQUIRE(o.client);
    CHECK(o.client->peer().to_string() == second.at.to_string());
    CHECK(o.took < 1500ms);
  });
}

TEST_CASE("connect(host, port): address families are interleaved (IPv6, IPv4, IPv6...), as RFC 8305 says") {
  REQUIRE(blackholes_hold());
  testing::on_each_backend([](backend_kind k) {
    // In the resolver's order the second address is another IPv6 one; the
    // first IPv4 address must be tried second.
    blackhole v6_dead(AF_INET6);
    plain_listener v6_ok(AF_INET6, 16);
    plain_listener v4_ok(AF_INET, 16);
    answer_guard g({v6_dead.at(), v6_ok.at, v4_ok.at});
    executor ex(testing::on(k));
    outcome o;
    ex.run(connect_by_name(&ex, {.timeout = 3s}, &o));
    check_connected_to(o, v4_ok.at);
    CHECK(o.took < 1500ms);
  });
}

TEST_CASE("connect(host, port): a cancelled connect ends at once with ECANCELED, trying no further address") {
  REQUIRE(blackholes_hold());
  testing::on_each_backend([](backend_kind k) {
    blackhole first(AF_INET);
    // Were it tried after the cancellation, its EAFNOSUPPORT would be the result.
    answer_guard g({first.at(), unusable_address()});
    executor ex(testing::on(k));
    std::stop_source src;
    std::stop_token token = src.get_token();
    outcome o;
    ex.spawn(connect_by_name(&ex, {.timeout = 3s, .stop = &token}, &o));
    ex.spawn(stop_after(&ex, 100ms, &src));
    ex.run_until_idle();
    REQUIRE(o.done);
    REQUIRE(!o.sock);
    CHECK(o.sock.error() == std::errc::operation_canceled);
    CHECK(o.took < 1500ms);
  });
}

TEST_CASE("framed_client::connect: a stop requested from another thread ends it at once with ECANCELED") {
  REQUIRE(blackholes_hold());
  testing::on_each_backend([](backend_kind k) {
    blackhole first(AF_INET);
    answer_guard g({first.at(), unusable_address()});
    executor ex(testing::on(k));
    framed_client_options fo;
    fo.connect_timeout = 3s;
    std::stop_source src;
    client_outcome o;
    std::jthread stopper([&src] {
      std::this_thread::sleep_for(100ms);
      src.request_stop();
    });
    ex.run(client_by_name(&ex, fo, src.get_token(), &o));
    REQUIRE(!o.client);
    CHECK(o.client.error() == std::errc::operation_canceled);
    CHECK(o.took < 1500ms);
  });
}

TEST_CASE("connect(host, port): happy_eyeballs_delay 0 tries one address at a time, each with the whole timeout") {
  REQUIRE(blackholes_hold());
  testing::on_each_backend([](backend_kind k) {
    blackhole first(AF_INET);
    plain_listener second(AF_INET, 16);
    answer_guard g({first.at(), second.at});
    executor ex(testing::on(k));
    outcome o;
    ex.run(connect_by_name(&ex, {.timeout = 400ms, .happy_eyeballs_delay = 0ns}, &o));
    check_connected_to(o, second.at);
    CHECK(o.took >= 350ms);  // the first attempt's timeout ran out first
    CHECK(o.took < 2s);
  });
}

TEST_CASE("connect(host, port): an attempt that fails starts the next one at once, without waiting for the delay") {
  REQUIRE(blackholes_hold());
  testing::on_each_backend([](backend_kind k) {
    blackhole first(AF_INET);
    address refused;
    {
      plain_listener gone(AF_INET, 1);
      refused = gone.at;
    }
    plain_listener third(AF_INET, 16);
    // first (hangs), then after the delay `refused` (fails at once), then
    // third at once: about one delay in all, not two.
    answer_guard g({first.at(), refused, third.at});
    executor ex(testing::on(k));
    outcome o;
    ex.run(connect_by_name(&ex, {.timeout = 5s, .happy_eyeballs_delay = 600ms}, &o));
    INFO("took " << std::chrono::duration_cast<std::chrono::milliseconds>(o.took).count() << " ms");
    check_connected_to(o, third.at);
    CHECK(o.took >= 550ms);
    CHECK(o.took < 1100ms);
  });
}

TEST_CASE("connect(host, port): the losers' sockets are closed once the winner connects") {
  REQUIRE(blackholes_hold());
  testing::on_each_backend([](backend_kind k) {
    blackhole a(AF_INET), b(AF_INET6);
    plain_listener ok(AF_INET, 16);
    answer_guard g({a.at(), b.at(), ok.at});
    executor ex(testing::on(k));
    const int before = testing::open_fd_count();
    outcome o;
    ex.run(connect_by_name(&ex, {.timeout = 5s, .happy_eyeballs_delay = 50ms}, &o));
    REQUIRE(o.sock);
    CHECK(testing::open_fd_count() == before + 1);  // the winner alone
  });
}

TEST_CASE("connect(host, port): when every address fails, the error is the last attempt's") {
  testing::on_each_backend([](backend_kind k) {
    address refused1, refused2;
    {
      plain_listener l1(AF_INET, 1), l2(AF_INET6, 1);
      refused1 = l1.at;
      refused2 = l2.at;
    }
    answer_guard g({refused1, refused2, unusable_address()});
    executor ex(testing::on(k));
    outcome o;
    ex.run(connect_by_name(&ex, {.timeout = 5s}, &o));
    REQUIRE(!o.sock);
    CHECK(o.sock.error().value() == EAFNOSUPPORT);
    CHECK(o.took < 1s);  // each failure starts the next at once
  });
}

TEST_CASE("framed_client::connect: addresses that never answer end with ETIMEDOUT at connect_timeout") {
  REQUIRE(blackholes_hold());
  testing::on_each_backend([](backend_kind k) {
    blackhole a(AF_INET), b(AF_INET6);
    answer_guard g({a.at(), b.at()});
    executor ex(testing::on(k));
    const int before = testing::open_fd_count();
    framed_client_options fo;
    fo.connect_timeout = 600ms;
    fo.happy_eyeballs_delay = 100ms;
    client_outcome o;
    ex.run(client_by_name(&ex, fo, {}, &o));
    REQUIRE(!o.client);
    CHECK(o.client.error() == std::errc::timed_out);
    CHECK(o.took >= 550ms);
    CHECK(o.took < 2s);
    CHECK(testing::open_fd_count() == before);
  });
}

TEST_CASE("connect(host, port): an executor destroyed while attempts are in flight unwinds them and closes their sockets") {
  REQUIRE(blackholes_hold());
  testing::on_each_backend([](backend_kind k) {
    blackhole a(AF_INET), b(AF_INET6), c(AF_INET);
    answer_guard g({a.at(), b.at(), c.at()});
    const int before = testing::open_fd_count();
    outcome o;
    {
      executor ex(testing::on(k));
      ex.spawn(connect_by_name(&ex, {.timeout = 10s, .happy_eyeballs_delay = 30ms}, &o));
      ex.run(sleep_a_while(&ex, 300ms));  // all three attempts are in SYN_SENT now
      CHECK(!o.done);
    }
    CHECK(o.done);
    REQUIRE(!o.sock);
    CHECK(o.sock.error() == std::errc::operation_canceled);
    CHECK(testing::open_fd_count() == before);
  });
}

namespace {
task<void> connect_to_list(executor* ex, std::vector<address> to, connect_options o, outcome* out) {
  const auto t0 = clk::now();
  task<result<ringframe::socket>> c = ringframe::connect(*ex, std::move(to), o);
  out->sock = co_await std::move(c);
  out->took = clk::now() - t0;
  out->done = true;
}
}  // namespace

TEST_CASE("connect(addresses): the first that answers, without a lookup; an empty list is EINVAL") {
  REQUIRE(blackholes_hold());
  testing::on_each_backend([](backend_kind k) {
    blackhole first(AF_INET);
    plain_listener second(AF_INET, 16);
    executor ex(testing::on(k));
    outcome o;
    ex.run(connect_to_list(&ex, {first.at(), second.at}, {.timeout = 3s}, &o));
    check_connected_to(o, second.at);
    CHECK(o.took < 1500ms);
    outcome none;
    ex.run(connect_to_list(&ex, {}, {}, &none));
    REQUIRE(!none.sock);
    CHECK(none.sock.error() == std::errc::invalid_argument);
  });
}
