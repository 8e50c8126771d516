// deadline: a coarse timer checked by the executor's loop, for timeouts that
// are armed and disarmed far more often than they fire. A connection's idle
// timeout is re-armed for every request; as a linked timeout that is an extra
// SQE, CQE and kernel timer per message (about 250 ns at depth 1, measured in
// bench/RESULTS.md), here it is a few pointer writes and no system call.
//
// How: deadlines of one duration expire in the order they were armed, so the
// executor keeps one FIFO list per duration (a server has two or three) and
// sleeps until the earliest head. Arming, re-arming and cancelling are O(1).
//
// When: a deadline is measured from the end of the loop turn that armed it.
// Arming reads no clock (a clock read costs 100-140 ns on a VM, and a
// connection arms two deadlines per message); before the loop next checks
// deadlines or goes to sleep it reads the clock once and stamps every
// deadline armed since. So a deadline never fires early, and fires late by
// at most what was left of that turn plus one turn. One armed outside the
// loop (before run(), or between two runs) is measured from the next turn. Operations that need an
// exact kernel deadline use op_options::timeout.
#pragma once

#include <chrono>

namespace ringframe {

class executor;
class deadline;

namespace detail {
struct deadline_list {
  std::chrono::nanoseconds duration{};
  deadline* head = nullptr;
  deadline* tail = nullptr;
  // The first deadline not yet stamped: from here to the tail, every one
  // was armed since the loop last stamped (deadline.hpp, "When").
  deadline* unstamped = nullptr;
};
}  // namespace detail

class deadline {
 public:
  using callback = void (*)(deadline* self);

  explicit deadline(callback on_expiry) noexcept : on_expiry_(on_expiry) {}
  ~deadline() { cancel(); }
  deadline(const deadline&) = delete;
  deadline& operator=(const deadline&) = delete;

  // Fire `after` from the end of this loop turn (at least 1 ns; see "When"
  // above); re-arms one that is armed. The callback runs on the executor's
  // thread, from its loop, once.
  void arm(executor& ex, std::chrono::nanoseconds after);
  void cancel() noexcept;
  bool armed() const noexcept { return list_ != nullptr; }
  // When it fires; time_point::max() until the loop has stamped it.
  std::chrono::steady_clock::time_point when() const noexcept { return when_; }

 private:
  friend class executor;
  deadline* prev_ = nullptr;
  deadline* next_ = nullptr;
  detail::deadline_list* list_ = nullptr;
  std::chrono::steady_clock::time_point when_{};
  callback on_expiry_;
};

}  // namespace ringframe
