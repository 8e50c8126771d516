// The epoll backend: for where io_uring is refused (container seccomp
// profiles, kernel.io_uring_disabled, old kernels). Same contract as the
// io_uring backend (detail/io_backend.hpp), built from readiness:
//
// * A request tries its system call at once (recv, send, accept4, connect,
//   read, all non-blocking) and only on EAGAIN waits: it joins its
//   descriptor's queue of readers or writers, and the descriptor is
//   registered once, edge-triggered, for both directions. When epoll says
//   a direction is ready, the queue is served in order until a call says
//   EAGAIN again. A hint per direction (cleared by EAGAIN or a short read
//   or send, set by the next edge) spares the system call that would only
//   say EAGAIN.
// * Results are posted, never dispatched from inside submit(): the executor
//   takes them on its next turn, exactly as it takes CQEs from the ring.
// * Provided buffers: the executor's buffer_ring hands out a buffer only when
//   a recv has data to put in it (buffer_ring::take), so a waiting
//   connection holds none, as with the kernel's buffer rings; none free is
//   -ENOBUFS, as there.
// * Multishot accept and recv: the request stays queued after each result
//   (posted with cqe_more) until it is cancelled, fails, or (recv) the peer
//   closes or no buffer is free.
// * Zero-copy send: a plain send, whose one completion carries the result
//   (the contract allows it; MSG_ZEROCOPY's error-queue notifications would
//   cost more than the copy at the sizes where readiness is used).
// * Linked deadlines and timeouts: a timer queue ordered by expiry, served
//   after each wait; epoll_pwait2 sleeps no longer than its head.
// * Cancellation completes the request with -ECANCELED at once.
//
// Sockets are made non-blocking (accept4 with SOCK_NONBLOCK; O_NONBLOCK set
// on descriptors it is given), since one blocking call would stall every
// coroutine of the thread.
#include "backends.hpp"

#include <ringframe/buffer_ring.hpp>
#include <ringframe/detail/completion.hpp>
#include <ringframe/detail/saturating_time.hpp>
#include <ringframe/result.hpp>

#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <new>
#include <set>
#include <string>
#include <system_error>

namespace ringframe::detail {

namespace {

std::int64_t monotonic_ns() noexcept {
  timespec ts{};
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<std::int64_t>(ts.tv_sec) * 1000000000 + ts.tv_nsec;
}

std::int64_t ns_of(const kernel_timespec& t) noexcept { return t.tv_sec * 1000000000 + t.tv_nsec; }

// The calls made for every message, without glibc's cancellation point. In
// a process with more than one thread (a server has its owner thread and
// its shards) each wrapper turns asynchronous cancellation on and off around
// its system call: some 50 instructions a call, a quarter of what the
// backend itself spends on a recv. ringframe never cancels a thread, and a
// loop thread that someone else cancelled would unwind through coroutine
// frames the kernel still writes into: no caller can rely on these calls
// being cancellation points. Same system calls, same results and errno.
// Sanitizer builds keep the wrappers, which the sanitizers intercept:
// AddressSanitizer checks the buffers handed to the kernel, ThreadSanitizer
// orders a sender's writes before the receiver's reads.
#if defined(__SANITIZE_THREAD__) || defined(__SANITIZE_ADDRESS__)
#define RINGFRAME_LIBC_SOCKET_CALLS 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer) || __has_feature(address_sanitizer)
#define RINGFRAME_LIBC_SOCKET_CALLS 1
#endif
#endif
#ifdef RINGFRAME_LIBC_SOCKET_CALLS
ssize_t sys_recv(int fd, void* buf, std::size_t len, int flags) noexcept { return ::recv(fd, buf, len, flags); }
ssize_t sys_send(int fd, const void* buf, std::size_t len, int flags) noexcept { return ::send(fd, buf, len, flags); }
ssize_t sys_sendmsg(int fd, const msghdr* msg, int flags) noexcept { return ::sendmsg(fd, msg, flags); }
#else
ssize_t sys_recv(int fd, void* buf, std::size_t len, int flags) noexcept {
  return ::syscall(SYS_recvfrom, fd, buf, len, flags, nullptr, nullptr);
}
ssize_t sys_send(int fd, const void* buf, std::size_t len, int flags) noexcept {
  return ::syscall(SYS_sendto, fd, buf, len, flags, nullptr, 0);
}
ssize_t sys_sendmsg(int fd, const msghdr* msg, int flags) noexcept { return ::syscall(SYS_sendmsg, fd, msg, flags); }
#endif

class epoll_backend final : public io_backend {
 public:
  epoll_backend(std::vector<cqe_copy>& completed, executor_stats& stats) : io_backend(completed, stats) {
    epfd_ = ::epoll_create1(EPOLL_CLOEXEC);
    if (epfd_ < 0) {
      int e = errno;
      throw setup_error(errno_code(e), std::string("ringframe: epoll_create1: ") + std::strerror(e));
    }
  }
  // Whatever still waits is dropped unposted (the executor has stopped
  // dispatching by now); the slabs free every waiter.
  ~epoll_backend() override {
    // (A connect tried again from retry_ holds a duplicate of its socket.)
    for (waiter* w : retry_) drop_duplicate(*w);
    if (waiter* w = orphans_) do {
        drop_duplicate(*w);
        w = w->next;
      } while (w != orphans_);
    for (const fd_state& s : fds_)
      for (waiter* head : s.head)
        if (waiter* w = head) do {
            drop_duplicate(*w);
            w = w->next;
          } while (w != head);
    ::close(epfd_);
  }

  const char* name() const noexcept override { return "epoll"; }
  const char* setup_mode() const noexcept override { return "epoll"; }

  [[gnu::hot]] void submit(const io_request& r) override {
    switch (r.op) {
      case io_op::nop: return post(r.key, 0, 0);
      case io_op::timeout: {
        waiter* w = make_waiter(r, side_none);
        add_timer(w, detail::saturating_add(monotonic_ns(), r.timeout ? ns_of(*r.timeout) : 0));
        return;
      }
      // Room for the results before the call: done, its result must not be lost.
      case io_op::shutdown:
        room_to_post(2);
        return finish(r.key, r.deadline != nullptr, ::shutdown(r.fd, r.flags) == 0 ? 0 : -errno);
      case io_op::close: {
        room_to_post(2);
        forget(r.fd, 2);  // (not into the room just made: review15 F6b)
        return finish(r.key, r.deadline != nullptr, ::close(r.fd) == 0 ? 0 : -errno);
      }
      default: break;
    }
    if (r.fd < 0) return finish(r.key, r.deadline != nullptr, -EBADF);
    const int side = side_of(r.op);
    {
      fd_state& s = state(r.fd);
      if (!s.nonblocking && needs_nonblocking(r.op)) {
        if (int e = make_nonblocking(r.fd)) return finish(r.key, r.deadline != nullptr, -e);
        s.nonblocking = true;
      }
      // Behind requests already waiting (order is kept), or straight to the
      // wait when the last call said the direction is empty.
      if (s.head[side] || !s.ready[side]) return wait(make_waiter(r, side), step::again);
    }
    waiter tmp;
    fill(tmp, r, side);
    const step st = attempt(tmp);
    if (st == step::done) return;
    waiter* w = make_waiter(r, side);
    w->connecting = tmp.connecting;
    wait(w, st);
  }

  // The send a completion would report, made here (io_backend::send_now):
  // what attempt() does for a send, without a waiter, a post and the
  // executor's dispatch of its result. A descriptor this backend has not
  // seen yet goes the submit() way (its state may need the table to grow).
  [[gnu::hot]] int send_now(const io_request& r) noexcept override {
    if (r.fd < 0 || static_cast<std::size_t>(r.fd) >= fds_.size()) return not_now;
    fd_state& s = at(r.fd);
    if (s.head[side_write] || !s.ready[side_write]) return not_now;  // behind those waiting, or full
    if (r.op != io_op::send) return not_now;  // (gathers and zero-copy go the completion's way)
    const ssize_t n = sys_send(r.fd, r.buf, r.len, r.flags | MSG_DONTWAIT);
    if (n >= 0) {
      if (static_cast<std::size_t>(n) < r.len) s.ready[side_write] = false;
      return static_cast<int>(n);
    }
    const int e = errno;
    if (e == EAGAIN || e == EWOULDBLOCK) {
      s.ready[side_write] = false;
      return not_now;
    }
    return e == EINTR ? not_now : -e;
  }

  bool cancel(std::uint64_t key, int fd) noexcept override {
    // Room for every result posted below, made first: post() must not throw
    // in this noexcept function (it was std::terminate), and a cancellation
    // that cannot be answered now returns false: the executor asks again
    // next turn. (review13 F4)
    try {
      std::size_t n = 3;  // one request and its timer, and this call's own
      if (key == 0) {
        for (const fd_state& s : fds_)
          for (int side : {side_read, side_write}) n += 2 * count(s.head[side]);
        n += 2 * (retry_.size() + timers_.size() + count(orphans_));
      }
      room_to_post(n);
    } catch (const std::bad_alloc&) {
      return false;
    }
    if (key == 0) {
      int n = 0;
      for (std::size_t i = 0; i < fds_.size(); ++i)
        for (int side : {side_read, side_write})
          while (waiter* w = fds_[i].head[side]) {
            cancel_waiter(w);
            ++n;
          }
      while (!retry_.empty()) {
        cancel_waiter(retry_.back());
        ++n;
      }
      while (orphans_) {
        cancel_waiter(orphans_);
        ++n;
      }
      while (!timers_.empty()) {
        cancel_waiter(timers_.begin()->second);
        ++n;
      }
      post(0, n, 0);
      return true;
    }
    waiter* w = find(key, fd);
    if (!w) {
      post(0, -ENOENT, 0);  // done already (its result is posted) or never known
      return true;
    }
    cancel_waiter(w);
    post(0, 0, 0);
    return true;
  }

  [[gnu::hot]] void run(bool wait, std::chrono::nanoseconds max_wait) override {
    end_orphans();
    // Results from submit() waiting to be taken, or events of the last
    // batch still to serve: no sleep.
    if (!posts_.empty() || next_event_ < event_count_) wait = false;
    std::int64_t wait_ns = -1;          // no limit
    if (!wait) {
      wait_ns = 0;
    } else {
      if (max_wait.count() >= 0) wait_ns = max_wait.count();
      if (!timers_.empty()) {
        std::int64_t due = timers_.begin()->first - monotonic_ns();
        if (due < 0) due = 0;
        if (wait_ns < 0 || due < wait_ns) wait_ns = due;
      }
      constexpr std::int64_t retry_every = 1000000;  // 1 ms
      if (!retry_.empty() && (wait_ns < 0 || wait_ns > retry_every)) wait_ns = retry_every;
    }
    if (next_event_ == event_count_) {  // the last batch is served: the next one
      next_event_ = event_count_ = 0;
      if (wait_ns != 0) unregister_idle_listeners();
      int n = wait_events(events_, max_events, wait_ns);
      ++stats_.submits;
      if (n < 0) {
        int e = errno;
        if (e != EINTR) throw std::system_error(errno_code(e), "ringframe: epoll_wait");
        n = 0;
      }
      event_count_ = n;
    }
    // An edge is reported once: an event leaves the batch only when it has
    // been served. A bad_alloc while serving one (its results' list
    // growing) leaves it and the rest for the next turn; lost, their
    // requests would wait for an edge that has come already (review13 F7).
    // Serving an event twice is harmless: the calls say EAGAIN again.
    while (next_event_ < event_count_) {
      const epoll_event& event = events_[next_event_];
      const int fd = event.data.fd;
      if (fd >= 0 && static_cast<std::size_t>(fd) < fds_.size()) {
        const std::uint32_t ev = event.events;
        // The peer's FIN, an error or TCP urgent data is signalled once: from
        // then on a short read no longer means that nothing is left (the end,
        // or the bytes behind the urgent mark, are still there).
        if (ev & (EPOLLPRI | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) at(fd).short_read_drains = false;
        if (ev & (EPOLLIN | EPOLLPRI | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) serve(fd, side_read);
        if (ev & (EPOLLOUT | EPOLLHUP | EPOLLERR)) serve(fd, side_write);
      }
      ++next_event_;
    }
    if (!timers_.empty()) expire_timers(monotonic_ns());
    if (!retry_.empty()) retry_now();
    flush();
  }

  void reap() noexcept override { flush(); }

  // Incremental consumption and bundles are the kernel's buffer ring's:
  // none here (each recv fills one whole buffer of the free list). A buffer
  // is taken only when its recv is made, on data that is there, and given
  // back once its bytes are copied out (the same loop turn, for a read
  // between frames), so it can hold a socket's usual batch: scratch_size.
  // With 16 KiB ones a pipelined batch of 23 KiB (128 requests of 64 B)
  // came in two recvs, each answered by its own send: twice the calls of a
  // hand-written loop, 0.44x its rate. (Memory is touched only where a
  // recv writes: a 64 B request makes one page of its buffer resident.)
  std::unique_ptr<buffer_ring> make_buffers(unsigned count, std::size_t size, unsigned max_count,
                                            buffer_ring::features) override {
    size = std::max(size, scratch_size);
    return std::make_unique<buffer_ring>(nullptr, count, size, 1, max_count);
  }

  void forget(int fd) noexcept override { forget(fd, 0); }

 private:
  // `keep`: results the caller has made room for already (room_to_post),
  // before a system call whose result must not be lost (close, accept4's
  // fresh()): room for the ended requests' results is made on top of it,
  // never out of it (review15 F6b-F6d: their posts used it up, and the
  // caller's own post then threw after its system call).
  void forget(int fd, std::size_t keep) noexcept {
    if (fd < 0 || static_cast<std::size_t>(fd) >= fds_.size()) return;
    // Requests still waiting on a descriptor that goes would never hear
    // from it again: each ends with ECANCELED. Room for their results is
    // made first (post() must not throw in this noexcept function: it was
    // std::terminate, review13 F6); when there is none, they are parked and
    // end on the loop's next turn (end_orphans).
    // A Unix connect waiting for room in a listener's backlog is on no
    // queue of the descriptor but in retry_, tried again by number: it ends
    // too, or its next try went to whatever descriptor took the number
    // (review42 F1: a socket opened since was connected in its place).
    std::size_t n = 0;
    for (int side : {side_read, side_write}) n += count(at(fd).head[side]);
    for (const waiter* w : retry_) n += w->fd == fd ? 1 : 0;
    bool room = true;
    if (n) {
      try {
        room_to_post(2 * n + keep);
      } catch (const std::bad_alloc&) {
        room = false;
      }
    }
    for (int side : {side_read, side_write})
      while (waiter* w = at(fd).head[side]) {
        if (room) {
          cancel_waiter(w);
        } else {
          unlink(at(fd).head[side], w);
          w->side = side_none;
          w->orphaned = true;
          link(orphans_, w);
        }
      }
    for (std::size_t i = 0; i < retry_.size();) {
      waiter* w = retry_[i];
      if (w->fd != fd) {
        ++i;
        continue;
      }
      if (room) {
        cancel_waiter(w);  // (release() takes it out of retry_)
      } else {
        retry_.erase(retry_.begin() + static_cast<std::ptrdiff_t>(i));
        w->retrying = false;
        w->orphaned = true;
        link(orphans_, w);
      }
    }
    if (at(fd).exclusive) ::epoll_ctl(epfd_, EPOLL_CTL_DEL, fd, nullptr);  // (see fd_state::exclusive)
    at(fd) = fd_state{};
  }

  static constexpr std::uint8_t side_read = 0, side_write = 1, side_none = 2;
  // done: the final result is posted. again: wait for the descriptor's
  // next edge. later: try again soon, on a timer (a Unix-domain connect
  // that found the listener's backlog full: no edge announces room).
  enum class step { done, again, later };

  // A request that waits: for readiness, for its timer, or both. Kept
  // small (72 bytes, from a slab): an idle connection has one.
  struct waiter {
    std::uint64_t key = 0;
    void* buf = nullptr;
    std::size_t len = 0;
    // accept: the socklen_t*; provided recvs: the buffer_ring*; a connect
    // in retry_: its socket's inode (see retry_later)
    void* extra = nullptr;
    std::int64_t deadline = 0;  // when its timer fires (timed), CLOCK_MONOTONIC ns
    waiter* prev = nullptr;     // its descriptor's queue (circular), or the free list
    waiter* next = nullptr;
    int fd = -1;
    int flags = 0;  // a connect with `extra`: its duplicate of the socket, or -1 (see retry_later)
    io_op op = io_op::nop;
    std::uint8_t side = side_none;
    bool connecting = false;    // connect(): EINPROGRESS seen, SO_ERROR tells the end
    bool timed = false;         // in timers_
    bool linked = false;        // has a linked deadline: its timer posts a completion too
    bool retrying = false;      // in retry_
    bool orphaned = false;      // in orphans_
  };
  static_assert(sizeof(waiter) <= 72);
  struct fd_state {
    waiter* head[2] = {nullptr, nullptr};  // readers, writers (circular lists)
    bool ready[2] = {true, true};  // false: the last call said EAGAIN (or read/sent short)
    bool registered = false;
    bool nonblocking = false;
    // A short read means the socket is empty (so the next read waits for
    // an edge without asking first): true only for TCP, from registration
    // until EPOLLPRI/RDHUP/HUP/ERR. Not for Unix sockets (a read stops at a
    // segment that carries descriptors), datagrams or sequenced packets
    // (one message per read), nor past TCP's urgent mark.
    bool short_read_drains = false;
    // Registered with EPOLLEXCLUSIVE (a listener): taken out of the epoll set
    // when forgotten or closed. Left there while a descriptor of the same
    // socket stays open elsewhere (another thread's), it would take
    // wake-ups meant for the threads still accepting, from a loop that no
    // longer does: exclusive wake-ups stop at the first waiting epoll.
    bool exclusive = false;
  };

  static int side_of(io_op op) noexcept {
    switch (op) {
      case io_op::connect:
      case io_op::send:
      case io_op::send_zero_copy:
      case io_op::sendmsg: return side_write;
      default: return side_read;
    }
  }
  static bool needs_nonblocking(io_op op) noexcept {
    // recv and send pass MSG_DONTWAIT instead.
    return op == io_op::accept || op == io_op::accept_multishot || op == io_op::connect || op == io_op::read;
  }
  static int make_nonblocking(int fd) noexcept {
    int fl = ::fcntl(fd, F_GETFL);
    if (fl < 0) return errno;
    if (!(fl & O_NONBLOCK) && ::fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0) return errno;
    return 0;
  }

  // (A reference into fds_ must not be held across a call that may create a
  // descriptor's state: accept4's fresh() may grow the table.)
  fd_state& at(int fd) noexcept { return fds_[static_cast<std::size_t>(fd)]; }
  [[gnu::hot]] fd_state& state(int fd) {
    const auto i = static_cast<std::size_t>(fd);
    if (i >= fds_.size()) {
      // An eighth more than needed, not twice: descriptors are dense, and an
      // idle connection's share of this table counts.
      const std::size_t n = i + 1 + i / 8 + 16;
      fds_.reserve(n);
      fds_.resize(n);
    }
    return fds_[i];
  }

  [[gnu::hot]] static void fill(waiter& w, const io_request& r, std::uint8_t side) noexcept {
    w.key = r.key;
    w.buf = r.buf;
    w.len = r.len;
    w.extra = r.addr_len ? static_cast<void*>(r.addr_len) : static_cast<void*>(r.buffers);
    w.fd = r.fd;
    w.flags = r.flags;
    w.op = r.op;
    w.side = side;
    w.linked = r.deadline != nullptr;
    w.deadline = r.deadline ? ns_of(*r.deadline) : 0;
  }

  void post(std::uint64_t key, int res, unsigned flags) { posts_.push_back({key, res, flags}); }
  // The request's final result, and its timer's end when it had one.
  [[gnu::hot]] void finish(std::uint64_t key, bool linked, int res, unsigned flags = 0) {
    post(key, res, flags);
    if (linked) post(key | timer_tag, -ECANCELED, 0);
  }
  void finish(const waiter& w, int res, unsigned flags = 0) { finish(w.key, w.linked, res, flags); }
  [[gnu::hot]] void flush() noexcept {
    if (posts_.empty()) return;
    try {
      completed_.insert(completed_.end(), posts_.begin(), posts_.end());
    } catch (const std::bad_alloc&) {
      return;  // kept here (and run() does not sleep while any are): the next turn hands them over
    }
    posts_.clear();
  }

  [[gnu::hot]] int wait_events(epoll_event* ev, int max, std::int64_t ns) {
    if (use_pwait2_) {
      timespec ts{static_cast<time_t>(ns / 1000000000), static_cast<long>(ns % 1000000000)};
      int n = ::epoll_pwait2(epfd_, ev, max, ns < 0 ? nullptr : &ts, nullptr);
      if (n >= 0 || (errno != ENOSYS && errno != EPERM)) return n;
      use_pwait2_ = false;  // before Linux 5.11, or refused by a seccomp profile
    }
    int ms = ns < 0 ? -1 : static_cast<int>(std::min<std::int64_t>((ns + 999999) / 1000000, 1 << 30));
    return ::epoll_wait(epfd_, ev, max, ms);
  }

  // One try of the request's system call. done: its final result is
  // posted. again: it must wait for the next edge (the hint is cleared).
  [[gnu::hot]] step attempt(waiter& w) {
    for (;;) {
      // Room for this call's results (its own and its timer's) before the
      // call: once bytes are sent or a descriptor accepted, a post() that
      // threw bad_alloc would lose the result, and a caller that retried
      // (send_queue puts an unsent batch back) would send the bytes twice.
      room_to_post(2);
      switch (w.op) {
        case io_op::accept: {
          int fd = ::accept4(w.fd, static_cast<sockaddr*>(w.buf), static_cast<socklen_t*>(w.extra),
                             w.flags | SOCK_NONBLOCK);
          if (fd >= 0) {
            if (!fresh(fd)) {
              ::close(fd);
              finish(w, -ENOMEM);
              return step::done;
            }
            finish(w, fd);
            return step::done;
          }
          if (errno == ECONNABORTED) continue;
          break;
        }
        case io_op::accept_multishot: {
          int fd = ::accept4(w.fd, nullptr, nullptr, w.flags | SOCK_NONBLOCK);
          if (fd >= 0) {
            if (!fresh(fd)) {  // an error ends the request (the server re-arms it)
              ::close(fd);
              finish(w, -ENOMEM);
              return step::done;
            }
            post(w.key, fd, cqe_more);
            continue;  // the next one, until EAGAIN
          }
          if (errno == ECONNABORTED) continue;  // that one is gone; the rest are not
          break;
        }
        case io_op::connect: {
          if (!w.connecting) {
            if (w.extra && !same_socket(w)) {  // closed behind our back: see retry_later
              finish(w, -ECANCELED);
              return step::done;
            }
            const int via = w.extra && w.flags >= 0 ? w.flags : w.fd;  // (see retry_later)
            if (::connect(via, static_cast<const sockaddr*>(w.buf), static_cast<socklen_t>(w.len)) == 0) {
              finish(w, 0);
              return step::done;
            }
            if (errno == EINPROGRESS || errno == EINTR) {  // it goes on in the kernel
              w.connecting = true;
              at(w.fd).ready[side_write] = false;
              return step::again;
            }
            // AF_UNIX, the listener's backlog full: io_uring's connect
            // waits for room (in a worker); here it is tried again soon.
            if (errno == EAGAIN) return step::later;
            break;
          }
          int err = 0;
          socklen_t len = sizeof err;
          if (::getsockopt(w.fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0) err = errno;
          if (err == 0) {
            sockaddr_storage peer{};
            socklen_t plen = sizeof peer;
            if (::getpeername(w.fd, reinterpret_cast<sockaddr*>(&peer), &plen) != 0) {
              err = errno;
              if (err == ENOTCONN) {
                // Still connecting (an edge that was not the connect's end),
                // or failed with an error another operation on the socket
                // (a read) has already taken: TCP's state tells which.
                tcp_info ti{};
                socklen_t tlen = sizeof ti;
                if (::getsockopt(w.fd, IPPROTO_TCP, TCP_INFO, &ti, &tlen) == 0 && ti.tcpi_state == TCP_SYN_SENT) {
                  at(w.fd).ready[side_write] = false;
                  return step::again;
                }
                err = ECONNABORTED;
              }
            }
          }
          finish(w, -err);
          return step::done;
        }
        case io_op::recv: {
          ssize_t n = sys_recv(w.fd, w.buf, w.len, w.flags | MSG_DONTWAIT);
          if (n >= 0) {
            if (static_cast<std::size_t>(n) < w.len) drained(w.fd);
            finish(w, static_cast<int>(n));
            return step::done;
          }
          break;
        }
        case io_op::recv_provided:
        case io_op::recv_multishot: {
          const bool multi = w.op == io_op::recv_multishot;
          auto* br = static_cast<buffer_ring*>(w.extra);
          std::uint16_t id;
          if (!br->take(id)) {
            finish(w, -ENOBUFS);
            return step::done;
          }
          const std::size_t size = br->buffer_size();
          ssize_t n = sys_recv(w.fd, br->data(id, size).data(), size, w.flags | MSG_DONTWAIT);
          if (n > 0) {
            const unsigned flags = cqe_buffer | (static_cast<unsigned>(id) << cqe_buffer_shift);
            const bool short_read = static_cast<std::size_t>(n) < size;
            if (short_read) drained(w.fd);
            if (!multi) {
              finish(w, static_cast<int>(n), flags);
              return step::done;
            }
            post(w.key, static_cast<int>(n), flags | cqe_more);
            if (short_read && !at(w.fd).ready[side_read]) return step::again;
            continue;
          }
          const int e = errno;
          br->recycle(id);
          if (n == 0) {
            finish(w, 0);
            return step::done;
          }
          errno = e;
          break;
        }
        case io_op::send:
        case io_op::send_zero_copy: {
          ssize_t n = sys_send(w.fd, w.buf, w.len, w.flags | MSG_DONTWAIT);
          if (n >= 0) {
            if (static_cast<std::size_t>(n) < w.len) at(w.fd).ready[side_write] = false;
            finish(w, static_cast<int>(n));
            return step::done;
          }
          break;
        }
        case io_op::sendmsg: {
          ssize_t n = sys_sendmsg(w.fd, static_cast<const msghdr*>(w.buf), w.flags | MSG_DONTWAIT);
          if (n >= 0) {
            if (static_cast<std::size_t>(n) < w.len) at(w.fd).ready[side_write] = false;
            finish(w, static_cast<int>(n));
            return step::done;
          }
          break;
        }
        case io_op::read: {
          ssize_t n = ::read(w.fd, w.buf, w.len);
          if (n >= 0) {
            finish(w, static_cast<int>(n));
            return step::done;
          }
          break;
        }
        default:
          finish(w, -EINVAL);
          return step::done;
      }
      // The call failed: errno says how.
      const int e = errno;
      if (e == EINTR) continue;
      if (e == EAGAIN || e == EWOULDBLOCK) {
        if (w.side != side_none) at(w.fd).ready[w.side] = false;
        return step::again;
      }
      finish(w, -e);
      return step::done;
    }
  }

  // A new request's waiter: queued (again), or tried again soon (later).
  // Thrown from (bad_alloc for its timer or the retry list), it is on no
  // list and goes back to the free list: submit() throws, and nothing of
  // the request is left to post a result the executor never counted.
  // (review15 F6e: it stayed queued, and its result came all the same.)
  [[gnu::hot]] void wait(waiter* w, step st) {
    try {
      if (w->linked && !w->timed) add_timer(w, w->deadline);
      if (st == step::later) retry_later(w);
    } catch (...) {
      w->side = side_none;
      release(w);
      throw;
    }
    // (enqueue() posts and releases `w` itself when it cannot be polled:
    // past here it must not be released again.)
    if (st != step::later) enqueue(w);
  }

  // Queue `w` behind its descriptor's other waiters of the same direction,
  // and register the descriptor (once) if it is not. Its timer first: a
  // bad_alloc from it leaves `w` on no queue (see wait()).
  [[gnu::hot]] void enqueue(waiter* w) {
    if (w->linked && !w->timed) add_timer(w, w->deadline);
    fd_state& s = at(w->fd);
    link(s.head[w->side], w);
    if (s.registered) return;
    int proto = 0;
    socklen_t plen = sizeof proto;
    s.short_read_drains = ::getsockopt(w->fd, SOL_SOCKET, SO_PROTOCOL, &proto, &plen) == 0 && proto == IPPROTO_TCP;
    epoll_event ev{};
    ev.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLPRI | EPOLLET;
    ev.data.fd = w->fd;
    // A listener, which threads may share (sharded_server gives each its own
    // descriptor of one socket): without EPOLLEXCLUSIVE each connection woke
    // every thread waiting in epoll_wait, and all but one found it taken
    // (io_uring's accept waits exclusively already). Linux 4.5 and later.
    // Listed first (see unregister_idle_listeners): one that cannot be
    // (bad_alloc) is registered as any other, woken with every thread.
    bool listed = false;
    if (w->op == io_op::accept || w->op == io_op::accept_multishot) try {
        if (std::find(exclusive_fds_.begin(), exclusive_fds_.end(), w->fd) == exclusive_fds_.end())
          exclusive_fds_.push_back(w->fd);
        listed = true;
      } catch (const std::bad_alloc&) {
      }
    if (listed) {
      epoll_event exclusive = ev;
      exclusive.events = EPOLLIN | EPOLLET | EPOLLEXCLUSIVE;
      if (::epoll_ctl(epfd_, EPOLL_CTL_ADD, w->fd, &exclusive) == 0) {
        s.registered = s.exclusive = true;
        return;
      }
      // EINVAL: a kernel before 4.5 (registered as any other, below).
      // EEXIST: registered before its state was forgotten (socket::release
      // and adopted again); if that was exclusive, MOD refuses (EINVAL) and
      // it stays as it is, which is what this would have made it.
      if (errno == EEXIST && ::epoll_ctl(epfd_, EPOLL_CTL_MOD, w->fd, &ev) != 0 && errno == EINVAL) {
        s.registered = s.exclusive = true;
        return;
      }
    }
    if (::epoll_ctl(epfd_, EPOLL_CTL_ADD, w->fd, &ev) == 0 ||
        (errno == EEXIST && ::epoll_ctl(epfd_, EPOLL_CTL_MOD, w->fd, &ev) == 0)) {
      s.registered = true;
      return;
    }
    // Not pollable (or out of memory): the request fails, with why.
    const int e = errno;
    const std::uint64_t key = w->key;
    const bool linked = w->linked;
    release(w);
    finish(key, linked, -e);
  }

  // Serve the requests waiting on one direction of a descriptor that is
  // ready, in order, until one must wait again.
  [[gnu::hot]] void serve(int fd, std::uint8_t side) {
    at(fd).ready[side] = true;
    // A listener's exclusive wake-up with no accept waiting here (this loop
    // pauses between accepts: sharded_server's accept balance) was one
    // another thread waiting could have used, and so would be each next
    // one: this registration comes first in the socket's wait queue. It
    // leaves the set until an accept waits again (enqueue() adds it back);
    // the connection that woke it is taken by the next accept here (the
    // ready hint), or by another thread when one wakes for a later one. (A
    // loop that sleeps has taken such registrations out first, so this one
    // came while it was busy and the others were woken too:
    // unregister_idle_listeners.)
    if (side == side_read && at(fd).exclusive && !at(fd).head[side_read]) {
      ::epoll_ctl(epfd_, EPOLL_CTL_DEL, fd, nullptr);
      at(fd).registered = at(fd).exclusive = false;
      return;
    }
    while (waiter* w = at(fd).head[side]) {
      const step st = attempt(*w);
      if (st == step::again) return;
      if (st == step::later) {
        unlink(at(fd).head[side], w);
        retry_later(w);
        continue;
      }
      release(w);
    }
  }

  // Before the loop sleeps: its listeners' exclusive registrations with no
  // accept waiting leave the set. An exclusive wake-up goes to one epoll
  // whose thread sleeps in epoll_wait, and the others are not woken; one
  // that has no accept to serve cannot pass it on, so the connection waited
  // in the backlog while another thread slept in its accept, for ever if no
  // other connection came (review41 F1). A thread that does not sleep is
  // not counted as woken: the wake-up goes on to the next. enqueue() adds a
  // registration back, and EPOLL_CTL_ADD reports a socket that is ready.
  void unregister_idle_listeners() noexcept {
    for (std::size_t i = 0; i < exclusive_fds_.size();) {
      const int fd = exclusive_fds_[i];
      fd_state& s = at(fd);  // (listed ones have their entry: the table never shrinks)
      if (s.exclusive && s.head[side_read]) {
        ++i;
        continue;
      }
      if (s.exclusive) {
        ::epoll_ctl(epfd_, EPOLL_CTL_DEL, fd, nullptr);
        s.registered = s.exclusive = false;
      }
      exclusive_fds_[i] = exclusive_fds_.back();
      exclusive_fds_.pop_back();
    }
  }

  // A connect in retry_ is tried again by descriptor number. Closed through
  // ringframe (forget()) it leaves the list; closed behind its back, the
  // number may be another descriptor's by the next try, which must then
  // end it rather than connect that one (review42 F2): which socket the
  // number was is kept in `extra` (sockets' inodes are never 0, and all
  // sockets are on the one sockfs device). The check and the try are two
  // calls: closed and its number taken between them (by another thread),
  // the number's new descriptor was connected (review43 F1). So the tries
  // go to a duplicate of the socket, made here and kept in `flags` (a
  // connect has none) until the waiter is released; when none can be made
  // (-1), to the number as before.
  static void* socket_id(int fd) noexcept {
    struct stat st{};
    if (::fstat(fd, &st) != 0 || !S_ISSOCK(st.st_mode)) return nullptr;
    return reinterpret_cast<void*>(static_cast<std::uintptr_t>(st.st_ino));
  }
  static bool same_socket(const waiter& w) noexcept { return socket_id(w.fd) == w.extra; }
  static void drop_duplicate(waiter& w) noexcept {
    if (w.op == io_op::connect && w.extra && w.flags >= 0) ::close(w.flags);
    w.flags = -1;
  }

  void retry_later(waiter* w) {
    if (w->op == io_op::connect && !w->extra) {
      w->extra = socket_id(w->fd);
      w->flags = w->extra ? ::fcntl(w->fd, F_DUPFD_CLOEXEC, 0) : -1;
    }
    w->side = side_none;  // on no descriptor's queue
    if (w->linked && !w->timed) add_timer(w, w->deadline);  // (first: see wait())
    w->retrying = true;
    retry_.push_back(w);
  }

  // Each is tried once, and leaves the list only when it is done with: a
  // bad_alloc half way through leaves the rest listed for the next turn
  // (moved out first, they were dropped: review13 F8).
  void retry_now() {
    for (std::size_t i = 0; i < retry_.size();) {
      waiter* w = retry_[i];
      const step st = attempt(*w);
      if (st == step::later) {
        ++i;
        continue;
      }
      retry_.erase(retry_.begin() + static_cast<std::ptrdiff_t>(i));
      w->retrying = false;
      if (st == step::again) {  // connecting now: wait for the edge
        w->side = side_write;
        enqueue(w);
      } else {
        release(w);
      }
    }
  }

  // Requests whose descriptor was closed when there was no room to post
  // their end (forget): they end now, each with room made first. Thrown
  // from here (bad_alloc), the rest wait for the next turn.
  void end_orphans() {
    while (waiter* w = orphans_) {
      room_to_post(2);
      cancel_waiter(w);
    }
  }

  // Circular doubly linked queues: a head pointer per direction is all a
  // descriptor's entry holds.
  static void link(waiter*& head, waiter* w) noexcept {
    if (!head) {
      head = w->prev = w->next = w;
      return;
    }
    waiter* tail = head->prev;
    tail->next = w;
    w->prev = tail;
    w->next = head;
    head->prev = w;
  }
  static std::size_t count(const waiter* head) noexcept {
    std::size_t n = 0;
    if (const waiter* w = head) do {
        ++n;
        w = w->next;
      } while (w != head);
    return n;
  }
  static void unlink(waiter*& head, waiter* w) noexcept {
    if (w->next == w) {
      head = nullptr;
    } else {
      w->prev->next = w->next;
      w->next->prev = w->prev;
      if (head == w) head = w->next;
    }
  }

  [[gnu::hot]] waiter* make_waiter(const io_request& r, std::uint8_t side) {
    if (!free_) {
      constexpr std::size_t per_slab = 256;
      slabs_.push_back(std::make_unique<waiter[]>(per_slab));
      for (std::size_t i = 0; i < per_slab; ++i) {
        slabs_.back()[i].next = free_;
        free_ = &slabs_.back()[i];
      }
    }
    waiter* w = free_;
    free_ = w->next;
    *w = waiter{};
    fill(*w, r, side);
    return w;
  }

  // Take `w` off its queue and its timer, back to the free list (its
  // result is posted already).
  [[gnu::hot]] void release(waiter* w) noexcept {
    if (w->side != side_none) unlink(at(w->fd).head[w->side], w);
    if (w->orphaned) unlink(orphans_, w);
    if (w->retrying) std::erase(retry_, w);
    if (w->timed) timers_.erase({w->deadline, w});
    drop_duplicate(*w);
    w->next = free_;
    free_ = w;
  }

  // The waiter of request `key`, made on `fd` (-1: unknown).
  waiter* find(std::uint64_t key, int fd) noexcept {
    auto in_queue = [key](waiter* head) -> waiter* {
      if (waiter* w = head) do {
          if (w->key == key) return w;
          w = w->next;
        } while (w != head);
      return nullptr;
    };
    if (fd >= 0 && static_cast<std::size_t>(fd) < fds_.size())
      for (int side : {side_read, side_write})
        if (waiter* w = in_queue(at(fd).head[side])) return w;
    for (const auto& [when, w] : timers_)  // timeouts, and requests with a deadline
      if (w->key == key) return w;
    for (waiter* w : retry_)
      if (w->key == key) return w;
    if (waiter* w = in_queue(orphans_)) return w;
    if (fd < 0)  // the slow way, for a caller that did not say
      for (std::size_t i = 0; i < fds_.size(); ++i)
        for (int side : {side_read, side_write})
          if (waiter* w = in_queue(fds_[i].head[side])) return w;
    return nullptr;
  }

  void cancel_waiter(waiter* w) noexcept {
    const std::uint64_t key = w->key;
    const bool linked = w->linked;
    const bool timeout = w->op == io_op::timeout;
    release(w);
    if (timeout) post(key, -ECANCELED, 0);
    else finish(key, linked, -ECANCELED);
  }

  void add_timer(waiter* w, std::int64_t at_ns) {
    w->deadline = at_ns;
    timers_.insert({at_ns, w});
    w->timed = true;
  }

  void expire_timers(std::int64_t now) {
    while (!timers_.empty() && timers_.begin()->first <= now) {
      // Room first: a bad_alloc after release() lost the result for good
      // (the executor then counted the request in flight forever, and its
      // destructor waited on it). Thrown from here, the timer is still
      // queued and fires on the next turn.
      room_to_post(2);
      waiter* w = timers_.begin()->second;
      const std::uint64_t key = w->key;
      const bool timeout = w->op == io_op::timeout;
      release(w);
      if (timeout) {
        post(key, -ETIME, 0);
      } else {  // a linked deadline: the request ends, cancelled by its timer
        post(key, -ECANCELED, 0);
        post(key | timer_tag, -ETIME, 0);
      }
    }
  }

  // A short read took everything there was (see short_read_drains): the
  // next read waits for the next edge without asking first.
  [[gnu::hot]] void drained(int fd) noexcept {
    fd_state& s = at(fd);
    if (s.short_read_drains) s.ready[side_read] = false;
  }

  // A descriptor the kernel just created (accept4): nothing known of an
  // earlier one with its number applies, and it is non-blocking.
  // Requests still queued on the number belong to a descriptor closed
  // behind ringframe's back: they end with ECANCELED (forget).
  // False when its entry cannot be made (bad_alloc): the caller closes it.
  // (review12 F6: an accepted descriptor whose entry could not be made was
  // left open, owned by nobody, and the bad_alloc escaped the loop.)
  [[gnu::hot]] bool fresh(int fd) noexcept {
    try {
      state(fd);
    } catch (const std::bad_alloc&) {
      return false;
    }
    forget(fd, 2);  // attempt() made room for the accept's result
    at(fd).nonblocking = true;
    return true;
  }
  // Room for `n` more results, made before a system call whose result
  // must not be lost: post() cannot throw then.
  void room_to_post(std::size_t n) {
    if (posts_.capacity() - posts_.size() < n) posts_.reserve(2 * posts_.size() + n);
  }

  int epfd_ = -1;
  bool use_pwait2_ = true;
  static constexpr int max_events = 256;
  // The size of a receive buffer (make_buffers).
  static constexpr std::size_t scratch_size = 64 * 1024;
  epoll_event events_[max_events];  // the last batch epoll_wait returned:
  int event_count_ = 0;             // its size,
  int next_event_ = 0;              // and the first event not served yet
  std::vector<fd_state> fds_;
  std::vector<int> exclusive_fds_;  // registered with EPOLLEXCLUSIVE (some may be no longer)
  std::set<std::pair<std::int64_t, waiter*>> timers_;  // by when they fire
  std::vector<cqe_copy> posts_;  // results not yet handed to the executor
  std::vector<waiter*> retry_;  // see step::later
  waiter* orphans_ = nullptr;   // see forget(): a circular list, like a descriptor's queue
  std::vector<std::unique_ptr<waiter[]>> slabs_;
  waiter* free_ = nullptr;
};

}  // namespace

std::unique_ptr<io_backend> make_epoll_backend(const executor_options&, std::vector<cqe_copy>& completed,
                                               executor_stats& stats) {
  return std::make_unique<epoll_backend>(completed, stats);
}

}  // namespace ringframe::detail
