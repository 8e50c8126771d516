// A ring buffer lent to the decoder (buffer_ring::lend, frame_decoder::adopt,
// receive_stream::outcome): on epoll a read between frames becomes the
// decoder's buffer instead of being copied into it; the id gets fresh memory;
// a partial frame left in the large buffer is moved to a small one before
// the connection waits for its rest (frame_decoder::trim_partial).
#include "loopback.hpp"
#include "stream_reader.hpp"

#include <ringframe/buffer_ring.hpp>
#include <ringframe/detail/byte_block.hpp>
#include <ringframe/executor.hpp>
#include <ringframe/frame.hpp>
#include <ringframe/message.hpp>
#include <ringframe/receive_stream.hpp>

#include <doctest/doctest.h>

#include <sys/socket.h>

#include <cstring>
#include <string>
#include <thread>

using namespace ringframe;
using namespace std::chrono_literals;

namespace {

using testing::on;
using testing::on_each_backend;
using testing::one_read;
using testing::read_once;
using testing::reader;

constexpr std::size_t small_block = detail::byte_block::smallest_class;

std::string frame_of(const std::string& content) {
  std::string f;
  REQUIRE(encode_frame(message::binary(content, "t"), f));
  return f;
}

detail::block_ref block_with(const std::string& bytes, std::size_t cap) {
  detail::block_ref b(detail::byte_block::make(cap));
  std::memcpy(b->data(), bytes.data(), bytes.size());
  return b;
}

bool inside(const detail::byte_block* b, const void* p) {
  return p >= static_cast<const void*>(b->data()) && p < static_cast<const void*>(b->data() + b->capacity());
}

}  // namespace

TEST_CASE("a ring without a kernel ring lends a buffer whole; its id never hands out the lent memory again") {
  const std::size_t size = 64 * 1024;
  buffer_ring br(nullptr, 4, size, 1);
  REQUIRE(br.lends());
  std::uint16_t id = 0;
  REQUIRE(br.take(id));
  std::span<std::byte> d = br.data(id, size);
  std::memset(d.data(), 'x', size);
  for (std::size_t i = 0; i < buffer_ring::padding; ++i) CHECK(d.data()[size + i] == std::byte{0});

  detail::block_ref lent = br.lend(id);
  REQUIRE(lent);
  CHECK(lent->data() == d.data());
  CHECK(lent->capacity() >= size);
  br.recycle(id);

  // Taken again while the lent block is held: other memory.
  std::uint16_t again = 0;
  REQUIRE(br.take(again));
  CHECK(again == id);
  std::byte* second = br.data(again, size).data();
  CHECK(second != lent->data());
  CHECK(lent->data()[size - 1] == std::byte{'x'});  // untouched

  // The lent block goes back to the thread's pool; the id's next block is
  // that one (steady state: no allocation per read).
  detail::block_ref second_lent = br.lend(again);
  br.recycle(again);
  std::byte* const pooled = second_lent->data();
  second_lent.reset();
  REQUIRE(br.take(again));
  CHECK(br.data(again, 1).data() == pooled);
  br.recycle(again);
}

TEST_CASE("frame_decoder::adopt decodes in place; trim_partial keeps only a small partial frame, in 16 KiB") {
  frame_decoder d;
  CHECK(d.can_adopt());
  const std::string third = frame_of(std::string(100, '3'));
  const std::string batch = frame_of("one") + frame_of("two") + third.substr(0, 10);
  detail::block_ref b = block_with(batch, 64 * 1024);
  const detail::byte_block* raw = b.get();
  d.adopt(std::move(b), batch.size());
  CHECK(d.capacity() == 64 * 1024);
  CHECK(d.block() == raw);

  message_view m;
  REQUIRE(d.next(m) == frame_decoder::status::message);
  CHECK(m.content_text() == "one");
  CHECK(static_cast<const void*>(m.wire.data()) == static_cast<const void*>(raw->data()));  // no copy
  REQUIRE(d.next(m) == frame_decoder::status::message);
  CHECK(m.content_text() == "two");
  CHECK(inside(raw, m.content.data()));
  CHECK(d.next(m) == frame_decoder::status::need_more);
  CHECK(d.mid_frame());
  CHECK_FALSE(d.can_adopt());  // a partial frame is buffered

  d.trim_partial(0, false);  // as before a ring read: the bytes kept, in the smallest block
  CHECK(d.capacity() == small_block);
  CHECK(d.block() != raw);
  CHECK(d.buffered() == 10);
  d.feed(std::string_view(third).substr(10));
  REQUIRE(d.next(m) == frame_decoder::status::message);
  CHECK(m.content_text() == std::string(100, '3'));
  CHECK(d.next(m) == frame_decoder::status::need_more);
  CHECK(d.can_adopt());  // the message was handed out, nothing else is buffered
}

TEST_CASE("trim_partial sizes the buffer for the rest of the frame and the next read, or leaves it") {
  const std::string big = frame_of(std::string(20000, 'B'));
  const std::string batch = frame_of("x") + big.substr(0, 300);  // its header is in: 20 KB to come
  message_view m;
  {
    frame_decoder d;
    d.adopt(block_with(batch, 64 * 1024), batch.size());
    REQUIRE(d.next(m) == frame_decoder::status::message);
    CHECK(d.next(m) == frame_decoder::status::need_more);
    REQUIRE(d.frame_length() == big.size());
    // Before a direct read of 16 KiB: the 300 bytes, the rest of the frame
    // (more than 16 KiB): 24 KiB, the class that holds the frame.
    d.trim_partial(16 * 1024, true);
    CHECK(d.capacity() == detail::byte_block::round_up(big.size()));
    CHECK(d.buffered() == 300);
    // The read's room is there: prepare() moves nothing.
    const detail::byte_block* before = d.block();
    std::span<std::byte> room = d.prepare(16 * 1024);
    CHECK(d.block() == before);
    REQUIRE(room.size() >= big.size() - 300);
    std::memcpy(room.data(), big.data() + 300, big.size() - 300);
    d.commit(big.size() - 300);
    REQUIRE(d.next(m) == frame_decoder::status::message);
    CHECK(m.content_text() == std::string(20000, 'B'));
  }
  {
    // A frame that needs the whole block (or more) stays where it is.
    const std::string huge = frame_of(std::string(100000, 'H'));
    const std::string b2 = frame_of("x") + huge.substr(0, 300);
    frame_decoder d;
    d.adopt(block_with(b2, 64 * 1024), b2.size());
    REQUIRE(d.next(m) == frame_decoder::status::message);
    CHECK(d.next(m) == frame_decoder::status::need_more);
    const detail::byte_block* before = d.block();
    d.trim_partial(16 * 1024, true);
    CHECK(d.block() == before);
    CHECK(d.capacity() == 64 * 1024);
  }
}

TEST_CASE("a block a send shares stays whole when the decoder adopts the next one") {
  frame_decoder d;
  d.adopt(block_with(frame_of("keep me"), 64 * 1024), frame_of("keep me").size());
  message_view m;
  REQUIRE(d.next(m) == frame_decoder::status::message);
  detail::block_ref held = d.share();  // as a send of m.wire by reference does
  CHECK(d.next(m) == frame_decoder::status::need_more);
  REQUIRE(d.can_adopt());
  const std::string next = frame_of("next");
  d.adopt(block_with(next, 64 * 1024), next.size());
  CHECK(d.block() != held.get());
  CHECK(m.content_text() == "keep me");  // still held: ASan would see freed memory
  message_view n;
  REQUIRE(d.next(n) == frame_decoder::status::message);
  CHECK(n.content_text() == "next");
}

// Through a receive_stream on a socket: a batch of more than 16 KiB
// becomes the decoder's buffer on epoll (its 64 KiB ring buffer; a copy
// would have made a 24 KiB one), and the partial frame it ends in leaves it
// for a buffer sized for the next read before that read.
TEST_CASE("a large read between frames lends its ring buffer to the decoder on epoll; a partial frame leaves it") {
  on_each_backend([](backend_kind k) {
    executor ex(on(k));
    auto pair = testing::socket_pair(ex);
    frame_decoder decoder;
    reader r;
    receive_stream stream(pair.first, decoder, {}, &reader::done, &r);
    REQUIRE(ex.receive_buffers());

    const std::string last = frame_of(std::string(3000, 'z'));
    std::string batch;
    for (char c : {'a', 'b', 'c'}) batch += frame_of(std::string(6000, c));
    batch += last.substr(0, 1000);
    REQUIRE(batch.size() > small_block);
    REQUIRE(::send(pair.second.fd(), batch.data(), batch.size(), 0) == static_cast<ssize_t>(batch.size()));
    message_view m;
    std::string got;
    std::size_t read = 0;
    while (read < batch.size()) {  // io_uring's 16 KiB ring buffers take two reads
      const int n = ex.run(one_read(&stream, &r, !decoder.mid_frame()));
      REQUIRE(n > 0);
      read += static_cast<std::size_t>(n);
      if (k == backend_kind::epoll) {
        CHECK(read == batch.size());  // one recv: the 64 KiB buffer, lent
        CHECK(decoder.capacity() == 64 * 1024);
      }
      while (decoder.next(m) == frame_decoder::status::message) got += m.content_text().substr(0, 1);
    }
    CHECK(got == "abc");
    REQUIRE(decoder.mid_frame());

    // The rest of the last frame: a read mid-frame, into the decoder.
    const std::string rest = last.substr(1000);
    REQUIRE(::send(pair.second.fd(), rest.data(), rest.size(), 0) == static_cast<ssize_t>(rest.size()));
    for (int i = 0; i < 10 && decoder.next(m) != frame_decoder::status::message; ++i)
      REQUIRE(ex.run(one_read(&stream, &r, false)) > 0);
    CHECK(m.content_text() == std::string(3000, 'z'));
    // Out of the 64 KiB buffer before the read: the 1,000 bytes and a read
    // step (16 KiB) past them, 20 KiB. Without the trim: 64 KiB.
    if (k == backend_kind::epoll) CHECK(decoder.capacity() == detail::byte_block::round_up(1000 + 16 * 1024));
    CHECK(decoder.capacity() <= 2 * small_block);
  });
}

// A small batch is copied as before (a request being handled holds 16 KiB,
// not the 64 KiB ring buffer).
TEST_CASE("a small read between frames is copied into the smallest block, on both backends") {
  on_each_backend([](backend_kind k) {
    executor ex(on(k));
    auto pair = testing::socket_pair(ex);
    frame_decoder decoder;
    reader r;
    receive_stream stream(pair.first, decoder, {}, &reader::done, &r);
    const std::string req = frame_of(std::string(60, 'q'));
    REQUIRE(::send(pair.second.fd(), req.data(), req.size(), 0) == static_cast<ssize_t>(req.size()));
    REQUIRE(ex.run(one_read(&stream, &r, true)) == static_cast<int>(req.size()));
    message_view m;
    REQUIRE(decoder.next(m) == frame_decoder::status::message);
    CHECK(m.content_text() == std::string(60, 'q'));
    CHECK(decoder.capacity() == small_block);
  });
}

// A block let go after its thread's pool is gone (a thread-local, or a
// static executor's receive buffers, destroyed after the pool): freed, not
// pushed onto the destroyed pool (ASan: use after free).
namespace {
struct late_holder {
  detail::block_ref ref;
};
}  // namespace

TEST_CASE("a block released after its thread's pool was destroyed is freed") {
  bool made = false;
  std::thread t([&made] {
    // Constructed before the pool (its first use is below), so destroyed after it.
    thread_local late_holder holder;
    holder.ref = detail::block_ref(detail::byte_block::make(64 * 1024));
    made = holder.ref && holder.ref->capacity() == 64 * 1024;
  });
  t.join();
  CHECK(made);
}
