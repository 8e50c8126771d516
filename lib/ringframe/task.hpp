// task<T>: a lazy coroutine. Nothing runs until it is awaited (or handed to
// executor::run / executor::spawn); when it finishes it resumes its awaiter by
// symmetric transfer, so a chain of a million nested awaits uses no stack.
// Its value, or the exception it threw, goes to the awaiter. Destroying a task
// that never started destroys its frame and the parameters in it: no leak.
#pragma once

#include <coroutine>
#include <exception>
#include <utility>
#include <variant>

namespace ringframe {

template <class T = void>
class task;

namespace detail {

template <class T>
struct task_result_store {
  std::variant<std::monostate, T, std::exception_ptr> slot;
  template <class U>
  void return_value(U&& v) { slot.template emplace<1>(std::forward<U>(v)); }
  void unhandled_exception() noexcept { slot.template emplace<2>(std::current_exception()); }
  T take() {
    if (slot.index() == 2) std::rethrow_exception(std::get<2>(slot));
    return std::get<1>(std::move(slot));
  }
};

template <>
struct task_result_store<void> {
  std::exception_ptr error;
  void return_void() noexcept {}
  void unhandled_exception() noexcept { error = std::current_exception(); }
  void take() {
    if (error) std::rethrow_exception(error);
  }
};

}  // namespace detail

template <class T>
class [[nodiscard]] task {
 public:
  struct promise_type : detail::task_result_store<T> {
    std::coroutine_handle<> continuation = std::noop_coroutine();

    task get_return_object() noexcept {
      return task(std::coroutine_handle<promise_type>::from_promise(*this));
    }
    std::suspend_always initial_suspend() noexcept { return {}; }

    struct final_awaiter {
      bool await_ready() noexcept { return false; }
      std::coroutine_handle<> await_suspend(std::coroutine_handle<promise_type> h) noexcept {
        return h.promise().continuation;
      }
      void await_resume() noexcept {}
    };
    final_awaiter final_suspend() noexcept { return {}; }
  };

  using handle_type = std::coroutine_handle<promise_type>;

  task() noexcept = default;
  explicit task(handle_type h) noexcept : h_(h) {}
  task(task&& o) noexcept : h_(std::exchange(o.h_, {})) {}
  task& operator=(task&& o) noexcept {
    if (this != &o) {
      reset();
      h_ = std::exchange(o.h_, {});
    }
    return *this;
  }
  task(const task&) = delete;
  task& operator=(const task&) = delete;
  ~task() { reset(); }

  bool valid() const noexcept { return bool(h_); }
  bool done() const noexcept { return h_ && h_.done(); }

  struct awaiter {
    handle_type h;
    bool await_ready() noexcept { return false; }
    std::coroutine_handle<> await_suspend(std::coroutine_handle<> awaiting) noexcept {
      h.promise().continuation = awaiting;
      return h;
    }
    T await_resume() { return h.promise().take(); }
  };
  // Awaiting a task starts it; the task object must outlive the await, which
  // it does when awaited as `co_await f(...)` or `co_await std::move(t)`.
  awaiter operator co_await() && noexcept { return awaiter{h_}; }
  awaiter operator co_await() & noexcept { return awaiter{h_}; }

  // For executors: start (or resume) the frame, read the outcome when done().
  handle_type handle() const noexcept { return h_; }
  T take_result() { return h_.promise().take(); }
  // Gives up the frame without destroying it (its owner is now the caller,
  // or nobody: executor::run leaks it rather than free it under the kernel).
  handle_type release() noexcept { return std::exchange(h_, {}); }

 private:
  void reset() noexcept {
    if (h_) h_.destroy();
    h_ = {};
  }
  handle_type h_;
};

}  // namespace ringframe
