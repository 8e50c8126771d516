// Lifetimes and ordering under concurrency: one regression test per defect
// of issue 10 (docs/reliability.md lists them). Each forces its interleaving
// with the real kernel and timers on one executor, not with sleeps that hope;
// the ASan build turns a use-after-free or a leak into a failure.
#include "loopback.hpp"

#include <ringframe/connection.hpp>
#include <ringframe/deadline.hpp>
#include <ringframe/executor.hpp>
#include <ringframe/socket.hpp>
#include <ringframe/timer.hpp>

#include <doctest/doctest.h>

#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <string>
#include <thread>
#include <vector>

using namespace ringframe;
using namespace std::chrono_literals;
using clk = std::chrono::steady_clock;

namespace {

// ---- 1. a second flush waiter on a connection that its owner ends ----

struct broadcast_scene {
  connection* b = nullptr;  // published by its owner while it lives
  std::error_code owner_flush, broadcaster_write;
  bool owner_done = false, broadcaster_done = false;
};

// B's owner, as run_framed is: the connection lives in this frame.
task<void> owner_of_b(executor* ex, ringframe::socket s, broadcast_scene* sc) {
  connection b(std::move(s));
  sc->b = &b;
  result<void> slept = co_await sleep_for(*ex, 20ms);
  REQUIRE(slept);
  // B's own reply waits for the send already in flight (the broadcaster's):
  // over max_unsent_bytes are queued, so write() flushes before returning.
  result<void> w = co_await b.write(message::binary(std::string(64 * 1024, 'o'), "t"));
  sc->owner_flush = w ? std::error_code{} : w.error();
  sc->b = nullptr;
  sc->owner_done = true;
}  // b is destroyed here, as the server's per-connection frame ends

// Another connection's handler broadcasting to B: 4 MiB cannot fit the
// socket buffer of a peer that never reads, so this waits in B's flush.
task<void> broadcaster(broadcast_scene* sc) {
  REQUIRE(sc->b);
  result<void> w = co_await sc->b->write(message::binary(std::string(4 << 20, 'b'), "t"));
  sc->broadcaster_write = w ? std::error_code{} : w.error();
  sc->broadcaster_done = true;
}

task<void> reset_later(executor* ex, ringframe::socket* peer, std::chrono::milliseconds d) {
  result<void> slept = co_await sleep_for(*ex, d);
  REQUIRE(slept);
  { ringframe::socket gone = std::move(*peer); }  // unread data: the sender gets EPIPE/ECONNRESET
}

}  // namespace

TEST_CASE("1: a broadcaster waiting in another connection's flush gets an error when that connection ends, never freed memory") {
  executor ex;
  auto [srv, peer] = testing::socket_pair(ex);
  broadcast_scene sc;
  ex.spawn(owner_of_b(&ex, std::move(srv), &sc));
  ex.run_once(false);  // the owner starts and publishes B
  ex.spawn(broadcaster(&sc));
  // 0 ms: the broadcaster waits in B's flush; 20 ms: B's owner waits there
  // too (the newer waiter); 40 ms: B's peer goes away. Both are woken by the
  // failed send; B's owner then returns and destroys B while the broadcaster
  // has not run yet. Resumed inline, newest first, the broadcaster would
  // resume inside the destroyed connection.
  ex.spawn(reset_later(&ex, &peer, 40ms));
  ex.run_until_idle();
  CHECK(sc.owner_done);
  CHECK(sc.broadcaster_done);
  CHECK(sc.owner_flush);  // the send failed: EPIPE or ECONNRESET
  CHECK(sc.broadcaster_write);  // an error too (the send's, or ENOTCONN once B is gone)
  MESSAGE("owner: " << sc.owner_flush.message() << "; broadcaster: " << sc.broadcaster_write.message());
}

namespace {

task<void> hold_handle_and_flush(connection_handle h, std::error_code* out, bool* done) {
  connection* c = h.get();
  REQUIRE(c);
  // Over max_unsent_bytes: write() flushes, and waits there.
  result<void> w = co_await c->write(message::binary(std::string(4 << 20, 'h'), "t"));
  *out = w ? std::error_code{} : w.error();
  CHECK(!h);  // the handle knows the connection is gone (c dangles now)
  *done = true;
}

task<void> own_briefly(executor* ex, ringframe::socket s, std::error_code* out, bool* done) {
  connection c(std::move(s));
  ex->spawn(hold_handle_and_flush(c.handle(), out, done));
  result<void> slept = co_await sleep_for(*ex, 20ms);
  REQUIRE(slept);
}  // destroyed while the other coroutine waits in its flush

}  // namespace

TEST_CASE("1: a connection destroyed while another coroutine waits in its flush wakes it with ENOTCONN; its handle turns null") {
  executor ex;
  auto [srv, peer] = testing::socket_pair(ex);  // the peer never reads
  std::error_code err;
  bool done = false;
  ex.spawn(own_briefly(&ex, std::move(srv), &err, &done));
  ex.run_until_idle();
  CHECK(done);
  CHECK(err == std::errc::not_connected);
}

namespace {

// ---- 4. send_all: a stop and a short send's completion in one batch ----

// A NOP whose completion requests a stop: submitted just before the send,
// its CQE arrives in the same batch, right before the send's.
struct stop_on_nop : detail::completion {
  std::stop_source* src;
  static void fired(detail::completion* c, int, unsigned, bool) { static_cast<stop_on_nop*>(c)->src->request_stop(); }
};

task<void> send_all_stopped_midway(executor* ex, ringframe::socket* s, std::stop_source* src, std::error_code* err,
                                   std::size_t* sent) {
  static const std::string big(4 << 20, 'x');
  stop_on_nop nop;
  nop.on_cqe = &stop_on_nop::fired;
  nop.src = src;
  ex->submit(detail::io_request{.op = detail::io_op::nop, .key = detail::key_of(&nop)});
  std::stop_token tok = src->get_token();
  // The first send takes what fits in the socket buffer at once (a short
  // send); its CQE follows the NOP's, after the stop was requested.
  auto op = s->send_all(big, {.stop = &tok});
  result<std::size_t> r = co_await op;
  *err = r ? std::error_code{} : r.error();
  *sent = op.sent();
}

std::size_t drain_nonblocking(int fd) {
  REQUIRE(::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) | O_NONBLOCK) == 0);
  std::size_t total = 0;
  char buf[65536];
  for (;;) {
    ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n <= 0) break;
    total += static_cast<std::size_t>(n);
  }
  return total;
}

}  // namespace

TEST_CASE("4: send_all stopped after a short send reports ECANCELED and counts every byte that went out") {
  executor ex;
  auto [a, b] = testing::socket_pair(ex);
  std::stop_source src;
  std::error_code err;
  std::size_t sent = 0;
  ex.run(send_all_stopped_midway(&ex, &a, &src, &err, &sent));
  CHECK(err == std::errc::operation_canceled);  // never success for a partial send
  CHECK(sent > 0);
  CHECK(sent < (4u << 20));
  CHECK(drain_nonblocking(b.fd()) == sent);  // what the peer got is what it says
}

namespace {

// ---- 6. the write-timeout flag must not outlive the send it timed ----

task<void> zero_copy_writer(connection* c, std::error_code* first, std::error_code* second) {
  result<void> w = co_await c->write(message::binary(std::string(256 * 1024, 'z'), "t"));
  CHECK(w);
  result<void> f = co_await c->flush();
  *first = f ? std::error_code{} : f.error();
  result<void> w2 = co_await c->write(message::binary("after", "t"));
  CHECK(w2);
  result<void> f2 = co_await c->flush();
  *second = f2 ? std::error_code{} : f2.error();
}

// Reads nothing for 50 ms (the zero-copy notification stays pending and the
// 5 ms write deadline fires meanwhile), then reads both messages.
task<void> late_reader(executor* ex, connection* c, std::vector<std::size_t>* sizes) {
  result<void> slept = co_await sleep_for(*ex, 50ms);
  REQUIRE(slept);
  for (int i = 0; i < 2; ++i) {
    result<message_view> m = co_await c->read_message();
    REQUIRE(m);
    sizes->push_back(m->content.size());
  }
}

}  // namespace

TEST_CASE("6: a write deadline that fires while a zero-copy notification is pending does not fail the next flush") {
  executor ex;
  auto [s, c] = ex.run(testing::tcp_pair(&ex));
  connection_options wo;
  wo.zero_copy_threshold = 1;
  wo.write_timeout = 5ms;
  connection writer(std::move(s), wo);
  connection_options ro;
  ro.idle_timeout = 3s;  // a message that never comes fails the test, not hangs it
  connection reader(std::move(c), ro);
  std::error_code first, second;
  std::vector<std::size_t> sizes;
  ex.spawn(zero_copy_writer(&writer, &first, &second));
  ex.spawn(late_reader(&ex, &reader, &sizes));
  ex.run_until_idle();
  CHECK(!first);
  CHECK(!second);  // a healthy connection: no ETIMEDOUT left over from the first send
  CHECK(sizes == std::vector<std::size_t>{256 * 1024, 5});
}

namespace {

// ---- 7. deadlines never fire early ----

struct fired_at {
  deadline d{&fired_at::fire};
  clk::time_point at{};
  bool fired = false;
  static void fire(deadline* self) {
    auto* f = reinterpret_cast<fired_at*>(self);  // d is the first member
    f->at = clk::now();
    f->fired = true;
  }
};

}  // namespace

TEST_CASE("7: a deadline armed before the loop's first turn, long after the executor was made, is not early") {
  executor ex;
  // The loop's clock was last read when the executor was built.
  std::this_thread::sleep_for(30ms);
  fired_at f;
  const clk::time_point armed = clk::now();
  f.d.arm(ex, 20ms);
  while (!f.fired) REQUIRE(ex.run_once(true));
  CHECK(f.at - armed >= 20ms);
}

namespace {

// ---- 8. completions are dispatched in the order the kernel posted them ----

// NOPs complete in submission order. Each completion submits two more, so
// that with a 4-entry submission queue a dispatch fills the queue, which
// submits and reaps from inside the dispatch: what it reaps is newer than
// what is still waiting to be dispatched, and must not overtake it.
struct nop_chain : detail::completion {
  executor* ex;
  std::vector<int>* seen;
  int* next_id;
  int id = 0;
  int budget = 0;
  static void fired(detail::completion* c, int, unsigned, bool);
  static void submit(executor* ex, std::vector<int>* seen, int* next_id, int budget);
};

std::vector<std::unique_ptr<nop_chain>>* chain_store = nullptr;

void nop_chain::submit(executor* ex, std::vector<int>* seen, int* next_id, int budget) {
  auto n = std::make_unique<nop_chain>();
  n->on_cqe = &nop_chain::fired;
  n->ex = ex;
  n->seen = seen;
  n->next_id = next_id;
  n->id = (*next_id)++;
  n->budget = budget;
  ex->submit(detail::io_request{.op = detail::io_op::nop, .key = detail::key_of(n.get())});
  chain_store->push_back(std::move(n));
}

void nop_chain::fired(detail::completion* c, int, unsigned, bool) {
  auto* n = static_cast<nop_chain*>(c);
  n->seen->push_back(n->id);
  if (n->budget > 0) {
    submit(n->ex, n->seen, n->next_id, n->budget - 1);
    submit(n->ex, n->seen, n->next_id, n->budget - 1);
  }
}

}  // namespace

TEST_CASE("8: completions are dispatched in posting order when a dispatch submits and reaps") {
  executor ex(executor_options{4, 1});  // 4 SQEs, 4 CQEs
  std::vector<std::unique_ptr<nop_chain>> store;
  chain_store = &store;
  std::vector<int> seen;
  int next_id = 0;
  for (int i = 0; i < 4; ++i) nop_chain::submit(&ex, &seen, &next_id, 8);
  while (ex.inflight() > 0) REQUIRE(ex.run_once(true));
  chain_store = nullptr;
  REQUIRE(seen.size() == static_cast<std::size_t>(next_id));
  // NOPs were submitted in id order, so they must be seen in id order.
  bool ordered = true;
  for (std::size_t i = 0; i < seen.size(); ++i) ordered = ordered && seen[i] == static_cast<int>(i);
  CHECK(ordered);
  MESSAGE(seen.size() << " NOPs; submits " << ex.stats().submits << ", CQ overflows " << ex.stats().cq_overflows);
}

namespace {

// ---- 9. a stop requested on another thread ----

task<std::error_code> recv_until_stopped(ringframe::socket* s, std::stop_token* tok) {
  std::byte buf[16];
  // The 3 s deadline is the backstop: a cancellation that never reaches the
  // kernel shows up as ETIMEDOUT instead of ECANCELED.
  result<std::size_t> n = co_await s->recv(buf, {.timeout = 3s, .stop = tok});
  co_return n ? std::error_code{} : n.error();
}

}  // namespace

TEST_CASE("9: a stop requested on another thread cancels through the owning executor, at once") {
  executor ex;
  auto [a, b] = testing::socket_pair(ex);
  std::stop_source src;
  std::stop_token tok = src.get_token();
  // The executor sleeps in io_uring_enter when the other thread asks; the
  // callback must not write this ring's submission queue from there.
  std::thread other([&] {
    std::this_thread::sleep_for(50ms);
    src.request_stop();
  });
  auto t0 = clk::now();
  std::error_code err = ex.run(recv_until_stopped(&a, &tok));
  other.join();
  CHECK(err == std::errc::operation_canceled);
  CHECK(clk::now() - t0 < 2s);
  CHECK(ex.stats().deferred_calls >= 1);
}

namespace {

// ---- 3. spawn_on: from any thread; a task never run is freed ----

struct frame_witness {
  int* destroyed;
  explicit frame_witness(int* d) : destroyed(d) {}
  frame_witness(frame_witness&& o) noexcept : destroyed(std::exchange(o.destroyed, nullptr)) {}
  ~frame_witness() {
    if (destroyed) ++*destroyed;
  }
};

task<void> never_runs(frame_witness /*kept by the frame*/, bool* ran) {
  *ran = true;
  co_return;
}

task<void> note_thread(std::atomic<std::thread::id>* where, std::stop_source* done) {
  *where = std::this_thread::get_id();
  done->request_stop();
  co_return;
}

task<void> park(executor* ex, std::stop_token tok) {
  result<void> r = co_await sleep_for(*ex, 10s, &tok);
  (void)r;
}

}  // namespace

TEST_CASE("3: a task handed to an executor that goes away before running it is destroyed, not leaked") {
  int destroyed = 0;
  bool ran = false;
  {
    executor sender, target;
    sender.spawn_on(target, never_runs(frame_witness(&destroyed), &ran));
  }
  CHECK(!ran);
  CHECK(destroyed >= 1);  // the frame's copy of the parameter went with it (ASan: no leak)
}

TEST_CASE("3: spawn_on works from a thread that runs no executor, and wakes a sleeping target") {
  std::atomic<std::thread::id> where{};
  std::stop_source done;
  executor target;  // this thread's
  executor* t = &target;
  std::thread other([t, &where, &done] {
    std::this_thread::sleep_for(20ms);  // the target is asleep in io_uring_enter by now
    t->spawn_on(*t, note_thread(&where, &done));
  });
  target.run(park(&target, done.get_token()));
  other.join();
  CHECK(where.load() == std::this_thread::get_id());
}
