// The thirty-sixth review: framed_client reads replies while its requests
// are still being sent (connection_options::read_while_sending, 3bd2ad3).
// The reader may now return, and the client end, while a send is in flight;
// the idle deadline (reply_timeout) of a read starts once the send beside it
// is done, on both of read_message's paths (provided_buffers: the fast path;
// without: read_slow). Each test runs on io_uring and on epoll, every wait
// is bounded, and the servers are raw sockets that count bytes, so a byte
// lost or reordered in the client's sends shows.
#include "loopback.hpp"

#include <ringframe/connection.hpp>
#include <ringframe/executor.hpp>
#include <ringframe/frame.hpp>
#include <ringframe/framed_client.hpp>
#include <ringframe/socket.hpp>
#include <ringframe/timer.hpp>
#include <ringframe/when_all.hpp>

#include <doctest/doctest.h>

#include <sys/socket.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <new>
#include <optional>
#include <stop_token>
#include <string>
#include <system_error>
#include <vector>

using namespace ringframe;
using namespace std::chrono_literals;
using clk = std::chrono::steady_clock;

namespace {

message text(std::string s) { return message::binary(std::move(s), "binary/test"); }

std::string frame_of(const message& m) {
  std::string out;
  REQUIRE(encode_frame(m, out));
  return out;
}

std::string big(std::size_t n, char fill) {
  std::string s(n, fill);
  for (std::size_t i = 0; i < n; i += 4096) s[i] = static_cast<char>('A' + (i / 4096) % 26);
  return s;
}

void small_buffers(int fd) {
  int v = 64 * 1024;
  ::setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &v, sizeof v);
  ::setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &v, sizeof v);
}

void reset_now(ringframe::socket& s) {
  linger l{1, 0};  // close with RST
  REQUIRE(::setsockopt(s.fd(), SOL_SOCKET, SO_LINGER, &l, sizeof l) == 0);
}

// What a raw server does. All of it bounded by `limit`.
enum class act {
  reply_early_then_stall,  // read 1 byte, answer request 0, take nothing for `stall`, then check+answer the rest
  take_nothing,            // never read, never answer; hold the socket `stall`
  drain_silent,            // read everything, answer nothing, until the client goes
  slow_then_answer,        // read slowly for `stall`, then fast; answer each request once it is whole
  reset_after_some,        // read `some` bytes, then RST
};
struct raw_plan {
  act what = act::drain_silent;
  std::chrono::milliseconds stall{0};
  std::size_t some = 0;
  std::vector<std::string> expect;  // the request frames, in order (byte-exact check)
  std::vector<std::string> replies;  // one per request
  std::size_t received = 0;
  bool bytes_match = true;
  bool saw_end = false;  // the client's side ended (EOF or reset) within `limit`
  bool finished = false;
};

task<void> raw_server(executor* ex, ringframe::socket s, raw_plan* p) {
  std::string got;
  std::vector<std::byte> buf(256 * 1024);
  std::size_t answered = 0;
  std::string want;  // every request frame, in order
  for (auto& e : p->expect) want += e;
  const auto until = clk::now() + 10s;
  switch (p->what) {
    case act::take_nothing: {
      result<void> sl = co_await sleep_for(*ex, p->stall);
      (void)sl;
      break;
    }
    case act::reset_after_some: {
      while (p->received < p->some && clk::now() < until) {
        result<std::size_t> n = co_await s.recv(std::span(buf).first(std::min(buf.size(), p->some - p->received)),
                                                 {.timeout = 5s});
        if (!n || *n == 0) break;
        p->received += *n;
      }
      reset_now(s);
      break;
    }
    case act::drain_silent: {
      while (clk::now() < until) {
        result<std::size_t> n = co_await s.recv(buf, {.timeout = 10s});
        if (!n || *n == 0) {
          p->saw_end = true;
          break;
        }
        p->received += *n;
      }
      break;
    }
    case act::reply_early_then_stall:
    case act::slow_then_answer: {
      const auto slow_until = clk::now() + p->stall;
      bool early_done = p->what != act::reply_early_then_stall;
      for (;;) {
        if (clk::now() > until) break;
        const bool slow = p->what == act::slow_then_answer && clk::now() < slow_until;
        std::span<std::byte> room = slow ? std::span(buf).first(8 * 1024) : std::span(buf);
        result<std::size_t> n = co_await s.recv(room, {.timeout = 10s});
        if (!n || *n == 0) {
          p->saw_end = true;
          break;
        }
        p->received += *n;
        got.append(reinterpret_cast<const char*>(room.data()), *n);
        // Byte-exact: what came is a prefix of the expected frames.
        if (got.size() > want.size() || got.compare(0, got.size(), want, 0, got.size()) != 0) p->bytes_match = false;
        if (!early_done) {
          // Request 0 has begun: its reply goes now, then nothing is taken for a while.
          early_done = true;
          result<std::size_t> w = co_await s.send_all(p->replies.at(0));
          REQUIRE(w);
          answered = 1;
          result<void> sl = co_await sleep_for(*ex, p->stall);
          (void)sl;
          continue;
        }
        // Answer every request that is whole now (request 0 maybe answered early).
        std::size_t end = 0;
        for (std::size_t i = 0; i < p->expect.size(); ++i) {
          end += p->expect[i].size();
          if (i < answered) continue;
          if (got.size() < end) break;
          result<std::size_t> w = co_await s.send_all(p->replies.at(i));
          REQUIRE(w);
          answered = i + 1;
        }
        if (slow) {
          result<void> sl = co_await sleep_for(*ex, 10ms);
          (void)sl;
        }
      }
      break;
    }
  }
  p->finished = true;
}

struct rig {
  executor ex;
  framed_client client;
  raw_plan plan;
  rig(backend_kind k, raw_plan p, framed_client_options o, bool small = false) : ex(testing::on(k)), plan(std::move(p)) {
    auto [srv, cli] = ex.run(testing::tcp_pair(&ex));
    if (small) {
      small_buffers(srv.fd());
      small_buffers(cli.fd());
    }
    client = framed_client::adopt(std::move(cli), o);
    ex.spawn(raw_server(&ex, std::move(srv), &plan));
  }
};

task<result<message>> one_call(framed_client* c, message m) {
  task<result<message>> t = c->call(std::move(m));
  result<message> r = co_await std::move(t);
  co_return r;
}

task<void> call_into(framed_client* c, message m, std::optional<result<message>>* out, clk::time_point* at) {
  task<result<message>> t = c->call(std::move(m));
  result<message> r = co_await std::move(t);
  *at = clk::now();
  out->emplace(std::move(r));
}

task<void> nap(executor* ex, std::chrono::nanoseconds d) {
  result<void> r = co_await sleep_for(*ex, d);
  (void)r;
}

template <class Cond>
void run_until(executor& ex, Cond cond, std::chrono::milliseconds limit) {
  const auto until = clk::now() + limit;
  while (!cond() && clk::now() < until) ex.run(nap(&ex, 5ms));
}

}  // namespace

TEST_CASE("review36: a reply that comes while its request is still being sent; the next call's bytes follow, in order") {
  testing::on_each_backend([](backend_kind k) {
    for (bool provided : {true, false}) {
      INFO("provided_buffers " << provided);
      const message m0 = text(big(8 << 20, 'x'));
      const message m1 = text("second");
      raw_plan p;
      p.what = act::reply_early_then_stall;
      p.stall = 400ms;
      p.expect = {frame_of(m0), frame_of(m1)};
      p.replies = {frame_of(text("r0")), frame_of(text("r1"))};
      framed_client_options o;
      o.reply_timeout = 5s;
      o.connection.write_timeout = 5s;
      o.connection.provided_buffers = provided;
      rig r(k, p, o, true);
      const auto t0 = clk::now();
      result<message> a = r.ex.run(one_call(&r.client, m0));
      REQUIRE(a);
      CHECK(a->content == "r0");
      CHECK(clk::now() - t0 < 400ms);  // before the server took the request
      CHECK(r.client.pending() == 0);
      result<message> b = r.ex.run(one_call(&r.client, m1));
      REQUIRE(b);
      CHECK(b->content == "r1");
      CHECK(r.plan.bytes_match);
      CHECK(r.plan.received == p.expect[0].size() + p.expect[1].size());
      CHECK(r.client.is_open());
      r.client.close();
      run_until(r.ex, [&] { return r.plan.finished; }, 3000ms);
      CHECK(r.plan.saw_end);
      r.ex.run_until_idle();
    }
  });
}

TEST_CASE("review36: closed or destroyed while its send is in flight and no reader is inside") {
  testing::on_each_backend([](backend_kind k) {
    for (int how = 0; how < 4; ++how) {
      const bool destroy = how & 1;
      const bool provided = how & 2;
      INFO("destroy " << destroy << " provided_buffers " << provided);
      const message m0 = text(big(8 << 20, 'y'));
      raw_plan p;
      p.what = act::reply_early_then_stall;
      p.stall = 1500ms;
      p.expect = {frame_of(m0), frame_of(text("next"))};
      p.replies = {frame_of(text("r0")), frame_of(text("r1"))};
      framed_client_options o;
      o.reply_timeout = 10s;
      o.connection.write_timeout = 10s;
      o.connection.provided_buffers = provided;
      rig r(k, p, o, true);
      result<message> a = r.ex.run(one_call(&r.client, m0));
      REQUIRE(a);
      CHECK(a->content == "r0");
      // A second call queued behind the stuck request, then the client goes.
      std::optional<result<message>> second;
      clk::time_point at{};
      r.ex.spawn(call_into(&r.client, text("next"), &second, &at));
      r.ex.run(nap(&r.ex, 50ms));
      CHECK(!second);
      const auto t0 = clk::now();
      if (destroy) r.client = framed_client();
      else r.client.close();
      run_until(r.ex, [&] { return second.has_value(); }, 2000ms);
      REQUIRE(second);
      REQUIRE(!*second);
      CHECK(second->error() == std::errc::operation_canceled);
      CHECK(at - t0 < 200ms);
      // The socket is closed: the server, reading again, sees the end.
      run_until(r.ex, [&] { return r.plan.finished; }, 5000ms);
      CHECK(r.plan.finished);
      CHECK(r.plan.saw_end);
      CHECK(r.plan.bytes_match);
      r.ex.run_until_idle();
    }
  });
}

namespace {
task<std::vector<result<message>>> calls_of(framed_client* c, std::vector<message> ms) {
  std::vector<task<result<message>>> calls;
  for (auto& m : ms) calls.push_back(one_call(c, std::move(m)));
  std::vector<result<message>> out = co_await when_all(std::move(calls));
  co_return out;
}
}  // namespace

// A peer that never reads and never answers, holding its socket for
// `stall`: every call fails with ETIMEDOUT after about 300 ms, whichever of
// the client's timeouts `o` makes the 300 ms one.
void fails_every_call_at_300ms(backend_kind k, framed_client_options o, std::chrono::seconds stall) {
  for (bool provided : {true, false}) {
    INFO("provided_buffers " << provided);
    raw_plan p;
    p.what = act::take_nothing;
    p.stall = stall;
    o.connection.provided_buffers = provided;
    rig r(k, p, o);
    const auto t0 = clk::now();
    std::vector<result<message>> out = r.ex.run(calls_of(&r.client, {text(big(8 << 20, 'z')), text("a"), text("b")}));
    const auto took = clk::now() - t0;
    REQUIRE(out.size() == 3);
    for (auto& x : out) {
      REQUIRE(!x);
      CHECK(x.error() == std::errc::timed_out);
    }
    CHECK(took >= 250ms);
    CHECK(took < 2s);
    CHECK(!r.client.is_open());
    run_until(r.ex, [&] { return r.plan.finished; }, std::chrono::milliseconds(stall) + 2000ms);
    r.ex.run_until_idle();
  }
}

TEST_CASE("review36: a peer that takes nothing fails every call at write_timeout, while the reader waits") {
  testing::on_each_backend([](backend_kind k) {
    framed_client_options o;
    o.reply_timeout = 20s;
    o.connection.write_timeout = 300ms;
    fails_every_call_at_300ms(k, o, 3s);
  });
}

// Left open by review36: with no write_timeout, nothing bounded the wait of
// calls whose requests a peer never takes (the reply's deadline starts once
// they are sent). reply_timeout promises the longest wait for a reply.
TEST_CASE("framed_client without a write_timeout: a peer that takes nothing fails every call at reply_timeout") {
  testing::on_each_backend([](backend_kind k) {
    framed_client_options o;
    o.reply_timeout = 300ms;
    o.connection.write_timeout = 0ns;  // none
    fails_every_call_at_300ms(k, o, 4s);
  });
}

TEST_CASE("review36: reply_timeout fires when the server takes a long request and stays silent") {
  testing::on_each_backend([](backend_kind k) {
    for (bool provided : {true, false}) {
      INFO("provided_buffers " << provided);
      raw_plan p;
      p.what = act::drain_silent;
      framed_client_options o;
      o.reply_timeout = 300ms;
      o.connection.write_timeout = 10s;
      o.connection.provided_buffers = provided;
      rig r(k, p, o);
      const auto t0 = clk::now();
      std::vector<result<message>> out =
          r.ex.run(calls_of(&r.client, {text(big(8 << 20, 'q')), text("a"), text(big(3 << 20, 'r'))}));
      const auto took = clk::now() - t0;
      REQUIRE(out.size() == 3);
      for (auto& x : out) {
        REQUIRE(!x);
        CHECK(x.error() == std::errc::timed_out);
      }
      CHECK(took >= 250ms);
      CHECK(took < 3s);
      run_until(r.ex, [&] { return r.plan.finished; }, 3000ms);
      CHECK(r.plan.saw_end);
      r.ex.run_until_idle();
    }
  });
}

TEST_CASE("review36: reply_timeout does not cut off a server still taking a long request slowly") {
  testing::on_each_backend([](backend_kind k) {
    for (bool provided : {true, false}) {
      INFO("provided_buffers " << provided);
      const message m0 = text(big(4 << 20, 's'));
      const message m1 = text("after");
      raw_plan p;
      p.what = act::slow_then_answer;
      p.stall = 1000ms;  // ~8 KiB per 10 ms for a second: far slower than reply_timeout allows for the whole
      p.expect = {frame_of(m0), frame_of(m1)};
      p.replies = {frame_of(text("r0")), frame_of(text("r1"))};
      framed_client_options o;
      o.reply_timeout = 300ms;
      o.connection.write_timeout = 5s;
      o.connection.provided_buffers = provided;
      rig r(k, p, o, true);
      std::vector<result<message>> out = r.ex.run(calls_of(&r.client, {m0, m1}));
      REQUIRE(out.size() == 2);
      REQUIRE(out[0]);
      REQUIRE(out[1]);
      CHECK(out[0]->content == "r0");
      CHECK(out[1]->content == "r1");
      CHECK(r.plan.bytes_match);
      r.client.close();
      run_until(r.ex, [&] { return r.plan.finished; }, 3000ms);
      r.ex.run_until_idle();
    }
  });
}

TEST_CASE("review36: a reset while a long request is being sent fails every call promptly") {
  testing::on_each_backend([](backend_kind k) {
    for (bool provided : {true, false}) {
      INFO("provided_buffers " << provided);
      raw_plan p;
      p.what = act::reset_after_some;
      p.some = 256 * 1024;
      framed_client_options o;
      o.reply_timeout = 20s;
      o.connection.write_timeout = 20s;
      o.connection.provided_buffers = provided;
      rig r(k, p, o);
      const auto t0 = clk::now();
      std::vector<result<message>> out =
          r.ex.run(calls_of(&r.client, {text("a"), text(big(8 << 20, 'w')), text("b")}));
      const auto took = clk::now() - t0;
      REQUIRE(out.size() == 3);
      for (auto& x : out) {
        REQUIRE(!x);
        INFO(x.error().message());
        CHECK(x.error() == out[0].error());
      }
      CHECK(took < 2s);
      CHECK(!r.client.is_open());
      r.ex.run_until_idle();
    }
  });
}

namespace {
// An echo server on a connection of its own ("re:" + content).
task<void> echo_serve(ringframe::socket s, int* served) {
  connection c(std::move(s), {});
  for (;;) {
    result<message_view> m = co_await c.read_message();
    if (!m) break;
    message reply = text("re:" + std::string(m->content_text()));
    result<void> w = co_await c.write(reply);
    if (!w) break;
    ++*served;
  }
}

task<result<message>> call_stoppable(framed_client* c, std::string content, std::stop_token st) {
  task<result<message>> t = c->call(text(std::move(content)), &st);
  result<message> r = co_await std::move(t);
  co_return r;
}

task<void> stop_after(executor* ex, std::stop_source* src, std::chrono::milliseconds d) {
  result<void> r = co_await sleep_for(*ex, d);
  (void)r;
  src->request_stop();
}

std::string content_of(int i) {
  const std::size_t size = i % 7 == 0 ? 300 * 1024 : i % 3 == 0 ? 40 * 1024 : 10;
  std::string s = std::to_string(i) + ":";
  s.resize(size, static_cast<char>('a' + i % 26));
  return s;
}

task<std::vector<result<message>>> mixed_calls(executor* ex, framed_client* c, std::vector<std::stop_source>* srcs,
                                               int n) {
  std::vector<task<result<message>>> calls;
  for (int i = 0; i < n; ++i) {
    calls.push_back(call_stoppable(c, content_of(i), (*srcs)[i].get_token()));
    if (i % 5 == 4) ex->spawn(stop_after(ex, &(*srcs)[i], std::chrono::milliseconds(i % 4)));
  }
  std::vector<result<message>> out = co_await when_all(std::move(calls));
  co_return out;
}
}  // namespace

TEST_CASE("review36: pipelined calls of mixed sizes, some cancelled, each get their own reply") {
  testing::on_each_backend([](backend_kind k) {
    for (bool provided : {true, false}) {
      INFO("provided_buffers " << provided);
      executor ex(testing::on(k));
      auto [srv, cli] = ex.run(testing::tcp_pair(&ex));
      framed_client_options o;
      o.reply_timeout = 5s;
      o.connection.write_timeout = 5s;
      o.connection.provided_buffers = provided;
      framed_client client = framed_client::adopt(std::move(cli), o);
      int served = 0;
      ex.spawn(echo_serve(std::move(srv), &served));
      constexpr int n = 150;
      std::vector<std::stop_source> keep[2] = {std::vector<std::stop_source>(n), std::vector<std::stop_source>(n)};
      for (int round = 0; round < 2; ++round) {
        std::vector<result<message>> out = ex.run(mixed_calls(&ex, &client, &keep[round], n));
        REQUIRE(out.size() == n);
        int cancelled = 0;
        for (int i = 0; i < n; ++i) {
          INFO("round " << round << " call " << i);
          if (!out[i]) {
            CHECK(i % 5 == 4);
            CHECK(out[i].error() == std::errc::operation_canceled);
            ++cancelled;
            continue;
          }
          const std::string want = "re:" + content_of(i);
          CHECK(out[i]->content.size() == want.size());
          CHECK(out[i]->content == want);
        }
        CHECK(client.is_open());
        MESSAGE("cancelled " << cancelled);
      }
      ex.run(nap(&ex, 200ms));
      CHECK(client.pending() == 0);
      client.close();
      ex.run_until_idle();
    }
  });
}

namespace {
// A server that takes `per_request` over each request (a handler's work)
// and answers it with a short reply: it reads steadily, only not faster.
task<void> slow_serve(executor* ex, ringframe::socket s, std::chrono::milliseconds per_request, int* served) {
  connection c(std::move(s), {});
  for (;;) {
    result<message_view> m = co_await c.read_message();
    if (!m) break;
    std::string head(m->content_text().substr(0, 8));
    result<void> sl = co_await sleep_for(*ex, per_request);
    (void)sl;
    message reply = text("re:" + head);
    result<void> w = co_await c.write(reply);
    if (!w) break;
    ++*served;
  }
}

task<std::vector<result<message>>> numbered_calls(framed_client* c, int n, std::size_t size) {
  std::vector<task<result<message>>> calls;
  for (int i = 0; i < n; ++i) {
    std::string content = std::to_string(i) + ":";
    content.resize(size, 'p');
    calls.push_back(one_call(c, text(std::move(content))));
  }
  std::vector<result<message>> out = co_await when_all(std::move(calls));
  co_return out;
}
}  // namespace

TEST_CASE("review36: a deep pipeline to a server that answers each request in time is not cut off by write_timeout") {
  testing::on_each_backend([](backend_kind k) {
    // 100 x 64 KiB requests to a server that takes 20 ms over each and
    // answers it: every reply comes 20 ms after the one before, far within
    // reply_timeout, and the server reads all the while; the requests take
    // 2 s to be read, longer than write_timeout. framed_client says any
    // number of bytes may be in flight (3bd2ad3).
    executor ex(testing::on(k));
    auto [srv, cli] = ex.run(testing::tcp_pair(&ex));
    small_buffers(srv.fd());
    small_buffers(cli.fd());
    framed_client_options o;
    o.reply_timeout = 1s;
    o.connection.write_timeout = 1s;
    framed_client client = framed_client::adopt(std::move(cli), o);
    int served = 0;
    ex.spawn(slow_serve(&ex, std::move(srv), 20ms, &served));
    constexpr int n = 100;
    const auto t0 = clk::now();
    std::vector<result<message>> out = ex.run(numbered_calls(&client, n, 64 * 1024));
    const auto took = clk::now() - t0;
    MESSAGE("took " << std::chrono::duration_cast<std::chrono::milliseconds>(took).count() << " ms, served " << served
                    << ", detail: " << client.failure_detail());
    int ok = 0;
    for (int i = 0; i < n; ++i) {
      if (!out[i]) continue;
      ++ok;
      CHECK(out[i]->content.substr(0, 3 + std::to_string(i).size() + 1) == "re:" + std::to_string(i) + ":");
    }
    CHECK(ok == n);
    CHECK(client.is_open());
    client.close();
    ex.run_until_idle();
  });
}

namespace {
// An echo server that stalls at times: after some requests it stops
// reading for a while (its replies and the client's requests pile up).
task<void> stalling_echo(executor* ex, ringframe::socket s, unsigned seed, int* served) {
  connection c(std::move(s), {});
  for (;;) {
    result<message_view> m = co_await c.read_message();
    if (!m) break;
    message reply = text("re:" + std::string(m->content_text()));
    result<void> w = co_await c.write(reply);
    if (!w) break;
    ++*served;
    seed = seed * 1103515245u + 12345u;
    if ((seed >> 16) % 8 == 0) {
      result<void> sl = co_await sleep_for(*ex, std::chrono::milliseconds((seed >> 8) % 30));
      (void)sl;
    }
  }
}

task<void> close_after(executor* ex, framed_client* c, std::chrono::milliseconds d, bool destroy) {
  result<void> r = co_await sleep_for(*ex, d);
  (void)r;
  if (destroy) *c = framed_client();
  else c->close();
}

task<void> caller(framed_client* c, std::string content, int* done, int* wrong) {
  task<result<message>> t = c->call(text(content));
  result<message> r = co_await std::move(t);
  if (r && r->content != "re:" + content) ++*wrong;
  ++*done;
}

// Calls made over time (some from the loop turns in which replies come).
task<void> spray(executor* ex, framed_client* c, unsigned seed, int n, int* done, int* wrong) {
  for (int i = 0; i < n; ++i) {
    seed = seed * 1103515245u + 12345u;
    const unsigned r = seed >> 8;
    const std::size_t size = r % 10 == 0 ? (1u << 20) + r % 4096 : r % 3 == 0 ? 70 * 1024 + r % 100 : 1 + r % 200;
    std::string content = std::to_string(i) + ":";
    content.resize(size, static_cast<char>('a' + r % 26));
    ex->spawn(caller(c, std::move(content), done, wrong));
    if (r % 4 == 0) {
      result<void> sl = co_await sleep_for(*ex, std::chrono::milliseconds(r % 3));
      (void)sl;
    }
  }
}
}  // namespace

TEST_CASE("review36: calls over time to a stalling server, the client closed or destroyed at a random point") {
  testing::on_each_backend([](backend_kind k) {
    for (unsigned seed = 1; seed <= 12; ++seed) {
      INFO("seed " << seed);
      executor ex(testing::on(k));
      auto [srv, cli] = ex.run(testing::tcp_pair(&ex));
      if (seed % 2) {
        small_buffers(srv.fd());
        small_buffers(cli.fd());
      }
      framed_client_options o;
      o.reply_timeout = 3s;
      o.connection.write_timeout = 3s;
      o.connection.provided_buffers = seed % 3 != 0;
      framed_client client = framed_client::adopt(std::move(cli), o);
      int served = 0, done = 0, wrong = 0;
      constexpr int n = 60;
      ex.spawn(stalling_echo(&ex, std::move(srv), seed, &served));
      ex.spawn(close_after(&ex, &client, std::chrono::milliseconds(5 + (seed * 37) % 120), seed % 4 == 1));
      const auto t0 = clk::now();
      ex.run(spray(&ex, &client, seed * 7919u, n, &done, &wrong));
      run_until(ex, [&] { return done == n; }, 6000ms);
      CHECK(done == n);
      CHECK(wrong == 0);
      CHECK(clk::now() - t0 < 6s);
      ex.run_until_idle();
    }
  });
}

namespace {
// Takes 8 KiB every 20 ms for as long as the client sends, answers nothing.
task<void> slow_silent(executor* ex, ringframe::socket s, bool* finished) {
  std::vector<std::byte> buf(8 * 1024);
  const auto until = clk::now() + 10s;
  while (clk::now() < until) {
    result<std::size_t> n = co_await s.recv(buf, {.timeout = 10s});
    if (!n || *n == 0) break;
    result<void> sl = co_await sleep_for(*ex, 20ms);
    (void)sl;
  }
  *finished = true;
}
}  // namespace

TEST_CASE("review36: a server that takes a deep pipeline slowly and answers nothing fails the calls at write_timeout") {
  testing::on_each_backend([](backend_kind k) {
    // The counterpart of F1: while no reply comes, write_timeout bounds the
    // batch (the reply deadline waits for the send), however steadily the
    // server reads.
    executor ex(testing::on(k));
    auto [srv, cli] = ex.run(testing::tcp_pair(&ex));
    small_buffers(srv.fd());
    small_buffers(cli.fd());
    framed_client_options o;
    o.reply_timeout = 500ms;
    o.connection.write_timeout = 500ms;
    framed_client client = framed_client::adopt(std::move(cli), o);
    bool finished = false;
    ex.spawn(slow_silent(&ex, std::move(srv), &finished));
    const auto t0 = clk::now();
    std::vector<result<message>> out = ex.run(numbered_calls(&client, 100, 64 * 1024));
    const auto took = clk::now() - t0;
    for (auto& x : out) {
      REQUIRE(!x);
      CHECK(x.error() == std::errc::timed_out);
    }
    CHECK(took >= 400ms);
    CHECK(took < 3s);
    run_until(ex, [&] { return finished; }, 3000ms);
    CHECK(finished);
    ex.run_until_idle();
  });
}

namespace {
// Throws bad_alloc from the next recv of kind recv_op_to_fail: the read's
// submission (the epoll backend's waiter, io_uring's SQE).
std::atomic<int> recvs_to_fail{0};
std::atomic<detail::io_op> recv_op_to_fail{detail::io_op::recv_provided};
void fail_a_provided_recv(const detail::io_request& r) {
  if (r.op == recv_op_to_fail.load() && recvs_to_fail.fetch_sub(1) > 0) throw std::bad_alloc();
}

task<void> read_after_failed_start(executor* ex, connection* c, ringframe::socket* peer, std::string* outcome) {
  bool threw = false;
  try {
    detail::read_message_awaitable first = c->read_message();
    result<message_view> m = co_await first;
    *outcome = m ? "a message" : m.error().message();
  } catch (const std::bad_alloc&) {
    threw = true;
  }
  detail::submit_test_hook = nullptr;
  CHECK(threw);
  // Well past the idle timeout of the read that could not start.
  result<void> slept = co_await sleep_for(*ex, 400ms);
  REQUIRE(slept);
  const std::string f = frame_of(text("after"));
  result<std::size_t> n = co_await peer->send_all(f, {.timeout = 5s});
  REQUIRE(n);
  result<message_view> m = co_await c->read_message();
  *outcome = m ? std::string(m->content_text()) : m.error().message();
}
}  // namespace

namespace {
// One read whose recv submission throws, then a message after the idle timeout.
void read_after_a_failed_start(bool provided_buffers) {
  recv_op_to_fail = provided_buffers ? detail::io_op::recv_provided : detail::io_op::recv;
  testing::on_each_backend([provided_buffers](backend_kind k) {
    executor ex(testing::on(k));
    auto [a, b] = testing::socket_pair(ex);
    connection_options o;
    o.idle_timeout = 100ms;
    o.provided_buffers = provided_buffers;
    connection c(std::move(a), o);
    recvs_to_fail = 1;
    detail::submit_test_hook = &fail_a_provided_recv;
    std::string outcome;
    try {
      ex.run(read_after_failed_start(&ex, &c, &b, &outcome));
    } catch (...) {
      detail::submit_test_hook = nullptr;
      throw;
    }
    detail::submit_test_hook = nullptr;
    CHECK(recvs_to_fail <= 0);  // the injected failure happened
    CHECK(outcome == "after");  // not "Connection timed out" from the failed read's deadline
  });
}
}  // namespace

TEST_CASE("review36 N3: a fast read whose recv cannot be submitted leaves no idle deadline behind to refuse the next read") {
  read_after_a_failed_start(true);
}

TEST_CASE("review36 N3: the same in read_slow (no provided buffers)") { read_after_a_failed_start(false); }
