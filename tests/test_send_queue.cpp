// send_queue.hpp alone: batching, order, short sends, the write deadline,
// failure, and waiters woken through the ready queue.
#include "loopback.hpp"
#include "send_helpers.hpp"

#include <ringframe/send_queue.hpp>
#include <ringframe/timer.hpp>

#include <doctest/doctest.h>

#include <sys/socket.h>

#include <chrono>
#include <cstring>
#include <optional>
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

TEST_CASE("peak_unsent() is the largest backlog the queue has had, appended while a batch was out included") {
  executor ex;
  auto [a, b] = testing::socket_pair(ex);
  send_queue q(a, {});
  CHECK(q.peak_unsent() == 0);
  q.out() += std::string(1000, 'p');
  CHECK(q.peak_unsent() == 1000);  // queued, not yet started
  q.start();
  std::string got = ex.run(read_exactly(&b, 1000, 5s));
  ex.run_until_idle();
  CHECK(q.unsent() == 0);
  CHECK(q.peak_unsent() == 1000);  // sent: the peak stays
  // 4 MiB, more than the socket takes at once, then 4 MiB more behind the
  // batch in flight: the backlog peaks after the second append, a value no
  // start() sees (the second batch starts once the first has gone).
  q.out() += std::string(4 << 20, 'x');
  q.start();
  ex.run_once(false);
  q.out() += std::string(4 << 20, 'y');
  const std::size_t highest = q.unsent();
  CHECK(highest > (4u << 20));
  got = ex.run(read_exactly(&b, 8u << 20, 10s));
  ex.run_until_idle();
  CHECK(got.size() == (8u << 20));
  CHECK(q.unsent() == 0);
  CHECK(q.peak_unsent() >= highest);
  CHECK(q.peak_unsent() <= (8u << 20));
  // A failure drops what is queued: it was the backlog all the same.
  q.out() += std::string(9 << 20, 'z');
  q.start();
  std::vector<int> woken;
  ex.spawn(wait_and_record(&q, 1, &woken));
  ex.run_once(false);
  { ringframe::socket gone = std::move(b); }
  ex.run_until_idle();
  CHECK(woken.size() == 1);
  CHECK(q.current() == send_queue::state::failed);
  CHECK(q.unsent() == 0);
  CHECK(q.peak_unsent() == (9u << 20));
}

// (Helper review of the per-batch peak: the zero-copy paths, where part of
// a batch counts as sent while the kernel still holds its pages.)
TEST_CASE("peak_unsent() through a zero-copy batch in part taken, then ended by the deadline, cancel() or the queue going") {
  for (int how = 0; how < 3; ++how) {
    CAPTURE(how);
    testing::zero_copy_pair p(testing::on_io_uring());
    send_queue::options so;
    so.zero_copy_threshold = 1;
    if (how == 0) so.write_timeout = 300ms;
    const std::size_t batch = 4 << 20;
    std::optional<send_queue> q(std::in_place, p.a, so);
    q->out() = std::string(batch, 'z');
    q->start();
    testing::turn_until(p.ex, [&] { return q->current() == send_queue::state::releasing; }, 3s);
    REQUIRE(q->current() == send_queue::state::releasing);
    CHECK(q->unsent() < batch);  // the part the kernel took is out
    q->out() += std::string(batch, 'y');  // waits behind
    const std::size_t highest = q->unsent();
    CHECK(q->peak_unsent() == std::max(batch, highest));
    if (how == 0) testing::turn_until(p.ex, [&] { return q->current() == send_queue::state::failed; }, 3s);
    else if (how == 1) q->cancel();
    if (how < 2) {
      CHECK(q->current() == send_queue::state::failed);
      CHECK(q->unsent() == 0);
      CHECK(q->peak_unsent() == std::max(batch, highest));
    }
    q.reset();  // (how 2: with the pages still held; the orphan takes them)
    testing::turn_until(p.ex, [] { return false; }, 100ms);
  }
}

TEST_CASE("peak_unsent() through a zero-copy batch taken whole, with bytes appended while it was out") {
  executor ex(testing::on_io_uring());
  auto [a, b] = ex.run(testing::tcp_pair(&ex));
  send_queue::options so;
  so.zero_copy_threshold = 1;
  send_queue q(a, so);
  q.out() = std::string(1000, 'a');
  q.start();
  q.out() += std::string(3000, 'b');
  CHECK(q.peak_unsent() == 4000);
  testing::turn_until(ex, [&] { return q.current() == send_queue::state::idle && q.unsent() == 0; }, 3s);
  CHECK(q.unsent() == 0);
  CHECK(q.peak_unsent() == 4000);
}

TEST_CASE("append_shared with no block (against its contract) does not crash") {
  executor ex;
  auto [a, b] = testing::socket_pair(ex);
  send_queue q(a, {});
  static std::byte bytes[64];
  // Two adjacent runs: extend_last must not take the null blocks for one
  // block and look inside it.
  CHECK(q.append_shared({}, {bytes, 8}));
  CHECK(q.append_shared({}, {bytes + 8, 8}));
  CHECK(q.unsent() == 16);
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

// ---- sends made at once (io_backend::send_now) ----
//
// On epoll copied bytes the socket takes whole leave inside start(): no
// completion, no write deadline, and the queue is idle when start()
// returns. What the socket takes in part goes on as a batch in flight, from
// the first byte it did not take; a send that fails fails the queue at
// once. A batch with pieces by reference, and every batch on io_uring, is
// in flight after start(). Both must end with the same bytes at the peer,
// in order, and the same events.

namespace {

using testing::on;
using testing::on_each_backend;

struct events {
  int sent = 0;    // on_event(false): everything queued is out
  int failed = 0;  // on_event(true)
};
void count_event(void* ctx, bool failed) noexcept {
  auto* e = static_cast<events*>(ctx);
  if (failed) ++e->failed;
  else ++e->sent;
}

// `n` bytes that differ from one offset to the next (a byte lost, sent
// twice or out of order changes what the peer reads).
std::string pattern(std::size_t n, std::size_t seed) {
  std::string s(n, '\0');
  for (std::size_t i = 0; i < n; ++i) s[i] = static_cast<char>((i * 7 + seed + i / 251) % 256);
  return s;
}

}  // namespace

TEST_CASE("copied bytes the socket takes whole leave inside start() on epoll; in flight on io_uring") {
  on_each_backend([](backend_kind k) {
    executor ex(on(k));
    auto [a, b] = ex.run(testing::tcp_pair(&ex));
    std::uint64_t out = 0;
    events ev;
    send_queue q(a, {}, &out);
    q.on_event(&count_event, &ev);
    const std::string first = pattern(200, 1);
    q.out() = first;
    q.start();
    if (k == backend_kind::epoll) {
      CHECK(q.current() == send_queue::state::idle);
      CHECK(out == first.size());
      CHECK(ev.sent == 1);
      CHECK(q.unsent() == 0);
    } else {
      CHECK(q.current() == send_queue::state::sending);
      CHECK(ev.sent == 0);
    }
    CHECK(ex.run(read_exactly(&b, first.size(), 5s)) == first);
    ex.run_until_idle();
    CHECK(ev.sent == 1);
    CHECK(ev.failed == 0);
    CHECK(out == first.size());
    // Again, with a piece by reference between two copied runs (a gather).
    detail::block_ref blk(detail::byte_block::make(300));
    const std::string mid = pattern(300, 2);
    std::memcpy(blk->data(), mid.data(), mid.size());
    q.out() = "head";
    REQUIRE(q.append_shared(blk, {blk->data(), mid.size()}));
    q.out() += "tail";
    q.start();
    CHECK(q.busy());  // (a batch with pieces goes the completion's way on both)
    CHECK(ex.run(read_exactly(&b, 308, 5s)) == "head" + mid + "tail");
    ex.run_until_idle();
    CHECK(ev.sent == 2);
    CHECK(out == first.size() + 308);
    CHECK(q.current() == send_queue::state::idle);
  });
}

TEST_CASE("a batch the socket takes in part goes on from the first byte it did not take, in order") {
  on_each_backend([](backend_kind k) {
    for (bool gather : {false, true}) {
      CAPTURE(gather);
      executor ex(on(k));
      auto [a, b] = ex.run(testing::tcp_pair(&ex));
      REQUIRE(a.set_option(SOL_SOCKET, SO_SNDBUF, 16384));
      REQUIRE(b.set_option(SOL_SOCKET, SO_RCVBUF, 16384));
      std::uint64_t out = 0;
      events ev;
      send_queue::options o;
      o.write_timeout = 5s;  // armed for the rest (a batch that waits has its deadline)
      send_queue q(a, o, &out);
      q.on_event(&count_event, &ev);
      const std::string big = pattern(1 << 20, 3);
      std::string want;
      detail::block_ref blk(detail::byte_block::make(256 << 10));
      if (gather) {
        const std::string mid = pattern(256 << 10, 4);
        std::memcpy(blk->data(), mid.data(), mid.size());
        q.out() = big.substr(0, 100000);
        REQUIRE(q.append_shared(blk, {blk->data(), mid.size()}));
        q.out() += big.substr(100000);
        want = big.substr(0, 100000) + mid + big.substr(100000);
      } else {
        q.out() = big;
        want = big;
      }
      q.start();
      // Far more than the socket holds: part of it is in flight.
      CHECK(q.current() == send_queue::state::sending);
      CHECK(out < want.size());
      // Written meanwhile: follows the batch.
      q.out() += "after";
      want += "after";
      std::string got = ex.run(read_exactly(&b, want.size(), 5s));
      ex.run_until_idle();
      CHECK(got.size() == want.size());
      CHECK(got == want);
      CHECK(out == want.size());
      CHECK(ev.sent >= 1);
      CHECK(ev.failed == 0);
      CHECK(q.current() == send_queue::state::idle);
      CHECK(q.unsent() == 0);
    }
  });
}

TEST_CASE("a send to a peer that reset the connection fails the queue, and says why") {
  on_each_backend([](backend_kind k) {
    executor ex(on(k));
    auto [a, b] = ex.run(testing::tcp_pair(&ex));
    // The peer goes with a reset (SO_LINGER 0): the next send fails.
    linger l{1, 0};
    REQUIRE(::setsockopt(b.fd(), SOL_SOCKET, SO_LINGER, &l, sizeof l) == 0);
    { ringframe::socket gone = std::move(b); }
    events ev;
    send_queue q(a, {});
    q.on_event(&count_event, &ev);
    q.out() = "to nobody";
    q.start();
    if (k == backend_kind::epoll) CHECK(q.current() == send_queue::state::failed);  // at once
    while (q.busy()) REQUIRE(ex.run_once(true));
    CHECK(q.current() == send_queue::state::failed);
    CHECK((q.error() == std::errc::connection_reset || q.error() == std::errc::broken_pipe));
    CHECK(ev.failed == 1);
    CHECK(ev.sent == 0);
    q.out() = "more";
    q.start();  // nothing is sent again
    CHECK(q.unsent() == 4);
  });
}
