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
// And what a gather costs beside a plain send: 1 KiB sent over loopback TCP
// with send(2) and with sendmsg(2) of one iovec (the msghdr and the iovec
// are copied in), each call timed alone (two clock reads around it, the
// same for both) and the bytes drained by an untimed recv. send_queue
// sends a gather list that comes to one entry with send for this.
//
// And what the code between two system calls pays for the memory it
// touches: getppid(2) followed by one load from each of 64 pages spread
// over 64 MiB, against getppid alone and against the loads alone. Where
// every kernel entry flushes the TLB (page-table isolation without PCID, as
// on the VM ringframe is measured on), each page the user code touches
// after a call costs a page walk, so a message's cost depends on how many
// pages of code and data its path touches, more than on its instructions
// (docs/io-path.md, "A profile-guided build").
//
//   ringframe-syscall-cost [--json]
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/uio.h>
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
constexpr int sends_per_round = 20000;

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

// A connected loopback TCP pair (client, server), or false.
bool tcp_pair(int& c, int& s) {
  int l = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (l < 0) return false;
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof a;
  c = s = -1;
  if (::bind(l, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0 && ::listen(l, 1) == 0 &&
      ::getsockname(l, reinterpret_cast<sockaddr*>(&a), &len) == 0 &&
      (c = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0)) >= 0 &&
      ::connect(c, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0)
    s = ::accept4(l, nullptr, nullptr, SOCK_CLOEXEC);
  ::close(l);
  const int one = 1;
  if (s < 0 || ::setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) != 0) {
    if (c >= 0) ::close(c);
    if (s >= 0) ::close(s);
    return false;
  }
  return true;
}

// The mean time of one call of `send_one` (which sends `n` bytes), each
// call timed alone, the bytes drained from `s` between calls.
template <class F>
double mean_send_ns(int s, std::size_t n, F&& send_one) {
  static std::vector<char> sink(64 * 1024);
  double total = 0;
  for (int i = 0; i < sends_per_round; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    if (send_one() != static_cast<ssize_t>(n)) std::abort();  // 1 KiB into an empty socket
    const auto t1 = std::chrono::steady_clock::now();
    total += std::chrono::duration<double, std::nano>(t1 - t0).count();
    for (std::size_t got = 0; got < n;) {
      const ssize_t k = ::recv(s, sink.data(), sink.size(), 0);
      if (k <= 0) std::abort();
      got += static_cast<std::size_t>(k);
    }
  }
  return total / sends_per_round;
}

// Loads from `pages` pages spread over a mapping of 64 MiB, 1 MiB (plus a
// line per page) apart, so that neighbours share no page-table line either.
struct spread_pages {
  static constexpr std::size_t span = 64u << 20;
  static constexpr int pages = 64;
  char* base = nullptr;
  spread_pages() {
    void* p = ::mmap(nullptr, span, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return;
    base = static_cast<char*>(p);
    for (int k = 0; k < pages; ++k) base[at(k)] = 1;
  }
  ~spread_pages() {
    if (base) ::munmap(base, span);
  }
  static std::size_t at(int k) { return static_cast<std::size_t>(k) * (span / pages) + 64 * (k % 64); }
  int touch() const {
    int sum = 0;
    for (int k = 0; k < pages; ++k) sum += *static_cast<volatile char*>(base + at(k));
    return sum;
  }
};

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
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
                   "usage: %s [--json]\n  the median cost of a recv(2) that finds nothing and of getppid(2), of\n  sending 1 KiB over loopback TCP with send(2) and with sendmsg(2) of one iovec,\n  and of a page first touched after a system call\n", argv[0]);
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
  spread_pages spread;
  if (!spread.base) {
    std::perror("ringframe-syscall-cost: mmap");
    return 1;
  }
  int sum = 0;
  const double touch_ns = median_ns([&] { sum += spread.touch(); });
  const double getppid_touch_ns = median_ns([&] {
    (void)::getppid();
    sum += spread.touch();
  });
  if (sum != rounds * calls * spread_pages::pages * 2) std::abort();  // (and the loads are not dropped)
  const double page_after_call_ns = (getppid_touch_ns - getppid_ns) / spread_pages::pages;
  const double page_ns = touch_ns / spread_pages::pages;
  int c, s;
  if (!tcp_pair(c, s)) {
    std::perror("ringframe-syscall-cost: a loopback TCP connection");
    return 1;
  }
  std::vector<char> kib(1024, 'x');
  // Alternating rounds, so that a drift of the machine's speed hits both.
  std::vector<double> sends, sendmsgs;
  for (int r = 0; r < rounds; ++r) {
    sends.push_back(mean_send_ns(s, kib.size(), [&] {
      return ::send(c, kib.data(), kib.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
    }));
    sendmsgs.push_back(mean_send_ns(s, kib.size(), [&] {
      iovec v{kib.data(), kib.size()};
      msghdr m{};
      m.msg_iov = &v;
      m.msg_iovlen = 1;
      return ::sendmsg(c, &m, MSG_NOSIGNAL | MSG_DONTWAIT);
    }));
  }
  const double send_ns = median(sends), sendmsg_ns = median(sendmsgs);
  ::close(c);
  ::close(s);
  ::close(done[1]);
  idle.join();
  if (json)
    std::printf(
        "{\"bench\":\"syscall_cost\",\"recv_eagain_ns\":%.1f,\"getppid_ns\":%.1f,\"send_1k_ns\":%.1f,"
        "\"sendmsg_1k_ns\":%.1f,\"page_after_call_ns\":%.2f,\"page_ns\":%.2f}\n",
        recv_ns, getppid_ns, send_ns, sendmsg_ns, page_after_call_ns, page_ns);
  else
    std::printf(
        "a system call here: recv on an empty socket %.0f ns, getppid %.0f ns (medians of %d x %d calls)\n"
        "1 KiB over loopback TCP: send %.0f ns, sendmsg with one iovec %.0f ns (%.2fx; medians of %d alternating rounds of %d)\n"
        "a page first touched after a system call: %.1f ns (%.1f ns without the call; %d pages 1 MiB apart)\n",
        recv_ns, getppid_ns, rounds, calls, send_ns, sendmsg_ns, sendmsg_ns / send_ns, rounds, sends_per_round,
        page_after_call_ns, page_ns, spread_pages::pages);
  return 0;
}
