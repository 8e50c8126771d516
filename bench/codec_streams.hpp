// The codec benchmark's streams and decoders, shared by codec_bench.cpp
// (Google Benchmark) and codec_bench_handtimed.cpp (its fallback): both
// measure exactly the same work.
#pragma once

#include <ringframe/frame.hpp>
#include <ringframe/message.hpp>

#if RINGFRAME_BENCH_NLOHMANN
#include <nlohmann/json.hpp>
#endif

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <string>

namespace codec_bench {

using namespace ringframe;

// `distinct`: every header differs (an extra "seq" key), so no message can
// reuse the previous header's parse.
inline std::string make_stream(std::size_t content_size, std::size_t target_bytes, std::size_t& count, bool distinct = false) {
  std::string content(content_size, '\0');
  for (std::size_t i = 0; i < content_size; ++i) content[i] = static_cast<char>(i * 31 + 7);
  message m = message::binary(content, "binary/custom-client-binary-type");
  std::string one;
  if (!encode_frame(m, one)) std::abort();
  count = std::max<std::size_t>(1, target_bytes / (one.size() + (distinct ? 16 : 0)));
  std::string s;
  s.reserve(count * (one.size() + 24));
  for (std::size_t i = 0; i < count; ++i) {
    if (distinct) {
      m.extra = {{"seq", std::to_string(i)}};
      if (!encode_frame(m, s)) std::abort();
    } else {
      s += one;
    }
  }
  return s;
}

// The tutorial client's search request (41 bytes of content, its header as
// the tutorial writes it), over and over: as text/json, which the decoder
// checks with a DOM parse, or the same bytes typed binary, which it does
// not. The difference is what --mode app pays per request for the
// protocol's "text/json content is JSON" (docs/protocol.md).
inline std::string make_app_stream(bool as_json, std::size_t target_bytes, std::size_t& count) {
  const std::string content = "{\"action\": \"search\", \"value\": \"morpheus\"}";
  const std::string header = std::string("{\"byteorder\": \"little\", \"content-type\": \"") +
                             (as_json ? "text/json" : "binary/custom-client-binary-type") +
                             "\", \"content-encoding\": \"utf-8\", \"content-length\": " +
                             std::to_string(content.size()) + "}";
  std::string one;
  one += static_cast<char>(header.size() >> 8);
  one += static_cast<char>(header.size() & 0xff);
  one += header;
  one += content;
  count = std::max<std::size_t>(1, target_bytes / one.size());
  std::string s;
  s.reserve(count * one.size());
  for (std::size_t i = 0; i < count; ++i) s += one;
  return s;
}

// Messages decoded; `bytes` gets their content bytes (for the caller to sink).
inline std::size_t decode_ours(const std::string& stream, std::size_t chunk, std::size_t& bytes) {
  frame_decoder d;
  std::size_t n = 0;
  bytes = 0;
  message_view v;
  for (std::size_t pos = 0; pos < stream.size(); pos += chunk) {
    const std::size_t len = std::min(chunk, stream.size() - pos);
    auto room = d.prepare(len);
    std::memcpy(room.data(), stream.data() + pos, len);  // what recv would do
    d.commit(len);
    frame_decoder::status st;
    while ((st = d.next(v)) == frame_decoder::status::message) {
      ++n;
      bytes += v.content.size();
    }
    if (st == frame_decoder::status::error) std::abort();
  }
  return n;
}

#if RINGFRAME_BENCH_NLOHMANN
// How most users write it: append to a std::string, parse the header with
// nlohmann::json, copy the content out, erase what was consumed.
inline std::size_t decode_nlohmann(const std::string& stream, std::size_t chunk, std::size_t& bytes) {
  std::string buf;
  std::size_t n = 0;
  bytes = 0;
  for (std::size_t pos = 0; pos < stream.size(); pos += chunk) {
    buf.append(stream, pos, std::min(chunk, stream.size() - pos));
    std::size_t at = 0;
    for (;;) {
      if (buf.size() - at < 2) break;
      std::size_t hlen = (static_cast<unsigned char>(buf[at]) << 8) | static_cast<unsigned char>(buf[at + 1]);
      if (buf.size() - at < 2 + hlen) break;
      auto header = nlohmann::json::parse(buf.begin() + static_cast<long>(at + 2),
                                          buf.begin() + static_cast<long>(at + 2 + hlen));
      std::size_t clen = header.at("content-length").get<std::size_t>();
      if (buf.size() - at < 2 + hlen + clen) break;
      std::string content_type = header.at("content-type").get<std::string>();
      std::string encoding = header.at("content-encoding").get<std::string>();
      std::string byteorder = header.at("byteorder").get<std::string>();
      std::string content = buf.substr(at + 2 + hlen, clen);
      bytes += content.size() + content_type.size() + encoding.size() + byteorder.size();
      ++n;
      at += 2 + hlen + clen;
    }
    buf.erase(0, at);
  }
  return n;
}
#endif

}  // namespace codec_bench
