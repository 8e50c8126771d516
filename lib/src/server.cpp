#include <ringframe/server.hpp>
#include <ringframe/timer.hpp>

#include <chrono>

namespace ringframe {

namespace {
struct drained_awaiter {
  bool ready;
  std::coroutine_handle<>* slot;
  bool await_ready() const noexcept { return ready; }
  void await_suspend(std::coroutine_handle<> h) noexcept { *slot = h; }
  void await_resume() const noexcept {}
};

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

server::server(executor& ex, server_options opts) : ex_(ex), opts_(std::move(opts)) {}

server::~server() { stop_.request_stop(); }

result<void> server::listen(const address& at, listen_options o) {
  auto s = ringframe::listen(ex_, at, o);
  if (!s) return s.error();
  listeners_.push_back(std::make_unique<socket>(std::move(*s)));
  return {};
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
    ex_.spawn(accept_loop(this, l.get()));
  }
  co_await drained_awaiter{live_ == 0 && loops_ == 0, &drained_waiter_};
}

void server::stop() { stop_.request_stop(); }

void server::connection_finished() {
  if (live_ == 0 && loops_ == 0 && drained_waiter_) ex_.post(std::exchange(drained_waiter_, {}));
}

task<void> server::accept_loop(server* self, socket* listener) {
  std::stop_token stop = self->stop_.get_token();
  while (!stop.stop_requested()) {
    address peer;
    result<socket> s = co_await listener->accept(&peer, {.stop = &stop});
    if (!s) {
      int e = s.error().value();
      if (e == ECANCELED) continue;  // the loop condition decides
      if (transient_accept_error(e)) continue;
      ++self->stats_.accept_errors;
      // EMFILE, ENFILE, ENOBUFS, ENOMEM: out of a resource that closing
      // connections gives back. Back off instead of spinning; those already
      // connected keep being served meanwhile.
      self->log("accept failed: " + s.error().message() + "; retrying in 100 ms");
      result<void> slept = co_await sleep_for(self->ex_, std::chrono::milliseconds(100), &stop);
      (void)slept;
      continue;
    }
    if (self->live_ >= self->opts_.max_connections) {
      ++self->stats_.rejected;
      self->log("Rejecting connection from " + peer.to_python() + ": limit of " +
                std::to_string(self->opts_.max_connections) + " connections reached");
      continue;  // the socket closes as it goes out of scope
    }
    s->set_stop_token(stop);
    ++self->live_;
    ++self->stats_.accepted;
    self->ex_.spawn(run_connection(self, std::move(*s), peer));
  }
  --self->loops_;
  self->connection_finished();
}

task<void> server::run_connection(server* self, socket s, address peer) {
  if (self->opts_.log_connections) self->log("Connected by " + peer.to_python());
  try {
    task<void> t = self->handler_(std::move(s), connection_info{peer, self});
    co_await std::move(t);
  } catch (const std::exception& e) {
    self->log("handler for " + peer.to_python() + " failed: " + e.what());
  }
  if (self->opts_.log_connections) self->log("Closing connection to " + peer.to_python());
  --self->live_;
  ++self->stats_.closed;
  self->connection_finished();
}

}  // namespace ringframe
