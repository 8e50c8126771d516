#include <ringframe/handler.hpp>
#include <ringframe/stats.hpp>

#include <ringframe/detail/join.hpp>

#include <algorithm>
#include <exception>
#include <memory>
#include <optional>

namespace ringframe {

namespace {

// What framed() keeps for every connection it serves.
struct framed_setup {
  connection_handler handler;
  connection_options options;
};

// A connection, listed on its server while it is open (so that a snapshot
// counts its counters); unlisted however the coroutine ends.
struct tracked_connection : detail::open_counters {
  tracked_connection(server* s, connection* c) noexcept {
    conn = c;
    s->track(this);
  }
  tracked_connection(const tracked_connection&) = delete;
  tracked_connection& operator=(const tracked_connection&) = delete;
  ~tracked_connection() { unlink(); }
};

// The connection lives in this frame (no allocation of its own) and options
// are read from the shared setup, not copied: an idle connection's memory is
// mostly these frames (bench/RESULTS.md).
task<void> run_framed(socket s, connection_info info, const framed_setup* setup) {
  // Listed on the server, which tells it of a stop or a drain (no stop
  // callbacks of its own): listed before its first operation, so that a
  // stop from now on reaches it, and one before is refused by the stream
  // and the queue (the socket's token, and the read stop, below).
  connection conn = detail::server_access::make(std::move(s), setup->options);
  detail::server_access::set_read_stop(conn, info.read_stop);
  std::exception_ptr failed;
  {
    tracked_connection open(info.server, &conn);
    // A handler that throws before it is a task (a plain function that
    // returns one) ends like one that threw later: before, the frame
    // unwound from here, and the request it never read made the close a
    // reset, with no counters added.
    std::optional<task<void>> t;
    try {
      t.emplace(setup->handler(conn, info));
    } catch (...) {
      failed = std::current_exception();
    }
    // Awaited without rethrowing (start_child): the handler's helpers
    // (connection_info::helpers) use `conn`, and are stopped and joined
    // before it goes, however the handler ended. Then its exception, or the
    // first helper's, goes on to the server, which logs it, once the
    // connection has closed as any other does: the replies written before
    // the throw go out, and the peer sees a clean end, not a reset.
    if (t) {
      detail::start_child<void> handling{t->handle()};
      co_await handling;
    }
    if (info.helpers_slot && *info.helpers_slot) {
      (*info.helpers_slot)->request_stop();
      try {
        co_await (*info.helpers_slot)->join();
      } catch (...) {
        if (!failed) failed = std::current_exception();
      }
    }
    if (t) {
      try {
        t->take_result();
      } catch (...) {
        failed = std::current_exception();  // the handler's own, before its helpers'
      }
    }
    co_await conn.close_gracefully(setup->options.linger_timeout);
  }
  detail::add_connection_counters(conn, info.server->stats());  // unlisted above: counted once
  if (failed) std::rethrow_exception(failed);
}

task<void> request_loop(connection& conn, connection_info info, const request_handler* h) {
  for (;;) {
    result<message_view> m = co_await conn.read_message();
    if (!m) {
      bool go_on = co_await answer_read_error(conn, info, m.error());
      if (go_on) continue;
      co_return;
    }
    message reply;
    bool failed = false;
    std::string failure;  // co_await is not allowed inside a catch block
    try {
      task<message> t = (*h)(*m, info);
      reply = co_await std::move(t);
    } catch (const std::exception& e) {
      failed = true;
      failure = e.what();
    } catch (...) {
      failed = true;
      failure = "unknown exception";
    }
    if (failed) {
      // The request was well-formed, so the stream is in sync: answer it.
      info.server->log({log_level::error, "handler_error", &info.peer, failure,
                        "Handler failed for " + info.peer.to_python() + ": " + failure});
      result<void> w = co_await conn.write_error("internal error: " + failure);
      if (!w) co_return;
      continue;
    }
    result<void> w = co_await conn.write(reply);
    if (!w) {
      if (w.error().category() == frame_category()) {  // the handler built a bad message
        const std::string why = w.error().message();
        info.server->log({log_level::error, "handler_error", &info.peer, why,
                          "Handler reply to " + info.peer.to_python() + " cannot be encoded: " + why});
        result<void> e = co_await conn.write_error("internal error: reply cannot be encoded");
        if (!e) co_return;
        continue;
      }
      co_return;
    }
  }
}

}  // namespace

task<bool> answer_read_error(connection& conn, connection_info info, std::error_code ec) {
  if (ec.category() == frame_category()) {
    auto code = static_cast<frame_errc>(ec.value());
    if (code == frame_errc::end_of_stream) co_return false;
    if (code == frame_errc::truncated) {
      info.server->log({log_level::info, "truncated", &info.peer, "closed in the middle of a message",
                        "Connection from " + info.peer.to_python() + " closed in the middle of a message"});
      co_return false;
    }
    const frame_error& fe = conn.last_frame_error();
    server_stats& st = info.server->stats();
    ++st.malformed;
    ++st.malformed_by_reason[std::min<std::size_t>(static_cast<std::size_t>(code), server_stats::reasons - 1)];
    info.server->log({log_level::warn, "malformed", &info.peer, fe.detail,
                      "Malformed message from " + info.peer.to_python() + ": " + fe.detail +
                          (fe.in_sync ? " (answered with an error)" : " (answered with an error, closing)")});
    result<void> w = co_await conn.write_error(fe.detail);
    if (!w) co_return false;
    if (!fe.in_sync) {
      result<void> f = co_await conn.flush();
      (void)f;
      co_return false;
    }
    co_return true;
  }
  if (ec == std::errc::timed_out) {
    // The write deadline fails the send queue, and the reader reports it.
    server_stats& st = info.server->stats();
    ++st.timeouts;
    const char* kind;
    if (conn.send_error() == std::errc::timed_out) {
      kind = "write";
      ++st.timeouts_write;
    } else if (conn.mid_message()) {
      kind = "message";
      ++st.timeouts_message;
    } else {
      kind = "idle";
      ++st.timeouts_idle;
    }
    info.server->log({log_level::info, "timeout", &info.peer, kind, "Connection from " + info.peer.to_python() + " timed out"});
  } else if (ec != std::errc::operation_canceled && ec != std::errc::connection_reset && ec != std::errc::broken_pipe) {
    const std::string why = ec.message();
    info.server->log({log_level::warn, "connection_error", &info.peer, why,
                      "Connection from " + info.peer.to_python() + " failed: " + why});
  }
  co_return false;
}

server::stream_handler framed(connection_handler h, connection_options o) {
  auto setup = std::make_shared<framed_setup>(framed_setup{std::move(h), o});
  return [setup](socket s, connection_info info) { return run_framed(std::move(s), info, setup.get()); };
}

server::stream_handler per_request(request_handler h, connection_options o) {
  auto held = std::make_shared<request_handler>(std::move(h));
  connection_handler loop = [held](connection& c, connection_info info) { return request_loop(c, info, held.get()); };
  return framed(std::move(loop), o);
}

}  // namespace ringframe
