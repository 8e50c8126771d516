// json.hpp (content_json: the decoder's parse handed out, or a new one) and
// append_json_string's word-at-a-time scan.
#include <ringframe/frame.hpp>
#include <ringframe/json.hpp>

#include <doctest/doctest.h>

#include <cstdio>
#include <string>
#include <string_view>
#include <thread>

using namespace ringframe;

namespace {

std::string frame_of(std::string_view type, std::string_view content) {
  std::string out;
  REQUIRE(encode_frame(header_fields{type, "utf-8"}, std::as_bytes(std::span(content.data(), content.size())), out));
  return out;
}

// The value of "k" in the object `r`, or "?" when it is not there.
std::string value_of(simdjson::simdjson_result<simdjson::dom::element> r) {
  simdjson::dom::object obj;
  if (r.get(obj)) return "?";
  std::string_view v;
  if (obj["k"].get(v)) return "?";
  return std::string(v);
}

// The escape, one byte at a time: what the word-at-a-time scan must equal.
std::string reference_escape(std::string_view s) {
  std::string out = "\"";
  for (unsigned char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      case '\b': out += "\\b"; break;
      case '\f': out += "\\f"; break;
      default:
        if (c < 0x20) {
          char u[8];
          std::snprintf(u, sizeof u, "\\u%04x", c);
          out += u;
        } else {
          out.push_back(static_cast<char>(c));
        }
    }
  }
  return out + "\"";
}

}  // namespace

TEST_CASE("content_json hands out the decoder's document, and parses again once it has been replaced") {
  frame_decoder a, b;
  a.feed(frame_of("text/json", R"({"k":"first"})"));
  b.feed(frame_of("text/json", R"({"k":"second"})"));
  message_view ma, mb;
  REQUIRE(a.next(ma) == frame_decoder::status::message);
  CHECK(ma.json_tag > 1);
  CHECK(value_of(content_json(ma)) == "first");
  // Another decoder on the thread parses: a's document is gone from the
  // shared parser, and content_json must not hand out b's in its place.
  REQUIRE(b.next(mb) == frame_decoder::status::message);
  CHECK(value_of(content_json(ma)) == "first");
  CHECK(value_of(content_json(mb)) == "second");  // parsed again too (ma's parse replaced it)
  CHECK(value_of(content_json(ma)) == "first");

  // A parse of a header alone (binary content: no content parse) replaces
  // the document as well.
  frame_decoder c;
  c.feed(frame_of("binary/x", "{}"));
  message_view mc;
  REQUIRE(a.next(ma) == frame_decoder::status::need_more);
  a.feed(frame_of("text/json", R"({"k":"third"})"));
  REQUIRE(a.next(ma) == frame_decoder::status::message);
  REQUIRE(c.next(mc) == frame_decoder::status::message);
  CHECK(value_of(content_json(ma)) == "third");
}

TEST_CASE("content_json parses what the decoder did not: other types, validation off, views built by hand") {
  frame_decoder d;
  d.feed(frame_of("binary/thing", R"({"k":"bin"})"));
  message_view m;
  REQUIRE(d.next(m) == frame_decoder::status::message);
  CHECK(m.json_tag == 1);
  CHECK(value_of(content_json(m)) == "bin");

  frame_limits off;
  off.validate_json_content = false;
  frame_decoder unchecked(off);
  unchecked.feed(frame_of("text/json", R"({"k":"unchecked"})"));
  unchecked.feed(frame_of("text/json", "not json"));
  REQUIRE(unchecked.next(m) == frame_decoder::status::message);
  CHECK(value_of(content_json(m)) == "unchecked");
  REQUIRE(unchecked.next(m) == frame_decoder::status::message);
  CHECK(content_json(m).error() != simdjson::SUCCESS);

  // No padding after a hand-built view's content: it is copied first (ASan
  // reports a read past `text` otherwise).
  std::string text = R"({"k":"by hand"})";
  message_view hand;
  hand.content_type = "text/json";
  hand.content = std::as_bytes(std::span(text.data(), text.size()));
  CHECK(value_of(content_json(hand)) == "by hand");
}

TEST_CASE("content_json of a decoder given its own parser parses again in the thread's parser") {
  simdjson::dom::parser own;
  frame_decoder d(frame_limits{}, &own);
  d.feed(frame_of("text/json", R"({"k":"own"})"));
  message_view m;
  REQUIRE(d.next(m) == frame_decoder::status::message);
  CHECK(value_of(content_json(m)) == "own");
}

TEST_CASE("a decoder made on one thread and used on another parses with that other thread's parser") {
  // d2 is made here and used on thread B: its parses must not overwrite
  // this thread's parser, which holds the document of d1's view.
  frame_decoder d1, d2;
  d1.feed(frame_of("text/json", R"({"k":"here"})"));
  message_view v1;
  REQUIRE(d1.next(v1) == frame_decoder::status::message);
  simdjson::simdjson_result<simdjson::dom::element> here = content_json(v1);
  std::string on_b;
  std::thread b([&] {
    d2.feed(frame_of("text/json", R"({"k":"on B, a longer value than here"})"));
    message_view v2;
    if (d2.next(v2) == frame_decoder::status::message) on_b = value_of(content_json(v2));
  });
  b.join();
  CHECK(on_b == "on B, a longer value than here");
  CHECK(value_of(here) == "here");
  CHECK(value_of(content_json(v1)) == "here");
}

TEST_CASE("append_json_string escapes every byte at every offset exactly as byte-by-byte escaping does") {
  // Each byte value at each position of strings up to 40 bytes long, in
  // plain text: every word alignment and the tail after the last full word.
  for (std::size_t len = 1; len <= 40; ++len)
    for (std::size_t pos = 0; pos < len; ++pos)
      for (int c = 0; c < 256; ++c) {
        std::string s(len, 'a');
        s[pos] = static_cast<char>(c);
        std::string got;
        append_json_string(got, s);
        if (got != reference_escape(s)) {
          FAIL_CHECK("len " << len << " pos " << pos << " byte " << c << ": " << got);
          return;
        }
      }
  // UTF-8 (bytes >= 0x80) beside characters to escape, and long plain runs.
  const std::string mixed = "caf\xC3\xA9 \"quoted\"\t\xF0\x9F\x90\xB0 back\\slash \x01\x1f end";
  std::string got;
  append_json_string(got, mixed + std::string(100, 'x') + mixed);
  CHECK(got == reference_escape(mixed + std::string(100, 'x') + mixed));
}
