// The second review, of the connection split: guards that passed from the
// start, then the two regressions it found (F1, F2), each of which failed
// before its fix.
#include "loopback.hpp"

#include <ringframe/connection.hpp>
#include <ringframe/deadline.hpp>
#include <ringframe/executor.hpp>
#include <ringframe/frame.hpp>
#include <ringframe/socket.hpp>
#include <ringframe/timer.hpp>

#include <doctest/doctest.h>

#include <sys/socket.h>
#include <fcntl.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <optional>
#include <string>
#include <thread>

using namespace ringframe;
using namespace std::chrono_literals;
using clk = std::chrono::steady_clock;

namespace {

// Backstop as in R6: after 3 s the peer reads, the pages are released.
struct rescuer {
  int fd;
  std::atomic<bool> finished{false}, rescued{false};
  std::thread t;
  explicit rescuer(int peer_fd) : fd(peer_fd) {
    t = std::thread([this] {
      for (int i = 0; i < 300 && !finished; ++i) std::this_thread::sleep_for(10ms);
      if (finished) return;
      rescued = true;
      char buf[65536];
      while (!finished)
        if (::recv(fd, buf, sizeof buf, MSG_DONTWAIT) <= 0) std::this_thread::sleep_for(1ms);
    });
  }
  void done() {
    finished = true;
    t.join();
  }
};

// Fill the path to a peer that does not read (its window closes), then give
// the sender's buffer room again: a SEND_ZC is then taken whole at once
// (its result comes at once, with F_MORE) while its pages wait in the
// write queue for the peer, so the notification does not come.
void close_window(int fd) {
  int small = 4096;
  REQUIRE(::setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &small, sizeof small) == 0);
  int fl = ::fcntl(fd, F_GETFL);
  REQUIRE(::fcntl(fd, F_SETFL, fl | O_NONBLOCK) == 0);
  std::string junk(65536, 'j');
  for (int idle = 0; idle < 20;) {
    if (::send(fd, junk.data(), junk.size(), MSG_NOSIGNAL) > 0) idle = 0;
    else { ++idle; std::this_thread::sleep_for(1ms); }
  }
  REQUIRE(::fcntl(fd, F_SETFL, fl) == 0);
  int big = 8 << 20;
  REQUIRE(::setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &big, sizeof big) == 0);
}

task<void> zc_flush(connection* c, std::error_code* err, bool* done) {
  REQUIRE(c->write(message::binary(std::string(8 << 10, 'z'), "t")).await_ready());
  result<void> f = co_await c->flush();
  *err = f ? std::error_code{} : f.error();
  *done = true;
}

task<void> later(executor* ex, std::chrono::milliseconds d, std::stop_source* src) {
  result<void> slept = co_await sleep_for(*ex, d);
  REQUIRE(slept);
  if (src) src->request_stop();
  else ex->stop();
}

// The batch is taken whole (its result, F_MORE, is dispatched) and its pages
// wait behind a closed window. It counts as sent: the flush ends at once
// (it once waited for the pages, and only a stop ended it), and the stop
// afterwards leaves the orphan holding the pages to the executor.
// A zero-copy writer whose peer does not read, behind a closed window: a
// SEND_ZC is taken whole at once and its pages then wait for the peer.
struct zc_scene {
  executor ex{testing::on_io_uring()};  // the kernel holding SEND_ZC pages
  ringframe::socket peer;
  std::stop_source src;  // the writer socket's stop token
  std::optional<connection> writer;
  zc_scene() {
    auto [s, c] = ex.run(testing::tcp_pair(&ex));
    int rcv = 4096;
    REQUIRE(::setsockopt(c.fd(), SOL_SOCKET, SO_RCVBUF, &rcv, sizeof rcv) == 0);
    close_window(s.fd());
    s.set_stop_token(src.get_token());
    connection_options wo;
    wo.zero_copy_threshold = 1;
    wo.write_timeout = 0s;
    writer.emplace(std::move(s), wo);
    peer = std::move(c);
  }
};

void zc_stop_after_result(bool executor_stop) {
  zc_scene sc;
  executor& ex = sc.ex;
  rescuer r(sc.peer.fd());
  std::error_code err;
  bool done = false;
  ex.spawn(zc_flush(&*sc.writer, &err, &done));
  ex.spawn(later(&ex, 100ms, executor_stop ? nullptr : &sc.src));
  ex.run_until_idle();
  r.done();
  CHECK(done);
  CHECK(!r.rescued);
  CHECK(!err);
}

task<void> reader(connection* c, std::error_code* err, bool* done, clk::time_point* at) {
  result<message_view> m = co_await c->read_message();
  *err = m ? std::error_code{} : m.error();
  *done = true;
  *at = clk::now();
}

}  // namespace

TEST_CASE("review2: executor::stop() after a fully taken SEND_ZC's result: the flush ended when the kernel took the batch") {
  zc_stop_after_result(true);
}

TEST_CASE("review2: the connection's stop after a fully taken SEND_ZC's result: the flush ended when the kernel took the batch") {
  zc_stop_after_result(false);
}

TEST_CASE("review2: a peer that stalls mid-frame gets the message timeout, reported once as ETIMEDOUT") {
  executor ex;
  auto [s, c] = testing::socket_pair(ex);
  connection_options o;
  o.message_timeout = 100ms;
  o.idle_timeout = 0s;
  connection conn(std::move(s), o);
  std::string frame;
  REQUIRE(encode_frame(message::binary(std::string(1000, 'x'), "t"), frame));
  REQUIRE(::send(c.fd(), frame.data(), 10, MSG_NOSIGNAL) == 10);
  std::error_code err;
  bool done = false;
  clk::time_point ended{};
  auto t0 = clk::now();
  ex.spawn(reader(&conn, &err, &done, &ended));
  ex.run_until_idle();
  REQUIRE(done);
  CHECK(err == std::errc::timed_out);
  CHECK(ended - t0 < 1s);
}

// ---- regressions the second review found (F1, F2; each failed before its fix) ----


namespace {


// A NOP whose completion runs `fn`: it is dispatched in the same batch as,
// and just before, the CQEs of whatever is submitted after it this turn.
struct nop_hook : detail::completion {
  void (*fn)(nop_hook*) = nullptr;
  executor* ex = nullptr;
  std::stop_source* src = nullptr;
  void submit() {
    on_cqe = [](detail::completion* c, int, unsigned, bool) { auto* h = static_cast<nop_hook*>(c); h->fn(h); };
    ex->submit(detail::io_request{.op = detail::io_op::nop, .key = detail::key_of(this)});
  }
};

task<void> stop_then_zc_flush(connection* c, nop_hook* hook, std::error_code* err, bool* done) {
  // Small enough to be taken whole at once: the SEND_ZC's result (F_MORE)
  // comes in the same batch as the NOP's, right after it.
  REQUIRE(c->write(message::binary(std::string(8 << 10, 'z'), "t")).await_ready());
  hook->submit();
  result<void> f = co_await c->flush();
  *err = f ? std::error_code{} : f.error();
  *done = true;
}

void zc_stop_race(bool executor_stop) {
  zc_scene sc;
  executor& ex = sc.ex;
  nop_hook hook;
  hook.ex = &ex;
  hook.src = &sc.src;
  hook.fn = executor_stop ? +[](nop_hook* h) { h->ex->stop(); } : +[](nop_hook* h) { h->src->request_stop(); };
  rescuer r(sc.peer.fd());
  std::error_code err;
  bool done = false;
  ex.spawn(stop_then_zc_flush(&*sc.writer, &hook, &err, &done));
  auto t0 = clk::now();
  ex.run_until_idle();
  auto took = clk::now() - t0;
  r.done();
  MESSAGE("flush ended after " << std::chrono::duration_cast<std::chrono::milliseconds>(took).count()
                               << " ms: " << err.message() << std::string(r.rescued ? " (only because the peer read)" : ""));
  CHECK(done);
  CHECK(!r.rescued);  // the stop alone must end the zero-copy flush (R6)
}

}  // namespace

TEST_CASE("F1a: executor::stop() dispatched just before a SEND_ZC's first CQE: the flush must still end") {
  zc_stop_race(true);
}

TEST_CASE("F1b: the connection's stop token requested just before a SEND_ZC's first CQE: the flush must still end") {
  zc_stop_race(false);
}

// ---- F2: a message deadline whose cancel loses to data is never re-armed ----

namespace {

struct late_bytes : deadline {
  int fd;
  std::string bytes;
  explicit late_bytes(int f) : deadline(&late_bytes::fire), fd(f) {}
  static void fire(deadline* d) {
    auto* self = static_cast<late_bytes*>(d);
    // Runs right after the connection's message deadline in the same pass:
    // the bytes are in the socket before its cancellation is submitted.
    REQUIRE(::send(self->fd, self->bytes.data(), self->bytes.size(), MSG_NOSIGNAL) == (ssize_t)self->bytes.size());
  }
};


// Turns every loop iteration until the connection has taken the first bytes
// (so read_slow has just armed the message deadline, in this same turn), then
// arms a deadline of the same duration behind it and holds the loop past both.
task<void> spinner(executor* ex, connection* c, late_bytes* lb, std::chrono::milliseconds d) {
  struct yield_now {
    executor* ex;
    bool await_ready() { return false; }
    void await_suspend(std::coroutine_handle<> h) { ex->post(h); }
    void await_resume() {}
  };
  while (c->bytes_in == 0) co_await yield_now{ex};
  lb->arm(*ex, d);
  std::this_thread::sleep_for(d + 50ms);
}

task<void> guard(executor* ex, bool* done, std::chrono::milliseconds after) {
  result<void> slept = co_await sleep_for(*ex, after);
  (void)slept;
  if (!*done) ex->stop();
}

}  // namespace

TEST_CASE("F2: a message timeout whose cancellation loses to a few more bytes is never armed again") {
  // A plain ring: the recv's completion is posted as soon as the bytes come
  // (task work on the next return to user space), before the cancellation
  // the deadline queued is submitted, so the data wins that race.
  executor ex({.setup = ring_setup::plain});
  auto [s, c] = testing::socket_pair(ex);
  connection_options o;
  o.message_timeout = 100ms;
  o.idle_timeout = 0s;
  connection conn(std::move(s), o);
  std::string frame;
  REQUIRE(encode_frame(message::binary(std::string(1000, 'x'), "t"), frame));
  REQUIRE(::send(c.fd(), frame.data(), 10, MSG_NOSIGNAL) == 10);
  late_bytes lb(c.fd());
  lb.bytes = frame.substr(10, 20);  // still mid-frame; then the peer stalls
  std::error_code err;
  bool done = false;
  clk::time_point ended{};
  ex.spawn(reader(&conn, &err, &done, &ended));
  ex.spawn(spinner(&ex, &conn, &lb, 100ms));
  ex.spawn(guard(&ex, &done, 2000ms));
  auto t0 = clk::now();
  ex.run_until_idle();
  auto took = std::chrono::duration_cast<std::chrono::milliseconds>((done ? ended : clk::now()) - t0);
  MESSAGE("read_message ended after " << took.count() << " ms: " << err.message() << " bytes_in " << conn.bytes_in << " expired " << ex.stats().deadlines_expired);
  CHECK(done);
  // The old connection (71d8bb2) re-armed the message timeout: ETIMEDOUT ~100 ms after the late bytes.
  CHECK(err == std::errc::timed_out);
  CHECK(took < 1500ms);
}
