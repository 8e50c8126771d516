// Messages of the framed protocol (docs/protocol.md): a 2-byte big-endian
// header length, a UTF-8 JSON header object, then content-length bytes.
//
// message_view: a decoded message, borrowed from the decoder's buffer (no
//   copy); valid until the next read from the same decoder or connection.
// message: an owned message, for building responses and requests.
#pragma once

#include <bit>
#include <cstddef>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace ringframe {

// What Python's sys.byteorder says on this machine.
constexpr std::string_view native_byteorder() noexcept {
  if constexpr (std::endian::native == std::endian::little) return "little";
  else return "big";
}

struct message_view {
  std::string_view byteorder;
  std::string_view content_type;
  std::string_view content_encoding;
  std::size_t content_length = 0;
  // The whole JSON header as received, for keys beyond the four required
  // ones (docs/protocol.md: unknown keys are kept available to handlers).
  std::string_view header_json;
  std::span<const std::byte> content;
  // At least SIMDJSON_PADDING (64) readable bytes follow `content` in memory
  // (the decoder's buffer keeps that slack), so a handler can give it to a
  // simdjson parser as it is: parser.parse(ptr, size, false), no copy.
  static constexpr std::size_t content_padding = 64;
  // The complete frame: prefix, header and content, exactly as received.
  std::span<const std::byte> wire;

  std::string_view content_text() const noexcept {
    return {reinterpret_cast<const char*>(content.data()), content.size()};
  }

  // Set by the decoder, for content_json() (json.hpp): 0 in a view built
  // by hand (its content has no padding after it); 1 from a decoder whose
  // check of the content, if any, is not kept (other content types, a
  // parser of the decoder's own, a decoder made on another thread); else
  // the number, unique to the decoding thread, of the parse that checked it.
  // One field, not two: every framed connection's coroutine frame holds a
  // view (idle memory per connection).
  unsigned long long json_tag = 0;
};

// Extra header keys with string values, written after the required four.
using header_extras = std::vector<std::pair<std::string, std::string>>;

struct message {
  std::string content_type;
  std::string content_encoding;
  std::string byteorder{native_byteorder()};
  std::string content;
  header_extras extra;

  // A text/json message, UTF-8: `json_text` must be JSON already.
  static message json(std::string json_text) {
    return {"text/json", "utf-8", std::string(native_byteorder()), std::move(json_text), {}};
  }
  static message binary(std::string bytes, std::string content_type) {
    return {std::move(content_type), "binary", std::string(native_byteorder()), std::move(bytes), {}};
  }
  // An owned copy of a view (the extra keys are not carried over).
  static message from_view(const message_view& v) {
    return {std::string(v.content_type), std::string(v.content_encoding), std::string(v.byteorder),
            std::string(v.content_text()), {}};
  }
};

}  // namespace ringframe
