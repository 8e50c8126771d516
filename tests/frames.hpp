// Test helper: frames built by hand, byte for byte as a peer (e.g. Python)
// writes them, independent of the encoder under test.
#pragma once

#include <string>
#include <string_view>

namespace testing {

inline std::string raw_frame(std::string_view header_json, std::string_view content) {
  std::string f;
  f.push_back(static_cast<char>(header_json.size() >> 8));
  f.push_back(static_cast<char>(header_json.size() & 0xff));
  f += header_json;
  f += content;
  return f;
}

}  // namespace testing
