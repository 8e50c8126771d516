// with_timeout: a deadline around a whole task (any number of operations).
//
//   task<result<std::string>> fetch(socket* s, std::stop_token st);   // passes &st to its operations
//   result<std::string> r = co_await with_timeout(ex, 2s,
//       [&s](std::stop_token st) { return fetch(&s, st); });
//   if (r.error() == std::errc::timed_out) ...
//
// `make` is a factory like when_any's: called once, as make(std::stop_token),
// it returns the task<T>; it is a plain function or a lambda that is not
// itself a coroutine. The task and a timer (sleep_for, on the same stop
// source) start together. If the task finishes first, the timer is cancelled
// and awaited, and its value is returned; if the timer fires first, stop is
// requested (the task's operations end with ECANCELED), the task is awaited
// until it has finished, and ETIMEDOUT is returned. Nothing outlives the
// co_await.
//
// The result: result<U> for a task<result<U>> (its own errors pass through),
// result<void> for task<void>, result<T> otherwise. An exception thrown by
// the task is rethrown, unless the deadline fired first (then the task was
// cancelled and its outcome is discarded). A task<result<U>> that finishes
// with a value is never reported as timed out: when its operation completed
// in the turn the deadline fired (a channel element or a semaphore permit
// handed to it, a reply that came in), the stop reaches it too late and it
// returns the value, which with_timeout returns (the element or permit is
// the caller's, not lost). A task of another type cannot say whether it was
// cut short: after the deadline its value is discarded. If the executor
// stops (stop()) before either finishes, the result is ECANCELED, whichever
// then finishes first: a value the task returns after the stop is
// discarded (an exception it throws is still rethrown).
#pragma once

#include <ringframe/detail/join.hpp>
#include <ringframe/detail/saturating_time.hpp>
#include <ringframe/executor.hpp>
#include <ringframe/result.hpp>
#include <ringframe/task.hpp>
#include <ringframe/timer.hpp>

#include <cerrno>
#include <chrono>
#include <concepts>
#include <exception>
#include <stop_token>
#include <vector>

namespace ringframe {

namespace detail {

template <class T>
struct timeout_result {
  using type = result<T>;
};
template <class U>
struct timeout_result<result<U>> {
  using type = result<U>;
};
template <class T>
using timeout_result_t = typename timeout_result<T>::type;
// A task that reports its own errors (task<result<U>>) says whether it
// finished with a value or was cut short.
template <class T>
inline constexpr bool reports_errors_v = false;
template <class U>
inline constexpr bool reports_errors_v<result<U>> = true;

template <class = void>
static task<result<void>> deadline_timer(executor* ex, std::chrono::nanoseconds d, std::stop_token st) {
  result<void> r = co_await sleep_for(*ex, d, &st);
  co_return r;
}

// The work's driver: also notes whether the executor was already stopping
// when the work finished first (then the result is ECANCELED, review18 F3).
template <class T>
static join_driver drive_work(task<T>* t, join_state* st, executor* ex, bool* stopped_first) {
  start_child<T> start{t->handle()};
  co_await start;
  if (st->first == no_index) *stopped_first = ex->stopping();
  st->child_done(0, error_of(*t));
}

template <class F>
static task<timeout_result_t<factory_value_t<F>>> with_timeout_impl(executor* ex, std::chrono::nanoseconds d, F make) {
  using T = factory_value_t<F>;
  std::stop_source src;
  task<T> work = make(src.get_token());
  task<result<void>> timer = deadline_timer(ex, d, src.get_token());
  join_state st;
  st.stop = &src;
  std::vector<join_driver> drivers;
  drivers.reserve(2);
  bool stopped_first = false;
  drivers.push_back(drive_work<T>(&work, &st, ex, &stopped_first));
  drivers.push_back(drive<result<void>>(&timer, &st, 1));
  join_awaiter both{&st, drivers.data(), drivers.size()};
  co_await both;
  if (st.first == 1) {
    result<void> slept = timer.take_result();
    if (!slept) {  // the executor stopped
      // executor::stop() wakes a waiting task through the ready queue, after
      // the timer's cancellation is dispatched: the timer comes first then,
      // and an exception the task throws must not be lost (review51 F1).
      if (std::exception_ptr e = error_of(work)) std::rethrow_exception(e);
      co_return timeout_result_t<T>(slept.error());
    }
    // The deadline fired. A task whose operation had finished in the same
    // turn, before the stop could reach it (a channel element or a
    // semaphore permit handed to its waiter, a reply received), returns
    // with a value: that value is the caller's, not dropped as if the task
    // had been cut short (review51 F2: the element was gone from the
    // channel, and a permit for good).
    if constexpr (reports_errors_v<T>) {
      if (!error_of(work)) {
        T r = work.take_result();
        if (r) co_return r;
      }
    }
    co_return timeout_result_t<T>(errno_code(ETIMEDOUT));
  }
  if (st.first_error) std::rethrow_exception(st.first_error);
  if (stopped_first) co_return timeout_result_t<T>(errno_code(ECANCELED));  // its value is dropped
  if constexpr (std::is_void_v<T>) {
    work.take_result();
    co_return result<void>();
  } else {
    co_return timeout_result_t<T>(work.take_result());
  }
}

}  // namespace detail

template <class F, class Rep, class Period>
  requires std::invocable<F&, std::stop_token>
[[nodiscard]] static task<detail::timeout_result_t<detail::factory_value_t<F>>> with_timeout(
    executor& ex, std::chrono::duration<Rep, Period> d, F make) {
  return detail::with_timeout_impl<F>(&ex, detail::saturating_ns(d), std::move(make));
}

}  // namespace ringframe
