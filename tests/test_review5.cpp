// The fifth review: large frames (issue 12): the decoder's shared
// byte_blocks, the send queue's gather lists, and the per-thread receive
// budget. Each case fails without its fix; every wait is bounded.
#include "loopback.hpp"

#include <ringframe/connection.hpp>
#include <ringframe/frame.hpp>
#include <ringframe/receive_budget.hpp>
#include <ringframe/send_queue.hpp>
#include <ringframe/timer.hpp>

#include <doctest/doctest.h>

#include <sys/socket.h>

#include <chrono>
#include <cstring>
#include <optional>
#include <stop_token>
#include <string>
#include <vector>

using namespace ringframe;
using namespace std::chrono_literals;
using testing::on;
using testing::on_each_backend;

namespace {

std::string binary_frame(std::size_t size, char fill) {
  std::string c(size, fill);
  for (std::size_t i = 0; i < c.size(); i += 997) c[i] = static_cast<char>(i / 997);
  std::string f;
  REQUIRE(encode_frame(message::binary(c, "binary/x"), f));
  return f;
}

// Writes `bytes` into a socket the test owns (never more than its buffer).
void put(ringframe::socket& s, std::string_view bytes) {
  REQUIRE(::send(s.fd(), bytes.data(), bytes.size(), MSG_DONTWAIT) == static_cast<ssize_t>(bytes.size()));
}

struct read_outcome {
  bool done = false;
  std::error_code error;
  std::size_t size = 0;
};

task<void> read_one(connection* c, read_outcome* out) {
  result<message_view> m = co_await c->read_message();
  out->done = true;
  if (m) out->size = m->wire.size();
  else out->error = m.error();
}

// Turns the loop until `pred` holds (bounded).
template <class P>
void turn_until(executor& ex, P pred) {
  for (int i = 0; i < 2000 && !pred(); ++i) ex.run_once(false);
}

}  // namespace

// ---------------------------------------------------------------------------
// F1: executor::stop() cancels every operation in flight "so coroutines
// unwind by themselves". A frame waiting for room in the receive budget has
// nothing in the kernel, so the stop's cancel-all does not reach it, and no
// stop listener tells it: its reader is never resumed (run_until_idle
// returns with it still suspended; with a message timeout it would end only
// at that deadline, as ETIMEDOUT).
TEST_CASE("review5 F1: executor::stop() ends a read waiting for room in the receive budget") {
  on_each_backend([](backend_kind k) {
    receive_budget& b = receive_budget::this_thread();
    REQUIRE(b.used() == 0);
    {
      executor ex(on(k));
      auto [a1, p1] = testing::socket_pair(ex);
      auto [a2, p2] = testing::socket_pair(ex);
      connection_options co;
      co.thread_receive_budget = 600 * 1024;  // one of the frames below at a time
      co.limits.max_content_length = 1 << 20;
      co.message_timeout = 2s;  // without the fix, what ends the wait (as ETIMEDOUT)
      connection c1(std::move(a1), co), c2(std::move(a2), co);
      // A way out for the failing case (the reader must not outlive c2).
      std::stop_source unwind;
      const std::stop_token tok = unwind.get_token();
      c2.set_read_stop(&tok);
      const std::string f = binary_frame(512 * 1024, 'w');
      put(p1, std::string_view(f).substr(0, 1000));
      put(p2, std::string_view(f).substr(0, 1000));
      read_outcome r1, r2;
      ex.spawn(read_one(&c1, &r1));
      turn_until(ex, [&] { return b.used() > 0; });
      REQUIRE(b.used() > 0);  // c1 reserved its frame
      ex.spawn(read_one(&c2, &r2));
      turn_until(ex, [&] { return b.waiting() == 1; });
      REQUIRE(b.waiting() == 1);  // c2 waits for room
      const auto t0 = std::chrono::steady_clock::now();
      ex.stop();
      ex.run_until_idle();
      CHECK(std::chrono::steady_clock::now() - t0 < 1s);
      CHECK(r1.done);
      CHECK(r1.error == std::errc::operation_canceled);
      CHECK(r2.done);  // fails without the fix: nobody tells the waiting frame
      CHECK(r2.error == std::errc::operation_canceled);
      if (!r2.done) {
        unwind.request_stop();
        ex.run_until_idle();
      }
      CHECK(b.waiting() == 0);
    }
    CHECK(b.used() == 0);
    CHECK(b.waiting() == 0);
  });
}


// ---------------------------------------------------------------------------
// F2: with multishot_recv, a frame in progress is read from the provided
// buffers while reads are small (multishot_suits), and start() reserves
// only for direct reads (`!br`): a peer that sends a large frame in small
// pieces never reserves anything, and its decoder is grown for the whole
// frame (feed prepares room for all of it) outside the budget. Many such
// peers are exactly what the budget is for.
TEST_CASE("review5 F2: with multishot recvs, a large frame sent in small pieces still reserves from the budget") {
  on_each_backend([](backend_kind k) {
    receive_budget& b = receive_budget::this_thread();
    REQUIRE(b.used() == 0);
    {
      executor ex(on(k));
      auto [a1, p1] = testing::socket_pair(ex);
      auto [a2, p2] = testing::socket_pair(ex);
      connection_options co;
      co.multishot_recv = true;
      co.thread_receive_budget = 600 * 1024;  // one of the frames below at a time
      co.limits.max_content_length = 1 << 20;
      connection c1(std::move(a1), co), c2(std::move(a2), co);
      const std::string f = binary_frame(512 * 1024, 'm');
      read_outcome r1, r2;
      ex.spawn(read_one(&c1, &r1));
      ex.spawn(read_one(&c2, &r2));
      // Small pieces, a loop turn apart: every read is small.
      std::size_t at = 0;
      for (int i = 0; i < 40; ++i, at += 1000) {
        put(p1, std::string_view(f).substr(at, 1000));
        put(p2, std::string_view(f).substr(at, 1000));
        for (int t = 0; t < 5; ++t) ex.run_once(false);
      }
      CHECK(!r1.done);
      CHECK(!r2.done);
      // Both frames are in progress: one has reserved its length, the other
      // waits for room (without the fix: nothing reserved, nobody waits).
      CHECK(b.used() >= f.size());
      CHECK(b.waiting() == 1);
      ex.stop();
      ex.run_until_idle();
      CHECK(r1.done);
      CHECK(r2.done);
      CHECK(b.waiting() == 0);
    }
    CHECK(b.used() == 0);
    CHECK(b.waiting() == 0);
  });
}

// ---------------------------------------------------------------------------
// F3: the rest of F2. A multishot recv that is being ended (its cancel is in
// the kernel) still delivers what it had received to the waiting reader,
// and feed() sizes the decoder's buffer for the whole declared frame (as a
// direct read does after reserving). So a frame that then waits for room
// already holds a buffer of its full length, outside the budget: the
// declared length, not the bytes received, decides the memory, which is
// what the budget is there to prevent.
TEST_CASE("review5 F3: bytes fed before a frame has reserved do not size the decoder for the whole frame") {
  on_each_backend([](backend_kind k) {
    receive_budget& b = receive_budget::this_thread();
    REQUIRE(b.used() == 0);
    {
      executor ex(on(k));
      auto [a, p] = testing::socket_pair(ex);
      connection_options co;
      co.multishot_recv = true;
      co.thread_receive_budget = 600 * 1024;
      co.limits.max_content_length = 1 << 20;
      connection c(std::move(a), co);
      const std::string f = binary_frame(512 * 1024, 'r');
      // Somebody else holds the whole budget: this frame will wait.
      REQUIRE(b.try_reserve(600 * 1024, co.thread_receive_budget));
      // Blocks of every class from 256 KiB to 2 MiB wait in the pool: a
      // decoder that grows to the frame's length takes one of them.
      {
        std::vector<detail::block_ref> warm;
        for (std::size_t sz = 256 * 1024; sz <= (2u << 20); sz = detail::byte_block::round_up(sz + 1))
          warm.emplace_back(detail::byte_block::make(sz));
      }
      const std::size_t pooled = detail::byte_block::pooled_bytes();
      read_outcome r;
      ex.spawn(read_one(&c, &r));
      for (int t = 0; t < 5; ++t) ex.run_once(false);  // the multishot recv is armed
      put(p, std::string_view(f).substr(0, 48 * 1024));  // three provided buffers' worth at once
      turn_until(ex, [&] { return b.waiting() == 1; });
      REQUIRE(b.waiting() == 1);
      // What the decoder took from the pool: about what came in, not 512 KiB.
      const std::size_t taken = pooled > detail::byte_block::pooled_bytes() ? pooled - detail::byte_block::pooled_bytes() : 0;
      CHECK(taken < 256 * 1024);
      b.release(600 * 1024);  // admitted now
      ex.stop();
      ex.run_until_idle();
      CHECK(r.done);
      CHECK(b.waiting() == 0);
    }
    CHECK(b.used() == 0);
    CHECK(b.waiting() == 0);
  });
}
