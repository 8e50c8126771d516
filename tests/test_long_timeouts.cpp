// Timeouts too long to add to the clock: `nanoseconds::max()` (or
// `seconds::max()`, or any duration past the clock's end) is a natural way
// to say "never", and must mean it. Each case failed before the fix: the
// sum wrapped to a moment long past, so the wait ended at once (ETIMEDOUT,
// a sleep that returned, a connection closed as idle on its first turn).
#include "loopback.hpp"

#include <ringframe/deadline.hpp>
#include <ringframe/detail/saturating_time.hpp>
#include <ringframe/framed_client.hpp>
#include <ringframe/periodic_timer.hpp>
#include <ringframe/socket.hpp>
#include <ringframe/timer.hpp>
#include <ringframe/with_timeout.hpp>

#include <doctest/doctest.h>

#include <sys/socket.h>

#include <chrono>
#include <cstdint>
#include <limits>
#include <stop_token>
#include <string>

using namespace ringframe;
using namespace std::chrono_literals;
using testing::on;
using testing::turns;

namespace {

constexpr auto forever = std::chrono::nanoseconds::max();

struct outcome {
  bool done = false;
  int error = 0;  // errno value; 0: success
  std::size_t n = 0;
};

task<void> recv_forever(ringframe::socket* s, outcome* o) {
  std::byte buf[16];
  result<std::size_t> r = co_await s->recv(buf, {.timeout = forever});
  o->error = r ? 0 : r.error().value();
  o->n = r ? *r : 0;
  o->done = true;
}

task<void> sleep_forever(executor* ex, std::stop_token st, outcome* o) {
  result<void> r = co_await sleep_for(*ex, forever, &st);
  o->error = r ? 0 : r.error().value();
  o->done = true;
}

task<result<int>> short_work(executor* ex, std::stop_token st) {
  result<void> r = co_await sleep_for(*ex, 1ms, &st);
  if (!r) co_return r.error();
  co_return 7;
}
struct short_work_factory {
  executor* ex;
  task<result<int>> operator()(std::stop_token st) const { return short_work(ex, st); }
};

task<void> timed_work(executor* ex, outcome* o) {
  task<result<int>> t = with_timeout(*ex, std::chrono::seconds::max(), short_work_factory{ex});
  result<int> r = co_await std::move(t);
  o->error = r ? 0 : r.error().value();
  o->n = r ? static_cast<std::size_t>(*r) : 0;
  o->done = true;
}

task<void> call_forever(framed_client* c, outcome* o) {
  task<result<message>> t = c->call(message::json(R"({"action": "get"})"));
  result<message> r = co_await std::move(t);
  o->error = r ? 0 : r.error().value();
  o->n = r ? r->content.size() : 0;
  o->done = true;
}

task<void> tick_once(periodic_timer* t, outcome* o) {
  result<void> r = co_await t->next();
  o->error = r ? 0 : r.error().value();
  o->done = true;
}

struct fired_count {
  deadline d{&fired_count::fired};
  int times = 0;
  static void fired(deadline* self) { ++reinterpret_cast<fired_count*>(self)->times; }
};

}  // namespace

TEST_CASE("long timeouts: an operation's timeout of nanoseconds::max() never fires") {
  testing::on_each_backend([](backend_kind k) {
    executor ex(on(k));
    auto [a, b] = testing::socket_pair(ex);
    outcome o;
    ex.spawn(recv_forever(&a, &o));
    turns(ex, 20);
    CHECK(!o.done);  // fails before the fix: ETIMEDOUT at once
    REQUIRE(::send(b.fd(), "x", 1, MSG_DONTWAIT) == 1);
    for (int i = 0; i < 200 && !o.done; ++i) ex.run_once(false);
    REQUIRE(o.done);
    CHECK(o.error == 0);
    CHECK(o.n == 1);
  });
}

TEST_CASE("long timeouts: sleep_for(nanoseconds::max()) sleeps until stopped") {
  testing::on_each_backend([](backend_kind k) {
    executor ex(on(k));
    std::stop_source src;
    outcome o;
    ex.spawn(sleep_forever(&ex, src.get_token(), &o));
    turns(ex, 20);
    CHECK(!o.done);  // fails before the fix on epoll: the sleep returns at once
    src.request_stop();
    for (int i = 0; i < 200 && !o.done; ++i) ex.run_once(false);
    REQUIRE(o.done);
    CHECK(o.error == ECANCELED);
  });
}

TEST_CASE("long timeouts: with_timeout(seconds::max()) gives the work's result") {
  testing::on_each_backend([](backend_kind k) {
    executor ex(on(k));
    outcome o;
    ex.spawn(timed_work(&ex, &o));
    for (int i = 0; i < 2000 && !o.done; ++i) ex.run_once(true);
    REQUIRE(o.done);
    CHECK(o.error == 0);  // fails before the fix: ETIMEDOUT (the cast wrapped to -1 s)
    CHECK(o.n == 7);
  });
}

TEST_CASE("long timeouts: a deadline armed for nanoseconds::max() never fires") {
  testing::on_each_backend([](backend_kind k) {
    executor ex(on(k));
    fired_count f;
    f.d.arm(ex, forever);
    turns(ex, 20);
    CHECK(f.times == 0);  // fails before the fix: stamped into the past, it fires on the next turn
    CHECK(f.d.armed());
    CHECK(f.d.when() == std::chrono::steady_clock::time_point::max());
    f.d.cancel();
  });
}

TEST_CASE("long timeouts: a framed_client with connect_timeout and reply_timeout of nanoseconds::max()") {
  testing::on_each_backend([](backend_kind k) {
    executor ex(on(k));
    auto [cli, srv] = testing::socket_pair(ex);
    framed_client_options fo;
    fo.connect_timeout = forever;
    fo.reply_timeout = forever;
    framed_client client = framed_client::adopt(std::move(cli), fo);
    outcome o;
    ex.spawn(call_forever(&client, &o));
    char req[4096];
    ssize_t got = -1;
    for (int i = 0; i < 200 && got <= 0; ++i) {
      ex.run_once(false);
      got = ::recv(srv.fd(), req, sizeof req, MSG_DONTWAIT);
    }
    REQUIRE(got > 0);
    turns(ex, 20);
    CHECK(!o.done);  // fails before the fix: the connection's idle deadline fired at once
    CHECK(client.is_open());
    std::string reply;
    REQUIRE(encode_frame(message::binary("pong", "t"), reply));
    REQUIRE(::send(srv.fd(), reply.data(), reply.size(), MSG_DONTWAIT | MSG_NOSIGNAL) == static_cast<ssize_t>(reply.size()));
    for (int i = 0; i < 200 && !o.done; ++i) ex.run_once(false);
    REQUIRE(o.done);
    CHECK(o.error == 0);
    CHECK(o.n == 4);
    client.close();
    turns(ex, 20);
  });
}

TEST_CASE("long timeouts: a periodic_timer of nanoseconds::max() never ticks") {
  testing::on_each_backend([](backend_kind k) {
    executor ex(on(k));
    std::stop_source src;
    const std::stop_token st = src.get_token();
    periodic_timer t(ex, forever, &st);
    outcome o;
    ex.spawn(tick_once(&t, &o));
    turns(ex, 20);
    CHECK(!o.done);  // fails before the fix: its first tick was due long ago
    CHECK(t.missed() == 0);
    src.request_stop();
    for (int i = 0; i < 200 && !o.done; ++i) ex.run_once(false);
    REQUIRE(o.done);
    CHECK(o.error == ECANCELED);
  });
}

TEST_CASE("long timeouts: saturating_ns and saturating_add stop at the ends instead of wrapping") {
  using namespace std::chrono;
  using detail::saturating_add;
  using detail::saturating_ns;
  CHECK(saturating_ns(seconds::max()) == nanoseconds::max());
  CHECK(saturating_ns(hours::min()) == nanoseconds::min());
  CHECK(saturating_ns(duration<double>(1e300)) == nanoseconds::max());
  CHECK(saturating_ns(duration<double, std::milli>(2.5)) == 2500us);
  CHECK(saturating_ns(seconds(3)) == 3s);
  CHECK(saturating_ns(nanoseconds::max()) == nanoseconds::max());
  const auto now = steady_clock::now();
  CHECK(saturating_add(now, nanoseconds::max()) == steady_clock::time_point::max());
  CHECK(saturating_add(now, 5s) == now + 5s);
  CHECK(saturating_add(now, -2s) == now - 2s);
  CHECK(saturating_add(std::int64_t{1}, std::numeric_limits<std::int64_t>::max()) == std::numeric_limits<std::int64_t>::max());
  CHECK(saturating_add(std::int64_t{-5}, std::numeric_limits<std::int64_t>::min()) == std::numeric_limits<std::int64_t>::min());
  CHECK(saturating_add(std::int64_t{40}, std::int64_t{2}) == 42);
}
