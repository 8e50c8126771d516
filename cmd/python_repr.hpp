// Python's repr() of a bytes object, so that the binaries print what the
// tutorial's scripts print: b'Hello, world', b"it's", b'\xf0\x9f\x90\xb0'.
#pragma once

#include <cstddef>
#include <span>
#include <string>
#include <string_view>

namespace ringframe::cli {

inline std::string python_bytes_repr(std::span<const std::byte> bytes) {
  bool has_single = false, has_double = false;
  for (std::byte b : bytes) {
    has_single |= b == std::byte{'\''};
    has_double |= b == std::byte{'"'};
  }
  char quote = (has_single && !has_double) ? '"' : '\'';
  std::string out = "b";
  out += quote;
  static const char hex[] = "0123456789abcdef";
  for (std::byte byte : bytes) {
    auto c = static_cast<unsigned char>(byte);
    if (c == static_cast<unsigned char>(quote) || c == '\\') {
      out += '\\';
      out += static_cast<char>(c);
    } else if (c == '\t') out += "\\t";
    else if (c == '\n') out += "\\n";
    else if (c == '\r') out += "\\r";
    else if (c < 0x20 || c >= 0x7f) {
      out += "\\x";
      out += hex[c >> 4];
      out += hex[c & 15];
    } else out += static_cast<char>(c);
  }
  out += quote;
  return out;
}

inline std::string python_bytes_repr(std::string_view s) {
  return python_bytes_repr(std::as_bytes(std::span(s.data(), s.size())));
}

}  // namespace ringframe::cli
