// Review 49: a client's send that fails because the server is gone
// (ECONNRESET, EPIPE). framed_client reads past it when the kernel says the
// server sends nothing more (a reset, its FIN): each call gets its own
// reply or an error, in bounded time. An EPIPE with the peer still able to
// send (a Unix peer that shut its read side; our own shutdown(SHUT_WR))
// ends the reading at once, as before: reading past it waited for ever on
// io_uring (no deadline was armed beside a send that failed), and until
// reply_timeout on epoll. Each test runs on io_uring and on epoll.
#include "loopback.hpp"

#include <ringframe/connection.hpp>
#include <ringframe/executor.hpp>
#include <ringframe/frame.hpp>
#include <ringframe/framed_client.hpp>
#include <ringframe/socket.hpp>
#include <ringframe/timer.hpp>

#include <doctest/doctest.h>

#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <stop_token>
#include <string>
#include <system_error>
#include <vector>

using namespace ringframe;
using namespace std::chrono_literals;
using clk = std::chrono::steady_clock;

namespace {
message text(std::string s) { return message::binary(std::move(s), "binary/test"); }

void reset_now(ringframe::socket& s) {
  linger l{1, 0};
  REQUIRE(::setsockopt(s.fd(), SOL_SOCKET, SO_LINGER, &l, sizeof l) == 0);
}

// Answers the first `answer` requests ("re:" + their first 8 bytes) at once,
// then after `pause` either resets (rst) or closes (FIN, or RST if unread input).
task<void> serve(ringframe::socket s, int answer, bool rst, std::chrono::milliseconds pause, int* seen) {
  connection c(std::move(s), {});
  int answered = 0;
  while (answered < answer) {
    result<message_view> m = co_await c.read_message();
    if (!m) co_return;
    ++*seen;
    result<void> w = co_await c.write(text("re:" + std::string(m->content_text().substr(0, 8))));
    REQUIRE(w);
    ++answered;
  }
  result<void> f = co_await c.flush();
  REQUIRE(f);
  if (pause.count()) {
    result<void> slept = co_await sleep_for(c.get_socket().get_executor(), pause);
    REQUIRE(slept);
  }
  if (rst) reset_now(c.get_socket());
  // destroyed here: closed
}

std::string req(int i, std::size_t size) {
  std::string s = std::to_string(i);
  s.resize(8, '_');
  s.resize(size, 'x');
  return s;
}

task<void> call_into(framed_client* c, std::string content, result<message>* slot, int* finished) {
  task<result<message>> t = c->call(text(std::move(content)));
  *slot = co_await std::move(t);
  ++*finished;
}

task<void> wait_for(executor* ex, int* finished, int n, std::chrono::milliseconds bound) {
  const auto t0 = clk::now();
  while (*finished < n && clk::now() - t0 < bound) {
    result<void> slept = co_await sleep_for(*ex, 2ms);
    REQUIRE(slept);
  }
}

// n calls of `size` bytes at once; the server answers `answer` then resets.
void pipelined(backend_kind k, int n, std::size_t size, int answer, bool rst, std::chrono::nanoseconds reply_timeout) {
  executor ex(testing::on(k));
  auto [srv, cli] = ex.run(testing::tcp_pair(&ex));
  framed_client_options o;
  o.reply_timeout = reply_timeout;
  framed_client client = framed_client::adopt(std::move(cli), o);
  int seen = 0, finished = 0;
  ex.spawn(serve(std::move(srv), answer, rst, 0ms, &seen));
  std::vector<result<message>> out(n, result<message>(std::make_error_code(std::errc::operation_in_progress)));
  for (int i = 0; i < n; ++i) ex.spawn(call_into(&client, req(i, size), &out[i], &finished));
  const auto t0 = clk::now();
  ex.run(wait_for(&ex, &finished, n, 5000ms));
  const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(clk::now() - t0).count();
  int ok = 0;
  for (int i = 0; i < n; ++i) {
    if (!out[i]) continue;
    ++ok;
    INFO("call " << i);
    CHECK(out[i]->content == "re:" + req(i, 8));  // its own reply
  }
  MESSAGE(std::string(k == backend_kind::io_uring ? "io_uring" : "epoll") << " n=" << n << " size=" << size
          << " answer=" << answer << std::string(rst ? " rst" : " close") << ": " << finished << " finished in " << ms
          << " ms, " << ok << " ok, last error "
          << (out[n - 1] ? std::string("none") : out[n - 1].error().message()));
  CHECK(finished == n);
  CHECK(ok == answer);
  CHECK(client.pending() == 0);
  if (finished < n) client.close();
  ex.run(wait_for(&ex, &finished, n, 1000ms));
  REQUIRE(finished == n);
}
}  // namespace

TEST_CASE("review49: pipelined small calls, server answers 2 then resets") {
  testing::on_each_backend([](backend_kind k) { pipelined(k, 50, 16, 2, true, 0ns); });
}
TEST_CASE("review49: pipelined small calls, server answers 2 then closes") {
  testing::on_each_backend([](backend_kind k) { pipelined(k, 50, 16, 2, false, 0ns); });
}
TEST_CASE("review49: 200 x 64 KiB calls (send busy), server answers 3 then resets, no reply_timeout") {
  testing::on_each_backend([](backend_kind k) { pipelined(k, 200, 64 * 1024, 3, true, 0ns); });
}
TEST_CASE("review49: 200 x 64 KiB calls (send busy), server answers 3 then closes, no reply_timeout") {
  testing::on_each_backend([](backend_kind k) { pipelined(k, 200, 64 * 1024, 3, false, 0ns); });
}

namespace {
// One call answered (the reader stops: nothing pending), then the server
// resets; later calls are made with no reader running.
task<void> after_reset(executor* ex, framed_client* c, std::vector<result<message>>* out, int* finished) {
  ex->spawn(call_into(c, req(0, 16), &(*out)[0], finished));
  co_await wait_for(ex, finished, 1, 2000ms);
  REQUIRE(*finished == 1);
  result<void> slept = co_await sleep_for(*ex, 200ms);  // the RST is in
  REQUIRE(slept);
  ex->spawn(call_into(c, req(1, 16), &(*out)[1], finished));
  co_await wait_for(ex, finished, 2, 3000ms);
  ex->spawn(call_into(c, req(2, 16), &(*out)[2], finished));  // after the failure
  co_await wait_for(ex, finished, 3, 3000ms);
}
}  // namespace

TEST_CASE("review49: calls made after the reset with no reader running") {
  testing::on_each_backend([](backend_kind k) {
    executor ex(testing::on(k));
    auto [srv, cli] = ex.run(testing::tcp_pair(&ex));
    framed_client_options o;
    o.reply_timeout = 0ns;
    framed_client client = framed_client::adopt(std::move(cli), o);
    int seen = 0, finished = 0;
    ex.spawn(serve(std::move(srv), 1, true, 50ms, &seen));
    std::vector<result<message>> out(3, result<message>(std::make_error_code(std::errc::operation_in_progress)));
    const auto t0 = clk::now();
    ex.run(after_reset(&ex, &client, &out, &finished));
    MESSAGE(std::string(k == backend_kind::io_uring ? "io_uring" : "epoll") << ": " << finished << " finished in "
            << std::chrono::duration_cast<std::chrono::milliseconds>(clk::now() - t0).count() << " ms; call1 "
            << (out[1] ? std::string("ok") : out[1].error().message()) << ", call2 "
            << (out[2] ? std::string("ok") : out[2].error().message()));
    CHECK(finished == 3);
    REQUIRE(out[0]);
    CHECK_FALSE(out[1]);
    CHECK_FALSE(out[2]);
    if (finished < 3) client.close();
    ex.run(wait_for(&ex, &finished, 3, 1000ms));
  });
}

namespace {
// One call; waits up to `bound` for it, then closes the client (ECANCELED)
// so that the test ends either way.
task<void> one_call_bounded(executor* ex, framed_client* c, result<message>* out, bool* hung, clk::duration* took,
                            std::chrono::milliseconds bound) {
  int finished = 0;
  const auto t0 = clk::now();
  ex->spawn(call_into(c, "q", out, &finished));
  while (finished == 0 && clk::now() - t0 < bound) {
    result<void> slept = co_await sleep_for(*ex, 5ms);
    REQUIRE(slept);
  }
  *took = clk::now() - t0;
  *hung = finished == 0;
  if (*hung) c->close();
  for (int i = 0; i < 1000 && finished == 0; ++i) {
    result<void> slept = co_await sleep_for(*ex, 1ms);
    REQUIRE(slept);
  }
  REQUIRE(finished == 1);
}

void run_case(backend_kind k, std::chrono::nanoseconds reply_timeout) {
  executor ex(testing::on(k));
  auto [srv, cli] = testing::socket_pair(ex);
  // The server will take no more requests, but may still answer (its
  // write side is open, and stays open for the whole test).
  REQUIRE(::shutdown(srv.fd(), SHUT_RD) == 0);
  framed_client_options o;
  o.reply_timeout = reply_timeout;
  framed_client client = framed_client::adopt(std::move(cli), o);
  result<message> out(std::make_error_code(std::errc::operation_in_progress));
  bool hung = false;
  clk::duration took{};
  ex.run(one_call_bounded(&ex, &client, &out, &hung, &took, 3000ms));
  MESSAGE(std::string(k == backend_kind::io_uring ? "io_uring" : "epoll")
          << " reply_timeout=" << std::chrono::duration_cast<std::chrono::milliseconds>(reply_timeout).count()
          << "ms: " << std::string(hung ? "STILL WAITING after " : "finished after ")
          << std::chrono::duration_cast<std::chrono::milliseconds>(took).count() << " ms, outcome "
          << (out ? std::string("ok") : out.error().message()));
  // The request was never delivered (EPIPE): no reply can come. The call
  // must end, and within its reply_timeout when it has one.
  CHECK_FALSE(hung);
  REQUIRE_FALSE(out);
  CHECK(out.error() == std::errc::broken_pipe);
  CHECK(took < 1s);
  CHECK(client.failure_detail().rfind("cannot send: ", 0) == 0);
}
}  // namespace

TEST_CASE("review49: a Unix peer that shut its read side fails the call with EPIPE at once (reply_timeout 300 ms)") {
  testing::on_each_backend([](backend_kind k) { run_case(k, 300ms); });
}

TEST_CASE("review49: a Unix peer that shut its read side fails the call with EPIPE at once (no reply_timeout)") {
  testing::on_each_backend([](backend_kind k) { run_case(k, 0ns); });
}

namespace {
task<void> read_one(connection* c, result<message_view>* out, bool* done) {
  result<void> w = co_await c->write(message::binary(std::string("q"), "binary/test"));
  REQUIRE(w);
  *out = co_await c->read_message();
  *done = true;
}
task<void> read_bounded(executor* ex, connection* c, result<message_view>* out, bool* done, std::stop_source* stop) {
  ex->spawn(read_one(c, out, done));
  const auto t0 = clk::now();
  while (!*done && clk::now() - t0 < 3s) {
    result<void> slept = co_await sleep_for(*ex, 5ms);
    REQUIRE(slept);
  }
  if (!*done) stop->request_stop();  // ends the read (ECANCELED) so the test ends
  for (int i = 0; i < 1000 && !*done; ++i) {
    result<void> slept = co_await sleep_for(*ex, 1ms);
    REQUIRE(slept);
  }
  REQUIRE(*done);
}
}  // namespace

TEST_CASE("review49: read_while_sending after our own SHUT_WR, a silent peer: the read ends at once with EPIPE") {
  testing::on_each_backend([](backend_kind k) {
    executor ex(testing::on(k));
    auto [srv, cli] = ex.run(testing::tcp_pair(&ex));
    REQUIRE(::shutdown(cli.fd(), SHUT_WR) == 0);
    std::stop_source stop;
    cli.set_stop_token(stop.get_token());
    connection_options o;
    o.read_while_sending = true;
    o.idle_timeout = o.message_timeout = 300ms;
    o.write_timeout = 300ms;
    connection c(std::move(cli), o);
    result<message_view> out(std::make_error_code(std::errc::operation_in_progress));
    bool done = false;
    const auto t0 = clk::now();
    ex.run(read_bounded(&ex, &c, &out, &done, &stop));
    const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(clk::now() - t0).count();
    MESSAGE(std::string(k == backend_kind::io_uring ? "io_uring" : "epoll") << ": read ended after " << ms
            << " ms: " << (out ? std::string("message") : out.error().message()) << "; send_error "
            << c.send_error().message());
    CHECK(ms < 250);  // before the 300 ms timeouts
    REQUIRE_FALSE(out);
    CHECK(out.error() == std::errc::broken_pipe);
  });
}
