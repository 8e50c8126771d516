// Timeouts added to the clock without wrapping. A timeout of
// nanoseconds::max() (or seconds::max(), or anything past the clock's end)
// is a natural way to say "never": the sum stops at the clock's end instead
// of wrapping to a moment long past, which would end the wait at once.
#pragma once

#include <chrono>
#include <cstdint>
#include <limits>
#include <ratio>

namespace ringframe::detail {

using steady_time = std::chrono::steady_clock::time_point;

// t + d, or the clock's end (its start, for a d that far below zero).
inline steady_time saturating_add(steady_time t, std::chrono::nanoseconds d) noexcept {
  if (d.count() > 0 && t > steady_time::max() - d) return steady_time::max();
  if (d.count() < 0 && t < steady_time::min() - d) return steady_time::min();
  return t + std::chrono::duration_cast<steady_time::duration>(d);
}

// a + b in nanoseconds of CLOCK_MONOTONIC, stopping at the ends.
inline std::int64_t saturating_add(std::int64_t a, std::int64_t b) noexcept {
  std::int64_t r = 0;
  if (__builtin_add_overflow(a, b, &r))
    return b > 0 ? std::numeric_limits<std::int64_t>::max() : std::numeric_limits<std::int64_t>::min();
  return r;
}

// Any duration in nanoseconds; those beyond nanoseconds' range become its
// ends (a duration_cast would wrap seconds::max() to -1 s).
template <class Rep, class Period>
constexpr std::chrono::nanoseconds saturating_ns(std::chrono::duration<Rep, Period> d) noexcept {
  using std::chrono::nanoseconds;
  using D = std::chrono::duration<Rep, Period>;
  if constexpr (std::chrono::treat_as_floating_point_v<Rep> || std::ratio_greater_v<Period, std::nano>) {
    if (d >= std::chrono::duration_cast<D>(nanoseconds::max())) return nanoseconds::max();
    if (d <= std::chrono::duration_cast<D>(nanoseconds::min())) return nanoseconds::min();
  }
  return std::chrono::duration_cast<nanoseconds>(d);
}

}  // namespace ringframe::detail
