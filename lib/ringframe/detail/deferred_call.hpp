// deferred_call: a request to run a function on an executor's own thread,
// made from any thread (executor::defer). It is intrusive: the node lives in
// the object it concerns (an operation, a connection), so queueing it never
// allocates and never fails, and the object withdraws it before it goes away
// (executor::withdraw), so a queued call never reaches freed memory.
//
// Used for what must not run on the calling thread: a stop callback fired by
// request_stop() on another thread (the submission queue belongs to the
// executor's thread), a task handed over by spawn_on, and a cancellation
// that found the submission queue full.
#pragma once

#include <atomic>

namespace ringframe::detail {

struct deferred_call {
  // `run` is false when the executor is going away and the call will never
  // run: free what the node owns, if anything.
  using function = void (*)(deferred_call* self, bool run);
  explicit deferred_call(function f) noexcept : fn(f) {}
  deferred_call(const deferred_call&) = delete;
  deferred_call& operator=(const deferred_call&) = delete;

  function fn;
  deferred_call* prev = nullptr;
  deferred_call* next = nullptr;
  // Written under the executor's inbox lock; atomic so that withdraw() can
  // skip the lock when the call is not queued (the common case, e.g. on
  // every send completion).
  std::atomic<bool> queued{false};
};

}  // namespace ringframe::detail
