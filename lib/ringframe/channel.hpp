// channel<T>: a bounded FIFO channel between coroutines of one executor.
//
//   channel<int> ch(ex, 16);                      // capacity 16 (0: rendezvous)
//   result<void> s = co_await ch.send(42);        // waits while full
//   result<int> v = co_await ch.receive();        // waits while empty
//   ch.close(make_error_code(std::errc::broken_pipe));
//
// Elements are received in the order they were sent. send() suspends while
// the buffer is full (backpressure) and resumes when a receiver makes room;
// its element is then moved into the buffer (or straight to a waiting
// receiver), so senders are served in FIFO order too. receive() suspends
// while the channel is empty. Waiters are woken through executor::post.
//
// close(ec): sends fail at once with ec, and so do the sends waiting (their
// elements were never delivered, they are dropped with their awaiters);
// receives go on taking what is buffered, then fail with ec, those waiting
// too. An empty ec is taken as std::errc::broken_pipe (an error is needed to
// tell "closed" from a value). A second close() changes nothing.
//
// try_send(v) / try_receive(): never suspend. try_send moves from v only on
// success; it fails with errc::resource_unavailable_try_again (EAGAIN) when
// full, or the close error; try_receive fails with EAGAIN when empty and open.
//
// Cancellation: a send or receive whose stop token is requested while it
// waits (or before), or that waits when executor::stop() is called, ends with
// ECANCELED. An element is handed over exactly once: a waiting receiver is
// given its element before it is woken, and a cancellation that arrives after
// that does not take it back (the receive succeeds); a cancelled send's
// element was never delivered. A channel destroyed while coroutines wait on
// it wakes them with ECANCELED.
//
// Awaiting an element type with a destructor: g++ 12 may destroy temporaries
// of a co_await expression twice. The awaiters tolerate it, but an argument
// temporary (`co_await ch.send(std::string("x"))`) is the caller's; write
// `auto op = ch.send(std::move(s)); auto r = co_await op;` for such T.
// Threading and preconditions: detail/sync_wait.hpp.
#pragma once

#include <ringframe/detail/sync_wait.hpp>
#include <ringframe/executor.hpp>
#include <ringframe/result.hpp>

#include <cerrno>
#include <coroutine>
#include <cstddef>
#include <optional>
#include <stop_token>
#include <system_error>
#include <type_traits>
#include <utility>
#include <vector>

namespace ringframe {

template <class T>
class channel {
  static_assert(std::is_nothrow_move_constructible_v<T>, "channel<T>: T must be nothrow move constructible");

 public:
  channel(executor& ex, std::size_t capacity) : senders_(ex), receivers_(ex), buf_(capacity) {}
  channel(const channel&) = delete;
  channel& operator=(const channel&) = delete;

  class [[nodiscard]] send_op : public detail::sync_wait_base {
   public:
    send_op(channel& ch, T value, const std::stop_token* stop) noexcept
        : sync_wait_base(ch.senders_, stop), ch_(&ch), value_(std::move(value)) {}
    bool await_ready() noexcept {
      if (cancelled_now()) return true;
      ec = ch_->offer(*value_);
      return ec != std::errc::resource_unavailable_try_again;
    }
    void await_suspend(std::coroutine_handle<> h) {
      ec = {};
      enqueue(h);
    }
    result<void> await_resume() noexcept {
      finish();
      return result<void>(ec);
    }

   private:
    friend class channel;
    channel* ch_;
    std::optional<T> value_;
  };

  class [[nodiscard]] receive_op : public detail::sync_wait_base {
   public:
    receive_op(channel& ch, const std::stop_token* stop) noexcept : sync_wait_base(ch.receivers_, stop), ch_(&ch) {}
    bool await_ready() noexcept {
      if (cancelled_now()) return true;
      ec = ch_->take(slot_);
      return ec != std::errc::resource_unavailable_try_again;
    }
    void await_suspend(std::coroutine_handle<> h) {
      ec = {};
      enqueue(h);
    }
    result<T> await_resume() {
      finish();
      if (slot_) return result<T>(std::move(*slot_));
      return result<T>(ec);
    }

   private:
    friend class channel;
    channel* ch_;
    std::optional<T> slot_;
  };

  send_op send(T value, const std::stop_token* stop = nullptr) noexcept {
    return send_op(*this, std::move(value), stop);
  }
  receive_op receive(const std::stop_token* stop = nullptr) noexcept { return receive_op(*this, stop); }

  result<void> try_send(T&& v) { return result<void>(offer(v)); }
  result<void> try_send(const T& v) {
    T copy(v);
    return result<void>(offer(copy));
  }
  result<T> try_receive() {
    std::optional<T> out;
    std::error_code ec = take(out);
    if (out) return result<T>(std::move(*out));
    return result<T>(ec);
  }

  void close(std::error_code ec) {
    if (closed_) return;
    closed_ = true;
    close_ec_ = ec ? ec : make_error_code(std::errc::broken_pipe);
    senders_.wake_all(close_ec_);
    receivers_.wake_all(close_ec_);  // only when the buffer is empty do receivers wait
  }

  bool closed() const noexcept { return closed_; }
  std::error_code close_error() const noexcept { return close_ec_; }
  std::size_t size() const noexcept { return count_; }
  std::size_t capacity() const noexcept { return buf_.size(); }
  std::size_t waiting_senders() const noexcept { return senders_.size(); }
  std::size_t waiting_receivers() const noexcept { return receivers_.size(); }

 private:
  // Deliver v (moved from on success) to a waiting receiver or the buffer.
  std::error_code offer(T& v) {
    if (closed_) return close_ec_;
    if (!receivers_.empty()) {  // then the buffer is empty
      auto* r = static_cast<receive_op*>(receivers_.front());
      r->slot_.emplace(std::move(v));
      receivers_.wake(r, {});
      return {};
    }
    if (count_ < buf_.size()) {
      buf_[(head_ + count_) % buf_.size()].emplace(std::move(v));
      ++count_;
      return {};
    }
    return make_error_code(std::errc::resource_unavailable_try_again);
  }

  // Take the oldest element into `out`; a waiting sender's moves up.
  std::error_code take(std::optional<T>& out) {
    if (count_ > 0) {
      auto& front = buf_[head_];
      out.emplace(std::move(*front));
      front.reset();
      head_ = (head_ + 1) % buf_.size();
      --count_;
      if (!senders_.empty()) {
        auto* s = static_cast<send_op*>(senders_.front());
        buf_[(head_ + count_) % buf_.size()].emplace(std::move(*s->value_));
        ++count_;
        senders_.wake(s, {});
      }
      return {};
    }
    if (!senders_.empty()) {  // capacity 0: straight from the sender
      auto* s = static_cast<send_op*>(senders_.front());
      out.emplace(std::move(*s->value_));
      senders_.wake(s, {});
      return {};
    }
    if (closed_) return close_ec_;
    return make_error_code(std::errc::resource_unavailable_try_again);
  }

  // Declared before the buffer: destroyed after it (waiters are woken with
  // ECANCELED first; they hold no reference to the buffer).
  detail::wait_queue senders_;
  detail::wait_queue receivers_;
  std::vector<std::optional<T>> buf_;
  std::size_t head_ = 0;
  std::size_t count_ = 0;
  bool closed_ = false;
  std::error_code close_ec_;
};

}  // namespace ringframe
