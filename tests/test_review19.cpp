// Review 19: the send path and connection teardown (send_queue batches,
// gather lists, zero-copy notifications, short sends, the write deadline,
// flush() waiters, connection_handle writers, the orphaned flight). Each F
// case fails before its fix; P cases pin interleavings that were checked and
// found sound. Every wait is bounded; both backends run each.
#include "failing_allocator.hpp"
#include "loopback.hpp"
#include "send_helpers.hpp"

#include <ringframe/connection.hpp>
#include <ringframe/executor.hpp>
#include <ringframe/frame.hpp>
#include <ringframe/send_queue.hpp>
#include <ringframe/socket.hpp>
#include <ringframe/timer.hpp>

#include <doctest/doctest.h>

#include <sys/socket.h>

#include <chrono>
#include <new>
#include <string>
#include <thread>
#include <vector>

using namespace ringframe;
using namespace std::chrono_literals;
using clk = std::chrono::steady_clock;
using testing::on;
namespace fa = testing::failing_allocator;

namespace {

// ---- F1: a reader in read_slow learns of a send that fails beside it ----

struct slow_scene {
  std::error_code read_err, flush_err;
  clk::duration took{};
  bool read_done = false, flush_done = false;
};

task<void> slow_reader(connection* c, slow_scene* sc) {
  auto t0 = clk::now();
  result<message_view> m = co_await c->read_message();
  sc->took = clk::now() - t0;
  sc->read_err = m ? std::error_code{} : m.error();
  sc->read_done = true;
}

// Another coroutine (a broadcaster) holding a handle: 4 MiB to a peer that
// never reads fails at the write deadline.
task<void> handle_writer(connection_handle h, slow_scene* sc) {
  connection* c = h.get();
  REQUIRE(c);
  result<void> w = co_await c->write(message::binary(std::string(4 << 20, 'b'), "t"));
  REQUIRE(w);
  result<void> f = co_await c->flush();
  sc->flush_err = f ? std::error_code{} : f.error();
  sc->flush_done = true;
}

void reader_in_slow_path_learns_of_send_failure(backend_kind k, bool mid_frame) {
  executor ex(on(k));
  auto [srv, peer] = testing::socket_pair(ex);  // the peer never reads
  connection_options o;
  o.provided_buffers = mid_frame;  // without them, every read is read_slow's
  o.write_timeout = 20ms;
  o.idle_timeout = 3s;
  o.message_timeout = 3s;
  o.max_unsent_bytes = 16 << 20;
  connection c(std::move(srv), o);
  if (mid_frame) {
    // Half a frame: the reader waits in read_slow for the rest.
    const std::string half("\x00\x05{}", 4);
    REQUIRE(::send(peer.fd(), half.data(), half.size(), MSG_DONTWAIT) == static_cast<ssize_t>(half.size()));
  }
  slow_scene sc;
  ex.spawn(slow_reader(&c, &sc));
  for (int i = 0; i < 20; ++i) ex.run_once(false);  // the reader waits on its recv
  REQUIRE(!sc.read_done);
  ex.spawn(handle_writer(c.handle(), &sc));
  ex.run_until_idle();
  REQUIRE(sc.flush_done);
  REQUIRE(sc.read_done);
  CHECK(sc.flush_err == std::errc::timed_out);
  CHECK(sc.read_err == std::errc::timed_out);
  CHECK(c.send_error() == std::errc::timed_out);
  // The queue failed at 20 ms: the reader must learn of it then, as it does
  // on the fast path (test_review.cpp "R2a"), not at its idle or message
  // timeout (3 s).
  CHECK(sc.took < 1s);
  MESSAGE("read_message returned after " << std::chrono::duration_cast<std::chrono::milliseconds>(sc.took).count()
                                         << " ms");
}

}  // namespace

TEST_CASE("review19 F1a: a reader waiting in read_slow (no provided buffers) learns at once that another coroutine's send failed") {
  testing::on_each_backend([](backend_kind k) { reader_in_slow_path_learns_of_send_failure(k, false); });
}

TEST_CASE("review19 F1b: a reader waiting mid-frame learns at once that another coroutine's send failed") {
  testing::on_each_backend([](backend_kind k) { reader_in_slow_path_learns_of_send_failure(k, true); });
}

namespace {

// ---- F2: a write that runs out of memory while encoding leaves no partial frame queued ----

// Two frames' worth of header allocations: one with extra fields (the
// encoder's reserve leaves them out, so appending them may reallocate), one
// whose fields miss the thread's cached header (the cache's copy of it
// allocates after the header is half written).
message with_extras(int i) {
  message m = message::binary(std::string(3000, static_cast<char>('a' + i % 26)), "application/x-extra");
  for (int k = 0; k < 8; ++k) m.extra.emplace_back("key-" + std::to_string(k) + std::string(40, 'k'), std::string(60, 'v'));
  return m;
}
message uncached(int i) {
  return message::binary(std::string(500, static_cast<char>('A' + i % 26)),
                         "t/" + std::to_string(i) + std::string(200, 'x'));
}

void encode_out_of_memory_keeps_stream(backend_kind k) {
  executor ex(on(k));
  auto [srv, peer] = testing::socket_pair(ex);
  connection_options o;
  o.max_unsent_bytes = 64 << 20;
  connection c(std::move(srv), o);
  std::vector<std::string> expected;  // the contents written successfully, in order
  {
    auto w = c.write(message::binary("first", "t"));  // queued bytes before the failures
    REQUIRE(w.await_ready());
    expected.push_back("first");
  }
  int threw[2] = {0, 0};
  for (int which = 0; which < 2; ++which) {
    for (int i = 0; i < 64; ++i) {
      message m = which == 0 ? with_extras(i) : uncached(i);
      const std::size_t before = c.unsent_bytes();
      bool failed = false;
      fa::start_tracing(i);
      try {
        auto w = c.write(m);
        (void)w;
      } catch (const std::bad_alloc&) {
        failed = true;
      }
      fa::stop_tracing();
      if (!failed) {
        CHECK(fa::allocations_failed == 0);
        expected.push_back(m.content);
        if (fa::traced_count <= i) break;  // every allocation of this write has failed once
        continue;
      }
      ++threw[which];
      INFO("allocation " << i << " of a write " << std::string(which == 0 ? "with extra fields" : "missing the header cache"));
      // Nothing of the frame that was not written may stay queued: the next
      // frame would follow half a header, and the peer's stream is lost.
      CHECK(c.unsent_bytes() == before);
    }
  }
  MESSAGE("writes that threw: " << threw[0] << " with extra fields, " << threw[1] << " missing the cache");
  CHECK(threw[0] >= 1);
  CHECK(threw[1] >= 1);
  const std::size_t total = c.unsent_bytes();
  result<void> f = ex.run(c.flush());
  REQUIRE(f);
  std::string got = ex.run(testing::read_exactly(&peer, total, 3s));
  frame_decoder d;
  d.feed(got);
  std::vector<std::string> contents;
  message_view v;
  for (;;) {
    frame_decoder::status st = d.next(v);
    if (st != frame_decoder::status::message) {
      CHECK(st == frame_decoder::status::need_more);
      break;
    }
    contents.emplace_back(v.content_text());
  }
  CHECK(contents.size() == expected.size());
  CHECK(contents == expected);
}

}  // namespace

TEST_CASE("review19 F2: a write that runs out of memory while encoding leaves no partial frame queued") {
  testing::on_each_backend([](backend_kind k) {
    // On a thread of its own: its header cache (thread_local) starts empty,
    // so a cache miss allocates whatever ran before.
    bool finished = false;
    std::thread t([k, &finished] {
      try {
        encode_out_of_memory_keeps_stream(k);
        finished = true;
      } catch (...) {  // a REQUIRE that failed (reported already)
      }
    });
    t.join();
    CHECK(finished);
  });
}
