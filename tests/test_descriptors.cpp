// Why ringframe keeps sockets as plain descriptors, not io_uring "direct"
// (registered) ones: liburing issue 1192 (docs/io-path.md). The first test
// shows the hazard on this kernel with liburing alone; the second holds
// ringframe to the guarantee that plain descriptors give.
#include "loopback.hpp"

#include <ringframe/app.hpp>
#include <ringframe/handler.hpp>
#include <ringframe/server.hpp>

#include <doctest/doctest.h>

#include <liburing.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>

using namespace ringframe;
using namespace std::chrono_literals;

namespace {

// Does `fd`'s peer show end of stream within `wait`?
bool peer_sees_eof(int fd, std::chrono::milliseconds wait) {
  pollfd p{fd, POLLIN, 0};
  if (::poll(&p, 1, static_cast<int>(wait.count())) <= 0) return false;
  char c;
  return ::recv(fd, &c, 1, MSG_DONTWAIT) == 0;
}

// /proc/net/sockstat "TCP: inuse N": TCP sockets alive in this network
// namespace, with or without a descriptor (1192's leak has none).
long tcp_sockets_in_use() {
  std::ifstream f("/proc/net/sockstat");
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind("TCP:", 0) != 0) continue;
    std::istringstream in(line);
    std::string tcp, inuse;
    long n = -1;
    in >> tcp >> inuse >> n;
    return n;
  }
  return -1;
}

}  // namespace

TEST_CASE("a direct descriptor keeps its socket open after close(): the hazard ringframe avoids") {
  io_uring ring;
  REQUIRE(io_uring_queue_init(8, &ring, 0) == 0);
  REQUIRE(io_uring_register_files_sparse(&ring, 2) == 0);
  int pair[2];
  REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair) == 0);
  // The setup: a request that stays pending on a direct descriptor
  // (a poll standing in for a long-lived accept or recv).
  int other[2];
  REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, other) == 0);
  REQUIRE(io_uring_register_files_update(&ring, 0, &other[0], 1) == 1);
  io_uring_sqe* sqe = io_uring_get_sqe(&ring);
  io_uring_prep_poll_add(sqe, 0, POLLIN);
  sqe->flags |= IOSQE_FIXED_FILE;
  io_uring_sqe_set_data64(sqe, 1);
  REQUIRE(io_uring_submit(&ring) == 1);

  // Register one end of the pair, then close its ordinary descriptor, as a
  // server does when a connection ends.
  REQUIRE(io_uring_register_files_update(&ring, 1, &pair[0], 1) == 1);
  REQUIRE(::close(pair[0]) == 0);
  // The connection has not ended: the direct slot holds its own reference.
  CHECK_FALSE(peer_sees_eof(pair[1], 100ms));

  // Only emptying the slot as well ends it. Whether that takes effect now or
  // only once the pending poll completes is what differs between kernels
  // (the leak of issue 1192); reported, not asserted.
  int empty = -1;
  REQUIRE(io_uring_register_files_update(&ring, 1, &empty, 1) == 1);
  bool released_now = peer_sees_eof(pair[1], 200ms);
  MESSAGE("this kernel " << std::string(released_now ? "releases" : "does NOT release")
                         << " a socket removed from the direct table while another direct request is pending");
  io_uring_queue_exit(&ring);  // cancels the poll and frees the table
  CHECK(peer_sees_eof(pair[1], 1000ms));
  ::close(pair[1]);
  ::close(other[0]);
  ::close(other[1]);
}

namespace {
task<void> open_and_close(executor* ex, address to, int n, int* eofs) {
  for (int i = 0; i < n; ++i) {
    result<ringframe::socket> s = co_await ringframe::connect(*ex, to, {.timeout = 5s});
    REQUIRE(s);
    result<void> sh = co_await s->shutdown(SHUT_WR);  // "goodbye": the server closes its end
    REQUIRE(sh);
    std::byte b[16];
    result<std::size_t> r = co_await s->recv(b, {.timeout = 2s});
    if (r && *r == 0) ++*eofs;  // the server's close arrived as end of stream
  }
}

task<void> serve(server* s) { co_await s->serve(framed(&frame_echo_handler)); }
}  // namespace

TEST_CASE("connections a server ends are gone from the kernel while its multishot accept stays armed") {
  executor ex;
  server_options so;
  so.log_connections = false;
  server srv(ex, so);
  auto at = address::from_ip("127.0.0.1", 0);
  REQUIRE(at);
  REQUIRE(srv.listen(*at));
  address to = srv.local_addresses().front();
  ex.spawn(serve(&srv));
  const long before = tcp_sockets_in_use();
  REQUIRE(before >= 0);
  int eofs = 0;
  ex.run(open_and_close(&ex, to, 300, &eofs));
  CHECK(eofs == 300);
  // Every server-side socket is closed (TIME_WAIT is not "inuse"): with the
  // 1192 leak 300 would stay. Other processes in this network namespace may
  // open a few meanwhile.
  const long after = tcp_sockets_in_use();
  MESSAGE("TCP sockets in use: " << before << " before, " << after << " after 300 connections");
  CHECK(after <= before + 10);
  srv.stop();
  ex.run_until_idle();
}
