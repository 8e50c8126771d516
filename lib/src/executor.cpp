#include <ringframe/detail/completion.hpp>
#include <ringframe/executor.hpp>
#include <ringframe/result.hpp>

#include <array>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <memory>

#include <sys/eventfd.h>
#include <unistd.h>

namespace ringframe {

namespace detail {

void detached_promise::attach() noexcept {
  next = ex->detached_head_;
  if (next) next->prev = this;
  ex->detached_head_ = this;
  ++ex->live_;
}

void detached_promise::detach() noexcept {
  if (prev) prev->next = next;
  else ex->detached_head_ = next;
  if (next) next->prev = prev;
  --ex->live_;
}

namespace {
detached run_detached(executor* /*ex, read by the promise*/, task<void> t) {
  try {
    co_await std::move(t);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "ringframe: a spawned task ended with an exception: %s\n", e.what());
  } catch (...) {
    std::fprintf(stderr, "ringframe: a spawned task ended with an unknown exception\n");
  }
}
}  // namespace

}  // namespace detail

namespace {

int read_sysctl_int(const char* path) {
  std::ifstream f(path);
  int v = -1;
  if (f) f >> v;
  return v;
}

std::string explain_setup_failure(int err) {
  std::string why;
  switch (err) {
    case ENOSYS:
      why = "this kernel has no io_uring (it is older than 5.1 or was built without CONFIG_IO_URING); "
            "run on Linux 5.19 or newer with io_uring enabled";
      break;
    case EPERM:
    case EACCES: {
      int disabled = read_sysctl_int("/proc/sys/kernel/io_uring_disabled");
      if (disabled == 2)
        why = "io_uring is disabled system-wide (sysctl kernel.io_uring_disabled=2); "
              "as root run: sysctl -w kernel.io_uring_disabled=0";
      else if (disabled == 1)
        why = "io_uring is restricted to root and the group in kernel.io_uring_group "
              "(sysctl kernel.io_uring_disabled=1); run as root, join that group, or as root run: "
              "sysctl -w kernel.io_uring_disabled=0";
      else
        why = "io_uring_setup was denied by a seccomp or LSM policy (container runtimes such as "
              "Docker and Podman block io_uring by default); run with a seccomp profile that allows "
              "io_uring_setup, io_uring_enter and io_uring_register";
      break;
    }
    case ENOMEM:
      why = "the kernel could not allocate the ring: on kernels before 5.12 ring memory counts "
            "against the locked-memory limit; raise it (ulimit -l) or use a smaller ring";
      break;
    case EMFILE:
    case ENFILE:
      why = "no file descriptor is left for the ring; raise the limit (ulimit -n)";
      break;
    case EINVAL:
      why = "the kernel rejected the ring parameters; it is likely too old (ringframe needs Linux 5.19 or newer)";
      break;
    default:
      why = std::string("io_uring_setup failed: ") + std::strerror(err);
  }
  return "ringframe: cannot create an io_uring: " + why + " (" + std::strerror(err) + ")";
}

// Operations the library issues; all exist since Linux 5.11.
constexpr std::array<std::pair<int, const char*>, 10> required_ops{{
    {IORING_OP_ACCEPT, "ACCEPT"},
    {IORING_OP_CONNECT, "CONNECT"},
    {IORING_OP_RECV, "RECV"},
    {IORING_OP_SEND, "SEND"},
    {IORING_OP_SHUTDOWN, "SHUTDOWN"},
    {IORING_OP_CLOSE, "CLOSE"},
    {IORING_OP_TIMEOUT, "TIMEOUT"},
    {IORING_OP_LINK_TIMEOUT, "LINK_TIMEOUT"},
    {IORING_OP_ASYNC_CANCEL, "ASYNC_CANCEL"},
    {IORING_OP_READ, "READ"},
}};

std::string missing_ops(io_uring* ring) {
  std::unique_ptr<io_uring_probe, void (*)(io_uring_probe*)> probe(io_uring_get_probe_ring(ring),
                                                                    io_uring_free_probe);
  if (!probe) return "";  // probing needs 5.6; the ops will report their own errors
  std::string missing;
  for (auto [op, name] : required_ops)
    if (!io_uring_opcode_supported(probe.get(), op)) missing += std::string(missing.empty() ? "" : ", ") + name;
  return missing;
}

}  // namespace

namespace {
// A task in transit between executors. It lives on the heap from spawn_on
// until the target's thread takes it from its inbox, spawns the task and
// frees this; or, if the target goes away first, frees it unrun.
struct remote_spawn : detail::deferred_call {
  executor* target;
  task<void> t;
  remote_spawn(executor* e, task<void> task) noexcept : deferred_call(&arrived), target(e), t(std::move(task)) {}
  static void arrived(detail::deferred_call* c, bool run) {
    std::unique_ptr<remote_spawn> self(static_cast<remote_spawn*>(c));
    if (run) self->target->spawn(std::move(self->t));
  }
};
}  // namespace

std::string executor::probe() {
  io_uring ring{};
  int r = io_uring_queue_init(8, &ring, 0);
  if (r < 0) return explain_setup_failure(-r);
  std::string missing = missing_ops(&ring);
  io_uring_queue_exit(&ring);
  if (!missing.empty())
    return "ringframe: this kernel's io_uring lacks operations ringframe needs (" + missing +
           "); run on Linux 5.19 or newer";
  return "";
}

executor::executor(executor_options opts)
    : buffer_count_(opts.receive_buffers), buffer_max_(opts.receive_buffers_max) {
  if (buffer_count_ & (buffer_count_ - 1)) throw std::invalid_argument("executor_options::receive_buffers must be a power of two");
  struct attempt {
    unsigned flags;
    const char* name;
  };
  const attempt all[] = {
      {IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN, "defer-taskrun"},
      {IORING_SETUP_COOP_TASKRUN, "coop-taskrun"},
      {0, "plain"},
  };
  std::size_t first = opts.setup == ring_setup::fastest ? 0 : opts.setup == ring_setup::coop_taskrun ? 1 : 2;
  int r = -EINVAL;
  for (std::size_t i = first; i < std::size(all); ++i) {
    io_uring_params p{};
    p.flags = IORING_SETUP_CQSIZE | all[i].flags;
    p.cq_entries = opts.sq_entries * (opts.cq_factor ? opts.cq_factor : 1);
    r = io_uring_queue_init_params(opts.sq_entries, &ring_, &p);
    if (r == -EINVAL && i + 1 < std::size(all)) continue;  // an older kernel: fall back
    if (r == 0) {
      setup_mode_ = all[i].name;
      defer_taskrun_ = (all[i].flags & IORING_SETUP_DEFER_TASKRUN) != 0;
    }
    break;
  }
  if (r < 0) throw setup_error(errno_code(-r), explain_setup_failure(-r));
  if (!(ring_.features & IORING_FEAT_EXT_ARG)) {  // waits with a timeout need it (Linux 5.11)
    io_uring_queue_exit(&ring_);
    throw setup_error(errno_code(EOPNOTSUPP), "ringframe: this kernel's io_uring cannot wait with a timeout "
                                              "(no IORING_FEAT_EXT_ARG); run on Linux 5.19 or newer");
  }
  std::string missing = missing_ops(&ring_);
  if (!missing.empty()) {
    io_uring_queue_exit(&ring_);
    throw setup_error(errno_code(EOPNOTSUPP), "ringframe: this kernel's io_uring lacks operations ringframe needs (" +
                                                  missing + "); run on Linux 5.19 or newer");
  }
  wake_fd_ = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (wake_fd_ < 0) {
    int e = errno;
    io_uring_queue_exit(&ring_);
    throw setup_error(errno_code(e), std::string("ringframe: eventfd: ") + std::strerror(e));
  }
  waker_.ex = this;
  waker_.on_cqe = &executor::on_wake;
  completed_.reserve(256);
  arm_waker();
}

// ---- the inbox (detail/deferred_call.hpp) ----

void executor::arm_waker() noexcept {
  io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
  if (!sqe) {
    io_uring_submit(&ring_);
    sqe = io_uring_get_sqe(&ring_);
  }
  // Without a free SQE the read is armed on the next wake-up check in
  // run_once (waker_armed_ stays false); posts are never lost, only noticed
  // at the next loop turn.
  if (!sqe) return;
  io_uring_prep_read(sqe, wake_fd_, &waker_.value, sizeof waker_.value, 0);
  io_uring_sqe_set_data64(sqe, detail::key_of(&waker_) | detail::uncounted_tag);
  waker_armed_ = true;
}

void executor::on_wake(detail::completion* c, int, unsigned, bool) {
  executor* self = static_cast<waker*>(c)->ex;
  self->waker_armed_ = false;
  // Cleared before the inbox is read: a post from now on writes again.
  self->wake_signalled_.store(false, std::memory_order_seq_cst);
  if (self->closing_) return;
  self->arm_waker();
  self->run_inbox(true);
}

void executor::defer(detail::deferred_call* c) noexcept {
  // The eventfd is written under the lock too: the executor's thread takes
  // the call only through this lock, so nothing the call does (a task that
  // ends the executor, say) can happen before this function is done with
  // *this. (Found by ThreadSanitizer: the write raced the eventfd's close.)
  std::lock_guard<std::mutex> g(inbox_lock_);
  if (c->queued) return;
  c->queued = true;
  c->next = nullptr;
  c->prev = inbox_tail_;
  if (inbox_tail_) inbox_tail_->next = c;
  else inbox_head_ = c;
  inbox_tail_ = c;
  if (!wake_signalled_.exchange(true, std::memory_order_seq_cst)) {
    std::uint64_t one = 1;
    // EAGAIN only when the counter is near overflow: it is signalled anyway.
    [[maybe_unused]] ssize_t r = ::write(wake_fd_, &one, sizeof one);
  }
}

bool executor::inbox_empty() noexcept {
  std::lock_guard<std::mutex> g(inbox_lock_);
  return inbox_head_ == nullptr;
}

void executor::adopt(detail::orphan* o) noexcept {
  o->prev = nullptr;
  o->next = orphans_;
  if (orphans_) orphans_->prev = o;
  orphans_ = o;
}

void executor::bury(detail::orphan* o) noexcept {
  if (o->prev) o->prev->next = o->next;
  else orphans_ = o->next;
  if (o->next) o->next->prev = o->prev;
  o->destroy(o);
}

void executor::listen_stop(detail::stop_listener* l) noexcept {
  if (l->linked) return;
  l->prev = nullptr;
  l->next = stop_listeners_;
  if (stop_listeners_) stop_listeners_->prev = l;
  stop_listeners_ = l;
  l->linked = true;
}

void executor::unlisten_stop(detail::stop_listener* l) noexcept {
  if (!l->linked) return;
  if (l->prev) l->prev->next = l->next;
  else stop_listeners_ = l->next;
  if (l->next) l->next->prev = l->prev;
  l->prev = l->next = nullptr;
  l->linked = false;
}

void executor::withdraw(detail::deferred_call* c) noexcept {
  if (!c->queued.load(std::memory_order_acquire)) return;
  std::lock_guard<std::mutex> g(inbox_lock_);
  if (!c->queued.load(std::memory_order_relaxed)) return;
  if (c->prev) c->prev->next = c->next;
  else inbox_head_ = c->next;
  if (c->next) c->next->prev = c->prev;
  else inbox_tail_ = c->prev;
  c->prev = c->next = nullptr;
  c->queued = false;
}

void executor::run_inbox(bool run) {
  for (;;) {
    detail::deferred_call* c;
    {
      std::lock_guard<std::mutex> g(inbox_lock_);
      c = inbox_head_;
      if (!c) return;
      inbox_head_ = c->next;
      if (inbox_head_) inbox_head_->prev = nullptr;
      else inbox_tail_ = nullptr;
      c->prev = c->next = nullptr;
      c->queued = false;
    }
    // Outside the lock: the call may defer again (itself included).
    ++stats_.deferred_calls;
    c->fn(c, run);
  }
}

executor::~executor() {
  if (live_ > 0 || inflight_ > 0 || !ready_.empty() || completed_head_ < completed_.size()) {
    stop();
    // Let cancelled coroutines unwind through their own code paths.
    for (int spins = 0; spins < 100000 && (live_ > 0 || !ready_.empty()); ++spins)
      if (!run_once(true)) break;
    // What is left waits on something that is not I/O and never will resume.
    while (detached_head_) detached_head_->handle().destroy();
    ready_.clear();
  }
  // Nothing is dispatched from here on: completions are only counted. The
  // kernel may still write into frames' memory until every CQE is in, and
  // the wake-up read must come back before its buffer (in *this) goes.
  closing_ = true;
  // Completions reaped but not dispatched are only counted now.
  for (std::size_t i = completed_head_; i < completed_.size(); ++i) {
    const cqe_copy& c = completed_[i];
    if (c.user_data == (detail::key_of(&waker_) | detail::uncounted_tag)) waker_armed_ = false;
    else if (!(c.flags & IORING_CQE_F_MORE) && !(c.user_data & detail::uncounted_tag)) --inflight_;
  }
  completed_.clear();
  completed_head_ = 0;
  if (waker_armed_) try_cancel(detail::key_of(&waker_) | detail::uncounted_tag);
  for (int spins = 0; spins < 1000 && (inflight_ > 0 || waker_armed_); ++spins) {
    __kernel_timespec ts{0, 10 * 1000 * 1000};
    io_uring_cqe* cqe = nullptr;
    io_uring_submit_and_wait_timeout(&ring_, &cqe, 1, &ts, nullptr);
    unsigned head, n = 0;
    io_uring_for_each_cqe(&ring_, head, cqe) {
      ++n;
      if (cqe->user_data == (detail::key_of(&waker_) | detail::uncounted_tag)) waker_armed_ = false;
      else if (!(cqe->flags & IORING_CQE_F_MORE)) --inflight_;
    }
    io_uring_cq_advance(&ring_, n);
  }
  // Orphans whose last CQE is in (only counted above) or never came.
  while (orphans_) bury(orphans_);
  // Tasks handed over by other threads that will never run: free them (their
  // frames too). Calls still queued by objects that outlive us are dropped.
  run_inbox(false);
  {
    // A defer() still inside its eventfd write holds the lock: wait for it.
    std::lock_guard<std::mutex> g(inbox_lock_);
  }
  if (wake_fd_ >= 0) ::close(wake_fd_);
  // Deadlines that outlive the executor must not point into its lists.
  for (auto& l : deadline_lists_)
    for (deadline* d = l->head; d;) {
      deadline* next = d->next_;
      d->prev_ = d->next_ = nullptr;
      d->list_ = nullptr;
      d = next;
    }
  buffers_.reset();  // unregister while the ring is still there
  io_uring_queue_exit(&ring_);
}

// ---- coarse deadlines (deadline.hpp) ----

void deadline::arm(executor& ex, std::chrono::nanoseconds after) {
  cancel();
  // Strictly in the future: a callback that re-arms with 0 must not be
  // expired again in the same pass.
  if (after.count() < 1) after = std::chrono::nanoseconds(1);
  detail::deadline_list* l = ex.deadline_list_for(after);
  // The real clock, not the loop's: the loop's is read once per iteration,
  // and a deadline armed late in a long iteration (or before the first one)
  // would otherwise be measured from a moment already past, and fire early.
  // Monotonic, so each per-duration list stays in firing order.
  when_ = std::chrono::steady_clock::now() + after;
  prev_ = l->tail;
  next_ = nullptr;
  if (l->tail) l->tail->next_ = this;
  else l->head = this;
  l->tail = this;
  list_ = l;
}

void deadline::cancel() noexcept {
  if (!list_) return;
  if (prev_) prev_->next_ = next_;
  else list_->head = next_;
  if (next_) next_->prev_ = prev_;
  else list_->tail = prev_;
  prev_ = next_ = nullptr;
  list_ = nullptr;
}

detail::deadline_list* executor::deadline_list_for(std::chrono::nanoseconds d) {
  for (auto& l : deadline_lists_)
    if (l->duration == d) return l.get();
  // A new duration: a server uses a handful (idle, message, write), so a
  // linear search beats a map. Many distinct durations would still be
  // correct, only slower to arm.
  deadline_lists_.push_back(std::make_unique<detail::deadline_list>());
  deadline_lists_.back()->duration = d;
  return deadline_lists_.back().get();
}

bool executor::earliest_deadline(std::chrono::steady_clock::time_point& out) const noexcept {
  bool any = false;
  for (const auto& l : deadline_lists_)
    if (l->head && (!any || l->head->when_ < out)) {
      out = l->head->when_;
      any = true;
    }
  return any;
}

void executor::expire_deadlines() {
  // By index: a callback that arms a new duration appends a list.
  for (std::size_t i = 0; i < deadline_lists_.size(); ++i) {
    detail::deadline_list* l = deadline_lists_[i].get();
    // Unlinked before its callback runs: the callback may re-arm it or
    // free it (a coroutine that ends).
    while (l->head && l->head->when_ <= now_) {
      deadline* d = l->head;
      d->cancel();
      ++stats_.deadlines_expired;
      d->on_expiry_(d);
    }
  }
}

buffer_ring* executor::receive_buffers() {
  if (!buffers_tried_) {
    buffers_tried_ = true;
    if (buffer_count_ == 0) return nullptr;
    try {
      buffers_ = std::make_unique<buffer_ring>(&ring_, buffer_count_, 16 * 1024, 1, buffer_max_);
    } catch (const std::system_error&) {
      buffers_.reset();  // older kernel: receives fall back to their own buffers
    }
  }
  return buffers_.get();
}

void executor::count_buffer_ring_empty() noexcept {
  ++stats_.buffer_ring_empty;
  // The recv that found it empty reads into its connection's own buffer;
  // the ones armed from now on name the grown ring.
  if (buffers_ && buffers_->grow()) ++stats_.buffer_ring_grown;
}

void executor::spawn(task<void> t) { spawn(detail::run_detached(this, std::move(t))); }

void executor::spawn(detail::detached d) { ready_.push_back(d.h); }


void executor::spawn_on(executor& target, task<void> t) {
  if (&target == this && on_own_thread()) return spawn(std::move(t));
  target.defer(new remote_spawn(&target, std::move(t)));
}

void executor::stop() {
  if (stopping_) return;
  stopping_ = true;
  // Each listener unlinks itself (or is unlinked here first).
  while (detail::stop_listener* l = stop_listeners_) {
    unlisten_stop(l);
    l->fn(l);
  }
  if (inflight_ == 0) return;
  // Cancel every request in flight (Linux 5.19+). On an older kernel this
  // CQE says -EINVAL and operations finish on their own deadlines instead.
  // (The wake-up read is cancelled too; its completion re-arms it.)
  if (!try_cancel(0)) cancel_all_owed_ = true;
}

bool executor::try_cancel(std::uint64_t key) noexcept {
  for (int attempt = 0; attempt < 4; ++attempt) {
    if (io_uring_sqe* sqe = io_uring_get_sqe(&ring_)) {
      if (key == 0) io_uring_prep_cancel64(sqe, 0, IORING_ASYNC_CANCEL_ANY | IORING_ASYNC_CANCEL_ALL);
      else io_uring_prep_cancel64(sqe, key, 0);
      io_uring_sqe_set_data64(sqe, 0);
      note_submitted(1);
      return true;
    }
    int r = io_uring_submit(&ring_);
    ++stats_.submits;
    if (r == -EBUSY || r == -EAGAIN) {
      ++stats_.cq_overflows;
      reap();  // only moves CQEs to completed_: safe here
    } else if (r < 0 && r != -EINTR) {
      break;
    }
  }
  ++stats_.cancels_deferred;
  return false;
}

void executor::run_until_idle() {
  // A task another thread handed over counts as work, even before the
  // eventfd's completion has shown it.
  while (live_ > 0 || !ready_.empty() || !inbox_empty())
    if (!run_once(true)) break;
}

io_uring_sqe* executor::get_sqe(unsigned n) {
  if (io_uring_sq_space_left(&ring_) < n) submit_pending();
  io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
  if (!sqe) throw std::logic_error("ringframe: submission queue full after submit");
  return sqe;
}

void executor::submit_pending() {
  for (int attempt = 0;; ++attempt) {
    int r = io_uring_submit(&ring_);
    ++stats_.submits;
    if (r >= 0 && io_uring_sq_ready(&ring_) == 0) break;
    if (r == -EINTR) continue;
    if (r >= 0 || r == -EBUSY || r == -EAGAIN) {
      ++stats_.cq_overflows;
      // The completion queue is under pressure: move completions aside (to be
      // dispatched by the loop, in order) so the kernel can take more work.
      reap();
      if (attempt > 1000) throw std::system_error(errno_code(EAGAIN), "ringframe: io_uring submission stalled");
      continue;
    }
    throw std::system_error(errno_code(-r), "ringframe: io_uring_submit");
  }
  // The submission queue filled up inside one loop turn: a burst. Take the
  // completions that are ready now rather than let the CQ fill behind it.
  reap();
}

void executor::reap() noexcept {
  io_uring_cqe* cqes[64];
  for (;;) {
    unsigned n = io_uring_peek_batch_cqe(&ring_, cqes, 64);
    if (n == 0) return;
    for (unsigned i = 0; i < n; ++i) completed_.push_back({cqes[i]->user_data, cqes[i]->res, cqes[i]->flags});
    io_uring_cq_advance(&ring_, n);
    if (n < 64) return;
  }
}

bool executor::dispatch_completed() {
  if (completed_head_ == completed_.size()) return false;
  // By index, copying each entry out: a dispatch may append (and so move the
  // vector), and must find what it appended dispatched after what is ahead.
  while (completed_head_ < completed_.size()) {
    cqe_copy c = completed_[completed_head_++];
    dispatch(c.user_data, c.res, c.flags);
  }
  completed_.clear();
  completed_head_ = 0;
  return true;
}

void executor::dispatch(std::uint64_t user_data, int res, unsigned flags) {
  ++stats_.completions;
  if (!(flags & IORING_CQE_F_MORE) && !(user_data & detail::uncounted_tag)) --inflight_;
  if (user_data == 0) return;
  auto* c = reinterpret_cast<detail::completion*>(user_data & ~detail::tag_mask);
  c->on_cqe(c, res, flags, (user_data & detail::timer_tag) != 0);
}

bool executor::run_ready() {
  // Only what is queued now: a coroutine that posts itself again waits for
  // the next turn, so the loop keeps reaping.
  bool did = false;
  for (std::size_t n = ready_.size(); n > 0 && !ready_.empty(); --n) {
    auto h = ready_.front();
    ready_.pop_front();
    h.resume();
    did = true;
  }
  return did;
}

bool executor::run_once(bool block) {
  bool did = run_ready();
  did |= dispatch_completed();  // reaped while submitting during the last turn
  if (cancel_all_owed_ && try_cancel(0)) cancel_all_owed_ = false;
  if (!waker_armed_ && !closing_) arm_waker();
  std::chrono::steady_clock::time_point next_deadline;
  const bool has_deadline = earliest_deadline(next_deadline);
  bool wait = block && !did && ready_.empty() && completed_.empty() && (inflight_ > 0 || has_deadline || guards_ > 0);
  __kernel_timespec wait_for{};
  if (wait && has_deadline) {
    auto left = std::chrono::duration_cast<std::chrono::nanoseconds>(next_deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) {
      wait = false;  // already due: expire below without sleeping
    } else {
      wait_for.tv_sec = left.count() / 1000000000;
      wait_for.tv_nsec = left.count() % 1000000000;
    }
  }
  for (;;) {
    // With DEFER_TASKRUN completions are posted only when asked for
    // (IORING_ENTER_GETEVENTS), so a busy loop must ask on every pass.
    // A timed wait passes its timeout in the enter call (EXT_ARG): no SQE.
    io_uring_cqe* unused = nullptr;
    int r = wait && has_deadline ? io_uring_submit_and_wait_timeout(&ring_, &unused, 1, &wait_for, nullptr)
            : wait               ? io_uring_submit_and_wait(&ring_, 1)
            : defer_taskrun_     ? io_uring_submit_and_get_events(&ring_)
                                 : io_uring_submit(&ring_);
    ++stats_.submits;
    if (r >= 0 || r == -EINTR || r == -ETIME) break;
    if (r == -EBUSY || r == -EAGAIN) {  // CQ overflow: reap below, submit next time
      ++stats_.cq_overflows;
      break;
    }
    throw std::system_error(errno_code(-r), "ringframe: io_uring_enter");
  }
  if (io_uring_cq_has_overflow(&ring_)) ++stats_.cq_overflows;
  now_ = std::chrono::steady_clock::now();
  reap();
  did |= dispatch_completed();
  // What the completions woke (a send's waiters are posted, not resumed
  // inline) runs now, so its next requests go out with this turn's.
  did |= run_ready();
  // Dispatching may have armed or cancelled deadlines: look again.
  bool armed = earliest_deadline(next_deadline);
  if (armed && next_deadline <= now_) {
    expire_deadlines();
    did = true;
    armed = earliest_deadline(next_deadline);
  }
  return did || inflight_ > 0 || !ready_.empty() || !completed_.empty() || armed || guards_ > 0 || !inbox_empty();
}

}  // namespace ringframe
