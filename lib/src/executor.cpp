#include <ringframe/detail/completion.hpp>
#include <ringframe/executor.hpp>
#include <ringframe/result.hpp>

#include <array>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <memory>

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
// until the target's thread dispatches its CQE, spawns the task and frees it.
struct remote_spawn : detail::completion {
  executor* target;
  task<void> t;
  static void arrived(detail::completion* c, int, unsigned, bool) {
    std::unique_ptr<remote_spawn> self(static_cast<remote_spawn*>(c));
    self->target->spawn(std::move(self->t));
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
}

executor::~executor() {
  if (live_ > 0 || inflight_ > 0 || !ready_.empty()) {
    stop();
    // Let cancelled coroutines unwind through their own code paths.
    for (int spins = 0; spins < 100000 && (live_ > 0 || !ready_.empty()); ++spins)
      if (!run_once(true)) break;
    // What is left waits on something that is not I/O and never will resume.
    while (detached_head_) detached_head_->handle().destroy();
    // The kernel may still write into frames' memory until every CQE is in.
    ready_.clear();
    for (int spins = 0; spins < 1000 && inflight_ > 0; ++spins) {
      __kernel_timespec ts{0, 10 * 1000 * 1000};
      io_uring_cqe* cqe = nullptr;
      io_uring_submit_and_wait_timeout(&ring_, &cqe, 1, &ts, nullptr);
      unsigned head, n = 0;
      io_uring_for_each_cqe(&ring_, head, cqe) {
        ++n;
        if (cqe->user_data & detail::remote_tag) {
          // A task sent here that will never run: free it (its frame too).
          delete static_cast<remote_spawn*>(reinterpret_cast<detail::completion*>(cqe->user_data & ~detail::tag_mask));
          continue;
        }
        if (!(cqe->flags & IORING_CQE_F_MORE)) --inflight_;
      }
      io_uring_cq_advance(&ring_, n);
    }
  }
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
  when_ = ex.now() + after;
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
  if (&target == this) return spawn(std::move(t));
  auto msg = std::make_unique<remote_spawn>();
  msg->on_cqe = &remote_spawn::arrived;
  msg->target = &target;
  msg->t = std::move(t);
  io_uring_sqe* sqe = get_sqe(1);
  io_uring_prep_msg_ring(sqe, target.ring_fd(), 0, reinterpret_cast<std::uintptr_t>(msg.get()) | detail::remote_tag, 0);
  io_uring_sqe_set_data64(sqe, 0);
  note_submitted(1);
  // Submit now: the caller may be about to block (join a thread) instead of
  // running this loop again.
  int r = io_uring_submit(&ring_);
  if (r < 0 && r != -EBUSY && r != -EAGAIN && r != -EINTR)
    throw std::system_error(errno_code(-r), "ringframe: spawn_on: io_uring_submit");
  msg.release();  // owned by the message now; freed on the target's thread
}

void executor::stop() {
  if (stopping_) return;
  stopping_ = true;
  if (inflight_ == 0) return;
  io_uring_sqe* sqe = get_sqe(1);
  // Cancel every request in flight (Linux 5.19+). On an older kernel this
  // CQE says -EINVAL and operations finish on their own deadlines instead.
  io_uring_prep_cancel64(sqe, 0, IORING_ASYNC_CANCEL_ANY | IORING_ASYNC_CANCEL_ALL);
  io_uring_sqe_set_data64(sqe, 0);
  note_submitted(1);
}

void executor::run_until_idle() {
  while (live_ > 0 || !ready_.empty())
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
    if (r >= 0 && io_uring_sq_ready(&ring_) == 0) return;
    if (r == -EINTR) continue;
    if (r >= 0 || r == -EBUSY || r == -EAGAIN) {
      ++stats_.cq_overflows;
      // The completion queue is under pressure: move completions aside (to be
      // dispatched by the loop, in order) so the kernel can take more work.
      reap_into_backlog();
      if (attempt > 1000) throw std::system_error(errno_code(EAGAIN), "ringframe: io_uring submission stalled");
      continue;
    }
    throw std::system_error(errno_code(-r), "ringframe: io_uring_submit");
  }
}

void executor::reap_into_backlog() {
  io_uring_cqe* cqes[256];
  unsigned n = io_uring_peek_batch_cqe(&ring_, cqes, 256);
  for (unsigned i = 0; i < n; ++i) backlog_.push_back({cqes[i]->user_data, cqes[i]->res, cqes[i]->flags});
  io_uring_cq_advance(&ring_, n);
}

void executor::dispatch(std::uint64_t user_data, int res, unsigned flags) {
  ++stats_.completions;
  if (!(flags & IORING_CQE_F_MORE) && !(user_data & detail::remote_tag)) --inflight_;
  if (user_data == 0) return;
  auto* c = reinterpret_cast<detail::completion*>(user_data & ~detail::tag_mask);
  c->on_cqe(c, res, flags, (user_data & detail::timer_tag) != 0);
}

bool executor::run_once(bool block) {
  bool did = false;
  for (std::size_t n = ready_.size(); n > 0 && !ready_.empty(); --n) {
    auto h = ready_.front();
    ready_.pop_front();
    h.resume();
    did = true;
  }
  while (!backlog_.empty()) {
    cqe_copy c = backlog_.front();
    backlog_.pop_front();
    dispatch(c.user_data, c.res, c.flags);
    did = true;
  }
  std::chrono::steady_clock::time_point next_deadline;
  const bool has_deadline = earliest_deadline(next_deadline);
  bool wait = block && !did && ready_.empty() && (inflight_ > 0 || has_deadline);
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
  // Copy the batch out before dispatching: a resumed coroutine may submit,
  // and under CQ pressure submitting reaps, which must not see these again.
  io_uring_cqe* cqes[256];
  cqe_copy batch[256];
  for (;;) {
    unsigned n = io_uring_peek_batch_cqe(&ring_, cqes, 256);
    if (n == 0) break;
    for (unsigned i = 0; i < n; ++i) batch[i] = {cqes[i]->user_data, cqes[i]->res, cqes[i]->flags};
    io_uring_cq_advance(&ring_, n);
    for (unsigned i = 0; i < n; ++i) dispatch(batch[i].user_data, batch[i].res, batch[i].flags);
    did = true;
    if (n < 256) break;
  }
  // Dispatching may have armed or cancelled deadlines: look again.
  bool armed = earliest_deadline(next_deadline);
  if (armed && next_deadline <= now_) {
    expire_deadlines();
    did = true;
    armed = earliest_deadline(next_deadline);
  }
  return did || inflight_ > 0 || !ready_.empty() || !backlog_.empty() || armed;
}

}  // namespace ringframe
