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

#include <simdjson.h>

namespace ringframe::cli {

// Python's repr() of a str.
inline std::string python_str_repr(std::string_view s) {
  bool has_single = s.find('\'') != std::string_view::npos, has_double = s.find('"') != std::string_view::npos;
  char quote = (has_single && !has_double) ? '"' : '\'';
  std::string out(1, quote);
  static const char hex[] = "0123456789abcdef";
  for (char ch : s) {
    auto c = static_cast<unsigned char>(ch);
    if (c == static_cast<unsigned char>(quote) || c == '\\') {
      out += '\\';
      out += ch;
    } else if (c == '\n') out += "\\n";
    else if (c == '\r') out += "\\r";
    else if (c == '\t') out += "\\t";
    else if (c < 0x20 || c == 0x7f) {
      out += "\\x";
      out += hex[c >> 4];
      out += hex[c & 15];
    } else out += ch;  // UTF-8 (emoji included) prints as itself, as in Python 3
  }
  out += quote;
  return out;
}

// Python's repr() of what json.loads returns for `e`.
inline std::string python_json_repr(simdjson::dom::element e) {
  using T = simdjson::dom::element_type;
  switch (e.type()) {
    case T::OBJECT: {
      std::string out = "{";
      bool first = true;
      simdjson::dom::object obj = e.get_object().value_unsafe();
      for (auto kv : obj) {
        if (!first) out += ", ";
        first = false;
        out += python_str_repr(kv.key) + ": " + python_json_repr(kv.value);
      }
      return out + "}";
    }
    case T::ARRAY: {
      std::string out = "[";
      bool first = true;
      simdjson::dom::array arr = e.get_array().value_unsafe();
      for (auto v : arr) {
        if (!first) out += ", ";
        first = false;
        out += python_json_repr(v);
      }
      return out + "]";
    }
    case T::STRING: return python_str_repr(e.get_string().value_unsafe());
    case T::BOOL: return e.get_bool().value_unsafe() ? "True" : "False";
    case T::NULL_VALUE: return "None";
    default: return simdjson::minify(e);
  }
}

}  // namespace ringframe::cli
