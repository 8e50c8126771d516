// when_all, when_any, with_timeout: values and order, exceptions after every
// child has finished, losers cancelled (ECANCELED) and finished before the
// combinator returns, deadlines around whole tasks, vectors of tasks. Each
// test runs on io_uring and (meson test --setup epoll) on epoll.
#include "loopback.hpp"

#include <ringframe/executor.hpp>
#include <ringframe/socket.hpp>
#include <ringframe/timer.hpp>
#include <ringframe/when_all.hpp>
#include <ringframe/when_any.hpp>
#include <ringframe/with_timeout.hpp>

#include <doctest/doctest.h>

#include <chrono>
#include <stdexcept>
#include <stop_token>
#include <string>
#include <system_error>
#include <tuple>
#include <variant>
#include <vector>

using namespace ringframe;
using namespace std::chrono_literals;
using clk = std::chrono::steady_clock;

namespace {

// What a child saw, written by the child itself (so a test can check that it
// finished, and how, at the moment the combinator returned).
struct probe {
  bool finished = false;
  std::error_code ec;
};

// After a test: the cancellations' own completions (on epoll they arrive a
// turn after the cancelled operation's) are reaped, and nothing else is left.
void drain(executor& ex) {
  for (int i = 0; i < 100 && ex.inflight() > 0; ++i) REQUIRE(ex.run_once(true));
  CHECK(ex.inflight() == 0);
}

task<int> sleep_int(executor* ex, std::chrono::milliseconds d, int v, std::vector<int>* order) {
  result<void> r = co_await sleep_for(*ex, d);
  REQUIRE(r);
  order->push_back(v);
  co_return v;
}

task<std::string> sleep_string(executor* ex, std::chrono::milliseconds d, std::string v, std::vector<int>* order) {
  result<void> r = co_await sleep_for(*ex, d);
  REQUIRE(r);
  order->push_back(-1);
  co_return v;
}

task<void> sleep_void(executor* ex, std::chrono::milliseconds d, std::vector<int>* order, probe* p) {
  result<void> r = co_await sleep_for(*ex, d);
  REQUIRE(r);
  order->push_back(0);
  p->finished = true;
}

task<int> ready_int(int v) { co_return v; }

task<int> sleep_then_throw(executor* ex, std::chrono::milliseconds d, std::string what) {
  result<void> r = co_await sleep_for(*ex, d);
  REQUIRE(r);
  throw std::runtime_error(what);
}

// A loser blocked in a socket receive until its stop token cancels it.
task<result<std::size_t>> recv_until_stopped(ringframe::socket* s, std::stop_token st, probe* p) {
  std::byte buf[16];
  result<std::size_t> n = co_await s->recv(buf, {.timeout = 10s, .stop = &st});
  p->finished = true;
  p->ec = n.error();
  co_return n;
}

// A loser (or winner) blocked in sleep_for with the stop token.
task<result<std::size_t>> sleep_until_stopped(executor* ex, std::chrono::milliseconds d, std::stop_token st, probe* p) {
  result<void> r = co_await sleep_for(*ex, d, &st);
  p->finished = true;
  p->ec = r.error();
  if (!r) co_return r.error();
  co_return std::size_t(d.count());
}

task<void> sleep_void_stoppable(executor* ex, std::chrono::milliseconds d, std::stop_token st, probe* p) {
  result<void> r = co_await sleep_for(*ex, d, &st);
  p->finished = true;
  p->ec = r.error();
}

task<int> throw_after(executor* ex, std::chrono::milliseconds d, std::stop_token st) {
  result<void> r = co_await sleep_for(*ex, d, &st);
  REQUIRE(r);
  throw std::runtime_error("winner threw");
}

// ---- the coroutines the tests run ----

task<void> all_values_in_order(executor* ex) {
  std::vector<int> order;
  probe p;
  auto t0 = clk::now();
  auto op1 = when_all(sleep_int(ex, 60ms, 7, &order), sleep_string(ex, 20ms, "two", &order), sleep_void(ex, 40ms, &order, &p));
  std::tuple<int, std::string, std::monostate> r =
      co_await std::move(op1);
  // Values in argument order; completion in time order (they ran at once).
  CHECK(std::get<0>(r) == 7);
  CHECK(std::get<1>(r) == "two");
  CHECK(p.finished);
  CHECK(order == std::vector<int>{-1, 0, 7});
  CHECK(clk::now() - t0 >= 60ms);
  CHECK(clk::now() - t0 < 60ms + 40ms + 20ms + 2s);  // bounded
}

task<void> all_ready() {
  auto op2 = when_all(ready_int(1), ready_int(2));
  std::tuple<int, int> r = co_await std::move(op2);
  CHECK(r == std::tuple<int, int>{1, 2});
}

task<void> all_first_exception_after_all(executor* ex) {
  std::vector<int> order;
  probe p;
  bool caught = false;
  try {
    auto op3 = when_all( sleep_then_throw(ex, 30ms, "second"), sleep_then_throw(ex, 10ms, "first"), sleep_void(ex, 60ms, &order, &p));
    std::tuple<int, int, std::monostate> r = co_await std::move(op3);
    (void)r;
  } catch (const std::runtime_error& e) {
    caught = true;
    CHECK(std::string(e.what()) == "first");
    CHECK(p.finished);  // the slowest child finished before the rethrow
    CHECK(order == std::vector<int>{0});
  }
  CHECK(caught);
}

task<void> all_vector(executor* ex) {
  std::vector<int> order;
  std::vector<task<int>> ts;
  for (int i = 0; i < 5; ++i) ts.push_back(sleep_int(ex, std::chrono::milliseconds(50 - 10 * i), i, &order));
  auto v1 = when_all(std::move(ts));
  std::vector<int> r = co_await std::move(v1);
  CHECK(r == std::vector<int>{0, 1, 2, 3, 4});
  CHECK(order == std::vector<int>{4, 3, 2, 1, 0});

  std::vector<task<int>> none;
  auto v2 = when_all(std::move(none));
  std::vector<int> empty = co_await std::move(v2);
  CHECK(empty.empty());
}

task<void> all_vector_exception(executor* ex) {
  std::vector<task<int>> ts;
  std::vector<int> order;
  ts.push_back(sleep_int(ex, 50ms, 1, &order));
  ts.push_back(sleep_then_throw(ex, 5ms, "boom"));
  bool caught = false;
  try {
    auto v3 = when_all(std::move(ts));
    std::vector<int> r = co_await std::move(v3);
    (void)r;
  } catch (const std::runtime_error& e) {
    caught = true;
    CHECK(std::string(e.what()) == "boom");
    CHECK(order == std::vector<int>{1});  // the other one finished first
  }
  CHECK(caught);
}

struct recv_factory {
  ringframe::socket* s;
  probe* p;
  task<result<std::size_t>> operator()(std::stop_token st) const { return recv_until_stopped(s, st, p); }
};
struct sleep_factory {
  executor* ex;
  std::chrono::milliseconds d;
  probe* p;
  task<result<std::size_t>> operator()(std::stop_token st) const { return sleep_until_stopped(ex, d, st, p); }
};
struct sleep_void_factory {
  executor* ex;
  std::chrono::milliseconds d;
  probe* p;
  task<void> operator()(std::stop_token st) const { return sleep_void_stoppable(ex, d, st, p); }
};
struct throw_factory {
  executor* ex;
  std::chrono::milliseconds d;
  task<int> operator()(std::stop_token st) const { return throw_after(ex, d, st); }
};

task<void> any_cancels_losers(executor* ex, ringframe::socket* s) {
  probe blocked_recv, winner, blocked_sleep;
  auto t0 = clk::now();
  auto op4 = when_any(recv_factory{s, &blocked_recv}, sleep_factory{ex, 20ms, &winner}, sleep_void_factory{ex, 10s, &blocked_sleep});
  std::pair<std::size_t, std::variant<result<std::size_t>, result<std::size_t>, std::monostate>> r =
      co_await std::move(op4);
  CHECK(r.first == 1);
  REQUIRE(r.second.index() == 1);
  REQUIRE(std::get<1>(r.second));
  CHECK(*std::get<1>(r.second) == 20);
  CHECK(winner.finished);
  CHECK(!winner.ec);
  // The losers finished, cancelled, before when_any returned.
  CHECK(blocked_recv.finished);
  CHECK(blocked_recv.ec == std::errc::operation_canceled);
  CHECK(blocked_sleep.finished);
  CHECK(blocked_sleep.ec == std::errc::operation_canceled);
  CHECK(clk::now() - t0 < 5s);
}

task<void> any_winner_throws(executor* ex, ringframe::socket* s) {
  probe blocked_recv;
  bool caught = false;
  try {
    auto op5 = when_any(recv_factory{s, &blocked_recv}, throw_factory{ex, 10ms});
    std::pair<std::size_t, std::variant<result<std::size_t>, int>> r =
        co_await std::move(op5);
    (void)r;
  } catch (const std::runtime_error& e) {
    caught = true;
    CHECK(std::string(e.what()) == "winner threw");
    CHECK(blocked_recv.finished);
    CHECK(blocked_recv.ec == std::errc::operation_canceled);
  }
  CHECK(caught);
}

task<void> any_vector(executor* ex) {
  std::vector<probe> probes(4);
  std::vector<sleep_factory> fs;
  const int ms[] = {5000, 4000, 30, 3000};
  for (int i = 0; i < 4; ++i) fs.push_back(sleep_factory{ex, std::chrono::milliseconds(ms[i]), &probes[i]});
  auto t0 = clk::now();
  auto v4 = when_any(std::move(fs));
  std::pair<std::size_t, result<std::size_t>> r = co_await std::move(v4);
  CHECK(r.first == 2);
  REQUIRE(r.second);
  CHECK(*r.second == 30);
  for (int i = 0; i < 4; ++i) {
    CHECK(probes[i].finished);
    if (i != 2) CHECK(probes[i].ec == std::errc::operation_canceled);
  }
  CHECK(clk::now() - t0 < 2s);

  std::vector<sleep_factory> none;
  bool threw = false;
  try {
    auto v5 = when_any(std::move(none));
    std::pair<std::size_t, result<std::size_t>> e = co_await std::move(v5);
    (void)e;
  } catch (const std::invalid_argument&) {
    threw = true;
  }
  CHECK(threw);
}

// A winner that finishes without suspending: the others see stop already
// requested and end at once.
task<result<std::size_t>> ready_result(std::stop_token) { co_return std::size_t(5); }

task<void> any_inline_winner(ringframe::socket* s) {
  probe blocked_recv;
  auto t0 = clk::now();
  auto op6 = when_any(&ready_result, recv_factory{s, &blocked_recv});
  std::pair<std::size_t, std::variant<result<std::size_t>, result<std::size_t>>> r =
      co_await std::move(op6);
  CHECK(r.first == 0);
  CHECK(*std::get<0>(r.second) == 5);
  CHECK(blocked_recv.finished);
  CHECK(blocked_recv.ec == std::errc::operation_canceled);
  CHECK(clk::now() - t0 < 2s);
}

task<void> timeout_fires(executor* ex, ringframe::socket* s) {
  probe inner;
  auto t0 = clk::now();
  auto op7 = with_timeout(*ex, 30ms, recv_factory{s, &inner});
  result<std::size_t> r = co_await std::move(op7);
  auto took = clk::now() - t0;
  CHECK(!r);
  CHECK(r.error() == std::errc::timed_out);
  CHECK(inner.finished);
  CHECK(inner.ec == std::errc::operation_canceled);
  CHECK(took >= 30ms);
  CHECK(took < 5s);
}

task<void> timeout_does_not_fire(executor* ex) {
  probe inner;
  auto t0 = clk::now();
  auto op8 = with_timeout(*ex, 10s, sleep_factory{ex, 20ms, &inner});
  result<std::size_t> r = co_await std::move(op8);
  REQUIRE(r);
  CHECK(*r == 20);
  CHECK(inner.finished);
  CHECK(!inner.ec);
  CHECK(clk::now() - t0 < 5s);  // the 10 s timer was cancelled, not waited out

  probe v;
  auto op9 = with_timeout(*ex, 10s, sleep_void_factory{ex, 10ms, &v});
  result<void> rv = co_await std::move(op9);
  CHECK(rv);
  CHECK(v.finished);

  auto op10 = with_timeout(*ex, 20ms, sleep_void_factory{ex, 10s, &v});
  result<void> tv = co_await std::move(op10);
  CHECK(tv.error() == std::errc::timed_out);
  CHECK(v.ec == std::errc::operation_canceled);
}

task<void> timeout_exception_passes(executor* ex) {
  bool caught = false;
  try {
    auto op11 = with_timeout(*ex, 10s, throw_factory{ex, 5ms});
    result<int> r = co_await std::move(op11);
    (void)r;
  } catch (const std::runtime_error& e) {
    caught = true;
    CHECK(std::string(e.what()) == "winner threw");
  }
  CHECK(caught);
}

// when_all of children that each carry their own deadline (with_timeout
// nested in when_all): two time out, one finishes.
task<void> nested(executor* ex, ringframe::socket* s1, ringframe::socket* s2) {
  probe a, b, c;
  auto op12 = when_all(with_timeout(*ex, 20ms, recv_factory{s1, &a}), with_timeout(*ex, 30ms, recv_factory{s2, &b}), with_timeout(*ex, 5s, sleep_factory{ex, 10ms, &c}));
  std::tuple<result<std::size_t>, result<std::size_t>, result<std::size_t>> r =
      co_await std::move(op12);
  CHECK(std::get<0>(r).error() == std::errc::timed_out);
  CHECK(std::get<1>(r).error() == std::errc::timed_out);
  REQUIRE(std::get<2>(r));
  CHECK(*std::get<2>(r) == 10);
  CHECK(a.ec == std::errc::operation_canceled);
  CHECK(b.ec == std::errc::operation_canceled);
}

task<void> stop_later(executor* ex, std::chrono::milliseconds d) {
  result<void> r = co_await sleep_for(*ex, d);
  CHECK(r);
  ex->stop();
}

// executor::stop() while when_all waits on blocked children: they end with
// ECANCELED and when_all returns.
task<void> all_under_stop(ringframe::socket* s1, ringframe::socket* s2, probe* a, probe* b, bool* returned) {
  std::stop_token never;
  task<result<std::size_t>> ta = recv_until_stopped(s1, never, a);
  task<result<std::size_t>> tb = recv_until_stopped(s2, never, b);
  auto v6 = when_all(std::move(ta), std::move(tb));
  std::tuple<result<std::size_t>, result<std::size_t>> r = co_await std::move(v6);
  CHECK(std::get<0>(r).error() == std::errc::operation_canceled);
  CHECK(std::get<1>(r).error() == std::errc::operation_canceled);
  *returned = true;
}

}  // namespace

TEST_CASE("when_all: values in argument order, children run concurrently") {
  executor ex;
  ex.run(all_values_in_order(&ex));
  ex.run(all_ready());
  drain(ex);
}

TEST_CASE("when_all: the first exception is rethrown after every child finished") {
  executor ex;
  ex.run(all_first_exception_after_all(&ex));
  drain(ex);
}

TEST_CASE("when_all over a vector: values in order, exceptions, empty") {
  executor ex;
  ex.run(all_vector(&ex));
  ex.run(all_vector_exception(&ex));
  drain(ex);
}

TEST_CASE("when_any: the first wins, losers in recv and sleep_for end with ECANCELED before it returns") {
  executor ex;
  auto [a, b] = testing::socket_pair(ex);
  ex.run(any_cancels_losers(&ex, &a));
  ex.run(any_inline_winner(&a));
  drain(ex);
}

TEST_CASE("when_any: a loser blocked on a TCP loopback recv is cancelled") {
  executor ex;
  auto [s, c] = ex.run(testing::tcp_pair(&ex));
  ex.run(any_cancels_losers(&ex, &s));
  ex.run(any_winner_throws(&ex, &c));
  drain(ex);
}

TEST_CASE("when_any over a vector of factories") {
  executor ex;
  ex.run(any_vector(&ex));
  drain(ex);
}

TEST_CASE("with_timeout: ETIMEDOUT when the deadline fires, the inner task saw ECANCELED") {
  executor ex;
  auto [a, b] = testing::socket_pair(ex);
  ex.run(timeout_fires(&ex, &a));
  ex.run(timeout_does_not_fire(&ex));
  ex.run(timeout_exception_passes(&ex));
  drain(ex);
}

TEST_CASE("with_timeout nested in when_all") {
  executor ex;
  auto [a, b] = testing::socket_pair(ex);
  auto [c, d] = testing::socket_pair(ex);
  ex.run(nested(&ex, &a, &c));
  drain(ex);
}

TEST_CASE("executor::stop() unwinds a when_all whose children are blocked") {
  executor ex;
  auto [a, b] = testing::socket_pair(ex);
  auto [c, d] = testing::socket_pair(ex);
  probe pa, pb;
  bool returned = false;
  ex.spawn(all_under_stop(&a, &c, &pa, &pb, &returned));
  ex.spawn(stop_later(&ex, 20ms));
  ex.run_until_idle();
  CHECK(returned);
  CHECK(pa.finished);
  CHECK(pb.finished);
  CHECK(ex.live_tasks() == 0);
  drain(ex);
}
