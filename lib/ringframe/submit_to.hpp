// submit_to: run a task on another executor (another thread) and get its
// result back on this one (seastar's smp::submit_to).
//
//   // on executor `here`, usually in another thread than `shard`:
//   result<std::size_t> n = co_await submit_to(here, shard,
//       [key](std::stop_token st) { return count_on_shard(key, st); });   // task<std::size_t>
//
// `make` is called on the target's thread, as make(std::stop_token), and the
// task it returns runs there, as a coroutine the target owns (it counts in
// target.live_tasks()); its value (or its exception) comes back through the
// caller's inbox and the awaiting coroutine resumes on its own executor,
// `here`. `make` is a factory like when_any's: a plain function or a lambda
// that is not itself a coroutine; it, what it captures and the task must not
// touch the caller's thread's objects (the value is moved across, nothing
// else). The factory and the task's value are destroyed on either thread.
//
// The result: result<U> for a task<result<U>> (its own errors pass through),
// result<void> for task<void>, result<T> otherwise; an exception thrown by
// the task (or the factory) is rethrown in the caller.
//
// Cancellation: when `stop` is requested (from any thread), or `here` is
// stopped (executor::stop), the request is carried to the target's thread
// and the task's stop token is requested there, so its operations end with
// ECANCELED (like when_any's losers); the caller resumes when the task has
// finished, with what it returned. If that happens before the task has
// started, it never starts and the result is ECANCELED.
//
// The target stopping or going away: a task that arrives at a target that
// is stopping (executor::stop) is not started, and the result is ECANCELED;
// one running when the target stops sees its operations cancelled and ends
// as it will. A task still in the target's inbox when the target is
// destroyed, or destroyed unfinished with it, also ends the call with
// ECANCELED. Nothing leaks either way (tests/test_task_group.cpp).
//
// Preconditions: `here` is the executor of the calling thread and outlives
// the co_await. The target is alive when submit_to is awaited and is not
// destroyed before the task has started or been dropped by its destructor
// (both are what a thread that runs its executor until told to stop does).
// While the caller waits, `here` holds a work_guard: its run() waits for the
// answer instead of reporting a deadlock.
#pragma once

#include <ringframe/detail/deferred_call.hpp>
#include <ringframe/detail/detached.hpp>
#include <ringframe/detail/join.hpp>
#include <ringframe/executor.hpp>
#include <ringframe/result.hpp>
#include <ringframe/task.hpp>

#include <atomic>
#include <cerrno>
#include <concepts>
#include <coroutine>
#include <exception>
#include <mutex>
#include <optional>
#include <stop_token>
#include <type_traits>
#include <utility>
#include <variant>

namespace ringframe {

namespace detail {

template <class T>
struct submit_result {
  using type = result<T>;
};
template <class U>
struct submit_result<result<U>> {
  using type = result<U>;
};
template <class T>
using submit_result_t = typename submit_result<T>::type;

// What both threads share, on the heap: either side may finish first. The
// lock orders the three events that race: the answer (the target marks
// `done` and defers `answer` to the caller), the caller going away (its
// frame destroyed: `caller_gone`, and `answer` withdrawn) and a cancellation
// (deferred to the target only while not `done`, when the target is known to
// be alive). Each side holds a reference, and a queued cancellation a third.
template <class F>
struct submission {
  using T = factory_value_t<F>;
  using R = submit_result_t<T>;

  submission(executor* h, executor* t, F f) : here(h), target(t), make(std::move(f)) {}

  executor* here;
  executor* target;
  F make;
  std::stop_source remote_stop;  // the task's; requested on the target's thread
  std::optional<R> value;        // the answer, or
  std::exception_ptr error;      // the exception
  std::coroutine_handle<> waiter;

  std::mutex lock;
  bool done = false;         // the answer is set (or deferred); the target is no longer needed
  bool caller_gone = false;  // the waiting frame was destroyed
  bool cancel_sent = false;
  std::atomic<int> refs{2};

  void release() noexcept {
    if (refs.fetch_sub(1, std::memory_order_acq_rel) == 1) delete this;
  }

  // The three calls between the threads (detail/deferred_call.hpp), each
  // pointing back here.
  struct call : deferred_call {
    call(submission* o, function f) noexcept : deferred_call(f), s(o) {}
    submission* s;
  };
  // On the target: start the task, unless it is too late.
  static void start_run(deferred_call* c, bool run);
  call start{this, &submission::start_run};
  // On the target: the caller asks for a stop.
  static void cancel_run(deferred_call* c, bool run) {
    submission* s = static_cast<call*>(c)->s;
    if (run) s->remote_stop.request_stop();
    s->release();
  }
  call cancel{this, &submission::cancel_run};
  // On the caller: the answer is in. Not run: `here` is being destroyed;
  // the waiting frame, destroyed with it, releases the caller's reference.
  // The waiter is resumed from the loop, like every wake-up; when the ready
  // queue cannot grow for it (bad_alloc), it is resumed here, from the
  // loop's completion dispatch as an I/O completion resumes its waiter:
  // this call is already out of the inbox, so a bad_alloc leaving it would
  // have left the caller waiting forever (review13 F10).
  static void answer_run(deferred_call* c, bool run) {
    if (run) {
      submission* s = static_cast<call*>(c)->s;
      try {
        s->here->post(s->waiter);
      } catch (...) {
        s->waiter.resume();  // frees *s (and so *c) when the caller is done with it
      }
    }
  }
  call answer{this, &submission::answer_run};

  // On the target (or in its destructor): the answer is set; hand it over.
  void deliver() noexcept {
    {
      std::lock_guard<std::mutex> g(lock);
      done = true;
      if (!caller_gone) here->defer(&answer);
    }
    release();  // the target's reference
  }
  void deliver_error(int e) noexcept {
    value.emplace(errno_code(e));
    deliver();
  }

  // Any thread (a stop callback) or the caller's: ask the target to stop the
  // task, unless the answer is already on its way.
  void forward_cancel() noexcept {
    std::lock_guard<std::mutex> g(lock);
    if (done || cancel_sent) return;
    cancel_sent = true;
    refs.fetch_add(1, std::memory_order_relaxed);
    target->defer(&cancel);
  }
};

// The task on the target. A frame destroyed unfinished (the target's
// teardown) still answers, through the guard's destructor.
template <class F>
struct answer_guard {
  submission<F>* s;
  ~answer_guard() {
    if (s) s->deliver_error(ECANCELED);
  }
};

template <class F>
static detached run_submitted(executor* /*read by the promise*/, submission<F>* s) {
  using T = typename submission<F>::T;
  answer_guard<F> guard{s};
  // Spawned by start_run, it runs a turn later: a cancellation queued behind
  // the start, or a stop of the target, may have come in between. Then it
  // never starts (the guard answers ECANCELED), as when start_run saw it.
  if (s->target->stopping() || s->remote_stop.stop_requested()) co_return;
  try {
    task<T> t = s->make(s->remote_stop.get_token());
    if constexpr (std::is_void_v<T>) {
      co_await std::move(t);
      s->value.emplace();
    } else {
      s->value.emplace(co_await std::move(t));
    }
  } catch (...) {
    s->error = std::current_exception();
  }
  guard.s = nullptr;
  s->deliver();
}

template <class F>
void submission<F>::start_run(deferred_call* c, bool run) {
  submission* s = static_cast<call*>(c)->s;
  // Not run: the target is being destroyed with the task still in its inbox.
  if (!run || s->target->stopping() || s->remote_stop.stop_requested()) return s->deliver_error(ECANCELED);
  try {
    s->target->spawn(run_submitted<F>(s->target, s));
  } catch (...) {  // no memory for the frame
    s->error = std::current_exception();
    s->deliver();
  }
}

// The caller's side, in the awaiting coroutine's frame.
template <class F>
class submit_awaiter : private stop_listener {
 public:
  using R = typename submission<F>::R;

  submit_awaiter(executor* here, executor* target, F make, std::stop_token stop)
      : s_(new submission<F>(here, target, std::move(make))), stop_(std::move(stop)) {
    fn = &submit_awaiter::on_executor_stop;
  }
  submit_awaiter(const submit_awaiter&) = delete;
  submit_awaiter& operator=(const submit_awaiter&) = delete;
  ~submit_awaiter() {
    if (!s_) return;
    cb_.reset();
    if (waiting_) {
      // Destroyed while waiting (the caller's executor is going away): no
      // answer may be delivered to this frame any more.
      s_->here->unlisten_stop(this);
      {
        std::lock_guard<std::mutex> g(s_->lock);
        s_->caller_gone = true;
        s_->here->withdraw(&s_->answer);
      }
      s_->forward_cancel();
    } else if (!started_) {
      s_->release();  // never sent: the target's reference too
    }
    s_->release();
  }

  bool await_ready() noexcept {
    if (s_->here->stopping() || stop_.stop_requested()) {
      early_ = true;
      return true;
    }
    return false;
  }
  void await_suspend(std::coroutine_handle<> h) {
    s_->waiter = h;
    waiting_ = true;
    started_ = true;
    guard_.emplace(*s_->here);
    s_->here->listen_stop(this);
    s_->target->defer(&s_->start);
    if (stop_.stop_possible()) cb_.emplace(stop_, canceller{s_});
  }
  R await_resume() {
    if (early_) return R(errno_code(ECANCELED));
    waiting_ = false;
    cb_.reset();
    guard_.reset();
    s_->here->unlisten_stop(this);
    // Taken out, so that the exception is freed on this thread (the target
    // may free the shared state): a count dropped to zero in libstdc++'s
    // uninstrumented code on the other thread is a race to ThreadSanitizer.
    if (s_->error) std::rethrow_exception(std::exchange(s_->error, nullptr));
    return std::move(*s_->value);
  }

 private:
  struct canceller {
    submission<F>* s;
    void operator()() noexcept { s->forward_cancel(); }
  };
  static void on_executor_stop(stop_listener* l) noexcept { static_cast<submit_awaiter*>(l)->s_->forward_cancel(); }

  submission<F>* s_;
  std::stop_token stop_;
  std::optional<std::stop_callback<canceller>> cb_;
  std::optional<executor::work_guard> guard_;
  bool waiting_ = false;
  bool started_ = false;
  bool early_ = false;
};

template <class F>
static task<typename submission<F>::R> submit_to_impl(executor* here, executor* target, F make, std::stop_token stop) {
  submit_awaiter<F> aw(here, target, std::move(make), std::move(stop));
  co_return co_await aw;
}

}  // namespace detail

template <class F>
  requires std::invocable<F&, std::stop_token> && requires { typename detail::factory_value_t<F>; }
[[nodiscard]] static task<typename detail::submission<F>::R> submit_to(executor& here, executor& target, F make,
                                                                       std::stop_token stop = {}) {
  return detail::submit_to_impl<F>(&here, &target, std::move(make), std::move(stop));
}

}  // namespace ringframe
