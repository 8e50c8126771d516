// signal_set: wait for POSIX signals as an awaitable (a signalfd read
// through the executor's backend). Constructing it blocks those signals in the calling thread, so
// they are delivered to the set instead of interrupting the process; create
// it before any other thread starts, so that every thread inherits the mask.
// They stay blocked when the set is destroyed: unblocking them then would
// deliver one still pending (a second Ctrl-C during a drain) with its default
// action, ending the process in the middle of its clean exit. A program that
// goes on without the set unblocks them itself (pthread_sigmask), and one that
// starts child processes gives them their own mask (posix_spawnattr_setsigmask,
// or pthread_sigmask between fork and exec): a blocked mask is inherited
// through exec.
#pragma once

#include <ringframe/operation.hpp>
#include <ringframe/result.hpp>

#include <sys/signalfd.h>

#include <csignal>  // SIGINT, SIGTERM...: what a set is made of
#include <initializer_list>

namespace ringframe {

namespace detail {
class read_op : public operation<read_op> {
 public:
  read_op(executor& ex, int fd, void* buf, unsigned len, op_options o)
      : operation(ex, o), fd_(fd), buf_(buf), len_(len) {}
  void prepare(io_request& r) {
    r.op = io_op::read;
    r.fd = fd_;
    r.buf = buf_;
    r.len = len_;
  }
  bool on_complete() {
    if (res_ == -EINTR || res_ == -EAGAIN) {
      issue();
      return true;
    }
    return false;
  }
  result<std::size_t> await_resume() {
    int r = result_code();
    if (r < 0) return errno_code(-r);
    return static_cast<std::size_t>(r);
  }

 private:
  int fd_;
  void* buf_;
  unsigned len_;
};
}  // namespace detail

class signal_set {
 public:
  // Throws std::system_error when signalfd cannot be created (out of fds).
  signal_set(executor& ex, std::initializer_list<int> signals);
  // Best after every wait() has ended (a stop token ends one). On epoll a
  // wait still pending ends with ECANCELED; on io_uring the kernel keeps the
  // descriptor's file until that wait ends by itself (the next signal).
  ~signal_set();
  signal_set(const signal_set&) = delete;
  signal_set& operator=(const signal_set&) = delete;

  // The next signal's number.
  task<result<int>> wait(op_options o = {});

 private:
  executor& ex_;
  int fd_ = -1;
};

}  // namespace ringframe
