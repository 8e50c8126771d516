#include <ringframe/resolver.hpp>

#include <ringframe/deadline.hpp>
#include <ringframe/detail/resume_later.hpp>

#include <netdb.h>
#include <pthread.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <exception>
#include <mutex>
#include <new>
#include <optional>
#include <stop_token>
#include <system_error>
#include <thread>

namespace ringframe {

namespace detail {
std::atomic<void (*)(std::string_view host)> resolver_test_hook{nullptr};
std::atomic<bool (*)(std::string_view host, std::uint16_t port, std::vector<address>& out)> resolver_test_answer{
    nullptr};
namespace {
std::atomic<std::uint64_t> lookups_finished{0};
}
std::uint64_t resolver_lookups_finished() noexcept { return lookups_finished.load(); }
}  // namespace detail

namespace {

class lookup;

// One lookup, shared by the awaiting coroutine (through its `lookup`) and
// the resolver thread. Everything below `m` is guarded by it. The thread
// posts `this` (a deferred_call) to `ex` only while `waiter` is set; the
// coroutine clears `waiter` (and withdraws the call) before it stops
// waiting, so a result that comes too late is dropped on the thread.
struct resolve_job : detail::deferred_call {
  resolve_job(executor* e, std::string h, std::uint16_t p)
      : deferred_call(&resolve_job::arrived), ex(e), host(std::move(h)), port(p) {}
  static void arrived(detail::deferred_call* c, bool run);

  std::mutex m;
  int refs = 1;  // the coroutine's; the thread takes one when queued
  lookup* waiter = nullptr;
  bool cancelled = false;  // a stop requested on another thread
  bool abandoned = false;  // the caller stopped waiting: nobody reads the answer
  bool done = false;
  executor* const ex;
  const std::string host;
  const std::uint16_t port;
  result<std::vector<address>> out{std::errc::operation_canceled};
  resolve_job* next = nullptr;  // in the pool's queue
};

void release(resolve_job* j) noexcept {
  bool last;
  {
    std::lock_guard<std::mutex> g(j->m);
    last = --j->refs == 0;
  }
  if (last) delete j;
}

// The resolver threads: one process-wide pool, like libuv's. It is never
// destroyed (threads may still be inside getaddrinfo at exit, and would
// otherwise race static destructors); idle threads leave by themselves.
class resolver_pool {
 public:
  resolver_pool() {
    instance_ = this;
    ::pthread_atfork(&before_fork, &after_fork_in_parent, &after_fork_in_child);
  }

  // False when no thread could be started to run it.
  bool submit(resolve_job* j) {
    std::lock_guard<std::mutex> g(m_);
    j->next = nullptr;
    if (tail_) tail_->next = j;
    else head_ = j;
    tail_ = j;
    ++queued_;
    if (queued_ <= idle_) {
      cv_.notify_one();
      return true;
    }
    if (threads_ < max_threads) {
      try {
        std::thread([this] { work(); }).detach();
        ++threads_;
      } catch (const std::exception&) {
        // EAGAIN (the process is out of threads) or bad_alloc (the thread's
        // state): not only system_error, or the job stayed queued with the
        // caller's reference, never freed, looked up for nobody (review34
        // F3). Queued behind a running lookup it is still served; with no
        // thread at all it never would be.
        if (threads_ == 0) {
          head_ = tail_ = nullptr;
          queued_ = 0;
          return false;
        }
      }
    }
    return true;
  }

 private:
  static constexpr int max_threads = 4;

  void work() {
    std::unique_lock<std::mutex> g(m_);
    for (;;) {
      while (!head_) {
        ++idle_;
        const bool woke = cv_.wait_for(g, std::chrono::seconds(10), [this] { return head_ != nullptr; });
        --idle_;
        if (!woke) {
          --threads_;
          return;
        }
      }
      resolve_job* j = head_;
      head_ = j->next;
      if (!head_) tail_ = nullptr;
      --queued_;
      g.unlock();
      run(j);
      g.lock();
    }
  }

  static result<std::vector<address>> look_up(resolve_job* j) {
    if (auto* hook = detail::resolver_test_hook.load()) hook(j->host);
    if (auto* answer = detail::resolver_test_answer.load()) {
      std::vector<address> out;
      if (answer(j->host, j->port, out)) return out;
    }
    // The blocking lookup, on this thread: the same call, the same answers.
    return address::resolve(j->host, j->port);
  }

  static void run(resolve_job* j) {
    // Its caller gave up while it was queued (timeout, stop, frame gone):
    // dropped unlooked-up. Looked up, such jobs held every thread for
    // nobody behind a hanging resolver, and the lookups made after it
    // answered again waited behind all of them (review34 F2).
    bool abandoned;
    {
      std::lock_guard<std::mutex> g(j->m);
      abandoned = j->abandoned || j->refs == 1;
    }
    result<std::vector<address>> r = abandoned ? result<std::vector<address>>(errno_code(ECANCELED)) : look_up(j);
    bool last;
    {
      std::lock_guard<std::mutex> g(j->m);
      j->out = std::move(r);
      j->done = true;
      if (j->waiter) j->ex->defer(j);
      last = --j->refs == 0;
    }
    if (last) delete j;
    detail::lookups_finished.fetch_add(1);
  }

  // fork(): the child has none of the threads, but it had their count and
  // `idle_`: a lookup there was handed to an idle thread that did not exist
  // and waited for its timeout, or for ever (review34 F4). The lock is held
  // across the fork so the child's copy is consistent; the child starts
  // with no thread (the next lookup starts one, which serves the queue
  // too). A lookup running on a thread at the fork is not served in the
  // child: its caller waits for its timeout or stop.
  static void before_fork() noexcept { instance_->m_.lock(); }
  static void after_fork_in_parent() noexcept { instance_->m_.unlock(); }
  static void after_fork_in_child() noexcept {
    resolver_pool* p = instance_;
    // Its waiters (the idle threads) are gone: a fresh one, as
    // notify_one() on the inherited state may wait for them for ever.
    new (&p->cv_) std::condition_variable;
    p->threads_ = 0;
    p->idle_ = 0;
    p->m_.unlock();
  }
  static inline resolver_pool* instance_ = nullptr;

  std::mutex m_;
  std::condition_variable cv_;
  resolve_job* head_ = nullptr;
  resolve_job* tail_ = nullptr;
  int queued_ = 0;
  int idle_ = 0;
  int threads_ = 0;
};

resolver_pool& pool() {
  static resolver_pool* p = new resolver_pool;  // never destroyed: see above
  return *p;
}

// The awaiter: a named local of resolve()'s frame (never a temporary of a
// co_await expression). While it waits it holds a work_guard (the loop
// must not report a deadlock while the answer is on another thread), a stop
// callback, a stop_listener (executor::stop) and, with a timeout, a deadline.
// Every way out goes through complete(), on the executor's thread, which
// detaches it from the job and posts the coroutine.
class lookup {
 public:
  lookup(executor& ex, resolve_job* job, op_options o) noexcept : ex_(ex), job_(job), opts_(o) {
    listener_.fn = &lookup::on_executor_stop;
  }
  lookup(const lookup&) = delete;
  lookup& operator=(const lookup&) = delete;
  ~lookup() {
    cb_.reset();  // waits for a callback running on another thread
    if (waiting_) detach();  // the frame is destroyed while it waits
    release(job_);
  }

  bool await_ready() {
    if (ex_.stopping() || (opts_.stop && opts_.stop->stop_requested())) {
      out_.emplace(errno_code(ECANCELED));
      return true;
    }
    return false;
  }

  bool await_suspend(std::coroutine_handle<> h) {
    {
      std::lock_guard<std::mutex> g(job_->m);
      if (job_->done) {  // it was quicker than us
        out_.emplace(std::move(job_->out));
        return false;
      }
      job_->waiter = this;
    }
    h_ = h;
    waiting_ = true;
    guard_.emplace(ex_);
    ex_.listen_stop(&listener_);
    if (opts_.timeout.count() > 0) timer_.arm(ex_, opts_.timeout);
    if (opts_.stop && opts_.stop->stop_possible()) cb_.emplace(*opts_.stop, canceller{this});
    return true;
  }

  result<std::vector<address>> await_resume() {
    cb_.reset();
    return std::move(*out_);
  }

  // On the executor's thread: the outcome is known; resume from the loop.
  void complete(result<std::vector<address>> r) {
    if (!waiting_) return;
    detach();
    out_.emplace(std::move(r));
    // Through the inbox when the ready queue cannot grow for it: detached
    // already, the coroutine would never be resumed, and from the stop
    // listener (noexcept) it was std::terminate (review13 F14).
    later_.wake(ex_, h_);
  }

  resolve_job* job() const noexcept { return job_; }

 private:
  struct canceller {
    lookup* self;
    void operator()() noexcept {
      if (self->ex_.on_own_thread()) return self->complete(errno_code(ECANCELED));
      // Another thread: the job carries it to the executor's.
      std::lock_guard<std::mutex> g(self->job_->m);
      if (!self->job_->waiter) return;
      self->job_->cancelled = true;
      self->ex_.defer(self->job_);
    }
  };
  struct timer : deadline {
    explicit timer(lookup* l) noexcept : deadline(&timer::expired), self(l) {}
    lookup* self;
    static void expired(deadline* d) { static_cast<timer*>(d)->self->complete(errno_code(ETIMEDOUT)); }
  };
  struct stop_hook : detail::stop_listener {
    lookup* self;
  };
  static void on_executor_stop(detail::stop_listener* l) noexcept {
    static_cast<stop_hook*>(l)->self->complete(errno_code(ECANCELED));
  }

  void detach() noexcept {
    waiting_ = false;
    timer_.cancel();
    ex_.unlisten_stop(&listener_);
    guard_.reset();
    {
      std::lock_guard<std::mutex> g(job_->m);
      job_->waiter = nullptr;
      job_->abandoned = true;
    }
    // Queued by the thread (or a stop) before `waiter` was cleared: taken
    // back; nobody can queue it again.
    ex_.withdraw(job_);
  }

  executor& ex_;
  resolve_job* job_;
  op_options opts_;
  std::coroutine_handle<> h_;
  detail::resume_later later_;  // withdraws itself if the frame goes first
  std::optional<result<std::vector<address>>> out_;
  std::optional<executor::work_guard> guard_;
  std::optional<std::stop_callback<canceller>> cb_;
  timer timer_{this};
  stop_hook listener_{{}, this};
  bool waiting_ = false;
};

void resolve_job::arrived(detail::deferred_call* c, bool run) {
  if (!run) return;  // the executor is going away; the coroutine withdrew or was told
  auto* j = static_cast<resolve_job*>(c);
  lookup* w;
  std::optional<result<std::vector<address>>> r;
  {
    std::lock_guard<std::mutex> g(j->m);
    w = j->waiter;
    if (!w) return;
    if (j->cancelled) r.emplace(errno_code(ECANCELED));
    else if (j->done) r.emplace(std::move(j->out));
    else return;  // not possible: queued only for one of the two
  }
  w->complete(std::move(*r));
}

}  // namespace

task<result<std::vector<address>>> resolve(executor& ex, std::string host, std::uint16_t port, op_options o) {
  // Numeric: no thread, no suspension.
  if (auto ip = address::from_ip(host, port)) co_return std::vector<address>{*ip};
  // A NUL inside: no host (address::resolve says why), and no thread hop.
  if (host.empty() || host.find('\0') != std::string::npos) co_return std::error_code(EAI_NONAME, resolver_category());
  auto* job = new resolve_job(&ex, std::move(host), port);
  {
    std::lock_guard<std::mutex> g(job->m);
    ++job->refs;  // the thread's
  }
  if (!pool().submit(job)) {
    release(job);
    release(job);
    co_return errno_code(EAGAIN);
  }
  lookup l(ex, job, o);
  result<std::vector<address>> r = co_await l;
  co_return r;
}

}  // namespace ringframe
