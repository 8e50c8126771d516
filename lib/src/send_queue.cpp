#include <ringframe/send_queue.hpp>

#include <ringframe/detail/io_backend.hpp>

#include <climits>
#include <new>
#include <utility>

namespace ringframe {

send_queue::send_queue(socket& s, options o, std::uint64_t* bytes_out) noexcept
    : sock_(s), opts_(o), bytes_out_(bytes_out) {}

send_queue::~send_queue() {
  sock_.get_executor().withdraw(&deferred_);
  if (f_) sock_.get_executor().unlisten_stop(f_.get());
  if (state_ == state::sending) {
    sock_.get_executor().try_cancel(detail::key_of(f_.get()), sock_.fd());
    orphan_flight();
  } else if (state_ == state::releasing) {
    orphan_releasing();  // (counts what the kernel took: it reaches the peer)
  }
  wake();
}

// The kernel still holds the flight: it keeps the batch and takes the last
// CQE (on_cqe), or is freed with the executor.
void send_queue::orphan_flight() noexcept {
  flight* f = f_.release();
  f->q = nullptr;
  f->destroy = [](detail::orphan* o) { delete static_cast<flight*>(o); };
  f->ex->adopt(f);
}

// A short zero-copy batch given up while the kernel holds the pages of the
// part it took (the write deadline, a stop): that part reaches the peer from
// the orphan, so it counts as out, as it would have with the notification
// (review20 F2). The rest of the batch is never sent.
void send_queue::orphan_releasing() noexcept {
  if (bytes_out_) *bytes_out_ += taken_of_releasing();
  sock_.get_executor().unlisten_stop(f_.get());
  orphan_flight();
}

[[gnu::hot]] int send_queue::refusal() const noexcept {
  if (timed_out_) return ETIMEDOUT;
  if (cancelled_.load(std::memory_order_acquire)) return ECANCELED;
  if (sock_.get_executor().stopping()) return ECANCELED;
  if (sock_.stop_token().stop_requested()) return ECANCELED;
  return 0;
}

std::unique_ptr<send_queue::flight> send_queue::new_flight() {
  auto f = std::make_unique<flight>();
  f->q = this;
  f->ex = &sock_.get_executor();
  f->on_cqe = &send_queue::on_cqe;
  f->fn = [](detail::stop_listener* l) noexcept { static_cast<flight*>(l)->q->cancel_here(true); };
  return f;
}

void send_queue::make_flight() { f_ = new_flight(); }

bool send_queue::append_shared(detail::block_ref block, std::span<const std::byte> bytes) {
  if (extend_last(block.get(), bytes)) return true;
  if (!f_) make_flight();
  if (f_->pending.size() >= max_pieces) return false;
  f_->pending.push_back(piece{queued_.size(), bytes.data(), bytes.size(), std::move(block)});
  f_->pending_bytes += bytes.size();
  return true;
}

[[gnu::hot]] void send_queue::start() {
  if (state_ != state::idle || (queued_.empty() && (!f_ || f_->pending.empty()))) return;
  note_peak();  // before a send made at once takes bytes
  if (int e = refusal()) return fail(e);
  executor& ex = sock_.get_executor();
  if (ex.sends_now() && (!f_ || f_->pending.empty())) {
    // Only copied bytes, and a backend that sends at once (epoll): sent
    // from where they were written, with no batch formed. What the socket
    // does not take goes on as a batch.
    detail::io_request r;
    r.op = detail::io_op::send;
    r.fd = sock_.fd();
    r.buf = queued_.data();
    r.len = queued_.size();
    r.flags = MSG_NOSIGNAL;
    const int now = ex.send_now(r);
    if (now < 0 && now != detail::io_backend::not_now) return fail(-now);
    if (now > 0) {
      if (bytes_out_) *bytes_out_ += static_cast<std::size_t>(now);
      if (static_cast<std::size_t>(now) == queued_.size()) {
        queued_.clear();
        if (queued_.capacity() > opts_.keep_capacity) std::string().swap(queued_);
        if (hook_) hook_(hook_ctx_, false);
        return wake();
      }
      queued_.erase(0, static_cast<std::size_t>(now));  // (short: the socket is full, a rare case)
      // Past a send the queue fails rather than throw: what went cannot be put back.
      if (!f_) try {
          make_flight();
        } catch (const std::bad_alloc&) {
          return fail(ENOMEM);
        }
    }
  }
  if (!f_) make_flight();
  std::swap(f_->sending, queued_);
  std::swap(f_->sending_pieces, f_->pending);
  f_->total = f_->sending.size() + f_->pending_bytes;
  f_->pending_bytes = 0;
  f_->sent = 0;
  // A gather list goes out with a plain sendmsg.
  zero_copy_ = opts_.zero_copy_threshold && f_->sending_pieces.empty() &&
               f_->sending.size() >= opts_.zero_copy_threshold;
  try {
    // (A batch with pieces by reference goes the completion's way on every
    // backend: made at once, it doubled the system calls a message at
    // epoll 50 x 16 x 1 KiB, halving the frames each recv and send carried,
    // at 0.65x the messages a second; see bench/RESULTS.md, session 29.)
    if (opts_.write_timeout.count() > 0) deadline_.arm(ex, opts_.write_timeout);
    submit();
  } catch (...) {
    // Nothing went to the kernel (bad_alloc for the gather list or the
    // deadline's list, a backend that cannot submit): the batch goes back in
    // front of what is queued, as it was (review12 F4). Left in the flight,
    // it was counted nowhere (unsent() said 0, so a flush reported success)
    // and the next start() swapped it behind the bytes queued after it.
    std::swap(f_->sending, queued_);
    std::swap(f_->sending_pieces, f_->pending);
    f_->pending_bytes = f_->total - queued_.size();
    f_->total = f_->sent = 0;
    deadline_.cancel();
    throw;
  }
}

// The send of what is left of the batch.
[[gnu::hot]] void send_queue::submit() {
  detail::io_request r;
  r.fd = sock_.fd();
  r.len = f_->total - f_->sent;
  r.flags = MSG_NOSIGNAL;
  r.key = detail::key_of(f_.get());
  if (f_->sending_pieces.empty()) {
    // Zero-copy: the batch stays the kernel's until the notification.
    r.op = zero_copy_ ? detail::io_op::send_zero_copy : detail::io_op::send;
    r.buf = f_->sending.data() + f_->sent;
  } else {
    // The gather list from where the last send stopped: the string's runs
    // with the pieces between them, in the order they were appended.
    std::vector<iovec>& iov = f_->iov;
    iov.clear();
    std::size_t pos = 0;  // the batch's offset at the start of the next run
    const std::size_t sent = f_->sent;
    auto add = [&](const void* p, std::size_t n) {
      if (n && pos + n > sent && iov.size() < IOV_MAX) {
        const std::size_t skip = sent > pos ? sent - pos : 0;
        iov.push_back({const_cast<std::byte*>(static_cast<const std::byte*>(p)) + skip, n - skip});
      }
      pos += n;
    };
    std::size_t from = 0;
    for (const piece& pc : f_->sending_pieces) {
      add(f_->sending.data() + from, pc.at - from);
      from = pc.at;
      add(pc.data, pc.len);
    }
    add(f_->sending.data() + from, f_->sending.size() - from);
    if (iov.size() == 1) {
      // One run (an echo from the receive buffer, adjacent echoes merged):
      // a plain send, which spares the kernel copying in a msghdr and an
      // iovec per call. The piece's block stays in sending_pieces until the
      // completion, as for a gather.
      r.op = detail::io_op::send;
      r.buf = iov[0].iov_base;
      r.len = iov[0].iov_len;  // (all that is left: one entry, nothing cut at IOV_MAX)
    } else {
      f_->msg = msghdr{};
      f_->msg.msg_iov = iov.data();
      f_->msg.msg_iovlen = iov.size();
      r.op = detail::io_op::sendmsg;
      r.buf = &f_->msg;
    }
  }
  sock_.get_executor().submit(r);
  state_ = state::sending;
}

void send_queue::restart_deadline() noexcept {
  if (!busy() || timed_out_ || !deadline_.armed()) return;
  try {
    // The list for write_timeout's duration exists (the deadline is on it):
    // arm() allocates nothing.
    deadline_.arm(sock_.get_executor(), opts_.write_timeout);
  } catch (...) {
    fail(ENOMEM);  // not reached; never a batch without its deadline
  }
}

void send_queue::cancel() noexcept {
  // Before the call is deferred: the executor's thread sees it when the
  // call runs, or at the latest when the completion that withdraws it comes
  // (review20 F4).
  cancelled_.store(true, std::memory_order_release);
  executor& ex = sock_.get_executor();
  if (ex.on_own_thread()) cancel_here(true);
  else ex.defer(&deferred_);
}

void send_queue::cancel_here(bool stopping) noexcept {
  note_peak();
  if (state_ == state::releasing && stopping) {
    // Sent, but the kernel holds the pages until the peer takes them, which
    // a peer that does not read never does: the orphan waits for that, the
    // queue fails now.
    orphan_releasing();
    return fail(ECANCELED);
  }
  if (state_ != state::sending) return;  // idle or failed (on_deadline ends a releasing batch itself)
  executor& ex = sock_.get_executor();
  if (!ex.try_cancel(detail::key_of(f_.get()), sock_.fd())) ex.defer(&deferred_);
}

void send_queue::deferred_cancel::run(detail::deferred_call* d, bool run) {
  if (run) static_cast<deferred_cancel*>(d)->q->cancel_here(true);
}

[[gnu::hot]] void send_queue::on_cqe(detail::completion* c, int res, unsigned flags, bool) {
  auto* f = static_cast<flight*>(c);
  send_queue* self = f->q;
  if (!self) {  // orphaned: free it with the last CQE
    if (!(flags & detail::cqe_more)) f->ex->bury(f);
    return;
  }
  self->note_peak();  // before the result takes bytes
  // A cancellation still waiting for an SQE would hit the next batch: drop
  // it (a stop is seen again by refusal() before anything more is sent).
  if (!(flags & detail::cqe_more)) self->sock_.get_executor().withdraw(&self->deferred_);
  if (flags & detail::cqe_notif) {
    // The kernel let go of the pages; the result came in the CQE before.
    self->sock_.get_executor().unlisten_stop(f);
    return self->progress(f->res);
  }
  if (flags & detail::cqe_more) {  // SEND_ZC: a notification follows
    if (res >= 0 && f->sent + static_cast<std::size_t>(res) == f->total && self->hand_over_taken_batch()) {
      // The batch is done, as it is when a CQE without F_MORE ends it: a
      // cancellation still waiting for an SQE (the write deadline's) would
      // hit the next batch, which has a deadline of its own (review20 F3).
      self->sock_.get_executor().withdraw(&self->deferred_);
      return self->progress(res);
    }
    f->res = res;
    self->state_ = state::releasing;
    // The write deadline fired while the send was in the kernel, and its
    // cancellation came too late (the kernel had posted this result): the
    // deadline is spent, so nothing would end a wait for the pages of a
    // peer that does not read. End the batch now, as on_deadline does in
    // `releasing` (review20 F1).
    if (self->timed_out_) {
      self->orphan_releasing();
      return self->fail(ETIMEDOUT);
    }
    // A stop that came while the send was in the kernel found nothing to
    // cancel, and an executor's stop will not be told again: act on it now.
    // So with send_queue::cancel(), which has no token to ask again.
    executor& ex = self->sock_.get_executor();
    if (ex.stopping() || self->sock_.stop_token().stop_requested() ||
        self->cancelled_.load(std::memory_order_acquire))
      return self->cancel_here(true);
    ex.listen_stop(f);
    return;
  }
  self->progress(res);
}

// The kernel took the whole zero-copy batch and holds its pages until the
// peer has them: for the write timeout and for waiters that is sent, as a
// copied batch is once it is in the socket's queue. The flight, with the
// batch the kernel reads, becomes an orphan that takes the notification; a
// new one carries on. Waiting for the notification instead held a
// connection whose peer stopped reading with its window full until the
// peer went: the pages are never let go, and a write deadline that ended
// the batch would also have cut off a peer that is only late. False (the
// batch waits for its notification, as before) when there is no memory for
// the new flight.
bool send_queue::hand_over_taken_batch() noexcept {
  std::unique_ptr<flight> next;
  try {
    next = new_flight();
  } catch (const std::bad_alloc&) {
    return false;
  }
  // Pieces appended since the batch was formed go with the next one.
  next->pending = std::move(f_->pending);
  next->pending_bytes = std::exchange(f_->pending_bytes, 0);
  next->total = f_->total - f_->sent;  // what progress() then counts as sent
  orphan_flight();
  f_ = std::move(next);
  return true;
}

[[gnu::hot]] void send_queue::progress(int res) {
  // From a completion: an exception would escape the executor's loop (its
  // run() throws, for every connection of the thread) with nothing in the
  // kernel and the waiters never woken (review12 F5). The queue fails
  // instead; start() has put an unsent batch back already. So for whatever
  // else a submission throws (io_uring: std::system_error, a full
  // submission queue that cannot be drained; review27 F2).
  try {
    progress_or_throw(res);
  } catch (const std::bad_alloc&) {
    fail(ENOMEM);
  } catch (...) {
    fail(EIO);
  }
}

[[gnu::hot]] void send_queue::progress_or_throw(int res) {
  state_ = state::sending;
  if (zero_copy_ && (res == -EOPNOTSUPP || res == -EINVAL)) {  // no zero-copy here: copy
    zero_copy_ = false;
    return submit();
  }
  if (res == -EINTR || res == -EAGAIN) res = 0;  // nothing sent: go on
  if (res < 0) {
    int e = -res;
    if (e == ECANCELED && timed_out_) e = ETIMEDOUT;
    return fail(e);
  }
  f_->sent += static_cast<std::size_t>(res);
  if (bytes_out_) *bytes_out_ += static_cast<std::size_t>(res);
  if (f_->sent < f_->total) {  // a short send: the rest, from the completion
    if (int e = refusal()) return fail(e);
    return submit();
  }
  f_->sending.clear();
  f_->sending_pieces.clear();  // the blocks go back (to their decoder, or the pool)
  f_->sent = f_->total = 0;
  // Everything went out: a deadline that fired meanwhile (while a zero-copy
  // notification was pending, say) came too late to matter.
  timed_out_ = false;
  state_ = state::idle;
  // start() arms the deadline again for a batch that waits, and on epoll may
  // send what follows from queued_ without touching the flight's buffer.
  deadline_.cancel();
  // A burst of large replies should not pin megabytes to an idle connection.
  if (f_->sending.capacity() > opts_.keep_capacity) std::string().swap(f_->sending);
  if (!queued_.empty() || !f_->pending.empty()) return start();  // written while this batch was out
  if (queued_.capacity() > opts_.keep_capacity) std::string().swap(queued_);
  if (hook_) hook_(hook_ctx_, false);
  wake();
}

void send_queue::fail(int err) {
  note_peak();
  error_ = err;
  state_ = state::failed;
  timed_out_ = false;
  queued_.clear();
  if (f_) {  // (an orphaned flight keeps its bytes)
    f_->sending.clear();
    f_->sending_pieces.clear();
    f_->pending.clear();
    f_->pending_bytes = 0;
    f_->sent = f_->total = 0;
  }
  deadline_.cancel();
  if (hook_) hook_(hook_ctx_, true);
  wake();
}

[[gnu::hot]] void send_queue::wake() noexcept {
  // Posted, never resumed from here: a waiter may end the connection (its
  // owner returns and the frame holding this queue goes), and another
  // waiter must not then resume inside it. From the ready queue each runs
  // after this call has returned, and a flusher checks its handle first.
  // When the ready queue cannot grow for one (bad_alloc: it was
  // std::terminate here, review13 F13), it is parked on the executor's
  // intrusive list instead (executor::wake), still never resumed from here.
  executor& ex = sock_.get_executor();
  for (detail::send_waiter* w = std::exchange(waiters_, nullptr); w;) {
    detail::send_waiter* next = w->next;  // (wake() may reuse it for the parked list)
    ex.wake(w);
    w = next;
  }
}

void send_queue::on_deadline(deadline* d) {
  send_queue* self = static_cast<timer*>(d)->q;
  self->note_peak();
  self->timed_out_ = true;
  if (self->state_ == state::releasing) {
    // The first part of a short zero-copy send, whose pages the kernel
    // holds: the rest was not taken in time, and a peer that does not read
    // may never let those pages go. The orphan waits for them.
    self->orphan_releasing();
    return self->fail(ETIMEDOUT);
  }
  self->cancel_here(false);
}

}  // namespace ringframe
