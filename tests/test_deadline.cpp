// deadline: coarse timers kept by the executor's loop (deadline.hpp).
#include <ringframe/deadline.hpp>
#include <ringframe/executor.hpp>
#include <ringframe/timer.hpp>

#include <doctest/doctest.h>

#include <array>
#include <chrono>
#include <coroutine>
#include <vector>

using namespace ringframe;
using namespace std::chrono_literals;
using clk = std::chrono::steady_clock;

namespace {

// A deadline that records when it fired; `id` says which one.
struct recorded {
  deadline d{&recorded::fired};
  int id = 0;
  std::vector<int>* order = nullptr;
  clk::time_point at{};
  int times = 0;
  std::coroutine_handle<> waiter;

  static void fired(deadline* self) {
    // deadline is the first member and recorded is standard-layout enough for
    // this test: recover the owner without a lookup.
    auto* r = reinterpret_cast<recorded*>(self);
    r->at = clk::now();
    ++r->times;
    if (r->order) r->order->push_back(r->id);
    if (r->waiter) std::exchange(r->waiter, {}).resume();
  }
};

struct wait_for_fire {
  recorded* r;
  bool await_ready() const noexcept { return r->times > 0; }
  void await_suspend(std::coroutine_handle<> h) noexcept { r->waiter = h; }
  void await_resume() const noexcept {}
};

task<int> wait_deadline(executor* ex, recorded* r, std::chrono::milliseconds after) {
  r->d.arm(*ex, after);
  co_await wait_for_fire{r};
  co_return r->times;
}

task<void> nap(executor* ex, std::chrono::milliseconds d) {
  result<void> r = co_await sleep_for(*ex, d);
  CHECK(r);
}

}  // namespace

TEST_CASE("deadlines fire in time order, across durations, each once and not early") {
  executor ex;
  std::vector<int> order;
  recorded a, b, c;
  a.id = 1, b.id = 2, c.id = 3;
  a.order = b.order = c.order = &order;
  auto start = clk::now();
  a.d.arm(ex, 60ms);
  b.d.arm(ex, 20ms);
  c.d.arm(ex, 40ms);
  CHECK(a.d.armed());
  // Keep the loop busy until after the last one: a sleep of its own.
  ex.run(nap(&ex, 100ms));
  CHECK(order == std::vector<int>{2, 3, 1});
  CHECK(a.times == 1);
  CHECK(b.times == 1);
  CHECK(c.times == 1);
  CHECK_FALSE(a.d.armed());
  // The loop's clock is read once per iteration, before it is armed here:
  // never early by more than a millisecond.
  CHECK(b.at - start >= 19ms);
  CHECK(c.at - start >= 39ms);
  CHECK(a.at - start >= 59ms);
  CHECK(ex.stats().deadlines_expired == 3);
}

// deadline.hpp, "When": arming reads no clock; the loop stamps what a turn
// armed before it next checks deadlines or sleeps.
task<void> arm_then_stay_busy(executor* ex, recorded* r, clk::time_point* busy_until) {
  r->d.arm(*ex, 20ms);
  CHECK(r->d.when() == clk::time_point::max());  // not stamped yet
  // The rest of this turn takes 30 ms (no co_await until then).
  const auto until = clk::now() + 30ms;
  while (clk::now() < until) {
  }
  *busy_until = clk::now();
  co_await wait_for_fire{r};
}

TEST_CASE("a deadline is measured from the end of the turn that armed it: never early, at most a turn late") {
  executor ex;
  recorded r;
  clk::time_point busy_until{};
  ex.run(arm_then_stay_busy(&ex, &r, &busy_until));
  REQUIRE(r.times == 1);
  CHECK(r.d.when() != clk::time_point::max());
  CHECK(r.d.when() >= busy_until + 20ms);
  CHECK(r.at >= busy_until + 20ms);
  CHECK(r.at - busy_until < 20ms + 2s);  // generous: a loaded machine
}

TEST_CASE("a deadline is stamped by the next loop turn, which then sleeps until it") {
  executor ex;
  recorded r;
  r.d.arm(ex, 50ms);
  CHECK(r.d.when() == clk::time_point::max());
  const auto before = clk::now();
  ex.run_once(false);
  CHECK(r.d.armed());
  CHECK(r.d.when() >= before + 50ms);
  CHECK(r.d.when() <= clk::now() + 50ms);
  CHECK(r.times == 0);
}

TEST_CASE("many durations fire in time order; a re-arm moves a deadline to another duration's list") {
  executor ex;
  std::vector<int> order;
  std::array<recorded, 7> r;
  const int ms[7] = {35, 5, 30, 10, 25, 15, 20};
  for (int i = 0; i < 7; ++i) {
    r[static_cast<std::size_t>(i)].id = ms[i];
    r[static_cast<std::size_t>(i)].order = &order;
    r[static_cast<std::size_t>(i)].d.arm(ex, std::chrono::milliseconds(ms[i]));
  }
  r[2].d.cancel();  // 30 ms
  r[0].d.arm(ex, 40ms);  // 35 -> 40 ms: a new list
  ex.run(nap(&ex, 80ms));
  CHECK(order == std::vector<int>{5, 10, 15, 20, 25, 35});
  CHECK(r[2].times == 0);
}

TEST_CASE("a cancelled deadline does not fire; a re-armed one moves behind later ones") {
  executor ex;
  std::vector<int> order;
  recorded a, b, c;
  a.id = 1, b.id = 2, c.id = 3;
  a.order = b.order = c.order = &order;
  a.d.arm(ex, 30ms);
  b.d.arm(ex, 30ms);
  c.d.arm(ex, 30ms);
  c.d.cancel();
  CHECK_FALSE(c.d.armed());
  ex.run(nap(&ex, 10ms));
  a.d.arm(ex, 30ms);  // re-armed: now due after b
  ex.run(nap(&ex, 80ms));
  CHECK(order == std::vector<int>{2, 1});
  CHECK(c.times == 0);
}

TEST_CASE("a task waiting only on a deadline keeps the loop alive (no deadlock report)") {
  executor ex;
  recorded r;
  auto start = clk::now();
  // Nothing is in flight in the kernel: the loop must sleep until the deadline.
  int times = ex.run(wait_deadline(&ex, &r, 30ms));
  CHECK(times == 1);
  CHECK(clk::now() - start >= 29ms);
}

TEST_CASE("an expiry callback may cancel another due deadline and re-arm itself") {
  executor ex;
  static recorded* victim = nullptr;
  static int rearmed = 0;
  static executor* exp = nullptr;
  exp = &ex;
  rearmed = 0;
  recorded v;
  victim = &v;
  deadline killer([](deadline* self) {
    victim->d.cancel();
    if (++rearmed < 3) self->arm(*exp, 5ms);
  });
  killer.arm(ex, 10ms);
  v.d.arm(ex, 10ms);  // same duration, armed later: expires after killer
  ex.run(nap(&ex, 60ms));
  CHECK(v.times == 0);
  CHECK(rearmed == 3);
  CHECK_FALSE(killer.armed());
}

TEST_CASE("deadlines still armed when their executor goes away are left disarmed") {
  recorded r;
  {
    executor ex;
    r.d.arm(ex, 10s);
    CHECK(r.d.armed());
  }
  CHECK_FALSE(r.d.armed());
  CHECK(r.times == 0);
}
