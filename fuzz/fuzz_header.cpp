// libFuzzer target: JSON header validation. The input is used as the JSON
// header of one frame (and its tail as content), followed by a good frame.
// Checks: no crash; an error is reported with a detail; after an in-sync
// error the good frame still decodes. A second decoder has no configured
// content limit (max_content_length = SIZE_MAX, clamped to the hard cap):
// whatever content-length the header claims, a message it hands out lies
// within the bytes fed to it (no wrapped frame length).
#include <ringframe/frame.hpp>

#include <cstdint>
#include <cstddef>
#include <cstdlib>
#include <string>

using namespace ringframe;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size > 0xffff) return 0;
  std::string_view header(reinterpret_cast<const char*>(data), size);
  std::string wire;
  wire.push_back(static_cast<char>(size >> 8));
  wire.push_back(static_cast<char>(size & 0xff));
  wire += header;
  wire += std::string(64, 'c');  // room for a small content-length
  std::string good;
  if (!encode_frame(message::binary("ok", "t"), good)) std::abort();
  frame_limits lim;
  lim.max_content_length = 64;
  frame_decoder d(lim);
  d.feed(wire);
  message_view v;
  auto st = d.next(v);
  if (st == frame_decoder::status::error && d.error().detail.empty()) std::abort();
  if (st == frame_decoder::status::message && v.content.size() > 64) std::abort();

  frame_limits unlimited;
  unlimited.max_content_length = SIZE_MAX;
  frame_decoder u(unlimited);
  if (u.limits().max_content_length != frame_limits::hard_max_content_length) std::abort();
  u.feed(wire);
  st = u.next(v);
  if (st == frame_decoder::status::error && u.error().detail.empty()) std::abort();
  if (st == frame_decoder::status::message) {
    if (v.wire.size() > wire.size() || v.content.size() > wire.size()) std::abort();
    if (v.content.data() + v.content.size() != v.wire.data() + v.wire.size()) std::abort();
  }
  if (u.capacity() > 2 * wire.size() + 64 * 1024) std::abort();  // nothing reserved for claimed content
  return 0;
}
