#include <ringframe/socket.hpp>

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <unistd.h>

#include <utility>

namespace ringframe {

result<socket> detail::accept_op::await_resume() {
  int r = result_code();
  if (r < 0) return errno_code(-r);
  return socket(ex_, r);
}

socket::socket(socket&& o) noexcept : ex_(o.ex_), fd_(std::exchange(o.fd_, -1)), stop_(std::move(o.stop_)) {}

socket& socket::operator=(socket&& o) noexcept {
  if (this != &o) {
    if (fd_ >= 0) ::close(fd_);
    ex_ = o.ex_;
    fd_ = std::exchange(o.fd_, -1);
    stop_ = std::move(o.stop_);
  }
  return *this;
}

socket::~socket() {
  if (fd_ >= 0) ::close(fd_);
}

int socket::release() noexcept { return std::exchange(fd_, -1); }

result<socket> socket::open(executor& ex, int family, int type) {
  int fd = ::socket(family, type | SOCK_CLOEXEC, 0);
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

result<socket> listen(executor& ex, const address& at, listen_options o) {
  auto s = socket::open(ex, at.family());
  if (!s) return s.error();
  if (at.family() != AF_UNIX) {
    if (o.reuse_address)
      if (auto r = s->set_option(SOL_SOCKET, SO_REUSEADDR, 1); !r) return r.error();
    if (o.reuse_port)
      if (auto r = s->set_option(SOL_SOCKET, SO_REUSEPORT, 1); !r) return r.error();
  }
  if (::bind(s->fd(), at.data(), at.size()) != 0) return errno_code(errno);
  if (::listen(s->fd(), o.backlog) != 0) return errno_code(errno);
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

task<result<socket>> connect(executor& ex, std::string host, std::uint16_t port, op_options o) {
  auto addrs = address::resolve(host, port);
  if (!addrs) co_return addrs.error();
  std::error_code last = std::make_error_code(std::errc::host_unreachable);
  for (const address& a : *addrs) {
    result<socket> s = co_await connect(ex, a, o);
    if (s) co_return s;
    last = s.error();
  }
  co_return last;
}

}  // namespace ringframe
