// acceptor: one multishot accept (IORING_OP_ACCEPT with IORING_ACCEPT_MULTISHOT,
// Linux 5.19; on the epoll backend, accept4 until EAGAIN on each edge) that
// stays armed on a listener and yields a connection per completion: one
// request for any number of connections instead of one each.
//
// The kernel ends a multishot request on an error (EMFILE, ENFILE, ...) or a
// cancellation; next() reports that error once and re-arms on the call after.
// Addresses are not collected (one address buffer cannot serve a stream of
// completions): ask the socket for its peer_address().
#pragma once

#include <ringframe/detail/completion.hpp>
#include <ringframe/detail/deferred_call.hpp>
#include <ringframe/executor.hpp>
#include <ringframe/result.hpp>
#include <ringframe/socket.hpp>

#include <coroutine>
#include <deque>
#include <optional>
#include <stop_token>

namespace ringframe {

class acceptor : private detail::completion {
 public:
  // `stop` (optional) ends the acceptor: next() then returns ECANCELED once
  // the kernel has retired the request.
  acceptor(socket& listener, const std::stop_token* stop = nullptr);
  acceptor(const acceptor&) = delete;
  acceptor& operator=(const acceptor&) = delete;
  // Closes connections accepted and never taken. Precondition: the request
  // is not armed (next() returned ECANCELED, or it was never armed).
  ~acceptor();

  class next_awaitable {
   public:
    explicit next_awaitable(acceptor* a) noexcept : a_(a) {}
    bool await_ready() { return a_->ready(); }
    void await_suspend(std::coroutine_handle<> h) { a_->waiter_ = h; }
    result<socket> await_resume() { return a_->take(); }

   private:
    acceptor* a_;
  };
  [[nodiscard]] next_awaitable next() { return next_awaitable(this); }

  bool armed() const noexcept { return armed_; }

 private:
  static void handle_cqe(detail::completion* c, int res, unsigned flags, bool);
  bool ready();
  result<socket> take();
  void arm();
  void request_cancel() noexcept;  // any thread
  void cancel() noexcept;          // the executor's thread

  struct canceller {
    acceptor* a;
    void operator()() noexcept { a->request_cancel(); }
  };
  struct deferred_cancel : detail::deferred_call {
    explicit deferred_cancel(acceptor* owner) noexcept : deferred_call(&deferred_cancel::run), a(owner) {}
    acceptor* a;
    static void run(detail::deferred_call* d, bool run);
  };

  socket& listener_;
  executor& ex_;
  const std::stop_token* stop_;
  std::deque<int> fds_;
  int terminal_ = 0;  // -errno that ended the last request, not yet reported
  bool armed_ = false;
  std::coroutine_handle<> waiter_;
  deferred_cancel deferred_{this};
  std::optional<std::stop_callback<canceller>> stop_cb_;
};

}  // namespace ringframe
