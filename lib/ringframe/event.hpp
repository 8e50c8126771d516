// event: an async manual-reset event for one executor.
//
//   event ev(ex);
//   result<void> r = co_await ev.wait();          // or ev.wait(&token)
//   ev.set();                                      // elsewhere: wakes every waiter
//
// wait() completes at once while the event is set; otherwise it suspends
// until set(). set() wakes every waiter through executor::post (never inline:
// set() returns before any of them runs) and the event stays set until
// reset(). A waiter woken by set() succeeds even if reset() follows before it
// runs. A wait whose stop token is requested, or that is waiting when
// executor::stop() is called, ends with ECANCELED; so does every wait of an
// event destroyed while they wait. See detail/sync_wait.hpp for the threading
// rules (the executor's thread only) and the preconditions.
#pragma once

#include <ringframe/detail/sync_wait.hpp>
#include <ringframe/executor.hpp>
#include <ringframe/result.hpp>

#include <coroutine>
#include <stop_token>

namespace ringframe {

class event {
 public:
  explicit event(executor& ex, bool initially_set = false) noexcept : q_(ex), set_(initially_set) {}
  event(const event&) = delete;
  event& operator=(const event&) = delete;

  class [[nodiscard]] wait_op : public detail::sync_wait_base {
   public:
    wait_op(event& ev, const std::stop_token* stop) noexcept : sync_wait_base(ev.q_, stop), ev_(&ev) {}
    bool await_ready() noexcept { return cancelled_now() || ev_->set_; }
    void await_suspend(std::coroutine_handle<> h) { enqueue(h); }
    result<void> await_resume() noexcept {
      finish();
      return result<void>(ec);
    }

   private:
    event* ev_;
  };

  wait_op wait(const std::stop_token* stop = nullptr) noexcept { return wait_op(*this, stop); }

  void set() {
    set_ = true;
    q_.wake_all({});
  }
  void reset() noexcept { set_ = false; }
  bool is_set() const noexcept { return set_; }
  // Coroutines waiting now.
  std::size_t waiters() const noexcept { return q_.size(); }

 private:
  detail::wait_queue q_;
  bool set_;
};

}  // namespace ringframe
