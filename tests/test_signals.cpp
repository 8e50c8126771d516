// signal_set: POSIX signals as an awaitable, on both backends. Only SIGUSR1
// and SIGUSR2, blocked in this (the only) thread of the test, are used.
#include "loopback.hpp"

#include <ringframe/executor.hpp>
#include <ringframe/signals.hpp>
#include <ringframe/task.hpp>

#include <doctest/doctest.h>

#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <memory>
#include <stop_token>

using namespace ringframe;
using namespace std::chrono_literals;
using testing::on_each_backend;

namespace {

task<void> wait_into(signal_set* s, result<int>* out, const std::stop_token* stop) {
  *out = co_await s->wait({.stop = stop});
}

}  // namespace

TEST_CASE("signal_set: wait() returns the number of a signal sent to the process") {
  on_each_backend([](backend_kind k) {
    executor ex(testing::on(k));
    signal_set set(ex, {SIGUSR1, SIGUSR2});
    result<int> got = 0;
    ex.spawn(wait_into(&set, &got, nullptr));
    ex.run_once(false);  // waiting now
    REQUIRE(::kill(::getpid(), SIGUSR2) == 0);
    const auto t0 = std::chrono::steady_clock::now();
    ex.run_until_idle();
    CHECK(std::chrono::steady_clock::now() - t0 < 5s);
    REQUIRE(got);
    CHECK(*got == SIGUSR2);
  });
}

TEST_CASE("signal_set: a wait ends with ECANCELED when its stop token is requested") {
  on_each_backend([](backend_kind k) {
    executor ex(testing::on(k));
    signal_set set(ex, {SIGUSR1});
    std::stop_source src;
    std::stop_token tok = src.get_token();
    result<int> got = 0;
    ex.spawn(wait_into(&set, &got, &tok));
    ex.run_once(false);
    CHECK(ex.inflight() >= 1);
    src.request_stop();
    ex.run_until_idle();
    REQUIRE_FALSE(got);
    CHECK(got.error() == std::errc::operation_canceled);
    CHECK(ex.inflight() == 0);
  });
}

TEST_CASE("signal_set destroyed while a wait is pending (epoll): the wait ends with ECANCELED") {
  // As for a socket: on epoll nothing would ever end a read on a descriptor
  // that is gone, and a later descriptor with its number would end it
  // instead (into a frame that may be gone by then). (On io_uring the
  // kernel holds the file until the read ends by itself.)
  executor ex(testing::on(backend_kind::epoll));
  auto set = std::make_unique<signal_set>(ex, std::initializer_list<int>{SIGUSR1});
  result<int> got = 0;
  ex.spawn(wait_into(set.get(), &got, nullptr));
  ex.run_once(false);
  REQUIRE(ex.inflight() == 1);
  set.reset();
  for (int i = 0; i < 200 && ex.inflight() > 0; ++i) ex.run_once(false);  // bounded: it hung here
  REQUIRE(ex.inflight() == 0);
  ex.run_until_idle();
  REQUIRE_FALSE(got);
  CHECK(got.error() == std::errc::operation_canceled);
  CHECK(ex.inflight() == 0);
}
