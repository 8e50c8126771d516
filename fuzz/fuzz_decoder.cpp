// libFuzzer target: the incremental decoder under arbitrary bytes and
// arbitrary chunkings. The first two input bytes seed the chunk sizes.
// Checks: no crash or sanitizer report; the same messages whatever the
// chunking; every message re-encodes to a frame that decodes to the same
// fields and content (round trip).
#include <ringframe/frame.hpp>

#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

using namespace ringframe;

namespace {
struct got {
  std::string type, enc, order, content;
  bool operator==(const got&) const = default;
};

std::vector<got> decode(std::string_view in, unsigned seed, frame_limits lim) {
  frame_decoder d(lim);
  std::vector<got> out;
  std::size_t pos = 0;
  while (pos < in.size()) {
    seed = seed * 1103515245u + 12345u;
    std::size_t chunk = 1 + (seed >> 16) % 97;
    if ((seed & 0x300) == 0) chunk = in.size();  // sometimes all at once
    chunk = std::min(chunk, in.size() - pos);
    d.feed(in.substr(pos, chunk));
    pos += chunk;
    message_view v;
    for (;;) {
      auto st = d.next(v);
      if (st == frame_decoder::status::need_more) break;
      if (st == frame_decoder::status::error) {
        if (d.error().detail.empty()) std::abort();  // every error says what was wrong
        if (!d.error().in_sync) return out;
        continue;
      }
      out.push_back({std::string(v.content_type), std::string(v.content_encoding), std::string(v.byteorder),
                     std::string(v.content_text())});
    }
  }
  return out;
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 2) return 0;
  unsigned seed = data[0] | (data[1] << 8);
  std::string_view in(reinterpret_cast<const char*>(data) + 2, size - 2);
  frame_limits lim;
  lim.max_content_length = 1 << 16;
  auto a = decode(in, seed, lim);
  auto b = decode(in, seed ^ 0x5a5a, lim);
  if (a != b) std::abort();  // chunking must not change the result
  for (const got& g : a) {
    message m{g.type, g.enc, g.order, g.content, {}};
    std::string wire;
    if (!encode_frame(m, wire)) continue;  // e.g. a header string that is not UTF-8 JSON-able
    auto again = decode(wire, seed, lim);
    if (again.size() != 1 || !(again[0] == g)) std::abort();
  }
  return 0;
}
