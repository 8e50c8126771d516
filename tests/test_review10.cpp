// The tenth review: the server side (accept loop, drain, connection
// counters, sharded_server, run_framed, the acceptor, the receive budget,
// the epoll backend). The F cases fail without their fix; the others pin
// tricky behaviour the review found sound. Every wait is bounded; each test
// runs on io_uring and on epoll.
#include "frames.hpp"
#include "loopback.hpp"

#include <ringframe/connection.hpp>
#include <ringframe/handler.hpp>
#include <ringframe/receive_budget.hpp>
#include <ringframe/server.hpp>

#include <doctest/doctest.h>

#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

using namespace ringframe;
using namespace std::chrono_literals;
using testing::on;
using testing::on_each_backend;

namespace {

// A client socket connected to `to` with plain calls, then non-blocking;
// -errno when the connect fails.
int plain_client(const address& to) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  REQUIRE(fd >= 0);
  if (::connect(fd, to.data(), to.size()) != 0) {
    const int e = errno;
    ::close(fd);
    return -e;
  }
  REQUIRE(::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) | O_NONBLOCK) == 0);
  return fd;
}

address listen_loopback(server& srv) {
  auto at = address::from_ip("127.0.0.1", 0);
  REQUIRE(at);
  REQUIRE(srv.listen(*at));
  return srv.local_addresses().back();
}

// Turns the loop without blocking, for at most ~3 s.
template <class P>
bool turn_until(executor& ex, P pred) {
  for (int i = 0; i < 3000; ++i) {
    if (pred()) return true;
    ex.run_once(false);
    if (pred()) return true;
    std::this_thread::sleep_for(1ms);
  }
  return pred();
}

void turn_for(executor& ex, std::chrono::milliseconds d) {
  const auto end = std::chrono::steady_clock::now() + d;
  while (std::chrono::steady_clock::now() < end) {
    ex.run_once(false);
    std::this_thread::sleep_for(1ms);
  }
}

task<void> serve_catching(server* srv, server::stream_handler h, std::string* failure, bool* ended) {
  try {
    co_await srv->serve(std::move(h));
  } catch (const std::exception& e) {
    *failure = e.what();
  }
  *ended = true;
}

const std::string small_frame = testing::raw_frame(
    R"({"byteorder": "little", "content-type": "binary/x", "content-encoding": "binary", "content-length": 5})",
    "hello");

task<void> frame_echo(connection& conn, connection_info info) {
  for (;;) {
    result<message_view> m = co_await conn.read_message();
    if (!m) {
      if (co_await answer_read_error(conn, info, m.error())) continue;
      co_return;
    }
    result<void> w = co_await conn.write_raw(m->wire);
    if (!w) co_return;
  }
}

}  // namespace

// ---------------------------------------------------------------------------
// F1: an accept loop that throws while its multishot accept is armed (the
// log sink throwing on "Rejecting connection", or out of memory building
// that line or spawning the connection's coroutine) destroyed the acceptor
// with the kernel's request still armed on it: the request's next
// completion (the next client) went to the freed coroutine frame, and the
// listener was never closed (the loop's end was skipped), so clients kept
// being accepted by a server that had stopped.
TEST_CASE("review10 F1: an accept loop that throws retires its multishot accept and closes its listener") {
  on_each_backend([](backend_kind k) {
   for (bool multishot : {true, false}) {
    INFO("multishot accept: " << multishot);
    executor ex(on(k));
    server_options o;
    o.multishot_accept = multishot;  // one-shot: nothing armed, but the listener was left open all the same
    o.max_connections = 1;
    o.log = [](const std::string& line) {
      if (line.rfind("Rejecting", 0) == 0) throw std::runtime_error("the log sink failed");
    };
    server srv(ex, o);
    const address to = listen_loopback(srv);
    std::string failure;
    bool ended = false;
    ex.spawn(serve_catching(&srv, framed(&frame_echo), &failure, &ended));

    const int a = plain_client(to);  // served: the one connection allowed
    REQUIRE(a >= 0);
    REQUIRE(turn_until(ex, [&] { return srv.live_connections() == 1; }));
    const int b = plain_client(to);  // rejected: the log line throws in the accept loop
    REQUIRE(b >= 0);
    REQUIRE(turn_until(ex, [&] { return ended; }));
    CHECK(failure == "the log sink failed");
    CHECK(srv.live_connections() == 0);

    // The server has stopped: a new client must be refused, and nothing
    // the kernel does on the old listener may reach the accept loop's
    // (freed) frame.
    const int c = plain_client(to);
    turn_for(ex, 100ms);
    CHECK(c == -ECONNREFUSED);
    ex.run_until_idle();
    ::close(a);
    ::close(b);
    if (c >= 0) ::close(c);
   }
  });
}

// ---------------------------------------------------------------------------
// Pins (no defect found): a drain reaches a frame waiting for room in the
// receive budget (nothing is in the kernel for it: it is told through the
// server's list), the waiter leaves the queue, the frame being read gives
// its reservation back when its connection closes, and the server ends long
// before the grace. Nothing is left reserved or waiting on the thread.
TEST_CASE("review10: a drain cancels a frame waiting for budget; every reservation and place in the queue is given back") {
  on_each_backend([](backend_kind k) {
    executor ex(on(k));
    receive_budget& budget = receive_budget::this_thread();
    REQUIRE(budget.used() == 0);
    REQUIRE(budget.waiting() == 0);
    server_options so;
    so.log_connections = false;
    server srv(ex, so);
    const address to = listen_loopback(srv);
    connection_options co;
    co.thread_receive_budget = 64 << 10;
    co.provided_buffers = false;  // every read straight into the decoder
    std::string failure;
    bool ended = false;
    ex.spawn(serve_catching(&srv, framed(&frame_echo, co), &failure, &ended));

    // Two frames of 48 KiB each, of which only the header and 1 KiB come:
    // the first reserves its length, the second does not fit and waits.
    const std::string header =
        R"({"byteorder": "little", "content-type": "binary/x", "content-encoding": "binary", "content-length": 49152})";
    const std::string start = testing::raw_frame(header, std::string(1024, 'x'));
    const int a = plain_client(to);
    REQUIRE(a >= 0);
    REQUIRE(::send(a, start.data(), start.size(), 0) == static_cast<ssize_t>(start.size()));
    REQUIRE(turn_until(ex, [&] { return budget.used() > 0; }));
    const std::size_t first = budget.used();
    CHECK(first >= 49152);
    const int b = plain_client(to);
    REQUIRE(b >= 0);
    REQUIRE(::send(b, start.data(), start.size(), 0) == static_cast<ssize_t>(start.size()));
    REQUIRE(turn_until(ex, [&] { return budget.waiting() == 1; }));
    CHECK(budget.used() == first);

    const auto t0 = std::chrono::steady_clock::now();
    srv.drain(10s);
    CHECK(turn_until(ex, [&] { return ended; }));
    CHECK(std::chrono::steady_clock::now() - t0 < 5s);
    CHECK(failure.empty());
    CHECK(srv.live_connections() == 0);
    CHECK(srv.stats().drained == 2);
    CHECK(budget.waiting() == 0);
    CHECK(budget.used() == 0);
    ex.run_until_idle();
    ::close(a);
    ::close(b);
  });
}
