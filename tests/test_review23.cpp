// review23: a second look at 855c315 ("Per-message path: ~25% fewer
// instructions"): frame_decoder::next_repeat and the repeated-header check
// moved into next_slow, try_read_buffered decoding into the reader's slot,
// the inlined awaitables, send_queue::failed(), result<void>'s compaction.
#include "frames.hpp"

#include <ringframe/frame.hpp>
#include <ringframe/json.hpp>
#include <ringframe/result.hpp>

#include <doctest/doctest.h>

#include <algorithm>
#include <cstring>
#include <random>
#include <string>
#include <vector>

using namespace ringframe;
using testing::raw_frame;

namespace {

std::string hdr(std::string_view type, std::string_view enc, std::size_t len, std::string_view extra = {}) {
  return "{\"byteorder\": \"little\", \"content-type\": \"" + std::string(type) + "\", \"content-encoding\": \"" +
         std::string(enc) + "\", \"content-length\": " + std::to_string(len) + std::string(extra) + "}";
}

struct outcome {
  int st = 0;
  frame_errc code{};
  std::string byteorder, type, enc, header, content, wire;
  std::size_t content_length = 0;
  bool operator==(const outcome&) const = default;
};

outcome take(frame_decoder& d, frame_decoder::status st, const message_view& v) {
  outcome o;
  o.st = static_cast<int>(st);
  if (st == frame_decoder::status::error) o.code = d.error().code;
  if (st == frame_decoder::status::message) {
    o.byteorder = v.byteorder;
    o.type = v.content_type;
    o.enc = v.content_encoding;
    o.header = v.header_json;
    o.content = v.content_text();
    o.wire = std::string(reinterpret_cast<const char*>(v.wire.data()), v.wire.size());
    o.content_length = v.content_length;
    // content_json must work on every handed-out text/json view
    if (v.content_type == "text/json" && d.limits().validate_json_content) {
      auto j = content_json(v);
      CHECK(!j.error());
    }
  }
  return o;
}

std::string frame_of(std::mt19937& rng) {
  static const std::vector<std::pair<std::string, std::string>> pool = {
      {hdr("a/x", "binary", 3), "abc"},
      {hdr("a/x", "binary", 3), "xyz"},
      {hdr("a/x", "binary", 3) + " ", "ABC"},  // same bytes, longer prefix
      {hdr("b/y", "binary", 0), ""},
      {hdr("text/json", "utf-8", 2), "{}"},
      {hdr("text/json", "utf-8", 2), "{]"},                          // in-sync error
      {hdr("text/json", "latin-1", 2), "[]"},                        // in-sync error
      {"{\"content-type\": \"a/x\", \"content-encoding\": \"b\", \"content-length\": 1}", "Q"},  // no byteorder
      {"{\"byteorder\": 5, \"content-type\": \"a/x\", \"content-encoding\": \"b\", \"content-length\": 1}", "Q"},
      {hdr("a/x", "binary", 3, ", \"pad\": \"" + std::string(600, 'p') + "\""), "big"},  // not cached
      {hdr("c/z", "utf-8", 5), "hello"},
  };
  const auto& [h, c] = pool[rng() % pool.size()];
  return raw_frame(h, c);
}

}  // namespace

TEST_CASE("review23: a decoder's messages, chunked any way, are those of a fresh decoder per frame") {
  for (bool validate : {true, false}) {
    for (unsigned seed = 1; seed <= 300; ++seed) {
      CAPTURE(seed);
      CAPTURE(validate);
      std::mt19937 rng(seed);
      frame_limits lim;
      lim.validate_json_content = validate;
      std::vector<std::string> frames;
      const int n = 1 + static_cast<int>(rng() % 24);
      for (int i = 0; i < n; ++i) frames.push_back(frame_of(rng));
      // Reference: each frame alone, in a decoder of its own (no cache).
      std::vector<outcome> want;
      for (const std::string& f : frames) {
        frame_decoder d(lim);
        d.feed(f);
        message_view v;
        auto st = d.next(v);
        want.push_back(take(d, st, v));
        REQUIRE(d.next(v) == frame_decoder::status::need_more);
      }
      std::string wire;
      for (const std::string& f : frames) wire += f;
      frame_decoder d(lim);
      std::vector<outcome> got;
      std::size_t at = 0;
      const int mode = static_cast<int>(rng() % 3);
      while (at < wire.size()) {
        std::size_t chunk = mode == 0 ? wire.size() : 1 + rng() % (mode == 1 ? 7 : 200);
        chunk = std::min(chunk, wire.size() - at);
        if (rng() % 2) {
          d.feed(std::string_view(wire).substr(at, chunk));
        } else {
          auto room = d.prepare(chunk);
          REQUIRE(room.size() >= chunk);
          std::memcpy(room.data(), wire.data() + at, chunk);
          d.commit(chunk);
        }
        at += chunk;
        for (;;) {
          message_view v;
          auto st = d.next(v);
          if (st == frame_decoder::status::need_more) break;
          got.push_back(take(d, st, v));
          if (rng() % 4 == 0) d.drop_message();
        }
      }
      CHECK(got == want);
    }
  }
}
