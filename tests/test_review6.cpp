// The sixth review: a server's framed connections told of drain and stop
// through the server's list of them (33c7738) instead of stop callbacks of
// their own, and sharded_server's snapshot requests (cb94164). The F cases
// fail without their fix; the others guard what the review found sound.
// Every wait is bounded.
#include "frames.hpp"
#include "loopback.hpp"

#include <ringframe/app.hpp>
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

// A client socket connected to `to` with plain calls, then non-blocking.
int plain_client(const address& to) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  REQUIRE(fd >= 0);
  REQUIRE(::connect(fd, to.data(), to.size()) == 0);
  REQUIRE(::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) | O_NONBLOCK) == 0);
  return fd;
}

address listen_loopback(server& srv) {
  auto at = address::from_ip("127.0.0.1", 0);
  REQUIRE(at);
  REQUIRE(srv.listen(*at));
  return srv.local_addresses().back();
}

// Turns the loop without blocking (a framed connection's idle timeout is
// minutes away: a blocking turn could sleep until it), for at most ~3 s.
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

// Has the peer of `fd` closed (EOF or a reset)? Reads and drops what came.
bool peer_gone(int fd) {
  char buf[4096];
  for (;;) {
    ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n > 0) continue;
    if (n == 0) return true;
    return errno != EAGAIN && errno != EWOULDBLOCK;
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

server_options quiet() {
  server_options o;
  o.log_connections = false;
  return o;
}

const std::string small_frame = testing::raw_frame(
    R"({"byteorder": "little", "content-type": "binary/x", "content-encoding": "binary", "content-length": 5})",
    "hello");

}  // namespace

// ---------------------------------------------------------------------------
// F1: the server's hard stop is its task_group's stop (server.hpp: "a child
// that throws stops the server"), and a stop requested that way never
// passes through server::stop(). The framed connections' stop_all callbacks
// used to see it (they were registered on the socket's token, which is that
// stop); the list walk does not run, so an idle framed connection waits on
// for its idle timeout (5 minutes by default) while the server is stopped.
// A child throws when, for instance, the server's log sink throws on
// "Connected by" (or making that line runs out of memory).
TEST_CASE("review6 F1: a hard stop through the server's group (a connection coroutine that throws) ends the framed connections") {
  on_each_backend([](backend_kind k) {
    executor ex(on(k));
    bool fail_log = false;
    server_options o;
    o.log = [&fail_log](const std::string& line) {
      if (fail_log && line.rfind("Connected by", 0) == 0) throw std::runtime_error("the log sink failed");
    };
    server srv(ex, o);
    const address to = listen_loopback(srv);
    std::string failure;
    bool ended = false;
    ex.spawn(serve_catching(&srv, framed(&frame_echo_handler), &failure, &ended));

    const int a = plain_client(to);  // framed, waiting for its first request
    REQUIRE(turn_until(ex, [&] { return srv.live_connections() == 1; }));
    for (int i = 0; i < 20; ++i) ex.run_once(false);  // its read is in flight
    fail_log = true;
    const int b = plain_client(to);  // its coroutine throws at once
    REQUIRE(turn_until(ex, [&] { return srv.stopped(); }));

    // The hard stop must reach `a`: its read is cancelled and it closes.
    CHECK(turn_until(ex, [&] { return peer_gone(a); }));

    srv.stop();  // (the accept loop's end is F3's concern)
    CHECK(turn_until(ex, [&] { return ended; }));
    CHECK(failure == "the log sink failed");
    ex.run_until_idle();
    ::close(a);
    ::close(b);
  });
}

// ---------------------------------------------------------------------------
// F3 (before these commits: since the server's task_group, 33dcb03): "a
// child that throws stops the server", but the group's stop is only the
// hard stop, and the accept loops watch the drain: they go on accepting
// (each new connection refused at once by its stopped token) and serve()
// never returns to rethrow the child's exception.
TEST_CASE("review6 F3: a child that throws stops the server: the accept loops end and serve() rethrows") {
  on_each_backend([](backend_kind k) {
    executor ex(on(k));
    server_options o;
    o.log = [](const std::string& line) {
      if (line.rfind("Connected by", 0) == 0) throw std::runtime_error("the log sink failed");
    };
    server srv(ex, o);
    const address to = listen_loopback(srv);
    std::string failure;
    bool ended = false;
    ex.spawn(serve_catching(&srv, framed(&frame_echo_handler), &failure, &ended));
    const int a = plain_client(to);  // its coroutine throws at once
    REQUIRE(turn_until(ex, [&] { return srv.stopped(); }));
    CHECK(turn_until(ex, [&] { return ended; }));
    CHECK(failure == "the log sink failed");
    if (!ended) srv.stop();  // (so that the test ends either way)
    REQUIRE(turn_until(ex, [&] { return ended; }));
    ex.run_until_idle();
    ::close(a);
  });
}

// ---------------------------------------------------------------------------
// F2: a drain only cancels a framed connection's reads while it honours the
// server's read stop: a handler that chose its own (set_read_stop; nullptr:
// it reads on through a drain) used to be left alone, its stop_reads
// callback gone. The walk cancels its read all the same, but only the read
// in flight at that moment (the next one is not refused) and only a single
// recv (a multishot recv's cancellation sends the reader round, and it
// re-arms): the handler gets ECANCELED or not depending on timing and
// options.
namespace {
struct own_stop_log {
  int messages = 0;
  std::error_code error;
  bool ended = false;
};
own_stop_log* the_own_stop_log = nullptr;

task<void> reads_through_drain(connection& conn, connection_info info) {
  (void)info;
  own_stop_log* log = the_own_stop_log;
  conn.set_read_stop(nullptr);  // this protocol reads its peer's goodbye even while draining
  for (;;) {
    result<message_view> m = co_await conn.read_message();
    if (!m) {
      log->error = m.error();
      break;
    }
    ++log->messages;
    result<void> w = co_await conn.write_raw(m->wire);
    if (!w) break;
  }
  log->ended = true;
}
}  // namespace

TEST_CASE("review6 F2: a drain leaves alone a framed connection whose handler took its own read stop") {
  on_each_backend([](backend_kind k) {
    executor ex(on(k));
    own_stop_log log;
    the_own_stop_log = &log;
    server srv(ex, quiet());
    const address to = listen_loopback(srv);
    std::string failure;
    bool ended = false;
    ex.spawn(serve_catching(&srv, framed(&reads_through_drain), &failure, &ended));

    const int c = plain_client(to);
    REQUIRE(turn_until(ex, [&] { return srv.live_connections() == 1; }));
    for (int i = 0; i < 20; ++i) ex.run_once(false);  // its read is in flight
    srv.drain(60s);
    for (int i = 0; i < 20; ++i) ex.run_once(false);
    REQUIRE(::send(c, small_frame.data(), small_frame.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(small_frame.size()));
    CHECK(turn_until(ex, [&] { return log.messages == 1 || log.ended; }));
    CHECK(log.messages == 1);
    CHECK_FALSE(log.ended);
    INFO("the handler's read ended with: " << log.error.message());

    srv.stop();
    CHECK(turn_until(ex, [&] { return ended; }));
    CHECK(failure.empty());
    ex.run_until_idle();
    ::close(c);
  });
}

// ---------------------------------------------------------------------------
// Sound, and guarded: stop() from another thread reaches framed connections
// in each kind of wait the walk has to cancel, none of which resumes a
// coroutine or unlinks a node from inside the walk: a multishot recv, a
// frame waiting for room in the receive budget (nothing in the kernel), a
// frame's direct read, and a connection accepted after the stop (refused
// by the stream's read stop and the socket's token, not by the walk).
TEST_CASE("review6: stop() from another thread ends framed connections in every kind of wait") {
  on_each_backend([](backend_kind k) {
    receive_budget& b = receive_budget::this_thread();
    REQUIRE(b.used() == 0);
    {
      executor ex(on(k));
      server srv(ex, quiet());
      const address to = listen_loopback(srv);
      connection_options co;
      co.multishot_recv = true;
      co.thread_receive_budget = 600 * 1024;  // one of the large frames below at a time
      std::string failure;
      bool ended = false;
      ex.spawn(serve_catching(&srv, framed(&frame_echo_handler, co), &failure, &ended));

      std::vector<int> clients;
      // Idle: a multishot recv armed between frames.
      clients.push_back(plain_client(to));
      // Two frames of 500 KiB begun: the first reserves and reads the rest
      // straight into its decoder, the second waits for the budget.
      const std::string big_header =
          R"({"byteorder": "little", "content-type": "binary/x", "content-encoding": "binary", "content-length": 512000})";
      const std::string begun = testing::raw_frame(big_header, std::string(20000, 'x'));
      for (int i = 0; i < 2; ++i) {
        clients.push_back(plain_client(to));
        REQUIRE(turn_until(ex, [&] { return srv.live_connections() == clients.size(); }));
        REQUIRE(::send(clients.back(), begun.data(), begun.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(begun.size()));
        for (int t = 0; t < 50; ++t) ex.run_once(false);
      }
      REQUIRE(turn_until(ex, [&] { return b.used() > 512000 && b.waiting() == 1; }));

      std::thread other([&srv] { srv.stop(); });
      other.join();
      // Accepted after the stop (if the accept is still armed): refused at once.
      const int late = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
      REQUIRE(late >= 0);
      (void)::connect(late, to.data(), to.size());  // refused, or queued and closed
      CHECK(turn_until(ex, [&] { return ended; }));
      CHECK(failure.empty());
      CHECK(srv.live_connections() == 0);
      for (int fd : clients) CHECK(peer_gone(fd));
      ex.run_until_idle();
      ::close(late);
      for (int fd : clients) ::close(fd);
    }
    CHECK(b.used() == 0);
    CHECK(b.waiting() == 0);
  });
}

// ---------------------------------------------------------------------------
// Left alone by review 6, fixed in session 7: a connection coroutine that
// throws before its end (the log sink throwing on "Connected by") never
// counted its connection out: live_connections() stayed above zero for
// good (and every later accept was refused one connection early).
TEST_CASE("a connection coroutine that throws still counts its connection out") {
  on_each_backend([](backend_kind k) {
    executor ex(on(k));
    server_options o;
    o.log = [](const std::string& line) {
      if (line.rfind("Connected by", 0) == 0) throw std::runtime_error("the log sink failed");
    };
    server srv(ex, o);
    const address to = listen_loopback(srv);
    std::string failure;
    bool ended = false;
    ex.spawn(serve_catching(&srv, framed(&frame_echo_handler), &failure, &ended));
    const int a = plain_client(to);
    REQUIRE(turn_until(ex, [&] { return ended; }));
    ex.run_until_idle();
    CHECK(srv.live_connections() == 0);
    CHECK(srv.stats().closed == 1);
    ::close(a);
  });
}
