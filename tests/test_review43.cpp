// review43: the review42 fix (a Unix-domain connect waiting for room in a
// full backlog checks, before each try by descriptor number, that the
// number is still its socket: io_uring's connect_op in
// lib/ringframe/socket.hpp + lib/src/socket.cpp, the epoll backend's retry
// list in lib/src/backend/epoll_backend.cpp).
//
// F1: the check (fstat) and the act (fcntl, connect) were two steps on the
// number: a descriptor closed and its number taken between them (by another
// thread: a socket destroyed on a thread other than its executor's is closed
// without the executor being told, socket::close_now) was still connected
// in the socket's place, and on io_uring its O_NONBLOCK flipped. The test
// makes that moment certain: it replaces fstat64 (the call both backends
// make) with one that, armed, closes the descriptor and opens a new socket
// on its number right after answering, as another thread could.
#include "loopback.hpp"

#include <ringframe/address.hpp>
#include <ringframe/executor.hpp>
#include <ringframe/socket.hpp>
#include <ringframe/timer.hpp>

#include <doctest/doctest.h>

#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <string>

using namespace ringframe;
using namespace std::chrono_literals;

namespace {
// Armed: the descriptor whose next fstat is followed by its close and a new
// socket on its number (written to `swapped_to`).
std::atomic<int> swap_after_fstat{-1};
std::atomic<int> swapped_to{-1};
}  // namespace

// x86_64: the kernel's struct stat is glibc's struct stat64.
extern "C" int fstat64(int fd, struct stat64* st) noexcept {
  const int r = static_cast<int>(::syscall(SYS_fstat, fd, st));
  int expected = fd;
  if (fd >= 0 && swap_after_fstat.compare_exchange_strong(expected, -1)) {
    ::close(fd);
    swapped_to = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);  // the lowest free number: fd's
  }
  return r;
}

namespace {

using testing::unix_full;

struct connected {
  result<void> r{std::errc::io_error};
  bool done = false;
};

task<void> connect_sock(ringframe::socket* s, address to, op_options o, connected* out) {
  out->r = co_await s->connect(to, o);
  out->done = true;
}

// Once the connect waits for room: the socket leaves ringframe (release(),
// as when it is closed on a thread that is not its executor's), the
// backlog gets room, and the next fstat of its number is followed by the
// number's close and reuse.
task<void> race_next_try(executor* ex, ringframe::socket* s, int listen_fd, int* old_fd, int* taken) {
  result<void> slept = co_await sleep_for(*ex, 30ms);
  REQUIRE(slept);
  *old_fd = s->release();
  *taken = ::accept4(listen_fd, nullptr, nullptr, SOCK_CLOEXEC);
  swap_after_fstat = *old_fd;
  result<void> again = co_await sleep_for(*ex, 100ms);
  REQUIRE(again);
}

const char* name(backend_kind k) { return k == backend_kind::epoll ? "epoll" : "io_uring"; }
std::string what(const result<void>& r) { return r ? std::string("connected") : r.error().message(); }

}  // namespace

TEST_CASE("review43 F1: a Unix connect's number closed and taken between its check and its try: the new descriptor is left alone") {
  testing::on_each_backend([](backend_kind k) {
    unix_full u;
    REQUIRE(u.full());
    executor ex(testing::on(k));
    result<ringframe::socket> s = ringframe::socket::open(ex, AF_UNIX);
    REQUIRE(s);
    connected c;
    int old_fd = -1, taken = -1;
    swapped_to = -1;
    ex.spawn(connect_sock(&*s, u.at, {.timeout = 2s}, &c));
    ex.spawn(race_next_try(&ex, &*s, u.fd, &old_fd, &taken));
    ex.run_until_idle();
    swap_after_fstat = -1;
    const int fresh = swapped_to;
    INFO(name(k) << ": the connect: " << (c.done ? what(c.r) : std::string("not done")) << "; old fd " << old_fd
                 << ", the new socket's " << fresh);
    REQUIRE(taken >= 0);
    REQUIRE(fresh >= 0);  // the hook ran: the retry checked the number
    REQUIRE(fresh == old_fd);
    sockaddr_storage peer{};
    socklen_t len = sizeof peer;
    const int gp = ::getpeername(fresh, reinterpret_cast<sockaddr*>(&peer), &len);
    const int gp_errno = gp == 0 ? 0 : errno;
    CHECK_MESSAGE(gp != 0, "a socket nobody connected is connected to " << u.path);
    CHECK(gp_errno == ENOTCONN);
    CHECK((::fcntl(fresh, F_GETFL) & O_NONBLOCK) == 0);
    CHECK(c.done);
    CHECK(ex.inflight() == 0);
    ::close(fresh);
    ::close(taken);
  });
}
