#include <ringframe/detail/saturating_time.hpp>
#include <ringframe/metrics.hpp>
#include <ringframe/metrics_endpoint.hpp>
#include <ringframe/timer.hpp>

#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <memory>
#include <string_view>

namespace ringframe {

namespace {

// What the accept loop and every connection share; the last one frees it.
struct endpoint_state {
  executor* ex;
  metrics_source source;
  metrics_endpoint_options opts;
  std::stop_token stop;
  std::size_t live = 0;
};

void log_request(const endpoint_state& st, const address& peer, std::string_view reason, const std::string& text) {
  if (st.opts.log) st.opts.log(log_record{log_level::debug, "metrics_request", &peer, reason, text});
}

std::string reply(std::string_view status, std::string_view extra_headers, std::string_view content_type,
                  std::string_view body) {
  std::string r = "HTTP/1.1 ";
  r += status;
  r += "\r\nContent-Type: ";
  r += content_type;
  r += "\r\nContent-Length: ";
  r += std::to_string(body.size());
  r += "\r\nConnection: close\r\n";
  r += extra_headers;
  r += "\r\n";
  r += body;
  return r;
}

bool token_char(char c) {
  // RFC 9110 tchar
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
         std::string_view("!#$%&'*+-.^_`|~").find(c) != std::string_view::npos;
}

// The reply to a request line (without its CRLF); `wants_body` when it is GET /metrics.
std::string_view classify(std::string_view line, bool& wants_body) {
  wants_body = false;
  const std::size_t sp1 = line.find(' ');
  const std::size_t sp2 = sp1 == std::string_view::npos ? sp1 : line.find(' ', sp1 + 1);
  if (sp2 == std::string_view::npos || line.find(' ', sp2 + 1) != std::string_view::npos) return "400 Bad Request";
  std::string_view method = line.substr(0, sp1);
  std::string_view target = line.substr(sp1 + 1, sp2 - sp1 - 1);
  std::string_view version = line.substr(sp2 + 1);
  if (method.empty() || target.empty() || target[0] != '/') return "400 Bad Request";
  for (char c : method)
    if (!token_char(c)) return "400 Bad Request";
  for (char c : target)
    if (static_cast<unsigned char>(c) <= 0x20 || c == 0x7F) return "400 Bad Request";
  if (version != "HTTP/1.1" && version != "HTTP/1.0") return "400 Bad Request";
  if (std::size_t q = target.find('?'); q != std::string_view::npos) target = target.substr(0, q);
  if (target != "/metrics") return "404 Not Found";
  if (method != "GET") return "405 Method Not Allowed";
  wants_body = true;
  return "200 OK";
}

// Send `r`, then close without losing it: FIN first, then read (and drop)
// what the client still sends for a moment, since closing with unread input
// would reset the connection and could destroy the reply.
task<void> send_and_close(socket* s, std::string r, std::chrono::steady_clock::time_point deadline) {
  auto left = [&] { return std::max(deadline - std::chrono::steady_clock::now(), std::chrono::steady_clock::duration(1)); };
  result<std::size_t> sent = co_await s->send_all(r, {.timeout = left()});
  if (!sent) co_return;
  result<void> sh = co_await s->shutdown(SHUT_WR);
  if (!sh) co_return;
  std::byte scratch[1024];
  for (int i = 0; i < 64; ++i) {
    result<std::size_t> n = co_await s->recv(scratch, {.timeout = std::min<std::chrono::nanoseconds>(left(), std::chrono::seconds(1))});
    if (!n || *n == 0) co_return;
  }
}

// The connection's slot (endpoint_state::live), given back on every way out,
// an exception included: a slot kept by a connection that threw (a metrics
// source that throws, bad_alloc) would be lost for good, and once
// max_connections were lost every later scrape would be closed unanswered.
struct live_slot {
  endpoint_state* st;
  explicit live_slot(endpoint_state* s) noexcept : st(s) {}
  live_slot(const live_slot&) = delete;
  live_slot& operator=(const live_slot&) = delete;
  ~live_slot() { --st->live; }
};

task<void> metrics_connection(std::shared_ptr<endpoint_state> st, socket s, address peer) {
  live_slot slot(st.get());
  const auto deadline = detail::saturating_add(std::chrono::steady_clock::now(), st->opts.request_timeout);
  s.set_stop_token(st->stop);
  std::string req;
  std::size_t end = std::string::npos;
  char buf[1024];
  while (end == std::string::npos) {
    if (req.size() >= st->opts.max_request_bytes) {
      log_request(*st, peer, "oversized", "metrics request from " + peer.to_string() + " too large: closed");
      break;
    }
    auto left = deadline - std::chrono::steady_clock::now();
    if (left <= std::chrono::nanoseconds(0)) {
      log_request(*st, peer, "timeout", "metrics request from " + peer.to_string() + " too slow: closed");
      break;
    }
    const std::size_t room = std::min(sizeof buf, st->opts.max_request_bytes - req.size());
    result<std::size_t> n = co_await s.recv(std::as_writable_bytes(std::span(buf, room)), {.timeout = left});
    if (!n) {
      if (n.error() == std::errc::timed_out)
        log_request(*st, peer, "timeout", "metrics request from " + peer.to_string() + " too slow: closed");
      break;
    }
    if (*n == 0) break;  // the client gave up
    const std::size_t from = req.size() < 3 ? 0 : req.size() - 3;
    req.append(buf, *n);
    end = req.find("\r\n\r\n", from);
    if (end != std::string::npos && end + 4 > st->opts.max_request_bytes) {
      log_request(*st, peer, "oversized", "metrics request from " + peer.to_string() + " too large: closed");
      end = std::string::npos;
      break;
    }
  }
  if (end != std::string::npos) {
    const std::string_view line = std::string_view(req).substr(0, req.find("\r\n"));
    bool wants_body = false;
    std::string_view status = classify(line, wants_body);
    std::string response;
    if (wants_body) {
      // A source that throws is answered like one that fails (503), not
      // left to end the connection unanswered.
      result<std::string> body(std::errc::io_error);
      std::string why;
      try {
        task<result<std::string>> produce = st->source(st->stop);
        body = co_await std::move(produce);
        if (!body) why = body.error().message();
      } catch (const std::exception& e) {
        why = e.what();
      } catch (...) {
        why = "the metrics source threw";
      }
      if (body) {
        response = reply(status, {}, prometheus_content_type, *body);
      } else {
        status = "503 Service Unavailable";
        response = reply(status, {}, "text/plain; charset=utf-8", "metrics unavailable: " + why + "\n");
      }
    } else {
      std::string_view extra = status.starts_with("405") ? "Allow: GET\r\n" : "";
      response = reply(status, extra, "text/plain; charset=utf-8", std::string(status.substr(4)) + "\n");
    }
    log_request(*st, peer, status, "metrics request from " + peer.to_string() + ": " + std::string(status));
    task<void> sending = send_and_close(&s, std::move(response), detail::saturating_add(deadline, std::chrono::seconds(5)));
    co_await std::move(sending);
  }
}

}  // namespace

task<void> serve_metrics(executor& ex, socket listener, metrics_source source, metrics_endpoint_options o,
                         std::stop_token stop) {
  auto st = std::make_shared<endpoint_state>(endpoint_state{&ex, std::move(source), std::move(o), stop, 0});
  for (;;) {
    address peer;
    result<socket> s = errno_code(ENOMEM);
    try {
      s = co_await listener.accept(&peer, {.stop = &stop});
    } catch (const std::exception&) {
      // Its submission threw (epoll: bad_alloc; io_uring: a submission queue
      // that cannot drain): paused and retried below like EMFILE, rather than
      // ending the endpoint, and closing its listener, for good.
    }
    if (!s) {
      if (stop.stop_requested() || ex.stopping()) break;
      if (s.error() == std::errc::operation_canceled) break;
      // EMFILE and the like: wait a little rather than spin; ECONNABORTED: next.
      result<void> slept = co_await sleep_for(ex, std::chrono::milliseconds(100), &stop);
      if (!slept) break;
      continue;
    }
    if (st->live >= st->opts.max_connections) continue;  // closed as it goes out of scope
    ++st->live;
    try {
      ex.spawn(metrics_connection(st, std::move(*s), peer));
    } catch (const std::exception&) {
      // bad_alloc (its frame, its wrapper, the ready queue): the coroutine
      // never ran, so its live_slot cannot give the slot back; the
      // connection is closed unanswered and the endpoint goes on.
      --st->live;
    }
  }
}

}  // namespace ringframe
