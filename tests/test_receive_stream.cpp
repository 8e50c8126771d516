// receive_stream.hpp alone: reads from the ring and into the sink, the
// multishot recv's held bytes, end of stream, the deadline, and a stop from
// another thread.
#include "loopback.hpp"
#include "stream_reader.hpp"

#include <ringframe/receive_stream.hpp>
#include <ringframe/timer.hpp>

#include <doctest/doctest.h>

#include <sys/socket.h>

#include <algorithm>
#include <chrono>
#include <coroutine>
#include <memory>
#include <string>
#include <thread>
#include <vector>

using namespace ringframe;
using namespace std::chrono_literals;

namespace {

using testing::read_once;
using testing::reader;

// Reads until the decoder has a message (or the stream ends or fails).
task<int> read_message(receive_stream* s, reader* r, frame_decoder* d, std::string* content) {
  for (;;) {
    message_view m;
    if (d->next(m) == frame_decoder::status::message) {
      *content = std::string(m.content_text());
      co_return 1;
    }
    int res = co_await read_once{s, r, !d->mid_frame()};
    if (res > 0 || res == -EAGAIN) continue;
    co_return res;
  }
}

std::string frame_of(const std::string& content) {
  std::string f;
  REQUIRE(encode_frame(message::binary(content, "t"), f));
  return f;
}

task<void> send_text(ringframe::socket* s, std::string text) {
  result<std::size_t> n = co_await s->send_all(text, {.timeout = 5s});
  REQUIRE(n);
}

struct setup {
  executor ex;
  std::pair<ringframe::socket, ringframe::socket> pair = testing::socket_pair(ex);
  frame_decoder decoder;
  reader r;
  std::uint64_t bytes_in = 0;
  receive_stream stream;
  explicit setup(receive_stream::options o)
      : stream(pair.first, decoder, o, &reader::done, &r, &bytes_in) {}
};

}  // namespace

TEST_CASE("a frame arrives through the ring, and a large one straight into the sink") {
  setup t({});
  std::string small = frame_of("hello");
  std::string large = frame_of(std::string(300000, 'L'));
  t.ex.spawn(send_text(&t.pair.second, small + large));
  std::string got;
  CHECK(t.ex.run(read_message(&t.stream, &t.r, &t.decoder, &got)) == 1);
  CHECK(got == "hello");
  CHECK(t.ex.run(read_message(&t.stream, &t.r, &t.decoder, &got)) == 1);
  CHECK(got == std::string(300000, 'L'));
  CHECK(t.bytes_in == small.size() + large.size());
  CHECK(t.stream.current() == receive_stream::state::idle);
}

TEST_CASE("the peer closing is 0; the stream is idle afterwards") {
  setup t({});
  { ringframe::socket gone = std::move(t.pair.second); }
  std::string got;
  CHECK(t.ex.run(read_message(&t.stream, &t.r, &t.decoder, &got)) == 0);
  CHECK(t.stream.current() == receive_stream::state::idle);
}

TEST_CASE("the deadline ends a read with ETIMEDOUT, reported once") {
  setup t({});
  std::string got;
  auto t0 = std::chrono::steady_clock::now();
  t.stream.arm_deadline(50ms);
  CHECK(t.ex.run(read_message(&t.stream, &t.r, &t.decoder, &got)) == -ETIMEDOUT);
  CHECK(std::chrono::steady_clock::now() - t0 >= 50ms);
  CHECK(t.stream.refusal() == 0);  // reported: the owner decides what comes next
}

TEST_CASE("a stop from another thread cancels the read in flight: ECANCELED") {
  setup t({});
  std::stop_source src;
  std::stop_token tok = src.get_token();
  t.stream.set_stop(&tok);
  std::thread other([&] {
    std::this_thread::sleep_for(30ms);
    src.request_stop();
    t.stream.stop();
  });
  std::string got;
  int r = t.ex.run(read_message(&t.stream, &t.r, &t.decoder, &got));
  other.join();
  CHECK(r == -ECANCELED);
}

namespace {
task<void> send_frames_spaced(executor* ex, ringframe::socket* s, int n) {
  for (int i = 0; i < n; ++i) {
    co_await send_text(s, frame_of("m" + std::to_string(i)));
    result<void> slept = co_await sleep_for(*ex, 2ms);
    REQUIRE(slept);
  }
}
}  // namespace

TEST_CASE("multishot: bytes that arrive while nobody reads are held, then fed in order by the next read") {
  receive_stream::options o;
  o.multishot = true;
  setup t(o);
  std::string got;
  // The first read arms the multishot recv, which stays armed after it.
  t.ex.spawn(send_text(&t.pair.second, frame_of("first")));
  CHECK(t.ex.run(read_message(&t.stream, &t.r, &t.decoder, &got)) == 1);
  CHECK(got == "first");
  CHECK(t.stream.current() == receive_stream::state::multishot);
  // Twelve frames arrive, as separate segments, while nobody reads: four
  // are held in ring buffers, the rest spilled once the recv is cancelled.
  t.ex.run(send_frames_spaced(&t.ex, &t.pair.second, 12));
  for (int spins = 0; spins < 50; ++spins) t.ex.run_once(false);
  CHECK(t.stream.has_held());
  for (int i = 0; i < 12; ++i) {
    CHECK(t.ex.run(read_message(&t.stream, &t.r, &t.decoder, &got)) == 1);
    CHECK(got == "m" + std::to_string(i));
  }
  CHECK(!t.stream.has_held());
}

TEST_CASE("multishot: a stream destroyed with its recv armed leaves the slot to take the last CQE") {
  executor ex;
  auto [a, b] = testing::socket_pair(ex);
  frame_decoder d;
  reader r;
  {
    receive_stream::options o;
    o.multishot = true;
    receive_stream s(a, d, o, &reader::done, &r);
    ex.spawn(send_text(&b, frame_of("x")));
    std::string got;
    CHECK(ex.run(read_message(&s, &r, &d, &got)) == 1);
    CHECK(s.current() == receive_stream::state::multishot);
  }
  while (ex.inflight() > 0) REQUIRE(ex.run_once(true));  // the left-behind slot got its CQE (ASan: freed once)
}

namespace {
// Reads once into the sink (mid-frame or not), then decodes every complete
// message: the bytes that read brought.
task<int> read_and_consume(receive_stream* s, reader* r, frame_decoder* d, std::size_t* messages) {
  int res = co_await read_once{s, r, !d->mid_frame()};
  message_view m;
  while (d->next(m) == frame_decoder::status::message) ++*messages;
  co_return res;
}
}  // namespace

TEST_CASE("direct reads grow while they come back full, up to 8 x read_size, and shrink again on small traffic") {
  receive_stream::options o;
  o.provided_buffers = false;  // every read straight into the sink
  o.read_size = 16 * 1024;
  setup t(o);
  const int big = 4 * 1024 * 1024;
  REQUIRE(::setsockopt(t.pair.second.fd(), SOL_SOCKET, SO_SNDBUF, &big, sizeof big) == 0);
  REQUIRE(::setsockopt(t.pair.first.fd(), SOL_SOCKET, SO_RCVBUF, &big, sizeof big) == 0);
  const std::string f = frame_of(std::string(1000, 'b'));
  std::string bulk;
  for (int i = 0; i < 1500; ++i) bulk += f;  // 1.5 MB, all queued before the first read
  t.ex.run(send_text(&t.pair.second, bulk));

  std::size_t messages = 0, got = 0, largest = 0, first = 0;
  while (got < bulk.size()) {
    int n = t.ex.run(read_and_consume(&t.stream, &t.r, &t.decoder, &messages));
    REQUIRE(n > 0);
    if (!first) first = static_cast<std::size_t>(n);
    largest = std::max(largest, static_cast<std::size_t>(n));
    got += static_cast<std::size_t>(n);
  }
  CHECK(messages == 1500);
  // The first read asks for read_size and a little more (the rest of the
  // frame it starts); later ones for up to 8 times as much, never more.
  CHECK(first <= o.read_size + f.size());
  CHECK(largest > 4 * o.read_size);
  CHECK(largest <= 8 * o.read_size + f.size());

  // One small frame per read: each brings less than a quarter of the step,
  // which halves each time, back to read_size.
  for (int i = 0; i < 4; ++i) {
    t.ex.run(send_text(&t.pair.second, f));
    CHECK(t.ex.run(read_and_consume(&t.stream, &t.r, &t.decoder, &messages)) == static_cast<int>(f.size()));
  }
  t.ex.run(send_text(&t.pair.second, bulk));
  int n = t.ex.run(read_and_consume(&t.stream, &t.r, &t.decoder, &messages));
  CHECK(static_cast<std::size_t>(n) <= o.read_size + f.size());
}

namespace {
// Streams on one executor, each with `frames` frames of `content` bytes
// queued before the first read, read at once by a coroutine each: every
// loop turn then brings several streams' completions (a busy thread).
struct pipelined_streams {
  struct one {
    std::pair<ringframe::socket, ringframe::socket> pair;
    frame_decoder decoder;
    reader r;
    receive_stream stream;
    std::size_t messages = 0, reads = 0, largest = 0, largest_left = 0;
    one(executor& ex, receive_stream::options o)
        : pair(testing::socket_pair(ex)), stream(pair.first, decoder, o, &reader::done, &r) {}
  };
  executor ex;
  std::vector<std::unique_ptr<one>> streams;
  std::string bulk;
  pipelined_streams(int n, std::size_t content, int frames) {
    receive_stream::options o;
    o.provided_buffers = false;
    o.read_size = 16 * 1024;
    const std::string f = frame_of(std::string(content, 'F'));
    for (int i = 0; i < frames; ++i) bulk += f;
    for (int i = 0; i < n; ++i) {
      streams.push_back(std::make_unique<one>(ex, o));
      const int big = 8 * 1024 * 1024;
      REQUIRE(::setsockopt(streams.back()->pair.second.fd(), SOL_SOCKET, SO_SNDBUF, &big, sizeof big) == 0);
      REQUIRE(::setsockopt(streams.back()->pair.first.fd(), SOL_SOCKET, SO_RCVBUF, &big, sizeof big) == 0);
      ex.run(send_text(&streams.back()->pair.second, bulk));
    }
  }
};

task<void> read_all(pipelined_streams::one* s, std::size_t total) {
  std::size_t got = 0;
  while (got < total) {
    int n = co_await read_once{&s->stream, &s->r, !s->decoder.mid_frame()};
    REQUIRE(n > 0);
    message_view m;
    while (s->decoder.next(m) == frame_decoder::status::message) ++s->messages;
    got += static_cast<std::size_t>(n);
    s->largest = std::max(s->largest, static_cast<std::size_t>(n));
    // What is left in the decoder after the whole frames: the start of the
    // next one, moved to another buffer when the rest does not fit. After
    // the first read (read_size, with nothing known yet), no more than its
    // prefix, header and a little content.
    if (++s->reads > 1) s->largest_left = std::max(s->largest_left, s->decoder.buffered());
  }
}

void read_all_at_once(pipelined_streams& p) {
  for (auto& s : p.streams) p.ex.spawn(read_all(s.get(), p.bulk.size()));
  p.ex.run_until_idle();
}
}  // namespace

TEST_CASE("pipelined large frames on a busy thread: two per read up to the largest step, in place") {
  // 100,000 B: within the largest step (8 x read_size). Four streams at
  // once keep the thread busy: a read takes the rest of one frame, the
  // whole next one (in place) and the third's header.
  pipelined_streams p(4, 100000, 20);
  read_all_at_once(p);
  const std::size_t f = p.bulk.size() / 20;
  for (auto& s : p.streams) {
    CAPTURE(s->reads);
    CHECK(s->messages == 20);
    CHECK(s->largest_left > 0);  // reads did reach into the next frame: its header came with them
    CHECK(s->largest_left <= 1024);
    CHECK(s->reads <= 14);  // the first read, then about two frames per read (it was one per read: 21)
    CHECK(s->largest <= 2 * f + 1024);
  }
}

TEST_CASE("pipelined large frames, one stream or beyond the largest step: one per read, each reaching only the next header") {
  // A lone stream (its peer would be put in lock step by pairs), and
  // 200,000 B frames (past the largest step) on a busy thread.
  for (const int n : {1, 4}) {
    const std::size_t content = n == 1 ? 100000 : 200000;
    CAPTURE(n);
    pipelined_streams p(n, content, 20);
    read_all_at_once(p);
    const std::size_t f = p.bulk.size() / 20;
    for (auto& s : p.streams) {
      CAPTURE(s->reads);
      CHECK(s->messages == 20);
      CHECK(s->largest_left > 0);
      CHECK(s->largest_left <= 1024);
      CHECK(s->reads <= 21);  // not a second read per frame for its header
      CHECK(s->largest <= f + 1024);
    }
  }
}

TEST_CASE("large frames one at a time (depth 1): after the first, each comes in one read, and small traffic ends that") {
  receive_stream::options o;
  SUBCASE("direct reads") { o.provided_buffers = false; }
  SUBCASE("provided buffers between frames") { o.provided_buffers = true; }
  o.read_size = 16 * 1024;
  // 64 KiB: past two base reads; 16 KiB: past one base read (and one ring
  // buffer) by its prefix and header only (the grid's 16 KiB cells at depth
  // 1 took two recvs per frame).
  for (std::size_t content : {std::size_t{64 * 1024}, std::size_t{16 * 1024}}) {
    CAPTURE(content);
    setup t(o);
    const int big = 4 * 1024 * 1024;
    REQUIRE(::setsockopt(t.pair.second.fd(), SOL_SOCKET, SO_SNDBUF, &big, sizeof big) == 0);
    REQUIRE(::setsockopt(t.pair.first.fd(), SOL_SOCKET, SO_RCVBUF, &big, sizeof big) == 0);
    const std::string large = frame_of(std::string(content, 'L'));
    const std::string small = frame_of(std::string(100, 's'));
    std::size_t messages = 0;
    // Sends one frame, reads until it is in; the number of reads it took.
    auto one_frame = [&](const std::string& f) {
      t.ex.run(send_text(&t.pair.second, f));
      const std::size_t before = messages;
      std::size_t reads = 0, got = 0;
      while (messages == before) {
        int n = t.ex.run(read_and_consume(&t.stream, &t.r, &t.decoder, &messages));
        REQUIRE(n > 0);
        got += static_cast<std::size_t>(n);
        ++reads;
      }
      CHECK(got == f.size());
      CHECK(messages == before + 1);
      return reads;
    };
    // The first: a base step (a read_size, or a ring buffer: 64 KiB on
    // epoll, which takes a 16 KiB frame whole) shows the header, then its rest.
    const std::size_t base = o.provided_buffers && t.ex.receive_buffers() ? t.ex.receive_buffers()->buffer_size()
                                                                          : o.read_size;
    const std::size_t first_reads = large.size() > base ? 2 : 1;
    CHECK(one_frame(large) == first_reads);
    // The next ones: a read at the frame's start asks for as much as the
    // last frame took, so the whole frame comes at once.
    for (int i = 0; i < 5; ++i) CHECK(one_frame(large) == 1);
    // Small frames: the first still comes in a read that large, and ends
    // the guess; a large frame after them starts with the base step again.
    CHECK(one_frame(small) == 1);
    CHECK(one_frame(small) == 1);
    CHECK(one_frame(large) == first_reads);
  }
}

TEST_CASE("a read_size of 0 or beyond any buffer is held within 1 byte to 16 MiB: frames still arrive whole") {
  for (std::size_t size : {std::size_t{0}, std::size_t{1}, SIZE_MAX}) {
    CAPTURE(size);
    receive_stream::options o;
    o.provided_buffers = false;
    o.read_size = size;  // 0 would read nothing (an end of stream); SIZE_MAX's step would wrap
    setup t(o);
    std::string f = frame_of(std::string(3000, 'z'));
    t.ex.spawn(send_text(&t.pair.second, f + f));
    std::string got;
    std::size_t messages = 0;
    while (messages < 2) {
      int n = t.ex.run(read_and_consume(&t.stream, &t.r, &t.decoder, &messages));
      REQUIRE(n > 0);
    }
    CHECK(t.decoder.buffered() == 0);
  }
}
