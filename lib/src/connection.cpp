#include <ringframe/connection.hpp>
#include <ringframe/detail/saturating_time.hpp>
#include <ringframe/latency_histogram.hpp>

#include <poll.h>

#include <algorithm>
#include <cerrno>
#include <new>
#include <utility>


namespace ringframe {

namespace detail {

bool read_message_awaitable::refuse_second_reader() noexcept {
  // Two readers would share one receive slot and split the stream.
  ready_.emplace(std::make_error_code(std::errc::device_or_resource_busy));
  return true;
}

[[gnu::hot]] std::coroutine_handle<> read_message_awaitable::await_suspend(std::coroutine_handle<> h) {
  c_->reading_ = true;
  wait_.h = h;
  try {
    if (c_->start_fast_read(this)) return std::noop_coroutine();
    // Everything else (a frame in progress, backpressure, no provided
    // buffers...) runs in a coroutine of its own, made only now.
    slow_ = c_->read_slow();
  } catch (...) {
    // No read is waiting after all (bad_alloc for read_slow's frame, a
    // submission that failed): the reader gets the exception, and the
    // connection must not go on saying that a read is in progress (review12
    // F2: every later read_message was device_or_resource_busy).
    c_->fast_ = nullptr;
    c_->reading_ = false;
    throw;
  }
  slow_.handle().promise().continuation = h;
  return slow_.handle();
}

result<message_view> read_message_awaitable::resume_slow() {
  c_->reading_ = false;
  return slow_.take_result();
}

std::coroutine_handle<> write_awaitable::await_suspend(std::coroutine_handle<> h) {
  ++c_->backpressure_pauses_;  // queued, and max_unsent_bytes reached
  flush_ = c_->flush();
  flush_.handle().promise().continuation = h;
  return flush_.handle();
}


// read_slow's recv: one read of the receive stream.
struct read_slot_awaitable {
  connection* c;
  bool between_frames;
  bool await_ready() { return !c->recv_.start(between_frames); }
  void await_suspend(std::coroutine_handle<> h) noexcept { c->read_waiter_ = h; }
  int await_resume() noexcept { return c->recv_.outcome(); }
};

// flush: wait until the send in flight has finished (or failed).
struct send_idle_awaitable {
  connection* c;
  send_waiter node;
  bool await_ready() const noexcept { return !c->send_.busy(); }
  void await_suspend(std::coroutine_handle<> h) noexcept {
    node.h = h;
    c->send_.wait(&node);
  }
  void await_resume() const noexcept {}
};

}  // namespace detail

namespace {
send_queue::options send_options(const connection_options& o) {
  send_queue::options so;
  so.write_timeout = o.write_timeout;
  so.zero_copy_threshold = o.zero_copy_threshold;
  so.keep_capacity = 4 * o.max_unsent_bytes;
  return so;
}

receive_stream::options receive_options(const connection_options& o) {
  receive_stream::options ro;
  ro.provided_buffers = o.provided_buffers;
  ro.multishot = o.multishot_recv;
  ro.read_size = o.read_size;
  ro.budget = o.thread_receive_budget;
  return ro;
}
}  // namespace

connection::connection(socket s, connection_options o) : connection(std::move(s), o, listed_by_server{}) {
  // Registered once, not per operation: stopping the socket's owner
  // cancels whatever this connection has in flight.
  if (sock_.stop_token().stop_possible()) stop_cbs().all.emplace(sock_.stop_token(), stop_all{this});
}

connection::connection(socket s, const connection_options& o, listed_by_server)
    : sock_(std::move(s)),
      opts_{o.idle_timeout, o.message_timeout, o.max_unsent_bytes, o.gather_threshold},
      decoder_(o.limits),
      recv_(sock_, decoder_, receive_options(o), &connection::on_read_done, this, &bytes_in),
      send_(sock_, send_options(o), &bytes_out),
      read_while_sending_(o.read_while_sending) {
  send_.on_event(&connection::on_send_event, this);
}

connection::stop_callbacks& connection::stop_cbs() {
  if (!stop_cbs_) stop_cbs_ = std::make_unique<stop_callbacks>();
  return *stop_cbs_;
}

connection::~connection() {
  // First the stop callbacks (their destructors wait for one running on
  // another thread); recv_ and send_ then withdraw what they deferred.
  stop_cbs_.reset();
  if (anchor_) {
    anchor_->c = nullptr;
    connection_handle::release(anchor_);
  }
  // Flushers on other coroutines are posted by ~send_queue: resumed from
  // the ready queue, they find their handle null and return ENOTCONN.
}

connection_handle connection::handle() {
  if (!anchor_) anchor_ = new detail::connection_anchor{this, 1};
  return connection_handle(anchor_);
}

void connection::set_read_stop(const std::stop_token* t) {
  if (stop_cbs_) stop_cbs_->reads.reset();
  recv_.set_stop(t);
  if (t && t->stop_possible()) stop_cbs().reads.emplace(*t, stop_reads{this});
}

[[gnu::hot]] bool connection::try_read_buffered(std::optional<result<message_view>>& out) {
  if (unsent_bytes() >= opts_.max_unsent_bytes && !read_while_sending_) return false;  // send first
  // The reader is done with the last message: what its frame reserved goes back.
  if (std::exchange(budget_frame_out_, false)) recv_.release_budget();
  // Decoded straight into the reader's slot (no copy of the view); emptied
  // again when no message is complete.
  message_view& v = *out.emplace(message_view{});
  frame_decoder::status st;
  try {
    st = decoder_.next(v);
  } catch (...) {  // bad_alloc: no half-made message is left for the reader
    out.reset();
    throw;
  }
  if (st != frame_decoder::status::need_more && recv_.reserved()) budget_frame_out_ = true;
  switch (st) {
    case frame_decoder::status::message:
      ++messages_in;
      received_at_ = sock_.get_executor().now();
      // A reply to the requests being sent: the peer takes them as fast as
      // it answers them, and it answers. write_timeout bounds a batch the
      // peer takes while answering nothing (review36 F1: a deep pipeline to
      // a server that answered every 20 ms failed with ETIMEDOUT once its
      // batch took longer than write_timeout to be read).
      if (read_while_sending_) send_.restart_deadline();
      if (message_deadline_) {
        message_deadline_ = false;
        recv_.cancel_deadline();
        recv_.forgive_timeout();  // it came in whole after all
      }
      return true;
    case frame_decoder::status::error:
      if (message_deadline_) {
        message_deadline_ = false;
        recv_.cancel_deadline();
      }
      out.emplace(make_error_code(decoder_.error().code));
      return true;
    case frame_decoder::status::need_more:
      break;
  }
  out.reset();
  return false;
}

// ---- receiving ----

void connection::done_with_message() noexcept {
  if (reading_) return;  // a read may be receiving into the decoder's buffer
  if (std::exchange(budget_frame_out_, false)) recv_.release_budget();
  decoder_.drop_message();
}

[[gnu::hot]] void connection::arm_read_deadline(bool between_frames) {
  if (between_frames) {
    if (opts_.idle_timeout.count() > 0) recv_.arm_deadline(opts_.idle_timeout);
  } else if (opts_.message_timeout.count() > 0 && (!message_deadline_ || !recv_.deadline_armed())) {
    // Armed once per message, from its first byte; again only when it fired
    // and data won the race with its cancellation (the peer then gets a new
    // message_timeout, never none at all).
    message_deadline_ = true;
    recv_.arm_deadline(opts_.message_timeout);
  }
}

[[gnu::hot]] void connection::on_read_done(void* self) {
  auto* c = static_cast<connection*>(self);
  if (c->read_waiter_) return std::exchange(c->read_waiter_, {}).resume();
  if (c->fast_) c->fast_read_done();
}

[[gnu::hot]] bool connection::start_fast_read(detail::read_message_awaitable* aw) {
  if (decoder_.mid_frame() || peer_closed_ || send_.failed() ||
      (unsent_bytes() >= opts_.max_unsent_bytes && !read_while_sending_) || !recv_.can_wait_between_frames())
    return false;
  // Nothing buffered: give the receive buffer back before waiting.
  decoder_.shrink_if_idle();
  // The replies queued so far go out in one send, submitted beside the recv
  // (one io_uring_enter for both); the reader resumes once both are done.
  send_.start();
  if (send_.failed()) return false;
  // The idle timeout is the peer's time to send its next request, from when
  // the replies it waits for are out: a request/response peer sends nothing
  // while it reads a long reply (review19 F3: it was cut off as idle while
  // it read). read_slow flushes before it arms it, as this does once the
  // send is done (on_send_event).
  idle_after_send_ = send_.busy();
  if (!idle_after_send_) arm_read_deadline(true);
  fast_ = aw;
  bool waits;
  try {
    waits = recv_.start(true);
  } catch (...) {
    // The recv could not be submitted (bad_alloc): no read waits, so no
    // idle deadline may either (review36 N3: it fired later and refused
    // the reader's next read with ETIMEDOUT).
    fast_ = nullptr;
    idle_after_send_ = false;
    recv_.cancel_deadline();
    throw;
  }
  if (waits) return true;
  // can_wait_between_frames() said nothing was to be reported first: not reached.
  fast_ = nullptr;
  idle_after_send_ = false;
  recv_.cancel_deadline();
  return false;
}

[[gnu::hot]] void connection::fast_read_done() {
  detail::read_message_awaitable* aw = std::exchange(fast_, nullptr);
  idle_after_send_ = false;
  recv_.cancel_deadline();
  const int r = recv_.outcome();
  if (r > 0) {
    // Decoding allocates at times (a bad header's detail, the parser's
    // growth); from a completion, a bad_alloc must fail the reader, not
    // escape the executor's loop (review12 F3b). Nothing is consumed: the
    // frame is still buffered for a retry.
    bool whole;
    try {
      whole = try_read_buffered(aw->ready_);
    } catch (const std::bad_alloc&) {
      return finish_fast_read(aw, errno_code(ENOMEM));
    }
    if (whole) return finish_fast_read(aw);
    return continue_slow(aw);  // a frame in progress: read the rest
  }
  if (r == 0 || r == -EINTR || r == -EAGAIN) {
    if (r == 0) peer_closed_ = true;
    return continue_slow(aw);  // retries, or flushes and reports the end
  }
  // A recv cancelled because the send failed reports the send's error.
  if (send_.failed() && r == -ECANCELED) return finish_fast_read(aw, send_.error());
  finish_fast_read(aw, errno_code(-r));
}

[[gnu::hot]] void connection::finish_fast_read(detail::read_message_awaitable* aw, result<message_view> r) {
  aw->ready_.emplace(std::move(r));
  finish_fast_read(aw);
}

[[gnu::hot]] void connection::finish_fast_read(detail::read_message_awaitable* aw) {
  if (send_.busy() && !read_while_sending_) {  // the reader resumes when the send is done too
    send_.wait(&aw->wait_);
    return;
  }
  aw->wait_.h.resume();
}

void connection::continue_slow(detail::read_message_awaitable* aw) {
  // From a recv's completion: an exception here would escape the executor's
  // loop (its run() throws, for every connection of the thread) and leave
  // the reader suspended for good (review12 F3). The reader fails instead,
  // like a decoder that cannot grow.
  try {
    aw->slow_ = read_slow();
  } catch (const std::bad_alloc&) {
    return finish_fast_read(aw, errno_code(ENOMEM));
  }
  aw->slow_.handle().promise().continuation = aw->wait_.h;
  aw->slow_.handle().resume();
}

task<result<message_view>> connection::read_slow() {
  for (;;) {
    // Replies can no longer go out: reading on would only pile up requests
    // (a multishot recv cancelled by the failure sends the reader round).
    if (send_.failed() && send_failure_ends_reads()) co_return send_.error();
    // Backpressure: a peer that does not take its replies is not read from.
    if (unsent_bytes() >= opts_.max_unsent_bytes && !read_while_sending_) {
      ++backpressure_pauses_;
      result<void> f = co_await flush();
      if (!f) co_return f.error();
    }
    {
      std::optional<result<message_view>> r;
      if (try_read_buffered(r)) co_return std::move(*r);
    }
    // Nothing complete is buffered: send the queued replies before waiting
    // (and let a send in flight finish: nothing outlives read_message); a
    // reader that reads while sending starts the send and reads beside it.
    if (read_while_sending_) {
      if (!send_.failed() && send_.unsent() > 0 && !send_.busy()) {
        send_.start();
        if (send_.failed()) continue;  // reported above, or read past
      }
    } else if (send_.unsent() > 0 || send_.busy()) {
      result<void> f = co_await flush();
      if (!f) co_return f.error();
    }
    if (peer_closed_)
      co_return make_error_code(decoder_.mid_frame() ? frame_errc::truncated : frame_errc::end_of_stream);

    const bool between_frames = !decoder_.mid_frame();
    if (between_frames) decoder_.shrink_if_idle();
    // The idle time starts once what is queued is out (on_send_event), as
    // on the fast path: a peer still taking a long request is not idle.
    idle_after_send_ = between_frames && send_.busy();
    if (!idle_after_send_) arm_read_deadline(between_frames);
    int res;
    try {
      res = co_await detail::read_slot_awaitable{this, between_frames};
    } catch (...) {
      // No recv waits (its submission threw): nor does the idle deadline
      // armed for it (review36 N3). A message's deadline stays: it bounds
      // the message, however many reads it takes.
      idle_after_send_ = false;
      if (between_frames) recv_.cancel_deadline();
      throw;
    }
    idle_after_send_ = false;
    if (between_frames) recv_.cancel_deadline();
    if (res > 0 || res == -EINTR || res == -EAGAIN) continue;
    if (res == 0) {
      peer_closed_ = true;
      continue;
    }
    if (send_.failed() && res == -ECANCELED) co_return send_.error();
    co_return errno_code(-res);
  }
}

// ---- sending ----

[[gnu::hot]] void connection::on_send_event(void* self, bool failed) noexcept {
  auto* c = static_cast<connection*>(self);
  if (!failed) {
    // The replies a fast read sent beside its recv are out: the peer's idle
    // time starts now (review19 F3).
    if ((c->fast_ || c->read_waiter_) && std::exchange(c->idle_after_send_, false)) {
      try {
        c->arm_read_deadline(true);
      } catch (...) {  // bad_alloc for the deadline's list: no read without its deadline
        c->recv_.stop();
      }
    }
    return;
  }
  // A reader waiting on the fast path or in read_slow (no provided buffers,
  // a frame in progress) while another coroutine's send fails: its recv is
  // cancelled, and read_slow reports the send's error (review19 F1: it
  // waited for its idle or message timeout).
  const std::error_code e = c->send_.error();
  c->reads_past_send_failure_ = c->read_while_sending_ &&
                                (e == std::errc::connection_reset || e == std::errc::broken_pipe) &&
                                c->peer_sends_no_more();
  if (!(c->fast_ || c->read_waiter_)) return;
  if (!c->reads_past_send_failure_) return c->recv_.stop();
  // The read goes on: the idle deadline that waited for this send bounds it
  // now, as when a send completes (without it, a recv beside a send that
  // failed had no deadline at all on io_uring: review49).
  if (std::exchange(c->idle_after_send_, false)) {
    try {
      c->arm_read_deadline(true);
    } catch (...) {
      c->recv_.stop();
    }
  }
}

bool connection::peer_sends_no_more() const noexcept {
  pollfd p{sock_.fd(), POLLRDHUP, 0};
  int r;
  do {
    r = ::poll(&p, 1, 0);
  } while (r < 0 && errno == EINTR);
  return r == 1 && (p.revents & (POLLHUP | POLLRDHUP)) != 0;
}

void connection::record_handling_time(const result<void>& r) noexcept {
  if (!r || received_at_.time_since_epoch().count() == 0) return;
  auto d = std::chrono::steady_clock::now() - std::exchange(received_at_, {});
  sock_.get_executor().handling_time_sink()->record(
      static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(d).count()));
}

detail::write_awaitable connection::write(const message& m) {
  if (send_.failed()) return detail::write_awaitable(this, send_.error());
  return queued(encode_frame(m, send_.out()));
}


detail::write_awaitable connection::write(const header_fields& h, std::span<const std::byte> content) {
  if (send_.failed()) return detail::write_awaitable(this, send_.error());
  if (can_share(content)) {
    const std::size_t before = send_.out().size();
    result<void> r = encode_frame_header(h, content.size(), send_.out());
    if (!r) return queued(r);
    bool shared;
    try {
      shared = send_.append_shared(decoder_.share(), content);
    } catch (...) {  // bad_alloc: no header without its content is left queued
      send_.out().resize(before);
      throw;
    }
    if (shared) return queued(r);
    send_.out().resize(before);  // too many pieces wait: copied below
  }
  return queued(encode_frame(h, content, send_.out()));
}

detail::write_awaitable connection::write_raw_queue(std::span<const std::byte> frame) {
  if (send_.failed()) return detail::write_awaitable(this, send_.error());
  if (!can_share(frame) || !send_.append_shared(decoder_.share(), frame))
    send_.out().append(reinterpret_cast<const char*>(frame.data()), frame.size());
  return queued({});
}

detail::write_awaitable connection::write_error(std::string_view detail) {
  std::string json = error_reply_json(detail);
  header_fields h{"text/json", "utf-8"};
  return write(h, std::as_bytes(std::span(json.data(), json.size())));
}

task<void> connection::close_gracefully(std::chrono::nanoseconds linger) {
  recv_.stop();  // a multishot recv still armed: the lingering reads below take over
  recv_.release_budget();  // no frame will be read any more
  result<void> f = co_await flush();
  if (!f || peer_closed_ || !sock_.is_open()) co_return;  // nothing more to protect
  result<void> sh = co_await sock_.shutdown(SHUT_WR);
  if (!sh) co_return;
  auto deadline = detail::saturating_add(std::chrono::steady_clock::now(), linger);
  std::byte scratch[4096];
  for (;;) {
    auto left = deadline - std::chrono::steady_clock::now();
    if (left.count() <= 0) co_return;
    result<std::size_t> n = co_await sock_.recv(scratch, {.timeout = left});
    if (!n || *n == 0) co_return;
  }
}

task<result<void>> connection::flush() { return flush_until_sent(handle()); }

// Static, holding a handle: after every resume the connection is looked up
// again, since it may have been destroyed while this waited.
task<result<void>> connection::flush_until_sent(connection_handle h) {
  for (;;) {
    connection* c = h.get();
    if (!c) co_return errno_code(ENOTCONN);
    if (c->send_.failed()) co_return c->send_.error();
    if (!c->send_.busy()) {
      if (c->send_.unsent() == 0) co_return result<void>{};
      c->send_.start();
      continue;  // it may have failed at once
    }
    co_await detail::send_idle_awaitable{c, {}};
  }
}

}  // namespace ringframe
