// Review of the lifetime/ordering fixes (908094b): regression guards that
// pass on the current code, in the style of test_lifetimes.cpp (the real
// kernel, one executor). The cross-thread ones are meant for TSan too.
#include "loopback.hpp"

#include <ringframe/connection.hpp>
#include <ringframe/deadline.hpp>
#include <ringframe/executor.hpp>
#include <ringframe/frame.hpp>
#include <ringframe/socket.hpp>
#include <ringframe/timer.hpp>

#include <doctest/doctest.h>

#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <memory>
#include <string>
#include <thread>
#include <vector>

using namespace ringframe;
using namespace std::chrono_literals;
using clk = std::chrono::steady_clock;

namespace {

task<void> queue_big_then_read(connection* c, std::error_code* err, clk::duration* took) {
  // Under max_unsent_bytes: queued, and sent beside the next read's recv.
  result<void> w = co_await c->write(message::binary(std::string(4 << 20, 'w'), "t"));
  REQUIRE(w);
  auto t0 = clk::now();
  result<message_view> m = co_await c->read_message();
  *took = clk::now() - t0;
  *err = m ? std::error_code{} : m.error();
}

void reader_learns_of_send_failure(bool multishot) {
  executor ex;
  auto [srv, peer] = testing::socket_pair(ex);  // the peer neither reads nor writes
  connection_options o;
  o.multishot_recv = multishot;
  o.write_timeout = 20ms;
  o.idle_timeout = 2s;
  o.max_unsent_bytes = 16 << 20;
  connection c(std::move(srv), o);
  std::error_code err;
  clk::duration took{};
  ex.run(queue_big_then_read(&c, &err, &took));
  CHECK(err == std::errc::timed_out);
  // The send's failure (its write timeout) must reach the waiting reader at
  // once (fail_send cancels the recv for that), not at the idle timeout.
  CHECK(took < 1s);
  MESSAGE(std::string(multishot ? "multishot" : "single recv") << ": read_message returned after "
                                                   << std::chrono::duration_cast<std::chrono::milliseconds>(took).count()
                                                   << " ms: " << err.message());
}

}  // namespace

TEST_CASE("R2a: a reader waiting beside a send learns of the send's failure at once (one recv per read)") {
  reader_learns_of_send_failure(false);
}

// ---- regression guards for the cross-thread paths (run them under TSan too) ----

namespace {

task<std::error_code> recv_once(ringframe::socket* s, const std::stop_token* tok) {
  std::byte buf[16];
  result<std::size_t> n = co_await s->recv(buf, {.timeout = 3s, .stop = tok});
  co_return n ? std::error_code{} : n.error();
}

}  // namespace

TEST_CASE("G1: a stop from another thread racing the completion it cancels: always one clean result") {
  executor ex;
  auto [a, b] = testing::socket_pair(ex);
  const int peer_fd = b.fd();  // (clang 14 cannot capture a structured binding)
  int cancelled = 0, received = 0;
  for (int i = 0; i < 400; ++i) {
    std::stop_source src;
    std::stop_token tok = src.get_token();
    // The recv is in the kernel when the other thread both completes it (a
    // byte) and asks for its cancellation, in either order.
    std::thread other([&, i] {
      std::this_thread::sleep_for(std::chrono::microseconds(200 + 37 * (i % 13)));
      const char byte = 'x';
      if (i % 2) REQUIRE(::send(peer_fd, &byte, 1, MSG_DONTWAIT) == 1);
      src.request_stop();
      if (!(i % 2)) REQUIRE(::send(peer_fd, &byte, 1, MSG_DONTWAIT) == 1);
    });
    std::error_code e = ex.run(recv_once(&a, &tok));
    other.join();
    if (!e) ++received;
    else if (e == std::errc::operation_canceled) ++cancelled;
    else FAIL("unexpected: " << e.message());
    char sink[64];
    while (::recv(a.fd(), sink, sizeof sink, MSG_DONTWAIT) > 0) {
    }
  }
  MESSAGE(received << " received, " << cancelled << " cancelled");
  CHECK(received + cancelled == 400);
}

namespace {

task<void> count_up(std::atomic<int>* n, int target, std::stop_source* done) {
  if (n->fetch_add(1) + 1 == target) done->request_stop();
  co_return;
}

task<void> park_until(executor* ex, std::stop_token tok) {
  result<void> r = co_await sleep_for(*ex, 10s, &tok);
  (void)r;
}

}  // namespace

TEST_CASE("G2: spawn_on from four threads at once: every task runs exactly once, on the target's thread") {
  executor target;
  std::atomic<int> n{0};
  std::stop_source done;
  constexpr int per_thread = 500, threads = 4;
  std::vector<std::thread> senders;
  for (int t = 0; t < threads; ++t)
    senders.emplace_back([&] {
      for (int i = 0; i < per_thread; ++i) target.spawn_on(target, count_up(&n, per_thread * threads, &done));
    });
  auto t0 = clk::now();
  target.run(park_until(&target, done.get_token()));
  for (auto& s : senders) s.join();
  target.run_until_idle();
  CHECK(n.load() == per_thread * threads);
  CHECK(clk::now() - t0 < 5s);
}

namespace {

task<void> read_until_stopped(connection* c, std::error_code* err) {
  result<message_view> m = co_await c->read_message();
  *err = m ? std::error_code{} : m.error();
}

}  // namespace

TEST_CASE("G3: a connection's stop token requested on another thread cancels its read through the executor") {
  for (bool multishot : {false, true}) {
    executor ex;
    auto [srv, peer] = testing::socket_pair(ex);
    std::stop_source src;
    srv.set_stop_token(src.get_token());
    connection_options o;
    o.multishot_recv = multishot;
    o.idle_timeout = 3s;  // the backstop: a lost stop shows up as ETIMEDOUT
    connection c(std::move(srv), o);
    std::error_code err;
    std::thread other([&] {
      std::this_thread::sleep_for(30ms);
      src.request_stop();
    });
    auto t0 = clk::now();
    ex.run(read_until_stopped(&c, &err));
    other.join();
    CHECK(err == std::errc::operation_canceled);
    CHECK(clk::now() - t0 < 2s);
  }
}

// ---- regressions the review found (R1 to R6; each failed before its fix) ----


namespace {

task<void> flush_big_through_handle(connection_handle h, std::error_code* out, bool* done) {
  connection* c = h.get();
  REQUIRE(c);
  // Over max_unsent_bytes: write() starts the send and waits in flush().
  result<void> w = co_await c->write(message::binary(std::string(4 << 20, 'h'), "t"));
  *out = w ? std::error_code{} : w.error();
  *done = true;
}

task<void> own_then_drop(executor* ex, ringframe::socket s, std::error_code* out, bool* done) {
  connection c(std::move(s));
  ex->spawn(flush_big_through_handle(c.handle(), out, done));
  result<void> slept = co_await sleep_for(*ex, 20ms);
  REQUIRE(slept);
}  // destroyed while its send is still in the kernel (the peer does not read)

// Closes the peer (so the orphaned send completes with EPIPE/ECONNRESET) and
// keeps the loop turning long enough to dispatch that completion.
task<void> close_peer_then_linger(executor* ex, ringframe::socket* peer) {
  result<void> slept = co_await sleep_for(*ex, 60ms);
  REQUIRE(slept);
  { ringframe::socket gone = std::move(*peer); }
  slept = co_await sleep_for(*ex, 60ms);
  REQUIRE(slept);
}

}  // namespace

TEST_CASE("R1: a connection destroyed while its flush's send is in flight: the send's completion must not reach freed memory") {
  executor ex;
  auto [srv, peer] = testing::socket_pair(ex);
  std::error_code err;
  bool done = false;
  ex.spawn(own_then_drop(&ex, std::move(srv), &err, &done));
  ex.spawn(close_peer_then_linger(&ex, &peer));
  ex.run_until_idle();  // ASan: heap-use-after-free in connection::on_send_cqe
  CHECK(done);
  CHECK(err == std::errc::not_connected);
}


TEST_CASE("R2b: a reader waiting beside a send learns of the send's failure at once (multishot recv)") {
  reader_learns_of_send_failure(true);
}

namespace {

task<void> read_one_then_end(ringframe::socket s, bool* got) {
  connection_options o;
  o.multishot_recv = true;
  connection c(std::move(s), o);
  result<message_view> m = co_await c.read_message();
  *got = bool(m);
}  // c goes with its multishot recv still armed: its slot is left behind

}  // namespace

TEST_CASE("R3: a multishot slot left behind by the last connection is freed when the executor goes (ASan: no leak)") {
  bool got = false;
  {
    executor ex;
    auto [srv, peer] = testing::socket_pair(ex);
    std::string f;
    REQUIRE(encode_frame(message::binary("hi", "t"), f));
    REQUIRE(::send(peer.fd(), f.data(), f.size(), 0) == static_cast<ssize_t>(f.size()));
    ex.spawn(read_one_then_end(std::move(srv), &got));
    ex.run_until_idle();
  }  // LeakSanitizer: the multishot_slot (new'd in arm_multishot) is never freed
  CHECK(got);
}

namespace {

struct counted_nop : detail::completion {
  int* hits = nullptr;
  static void fired(detail::completion* c, int, unsigned, bool) { ++*static_cast<counted_nop*>(c)->hits; }
};

}  // namespace

TEST_CASE("R4: an executor destroyed with completions reaped but not yet dispatched goes away at once") {
  std::vector<counted_nop> nops(5);
  int hits = 0;
  auto ex = std::make_unique<executor>(executor_options{4, 1});  // 4 SQEs (one is the wake-up read's)
  for (auto& n : nops) {
    n.on_cqe = &counted_nop::fired;
    n.hits = &hits;
    // A get_sqe that finds the queue full submits it and reaps what completed
    // into the executor's completion queue, for the next turn to dispatch.
    ex->submit(detail::io_request{.op = detail::io_op::nop, .key = detail::key_of(&n)});
  }
  auto t0 = clk::now();
  ex.reset();  // no turn ran: the reaped NOPs are still in completed_
  auto took = clk::now() - t0;
  MESSAGE("~executor took " << std::chrono::duration_cast<std::chrono::milliseconds>(took).count() << " ms");
  CHECK(took < 1s);
}

namespace {

task<void> set_flag(bool* b) {
  *b = true;
  co_return;
}

}  // namespace

TEST_CASE("R5: run_until_idle runs a task another thread handed over before it was called") {
  executor target;
  bool ran = false;
  std::thread other([&] { target.spawn_on(target, set_flag(&ran)); });
  other.join();  // the task is in target's inbox, the eventfd written
  target.run_until_idle();
  CHECK(ran);
}

namespace {

// A task parked until another coroutine posts it back (as a reply handed
// over from another thread's executor would).
struct parked {
  std::atomic<void*>* slot;
  bool await_ready() const noexcept { return false; }
  void await_suspend(std::coroutine_handle<> h) noexcept { slot->store(h.address()); }
  void await_resume() const noexcept {}
};

task<void> wait_for_reply(std::atomic<void*>* slot) { co_await parked{slot}; }

task<void> reply(executor* ex, std::atomic<void*>* slot) {
  ex->post(std::coroutine_handle<>::from_address(slot->load()));
  co_return;
}

}  // namespace

TEST_CASE("R5b: with a work_guard, run() waits for a reply another thread hands over with spawn_on") {
  executor ex;
  // Nothing is in flight while the other thread works: without the guard,
  // run() would report a deadlock.
  executor::work_guard expecting(ex);
  std::atomic<void*> slot{nullptr};
  executor* e = &ex;
  std::thread other([e, &slot] {
    while (!slot.load()) std::this_thread::yield();
    std::this_thread::sleep_for(20ms);  // the executor has nothing in flight meanwhile
    e->spawn_on(*e, reply(e, &slot));
  });
  CHECK_NOTHROW(ex.run(wait_for_reply(&slot)));
  other.join();
}

namespace {

task<void> zero_copy_flusher(connection* c, std::error_code* err, bool* done) {
  result<void> w = co_await c->write(message::binary(std::string(32 << 20, 'z'), "t"));
  REQUIRE(w);
  result<void> f = co_await c->flush();
  *err = f ? std::error_code{} : f.error();
  *done = true;
}

task<void> stop_after(executor* ex, std::chrono::milliseconds d) {
  result<void> slept = co_await sleep_for(*ex, d);
  REQUIRE(slept);
  ex->stop();
}

}  // namespace

TEST_CASE("R6: stop() ends a zero-copy flush to a peer that never reads") {
  executor ex;
  auto [s, c] = ex.run(testing::tcp_pair(&ex));
  connection_options wo;
  wo.zero_copy_threshold = 1;
  wo.max_unsent_bytes = 64 << 20;
  wo.write_timeout = 0s;
  connection writer(std::move(s), wo);
  const int peer_fd = c.fd();
  std::atomic<bool> finished{false}, rescued{false};
  // Backstop: after 3 s the peer starts reading, so the kernel releases the
  // pages and the notification finally comes.
  std::thread watchdog([&] {
    for (int i = 0; i < 300 && !finished; ++i) std::this_thread::sleep_for(10ms);
    if (finished) return;
    rescued = true;
    char buf[65536];
    while (!finished) {
      if (::recv(peer_fd, buf, sizeof buf, MSG_DONTWAIT) <= 0) std::this_thread::sleep_for(1ms);
    }
  });
  std::error_code err;
  bool done = false;
  ex.spawn(zero_copy_flusher(&writer, &err, &done));
  ex.spawn(stop_after(&ex, 100ms));
  auto t0 = clk::now();
  ex.run_until_idle();
  auto took = clk::now() - t0;
  finished = true;
  watchdog.join();
  MESSAGE("run_until_idle after stop took " << std::chrono::duration_cast<std::chrono::milliseconds>(took).count()
                                            << " ms; flush: " << err.message());
  CHECK(done);
  CHECK(!rescued);  // the stop alone ended it
}

