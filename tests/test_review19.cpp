// Review 19: the send path and connection teardown (send_queue batches,
// gather lists, zero-copy notifications, short sends, the write deadline,
// flush() waiters, connection_handle writers, the orphaned flight). Each F
// case fails before its fix; P cases pin interleavings that were checked and
// found sound. Every wait is bounded; both backends run each.
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
#include <string>
#include <vector>

using namespace ringframe;
using namespace std::chrono_literals;
using clk = std::chrono::steady_clock;
using testing::on;

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
