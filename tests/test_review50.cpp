// Review 50: whether a write waits for its send (max_unsent_bytes) is
// decided when its awaitable is awaited, with the backlog as it is then.
// c9dc92c..584eb22 decided it when the bytes were queued, and these failed
// there; 83f5a58, before them, and the fix, which went back to that, pass.
// Each test stores an awaitable and awaits it later; every wait is bounded;
// both backends run each.
#include "loopback.hpp"
#include "send_helpers.hpp"

#include <ringframe/connection.hpp>
#include <ringframe/executor.hpp>
#include <ringframe/frame.hpp>
#include <ringframe/socket.hpp>
#include <ringframe/timer.hpp>

#include <doctest/doctest.h>

#include <sys/socket.h>

#include <chrono>
#include <string>
#include <system_error>

using namespace ringframe;
using namespace std::chrono_literals;
using clk = std::chrono::steady_clock;
using testing::on;

namespace {

constexpr std::size_t bound = 64 * 1024;

connection_options opts() {
  connection_options o;
  o.max_unsent_bytes = bound;
  o.write_timeout = 300ms;
  return o;
}

// ---- A: a write queued under the bound, awaited after a later write crossed it ----

struct a_out {
  result<void> r1, r2;
  std::size_t unsent_after_w1 = 0;
  std::uint32_t pauses_after_w1 = 0, pauses_after_w2 = 0;
};

task<void> two_writes_then_await(connection* c, a_out* o) {
  auto w1 = c->write(message::binary(std::string(1000, 'a'), "t"));     // under the bound
  auto w2 = c->write(message::binary(std::string(80 * 1024, 'b'), "t"));  // crosses it
  o->r1 = co_await w1;
  o->unsent_after_w1 = c->unsent_bytes();
  o->pauses_after_w1 = c->backpressure_pauses();
  o->r2 = co_await w2;
  o->pauses_after_w2 = c->backpressure_pauses();
}

void stale_ready(backend_kind k) {
  executor ex(on(k));
  auto [srv, peer] = testing::socket_pair(ex);
  connection c(std::move(srv), opts());
  a_out o;
  ex.run(two_writes_then_await(&c, &o));
  CHECK(o.r1);
  CHECK(o.r2);
  MESSAGE("after co_await w1: unsent " << o.unsent_after_w1 << ", pauses " << o.pauses_after_w1
                                       << "; after w2: pauses " << o.pauses_after_w2);
  // 83f5a58: awaiting any write while more than max_unsent_bytes are queued
  // waits for the send (the backlog is under the bound when it returns).
  CHECK(o.unsent_after_w1 < bound);
  CHECK(o.pauses_after_w1 == 1);
  CHECK(o.pauses_after_w2 == 1);
  std::string got = ex.run(testing::read_exactly(&peer, 1000 + 80 * 1024, 3s));  // bytes all came
  CHECK(got.size() >= 1000 + 80 * 1024);
}

// ---- B: a write queued over the bound, awaited after the backlog was sent ----

struct b_out {
  result<void> f, r;
  std::uint32_t pauses_before = 0, pauses_after = 0;
  std::size_t unsent_before = 0;
  clk::duration took{};
};

// `then_small`: before awaiting, queue a small write to a socket whose
// buffers are full (the peer reads nothing more): 83f5a58 does not wait for
// it (under the bound); 584eb22 waits for its send, until write_timeout.
task<void> big_flush_then_await(connection* c, ringframe::socket* peer, bool then_small, b_out* o) {
  auto w = c->write(message::binary(std::string(80 * 1024, 'b'), "t"));  // crosses the bound
  o->f = co_await c->flush();                                              // all sent
  std::size_t drained = 0;
  for (int i = 0; i < 1000 && drained < 80 * 1024; ++i) drained += testing::drain_received(*peer);
  REQUIRE(drained >= 80 * 1024);
  if (then_small) {
    testing::fill_send_buffer(c->get_socket());
    auto s = c->write(message::binary(std::string(100, 's'), "t"));
    (void)s;
  }
  o->unsent_before = c->unsent_bytes();
  o->pauses_before = c->backpressure_pauses();
  auto t0 = clk::now();
  o->r = co_await w;
  o->took = clk::now() - t0;
  o->pauses_after = c->backpressure_pauses();
}

void stale_not_ready(backend_kind k, bool then_small) {
  executor ex(on(k));
  auto [srv, peer] = testing::socket_pair(ex);
  connection c(std::move(srv), opts());
  b_out o;
  ex.run(big_flush_then_await(&c, &peer, then_small, &o));
  REQUIRE(o.f);
  MESSAGE("unsent before co_await w: " << o.unsent_before << "; pauses " << o.pauses_before << " -> "
                                       << o.pauses_after << "; co_await took "
                                       << std::chrono::duration_cast<std::chrono::milliseconds>(o.took).count()
                                       << " ms; result " << (o.r ? std::string("ok") : o.r.error().message()));
  CHECK(o.unsent_before < bound);
  // Under the bound when awaited: 83f5a58 neither waits nor counts a pause.
  CHECK(o.pauses_after == o.pauses_before);
  CHECK(o.r);
  CHECK(o.took < 100ms);
  CHECK(!c.send_error());
}

}  // namespace

TEST_CASE("review50 A: a write queued under max_unsent_bytes, awaited after a later write crossed it, waits for the send") {
  testing::on_each_backend([](backend_kind k) { stale_ready(k); });
}

TEST_CASE("review50 B1: a write queued over max_unsent_bytes, awaited once the backlog is sent, counts no backpressure pause") {
  testing::on_each_backend([](backend_kind k) { stale_not_ready(k, false); });
}

TEST_CASE("review50 B2: ... and does not wait for (nor fail on) a later small write's send to a full socket") {
  testing::on_each_backend([](backend_kind k) { stale_not_ready(k, true); });
}
