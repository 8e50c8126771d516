// task_group: structured concurrency. Coroutines spawned into a group are its
// children: they run concurrently on the group's executor, and the group is
// joined (`co_await group.join()`) before it goes out of scope, so no child
// outlives the group, nor what the group's owner keeps for them.
//
//   task<void> serve_pair(executor* ex, socket* a, socket* b) {
//     task_group g(*ex);
//     g.spawn([a, b](std::stop_token st) { return pump(a, b, st); });   // a factory: gets g's token
//     g.spawn(pump(b, a, g.get_stop_token()));                           // or a task
//     co_await g.join();   // both have finished; the first exception, if any, is rethrown
//   }
//
// Children start in spawn order, on the next loop turn (like executor::spawn).
// A child that throws asks the group to stop: every child's stop token (the
// group's, handed to factories and by get_stop_token()) is requested, so the
// others' operations end with ECANCELED; join() waits for all of them and
// then rethrows the first exception. request_stop() does the same without
// an exception. A child that ignores the token is not cut short: join()
// waits for it. After join() the group may be used again (its stop stays
// requested once requested).
//
// The rule for destruction (seastar's gate and folly's AsyncScope have the
// same one): a group must be joined before it is destroyed. A group destroyed
// while children still run is a bug that would let them run on in freed
// memory (the owner's frame), so it prints what happened and calls
// std::terminate() rather than continue. One exception: when the executor
// itself is being destroyed, it destroys every coroutine still suspended,
// children included, in no particular order; a group destroyed then lets go
// of its children and the executor destroys them (they are never resumed).
// So: declare the group in the coroutine that awaits its join() (or in an
// object that outlives that coroutine), and join before leaving, on every
// path (co_await is not allowed in a catch block: leave it first).
//
// join() takes no stop token (it must not return while children run): to
// make it return sooner, request_stop(). One coroutine joins at a time; a
// second concurrent join() throws std::logic_error (a joiner whose last child
// has finished no longer counts, even before it resumes: a join() made then
// waits, for the children spawned since). Spawn from the owner or
// from a child (a child's spawn keeps the group from emptying meanwhile):
// a child spawned from elsewhere after the last one finished, before the
// joiner has resumed, is not waited for by that join().
//
// Cost: a child spawned as a task<void> runs inside a small wrapper frame (a
// coroutine of the group's own kind); a coroutine written as a child itself
// (detail::group_child, below: the server's connections are) needs none. A
// group holds no allocation until a stop token is asked for (the stop state
// of its std::stop_source is made then), so an unused group costs 48 bytes.
//
// One executor, one thread: spawn, join and request_stop on the group's
// executor's thread. To run work on another executor, see submit_to.hpp.
#pragma once

#include <ringframe/detail/detached.hpp>
#include <ringframe/executor.hpp>
#include <ringframe/task.hpp>

#include <concepts>
#include <coroutine>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <stdexcept>
#include <stop_token>
#include <utility>

namespace ringframe {

class task_group;

namespace detail {

struct group_child_promise;

// A coroutine that is a child of a group itself. Its first parameter must be
// the group; the promise links it into the group and into the group
// executor's list of detached coroutines (for teardown):
//
//   detail::group_child serve_one(task_group* g, ...);
//   g.spawn(serve_one(&g, ...));
//
// An exception escaping it goes to the group (and stops it).
struct group_child {
  using promise_type = group_child_promise;
  std::coroutine_handle<group_child_promise> h;
};

struct group_child_promise : detached_promise {
  task_group* group;  // null once the group let go (executor teardown)
  group_child_promise* gprev = nullptr;
  group_child_promise* gnext = nullptr;

  template <class... Rest>
  explicit group_child_promise(task_group* g, Rest&...) noexcept;
  ~group_child_promise();
  group_child_promise(const group_child_promise&) = delete;
  group_child_promise& operator=(const group_child_promise&) = delete;

  group_child get_return_object() noexcept {
    return group_child{std::coroutine_handle<group_child_promise>::from_promise(*this)};
  }
  std::suspend_always initial_suspend() noexcept { return {}; }
  // The frame is destroyed at its final suspension, and the group told then.
  struct final_awaiter {
    bool await_ready() noexcept { return false; }
    std::coroutine_handle<> await_suspend(std::coroutine_handle<group_child_promise> h) noexcept;
    void await_resume() noexcept {}
  };
  final_awaiter final_suspend() noexcept { return {}; }
  void return_void() noexcept {}
  void unhandled_exception() noexcept;
};

}  // namespace detail

class task_group {
 public:
  explicit task_group(executor& ex) noexcept : ex_(&ex), src_(std::nostopstate) {}
  // A group whose stop is `shared`'s: stopping either stops both (a server
  // hands its own hard stop to the group of its connections).
  task_group(executor& ex, std::stop_source shared) noexcept : ex_(&ex), src_(std::move(shared)) {}
  task_group(const task_group&) = delete;
  task_group& operator=(const task_group&) = delete;
  // See "The rule for destruction" above.
  ~task_group() {
    if (live_ == 0) return;
    if (!executor::alive_here(ex_)) {
      // The executor is being destroyed and destroys these children itself.
      for (detail::group_child_promise* c = head_; c; c = c->gnext) c->group = nullptr;
      return;
    }
    std::fprintf(stderr,
                 "ringframe: a task_group was destroyed while %u of its children were still running; "
                 "co_await its join() before it goes out of scope (they would run on in freed memory)\n",
                 static_cast<unsigned>(live_));
    std::terminate();
  }

  // Start `t` as a child (on the next loop turn).
  void spawn(task<void> t);
  // Call make(get_stop_token()) and start the task it returns. `make` is a
  // plain function or a lambda that is not itself a coroutine (it calls one,
  // passing what it needs by value), as for when_any.
  template <class F>
    requires std::invocable<F&, std::stop_token> && std::same_as<std::invoke_result_t<F&, std::stop_token>, task<void>>
  void spawn(F make) {
    spawn(make(get_stop_token()));
  }
  // A coroutine that is a child itself (detail::group_child): no wrapper.
  // If it cannot be queued (bad_alloc), it is destroyed before it started:
  // it leaves the group at once rather than stay counted for good.
  void spawn(detail::group_child c) {
    try {
      ex_->post(c.h);
    } catch (...) {
      c.h.destroy();
      throw;
    }
  }

  // Wait until every child has finished; then rethrow the first exception a
  // child threw, if any (once: it is cleared).
  struct [[nodiscard]] join_op {
    task_group* g;
    std::coroutine_handle<> me{};
    bool await_ready() {
      if (g->joiner_) throw std::logic_error("ringframe::task_group: join() is already awaited by another coroutine");
      return g->live_ == 0;
    }
    void await_suspend(std::coroutine_handle<> h) noexcept { g->joiner_ = me = h; }
    void await_resume() {
      // finished() let this joiner go; another may have joined since, while
      // this one waited in the ready queue (review18 F2): leave it be.
      if (g->joiner_ == me) g->joiner_ = {};
      if (g->error_) std::rethrow_exception(std::exchange(g->error_, nullptr));
    }
  };
  join_op join() noexcept { return join_op{this}; }

  // Ask every child to stop (through the group's stop token). Children
  // spawned from now on get a token that is already stopped.
  void request_stop() noexcept {
    stop_wanted_ = true;
    if (src_.stop_possible()) src_.request_stop();
  }
  bool stop_requested() const noexcept { return stop_wanted_ || src_.stop_requested(); }
  // The token to pass to children's operations (made on first use).
  std::stop_token get_stop_token() {
    if (!src_.stop_possible()) {
      src_ = std::stop_source();
      if (stop_wanted_) src_.request_stop();
    }
    return src_.get_token();
  }

  // Children that have not finished (spawned ones not yet started included).
  std::size_t size() const noexcept { return live_; }
  bool empty() const noexcept { return live_ == 0; }
  executor& get_executor() const noexcept { return *ex_; }

 private:
  friend struct detail::group_child_promise;

  void link(detail::group_child_promise* c) noexcept {
    c->gprev = nullptr;
    c->gnext = head_;
    if (head_) head_->gprev = c;
    head_ = c;
    ++live_;
  }
  void unlink(detail::group_child_promise* c) noexcept {
    if (c->gprev) c->gprev->gnext = c->gnext;
    else head_ = c->gnext;
    if (c->gnext) c->gnext->gprev = c->gprev;
    c->gprev = c->gnext = nullptr;
    --live_;
  }
  // A child finished (its frame is about to go): the joiner, if this was the
  // last, is resumed from the ready queue, never inline. When the queue
  // cannot grow for it (bad_alloc; this is noexcept: it was std::terminate,
  // review13 F11), it is returned instead, and the child's final suspend
  // transfers to it.
  std::coroutine_handle<> finished(detail::group_child_promise* c) noexcept {
    unlink(c);
    if (live_ == 0 && joiner_) {
      std::coroutine_handle<> j = std::exchange(joiner_, {});
      try {
        ex_->post(j);
      } catch (...) {
        return j;
      }
    }
    return {};
  }
  void failed(std::exception_ptr e) noexcept {
    if (!error_) error_ = std::move(e);
    request_stop();
  }

  executor* ex_;
  detail::group_child_promise* head_ = nullptr;
  std::coroutine_handle<> joiner_;
  std::exception_ptr error_;
  std::stop_source src_;
  std::uint32_t live_ = 0;
  bool stop_wanted_ = false;
};

namespace detail {

template <class... Rest>
group_child_promise::group_child_promise(task_group* g, Rest&...) noexcept : detached_promise(g->ex_), group(g) {
  g->link(this);
}

// Destroyed without finishing (the executor's teardown): unlinked, and the
// joiner is not woken (it is being destroyed too).
inline group_child_promise::~group_child_promise() {
  if (group) group->unlink(this);
}

inline std::coroutine_handle<> group_child_promise::final_awaiter::await_suspend(
    std::coroutine_handle<group_child_promise> h) noexcept {
  group_child_promise& p = h.promise();
  std::coroutine_handle<> next;
  if (task_group* g = std::exchange(p.group, nullptr)) next = g->finished(&p);
  h.destroy();
  return next ? next : std::noop_coroutine();
}

inline void group_child_promise::unhandled_exception() noexcept {
  if (group) group->failed(std::current_exception());
}

// The wrapper of a task<void> child. A template (and static) only so that a
// header can define it: clang 14 with sanitizers cannot emit inline coroutines.
template <class = void>
static group_child run_in_group(task_group* /*read by the promise*/, task<void> t) {
  co_await std::move(t);
}

}  // namespace detail

inline void task_group::spawn(task<void> t) { spawn(detail::run_in_group(this, std::move(t))); }

}  // namespace ringframe
