// The thirtieth review: sharded_server's failure paths (run() left by an
// exception, a shard whose thread has failed, a shard that cannot report
// that it has finished). The F cases fail without their fix. Every wait is
// bounded and every socket is on loopback; each test runs on io_uring and
// on epoll, and those that may crash or hang run in a child process.
#include "child_process.hpp"
#include "failing_allocator.hpp"
#include "loopback.hpp"

#include <ringframe/echo.hpp>
#include <ringframe/sharded_server.hpp>

#include <doctest/doctest.h>

#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <functional>
#include <stdexcept>
#include <string>
#include <thread>

using namespace ringframe;
using namespace std::chrono_literals;
using testing::on_each_backend;

namespace {

sharded_server_options options(backend_kind k, unsigned threads) {
  sharded_server_options o;
  auto at = address::from_ip("127.0.0.1", 0);
  REQUIRE(at);
  o.listen_at = *at;
  o.threads = threads;
  o.executor.backend = k;
  o.handle_signals = false;
  o.server.log_connections = false;
  return o;
}

// Polls `cond` until it holds or `limit` has passed.
template <class Cond>
bool eventually(Cond cond, std::chrono::milliseconds limit = 10s) {
  const auto until = std::chrono::steady_clock::now() + limit;
  while (std::chrono::steady_clock::now() < until) {
    if (cond()) return true;
    std::this_thread::sleep_for(10ms);
  }
  return cond();
}

// Sends all of `text` and reads until the peer closes (or 5 s of silence).
std::string exchange(int fd, const std::string& text) {
  std::size_t off = 0;
  while (off < text.size()) {
    ssize_t n = ::send(fd, text.data() + off, text.size() - off, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return {};
    off += static_cast<std::size_t>(n);
  }
  std::string got;
  char buf[4096];
  for (;;) {
    ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    got.append(buf, static_cast<std::size_t>(n));
  }
  return got;
}

// One scrape of the metrics endpoint at `at`: the whole reply, "" if none.
std::string scrape(const address& at) {
  int fd = testing::connect_blocking(at);
  if (fd < 0) return {};
  std::string got = exchange(fd, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
  ::close(fd);
  return got;
}

// Takes a pending `sig` (blocked here) so that it cannot reach a later test.
void consume(int sig) {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, sig);
  timespec none{0, 0};
  while (::sigtimedwait(&set, nullptr, &none) == sig) {
  }
}

}  // namespace

// run() left by an exception from the owner's loop (here a log sink that
// throws on the "stop" event) leaves the signal loop waiting on the owner's
// executor; owner_ was declared first, so destroyed last, and a signal
// that came meanwhile was handled in ~executor's unwinding by apply(),
// which walked shards_ after its destruction: a heap use after free, seen
// by ASan. Only on io_uring, where the signalfd read completes (on epoll
// ~signal_set ends it with ECANCELED first), and with a ring whose task
// work runs as soon as the signal is sent (plain, as on kernels without
// DEFER_TASKRUN): with DEFER_TASKRUN the teardown's cancellation wins.
TEST_CASE("review30 F1: a signal handled while run()'s exception unwinds the owner reads no destroyed member") {
  on_each_backend([](backend_kind k) {
    testing::check_in_child([k] {
      {
        sharded_server_options o = options(k, 2);
        o.handle_signals = true;
        o.executor.setup = ring_setup::plain;
        o.log_records = [](const log_record& r) {
          if (r.event == "stop") throw std::runtime_error("the log cannot be written");
        };
        sharded_server srv(std::move(o));
        if (!srv.start(&echo_handler)) return 2;
        srv.on_signal(SIGTERM);
        srv.on_signal(SIGTERM);  // a drain has begun: "stopping now" is logged, and throws
        bool threw = false;
        try {
          srv.run();
        } catch (const std::runtime_error&) {
          threw = true;
        }
        if (!threw) return 3;
        if (::kill(::getpid(), SIGUSR1) != 0) return 4;
        // The ring's read takes it (its task work runs as the kill returns)
        // or it stays pending for ~executor's turns: either way it is there.
        std::this_thread::sleep_for(100ms);
      }
      consume(SIGUSR1);
      return 0;
    });
  });
}

// A shard whose thread has failed (here its server threw: a log sink that
// throws on "rejected") keeps its executor, but nothing runs it any more.
// Every snapshot still sent it a task there, to wait for an answer that
// could not come: snapshot()'s callback never ran, every scrape waited out
// metrics_snapshot_timeout and was answered 503 for as long as the server
// lived, and each left a task in the dead shard's inbox until shutdown.
// The shard's final numbers are known once it has reported it finished.
TEST_CASE("review30 F2: a shard whose thread has failed does not stall every snapshot and scrape") {
  on_each_backend([](backend_kind k) {
    std::atomic<bool> threw{false};
    sharded_server_options o = options(k, 2);
    o.server.max_connections = 0;  // the first connection is rejected, and its log line throws
    o.server.log_records = [&threw](const log_record& r) {
      if (r.event == "rejected" && !threw.exchange(true)) throw std::runtime_error("the log cannot be written");
    };
    auto m = address::from_ip("127.0.0.1", 0);
    REQUIRE(m);
    o.metrics_at = *m;
    o.metrics_snapshot_timeout = 1s;
    sharded_server srv(std::move(o));
    REQUIRE(srv.start(&echo_handler));
    const address to = srv.local_address();
    const address metrics = srv.metrics_address();
    bool one_failed = false;
    bool answered = false;
    std::atomic<bool> got{false};
    stats_snapshot snap;  // written on the owner's thread before `got`
    std::string reply;
    std::thread driver([&] {
      int fd = testing::connect_blocking(to);
      one_failed = fd >= 0 && eventually([&] { return srv.finished_shards() == 1; });
      if (fd >= 0) ::close(fd);
      srv.snapshot([&](stats_snapshot s) {
        snap = std::move(s);
        got = true;
      });
      answered = eventually([&] { return got.load(); }, 3s);
      reply = scrape(metrics);
      srv.drain(1s);
    });
    srv.run();
    driver.join();
    REQUIRE(one_failed);
    CHECK(answered);
    INFO("the scrape's reply: " << reply);
    CHECK(reply.starts_with("HTTP/1.1 200 OK\r\n"));
    if (answered) {
      CHECK(snap.threads.size() == 2);
      CHECK(snap.total().server.rejected == 1);
    }
    CHECK(srv.stats().rejected == 1);
  });
}

// A shard whose thread fails logs "thread N failed" from the catch block of
// its thread's function. A log sink that throws there (the one that made
// the server fail, say, or building the line out of memory) left the
// thread's function by exception: std::terminate, the whole process.
TEST_CASE("review30 F3: a shard failure whose log line throws neither terminates the process nor loses the shard") {
  on_each_backend([](backend_kind k) {
    testing::check_in_child([k] {
      std::atomic<bool> threw{false};
      sharded_server_options o = options(k, 2);
      o.server.max_connections = 0;
      o.server.log_records = [&threw](const log_record& r) {
        if (r.event == "rejected" && !threw.exchange(true)) throw std::runtime_error("the log cannot be written");
      };
      o.log_records = [](const log_record& r) {
        if (r.event == "error") throw std::runtime_error("the log cannot be written");
      };
      sharded_server srv(std::move(o));
      if (!srv.start(&echo_handler)) return 2;
      const address to = srv.local_address();
      bool one_failed = false;
      std::thread driver([&] {
        int fd = testing::connect_blocking(to);
        one_failed = fd >= 0 && eventually([&] { return srv.finished_shards() == 1; });
        if (fd >= 0) ::close(fd);
        srv.drain(1s);
      });
      srv.run();
      driver.join();
      if (!one_failed) return 3;
      if (srv.finished_shards() != 2) return 4;
      if (srv.stats().rejected != 1) return 5;
      return 0;
    });
  });
}

// A shard reported that it had finished with an order, which post() queues
// in a vector: an allocation that fails there (on the shard's thread, after
// its last connection) ended shard_main by exception, and the catch block
// saw `finished` set already, so nothing told the owner. run() waited for
// that shard for ever (here a 5 s bound ends the child with 7). Each
// allocation of an order queue's first block fails in turn, from the last
// connection's "closed" line on (the first one was the report), until none
// is left; every time, run() must return with the connection counted.
TEST_CASE("review30 F4: a shard whose finished report cannot be allocated does not hang run() or lose its counters") {
  using namespace testing::failing_allocator;
  on_each_backend([](backend_kind k) {
    testing::check_in_child([k] {
      for (int pass = 0; pass < 100; ++pass) {
        std::atomic<bool> draining{false};
        std::atomic<std::size_t> order_size{0};
        sharded_server_options o = options(k, 1);
        o.server.log_connections = true;
        o.server.log_records = [pass, &order_size](const log_record& r) {
          if (r.event != "closed") return;
          allocations_failed = 0;
          matching_allocations = 0;
          allocations_to_pass = pass;
          fail_allocation_of_size = order_size.load();
        };
        o.log_records = [&draining](const log_record& r) {
          if (r.event == "drain") draining = true;
        };
        sharded_server srv(std::move(o));
        if (!srv.start(&echo_handler)) return 2;
        const address to = srv.local_address();
        bool echoed = false;
        std::thread driver([&] {
          int fd = testing::connect_blocking(to);
          if (fd < 0) ::_exit(3);
          echoed = ::send(fd, "x", 1, MSG_NOSIGNAL) == 1 && ::recv(fd, std::array<char, 1>{}.data(), 1, 0) == 1;
          // The first block of the (empty) order queue: the size an order's post allocates.
          start_tracing(-1);
          srv.log_counters();
          stop_tracing();
          order_size = traced[0];
          srv.drain(10s);
          if (!eventually([&] { return draining.load(); })) ::_exit(4);
          ::close(fd);  // the shard's last connection: it finishes now
          if (!eventually([&] { return srv.finished_shards() == 1; }, 5s)) ::_exit(7);
        });
        srv.run();
        driver.join();
        fail_allocation_of_size = 0;
        const int failed = allocations_failed;
        if (!echoed) return 5;
        if (srv.stats().accepted != 1 || srv.stats().closed != 1) return 8;
        if (order_size == 0) return 9;
        if (failed == 0) return 0;  // past the last allocation of that size
      }
      return 10;
    });
  });
}
