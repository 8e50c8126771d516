// frame.hpp: the codec alone, no sockets.
#include <ringframe/frame.hpp>

#include "frames.hpp"

#include <doctest/doctest.h>

#include <sys/wait.h>
#include <unistd.h>

#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

using namespace ringframe;

using testing::raw_frame;

namespace {

std::string python_header(std::string_view type, std::string_view enc, std::size_t len) {
  // json.dumps default separators: ", " and ": ".
  return "{\"byteorder\": \"little\", \"content-type\": \"" + std::string(type) + "\", \"content-encoding\": \"" +
         std::string(enc) + "\", \"content-length\": " + std::to_string(len) + "}";
}

std::string encoded(const message& m) {
  std::string out;
  REQUIRE(encode_frame(m, out));
  return out;
}

std::string bytes_pattern(std::size_t n) {
  std::string s(n, '\0');
  for (std::size_t i = 0; i < n; ++i) s[i] = static_cast<char>((i * 7919) >> 3);
  return s;
}

struct decoded {
  std::string content_type, content_encoding, byteorder, content, header;
};

// Feeds `wire` in chunks of `chunk` bytes, collecting every message.
std::vector<decoded> decode_all(std::string_view wire, std::size_t chunk, frame_limits lim = {}) {
  frame_decoder d(lim);
  std::vector<decoded> out;
  for (std::size_t pos = 0; pos < wire.size(); pos += chunk) {
    d.feed(wire.substr(pos, chunk));
    message_view v;
    for (;;) {
      auto st = d.next(v);
      if (st == frame_decoder::status::need_more) break;
      REQUIRE_MESSAGE(st == frame_decoder::status::message, d.error().detail);
      out.push_back({std::string(v.content_type), std::string(v.content_encoding), std::string(v.byteorder),
                     std::string(v.content_text()), std::string(v.header_json)});
    }
  }
  CHECK(d.buffered() == 0);
  return out;
}

// Decodes one frame that must be rejected; returns the error.
frame_error reject(std::string_view wire, frame_limits lim = {}) {
  frame_decoder d(lim);
  d.feed(wire);
  message_view v;
  auto st = d.next(v);
  REQUIRE(st == frame_decoder::status::error);
  return d.error();
}

}  // namespace

TEST_CASE("encoding writes the tutorial's layout: big-endian length, JSON header, content") {
  std::string f = encoded(message::json("{\"action\": \"search\", \"value\": \"ring\"}"));
  const std::size_t hlen = (static_cast<unsigned char>(f[0]) << 8) | static_cast<unsigned char>(f[1]);
  std::string header = f.substr(2, hlen);
  CHECK(header == "{\"byteorder\":\"" + std::string(native_byteorder()) +
                      "\",\"content-type\":\"text/json\",\"content-encoding\":\"utf-8\",\"content-length\":37}");
  CHECK(f.substr(2 + hlen) == "{\"action\": \"search\", \"value\": \"ring\"}");
}

TEST_CASE("header strings are escaped as JSON requires") {
  message m = message::binary("x", "odd \"type\"\\\n\t\x01 \xF0\x9F\x90\xB0");
  m.extra = {{"note", "caf\xC3\xA9 \x1f"}};
  std::string f = encoded(m);
  auto msgs = decode_all(f, f.size());
  REQUIRE(msgs.size() == 1);
  CHECK(msgs[0].content_type == m.content_type);
  CHECK(msgs[0].header.find("\"odd \\\"type\\\"\\\\\\n\\t\\u0001 \xF0\x9F\x90\xB0\"") != std::string::npos);
  CHECK(msgs[0].header.find("\"note\":\"caf\xC3\xA9 \\u001f\"") != std::string::npos);
}

TEST_CASE("encoding refuses what would not be valid on the wire") {
  std::string out = "keep";
  CHECK(encode_frame(message::binary("x", "bad \xC3"), out).error() == frame_errc::header_not_utf8);
  CHECK(encode_frame(message::binary("x", std::string(70000, 'a')), out).error() == frame_errc::header_too_large);
  CHECK(out == "keep");  // untouched on failure
}

TEST_CASE("round trips for content sizes from 0 bytes to several MiB") {
  for (std::size_t n : {0ul, 1ul, 63ul, 64ul, 1000ul, 65535ul, 65536ul, 1ul << 20, (5ul << 20) + 3}) {
    CAPTURE(n);
    message m = message::binary(bytes_pattern(n), "binary/custom-client-binary-type");
    std::string f = encoded(m);
    for (std::size_t chunk : {f.size(), std::size_t{4096}, std::size_t{65536 + 17}}) {
      auto msgs = decode_all(f, chunk);
      REQUIRE(msgs.size() == 1);
      CHECK(msgs[0].content == m.content);
      CHECK(msgs[0].content_type == m.content_type);
      CHECK(msgs[0].content_encoding == "binary");
      CHECK(msgs[0].byteorder == native_byteorder());
    }
  }
}

TEST_CASE("a stream of messages split at every byte position decodes the same") {
  std::string wire = raw_frame(python_header("text/json", "utf-8", 17), "{\"result\": \"ok\"}\n");
  wire += encoded(message::binary("\x00\x01\x02 binary", "binary/custom-client-binary-type"));
  wire += encoded(message::json("[1,2,3]"));
  wire += encoded(message::binary("", "empty"));
  const auto whole = decode_all(wire, wire.size());
  REQUIRE(whole.size() == 4);
  // Two chunks, cut at every position.
  for (std::size_t cut = 1; cut < wire.size(); ++cut) {
    CAPTURE(cut);
    frame_decoder d;
    std::vector<std::string> got;
    for (auto part : {std::string_view(wire).substr(0, cut), std::string_view(wire).substr(cut)}) {
      d.feed(part);
      message_view v;
      while (d.next(v) == frame_decoder::status::message) got.emplace_back(v.content_text());
    }
    REQUIRE(got.size() == 4);
    for (std::size_t i = 0; i < 4; ++i) CHECK(got[i] == whole[i].content);
  }
  // One byte at a time.
  auto bytewise = decode_all(wire, 1);
  REQUIRE(bytewise.size() == 4);
  for (std::size_t i = 0; i < 4; ++i) CHECK(bytewise[i].content == whole[i].content);
}

TEST_CASE("Python's header layout, key order and extra keys are read") {
  std::string h = "{ \"content-length\" : 2 , \"x-trace\": {\"id\": [1, 2]}, \"content-encoding\": \"binary\","
                  " \"byteorder\": \"big\", \"content-type\": \"a/b\" }";
  auto msgs = decode_all(raw_frame(h, "hi"), 3);
  REQUIRE(msgs.size() == 1);
  CHECK(msgs[0].content == "hi");
  CHECK(msgs[0].byteorder == "big");
  CHECK(msgs[0].content_type == "a/b");
  CHECK(msgs[0].header == h);  // the extra key is there for handlers
}

TEST_CASE("content is handed out without a copy, and the wire span is the whole frame") {
  std::string f = encoded(message::binary("payload", "t"));
  frame_decoder d;
  auto room = d.prepare(f.size());
  std::memcpy(room.data(), f.data(), f.size());
  d.commit(f.size());
  message_view v;
  REQUIRE(d.next(v) == frame_decoder::status::message);
  CHECK(reinterpret_cast<const char*>(v.content.data()) >= reinterpret_cast<const char*>(room.data()));
  CHECK(reinterpret_cast<const char*>(v.content.data()) < reinterpret_cast<const char*>(room.data() + room.size()));
  CHECK(std::string_view(reinterpret_cast<const char*>(v.wire.data()), v.wire.size()) == f);
}

// ---- docs/protocol.md section 6: every malformed case, with its exact error ----

TEST_CASE("header length 0") {
  auto e = reject(std::string("\0\0", 2));
  CHECK(e.code == frame_errc::header_length_zero);
  CHECK_FALSE(e.in_sync);
  CHECK(e.detail == "header length is 0: a frame must carry a JSON header");
}

TEST_CASE("header that is not JSON, not UTF-8, or not an object") {
  auto e = reject(raw_frame("{\"byteorder\": \"little\",", ""));
  CHECK(e.code == frame_errc::header_not_json);
  CHECK_FALSE(e.in_sync);
  CHECK(e.detail.rfind("JSON header is not valid JSON: ", 0) == 0);

  e = reject(raw_frame("{\"byteorder\": \"l\xFFttle\", \"content-length\": 0}", ""));
  CHECK(e.code == frame_errc::header_not_utf8);
  CHECK(e.detail == "JSON header is not valid UTF-8");

  e = reject(raw_frame("[1, 2]", ""));
  CHECK(e.code == frame_errc::header_not_object);
  CHECK(e.detail == "JSON header must be an object, got an array");
  e = reject(raw_frame("\"text\"", ""));
  CHECK(e.detail == "JSON header must be an object, got a string");
}

TEST_CASE("content-length missing, negative, fractional, a string, or over the limit") {
  auto e = reject(raw_frame("{\"byteorder\": \"little\", \"content-type\": \"a\", \"content-encoding\": \"b\"}", ""));
  CHECK(e.code == frame_errc::missing_key);
  CHECK_FALSE(e.in_sync);
  CHECK(e.detail == "JSON header lacks required key \"content-length\"");

  const char* bad[][2] = {{"-5", "-5"}, {"1.5", "1.5"}, {"\"12\"", "\"12\""}, {"1e3", "1000.0"}, {"null", "null"}};
  for (auto& b : bad) {
    CAPTURE(b[0]);
    std::string h = "{\"byteorder\": \"little\", \"content-type\": \"a\", \"content-encoding\": \"b\", \"content-length\": " +
                    std::string(b[0]) + "}";
    e = reject(raw_frame(h, ""));
    CHECK(e.code == frame_errc::bad_content_length);
    CHECK_FALSE(e.in_sync);
    CHECK(e.detail.rfind("\"content-length\" must be a non-negative integer, got ", 0) == 0);
  }

  frame_limits lim;
  lim.max_content_length = 1000;
  e = reject(raw_frame(python_header("a", "b", 1001), ""), lim);
  CHECK(e.code == frame_errc::content_too_large);
  CHECK(e.detail == "\"content-length\" 1001 exceeds the limit of 1000 bytes");
  // Checked before any memory is reserved for the content.
  frame_decoder d(lim);
  d.feed(raw_frame(python_header("a", "b", 1u << 30), ""));
  message_view v;
  CHECK(d.next(v) == frame_decoder::status::error);
  CHECK(d.capacity() < 64 * 1024);
}

TEST_CASE("a missing or mistyped key other than content-length keeps the stream in sync") {
  const char* keys[] = {"byteorder", "content-type", "content-encoding"};
  for (const char* missing : keys) {
    CAPTURE(missing);
    std::string h = "{";
    for (const char* k : keys)
      if (std::string_view(k) != missing) h += "\"" + std::string(k) + "\": \"x\", ";
    h += "\"content-length\": 3}";
    std::string wire = raw_frame(h, "abc") + encoded(message::binary("next", "t"));
    frame_decoder d;
    d.feed(wire);
    message_view v;
    REQUIRE(d.next(v) == frame_decoder::status::error);
    CHECK(d.error().code == frame_errc::missing_key);
    CHECK(d.error().in_sync);
    CHECK(d.error().detail == "JSON header lacks required key \"" + std::string(missing) + "\"");
    REQUIRE(d.next(v) == frame_decoder::status::message);  // the next frame is intact
    CHECK(v.content_text() == "next");
  }
  frame_decoder d;
  d.feed(raw_frame("{\"byteorder\": \"little\", \"content-type\": 7, \"content-encoding\": \"b\", \"content-length\": 0}", ""));
  message_view v;
  REQUIRE(d.next(v) == frame_decoder::status::error);
  CHECK(d.error().code == frame_errc::bad_key_type);
  CHECK(d.error().detail == "\"content-type\" must be a string, got an integer");
}

TEST_CASE("text/json content that is not JSON, not UTF-8, or in another encoding") {
  struct bad_case {
    std::string content, encoding;
    frame_errc code;
  } cases[] = {
      {"{\"action\": ", "utf-8", frame_errc::content_not_json},
      {"", "utf-8", frame_errc::content_not_json},
      {"\"caf\xE9\"", "utf-8", frame_errc::content_not_utf8},
      {"{}", "utf-16", frame_errc::unsupported_encoding},
  };
  for (auto& c : cases) {
    CAPTURE(c.content);
    std::string wire = raw_frame(python_header("text/json", c.encoding, c.content.size()), c.content) +
                       encoded(message::json("{\"ok\": true}"));
    frame_decoder d;
    d.feed(wire);
    message_view v;
    REQUIRE(d.next(v) == frame_decoder::status::error);
    CHECK(d.error().code == c.code);
    CHECK(d.error().in_sync);
    REQUIRE(d.next(v) == frame_decoder::status::message);
    CHECK(v.content_text() == "{\"ok\": true}");
  }
  CHECK(reject(raw_frame(python_header("text/json", "utf-8", 3), "{]}")).detail.rfind(
            "text/json content is not valid JSON: ", 0) == 0);
  CHECK(reject(raw_frame(python_header("text/json", "utf-16", 2), "{}")).detail ==
        "content-encoding \"utf-16\" is not supported for text/json (use utf-8)");
}

TEST_CASE("text/json integers: 64 bits are taken, beyond is content_not_json (docs/protocol.md section 2)") {
  for (std::string n : {"18446744073709551615", "-9223372036854775808", "1e400"}) {
    CAPTURE(n);
    std::string content = "{\"value\": " + n + "}";
    frame_decoder d;
    d.feed(raw_frame(python_header("text/json", "utf-8", content.size()), content));
    message_view v;
    if (n == "1e400") {  // a float out of range is not a number the parser holds either
      REQUIRE(d.next(v) == frame_decoder::status::error);
      CHECK(d.error().code == frame_errc::content_not_json);
    } else {
      CHECK(d.next(v) == frame_decoder::status::message);
    }
  }
  for (std::string n : {"18446744073709551616", "-9223372036854775809"}) {
    CAPTURE(n);
    std::string content = "{\"value\": " + n + "}";
    const frame_error e = reject(raw_frame(python_header("text/json", "utf-8", content.size()), content));
    CHECK(e.code == frame_errc::content_not_json);
    CHECK(e.in_sync);
    CHECK(e.detail == "text/json content is not valid JSON: Problem while parsing a number");
  }
}

TEST_CASE("after an out-of-sync error the decoder stays failed") {
  frame_decoder d;
  d.feed(std::string("\0\0", 2) + encoded(message::binary("x", "t")));
  message_view v;
  CHECK(d.next(v) == frame_decoder::status::error);
  CHECK(d.next(v) == frame_decoder::status::error);
  CHECK(d.error().code == frame_errc::header_length_zero);
}

TEST_CASE("byte-at-a-time decoding never rescans: the work is linear") {
  // Every next() call on an incomplete frame is O(1): it only compares the
  // buffered count with what the frame needs. 1 MiB fed one byte at a time
  // must finish (quadratic rescanning would take minutes).
  std::string f = encoded(message::binary(bytes_pattern(1 << 20), "t"));
  auto msgs = decode_all(f, 1);
  REQUIRE(msgs.size() == 1);
  CHECK(msgs[0].content.size() == (1u << 20));
}

TEST_CASE("an idle decoder gives back a large buffer") {
  frame_decoder d;
  std::string f = encoded(message::binary(bytes_pattern(1 << 20), "t"));
  d.feed(f);
  message_view v;
  REQUIRE(d.next(v) == frame_decoder::status::message);
  CHECK(d.capacity() >= (1u << 20));
  CHECK(d.capacity() <= (1u << 20) / 4 * 5);  // a size class wastes at most a quarter (not a power of two: 2 MiB)
  CHECK(d.next(v) == frame_decoder::status::need_more);
  d.shrink_if_idle();
  CHECK(d.capacity() == 0);
}

TEST_CASE("a large buffer given back by an idle decoder is reused by the next large frame on the thread") {
  // The content of frame 2 tells where it was decoded: the same memory as
  // frame 1's means the buffer came from the thread's pool, not a fresh
  // allocation (which would fault its pages in again, zeroed).
  frame_decoder a, b;
  std::string f = encoded(message::binary(bytes_pattern(70000), "t"));
  a.feed(f);
  message_view v;
  REQUIRE(a.next(v) == frame_decoder::status::message);
  const std::byte* first = v.content.data();
  CHECK(a.capacity() == 80 * 1024);  // the pool's class at or above the frame (64 KiB * 5/4)
  CHECK(a.next(v) == frame_decoder::status::need_more);
  a.shrink_if_idle();
  CHECK(a.capacity() == 0);  // the idle decoder holds nothing
  b.feed(f);
  REQUIRE(b.next(v) == frame_decoder::status::message);
  CHECK(v.content.data() == first);
  CHECK(v.content.size() == 70000);
  CHECK(std::string_view(reinterpret_cast<const char*>(v.content.data()), v.content.size()) == bytes_pattern(70000));
}

TEST_CASE("the thread's block pool, full of one size class, frees those to keep a block of another") {
  // After one workload (here 160 KiB blocks, more than the pool's 32 MiB
  // budget of them) the next one's blocks (1 MiB) must still be pooled:
  // else each is freed and the next allocated and faulted in again.
  using detail::block_ref;
  using detail::byte_block;
  const std::size_t budget = 32u << 20, old_cap = 160 * 1024, new_cap = 1u << 20;
  REQUIRE(byte_block::round_up(old_cap) == old_cap);
  REQUIRE(byte_block::round_up(new_cap) == new_cap);
  {
    std::vector<block_ref> held;
    for (std::size_t i = 0; i < budget / old_cap + 10; ++i) held.emplace_back(byte_block::make(old_cap));
  }  // all given back: the pool keeps as many as its budget holds
  CHECK(byte_block::pooled_bytes() >= budget - old_cap);
  { block_ref big(byte_block::make(new_cap)); }  // given back: kept?
  const std::size_t pooled = byte_block::pooled_bytes();
  block_ref again(byte_block::make(new_cap));
  CHECK(byte_block::pooled_bytes() + new_cap == pooled);  // taken from the pool, not allocated
  CHECK(pooled <= budget + (16u << 20));                  // (16 MiB: the 16 KiB blocks' own limit)
}

TEST_CASE("error replies are framed text/json") {
  CHECK(error_reply_json("bad \"key\"") == "{\"error\":\"bad \\\"key\\\"\"}");
}

TEST_CASE("a repeated header is recognised byte for byte, never by length alone") {
  // Same length, different bytes: each must be parsed for what it says.
  std::string a = raw_frame(python_header("a/x", "binary", 1), "1");
  std::string b = raw_frame(python_header("b/y", "binary", 1), "2");
  std::string bad = raw_frame("{\"byteorder\": \"little\", \"content-tipe\": \"a/x\", \"content-encoding\": \"binary\", \"content-length\": 1}", "3");
  frame_decoder d;
  d.feed(a + b + a + a + bad + a);
  message_view v;
  std::vector<std::string> types;
  for (int i = 0; i < 6; ++i) {
    auto st = d.next(v);
    if (st == frame_decoder::status::error) {
      CHECK(d.error().detail == "JSON header lacks required key \"content-type\"");
      types.push_back("error");
    } else {
      REQUIRE(st == frame_decoder::status::message);
      types.emplace_back(std::string(v.content_type) + ":" + std::string(v.content_text()));
    }
  }
  CHECK(types == std::vector<std::string>{"a/x:1", "b/y:2", "a/x:1", "a/x:1", "error", "a/x:1"});
}

// next() takes a shortcut for a whole frame whose header repeats the last
// one (frame_decoder::next_repeat): it must hand out what the full path
// would, and leave to that path whatever it does not cover.
TEST_CASE("a repeated header's shortcut: checked content, frames in pieces, a prefix that differs") {
  SUBCASE("text/json content is checked in every repeat") {
    const std::string h = python_header("text/json", "utf-8", 2);
    frame_decoder d;
    d.feed(raw_frame(h, "{}") + raw_frame(h, "{]") + raw_frame(h, "[]"));
    message_view v;
    REQUIRE(d.next(v) == frame_decoder::status::message);
    CHECK(v.content_text() == "{}");
    REQUIRE(d.next(v) == frame_decoder::status::error);
    CHECK(d.error().code == frame_errc::content_not_json);
    REQUIRE(d.next(v) == frame_decoder::status::message);  // in sync
    CHECK(v.content_text() == "[]");
  }
  SUBCASE("repeats fed one byte at a time, and all at once, give the same views") {
    const std::string h = python_header("a/x", "binary", 3);
    std::string wire;
    for (char c : std::string("abcdef")) wire += raw_frame(h, std::string(3, c));
    for (std::size_t chunk : {std::size_t{1}, wire.size()}) {
      CAPTURE(chunk);
      frame_decoder d;
      std::vector<std::string> got;
      for (std::size_t at = 0; at < wire.size(); at += chunk) {
        d.feed(std::string_view(wire).substr(at, chunk));
        message_view v;
        while (d.next(v) == frame_decoder::status::message) {
          CHECK(v.byteorder == "little");
          CHECK(v.content_type == "a/x");
          CHECK(v.content_encoding == "binary");
          CHECK(v.content_length == 3);
          CHECK(v.header_json == h);
          CHECK(std::string_view(reinterpret_cast<const char*>(v.wire.data()), v.wire.size()) ==
                raw_frame(h, v.content_text()));
          got.emplace_back(v.content_text());
        }
      }
      CHECK(got == std::vector<std::string>{"aaa", "bbb", "ccc", "ddd", "eee", "fff"});
    }
  }
  SUBCASE("the same header bytes under a longer prefix are a different header") {
    const std::string h = python_header("a/x", "binary", 1);
    // The prefix says one byte more: the header is h plus a space, and the
    // content is the byte after it (valid JSON either way).
    std::string longer = raw_frame(h + " ", "Z");
    frame_decoder d;
    d.feed(raw_frame(h, "A") + longer + raw_frame(h, "B"));
    message_view v;
    REQUIRE(d.next(v) == frame_decoder::status::message);
    CHECK(v.content_text() == "A");
    REQUIRE(d.next(v) == frame_decoder::status::message);
    CHECK(v.header_json == h + " ");
    CHECK(v.content_text() == "Z");
    REQUIRE(d.next(v) == frame_decoder::status::message);
    CHECK(v.content_text() == "B");
    CHECK(d.next(v) == frame_decoder::status::need_more);
  }
}

// ---- issue 10, defect 5: lengths near SIZE_MAX ----
//
// Every length sum in the codec is checked, and a configured content limit
// is clamped to frame_limits::hard_max_content_length, so a hostile
// content-length can neither wrap the frame length (handing out bytes that
// were never received, e.g. an earlier client's request from a pooled
// buffer) nor make the decoder ask for an impossible allocation.

namespace {

constexpr std::size_t hard_cap = frame_limits::hard_max_content_length;
static_assert(hard_cap == std::size_t{1} << 30, "the documented cap: 1 GiB");

std::string header_with_length(std::string_view length_json) {
  return "{\"byteorder\": \"little\", \"content-type\": \"a\", \"content-encoding\": \"b\", \"content-length\": " +
         std::string(length_json) + "}";
}

frame_limits unlimited() {
  frame_limits lim;
  lim.max_content_length = SIZE_MAX;  // as `ringframe-server --max-content 18446744073709551615` sets it
  return lim;
}

}  // namespace

TEST_CASE("a configured content limit above the hard cap is clamped to it") {
  frame_decoder d(unlimited());
  CHECK(d.limits().max_content_length == hard_cap);
  frame_limits lim;
  lim.max_content_length = 1000;
  CHECK(frame_decoder(lim).limits().max_content_length == 1000);  // a lower limit is kept
}

TEST_CASE("content-length near SIZE_MAX is refused cleanly: no wrap, no huge allocation") {
  const std::uint64_t max = UINT64_MAX;
  // The header below is the same length for every 20-digit value.
  const std::size_t hlen = header_with_length(std::to_string(max)).size();
  const std::uint64_t values[] = {
      max,                       // 2^64 - 1: 2 + hlen + clen wraps to hlen + 1
      18446744073709500000ull,   // wraps to a short frame; the read-ahead asked for ~2^64 bytes
      max - (2 + hlen) + 1,      // wraps to exactly 0
      max - (2 + hlen) + 11,     // wraps to 10, shorter than the header itself
      max - 0xffff,              // the buffer growth bound (2 + 0xffff + limit + read size) wraps
      (std::uint64_t{1} << 63),  // 2^63 and its neighbours: signed/unsigned confusion
      (std::uint64_t{1} << 63) - 1,
      (std::uint64_t{1} << 63) + 1,
      10000000000000000000ull,
      hard_cap + 1ull,  // just over the effective limit
  };
  for (std::uint64_t clen : values) {
    CAPTURE(clen);
    frame_decoder d(unlimited());
    // Enough bytes after the header to satisfy any wrapped, short frame length.
    d.feed(raw_frame(header_with_length(std::to_string(clen)), std::string(64, 'x')));
    message_view v;
    auto st = d.next(v);
    if (st == frame_decoder::status::message)
      FAIL_CHECK("a message with content-length " << v.content.size() << " was handed out from " << d.buffered()
                                                  << " buffered bytes");
    CHECK(st == frame_decoder::status::error);
    CHECK(d.error().code == frame_errc::content_too_large);
    CHECK_FALSE(d.error().in_sync);  // the content is not read: the connection is closed, as for any over-limit frame
    CHECK(d.error().detail ==
          "\"content-length\" " + std::to_string(clen) + " exceeds the limit of " + std::to_string(hard_cap) + " bytes");
    CHECK(d.capacity() < 64 * 1024);
    // What a connection does next: ask for room to read into. It must not
    // ask the allocator for ~2^64 bytes (ASan: allocation-size-too-big).
    CHECK(d.prepare().size() < 1024 * 1024);
    CHECK(d.next(v) == frame_decoder::status::error);  // stays failed
  }
}

TEST_CASE("content-length at the hard cap is accepted without reserving it up front") {
  frame_decoder d(unlimited());
  d.feed(raw_frame(header_with_length(std::to_string(hard_cap)), "abc"));
  message_view v;
  CHECK(d.next(v) == frame_decoder::status::need_more);
  CHECK(d.capacity() < 64 * 1024);
  CHECK(d.buffered() == header_with_length(std::to_string(hard_cap)).size() + 2 + 3);
}

TEST_CASE("a refused huge content-length never hands out another client's bytes from a pooled buffer") {
  // Client A's request passes through a decoder whose buffer then goes back
  // to the per-thread pool (an idle connection).
  const std::string secret = "SECRET-OF-CLIENT-A:" + std::string(200, 's');
  {
    frame_decoder a;
    a.feed(raw_frame(python_header("binary/custom-client-binary-type", "binary", secret.size()), secret));
    message_view v;
    REQUIRE(a.next(v) == frame_decoder::status::message);
    CHECK(v.content_text() == secret);
    CHECK(a.next(v) == frame_decoder::status::need_more);
    a.shrink_if_idle();
  }
  // Client B, on a server configured with --max-content 18446744073709551615,
  // sends only a header claiming 2^64-1 bytes of content.
  frame_decoder b(unlimited());
  b.feed(raw_frame(header_with_length("18446744073709551615"), ""));
  message_view v;
  auto st = b.next(v);
  if (st == frame_decoder::status::message) {
    // The app handler would answer "First 10 bytes of request: " + these.
    std::string leaked(reinterpret_cast<const char*>(v.content.data()), 24);
    FAIL_CHECK("content handed out beyond the received bytes: " << leaked);
  }
  REQUIRE(st == frame_decoder::status::error);
  CHECK(b.error().code == frame_errc::content_too_large);
  // And a fresh decoder taking the same pooled buffer sees only its own bytes.
  b.shrink_if_idle();
  frame_decoder c(unlimited());
  c.feed(raw_frame(python_header("t", "binary", 3), "new"));
  REQUIRE(c.next(v) == frame_decoder::status::message);
  CHECK(v.content_text() == "new");
  CHECK(v.wire.size() == c.buffered());
}

TEST_CASE("content-length as a float, an exponent, a negative or a huge integer is refused cleanly") {
  const char* bad[] = {"1e30", "1E+2", "1.0", "0.5e1", "-1", "-9223372036854775808", "-1e30", "true", "[]", "{}",
                       "\"18446744073709551615\""};
  for (const char* b : bad) {
    CAPTURE(b);
    frame_decoder d(unlimited());
    d.feed(raw_frame(header_with_length(b), std::string(64, 'x')));
    message_view v;
    REQUIRE(d.next(v) == frame_decoder::status::error);
    CHECK(d.error().code == frame_errc::bad_content_length);
    CHECK_FALSE(d.error().in_sync);
    CHECK(d.error().detail.rfind("\"content-length\" must be a non-negative integer, got ", 0) == 0);
    CHECK(d.capacity() < 64 * 1024);
  }
  // Integers beyond 64 bits are not representable: the JSON parser refuses
  // the header, which closes the connection just the same.
  for (const char* b : {"18446744073709551616", "99999999999999999999999999999"}) {
    CAPTURE(b);
    frame_decoder d(unlimited());
    d.feed(raw_frame(header_with_length(b), ""));
    message_view v;
    REQUIRE(d.next(v) == frame_decoder::status::error);
    CHECK(d.error().code == frame_errc::header_not_json);
    CHECK_FALSE(d.error().in_sync);
    CHECK(d.error().detail == "JSON header is not valid JSON: Problem while parsing a number");
  }
  // -0 is the integer 0, as Python's json module reads it.
  auto msgs = decode_all(raw_frame(header_with_length("-0"), ""), 1);
  REQUIRE(msgs.size() == 1);
  CHECK(msgs[0].content.empty());
}

TEST_CASE("prepare() and feed() refuse sizes whose sum would overflow, leaving the decoder usable") {
  frame_decoder d;
  std::string f = encoded(message::binary("payload", "t"));
  d.feed(std::string_view(f).substr(0, 5));
  for (std::size_t n : {SIZE_MAX, SIZE_MAX - 5, SIZE_MAX - 100, SIZE_MAX / 2 + 1}) {
    CAPTURE(n);
    CHECK_THROWS_AS(d.prepare(n), std::length_error);
    // A span that large cannot exist; feed() must refuse it before reading it.
    std::span<const std::byte> huge(reinterpret_cast<const std::byte*>(f.data()), n);
    CHECK_THROWS_AS(d.feed(huge), std::length_error);
  }
  CHECK(d.buffered() == 5);
  d.feed(std::string_view(f).substr(5));
  message_view v;
  REQUIRE(d.next(v) == frame_decoder::status::message);
  CHECK(v.content_text() == "payload");
}

TEST_CASE("the encoder refuses content whose frame size would overflow, leaving the output untouched") {
  std::string out = "keep";
  const char dummy[1] = {};
  for (std::size_t n : {SIZE_MAX, SIZE_MAX - 50, out.max_size() - 10, out.max_size() + 1}) {
    CAPTURE(n);
    // Never read: the size is refused before the content is touched.
    std::span<const std::byte> huge(reinterpret_cast<const std::byte*>(dummy), n);
    auto r = encode_frame(header_fields{"t", "binary"}, huge, out);
    REQUIRE_FALSE(r);
    CHECK(r.error() == frame_errc::content_too_large);
    CHECK(out == "keep");
  }
}

TEST_CASE("commit() of more than prepare() gave is a contract violation that stops the process") {
  // The kernel never returns more than the room it was given, so this is a
  // caller's bug that has written past the buffer: counting those bytes would
  // hand out memory that was never received. Checked in every build.
  pid_t pid = fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    (void)!std::freopen("/dev/null", "w", stderr);  // the abort's one-line diagnostic
    frame_decoder d;
    auto room = d.prepare(16);
    d.commit(room.size());
    d.commit(1);  // must not return
    _exit(0);
  }
  int status = 0;
  REQUIRE(waitpid(pid, &status, 0) == pid);
  CHECK(WIFSIGNALED(status));
  CHECK(WTERMSIG(status) == SIGABRT);
}

// The encoder remembers the last header it built without extra fields (a
// repeat is copied, not escaped again): every change of any field, extras
// between, and an error between must still give exactly the right bytes.
TEST_CASE("encode_frame: repeated, alternating and changed headers encode exactly") {
  auto expect = [](std::string_view bo, std::string_view type, std::string_view enc, std::string_view content,
                   std::string_view extra = {}) {
    std::string h = "{\"byteorder\":\"" + std::string(bo) + "\",\"content-type\":\"" + std::string(type) +
                    "\",\"content-encoding\":\"" + std::string(enc) + "\",\"content-length\":" +
                    std::to_string(content.size()) + std::string(extra) + "}";
    return testing::raw_frame(h, content);
  };
  message big = message::binary("q\xC3", "t");
  message a = message::json(R"({"result": "x"})");
  a.byteorder = "little";
  message b = message::binary(std::string(300, 'b'), "binary/custom-server-binary-type");
  b.byteorder = "little";
  message c = b;
  c.content_encoding = "utf-16";
  message d = b;
  d.byteorder = "big";
  message e = a;
  e.extra = {{"x-id", "7"}};
  message q = a;
  q.content_type = "text/\"quoted\"";
  for (int round = 0; round < 2; ++round) {
    CHECK(encoded(a) == expect("little", "text/json", "utf-8", a.content));
    CHECK(encoded(a) == expect("little", "text/json", "utf-8", a.content));
    a.content += "!";  // another length, same fields
    CHECK(encoded(a) == expect("little", "text/json", "utf-8", a.content));
    CHECK(encoded(b) == expect("little", "binary/custom-server-binary-type", "binary", b.content));
    CHECK(encoded(c) == expect("little", "binary/custom-server-binary-type", "utf-16", c.content));
    CHECK(encoded(d) == expect("big", "binary/custom-server-binary-type", "binary", d.content));
    CHECK(encoded(e) == expect("little", "text/json", "utf-8", e.content, ",\"x-id\":\"7\""));
    CHECK(encoded(a) == expect("little", "text/json", "utf-8", a.content));
    CHECK(encoded(q) == expect("little", "text/\\\"quoted\\\"", "utf-8", q.content));
    CHECK(encoded(q) == expect("little", "text/\\\"quoted\\\"", "utf-8", q.content));
    std::string out = "keep";
    big.content_type = "bad \xC3";
    CHECK(encode_frame(big, out).error() == frame_errc::header_not_utf8);
    CHECK(out == "keep");  // untouched, and the remembered header is not this one
    CHECK(encoded(q) == expect("little", "text/\\\"quoted\\\"", "utf-8", q.content));
  }
  // A header too large is refused every time, also when repeated.
  message huge = message::binary("x", std::string(70000, 'a'));
  std::string out;
  CHECK(encode_frame(huge, out).error() == frame_errc::header_too_large);
  CHECK(encode_frame(huge, out).error() == frame_errc::header_too_large);
  CHECK(out.empty());
  message near = message::binary("x", std::string(65000, 'a'));
  CHECK(encode_frame(near, out));  // fits (65,000 + the rest < 65,535)
  out.clear();
  CHECK(encode_frame(near, out));
  CHECK(out.size() > 65000);
}
