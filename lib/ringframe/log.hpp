// log_record: one event a server reports (a connection opened or closed,
// malformed input, a timeout, a drain, an error), with its fields apart so
// that a sink can write it as text or as a JSON line.
//
//   server_options o;
//   o.log_records = [](const log_record& r) {
//     if (r.level <= log_level::warn) std::puts(to_json(r, "0").c_str());
//   };
//
// `text` is the line the plain-text log has always printed for the event
// (server_options::log receives it through append_text_line), so a sink can
// keep the text format unchanged and add the fields only where it wants them.
#pragma once

#include <ringframe/address.hpp>

#include <string>
#include <string_view>

namespace ringframe {

// In order of severity: a sink that keeps levels <= some level filters.
enum class log_level { error, warn, info, debug };
const char* to_string(log_level l) noexcept;
// "error", "warn" (or "warning"), "info", "debug"; false for anything else.
bool parse_log_level(std::string_view text, log_level& out) noexcept;

struct log_record {
  log_level level = log_level::info;
  // A short fixed name: "connected", "closed", "rejected", "malformed",
  // "truncated", "timeout", "connection_error", "handler_error",
  // "accept_error", "drain", "stop", "counters", ... (README: "Running in
  // production" lists them).
  std::string_view event;
  // The peer the event concerns, or null.
  const address* peer = nullptr;
  // Why, when the event has a reason: the malformed input's detail, the
  // timeout's kind, the error's message. May hold any bytes (a detail can
  // quote the peer's input).
  std::string_view reason;
  // The whole line as the text log prints it.
  std::string_view text;
};

// `s` as a JSON string, quotes included, appended to `out`. Unlike
// frame.hpp's append_json_string (for header strings already checked to be
// UTF-8), it takes any bytes: '"',
// '\\' and control characters are escaped, U+2028/U+2029 too (JavaScript
// reads them as line ends), and bytes that are not valid UTF-8 become
// U+FFFD, so the output is always valid JSON in valid UTF-8.
void append_json_text(std::string& out, std::string_view s);

// `s` appended to `out` as the text of one log line: control bytes (a
// record's text may quote a peer's bytes) written as \xNN, the tab kept;
// printable text, UTF-8 included, unchanged. So a newline in it cannot start
// a line of the peer's making, nor a NUL cut it short where it is printed
// with %s.
void append_text_line(std::string& out, std::string_view s);

// The library's own diagnostics, outside any server's records: the backend
// fallback ("backend_fallback", warn: io_uring refused, epoll used; said once
// per process), a kernel feature asked for and missing ("feature_missing",
// warn; once), a spawned task that ended with an exception ("task_error",
// error). Each is a line on stderr, "ringframe: <text>", unless a sink is set:
// a program with a log format of its own (ringframe-server --log-format
// json) sets one, once, before its first executor. Null restores stderr. The
// sink may be called on any thread, and more than one at once.
using diagnostic_sink = void (*)(const log_record&);
void set_diagnostic_sink(diagnostic_sink sink) noexcept;

namespace detail {
// To the sink, or to stderr; the text is `head` then `tail`. Allocates
// nothing on the way to stderr, so a bad_alloc can be reported: a sink that
// cannot be given the record (its text not made) gets the line on stderr.
void report_diagnostic(log_level level, std::string_view event, std::string_view reason, std::string_view head,
                       std::string_view tail = {}) noexcept;
}  // namespace detail

// One JSON object on one line (no newline at the end):
// {"ts":"2026-12-01T15:45:55.123456Z","level":"info","thread":"0",
//  "event":"connected","peer":"127.0.0.1:40312","reason":"","msg":"Connected by ('127.0.0.1', 40312)"}
// `ts` is the wall clock (UTC) when this is called; `peer` is "" when the
// record has none.
std::string to_json(const log_record& r, std::string_view thread);

}  // namespace ringframe
