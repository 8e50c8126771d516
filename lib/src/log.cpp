#include <ringframe/log.hpp>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <ctime>

namespace ringframe {

namespace {
std::atomic<diagnostic_sink> diagnostics{nullptr};
}  // namespace

void set_diagnostic_sink(diagnostic_sink sink) noexcept { diagnostics.store(sink); }

void detail::report_diagnostic(log_level level, std::string_view event, std::string_view reason,
                               std::string_view head, std::string_view tail) noexcept {
  if (diagnostic_sink sink = diagnostics.load()) {
    try {
      const std::string text = std::string(head) + std::string(tail);
      sink(log_record{level, event, nullptr, reason, text});
      return;
    } catch (...) {  // no memory for the text, or a sink that cannot write: the line still goes somewhere
    }
  }
  std::fprintf(stderr, "ringframe: %.*s%.*s\n", static_cast<int>(head.size()), head.data(),
               static_cast<int>(tail.size()), tail.data());
}

const char* to_string(log_level l) noexcept {
  switch (l) {
    case log_level::error: return "error";
    case log_level::warn: return "warn";
    case log_level::info: return "info";
    case log_level::debug: return "debug";
  }
  return "info";
}

bool parse_log_level(std::string_view text, log_level& out) noexcept {
  if (text == "error") out = log_level::error;
  else if (text == "warn" || text == "warning") out = log_level::warn;
  else if (text == "info") out = log_level::info;
  else if (text == "debug") out = log_level::debug;
  else return false;
  return true;
}

namespace {
// Length of the valid UTF-8 sequence at s[i] (RFC 3629: no overlongs, no
// surrogates, nothing above U+10FFFF), or 0 if the bytes there are not one.
std::size_t utf8_sequence(std::string_view s, std::size_t i) noexcept {
  auto at = [&](std::size_t k) { return static_cast<unsigned char>(s[k]); };
  const unsigned char c = at(i);
  std::size_t n;
  unsigned char lo = 0x80, hi = 0xBF;  // the range of the second byte
  if (c < 0x80) return 1;
  if (c >= 0xC2 && c <= 0xDF) n = 2;
  else if (c >= 0xE0 && c <= 0xEF) {
    n = 3;
    if (c == 0xE0) lo = 0xA0;       // overlong
    else if (c == 0xED) hi = 0x9F;  // surrogates
  } else if (c >= 0xF0 && c <= 0xF4) {
    n = 4;
    if (c == 0xF0) lo = 0x90;       // overlong
    else if (c == 0xF4) hi = 0x8F;  // above U+10FFFF
  } else {
    return 0;
  }
  if (i + n > s.size()) return 0;
  if (at(i + 1) < lo || at(i + 1) > hi) return 0;
  for (std::size_t k = 2; k < n; ++k)
    if (at(i + k) < 0x80 || at(i + k) > 0xBF) return 0;
  return n;
}
}  // namespace

void append_text_line(std::string& out, std::string_view s) {
  static const char hex[] = "0123456789abcdef";
  for (char ch : s) {
    const unsigned char c = static_cast<unsigned char>(ch);
    if ((c < 0x20 && c != '\t') || c == 0x7F) {
      out += "\\x";
      out += hex[c >> 4];
      out += hex[c & 15];
    } else {
      out += ch;
    }
  }
}

void append_json_text(std::string& out, std::string_view s) {
  static const char hex[] = "0123456789abcdef";
  out += '"';
  for (std::size_t i = 0; i < s.size();) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    if (c == '"' || c == '\\') {
      out += '\\';
      out += static_cast<char>(c);
      ++i;
    } else if (c < 0x20 || c == 0x7F) {
      switch (c) {
        case '\n': out += "\\n"; break;
        case '\r': out += "\\r"; break;
        case '\t': out += "\\t"; break;
        default:
          out += "\\u00";
          out += hex[c >> 4];
          out += hex[c & 15];
      }
      ++i;
    } else if (c < 0x80) {
      out += static_cast<char>(c);
      ++i;
    } else if (std::size_t n = utf8_sequence(s, i); n == 0) {
      out += "\\ufffd";  // not UTF-8: replaced, so the line stays valid
      ++i;
    } else if (n == 3 && c == 0xE2 && static_cast<unsigned char>(s[i + 1]) == 0x80 &&
               (static_cast<unsigned char>(s[i + 2]) == 0xA8 || static_cast<unsigned char>(s[i + 2]) == 0xA9)) {
      out += static_cast<unsigned char>(s[i + 2]) == 0xA8 ? "\\u2028" : "\\u2029";
      i += 3;
    } else {
      out.append(s.data() + i, n);
      i += n;
    }
  }
  out += '"';
}

std::string to_json(const log_record& r, std::string_view thread) {
  using namespace std::chrono;
  const auto now = system_clock::now();
  const std::time_t secs = system_clock::to_time_t(now);
  const auto micros = duration_cast<microseconds>(now.time_since_epoch()).count() % 1000000;
  std::tm tm{};
  ::gmtime_r(&secs, &tm);
  char ts[96];  // room for any int the fields could hold (-Wformat-truncation)
  std::snprintf(ts, sizeof ts, "%04d-%02d-%02dT%02d:%02d:%02d.%06lldZ", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday,
                tm.tm_hour, tm.tm_min, tm.tm_sec, static_cast<long long>(micros));
  std::string out;
  out.reserve(160 + r.text.size() + r.reason.size());
  out += "{\"ts\":\"";
  out += ts;
  out += "\",\"level\":\"";
  out += to_string(r.level);
  out += "\",\"thread\":";
  append_json_text(out, thread);
  out += ",\"event\":";
  append_json_text(out, r.event);
  out += ",\"peer\":";
  append_json_text(out, r.peer ? r.peer->to_string() : std::string());
  out += ",\"reason\":";
  append_json_text(out, r.reason);
  out += ",\"msg\":";
  append_json_text(out, r.text);
  out += '}';
  return out;
}

}  // namespace ringframe
