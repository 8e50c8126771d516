// resume_later: a wake-up that cannot fail. A coroutine woken by an object
// (an event, a send queue) is posted to its executor's ready queue; posting
// allocates when the queue grows a block, and a bad_alloc there lost the
// wake-up (the waiter was already taken off its object's list) or, in a
// noexcept path, was std::terminate (review13 F12, F13). This node, in the
// waiter's frame next to its handle, takes the other way then: the
// executor's inbox (detail/deferred_call.hpp), which is intrusive and never
// fails; the loop's next turn resumes the coroutine from there, as an I/O
// completion resumes its waiter. The node withdraws itself when its frame
// goes first (executor teardown).
#pragma once

#include <ringframe/detail/deferred_call.hpp>
#include <ringframe/executor.hpp>

#include <coroutine>
#include <utility>

namespace ringframe::detail {

struct resume_later : deferred_call {
  resume_later() noexcept : deferred_call(&run) {}
  ~resume_later() {
    if (ex_) ex_->withdraw(this);
  }

  // Post `h` to `ex`'s ready queue or, when that throws, queue this node.
  void wake(executor& ex, std::coroutine_handle<> h) noexcept {
    try {
      ex.post(h);
    } catch (...) {
      h_ = h;
      ex_ = &ex;
      ex.defer(this);
    }
  }

 private:
  static void run(deferred_call* c, bool run) {
    auto* self = static_cast<resume_later*>(c);
    self->ex_ = nullptr;
    if (run) self->h_.resume();  // (may free *self)
  }

  std::coroutine_handle<> h_;
  executor* ex_ = nullptr;  // set while it may be queued
};

}  // namespace ringframe::detail
