// The twelfth review: the core I/O path (executor, backends, buffer ring,
// receive_stream, send_queue, connection, byte_block), for what happens when
// something throws (std::bad_alloc) half way through. The F cases fail
// without their fix. Every wait is bounded; each test runs on io_uring and
// on epoll.
#include "failing_allocator.hpp"
#include "frames.hpp"
#include "loopback.hpp"
#include "send_helpers.hpp"

#include <ringframe/buffer_ring.hpp>
#include <ringframe/connection.hpp>
#include <ringframe/detail/byte_block.hpp>
#include <ringframe/send_queue.hpp>
#include <ringframe/timer.hpp>

#include <doctest/doctest.h>

#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <new>
#include <optional>
#include <string>
#include <vector>

using namespace ringframe;
using namespace std::chrono_literals;
using testing::on;
using testing::on_each_backend;
using testing::raw_frame;

// An allocator that can be told to fail (failing_allocator.hpp): one
// allocation of an exact size, or the n-th allocation while tracing.
using namespace testing::failing_allocator;

namespace {

const std::string one_frame =
    raw_frame("{ \"content-length\": 3, \"byteorder\": \"big\", \"content-type\": \"x/y\", \"content-encoding\": \"z\" }",
              "abc");

// ---- F1: buffer_ring::grow() when an allocation fails half way ----

// grow() promises "false ... (nothing changes)". Each allocation it makes
// is failed in turn: after the failure the ring must still have its old
// buffers only (take() must not hand out an id with no memory behind it),
// and the next grow() must work.
void grow_with_each_allocation_failing(backend_kind k) {
  for (int index = 0; index < 16; ++index) {
    CAPTURE(index);
    executor_options o = on(k);
    o.receive_buffers = 2;
    o.receive_buffers_max = 64;
    executor ex(o);
    buffer_ring* br = ex.receive_buffers();
    REQUIRE(br);
    REQUIRE(ex.receive_buffer_count() == 2);
    start_tracing(index);
    ex.count_buffer_ring_empty();  // grows: 2 + 4 buffers
    stop_tracing();
    if (allocations_failed == 0) {  // every allocation of a grow() has been failed once
      CHECK(ex.receive_buffer_count() == 6);
      CHECK(index > 0);
      return;
    }
    CHECK(ex.stats().buffer_ring_grown == 0);
    // Nothing changed...
    CHECK(ex.receive_buffer_count() == 2);
    if (k == backend_kind::epoll) {
      // ...so only the two buffers there are can be taken.
      std::vector<std::uint16_t> ids;
      std::uint16_t id;
      while (br->take(id)) ids.push_back(id);
      CHECK(ids.size() == 2);
      for (std::uint16_t i : ids) {
        CHECK(i < 2);
        br->recycle(i);
      }
    }
    // ...and the ring can still grow.
    ex.count_buffer_ring_empty();
    CHECK(ex.receive_buffer_count() == 6);
    CHECK(ex.stats().buffer_ring_grown == 1);
  }
  FAIL("grow() made more allocations than expected");
}

}  // namespace

TEST_CASE("review12 F1: a grow() of the receive buffers that fails changes nothing and can be retried") {
  on_each_backend([](backend_kind k) { grow_with_each_allocation_failing(k); });
}

// ---- F2, F3: a read_message whose coroutine frame cannot be allocated ----

namespace {

// A connection whose next read_message cannot take the fast path: a whole
// frame and the first byte of the next were sent, and the first was read,
// so the decoder is mid-frame (read_slow reads the rest). Without provided
// buffers, so that a read takes no ring buffer.
task<void> read_first_of_two(connection* conn, ringframe::socket* peer) {
  std::string two = one_frame + one_frame.substr(0, 1);
  REQUIRE(::send(peer->fd(), two.data(), two.size(), 0) == static_cast<ssize_t>(two.size()));
  result<message_view> m = co_await conn->read_message();
  REQUIRE(m);
  CHECK(m->content_text() == "abc");
  conn->done_with_message();
}

void send_rest_of_second(ringframe::socket* peer) {
  const std::string rest = one_frame.substr(1);
  REQUIRE(::send(peer->fd(), rest.data(), rest.size(), 0) == static_cast<ssize_t>(rest.size()));
}

// The size of read_slow's coroutine frame: the first allocation of a
// read_message that cannot take the fast path (a frame in progress).
task<void> measure_read_slow_frame(executor* ex, std::size_t* size) {
  auto [s, peer] = co_await testing::tcp_pair(ex);
  connection_options o;
  o.provided_buffers = false;
  connection conn(std::move(s), o);
  co_await read_first_of_two(&conn, &peer);
  send_rest_of_second(&peer);
  start_tracing(-1);
  result<message_view> m = co_await conn.read_message();
  stop_tracing();
  REQUIRE(m);
  REQUIRE(traced_count > 0);
  *size = traced[0];
}

// F2: read_message's slow path cannot allocate its coroutine: the reader
// sees bad_alloc, and the connection must still be readable afterwards,
// with no byte lost.
task<void> read_after_failed_frame(executor* ex, bool* threw, std::optional<result<message_view>>* next) {
  auto [s, peer] = co_await testing::tcp_pair(ex);
  connection_options o;
  o.provided_buffers = false;
  connection conn(std::move(s), o);
  co_await read_first_of_two(&conn, &peer);
  start_tracing(0);  // read_slow's frame is the first allocation
  try {
    (void)co_await conn.read_message();
  } catch (const std::bad_alloc&) {
    *threw = true;
  }
  stop_tracing();
  send_rest_of_second(&peer);
  result<message_view> m = co_await conn.read_message();
  next->emplace(m);
  if (m) CHECK(m->content_text() == "abc");
}

task<void> fast_reader(connection* conn, bool* done, std::optional<result<message_view>>* got) {
  result<message_view> m = co_await conn->read_message();
  got->emplace(m);
  *done = true;
}

task<void> pause(executor* ex, std::chrono::milliseconds d) { (void)co_await sleep_for(*ex, d); }

// Loop turns until `done` (bounded); true when a bad_alloc escaped a turn.
bool turns_until_done(executor& ex, const bool& done) {
  for (int i = 0; i < 2000 && !done; ++i) {
    try {
      ex.run_once(false);
    } catch (const std::bad_alloc&) {
      return true;
    }
    if (i % 100 == 99) ::usleep(1000);
  }
  return false;
}

}  // namespace

TEST_CASE("review12 F2: a read_message that throws bad_alloc leaves the connection readable") {
  on_each_backend([](backend_kind k) {
    executor ex(on(k));
    bool threw = false;
    std::optional<result<message_view>> next;
    ex.run(read_after_failed_frame(&ex, &threw, &next));
    CHECK(threw);
    CHECK(allocations_failed == 1);
    REQUIRE(next);
    // Before the fix: device_or_resource_busy ("two readers") for good.
    CHECK(next->has_value());
  });
}

// F3: a reader waiting on the fast path (a recv from the provided buffers)
// gets the first byte of a frame; the rest is read by read_slow, whose frame
// is allocated from inside the recv's completion. When that allocation
// fails, the reader must learn of it (ENOMEM), not the executor's loop:
// before the fix the bad_alloc escaped run_once() (out of executor::run, the
// whole thread's loop) and the reader was never resumed.
TEST_CASE("review12 F3: a bad_alloc when a fast read goes slow fails the reader, not the executor's loop") {
  on_each_backend([](backend_kind k) {
    executor ex(on(k));
    std::size_t frame_size = 0;
    ex.run(measure_read_slow_frame(&ex, &frame_size));
    REQUIRE(frame_size > 0);
    auto [s, peer] = ex.run(testing::tcp_pair(&ex));
    connection conn(std::move(s), connection_options{});  // provided buffers: the fast path
    REQUIRE(ex.receive_buffers());
    bool done = false;
    std::optional<result<message_view>> got;
    ex.spawn(fast_reader(&conn, &done, &got));
    ex.run(pause(&ex, 20ms));  // the reader waits in the ring
    REQUIRE_FALSE(done);
    allocations_failed = 0;
    fail_allocation_of_size = frame_size;
    REQUIRE(::send(peer.fd(), one_frame.data(), 1, 0) == 1);  // a frame begun: read_slow reads the rest
    const bool escaped = turns_until_done(ex, done);
    fail_allocation_of_size = 0;
    CHECK(allocations_failed == 1);
    CHECK_FALSE(escaped);
    CHECK(done);
    if (got) {
      REQUIRE_FALSE(got->has_value());
      CHECK(got->error() == errno_code(ENOMEM));
    }
    if (!done) {  // before the fix: the reader is stuck; end it before conn goes
      ex.stop();
      for (int i = 0; i < 1000 && !done; ++i) ex.run_once(false);
    }
  });
}

// F3b (review23's suspicion): the same reader, and a whole frame arrives in
// one recv, but decoding it allocates (the detail of a bad header) and that
// allocation fails. The fast path decodes inside the recv's completion: the
// bad_alloc escaped run_once() too and the reader hung. It must fail with
// ENOMEM, and the process and the executor go on.
namespace {

const std::string bad_header_frame = raw_frame("[1, 2]", "");

// The size of the first allocation decoding bad_header_frame makes, on a
// thread whose JSON parser is already allocated.
std::size_t measure_decode_allocation() {
  frame_decoder warm(frame_limits{});
  warm.feed(one_frame);
  message_view v;
  REQUIRE(warm.next(v) == frame_decoder::status::message);
  frame_decoder d(frame_limits{});
  d.feed(bad_header_frame);
  start_tracing(-1);
  frame_decoder::status st = d.next(v);
  stop_tracing();
  REQUIRE(st == frame_decoder::status::error);
  REQUIRE(d.error().code == frame_errc::header_not_object);
  REQUIRE(traced_count > 0);
  return traced[0];
}

}  // namespace

TEST_CASE("review12 F3b: a bad_alloc while a fast read decodes fails the reader, not the executor's loop") {
  on_each_backend([](backend_kind k) {
    executor ex(on(k));
    auto [s, peer] = ex.run(testing::tcp_pair(&ex));
    connection conn(std::move(s), connection_options{});
    REQUIRE(ex.receive_buffers());
    bool done = false;
    std::optional<result<message_view>> got;
    ex.spawn(fast_reader(&conn, &done, &got));
    ex.run(pause(&ex, 20ms));  // the reader waits in the ring
    REQUIRE_FALSE(done);
    const std::size_t size = measure_decode_allocation();
    allocations_failed = 0;
    fail_allocation_of_size = size;
    REQUIRE(::send(peer.fd(), bad_header_frame.data(), bad_header_frame.size(), 0) ==
            static_cast<ssize_t>(bad_header_frame.size()));
    const bool escaped = turns_until_done(ex, done);
    fail_allocation_of_size = 0;
    CHECK(allocations_failed == 1);
    CHECK_FALSE(escaped);
    CHECK(done);
    if (got) {
      REQUIRE_FALSE(got->has_value());
      CHECK(got->error() == errno_code(ENOMEM));
      // Nothing was lost: the next read decodes the same frame again.
      done = false;
      got.reset();
      ex.spawn(fast_reader(&conn, &done, &got));
      for (int i = 0; i < 2000 && !done; ++i) ex.run_once(false);
      REQUIRE(done);
      REQUIRE(got);
      REQUIRE_FALSE(got->has_value());
      CHECK(got->error() == make_error_code(frame_errc::header_not_object));
    }
    if (!done) {  // before the fix: the reader is stuck; end it before conn goes
      ex.stop();
      for (int i = 0; i < 1000 && !done; ++i) ex.run_once(false);
    }
  });
}

// ---- F4: send_queue::start() that throws after forming its batch ----

namespace {

// A batch with a piece by reference goes out as a gather list; the list's
// first allocation fails, so start() throws. The batch must not be lost:
// before the fix it stayed in the flight, unsent() said 0 (a flush would
// report success with the bytes never sent), and the next start() sent
// what was queued after it first ("CC" before "AAAABBBB").
task<void> start_that_throws(executor* ex, bool* threw, std::size_t* unsent_after, std::string* got) {
  auto [s, peer] = co_await testing::tcp_pair(ex);
  send_queue q(s, {});
  detail::block_ref b(detail::byte_block::make(16));
  std::memcpy(b->data(), "BBBB", 4);
  q.out() = "AAAA";
  REQUIRE(q.append_shared(b, {b->data(), 4}));
  start_tracing(0);  // the gather list's first entry
  try {
    q.start();
  } catch (const std::bad_alloc&) {
    *threw = true;
  }
  stop_tracing();
  *unsent_after = q.unsent();
  q.out() += "CC";
  q.start();
  while (q.busy()) co_await testing::wait_empty{&q, {}};
  CHECK(!q.error());
  // Everything, in order.
  *got = co_await testing::read_exactly(&peer, 10, 2s);
}

}  // namespace

TEST_CASE("review12 F4: a send_queue::start() that throws keeps its batch, in order") {
  on_each_backend([](backend_kind k) {
    executor ex(on(k));
    bool threw = false;
    std::size_t unsent_after = 0;
    std::string got;
    ex.run(start_that_throws(&ex, &threw, &unsent_after, &got));
    CHECK(threw);
    CHECK(allocations_failed == 1);
    CHECK(unsent_after == 8);
    CHECK(got == "AAAABBBBCC");
  });
}

// ---- F5: the next batch, started from a send's completion, throws ----

namespace {

// Batch 1 ("A" and a piece) is in the kernel; meanwhile "B", a piece, "C"
// and a piece are queued. Batch 1's completion starts batch 2 from inside
// the executor's dispatch, and its gather list must grow: that allocation
// fails. The queue must fail (ENOMEM) and wake its waiter; before the fix
// the bad_alloc escaped run_once (the thread's loop).
struct next_batch_outcome {
  bool escaped = false;
  bool idle = false;
  std::error_code error;
};

next_batch_outcome next_batch_that_throws(backend_kind k, int fail_index, std::vector<std::size_t>* sizes) {
  executor ex(on(k));
  auto [s, peer] = ex.run(testing::tcp_pair(&ex));
  next_batch_outcome out;
  {
    send_queue q(s, {});
    detail::block_ref b(detail::byte_block::make(64));
    std::memset(b->data(), 'p', 64);
    q.out() = "A";
    REQUIRE(q.append_shared(b, {b->data(), 8}));
    // Batch 1 waits for room (on epoll a send the socket takes at once
    // completes inside start(), and nothing is in flight); the loop below
    // drains the peer.
    REQUIRE(s.set_option(SOL_SOCKET, SO_SNDBUF, 16384));
    REQUIRE(peer.set_option(SOL_SOCKET, SO_RCVBUF, 16384));
    REQUIRE(testing::fill_send_buffer(s) > 0);
    q.start();
    REQUIRE(q.busy());
    q.out() += "B";
    REQUIRE(q.append_shared(b, {b->data() + 16, 8}));
    q.out() += "C";
    REQUIRE(q.append_shared(b, {b->data() + 32, 8}));
    start_tracing(fail_index);
    // (Bounded in time: room comes back at TCP's pace, window updates.)
    for (auto until = std::chrono::steady_clock::now() + 5s; q.busy() && std::chrono::steady_clock::now() < until;) {
      testing::drain_received(peer);
      try {
        ex.run_once(false);
      } catch (const std::bad_alloc&) {
        out.escaped = true;
        break;
      }
    }
    stop_tracing();
    if (sizes)
      for (int i = 0; i < traced_count && i < 1024; ++i) sizes->push_back(traced[static_cast<std::size_t>(i)]);
    out.idle = !q.busy();
    out.error = q.error();
    if (q.busy()) {  // before the fix: nothing will end it but a stop
      ex.stop();
      for (int i = 0; i < 1000 && q.busy(); ++i) ex.run_once(false);
    }
  }
  return out;
}

}  // namespace

TEST_CASE("review12 F5: a bad_alloc starting the next batch from a completion fails the queue, not the loop") {
  on_each_backend([](backend_kind k) {
    // Which allocation is the gather list's growth: the one of 4 iovecs
    // (batch 1's list had room for 2).
    std::vector<std::size_t> sizes;
    next_batch_outcome dry = next_batch_that_throws(k, -1, &sizes);
    REQUIRE(dry.idle);
    REQUIRE_FALSE(dry.error);
    int index = -1;
    for (std::size_t i = 0; i < sizes.size(); ++i)
      if (sizes[i] == 4 * sizeof(iovec)) {
        index = static_cast<int>(i);
        break;
      }
    CAPTURE(sizes.size());
    REQUIRE(index >= 0);
    next_batch_outcome o = next_batch_that_throws(k, index, nullptr);
    CHECK(allocations_failed == 1);
    CHECK_FALSE(o.escaped);
    CHECK(o.idle);
    CHECK(o.error == errno_code(ENOMEM));
  });
}

// ---- F6: the epoll backend accepts a descriptor it cannot record ----

namespace {

// The next descriptor the kernel will give out.
int next_fd() {
  int fd = ::dup(0);
  REQUIRE(fd >= 0);
  ::close(fd);
  return fd;
}

// A connection waits in the listener's backlog; the accepted descriptor's
// number is past the epoll backend's table, whose growth fails. Before the
// fix the descriptor was accepted and then lost (open, owned by nobody):
// one descriptor leaked per failure.
task<void> accept_that_cannot_grow(executor* ex, bool* failed, int* leaked) {
  address at;
  ringframe::socket l = testing::loopback_listener(*ex, at);
  int client = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  REQUIRE(client >= 0);
  REQUIRE(::connect(client, at.data(), at.size()) == 0);
  // Push the accepted descriptor's number past the table.
  std::vector<int> filler;
  for (int i = 0; i < 200; ++i) filler.push_back(::dup(client));
  const int i = next_fd();
  // The epoll backend's table grows to i + 1 + i / 8 + 16 entries of 24
  // bytes (its fd_state).
  const std::size_t table = static_cast<std::size_t>(i + 1 + i / 8 + 16) * 24;
  const int before = testing::open_fd_count();
  allocations_failed = 0;
  fail_allocation_of_size = table;
  try {
    result<ringframe::socket> s = co_await l.accept(nullptr, {.timeout = 2s});
    *failed = !s;
  } catch (const std::bad_alloc&) {
    *failed = true;
  }
  fail_allocation_of_size = 0;
  *leaked = testing::open_fd_count() - before;
  for (int fd : filler) ::close(fd);
  ::close(client);
}

}  // namespace

TEST_CASE("review12 F6: an accepted descriptor the epoll backend cannot record is closed, not leaked") {
  on_each_backend([](backend_kind k) {
    testing::require_fd_limit(1024);
    executor ex(on(k));
    bool failed = false;
    int leaked = -1;
    ex.run(accept_that_cannot_grow(&ex, &failed, &leaked));
    if (k == backend_kind::epoll) {
      CHECK(allocations_failed == 1);
      CHECK(failed);
    }
    // io_uring: nothing of that size fails; the accepted socket is closed
    // when the result goes. Either way no descriptor is left behind.
    CHECK(leaked == 0);
  });
}
