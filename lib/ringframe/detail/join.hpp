// join: what when_all, when_any and with_timeout share. A set of child tasks
// is started from the awaiting coroutine, each through a small driver
// coroutine that is told when its child finishes; the last driver to finish
// resumes the awaiter (symmetric transfer). Everything lives in the
// combinator's own coroutine frame: the children (moved into it as
// parameters), the drivers, the join_state. So when the combinator's
// co_await resumes, every child frame has finished, and if the combinator is
// destroyed while suspended (executor teardown) the drivers and then the
// children are destroyed with it.
//
// One thread: the children must finish on the thread (executor) of the
// awaiter. They may await anything that resumes them there (sockets,
// sleep_for, tasks); not spawn_on to another executor.
#pragma once

#include <ringframe/task.hpp>

#include <coroutine>
#include <cstddef>
#include <exception>
#include <stop_token>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

namespace ringframe::detail {

// The value a child contributes: T, or std::monostate for task<void>.
template <class T>
using join_value_t = std::conditional_t<std::is_void_v<T>, std::monostate, T>;

inline constexpr std::size_t no_index = static_cast<std::size_t>(-1);

struct join_state {
  std::coroutine_handle<> parent;
  std::size_t remaining = 0;
  // First child to finish (when_any), or first to finish with an exception
  // (when_all).
  std::size_t first = no_index;
  std::exception_ptr first_error;
  bool first_only_errors = false;  // when_all: `first` counts only failures
  std::stop_source* stop = nullptr;  // when_any: asked to stop at the first finish

  void child_done(std::size_t index, std::exception_ptr error) noexcept {
    if (first != no_index) return;
    if (first_only_errors && !error) return;
    first = index;
    first_error = std::move(error);
    if (stop) stop->request_stop();  // runs the losers' stop callbacks (cancellations)
  }
};

struct join_promise;

struct join_driver {
  using promise_type = join_promise;
  std::coroutine_handle<join_promise> h;

  join_driver() noexcept = default;
  explicit join_driver(std::coroutine_handle<join_promise> hh) noexcept : h(hh) {}
  join_driver(join_driver&& o) noexcept : h(std::exchange(o.h, {})) {}
  join_driver& operator=(join_driver&& o) noexcept {
    if (this != &o) {
      if (h) h.destroy();
      h = std::exchange(o.h, {});
    }
    return *this;
  }
  join_driver(const join_driver&) = delete;
  join_driver& operator=(const join_driver&) = delete;
  ~join_driver() {
    if (h) h.destroy();
  }
};

struct join_promise {
  join_state* st;

  template <class Task, class... Rest>
  join_promise(Task*, join_state* s, Rest&...) noexcept : st(s) {}

  join_driver get_return_object() noexcept {
    return join_driver(std::coroutine_handle<join_promise>::from_promise(*this));
  }
  std::suspend_always initial_suspend() noexcept { return {}; }
  struct final_awaiter {
    bool await_ready() noexcept { return false; }
    std::coroutine_handle<> await_suspend(std::coroutine_handle<join_promise> me) noexcept {
      join_state* s = me.promise().st;
      if (--s->remaining == 0) return s->parent;
      return std::noop_coroutine();
    }
    void await_resume() noexcept {}
  };
  final_awaiter final_suspend() noexcept { return {}; }
  void return_void() noexcept {}
  void unhandled_exception() noexcept { std::terminate(); }  // the body cannot throw
};

// Start a task and come back when it has finished, leaving its value or
// exception in its frame (read later with take_result()).
template <class T>
struct start_child {
  typename task<T>::handle_type h;
  bool await_ready() noexcept { return false; }
  std::coroutine_handle<> await_suspend(std::coroutine_handle<> me) noexcept {
    h.promise().continuation = me;
    return h;
  }
  void await_resume() noexcept {}
};

template <class T>
std::exception_ptr error_of(task<T>& t) noexcept {
  auto& p = t.handle().promise();
  if constexpr (std::is_void_v<T>) {
    return p.error;
  } else {
    if (p.slot.index() == 2) return std::get<2>(p.slot);
    return nullptr;
  }
}

// The driver of one child. Parameters plain and by value. Every coroutine
// template in these headers is `static`: an instantiation with external
// linkage is a comdat, which clang 14 with sanitizers cannot emit ("Cannot
// represent a difference across sections"); internal linkage gives each
// translation unit its own copy.
template <class T>
static join_driver drive(task<T>* t, join_state* st, std::size_t index) {
  start_child<T> start{t->handle()};
  co_await start;
  st->child_done(index, error_of(*t));
}

// One driver per task of a vector (started by join_awaiter).
template <class T>
std::vector<join_driver> drivers_for(std::vector<task<T>>& ts, join_state* st) {
  std::vector<join_driver> drivers;
  drivers.reserve(ts.size());
  for (std::size_t i = 0; i < ts.size(); ++i) drivers.push_back(drive<T>(&ts[i], st, i));
  return drivers;
}

// Awaited by the combinator: start every driver, then wait for the last.
struct join_awaiter {
  join_state* st;
  join_driver* drivers;
  std::size_t n;

  bool await_ready() noexcept { return n == 0; }
  bool await_suspend(std::coroutine_handle<> parent) noexcept {
    st->parent = parent;
    st->remaining = n + 1;  // +1: none may resume the parent while we start them
    for (std::size_t i = 0; i < n; ++i) drivers[i].h.resume();
    return --st->remaining != 0;  // all finished inline: do not suspend
  }
  void await_resume() noexcept {}
};

// The value of a finished child (after its error has been checked).
template <class T>
join_value_t<T> take_value(task<T>& t) {
  if constexpr (std::is_void_v<T>) {
    t.take_result();
    return std::monostate{};
  } else {
    return t.take_result();
  }
}

// task<T> made by a factory called with a stop token.
template <class F>
using factory_task_t = std::invoke_result_t<F&, std::stop_token>;

template <class Task>
struct task_value;
template <class T>
struct task_value<task<T>> {
  using type = T;
};
template <class F>
using factory_value_t = typename task_value<factory_task_t<F>>::type;

}  // namespace ringframe::detail
