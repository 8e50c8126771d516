// operation: the awaitable base of every I/O primitive.
//
// An operation lives in the awaiting coroutine's frame. await_suspend hands
// the executor's backend one request (detail/io_backend.hpp; with a linked
// deadline when the operation has one) whose key is the operation's address;
// the completion stores `res` and resumes the coroutine. No allocation, no
// id-to-coroutine map.
//
// A stop request may come from any thread (std::stop_callback runs on the
// thread that calls request_stop): on another thread the cancellation is
// handed to the executor's thread (executor::defer), never written into its
// submission queue from there.
//
// Deadlines are linked timeouts (on io_uring IOSQE_IO_LINK +
// IORING_OP_LINK_TIMEOUT; the epoll backend emulates them). The backend
// posts a completion for both the operation and the timeout, in either order,
// so the operation resumes only after both have arrived: the frame must not
// go away while the kernel still holds its address. An operation cancelled by
// its timer reports ETIMEDOUT; one cancelled by its stop_token or by
// executor::stop() reports ECANCELED.
#pragma once

#include <ringframe/detail/completion.hpp>
#include <ringframe/detail/io_backend.hpp>
#include <ringframe/detail/saturating_time.hpp>
#include <ringframe/executor.hpp>

#include <cerrno>
#include <chrono>
#include <coroutine>
#include <new>
#include <optional>
#include <stop_token>
#include <type_traits>

namespace ringframe {

struct op_options {
  // 0 means no deadline, and so does nanoseconds::max(). Measured from when
  // the operation starts.
  std::chrono::nanoseconds timeout{0};
  // Cancellation: when stop is requested the operation ends with ECANCELED.
  // A pointer, not a copy: the token must outlive the operation (it does when
  // it lives in the awaiting coroutine or in the socket).
  const std::stop_token* stop = nullptr;
};
// op_options is written as a braced temporary inside co_await expressions
// (`co_await s.recv(buf, {.timeout = 1s})`). g++ 12 destroys such aggregate
// temporaries twice; that is harmless only while destruction is trivial.
static_assert(std::is_trivially_destructible_v<op_options>);

namespace detail {

template <class Derived>
class operation : public completion {
 public:
  operation(executor& ex, op_options opts) noexcept : ex_(ex), opts_(opts) {
    on_cqe = &operation::handle_cqe;
  }
  operation(const operation&) = delete;
  operation& operator=(const operation&) = delete;
  // A frame destroyed while suspended (executor teardown): no stop callback
  // and no deferred cancellation may outlive it.
  ~operation() {
    stop_cb_.reset();
    ex_.withdraw(&cancel_call_);
  }

  bool await_ready() noexcept {
    if (ex_.stopping() || stop_requested()) {
      res_ = -ECANCELED;
      return true;
    }
    return false;
  }

  void await_suspend(std::coroutine_handle<> h) {
    waiter_ = h;
    if (opts_.timeout.count() > 0) {
      auto deadline = detail::saturating_add(std::chrono::steady_clock::now(), opts_.timeout);
      auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(deadline.time_since_epoch()).count();
      ts_.tv_sec = ns / 1000000000;
      ts_.tv_nsec = ns % 1000000000;
      has_deadline_ = true;
    }
    issue();
    if (opts_.stop && opts_.stop->stop_possible()) stop_cb_.emplace(*opts_.stop, canceller{this});
  }

 protected:
  // Submit (or resubmit, for operations that loop like send_all) the request.
  void issue() {
    io_request r;
    static_cast<Derived*>(this)->prepare(r);
    r.key = key_of(this);
    fd_ = r.fd;
    // steady_clock is CLOCK_MONOTONIC, the clock of the deadline.
    if (has_deadline_) r.deadline = &ts_;
    pending_ = has_deadline_ ? 2 : 1;
    ex_.submit(r);
  }

  // Derived may override: return true to keep going (it called issue() again).
  // Called only when nothing stopped the operation. A Derived that must see
  // every completion (send_all counts the bytes of the last one even when a
  // stop arrives with it) defines `bool finish(bool stopped)` instead.
  bool on_complete() { return false; }

  // The operation's own result, mapped: a timer-cancelled op reads -ETIMEDOUT.
  int result_code() const noexcept {
    if (timer_fired_ && res_ < 0 && (res_ == -ECANCELED || res_ == -EINTR)) return -ETIMEDOUT;
    return res_;
  }

  bool stop_requested() const noexcept { return opts_.stop && opts_.stop->stop_requested(); }

  executor& ex_;
  op_options opts_;
  int res_ = 0;
  unsigned flags_ = 0;

 private:
  struct canceller {
    operation* op;
    void operator()() noexcept {
      if (op->ex_.on_own_thread()) op->cancel();
      else op->ex_.defer(&op->cancel_call_);
    }
  };
  struct cancel_call : deferred_call {
    explicit cancel_call(operation* o) noexcept : deferred_call(&cancel_call::run), op(o) {}
    operation* op;
    static void run(deferred_call* c, bool run) {
      if (run) static_cast<cancel_call*>(c)->op->cancel();
    }
  };

  // On the executor's thread. Without a free SQE it tries again next turn.
  void cancel() noexcept {
    if (pending_ == 0) return;
    if (!ex_.try_cancel(key_of(this), fd_)) ex_.defer(&cancel_call_);
  }

  static void handle_cqe(completion* c, int res, unsigned flags, bool from_timer) {
    auto* self = static_cast<operation*>(c);
    if (from_timer) {
      if (res == -ETIME) self->timer_fired_ = true;
    } else if (flags & cqe_notif) {
      // Zero-copy send: the kernel is done with the buffer. The result came
      // in the CQE before this one.
    } else {
      self->res_ = res;
      self->flags_ = flags;
      if (flags & cqe_more) ++self->pending_;  // a notification follows
    }
    if (--self->pending_ != 0) return;
    // An operation that loops (send_all) continues unless something stopped it.
    bool stopped = self->timer_fired_ || self->ex_.stopping() || self->stop_requested();
    auto* d = static_cast<Derived*>(self);
    // Continuing resubmits from inside the executor's dispatch: a submission
    // that throws (epoll: bad_alloc for the request's waiter or its
    // deadline's timer; io_uring: a submission queue that cannot be
    // drained) must end this operation, not escape the executor's loop
    // with the awaiter never resumed (nothing is in flight for it then).
    try {
      if constexpr (requires { d->finish(stopped); }) {
        if (d->finish(stopped)) return;
      } else {
        if (!stopped && d->on_complete()) return;
      }
    } catch (const std::bad_alloc&) {
      self->pending_ = 0;
      self->res_ = -ENOMEM;
    } catch (...) {
      self->pending_ = 0;
      self->res_ = -EIO;
    }
    self->stop_cb_.reset();  // waits for a callback running on another thread
    self->ex_.withdraw(&self->cancel_call_);
    self->waiter_.resume();
  }

  std::coroutine_handle<> waiter_;
  kernel_timespec ts_{};
  cancel_call cancel_call_{this};
  std::optional<std::stop_callback<canceller>> stop_cb_;
  int fd_ = -1;  // of the request in flight: a hint for its cancellation
  unsigned char pending_ = 0;
  bool has_deadline_ = false;
  bool timer_fired_ = false;
};

}  // namespace detail
}  // namespace ringframe
