// The twenty-sixth review: ff94406 (frames just longer than one read are
// guessed at the next frame's start), 3d9588d (orphans kept at teardown),
// 24cfb0c and 8a9bc22 (a stream that lost bytes fails every later read).
// The F cases fail without their fix; every wait is bounded (loopback
// only); each test runs on io_uring and on epoll.
#include "failing_allocator.hpp"
#include "frames.hpp"
#include "loopback.hpp"

#include <ringframe/connection.hpp>
#include <ringframe/detail/byte_block.hpp>
#include <ringframe/socket.hpp>
#include <ringframe/task.hpp>

#include <doctest/doctest.h>

#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <optional>
#include <string>
#include <thread>

using namespace ringframe;
using namespace std::chrono_literals;
using testing::on;
using testing::on_each_backend;
using namespace testing::failing_allocator;

namespace {

std::string small_frame(unsigned i) {
  const std::string content(1000, static_cast<char>('a' + i % 26));
  return testing::raw_frame("{ \"content-length\": 1000, \"byteorder\": \"little\", \"content-type\": \"x/y\", "
                            "\"content-encoding\": \"z\" }",
                            content);
}

struct read_state {
  int messages = 0;
  char first_byte = 0;  // of the first message's content
  std::optional<std::error_code> error;
  bool done = false;
};

task<void> read_until_error(connection* c, read_state* st, int at_most) {
  for (int i = 0; i < at_most; ++i) {
    result<message_view> m = co_await c->read_message();
    if (!m) {
      st->error = m.error();
      break;
    }
    if (st->messages == 0 && !m->content.empty()) st->first_byte = static_cast<char>(m->content[0]);
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

void turns(executor& ex, int n) {
  for (int i = 0; i < n; ++i) {
    ex.run_once(false);
    if (i % 10 == 9) ::usleep(1000);
  }
}

}  // namespace

// ---- F1: a multishot stream whose copy into the decoder failed ----
//
// 8a9bc22 sets `lost_` when the bytes of a ring buffer cannot be copied
// into the decoder (outcome()), so that every later read fails with ENOMEM
// instead of going on past the gap. With options::multishot the recv that
// brought them stays armed: what the peer sends next is held (hold()), and
// the next read_message() feeds it to the decoder (drain_held(), in its
// await_ready and first in start(), before `lost_` is looked at) and hands
// out the frame that follows the lost one, as if nothing had been lost.

namespace {

struct lost_multishot_outcome {
  std::size_t pooled_at_start = 0;
  int allocations_failed = 0;
  bool escaped = false;
  read_state first, second;
};

void lost_multishot(backend_kind k, lost_multishot_outcome* out) {
  executor ex(on(k));
  auto pair = testing::socket_pair(ex);
  connection_options o;
  o.provided_buffers = true;
  o.multishot_recv = true;
  o.idle_timeout = std::chrono::nanoseconds(0);
  o.message_timeout = std::chrono::nanoseconds(0);
  connection conn(std::move(pair.first), o);
  if (!ex.receive_buffers()) return;
  // A fresh thread: its block pool is empty, so the decoder's first block
  // is a new allocation (header, 16 KiB, padding), which fails once.
  out->pooled_at_start = detail::byte_block::pooled_bytes();
  ex.spawn(read_until_error(&conn, &out->first, 1));
  turns(ex, 10);  // the reader waits on the multishot recv
  allocations_failed = 0;
  matching_allocations = 0;
  allocations_to_pass = 0;
  // On epoll the ring lends its buffer to the decoder (buffer_ring::lend)
  // instead of a copy: what fails there is the ring buffer's block.
  const std::size_t block = k == backend_kind::epoll ? ex.receive_buffers()->buffer_size() : detail::byte_block::smallest_class;
  fail_allocation_of_size = sizeof(detail::byte_block) + block + detail::byte_block::tail_padding;
  const std::string a = small_frame(0);
  if (::send(pair.second.fd(), a.data(), a.size(), 0) != static_cast<ssize_t>(a.size())) return;
  for (int i = 0; i < 2000 && !out->first.done && !out->escaped; ++i) {
    out->escaped = turn_allowing_bad_alloc(ex);
    if (i % 100 == 99) ::usleep(1000);
  }
  fail_allocation_of_size = 0;
  out->allocations_failed = allocations_failed;
  // The peer goes on: its next frame arrives while nobody reads.
  const std::string b = small_frame(1);
  if (::send(pair.second.fd(), b.data(), b.size(), 0) != static_cast<ssize_t>(b.size())) return;
  turns(ex, 50);
  ex.spawn(read_until_error(&conn, &out->second, 1));
  turns_until(ex, out->second.done, 500);
  if (!out->second.done) {  // end it before conn goes
    ex.stop();
    turns_until(ex, out->second.done);
  }
}

}  // namespace

TEST_CASE("review26 F1: a multishot stream that could not copy a buffer into the decoder never hands out "
          "the frame after the lost one") {
  on_each_backend([](backend_kind k) {
    lost_multishot_outcome out;
    std::thread t(lost_multishot, k, &out);
    t.join();
    REQUIRE(out.pooled_at_start == 0);
    CHECK(out.allocations_failed == 1);
    CHECK_FALSE(out.escaped);
    REQUIRE(out.first.done);
    if (k == backend_kind::epoll) {  // no ring buffer: read into the decoder, nothing lost
      CHECK_FALSE(out.first.error);
      CHECK(out.first.messages == 1);
      REQUIRE(out.second.done);
      CHECK_FALSE(out.second.error);
      CHECK(out.second.messages == 1);
      return;
    }
    REQUIRE(out.first.error);
    CHECK(*out.first.error == errno_code(ENOMEM));
    REQUIRE(out.second.done);
    CAPTURE(out.second.first_byte);
    CHECK(out.second.messages == 0);  // before the fix: 1, frame 1 ('b...'), after the lost frame 0
    REQUIRE(out.second.error);
    CHECK(*out.second.error == errno_code(ENOMEM));
  });
}

// ---- F2: held bytes that drain_held() could not feed to the decoder ----
//
// Bytes a multishot recv held while nobody read are fed to the decoder by
// the next read (drain_held_now()). When the decoder cannot grow for them
// (bad_alloc), the slices from the failed one on go back to the ring unread
// and the bad_alloc reaches the reader; but the stream is not marked as
// having lost bytes: the spill (bytes that came after those slices) is fed
// by the next read, and every read after that goes on past the gap, as
// F4 of review24 was before its fix. Every later read must fail with ENOMEM
// (after the messages wholly before the gap).

namespace {

struct held_loss_outcome {
  int allocations_failed = 0;
  bool escaped = false;
  bool threw = false;       // the first read after the burst got the bad_alloc
  bool had_spill = false;   // bytes past the held slices were spilled
  int messages = 0;         // handed out after the burst, all in sequence
  bool in_sequence = true;
  std::optional<std::error_code> error;
  bool done = false;
};

task<void> read_after_burst(connection* c, held_loss_outcome* out) {
  unsigned next = 1;
  for (int i = 0; i < 400; ++i) {
    std::optional<result<message_view>> m;
    try {
      m.emplace(co_await c->read_message());
    } catch (const std::bad_alloc&) {
      out->threw = true;
      continue;  // a reader that goes on after the exception
    }
    if (!*m) {
      out->error = m->error();
      break;
    }
    const message_view& v = **m;
    const char want = static_cast<char>('a' + next % 26);
    if (v.content.size() != 1000 || static_cast<char>(v.content[0]) != want ||
        static_cast<char>(v.content[999]) != want)
      out->in_sequence = false;
    ++next;
    ++out->messages;
  }
  out->done = true;
}

void held_loss(backend_kind k, held_loss_outcome* out) {
  executor ex(on(k));
  auto pair = testing::socket_pair(ex);
  const int big = 4 * 1024 * 1024;
  REQUIRE(::setsockopt(pair.second.fd(), SOL_SOCKET, SO_SNDBUF, &big, sizeof big) == 0);
  REQUIRE(::setsockopt(pair.first.fd(), SOL_SOCKET, SO_RCVBUF, &big, sizeof big) == 0);
  connection_options o;
  o.provided_buffers = true;
  o.multishot_recv = true;
  o.idle_timeout = std::chrono::nanoseconds(0);
  o.message_timeout = std::chrono::nanoseconds(0);
  connection conn(std::move(pair.first), o);
  if (!ex.receive_buffers()) return;
  const std::size_t bufsize = ex.receive_buffers()->buffer_size();
  read_state first;
  ex.spawn(read_until_error(&conn, &first, 1));
  turns(ex, 5);
  const std::string f0 = small_frame(0);
  REQUIRE(::send(pair.second.fd(), f0.data(), f0.size(), 0) == static_cast<ssize_t>(f0.size()));
  turns_until(ex, first.done);
  REQUIRE(first.done);
  REQUIRE(first.messages == 1);
  // Nobody reads: a burst of frames is held (4 slices) and spilled.
  std::string burst;
  for (unsigned i = 1; i <= 200; ++i) burst += small_frame(i);
  REQUIRE(::send(pair.second.fd(), burst.data(), burst.size(), MSG_DONTWAIT) == static_cast<ssize_t>(burst.size()));
  turns(ex, 50);
  // The decoder holds one ring buffer's worth after the first slice: the
  // second makes it grow to twice that, a block that fails once.
  allocations_failed = 0;
  matching_allocations = 0;
  allocations_to_pass = 0;
  fail_allocation_of_size = sizeof(detail::byte_block) + 2 * bufsize + detail::byte_block::tail_padding;
  ex.spawn(read_after_burst(&conn, out));
  for (int i = 0; i < 2000 && !out->done && !out->escaped; ++i) {
    out->escaped = turn_allowing_bad_alloc(ex);
    if (i % 100 == 99) ::usleep(1000);
  }
  fail_allocation_of_size = 0;
  out->allocations_failed = allocations_failed;
  if (!out->done) {
    ex.stop();
    turns_until(ex, out->done);
  }
}

}  // namespace

TEST_CASE("review26 F2: held bytes the decoder could not take fail every later read, never a frame past the gap") {
  on_each_backend([](backend_kind k) {
    held_loss_outcome out;
    std::thread t(held_loss, k, &out);
    t.join();
    CHECK_FALSE(out.escaped);
    REQUIRE(out.allocations_failed == 1);
    CHECK(out.threw);
    REQUIRE(out.done);
    CAPTURE(out.messages);
    CHECK(out.in_sequence);  // before the fix: a frame made of bytes on both sides of the gap, or past it
    REQUIRE(out.error);
    CHECK(*out.error == errno_code(ENOMEM));  // before the fix: a frame error (out of sync) or more frames
  });
}
