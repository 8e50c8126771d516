// resolve (resolver.hpp): host names resolved off the loop's thread. A test
// hook holds a lookup "in flight" on its resolver thread for as long as a
// test needs, so "the loop keeps running meanwhile", cancellation, the
// timeout and an executor destroyed mid-lookup are checked deterministically.
// Each test runs on io_uring and on epoll.
#include "loopback.hpp"

#include <ringframe/executor.hpp>
#include <ringframe/periodic_timer.hpp>
#include <ringframe/resolver.hpp>
#include <ringframe/socket.hpp>
#include <ringframe/timer.hpp>

#include <doctest/doctest.h>

#include <atomic>
#include <chrono>
#include <stop_token>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

using namespace ringframe;
using namespace std::chrono_literals;
using clk = std::chrono::steady_clock;

namespace {

// The hook: a lookup waits in it until released (at most 10 s, so that a
// failing test cannot hang the suite).
std::atomic<int> held{0};
std::atomic<bool> release{false};
void hold_lookup(std::string_view) {
  held.fetch_add(1);
  auto until = clk::now() + 10s;
  while (!release.load() && clk::now() < until) std::this_thread::sleep_for(1ms);
}

struct hook_guard {
  hook_guard() : base(detail::resolver_lookups_finished()) {
    held = 0;
    release = false;
    detail::resolver_test_hook = &hold_lookup;
  }
  // Every lookup this test started has finished on its thread before the
  // next test counts lookups.
  ~hook_guard() {
    release = true;
    wait_finished(base + static_cast<std::uint64_t>(held.load()));
    detail::resolver_test_hook = nullptr;
  }
  const std::uint64_t base;
  // Until the lookups finished reach `n` (polled, 10 s at most).
  static bool wait_finished(std::uint64_t n) {
    auto until = clk::now() + 10s;
    while (detail::resolver_lookups_finished() < n && clk::now() < until) std::this_thread::sleep_for(1ms);
    return detail::resolver_lookups_finished() >= n;
  }
};

bool is_loopback(const address& a) { return a.host() == "127.0.0.1" || a.host() == "::1"; }

struct seen {
  int ticks_while_held = 0;
  bool resolved = false;
  result<std::vector<address>> out{std::errc::io_error};
};

task<void> resolve_into(executor* ex, std::string host, seen* s, std::stop_token st, std::chrono::nanoseconds timeout) {
  s->out = co_await resolve(*ex, host, 8080, {.timeout = timeout, .stop = &st});
  s->resolved = true;
}

// Ticks every 5 ms while the lookup is held; after 5 ticks it lets the
// lookup go (or, with `src`, requests stop first).
task<void> tick_then(executor* ex, seen* s, std::stop_source* src) {
  periodic_timer t(*ex, 5ms);
  while (!s->resolved) {
    result<void> r = co_await t.next();
    REQUIRE(r);
    if (held.load() > 0 && !s->resolved) ++s->ticks_while_held;
    if (s->ticks_while_held == 5) {
      if (src) src->request_stop();
      else release = true;
    }
    if (s->ticks_while_held > 400) break;  // 2 s: the test fails below
  }
}

}  // namespace

TEST_CASE("resolve: a numeric host completes without a resolver thread") {
  testing::on_each_backend([](backend_kind k) {
    executor ex(testing::on(k));
    const auto before = detail::resolver_lookups_finished();
    seen s;
    ex.run(resolve_into(&ex, "127.0.0.1", &s, {}, {}));
    REQUIRE(s.out);
    REQUIRE(s.out->size() == 1);
    CHECK((*s.out)[0].to_string() == "127.0.0.1:8080");
    seen s6;
    ex.run(resolve_into(&ex, "[::1]", &s6, {}, {}));
    REQUIRE(s6.out);
    CHECK((*s6.out)[0].to_string() == "[::1]:8080");
    CHECK(detail::resolver_lookups_finished() == before);
  });
}

TEST_CASE("resolve: the loop keeps running while a name is looked up") {
  testing::on_each_backend([](backend_kind k) {
    hook_guard hook;
    executor ex(testing::on(k));
    seen s;
    ex.spawn(resolve_into(&ex, "localhost", &s, {}, {}));
    ex.spawn(tick_then(&ex, &s, nullptr));
    ex.run_until_idle();
    CHECK(s.ticks_while_held >= 5);  // the timer fired while the lookup was held
    REQUIRE(s.resolved);
    REQUIRE(s.out);
    REQUIRE(!s.out->empty());
    for (const address& a : *s.out) {
      CHECK(is_loopback(a));
      CHECK(a.port() == 8080);
    }
  });
}

TEST_CASE("resolve: a stop request resumes the coroutine at once with ECANCELED; the late answer is dropped") {
  testing::on_each_backend([](backend_kind k) {
    hook_guard hook;
    const auto before = detail::resolver_lookups_finished();
    executor ex(testing::on(k));
    seen s;
    std::stop_source src;
    ex.spawn(resolve_into(&ex, "localhost", &s, src.get_token(), {}));
    ex.spawn(tick_then(&ex, &s, &src));
    ex.run_until_idle();
    REQUIRE(s.resolved);
    CHECK(s.out.error() == std::errc::operation_canceled);
    CHECK(held.load() == 1);  // still held: the answer has not come
    CHECK(detail::resolver_lookups_finished() == before);
    release = true;
    CHECK(hook_guard::wait_finished(before + 1));  // finished on its thread, dropped there
    for (int i = 0; i < 3; ++i) ex.run_once(false);  // nothing arrives for anyone
    CHECK(ex.live_tasks() == 0);
  });
}

namespace {
task<void> stop_from_thread(executor* ex, std::stop_source* src, seen* s) {
  result<void> r = co_await sleep_for(*ex, 20ms);
  REQUIRE(r);
  std::thread t([src] { src->request_stop(); });
  t.join();
  // The coroutine resumes from the loop, on this thread, soon.
  for (int i = 0; i < 100 && !s->resolved; ++i) {
    result<void> slept = co_await sleep_for(*ex, 5ms);
    REQUIRE(slept);
  }
}
}  // namespace

TEST_CASE("resolve: a stop requested on another thread is carried to the executor's") {
  testing::on_each_backend([](backend_kind k) {
    hook_guard hook;
    executor ex(testing::on(k));
    seen s;
    std::stop_source src;
    ex.spawn(resolve_into(&ex, "localhost", &s, src.get_token(), {}));
    ex.spawn(stop_from_thread(&ex, &src, &s));
    ex.run_until_idle();
    REQUIRE(s.resolved);
    CHECK(s.out.error() == std::errc::operation_canceled);
  });
}

TEST_CASE("resolve: the timeout ends a lookup that takes too long with ETIMEDOUT") {
  testing::on_each_backend([](backend_kind k) {
    hook_guard hook;
    executor ex(testing::on(k));
    seen s;
    auto t0 = clk::now();
    ex.run(resolve_into(&ex, "localhost", &s, {}, 50ms));
    const auto took = clk::now() - t0;
    CHECK(s.out.error() == std::errc::timed_out);
    CHECK(took >= 40ms);
    CHECK(took < 2s);
  });
}

TEST_CASE("resolve: an executor destroyed while a lookup runs is never reached by its answer") {
  testing::on_each_backend([](backend_kind k) {
    hook_guard hook;
    const auto before = detail::resolver_lookups_finished();
    seen s;
    {
      executor ex(testing::on(k));
      ex.spawn(resolve_into(&ex, "localhost", &s, {}, {}));
      for (int i = 0; i < 200 && held.load() == 0; ++i) {
        ex.run_once(false);
        std::this_thread::sleep_for(1ms);
      }
      REQUIRE(held.load() == 1);
    }  // stops, and the waiting coroutine unwinds with ECANCELED
    CHECK(s.resolved);
    CHECK(s.out.error() == std::errc::operation_canceled);
    release = true;
    CHECK(hook_guard::wait_finished(before + 1));
  });
}

namespace {
task<result<ringframe::socket>> connect_by_name(executor* ex, std::uint16_t port) {
  result<ringframe::socket> s = co_await ringframe::connect(*ex, "localhost", port, {.timeout = 5s});
  co_return s;
}
}  // namespace

TEST_CASE("connect(host, port) resolves on the resolver thread and connects") {
  testing::on_each_backend([](backend_kind k) {
    executor ex(testing::on(k));
    address at;
    ringframe::socket l = testing::loopback_listener(ex, at);
    const auto before = detail::resolver_lookups_finished();
    result<ringframe::socket> c = ex.run(connect_by_name(&ex, at.port()));
    REQUIRE(c);
    CHECK(hook_guard::wait_finished(before + 1));  // it went through a resolver thread (counted just after it posts)
    result<address> peer = c->peer_address();
    REQUIRE(peer);
    CHECK(peer->to_string() == at.to_string());
  });
}
