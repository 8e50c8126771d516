// metrics_endpoint: a small, strict HTTP/1.1 responder for a Prometheus
// scrape, run on an executor beside (never instead of) the data path.
//
//   GET /metrics       -> 200, the body the source produces (Content-Type:
//                         text/plain; version=0.0.4), then the connection closes
//   any other path     -> 404
//   /metrics, not GET  -> 405 (Allow: GET)
//   not HTTP/1.x, a bad request line -> 400
//   headers not complete within request_timeout, or larger than
//   max_request_bytes  -> closed without a reply
//
// Every reply carries Connection: close (a scrape every few seconds gains
// nothing from keeping the connection). At most max_connections are served
// at once; more are closed at once. A query string (/metrics?x) is ignored.
#pragma once

#include <ringframe/executor.hpp>
#include <ringframe/log.hpp>
#include <ringframe/result.hpp>
#include <ringframe/socket.hpp>
#include <ringframe/task.hpp>

#include <chrono>
#include <cstddef>
#include <functional>
#include <stop_token>
#include <string>

namespace ringframe {

struct metrics_endpoint_options {
  std::chrono::nanoseconds request_timeout = std::chrono::seconds(5);
  std::size_t max_request_bytes = 8192;  // request line and headers
  std::size_t max_connections = 16;
  // One debug-level record per request ("metrics_request", the reply's
  // status as reason: the request line, a peer's bytes, is never logged) and
  // per closed slow or oversized one ("timeout", "oversized"). Empty: silent.
  std::function<void(const log_record&)> log;
};

// Produces one scrape's body, on the endpoint's executor; an error (or an
// exception) is answered with 503 and its message. The token is requested
// when the endpoint stops.
using metrics_source = std::function<task<result<std::string>>(std::stop_token)>;

// Serve `listener` (listening, on `ex`) until `stop` is requested. Returns
// when the accept loop has ended; connections still being answered end on
// their own soon after (their operations see `stop` too).
task<void> serve_metrics(executor& ex, socket listener, metrics_source source, metrics_endpoint_options o,
                         std::stop_token stop);

}  // namespace ringframe
