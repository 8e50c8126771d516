// Review of send_queue::append_shared's merging of contiguous pieces, the
// 1 KiB gather threshold, and --mode app's precomputed search replies
// (commits 40506a0 and ec13a5a).
#include "loopback.hpp"
#include "send_helpers.hpp"

#include <ringframe/app.hpp>
#include <ringframe/connection.hpp>
#include <ringframe/detail/byte_block.hpp>
#include <ringframe/frame.hpp>
#include <ringframe/send_queue.hpp>
#include <ringframe/timer.hpp>

#include <doctest/doctest.h>

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

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

// Every byte different from its neighbours (a piece out of place shows).
detail::block_ref patterned_block(std::size_t n) {
  detail::block_ref b(detail::byte_block::make(n));
  for (std::size_t i = 0; i < n; ++i) b->data()[i] = static_cast<std::byte>((i * 7 + i / 251) & 0xff);
  return b;
}

std::span<const std::byte> span_of(const detail::block_ref& b, std::size_t from, std::size_t n) {
  return {b->data() + from, n};
}

// The same bytes twice, a piece and then one ending where it starts, one
// overlapping the last, and contiguous ones on either side of copied bytes:
// only the truly contiguous, uninterrupted ones may become one piece.
task<void> write_tricky(send_queue* q, detail::block_ref b, std::vector<std::size_t>* unsent) {
  REQUIRE(q->append_shared(b, span_of(b, 0, 1000)));
  unsent->push_back(q->unsent());
  REQUIRE(q->append_shared(b, span_of(b, 0, 1000)));  // the same bytes again
  unsent->push_back(q->unsent());
  REQUIRE(q->append_shared(b, span_of(b, 1000, 1000)));  // contiguous with the last
  unsent->push_back(q->unsent());
  REQUIRE(q->append_shared(b, span_of(b, 1500, 1000)));  // overlaps it
  unsent->push_back(q->unsent());
  REQUIRE(q->append_shared(b, span_of(b, 5000, 700)));  // before a piece that ends where this starts
  REQUIRE(q->append_shared(b, span_of(b, 4000, 1000)));
  q->out() += "x";
  REQUIRE(q->append_shared(b, span_of(b, 5000, 300)));  // contiguous, but after copied bytes
  REQUIRE(q->append_shared(b, span_of(b, 5300, 300)));
  unsent->push_back(q->unsent());
  q->start();
  while (q->busy()) co_await wait_empty{q, {}};
}

// A large batch in the kernel (the peer reads nothing yet), then pieces
// contiguous with the one in flight: they go in the next batch, whole.
task<void> write_past_flight(send_queue* q, detail::block_ref b, std::vector<std::size_t>* unsent) {
  REQUIRE(q->append_shared(b, span_of(b, 0, 3 << 20)));
  q->start();
  REQUIRE(q->busy());
  unsent->push_back(q->unsent());
  REQUIRE(q->append_shared(b, span_of(b, 3 << 20, 4000)));  // continues the piece in flight
  REQUIRE(q->append_shared(b, span_of(b, (3 << 20) + 4000, 4000)));
  q->out() += "yz";
  unsent->push_back(q->unsent());
  q->start();  // a batch is out: this one follows it
  while (q->busy()) co_await wait_empty{q, {}};
}

}  // namespace

TEST_CASE("append_shared merges only uninterrupted contiguous pieces: repeats, overlaps and reversed pieces keep their bytes") {
  testing::on_each_backend([](backend_kind k) {
    executor ex(testing::on(k));
    auto [a, b] = testing::socket_pair(ex);
    send_queue q(a, {});
    detail::block_ref blk = patterned_block(64 << 10);
    const std::string want = text_of(blk, 0, 1000) + text_of(blk, 0, 1000) + text_of(blk, 1000, 1000) +
                             text_of(blk, 1500, 1000) + text_of(blk, 5000, 700) + text_of(blk, 4000, 1000) + "x" +
                             text_of(blk, 5000, 300) + text_of(blk, 5300, 300);
    std::vector<std::size_t> unsent;
    ex.spawn(write_tricky(&q, blk, &unsent));
    std::string got = ex.run(read_exactly(&b, want.size(), 10s));
    ex.run_until_idle();
    CHECK(got.size() == want.size());
    CHECK(got == want);
    CHECK(unsent == std::vector<std::size_t>{1000, 2000, 3000, 4000, want.size()});
    CHECK(q.unsent() == 0);
    CHECK(!q.error());
    CHECK(!blk->shared());
  });
}

TEST_CASE("a piece contiguous with one already in the kernel is not merged into it: it follows in the next batch") {
  testing::on_each_backend([](backend_kind k) {
    executor ex(testing::on(k));
    auto [a, b] = testing::socket_pair(ex);
    std::uint64_t out = 0;
    send_queue q(a, {}, &out);
    detail::block_ref blk = patterned_block(4 << 20);
    const std::string want = text_of(blk, 0, (3 << 20) + 8000) + "yz";
    std::vector<std::size_t> unsent;
    ex.spawn(write_past_flight(&q, blk, &unsent));
    std::string got = ex.run(read_exactly(&b, want.size(), 10s));
    ex.run_until_idle();
    CHECK(got.size() == want.size());
    CHECK(got == want);
    REQUIRE(unsent.size() == 2);
    CHECK(unsent[0] <= std::size_t{3} << 20);
    CHECK(unsent[1] == unsent[0] + 8002);
    CHECK(out == want.size());
    CHECK(q.unsent() == 0);
    CHECK(!blk->shared());
  });
}

// ---- through a connection: handlers that echo the same bytes in odd ways ----

namespace {

const header_fields content_reply{"binary/x", "binary"};

std::string frame_with(std::size_t size, int seed) {
  std::string c(size, '\0');
  for (std::size_t i = 0; i < size; ++i) c[i] = static_cast<char>((i * 13 + static_cast<std::size_t>(seed) * 101) & 0xff);
  std::string f;
  REQUIRE(encode_frame(message::binary(c, "binary/in"), f));
  return f;
}

// What the handler below writes for the frame `f`.
std::string replies_to(const std::string& f) {
  frame_decoder d;
  d.feed(f);
  message_view m;
  REQUIRE(d.next(m) == frame_decoder::status::message);
  std::string out = f + f;
  REQUIRE(encode_frame(content_reply, m.content, out));
  out += f;
  const std::size_t split = f.size() / 2;
  out += f.substr(0, split);
  REQUIRE(encode_frame(message::json("{}"), out));
  out += f.substr(split);
  return out;
}

// For each of `n` messages: its frame twice, its content as a reply, its
// frame again, then its frame in two halves around a copied reply. Every
// frame echoed back to back with the one before it lies contiguous in the
// receive buffer; the pieces must still go out exactly as written.
// Every third message it then naps before reading on (as a handler that
// awaits something else would): bytes that arrive meanwhile wait in the
// receive ring (multishot) and are copied into the decoder's buffer while
// the echoes still point into it.
task<void> odd_echo(executor* ex, connection* c, int n, bool* ok) {
  const message small = message::json("{}");
  for (int i = 0; i < n; ++i) {
    result<message_view> m = co_await c->read_message();
    REQUIRE(m);
    const std::span<const std::byte> w = m->wire;
    const std::size_t split = w.size() / 2;
    result<void> r = co_await c->write_raw(w);
    REQUIRE(r);
    r = co_await c->write_raw(w);
    REQUIRE(r);
    r = co_await c->write(content_reply, m->content);
    REQUIRE(r);
    r = co_await c->write_raw(w);
    REQUIRE(r);
    r = co_await c->write_raw(w.first(split));
    REQUIRE(r);
    r = co_await c->write(small);
    REQUIRE(r);
    r = co_await c->write_raw(w.subspan(split));
    REQUIRE(r);
    if (i % 3 == 0) {
      result<void> slept = co_await sleep_for(*ex, 1ms);
      REQUIRE(slept);
    }
  }
  result<void> f = co_await c->flush();
  REQUIRE(f);
  *ok = true;
}

task<void> send_everything(ringframe::socket* s, std::string bytes) {
  // In uneven pieces, so frames straddle reads, and now and then a pause.
  std::size_t at = 0, step = 777;
  for (int i = 0; at < bytes.size(); ++i) {
    const std::size_t n = std::min(step, bytes.size() - at);
    result<std::size_t> w = co_await s->send_all(std::string_view(bytes).substr(at, n), {.timeout = 10s});
    REQUIRE(w);
    at += n;
    step = step * 3 % 20011 + 1;
    if (i % 8 == 7) {
      result<void> slept = co_await sleep_for(s->get_executor(), 1ms);
      REQUIRE(slept);
    }
  }
}

// Waits before reading (the server's sends back up: short sends, batches
// in the kernel while it goes on reading), then reads everything.
task<std::string> read_late(executor* ex, ringframe::socket* s, std::size_t n) {
  result<void> slept = co_await sleep_for(*ex, 50ms);
  CHECK(slept);
  std::string got = co_await read_exactly(s, n, 10s);
  co_return got;
}

}  // namespace

TEST_CASE("a handler echoing frames twice, content then frame, and in halves: every byte in place, on every receive path, with zero-copy sends") {
  std::string in, want;
  for (int i = 0; i < 240; ++i) {
    // 1-5 KiB frames (shared at the 1 KiB threshold), and small ones between.
    const std::size_t size = i % 5 == 4 ? 40 : 1000 + static_cast<std::size_t>(i * 37 % 4000);
    const std::string f = frame_with(size, i);
    in += f;
    want += replies_to(f);
  }
  struct path {
    const char* name;
    bool provided, multishot;
  };
  testing::on_each_backend([&](backend_kind k) {
    for (path p : {path{"provided buffers", true, false}, path{"multishot", true, true}, path{"direct", false, false}}) {
      for (std::size_t gather : {std::size_t{1}, connection_options{}.gather_threshold, std::size_t{0}}) {
        CAPTURE(p.name);
        CAPTURE(gather);
        // Zero-copy asked for: Unix sockets refuse SEND_ZC, and the batch is
        // sent again by copy (TCP, below).
        executor ex(testing::on(k));
        auto [a, b] = testing::socket_pair(ex);
        // Small socket buffers: many short sends, rebuilt gather lists.
        REQUIRE(a.set_option(SOL_SOCKET, SO_SNDBUF, 8192));
        REQUIRE(b.set_option(SOL_SOCKET, SO_RCVBUF, 8192));
        connection_options co;
        co.provided_buffers = p.provided;
        co.multishot_recv = p.multishot;
        co.gather_threshold = gather;
        co.max_unsent_bytes = 256 * 1024;
        co.zero_copy_threshold = 1;
        connection c(std::move(a), co);
        bool ok = false;
        ex.spawn(odd_echo(&ex, &c, 240, &ok));
        ex.spawn(send_everything(&b, in));
        std::string got = ex.run(read_late(&ex, &b, want.size()));
        ex.run_until_idle();
        CHECK(ok);
        CHECK(got.size() == want.size());
        CHECK(got == want);
      }
    }
  });
}

TEST_CASE("the same over TCP with zero-copy sends: SEND_ZC batches of copied bytes alternate with gather lists") {
  std::string in, want;
  for (int i = 0; i < 120; ++i) {
    const std::size_t size = i % 5 == 4 ? 40 : 1000 + static_cast<std::size_t>(i * 37 % 4000);
    const std::string f = frame_with(size, i);
    in += f;
    want += replies_to(f);
  }
  testing::on_each_backend([&](backend_kind k) {
    for (std::size_t gather : {connection_options{}.gather_threshold, std::size_t{0}}) {
      CAPTURE(gather);
      executor ex(testing::on(k));
      auto [a, b] = ex.run(testing::tcp_pair(&ex));
      REQUIRE(a.set_option(IPPROTO_TCP, TCP_NODELAY, 1));
      REQUIRE(b.set_option(IPPROTO_TCP, TCP_NODELAY, 1));
      connection_options co;
      co.gather_threshold = gather;
      co.zero_copy_threshold = 1;
      co.max_unsent_bytes = 256 * 1024;
      connection c(std::move(a), co);
      bool ok = false;
      ex.spawn(odd_echo(&ex, &c, 120, &ok));
      ex.spawn(send_everything(&b, in));
      std::string got = ex.run(read_late(&ex, &b, want.size()));
      ex.run_until_idle();
      CHECK(ok);
      CHECK(got.size() == want.size());
      CHECK(got == want);
    }
  });
}

namespace {

// Starts the send of what is queued (flush) without waiting for it.
task<void> flush_in_background(connection_handle h) {
  connection* c = h.get();
  if (!c) co_return;
  result<void> f = co_await c->flush();  // ENOTCONN once the connection is gone
  (void)f;
}

// Echoes `n` buffered messages by reference: the first half is sent (a
// batch the kernel holds: the peer reads nothing), the second half is
// queued behind it, contiguous with it in the same receive block. Then
// returns, and the connection is destroyed with both.
task<void> echo_and_leave(executor* ex, connection* c, int n, bool* ok) {
  for (int i = 0; i < n; ++i) {
    result<message_view> m = co_await c->read_message();
    REQUIRE(m);
    result<void> w = co_await c->write_raw(m->wire);
    REQUIRE(w);
    if (i == n / 2) {
      ex->spawn(flush_in_background(c->handle()));
      result<void> slept = co_await sleep_for(*ex, 20ms);
      REQUIRE(slept);
    }
  }
  *ok = true;
}

task<void> echo_all(connection* c, int n) {
  for (int i = 0; i < n; ++i) {
    result<message_view> m = co_await c->read_message();
    REQUIRE(m);
    result<void> w = co_await c->write_raw(m->wire);
    REQUIRE(w);
  }
  result<void> f = co_await c->flush();
  REQUIRE(f);
}

// Whatever arrives until the peer's end.
task<std::string> read_to_end(ringframe::socket* s) {
  std::string got;
  std::vector<std::byte> buf(1 << 16);
  for (;;) {
    result<std::size_t> r = co_await s->recv(buf, {.timeout = 10s});
    if (!r || *r == 0) break;
    got.append(reinterpret_cast<const char*>(buf.data()), *r);
  }
  co_return got;
}

task<void> send_then_flag(ringframe::socket* s, std::string bytes, bool* done) {
  result<std::size_t> w = co_await s->send_all(bytes, {.timeout = 10s});
  REQUIRE(w);
  *done = true;
}

}  // namespace

TEST_CASE("a connection destroyed with echoes pending and in flight: its receive block is reused only once let go") {
  // The first connection goes with a batch in the kernel (a piece into its
  // receive block) and a contiguous piece pending. A second connection on
  // the thread then receives other bytes into pooled blocks. What reaches
  // the first peer must be a prefix of its own echoes: never the second's
  // bytes written into a block the first's send still reads.
  testing::on_each_backend([](backend_kind k) {
    executor ex(testing::on(k));
    constexpr int n = 40;
    std::string in1, in2;
    for (int i = 0; i < n; ++i) in1 += frame_with(1500 + static_cast<std::size_t>(i % 7) * 300, i);
    for (int i = 0; i < n; ++i) in2 += frame_with(1500 + static_cast<std::size_t>(i % 7) * 300, 1000 + i);
    auto [a1, b1] = testing::socket_pair(ex);
    REQUIRE(a1.set_option(SOL_SOCKET, SO_SNDBUF, 4096));
    REQUIRE(b1.set_option(SOL_SOCKET, SO_RCVBUF, 4096));
    bool sent1 = false, ok = false;
    {
      connection_options co;
      co.provided_buffers = false;
      co.read_size = 1 << 20;  // every frame in one read, in one block
      connection c1(std::move(a1), co);
      ex.run(send_then_flag(&b1, in1, &sent1));
      REQUIRE(sent1);
      ex.run(echo_and_leave(&ex, &c1, n, &ok));
      REQUIRE(ok);
      CHECK(c1.unsent_bytes() > 0);
    }
    {
      auto [a2, b2] = testing::socket_pair(ex);
      connection_options co;
      co.provided_buffers = false;
      co.read_size = 1 << 20;  // blocks of the first one's size class
      connection c2(std::move(a2), co);
      ex.spawn(send_everything(&b2, in2));
      ex.spawn(echo_all(&c2, n));
      std::string got2 = ex.run(read_exactly(&b2, in2.size(), 10s));
      CHECK(got2 == in2);
    }
    std::string got1 = ex.run(read_to_end(&b1));
    ex.run_until_idle();
    CHECK(got1.size() < in1.size());
    CHECK(got1 == in1.substr(0, got1.size()));
  });
}

// ---- --mode app's precomputed replies ----

namespace {
std::string search_request(std::string_view value_json) {
  std::string content = "{\"action\": \"search\", \"value\": ";
  content += value_json;
  content += "}";
  std::string f;
  REQUIRE(encode_frame(message::json(content), f));
  return f;
}

const address nowhere;
task<message> answer(message_view v) { return app_handler(v, connection_info{nowhere, nullptr}); }
}  // namespace

TEST_CASE("a search hit's reply is json.dumps(ensure_ascii=False) of its answer, whatever way the value was written") {
  // The table's values, plainly and with JSON escapes (as json.dumps with
  // ensure_ascii=True writes them: the Python client's own habit is the
  // other, but both parse to the same str).
  struct {
    const char* value_json;
    const char* value;
  } cases[] = {
      {"\"morpheus\"", "morpheus"},
      {"\"morph\\u0065us\"", "morpheus"},
      {"\"ring\"", "ring"},
      {"\"\xF0\x9F\x90\xB6\"", "\xF0\x9F\x90\xB6"},
      {"\"\\ud83d\\udc36\"", "\xF0\x9F\x90\xB6"},
  };
  executor ex;
  for (auto& c : cases) {
    CAPTURE(c.value_json);
    const std::string_view hit = app_search(c.value);
    REQUIRE(!hit.empty());
    std::string want = "{\"result\": ";
    append_json_string(want, hit);  // the escaping json.dumps does (none here, but checked)
    want += "}";
    frame_decoder d;
    d.feed(search_request(c.value_json));
    message_view v;
    REQUIRE(d.next(v) == frame_decoder::status::message);
    message r = ex.run(answer(v));
    CHECK(r.content == want);
    CHECK(r.content_type == "text/json");
    CHECK(r.content_encoding == "utf-8");
  }
  // Near misses take the long way, with Python's rendering.
  frame_decoder d;
  d.feed(search_request("\"morpheus \""));
  message_view v;
  REQUIRE(d.next(v) == frame_decoder::status::message);
  message r = ex.run(answer(v));
  CHECK(r.content == "{\"result\": \"No match for \\\"morpheus \\\".\"}");
}
