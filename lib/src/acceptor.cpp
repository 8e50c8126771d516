#include <ringframe/acceptor.hpp>
#include <ringframe/detail/io_backend.hpp>

#include <unistd.h>

#include <cerrno>
#include <new>

namespace ringframe {

acceptor::acceptor(socket& listener, const std::stop_token* stop)
    : listener_(listener), ex_(listener.get_executor()), stop_(stop) {
  on_cqe = &acceptor::handle_cqe;
  if (stop_ && stop_->stop_possible()) stop_cb_.emplace(*stop_, canceller{this});
}

acceptor::~acceptor() {
  stop_cb_.reset();
  ex_.withdraw(&deferred_);
  for (int fd : fds_) ::close(fd);
}

void acceptor::arm() {
  detail::io_request r;
  r.op = detail::io_op::accept_multishot;
  r.fd = listener_.fd();
  r.flags = SOCK_CLOEXEC;
  r.key = detail::key_of(this);
  ex_.submit(r);
  armed_ = true;
}

void acceptor::request_cancel() noexcept {
  // The stop callback runs on whichever thread requests the stop; the
  // backend belongs to the executor's.
  if (ex_.on_own_thread()) cancel();
  else ex_.defer(&deferred_);
}

void acceptor::cancel() noexcept {
  if (!armed_) return;
  // Without room to ask now, from the next loop turn.
  if (!ex_.try_cancel(detail::key_of(this), listener_.fd())) ex_.defer(&deferred_);
}

void acceptor::deferred_cancel::run(detail::deferred_call* d, bool run) {
  if (run) static_cast<deferred_cancel*>(d)->a->cancel();
}

bool acceptor::ready() {
  if (!fds_.empty() || terminal_ != 0) return true;
  const bool stopping = ex_.stopping() || (stop_ && stop_->stop_requested());
  if (stopping) {
    if (!armed_) {
      terminal_ = -ECANCELED;
      return true;
    }
    return false;  // the cancellation is on its way; wait for the last CQE
  }
  if (!armed_) arm();
  return false;
}

result<socket> acceptor::take() {
  if (!fds_.empty()) {
    int fd = fds_.front();
    fds_.pop_front();
    return socket(ex_, fd);
  }
  int err = -terminal_;
  terminal_ = 0;
  return errno_code(err ? err : ECANCELED);
}

void acceptor::handle_cqe(detail::completion* c, int res, unsigned flags, bool) {
  auto* self = static_cast<acceptor*>(c);
  if (res >= 0) {
    // From the executor's dispatch: a deque that cannot grow a block
    // (bad_alloc) must not escape the loop with the descriptor the kernel
    // accepted in no list (open, owned by nobody). It is closed, and the
    // waiter hears ENOMEM (the server backs off); the request stays armed.
    try {
      self->fds_.push_back(res);
    } catch (const std::bad_alloc&) {
      self->ex_.forget_descriptor(res);
      ::close(res);
      if (self->terminal_ == 0) self->terminal_ = -ENOMEM;
    }
  }
  if (!(flags & detail::cqe_more)) {
    self->armed_ = false;
    self->ex_.withdraw(&self->deferred_);
    if (res < 0) self->terminal_ = res;
  }
  // Every CQE carries a connection or ends the request with an error, so
  // there is something for the waiter now.
  if (self->waiter_) std::exchange(self->waiter_, {}).resume();
}

}  // namespace ringframe
