// framed_client: request/reply calls over one framed connection
// (docs/protocol.md), shared by any number of coroutines.
//
//   result<framed_client> c = co_await framed_client::connect(ex, "db.internal", 65432);
//   result<message> reply = co_await c->call(message::json(R"({"action": "search", "value": "ring"})"));
//
// Pipelining: each call's request is written (in call order) as soon as it
// is made, without waiting for the replies to earlier calls, and the
// protocol has no request ids: replies are matched to calls first in, first
// out. A call cancelled through its stop token returns ECANCELED at once;
// its reply is still read when it comes, and dropped, so the stream stays
// in step. Replies are read while requests are still being sent
// (connection_options::read_while_sending), so any number of bytes may be in
// flight: a server that stops reading until its replies are taken is
// answered as fast as it replies. Calls are not held back for room: the
// requests queued and not yet sent are in memory, and bounding them
// (a semaphore around call()) is the caller's choice.
//
// Failure: a broken connection (reset, the server closing, a malformed
// reply, no reply for reply_timeout, a failed send) fails every pending call
// with the error (failure_detail() says it in words), and every later call
// fails at once with the same error. A send that fails because the server
// is gone (ECONNRESET, EPIPE) is no exception, except that the replies the
// server sent before it went are read first and answer their calls.
// close(), or destroying the client,
// completes pending calls with ECANCELED (resumed from the executor's ready
// queue). The client is a handle to a state on the heap that every
// suspended call and the reply reader hold a reference to, so no coroutine
// ever waits on freed memory; the connection goes when the last of them
// lets go.
//
// One executor's thread (stop tokens may be requested from any thread).
// Precondition: the executor outlives the client and its calls.
#pragma once

#include <ringframe/address.hpp>
#include <ringframe/connection.hpp>
#include <ringframe/executor.hpp>
#include <ringframe/message.hpp>
#include <ringframe/result.hpp>
#include <ringframe/socket.hpp>
#include <ringframe/task.hpp>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <stop_token>
#include <string>
#include <vector>

namespace ringframe {

// How framed_client::connect tries again when an attempt fails with an
// error worth retrying (refused, reset, aborted, host or network
// unreachable, EAGAIN, a Unix socket path not bound yet): `attempts` in
// all, waiting `delay` before the second, then each wait `backoff` times the
// last, at most `max_delay`. All of it within connect_timeout: each
// round of attempts (each round tries every address, as
// framed_client_options::happy_eyeballs_delay says) gets what is left of
// it, and a wait that would end after it ends the connect with ETIMEDOUT.
// A failed lookup is not retried, nor is a cancelled connect (ECANCELED).
struct retry_policy {
  int attempts = 1;  // 1: no retry
  std::chrono::nanoseconds delay = std::chrono::milliseconds(100);
  double backoff = 2.0;
  std::chrono::nanoseconds max_delay = std::chrono::seconds(2);
};

struct framed_client_options {
  // The deadline of connect() as a whole: the lookup, every attempt and
  // the waits between them. 0: none.
  std::chrono::nanoseconds connect_timeout = std::chrono::seconds(10);
  // A host with several addresses is connected to RFC 8305 style, as
  // connect(host, port) does (socket.hpp): the next address is tried beside
  // an attempt that has not connected after this long (an address whose
  // SYNs are dropped would otherwise hold back a working one until
  // connect_timeout), or at once when one fails; the first to connect wins.
  // 0: one address at a time, the next when one fails.
  std::chrono::nanoseconds happy_eyeballs_delay = std::chrono::milliseconds(250);
  retry_policy retry;
  // While calls are pending, the longest wait for the next reply (and for a
  // reply's last byte after its first). A server that does not answer in
  // time breaks the connection: every pending call fails with ETIMEDOUT.
  // A read's wait starts once the requests queued are sent; while they are
  // being sent, connection.write_timeout bounds it (restarted by each
  // reply: the server takes requests as fast as it answers them), or
  // reply_timeout when write_timeout is 0. Both 0: no bound at all.
  std::chrono::nanoseconds reply_timeout = std::chrono::seconds(30);
  // Limits, write timeout, buffers. Its idle and message timeouts are
  // replaced by reply_timeout, and its thread_receive_budget by 0: replies
  // answer calls made here, so the calls bound them, and they never wait
  // for room in the thread's receive budget (a handler that holds a large
  // request while it calls would otherwise wait for its own reply).
  connection_options connection;
};

namespace detail {
struct client_state;
// A counted reference to the state (one thread: no atomics).
class client_ref {
 public:
  client_ref() noexcept = default;
  explicit client_ref(client_state* s) noexcept;
  client_ref(const client_ref& o) noexcept : client_ref(o.s_) {}
  client_ref(client_ref&& o) noexcept : s_(std::exchange(o.s_, nullptr)) {}
  client_ref& operator=(client_ref o) noexcept {
    std::swap(s_, o.s_);
    return *this;
  }
  ~client_ref();
  client_state* get() const noexcept { return s_; }
  client_state* operator->() const noexcept { return s_; }
  explicit operator bool() const noexcept { return s_ != nullptr; }

 private:
  client_state* s_ = nullptr;
};
}  // namespace detail

class framed_client {
 public:
  // Not connected: calls fail with ENOTCONN.
  framed_client() noexcept = default;
  framed_client(framed_client&&) noexcept = default;
  framed_client& operator=(framed_client&& o) noexcept;
  framed_client(const framed_client&) = delete;
  framed_client& operator=(const framed_client&) = delete;
  // close()
  ~framed_client();

  // Resolve `host` (without blocking the executor: resolver.hpp), connect
  // to the first of its addresses that answers (o.happy_eyeballs_delay),
  // retrying as o.retry says, within o.connect_timeout. `stop` (from any
  // thread) ends it at once with ECANCELED. Otherwise the error is that of
  // the attempt that ended last.
  static task<result<framed_client>> connect(executor& ex, std::string host, std::uint16_t port,
                                             framed_client_options o = {}, std::stop_token stop = {});
  static task<result<framed_client>> connect(executor& ex, address to, framed_client_options o = {},
                                             std::stop_token stop = {});
  // Addresses looked up already: the first of `to` that answers, as above;
  // EINVAL when `to` is empty.
  static task<result<framed_client>> connect(executor& ex, std::vector<address> to, framed_client_options o = {},
                                             std::stop_token stop = {});
  // A client over a socket connected already (a Unix socketpair, a test).
  static framed_client adopt(socket s, framed_client_options o = {});

  // Send `request`, return its reply. A request that cannot be encoded
  // (frame_errc: header_not_utf8, header_too_large...) fails alone; the
  // connection is not affected. `stop` (optional; it must outlive the call,
  // e.g. a by-value parameter of the calling coroutine) cancels this call
  // only: ECANCELED at once, the reply dropped when it comes.
  [[nodiscard]] task<result<message>> call(message request, const std::stop_token* stop = nullptr);

  // Fail every pending call with ECANCELED, cancel what is in flight, and
  // make every later call fail with ECANCELED. Idempotent.
  void close() noexcept;

  // Connected and not broken.
  bool is_open() const noexcept;
  // Why the client is broken (or closed); empty while it works.
  std::error_code error() const noexcept;
  // The same, in words: the decoder's detail for a malformed reply ("JSON
  // header is not valid JSON: ..."), "the server closed the connection" for
  // an end between replies, else the error's message.
  std::string failure_detail() const;
  // Calls whose reply has not been read (cancelled ones included).
  std::size_t pending() const noexcept;
  // The server's address (empty for an adopted socket whose peer has none).
  const address& peer() const noexcept;

 private:
  explicit framed_client(detail::client_ref s) noexcept : s_(std::move(s)) {}
  detail::client_ref s_;
};

}  // namespace ringframe
