// periodic_timer: wake a coroutine every `period`, on a fixed schedule.
//
//   periodic_timer t(ex, 1s);
//   while (co_await t.next()) print_counters();   // ends with ECANCELED on stop
//
// Ticks are measured from the timer's start, not from each wake-up, so the
// work done between ticks does not make the schedule drift. A coroutine that
// comes back after one or more ticks have passed is not woken once per tick
// it missed: next() returns at once for the tick it is late for, moves the
// schedule on to the next one still ahead, and counts the ones it skipped
// (missed()). Each wait is a sleep_for (timer.hpp) on the executor's backend,
// cancelled by `stop` (ECANCELED) like any operation.
#pragma once

#include <ringframe/detail/saturating_time.hpp>
#include <ringframe/executor.hpp>
#include <ringframe/timer.hpp>

#include <chrono>
#include <cstdint>
#include <stdexcept>
#include <stop_token>

namespace ringframe {

class periodic_timer {
 public:
  // `stop` (optional) must outlive the timer. Throws std::invalid_argument
  // for a period that is not positive.
  periodic_timer(executor& ex, std::chrono::nanoseconds period, const std::stop_token* stop = nullptr)
      : ex_(ex), period_(period), stop_(stop), next_(detail::saturating_add(std::chrono::steady_clock::now(), period)) {
    if (period.count() <= 0) throw std::invalid_argument("ringframe::periodic_timer: the period must be positive");
  }

  // Wait for the next tick: result<void> when it comes, ECANCELED when stopped.
  [[nodiscard]] detail::sleep_op next() {
    const auto now = std::chrono::steady_clock::now();
    const auto due = next_;
    if (due <= now) {
      // Late: this tick is due now; the ones after it that have passed too
      // are skipped, and the schedule goes on from the first still ahead.
      const auto behind = (now - due) / period_;
      missed_ += static_cast<std::uint64_t>(behind);
      next_ = detail::saturating_add(due, (behind + 1) * period_);
    } else {
      next_ = detail::saturating_add(due, period_);
    }
    ++ticks_;
    return sleep_for(ex_, due > now ? due - now : std::chrono::nanoseconds{0}, stop_);
  }

  std::chrono::nanoseconds period() const noexcept { return period_; }
  std::uint64_t ticks() const noexcept { return ticks_; }    // next() calls so far
  std::uint64_t missed() const noexcept { return missed_; }  // ticks skipped because the waiter was late

 private:
  executor& ex_;
  std::chrono::nanoseconds period_;
  const std::stop_token* stop_;
  std::chrono::steady_clock::time_point next_;
  std::uint64_t ticks_ = 0;
  std::uint64_t missed_ = 0;
};

}  // namespace ringframe
