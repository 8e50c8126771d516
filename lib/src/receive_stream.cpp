#include <ringframe/receive_stream.hpp>

#include <ringframe/detail/io_backend.hpp>

#include <algorithm>
#include <cerrno>
#include <exception>
#include <new>
#include <utility>

namespace ringframe {

namespace {
// A completion's bytes that nobody reads: the ring's accounting only.
constexpr auto discard = [](const buffer_ring::slice&) noexcept { return false; };
}  // namespace

receive_stream::receive_stream(socket& s, frame_decoder& sink, options o, done_fn done, void* ctx,
                               std::uint64_t* bytes_in) noexcept
    : sock_(s), sink_(sink), opts_(o), done_(done), ctx_(ctx), bytes_in_(bytes_in) {
  // A read of 0 bytes would look like the peer's end of stream, and the
  // step (up to 8 times read_size) must neither wrap nor ask for more than
  // a buffer worth having: 1 byte to 16 MiB.
  opts_.read_size = std::clamp<std::size_t>(opts_.read_size, 1, std::size_t{16} << 20);
  slot_.owner = this;
  slot_.on_cqe = &receive_stream::on_cqe;
}

receive_stream::~receive_stream() {
  executor& ex = sock_.get_executor();
  ex.withdraw(&deferred_);
  if (bw_) ex.unlisten_stop(bw_.get());
  if (bw_ && !receive_budget::this_thread().dequeue(bw_.get())) {
    ex.withdraw(bw_.get());
    if (bw_->admitted) receive_budget::this_thread().release(bw_->want);  // its run never came
  }
  release_budget();
  if (!ms_) return;
  for (std::uint8_t i = 0; i < ms_->held_n; ++i) ms_->br->release(ms_->held[i]);
  if (state_ == state::multishot || state_ == state::ending) {
    // The kernel still holds the multishot recv: leave its completion
    // behind to take the last CQE (see multishot_slot).
    multishot_slot* slot = ms_.release();
    slot->owner = nullptr;
    slot->leftover_cancel.ex = &ex;
    slot->destroy = [](detail::orphan* o) {
      auto* s = static_cast<multishot_slot*>(o);
      s->leftover_cancel.ex->withdraw(&s->leftover_cancel);
      delete s;
    };
    ex.adopt(slot);
    slot->fd = sock_.fd();
    if (!slot->cancel_sent && !ex.try_cancel(detail::key_of(slot), slot->fd)) ex.defer(&slot->leftover_cancel);
  }
}

void receive_stream::multishot_slot::retry::run(detail::deferred_call* d, bool run) {
  auto* r = static_cast<retry*>(d);
  if (run && !r->ex->try_cancel(detail::key_of(r->slot), r->slot->fd)) r->ex->defer(r);
}

[[gnu::hot]] int receive_stream::refusal() const noexcept {
  if (timed_out_) return ETIMEDOUT;
  if (sock_.get_executor().stopping()) return ECANCELED;
  if (stop_ && stop_->stop_requested()) return ECANCELED;
  if (sock_.stop_token().stop_requested()) return ECANCELED;
  return 0;
}

[[gnu::hot]] bool receive_stream::can_wait_between_frames() {
  // Into the ring or straight into the decoder (large reads, no provided
  // buffers): either way a read between frames reserves nothing and
  // waits without a coroutine frame.
  return !(state_ == state::receiving || lost_ || (ms_ && (ms_->ended || ms_->lost)) || has_held() || refusal());
}

[[gnu::hot]] bool receive_stream::start(bool between_frames) {
  flags_ = 0;
  direct_ = false;
  if (drain_held()) {
    // Bytes that came in on the multishot recv meanwhile: decode them first.
    res_ = -EAGAIN;
    return false;
  }
  if (ms_ && ms_->ended) {  // the multishot recv ended while nobody waited
    ms_->ended = false;
    res_ = ms_->end_res;
    return false;
  }
  if (lost_ || (ms_ && ms_->lost)) {
    // Bytes were lost (hold() or outcome() could not keep them): the stream cannot be
    // read in sync again, and a multishot recv re-armed now would discard
    // whatever comes (on_multishot), its reader never resumed. Every read
    // after the ENOMEM reported above fails the same way.
    res_ = -ENOMEM;
    return false;
  }
  if (int e = refusal()) {
    // Reported like a cancelled recv (outcome() maps a timeout).
    res_ = e == ETIMEDOUT ? -ECANCELED : -e;
    return false;
  }
  executor& ex = sock_.get_executor();
  // Between frames, read into the executor's provided buffers: a waiting
  // connection then holds no receive buffer, and the few bytes that arrive
  // are copied into the decoder (which takes its buffer from a per-thread
  // pool and gives it back when idle). Mid-frame, read straight into the
  // decoder, so a large frame is received in place. A stream whose last
  // read was large is busy with large traffic: reading straight into the
  // decoder spares the copy out of the ring.
  buffer_ring* br = !between_frames || !opts_.provided_buffers || last_read_large_ ? nullptr : ex.receive_buffers();
  // The rest of a frame longer than one read reserves its length first
  // (below), whatever the size of the reads that bring it.
  const bool reserve =
      !between_frames && opts_.budget && reserved_ == 0 && sink_.frame_length() > opts_.read_size;
  // A multishot recv reads from the ring mid-frame too, while reads are
  // small; large ones go straight into the decoder, as above. Not a frame
  // that has yet to reserve: fed from the ring, the decoder would grow to
  // its whole length outside the budget.
  if (multishot_suits() && !reserve) br = ex.receive_buffers();
  if (std::exchange(skip_ring_once_, false)) br = nullptr;
  if (state_ == state::multishot || state_ == state::ending) {
    // Switching to direct reads: the multishot recv must end first (its
    // end comes back as EAGAIN, and the reader asks again).
    if (!br || !multishot_suits()) cancel_in_flight();
    br = ms_->br;
  }
  // A frame in progress that came in a lent ring buffer (outcome()) waits
  // for its rest in a buffer of the size it would have had with a copy:
  // room for the next read (a direct one's step and the rest of the frame;
  // a ring read's bytes are copied in as they come), not in 64 KiB.
  if (std::exchange(lent_, false) && !between_frames) sink_.trim_partial(br ? 0 : read_step(), !br);
  // The rest of a frame longer than one read: reserve it first.
  if (reserve && !br && state_ == state::idle && !reserve_or_wait(sink_.frame_length())) {
    waiting_ = true;
    return true;
  }
  std::span<std::byte> room;
  if (!br) {
    room = prepare_read();
    direct_ = true;
  }
  waiting_ = true;
  start_read(br, room);
  return true;
}

bool receive_stream::reserve_or_wait(std::size_t want) {
  receive_budget& b = receive_budget::this_thread();
  if (b.try_reserve(want, opts_.budget)) {
    reserved_ = want;
    return true;
  }
  if (!bw_) bw_ = std::make_unique<budget_wait>(this);
  bw_->ex = &sock_.get_executor();
  bw_->want = want;
  bw_->limit = opts_.budget;
  bw_->cancelled = false;
  state_ = state::budget;
  sock_.get_executor().listen_stop(bw_.get());  // (stopping already: refusal() said so in start())
  b.enqueue(bw_.get());  // may admit it at once: then its run comes next turn
  return false;
}

void receive_stream::budget_wait::run(detail::deferred_call* d, bool run) {
  if (run) static_cast<budget_wait*>(d)->owner->on_budget();
}

// Admitted (reserved), or cancelled: from the executor's loop.
void receive_stream::on_budget() {
  state_ = state::idle;
  sock_.get_executor().unlisten_stop(bw_.get());
  if (bw_->admitted) {
    bw_->admitted = false;
    reserved_ = bw_->want;
  }
  if (std::exchange(bw_->cancelled, false) || refusal()) return deliver(-ECANCELED, 0);
  // Run from the executor's loop: an exception out of here would leave the
  // loop (executor::run throws, for every connection of the thread) and the
  // reader waiting for good, its frame's reservation held (review17 F1).
  // The decoder that cannot grow, or a recv that cannot be submitted
  // (bad_alloc: the epoll backend's waiters; io_uring: a full submission
  // queue that cannot be drained), fails this connection instead.
  try {
    const std::span<std::byte> room = prepare_read();
    direct_ = true;
    submit(nullptr, room);
  } catch (const std::bad_alloc&) {
    direct_ = false;
    return deliver(-ENOMEM, 0);
  } catch (...) {
    direct_ = false;
    return deliver(-EIO, 0);
  }
}

[[gnu::hot]] void receive_stream::start_read(buffer_ring* br, std::span<std::byte> room) {
  if (state_ == state::multishot || state_ == state::ending) return;  // its next bytes, or its end (never two recvs)
  if (br && multishot_suits()) return arm_multishot(br);
  submit(br, room);
}

[[gnu::hot]] void receive_stream::submit(buffer_ring* br, std::span<std::byte> room) {
  detail::io_request r;
  r.fd = sock_.fd();
  r.key = detail::key_of(&slot_);
  if (br) {
    r.op = detail::io_op::recv_provided;
    r.buffers = br;
    r.bundle = true;  // if the ring grants bundles
  } else {
    r.op = detail::io_op::recv;
    r.buf = room.data();
    r.len = room.size();
  }
  sock_.get_executor().submit(r);
  state_ = state::receiving;
}

void receive_stream::arm_multishot(buffer_ring* br) {
  if (!ms_) {
    ms_ = std::make_unique<multishot_slot>();
    ms_->owner = this;
    ms_->on_cqe = &receive_stream::on_multishot_cqe;
  }
  ms_->br = br;
  detail::io_request r;
  r.op = detail::io_op::recv_multishot;
  r.fd = sock_.fd();
  r.buffers = br;
  r.bundle = true;  // if the ring grants bundles
  r.key = detail::key_of(ms_.get());
  sock_.get_executor().submit(r);
  ms_->cancel_sent = false;
  state_ = state::multishot;
}

// Received bytes could not be kept: every later read fails with ENOMEM.
// A multishot recv that may still be armed brings only bytes past the gap:
// they are discarded (on_multishot), never held for drain_held() to feed
// to the next read, and the recv ends (review26 F1).
void receive_stream::mark_lost() noexcept {
  lost_ = true;
  if (!ms_) return;
  ms_->lost = true;
  if (state_ == state::multishot) cancel_in_flight();
}

[[gnu::hot]] int receive_stream::outcome() noexcept {
  int res = res_;
  const unsigned flags = std::exchange(flags_, 0);
  buffer_ring* br = sock_.get_executor().receive_buffers();
  if (flags & detail::cqe_buffer) {
    // One slice, or (incremental consumption, bundles) several, in order.
    bool failed = false;
    br->consume(flags, res, [&](const buffer_ring::slice& s) noexcept {
      if (!failed) {
        // A whole buffer the ring can hand over, to a decoder with nothing
        // buffered: it becomes the decoder's, no copy (buffer_ring.hpp).
        // Only past the pool's smallest block, which a copy would need
        // anyway: a small request copied holds 16 KiB while its handler
        // works, where the lent buffer would hold 64 KiB.
        if (s.len > detail::byte_block::smallest_class && s.offset == 0 && br->lends() && sink_.can_adopt()) {
          sink_.adopt(br->lend(s.id), s.len);
          lent_ = true;
          return false;
        }
        try {
          sink_.feed(br->data(s));
        } catch (...) {  // the decoder could not grow (bad_alloc): this connection fails, not the process
          failed = true;
        }
      }
      return false;  // copied: the ring may have it back
    });
    if (failed) {
      // The buffer's bytes are gone: what comes next is not where the
      // decoder stands, so every later read fails too (review24 F4: the
      // next read went on past the gap, and a frame was lost unseen).
      res = -ENOMEM;
      mark_lost();
    }
  } else if (res > 0 && direct_) {
    sink_.commit(static_cast<std::size_t>(res));
    note_direct_read(static_cast<std::size_t>(res));
  }
  direct_ = false;
  if (res > 0) {
    timed_out_ = false;  // data won the race with the deadline
    if (bytes_in_) *bytes_in_ += static_cast<std::size_t>(res);
    const std::size_t full = (flags & detail::cqe_buffer) ? br->buffer_size() : opts_.read_size;
    // A frame longer than a read in progress or just read (its short tail
    // included) counts as large: the next frame's start is read straight
    // into the decoder, whole (read_step), not a ring buffer at a time.
    note_read_size(static_cast<std::size_t>(res) >= full / 2 || last_large_frame_ != 0);
    return res;
  }
  if (res == -ENOBUFS) {  // every ring buffer is in use: the next read into the sink
    sock_.get_executor().count_buffer_ring_empty();
    skip_ring_once_ = true;
    return -EAGAIN;
  }
  // The deadline fired; if the recv finished anyway, the data won (above).
  // A reader sent round (EAGAIN: the multishot recv ended) leaves the flag
  // for refusal() to report on its next start().
  if (timed_out_ && res != -EAGAIN) {
    timed_out_ = false;
    if (res == -ECANCELED || res == -EINTR) res = -ETIMEDOUT;
  }
  return res;
}

[[gnu::hot]] void receive_stream::deliver(int res, unsigned flags) {
  res_ = res;
  flags_ = flags;
  waiting_ = false;
  done_(ctx_);
}

[[gnu::hot]] void receive_stream::on_cqe(detail::completion* c, int res, unsigned flags, bool) {
  receive_stream* self = static_cast<slot*>(c)->owner;
  self->state_ = state::idle;
  // A cancellation still waiting for an SQE would hit the next read: drop
  // it (a stop is seen again by refusal() before the next read starts).
  self->sock_.get_executor().withdraw(&self->deferred_);
  self->deliver(res, flags);
}

// ---- cancellation ----

void receive_stream::stop() noexcept {
  executor& ex = sock_.get_executor();
  if (ex.on_own_thread()) cancel_in_flight();
  else ex.defer(&deferred_);
}

void receive_stream::deferred_cancel::run(detail::deferred_call* d, bool run) {
  if (run) static_cast<deferred_cancel*>(d)->owner->cancel_in_flight();
}

void receive_stream::cancel_in_flight() noexcept {
  executor& ex = sock_.get_executor();
  std::uint64_t key;
  if (state_ == state::budget) {
    // Not in the kernel: out of the queue (unless admitted already, when
    // its run is on its way), and the reader told from the next turn.
    if (bw_->cancelled) return;
    bw_->cancelled = true;
    if (receive_budget::this_thread().dequeue(bw_.get())) ex.defer(bw_.get());
    return;
  }
  if (state_ == state::receiving) {
    key = detail::key_of(&slot_);
  } else if (state_ == state::multishot || (state_ == state::ending && !ms_->cancel_sent)) {
    state_ = state::ending;
    key = detail::key_of(ms_.get());
  } else {
    return;  // nothing in the kernel, or its cancellation is on its way
  }
  if (!ex.try_cancel(key, sock_.fd())) return ex.defer(&deferred_);  // from the next turn
  if (state_ == state::ending) ms_->cancel_sent = true;
}

void receive_stream::on_deadline(deadline* d) {
  receive_stream* self = static_cast<timer*>(d)->owner;
  self->timed_out_ = true;
  self->cancel_in_flight();
}

// ---- multishot ----

void receive_stream::on_multishot_cqe(detail::completion* c, int res, unsigned flags, bool) {
  auto* slot = static_cast<multishot_slot*>(c);
  const bool more = (flags & detail::cqe_more) != 0;
  receive_stream* self = slot->owner;
  if (!self) {  // left behind by a stream that is gone
    if (flags & detail::cqe_buffer) slot->br->consume(flags, res, discard);
    if (!more) slot->leftover_cancel.ex->bury(slot);
    return;
  }
  if (!more) {
    self->state_ = state::idle;
    self->sock_.get_executor().withdraw(&self->deferred_);
  }
  self->on_multishot(res, flags);
}

void receive_stream::on_multishot(int res, unsigned flags) {
  buffer_ring* br = ms_->br;
  if (res > 0 && (flags & detail::cqe_buffer)) {
    if (ms_->lost) return br->consume(flags, res, discard);  // the stream is ending with ENOMEM
    if (waiting_) return deliver(res, flags);
    return hold(flags, res);
  }
  if (flags & detail::cqe_buffer) br->consume(flags, res, discard);
  if (state_ != state::idle) return;  // not the last CQE (nothing to report)
  // Only ringframe cancels it, for one of three reasons: too much held or
  // large reads ahead, the read deadline, or a stop. The reason is not
  // taken from the cancellation but asked again by the next start(): data
  // may have come in between the cancel and this last CQE and won the race
  // with the deadline (timed_out_ is cleared then). So a cancelled recv
  // sends the reader round (EAGAIN), and refusal() reports a deadline that
  // still stands, or a stop; otherwise the reader re-arms and goes on.
  if (res == -ECANCELED) {
    if (waiting_) deliver(-EAGAIN, 0);
    return;
  }
  if (res == -ENOBUFS && !waiting_) {
    // An empty ring: the next read decides again. (A waiting reader counts
    // it itself, in outcome().)
    sock_.get_executor().count_buffer_ring_empty();
    return;
  }
  if (res == -EINVAL && opts_.multishot) {
    // A kernel without multishot recv (before 6.0): one recv per read from
    // now on, for this stream.
    opts_.multishot = false;
    if (!waiting_) return;
    // From the executor's dispatch: a recv that cannot be submitted
    // (bad_alloc: the epoll backend's waiters; io_uring: a full submission
    // queue that cannot be drained) ends this read, as in on_budget(),
    // rather than the loop with the reader never resumed (review27 F1).
    try {
      submit(br, {});
    } catch (const std::bad_alloc&) {
      deliver(-ENOMEM, 0);
    } catch (...) {
      deliver(-EIO, 0);
    }
    return;
  }
  if (waiting_) return deliver(res, flags);
  if (ms_->lost) return;  // ENOMEM is reported, not what came after the bytes lost
  ms_->ended = true;  // end of stream or an error: reported by the next read
  ms_->end_res = res;
}

void receive_stream::hold(unsigned flags, int res) {
  buffer_ring* br = ms_->br;
  br->consume(flags, res, [&](const buffer_ring::slice& s) noexcept {
    if (ms_->lost) return false;
    if (ms_->held_n < max_held && ms_->spill.empty()) {
      ms_->held[ms_->held_n++] = s;
      return true;
    }
    // CQEs already posted when the cancellation below was sent, or the
    // rest of a bundle.
    try {
      std::span<std::byte> d = br->data(s);
      ms_->spill.append(reinterpret_cast<const char*>(d.data()), d.size());
    } catch (...) {  // no memory for them: this stream fails, not the process
      ms_->lost = true;
    }
    return false;
  });
  if (ms_->lost) {
    // Reported by the next read, after the bytes held before the loss.
    ms_->ended = true;
    ms_->end_res = -ENOMEM;
    if (state_ == state::multishot) cancel_in_flight();
    return;
  }
  // Enough held: stop receiving until the reader asks again, so one stream
  // cannot take the ring buffers every other one needs.
  if (ms_->held_n == max_held && state_ == state::multishot) cancel_in_flight();
}

bool receive_stream::drain_held_now() {
  buffer_ring* br = ms_->br;
  // Every slice goes back to the ring, even when the decoder cannot take
  // the bytes (bad_alloc, rethrown once the ring is square).
  std::exception_ptr failed;
  for (std::uint8_t i = 0; i < ms_->held_n; ++i) {
    if (!failed) {
      try {
        sink_.feed(br->data(ms_->held[i]));
        if (bytes_in_) *bytes_in_ += ms_->held[i].len;
      } catch (...) {
        failed = std::current_exception();
      }
    }
    br->release(ms_->held[i]);
  }
  ms_->held_n = 0;
  if (failed) {
    // Bytes from the failed slice on are gone: what was spilled after them,
    // and whatever the recv brings next, lies past the gap. Every later
    // read fails with ENOMEM, as after a copy that failed in outcome()
    // (review26 F2: the spill was fed by the next read, and the stream went
    // on out of sync).
    mark_lost();
    std::string().swap(ms_->spill);
    std::rethrow_exception(failed);
  }
  if (!ms_->spill.empty()) {
    sink_.feed(ms_->spill);
    if (bytes_in_) *bytes_in_ += ms_->spill.size();
    ms_->spill.clear();
    if (ms_->spill.capacity() > 64 * 1024) std::string().swap(ms_->spill);
  }
  return true;
}

}  // namespace ringframe
