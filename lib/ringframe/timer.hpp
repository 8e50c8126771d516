// sleep_for: a coroutine pause backed by the backend's timeout (io_uring:
// IORING_OP_TIMEOUT; epoll: its timer queue; no timer thread, no timerfd).
// Ends with success when the time is up, ECANCELED when cancelled.
#pragma once

#include <ringframe/operation.hpp>
#include <ringframe/result.hpp>

#include <chrono>

namespace ringframe {

namespace detail {
class sleep_op : public operation<sleep_op> {
 public:
  sleep_op(executor& ex, std::chrono::nanoseconds d, const std::stop_token* stop)
      : operation(ex, op_options{std::chrono::nanoseconds{0}, stop}) {
    if (d.count() < 0) d = {};
    dur_.tv_sec = d.count() / 1000000000;
    dur_.tv_nsec = d.count() % 1000000000;
  }
  void prepare(io_request& r) {
    r.op = io_op::timeout;
    r.timeout = &dur_;
  }
  bool on_complete() { return false; }
  result<void> await_resume() {
    if (res_ == -ETIME || res_ == 0) return {};
    return errno_code(-res_);
  }

 private:
  kernel_timespec dur_{};
};
}  // namespace detail

[[nodiscard]] inline detail::sleep_op sleep_for(executor& ex, std::chrono::nanoseconds d,
                                                const std::stop_token* stop = nullptr) {
  return {ex, d, stop};
}

}  // namespace ringframe
