// Review 18: lifetimes and ordering in the composition primitives (when_any,
// when_all, with_timeout, task_group, channel, event, semaphore,
// periodic_timer, submit_to). Each F case fails before its fix; the P cases
// pin interleavings that were checked and found sound. Two executors on one
// thread stand in for two threads where an ordering must be forced: each is
// driven by hand, one turn at a time. Every wait is bounded.
#include "loopback.hpp"

#include <ringframe/channel.hpp>
#include <ringframe/event.hpp>
#include <ringframe/executor.hpp>
#include <ringframe/semaphore.hpp>
#include <ringframe/submit_to.hpp>
#include <ringframe/task_group.hpp>
#include <ringframe/timer.hpp>
#include <ringframe/when_all.hpp>
#include <ringframe/when_any.hpp>
#include <ringframe/with_timeout.hpp>

#include <doctest/doctest.h>

#include <cerrno>
#include <chrono>
#include <coroutine>
#include <memory>
#include <stdexcept>
#include <stop_token>
#include <string>
#include <vector>

using namespace ringframe;
using namespace std::chrono_literals;
using testing::on;
using testing::turns;

namespace {

// ---- submit_to ----

// Ignores its token: only a task that never starts can end as ECANCELED.
task<int> count_and_answer(int* started, std::stop_token) {
  ++*started;
  co_return 7;
}
struct count_factory {
  int* started;
  task<int> operator()(std::stop_token st) const { return count_and_answer(started, st); }
};

// -1: not finished; else 1 (a value), 2 (ECANCELED), 3 (another error).
task<void> submit_and_record(executor* here, executor* target, int* started, std::stop_token st, int* outcome) {
  result<int> r = co_await submit_to(*here, *target, count_factory{started}, st);
  *outcome = r ? 1 : (r.error() == std::errc::operation_canceled ? 2 : 3);
}

// Stops its executor from the executor's inbox.
struct stopper : detail::deferred_call {
  executor* ex;
  bool ran = false;
  explicit stopper(executor* e) : deferred_call(&stopper::run), ex(e) {}
  static void run(detail::deferred_call* c, bool run) {
    auto* self = static_cast<stopper*>(c);
    if (!run) return;
    self->ran = true;
    self->ex->stop();
  }
};

// ---- task_group ----

task<void> child_waits(event* ev) {
  result<void> r = co_await ev->wait();
  (void)r;
}

task<void> join_and_mark(task_group* g, bool* joined) {
  co_await g->join();
  *joined = true;
}

// Not a child: woken with the child (after it), it spawns another child and
// joins the group while the first joiner is posted but not yet resumed.
task<void> spawn_then_join(task_group* g, event* first, event* second, bool* joined) {
  result<void> r = co_await first->wait();
  (void)r;
  g->spawn(child_waits(second));
  co_await g->join();
  *joined = true;
}

}  // namespace

// ---------------------------------------------------------------------------
// F1: submit_to documents "when `stop` is requested ... If that happens before
// the task has started, it never starts and the result is ECANCELED". The
// target checks the stop only in start_run (its inbox), but the caller's
// cancellation is queued behind the start: start_run spawns the task, the
// cancellation then requests the remote token, and the task starts anyway on
// the next turn, its factory called: a task that ignores its token (or has
// nothing to cancel) answers with its value. Likewise a target stopped after
// start_run spawned the task but before it ran ("a task that arrives at a
// target that is stopping is not started"). Fixed: run_submitted checks both
// before it calls the factory.
TEST_CASE("review18 F1: submit_to cancelled after it was sent, before the task started: never started, ECANCELED") {
  testing::on_each_backend([](backend_kind k) {
    SUBCASE("the caller's stop") {
      executor here(on(k));
      executor target(on(k));
      std::stop_source src;
      int started = 0, outcome = -1;
      here.spawn(submit_and_record(&here, &target, &started, src.get_token(), &outcome));
      turns(here, 2);           // sent: the start is in the target's inbox
      src.request_stop();       // the cancellation queued behind it
      turns(target, 4);
      turns(here, 4);
      CHECK(outcome == 2);
      CHECK(started == 0);
    }
    SUBCASE("the target stopped after it took the start") {
      executor here(on(k));
      executor target(on(k));
      int started = 0, outcome = -1;
      here.spawn(submit_and_record(&here, &target, &started, std::stop_token{}, &outcome));
      turns(here, 2);  // the start is in the target's inbox
      stopper s(&target);
      target.defer(&s);  // behind it: run in the same turn, after start_run spawned the task
      turns(target, 4);
      turns(here, 4);
      CHECK(s.ran);
      CHECK(outcome == 2);
      CHECK(started == 0);
    }
  });
}

// ---------------------------------------------------------------------------
// F2: a join() whose last child finished is posted; its await_resume then
// cleared the group's joiner unconditionally. A coroutine that ran in between
// (after the joiner was posted, before it resumed) and spawned a child (the
// documented "spawned from elsewhere after the last one finished") and then
// joined the group itself (no logic_error: the first joiner had been let go)
// was registered as the joiner, and the first joiner's await_resume erased it:
// the second join was never resumed, not when its child finished, not ever.
// Fixed: await_resume clears the joiner only when it is still its own.
TEST_CASE("review18 F2: a join made while the previous joiner is posted is not lost when that joiner resumes") {
  testing::on_each_backend([](backend_kind k) {
    executor ex(on(k));
    event first(ex), second(ex);
    task_group g(ex);
    bool joined1 = false, joined2 = false;
    g.spawn(child_waits(&first));                               // the child, first in first's queue
    ex.spawn(spawn_then_join(&g, &first, &second, &joined2));   // woken right after it
    ex.spawn(join_and_mark(&g, &joined1));
    turns(ex, 3);
    REQUIRE(first.waiters() == 2);
    REQUIRE_FALSE(joined1);
    first.set();   // the child finishes (posting joiner 1), then the other spawns and joins
    turns(ex, 4);
    CHECK(joined1);
    CHECK_FALSE(joined2);
    REQUIRE(g.size() == 1);
    second.set();  // its child finishes: the second joiner must be woken
    turns(ex, 4);
    CHECK(g.empty());
    CHECK(joined2);
    if (!joined2) {  // let it go: request nothing more, the executor destroys it
      MESSAGE("the second joiner was never resumed");
    }
  });
}

namespace {

// Ignores how its sleep ended: it returns normally, cancelled or not.
task<void> sleep_ignoring(executor* ex, std::stop_token st) {
  result<void> r = co_await sleep_for(*ex, 10s, &st);
  (void)r;
}
struct sleep_ignoring_factory {
  executor* ex;
  task<void> operator()(std::stop_token st) const { return sleep_ignoring(ex, st); }
};
task<int> sleep_then_five(executor* ex, std::stop_token st) {
  result<void> r = co_await sleep_for(*ex, 10s, &st);
  (void)r;
  co_return 5;
}
struct five_factory {
  executor* ex;
  task<int> operator()(std::stop_token st) const { return sleep_then_five(ex, st); }
};

// 1: success, 2: ECANCELED, 4: ETIMEDOUT, 3: another error.
int outcome_of(std::error_code ec) {
  if (!ec) return 1;
  if (ec == std::errc::operation_canceled) return 2;
  if (ec == std::errc::timed_out) return 4;
  return 3;
}
task<void> timeout_void_outcome(executor* ex, int* outcome) {
  result<void> r = co_await with_timeout(*ex, 20s, sleep_ignoring_factory{ex});
  *outcome = outcome_of(r ? std::error_code{} : r.error());
}
task<void> timeout_int_outcome(executor* ex, int* outcome) {
  result<int> r = co_await with_timeout(*ex, 20s, five_factory{ex});
  *outcome = outcome_of(r ? std::error_code{} : r.error());
}

}  // namespace

// ---------------------------------------------------------------------------
// F3: with_timeout documents "If the executor stops (stop()) before either
// finishes, the result is ECANCELED". stop() cancels the work's operations
// and the timer alike; the work, submitted first, usually resumes first and
// wins, and a task that does not turn the cancellation into its result
// (task<void>, or a task<int> that returns anyway) made with_timeout report
// success (or 5) for a call the executor's stop cut short. Fixed: the work's
// driver notes whether the executor was already stopping when the work won;
// then the result is ECANCELED (an exception is still rethrown).
TEST_CASE("review18 F3: with_timeout ended by executor::stop() reports ECANCELED, whatever the task returns") {
  testing::on_each_backend([](backend_kind k) {
    SUBCASE("task<void>") {
      executor ex(on(k));
      int outcome = -1;
      ex.spawn(timeout_void_outcome(&ex, &outcome));
      turns(ex, 3);
      REQUIRE(outcome == -1);
      ex.stop();
      turns(ex, 10);
      CHECK(outcome == 2);
    }
    SUBCASE("task<int>") {
      executor ex(on(k));
      int outcome = -1;
      ex.spawn(timeout_int_outcome(&ex, &outcome));
      turns(ex, 3);
      REQUIRE(outcome == -1);
      ex.stop();
      turns(ex, 10);
      CHECK(outcome == 2);
    }
  });
}

// ---------------------------------------------------------------------------
// Pins: interleavings checked and found sound.

namespace {

struct str_probe {
  bool done = false;
  std::string value;
  std::error_code ec;
};

task<void> receive_into(channel<std::string>* ch, str_probe* p) {
  result<std::string> r = co_await ch->receive();
  p->done = true;
  if (r) p->value = std::move(*r);
  else p->ec = r.error();
}

task<void> send_from(channel<std::string>* ch, std::string v, str_probe* p) {
  auto op = ch->send(std::move(v));
  result<void> r = co_await op;
  p->done = true;
  if (!r) p->ec = r.error();
}

// Never resumed: only the executor's teardown ends it (destroys its frame).
struct forever {
  bool await_ready() const noexcept { return false; }
  void await_suspend(std::coroutine_handle<>) const noexcept {}
  void await_resume() const noexcept {}
};

struct on_destroy {
  int* n;
  ~on_destroy() { ++*n; }
};

task<int> stuck(int* destroyed, std::stop_token) {
  on_destroy d{destroyed};
  co_await forever{};
  co_return 1;
}
struct stuck_factory {
  int* destroyed;
  task<int> operator()(std::stop_token st) const { return stuck(destroyed, st); }
};
task<void> stuck_void(int* destroyed) {
  on_destroy d{destroyed};
  co_await forever{};
}

task<void> with_timeout_stuck(executor* ex, int* destroyed) {
  on_destroy d{destroyed};
  result<int> r = co_await with_timeout(*ex, 10s, stuck_factory{destroyed});
  (void)r;
}
task<void> when_any_stuck(executor* ex, int* destroyed) {
  on_destroy d{destroyed};
  auto op = when_any(stuck_factory{destroyed}, stuck_factory{destroyed});
  auto r = co_await std::move(op);
  (void)r;
  (void)ex;
}
task<void> group_of_stuck(executor* ex, int* destroyed) {
  on_destroy d{destroyed};
  task_group g(*ex);
  g.spawn(stuck_void(destroyed));
  g.spawn(stuck_void(destroyed));
  co_await g.join();
}

// Completes without suspending; throws when told to.
task<int> at_once(int v, bool do_throw, std::stop_token) {
  if (do_throw) throw std::runtime_error("child " + std::to_string(v));
  co_return v;
}
struct at_once_factory {
  int v;
  bool do_throw;
  task<int> operator()(std::stop_token st) const { return at_once(v, do_throw, st); }
};
task<void> when_any_at_once(int* index, std::string* caught) {
  try {
    auto op = when_any(at_once_factory{0, true}, at_once_factory{1, true});
    auto r = co_await std::move(op);
    *index = static_cast<int>(r.first);
  } catch (const std::runtime_error& e) {
    *caught = e.what();
  }
}

task<void> throw_after(executor* ex, std::chrono::milliseconds d, int v) {
  result<void> r = co_await sleep_for(*ex, d);
  (void)r;
  throw std::runtime_error("child " + std::to_string(v));
}
task<void> join_twice(executor* ex, std::vector<std::string>* seen) {
  task_group g(*ex);
  g.spawn(throw_after(ex, 1ms, 1));
  g.spawn(throw_after(ex, 20ms, 2));
  for (int i = 0; i < 2; ++i) {
    try {
      co_await g.join();
      seen->push_back("ok");
    } catch (const std::runtime_error& e) {
      seen->push_back(e.what());
    }
  }
}

task<int> zero_sleep(executor* ex, std::stop_token st) {
  result<void> r = co_await sleep_for(*ex, 0ns, &st);
  co_return r ? 1 : 2;
}
struct zero_sleep_factory {
  executor* ex;
  task<int> operator()(std::stop_token st) const { return zero_sleep(ex, st); }
};
task<void> timeout_zero_both(executor* ex, int* outcome) {
  result<int> r = co_await with_timeout(*ex, 0ns, zero_sleep_factory{ex});
  *outcome = r ? *r : 10 + outcome_of(r.error());
}

}  // namespace

TEST_CASE("review18 P1: a channel destroyed with a receiver already handed its element, others waiting") {
  testing::on_each_backend([](backend_kind k) {
    executor ex(on(k));
    auto rx = std::make_unique<channel<std::string>>(ex, 1);
    auto tx = std::make_unique<channel<std::string>>(ex, 1);
    str_probe r1, r2, s1;
    ex.spawn(receive_into(rx.get(), &r1));
    ex.spawn(receive_into(rx.get(), &r2));
    REQUIRE(tx->try_send(std::string(64, 'b')));  // full
    ex.spawn(send_from(tx.get(), std::string(64, 'c'), &s1));
    turns(ex, 3);
    REQUIRE(rx->waiting_receivers() == 2);
    REQUIRE(tx->waiting_senders() == 1);
    REQUIRE(rx->try_send(std::string(64, 'a')));  // handed to r1, which is posted
    rx.reset();
    tx.reset();
    turns(ex, 3);
    CHECK(r1.done);
    CHECK(r1.value == std::string(64, 'a'));
    CHECK(r2.done);
    CHECK(r2.ec == std::errc::operation_canceled);
    CHECK(s1.done);
    CHECK(s1.ec == std::errc::operation_canceled);
  });
}

TEST_CASE("review18 P2: with_timeout whose work and timer complete in the same turn: one outcome, nothing left") {
  testing::on_each_backend([](backend_kind k) {
    executor ex(on(k));
    for (int i = 0; i < 20; ++i) {
      int outcome = -1;
      ex.spawn(timeout_zero_both(&ex, &outcome));
      for (int j = 0; j < 50 && outcome == -1; ++j) ex.run_once(true);
      CHECK((outcome == 1 || outcome == 14));  // the work's value, or ETIMEDOUT
      for (int j = 0; j < 50 && ex.inflight() > 0; ++j) ex.run_once(true);
      CHECK(ex.inflight() == 0);
      CHECK(ex.live_tasks() == 0);
    }
  });
}

TEST_CASE("review18 P3: when_any whose tasks all finish while it starts them: the first wins, its exception once") {
  int index = -1;
  std::string caught;
  executor ex;
  ex.run(when_any_at_once(&index, &caught));
  CHECK(index == -1);
  CHECK(caught == "child 0");  // the loser's is discarded
}

TEST_CASE("review18 P4: task_group: two children throw; join rethrows the first, once") {
  testing::on_each_backend([](backend_kind k) {
    executor ex(on(k));
    std::vector<std::string> seen;
    ex.run(join_twice(&ex, &seen));
    CHECK(seen == std::vector<std::string>{"child 1", "ok"});
  });
}

TEST_CASE("review18 P5: the executor destroyed under with_timeout, when_any and a task_group whose tasks never resume") {
  testing::on_each_backend([](backend_kind k) {
    int destroyed = 0;
    {
      executor ex(on(k));
      ex.spawn(with_timeout_stuck(&ex, &destroyed));
      ex.spawn(when_any_stuck(&ex, &destroyed));
      ex.spawn(group_of_stuck(&ex, &destroyed));
      turns(ex, 5);
      CHECK(destroyed == 0);
    }
    CHECK(destroyed == 8);  // 3 owners; 1 + 2 + 2 tasks
  });
}

namespace {

// Holds the owner's mutex and never resumes: its guard unlocks the mutex
// when the executor's teardown destroys its frame.
task<void> hold_forever(mutex* m, int* destroyed) {
  on_destroy d{destroyed};
  auto op = m->scoped_lock();
  result<mutex::guard> g = co_await op;
  REQUIRE(g);
  co_await forever{};
}
task<void> lock_once(mutex* m, int* destroyed) {
  on_destroy d{destroyed};
  auto op = m->scoped_lock();
  result<mutex::guard> g = co_await op;
  (void)g;
}
task<void> owner_of_mutex(executor* ex, int* destroyed) {
  on_destroy d{destroyed};
  mutex m(*ex);  // declared before the group: outlives it
  task_group g(*ex);
  g.spawn(hold_forever(&m, destroyed));
  g.spawn(lock_once(&m, destroyed));  // waits on m: ECANCELED by the teardown's stop()
  co_await g.join();
}

}  // namespace

// The executor destroys what never resumes newest first, so a group's
// children (spawned after their owner started) go before the owner's frame:
// a child's guard on a mutex of the owner unlocks a mutex that still exists.
TEST_CASE("review18 P6: teardown with a child holding a guard on its owner's mutex: the children go first") {
  testing::on_each_backend([](backend_kind k) {
    int destroyed = 0;
    {
      executor ex(on(k));
      ex.spawn(owner_of_mutex(&ex, &destroyed));
      turns(ex, 5);
      CHECK(destroyed == 0);
    }
    CHECK(destroyed == 3);
  });
}
