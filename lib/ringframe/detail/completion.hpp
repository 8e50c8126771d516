// The completion key. Every SQE's user_data is the address of a `completion`
// living in the awaiting coroutine's frame (low bit set for the linked timeout
// that guards it); user_data 0 marks SQEs whose CQE nobody waits for
// (cancel requests). So a CQE finds its coroutine with no lookup table.
#pragma once

#include <cstdint>

namespace ringframe::detail {

struct completion {
  // `from_timer`: this CQE is the linked timeout's, not the operation's.
  using callback = void (*)(completion* self, int res, unsigned flags, bool from_timer);
  callback on_cqe;
};

inline constexpr std::uint64_t timer_tag = 1;
// Not counted in flight: the executor's own wake-up read (executor.cpp), which
// stays armed for the executor's whole life and must not keep run() from
// noticing that nothing else can ever complete.
inline constexpr std::uint64_t uncounted_tag = 2;
inline constexpr std::uint64_t tag_mask = 3;

// A completion whose owner went away while the kernel still held its
// request (a connection destroyed with a send or a multishot recv in
// flight): it lives on the heap, takes the remaining CQEs and frees itself
// with executor::bury(). The executor keeps every orphan in a list, so one
// whose last CQE never came is freed when the executor goes.
struct orphan : completion {
  using destroy_fn = void (*)(orphan* self);
  destroy_fn destroy = nullptr;
  orphan* prev = nullptr;
  orphan* next = nullptr;
};

inline std::uint64_t key_of(completion* c, bool timer = false) noexcept {
  return reinterpret_cast<std::uintptr_t>(c) | (timer ? timer_tag : 0);
}

}  // namespace ringframe::detail
