// ringframe-syscall-cost: what one system call costs on this machine.
//
// The readiness (epoll) backend pays at least two system calls per request
// at depth 1 (a recv and a send; epoll_wait is shared by the connections
// that are ready together), io_uring one io_uring_enter per loop turn for
// all of them. How far apart the two backends are at depth 1 therefore
// depends on the price of a system call, which varies tenfold between bare
// metal and some virtual machines (where each one leaves the guest). This
// measures it, so that bench results can be read with it: the median over
// ROUNDS of a recv(2) on an empty non-blocking socket (EAGAIN: the entry,
// the socket lookup and the exit, no data) and of getppid(2) (entry and exit
// only). A second thread is kept alive, as in ringframe's server (glibc's
// wrappers then take the cancellation-point path, as they do there).
//
//   ringframe-syscall-cost [--json]
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <vector>

namespace {
constexpr int rounds = 7;
constexpr int calls = 100000;

template <class F>
double median_ns(F&& call) {
  std::vector<double> per_call;
  for (int r = 0; r < rounds; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < calls; ++i) call();
    const auto t1 = std::chrono::steady_clock::now();
    per_call.push_back(std::chrono::duration<double, std::nano>(t1 - t0).count() / calls);
  }
  std::sort(per_call.begin(), per_call.end());
  return per_call[per_call.size() / 2];
}
}  // namespace

int main(int argc, char** argv) {
  bool json = false;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--json") == 0) {
      json = true;
    } else {
      const bool help = std::strcmp(argv[i], "--help") == 0 || std::strcmp(argv[i], "-h") == 0;
      std::fprintf(help ? stdout : stderr,
                   "usage: %s [--json]\n  the median cost of a recv(2) that finds nothing and of getppid(2)\n", argv[0]);
      return help ? 0 : 2;
    }
  }
  int sv[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) != 0) {
    std::perror("ringframe-syscall-cost: socketpair");
    return 1;
  }
  // A thread that waits until the measurement is done (a pipe's end).
  int done[2];
  if (::pipe(done) != 0) {
    std::perror("ringframe-syscall-cost: pipe");
    return 1;
  }
  std::thread idle([fd = done[0]] {
    char c;
    while (::read(fd, &c, 1) < 0 && errno == EINTR) {
    }
  });
  char buf[64];
  const double recv_ns = median_ns([&] {
    if (::recv(sv[0], buf, sizeof buf, MSG_DONTWAIT) >= 0) std::abort();  // nothing is ever sent
  });
  const double getppid_ns = median_ns([] { (void)::getppid(); });
  ::close(done[1]);
  idle.join();
  if (json)
    std::printf("{\"bench\":\"syscall_cost\",\"recv_eagain_ns\":%.1f,\"getppid_ns\":%.1f}\n", recv_ns, getppid_ns);
  else
    std::printf("a system call here: recv on an empty socket %.0f ns, getppid %.0f ns (medians of %d x %d calls)\n",
                recv_ns, getppid_ns, rounds, calls);
  return 0;
}
