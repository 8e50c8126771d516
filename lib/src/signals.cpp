#include <ringframe/signals.hpp>

#include <pthread.h>
#include <signal.h>
#include <unistd.h>

namespace ringframe {

signal_set::signal_set(executor& ex, std::initializer_list<int> signals) : ex_(ex) {
  sigset_t mask;
  sigemptyset(&mask);
  for (int s : signals) sigaddset(&mask, s);
  sigset_t before;
  if (int e = pthread_sigmask(SIG_BLOCK, &mask, &before); e != 0)
    throw std::system_error(errno_code(e), "pthread_sigmask");
  fd_ = ::signalfd(-1, &mask, SFD_CLOEXEC);
  if (fd_ < 0) {
    // Thrown with nothing changed: a caller going on without the set must
    // still get these signals the usual way.
    const int e = errno;
    pthread_sigmask(SIG_SETMASK, &before, nullptr);
    throw std::system_error(errno_code(e), "signalfd");
  }
  // A signal set to "ignore" (as a shell does for background jobs) is
  // discarded before it can be queued for the signalfd: asking for it here
  // means wanting it, so restore the default disposition (it stays blocked).
  // Only now that the set exists: a failed one must leave "ignore" alone.
  for (int s : signals) {
    struct sigaction old {};
    if (::sigaction(s, nullptr, &old) == 0 && old.sa_handler == SIG_IGN) ::signal(s, SIG_DFL);
  }
  ex_.forget_descriptor(fd_);  // new to the backend
}

// As a socket does: the executor is told first, so that on epoll a wait
// still pending ends with ECANCELED rather than never (or, when a later
// descriptor gets the number, into whatever is there by then).
signal_set::~signal_set() {
  if (fd_ < 0) return;
  if (executor::alive_here(&ex_)) ex_.forget_descriptor(fd_);
  ::close(fd_);
}

task<result<int>> signal_set::wait(op_options o) {
  signalfd_siginfo info{};
  result<std::size_t> n = co_await detail::read_op(ex_, fd_, &info, sizeof info, o);
  if (!n) co_return n.error();
  if (*n != sizeof info) co_return errno_code(EIO);
  co_return static_cast<int>(info.ssi_signo);
}

}  // namespace ringframe
