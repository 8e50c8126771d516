// detached: a coroutine the executor owns from its start, with no task
// around it. executor::spawn(task) wraps a task in one; a coroutine that runs
// for as long as something lives (the server's one per connection) can be
// one itself and spare the wrapper's frame (an idle connection's memory is
// mostly frames). Its first parameter must be the executor:
//
//   detail::detached serve_one(executor* ex, ...);  ex->spawn(serve_one(ex, ...));
//
// An exception escaping it is lost: catch everything inside.
#pragma once

#include <coroutine>
#include <exception>

namespace ringframe {

class executor;

namespace detail {

// Linked into its executor's list so that teardown can find (and, as a last
// resort, destroy) what still runs.
struct detached_promise {
  executor* ex;
  detached_promise* prev = nullptr;
  detached_promise* next = nullptr;

  template <class... Rest>
  explicit detached_promise(executor* e, Rest&...) noexcept : ex(e) {
    attach();
  }
  ~detached_promise() { detach(); }
  detached_promise(const detached_promise&) = delete;
  detached_promise& operator=(const detached_promise&) = delete;

  std::coroutine_handle<detached_promise> handle() noexcept {
    return std::coroutine_handle<detached_promise>::from_promise(*this);
  }
  struct detached get_return_object() noexcept;
  std::suspend_always initial_suspend() noexcept { return {}; }
  std::suspend_never final_suspend() noexcept { return {}; }
  void return_void() noexcept {}
  void unhandled_exception() noexcept {}

 private:
  void attach() noexcept;  // executor.cpp: the list and the live count
  void detach() noexcept;
};

struct detached {
  using promise_type = detached_promise;
  std::coroutine_handle<detached_promise> h;
};

inline detached detached_promise::get_return_object() noexcept { return detached{handle()}; }

}  // namespace detail
}  // namespace ringframe
