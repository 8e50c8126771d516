// send_queue.hpp alone: batching, order, short sends, the write deadline,
// failure, and waiters woken through the ready queue.
#include "loopback.hpp"
#include "send_helpers.hpp"

#include <ringframe/send_queue.hpp>
#include <ringframe/timer.hpp>

#include <doctest/doctest.h>

#include <chrono>
#include <string>

using namespace ringframe;
using namespace std::chrono_literals;
using testing::read_exactly;
using testing::wait_empty;

namespace {

// Appends `parts` one at a time, starting the queue after each: all but the
// first wait behind the batch in flight and leave together.
task<void> write_parts(send_queue* q, std::vector<std::string> parts, std::vector<send_queue::state>* seen) {
  for (const std::string& p : parts) {
    q->out() += p;
    q->start();
    seen->push_back(q->current());
  }
  while (q->busy()) co_await wait_empty{q, {}};
  seen->push_back(q->current());
}

}  // namespace

TEST_CASE("bytes written while a batch is out follow it, in order; short sends continue; the queue ends idle") {
  executor ex;
  auto [a, b] = testing::socket_pair(ex);
  std::uint64_t out = 0;
  send_queue q(a, {}, &out);
  std::vector<std::string> parts;
  std::string all;
  for (int i = 0; i < 8; ++i) {
    parts.push_back(std::string(1 << 20, static_cast<char>('a' + i)));  // 8 MiB: many short sends
    all += parts.back();
  }
  std::vector<send_queue::state> seen;
  ex.spawn(write_parts(&q, parts, &seen));
  std::string got = ex.run(read_exactly(&b, all.size(), 5s));
  ex.run_until_idle();
  CHECK(got == all);
  CHECK(out == all.size());
  REQUIRE(seen.size() == 9);
  CHECK(seen.front() == send_queue::state::sending);
  CHECK(seen.back() == send_queue::state::idle);
  CHECK(!q.error());
}

namespace {
task<void> wait_and_record(send_queue* q, int id, std::vector<int>* order) {
  co_await wait_empty{q, {}};
  order->push_back(id);
}
}  // namespace

TEST_CASE("a failed queue stays failed, keeps the errno, and posts its waiters") {
  executor ex;
  auto [a, b] = testing::socket_pair(ex);
  send_queue q(a, {});
  q.out() += std::string(4 << 20, 'x');  // more than the socket buffer: the send waits
  q.start();
  std::vector<int> order;
  ex.spawn(wait_and_record(&q, 1, &order));
  ex.spawn(wait_and_record(&q, 2, &order));
  ex.run_once(false);  // both wait now
  CHECK(order.empty());
  { ringframe::socket gone = std::move(b); }  // unread bytes: EPIPE for the sender
  ex.run_until_idle();
  CHECK(order.size() == 2);
  CHECK(q.current() == send_queue::state::failed);
  CHECK(q.error() == std::errc::broken_pipe);
  q.out() += "more";
  q.start();  // nothing is sent again
  CHECK(q.current() == send_queue::state::failed);
  CHECK(q.unsent() == 4);
}

TEST_CASE("a peer that takes nothing fails the queue at the write deadline with ETIMEDOUT") {
  executor ex;
  auto [a, b] = testing::socket_pair(ex);  // b never reads
  send_queue::options o;
  o.write_timeout = 50ms;
  send_queue q(a, o);
  q.out() += std::string(4 << 20, 'x');
  // The deadline runs from start(), which on epoll already sends (the
  // system call is tried at once): the clock starts before it.
  auto t0 = std::chrono::steady_clock::now();
  q.start();
  std::vector<int> woken;
  ex.spawn(wait_and_record(&q, 1, &woken));
  ex.run_until_idle();
  CHECK(woken.size() == 1);
  CHECK(q.error() == std::errc::timed_out);
  CHECK(std::chrono::steady_clock::now() - t0 >= 50ms);
}

TEST_CASE("a stop on the socket's token cancels the send in flight with ECANCELED") {
  executor ex;
  auto [a, b] = testing::socket_pair(ex);
  std::stop_source src;
  a.set_stop_token(src.get_token());
  send_queue q(a, {});
  q.out() += std::string(4 << 20, 'x');
  q.start();
  REQUIRE(q.busy());
  src.request_stop();
  q.cancel();
  while (q.busy()) REQUIRE(ex.run_once(true));
  CHECK(q.error() == std::errc::operation_canceled);
}
