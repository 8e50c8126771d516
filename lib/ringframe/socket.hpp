// socket: an owned socket descriptor bound to one executor, whose operations
// are awaitables backed by its I/O backend (see operation.hpp). On the epoll
// backend the descriptor is non-blocking. Every operation
// returns result<T>; its error keeps the errno (ECONNRESET, EPIPE, ETIMEDOUT
// for a deadline, ECANCELED for a cancellation or a stopping executor).
//
//   auto n = co_await sock.recv(buf, {.timeout = 5s});
//   if (!n) log(n.error().message()); else if (*n == 0) /* peer closed */;
#pragma once

#include <ringframe/address.hpp>
#include <ringframe/buffer_ring.hpp>
#include <ringframe/operation.hpp>
#include <ringframe/result.hpp>
#include <ringframe/task.hpp>

#include <sys/socket.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <span>
#include <stop_token>
#include <vector>
#include <string>
#include <string_view>

namespace ringframe {

class socket;

// What a recv from the provided buffers got: `len` bytes at `offset` in
// buffer `id` (the offset is 0 unless the ring consumes buffers
// incrementally; give them back with buffer_ring::release(r.slice())), or
// len 0: the peer closed.
struct provided_recv {
  std::uint16_t id = 0;
  std::size_t len = 0;
  bool has_buffer = false;
  std::uint32_t offset = 0;
  buffer_ring::slice slice() const noexcept { return {id, offset, static_cast<std::uint32_t>(len)}; }
};

namespace detail {

class accept_op : public operation<accept_op> {
 public:
  accept_op(executor& ex, int fd, address* peer, op_options o) : operation(ex, o), fd_(fd), peer_(peer) {}
  void prepare(io_request& r) {
    if (peer_) *peer_->size_ptr() = address::capacity();
    r.op = io_op::accept;
    r.fd = fd_;
    r.buf = peer_ ? peer_->data() : nullptr;
    r.addr_len = peer_ ? peer_->size_ptr() : nullptr;
    r.flags = SOCK_CLOEXEC;
  }
  bool on_complete() { return false; }
  result<socket> await_resume();

 private:
  int fd_;
  address* peer_;
};

// A Unix-domain connect to a listener whose backlog is full has nothing to
// wait on (no readiness announces room). io_uring hands it to an io-wq
// worker that sleeps in the kernel until there is room, and there, with
// DEFER_TASKRUN, IORING_OP_ASYNC_CANCEL does not find it (Linux 6.18: by key
// or ANY|ALL, ENOENT or 0): only its linked timeout ended it, so a stop, an
// executor::stop() or the executor's destructor waited for its whole
// timeout, or for ever (review38 F4). So on io_uring a Unix connect is made
// here, non-blocking, and while the backlog is full tried again every
// millisecond on a timeout request (which any cancellation finds), as the
// epoll backend does. TCP connects go to the kernel as they are. Tried
// again by descriptor number, it first checks that the number is still its
// socket: a socket closed meanwhile ends its connect with ECANCELED, as on
// epoll, and a descriptor that took the number is not touched (review42 F1).
// The tries themselves (fcntl, connect) go to a duplicate of the socket made
// at the first EAGAIN: closed and its number taken between the check and
// the try (by another thread), the number's new descriptor was connected
// in its place (review43 F1).
class connect_op : public operation<connect_op> {
 public:
  connect_op(executor& ex, int fd, const address& a, op_options o)
      : operation(ex, o), fd_(fd), addr_(a),
        by_hand_(a.family() == AF_UNIX && ex.backend() != backend_kind::epoll) {}
  ~connect_op();
  bool await_ready() noexcept {
    if (operation::await_ready()) return true;
    if (!by_hand_) return false;
    res_ = connect_unix_now(fd_, fd_, addr_, nullptr);
    if (res_ != -EAGAIN) return true;
    // It is tried again by descriptor number: which socket that is now,
    // and a descriptor of its own to try it on.
    res_ = identify(fd_, id_);
    if (res_ == 0) own_ = duplicate(fd_);
    return res_ != 0;
  }
  void prepare(io_request& r) {
    if (by_hand_) {  // the backlog was full: try again in a while
      r.op = io_op::timeout;
      r.timeout = &retry_after;
      return;
    }
    r.op = io_op::connect;
    r.fd = fd_;
    r.buf = const_cast<sockaddr*>(addr_.data());
    r.len = addr_.size();
  }
  // Sees every completion: a pause that ends as a stop arrives is a stop.
  bool finish(bool stopped) {
    if (!by_hand_) return false;
    // The pause is over (-ETIME); anything else ends the connect.
    if (res_ != -ETIME && res_ != 0) return false;
    if (stopped) {
      res_ = -ECANCELED;  // (ETIMEDOUT when it was the deadline: result_code)
      return false;
    }
    res_ = connect_unix_now(fd_, own_ >= 0 ? own_ : fd_, addr_, &id_);
    if (res_ != -EAGAIN) return false;
    issue();
    return true;
  }
  result<void> await_resume() {
    int r = result_code();
    if (r < 0) return errno_code(-r);
    return {};
  }

 private:
  // Which file a descriptor is (its device and inode).
  struct file_id {
    std::uint64_t dev = 0, ino = 0;
  };
  static int identify(int fd, file_id& out) noexcept;  // 0 or -errno
  // A close-on-exec duplicate of `fd`, or -1 (none to spare: the number is
  // tried, as before review43).
  static int duplicate(int fd) noexcept;
  // One non-blocking connect(2) of `via`, a descriptor of `fd`'s socket
  // (whatever its O_NONBLOCK says, and as it was afterwards): 0, or -errno
  // (-EAGAIN: the backlog is full). With `expect`, only while `fd` is
  // still that socket: closed meanwhile (its number perhaps another
  // descriptor's by now, review42 F1) the connect ends with -ECANCELED, as
  // on epoll, touching nothing.
  static int connect_unix_now(int fd, int via, const address& to, const file_id* expect) noexcept;
  static constexpr kernel_timespec retry_after{0, 1000000};  // 1 ms, as on epoll

  int fd_;
  address addr_;  // by value: the kernel reads it after await_suspend returns
  bool by_hand_;
  file_id id_;  // of fd_, once its first connect found the backlog full
  int own_ = -1;  // then: its duplicate, which the tries go to (review43 F1)
};

class recv_op : public operation<recv_op> {
 public:
  recv_op(executor& ex, int fd, std::span<std::byte> buf, int flags, op_options o)
      : operation(ex, o), fd_(fd), flags_(flags), buf_(buf) {}
  void prepare(io_request& r) {
    r.op = io_op::recv;
    r.fd = fd_;
    r.buf = buf_.data();
    r.len = buf_.size();
    r.flags = flags_;
  }
  bool on_complete() {
    // A recv interrupted before it read anything is retried, never reported.
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
  int flags_;
  std::span<std::byte> buf_;
};

class recv_provided_op : public operation<recv_provided_op> {
 public:
  recv_provided_op(executor& ex, int fd, buffer_ring& br, op_options o) : operation(ex, o), fd_(fd), br_(br) {}
  void prepare(io_request& r) {
    r.op = io_op::recv_provided;
    r.fd = fd_;
    r.buffers = &br_;
  }
  bool on_complete() {
    if (res_ == -EINTR || res_ == -EAGAIN) {
      issue();
      return true;
    }
    return false;
  }
  result<provided_recv> await_resume() {
    int r = result_code();
    provided_recv out;
    // Where the bytes are (one slice: this recv asks for no bundle), kept
    // for the caller; and the ring's own accounting, bytes or not.
    if (flags_ & cqe_buffer)
      br_.consume(flags_, r, [&out](const buffer_ring::slice& s) noexcept {
        out.has_buffer = true;
        out.id = s.id;
        out.offset = s.offset;
        return true;
      });
    if (r < 0) return errno_code(-r);
    out.len = static_cast<std::size_t>(r);
    return out;
  }

 private:
  int fd_;
  buffer_ring& br_;
};

// One send, or (all = true) as many as it takes to send every byte: a short
// send resubmits the rest from the completion, without resuming the coroutine.
class send_op : public operation<send_op> {
 public:
  send_op(executor& ex, int fd, std::span<const std::byte> buf, bool all, op_options o, bool zero_copy = false)
      : operation(ex, o), fd_(fd), all_(all), zero_copy_(zero_copy), buf_(buf) {}
  void prepare(io_request& r) {
    // Zero-copy: the buffer is held until the kernel's notification.
    r.op = zero_copy_ ? io_op::send_zero_copy : io_op::send;
    r.fd = fd_;
    r.buf = const_cast<std::byte*>(buf_.data() + sent_);
    r.len = buf_.size() - sent_;
    r.flags = MSG_NOSIGNAL;
  }
  // Sees every completion, stopped or not: the bytes of the last send count
  // either way, and a send_all stopped before its last byte is an error
  // (ECANCELED, or ETIMEDOUT for its deadline) however much went out; sent()
  // says how much.
  bool finish(bool stopped) {
    bool go_on;
    if (zero_copy_ && (res_ == -EOPNOTSUPP || res_ == -EINVAL)) {  // no zero-copy here: copy
      zero_copy_ = false;
      go_on = true;
    } else {
      if (res_ > 0) sent_ += static_cast<std::size_t>(res_);
      go_on = res_ == -EINTR || res_ == -EAGAIN || (all_ && res_ > 0 && sent_ < buf_.size());
    }
    if (!go_on) return false;
    if (stopped) {
      res_ = -ECANCELED;  // result_code() maps it to ETIMEDOUT when the deadline fired
      return false;
    }
    issue();
    return true;
  }
  bool await_ready() noexcept {
    if (buf_.empty()) return true;  // nothing to send: no system call
    return operation::await_ready();
  }
  result<std::size_t> await_resume() {
    if (buf_.empty()) return std::size_t{0};
    int r = result_code();
    if (r < 0) return errno_code(-r);
    return all_ ? sent_ : static_cast<std::size_t>(r);
  }
  std::size_t sent() const noexcept { return sent_; }

 private:
  int fd_;
  bool all_;
  bool zero_copy_;
  std::span<const std::byte> buf_;
  std::size_t sent_ = 0;
};

class shutdown_op : public operation<shutdown_op> {
 public:
  shutdown_op(executor& ex, int fd, int how, op_options o) : operation(ex, o), fd_(fd), how_(how) {}
  void prepare(io_request& r) {
    r.op = io_op::shutdown;
    r.fd = fd_;
    r.flags = how_;
  }
  bool on_complete() { return false; }
  result<void> await_resume() {
    int r = result_code();
    if (r < 0) return errno_code(-r);
    return {};
  }

 private:
  int fd_, how_;
};

class close_op : public operation<close_op> {
 public:
  close_op(executor& ex, int fd) : operation(ex, {}), fd_(fd) {}
  bool await_ready() noexcept {
    if (fd_ < 0) {
      res_ = -EBADF;
      return true;
    }
    // A stopping executor still closes: a descriptor must never leak.
    if (ex_.stopping()) {
      ex_.forget_descriptor(fd_);
      res_ = ::close(fd_) == 0 ? 0 : -errno;
      return true;
    }
    return false;
  }
  void prepare(io_request& r) {
    r.op = io_op::close;
    r.fd = fd_;
  }
  bool on_complete() { return false; }
  result<void> await_resume() {
    if (res_ < 0) return errno_code(-res_);
    return {};
  }

 private:
  int fd_;
};

}  // namespace detail

class socket {
 public:
  socket() noexcept = default;
  // Takes `fd` (a descriptor the executor may not have seen before).
  socket(executor& ex, int fd) noexcept : ex_(&ex), fd_(fd) { ex.forget_descriptor(fd); }
  socket(socket&& o) noexcept;
  socket& operator=(socket&& o) noexcept;
  socket(const socket&) = delete;
  socket& operator=(const socket&) = delete;
  // Closes synchronously if still open. (On epoll, operations still waiting
  // on it end with ECANCELED; on io_uring they end as the kernel ends them.)
  ~socket();

  // A new socket of `family` (AF_INET, AF_INET6, AF_UNIX), close-on-exec.
  static result<socket> open(executor& ex, int family, int type = SOCK_STREAM);

  int fd() const noexcept { return fd_; }
  bool is_open() const noexcept { return fd_ >= 0; }
  executor& get_executor() const noexcept { return *ex_; }
  int release() noexcept;

  // Operations that do not name a stop_token of their own use this one. A
  // server gives each accepted socket its stop token this way, so stopping
  // the server cancels whatever its handlers are waiting on.
  void set_stop_token(std::stop_token t) noexcept { stop_ = std::move(t); }
  const std::stop_token& stop_token() const noexcept { return stop_; }

  [[nodiscard]] detail::accept_op accept(address* peer = nullptr, op_options o = {}) {
    return {*ex_, fd_, peer, with_stop(o)};
  }
  [[nodiscard]] detail::connect_op connect(const address& to, op_options o = {}) {
    return {*ex_, fd_, to, with_stop(o)};
  }
  // Reads what is there, up to buf.size(); 0 means the peer closed its side.
  [[nodiscard]] detail::recv_op recv(std::span<std::byte> buf, op_options o = {}) {
    return {*ex_, fd_, buf, 0, with_stop(o)};
  }
  // Reads into one of `br`'s buffers, chosen by the kernel when data arrives:
  // nothing is held while waiting. -ENOBUFS when every buffer is in use.
  [[nodiscard]] detail::recv_provided_op recv_provided(buffer_ring& br, op_options o = {}) {
    return {*ex_, fd_, br, with_stop(o)};
  }
  // One send: may write fewer bytes than given.
  [[nodiscard]] detail::send_op send(std::span<const std::byte> buf, op_options o = {}) {
    return {*ex_, fd_, buf, false, with_stop(o)};
  }
  // Every byte, or an error: short sends are continued inside the operation.
  [[nodiscard]] detail::send_op send_all(std::span<const std::byte> buf, op_options o = {}) {
    return {*ex_, fd_, buf, true, with_stop(o)};
  }
  // send_all with IORING_OP_SEND_ZC (Linux 6.0): the kernel sends from `buf`
  // without copying it and the operation completes when it has let go of it.
  // Falls back to a copying send where zero-copy is unsupported (and on
  // the epoll backend).
  [[nodiscard]] detail::send_op send_all_zero_copy(std::span<const std::byte> buf, op_options o = {}) {
    return {*ex_, fd_, buf, true, with_stop(o), true};
  }
  [[nodiscard]] detail::send_op send_all(std::string_view s, op_options o = {}) {
    return send_all(std::as_bytes(std::span(s.data(), s.size())), o);
  }
  [[nodiscard]] detail::shutdown_op shutdown(int how = SHUT_WR, op_options o = {}) {
    return {*ex_, fd_, how, with_stop(o)};
  }
  // Close through the backend; the socket is empty afterwards whatever the result.
  [[nodiscard]] detail::close_op close() { return {*ex_, release()}; }

  result<void> set_option(int level, int name, int value) noexcept;
  result<address> local_address() const;
  result<address> peer_address() const;

 private:
  void close_now() noexcept;
  op_options with_stop(op_options o) const {
    if (!o.stop) o.stop = &stop_;
    return o;
  }
  executor* ex_ = nullptr;
  int fd_ = -1;
  std::stop_token stop_;
};

struct listen_options {
  int backlog = SOMAXCONN;
  bool reuse_address = true;  // restart at once after a crash (TIME_WAIT)
  // SO_REUSEPORT: other sockets may bind the same address too, each with its
  // own accept queue (the kernel spreads connections over them): this
  // process's other threads, but also any process of the same user that sets
  // it. Off by default, so that a port already taken is EADDRINUSE.
  bool reuse_port = false;
  // Unix-domain paths (not abstract @names): a socket file left behind by a
  // server that is gone (connecting to it is refused) is removed and the path
  // bound again. A path where someone listens stays EADDRINUSE; a path that
  // is not a socket is EEXIST and is never removed.
  bool replace_stale_socket_file = true;
};

// socket + bind + listen. These three are synchronous system calls: they run
// once per listener, and io_uring gained bind/listen only in Linux 6.11.
// The caller owns a Unix-domain socket file this creates (see
// detail::unix_socket_file in server.hpp); if listen() itself fails after
// bind, it removes the file again.
result<socket> listen(executor& ex, const address& at, listen_options o = {});

// A connected socket to `to`.
task<result<socket>> connect(executor& ex, address to, op_options o = {});

// connect(host, port)'s options: op_options' two, and the pace of its
// attempts when the host has several addresses.
struct connect_options {
  // The lookup's deadline, and each attempt's, from when it starts (0: none).
  std::chrono::nanoseconds timeout{0};
  // Ends the lookup and every attempt with ECANCELED; it must outlive the
  // connect. It may be requested from any thread.
  const std::stop_token* stop = nullptr;
  // RFC 8305's Connection Attempt Delay: how long an attempt may go
  // unanswered before the next address is tried beside it (an address
  // whose SYNs are dropped would otherwise hold back a working one for the
  // whole timeout). 0: one address at a time, the next when one fails.
  std::chrono::nanoseconds happy_eyeballs_delay = std::chrono::milliseconds(250);
};
// Resolves `host` without blocking the executor (resolver.hpp: on a
// resolver thread; a numeric host at once), then connects to the first of
// its addresses that answers, RFC 8305 style ("happy eyeballs",
// detail/happy_eyeballs.hpp): the families interleaved (the first
// address's, usually IPv6, then IPv4, alternately); the first attempt at
// once, the next one whenever the last one started has not connected after
// o.happy_eyeballs_delay or an attempt fails, so several may be in flight;
// the first to connect wins and the others are cancelled and closed. A
// cancelled connect (o.stop, the executor stopping) ends at once with
// ECANCELED, trying no further address; otherwise the error is that of the
// attempt that ended last (ETIMEDOUT for one that o.timeout cut short).
task<result<socket>> connect(executor& ex, std::string host, std::uint16_t port, connect_options o = {});
// The same for addresses known already (looked up once, at start): the
// first of `to` that answers, as above; EINVAL when `to` is empty.
task<result<socket>> connect(executor& ex, std::vector<address> to, connect_options o = {});

}  // namespace ringframe
