// latency_histogram: durations counted in fixed power-of-two buckets, cheap
// enough to record for every message (a bit_width and two additions, no
// division, no search), and summable across threads.
//
// Bucket i (0 <= i < bounds) counts durations d with
// 2^(i + min_shift - 1) ns < d <= 2^(i + min_shift) ns (the first one also
// everything shorter): upper bounds 1.024 us, 2.048 us, ... 1.07 s; the
// last bucket counts everything longer. Counts are per bucket, not
// cumulative (the Prometheus exposition sums them).
#pragma once

#include <array>
#include <bit>
#include <cstddef>
#include <cstdint>

namespace ringframe {

struct latency_histogram {
  static constexpr unsigned min_shift = 10;  // the first upper bound: 2^10 ns
  static constexpr unsigned bounds = 21;     // the last one: 2^30 ns
  std::array<std::uint64_t, bounds + 1> counts{};
  std::uint64_t sum_ns = 0;

  void record(std::uint64_t ns) noexcept {
    const std::uint64_t below = ns ? ns - 1 : 0;
    unsigned b = static_cast<unsigned>(std::bit_width(below | ((std::uint64_t{1} << min_shift) - 1))) - min_shift;
    if (b > bounds) b = bounds;
    ++counts[b];
    sum_ns += ns;
  }
  // The upper bound of bucket i < bounds, in nanoseconds.
  static constexpr std::uint64_t upper_bound_ns(unsigned i) noexcept { return std::uint64_t{1} << (i + min_shift); }
  std::uint64_t count() const noexcept {
    std::uint64_t n = 0;
    for (std::uint64_t c : counts) n += c;
    return n;
  }
  latency_histogram& operator+=(const latency_histogram& o) noexcept {
    for (std::size_t i = 0; i < counts.size(); ++i) counts[i] += o.counts[i];
    sum_ns += o.sum_ns;
    return *this;
  }
};

}  // namespace ringframe
