// Threads that share one listener (sharded_server without reuse_port: each
// shard accepts from its own descriptor of one socket). A connection must
// wake one of them, not every one: with N threads idle, a herd that all
// woke for each connection cost N-1 wasted wake-ups and failed accepts per
// connection. io_uring's accept waits exclusively in the kernel; the epoll
// backend registers a listener with EPOLLEXCLUSIVE for the same effect.
// The herd does not show in system calls (a woken epoll_wait that finds the
// connection taken goes back to sleep inside the kernel), so the test
// counts what it costs: each thread's voluntary context switches.
#include "loopback.hpp"

#include <ringframe/executor.hpp>
#include <ringframe/socket.hpp>
#include <ringframe/timer.hpp>

#include <doctest/doctest.h>

#include <fcntl.h>
#include <sys/resource.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <latch>
#include <stop_token>
#include <thread>
#include <vector>

using namespace ringframe;
using namespace std::chrono_literals;

namespace {

task<void> accept_all(ringframe::socket* listener, const std::stop_token* stop, std::atomic<int>* accepted) {
  for (;;) {
    result<ringframe::socket> s = co_await listener->accept(nullptr, {.stop = stop});
    if (!s) co_return;
    accepted->fetch_add(1);
  }
}

// Accepts until `own` is stopped, closes its descriptor of the listener,
// then idles (waiting in epoll_wait, as a shard that drained early does)
// until `all` is stopped.
task<void> accept_close_idle(executor* ex, ringframe::socket* listener, const std::stop_token* own,
                             const std::stop_token* all, std::atomic<int>* accepted, std::atomic<int>* closed) {
  task<void> loop = accept_all(listener, own, accepted);
  co_await std::move(loop);
  detail::close_op closing = listener->close();
  result<void> c = co_await closing;
  REQUIRE(c);
  closed->fetch_add(1);
  result<void> idle = co_await sleep_for(*ex, std::chrono::hours(1), all);
  (void)idle;
}

// Accepts one connection, then waits `pause` (in its loop's wait, as a
// sharded_server shard above its share does) before each next accept.
task<void> accept_pausing(executor* ex, ringframe::socket* listener, const std::stop_token* stop,
                          std::atomic<int>* accepted, std::chrono::milliseconds pause) {
  for (;;) {
    result<ringframe::socket> s = co_await listener->accept(nullptr, {.stop = stop});
    if (!s) co_return;
    accepted->fetch_add(1);
    result<void> slept = co_await sleep_for(*ex, pause, stop);
    if (!slept) co_return;
  }
}

struct herd_result {
  int accepted = 0;
  long switches = 0;  // every thread's voluntary context switches, summed
};

herd_result connect_one_at_a_time(backend_kind k, unsigned threads, int connections) {
  executor owner(testing::on(k));
  address at;
  ringframe::socket listener = testing::loopback_listener(owner, at);
  std::stop_source stop;
  std::atomic<int> accepted{0};
  std::atomic<long> switches{0};
  std::latch started(threads);
  std::vector<std::thread> pool;
  for (unsigned i = 0; i < threads; ++i)
    pool.emplace_back([&] {
      executor ex(testing::on(k));
      ringframe::socket mine(ex, ::fcntl(listener.fd(), F_DUPFD_CLOEXEC, 0));
      REQUIRE(mine.fd() >= 0);
      std::stop_token token = stop.get_token();
      task<void> loop = accept_all(&mine, &token, &accepted);
      started.count_down();
      ex.run(std::move(loop));
      rusage ru{};
      REQUIRE(::getrusage(RUSAGE_THREAD, &ru) == 0);
      switches += ru.ru_nvcsw;
    });
  started.wait();
  std::this_thread::sleep_for(50ms);  // every thread waits in its accept
  for (int i = 0; i < connections; ++i) {
    const int before = accepted.load();
    int fd = testing::connect_blocking(at);
    REQUIRE(fd >= 0);
    // One at a time: each connection finds every thread idle.
    for (int t = 0; t < 2000 && accepted.load() == before; ++t) std::this_thread::sleep_for(1ms);
    ::close(fd);
    std::this_thread::sleep_for(2ms);
  }
  stop.request_stop();
  for (auto& t : pool) t.join();
  return {accepted.load(), switches.load()};
}

}  // namespace

TEST_CASE("a connection to a listener shared by idle threads wakes one of them, and none is lost") {
  testing::on_each_backend([](backend_kind k) {
    constexpr unsigned threads = 4;
    constexpr int connections = 40;
    herd_result r = connect_one_at_a_time(k, threads, connections);
    CHECK(r.accepted == connections);
    // The thread that takes a connection wakes for it and sleeps again; a
    // herd wakes every thread for each one (threads x connections, 160).
    MESSAGE("context switches: " << r.switches);
    CHECK(r.switches < 5 * connections / 2);
  });
}

// A thread that stops accepting and closes its descriptor of the shared
// socket (the others' keep it open) must not keep an exclusive place in the
// socket's wake-ups: left registered in its epoll set, it took the wake-up
// of each connection while idle, and the threads still accepting slept.
TEST_CASE("threads still accepting from a shared listener are woken after another closed its descriptor") {
  testing::on_each_backend([](backend_kind k) {
    constexpr unsigned threads = 3;
    executor owner(testing::on(k));
    address at;
    ringframe::socket listener = testing::loopback_listener(owner, at);
    std::stop_source first, all;
    std::atomic<int> accepted{0}, closed{0};
    std::latch started(threads);
    std::vector<std::thread> pool;
    for (unsigned i = 0; i < threads; ++i)
      pool.emplace_back([&, i] {
        executor ex(testing::on(k));
        ringframe::socket mine(ex, ::fcntl(listener.fd(), F_DUPFD_CLOEXEC, 0));
        REQUIRE(mine.fd() >= 0);
        std::stop_token own = (i == 0 ? first : all).get_token();
        std::stop_token every = all.get_token();
        task<void> t = accept_close_idle(&ex, &mine, &own, &every, &accepted, &closed);
        started.count_down();
        ex.run(std::move(t));
      });
    started.wait();
    std::this_thread::sleep_for(50ms);
    first.request_stop();  // thread 0 closes its descriptor and idles
    for (int t = 0; t < 2000 && closed.load() == 0; ++t) std::this_thread::sleep_for(1ms);
    REQUIRE(closed.load() == 1);
    std::this_thread::sleep_for(20ms);  // in epoll_wait again
    constexpr int connections = 20;
    int late = 0;
    for (int i = 0; i < connections; ++i) {
      const int before = accepted.load();
      int fd = testing::connect_blocking(at);
      REQUIRE(fd >= 0);
      int waited = 0;
      for (; waited < 3000 && accepted.load() == before; ++waited) std::this_thread::sleep_for(1ms);
      late += waited >= 1000;  // a second is far beyond a wake-up's time, even on a busy machine
      ::close(fd);
      std::this_thread::sleep_for(2ms);
    }
    all.request_stop();
    for (auto& t : pool) t.join();
    CHECK(accepted.load() == connections);
    CHECK(late == 0);
  });
}

// Wake-ups of a shared listener are exclusive: one waiting loop gets each.
// A loop that waits without accepting (paused between accepts) must not keep
// taking them: on epoll its registration, first in the socket's wait queue,
// took every connection's wake-up while the thread still accepting slept,
// and each connection waited for the pause to end.
TEST_CASE("a thread that pauses between accepts does not hold the wake-ups of a shared listener") {
  testing::on_each_backend([](backend_kind k) {
    executor owner(testing::on(k));
    address at;
    ringframe::socket listener = testing::loopback_listener(owner, at);
    std::stop_source stop;
    std::atomic<int> by_pausing{0}, by_other{0};
    auto serve = [&](bool pausing, std::latch* waiting) {
      executor ex(testing::on(k));
      ringframe::socket mine(ex, ::fcntl(listener.fd(), F_DUPFD_CLOEXEC, 0));
      REQUIRE(mine.fd() >= 0);
      std::stop_token token = stop.get_token();
      task<void> t = pausing ? accept_pausing(&ex, &mine, &token, &by_pausing, 400ms)
                             : accept_all(&mine, &token, &by_other);
      waiting->count_down();
      ex.run(std::move(t));
    };
    // The pausing thread waits first (first in the socket's wait queue).
    std::latch first(1), second(1);
    std::thread pausing(serve, true, &first);
    first.wait();
    std::this_thread::sleep_for(50ms);
    std::thread other(serve, false, &second);
    second.wait();
    std::this_thread::sleep_for(50ms);
    constexpr int connections = 12;
    int slow = 0;
    for (int i = 0; i < connections; ++i) {
      const int before = by_pausing.load() + by_other.load();
      int fd = testing::connect_blocking(at);
      REQUIRE(fd >= 0);
      const auto t0 = std::chrono::steady_clock::now();
      while (by_pausing.load() + by_other.load() == before && std::chrono::steady_clock::now() - t0 < 3s)
        std::this_thread::sleep_for(1ms);
      slow += std::chrono::steady_clock::now() - t0 >= 200ms;
      ::close(fd);
    }
    stop.request_stop();
    pausing.join();
    other.join();
    INFO("accepted by the pausing thread " << by_pausing.load() << ", by the other " << by_other.load()
                                            << ", slow: " << slow);
    CHECK(by_pausing.load() + by_other.load() == connections);
    // The first connections may wait for the pause (its wake-up was taken
    // already); then the other thread gets them.
    CHECK(slow <= 2);
  });
}
