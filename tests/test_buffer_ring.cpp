// buffer_ring.hpp's kernel features (issue 12), probed at run time:
// incremental consumption (IOU_PBUF_RING_INC) and recv bundles
// (IORING_RECVSEND_BUNDLE). The offsets and the ring order as the ring
// tracks them against what the kernel did, a buffer kept from the ring
// while the kernel still fills it, and framed traffic of many sizes through
// each mode, every byte checked, on both backends. Where the kernel lacks a
// feature the ring runs without it, and the same tests check that path.
#include "loopback.hpp"
#include "stream_reader.hpp"

#include <ringframe/app.hpp>
#include <ringframe/connection.hpp>
#include <ringframe/handler.hpp>
#include <ringframe/receive_stream.hpp>
#include <ringframe/server.hpp>
#include <ringframe/timer.hpp>

#include <doctest/doctest.h>

#include <netinet/tcp.h>

#include <chrono>
#include <coroutine>
#include <string>
#include <vector>

using namespace ringframe;
using namespace std::chrono_literals;

namespace {

executor_options with(backend_kind k, bool incremental, bool bundles, unsigned buffers = 64, unsigned max = 2048) {
  executor_options o = testing::on(k);
  o.incremental_buffers = incremental;
  o.recv_bundles = bundles;
  o.receive_buffers = buffers;
  o.receive_buffers_max = max;
  return o;
}

// Bytes no two places of a stream share by accident: a shifted or reused
// range shows.
std::string pattern(std::size_t n, unsigned seed) {
  std::string s(n, '\0');
  std::uint32_t x = seed * 2654435761u + 1;
  for (std::size_t i = 0; i < n; ++i) {
    x = x * 1664525u + 1013904223u;
    s[i] = static_cast<char>(x >> 24);
  }
  return s;
}

std::string frame_of(const std::string& content) {
  std::string f;
  REQUIRE(encode_frame(message::binary(content, "binary/x"), f));
  return f;
}

task<result<provided_recv>> recv_provided_once(ringframe::socket* s, buffer_ring* br) {
  co_return co_await s->recv_provided(*br, {.timeout = 2s});
}

std::string text_of(buffer_ring* br, const provided_recv& r) {
  std::span<std::byte> d = br->data(r.slice());
  return std::string(reinterpret_cast<const char*>(d.data()), d.size());
}

void send_raw(ringframe::socket& s, const std::string& bytes) {
  REQUIRE(::send(s.fd(), bytes.data(), bytes.size(), 0) == static_cast<ssize_t>(bytes.size()));
}

}  // namespace

TEST_CASE("incremental buffers: a recv goes on in the same buffer where the last one stopped; the buffer goes back "
          "only after its last completion and its last slice") {
  // One buffer, so where each recv lands and when the buffer is back are
  // both visible.
  executor ex(with(backend_kind::io_uring, true, false, 1, 1));
  buffer_ring* br = ex.receive_buffers();
  REQUIRE(br);
  auto [a, b] = testing::socket_pair(ex);
  const std::size_t size = br->buffer_size();
  if (!br->granted().incremental) {
    // The kernel refused IOU_PBUF_RING_INC (before 6.12): a plain ring, one
    // buffer per recv, held until released.
    MESSAGE("this kernel lacks IOU_PBUF_RING_INC: checking the plain ring it fell back to");
    send_raw(b, "hello");
    result<provided_recv> r1 = ex.run(recv_provided_once(&a, br));
    REQUIRE(r1);
    CHECK(r1->offset == 0);
    CHECK(text_of(br, *r1) == "hello");
    send_raw(b, "world");
    result<provided_recv> r2 = ex.run(recv_provided_once(&a, br));
    REQUIRE_FALSE(r2);
    CHECK(r2.error() == std::errc::no_buffer_space);
    br->release(r1->slice());
    r2 = ex.run(recv_provided_once(&a, br));
    REQUIRE(r2);
    CHECK(text_of(br, *r2) == "world");
    br->release(r2->slice());
    return;
  }
  send_raw(b, "hello");
  result<provided_recv> r1 = ex.run(recv_provided_once(&a, br));
  REQUIRE(r1);
  REQUIRE(r1->has_buffer);
  CHECK(r1->offset == 0);
  CHECK(text_of(br, *r1) == "hello");
  CHECK(br->stats().partial == 1);  // the kernel kept the buffer (F_BUF_MORE)
  send_raw(b, "world");
  result<provided_recv> r2 = ex.run(recv_provided_once(&a, br));
  REQUIRE(r2);
  CHECK(r2->id == r1->id);
  CHECK(r2->offset == 5);
  CHECK(text_of(br, *r2) == "world");
  CHECK(text_of(br, *r1) == "hello");  // not written over
  // Released while the kernel still fills the buffer: it must not go back
  // (the kernel would then hold it twice).
  br->release(r1->slice());
  br->release(r2->slice());
  CHECK(br->stats().out == 0);
  // The rest of the buffer, exactly: the completion without F_BUF_MORE.
  const std::string rest = pattern(size - 10, 7);
  send_raw(b, rest);
  result<provided_recv> r3 = ex.run(recv_provided_once(&a, br));
  REQUIRE(r3);
  CHECK(r3->offset == 10);
  CHECK(r3->len == size - 10);
  CHECK(text_of(br, *r3) == rest);
  CHECK(br->stats().out == 1);  // let go of by the kernel, kept by us
  // The only buffer is out: no buffer until its last slice is released.
  send_raw(b, "!");
  result<provided_recv> r4 = ex.run(recv_provided_once(&a, br));
  REQUIRE_FALSE(r4);
  CHECK(r4.error() == std::errc::no_buffer_space);
  br->release(r3->slice());
  CHECK(br->stats().out == 0);
  r4 = ex.run(recv_provided_once(&a, br));  // the "!" was not lost, and starts the buffer afresh
  REQUIRE(r4);
  CHECK(r4->offset == 0);
  CHECK(text_of(br, *r4) == "!");
  br->release(r4->slice());
}

TEST_CASE("incremental buffers and bundles are no-ops on epoll: whole buffers, one per recv") {
  executor ex(with(backend_kind::epoll, true, true, 2, 2));
  buffer_ring* br = ex.receive_buffers();
  REQUIRE(br);
  CHECK_FALSE(br->granted().incremental);
  CHECK_FALSE(br->granted().bundles);
  auto [a, b] = testing::socket_pair(ex);
  send_raw(b, "hello");
  result<provided_recv> r1 = ex.run(recv_provided_once(&a, br));
  REQUIRE(r1);
  CHECK(r1->offset == 0);
  CHECK(text_of(br, *r1) == "hello");
  send_raw(b, "world");
  result<provided_recv> r2 = ex.run(recv_provided_once(&a, br));
  REQUIRE(r2);
  CHECK(r2->id != r1->id);
  CHECK(r2->offset == 0);
  br->release(r1->slice());
  br->release(r2->slice());
  CHECK(br->stats().partial == 0);
}

// ---- receive_stream on the ring ----

namespace {

using testing::read_once;
using testing::reader;

// Reads until the decoder has a message; the size of each read in `reads`.
task<int> read_message(receive_stream* s, reader* r, frame_decoder* d, std::string* content, std::vector<int>* reads) {
  for (;;) {
    message_view m;
    if (d->next(m) == frame_decoder::status::message) {
      *content = std::string(m.content_text());
      co_return 1;
    }
    int res = co_await read_once{s, r, !d->mid_frame()};
    if (reads) reads->push_back(res);
    if (res > 0 || res == -EAGAIN) continue;
    co_return res;
  }
}

struct stream_setup {
  executor ex;
  std::pair<ringframe::socket, ringframe::socket> pair = testing::socket_pair(ex);
  frame_decoder decoder;
  reader r;
  receive_stream stream;
  stream_setup(executor_options eo, receive_stream::options o)
      : ex(eo), stream(pair.first, decoder, o, &reader::done, &r) {}
};

task<void> send_text(ringframe::socket* s, std::string text) {
  result<std::size_t> n = co_await s->send_all(text, {.timeout = 5s});
  REQUIRE(n);
}

task<void> send_frames_spaced(executor* ex, ringframe::socket* s, std::vector<std::string> frames) {
  for (const std::string& f : frames) {
    co_await send_text(s, f);
    result<void> slept = co_await sleep_for(*ex, 2ms);
    REQUIRE(slept);
  }
}

}  // namespace

TEST_CASE("bundles: one read fills several buffers in ring order (not id order), fed to the decoder in order") {
  stream_setup t(with(backend_kind::io_uring, false, true, 4, 4), {});
  buffer_ring* br = t.ex.receive_buffers();
  REQUIRE(br);
  // Put the ring out of id order: take buffers 0 and 1 on another socket and
  // give them back 1 first. From the kernel's head the ring now reads 2, 3,
  // 1, 0.
  auto [c, d] = testing::socket_pair(t.ex);
  send_raw(d, "a");
  result<provided_recv> ra = t.ex.run(recv_provided_once(&c, br));
  REQUIRE(ra);
  send_raw(d, "b");
  result<provided_recv> rb = t.ex.run(recv_provided_once(&c, br));
  REQUIRE(rb);
  REQUIRE(ra->id != rb->id);
  br->release(rb->slice());
  br->release(ra->slice());
  // A frame of nearly three buffers, all in the socket before the read.
  const std::string content = pattern(3 * br->buffer_size() - 300, 11);
  send_raw(t.pair.second, frame_of(content));
  std::string got;
  std::vector<int> reads;
  CHECK(t.ex.run(read_message(&t.stream, &t.r, &t.decoder, &got, &reads)) == 1);
  CHECK(got.size() == content.size());
  CHECK(got == content);
  REQUIRE_FALSE(reads.empty());
  if (br->granted().bundles) {
    CHECK(reads.front() > static_cast<int>(br->buffer_size()));  // one read, several buffers
    CHECK(br->stats().bundles >= 1);
  } else {
    MESSAGE("this kernel lacks IORING_RECVSEND_BUNDLE: checked the one-buffer reads it fell back to");
    CHECK(reads.front() <= static_cast<int>(br->buffer_size()));
  }
  CHECK(br->stats().out == 0);
}

TEST_CASE("incremental buffers, multishot: slices held while nobody reads share buffers, and are fed in order") {
  for (bool bundles : {false, true}) {
    CAPTURE(bundles);
    receive_stream::options o;
    o.multishot = true;
    stream_setup t(with(backend_kind::io_uring, true, bundles), o);
    std::string got;
    t.ex.spawn(send_text(&t.pair.second, frame_of("first")));
    CHECK(t.ex.run(read_message(&t.stream, &t.r, &t.decoder, &got, nullptr)) == 1);
    CHECK(got == "first");
    CHECK(t.stream.current() == receive_stream::state::multishot);
    // Twelve frames as separate segments while nobody reads: held as slices
    // (four, then spilled), several in one buffer at different offsets.
    std::vector<std::string> frames;
    for (int i = 0; i < 12; ++i) frames.push_back(frame_of("m" + std::to_string(i) + pattern(100 + 37 * i, i)));
    t.ex.run(send_frames_spaced(&t.ex, &t.pair.second, frames));
    for (int spins = 0; spins < 50; ++spins) t.ex.run_once(false);
    CHECK(t.stream.has_held());
    for (int i = 0; i < 12; ++i) {
      CHECK(t.ex.run(read_message(&t.stream, &t.r, &t.decoder, &got, nullptr)) == 1);
      CHECK(got == "m" + std::to_string(i) + pattern(100 + 37 * i, i));
    }
    CHECK(!t.stream.has_held());
    buffer_ring* br = t.ex.receive_buffers();
    REQUIRE(br);
    if (br->granted().incremental) CHECK(br->stats().partial > 0);
    CHECK(br->stats().out == 0);
  }
}

// ---- frame-echo end to end ----

namespace {

struct echo_server {
  executor ex;
  server srv;
  address to;
  echo_server(connection_options co, executor_options eo) : ex(eo), srv(ex, quiet()) {
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

// Sends `bytes` in pieces of the sizes in `chunks` (cycled), a short pause
// now and then so that some reads find a little and some a lot.
task<void> send_chunked(ringframe::socket* s, std::string bytes, std::vector<std::size_t> chunks) {
  std::size_t at = 0;
  for (std::size_t i = 0; at < bytes.size(); ++i) {
    const std::size_t n = std::min(chunks[i % chunks.size()], bytes.size() - at);
    result<std::size_t> w = co_await s->send_all(std::string_view(bytes).substr(at, n), {.timeout = 20s});
    REQUIRE(w);
    at += n;
    if (i % 5 == 4) {
      result<void> slept = co_await sleep_for(s->get_executor(), 1ms);
      REQUIRE(slept);
    }
  }
}

// One client: sends every frame pipelined (while reading), checks that
// every byte comes back as sent; counts the clients that got all of it.
task<void> echo_client(executor* ex, address to, std::string wire, std::vector<std::size_t> chunks, int* ok) {
  result<ringframe::socket> s = co_await ringframe::connect(*ex, to, {.timeout = 5s});
  REQUIRE(s);
  int one = 1;
  ::setsockopt(s->fd(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  ex->spawn(send_chunked(&*s, wire, chunks));
  std::string got;
  std::vector<std::byte> buf(256 * 1024);
  while (got.size() < wire.size()) {
    result<std::size_t> r = co_await s->recv(buf, {.timeout = 20s});
    REQUIRE(r);
    REQUIRE(*r > 0);
    got.append(reinterpret_cast<const char*>(buf.data()), *r);
  }
  CHECK(got.size() == wire.size());
  const bool same = got == wire;
  CHECK(same);
  if (same) ++*ok;
}

task<void> wait_for(executor* ex, int* done, int want) {
  for (int i = 0; i < 3000 && *done < want; ++i) {
    result<void> r = co_await sleep_for(*ex, 10ms);
    REQUIRE(r);
  }
}

struct mode {
  const char* name;
  bool incremental, bundles;
};
constexpr mode modes[] = {{"incremental", true, false}, {"bundles", false, true}, {"both", true, true}};

}  // namespace

TEST_CASE("frame-echo: pipelined frames of many sizes through each mode come back byte for byte") {
  std::string wire;
  unsigned seed = 1;
  for (std::size_t size : {0, 1, 100, 1000, 4000, 16383, 16384, 16385, 40000, 65536, 100000, 1 << 20, 5, 64, 64, 2000})
    wire += frame_of(pattern(size, seed++));
  for (int i = 0; i < 200; ++i) wire += frame_of(pattern(static_cast<std::size_t>(i * 53 % 3000), seed++));
  testing::on_each_backend([&](backend_kind k) {
    for (const mode& m : modes) {
      for (bool multishot : {false, true}) {
        const std::string name = m.name;
        CAPTURE(name);
        CAPTURE(multishot);
        connection_options co;
        co.multishot_recv = multishot;
        co.limits.max_content_length = 2 << 20;
        echo_server es(co, with(k, m.incremental, m.bundles));
        int ok = 0;
        // Pieces that cut frames anywhere: a byte, a header, many frames.
        es.ex.spawn(echo_client(&es.ex, es.to, wire, {1, 7, 100, 5000, 70000, 300000}, &ok));
        es.ex.spawn(echo_client(&es.ex, es.to, wire, {65536}, &ok));
        es.ex.run(wait_for(&es.ex, &ok, 2));
        CHECK(ok == 2);
        buffer_ring* br = es.ex.receive_buffers();
        REQUIRE(br);
        if (k == backend_kind::epoll || !m.incremental) CHECK_FALSE(br->granted().incremental);
        if (k == backend_kind::epoll || !m.bundles) CHECK_FALSE(br->granted().bundles);
        CHECK(br->stats().out == 0);  // every slice given back
      }
    }
  });
}

TEST_CASE("a small ring shared by many connections: no buffer goes back while the kernel still fills it (every byte "
          "checked)") {
  // Two buffers for 16 connections: each buffer is shared by many of them
  // at once (incremental), reused at once when let go of, and the ring is
  // often empty (ENOBUFS: those reads go to the connection's own buffer).
  // A buffer given back while the kernel still fills it, or a slice read at
  // the wrong offset or from the wrong buffer, shows as wrong bytes.
  testing::on_each_backend([&](backend_kind k) {
    for (const mode& m : modes) {
      for (bool multishot : {false, true}) {
        const std::string name = m.name;
        CAPTURE(name);
        CAPTURE(multishot);
        connection_options co;
        co.multishot_recv = multishot;
        echo_server es(co, with(k, m.incremental, m.bundles, 2, 2));
        int ok = 0;
        const int clients = 16;
        for (int c = 0; c < clients; ++c) {
          std::string wire;
          for (int i = 0; i < 150; ++i) {
            const std::size_t size = (i * 7919 + c * 104729) % 7 == 0 ? 20000 : (i * 131 + c * 17) % 2500;
            wire += frame_of(pattern(size, static_cast<unsigned>(c * 1000 + i)));
          }
          es.ex.spawn(echo_client(&es.ex, es.to, std::move(wire), {static_cast<std::size_t>(300 + c * 97), 5000}, &ok));
        }
        es.ex.run(wait_for(&es.ex, &ok, clients));
        CHECK(ok == clients);
        buffer_ring* br = es.ex.receive_buffers();
        REQUIRE(br);
        CHECK(br->count() == 2);
        if (k == backend_kind::io_uring && m.incremental && br->granted().incremental) CHECK(br->stats().partial > 0);
        CHECK(br->stats().out == 0);
      }
    }
  });
}

namespace {
// Opens `n` connections, echoes one frame on each and keeps them open, so
// each server connection waits with its recv armed.
task<void> park_connections(executor* ex, address to, int n, std::vector<ringframe::socket>* parked) {
  const std::string f = frame_of(pattern(3000, 5));
  for (int i = 0; i < n; ++i) {
    result<ringframe::socket> s = co_await ringframe::connect(*ex, to, {.timeout = 5s});
    REQUIRE(s);
    result<std::size_t> sent = co_await s->send_all(f, {.timeout = 5s});
    REQUIRE(sent);
    std::string got;
    std::vector<std::byte> buf(8192);
    while (got.size() < f.size()) {
      result<std::size_t> r = co_await s->recv(buf, {.timeout = 5s});
      REQUIRE(r);
      REQUIRE(*r > 0);
      got.append(reinterpret_cast<const char*>(buf.data()), *r);
    }
    REQUIRE(got == f);
    // A little more that the server holds (multishot) or has yet to read.
    result<std::size_t> more = co_await s->send_all(std::string_view(f).substr(0, 700), {.timeout = 5s});
    REQUIRE(more);
    parked->push_back(std::move(*s));
  }
}
}  // namespace

TEST_CASE("a server stopped with recvs armed in each mode gives every buffer back (ASan checks the rest)") {
  for (const mode& m : modes) {
    for (bool multishot : {false, true}) {
      const std::string name = m.name;
      CAPTURE(name);
      CAPTURE(multishot);
      std::vector<ringframe::socket> parked;
      connection_options co;
      co.multishot_recv = multishot;
      echo_server es(co, with(backend_kind::io_uring, m.incremental, m.bundles));
      es.ex.run(park_connections(&es.ex, es.to, 30, &parked));
      for (int spins = 0; spins < 20; ++spins) es.ex.run_once(false);
      CHECK(es.srv.live_connections() == 30);
      es.srv.stop();
      es.ex.run_until_idle();
      CHECK(es.srv.live_connections() == 0);
      CHECK(es.ex.inflight() == 0);  // every recv (and every one left behind) got its last CQE
      buffer_ring* br = es.ex.receive_buffers();
      REQUIRE(br);
      CHECK(br->stats().out == 0);
    }
  }
}
