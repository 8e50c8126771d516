// server with the raw echo handler: concurrency, limits, stop, faults.
#include "frames.hpp"
#include "loopback.hpp"

#include <ringframe/app.hpp>
#include <ringframe/echo.hpp>
#include <ringframe/handler.hpp>
#include <ringframe/server.hpp>
#include <ringframe/timer.hpp>

#include <doctest/doctest.h>

#include <sys/stat.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

using namespace ringframe;
using namespace std::chrono_literals;

namespace {

struct tally {
  int ok = 0;
  int failed = 0;
};

task<void> echo_client(executor* ex, address to, int id, tally* t) {
  result<ringframe::socket> s = co_await ringframe::connect(*ex, to, {.timeout = 10s});
  if (!s) {
    ++t->failed;
    co_return;
  }
  std::string msg = "client " + std::to_string(id) + " says hello";
  for (int round = 0; round < 2; ++round) {
    result<std::size_t> sent = co_await s->send_all(msg, {.timeout = 10s});
    if (!sent) {
      ++t->failed;
      co_return;
    }
    std::string got(msg.size(), '\0');
    std::size_t have = 0;
    while (have < got.size()) {
      result<std::size_t> n =
          co_await s->recv(std::as_writable_bytes(std::span(got.data() + have, got.size() - have)), {.timeout = 10s});
      if (!n || *n == 0) break;
      have += *n;
    }
    if (have != got.size() || got != msg) {
      ++t->failed;
      co_return;
    }
  }
  ++t->ok;
}

task<void> clients_then_stop(executor* ex, server* srv, address to, int n, tally* t) {
  for (int i = 0; i < n; ++i) ex->spawn(echo_client(ex, to, i, t));
  // Wait for the clients by polling their tally: bounded, never a blind sleep.
  for (int i = 0; i < 3000 && t->ok + t->failed < n; ++i) {
    result<void> r = co_await sleep_for(*ex, 10ms);
    CHECK(r);
  }
  srv->stop();
}

task<void> run_server(server* srv) { co_await srv->serve(&echo_handler); }

address start(server& srv) {
  auto at = address::from_ip("127.0.0.1", 0);
  REQUIRE(at);
  REQUIRE(srv.listen(*at));
  auto addrs = srv.local_addresses();
  REQUIRE(addrs.size() == 1);
  return addrs.front();
}

task<void> idle_client(executor* ex, address to, std::vector<ringframe::socket>* keep) {
  result<ringframe::socket> s = co_await ringframe::connect(*ex, to, {.timeout = 5s});
  REQUIRE(s);
  keep->push_back(std::move(*s));
}

task<std::size_t> read_until_close(ringframe::socket* s) {
  std::byte buf[64];
  result<std::size_t> n = co_await s->recv(buf, {.timeout = 5s});
  REQUIRE(n);
  co_return *n;
}

// Sends half a megabyte and then resets the connection without reading.
task<void> rude_client(executor* ex, address to) {
  result<ringframe::socket> s = co_await ringframe::connect(*ex, to, {.timeout = 5s});
  REQUIRE(s);
  std::vector<std::byte> junk(512 * 1024, std::byte{'x'});
  result<std::size_t> sent = co_await s->send(junk);
  CHECK(sent);
  linger lg{1, 0};
  ::setsockopt(s->fd(), SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
}

task<void> rude_then_polite(executor* ex, server* srv, address to, tally* t) {
  for (int i = 0; i < 20; ++i) ex->spawn(rude_client(ex, to));
  for (int i = 0; i < 20; ++i) ex->spawn(echo_client(ex, to, i, t));
  for (int i = 0; i < 1000 && t->ok + t->failed < 20; ++i) {
    result<void> r = co_await sleep_for(*ex, 10ms);
    CHECK(r);
  }
  // And a fresh client after the storm.
  task<void> last = echo_client(ex, to, 99, t);
  co_await std::move(last);
  srv->stop();
}

}  // namespace

TEST_CASE("1,000 concurrent echo connections against one server") {
  testing::require_fd_limit(2100 + 64);
  executor ex;
  server srv(ex);
  address to = start(srv);
  tally t;
  ex.spawn(clients_then_stop(&ex, &srv, to, 1000, &t));
  ex.run(run_server(&srv));
  CHECK(t.ok == 1000);
  CHECK(t.failed == 0);
  CHECK(srv.stats().accepted == 1000);
  CHECK(srv.stats().closed == 1000);
  CHECK(srv.stats().bytes_in == srv.stats().bytes_out);
  CHECK(srv.live_connections() == 0);
}

TEST_CASE("stop() ends serve() while connections are open, and closes them") {
  executor ex;
  server srv(ex);
  address to = start(srv);
  std::vector<ringframe::socket> clients;
  for (int i = 0; i < 5; ++i) ex.spawn(idle_client(&ex, to, &clients));
  task<void> serving = run_server(&srv);
  ex.spawn(std::move(serving));
  for (int i = 0; i < 500 && srv.live_connections() < 5; ++i) ex.run_once(true);
  REQUIRE(srv.live_connections() == 5);
  int fds_before_stop = testing::open_fd_count();
  srv.stop();
  ex.run_until_idle();
  CHECK(srv.live_connections() == 0);
  CHECK(srv.stats().closed == 5);
  // The server side of every connection is closed: each client reads EOF.
  for (auto& c : clients) CHECK(ex.run(read_until_close(&c)) == 0);
  CHECK(testing::open_fd_count() <= fds_before_stop - 5);
}

TEST_CASE("beyond max_connections, new connections are closed at once and counted") {
  executor ex;
  server_options o;
  o.max_connections = 2;
  server srv(ex, o);
  address to = start(srv);
  std::vector<ringframe::socket> clients;
  ex.spawn(run_server(&srv));
  for (int i = 0; i < 3; ++i) ex.spawn(idle_client(&ex, to, &clients));
  for (int i = 0; i < 500 && srv.stats().rejected < 1; ++i) ex.run_once(true);
  REQUIRE(clients.size() == 3);
  CHECK(srv.live_connections() == 2);
  CHECK(srv.stats().rejected == 1);
  srv.stop();
  ex.run_until_idle();
}

TEST_CASE("clients that reset mid-transfer do not disturb the others") {
  executor ex;
  server srv(ex);
  address to = start(srv);
  tally t;
  ex.spawn(rude_then_polite(&ex, &srv, to, &t));
  ex.run(run_server(&srv));
  CHECK(t.ok == 21);
  CHECK(t.failed == 0);
  CHECK(srv.stats().accepted == 41);
  CHECK(srv.live_connections() == 0);
}

namespace {
struct socket_dir {
  std::string path;
  socket_dir() {
    char tmpl[] = "/tmp/ringframe-server-test-XXXXXX";
    REQUIRE(::mkdtemp(tmpl) != nullptr);
    path = tmpl;
  }
  ~socket_dir() {
    for (const char* f : {"/s.sock", "/plain"}) ::unlink((path + f).c_str());
    ::rmdir(path.c_str());
  }
};

bool path_exists(const std::string& p) {
  struct stat st {};
  return ::lstat(p.c_str(), &st) == 0;
}

task<void> stop_after_one(executor* ex, server* srv, address to, tally* t) {
  task<void> one = echo_client(ex, to, 1, t);
  co_await std::move(one);
  srv->drain(std::chrono::seconds(1));
}
}  // namespace

// Defect 11 (the server's part): a socket file left by a server that died
// made every later start fail with EADDRINUSE, and each run left one behind.
TEST_CASE("server::listen on a Unix path replaces a stale socket file and removes its own when done") {
  socket_dir dir;
  const std::string path = dir.path + "/s.sock";
  auto at = address::from_unix_path(path);
  REQUIRE(at);
  {
    int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    REQUIRE(::bind(fd, at->data(), at->size()) == 0);
    ::close(fd);  // bound, never listened, closed: what a crashed server leaves
  }
  REQUIRE(path_exists(path));
  executor ex;
  server srv(ex);
  REQUIRE(srv.listen(*at));
  tally t;
  ex.spawn(stop_after_one(&ex, &srv, *at, &t));
  ex.run(run_server(&srv));
  CHECK(t.ok == 1);
  CHECK_FALSE(path_exists(path));
}

TEST_CASE("listen() on a Unix path: EADDRINUSE where someone listens, EEXIST (untouched) where no socket is") {
  socket_dir dir;
  executor ex;
  const std::string live = dir.path + "/s.sock";
  auto live_at = address::from_unix_path(live);
  REQUIRE(live_at);
  auto first = ringframe::listen(ex, *live_at);
  REQUIRE(first);
  auto second = ringframe::listen(ex, *live_at);
  REQUIRE_FALSE(second);
  CHECK(second.error() == std::errc::address_in_use);
  CHECK(path_exists(live));

  const std::string plain = dir.path + "/plain";
  { std::ofstream(plain) << "data"; }
  auto plain_at = address::from_unix_path(plain);
  REQUIRE(plain_at);
  auto third = ringframe::listen(ex, *plain_at);
  REQUIRE_FALSE(third);
  CHECK(third.error() == std::errc::file_exists);
  struct stat st {};
  REQUIRE(::lstat(plain.c_str(), &st) == 0);
  CHECK(S_ISREG(st.st_mode));
  CHECK(st.st_size == 4);
}

namespace {
// A blocking client socket connected to `to` (IPv4 loopback), made non-blocking.
int plain_client(const address& to) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  REQUIRE(fd >= 0);
  REQUIRE(::connect(fd, to.data(), to.size()) == 0);
  REQUIRE(::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) | O_NONBLOCK) == 0);
  return fd;
}
}  // namespace

// A server's framed connections are told of a drain and a stop by the
// server, through its list of them, not by stop callbacks of their own
// (an idle connection's memory): a drain must still reach one waiting for
// its next request at once, and a stop one blocked sending to a peer that
// does not read, also when stop() is called on another thread.
TEST_CASE("drain() reaches framed connections waiting to read; stop() from another thread, one blocked in a send") {
  testing::on_each_backend([](backend_kind k) {
    executor ex(testing::on(k));
    server srv(ex);
    address to = start(srv);
    connection_options co;
    co.max_unsent_bytes = 64 * 1024;
    ex.spawn(srv.serve(framed(&frame_echo_handler, co)));
    std::vector<int> idle;
    for (int i = 0; i < 3; ++i) idle.push_back(plain_client(to));
    // One client sends 64 KiB requests and reads nothing: the server's
    // replies fill the socket, and its send waits.
    const int stuck = plain_client(to);
    const std::string req = testing::raw_frame(
        R"({"byteorder": "little", "content-type": "binary/x", "content-encoding": "binary", "content-length": 65536})",
        std::string(65536, 'r'));
    std::size_t off = 0;
    int quiet_turns = 0;
    for (int i = 0; i < 20000 && quiet_turns < 200; ++i) {
      ssize_t n = ::send(stuck, req.data() + off, req.size() - off, MSG_NOSIGNAL);
      if (n > 0) {
        off = (off + static_cast<std::size_t>(n)) % req.size();
        quiet_turns = 0;
      } else {
        REQUIRE(errno == EAGAIN);
        ++quiet_turns;
      }
      ex.run_once(false);
    }
    REQUIRE(quiet_turns >= 200);  // neither side moves any more
    REQUIRE(srv.live_connections() == 4);

    // The drain's grace is far longer than the test: the idle connections
    // must end because the drain reached their reads, not by the deadline.
    const auto t0 = std::chrono::steady_clock::now();
    srv.drain(60s);
    for (int i = 0; i < 5000 && srv.live_connections() > 1; ++i) ex.run_once(true);
    CHECK(srv.live_connections() == 1);
    CHECK(std::chrono::steady_clock::now() - t0 < 30s);

    // The stuck one owes replies its peer never takes: only stop() ends it.
    std::thread other([&srv] { srv.stop(); });
    other.join();
    for (int i = 0; i < 5000 && srv.live_connections() > 0; ++i) ex.run_once(true);
    CHECK(srv.live_connections() == 0);
    CHECK(srv.stats().closed == 4);
    ex.run_until_idle();
    for (int fd : idle) ::close(fd);
    ::close(stuck);
  });
}
