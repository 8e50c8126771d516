// executor: the loop that drives the coroutines of one thread, and the I/O
// backend (io_uring, or epoll where io_uring is refused) it drives them on.
//
// One executor per thread, the one that created it. Only defer() and
// spawn_on() may be called from other threads; everything else belongs to the
// executor's thread. The loop hands every request queued during a turn to the
// kernel at once (one io_uring_enter), then takes every completion that is
// ready before it waits again, so a busy executor makes one system call per
// batch, not per operation. Completions are dispatched strictly in the order
// they were posted. See detail/io_backend.hpp for the seam between the loop
// and the kernel.
#pragma once

#include <ringframe/buffer_ring.hpp>
#include <ringframe/deadline.hpp>
#include <ringframe/detail/completion.hpp>
#include <ringframe/detail/deferred_call.hpp>
#include <ringframe/detail/detached.hpp>
#include <ringframe/detail/io_backend.hpp>
#include <ringframe/task.hpp>

#include <atomic>
#include <chrono>
#include <coroutine>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>
#include <thread>
#include <vector>

namespace ringframe {

struct latency_histogram;

namespace detail {
// Told when its executor stops, for what a kernel cancellation cannot end
// (a zero-copy send's pages, held until the peer takes them). Intrusive;
// the executor's thread only.
struct stop_listener {
  void (*fn)(stop_listener* self) noexcept = nullptr;
  stop_listener* prev = nullptr;
  stop_listener* next = nullptr;
  bool linked = false;
};

// For tests: called by executor::submit before the backend takes `r` (null:
// none). It may throw what a backend's submit throws (std::bad_alloc;
// std::system_error when io_uring cannot submit at all, see io_backend.hpp),
// so a test can prove that a caller on a completion path survives it, on
// either backend. Set it while no other thread submits.
extern std::atomic<void (*)(const io_request& r)> submit_test_hook;

// A coroutine an object wakes through its executor's ready queue (a send
// queue's waiters). When the queue cannot grow for it (bad_alloc), the node
// is parked on the executor's intrusive list instead and resumed from the
// loop's next turn: the wake-up cannot fail (review13 F13), and it costs
// three words in the waiter's frame, not resume_later's six (an idle
// connection's reader holds one: its memory counts). The executor's thread
// only. A node parked when its frame goes unparks itself.
struct wake_node {
  std::coroutine_handle<> h;
  wake_node* next = nullptr;  // the waking object's list, then the parked list
  executor* parked_in = nullptr;  // set while parked
  wake_node() = default;
  wake_node(const wake_node&) = delete;
  wake_node& operator=(const wake_node&) = delete;
  // Inline: a node is made and dropped per read_message, and is nearly never parked.
  ~wake_node() {
    if (parked_in) unpark_from(parked_in);
  }

 private:
  void unpark_from(executor* ex) noexcept;
};
}  // namespace detail

// How the ring is set up. `fastest` tries, in order: SINGLE_ISSUER +
// DEFER_TASKRUN (completions are posted only when the loop asks for them, no
// interrupts of the running thread; Linux 6.1), then COOP_TASKRUN (5.19), then
// neither; executor::setup_mode() says which one the kernel accepted.
enum class ring_setup { fastest, coop_taskrun, plain };

// Which kernel interface the executor runs on. `automatic` (the default)
// takes the environment variable RINGFRAME_BACKEND (io_uring, epoll or
// auto) if it is set, else io_uring where the kernel allows it and epoll
// where it refuses it (EPERM, EACCES, ENOSYS, EOPNOTSUPP, ENOMEM: a seccomp
// profile, kernel.io_uring_disabled, an old kernel, the locked-memory limit;
// EINVAL for a ring of an ordinary size): one line on stderr says why, once
// per process. An explicit io_uring that is refused is a setup_error.
enum class backend_kind { automatic, io_uring, epoll };
// "auto", "io_uring" (or "io-uring", "uring") and "epoll"; false for anything else.
bool parse_backend_kind(std::string_view text, backend_kind& out) noexcept;
const char* to_string(backend_kind k) noexcept;

struct executor_options {
  // Submission queue entries. The completion queue gets cq_factor times as
  // many: completions arrive in bursts (a recv on every connection at once),
  // while submissions are flushed whenever the queue fills.
  unsigned sq_entries = 1024;
  unsigned cq_factor = 4;
  ring_setup setup = ring_setup::fastest;
  // Provided receive buffers (a power of two; 0: none), 16 KiB each (64
  // KiB on epoll, where one recv then takes a whole pipelined batch). A
  // buffer is held only from a recv's completion until its bytes are copied
  // into the connection's decoder, so a few dozen serve any number of
  // connections; when all are in use a recv fails with ENOBUFS and the
  // connection reads into its own buffer instead.
  unsigned receive_buffers = 64;
  // When receives find every buffer in use, the ring grows (a new part with
  // twice as many buffers as the last: 64, then 192, 448, 960, 1984 in all)
  // up to this many. Equal to receive_buffers: it never grows.
  unsigned receive_buffers_max = 2048;
  // Incremental consumption of the receive buffers (IOU_PBUF_RING_INC, Linux
  // 6.12): a recv takes from a buffer only the bytes it receives, and the
  // next recv continues in the same buffer. Bundles (IORING_RECVSEND_BUNDLE,
  // Linux 6.10): one recv from the buffers may fill several of them. Each is
  // probed when the buffers are first used; a kernel without it gets the
  // plain ring and one line on stderr says so (once per process). io_uring
  // only: no-ops on epoll. Off by default: measured in docs/io-path.md.
  bool incremental_buffers = false;
  bool recv_bundles = false;
  // io_uring, epoll, or automatic (see backend_kind). sq_entries, cq_factor
  // and setup concern io_uring only.
  backend_kind backend = backend_kind::automatic;
};

// Thrown by the executor's constructor only (see result.hpp for why).
// what() is the diagnosis as written, which names the error already
// (system_error's own would append ": <strerror>" a second time); code()
// is the errno.
class setup_error : public std::system_error {
 public:
  setup_error(std::error_code code, const std::string& diagnosis)
      : std::system_error(code, diagnosis), diagnosis_(std::make_shared<const std::string>(diagnosis)) {}
  const char* what() const noexcept override { return diagnosis_->c_str(); }

 private:
  std::shared_ptr<const std::string> diagnosis_;  // shared: copying an exception must not throw
};

// Events worth counting that the executor absorbs by itself.
struct executor_stats {
  // io_uring_enter said the completion queue was full (-EBUSY/-EAGAIN), or
  // the kernel had completions waiting in its overflow list: none is lost
  // (IORING_FEAT_NODROP), they are reaped and dispatched in order. (io_uring only.)
  std::uint64_t cq_overflows = 0;
  std::uint64_t submits = 0;      // system calls that submit or wait (io_uring_enter, epoll_wait)
  std::uint64_t completions = 0;  // completions dispatched
  std::uint64_t buffer_ring_empty = 0;  // -ENOBUFS: every provided buffer in use
  std::uint64_t buffer_ring_grown = 0;  // times the ring grew because of it
  std::uint64_t deadlines_expired = 0;  // coarse deadlines (deadline.hpp) that fired
  std::uint64_t deferred_calls = 0;     // deferred_calls run (other threads' requests, spawn_on)
  std::uint64_t cancels_deferred = 0;   // cancellations that found no free SQE and waited a loop turn
};

class executor {
 public:
  explicit executor(executor_options opts = {});
  ~executor();
  executor(const executor&) = delete;
  executor& operator=(const executor&) = delete;

  // io_uring: "defer-taskrun", "coop-taskrun" or "plain", what the kernel
  // accepted (with defer-taskrun the executor must run on the thread that
  // created it); epoll: "epoll".
  const char* setup_mode() const noexcept { return backend_->setup_mode(); }
  // The backend this executor runs on: io_uring or epoll, never automatic.
  backend_kind backend() const noexcept { return kind_; }
  const char* backend_name() const noexcept { return backend_->name(); }
  // Why `automatic` fell back to epoll (the io_uring error, explained), or "".
  const std::string& fallback_reason() const noexcept { return fallback_reason_; }

  // Can this process create an io_uring here? Empty string when it can, else a
  // one-paragraph diagnosis naming the cause and the fix.
  static std::string probe();

  // Run `t` to completion on this thread, driving all I/O and spawned tasks
  // meanwhile. Returns its value or rethrows its exception. An exception out
  // of the loop itself (run_once: out of memory) leaves run() too; then `t`,
  // if unfinished, stays with the executor until it finishes (its value is
  // dropped) or the executor goes, like a spawned task: its frame may hold
  // an operation the kernel has not completed (review21 F3).
  template <class T>
  T run(task<T> t) {
    auto h = t.handle();
    h.resume();
    while (!h.done()) {
      bool more;
      try {
        more = run_once(true);
      } catch (...) {
        if (!h.done()) keep_unfinished(std::move(t));
        throw;
      }
      if (!more)
        throw std::logic_error("ringframe: run(): the task waits, but no I/O is in flight and nothing is ready (deadlock)");
    }
    return t.take_result();
  }

  // Start `t` as a detached coroutine owned by the executor. It begins on the
  // next loop iteration. An exception escaping it is logged to stderr and
  // dropped: one connection's failure never reaches another.
  void spawn(task<void> t);
  // A coroutine that is detached itself (detail/detached.hpp): no wrapper.
  void spawn(detail::detached d);

  // Hand `t` to `target` (any executor, usually another thread's): it is
  // spawned there, on that thread. Callable from any thread; returns at once.
  // Its only failure is std::bad_alloc for the hand-off record (a few words),
  // thrown here, with `t` destroyed unrun; once handed over, nothing the
  // target does can fail back to the caller. The task travels through the target's inbox (a short
  // lock, and an eventfd write when the target may be asleep); `target` must
  // outlive the call, and a task still in the inbox when the target goes away
  // is destroyed unrun. (An earlier version sent it ring to ring with
  // IORING_OP_MSG_RING, whose failures could not be reported to anyone.)
  void spawn_on(executor& target, task<void> t);

  // Run c->fn on this executor's thread, from its loop, soon. Any thread; a
  // call already queued is not queued twice. See detail/deferred_call.hpp.
  void defer(detail::deferred_call* c) noexcept;
  // Take back a queued call (its object is going away). This thread only;
  // after a stop_callback that may defer `c` has been destroyed.
  void withdraw(detail::deferred_call* c) noexcept;
  bool on_own_thread() const noexcept { return std::this_thread::get_id() == owner_; }

  // The executor's provided receive buffers, registered on first use; null
  // when the kernel cannot provide them (then receives use their own buffers).
  buffer_ring* receive_buffers();
  // How many provided buffers are registered now (0 before the first use).
  unsigned receive_buffer_count() const noexcept { return buffers_ ? buffers_->count() : 0; }

  // Where framed connections on this thread record each message's handling
  // time (a server sets it: server_options::measure_handling_time), or
  // null: none is measured. Kept here rather than in every connection.
  latency_histogram* handling_time_sink() const noexcept { return handling_sink_; }
  void set_handling_time_sink(latency_histogram* h) noexcept { handling_sink_ = h; }
  // A recv found every buffer in use (-ENOBUFS): counted, and the ring grows
  // if it may.
  void count_buffer_ring_empty() noexcept;

  // Number of spawned coroutines that have not finished.
  std::size_t live_tasks() const noexcept { return live_; }

  // While one exists, the loop counts on work arriving from elsewhere (a
  // reply another thread will hand over with spawn_on): run() waits for it
  // instead of reporting a deadlock. Like Asio's executor_work_guard.
  class work_guard {
   public:
    explicit work_guard(executor& ex) noexcept : ex_(&ex) { ++ex.guards_; }
    work_guard(work_guard&& o) noexcept : ex_(std::exchange(o.ex_, nullptr)) {}
    work_guard(const work_guard&) = delete;
    work_guard& operator=(const work_guard&) = delete;
    ~work_guard() { reset(); }
    void reset() noexcept {
      if (ex_) --ex_->guards_;
      ex_ = nullptr;
    }

   private:
    executor* ex_;
  };

  // detail/completion.hpp: keep `o` until bury(o) (its last CQE). An orphan
  // whose last CQE has not come when the executor goes (after its teardown
  // waited 10 s) is kept, never freed: the kernel may still read its memory
  // (a zero-copy send's pages, sent from the socket's queue after the ring is
  // gone: review25), so it stays allocated for the life of the process.
  void adopt(detail::orphan* o) noexcept;
  void bury(detail::orphan* o) noexcept;
  // How many orphans torn-down executors have kept so (process-wide).
  static std::size_t orphans_kept() noexcept;
  // l->fn runs when stop() is called, unless removed first.
  void listen_stop(detail::stop_listener* l) noexcept;
  void unlisten_stop(detail::stop_listener* l) noexcept;

  // Stop: every operation in flight is cancelled (its awaiter sees
  // ECANCELED) and every operation started from now on fails at once with
  // ECANCELED, so coroutines unwind by themselves.
  void stop();
  bool stopping() const noexcept { return stopping_; }

  // Run the loop until every spawned task has finished or `stop()` unwound them.
  void run_until_idle();

  // Queue a coroutine to be resumed on the next loop iteration.
  void post(std::coroutine_handle<> h) { ready_.push_back(h); }
  // Post n->h, or park the node when the ready queue cannot grow (see
  // detail::wake_node). Never throws; the executor's thread only.
  void wake(detail::wake_node* n) noexcept;
  void unpark(detail::wake_node* n) noexcept;

  // The loop's clock: steady_clock read once per loop iteration (after the
  // wait). Coarse deadlines are due when it reaches them (deadline.hpp).
  std::chrono::steady_clock::time_point now() const noexcept { return now_; }

  // ---- for operations (detail) ----
  // Hand `r` to the backend (detail/io_backend.hpp). Every request is
  // counted (twice with a deadline: its timer completes too) until its
  // final completion, so that teardown can wait for all of them before
  // coroutine frames (which the kernel writes into) go away.
  void submit(const detail::io_request& r) {
    if (auto* hook = detail::submit_test_hook.load(std::memory_order_relaxed)) hook(r);
    backend_->submit(r);
    if (!(r.key & detail::uncounted_tag)) inflight_ += r.deadline ? 2 : 1;
  }
  // A send made at once where the backend can (io_backend::send_now):
  // epoll. io_backend::not_now when it must be submitted (always where
  // sends_now() is false). (Throws only what a test's submit_test_hook
  // throws: such a send is handed to the backend as a submitted one is.)
  bool sends_now() const noexcept { return kind_ == backend_kind::epoll; }
  int send_now(const detail::io_request& r) {
    if (auto* hook = detail::submit_test_hook.load(std::memory_order_relaxed)) hook(r);
    return backend_->send_now(r);
  }
  // Submit a cancellation of the request whose key is `key`, on this
  // thread. Never throws (cancel paths are noexcept): false when it could
  // not be asked now, and the caller defers it to the next loop turn.
  // `fd`: the descriptor the request was made on, if known (see io_backend).
  bool try_cancel(std::uint64_t key, int fd = -1) noexcept;
  // A descriptor is new to this executor (socket.hpp calls this), or is
  // about to be closed: what the backend knew of its number is forgotten,
  // and (epoll) operations still waiting on it end with ECANCELED.
  void forget_descriptor(int fd) noexcept { backend_->forget(fd); }
  // Is `ex` an executor of this thread that has not been destroyed? (A
  // socket may outlive its executor; it tells it of its close only if so.)
  static bool alive_here(const executor* ex) noexcept;
  std::size_t inflight() const noexcept { return inflight_; }
  const executor_stats& stats() const noexcept { return stats_; }
  // The completions the loop's last wait brought: how busy the thread is.
  // A connection's own recv and send are one or two; more means other
  // connections' work is waiting its turn too (receive_stream reads
  // pipelined frames two at a time then: docs/io-path.md, "Large frames").
  std::size_t turn_completions() const noexcept { return turn_completions_; }

  // One loop iteration: resume what is ready, submit, reap. Waits for at
  // least one completion when `block` and nothing is ready. Returns false when
  // it had nothing to do and nothing could ever arrive.
  bool run_once(bool block);

 private:
  friend struct detail::detached_promise;
  friend class deadline;
  detail::deadline_list* deadline_list_for(std::chrono::nanoseconds d) {
    if (last_deadline_list_ && last_deadline_list_->duration == d) return last_deadline_list_;
    return find_deadline_list(d);
  }
  detail::deadline_list* find_deadline_list(std::chrono::nanoseconds d);
  // The earliest armed coarse deadline, or false when none is armed.
  bool earliest_deadline(std::chrono::steady_clock::time_point& out) const noexcept;
  void expire_deadlines();
  // Reads the clock and gives every deadline armed since the last call its
  // time (deadline.hpp, "When"); returns the time read.
  std::chrono::steady_clock::time_point stamp_deadlines() noexcept;
  void make_backend(const executor_options& opts);
  // run() is left by an exception while `t` is suspended (below the class).
  template <class T>
  void keep_unfinished(task<T> t) noexcept;
  // Dispatches completed_ from the front, in order, until it is empty (a
  // dispatch may reap more behind it). True if it dispatched anything.
  bool dispatch_completed();
  void dispatch(std::uint64_t user_data, int res, unsigned flags);
  bool run_ready();
  void arm_waker() noexcept;
  void run_inbox(bool run);
  // ~executor: a CQE only counted (nothing is dispatched any more).
  void count_at_teardown(const detail::cqe_copy& c) noexcept;
  static void on_wake(detail::completion* c, int res, unsigned flags, bool);

  std::deque<std::coroutine_handle<>> ready_;
  detail::wake_node* parked_ = nullptr;  // wake() could not post them (LIFO)
  // Every completion is copied by the backend into this one queue before it
  // is dispatched, and dispatched from its front: a resumed coroutine that
  // submits (and, under CQ pressure, reaps) appends behind what is waiting,
  // so nothing is ever overtaken (a SEND_ZC notification never precedes its
  // result; a multishot request's last CQE never precedes its data).
  std::vector<detail::cqe_copy> completed_;
  std::size_t completed_head_ = 0;
  std::size_t turn_completions_ = 0;
  std::size_t inflight_ = 0;
  executor_stats stats_;
  std::unique_ptr<detail::io_backend> backend_;
  backend_kind kind_ = backend_kind::io_uring;
  std::string fallback_reason_;
  std::unique_ptr<buffer_ring> buffers_;
  latency_histogram* handling_sink_ = nullptr;
  bool buffers_tried_ = false;
  unsigned buffer_count_ = 64;
  unsigned buffer_max_ = 2048;
  buffer_ring::features buffer_features_;
  std::size_t live_ = 0;
  bool stopping_ = false;
  detail::detached_promise* detached_head_ = nullptr;
  // One FIFO list per duration (deadline.hpp); the lists never move.
  std::vector<std::unique_ptr<detail::deadline_list>> deadline_lists_;
  // The list deadline_list_for() found last: a connection re-arms the same
  // timeout for every message.
  detail::deadline_list* last_deadline_list_ = nullptr;
  std::chrono::steady_clock::time_point now_ = std::chrono::steady_clock::now();
  bool deadlines_unstamped_ = false;  // a deadline was armed since stamp_deadlines()
  bool cancel_all_owed_ = false;  // stop() found no SQE: the loop sends it
  std::size_t guards_ = 0;        // work_guards alive
  // ~executor is unwinding what is left: work_guards no longer make the loop
  // wait (what they wait for, another thread's answer, may never come, and
  // a frame still waiting for it is destroyed like any other; review21 F1).
  bool tearing_down_ = false;
  detail::orphan* orphans_ = nullptr;
  detail::stop_listener* stop_listeners_ = nullptr;
  bool inbox_empty() noexcept;

  // The inbox: deferred_calls from any thread, run by this thread's loop. An
  // eventfd read stays armed in the backend (not counted in flight); a
  // poster writes the eventfd when the executor may be asleep.
  const std::thread::id owner_ = std::this_thread::get_id();
  std::mutex inbox_lock_;
  detail::deferred_call* inbox_head_ = nullptr;
  detail::deferred_call* inbox_tail_ = nullptr;
  std::atomic<bool> wake_signalled_{false};
  int wake_fd_ = -1;
  struct waker : detail::completion {
    executor* ex;
    std::uint64_t value;
  } waker_{};
  bool waker_armed_ = false;
  bool closing_ = false;
};

namespace detail {

// Waits for a task that was started elsewhere (executor::run) to finish.
template <class T>
struct await_started {
  typename task<T>::handle_type h;
  bool await_ready() const noexcept { return h.done(); }
  void await_suspend(std::coroutine_handle<> me) const noexcept { h.promise().continuation = me; }
  void await_resume() const noexcept {}
};

// A detached coroutine (counted, destroyed at the executor's teardown) that
// owns the task until it finishes, then destroys it with itself. It takes
// the handle, not the task: a task parameter would be built before the
// frame is allocated, and destroy the task's frame if that throws.
template <class T>
static detached keep_until_done(executor* /*read by the promise*/, typename task<T>::handle_type h) {
  task<T> owned(h);
  co_await await_started<T>{h};
}

}  // namespace detail

template <class T>
void executor::keep_unfinished(task<T> t) noexcept {
  try {
    // Started here, not posted: posting may need memory too, and a keeper
    // that cannot be queued would have to be destroyed, and the task with it.
    detail::detached keeper = detail::keep_until_done<T>(this, t.handle());
    (void)t.release();  // the keeper's now
    keeper.h.resume();
  } catch (...) {
    // Not even the keeper's frame: the task's frame is leaked rather than
    // destroyed under the kernel.
    (void)t.release();
  }
}

}  // namespace ringframe
