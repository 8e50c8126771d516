// Large frames (issue 12): the decoder's shared buffers and bounded reads,
// the send queue's gather lists, and frame-echo end to end for every size
// split at every boundary class, on every receive path, pipelined or not.
#include "loopback.hpp"
#include "send_helpers.hpp"

#include <ringframe/app.hpp>
#include <ringframe/connection.hpp>
#include <ringframe/handler.hpp>
#include <ringframe/send_queue.hpp>
#include <ringframe/server.hpp>
#include <ringframe/timer.hpp>

#include "frames.hpp"

#include <doctest/doctest.h>

#include <netinet/tcp.h>

#include <chrono>
#include <cstring>
#include <string>
#include <vector>

using namespace ringframe;
using namespace std::chrono_literals;
using testing::wait_empty;
using testing::read_exactly;
using testing::text_of;

namespace {

std::string binary_frame(std::size_t size, char fill) {
  std::string c(size, fill);
  for (std::size_t i = 0; i < c.size(); i += 997) c[i] = static_cast<char>(i / 997);  // not one repeated byte
  std::string f;
  REQUIRE(encode_frame(message::binary(c, "binary/x"), f));
  return f;
}


}  // namespace

// ---- frame_decoder: sharing and bounded reads ----

TEST_CASE("a shared decoder buffer is never written over, moved or reused: the decoder goes on in another one") {
  // f1 is handed out; f2's first bytes follow it. Reading the rest of f2
  // makes the decoder compact (move f2's start over f1) unless f1's buffer
  // is shared: then f1's bytes must stay as they were.
  const std::string f1 = binary_frame(20000, 'a'), f2 = binary_frame(10000, 'b');
  for (bool share : {false, true}) {
    CAPTURE(share);
    frame_decoder d;
    d.feed(f1 + f2.substr(0, 100));
    message_view m;
    REQUIRE(d.next(m) == frame_decoder::status::message);
    REQUIRE(m.wire.size() == f1.size());
    const std::byte* at = m.wire.data();
    CHECK(d.holds(m.wire));
    detail::block_ref held;
    if (share) held = d.share();
    d.feed(std::string_view(f2).substr(100));
    REQUIRE(d.next(m) == frame_decoder::status::message);
    CHECK(std::string_view(reinterpret_cast<const char*>(m.wire.data()), m.wire.size()) == f2);
    const bool f1_intact = std::memcmp(at, f1.data(), f1.size()) == 0;
    if (share) {
      CHECK(f1_intact);
      CHECK(held->shared() == false);  // the decoder let go of it: only `held` is left
      CHECK(!d.holds(std::span(at, f1.size())));
    } else {
      CHECK(!f1_intact);  // compacted in place: what the shared case must not do
      CHECK(d.holds(m.wire));
    }
  }
}

TEST_CASE("a shared buffer with room left is written only past what was received") {
  const std::string f1 = binary_frame(100, 'a');
  frame_decoder d;
  d.feed(f1);
  message_view m;
  REQUIRE(d.next(m) == frame_decoder::status::message);
  detail::block_ref held = d.share();
  const std::byte* at = m.wire.data();
  // Nothing buffered after f1: unshared, the decoder would start over at 0.
  std::span<std::byte> room = d.prepare(64);
  CHECK(room.data() >= at + f1.size());
  std::memset(room.data(), 'z', room.size());
  d.commit(room.size());
  CHECK(std::memcmp(at, f1.data(), f1.size()) == 0);
}

TEST_CASE("a read into a frame whose length is known reaches at most one read size past its end") {
  const std::string f = binary_frame(100000, 'q');
  constexpr std::size_t read_size = 16 * 1024;
  frame_decoder d;
  d.feed(std::string_view(f).substr(0, 300));  // prefix, header, a little content
  message_view m;
  REQUIRE(d.next(m) == frame_decoder::status::need_more);
  std::span<std::byte> room = d.prepare(read_size);
  // All of the frame's rest fits, and no more than one read of the next
  // frame (which would be moved when the buffer fills).
  CHECK(room.size() >= f.size() - 300);
  CHECK(room.size() <= f.size() - 300 + read_size);
  std::memcpy(room.data(), f.data() + 300, 50000);
  d.commit(50000);
  REQUIRE(d.next(m) == frame_decoder::status::need_more);
  room = d.prepare(read_size);  // the inline fast path says the same
  CHECK(room.size() >= f.size() - 50300);
  CHECK(room.size() <= f.size() - 50300 + read_size);
  std::memcpy(room.data(), f.data() + 50300, f.size() - 50300);
  d.commit(f.size() - 50300);
  REQUIRE(d.next(m) == frame_decoder::status::message);
  CHECK(m.wire.size() == f.size());
  // Nothing known of the next frame: one read size.
  CHECK(d.prepare(read_size).size() == read_size + 2);
}

// ---- send_queue: pieces by reference ----

namespace {

detail::block_ref filled_block(std::size_t n, char fill) {
  detail::block_ref b(detail::byte_block::make(n));
  for (std::size_t i = 0; i < n; ++i) b->data()[i] = static_cast<std::byte>(fill + static_cast<char>(i % 7));
  return b;
}

// Appends, starts, and while that batch is out appends more (a second batch).
task<void> write_mixed(send_queue* q, detail::block_ref b1, detail::block_ref b2) {
  q->out() += "head";
  REQUIRE(q->append_shared(b1, std::span<const std::byte>(b1->data() + 10, 3 << 20)));
  q->out() += "middle";
  REQUIRE(q->append_shared(b2, std::span<const std::byte>(b2->data(), 1 << 20)));
  q->out() += "tail";
  q->start();
  CHECK(q->busy());
  REQUIRE(q->append_shared(b1, std::span<const std::byte>(b1->data(), 1000)));  // into the next batch
  q->out() += "end";
  q->start();
  while (q->busy()) co_await wait_empty{q, {}};
}

}  // namespace

TEST_CASE("pieces by reference go out in order between the copied bytes, through short sends, and are let go") {
  testing::on_each_backend([](backend_kind k) {
    executor ex(testing::on(k));
    auto [a, b] = testing::socket_pair(ex);
    std::uint64_t out = 0;
    send_queue q(a, {}, &out);
    detail::block_ref b1 = filled_block(4 << 20, 'a'), b2 = filled_block(1 << 20, 'k');
    const std::string want = "head" + text_of(b1, 10, 3 << 20) + "middle" + text_of(b2, 0, 1 << 20) + "tail" +
                             text_of(b1, 0, 1000) + "end";
    CHECK(q.unsent() == 0);
    ex.spawn(write_mixed(&q, b1, b2));
    std::string got = ex.run(read_exactly(&b, want.size(), 5s));
    ex.run_until_idle();
    CHECK(got.size() == want.size());
    CHECK(got == want);
    CHECK(out == want.size());
    CHECK(q.unsent() == 0);
    CHECK(!q.error());
    // Sent: the queue holds no reference any more.
    CHECK(!b1->shared());
    CHECK(!b2->shared());
  });
}

namespace {
// Runs the loop until nobody but the test holds `b` (2 s at most).
task<bool> until_let_go(executor* ex, detail::byte_block* b) {
  for (int i = 0; i < 2000 && b->shared(); ++i) {
    result<void> r = co_await sleep_for(*ex, 1ms);
    REQUIRE(r);
  }
  co_return !b->shared();
}
task<void> start_and_wait(send_queue* q) {
  q->start();
  while (q->busy()) co_await wait_empty{q, {}};
}
}  // namespace

namespace {
// 200 echoes of 1,000 bytes lying back to back in one block (pipelined
// frames), then two more back to back with copied bytes written between
// them.
task<void> write_back_to_back(send_queue* q, detail::block_ref b) {
  for (std::size_t i = 0; i < 200; ++i)
    REQUIRE(q->append_shared(b, std::span<const std::byte>(b->data() + i * 1000, 1000)));
  q->out() += "copied";
  REQUIRE(q->append_shared(b, std::span<const std::byte>(b->data() + 200000, 500)));
  q->out() += "between";
  REQUIRE(q->append_shared(b, std::span<const std::byte>(b->data() + 200500, 500)));
  q->start();
  while (q->busy()) co_await wait_empty{q, {}};
}
}  // namespace

TEST_CASE("echoes back to back in one block are one piece, however many; bytes copied between them keep their place") {
  testing::on_each_backend([](backend_kind k) {
    executor ex(testing::on(k));
    auto [a, b] = testing::socket_pair(ex);
    send_queue q(a, {});
    detail::block_ref blk = filled_block(256 << 10, 'c');
    // More than the 64 pieces a batch may hold: only merged do they fit.
    const std::string want =
        text_of(blk, 0, 200000) + "copied" + text_of(blk, 200000, 500) + "between" + text_of(blk, 200500, 500);
    ex.spawn(write_back_to_back(&q, blk));
    std::string got = ex.run(read_exactly(&b, want.size(), 5s));
    ex.run_until_idle();
    CHECK(got == want);
    CHECK(!q.error());
    CHECK(!blk->shared());
  });
}

TEST_CASE("a queue destroyed with pieces in flight leaves them to the kernel's last completion") {
  testing::on_each_backend([](backend_kind k) {
    executor ex(testing::on(k));
    auto [a, b] = testing::socket_pair(ex);
    detail::block_ref blk = filled_block(4 << 20, 'p');
    {
      send_queue q(a, {});
      REQUIRE(q.append_shared(blk, std::span<const std::byte>(blk->data(), 4 << 20)));
      q.start();
      REQUIRE(q.busy());  // the peer reads nothing: far more than a socket buffer waits
      CHECK(blk->shared());
    }
    // The send in flight was cancelled and its flight orphaned: still held
    // until the kernel's completion is in.
    CHECK(blk->shared());
    CHECK(ex.run(until_let_go(&ex, blk.get())));
  });
}

TEST_CASE("a failed queue lets go of its pieces") {
  executor ex;
  auto [a, b] = testing::socket_pair(ex);
  detail::block_ref blk = filled_block(64 << 10, 'f');
  send_queue q(a, {});
  { ringframe::socket gone = std::move(b); }  // the peer is gone: EPIPE
  REQUIRE(q.append_shared(blk, std::span<const std::byte>(blk->data(), 64 << 10)));
  ex.run(start_and_wait(&q));
  CHECK(q.error() == std::errc::broken_pipe);
  CHECK(!blk->shared());
  CHECK(q.unsent() == 0);
}

// ---- frame-echo end to end ----

namespace {

struct echo_server {
  executor ex;
  server srv;
  address to;
  explicit echo_server(connection_options co, executor_options eo = {}) : ex(eo), srv(ex, quiet()) {
    auto at = address::from_ip("127.0.0.1", 0);
    REQUIRE(at);
    REQUIRE(srv.listen(*at));
    to = srv.local_addresses().front();
    ex.spawn(serve(&srv, framed(&frame_echo_handler, co)));
  }
  static server_options quiet() {
    server_options so;
    so.log_connections = false;
    return so;
  }
  static task<void> serve(server* s, server::stream_handler h) { co_await s->serve(std::move(h)); }
  ~echo_server() {
    srv.stop();
    ex.run_until_idle();
  }
};

// Where a frame can be cut: inside the prefix, after it, inside the
// header, after it, inside the content.
std::vector<std::size_t> cut_points(const std::string& frame) {
  const std::size_t hlen = (static_cast<unsigned char>(frame[0]) << 8) | static_cast<unsigned char>(frame[1]);
  const std::size_t clen = frame.size() - 2 - hlen;
  std::vector<std::size_t> cuts{1, 2, 2 + hlen / 2, 2 + hlen};
  if (clen > 1) cuts.push_back(2 + hlen + clen / 2);
  return cuts;
}

task<void> send_in_pieces(ringframe::socket* s, std::string bytes, std::vector<std::size_t> cuts) {
  std::size_t from = 0;
  cuts.push_back(bytes.size());
  for (std::size_t to : cuts) {
    if (to <= from) continue;
    result<std::size_t> n = co_await s->send_all(std::string_view(bytes).substr(from, to - from), {.timeout = 10s});
    REQUIRE(n);
    from = to;
    result<void> slept = co_await sleep_for(s->get_executor(), 1ms);  // a separate read on the other side
    CHECK(slept);
  }
}

// Sends the frames (all at once when pipelined, else each after the reply
// to the one before), each cut at every boundary class, and checks that
// what comes back is the same bytes.
task<void> echo_cut(executor* ex, address to, std::vector<std::string> frames, bool pipelined) {
  result<ringframe::socket> s = co_await ringframe::connect(*ex, to, {.timeout = 5s});
  REQUIRE(s);
  int one = 1;
  ::setsockopt(s->fd(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  if (pipelined) {
    std::string all;
    std::vector<std::size_t> cuts;
    for (const std::string& f : frames) {
      for (std::size_t c : cut_points(f)) cuts.push_back(all.size() + c);
      all += f;
      cuts.push_back(all.size() + 1);  // the next frame's prefix split
    }
    ex->spawn(send_in_pieces(&*s, all, cuts));
    std::string got = co_await read_exactly(&*s, all.size(), 5s);
    CHECK(got.size() == all.size());
    CHECK(got == all);
  } else {
    for (const std::string& f : frames) {
      co_await send_in_pieces(&*s, f, cut_points(f));
      std::string got = co_await read_exactly(&*s, f.size(), 5s);
      CHECK(got.size() == f.size());
      CHECK(got == f);
    }
  }
}

std::vector<std::string> frames_of_every_size() {
  std::vector<std::string> frames;
  char fill = 'a';
  for (std::size_t size : {0, 1, 100, 16383, 16384, 16385, 65536, 100000, 1 << 20})
    frames.push_back(binary_frame(size, fill++));
  return frames;
}

}  // namespace

TEST_CASE("frame-echo: every size, cut at every boundary class, on every receive path, comes back byte for byte") {
  const std::vector<std::string> frames = frames_of_every_size();
  struct path {
    const char* name;
    bool provided, multishot;
  };
  for (path p : {path{"provided buffers", true, false}, path{"multishot", true, true}, path{"direct", false, false}}) {
    for (std::size_t gather : {std::size_t{0}, std::size_t{1}, connection_options{}.gather_threshold}) {
      for (bool pipelined : {false, true}) {
        CAPTURE(p.name);
        CAPTURE(gather);
        CAPTURE(pipelined);
        connection_options co;
        co.provided_buffers = p.provided;
        co.multishot_recv = p.multishot;
        co.gather_threshold = gather;
        co.limits.max_content_length = 2 << 20;
        echo_server es(co);
        es.ex.run(echo_cut(&es.ex, es.to, frames, pipelined));
      }
    }
  }
}

namespace {
// Sends `n` frames of `size` and reads every reply (checking them); counts
// the clients done.
task<void> fast_client(executor* ex, address to, std::size_t size, int n, int* done) {
  result<ringframe::socket> s = co_await ringframe::connect(*ex, to, {.timeout = 5s});
  REQUIRE(s);
  const std::string f = binary_frame(size, 'x');
  for (int i = 0; i < n; ++i) {
    result<std::size_t> w = co_await s->send_all(f, {.timeout = 20s});
    REQUIRE(w);
    std::string got = co_await read_exactly(&*s, f.size(), 5s);
    REQUIRE(got == f);
  }
  ++*done;
}

// Sends frames and never reads a reply.
task<void> stalled_client(executor* ex, address to, ringframe::socket* keep, std::size_t* sent) {
  result<ringframe::socket> s = co_await ringframe::connect(*ex, to, {.timeout = 5s});
  REQUIRE(s);
  *keep = std::move(*s);
  const std::string f = binary_frame(1 << 20, 's');
  for (;;) {
    result<std::size_t> w = co_await keep->send_all(f, {.timeout = 300ms});
    if (!w) break;  // the server stopped reading it: backpressure
    *sent += *w;
  }
}

task<void> pause(executor* ex, std::chrono::milliseconds d) {
  result<void> r = co_await sleep_for(*ex, d);
  CHECK(r);
}

task<void> wait_for(executor* ex, int* done, int want) {
  for (int i = 0; i < 2000 && *done < want; ++i) {
    result<void> r = co_await sleep_for(*ex, 10ms);
    REQUIRE(r);
  }
}
}  // namespace

TEST_CASE("a peer that reads no replies beside fast ones: the fast ones finish, it is held back") {
  connection_options co;
  co.limits.max_content_length = 2 << 20;
  echo_server es(co);
  ringframe::socket stalled;
  std::size_t stalled_sent = 0;
  es.ex.spawn(stalled_client(&es.ex, es.to, &stalled, &stalled_sent));
  int done = 0;
  for (int i = 0; i < 4; ++i) es.ex.spawn(fast_client(&es.ex, es.to, 64 * 1024, 50, &done));
  es.ex.run(wait_for(&es.ex, &done, 4));
  CHECK(done == 4);
  // The fast ones' server ends see their EOF a turn or more after the
  // clients finish (bounded wait); the stalled one is still connected, and
  // stopped being read: it got far less in than it would with a reader (its
  // replies back up to max_unsent_bytes, then the socket buffers fill).
  for (int i = 0; i < 200 && es.srv.live_connections() > 1; ++i) es.ex.run(pause(&es.ex, 10ms));
  CHECK(es.srv.live_connections() == 1);
  CHECK(stalled_sent < 64u << 20);
}

namespace {
// Sends every frame at once, waits before reading, then reads slowly: the
// server's sends of earlier replies are still in flight (short sends into a
// full socket buffer) while it receives the frames after them.
task<void> echo_read_late(executor* ex, address to, std::vector<std::string> frames) {
  result<ringframe::socket> s = co_await ringframe::connect(*ex, to, {.timeout = 5s});
  REQUIRE(s);
  std::string all;
  for (const std::string& f : frames) all += f;
  ex->spawn(send_in_pieces(&*s, all, {}));
  result<void> slept = co_await sleep_for(*ex, 100ms);
  CHECK(slept);
  std::string got;
  std::vector<std::byte> buf(64 * 1024);
  while (got.size() < all.size()) {
    result<std::size_t> r = co_await s->recv(buf, {.timeout = 10s});
    REQUIRE(r);
    REQUIRE(*r > 0);
    got.append(reinterpret_cast<const char*>(buf.data()), *r);
    if (got.size() % (1 << 20) < buf.size()) {
      result<void> pause = co_await sleep_for(*ex, 2ms);
      CHECK(pause);
    }
  }
  CHECK(got.size() == all.size());
  CHECK(got == all);
}
}  // namespace

TEST_CASE("frame-echo: a late, slow reader of pipelined large frames gets every byte back (sends overlap reads)") {
  std::vector<std::string> frames;
  for (int i = 0; i < 12; ++i) frames.push_back(binary_frame(i % 3 == 0 ? 100000 : 1 << 20, static_cast<char>('A' + i)));
  for (bool provided : {true, false}) {
    CAPTURE(provided);
    connection_options co;
    co.provided_buffers = provided;
    co.limits.max_content_length = 2 << 20;
    echo_server es(co);
    es.ex.run(echo_read_late(&es.ex, es.to, frames));
  }
}

// ---- the per-thread receive budget ----

namespace {
// Sends one frame in pieces of `piece` bytes, `gap` apart, then reads the
// echo and checks it.
task<void> slow_sender(executor* ex, address to, std::string frame, std::size_t piece, int* done) {
  result<ringframe::socket> s = co_await ringframe::connect(*ex, to, {.timeout = 10s});
  REQUIRE(s);
  for (std::size_t at = 0; at < frame.size(); at += piece) {
    result<std::size_t> w = co_await s->send_all(std::string_view(frame).substr(at, piece), {.timeout = 20s});
    REQUIRE(w);
    result<void> slept = co_await sleep_for(*ex, 2ms);
    CHECK(slept);
  }
  std::string got = co_await read_exactly(&*s, frame.size(), 5s);
  CHECK(got == frame);
  ++*done;
}

// Small requests, one at a time, while the large frames wait.
task<void> small_requests(executor* ex, address to, int n, int* done_large, int* answered_while_full) {
  result<ringframe::socket> s = co_await ringframe::connect(*ex, to, {.timeout = 10s});
  REQUIRE(s);
  const std::string f = binary_frame(64, 'm');
  for (int i = 0; i < n; ++i) {
    result<std::size_t> w = co_await s->send_all(f, {.timeout = 10s});
    REQUIRE(w);
    std::string got = co_await read_exactly(&*s, f.size(), 5s);
    REQUIRE(got == f);
    if (receive_budget::this_thread().waiting() > 0 && *done_large < 300) ++*answered_while_full;
    result<void> slept = co_await sleep_for(*ex, 1ms);
    CHECK(slept);
  }
  ++*done_large;
}
}  // namespace

TEST_CASE("receive budget: 300 peers each sending a large frame slowly are held to the budget, all answered") {
  testing::require_fd_limit(2048);
  receive_budget& b = receive_budget::this_thread();
  const std::uint64_t waits_before = b.waits();
  b.reset_peak();
  connection_options co;
  co.thread_receive_budget = 1 << 20;  // about three of the frames below at once
  co.limits.max_content_length = 1 << 20;
  {
    echo_server es(co);
    int done = 0, answered_while_full = 0;
    char fill = 'a';
    for (int i = 0; i < 300; ++i) {
      es.ex.spawn(slow_sender(&es.ex, es.to, binary_frame(256 * 1024, fill), 32 * 1024, &done));
      fill = fill == 'z' ? 'a' : static_cast<char>(fill + 1);
    }
    es.ex.spawn(small_requests(&es.ex, es.to, 200, &done, &answered_while_full));
    es.ex.run(wait_for(&es.ex, &done, 301));
    CHECK(done == 301);
    CHECK(b.peak() <= b.limit());  // one frame over the limit is admitted only alone
    CHECK(b.waits() - waits_before > 100);  // most frames waited their turn
    CHECK(answered_while_full > 0);  // small requests went on meanwhile
  }
  CHECK(b.used() == 0);  // every reservation given back
  CHECK(b.waiting() == 0);
}

TEST_CASE("receive budget: a frame larger than the whole budget still goes through, alone") {
  connection_options co;
  co.thread_receive_budget = 64 * 1024;
  co.limits.max_content_length = 2 << 20;
  echo_server es(co);
  int done = 0;
  for (int i = 0; i < 3; ++i) es.ex.spawn(slow_sender(&es.ex, es.to, binary_frame(1 << 20, 'L'), 256 * 1024, &done));
  es.ex.run(wait_for(&es.ex, &done, 3));
  CHECK(done == 3);
  CHECK(receive_budget::this_thread().waits() > 0);
}

namespace {
// Sends the first half of a frame and stalls.
task<void> stall_mid_frame(executor* ex, address to, ringframe::socket* keep) {
  result<ringframe::socket> s = co_await ringframe::connect(*ex, to, {.timeout = 10s});
  REQUIRE(s);
  *keep = std::move(*s);
  const std::string f = binary_frame(512 * 1024, 'h');
  result<std::size_t> w = co_await keep->send_all(std::string_view(f).substr(0, f.size() / 2), {.timeout = 5s});
  REQUIRE(w);
}
task<void> wait_timeouts(executor* ex, server* srv, std::uint64_t want) {
  for (int i = 0; i < 1000 && srv->stats().timeouts < want; ++i) {
    result<void> r = co_await sleep_for(*ex, 10ms);
    REQUIRE(r);
  }
}
task<void> wait_waiting(executor* ex, std::size_t want) {
  for (int i = 0; i < 1000 && receive_budget::this_thread().waiting() < want; ++i) {
    result<void> r = co_await sleep_for(*ex, 10ms);
    REQUIRE(r);
  }
}
}  // namespace

TEST_CASE("receive budget: a frame waiting for room is cut off by the message timeout and by a stop, and gives nothing back twice") {
  connection_options co;
  co.thread_receive_budget = 600 * 1024;  // one of the frames below at a time
  co.message_timeout = 300ms;
  co.limits.max_content_length = 1 << 20;
  receive_budget& b = receive_budget::this_thread();
  {
    echo_server es(co);
    ringframe::socket first, second;
    es.ex.spawn(stall_mid_frame(&es.ex, es.to, &first));
    es.ex.spawn(stall_mid_frame(&es.ex, es.to, &second));
    es.ex.run(wait_timeouts(&es.ex, &es.srv, 2));
    CHECK(es.srv.stats().timeouts == 2);  // the admitted one and the waiting one
    CHECK(b.used() == 0);
    CHECK(b.waiting() == 0);
  }
  {
    co.message_timeout = 30s;
    echo_server es(co);
    ringframe::socket first, second;
    es.ex.spawn(stall_mid_frame(&es.ex, es.to, &first));
    es.ex.spawn(stall_mid_frame(&es.ex, es.to, &second));
    es.ex.run(wait_waiting(&es.ex, 1));
    CHECK(b.waiting() == 1);
    es.srv.stop();  // cancels the recv of one, the wait of the other
    es.ex.run_until_idle();
    CHECK(b.used() == 0);
    CHECK(b.waiting() == 0);
  }
}
