// executor and operation: timers, deadlines, cancellation, stop, teardown.
#include "loopback.hpp"

#include <ringframe/executor.hpp>
#include <ringframe/socket.hpp>
#include <ringframe/periodic_timer.hpp>
#include <ringframe/timer.hpp>

#include <doctest/doctest.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <atomic>
#include <optional>
#include <thread>
#include <stop_token>
#include <cstdlib>
#include <vector>

using namespace ringframe;
using namespace std::chrono_literals;
using clk = std::chrono::steady_clock;
using testing::on;
using testing::on_each_backend;

namespace {

task<void> sleep_then_record(executor* ex, std::chrono::milliseconds d, std::vector<int>* order, int id) {
  result<void> r = co_await sleep_for(*ex, d);
  CHECK(r);
  order->push_back(id);
}

task<std::error_code> recv_with_timeout(ringframe::socket* s, std::chrono::milliseconds t) {
  std::byte buf[16];
  result<std::size_t> n = co_await s->recv(buf, {.timeout = t});
  co_return n.error();
}

task<std::size_t> recv_some(ringframe::socket* s, std::chrono::milliseconds t) {
  std::byte buf[16];
  result<std::size_t> n = co_await s->recv(buf, {.timeout = t});
  REQUIRE(n);
  co_return *n;
}

task<void> send_later(executor* ex, ringframe::socket* s, std::chrono::milliseconds d) {
  result<void> slept = co_await sleep_for(*ex, d);
  CHECK(slept);
  result<std::size_t> n = co_await s->send_all(std::string_view("hi"));
  CHECK(n);
}

task<std::size_t> recv_after_peer_send(executor* ex, ringframe::socket* a, ringframe::socket* b) {
  ex->spawn(send_later(ex, b, 10ms));
  std::size_t n = co_await recv_some(a, 2000ms);
  co_return n;
}

task<void> request_stop_later(executor* ex, std::stop_source* src, std::chrono::milliseconds d) {
  result<void> slept = co_await sleep_for(*ex, d);
  CHECK(slept);
  src->request_stop();
}

task<std::error_code> recv_cancellable(executor* ex, ringframe::socket* s, std::stop_source* src) {
  ex->spawn(request_stop_later(ex, src, 10ms));
  std::stop_token tok = src->get_token();
  std::byte buf[16];
  result<std::size_t> n = co_await s->recv(buf, {.stop = &tok});
  co_return n.error();
}

task<void> recv_until_error(ringframe::socket* s, std::error_code* out) {
  std::byte buf[16];
  result<std::size_t> n = co_await s->recv(buf);
  *out = n ? std::error_code{} : n.error();
}

task<void> stop_executor_later(executor* ex, std::chrono::milliseconds d) {
  result<void> slept = co_await sleep_for(*ex, d);
  CHECK(slept);
  ex->stop();
}

task<void> long_sleep(executor* ex, std::error_code* out) {
  result<void> r = co_await sleep_for(*ex, 60s);
  *out = r.error();
}

}  // namespace

TEST_CASE("the kernel accepts an io_uring here (probe)") {
  CHECK(executor::probe() == "");
}

TEST_CASE("timers fire in deadline order, not start order") {
  executor ex;
  std::vector<int> order;
  ex.spawn(sleep_then_record(&ex, 60ms, &order, 3));
  ex.spawn(sleep_then_record(&ex, 20ms, &order, 1));
  ex.spawn(sleep_then_record(&ex, 40ms, &order, 2));
  auto t0 = clk::now();
  ex.run_until_idle();
  CHECK(order == std::vector<int>{1, 2, 3});
  CHECK(clk::now() - t0 >= 60ms);
}

TEST_CASE("a deadline that fires ends the operation with ETIMEDOUT") {
  executor ex;
  auto [a, b] = testing::socket_pair(ex);
  auto t0 = clk::now();
  std::error_code ec = ex.run(recv_with_timeout(&a, 30ms));
  CHECK(ec == std::errc::timed_out);
  CHECK(clk::now() - t0 >= 30ms);
  CHECK(ex.inflight() == 0);  // both CQEs (op and timer) were consumed
}

TEST_CASE("a deadline that does not fire leaves the result alone") {
  executor ex;
  auto [a, b] = testing::socket_pair(ex);
  CHECK(ex.run(recv_after_peer_send(&ex, &a, &b)) == 2);
  CHECK(ex.inflight() == 0);
}

TEST_CASE("a stop_token cancels an operation in flight with ECANCELED") {
  executor ex;
  auto [a, b] = testing::socket_pair(ex);
  std::stop_source src;
  CHECK(ex.run(recv_cancellable(&ex, &a, &src)) == std::errc::operation_canceled);
}

TEST_CASE("an operation started after stop was requested fails at once") {
  executor ex;
  auto [a, b] = testing::socket_pair(ex);
  std::stop_source src;
  src.request_stop();
  std::stop_token tok = src.get_token();
  a.set_stop_token(tok);  // the socket's default token
  CHECK(ex.run(recv_with_timeout(&a, 5000ms)) == std::errc::operation_canceled);
  CHECK(ex.inflight() == 0);  // nothing was submitted
}

TEST_CASE("executor::stop cancels every operation in flight and lets tasks unwind") {
  executor ex;
  auto [a, b] = testing::socket_pair(ex);
  std::error_code recv_err, sleep_err;
  ex.spawn(recv_until_error(&a, &recv_err));
  ex.spawn(long_sleep(&ex, &sleep_err));
  ex.spawn(stop_executor_later(&ex, 10ms));
  auto t0 = clk::now();
  ex.run_until_idle();
  CHECK(clk::now() - t0 < 5s);
  CHECK(recv_err == std::errc::operation_canceled);
  CHECK(sleep_err == std::errc::operation_canceled);
  CHECK(ex.live_tasks() == 0);
}

TEST_CASE("destroying an executor with operations in flight cancels them cleanly") {
  std::error_code recv_err;
  std::optional<executor> ex(std::in_place);
  auto [a, b] = testing::socket_pair(*ex);
  ex->spawn(recv_until_error(&a, &recv_err));
  ex->run_once(false);  // started, now waiting on the kernel
  CHECK(ex->inflight() == 1);
  ex.reset();  // ~executor: stop, drain; the sanitizer build checks nothing leaks
  CHECK(recv_err == std::errc::operation_canceled);
}

TEST_CASE("setup errors explain themselves (message format)") {
  // Cannot disable io_uring here; check that a real failure is explained by
  // asking for an impossible ring size.
  executor_options o{1u << 30, 1};
  o.backend = backend_kind::io_uring;  // automatic would not fall back for EINVAL either
  CHECK_THROWS_AS(executor{o}, setup_error);
  o.backend = backend_kind::automatic;
  if (!std::getenv("RINGFRAME_BACKEND")) CHECK_THROWS_AS(executor{o}, setup_error);
  try {
    o.backend = backend_kind::io_uring;
    executor ex(o);
  } catch (const setup_error& e) {
    const std::string what = e.what();
    CHECK(what.find("cannot create an io_uring") != std::string::npos);
    // The errno named once, at the end (system_error's what() appended it a second time).
    const std::string errno_text = e.code().message();
    CHECK(what.find(errno_text) == what.rfind(errno_text));
    CHECK(what.size() >= errno_text.size() + 1);
    CHECK(what.compare(what.size() - errno_text.size() - 1, errno_text.size() + 1, errno_text + ")") == 0);
  }
}

namespace {
task<void> tick(executor* ex, int* done) {
  result<void> r = co_await sleep_for(*ex, 1ms);
  CHECK(r);
  ++*done;
}
}  // namespace

TEST_CASE("a completion queue far smaller than the work in flight loses no completion") {
  executor_options o{4, 1};  // 4 SQEs, 4 CQEs
  o.backend = backend_kind::io_uring;  // a test of the ring
  executor ex(o);
  int done = 0;
  for (int i = 0; i < 5000; ++i) ex.spawn(tick(&ex, &done));
  ex.run_until_idle();
  CHECK(done == 5000);
  CHECK(ex.inflight() == 0);
  // 5,000 timers expiring together cannot fit 4 CQE slots: overflow happened
  // and was absorbed.
  MESSAGE("CQ overflow events: " << ex.stats().cq_overflows << ", submits: " << ex.stats().submits);
  CHECK(ex.stats().cq_overflows > 0);
  CHECK(ex.stats().completions == 5000);
}

namespace {
struct handoff {
  std::thread::id ran_on;
  std::atomic<bool> done{false};
  std::stop_source stop_worker;
};

task<void> record_thread(handoff* h) {
  h->ran_on = std::this_thread::get_id();
  h->done = true;
  h->stop_worker.request_stop();  // the worker was waiting for this
  co_return;
}

task<void> wait_until_stopped(executor* ex, std::stop_token tok) {
  result<void> r = co_await sleep_for(*ex, std::chrono::seconds(30), &tok);
  (void)r;
}
}  // namespace

TEST_CASE("spawn_on hands a task to another thread's executor, ring to ring") {
  handoff h;
  std::atomic<executor*> worker_ex{nullptr};
  std::thread::id worker_id;
  std::thread worker([&] {
    executor ex;  // created on its own thread (SINGLE_ISSUER)
    worker_id = std::this_thread::get_id();
    task<void> waiting = wait_until_stopped(&ex, h.stop_worker.get_token());
    worker_ex = &ex;
    ex.run(std::move(waiting));
  });
  while (!worker_ex) std::this_thread::yield();
  executor here;
  here.spawn_on(*worker_ex, record_thread(&h));
  worker.join();
  CHECK(h.done);
  CHECK(h.ran_on == worker_id);
  CHECK(h.ran_on != std::this_thread::get_id());
}

namespace {
// Detached itself: the executor owns it from its start, with no task around it.
detail::detached sleep_detached(executor* ex, std::chrono::milliseconds d, int* done) {
  result<void> r = co_await sleep_for(*ex, d);
  if (r) ++*done;
}
}  // namespace

TEST_CASE("a coroutine that is detached itself is spawned, counted live, and cleaned up at teardown") {
  int done = 0;
  {
    executor ex;
    ex.spawn(sleep_detached(&ex, 1ms, &done));
    ex.spawn(sleep_detached(&ex, 1ms, &done));
    CHECK(ex.live_tasks() == 2);
    ex.run_until_idle();
    CHECK(done == 2);
    CHECK(ex.live_tasks() == 0);
    // One still waiting when the executor goes: cancelled and destroyed (ASan
    // checks that its frame is freed once).
    ex.spawn(sleep_detached(&ex, 10s, &done));
    CHECK(ex.live_tasks() == 1);
  }
  CHECK(done == 2);
}

TEST_CASE("buffer ring parts: ids run on across parts, each maps to its own memory, growth stops at the limit") {
  executor_options eo;
  eo.receive_buffers = 4;
  eo.receive_buffers_max = 40;  // 4, +8 = 12, +16 = 28; +32 would pass it
  executor ex(eo);
  buffer_ring* br = ex.receive_buffers();
  REQUIRE(br);
  CHECK(br->count() == 4);
  const std::uint16_t first_group = br->group();
  CHECK(br->grow());
  CHECK(br->count() == 12);
  CHECK(br->group() != first_group);  // recvs armed from now on use the new part
  CHECK(br->grow());
  CHECK(br->count() == 28);
  CHECK_FALSE(br->grow());
  REQUIRE(br->count() == 28);
  // Every id names a distinct, whole buffer, across parts. (Without a
  // kernel ring, epoll's, an id has memory once it is taken.)
  if (br->lends()) {
    std::vector<std::uint16_t> taken;
    for (std::uint16_t id; br->take(id);) taken.push_back(id);
    CHECK(taken.size() == 28);
  }
  std::vector<std::byte*> starts;
  for (std::uint16_t id = 0; id < 28; ++id) {
    std::span<std::byte> d = br->data(id, br->buffer_size());
    std::memset(d.data(), id, d.size());
    starts.push_back(d.data());
  }
  for (std::uint16_t id = 0; id < 28; ++id) CHECK(static_cast<int>(br->data(id, 1)[0]) == id);
  std::sort(starts.begin(), starts.end());
  CHECK(std::adjacent_find(starts.begin(), starts.end()) == starts.end());
  for (std::size_t i = 1; i < starts.size(); ++i)
    CHECK(static_cast<std::size_t>(starts[i] - starts[i - 1]) >= br->buffer_size());
}

// ---- periodic_timer (periodic_timer.hpp), on each backend ----

namespace {

// `n` ticks, doing `work` (a sleep) after each: the schedule must not drift
// by the work.
task<void> tick_n(executor* ex, std::chrono::nanoseconds period, int n, std::chrono::nanoseconds work,
                  clk::time_point* ended, std::uint64_t* missed) {
  periodic_timer t(*ex, period);
  for (int i = 0; i < n; ++i) {
    result<void> r = co_await t.next();
    REQUIRE(r);
    if (work.count() > 0) {
      result<void> w = co_await sleep_for(*ex, work);
      REQUIRE(w);
    }
  }
  *ended = clk::now();
  *missed = t.missed();
}

task<void> tick_until_stopped(executor* ex, const std::stop_token* st, int* ticks, std::error_code* end) {
  periodic_timer t(*ex, 10ms, st);
  for (;;) {
    result<void> r = co_await t.next();
    if (!r) {
      *end = r.error();
      co_return;
    }
    ++*ticks;
  }
}

task<void> stop_after(executor* ex, std::chrono::nanoseconds d, std::stop_source* src) {
  result<void> slept = co_await sleep_for(*ex, d);
  CHECK(slept);
  src->request_stop();
}

}  // namespace

TEST_CASE("periodic_timer ticks on a fixed schedule: work between ticks does not make it drift") {
  on_each_backend([](backend_kind k) {
    executor ex(on(k));
    clk::time_point ended{};
    std::uint64_t missed = 99;
    const auto t0 = clk::now();
    // 5 ticks of 40 ms with 30 ms of work after each: the 5th tick is due
    // at 200 ms, its work ends at 230 ms. A timer measured from each
    // wake-up would end at 5 x (40 + 30) = 350 ms. (The bound leaves 100 ms
    // for a loaded machine.)
    ex.run(tick_n(&ex, 40ms, 5, 30ms, &ended, &missed));
    const auto took = ended - t0;
    MESSAGE(std::string(to_string(k)) << ": 5 ticks of 40 ms with 30 ms of work each took "
                                      << std::chrono::duration_cast<std::chrono::milliseconds>(took).count() << " ms");
    CHECK(took >= 230ms);
    CHECK(took < 330ms);
  });
}

TEST_CASE("periodic_timer: a waiter late by several periods is woken once and the skipped ticks are counted") {
  on_each_backend([](backend_kind k) {
    executor ex(on(k));
    clk::time_point ended{};
    std::uint64_t missed = 0;
    // 10 ms period, 55 ms of work after each tick: each next() is late by
    // about 4-5 periods, which are skipped, not delivered as a burst.
    const auto t0 = clk::now();
    ex.run(tick_n(&ex, 10ms, 3, 55ms, &ended, &missed));
    CHECK(missed >= 6);
    CHECK(ended - t0 >= 3 * 55ms);
  });
}

TEST_CASE("periodic_timer: a stop ends the wait with ECANCELED, and a period of zero is refused") {
  on_each_backend([](backend_kind k) {
    executor ex(on(k));
    std::stop_source src;
    const std::stop_token st = src.get_token();
    int ticks = 0;
    std::error_code end;
    ex.spawn(tick_until_stopped(&ex, &st, &ticks, &end));
    ex.spawn(stop_after(&ex, 55ms, &src));
    ex.run_until_idle();
    CHECK(end == std::errc::operation_canceled);
    CHECK(ticks >= 1);  // 5 are due before the stop; a loaded machine may skip some
    CHECK(ticks <= 6);
    CHECK_THROWS_AS(periodic_timer(ex, 0ms), std::invalid_argument);
  });
}
