// framed_client: pipelined calls answered in order, a peer that resets or
// sends a malformed reply fails every pending call, the reply timeout,
// cancellation of one call, close and destruction while calls wait, connect
// retries and deadline. Each test runs on io_uring and on epoll.
#include "loopback.hpp"

#include <ringframe/connection.hpp>
#include <ringframe/executor.hpp>
#include <ringframe/frame.hpp>
#include <ringframe/framed_client.hpp>
#include <ringframe/socket.hpp>
#include <ringframe/timer.hpp>
#include <ringframe/when_all.hpp>

#include <doctest/doctest.h>

#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <memory>
#include <optional>
#include <stop_token>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

using namespace ringframe;
using namespace std::chrono_literals;
using clk = std::chrono::steady_clock;

namespace {

message text(std::string s) { return message::binary(std::move(s), "binary/test"); }

// How the test server behaves: it reads `read_first` requests before it
// answers any (0: answers each at once), answers `answer` of them ("re:" +
// content; -1: all), then does `then`.
enum class then_do { keep_reading, reset, malformed, stay_silent };
struct server_plan {
  int read_first = 0;
  int answer = -1;
  then_do then = then_do::keep_reading;
  int requests_seen = 0;
  bool finished = false;
};

void reset_now(ringframe::socket& s) {
  linger l{1, 0};  // close with RST
  REQUIRE(::setsockopt(s.fd(), SOL_SOCKET, SO_LINGER, &l, sizeof l) == 0);
}

task<void> serve(ringframe::socket s, server_plan* plan) {
  connection c(std::move(s), {});
  std::vector<std::string> waiting;  // read, not answered yet
  int answered = 0;
  for (;;) {
    result<message_view> m = co_await c.read_message();
    if (!m) break;
    ++plan->requests_seen;
    waiting.emplace_back(m->content_text());
    if (plan->requests_seen < plan->read_first) continue;
    for (const std::string& w : waiting) {
      if (plan->answer >= 0 && answered >= plan->answer) break;
      message reply = text("re:" + w);
      result<void> wr = co_await c.write(reply);
      REQUIRE(wr);
      ++answered;
    }
    waiting.clear();
    if (plan->answer < 0 || answered < plan->answer) continue;
    result<void> f = co_await c.flush();
    REQUIRE(f);
    if (plan->then == then_do::reset) {
      reset_now(c.get_socket());
      break;
    }
    if (plan->then == then_do::malformed) {
      const char bad[] = {0, 3, 'x', 'y', 'z'};  // a header that is not JSON
      result<std::size_t> n = co_await c.get_socket().send_all(std::as_bytes(std::span(bad)));
      REQUIRE(n);
      // The socket stays open: the client must fail on the frame, not on an end.
      result<void> slept = co_await sleep_for(c.get_socket().get_executor(), 300ms);
      CHECK(slept);
      break;
    }
    if (plan->then == then_do::stay_silent) {
      // Read on (and drop) without answering, until the client goes.
      for (;;) {
        result<message_view> more = co_await c.read_message();
        if (!more) break;
        ++plan->requests_seen;
      }
      break;
    }
  }
  plan->finished = true;
}

// A client and a test server over a TCP pair on `ex`.
struct rig {
  executor ex;
  framed_client client;
  server_plan plan;
  rig(backend_kind k, server_plan p, framed_client_options o = {}) : ex(testing::on(k)), plan(p) {
    auto [srv, cli] = ex.run(testing::tcp_pair(&ex));
    client = framed_client::adopt(std::move(cli), o);
    ex.spawn(serve(std::move(srv), &plan));
  }
};

task<result<message>> one_call(framed_client* c, std::string content) {
  task<result<message>> t = c->call(text(std::move(content)));
  result<message> r = co_await std::move(t);
  co_return r;
}

// Spawned: one call whose outcome goes to *slot, then ++*finished.
task<void> call_into(framed_client* c, result<message>* slot, int* finished) {
  task<result<message>> t = c->call(text("q"));
  *slot = co_await std::move(t);
  ++*finished;
}

task<result<message>> call_message(framed_client* c, message m) {
  task<result<message>> t = c->call(std::move(m));
  result<message> x = co_await std::move(t);
  co_return x;
}

task<std::vector<result<message>>> many_calls(framed_client* c, int n) {
  std::vector<task<result<message>>> calls;
  for (int i = 0; i < n; ++i) calls.push_back(one_call(c, std::to_string(i)));
  std::vector<result<message>> out = co_await when_all(std::move(calls));
  co_return out;
}

}  // namespace

TEST_CASE("framed_client: concurrent calls are pipelined and answered in call order") {
  testing::on_each_backend([](backend_kind k) {
    // The server reads all 40 requests before it answers the first: a client
    // that waited for a reply before writing the next request would hang
    // (and fail on the reply timeout).
    framed_client_options o;
    o.reply_timeout = 5s;
    rig r(k, {.read_first = 40}, o);
    std::vector<result<message>> out = r.ex.run(many_calls(&r.client, 40));
    REQUIRE(out.size() == 40);
    for (int i = 0; i < 40; ++i) {
      INFO("call " << i);
      REQUIRE(out[i]);
      CHECK(out[i]->content == "re:" + std::to_string(i));
      CHECK(out[i]->content_type == "binary/test");
    }
    CHECK(r.plan.requests_seen == 40);
    CHECK(r.client.is_open());
    CHECK(r.client.pending() == 0);
    // The connection goes on serving sequential calls afterwards.
    result<message> again = r.ex.run(one_call(&r.client, "x"));
    REQUIRE(again);
    CHECK(again->content == "re:x");
  });
}

TEST_CASE("framed_client: a peer that resets mid-way fails every pending call, and later calls at once") {
  testing::on_each_backend([](backend_kind k) {
    rig r(k, {.read_first = 6, .answer = 2, .then = then_do::reset});
    std::vector<result<message>> out = r.ex.run(many_calls(&r.client, 6));
    REQUIRE(out.size() == 6);
    REQUIRE(out[0]);
    REQUIRE(out[1]);
    CHECK(out[0]->content == "re:0");
    CHECK(out[1]->content == "re:1");
    for (int i = 2; i < 6; ++i) {
      INFO("call " << i << ": " << out[i].error().message());
      REQUIRE(!out[i]);
      CHECK(out[i].error() == out[2].error());
    }
    // A reset, or (when the reset's RST reaches a recv after the FIN) the end.
    const std::error_code e = out[2].error();
    CHECK((e == std::errc::connection_reset || e == make_error_code(frame_errc::end_of_stream)));
    CHECK(!r.client.is_open());
    CHECK(r.client.error() == e);
    CHECK(!r.client.failure_detail().empty());
    auto t0 = clk::now();
    result<message> later = r.ex.run(one_call(&r.client, "late"));
    REQUIRE(!later);
    CHECK(later.error() == e);
    CHECK(clk::now() - t0 < 1s);
  });
}

TEST_CASE("framed_client: a malformed reply fails every pending call with the decoder's reason") {
  testing::on_each_backend([](backend_kind k) {
    rig r(k, {.read_first = 3, .answer = 1, .then = then_do::malformed});
    std::vector<result<message>> out = r.ex.run(many_calls(&r.client, 3));
    REQUIRE(out[0]);
    CHECK(out[0]->content == "re:0");
    for (int i = 1; i < 3; ++i) {
      REQUIRE(!out[i]);
      CHECK(out[i].error().category() == frame_category());
    }
    CHECK(r.client.failure_detail().find("JSON header is not valid JSON") == 0);
    r.ex.run_until_idle();
  });
}

TEST_CASE("framed_client: no reply within reply_timeout fails the pending calls with ETIMEDOUT") {
  testing::on_each_backend([](backend_kind k) {
    framed_client_options o;
    o.reply_timeout = 150ms;
    rig r(k, {.answer = 0, .then = then_do::stay_silent}, o);
    auto t0 = clk::now();
    std::vector<result<message>> out = r.ex.run(many_calls(&r.client, 3));
    const auto took = clk::now() - t0;
    for (auto& x : out) {
      REQUIRE(!x);
      CHECK(x.error() == std::errc::timed_out);
    }
    CHECK(took >= 100ms);
    CHECK(took < 5s);
    r.ex.run_until_idle();
    CHECK(r.plan.finished);
  });
}

namespace {
task<result<message>> call_with_stop(framed_client* c, std::string content, std::stop_token st) {
  task<result<message>> t = c->call(text(std::move(content)), &st);
  result<message> r = co_await std::move(t);
  co_return r;
}
// Cancels `src`, then makes the fourth call, which lets the server answer.
task<result<message>> cancel_then_call(executor* ex, framed_client* c, std::stop_source* src) {
  result<void> slept = co_await sleep_for(*ex, 30ms);
  REQUIRE(slept);
  src->request_stop();
  task<result<message>> t = c->call(text("d"));
  result<message> r = co_await std::move(t);
  co_return r;
}
task<std::vector<result<message>>> middle_cancelled(executor* ex, framed_client* c) {
  std::stop_source src;
  std::stop_token none;
  std::vector<task<result<message>>> calls;
  calls.push_back(call_with_stop(c, "a", none));
  calls.push_back(call_with_stop(c, "b", src.get_token()));
  calls.push_back(call_with_stop(c, "c", none));
  calls.push_back(cancel_then_call(ex, c, &src));
  std::vector<result<message>> out = co_await when_all(std::move(calls));
  co_return out;
}
}  // namespace

TEST_CASE("framed_client: a cancelled call returns ECANCELED and its reply is dropped, keeping the rest in step") {
  testing::on_each_backend([](backend_kind k) {
    // The server answers only once it has read four requests: a, b and c
    // wait; b is cancelled; then d is sent, and all four replies come.
    rig r(k, {.read_first = 4});
    std::vector<result<message>> out = r.ex.run(middle_cancelled(&r.ex, &r.client));
    REQUIRE(out.size() == 4);
    REQUIRE(out[0]);
    CHECK(out[0]->content == "re:a");
    REQUIRE(!out[1]);
    CHECK(out[1].error() == std::errc::operation_canceled);
    REQUIRE(out[2]);
    CHECK(out[2]->content == "re:c");
    REQUIRE(out[3]);
    CHECK(out[3]->content == "re:d");
    CHECK(r.plan.requests_seen == 4);
    CHECK(r.client.is_open());
    CHECK(r.client.pending() == 0);
    result<message> next = r.ex.run(one_call(&r.client, "e"));
    REQUIRE(next);
    CHECK(next->content == "re:e");
  });
}

TEST_CASE("framed_client: close() completes pending calls with ECANCELED; later calls fail at once") {
  testing::on_each_backend([](backend_kind k) {
    rig r(k, {.answer = 0, .then = then_do::stay_silent});
    std::vector<result<message>> out(3, result<message>(std::errc::io_error));
    int finished = 0;
    for (auto& o : out) r.ex.spawn(call_into(&r.client, &o, &finished));
    for (int i = 0; i < 20; ++i) r.ex.run_once(false);
    CHECK(r.client.pending() == 3);
    CHECK(finished == 0);
    r.client.close();
    for (int i = 0; i < 5 && finished < 3; ++i) r.ex.run_once(false);
    CHECK(finished == 3);  // posted by close(), resumed at the next turn
    for (int i = 0; i < 3; ++i) {
      REQUIRE(!out[i]);
      CHECK(out[i].error() == std::errc::operation_canceled);
    }
    result<message> later = r.ex.run(one_call(&r.client, "x"));
    REQUIRE(!later);
    CHECK(later.error() == std::errc::operation_canceled);
    r.ex.run_until_idle();
  });
}

TEST_CASE("framed_client: destroying the client while calls wait resumes them with ECANCELED, without touching it") {
  testing::on_each_backend([](backend_kind k) {
    executor ex(testing::on(k));
    auto [srv, cli] = ex.run(testing::tcp_pair(&ex));
    server_plan plan{.answer = 0, .then = then_do::stay_silent};
    ex.spawn(serve(std::move(srv), &plan));
    auto client = std::make_unique<framed_client>(framed_client::adopt(std::move(cli)));
    std::vector<result<message>> out(4, result<message>(std::errc::io_error));
    int finished = 0;
    for (auto& o : out) ex.spawn(call_into(client.get(), &o, &finished));
    for (int i = 0; i < 20; ++i) ex.run_once(false);
    CHECK(finished == 0);
    client.reset();  // freed: the calls hold the state, not the client
    ex.run_until_idle();
    CHECK(finished == 4);
    for (auto& o : out) {
      REQUIRE(!o);
      CHECK(o.error() == std::errc::operation_canceled);
    }
    CHECK(plan.finished);  // the connection was closed, the server saw the end
  });
}

TEST_CASE("framed_client: an executor destroyed while calls wait unwinds them (no leak, no stale access)") {
  testing::on_each_backend([](backend_kind k) {
    std::vector<result<message>> out(2, result<message>(std::errc::io_error));
    int finished = 0;
    server_plan plan{.answer = 0, .then = then_do::stay_silent};
    {
      executor ex(testing::on(k));
      auto [srv, cli] = ex.run(testing::tcp_pair(&ex));
      ex.spawn(serve(std::move(srv), &plan));
      {
        framed_client client = framed_client::adopt(std::move(cli));
        for (auto& o : out) ex.spawn(call_into(&client, &o, &finished));
        for (int i = 0; i < 20; ++i) ex.run_once(false);
        CHECK(client.pending() == 2);
        ex.stop();
        for (int i = 0; i < 50 && finished < 2; ++i) ex.run_once(false);
      }
    }
    CHECK(finished == 2);
    for (auto& o : out) {
      REQUIRE(!o);
      CHECK(o.error() == std::errc::operation_canceled);
    }
  });
}

namespace {
// Listens on `at` after `d`, accepts one connection and serves it.
task<void> listen_later(executor* ex, address at, std::chrono::milliseconds d, server_plan* plan) {
  result<void> r = co_await sleep_for(*ex, d);
  REQUIRE(r);
  result<ringframe::socket> l = listen(*ex, at);
  REQUIRE(l);
  result<ringframe::socket> s = co_await l->accept(nullptr, {.timeout = 5s});
  REQUIRE(s);
  co_await serve(std::move(*s), plan);
}
task<result<framed_client>> connect_client(executor* ex, address at, framed_client_options o) {
  result<framed_client> c = co_await framed_client::connect(*ex, at, o);
  co_return c;
}
task<result<framed_client>> connect_list(executor* ex, std::vector<address> to, framed_client_options o) {
  result<framed_client> c = co_await framed_client::connect(*ex, std::move(to), o);
  co_return c;
}
// A port nobody listens on (bound and released: connecting is refused).
address refused_address(executor& ex) {
  address at;
  {
    ringframe::socket l = testing::loopback_listener(ex, at);
  }
  return at;
}
}  // namespace

TEST_CASE("framed_client: connect retries a refused connection until the server is there") {
  testing::on_each_backend([](backend_kind k) {
    executor ex(testing::on(k));
    address at = refused_address(ex);
    server_plan plan;
    ex.spawn(listen_later(&ex, at, 150ms, &plan));
    framed_client_options o;
    o.retry = {.attempts = 40, .delay = 20ms, .backoff = 1.5, .max_delay = 50ms};
    o.connect_timeout = 5s;
    auto t0 = clk::now();
    result<framed_client> c = ex.run(connect_client(&ex, at, o));
    REQUIRE(c);
    CHECK(clk::now() - t0 >= 100ms);  // it was refused first, then retried
    result<message> r = ex.run(one_call(&*c, "hi"));
    REQUIRE(r);
    CHECK(r->content == "re:hi");
    CHECK(c->peer().port() == at.port());
    c->close();
    ex.run_until_idle();
  });
}

TEST_CASE("framed_client: without retries a refused connect fails at once; with them, at the deadline") {
  testing::on_each_backend([](backend_kind k) {
    executor ex(testing::on(k));
    address at = refused_address(ex);
    result<framed_client> once = ex.run(connect_client(&ex, at, {}));
    REQUIRE(!once);
    CHECK(once.error() == std::errc::connection_refused);

    framed_client_options o;
    o.retry = {.attempts = 1000, .delay = 30ms, .backoff = 1.0};
    o.connect_timeout = 200ms;
    auto t0 = clk::now();
    result<framed_client> timed = ex.run(connect_client(&ex, at, o));
    const auto took = clk::now() - t0;
    REQUIRE(!timed);
    CHECK(timed.error() == std::errc::timed_out);
    CHECK(took >= 150ms);
    CHECK(took < 3s);
  });
}

TEST_CASE("framed_client: connect to a list of addresses takes the first that answers; an empty list is EINVAL") {
  testing::on_each_backend([](backend_kind k) {
    executor ex(testing::on(k));
    address refused = refused_address(ex);
    address at = refused_address(ex);
    while (at.port() == refused.port()) at = refused_address(ex);
    server_plan plan;
    ex.spawn(listen_later(&ex, at, 0ms, &plan));
    // The refused one first, as a name whose first address's family nobody
    // listens on (ringframe-client's case).
    result<framed_client> c = ex.run(connect_list(&ex, {refused, at}, {}));
    REQUIRE(c);
    CHECK(c->peer().port() == at.port());
    result<message> r = ex.run(one_call(&*c, "hi"));
    REQUIRE(r);
    CHECK(r->content == "re:hi");
    c->close();
    ex.run_until_idle();

    result<framed_client> none = ex.run(connect_list(&ex, {}, {}));
    REQUIRE(!none);
    CHECK(none.error() == std::errc::invalid_argument);
    result<framed_client> all_refused = ex.run(connect_list(&ex, {refused, refused}, {}));
    REQUIRE(!all_refused);
    CHECK(all_refused.error() == std::errc::connection_refused);
  });
}

TEST_CASE("framed_client: a request that cannot be encoded fails alone") {
  testing::on_each_backend([](backend_kind k) {
    rig r(k, {});
    message bad = text("x");
    bad.content_type = "\xff\xfe";  // not UTF-8
    result<message> b = r.ex.run(call_message(&r.client, bad));
    REQUIRE(!b);
    CHECK(b.error() == make_error_code(frame_errc::header_not_utf8));
    CHECK(r.client.is_open());
    result<message> ok = r.ex.run(one_call(&r.client, "fine"));
    REQUIRE(ok);
    CHECK(ok->content == "re:fine");
  });
}

TEST_CASE("framed_client: a default-constructed client fails calls with ENOTCONN") {
  executor ex;
  framed_client c;
  CHECK(!c.is_open());
  result<message> r = ex.run(one_call(&c, "x"));
  REQUIRE(!r);
  CHECK(r.error() == std::errc::not_connected);
}

namespace {
task<std::vector<result<message>>> large_calls(framed_client* c, int n, std::size_t size) {
  std::vector<task<result<message>>> calls;
  for (int i = 0; i < n; ++i) {
    std::string content(size, static_cast<char>('a' + i % 26));
    content.replace(0, std::to_string(i).size(), std::to_string(i));
    calls.push_back(one_call(c, std::move(content)));
  }
  std::vector<result<message>> out = co_await when_all(std::move(calls));
  co_return out;
}
}  // namespace

TEST_CASE("framed_client: more requests in flight than the socket buffers hold are all answered") {
  testing::on_each_backend([](backend_kind k) {
    // 12.5 MiB of requests at once, far more than the two ends' socket
    // buffers and the server's max_unsent_bytes (1 MiB) hold: the server
    // stops reading until its replies go out, so the client must read
    // replies while its requests are still queued. Before, it read only
    // once they were all sent, and both ends waited until the write
    // timeout failed every call (review31 F2's library cause).
    framed_client_options o;
    o.reply_timeout = 5s;
    o.connection.write_timeout = 5s;
    rig r(k, {}, o);
    constexpr int n = 200;
    constexpr std::size_t size = 64 * 1024;
    const auto t0 = clk::now();
    std::vector<result<message>> out = r.ex.run(large_calls(&r.client, n, size));
    REQUIRE(out.size() == n);
    for (int i = 0; i < n; ++i) {
      INFO("call " << i);
      REQUIRE(out[i]);
      REQUIRE(out[i]->content.size() == size + 3);
      CHECK(out[i]->content.compare(0, 3 + std::to_string(i).size(), "re:" + std::to_string(i)) == 0);
      CHECK(out[i]->content.back() == static_cast<char>('a' + i % 26));
    }
    CHECK(clk::now() - t0 < 5s);
    CHECK(r.client.is_open());
    CHECK(r.client.pending() == 0);
    CHECK(r.plan.requests_seen == n);
  });
}

namespace {
// Reads exactly n bytes from a blocking socket (false: it ended first).
bool read_exactly(int fd, std::size_t n) {
  std::vector<char> buf(n);
  std::size_t got = 0;
  while (got < n) {
    ssize_t r = ::recv(fd, buf.data() + got, n - got, 0);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return false;
    got += static_cast<std::size_t>(r);
  }
  return true;
}

// Two calls go out; the server (a thread, blocking I/O) reads both, answers
// both and resets the connection while the client's loop is held, so the
// replies and the reset are in the client's socket before its reader looks.
// Then a third call: its send fails first (on epoll at once, ECONNRESET).
task<void> answered_then_reset(executor* ex, framed_client* c, int server_fd, std::size_t request_size,
                               std::vector<result<message>>* out) {
  int finished = 0;
  out->assign(3, result<message>(std::make_error_code(std::errc::operation_in_progress)));
  ex->spawn(call_into(c, &(*out)[0], &finished));
  ex->spawn(call_into(c, &(*out)[1], &finished));
  std::atomic<bool> read_both{false};
  std::thread server([&] {
    int flags = ::fcntl(server_fd, F_GETFL);
    REQUIRE(::fcntl(server_fd, F_SETFL, flags & ~O_NONBLOCK) == 0);
    read_both = read_exactly(server_fd, 2 * request_size);
  });
  // The loop runs (the requests go out) until the server has read both.
  for (int i = 0; i < 2000 && !read_both; ++i) {
    result<void> slept = co_await sleep_for(*ex, 1ms);
    REQUIRE(slept);
  }
  server.join();
  REQUIRE(read_both);
  // The loop is held from here until the third call is made.
  std::string replies;
  REQUIRE(encode_frame(text("re:q"), replies));
  REQUIRE(encode_frame(text("re:q"), replies));
  REQUIRE(::send(server_fd, replies.data(), replies.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(replies.size()));
  linger l{1, 0};
  REQUIRE(::setsockopt(server_fd, SOL_SOCKET, SO_LINGER, &l, sizeof l) == 0);
  REQUIRE(::close(server_fd) == 0);  // RST: loopback delivers it before close returns
  ex->spawn(call_into(c, &(*out)[2], &finished));
  for (int i = 0; i < 5000 && finished < 3; ++i) {
    result<void> slept = co_await sleep_for(*ex, 1ms);
    REQUIRE(slept);
  }
}
}  // namespace

TEST_CASE("framed_client: replies in the socket before a send fails on a reset still answer their calls") {
  testing::on_each_backend([](backend_kind k) {
    executor ex(testing::on(k));
    auto [srv, cli] = ex.run(testing::tcp_pair(&ex));
    framed_client_options o;
    o.reply_timeout = 5s;
    framed_client client = framed_client::adopt(std::move(cli), o);
    std::string request;
    REQUIRE(encode_frame(text("q"), request));
    std::vector<result<message>> out;
    ex.run(answered_then_reset(&ex, &client, srv.release(), request.size(), &out));
    REQUIRE(out.size() == 3);
    for (int i = 0; i < 2; ++i) {
      INFO("call " << i << ": " << (out[i] ? std::string("ok") : out[i].error().message()));
      REQUIRE(out[i]);
      CHECK(out[i]->content == "re:q");
    }
    // The third was never answered: the reset, or the end after it.
    REQUIRE(!out[2]);
    const std::error_code e = out[2].error();
    CHECK((e == std::errc::connection_reset || e == make_error_code(frame_errc::end_of_stream)));
    CHECK(!client.is_open());
    CHECK(client.pending() == 0);
  });
}
