// The twenty-fourth review: what runs as a completion callback (or from
// one) and can still throw into the executor's loop. An exception there
// leaves run_once() (executor::run, for every coroutine of the thread) and
// leaves behind what the callback was half way through. The F cases fail
// without their fix; every wait is bounded (loopback only); each test runs
// on io_uring and on epoll.
#include "failing_allocator.hpp"
#include "frames.hpp"
#include "loopback.hpp"

#include <ringframe/acceptor.hpp>
#include <ringframe/buffer_ring.hpp>
#include <ringframe/connection.hpp>
#include <ringframe/detail/byte_block.hpp>
#include <ringframe/socket.hpp>
#include <ringframe/task.hpp>

#include <doctest/doctest.h>

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdint>
#include <new>
#include <optional>
#include <set>
#include <stop_token>
#include <string>
#include <thread>
#include <utility>
#include <vector>

using namespace ringframe;
using namespace std::chrono_literals;
using testing::on;
using testing::on_each_backend;
using namespace testing::failing_allocator;

// ---- F1: a send_all continued from its completion cannot be resubmitted ----
//
// A send_all that sent only part of its buffer resubmits the rest from its
// completion (operation::handle_cqe -> send_op::finish -> issue()), inside
// the executor's dispatch. On epoll that submission allocates when the
// descriptor is not writable (the last send was short): the waiter's slab
// and, with a timeout, a node of the backend's timer queue. When that
// allocation fails, the bad_alloc left run_once() and the coroutine waiting
// in send_all was never resumed (the backend released the request: nothing
// is in flight for it, no deadline, no stop reaches it). It must end the
// send_all with ENOMEM instead (sent() says how much went out).

namespace {

// The size of a node of the epoll backend's timer queue (a std::set of
// {int64, pointer} pairs).
std::size_t measure_timer_node() {
  std::set<std::pair<std::int64_t, void*>> s;
  start_tracing(-1);
  s.insert({1, nullptr});
  stop_tracing();
  REQUIRE(traced_count == 1);
  return traced[0];
}

struct send_all_outcome {
  bool escaped = false;  // a bad_alloc left run_once()
  bool done = false;     // the send_all's coroutine was resumed
  std::optional<result<std::size_t>> r;
  std::vector<std::size_t> sizes;  // allocations traced (dry run)
};

task<void> send_everything(ringframe::socket* s, const std::string* data, int fail_index, send_all_outcome* out) {
  // Tracing from the send_all's submission on: the first send is short
  // (small buffers, a peer that does not read yet), and its completion
  // resubmits the rest.
  start_tracing(fail_index);
  result<std::size_t> r = co_await s->send_all(*data, {.timeout = 5s});
  stop_tracing();
  out->r.emplace(r);
  out->done = true;
}

send_all_outcome short_send_all(backend_kind k, int fail_index) {
  send_all_outcome out;
  executor ex(on(k));
  auto [s, peer] = ex.run(testing::tcp_pair(&ex));
  REQUIRE(s.set_option(SOL_SOCKET, SO_SNDBUF, 16384));
  REQUIRE(peer.set_option(SOL_SOCKET, SO_RCVBUF, 16384));
  const std::string data(512 << 10, 'x');
  allocations_failed = 0;
  ex.spawn(send_everything(&s, &data, fail_index, &out));
  // Turns with the peer not reading: the first send is short, and the
  // completion resubmits the rest (which then waits for the peer).
  for (int i = 0; i < 20 && !out.done && !out.escaped; ++i) out.escaped = turn_allowing_bad_alloc(ex);
  stop_tracing();
  for (int i = 0; i < traced_count && i < static_cast<int>(traced.size()); ++i)
    out.sizes.push_back(traced[static_cast<std::size_t>(i)]);
  if (!out.done && !out.escaped) {
    // The dry run (or a send_all that goes on after all): the peer reads
    // everything, bounded.
    std::vector<char> sink(1 << 16);
    const auto until = std::chrono::steady_clock::now() + 20s;
    while (!out.done && std::chrono::steady_clock::now() < until) {
      while (::recv(peer.fd(), sink.data(), sink.size(), MSG_DONTWAIT) > 0) {
      }
      ex.run_once(false);
    }
  }
  if (!out.done) {  // before the fix: nothing will resume it (the executor's end destroys it)
    ex.stop();
    for (int i = 0; i < 1000 && !out.done; ++i) ex.run_once(false);
  }
  return out;
}

}  // namespace

TEST_CASE("review24 F1: a send_all whose rest cannot be resubmitted from its completion ends with ENOMEM, "
          "not the executor's loop") {
  on_each_backend([](backend_kind k) {
    const std::size_t node = measure_timer_node();
    // Dry run: every byte goes out; which allocation is the timer node of
    // the first resubmission (epoll).
    send_all_outcome dry = short_send_all(k, -1);
    REQUIRE(dry.done);
    REQUIRE_FALSE(dry.escaped);
    REQUIRE(dry.r);
    if (!dry.r->has_value()) FAIL_CHECK(dry.r->error().message());
    REQUIRE(dry.r->has_value());
    CHECK(**dry.r == std::size_t{512} << 10);
    int index = -1;
    for (std::size_t i = 0; i < dry.sizes.size(); ++i)
      if (dry.sizes[i] == node) {
        index = static_cast<int>(i);
        break;
      }
    CAPTURE(dry.sizes.size());
    if (k == backend_kind::io_uring) {
      // The ring's submission allocates nothing: there is nothing to fail.
      CHECK(index == -1);
      return;
    }
    REQUIRE(index >= 0);
    send_all_outcome o = short_send_all(k, index);
    CHECK(allocations_failed == 1);
    CHECK_FALSE(o.escaped);  // before the fix: the bad_alloc left run_once()
    CHECK(o.done);           // before the fix: the send_all was never resumed
    if (o.r) {
      REQUIRE_FALSE(o.r->has_value());
      CHECK(o.r->error() == errno_code(ENOMEM));
    }
  });
}

// ---- F2: the multishot acceptor cannot keep an accepted descriptor ----
//
// acceptor::handle_cqe pushes each accepted descriptor onto its std::deque
// from the completion. When the deque needs a new block (every 128
// descriptors, as they come and go) and cannot have it, the bad_alloc left
// run_once() (the server's whole thread) and the descriptor the kernel had
// accepted was in no list: open, owned by nobody, for good. It must be
// closed, and next() report ENOMEM (the server backs off and goes on).

namespace {

struct taker_state {
  int taken = 0;
  int enomem = 0;
  int other_errors = 0;
  bool finished = false;
};

task<void> take_connections(acceptor* acc, taker_state* st) {
  for (;;) {
    result<ringframe::socket> s = co_await acc->next();
    if (s) {
      ++st->taken;
      continue;  // closed here
    }
    if (s.error() == errno_code(ENOMEM)) ++st->enomem;
    else if (s.error() != errno_code(ECANCELED)) ++st->other_errors;
    if (!acc->armed()) break;
  }
  st->finished = true;
}

// One client connects and the acceptor's taker sees it (taken or an
// error), bounded; false if a bad_alloc left run_once() first.
bool one_connection(executor& ex, const address& at, taker_state& st, bool* escaped) {
  const int before = st.taken + st.enomem;
  int c = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (c < 0 || ::connect(c, at.data(), at.size()) != 0) {
    if (c >= 0) ::close(c);
    return false;
  }
  for (int i = 0; i < 2000 && st.taken + st.enomem == before && !*escaped; ++i) {
    *escaped = turn_allowing_bad_alloc(ex);
    if (i % 100 == 99) ::usleep(1000);
  }
  ::close(c);
  return st.taken + st.enomem != before;
}

}  // namespace

TEST_CASE("review24 F2: an accepted descriptor the acceptor cannot keep is closed and reported, "
          "not leaked out of the executor's loop") {
  on_each_backend([](backend_kind k) {
    // The deque's blocks: 512 bytes (128 descriptors).
    const std::size_t block = 512;
    executor ex(on(k));
    address at;
    ringframe::socket l = testing::loopback_listener(ex, at);
    std::stop_source stop;
    const std::stop_token token = stop.get_token();
    taker_state st;
    {
      acceptor acc(l, &token);
      ex.spawn(take_connections(&acc, &st));
      ex.run_once(false);  // the taker waits: the multishot accept is armed
      REQUIRE(acc.armed());
      const int fds_before = testing::open_fd_count();
      bool escaped = false;
      allocations_failed = 0;
      matching_allocations = 0;
      allocations_to_pass = 0;
      fail_allocation_of_size = block;
      // One connection at a time, each taken and closed, until the deque
      // grows a block (the 128th): that allocation fails.
      int connections = 0;
      while (connections < 300 && allocations_failed == 0 && !escaped) {
        one_connection(ex, at, st, &escaped);
        ++connections;
      }
      fail_allocation_of_size = 0;
      // Whatever happened to the descriptor is settled by a few more turns.
      for (int i = 0; i < 20; ++i) escaped |= turn_allowing_bad_alloc(ex);
      CAPTURE(connections);
      CHECK(allocations_failed == 1);
      CHECK_FALSE(escaped);  // before the fix: the bad_alloc left run_once()
      CHECK(st.enomem == 1);  // before the fix: nobody heard of that connection
      CHECK(st.other_errors == 0);
      // Every accepted descriptor is closed: before the fix, the one the
      // deque could not take stayed open.
      CHECK(testing::open_fd_count() - fds_before == 0);
      // And the acceptor goes on.
      const int taken = st.taken;
      bool escaped_after = false;
      CHECK(one_connection(ex, at, st, &escaped_after));
      CHECK_FALSE(escaped_after);
      CHECK(st.taken == taken + 1);
      stop.request_stop();
      for (int i = 0; i < 2000 && !st.finished; ++i) ex.run_once(false);
      REQUIRE(st.finished);
      REQUIRE_FALSE(acc.armed());
    }
  });
}

// ---- F3: a multishot stream that lost bytes swallows everything after ----
//
// Bytes that arrive on the multishot recv while nobody reads are held (4
// ring buffers, then a spill string). hold() runs in the recv's completion;
// when the spill cannot grow (bad_alloc) it marks the stream `lost`, and the
// next read reports ENOMEM (the bytes held before the loss first). But
// `lost` stays set for good: a read after that ENOMEM re-arms the multishot
// recv, whose every byte on_multishot then discards (`if (ms_->lost)`), so
// the reader is never resumed (with no deadline: for as long as the peer
// keeps sending), silently eating the stream. A stream that lost bytes
// cannot be read in sync again: every later read must fail with ENOMEM.

namespace {

std::string small_frame(unsigned i) {
  const std::string content(1000, static_cast<char>('a' + i % 26));
  return testing::raw_frame("{ \"content-length\": 1000, \"byteorder\": \"little\", \"content-type\": \"x/y\", "
                            "\"content-encoding\": \"z\" }",
                            content);
}

struct read_state {
  int messages = 0;
  std::optional<std::error_code> error;
  bool done = false;
};

// Reads until the first error (or `at_most` messages).
task<void> read_until_error(connection* c, read_state* st, int at_most) {
  for (int i = 0; i < at_most; ++i) {
    result<message_view> m = co_await c->read_message();
    if (!m) {
      st->error = m.error();
      break;
    }
    ++st->messages;
  }
  st->done = true;
}

void turns_until(executor& ex, const bool& flag, int n = 2000) {
  for (int i = 0; i < n && !flag; ++i) {
    ex.run_once(false);
    if (i % 100 == 99) ::usleep(1000);
  }
}

}  // namespace

TEST_CASE("review24 F3: a read after a multishot stream lost bytes fails with ENOMEM instead of waiting for good") {
  on_each_backend([](backend_kind k) {
    executor ex(on(k));
    auto pair = testing::socket_pair(ex);
    const int big = 4 * 1024 * 1024;
    REQUIRE(::setsockopt(pair.second.fd(), SOL_SOCKET, SO_SNDBUF, &big, sizeof big) == 0);
    REQUIRE(::setsockopt(pair.first.fd(), SOL_SOCKET, SO_RCVBUF, &big, sizeof big) == 0);
    connection_options o;
    o.provided_buffers = true;
    o.multishot_recv = true;
    o.idle_timeout = std::chrono::nanoseconds(0);  // no deadline: only bytes or an error end a read
    o.message_timeout = std::chrono::nanoseconds(0);
    connection conn(std::move(pair.first), o);
    REQUIRE(ex.receive_buffers());
    auto put = [&](const std::string& bytes) {
      REQUIRE(::send(pair.second.fd(), bytes.data(), bytes.size(), MSG_DONTWAIT) ==
              static_cast<ssize_t>(bytes.size()));
    };

    // One message read: the multishot recv is armed and stays armed.
    read_state first;
    ex.spawn(read_until_error(&conn, &first, 1));
    ex.run_once(false);
    put(small_frame(0));
    turns_until(ex, first.done);
    REQUIRE(first.done);
    REQUIRE(first.messages == 1);

    // Nobody reads: a burst of about 12 ring buffers (200 frames of 16 KiB
    // buffers, 800 of epoll's 64 KiB ones) arrives. Four buffers are held,
    // the next one goes to the spill, whose growth (an allocation of one
    // buffer and its terminator) fails.
    const unsigned frames = static_cast<unsigned>(200 * (ex.receive_buffers()->buffer_size() / (16 * 1024)));
    std::string burst;
    for (unsigned i = 1; i <= frames; ++i) burst += small_frame(i);
    allocations_failed = 0;
    matching_allocations = 0;
    allocations_to_pass = 0;
    fail_allocation_of_size = ex.receive_buffers()->buffer_size() + 1;
    put(burst);
    bool escaped = false;
    for (int i = 0; i < 50; ++i) escaped |= turn_allowing_bad_alloc(ex);
    fail_allocation_of_size = 0;
    REQUIRE(allocations_failed == 1);
    CHECK_FALSE(escaped);

    // The reader gets the messages held before the loss, then ENOMEM.
    read_state second;
    ex.spawn(read_until_error(&conn, &second, 1000));
    turns_until(ex, second.done);
    REQUIRE(second.done);
    CHECK(second.messages > 0);
    CHECK(second.messages < static_cast<int>(frames));
    REQUIRE(second.error);
    CHECK(*second.error == errno_code(ENOMEM));

    // A read after that, with more bytes coming: it must fail too (the
    // stream cannot be resynchronised), not wait while the bytes vanish.
    read_state third;
    ex.spawn(read_until_error(&conn, &third, 1));
    ex.run_once(false);
    put(small_frame(frames + 1));
    turns_until(ex, third.done);
    CHECK(third.done);  // before the fix: never resumed
    if (third.done) {
      CHECK(third.messages == 0);
      REQUIRE(third.error);
      CHECK(*third.error == errno_code(ENOMEM));
    } else {  // end it before conn goes
      ex.stop();
      turns_until(ex, third.done);
      REQUIRE(third.done);
    }
  });
}

// ---- F4: a fast read whose bytes cannot be copied out of the ring ----
//
// Between frames a reader waits in the ring; the completion copies the
// buffer into the decoder (receive_stream::outcome). When the decoder cannot
// take a block for it (bad_alloc), the reader gets ENOMEM and the buffer
// goes back to the ring: its bytes are gone. The next read went on as if
// nothing had happened and returned the frame after them: a request lost
// without a word (the peer waits for its reply for ever). A stream that
// lost bytes fails every later read with ENOMEM, as a multishot one (F3).

namespace {

struct lost_copy_outcome {
  std::size_t pooled_at_start = 0;
  int allocations_failed = 0;
  bool escaped = false;
  read_state first, second;
};

void lost_copy(backend_kind k, lost_copy_outcome* out) {
  executor ex(on(k));
  auto pair = testing::socket_pair(ex);
  connection_options o;
  o.provided_buffers = true;
  o.multishot_recv = false;
  connection conn(std::move(pair.first), o);
  // A fresh thread: its block pool is empty, so the decoder's block is a
  // new allocation (header, 16 KiB, padding).
  out->pooled_at_start = detail::byte_block::pooled_bytes();
  // On epoll the ring lends its buffer to the decoder (buffer_ring::lend):
  // nothing is copied, so what fails there is the ring buffer's block, made
  // from the pool when its id is first taken (by the reader's first try,
  // before it waits), and the recv goes straight into the decoder instead.
  const bool epoll = k == backend_kind::epoll;
  const std::size_t block = epoll ? ex.receive_buffers()->buffer_size() : detail::byte_block::smallest_class;
  auto fail_one_block = [&] {
    allocations_failed = 0;
    matching_allocations = 0;
    allocations_to_pass = 0;
    fail_allocation_of_size = sizeof(detail::byte_block) + block + detail::byte_block::tail_padding;
  };
  if (epoll) fail_one_block();
  ex.spawn(read_until_error(&conn, &out->first, 1));
  for (int i = 0; i < 10; ++i) ex.run_once(false);  // the reader waits in the ring
  if (!epoll) fail_one_block();
  const std::string a = small_frame(0);
  if (::send(pair.second.fd(), a.data(), a.size(), 0) != static_cast<ssize_t>(a.size())) return;
  for (int i = 0; i < 2000 && !out->first.done && !out->escaped; ++i) {
    out->escaped = turn_allowing_bad_alloc(ex);
    if (i % 100 == 99) ::usleep(1000);
  }
  fail_allocation_of_size = 0;
  out->allocations_failed = allocations_failed;
  ex.spawn(read_until_error(&conn, &out->second, 1));
  ex.run_once(false);
  const std::string b = small_frame(1);
  if (::send(pair.second.fd(), b.data(), b.size(), 0) != static_cast<ssize_t>(b.size())) return;
  turns_until(ex, out->second.done);
  if (!out->second.done) {  // end it before conn goes
    ex.stop();
    turns_until(ex, out->second.done);
  }
}

}  // namespace

TEST_CASE("review24 F4: a fast read whose bytes could not be copied out of the ring fails every later read, "
          "never skipping a frame") {
  on_each_backend([](backend_kind k) {
    lost_copy_outcome out;
    std::thread t(lost_copy, k, &out);
    t.join();
    REQUIRE(out.pooled_at_start == 0);
    CHECK(out.allocations_failed == 1);
    CHECK_FALSE(out.escaped);
    REQUIRE(out.first.done);
    REQUIRE(out.second.done);
    if (k == backend_kind::epoll) {  // no ring buffer: read into the decoder, nothing lost
      CHECK_FALSE(out.first.error);
      CHECK(out.first.messages == 1);
      CHECK_FALSE(out.second.error);
      CHECK(out.second.messages == 1);
      return;
    }
    REQUIRE(out.first.error);
    CHECK(*out.first.error == errno_code(ENOMEM));
    CHECK(out.second.messages == 0);  // before the fix: 1 (the frame after the lost one)
    REQUIRE(out.second.error);
    CHECK(*out.second.error == errno_code(ENOMEM));
  });
}

TEST_CASE("review24: out of memory for the top free id's block, take() hands out a free id that still has one") {
  // On a thread of its own: its block pool starts empty, so the block for
  // the top free id must be allocated, and that allocation fails.
  bool ran = false;
  std::thread([&ran] {
    namespace fa = testing::failing_allocator;
    constexpr std::size_t size = 64 * 1024;
    buffer_ring br(nullptr, 4, size, 1);
    REQUIRE(br.lends());
    std::uint16_t a = 0, b = 0;
    REQUIRE(br.take(a));
    REQUIRE(br.take(b));
    br.recycle(b);  // free, with its block
    detail::block_ref lent = br.lend(a);
    REQUIRE(lent);
    br.recycle(a);  // free, on top, without a block (lent, still held)
    fa::allocations_failed = 0;
    fa::matching_allocations = 0;
    fa::allocations_to_pass = 0;
    fa::fail_allocation_of_size = sizeof(detail::byte_block) + size + detail::byte_block::tail_padding;
    std::uint16_t got = 0xffff;
    const bool taken = br.take(got);
    fa::fail_allocation_of_size = 0;
    CHECK(fa::allocations_failed == 1);  // the top id's block was tried, and failed
    CHECK(taken);  // before: false, "every buffer in use", with b free and whole
    if (!taken) return;  // (a REQUIRE off the test's thread would abort)
    CHECK(got == b);
    CHECK(br.data(got, size).data() != nullptr);
    br.recycle(got);
    ran = true;
  }).join();
  CHECK(ran);
}
