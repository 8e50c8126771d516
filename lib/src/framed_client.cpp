#include <ringframe/framed_client.hpp>

#include <ringframe/detail/deferred_call.hpp>
#include <ringframe/detail/happy_eyeballs.hpp>
#include <ringframe/detail/resume_later.hpp>
#include <ringframe/detail/saturating_time.hpp>
#include <ringframe/frame.hpp>
#include <ringframe/resolver.hpp>
#include <ringframe/timer.hpp>

#include <algorithm>
#include <cerrno>
#include <coroutine>
#include <deque>
#include <memory>
#include <optional>
#include <string_view>
#include <utility>
#include <vector>

namespace ringframe {

namespace detail {

struct call_waiter;

// Who keeps it alive: the framed_client, every call coroutine (from its
// first line to its last), the reply reader and a pending flush_soon, each
// through a client_ref. So a call suspended anywhere (in the write's
// backpressure, on its reply) and the reader suspended in read_message
// always find it. The connection inside is destroyed once it is broken and
// the reader (the only one that waits inside it holding raw pointers) has
// left it; a flush (backpressure, flush_soon) holds a connection_handle,
// which turns null, and every coroutine checks `broken` after each
// suspension before touching the connection again.
struct client_state {
  int refs = 0;
  executor* ex = nullptr;
  // The socket's stop token: request_stop() cancels the recv and the send
  // in flight, and refuses new ones. Declared before conn: outlives it.
  std::stop_source stop;
  std::unique_ptr<connection> conn;
  address peer;
  // One slot per request written, oldest first; null: its caller left
  // (cancelled, or its frame destroyed), the reply is read and dropped.
  std::deque<call_waiter*> fifo;
  std::uint64_t front_seq = 0;  // the sequence number of fifo.front()
  std::error_code broken;
  std::string detail;
  bool reading = false;  // the reply reader runs
  bool flush_scheduled = false;  // a flush_soon is spawned and has not started

  // Noexcept, and allocates nothing it needs: close() and ~framed_client
  // are noexcept, and the reader calls it from its bad_alloc handler
  // (review21 F2). `why` in words (empty: the error's message), then the
  // error's message too when `then_message`.
  void fail(std::error_code ec, std::string_view why, bool then_message = false) noexcept;
};

client_ref::client_ref(client_state* s) noexcept : s_(s) {
  if (s_) ++s_->refs;
}
client_ref::~client_ref() {
  if (s_ && --s_->refs == 0) delete s_;
}

// A call waiting for its reply: a named local of the call's coroutine frame.
// The reader (or fail()) hands it its outcome and posts the coroutine;
// its stop token takes it out of the line instead.
struct call_waiter {
  call_waiter(client_state* st, const std::stop_token* t) noexcept : s(st), stop(t) {}
  call_waiter(const call_waiter&) = delete;
  call_waiter& operator=(const call_waiter&) = delete;
  ~call_waiter() {
    cb.reset();  // waits for a callback running on another thread
    s->ex->withdraw(&cancel);
    if (queued) abandon();  // the frame is destroyed while it waits
  }

  void enqueue() {
    seq = s->front_seq + s->fifo.size();
    s->fifo.push_back(this);
    queued = true;
  }
  // The outcome, from the reader or fail(): never resumed inline. When the
  // ready queue cannot grow for it, through the executor's inbox: out of
  // the line already, a post that threw left the call waiting for good
  // (review13 F15).
  void deliver(result<message> r) {
    queued = false;
    out.emplace(std::move(r));
    if (h) later.wake(*s->ex, h);
  }
  // Cancelled: out of the line (its reply will be dropped), ECANCELED now.
  void leave() {
    if (out) return;
    abandon();
    deliver(errno_code(ECANCELED));
  }
  // The request was not queued after all: the slot, the last one, goes too.
  void take_back() noexcept {
    s->fifo.pop_back();
    queued = false;
  }
  void abandon() noexcept {
    if (!queued) return;
    queued = false;
    const std::uint64_t i = seq - s->front_seq;
    if (i < s->fifo.size() && s->fifo[i] == this) s->fifo[i] = nullptr;
  }

  bool await_ready() const noexcept { return out.has_value(); }
  void await_suspend(std::coroutine_handle<> awaiting) {
    h = awaiting;
    if (stop && stop->stop_possible()) cb.emplace(*stop, canceller{this});
  }
  result<message> await_resume() {
    cb.reset();
    return std::move(*out);
  }

  struct canceller {
    call_waiter* w;
    void operator()() noexcept {
      if (w->s->ex->on_own_thread()) w->leave();
      else w->s->ex->defer(&w->cancel);
    }
  };
  struct cancel_call : deferred_call {
    explicit cancel_call(call_waiter* o) noexcept : deferred_call(&cancel_call::run), w(o) {}
    call_waiter* w;
    static void run(deferred_call* c, bool run) {
      if (run) static_cast<cancel_call*>(c)->w->leave();
    }
  };

  client_state* s;
  const std::stop_token* stop;
  std::uint64_t seq = 0;
  bool queued = false;
  std::coroutine_handle<> h;
  detail::resume_later later;  // deliver()'s way when the ready queue cannot grow
  std::optional<result<message>> out;
  cancel_call cancel{this};
  std::optional<std::stop_callback<canceller>> cb;
};

void client_state::fail(std::error_code ec, std::string_view why, bool then_message) noexcept {
  if (broken) return;
  broken = ec;
  // The words are a nicety: out of memory, failure_detail() falls back on
  // the error's message. The calls are answered whatever happens here.
  try {
    if (why.empty()) {
      detail = ec.message();
    } else {
      detail.assign(why);
      if (then_message) detail += ec.message();
    }
  } catch (...) {
    detail.clear();
  }
  // Taken one by one, not moved into a local deque: moving a libstdc++
  // deque allocates (a map for the one moved from), and a bad_alloc here
  // was std::terminate, or left every pending call unanswered.
  while (!fifo.empty()) {
    call_waiter* w = fifo.front();
    fifo.pop_front();
    ++front_seq;
    if (w) w->deliver(ec);
  }
  // Nothing more goes over this connection: the recv and send in flight
  // end (ECANCELED) and the reader, if it waits, leaves. The socket is
  // closed (the server sees the end, the descriptor is free) as soon as no
  // reader is inside the connection: now, or when the reader leaves.
  stop.request_stop();
  if (!reading) conn.reset();
}

namespace {

// A read that failed breaks the client; the reason in words.
void fail_reading(client_state& s, std::error_code ec) noexcept {
  if (ec == make_error_code(frame_errc::end_of_stream)) return s.fail(ec, "the server closed the connection");
  // The reads ended on a send that failed (the reader sends too).
  if (s.conn->send_error() && ec == s.conn->send_error()) return s.fail(ec, "cannot send: ", true);
  // A malformed reply: the decoder says what exactly was wrong with it.
  if (ec.category() == frame_category() && s.conn->last_frame_error().code != frame_errc{})
    return s.fail(ec, s.conn->last_frame_error().detail);
  s.fail(ec, {});
}

// The reply reader: runs while calls are pending (spawned by the call that
// finds it not running), reading one reply per slot, in order.
task<void> read_replies(client_ref ref) {
  client_state* s = ref.get();
  try {
    while (!s->broken && !s->fifo.empty()) {
      result<message_view> m = co_await s->conn->read_message();
      if (s->broken) break;  // closed meanwhile
      if (!m) {
        fail_reading(*s, m.error());
        break;
      }
      // The reply is copied while its call is still in line: if the copy
      // throws (bad_alloc, below), fail() finds the call there and answers it.
      call_waiter* w = s->fifo.front();
      std::optional<message> reply;
      if (w) reply.emplace(message::from_view(*m));
      s->fifo.pop_front();
      ++s->front_seq;
      // No call waits for another reply: this reader stops, and a large
      // reply's receive-budget reservation and buffer would stay taken for
      // as long as the client idles (review17 F2). It is copied: let them go.
      if (s->fifo.empty()) s->conn->done_with_message();
      if (w) w->deliver(std::move(*reply));
    }
  } catch (const std::bad_alloc&) {
    s->fail(std::make_error_code(std::errc::not_enough_memory), "out of memory reading a reply");
  }
  s->reading = false;
  if (s->broken) s->conn.reset();
}

// A send that failed because the server is gone (it reset the connection,
// or closed it) fails no call by itself: the replies the server sent before
// it went are still in the socket. The connection reads past such a
// failure (connection::reads_past_send_failure), so the reader delivers
// them, and its next read ends on the end of the stream or the reset and
// fails the calls left then. A pipelined client that failed every call on
// the send saw "after 1 of 50 responses" from a server that had answered 2
// (a race: the send's error came before the reader's recv).
bool replies_may_follow(const client_state& s) { return s.conn && s.conn->reads_past_send_failure(); }

// Sends what the calls of one loop turn queued (see do_call).
task<void> flush_soon(client_ref ref) {
  client_state* s = ref.get();
  s->flush_scheduled = false;  // calls made while this waits schedule the next
  if (s->broken) co_return;
  result<void> f = co_await s->conn->flush();
  // The reader runs (flush_soon is spawned only then): it ends the calls.
  if (!f && !replies_may_follow(*s)) s->fail(f.error(), "cannot send: ", true);
}

task<result<message>> do_call(client_ref ref, message request, const std::stop_token* stop) {
  client_state* s = ref.get();
  if (!s) co_return errno_code(ENOTCONN);
  if (s->broken) co_return s->broken;
  if (stop && stop->stop_requested()) co_return errno_code(ECANCELED);
  std::string frame;
  if (result<void> e = encode_frame(request, frame); !e) co_return e.error();  // this call's fault alone
  call_waiter w(s, stop);
  // The slot is taken in the same step as the bytes are queued: the line's
  // order is the write order, whatever suspends below.
  w.enqueue();
  std::optional<detail::write_awaitable> queued;
  try {
    queued.emplace(s->conn->write_raw(std::as_bytes(std::span(frame.data(), frame.size()))));
  } catch (...) {
    // bad_alloc from the append, which leaves the output as it was: no slot
    // without its request, or the next reply would go to the wrong call.
    w.take_back();
    throw;
  }
  detail::write_awaitable& queued_write = *queued;  // named: g++ 12 would copy `*queued`
  // Not awaited when it would wait for room (more than max_unsent_bytes
  // queued): that wait is a flush, which this call's stop token does not
  // reach, so a call cancelled then (when_any, with_timeout) went on waiting
  // until the bytes were sent or write_timeout broke the client. The bytes
  // are queued already, so the wait bounds no memory, and the call waits for
  // its reply below anyway (cancellably): the reader or flush_soon, started
  // below, sends them, and fails the client if that fails.
  result<void> q;
  if (queued_write.await_ready()) q = queued_write.await_resume();
  // From here on the connection may be gone (broken, closed): check first.
  if (!q && !replies_may_follow(*s)) s->fail(q.error(), "cannot send: ", true);
  if (s->broken) {
    // fail() has given this call its outcome.
  } else if (!s->reading) {
    s->ex->spawn(read_replies(ref));  // its read_message starts sending what is queued
    s->reading = true;  // only once it is spawned: if that throws, the next call starts one
  } else if (!s->flush_scheduled) {
    // The reader waits in a recv already: the request must go out now, not
    // when the reply before it comes. One flush on the loop's next turn
    // sends every request made during this one, in one send.
    s->ex->spawn(flush_soon(ref));
    // Only once it is spawned: set before, a spawn that threw (bad_alloc)
    // left it set for good, and no later call's request went out before the
    // reply ahead of it (review21 F4). If it throws, the next call tries.
    s->flush_scheduled = true;
  }
  result<message> r = co_await w;
  co_return r;
}

bool worth_retrying(std::error_code ec) {
  return ec == std::errc::connection_refused || ec == std::errc::connection_reset ||
         ec == std::errc::connection_aborted || ec == std::errc::host_unreachable ||
         ec == std::errc::network_unreachable || ec == std::errc::resource_unavailable_try_again ||
         ec == std::errc::no_such_file_or_directory;  // a Unix socket not bound yet
}

std::chrono::nanoseconds left_until(std::chrono::steady_clock::time_point deadline) {
  if (deadline == std::chrono::steady_clock::time_point::max()) return std::chrono::hours(24 * 365);
  return deadline - std::chrono::steady_clock::now();
}

task<result<framed_client>> connect_to(executor* ex, std::vector<address> addrs, framed_client_options o,
                                       std::chrono::steady_clock::time_point deadline, std::stop_token stop) {
  if (addrs.empty()) co_return errno_code(EINVAL);
  std::error_code last = std::make_error_code(std::errc::host_unreachable);
  std::chrono::nanoseconds delay = o.retry.delay;
  const int attempts = std::max(1, o.retry.attempts);
  for (int attempt = 1;; ++attempt) {
    // Every address, RFC 8305 style (detail/happy_eyeballs.hpp), none past the deadline.
    task<result<socket>> round = connect_first(ex, addrs, o.happy_eyeballs_delay, {}, deadline, stop);
    result<socket> s = co_await std::move(round);
    if (s) co_return framed_client::adopt(std::move(*s), o);
    last = s.error();
    if (last == std::errc::operation_canceled) co_return last;
    if (attempt >= attempts || !worth_retrying(last)) co_return last;
    const std::chrono::nanoseconds left = left_until(deadline);
    if (left <= delay) co_return errno_code(ETIMEDOUT);  // the next attempt would start after the deadline
    result<void> slept = co_await sleep_for(*ex, delay, &stop);
    if (!slept) co_return slept.error();
    delay = std::min(saturating_ns(delay * o.retry.backoff), o.retry.max_delay);
  }
}

std::chrono::steady_clock::time_point deadline_of(std::chrono::nanoseconds timeout) {
  if (timeout.count() <= 0) return std::chrono::steady_clock::time_point::max();
  return saturating_add(std::chrono::steady_clock::now(), timeout);
}

}  // namespace
}  // namespace detail

framed_client& framed_client::operator=(framed_client&& o) noexcept {
  if (this != &o) {
    close();
    s_ = std::move(o.s_);
  }
  return *this;
}

framed_client::~framed_client() { close(); }

task<result<framed_client>> framed_client::connect(executor& ex, address to, framed_client_options o,
                                                   std::stop_token stop) {
  return detail::connect_to(&ex, std::vector<address>{to}, o, detail::deadline_of(o.connect_timeout), std::move(stop));
}

task<result<framed_client>> framed_client::connect(executor& ex, std::vector<address> to, framed_client_options o,
                                                   std::stop_token stop) {
  return detail::connect_to(&ex, std::move(to), o, detail::deadline_of(o.connect_timeout), std::move(stop));
}

task<result<framed_client>> framed_client::connect(executor& ex, std::string host, std::uint16_t port,
                                                   framed_client_options o, std::stop_token stop) {
  const auto deadline = detail::deadline_of(o.connect_timeout);
  // Tasks named before they are awaited: g++ 12 may destroy a temporary
  // with a destructor in a co_await expression twice.
  task<result<std::vector<address>>> lookup =
      resolve(ex, std::move(host), port, {.timeout = detail::left_until(deadline), .stop = &stop});
  result<std::vector<address>> addrs = co_await std::move(lookup);
  if (!addrs) co_return addrs.error();
  task<result<framed_client>> attempts = detail::connect_to(&ex, std::move(*addrs), o, deadline, stop);
  result<framed_client> c = co_await std::move(attempts);
  co_return c;
}

framed_client framed_client::adopt(socket s, framed_client_options o) {
  detail::client_ref ref(new detail::client_state);
  ref->ex = &s.get_executor();
  if (result<address> p = s.peer_address()) ref->peer = *p;
  s.set_stop_token(ref->stop.get_token());
  connection_options co = o.connection;
  co.idle_timeout = co.message_timeout = o.reply_timeout;
  // A reply's wait starts once the requests ahead of it are sent; until
  // then write_timeout bounds it (restarted by each reply). Without one, a
  // server that took no request held the calls for ever, past the
  // reply_timeout they were promised.
  if (co.write_timeout.count() <= 0) co.write_timeout = o.reply_timeout;
  // Replies stay outside the thread's receive budget: each answers a call
  // made here, so the calls bound them, and a reply that waited for room
  // could wait for good behind a handler that holds its own request while
  // it waits for this very reply (a proxy: review17 F4).
  co.thread_receive_budget = 0;
  // Replies are read while requests are still queued: the server stops
  // reading a client whose replies pile up, so a reader that waited for
  // its requests to be sent would wait with it (review31 F2's cause).
  co.read_while_sending = true;
  ref->conn = std::make_unique<connection>(std::move(s), co);
  return framed_client(std::move(ref));
}

task<result<message>> framed_client::call(message request, const std::stop_token* stop) {
  // Not a coroutine itself: the call holds the state, not this object,
  // which may be moved or destroyed while the call waits.
  return detail::do_call(s_, std::move(request), stop);
}

void framed_client::close() noexcept {
  if (!s_) return;
  if (!s_->broken) s_->fail(errno_code(ECANCELED), "the client was closed");
}

bool framed_client::is_open() const noexcept { return s_ && !s_->broken; }

std::error_code framed_client::error() const noexcept {
  if (!s_) return errno_code(ENOTCONN);
  return s_->broken;
}

std::string framed_client::failure_detail() const {
  if (!s_) return "not connected";
  if (!s_->broken) return std::string();
  return s_->detail.empty() ? s_->broken.message() : s_->detail;  // empty: fail() ran out of memory
}

std::size_t framed_client::pending() const noexcept { return s_ ? s_->fifo.size() : 0; }

const address& framed_client::peer() const noexcept {
  static const address none;
  return s_ ? s_->peer : none;
}

}  // namespace ringframe
