// Review of the composition primitives (when_all, when_any, with_timeout,
// task_group, channel, semaphore, event, submit_to, periodic_timer) and the
// client side (framed_client, resolver), and of the metrics endpoint.
// Each test runs on io_uring and on epoll.
#include "loopback.hpp"

#include <ringframe/connection.hpp>
#include <ringframe/executor.hpp>
#include <ringframe/frame.hpp>
#include <ringframe/framed_client.hpp>
#include <ringframe/metrics_endpoint.hpp>
#include <ringframe/socket.hpp>
#include <ringframe/timer.hpp>
#include <ringframe/when_any.hpp>
#include <ringframe/with_timeout.hpp>

#include <doctest/doctest.h>

#include <sys/socket.h>

#include <chrono>
#include <memory>
#include <stdexcept>
#include <stop_token>
#include <string>
#include <system_error>
#include <utility>
#include <variant>
#include <vector>

using namespace ringframe;
using namespace std::chrono_literals;
using clk = std::chrono::steady_clock;

namespace {

// ---- metrics endpoint ------------------------------------------------------

// One scrape: connect, send `request`, read until the server closes.
task<std::string> scrape(executor* ex, address at, std::string request) {
  result<ringframe::socket> c = co_await ringframe::connect(*ex, at, {.timeout = 5s});
  REQUIRE(c);
  result<std::size_t> sent = co_await c->send_all(request, {.timeout = 5s});
  REQUIRE(sent);
  std::string got;
  std::byte buf[4096];
  for (;;) {
    result<std::size_t> n = co_await c->recv(buf, {.timeout = 5s});
    if (!n || *n == 0) break;  // closed (or reset: what came so far is the answer)
    got.append(reinterpret_cast<const char*>(buf), *n);
  }
  co_return got;
}

struct source_plan {
  int throws_left = 0;  // the next this many scrapes throw
  int calls = 0;
};

task<result<std::string>> body_or_throw(source_plan* p, std::stop_token) {
  ++p->calls;
  if (p->throws_left > 0) {
    --p->throws_left;
    throw std::runtime_error("the metrics source failed");
  }
  co_return std::string("up 1\n");
}

task<std::vector<std::string>> scrapes_with_throwing_source(executor* ex, source_plan* plan) {
  address at;
  ringframe::socket l = testing::loopback_listener(*ex, at);
  std::stop_source stop;
  metrics_endpoint_options o;
  o.max_connections = 2;
  o.request_timeout = 2s;
  metrics_source src = [plan](std::stop_token st) { return body_or_throw(plan, st); };
  ex->spawn(serve_metrics(*ex, std::move(l), std::move(src), o, stop.get_token()));
  std::vector<std::string> out;
  // Sequential scrapes: never more than one connection at a time.
  for (int i = 0; i < 5; ++i) out.push_back(co_await scrape(ex, at, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"));
  stop.request_stop();
  co_return out;
}

// ---- framed_client ---------------------------------------------------------

message text(std::string s) { return message::binary(std::move(s), "binary/test"); }

task<result<message>> call_with(framed_client* c, message m, std::stop_token st) {
  task<result<message>> t = c->call(std::move(m), &st);
  result<message> r = co_await std::move(t);
  co_return r;
}

task<result<message>> plain_call(framed_client* c, std::string content) {
  task<result<message>> t = c->call(text(std::move(content)));
  result<message> r = co_await std::move(t);
  co_return r;
}

// Answers every request with "re:" + its first 8 bytes of content.
task<void> answer_all(ringframe::socket s, int* seen) {
  connection c(std::move(s), {});
  for (;;) {
    result<message_view> m = co_await c.read_message();
    if (!m) break;
    ++*seen;
    std::string head(m->content_text().substr(0, 8));
    message reply = text("re:" + head);
    result<void> w = co_await c.write(reply);
    if (!w) break;
  }
}

struct timed_call {
  result<message> r{std::errc::io_error};
  clk::duration took{};
};

task<timed_call> big_call_under_timeout(executor* ex, framed_client* c, std::size_t size) {
  const auto t0 = clk::now();
  std::string content(size, 'x');
  content.replace(0, 8, "bigcall!");
  message m = text(std::move(content));
  task<result<message>> t =
      with_timeout(*ex, 200ms, [c, m](std::stop_token st) { return call_with(c, m, st); });
  timed_call out;
  out.r = co_await std::move(t);
  out.took = clk::now() - t0;
  co_return out;
}

// ---- when_any: a loser cancelled in the middle of a send_all ---------------

struct loser_report {
  std::size_t sent = 0;
  std::error_code ec;
  bool finished = false;
};

// Sends `n` patterned bytes (kept in this frame) until cancelled.
task<int> send_until_cancelled(ringframe::socket* s, std::size_t n, loser_report* rep, std::stop_token st) {
  std::vector<std::byte> buf(n);
  for (std::size_t i = 0; i < n; ++i) buf[i] = static_cast<std::byte>((i * 13 + i / 509) & 0xff);
  auto op = s->send_all(buf, {.stop = &st});
  result<std::size_t> r = co_await op;
  rep->sent = op.sent();
  if (!r) rep->ec = r.error();
  rep->finished = true;
  co_return 1;
}

task<int> nap(executor* ex, std::stop_token st) {
  result<void> r = co_await sleep_for(*ex, 50ms, &st);
  REQUIRE(r);
  co_return 0;
}

struct race_outcome {
  std::size_t winner = 99;
  bool loser_finished_before_return = false;
};

task<race_outcome> race_send_against_nap(executor* ex, ringframe::socket* s, std::size_t n, loser_report* rep) {
  task<std::pair<std::size_t, std::variant<int, int>>> race =
      when_any([s, n, rep](std::stop_token st) { return send_until_cancelled(s, n, rep, st); },
               [ex](std::stop_token st) { return nap(ex, st); });
  std::pair<std::size_t, std::variant<int, int>> r = co_await std::move(race);
  race_outcome out;
  out.winner = r.first;
  out.loser_finished_before_return = rep->finished;
  co_return out;
}

// Everything the peer can read now (until it has been quiet for 300 ms).
task<std::string> drain(ringframe::socket* s) {
  std::string got;
  std::vector<std::byte> buf(1 << 16);
  for (;;) {
    result<std::size_t> n = co_await s->recv(buf, {.timeout = 300ms});
    if (!n || *n == 0) break;
    got.append(reinterpret_cast<const char*>(buf.data()), *n);
  }
  co_return got;
}

}  // namespace

TEST_CASE("when_any: a loser cancelled mid-send_all has finished when when_any returns; its count is the bytes the peer gets") {
  // Pins behaviour (no defect found): the loser's operation and its buffer
  // (in the loser's frame) live until its last completion; sent() counts
  // exactly the bytes that went out, none lost or doubled.
  testing::on_each_backend([](backend_kind k) {
    executor ex(testing::on(k));
    auto [a, b] = testing::socket_pair(ex);  // nobody reads `b` during the race
    loser_report rep;
    const std::size_t n = 8 << 20;
    race_outcome o = ex.run(race_send_against_nap(&ex, &a, n, &rep));
    CHECK(o.winner == 1);
    CHECK(o.loser_finished_before_return);
    CHECK(rep.ec == std::errc::operation_canceled);
    CHECK(rep.sent > 0);
    CHECK(rep.sent < n);
    std::string got = ex.run(drain(&b));
    REQUIRE(got.size() == rep.sent);
    bool same = true;
    for (std::size_t i = 0; i < got.size() && same; ++i)
      same = got[i] == static_cast<char>((i * 13 + i / 509) & 0xff);
    CHECK(same);
    ex.run_until_idle();
  });
}

TEST_CASE("metrics endpoint: a source that throws does not use up a connection slot for good") {
  testing::on_each_backend([](backend_kind k) {
    executor ex(testing::on(k));
    // The first two scrapes' source throws (max_connections is 2); the
    // three after it must be served. A connection whose source threw used
    // to keep its slot forever: once max_connections had thrown, every
    // later scrape was closed at once without a reply.
    source_plan plan{.throws_left = 2};
    std::vector<std::string> got = ex.run(scrapes_with_throwing_source(&ex, &plan));
    ex.run_until_idle();
    REQUIRE(got.size() == 5);
    for (int i = 2; i < 5; ++i) {
      INFO("scrape " << i << ": " << got[i]);
      CHECK(got[i].starts_with("HTTP/1.1 200 OK\r\n"));
      CHECK(got[i].ends_with("\r\n\r\nup 1\n"));
    }
    // And the two whose source threw are answered 503 (they used to be
    // closed without a reply), saying why.
    for (int i = 0; i < 2; ++i) {
      INFO("scrape " << i << ": " << got[i]);
      CHECK(got[i].starts_with("HTTP/1.1 503 Service Unavailable\r\n"));
      CHECK(got[i].ends_with("metrics unavailable: the metrics source failed\n"));
    }
    CHECK(plan.calls == 5);
  });
}

TEST_CASE("framed_client: a call cancelled while its request waits for room to be sent returns ECANCELED at once") {
  testing::on_each_backend([](backend_kind k) {
    // The documented guarantee: cancelling a call (here through
    // with_timeout) returns at once, its reply is dropped when it comes and
    // the client stays in step. A request larger than max_unsent_bytes
    // used to wait for its whole send inside the call, where the call's
    // stop token was not watched: with a peer that does not read, the call
    // (and with_timeout around it) waited for write_timeout, and then the
    // client was broken.
    executor ex(testing::on(k));
    auto [srv, cli] = testing::socket_pair(ex);  // AF_UNIX: a small socket buffer
    framed_client_options o;
    o.connection.max_unsent_bytes = 4096;
    o.connection.write_timeout = 3s;
    o.reply_timeout = 10s;
    framed_client client = framed_client::adopt(std::move(cli), o);
    // Nobody reads `srv` yet: 4 MiB cannot leave.
    timed_call first = ex.run(big_call_under_timeout(&ex, &client, 4 << 20));
    INFO("took " << std::chrono::duration_cast<std::chrono::milliseconds>(first.took).count() << " ms");
    REQUIRE(!first.r);
    CHECK(first.r.error() == std::errc::timed_out);
    CHECK(first.took < 1500ms);
    CHECK(client.is_open());
    // Now the server reads: the cancelled call's reply is dropped, the next
    // call gets its own.
    int seen = 0;
    ex.spawn(answer_all(std::move(srv), &seen));
    result<message> next = ex.run(plain_call(&client, "second!!"));
    REQUIRE(next);
    CHECK(next->content == "re:second!!");
    CHECK(seen == 2);
    CHECK(client.pending() == 0);
    client.close();
    ex.run_until_idle();
  });
}
