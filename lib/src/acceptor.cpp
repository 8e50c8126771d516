#include <ringframe/acceptor.hpp>

#include <unistd.h>

namespace ringframe {

acceptor::acceptor(socket& listener, const std::stop_token* stop)
    : listener_(listener), ex_(listener.get_executor()), stop_(stop) {
  on_cqe = &acceptor::handle_cqe;
  if (stop_ && stop_->stop_possible()) stop_cb_.emplace(*stop_, canceller{this});
}

acceptor::~acceptor() {
  stop_cb_.reset();
  for (int fd : fds_) ::close(fd);
}

void acceptor::arm() {
  io_uring_sqe* sqe = ex_.get_sqe(1);
  io_uring_prep_multishot_accept(sqe, listener_.fd(), nullptr, nullptr, SOCK_CLOEXEC);
  io_uring_sqe_set_data64(sqe, detail::key_of(this));
  ex_.note_submitted(1);
  armed_ = true;
}

void acceptor::cancel() noexcept {
  if (!armed_) return;
  io_uring_sqe* sqe = ex_.get_sqe(1);
  io_uring_prep_cancel64(sqe, detail::key_of(this), 0);
  io_uring_sqe_set_data64(sqe, 0);
  ex_.note_submitted(1);
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
  if (res >= 0) self->fds_.push_back(res);
  if (!(flags & IORING_CQE_F_MORE)) {
    self->armed_ = false;
    if (res < 0) self->terminal_ = res;
  }
  // Every CQE carries a connection or ends the request with an error, so
  // there is something for the waiter now.
  if (self->waiter_) std::exchange(self->waiter_, {}).resume();
}

}  // namespace ringframe
