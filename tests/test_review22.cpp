// review22: a second look at two commits.
//
// 2a9d9d5: a send queue's waiter whose post to the ready queue fails is
// parked on the executor's intrusive list (detail::wake_node). The cases
// below pin what test_review13's three meetings do not: a loop that decides
// it is idle must count the parked list (run_until_idle), and a resume in
// run_ready's parked loop that destroys another parked node's frame must
// leave the rest of the list intact (the loop re-reads the head each time).
//
// 5330432: at a frame's start after a large frame, a direct read asks for
// that frame's length plus 1 KiB (within 8 x read_size). The pin checks,
// through a connection with a small receive budget and on every receive
// path, that frames of many sizes sent one at a time (whole or in two
// parts) arrive byte for byte, and that nothing stays reserved.
#include "child_process.hpp"
#include "failing_allocator.hpp"
#include "loopback.hpp"

#include <ringframe/connection.hpp>
#include <ringframe/executor.hpp>
#include <ringframe/frame.hpp>
#include <ringframe/receive_budget.hpp>
#include <ringframe/task.hpp>
#include <ringframe/timer.hpp>

#include <doctest/doctest.h>

#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <coroutine>
#include <csignal>
#include <cstdlib>
#include <initializer_list>
#include <string>
#include <vector>

using namespace ringframe;
using namespace std::chrono_literals;
using testing::on;
using testing::on_each_backend;
using namespace testing::failing_allocator;

namespace {

// ---- helpers (as in test_review13.cpp) ----

// A crash or a hang in a child process must not take the suite with it.
void check_in_child(auto run) { CHECK(testing::exit_code_in_child(run, 20) == 0); }

// The next allocation of exactly `size` bytes fails (and only that one).
void fail_next_allocation_of_size(std::size_t size) {
  allocations_failed = 0;
  matching_allocations = 0;
  allocations_to_pass = 0;
  fail_allocation_of_size = size;
}

bool post_allocates(executor* ex) {
  start_tracing(-1);
  ex->post(std::noop_coroutine());
  stop_tracing();
  return traced_count > 0;
}

// Fills `ex`'s ready queue so that the next post needs a new block; that
// block's size (0: not found).
std::size_t fill_ready_queue_to_a_block_end(executor* ex) {
  std::size_t block = 0;
  for (int i = 0; i < 10000 && block == 0; ++i)
    if (post_allocates(ex)) block = traced[0];
  if (block == 0) return 0;
  int fit = 0;
  while (fit < 10000 && !post_allocates(ex)) ++fit;
  for (int i = 0; i < fit; ++i) ex->post(std::noop_coroutine());
  return block;
}

// ---- 2a9d9d5: the parked list ----

struct park_here {
  detail::wake_node* n;
  bool await_ready() const noexcept { return false; }
  void await_suspend(std::coroutine_handle<> h) noexcept { n->h = h; }
  void await_resume() const noexcept {}
};

// Waits on its node; once woken, counts itself and destroys `*victim`'s
// frame (if any), as a waiter that ends another coroutine would.
task<void> parked_wait(detail::wake_node** out, int* woken, task<void>** victim) {
  detail::wake_node n;
  *out = &n;
  co_await park_here{&n};
  *out = nullptr;
  ++*woken;
  if (victim && *victim) {
    delete *victim;
    *victim = nullptr;
  }
}

// Parks `nodes` on `ex`, in order: each post is made to fail (the ready
// queue needs a block; a failed post leaves it so, so the next needs one
// too). No turn between them: a turn would resume those parked already.
int park(executor* ex, std::initializer_list<detail::wake_node*> nodes) {
  const std::size_t block = fill_ready_queue_to_a_block_end(ex);
  if (block == 0) return 3;
  ex->run_once(false);  // runs the no-op handles: the next post needs a block
  for (detail::wake_node* n : nodes) {
    fail_next_allocation_of_size(block);
    ex->wake(n);
    fail_allocation_of_size = 0;
    if (allocations_failed != 1) return 4;
    if (n->parked_in != ex) return 5;
  }
  return 0;
}

// A parked waiter, nothing else: run_until_idle must resume it, not find
// the executor idle (nothing live, nothing in the ready queue).
int parked_counts_as_work(backend_kind k) {
  auto* ex = new executor(on(k));
  int woken = 0;
  detail::wake_node* node = nullptr;
  auto* t = new task<void>(parked_wait(&node, &woken, nullptr));
  t->handle().resume();
  if (!node) return 2;
  if (int e = park(ex, {node})) return e;
  ex->run_until_idle();
  if (woken != 1 || !t->handle().done()) return 10;
  delete t;
  delete ex;
  return 0;
}

// Three parked waiters, list [a, b, c]: a's resume destroys b's frame (b
// unparks itself mid-loop); c must still be resumed, once, and b never.
int parked_frame_destroyed_mid_loop(backend_kind k) {
  auto* ex = new executor(on(k));
  int woken_a = 0, woken_b = 0, woken_c = 0;
  detail::wake_node *na = nullptr, *nb = nullptr, *nc = nullptr;
  task<void>* b = nullptr;
  auto* a = new task<void>(parked_wait(&na, &woken_a, &b));
  b = new task<void>(parked_wait(&nb, &woken_b, nullptr));
  auto* c = new task<void>(parked_wait(&nc, &woken_c, nullptr));
  for (task<void>* t : {a, b, c}) t->handle().resume();
  if (!na || !nb || !nc) return 2;
  // LIFO: parked c, b, a gives [a, b, c].
  if (int e = park(ex, {nc, nb, na})) return e;
  ex->run_once(false);
  if (woken_a != 1 || b != nullptr || woken_b != 0) return 30;
  if (woken_c != 1 || !c->handle().done()) return 31;
  for (int i = 0; i < 20; ++i) ex->run_once(false);
  if (woken_a != 1 || woken_c != 1) return 32;
  delete a;
  delete c;
  delete ex;
  return 0;
}

TEST_CASE("review22 pin: a parked wake-up counts as work for run_until_idle") {
  on_each_backend([](backend_kind k) { check_in_child([&] { return parked_counts_as_work(k); }); });
}

TEST_CASE("review22 pin: a parked waiter whose frame an earlier parked resume destroys is skipped, the rest resumed once") {
  on_each_backend([](backend_kind k) { check_in_child([&] { return parked_frame_destroyed_mid_loop(k); }); });
}

// ---- 5330432: the read at a frame's start after a large frame ----

std::string content_of(std::size_t size, unsigned seed) {
  std::string s(size, '\0');
  unsigned x = seed * 2654435761u + 1;
  for (char& ch : s) {
    x = x * 1103515245u + 12345u;
    ch = static_cast<char>('a' + (x >> 16) % 26);
  }
  return s;
}

std::string frame_of(const std::string& content) {
  std::string f;
  REQUIRE(encode_frame(message::binary(content, "t"), f));
  return f;
}

// Sends `f`, in two parts with a pause between when `split` (the first
// part: the header and a little content, so a frame-start read brings part
// of the frame and the rest is reserved for and read mid-frame).
task<void> send_frame(ringframe::socket* s, std::string f, bool split) {
  const std::size_t first = split ? std::min<std::size_t>(f.size(), 3000) : f.size();
  result<std::size_t> n = co_await s->send_all(std::string_view(f).substr(0, first), {.timeout = 5s});
  REQUIRE(n);
  if (first == f.size()) co_return;
  result<void> slept = co_await sleep_for(s->get_executor(), 5ms);
  REQUIRE(slept);
  n = co_await s->send_all(std::string_view(f).substr(first), {.timeout = 5s});
  REQUIRE(n);
}

task<std::string> read_one(connection* c) {
  result<message_view> m = co_await c->read_message();
  REQUIRE(m);
  co_return std::string(m->content_text());
}

TEST_CASE("review22 pin: frames of many sizes one at a time after large ones arrive whole, on every receive path, nothing left reserved") {
  connection_options o;
  o.read_size = 16 * 1024;
  o.thread_receive_budget = 256 * 1024;
  bool split = false;
  SUBCASE("direct") { o.provided_buffers = false; }
  SUBCASE("provided buffers") { o.provided_buffers = true; }
  SUBCASE("multishot") {
    o.provided_buffers = true;
    o.multishot_recv = true;
  }
  SUBCASE("direct, split") {
    o.provided_buffers = false;
    split = true;
  }
  SUBCASE("provided buffers, split") {
    o.provided_buffers = true;
    split = true;
  }
  SUBCASE("multishot, split") {
    o.provided_buffers = true;
    o.multishot_recv = true;
    split = true;
  }
  executor ex;
  auto pair = testing::socket_pair(ex);
  const int big = 4 * 1024 * 1024;
  REQUIRE(::setsockopt(pair.second.fd(), SOL_SOCKET, SO_SNDBUF, &big, sizeof big) == 0);
  REQUIRE(::setsockopt(pair.first.fd(), SOL_SOCKET, SO_RCVBUF, &big, sizeof big) == 0);
  connection conn(std::move(pair.first), o);
  const std::size_t K = 1024;
  const std::vector<std::size_t> sizes = {64 * K, 100 * K, 40 * K, 20 * K, 126 * K, 300, 64 * K, 200 * K, 64 * K,
                                          33 * K, 120 * K, 1 * K,  90 * K, 127 * K, 10,  700 * K, 64 * K, 2 * K};
  for (int round = 0; round < 2; ++round) {
    for (std::size_t i = 0; i < sizes.size(); ++i) {
      CAPTURE(round);
      CAPTURE(i);
      const std::string content = content_of(sizes[i], static_cast<unsigned>(i + 100 * round));
      const std::string f = frame_of(content);
      if (split) {
        ex.spawn(send_frame(&pair.second, f, true));
      } else {
        ex.run(send_frame(&pair.second, f, false));  // all in the socket: the frame-start read may take it whole
      }
      const std::string got = ex.run(read_one(&conn));
      REQUIRE(got.size() == content.size());
      CHECK(got == content);
    }
  }
  conn.done_with_message();
  CHECK(receive_budget::this_thread().used() == 0);
}

// The new frame-start read stays within the largest step (8 x read_size),
// the bound receive_budget.hpp gives for what stays outside the budget: a
// frame longer than that, after others as long, still reserves its length
// each time. (A frame of up to 8 x read_size - 1 KiB after a large one now
// comes whole in the frame-start read and reserves nothing, as a frame
// inside a grown step always could.)
TEST_CASE("review22 pin: after a large frame, one longer than the largest step still reserves its length") {
  connection_options o;
  o.read_size = 16 * 1024;
  o.provided_buffers = false;
  executor ex;
  auto pair = testing::socket_pair(ex);
  const int big = 4 * 1024 * 1024;
  REQUIRE(::setsockopt(pair.second.fd(), SOL_SOCKET, SO_SNDBUF, &big, sizeof big) == 0);
  REQUIRE(::setsockopt(pair.first.fd(), SOL_SOCKET, SO_RCVBUF, &big, sizeof big) == 0);
  connection conn(std::move(pair.first), o);
  const std::string content = content_of(8 * o.read_size, 7);
  const std::string f = frame_of(content);
  for (int i = 0; i < 4; ++i) {
    CAPTURE(i);
    ex.run(send_frame(&pair.second, f, false));
    conn.done_with_message();
    receive_budget::this_thread().reset_peak();
    CHECK(ex.run(read_one(&conn)) == content);
    CHECK(receive_budget::this_thread().peak() >= f.size());
  }
  conn.done_with_message();
  CHECK(receive_budget::this_thread().used() == 0);
}

}  // namespace
