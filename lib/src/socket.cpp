#include <ringframe/socket.hpp>

#include <ringframe/detail/happy_eyeballs.hpp>
#include <ringframe/resolver.hpp>

#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstddef>
#include <cstring>
#include <string>
#include <utility>

namespace ringframe {

result<socket> detail::accept_op::await_resume() {
  int r = result_code();
  if (r < 0) return errno_code(-r);
  return socket(ex_, r);
}

int detail::connect_op::identify(int fd, file_id& out) noexcept {
  struct stat st{};
  if (::fstat(fd, &st) != 0) return -errno;
  out.dev = static_cast<std::uint64_t>(st.st_dev);
  out.ino = static_cast<std::uint64_t>(st.st_ino);
  return 0;
}

detail::connect_op::~connect_op() {
  if (own_ >= 0) ::close(own_);
}

int detail::connect_op::duplicate(int fd) noexcept { return ::fcntl(fd, F_DUPFD_CLOEXEC, 0); }

// `via` (a duplicate of fd's socket, or fd itself) is the descriptor the
// flags and the connect go to: `fd` is only checked. Closed and its number
// taken between the check and the connect (by another thread), the number
// is then another descriptor, which must not be touched (review43 F1).
int detail::connect_op::connect_unix_now(int fd, int via, const address& to, const file_id* expect) noexcept {
  if (expect) {
    file_id now;
    if (identify(fd, now) != 0 || now.dev != expect->dev || now.ino != expect->ino) return -ECANCELED;
  }
  const int flags = ::fcntl(via, F_GETFL);
  if (flags < 0) return -errno;
  const bool was_blocking = (flags & O_NONBLOCK) == 0;
  if (was_blocking && ::fcntl(via, F_SETFL, flags | O_NONBLOCK) != 0) return -errno;
  int r = 0;
  do {
    r = ::connect(via, to.data(), to.size()) == 0 ? 0 : -errno;
  } while (r == -EINTR);
  // Put back as it was: io_uring's operations on a socket that says
  // O_NONBLOCK return EAGAIN where they would otherwise wait in the kernel.
  if (was_blocking && ::fcntl(via, F_SETFL, flags) != 0 && r == 0) r = -errno;
  return r;
}

socket::socket(socket&& o) noexcept : ex_(o.ex_), fd_(std::exchange(o.fd_, -1)), stop_(std::move(o.stop_)) {}

socket& socket::operator=(socket&& o) noexcept {
  if (this != &o) {
    close_now();
    ex_ = o.ex_;
    fd_ = std::exchange(o.fd_, -1);
    stop_ = std::move(o.stop_);
  }
  return *this;
}

socket::~socket() { close_now(); }

// The executor is told first (the epoll backend ends operations still
// waiting on the descriptor: closed, it would never hear of them again),
// unless it is gone or belongs to another thread: a socket may outlive it.
// A backend that keeps state per descriptor also starts afresh when the
// number comes back (socket's constructor, accept).
void socket::close_now() noexcept {
  if (fd_ < 0) return;
  if (executor::alive_here(ex_)) ex_->forget_descriptor(fd_);
  ::close(std::exchange(fd_, -1));
}

int socket::release() noexcept { return std::exchange(fd_, -1); }

result<socket> socket::open(executor& ex, int family, int type) {
  // Non-blocking from the start where readiness drives it (epoll).
  const int nonblock = ex.backend() == backend_kind::epoll ? SOCK_NONBLOCK : 0;
  int fd = ::socket(family, type | SOCK_CLOEXEC | nonblock, 0);
  if (fd < 0) return errno_code(errno);
  socket s(ex, fd);
  if (family == AF_INET || family == AF_INET6) {
    // Small framed messages must not wait for Nagle's timer.
    if (auto r = s.set_option(IPPROTO_TCP, TCP_NODELAY, 1); !r) return r.error();
  }
  return s;
}

result<void> socket::set_option(int level, int name, int value) noexcept {
  if (::setsockopt(fd_, level, name, &value, sizeof value) != 0) return errno_code(errno);
  return {};
}

result<address> socket::local_address() const {
  address a;
  *a.size_ptr() = address::capacity();
  if (::getsockname(fd_, a.data(), a.size_ptr()) != 0) return errno_code(errno);
  return a;
}

result<address> socket::peer_address() const {
  address a;
  *a.size_ptr() = address::capacity();
  if (::getpeername(fd_, a.data(), a.size_ptr()) != 0) return errno_code(errno);
  return a;
}

namespace {

// The file name of a Unix-domain address, or "" for an abstract @name (and
// for anything that is not AF_UNIX).
std::string unix_path_of(const address& at) {
  if (at.family() != AF_UNIX || at.size() <= offsetof(sockaddr_un, sun_path)) return {};
  const auto* un = reinterpret_cast<const sockaddr_un*>(at.data());
  if (un->sun_path[0] == '\0') return {};
  return std::string(un->sun_path, ::strnlen(un->sun_path, at.size() - offsetof(sockaddr_un, sun_path)));
}

// bind() said EADDRINUSE for a Unix path. Returns true when the file was a
// socket nobody listens on (connect() refused) and has been removed;
// otherwise false with `err` saying why it stays: EADDRINUSE (someone
// listens, or it cannot be told), EEXIST (not a socket: never touched).
//
// The race left: two servers that start at the same instant on the same
// stale path may both remove it, and the second removal unlinks the first
// one's fresh file (it keeps listening, unreachable by name). Servers that
// must exclude that hold a lock file around the start.
bool remove_stale_socket_file(const address& at, const std::string& path, std::error_code& err) {
  err = errno_code(EADDRINUSE);
  struct stat st {};
  if (::lstat(path.c_str(), &st) != 0) return errno == ENOENT;  // gone meanwhile: bind again
  if (!S_ISSOCK(st.st_mode)) {
    err = errno_code(EEXIST);
    return false;
  }
  int probe = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (probe < 0) return false;
  int r = ::connect(probe, at.data(), at.size());
  int e = r == 0 ? 0 : errno;
  ::close(probe);
  // Accepted, or EAGAIN (a full backlog): a live listener (which sees one
  // connection come and go). EPROTOTYPE: a datagram socket owns it. Anything
  // else but a refusal: leave it alone.
  if (e != ECONNREFUSED) return false;
  if (::unlink(path.c_str()) != 0 && errno != ENOENT) return false;
  return true;
}

}  // namespace

result<socket> listen(executor& ex, const address& at, listen_options o) {
  auto s = socket::open(ex, at.family());
  if (!s) return s.error();
  if (at.family() != AF_UNIX) {
    if (o.reuse_address)
      if (auto r = s->set_option(SOL_SOCKET, SO_REUSEADDR, 1); !r) return r.error();
    if (o.reuse_port)
      if (auto r = s->set_option(SOL_SOCKET, SO_REUSEPORT, 1); !r) return r.error();
  }
  const std::string path = unix_path_of(at);
  if (::bind(s->fd(), at.data(), at.size()) != 0) {
    std::error_code err = errno_code(errno);
    if (err != std::errc::address_in_use || path.empty() || !o.replace_stale_socket_file) return err;
    if (!remove_stale_socket_file(at, path, err)) return err;
    if (::bind(s->fd(), at.data(), at.size()) != 0) return errno_code(errno);
  }
  if (::listen(s->fd(), o.backlog) != 0) {
    std::error_code err = errno_code(errno);
    if (!path.empty()) ::unlink(path.c_str());  // ours: bind just created it
    return err;
  }
  return std::move(*s);
}

task<result<socket>> connect(executor& ex, address to, op_options o) {
  auto s = socket::open(ex, to.family());
  if (!s) co_return s.error();
  socket sock = std::move(*s);
  result<void> r = co_await sock.connect(to, o);
  if (!r) co_return r.error();
  co_return std::move(sock);
}

task<result<socket>> connect(executor& ex, std::string host, std::uint16_t port, connect_options o) {
  // Off the loop's thread (resolver.hpp); a numeric host does not suspend.
  task<result<std::vector<address>>> lookup =
      resolve(ex, std::move(host), port, {.timeout = o.timeout, .stop = o.stop});
  result<std::vector<address>> addrs = co_await std::move(lookup);
  if (!addrs) co_return addrs.error();
  task<result<socket>> attempts = connect(ex, std::move(*addrs), o);
  result<socket> s = co_await std::move(attempts);
  co_return s;
}

task<result<socket>> connect(executor& ex, std::vector<address> to, connect_options o) {
  if (to.empty()) co_return errno_code(EINVAL);
  task<result<socket>> attempts =
      detail::connect_first(&ex, std::move(to), o.happy_eyeballs_delay, o.timeout,
                            std::chrono::steady_clock::time_point::max(), o.stop ? *o.stop : std::stop_token());
  result<socket> s = co_await std::move(attempts);
  co_return s;
}

}  // namespace ringframe
