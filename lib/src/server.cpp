#include <ringframe/acceptor.hpp>
#include <ringframe/connection.hpp>
#include <ringframe/detail/join.hpp>
#include <ringframe/server.hpp>
#include <ringframe/timer.hpp>

#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstring>
#include <exception>

namespace ringframe {

namespace {
// Accept errors that concern one would-be connection, not the listener.
bool transient_accept_error(int e) {
  switch (e) {
    case ECONNABORTED: case EINTR: case EAGAIN: case EPROTO: case EPERM:
    case ENETDOWN: case ENOPROTOOPT: case EHOSTDOWN: case ENONET:
    case EHOSTUNREACH: case EOPNOTSUPP: case ENETUNREACH:
      return true;
    default:
      return false;
  }
}
}  // namespace

namespace detail {

unix_socket_file::unix_socket_file(const address& at) {
  if (at.family() != AF_UNIX || at.size() <= offsetof(sockaddr_un, sun_path)) return;
  const auto* un = reinterpret_cast<const sockaddr_un*>(at.data());
  if (un->sun_path[0] == '\0') return;  // abstract: no file
  std::string path(un->sun_path, ::strnlen(un->sun_path, at.size() - offsetof(sockaddr_un, sun_path)));
  struct stat st {};
  if (::lstat(path.c_str(), &st) != 0 || !S_ISSOCK(st.st_mode)) return;
  path_ = std::move(path);
  dev_ = st.st_dev;
  ino_ = st.st_ino;
}

unix_socket_file::unix_socket_file(unix_socket_file&& o) noexcept
    : path_(std::move(o.path_)), dev_(o.dev_), ino_(o.ino_) {
  o.path_.clear();
}

unix_socket_file& unix_socket_file::operator=(unix_socket_file&& o) noexcept {
  if (this != &o) {
    remove();
    path_ = std::move(o.path_);
    dev_ = o.dev_;
    ino_ = o.ino_;
    o.path_.clear();
  }
  return *this;
}

void unix_socket_file::remove() noexcept {
  if (path_.empty()) return;
  struct stat st {};
  if (::lstat(path_.c_str(), &st) == 0 && st.st_dev == dev_ && st.st_ino == ino_) ::unlink(path_.c_str());
  path_.clear();
}

}  // namespace detail

server::server(executor& ex, server_options opts) : ex_(ex), opts_(std::move(opts)) {
  if (opts_.measure_handling_time) ex_.set_handling_time_sink(&handling_);
  hard_stop_.emplace(stop_.get_token(), on_hard_stop{this});
}

server::~server() {
  stop();
  // A callback running on another thread is waited for; none runs again,
  // so nothing defers tell_ after it is withdrawn.
  hard_stop_.reset();
  ex_.withdraw(&tell_);
  if (ex_.handling_time_sink() == &handling_) ex_.set_handling_time_sink(nullptr);
}

// Cancels what the listed (framed) connections wait on: their reads once
// draining, their sends too once stopped. Never resumes a coroutine from
// here (the streams and queues submit cancellations and post wake-ups), so
// the list stays as it is while it is walked.
void server::tell_connections() noexcept {
  const bool all = stop_.stop_requested();
  if (!all && !drain_.stop_requested()) return;
  for (detail::open_counters* c = open_.next; c != &open_; c = c->next)
    if (c->conn) detail::server_access::tell_stopped(*c->conn, all, &drain_token_);
}

void server::tell_call::run(detail::deferred_call* d, bool run) {
  if (run) static_cast<tell_call*>(d)->srv->tell_connections();
}

// On whichever thread requested the hard stop, once.
void server::on_hard_stop::operator()() const noexcept {
  srv->drain_.request_stop();
  if (srv->ex_.on_own_thread()) srv->tell_connections();
  else srv->ex_.defer(&srv->tell_);
}

result<void> server::listen(const address& at, listen_options o) {
  auto s = ringframe::listen(ex_, at, o);
  if (!s) return s.error();
  listeners_.push_back(std::make_unique<socket>(std::move(*s)));
  files_.emplace_back(at);
  return {};
}

void server::add_listener(socket listening) {
  listeners_.push_back(std::make_unique<socket>(ex_, listening.release()));
}

std::vector<address> server::local_addresses() const {
  std::vector<address> out;
  for (const auto& l : listeners_)
    if (auto a = l->local_address()) out.push_back(*a);
  return out;
}

task<void> server::serve(stream_handler h) {
  handler_ = std::move(h);
  for (auto& l : listeners_) {
    ++loops_;
    group_.spawn(accept_loop(this, l.get()));
  }
  // Until every accept loop and every connection has ended. An accept loop
  // that threw (out of memory) has stopped the others through the group.
  std::exception_ptr failed;
  try {
    co_await group_.join();
  } catch (...) {
    failed = std::current_exception();
  }
  // Everything has ended: this also cancels a pending drain timer.
  stop_.request_stop();
  if (failed) std::rethrow_exception(failed);
}

// The connections are told by the stop's callback (on_hard_stop).
void server::stop() {
  drain_.request_stop();
  stop_.request_stop();
}

void server::drain(std::chrono::nanoseconds grace) {
  if (draining()) return;
  drain_.request_stop();
  tell_connections();
  ex_.spawn(stop_after(this, grace, stop_.get_token()));
}

// `cancel` is a copy held in this frame: when serve() finishes first, the
// sleep is cancelled and this returns without touching the server, which may
// be gone by the time the cancellation is delivered.
task<void> server::stop_after(server* self, std::chrono::nanoseconds grace, std::stop_token cancel) {
  result<void> slept = co_await sleep_for(self->ex_, grace, &cancel);
  if (!slept) co_return;
  self->log({log_level::warn, "drain_deadline", nullptr, {},
             "Drain deadline reached: closing " + std::to_string(self->live_) + " connections"});
  self->stop();
}

task<void> server::accept_loop(server* self, socket* listener) {
  std::stop_token stop = self->drain_.get_token();
  // One multishot accept stays armed (one SQE for any number of
  // connections); a kernel without it (EINVAL) gets one accept per connection.
  acceptor multishot(*listener, &stop);
  bool use_multishot = self->opts_.multishot_accept;
  // What throws below (a log sink, out of memory building a line or the
  // connection's coroutine) must not end this frame while the kernel still
  // holds the multishot accept: the acceptor is the request's completion,
  // and its next CQE (the next client) would reach freed memory, with the
  // listener left open. It stops the server (as the group would), the loop
  // goes on until the request is retired, and it is rethrown at the end.
  std::exception_ptr failed;
  self->publish_live();  // accepting
  for (;;) {
    address peer;
    result<socket> s = std::errc::operation_canceled;
    if (use_multishot) {
      s = co_await multishot.next();
    } else {
      // Shards sharing the listener: one above its share leaves the next
      // connections to the others for a moment (detail/accept_balance.hpp).
      if (self->opts_.accept_balance && self->opts_.accept_balance->above_share(self->opts_.accept_balance_slot)) {
        result<void> paused = co_await sleep_for(self->ex_, detail::accept_balance::pause, &stop);
        (void)paused;  // cancelled by the drain: the accept below says so
      }
      s = co_await listener->accept(&peer, {.stop = &stop});
    }
    try {
      if (!s) {
        int e = s.error().value();
        if (stop.stop_requested() || self->ex_.stopping()) {
          if (!multishot.armed()) break;  // the kernel has retired the request
          continue;
        }
        if (e == EINVAL && use_multishot) {
          self->log({log_level::info, "fallback", nullptr, "multishot accept unavailable",
                     "multishot accept unavailable on this kernel: accepting one connection per request"});
          use_multishot = false;
          continue;
        }
        if (e == ECANCELED || e == EAGAIN || transient_accept_error(e)) continue;
        ++self->stats_.accept_errors;
        // EMFILE, ENFILE, ENOBUFS, ENOMEM: out of a resource that closing
        // connections gives back. Back off instead of spinning; those already
        // connected keep being served meanwhile.
        const std::string why = s.error().message();
        self->log({log_level::error, "accept_error", nullptr, why, "accept failed: " + why + "; retrying in 100 ms"});
        result<void> slept = co_await sleep_for(self->ex_, std::chrono::milliseconds(100), &stop);
        (void)slept;
        continue;
      }
      if (use_multishot) {
        auto a = s->peer_address();
        if (!a) continue;  // reset before we looked: nothing to serve
        peer = *a;
      }
      if (self->live_ >= self->opts_.max_connections) {
        ++self->stats_.rejected;
        const std::string why = "limit of " + std::to_string(self->opts_.max_connections) + " connections reached";
        self->log({log_level::warn, "rejected", &peer, why, "Rejecting connection from " + peer.to_python() + ": " + why});
        continue;  // the socket closes as it goes out of scope
      }
      s->set_stop_token(self->stop_.get_token());
      ++self->live_;
      ++self->stats_.accepted;
      try {
        self->group_.spawn(run_connection(&self->group_, self, std::move(*s), peer));
      } catch (...) {
        // Made or queued it could not be (bad_alloc): it never started, so
        // it never counts itself out (counted_out lives in its body).
        --self->live_;
        --self->stats_.accepted;
        throw;
      }
      self->publish_live();
    } catch (...) {
      if (!failed) failed = std::current_exception();
      self->stop();  // cancels the multishot accept (its stop is the drain)
    }
  }
  // Close the listener: while draining, new clients are refused at once
  // rather than left waiting in the backlog.
  { socket closing = std::move(*listener); }
  if (--self->loops_ == 0) {
    self->files_.clear();  // every listener is closed: remove their files
    if (self->opts_.accept_balance)  // the other shards no longer wait for this one
      self->opts_.accept_balance->publish(self->opts_.accept_balance_slot, detail::accept_balance::not_accepting);
  }
  if (failed) std::rethrow_exception(failed);
}

namespace {
// Outside the coroutine: its frame keeps no room for what this needs.
void log_handler_failure(server* self, const address& peer, const char* who, std::exception_ptr e) {
  std::string why = "unknown exception";
  try {
    std::rethrow_exception(e);
  } catch (const std::exception& x) {
    why = x.what();
  } catch (...) {
  }
  self->log({log_level::error, "handler_error", &peer, why, std::string(who) + " for " + peer.to_python() + " failed: " + why});
}
}  // namespace

// Counts a connection out however its coroutine ends: a log line that
// throws (the sink, or building it out of memory) ends the coroutine
// through the server's group, and the count must not stay up for good.
// One pointer: it lives in every connection's frame (idle memory counts).
struct server::counted_out {
  server* srv;
  ~counted_out() {
    if (srv->draining()) ++srv->stats_.drained;
    --srv->live_;
    ++srv->stats_.closed;
    if (srv->loops_ > 0) srv->publish_live();  // (no longer once its accept loops have ended)
  }
};

detail::group_child server::run_connection(task_group* /*read by the promise*/, server* self, socket s, address peer) {
  counted_out counted{self};
  if (self->opts_.log_connections) self->log({log_level::info, "connected", &peer, {}, "Connected by " + peer.to_python()});
  // The handler's helpers (connection_info::helpers) are joined before the
  // handler's frame, and the socket in it, goes: the handler is awaited
  // without rethrowing (start_child) and its exception, if any, taken after.
  std::unique_ptr<task_group> helpers;
  task<void> t;
  try {
    t = self->handler_(std::move(s), connection_info{peer, self, &self->drain_token_, &helpers});
  } catch (...) {
    log_handler_failure(self, peer, "handler", std::current_exception());
  }
  if (t.valid()) {
    detail::start_child<void> handling{t.handle()};
    co_await handling;
  }
  if (helpers) {
    helpers->request_stop();
    try {
      co_await helpers->join();
    } catch (...) {
      log_handler_failure(self, peer, "a helper of the handler", std::current_exception());
    }
  }
  if (t.valid()) {
    try {
      t.take_result();
    } catch (...) {
      log_handler_failure(self, peer, "handler", std::current_exception());
    }
  }
  t = task<void>();  // the handler's frame, and the socket in it
  if (self->opts_.log_connections) self->log({log_level::info, "closed", &peer, {}, "Closing connection to " + peer.to_python()});
}

server_stats& server_stats::operator+=(const server_stats& o) {
  accepted += o.accepted;
  closed += o.closed;
  rejected += o.rejected;
  accept_errors += o.accept_errors;
  bytes_in += o.bytes_in;
  bytes_out += o.bytes_out;
  messages_in += o.messages_in;
  messages_out += o.messages_out;
  malformed += o.malformed;
  for (std::size_t i = 0; i < reasons; ++i) malformed_by_reason[i] += o.malformed_by_reason[i];
  timeouts += o.timeouts;
  timeouts_idle += o.timeouts_idle;
  timeouts_message += o.timeouts_message;
  timeouts_write += o.timeouts_write;
  backpressure_pauses += o.backpressure_pauses;
  drained += o.drained;
  peak_unsent_bytes = std::max(peak_unsent_bytes, o.peak_unsent_bytes);
  return *this;
}

std::string server_stats::to_string() const {
  static const char* const names[reasons] = {"",
                                             "header_length_zero",
                                             "header_not_utf8",
                                             "header_not_json",
                                             "header_not_object",
                                             "missing_key",
                                             "bad_key_type",
                                             "bad_content_length",
                                             "content_too_large",
                                             "content_not_utf8",
                                             "content_not_json",
                                             "unsupported_encoding",
                                             "header_too_large",
                                             "truncated",
                                             "end_of_stream",
                                             "other"};
  std::string s = "accepted=" + std::to_string(accepted) + " closed=" + std::to_string(closed) +
                  " rejected=" + std::to_string(rejected) + " accept_errors=" + std::to_string(accept_errors) +
                  " messages_in=" + std::to_string(messages_in) + " messages_out=" + std::to_string(messages_out) +
                  " bytes_in=" + std::to_string(bytes_in) + " bytes_out=" + std::to_string(bytes_out) +
                  " timeouts=" + std::to_string(timeouts) + " drained=" + std::to_string(drained) +
                  " malformed=" + std::to_string(malformed);
  std::string by;
  for (std::size_t i = 0; i < reasons; ++i)
    if (malformed_by_reason[i]) by += std::string(by.empty() ? "" : ", ") + names[i] + "=" + std::to_string(malformed_by_reason[i]);
  if (!by.empty()) s += " (" + by + ")";
  return s;
}

}  // namespace ringframe
