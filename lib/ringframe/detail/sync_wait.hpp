// sync_wait: what event, channel and semaphore/mutex share. A waiter is a node
// in the awaiting coroutine's frame (the awaiter object itself), linked into
// an intrusive FIFO (wait_queue) owned by the primitive: no allocation per
// wait. A waiter is woken by unlinking it, recording its outcome in the node
// and handing its coroutine to executor::post: never resumed inline, so the
// one who wakes (set(), send(), release()) keeps running and nothing recurses.
//
// Whatever a woken waiter needs (a channel element, a permit) is handed to it
// before it is posted, so once woken its await_resume touches only its own
// node, never the primitive: a primitive may be destroyed while its woken
// waiters wait in the ready queue.
//
// Cancellation: a stop token (std::stop_callback) and executor::stop() (a
// stop_listener per queue) wake a waiter that is still linked with ECANCELED.
// A waiter that has already been woken (handed its element or permit) keeps
// that outcome: a cancellation that comes too late changes nothing, so no
// element or permit is lost or duplicated.
//
// One executor, one thread: every call, and request_stop() on the tokens
// given to waits, on the executor's thread. Preconditions: the executor
// outlives every primitive built on it; a stop token outlives the wait it is
// given to (keep it in the awaiting coroutine's frame, as a by-value
// parameter). A primitive destroyed while coroutines wait on it wakes them
// with ECANCELED (posted; they do not touch the primitive again).
#pragma once

#include <ringframe/detail/resume_later.hpp>
#include <ringframe/executor.hpp>
#include <ringframe/result.hpp>

#include <cerrno>
#include <coroutine>
#include <cstddef>
#include <optional>
#include <stop_token>
#include <system_error>
#include <utility>

namespace ringframe::detail {

struct sync_waiter {
  sync_waiter* prev = nullptr;
  sync_waiter* next = nullptr;
  std::coroutine_handle<> h;
  std::error_code ec;  // the outcome, set when woken
  bool linked = false;
  resume_later later;  // the wake-up's way when the ready queue cannot grow (review13 F12)
};

class wait_queue : private stop_listener {
 public:
  explicit wait_queue(executor& ex) noexcept : ex_(&ex) {
    fn = &wait_queue::on_stop;
    ex.listen_stop(this);
  }
  ~wait_queue() {
    ex_->unlisten_stop(this);
    wake_all(errno_code(ECANCELED));
  }
  wait_queue(const wait_queue&) = delete;
  wait_queue& operator=(const wait_queue&) = delete;

  executor& get_executor() const noexcept { return *ex_; }
  bool empty() const noexcept { return head_ == nullptr; }
  sync_waiter* front() const noexcept { return head_; }
  std::size_t size() const noexcept { return size_; }

  void push(sync_waiter* w) noexcept {
    w->prev = tail_;
    w->next = nullptr;
    if (tail_) tail_->next = w;
    else head_ = w;
    tail_ = w;
    w->linked = true;
    ++size_;
  }
  void remove(sync_waiter* w) noexcept {
    if (!w->linked) return;
    if (w->prev) w->prev->next = w->next;
    else head_ = w->next;
    if (w->next) w->next->prev = w->prev;
    else tail_ = w->prev;
    w->prev = w->next = nullptr;
    w->linked = false;
    --size_;
  }
  // Unlink `w`, record its outcome, resume it from the loop (post; when
  // the ready queue cannot grow for it, through the inbox: never lost, and
  // never thrown from here, as from stop()'s listener (noexcept) it was
  // std::terminate, review13 F12).
  void wake(sync_waiter* w, std::error_code ec) noexcept {
    remove(w);
    w->ec = ec;
    w->later.wake(*ex_, w->h);
  }
  void wake_all(std::error_code ec) {
    while (head_) wake(head_, ec);
  }

 private:
  static void on_stop(stop_listener* l) noexcept { static_cast<wait_queue*>(l)->wake_all(errno_code(ECANCELED)); }

  executor* ex_;
  sync_waiter* head_ = nullptr;
  sync_waiter* tail_ = nullptr;
  std::size_t size_ = 0;
};

// The base of every awaiter of these primitives: a node, the queue it waits
// in, and the stop callback. Neither copyable nor movable (the queue points
// at it); returned by value through guaranteed copy elision. Its destructor
// is idempotent (g++ 12 may destroy a co_await operand twice) and unlinks a
// node whose frame is destroyed while it waits (executor teardown).
class sync_wait_base : public sync_waiter {
 public:
  sync_wait_base(const sync_wait_base&) = delete;
  sync_wait_base& operator=(const sync_wait_base&) = delete;
  ~sync_wait_base() {
    cb_.reset();
    if (linked) q_->remove(this);
  }

 protected:
  sync_wait_base(wait_queue& q, const std::stop_token* stop) noexcept : q_(&q), stop_(stop) {}

  // Called from await_ready: a stopped executor or a requested stop ends the
  // wait at once with ECANCELED.
  bool cancelled_now() noexcept {
    if (q_->get_executor().stopping() || (stop_ && stop_->stop_requested())) {
      ec = errno_code(ECANCELED);
      return true;
    }
    return false;
  }
  // Called from await_suspend: link, then watch the token.
  void enqueue(std::coroutine_handle<> awaiting) {
    h = awaiting;
    q_->push(this);
    if (stop_ && stop_->stop_possible()) cb_.emplace(*stop_, canceller{this});
  }
  // Called from await_resume: the callback goes (the primitive is not touched).
  void finish() noexcept { cb_.reset(); }

  wait_queue* q_;

 private:
  struct canceller {
    sync_wait_base* w;
    void operator()() noexcept {
      if (w->linked) w->q_->wake(w, errno_code(ECANCELED));
    }
  };
  const std::stop_token* stop_;
  std::optional<std::stop_callback<canceller>> cb_;
};

}  // namespace ringframe::detail
