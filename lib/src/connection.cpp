#include <ringframe/connection.hpp>

#include <algorithm>
#include <cerrno>
#include <utility>

#include <liburing.h>

namespace ringframe {

namespace detail {

bool read_message_awaitable::await_ready() {
  if (c_->reading_) {
    // Two readers would share one receive slot and split the stream.
    ready_.emplace(std::make_error_code(std::errc::device_or_resource_busy));
    return true;
  }
  if (c_->has_held()) c_->drain_held();
  ready_ = c_->try_read_buffered();
  return ready_.has_value();
}

std::coroutine_handle<> read_message_awaitable::await_suspend(std::coroutine_handle<> h) {
  c_->reading_ = true;
  wait_.h = h;
  if (c_->start_fast_read(this)) return std::noop_coroutine();
  // Everything else (a frame in progress, backpressure, no provided
  // buffers...) runs in a coroutine of its own, made only now.
  slow_ = c_->read_slow();
  slow_.handle().promise().continuation = h;
  return slow_.handle();
}

result<message_view> read_message_awaitable::await_resume() {
  if (ready_) {
    if (wait_.h) c_->reading_ = false;  // this one waited
    return std::move(*ready_);
  }
  c_->reading_ = false;
  return slow_.take_result();
}

bool write_awaitable::await_ready() const noexcept {
  return !queued_ || c_->unsent_bytes() < c_->opts_.max_unsent_bytes;
}

std::coroutine_handle<> write_awaitable::await_suspend(std::coroutine_handle<> h) {
  flush_ = c_->flush();
  flush_.handle().promise().continuation = h;
  return flush_.handle();
}

result<void> write_awaitable::await_resume() {
  if (!queued_ || !flush_.valid()) return queued_;
  return flush_.take_result();
}

// read_slow's recv: through the connection's read slot.
struct read_slot_awaitable {
  connection* c;
  buffer_ring* br;
  std::span<std::byte> room;
  bool await_ready() {
    c->read_slot_.flags = 0;
    if (c->has_held()) {
      // Bytes that came in on the multishot recv meanwhile: decode them
      // first (read_slow goes round again on EAGAIN).
      c->drain_held();
      c->read_slot_.res = -EAGAIN;
      return true;
    }
    if (c->ms_ended()) {  // the multishot recv ended while nobody waited
      c->ms_slot_->ended = false;
      c->read_slot_.res = c->ms_slot_->end_res;
      return true;
    }
    if (int e = c->read_refusal()) {
      // Reported like a cancelled recv (take_read_result maps a timeout).
      c->read_slot_.res = e == ETIMEDOUT ? -ECANCELED : -e;
      return true;
    }
    return false;
  }
  void await_suspend(std::coroutine_handle<> h) {
    c->read_waiter_ = h;
    c->start_read(br, room);
  }
  int await_resume() noexcept { return c->take_read_result(); }
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
}  // namespace

connection::connection(socket s, connection_options o)
    : sock_(std::move(s)), opts_(o), decoder_(o.limits), send_(sock_, send_options(o), &bytes_out) {
  read_slot_.owner = this;
  read_slot_.on_cqe = &connection::on_read_cqe;
  send_.on_failure(&connection::on_send_failed, this);
  // Registered once, not per operation: stopping the socket's owner (the
  // server) cancels whatever this connection has in flight.
  if (sock_.stop_token().stop_possible()) stop_cb_.emplace(sock_.stop_token(), stop_all{this});
}

connection::~connection() {
  executor& ex = sock_.get_executor();
  // First the stop callbacks (their destructors wait for one running on
  // another thread), then what they may have deferred.
  stop_cb_.reset();
  read_stop_cb_.reset();
  ex.withdraw(&deferred_);
  if (anchor_) {
    anchor_->c = nullptr;
    connection_handle::release(anchor_);
  }
  // Flushers on other coroutines are posted by ~send_queue: resumed from
  // the ready queue, they find their handle null and return ENOTCONN.
  if (!ms_slot_) return;
  for (std::uint8_t i = 0; i < ms_slot_->held_n; ++i) ms_slot_->br->recycle(ms_slot_->held[i].id);
  if (ms_armed_) {
    // The kernel still holds the multishot recv: leave its completion
    // behind to take the last CQE (see multishot_slot).
    multishot_slot* slot = ms_slot_.release();
    slot->owner = nullptr;
    slot->leftover_cancel.ex = &ex;
    if (!slot->cancelling && !ex.try_cancel(detail::key_of(slot))) ex.defer(&slot->leftover_cancel);
  }
}

void connection::multishot_slot::retry::run(detail::deferred_call* d, bool run) {
  auto* r = static_cast<retry*>(d);
  if (run && !r->ex->try_cancel(detail::key_of(r->slot))) r->ex->defer(r);
}

connection_handle connection::handle() {
  if (!anchor_) anchor_ = new detail::connection_anchor{this, 1};
  return connection_handle(anchor_);
}

void connection::set_read_stop(const std::stop_token* t) {
  read_stop_cb_.reset();
  read_stop_ = t;
  if (t && t->stop_possible()) read_stop_cb_.emplace(*t, stop_reads{this});
}

void connection::stop_reads::operator()() noexcept {
  executor& ex = c->sock_.get_executor();
  if (ex.on_own_thread()) return c->stop_reads_here();
  c->remote_stop_.fetch_or(remote_stop_reads);
  ex.defer(&c->deferred_);
}

void connection::stop_all::operator()() noexcept {
  executor& ex = c->sock_.get_executor();
  if (ex.on_own_thread()) return c->stop_all_here();
  c->remote_stop_.fetch_or(remote_stop_all);
  ex.defer(&c->deferred_);
}

void connection::stop_reads_here() noexcept {
  if (read_slot_.busy) cancel_slot(read_slot_, owe_read);
  if (ms_armed_) cancel_multishot(false);
}

void connection::stop_all_here() noexcept {
  stop_reads_here();
  send_.cancel();
}

void connection::deferred::run(detail::deferred_call* d, bool run) {
  if (!run) return;
  connection* c = static_cast<deferred*>(d)->c;
  std::uint8_t stop = c->remote_stop_.exchange(0);
  if (stop & remote_stop_all) c->stop_all_here();
  else if (stop & remote_stop_reads) c->stop_reads_here();
  std::uint8_t owed = std::exchange(c->cancel_owed_, 0);
  if ((owed & owe_read) && c->read_slot_.busy) c->cancel_slot(c->read_slot_, owe_read);
  if ((owed & owe_multishot) && c->ms_armed_) c->cancel_slot(*c->ms_slot_, owe_multishot);
}

void connection::cancel_slot(io_slot& slot, std::uint8_t bit) noexcept {
  executor& ex = sock_.get_executor();
  if (ex.try_cancel(detail::key_of(&slot))) return;
  cancel_owed_ |= bit;
  ex.defer(&deferred_);
}

std::optional<result<message_view>> connection::try_read_buffered() {
  if (unsent_bytes() >= opts_.max_unsent_bytes) return std::nullopt;  // send first
  message_view v;
  switch (decoder_.next(v)) {
    case frame_decoder::status::message:
      ++messages_in;
      if (message_deadline_) {
        message_deadline_ = false;
        read_deadline_.cancel();
        read_timed_out_ = false;  // it came in whole after all
      }
      return result<message_view>(v);
    case frame_decoder::status::error:
      if (message_deadline_) {
        message_deadline_ = false;
        read_deadline_.cancel();
      }
      return result<message_view>(make_error_code(decoder_.error().code));
    case frame_decoder::status::need_more:
      break;
  }
  return std::nullopt;
}

// ---- receiving ----

int connection::read_refusal() const noexcept {
  if (read_timed_out_) return ETIMEDOUT;
  if (sock_.get_executor().stopping()) return ECANCELED;
  if (read_stop_ && read_stop_->stop_requested()) return ECANCELED;
  if (sock_.stop_token().stop_requested()) return ECANCELED;
  return 0;
}

void connection::submit_read(buffer_ring* br, std::span<std::byte> room) {
  executor& ex = sock_.get_executor();
  io_uring_sqe* sqe = ex.get_sqe(1);
  if (br) {
    io_uring_prep_recv(sqe, sock_.fd(), nullptr, br->buffer_size(), 0);
    sqe->flags |= IOSQE_BUFFER_SELECT;
    sqe->buf_group = br->group();
  } else {
    io_uring_prep_recv(sqe, sock_.fd(), room.data(), room.size(), 0);
  }
  io_uring_sqe_set_data64(sqe, detail::key_of(&read_slot_));
  ex.note_submitted(1);
  read_slot_.busy = true;
}

int connection::take_read_result() noexcept {
  int r = read_slot_.res;
  // The deadline fired; if the recv finished anyway, the data wins. A reader
  // sent round (EAGAIN: the multishot recv ended) leaves the flag for
  // read_refusal() to report.
  if (read_timed_out_ && r != -EAGAIN) {
    read_timed_out_ = false;
    if (r == -ECANCELED || r == -EINTR) r = -ETIMEDOUT;
  }
  return r;
}

void connection::on_read_cqe(detail::completion* c, int res, unsigned flags, bool) {
  connection* self = static_cast<io_slot*>(c)->owner;
  self->read_slot_.busy = false;
  self->cancel_owed_ &= static_cast<std::uint8_t>(~owe_read);  // nothing left to cancel
  self->read_slot_.res = res;
  self->read_slot_.flags = flags;
  if (self->read_waiter_) {
    std::exchange(self->read_waiter_, {}).resume();
    return;
  }
  if (self->fast_) self->fast_read_done();
}

void connection::on_read_deadline(deadline* d) {
  connection* self = static_cast<owned_deadline*>(d)->owner;
  self->read_timed_out_ = true;
  self->message_deadline_ = false;
  if (self->read_slot_.busy) self->cancel_slot(self->read_slot_, owe_read);
  if (self->ms_armed_) self->cancel_multishot(false);
}

bool connection::start_fast_read(detail::read_message_awaitable* aw) {
  if (decoder_.mid_frame() || !opts_.provided_buffers || last_read_large_ ||
      skip_ring_once_ || peer_closed_ || send_.error() || read_slot_.busy || ms_ended() ||
      unsent_bytes() >= opts_.max_unsent_bytes || read_refusal())
    return false;
  buffer_ring* br = sock_.get_executor().receive_buffers();
  if (!br) return false;
  // Nothing buffered: give the receive buffer back before waiting.
  decoder_.shrink_if_idle();
  // The replies queued so far go out in one send, submitted beside the recv
  // (one io_uring_enter for both); the reader resumes once both are done.
  send_.start();
  if (send_.error()) return false;
  if (opts_.idle_timeout.count() > 0) read_deadline_.arm(sock_.get_executor(), opts_.idle_timeout);
  fast_ = aw;
  start_read(br, {});
  return true;
}

void connection::fast_read_done() {
  detail::read_message_awaitable* aw = std::exchange(fast_, nullptr);
  read_deadline_.cancel();
  const int res = read_slot_.res;
  const unsigned flags = read_slot_.flags;
  buffer_ring* br = sock_.get_executor().receive_buffers();
  if (res > 0 && (flags & IORING_CQE_F_BUFFER)) {
    auto id = static_cast<std::uint16_t>(flags >> IORING_CQE_BUFFER_SHIFT);
    std::size_t len = static_cast<std::size_t>(res);
    read_timed_out_ = false;  // data won the race with the deadline
    decoder_.feed(br->data(id, len));
    br->recycle(id);
    bytes_in += len;
    note_read_size(len >= br->buffer_size() / 2);
    if (std::optional<result<message_view>> r = try_read_buffered()) return finish_fast_read(aw, std::move(*r));
    return continue_slow(aw);  // a frame in progress: read the rest
  }
  if (flags & IORING_CQE_F_BUFFER) br->recycle(static_cast<std::uint16_t>(flags >> IORING_CQE_BUFFER_SHIFT));
  if (res == -ENOBUFS) {  // every ring buffer is in use: read into our own
    sock_.get_executor().count_buffer_ring_empty();
    skip_ring_once_ = true;
    return continue_slow(aw);
  }
  if (res == 0 || res == -EINTR || res == -EAGAIN) {
    if (res == 0) peer_closed_ = true;
    return continue_slow(aw);  // retries, or flushes and reports the end
  }
  int r = take_read_result();
  // A recv cancelled because the send failed reports the send's error.
  if (send_.error() && r == -ECANCELED) return finish_fast_read(aw, send_.error());
  finish_fast_read(aw, errno_code(-r));
}

void connection::finish_fast_read(detail::read_message_awaitable* aw, result<message_view> r) {
  aw->ready_.emplace(std::move(r));
  if (send_.busy()) {  // the reader resumes when the send is done too
    send_.wait(&aw->wait_);
    return;
  }
  aw->wait_.h.resume();
}

void connection::continue_slow(detail::read_message_awaitable* aw) {
  aw->slow_ = read_slow();
  aw->slow_.handle().promise().continuation = aw->wait_.h;
  aw->slow_.handle().resume();
}

task<result<message_view>> connection::read_slow() {
  executor& ex = sock_.get_executor();
  for (;;) {
    // Backpressure: a peer that does not take its replies is not read from.
    if (unsent_bytes() >= opts_.max_unsent_bytes) {
      result<void> f = co_await flush();
      if (!f) co_return f.error();
    }
    if (std::optional<result<message_view>> r = try_read_buffered()) co_return std::move(*r);
    // Nothing complete is buffered: send the queued replies before waiting
    // (and let a send in flight finish: nothing outlives read_message).
    if (send_.unsent() > 0 || send_.busy()) {
      result<void> f = co_await flush();
      if (!f) co_return f.error();
    }
    if (peer_closed_)
      co_return make_error_code(decoder_.mid_frame() ? frame_errc::truncated : frame_errc::end_of_stream);

    const bool between_frames = !decoder_.mid_frame();
    if (between_frames) {
      decoder_.shrink_if_idle();
      if (opts_.idle_timeout.count() > 0) read_deadline_.arm(ex, opts_.idle_timeout);
    } else if (opts_.message_timeout.count() > 0 && !message_deadline_) {
      message_deadline_ = true;
      read_deadline_.arm(ex, opts_.message_timeout);
    }
    // Between frames, read into the executor's provided buffers: a waiting
    // connection then holds no receive buffer, and the few bytes that
    // arrive are copied into the decoder (which takes its buffer from a
    // per-thread pool and gives it back when idle). Mid-frame, read straight
    // into the decoder, so a large frame is received in place.
    // A connection whose last read was large is busy with large traffic:
    // reading straight into its own buffer spares the copy out of the ring.
    buffer_ring* br = !between_frames || !opts_.provided_buffers || last_read_large_ ? nullptr : ex.receive_buffers();
    // A multishot recv reads from the ring mid-frame too, while reads are
    // small; large ones go straight into the decoder, as above.
    if (multishot_suits()) br = ex.receive_buffers();
    if (std::exchange(skip_ring_once_, false)) br = nullptr;
    if (ms_armed_) {
      // Switching to direct reads: the multishot recv must end first (its
      // end comes back as EAGAIN, and the loop goes round).
      if (!br || !multishot_suits()) cancel_multishot(true);
      br = ms_slot_->br;
    }
    std::span<std::byte> room;
    if (!br) room = decoder_.prepare(opts_.read_size);
    int res = co_await detail::read_slot_awaitable{this, br, room};
    if (between_frames) read_deadline_.cancel();
    const unsigned flags = read_slot_.flags;
    if (br && (flags & IORING_CQE_F_BUFFER)) {
      auto id = static_cast<std::uint16_t>(flags >> IORING_CQE_BUFFER_SHIFT);
      if (res > 0) decoder_.feed(br->data(id, static_cast<std::size_t>(res)));
      br->recycle(id);
    }
    if (res == -EINTR || res == -EAGAIN) continue;
    if (res == -ENOBUFS && br) {
      ex.count_buffer_ring_empty();
      skip_ring_once_ = true;
      continue;
    }
    if (res < 0) {
      if (send_.error() && res == -ECANCELED) co_return send_.error();
      co_return errno_code(-res);
    }
    if (res == 0) {
      peer_closed_ = true;
      continue;
    }
    if (!br) decoder_.commit(static_cast<std::size_t>(res));
    bytes_in += static_cast<std::size_t>(res);
    note_read_size(static_cast<std::size_t>(res) >= (br ? br->buffer_size() : opts_.read_size) / 2);
  }
}

// ---- multishot receiving ----

void connection::start_read(buffer_ring* br, std::span<std::byte> room) {
  if (ms_armed_) return;  // wait on it: its next bytes, or its end (never two recvs)
  if (br && multishot_suits()) return arm_multishot(br);
  submit_read(br, room);
}

void connection::arm_multishot(buffer_ring* br) {
  if (!ms_slot_) {
    ms_slot_ = std::make_unique<multishot_slot>();
    ms_slot_->owner = this;
    ms_slot_->on_cqe = &connection::on_multishot_cqe;
  }
  ms_slot_->br = br;
  executor& ex = sock_.get_executor();
  io_uring_sqe* sqe = ex.get_sqe(1);
  io_uring_prep_recv_multishot(sqe, sock_.fd(), nullptr, 0, 0);
  sqe->flags |= IOSQE_BUFFER_SELECT;
  sqe->buf_group = br->group();
  io_uring_sqe_set_data64(sqe, detail::key_of(ms_slot_.get()));
  ex.note_submitted(1);
  ms_armed_ = true;
  ms_slot_->cancelling = false;
}

void connection::cancel_multishot(bool quietly) {
  if (ms_slot_->cancelling) return;  // already on its way out
  ms_slot_->cancelling = quietly;
  cancel_slot(*ms_slot_, owe_multishot);
}

void connection::on_multishot_cqe(detail::completion* c, int res, unsigned flags, bool) {
  auto* slot = static_cast<multishot_slot*>(c);
  const bool more = (flags & IORING_CQE_F_MORE) != 0;
  connection* self = slot->owner;
  if (!self) {  // left behind by a connection that is gone
    if (flags & IORING_CQE_F_BUFFER) slot->br->recycle(static_cast<std::uint16_t>(flags >> IORING_CQE_BUFFER_SHIFT));
    if (!more) delete slot;
    return;
  }
  if (!more) {
    self->ms_armed_ = false;
    self->cancel_owed_ &= static_cast<std::uint8_t>(~owe_multishot);
  }
  self->on_multishot(res, flags);
}

void connection::on_multishot(int res, unsigned flags) {
  const bool waiting = read_waiter_ || fast_;
  buffer_ring* br = ms_slot_->br;
  if (res > 0 && (flags & IORING_CQE_F_BUFFER)) {
    if (waiting) return deliver_read(res, flags);
    return hold(static_cast<std::uint16_t>(flags >> IORING_CQE_BUFFER_SHIFT), static_cast<std::size_t>(res));
  }
  if (flags & IORING_CQE_F_BUFFER) br->recycle(static_cast<std::uint16_t>(flags >> IORING_CQE_BUFFER_SHIFT));
  if (ms_armed_) return;  // not the last CQE (nothing to report)
  // Only ringframe cancels it, for one of three reasons: quietly (too much
  // held, or large reads ahead), a read deadline, or a stop. The reason is
  // not taken from the cancellation itself but asked again now: data may
  // have come in between the cancel and this last CQE and won the race with
  // the deadline (read_timed_out_ is cleared then). So a cancelled recv
  // always sends the reader round (EAGAIN), and read_refusal() decides: it
  // reports a deadline that still stands, or a stop, and otherwise the
  // reader re-arms and goes on.
  const bool quiet = res == -ECANCELED;
  ms_slot_->cancelling = false;
  // A waiting reader counts it itself (fast_read_done, read_slow).
  if (res == -ENOBUFS && !waiting) sock_.get_executor().count_buffer_ring_empty();
  if (quiet || (res == -ENOBUFS && !waiting)) {
    // Ended by us (too much held, or large reads ahead) or by an empty
    // ring: the next read decides again. A reader already waiting is told
    // to go round (EAGAIN), which re-arms it or reads directly.
    if (waiting) deliver_read(-EAGAIN, 0);
    return;
  }
  if (res == -EINVAL && opts_.multishot_recv) {
    // A kernel without multishot recv (before 6.0): one recv per read from
    // now on, for this connection.
    opts_.multishot_recv = false;
    if (waiting) submit_read(br, {});
    return;
  }
  if (waiting) return deliver_read(res, flags);
  ms_slot_->ended = true;  // end of stream or an error: reported by the next read
  ms_slot_->end_res = res;
}

void connection::deliver_read(int res, unsigned flags) {
  read_slot_.res = res;
  read_slot_.flags = flags;
  if (read_waiter_) {
    std::exchange(read_waiter_, {}).resume();
    return;
  }
  if (fast_) fast_read_done();
}

void connection::hold(std::uint16_t id, std::size_t len) {
  buffer_ring* br = ms_slot_->br;
  if (ms_slot_->held_n < max_held && ms_slot_->spill.empty()) {
    ms_slot_->held[ms_slot_->held_n++] = {id, static_cast<std::uint32_t>(len)};
  } else {  // CQEs already posted when the cancellation below was sent
    std::span<std::byte> d = br->data(id, len);
    ms_slot_->spill.append(reinterpret_cast<const char*>(d.data()), d.size());
    br->recycle(id);
  }
  // Enough held: stop receiving until the handler reads again, so one
  // connection cannot take the ring buffers every other one needs.
  if (ms_slot_->held_n == max_held && ms_armed_) cancel_multishot(true);
}

bool connection::drain_held() {
  if (!has_held()) return false;
  buffer_ring* br = ms_slot_->br;
  for (std::uint8_t i = 0; i < ms_slot_->held_n; ++i) {
    decoder_.feed(br->data(ms_slot_->held[i].id, ms_slot_->held[i].len));
    br->recycle(ms_slot_->held[i].id);
    bytes_in += ms_slot_->held[i].len;
  }
  ms_slot_->held_n = 0;
  if (!ms_slot_->spill.empty()) {
    decoder_.feed(ms_slot_->spill);
    bytes_in += ms_slot_->spill.size();
    ms_slot_->spill.clear();
    if (ms_slot_->spill.capacity() > 64 * 1024) std::string().swap(ms_slot_->spill);
  }
  return true;
}

// ---- sending ----

void connection::on_send_failed(void* self) noexcept {
  auto* c = static_cast<connection*>(self);
  if (c->fast_ && c->read_slot_.busy) c->cancel_slot(c->read_slot_, owe_read);
  if (c->fast_ && c->ms_armed_) c->cancel_multishot(false);
}

detail::write_awaitable connection::queued(result<void> r) {
  if (r) ++messages_out;
  peak_unsent = std::max(peak_unsent, unsent_bytes());
  return detail::write_awaitable(this, r);
}

detail::write_awaitable connection::write(const message& m) {
  if (send_.error()) return detail::write_awaitable(this, send_.error());
  return queued(encode_frame(m, send_.out()));
}

detail::write_awaitable connection::write(const header_fields& h, std::span<const std::byte> content) {
  if (send_.error()) return detail::write_awaitable(this, send_.error());
  return queued(encode_frame(h, content, send_.out()));
}

detail::write_awaitable connection::write_raw(std::span<const std::byte> frame) {
  if (send_.error()) return detail::write_awaitable(this, send_.error());
  send_.out().append(reinterpret_cast<const char*>(frame.data()), frame.size());
  return queued({});
}

detail::write_awaitable connection::write_error(std::string_view detail) {
  std::string json = error_reply_json(detail);
  header_fields h{"text/json", "utf-8"};
  return write(h, std::as_bytes(std::span(json.data(), json.size())));
}

task<void> connection::close_gracefully(std::chrono::nanoseconds linger) {
  if (ms_armed_) cancel_multishot(true);  // the lingering reads below take over
  result<void> f = co_await flush();
  if (!f || peer_closed_ || !sock_.is_open()) co_return;  // nothing more to protect
  result<void> sh = co_await sock_.shutdown(SHUT_WR);
  if (!sh) co_return;
  auto deadline = std::chrono::steady_clock::now() + linger;
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
    if (c->send_.error()) co_return c->send_.error();
    if (!c->send_.busy()) {
      if (c->send_.unsent() == 0) co_return result<void>{};
      c->send_.start();
      continue;  // it may have failed at once
    }
    co_await detail::send_idle_awaitable{c, {}};
  }
}

}  // namespace ringframe
