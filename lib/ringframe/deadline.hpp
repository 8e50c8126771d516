// deadline: a coarse timer checked by the executor's loop, for timeouts that
// are armed and disarmed far more often than they fire. A connection's idle
// timeout is re-armed for every request; as a linked timeout that is an extra
// SQE, CQE and kernel timer per message (about 250 ns at depth 1, measured in
// bench/RESULTS.md), here it is a few pointer writes and no system call.
//
// How: deadlines of one duration expire in the order they were armed, so the
// executor keeps one FIFO list per duration (a server has two or three) and
// sleeps until the earliest head. Arming, re-arming and cancelling are O(1).
// The clock is the loop's (read once per iteration, as libuv does), so a
// deadline fires within about one loop iteration of its exact time.
// Operations that need an exact kernel deadline use op_options::timeout.
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
};
}  // namespace detail

class deadline {
 public:
  using callback = void (*)(deadline* self);

  explicit deadline(callback on_expiry) noexcept : on_expiry_(on_expiry) {}
  ~deadline() { cancel(); }
  deadline(const deadline&) = delete;
  deadline& operator=(const deadline&) = delete;

  // Fire `after` from now (the loop's clock; at least 1 ns); re-arms one that
  // is armed. The callback runs on the executor's thread, from its loop, once.
  void arm(executor& ex, std::chrono::nanoseconds after);
  void cancel() noexcept;
  bool armed() const noexcept { return list_ != nullptr; }
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
