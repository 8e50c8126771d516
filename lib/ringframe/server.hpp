// server: owns listening sockets, the accept loops, the connection limit and
// shutdown; runs one coroutine per accepted connection with the user's
// handler. Framed-message handlers are adapted to this in connection.hpp.
#pragma once

#include <ringframe/address.hpp>
#include <ringframe/detail/accept_balance.hpp>
#include <ringframe/executor.hpp>
#include <ringframe/latency_histogram.hpp>
#include <ringframe/log.hpp>
#include <ringframe/socket.hpp>
#include <ringframe/task.hpp>
#include <ringframe/task_group.hpp>

#include <array>
#include <chrono>
#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <optional>
#include <stdexcept>
#include <stop_token>
#include <string>
#include <vector>

#include <sys/types.h>

namespace ringframe {

namespace detail {
// The file a Unix-domain listener is bound to (abstract @names have none).
// Removed when this goes away or remove() is called, unless the path now
// names another file (a server started since may have replaced it).
class unix_socket_file {
 public:
  unix_socket_file() noexcept = default;
  // Records the file bound at `at`; nothing for other addresses.
  explicit unix_socket_file(const address& at);
  unix_socket_file(unix_socket_file&& o) noexcept;
  unix_socket_file& operator=(unix_socket_file&& o) noexcept;
  ~unix_socket_file() { remove(); }
  void remove() noexcept;
  const std::string& path() const noexcept { return path_; }

 private:
  std::string path_;
  dev_t dev_ = 0;
  ino_t ino_ = 0;
};
}  // namespace detail

struct server_options {
  // Connections beyond this are accepted and closed at once (and counted as
  // rejected), so the listen queue never silently fills.
  std::size_t max_connections = 100000;
  // Keep one multishot accept armed (Linux 5.19) instead of one accept per
  // connection; false is for comparison only.
  bool multishot_accept = true;
  // Servers that accept from one shared listener (sharded_server sets it,
  // each with its own slot): each publishes its open connections, and one
  // above its share pauses before its next one-shot accept, so that a burst
  // of connections is spread over them (detail/accept_balance.hpp). Null:
  // none.
  std::shared_ptr<detail::accept_balance> accept_balance;
  unsigned accept_balance_slot = 0;
  // One line per event (connections, errors), without its newline; control
  // bytes are written as \xNN (append_text_line, log.hpp). Empty: silent.
  std::function<void(const std::string&)> log;
  // The same events with their fields apart (log.hpp). When set, it takes
  // every event instead of `log` (whose line is the record's `text`).
  std::function<void(const log_record&)> log_records;
  // Log "Connected by (...)" / "Closing connection to (...)" for each connection.
  bool log_connections = true;
  // Framed connections record each message's handling time (its receive
  // completion to its reply queued) in handling_time(): one clock read per
  // reply (bench/RESULTS.md has its cost). Off: no clock is read. The
  // histogram is hung on the executor (executor::set_handling_time_sink):
  // one server per executor measures.
  bool measure_handling_time = false;
};

// Counters. Single-threaded (one server per executor), so plain integers.
struct server_stats {
  // Indexed by frame_errc's value (frame.hpp); counted by answer_read_error.
  static constexpr std::size_t reasons = 16;
  std::uint64_t accepted = 0;
  std::uint64_t closed = 0;
  std::uint64_t rejected = 0;
  std::uint64_t accept_errors = 0;
  std::uint64_t bytes_in = 0;
  std::uint64_t bytes_out = 0;
  std::uint64_t messages_in = 0;
  std::uint64_t messages_out = 0;
  std::uint64_t malformed = 0;
  std::array<std::uint64_t, reasons> malformed_by_reason{};
  std::uint64_t timeouts = 0;      // idle, mid-message or write: the sum of the three below
  std::uint64_t timeouts_idle = 0;     // no next message within idle_timeout
  std::uint64_t timeouts_message = 0;  // a message not complete within message_timeout
  std::uint64_t timeouts_write = 0;    // replies not taken by the peer within write_timeout
  std::uint64_t backpressure_pauses = 0;  // a connection stopped reading until its replies were sent
  std::uint64_t drained = 0;       // connections that ended once drain() or stop() was called
  std::uint64_t peak_unsent_bytes = 0;  // largest reply backlog of any connection

  // One line: "accepted=3 closed=3 ... malformed=1 (header_not_json=1)".
  std::string to_string() const;
  // Sums (peak_unsent_bytes: the larger), for servers on several threads.
  server_stats& operator+=(const server_stats& o);
};

class connection;

namespace detail {
// A framed connection, listed on its server while it is open: it adds its
// own counters to server_stats only when it ends (handler.cpp), and a
// snapshot (server::stats_now) adds them meanwhile. A node of a circular
// list whose sentinel is in the server, so that it unlinks itself without
// a pointer to the server: 24 bytes in the connection's coroutine frame.
struct open_counters {
  open_counters* prev = this;
  open_counters* next = this;
  connection* conn = nullptr;
  void unlink() noexcept {
    prev->next = next;
    next->prev = prev;
    prev = next = this;
  }
};
}  // namespace detail

// What a handler gets besides the socket. Small, so that it can be passed by
// value to every coroutine of a connection: the peer's address lives once,
// in the server's frame for that connection, for as long as it is served.
struct connection_info {
  const address& peer;
  class server* server;
  // Requested when the server drains: use it for operations that wait for
  // *new* work from the peer (a recv between requests), so that owed
  // replies still go out while nothing new is taken in.
  const std::stop_token* read_stop = nullptr;
  // Where helpers() keeps the connection's group (in the server's frame for
  // the connection; empty until first used, so that a connection without
  // helpers pays one pointer for it).
  std::unique_ptr<task_group>* helpers_slot = nullptr;

  // The connection's helpers: coroutines a handler spawns to work beside it
  // (a writer fed by a channel, the other direction of a proxy). When the
  // handler returns (or throws), the group is asked to stop (its stop
  // token) and joined, before the connection (framed: the `connection`; a
  // stream: the socket passed to the handler) is closed: a helper may use
  // those and `info`, never the handler's local variables. A helper's
  // exception stops the group (the handler may watch its get_stop_token()).
  task_group& helpers() const;
};

class server {
 public:
  // A coroutine that serves one connection and returns when it is done. The
  // socket's operations are cancelled (ECANCELED) when the server stops.
  using stream_handler = std::function<task<void>(socket, connection_info)>;

  // `ex` must outlive the server: the server's stop and drain reach its
  // connections through the executor (deferred calls, its stop state), and
  // its destructor unregisters from it.
  explicit server(executor& ex, server_options opts = {});
  server(const server&) = delete;
  server& operator=(const server&) = delete;
  ~server();

  // Bind and listen; may be called for several addresses. Errors as errno
  // (EADDRINUSE, EACCES, EADDRNOTAVAIL ...). A Unix-domain socket file is
  // removed when the server is done with it (its accept loops have ended, or
  // the server is destroyed).
  result<void> listen(const address& at, listen_options o = {});
  // Accept on a socket that is already listening: one bound elsewhere, such
  // as a duplicate of a listener that several servers share (each server's
  // ring then accepts from the same queue; see sharded_server.hpp).
  void add_listener(socket listening);
  // The bound addresses (port 0 resolved to the real port).
  std::vector<address> local_addresses() const;

  // Accept and serve until stop(); then wait for every connection's handler
  // to return. Each connection runs `h` in a coroutine of its own.
  task<void> serve(stream_handler h);

  // Stop accepting and cancel what every connection is waiting on. Any
  // thread (from another, the cancellations are carried to the executor's).
  void stop();
  // Graceful stop: stop accepting and reading new requests at once; let the
  // connections answer what they already received; after `grace`, stop().
  // The executor's thread.
  void drain(std::chrono::nanoseconds grace);
  bool stopped() const noexcept { return stop_.stop_requested(); }
  bool draining() const noexcept { return drain_.stop_requested(); }
  std::stop_token stop_token() const noexcept { return stop_.get_token(); }

  std::size_t live_connections() const noexcept { return live_; }
  server_stats& stats() noexcept { return stats_; }
  const server_stats& stats() const noexcept { return stats_; }
  // stats() plus what the open framed connections have counted so far.
  server_stats stats_now() const;
  // Per message handling time (server_options::measure_handling_time).
  latency_histogram& handling_time() noexcept { return handling_; }
  const latency_histogram& handling_time() const noexcept { return handling_; }
  // For framed(): list a connection's counters until it ends (this thread).
  // (unlinked by c->unlink(), which needs no server).
  void track(detail::open_counters* c) noexcept {
    c->prev = &open_;
    c->next = open_.next;
    open_.next->prev = c;
    open_.next = c;
  }
  // The read stop a framed connection honours, and is told of (see tell_).
  const std::stop_token* drain_token() const noexcept { return &drain_token_; }
  const server_options& options() const noexcept { return opts_; }
  executor& get_executor() noexcept { return ex_; }
  void log(const std::string& line) const {
    if (opts_.log_records) opts_.log_records(log_record{log_level::info, "message", nullptr, {}, line});
    else if (opts_.log) opts_.log(line);
  }
  void log(const log_record& r) const {
    if (opts_.log_records) opts_.log_records(r);
    else if (opts_.log) {
      // A record's text may quote a peer's bytes (a malformed frame's
      // reason): raw, a newline in it forged a line in every example's log
      // (review31 F3).
      std::string line;
      append_text_line(line, r.text);
      opts_.log(line);
    }
  }


 private:
  static task<void> accept_loop(server* self, socket* listener);
  // live_ to the accept balance, when there is one.
  void publish_live() noexcept {
    if (opts_.accept_balance) opts_.accept_balance->publish(opts_.accept_balance_slot, static_cast<std::uint32_t>(live_));
  }
  // A child of group_ itself (no spawn wrapper): it lives as long as the connection.
  static detail::group_child run_connection(task_group* group, server* self, socket s, address peer);
  struct counted_out;  // in run_connection's frame (server.cpp)
  static task<void> stop_after(server* self, std::chrono::nanoseconds grace, std::stop_token cancel);

  executor& ex_;
  server_options opts_;
  stream_handler handler_;
  std::vector<std::unique_ptr<socket>> listeners_;
  std::vector<detail::unix_socket_file> files_;  // of the listeners bound by listen()
  std::stop_source stop_;   // hard stop: every operation of every connection
  std::stop_source drain_;  // accepting and reading new requests
  std::stop_token drain_token_ = drain_.get_token();  // what read_stop points to
  server_stats stats_;
  latency_histogram handling_;
  detail::open_counters open_;  // the sentinel of the framed connections' list (track)
  std::size_t live_ = 0;
  std::size_t loops_ = 0;
  // The framed connections are told of stop() and drain() through the list
  // above, not by stop callbacks of their own; from another thread, this
  // carries the telling to the executor's.
  struct tell_call : detail::deferred_call {
    explicit tell_call(server* s) noexcept : deferred_call(&tell_call::run), srv(s) {}
    server* srv;
    static void run(detail::deferred_call* d, bool run);
  } tell_{this};
  void tell_connections() noexcept;
  // Every accept loop and every connection is a child: serve() joins them.
  // Its stop is the hard stop (a child that throws stops the server).
  task_group group_{ex_, stop_};
  // The hard stop however it is requested: stop(), the group's (a child
  // that threw), serve()'s end. Accepting ends (the accept loops watch the
  // drain) and the framed connections are told (tell_). One callback per
  // server, not per connection; last, so that it goes first.
  struct on_hard_stop {
    server* srv;
    void operator()() const noexcept;
  };
  std::optional<std::stop_callback<on_hard_stop>> hard_stop_;
};

// Made on first use (a connection whose handler spawns no helper pays
// nothing); the server stops and joins it before the connection closes.
inline task_group& connection_info::helpers() const {
  if (!helpers_slot) throw std::logic_error("ringframe: connection_info::helpers(): this connection has no helper group");
  if (!*helpers_slot) *helpers_slot = std::make_unique<task_group>(server->get_executor());
  return **helpers_slot;
}

}  // namespace ringframe
