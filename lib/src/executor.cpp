#include "backend/backends.hpp"

#include <ringframe/buffer_ring.hpp>
#include <ringframe/detail/completion.hpp>
#include <ringframe/detail/saturating_time.hpp>
#include <ringframe/executor.hpp>
#include <ringframe/log.hpp>
#include <ringframe/result.hpp>

#include <algorithm>
#include <array>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>

#include <sys/eventfd.h>
#include <unistd.h>

namespace ringframe {

namespace detail {

std::atomic<void (*)(const io_request& r)> submit_test_hook{nullptr};

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
    report_diagnostic(log_level::error, "task_error", e.what(), "a spawned task ended with an exception: ", e.what());
  } catch (...) {
    report_diagnostic(log_level::error, "task_error", "unknown exception", "a spawned task ended with an unknown exception");
  }
}
}  // namespace

}  // namespace detail

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
    if (!run) return;
    // spawn_on cannot fail once it has returned, and its caller is on
    // another thread: a task whose wrapper frame (or ready-queue slot) cannot be allocated here is
    // dropped and logged, like a spawned task that throws, instead of the
    // bad_alloc leaving this thread's loop (run_once, so executor::run of
    // whatever it serves). (review13 F1)
    try {
      self->target->spawn(std::move(self->t));
    } catch (const std::exception& e) {
      detail::report_diagnostic(log_level::error, "task_error", e.what(),
                                "a task handed over by spawn_on could not be spawned: ", e.what());
    }
  }
};
}  // namespace

std::string executor::probe() { return detail::probe_uring(); }

bool parse_backend_kind(std::string_view text, backend_kind& out) noexcept {
  if (text == "auto" || text == "automatic") out = backend_kind::automatic;
  else if (text == "io_uring" || text == "io-uring" || text == "uring") out = backend_kind::io_uring;
  else if (text == "epoll") out = backend_kind::epoll;
  else return false;
  return true;
}

const char* to_string(backend_kind k) noexcept {
  switch (k) {
    case backend_kind::automatic: return "auto";
    case backend_kind::io_uring: return "io_uring";
    case backend_kind::epoll: return "epoll";
  }
  return "?";
}

namespace {
// Errors of io_uring_setup (and of the checks after it) that mean "not
// here" rather than "something is wrong": automatic falls back to epoll.
// EINVAL for a ring of a size every io_uring kernel takes means a kernel
// too old for the setup flags (before 5.5); for an impossible size it is
// the caller's mistake, reported as such.
bool io_uring_refused(int err, const executor_options& opts) noexcept {
  if (err == EINVAL)
    return opts.sq_entries <= 32768 && std::uint64_t{opts.sq_entries} * std::max(1u, opts.cq_factor) <= 65536;
  return err == EPERM || err == EACCES || err == ENOSYS || err == EOPNOTSUPP || err == ENOMEM;
}

// Once io_uring has been refused, the process's later executors (a server's
// other threads) go to epoll directly, and the fallback is logged once.
std::mutex fallback_lock;
std::string fallback_why;  // empty until refused
}  // namespace

void executor::make_backend(const executor_options& opts) {
  backend_kind want = opts.backend;
  if (want == backend_kind::automatic) {
    if (const char* env = std::getenv("RINGFRAME_BACKEND"); env && *env && !parse_backend_kind(env, want))
      throw setup_error(errno_code(EINVAL), std::string("ringframe: RINGFRAME_BACKEND='") + env +
                                                "' is not one of auto, io_uring, epoll");
  }
  if (want == backend_kind::io_uring) {
    backend_ = detail::make_uring_backend(opts, completed_, stats_);
    kind_ = backend_kind::io_uring;
    return;
  }
  if (want == backend_kind::automatic) {
    std::lock_guard<std::mutex> g(fallback_lock);
    if (fallback_why.empty()) {
      try {
        backend_ = detail::make_uring_backend(opts, completed_, stats_);
        kind_ = backend_kind::io_uring;
        return;
      } catch (const setup_error& e) {
        if (!io_uring_refused(e.code().value(), opts)) throw;
        std::string why = e.what();  // the diagnosis, which names the errno (setup_error::what)
        if (why.rfind("ringframe: ", 0) == 0) why.erase(0, 11);
        fallback_why = why;
        detail::report_diagnostic(log_level::warn, "backend_fallback", why,
                                  "io_uring is not available here, falling back to epoll: ", why);
      }
    }
    fallback_reason_ = fallback_why;
  }
  backend_ = detail::make_epoll_backend(opts, completed_, stats_);
  kind_ = backend_kind::epoll;
}

namespace {
// The executors created on this thread and not yet destroyed (usually one).
// An executor may outlive the list: a static one, or a thread_local made
// before the list's first use, is destroyed after the thread's
// thread-locals; `gone` (trivially destructible, readable to the end) then
// says the list is no more, and nobody is told of closed sockets.
thread_local bool executors_here_gone = false;
struct executor_list {
  std::vector<const executor*> v;
  ~executor_list() { executors_here_gone = true; }
};
thread_local executor_list executors_here;
}  // namespace

bool executor::alive_here(const executor* ex) noexcept {
  if (executors_here_gone) return false;
  for (const executor* e : executors_here.v)
    if (e == ex) return true;
  return false;
}

executor::executor(executor_options opts)
    : buffer_count_(opts.receive_buffers),
      buffer_max_(opts.receive_buffers_max),
      buffer_features_{opts.incremental_buffers, opts.recv_bundles} {
  if (buffer_count_ & (buffer_count_ - 1)) throw std::invalid_argument("executor_options::receive_buffers must be a power of two");
  // Reserved before the backend exists: it appends completions here.
  completed_.reserve(256);
  make_backend(opts);
  wake_fd_ = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (wake_fd_ < 0) {
    int e = errno;
    throw setup_error(errno_code(e), std::string("ringframe: eventfd: ") + std::strerror(e));
  }
  waker_.ex = this;
  waker_.on_cqe = &executor::on_wake;
  arm_waker();
  if (!executors_here_gone) executors_here.v.push_back(this);
}

// ---- the inbox (detail/deferred_call.hpp) ----

void executor::arm_waker() noexcept {
  detail::io_request r;
  r.op = detail::io_op::read;
  r.fd = wake_fd_;
  r.buf = &waker_.value;
  r.len = sizeof waker_.value;
  r.key = detail::key_of(&waker_) | detail::uncounted_tag;
  try {
    backend_->submit(r);  // not counted in flight
    waker_armed_ = true;
  } catch (...) {
    // No room to submit it now: it is armed on the next wake-up check in
    // run_once (waker_armed_ stays false); posts are never lost, only
    // noticed at the next loop turn.
  }
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

namespace {

// Orphans kept past their executor (~executor): reachable from here, so a
// leak checker does not report memory kept on purpose.
std::mutex kept_lock;
detail::orphan* kept_head = nullptr;
std::size_t kept_count = 0;

}  // namespace

std::size_t executor::orphans_kept() noexcept {
  std::lock_guard<std::mutex> g(kept_lock);
  return kept_count;
}

void executor::count_at_teardown(const detail::cqe_copy& c) noexcept {
  if (c.user_data == (detail::key_of(&waker_) | detail::uncounted_tag)) {
    waker_armed_ = false;
    return;
  }
  if ((c.flags & detail::cqe_more) || (c.user_data & detail::uncounted_tag)) return;
  --inflight_;
  // An orphan's last CQE: the kernel is done with it. (Keys are compared,
  // never followed: other completions' objects may be gone.)
  for (detail::orphan* o = orphans_; o; o = o->next)
    if (detail::key_of(o) == c.user_data) return bury(o);
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
    try {
      c->fn(c, run);
    } catch (...) {
      // The exception leaves run_once. on_wake cleared the wake flag and
      // read the eventfd before this run, so the calls still queued behind
      // this one would wait for some later defer(): signal again for them.
      // (review13 F2)
      std::lock_guard<std::mutex> g(inbox_lock_);
      if (inbox_head_ && !wake_signalled_.exchange(true, std::memory_order_seq_cst)) {
        std::uint64_t one = 1;
        [[maybe_unused]] ssize_t r = ::write(wake_fd_, &one, sizeof one);
      }
      throw;
    }
  }
}

executor::~executor() {
  // Sockets closed from here on (by coroutine frames torn down below, or
  // after) no longer tell this executor.
  if (!executors_here_gone) std::erase(executors_here.v, this);
  if (live_ > 0 || inflight_ > 0 || !ready_.empty() || parked_ || completed_head_ < completed_.size()) {
    stop();
    tearing_down_ = true;
    // Let cancelled coroutines unwind through their own code paths.
    for (int spins = 0; spins < 100000 && (live_ > 0 || !ready_.empty() || parked_); ++spins)
      if (!run_once(true)) break;
    // What is left waits on something that is not I/O and never will resume.
    while (detached_head_) detached_head_->handle().destroy();
    ready_.clear();
  }
  // Parked nodes whose frames outlive the executor must not unpark from it.
  while (detail::wake_node* p = parked_) {
    parked_ = p->next;
    p->next = nullptr;
    p->parked_in = nullptr;
  }
  // Nothing is dispatched from here on: completions are only counted. The
  // kernel may still write into frames' memory until every CQE is in, and
  // the wake-up read must come back before its buffer (in *this) goes.
  closing_ = true;
  // Completions reaped but not dispatched are only counted now.
  for (std::size_t i = completed_head_; i < completed_.size(); ++i) count_at_teardown(completed_[i]);
  completed_.clear();
  completed_head_ = 0;
  if (waker_armed_) try_cancel(detail::key_of(&waker_) | detail::uncounted_tag, wake_fd_);
  for (int spins = 0; spins < 1000 && (inflight_ > 0 || waker_armed_); ++spins) {
    try {
      backend_->run(true, std::chrono::milliseconds(10));
    } catch (const std::exception&) {
      break;  // the backend itself failed: nothing more will come
    }
    for (const detail::cqe_copy& c : completed_) count_at_teardown(c);
    completed_.clear();
  }
  // Orphans whose last CQE never came: kept (adopt's comment says why).
  if (orphans_) {
    std::lock_guard<std::mutex> g(kept_lock);
    while (detail::orphan* o = orphans_) {
      orphans_ = o->next;
      o->prev = nullptr;
      o->next = kept_head;
      kept_head = o;
      ++kept_count;
    }
  }
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
  backend_.reset();
}

// ---- coarse deadlines (deadline.hpp) ----

// [[gnu::hot]], here and across lib/src: a function every message passes
// through. GCC and clang put such functions in .text.hot, which the linker
// lays out together, so the path spans fewer pages of code (16 became 10 at
// epoll 50 x 1 x 64 B). Where each system call flushes the TLB, every page
// touched between two calls costs a page walk (ringframe-syscall-cost
// prints the price; docs/io-path.md, "A profile-guided build").
[[gnu::hot]] void deadline::arm(executor& ex, std::chrono::nanoseconds after) {
  cancel();
  // Strictly in the future: a callback that re-arms with 0 must not be
  // expired again in the same pass.
  if (after.count() < 1) after = std::chrono::nanoseconds(1);
  detail::deadline_list* l = ex.deadline_list_for(after);
  // Not yet stamped (deadline.hpp, "When"): it is at the list's tail, so
  // each per-duration list stays in firing order once stamped, and it is
  // neither due nor the earliest until then.
  when_ = std::chrono::steady_clock::time_point::max();
  prev_ = l->tail;
  next_ = nullptr;
  if (l->tail) l->tail->next_ = this;
  else l->head = this;
  l->tail = this;
  if (!l->unstamped) l->unstamped = this;
  list_ = l;
  ex.deadlines_unstamped_ = true;
}

[[gnu::hot]] void deadline::cancel() noexcept {
  if (!list_) return;
  if (list_->unstamped == this) list_->unstamped = next_;
  if (prev_) prev_->next_ = next_;
  else list_->head = next_;
  if (next_) next_->prev_ = prev_;
  else list_->tail = prev_;
  prev_ = next_ = nullptr;
  list_ = nullptr;
}

[[gnu::hot]] std::chrono::steady_clock::time_point executor::stamp_deadlines() noexcept {
  // After every arm it stamps: a deadline is never measured from a moment
  // before it was armed.
  const auto t = std::chrono::steady_clock::now();
  deadlines_unstamped_ = false;
  for (auto& l : deadline_lists_) {
    for (deadline* d = l->unstamped; d; d = d->next_) d->when_ = detail::saturating_add(t, l->duration);
    l->unstamped = nullptr;
  }
  return t;
}

detail::deadline_list* executor::find_deadline_list(std::chrono::nanoseconds d) {
  for (auto& l : deadline_lists_)
    if (l->duration == d) return last_deadline_list_ = l.get();
  // A new duration: a server uses a handful (idle, message, write), so a
  // linear search beats a map. Many distinct durations would still be
  // correct, only slower to arm.
  deadline_lists_.reserve(deadline_lists_.size() + 1);  // (no list made that cannot be kept)
  auto l = std::make_unique<detail::deadline_list>();
  l->duration = d;
  deadline_lists_.push_back(std::move(l));
  return last_deadline_list_ = deadline_lists_.back().get();
}

[[gnu::hot]] bool executor::earliest_deadline(std::chrono::steady_clock::time_point& out) const noexcept {
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

namespace {
// A feature asked for that the kernel lacks is said once per process, not
// once per executor (a server has one per thread).
std::atomic<bool> said_no_incremental{false};
std::atomic<bool> said_no_bundles{false};
}  // namespace

[[gnu::hot]] buffer_ring* executor::receive_buffers() {
  if (!buffers_tried_) {
    buffers_tried_ = true;
    if (buffer_count_ == 0) return nullptr;
    try {
      buffers_ = backend_->make_buffers(buffer_count_, 16 * 1024, buffer_max_, buffer_features_);
    } catch (const std::system_error&) {
      buffers_.reset();  // older kernel: receives fall back to their own buffers
    }
    // On epoll both are no-ops (documented), not something missing.
    if (buffers_ && kind_ == backend_kind::io_uring) {
      if (buffer_features_.incremental && !buffers_->granted().incremental && !said_no_incremental.exchange(true))
        detail::report_diagnostic(log_level::warn, "feature_missing", "IOU_PBUF_RING_INC",
                                  "incremental buffer consumption (IOU_PBUF_RING_INC, Linux 6.12) is not "
                                  "available on this kernel: receive buffers are consumed whole");
      if (buffer_features_.bundles && !buffers_->granted().bundles && !said_no_bundles.exchange(true))
        detail::report_diagnostic(log_level::warn, "feature_missing", "IORING_RECVSEND_BUNDLE",
                                  "recv bundles (IORING_RECVSEND_BUNDLE, Linux 6.10) are not available on "
                                  "this kernel: one receive buffer per recv");
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

void executor::spawn(detail::detached d) {
  try {
    ready_.push_back(d.h);
  } catch (...) {
    // Never to be resumed: destroyed now (its promise leaves the live count,
    // its task goes with it) rather than kept counted as live, which would
    // hold run_until_idle until the executor's end. (review13)
    d.h.destroy();
    throw;
  }
}


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

bool executor::try_cancel(std::uint64_t key, int fd) noexcept {
  if (backend_->cancel(key, fd)) {
    ++inflight_;  // the cancellation's own completion (key 0)
    return true;
  }
  ++stats_.cancels_deferred;
  return false;
}

void executor::run_until_idle() {
  // A task another thread handed over counts as work, even before the
  // eventfd's completion has shown it.
  while (live_ > 0 || !ready_.empty() || parked_ || !inbox_empty())
    if (!run_once(true)) break;
}

[[gnu::hot]] bool executor::dispatch_completed() {
  if (completed_head_ == completed_.size()) return false;
  // By index, copying each entry out: a dispatch may append (and so move the
  // vector), and must find what it appended dispatched after what is ahead.
  while (completed_head_ < completed_.size()) {
    detail::cqe_copy c = completed_[completed_head_++];
    dispatch(c.user_data, c.res, c.flags);
  }
  completed_.clear();
  completed_head_ = 0;
  return true;
}

[[gnu::hot]] void executor::dispatch(std::uint64_t user_data, int res, unsigned flags) {
  ++stats_.completions;
  if (!(flags & detail::cqe_more) && !(user_data & detail::uncounted_tag)) --inflight_;
  if (user_data == 0) return;
  auto* c = reinterpret_cast<detail::completion*>(user_data & ~detail::tag_mask);
  c->on_cqe(c, res, flags, (user_data & detail::timer_tag) != 0);
}

[[gnu::hot]] bool executor::run_ready() {
  // Only what is queued now: a coroutine that posts itself again waits for
  // the next turn, so the loop keeps reaping.
  bool did = false;
  for (std::size_t n = ready_.size(); n > 0 && !ready_.empty(); --n) {
    auto h = ready_.front();
    ready_.pop_front();
    h.resume();
    did = true;
  }
  // Those wake() could not post, one at a time off the list's head (a
  // resume may destroy another parked node's frame, which unparks it), and
  // at most as many as were parked when this began: coroutines that park
  // again cannot hold the turn (the list is LIFO, so which ones wait for
  // the next turn is not promised; the loop does not sleep meanwhile).
  std::size_t n = 0;
  for (detail::wake_node* p = parked_; p; p = p->next) ++n;
  for (; n > 0 && parked_; --n) {
    detail::wake_node* p = parked_;
    parked_ = p->next;
    p->next = nullptr;
    p->parked_in = nullptr;
    p->h.resume();
    did = true;
  }
  return did;
}

[[gnu::hot]] void executor::wake(detail::wake_node* n) noexcept {
  try {
    post(n->h);
  } catch (...) {  // the ready queue could not grow a block
    n->parked_in = this;
    n->next = parked_;
    parked_ = n;
  }
}

void executor::unpark(detail::wake_node* n) noexcept {
  for (detail::wake_node** at = &parked_; *at; at = &(*at)->next) {
    if (*at == n) {
      *at = n->next;
      break;
    }
  }
  n->next = nullptr;
  n->parked_in = nullptr;
}

void detail::wake_node::unpark_from(executor* ex) noexcept { ex->unpark(this); }

[[gnu::hot]] bool executor::run_once(bool block) {
  bool did = run_ready();
  did |= dispatch_completed();  // reaped while submitting during the last turn
  if (cancel_all_owed_ && try_cancel(0)) cancel_all_owed_ = false;
  if (!waker_armed_ && !closing_) arm_waker();
  // One clock read stamps what this turn armed, and serves the sleep below.
  std::chrono::steady_clock::time_point stamped_at{};
  if (deadlines_unstamped_) stamped_at = stamp_deadlines();
  std::chrono::steady_clock::time_point next_deadline;
  const bool has_deadline = earliest_deadline(next_deadline);
  // A work_guard says work will come from another thread; not once the
  // destructor runs (tearing_down_), or it would wait for it without end.
  const bool guarded = guards_ > 0 && !tearing_down_;
  bool wait = block && !did && ready_.empty() && !parked_ && completed_.empty() && (inflight_ > 0 || has_deadline || guarded);
  std::chrono::nanoseconds max_wait{-1};  // no limit
  if (wait && has_deadline) {
    const auto t = stamped_at.time_since_epoch().count() != 0 ? stamped_at : std::chrono::steady_clock::now();
    auto left = std::chrono::duration_cast<std::chrono::nanoseconds>(next_deadline - t);
    if (left.count() <= 0) wait = false;  // already due: expire below without sleeping
    else max_wait = left;
  }
  // Submits what this turn queued, sleeps if it may, and appends every
  // completion there is to completed_.
  backend_->run(wait, max_wait);
  turn_completions_ = completed_.size() - completed_head_;
  now_ = std::chrono::steady_clock::now();
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
  return did || inflight_ > 0 || !ready_.empty() || parked_ || !completed_.empty() || armed || guarded ||
         !inbox_empty();
}

}  // namespace ringframe
