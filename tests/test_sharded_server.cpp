// sharded_server: shards behind one address, orders and signals fanned out,
// lifetimes (no order reaches a finished shard's dead executor), one
// listener for Unix-domain sockets, and port sharing only on request.
#include "loopback.hpp"

#include <ringframe/echo.hpp>
#include <ringframe/sharded_server.hpp>

#include <doctest/doctest.h>

#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

using namespace ringframe;
using namespace std::chrono_literals;

namespace {

// Lines logged from any thread; tests wait on them with a deadline.
struct log_capture {
  std::mutex m;
  std::condition_variable cv;
  std::vector<std::string> lines;

  std::function<void(const std::string&)> sink() {
    return [this](const std::string& line) {
      std::lock_guard<std::mutex> g(m);
      lines.push_back(line);
      cv.notify_all();
    };
  }
  int count(const std::string& part) {
    std::lock_guard<std::mutex> g(m);
    int n = 0;
    for (const auto& l : lines) n += l.find(part) != std::string::npos;
    return n;
  }
  bool wait_for(const std::string& part, int n, std::chrono::milliseconds limit = 10s) {
    std::unique_lock<std::mutex> g(m);
    return cv.wait_for(g, limit, [&] {
      int k = 0;
      for (const auto& l : lines) k += l.find(part) != std::string::npos;
      return k >= n;
    });
  }
};

// Polls `cond` until it holds or 10 s have passed.
template <class Cond>
bool eventually(Cond cond) {
  for (int i = 0; i < 1000; ++i) {
    if (cond()) return true;
    std::this_thread::sleep_for(10ms);
  }
  return cond();
}

// One round trip through the echo handler.
bool echo_once(const address& to, const std::string& msg) {
  int fd = testing::connect_blocking(to);
  if (fd < 0) return false;
  ssize_t sent;
  do sent = ::send(fd, msg.data(), msg.size(), MSG_NOSIGNAL);
  while (sent < 0 && errno == EINTR);
  bool ok = sent == static_cast<ssize_t>(msg.size());
  std::string got;
  char buf[256];
  while (ok && got.size() < msg.size()) {
    ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    got.append(buf, static_cast<std::size_t>(n));
  }
  ::close(fd);
  return ok && got == msg;
}

sharded_server_options tcp_options(unsigned threads, std::uint16_t port = 0) {
  sharded_server_options o;
  auto at = address::from_ip("127.0.0.1", port);
  REQUIRE(at);
  o.listen_at = *at;
  o.threads = threads;
  o.handle_signals = false;
  o.server.log_connections = false;
  return o;
}

// A temporary directory for socket files, removed with what is left in it.
struct temp_dir {
  std::string path;
  temp_dir() {
    char tmpl[] = "/tmp/ringframe-test-XXXXXX";
    REQUIRE(::mkdtemp(tmpl) != nullptr);
    path = tmpl;
  }
  ~temp_dir() {
    std::string cmd = "rm -rf '" + path + "'";
    [[maybe_unused]] int r = std::system(cmd.c_str());
  }
  std::string file(const char* name) const { return path + "/" + name; }
};

bool exists(const std::string& path) {
  struct stat st {};
  return ::lstat(path.c_str(), &st) == 0;
}

address unix_address(const std::string& path) {
  auto a = address::from_unix_path(path);
  REQUIRE(a);
  return *a;
}

// Serves until the server's hard stop: a drain does not end it (the recv
// uses the socket's stop token, which only stop() requests), so its shard
// stays draining while the other shards finish.
task<void> hold_until_stopped(ringframe::socket s, connection_info) {
  std::byte buf[64];
  for (;;) {
    result<std::size_t> n = co_await s.recv(buf);
    if (!n || *n == 0) co_return;
  }
}

}  // namespace

TEST_CASE("shards serve one address; drain() ends run(); the counters add up") {
  sharded_server srv(tcp_options(2));
  REQUIRE(srv.start(&echo_handler));
  CHECK(srv.threads() == 2);
  CHECK_FALSE(srv.listener_per_shard());
  address to = srv.local_address();
  CHECK(to.port() != 0);
  int ok = 0;
  std::thread clients([&] {
    for (int i = 0; i < 100; ++i) ok += echo_once(to, "hello " + std::to_string(i));
    srv.drain(1s);
  });
  srv.run();
  clients.join();
  CHECK(ok == 100);
  CHECK(srv.finished_shards() == 2);
  CHECK(srv.stats().accepted == 100);
  CHECK(srv.stats().closed == 100);
  CHECK(srv.stats().bytes_in == srv.stats().bytes_out);
  CHECK(srv.stopped_by() == 0);
  srv.stop();  // after run(): nothing to do, nothing breaks
  CHECK_FALSE(echo_once(to, "anyone?"));  // the listener is closed
}

// Defect 2: ringframe-server --threads 2 kept each worker's executor on its
// thread's stack; once a worker had finished draining, a SIGUSR1 or second
// SIGINT sent it a task with spawn_on: a use after free (SEGV in
// executor::ring_fd() under ASan), or a leaked task. A finished shard's
// executor now stays alive, idle, until every shard is done.
TEST_CASE("orders reach a shard that finished early safely: counters and stop while another drains") {
  log_capture events, conns;
  sharded_server_options o = tcp_options(2);
  o.log = events.sink();
  o.server.log_connections = true;
  o.server.log = conns.sink();
  sharded_server srv(std::move(o));
  REQUIRE(srv.start(&hold_until_stopped));
  address to = srv.local_address();
  bool connected = false, one_finished = false, counted = false;
  std::thread driver([&] {
    int fd = testing::connect_blocking(to);
    connected = fd >= 0 && conns.wait_for("Connected by", 1);
    srv.drain(30s);
    // The idle shard finishes at once; the other holds its connection.
    one_finished = eventually([&] { return srv.finished_shards() == 1; });
    std::this_thread::sleep_for(50ms);  // let the finished shard's thread settle idle
    srv.log_counters();
    srv.on_signal(SIGUSR1);
    counted = events.wait_for("counters (thread", 4);
    srv.on_signal(SIGINT);  // a drain has begun: stop now
    if (fd >= 0) ::close(fd);
  });
  srv.run();
  driver.join();
  CHECK(connected);
  CHECK(one_finished);
  CHECK(counted);
  CHECK(events.count("counters (thread 0)") == 2);
  CHECK(events.count("counters (thread 1)") == 2);
  CHECK(events.count("draining 1 connections") == 1);
  CHECK(events.count("draining 0 connections") == 1);
  CHECK(events.count("SIGINT: stopping now") == 1);
  CHECK(srv.finished_shards() == 2);
  CHECK(srv.stats().accepted == 1);
  CHECK(srv.stats().drained == 1);
}

TEST_CASE("real signals: SIGUSR1 logs every shard's counters, SIGTERM drains, a second one stops") {
  sigset_t before;
  REQUIRE(pthread_sigmask(SIG_BLOCK, nullptr, &before) == 0);
  {
    log_capture events, conns;
    sharded_server_options o = tcp_options(2);
    o.handle_signals = true;
    o.log = events.sink();
    o.server.log_connections = true;
    o.server.log = conns.sink();
    sharded_server srv(std::move(o));
    REQUIRE(srv.start(&hold_until_stopped));
    address to = srv.local_address();
    // Started after start(): the signals are blocked here too, so they wait
    // for the server's signalfd whichever thread the kernel picks.
    std::thread driver([&] {
      int fd = testing::connect_blocking(to);
      conns.wait_for("Connected by", 1);
      ::kill(::getpid(), SIGUSR1);
      events.wait_for("counters (thread", 2);
      ::kill(::getpid(), SIGTERM);
      events.wait_for("SIGTERM: draining", 2);
      eventually([&] { return srv.finished_shards() == 1; });
      ::kill(::getpid(), SIGTERM);
      // Closed only once the second signal was read: closed at once, the
      // last shard could see the peer leave and finish draining before its
      // signalfd said anything, and the run end without "stopping now"
      // (seen under TSan on epoll).
      events.wait_for("SIGTERM again", 1);
      if (fd >= 0) ::close(fd);
    });
    srv.run();
    driver.join();
    CHECK(events.count("counters (thread") == 2);
    CHECK(events.count("SIGTERM: draining") == 2);
    CHECK(events.count("again to stop now") == 2);
    CHECK(events.count("SIGTERM again: stopping now") == 1);
    CHECK(srv.stopped_by() == SIGTERM);
    CHECK(srv.stats().accepted == 1);
  }
  REQUIRE(pthread_sigmask(SIG_SETMASK, &before, nullptr) == 0);
}

// Defect 12: every listener set SO_REUSEPORT, so a second server on the same
// port started without a word and took about half of the connections.
TEST_CASE("a taken port is EADDRINUSE, whatever the thread count; reuse_port shares it only when both opt in") {
  sharded_server first(tcp_options(2));
  REQUIRE(first.start(&echo_handler));
  std::uint16_t port = first.local_address().port();
  for (unsigned threads : {1u, 2u}) {
    sharded_server second(tcp_options(threads, port));
    auto r = second.start(&echo_handler);
    REQUIRE_FALSE(r);
    CHECK(r.error() == std::errc::address_in_use);
  }
  {
    // Opting in alone does not let a server join one that did not.
    sharded_server_options o = tcp_options(2, port);
    o.reuse_port = true;
    sharded_server joiner(std::move(o));
    auto r = joiner.start(&echo_handler);
    REQUIRE_FALSE(r);
    CHECK(r.error() == std::errc::address_in_use);
  }
  first.stop();
  first.run();

  sharded_server_options a = tcp_options(2);
  a.reuse_port = true;
  sharded_server one(std::move(a));
  REQUIRE(one.start(&echo_handler));
  CHECK(one.listener_per_shard());
  sharded_server_options b = tcp_options(2, one.local_address().port());
  b.reuse_port = true;
  sharded_server two(std::move(b));
  REQUIRE(two.start(&echo_handler));
  int ok = 0;
  for (int i = 0; i < 40; ++i) ok += echo_once(one.local_address(), "shared " + std::to_string(i));
  CHECK(ok == 40);
  one.stop();
  two.stop();
  one.run();
  two.run();
  CHECK(one.stats().accepted + two.stats().accepted == 40);
}

// Defect 11: each thread bound its own listener to the path; the second
// failed with EADDRINUSE, and the file stayed behind.
TEST_CASE("a Unix-domain path: one listener for any number of shards, and the file is removed at the end") {
  temp_dir dir;
  const std::string path = dir.file("app.sock");
  sharded_server_options o;
  o.listen_at = unix_address(path);
  o.threads = 3;
  o.handle_signals = false;
  o.server.log_connections = false;
  sharded_server srv(std::move(o));
  REQUIRE(srv.start(&echo_handler));
  CHECK(exists(path));
  int ok = 0;
  std::thread clients([&] {
    for (int i = 0; i < 30; ++i) ok += echo_once(unix_address(path), "unix " + std::to_string(i));
    srv.drain(1s);
  });
  srv.run();
  clients.join();
  CHECK(ok == 30);
  CHECK(srv.stats().accepted == 30);
  CHECK_FALSE(exists(path));
}

TEST_CASE("a stale Unix socket file (nobody listens) is replaced") {
  temp_dir dir;
  const std::string path = dir.file("stale.sock");
  {
    address at = unix_address(path);
    int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    REQUIRE(::bind(fd, at.data(), at.size()) == 0);
    ::close(fd);  // a server that died: the file stays
  }
  REQUIRE(exists(path));
  sharded_server_options o;
  o.listen_at = unix_address(path);
  o.threads = 2;
  o.handle_signals = false;
  o.server.log_connections = false;
  sharded_server srv(std::move(o));
  REQUIRE(srv.start(&echo_handler));
  CHECK(echo_once(unix_address(path), "fresh"));
  srv.stop();
  srv.run();
  CHECK_FALSE(exists(path));
}

TEST_CASE("a Unix path where someone listens is EADDRINUSE, and their file stays") {
  temp_dir dir;
  const std::string path = dir.file("live.sock");
  address at = unix_address(path);
  int other = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  REQUIRE(::bind(other, at.data(), at.size()) == 0);
  REQUIRE(::listen(other, 8) == 0);
  struct stat before {};
  REQUIRE(::lstat(path.c_str(), &before) == 0);
  {
    sharded_server_options o;
    o.listen_at = at;
    o.threads = 2;
    o.handle_signals = false;
    sharded_server srv(std::move(o));
    auto r = srv.start(&echo_handler);
    REQUIRE_FALSE(r);
    CHECK(r.error() == std::errc::address_in_use);
  }
  struct stat after {};
  REQUIRE(::lstat(path.c_str(), &after) == 0);
  CHECK(after.st_ino == before.st_ino);
  ::close(other);
}

TEST_CASE("a Unix path that is not a socket is EEXIST and is left alone") {
  temp_dir dir;
  const std::string path = dir.file("notes.txt");
  { std::ofstream(path) << "keep me\n"; }
  sharded_server_options o;
  o.listen_at = unix_address(path);
  o.threads = 2;
  o.handle_signals = false;
  sharded_server srv(std::move(o));
  auto r = srv.start(&echo_handler);
  REQUIRE_FALSE(r);
  CHECK(r.error() == std::errc::file_exists);
  std::ifstream in(path);
  std::string content;
  std::getline(in, content);
  CHECK(content == "keep me");
}

TEST_CASE("an error after bind (a shard cannot start) removes the socket file") {
  temp_dir dir;
  const std::string path = dir.file("broken.sock");
  sharded_server_options o;
  o.listen_at = unix_address(path);
  o.threads = 2;
  o.handle_signals = false;
  o.executor.receive_buffers = 3;  // not a power of two: each shard's executor throws
  sharded_server srv(std::move(o));
  CHECK_THROWS_AS((void)srv.start(&echo_handler), std::invalid_argument);
  CHECK_FALSE(exists(path));
}

TEST_CASE("an abstract Unix name (@name) works with several shards, and leaves no file") {
  std::string name = "@ringframe-test-" + std::to_string(::getpid());
  sharded_server_options o;
  o.listen_at = unix_address(name);
  o.threads = 2;
  o.handle_signals = false;
  o.server.log_connections = false;
  sharded_server srv(std::move(o));
  REQUIRE(srv.start(&echo_handler));
  int ok = 0;
  std::thread clients([&] {
    for (int i = 0; i < 10; ++i) ok += echo_once(unix_address(name), "abstract");
    srv.stop();
  });
  srv.run();
  clients.join();
  CHECK(ok == 10);
}

TEST_CASE("destroyed without run(): the shards are stopped and joined") {
  temp_dir dir;
  const std::string path = dir.file("never-run.sock");
  {
    sharded_server_options o;
    o.listen_at = unix_address(path);
    o.threads = 2;
    o.handle_signals = false;
    sharded_server srv(std::move(o));
    REQUIRE(srv.start(&echo_handler));
    CHECK(echo_once(unix_address(path), "once"));
  }
  CHECK_FALSE(exists(path));
}

namespace {
std::atomic<int> held_on_shard[2];

// Counts the connection on its shard, then holds it until the hard stop.
task<void> count_and_hold(ringframe::socket s, connection_info info) {
  const int shard = sharded_server::this_thread_shard();
  if (shard >= 0 && shard < 2) held_on_shard[shard].fetch_add(1);
  task<void> hold = hold_until_stopped(std::move(s), info);
  co_await std::move(hold);
}
}  // namespace

// Shards that share one listener each accepted until the backlog was empty:
// a burst of connections (a client's pool opened at once, a load
// generator) went whole to the shard that woke first, and the other served
// nothing (100 of 100 on one of two shards, on both backends).
TEST_CASE("a burst of connections to shards sharing one listener is spread over them") {
  testing::on_each_backend([](backend_kind k) {
    held_on_shard[0] = 0;
    held_on_shard[1] = 0;
    sharded_server_options o = tcp_options(2);
    o.executor = testing::on(k);
    sharded_server srv(std::move(o));
    REQUIRE(srv.start(&count_and_hold));
    REQUIRE_FALSE(srv.listener_per_shard());
    const address to = srv.local_address();
    constexpr int connections = 60;
    std::vector<int> fds;
    std::thread clients([&] {
      // All at once: the handshakes complete in the kernel, before any accept.
      for (int i = 0; i < connections; ++i) fds.push_back(testing::connect_blocking(to));
      eventually([&] { return held_on_shard[0] + held_on_shard[1] == connections; });
      srv.stop();
    });
    srv.run();
    clients.join();
    for (int fd : fds) {
      CHECK(fd >= 0);
      if (fd >= 0) ::close(fd);
    }
    const int a = held_on_shard[0], b = held_on_shard[1];
    INFO("shard 0: " << a << ", shard 1: " << b);
    CHECK(a + b == connections);
    // Spread, not split evenly: a shard above its share only pauses (500 us
    // a connection), so a shard the scheduler keeps off the CPU that long
    // leaves more to the other. Under a parallel test load on 2 cores one
    // run saw 11 of 60; the defect was 0.
    CHECK(std::min(a, b) >= connections / 10);
  });
}
