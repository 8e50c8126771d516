// Test helper: an allocator that can be told to fail, so that a test reaches
// a bad_alloc handler without exhausting memory, and a loop turn that may
// throw it. Used by test_review4.cpp, test_review12.cpp, test_review13.cpp
// and test_review17.cpp.
//
// This header holds the state and checked_malloc(); the replacement global
// operator new/delete that route every allocation through checked_malloc()
// are in failing_allocator.cpp, which tests/meson.build compiles into the
// executables of exactly those tests (a replacement function must be defined
// once per program and must not be inline, so it cannot live here). Without
// it nothing fails: the tests' "allocations_failed == 1" checks would say so.
//
// Every form goes through malloc/free, so that any new pairs with any delete
// (ASan checks the pairing).
//
// Two ways to fail:
//  - by size: `fail_allocation_of_size` arms a failure for an allocation of
//    exactly that size. `matching_allocations` counts the allocations of the
//    armed size; the first `allocations_to_pass` of them succeed (0: none),
//    the next one fails and disarms (the size goes back to 0); with
//    `count_only`, none fails (a dry run that counts them).
//  - by index while tracing: every allocation's size is recorded in order
//    (in a fixed array: recording allocates nothing), and the one at
//    `fail_at_index`, if any, fails.
// Every failure adds one to `allocations_failed`.
#pragma once

#include <ringframe/executor.hpp>

#include <array>
#include <atomic>
#include <cstddef>
#include <cstdlib>
#include <new>

namespace testing::failing_allocator {

inline std::atomic<std::size_t> fail_allocation_of_size{0};
inline std::atomic<int> allocations_to_pass{0};
inline std::atomic<int> matching_allocations{0};
inline std::atomic<bool> count_only{false};
inline std::atomic<int> allocations_failed{0};

inline std::atomic<bool> tracing{false};
inline std::atomic<int> traced_count{0};
inline std::atomic<int> fail_at_index{-1};
inline std::array<std::size_t, 1024> traced{};

inline void* checked_malloc(std::size_t n) {
  if (tracing.load()) {
    const int i = traced_count.fetch_add(1);
    if (i < static_cast<int>(traced.size())) traced[static_cast<std::size_t>(i)] = n;
    if (i == fail_at_index.load()) {
      allocations_failed.fetch_add(1);
      throw std::bad_alloc();
    }
  }
  std::size_t want = fail_allocation_of_size.load(std::memory_order_relaxed);
  if (want != 0 && n == want && matching_allocations.fetch_add(1) >= allocations_to_pass.load() && !count_only.load() &&
      fail_allocation_of_size.compare_exchange_strong(want, 0)) {
    allocations_failed.fetch_add(1);
    throw std::bad_alloc();
  }
  if (void* p = std::malloc(n ? n : 1)) return p;
  throw std::bad_alloc();
}

// Trace from now on, failing the allocation at `index` (-1: none).
inline void start_tracing(int index) {
  traced_count = 0;
  allocations_failed = 0;
  fail_at_index = index;
  tracing = true;
}
inline void stop_tracing() {
  tracing = false;
  fail_at_index = -1;
}

// One turn of `ex`'s loop. A bad_alloc out of it is allowed (the tests check
// that nothing was lost): true when one came out.
inline bool turn_allowing_bad_alloc(ringframe::executor& ex) {
  try {
    ex.run_once(false);
    return false;
  } catch (const std::bad_alloc&) {
    return true;
  }
}

}  // namespace testing::failing_allocator
