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
#include <stdexcept>
#include <stop_token>
#include <string>
#include <vector>

using namespace ringframe;
using namespace std::chrono_literals;
using testing::on;

namespace {

void turns(executor& ex, int n) {
  for (int i = 0; i < n; ++i) ex.run_once(false);
}

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
