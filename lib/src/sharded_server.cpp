#include <ringframe/sharded_server.hpp>

#include <ringframe/event.hpp>
#include <ringframe/metrics.hpp>
#include <ringframe/signals.hpp>
#include <ringframe/with_timeout.hpp>

#include <fcntl.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <exception>
#include <latch>
#include <optional>
#include <system_error>
#include <thread>

namespace ringframe {

struct sharded_server::shard {
  unsigned index = 0;
  std::thread thread;
  int listen_fd = -1;  // handed to the thread, which adopts it
  // The owner's one word to end the thread. An eventfd owned here (not a
  // task sent to the shard's executor), so that writing it never touches the
  // executor that it tells to go away.
  int exit_fd = -1;
  // Only for a shard whose loop has failed and so cannot read exit_fd.
  std::atomic<bool> exit_flag{false};
  // The shard has finished: set by its thread (report_finished), counted by
  // the owner. A flag, not an order: queueing an order allocates, and a
  // report lost to bad_alloc left run() waiting for the shard for ever.
  // (review30 F4)
  std::atomic<bool> reported{false};

  // Set by the thread before start() returns; read-only afterwards.
  executor* ex = nullptr;
  server* srv = nullptr;
  const char* setup_mode = "";
  const char* backend = "";
  std::exception_ptr failure;

  // The shard's thread only.
  bool finished = false;
  server_stats final_stats;  // written before `reported` is set
  thread_stats final_thread;  // the same, for snapshots
  std::uint64_t exit_word = 0;

  // The owner's thread only.
  bool exit_sent = false;
  // Its report has been counted: final_stats and final_thread are the
  // owner's to read.
  bool counted = false;

  ~shard() {
    if (listen_fd >= 0) ::close(listen_fd);
    if (exit_fd >= 0) ::close(exit_fd);
  }
};

// A snapshot on its way: each shard writes its own slot of `result` on its
// thread, then posts a snapshot_part order; the owner counts them down.
struct sharded_server::snapshot_request {
  std::function<void(stats_snapshot)> done;
  stats_snapshot result;
  std::size_t waiting = 0;
};

namespace {
thread_local int current_shard = -1;

std::string signal_name(int sig) {
  const char* abbrev = sigabbrev_np(sig);
  return abbrev ? std::string("SIG") + abbrev : "signal " + std::to_string(sig);
}

std::string seconds(std::chrono::nanoseconds d) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f", std::chrono::duration<double>(d).count());
  return buf;
}
}  // namespace

sharded_server::sharded_server(sharded_server_options o) : opts_(std::move(o)) {}

sharded_server::~sharded_server() {
  if (started_ && !ran_) {
    stop();
    try {
      run();
    } catch (...) {
    }
  }
  // run() failed half-way: shards may still be serving. Stop them (orders
  // before exit words, as always), then end and join them.
  for (auto& sh : shards_) {
    if (!sh->thread.joinable()) continue;
    if (sh->ex && !sh->exit_sent) {
      try {
        owner_->spawn_on(*sh->ex, shard_stop(sh.get()));
      } catch (...) {
      }
      send_exit(*sh);
    }
    sh->thread.join();
  }
  file_.remove();
  if (order_fd_ >= 0) ::close(order_fd_);
}

int sharded_server::this_thread_shard() noexcept { return current_shard; }

const char* sharded_server::setup_mode() const noexcept {
  return shards_.empty() ? "" : shards_.front()->setup_mode;
}

const char* sharded_server::backend_name() const noexcept {
  return shards_.empty() ? "" : shards_.front()->backend;
}

// The owner's executor and signal set, every listener and each shard's
// descriptors: everything that can fail with an errno, before any thread.
result<void> sharded_server::bind_all() {
  if (owner_) throw std::logic_error("ringframe: sharded_server::start() called twice");
  unsigned n = opts_.threads ? opts_.threads : std::max(1u, std::thread::hardware_concurrency());
  executor_options eo;
  eo.setup = opts_.executor.setup;
  eo.backend = opts_.executor.backend;
  eo.sq_entries = 64;
  eo.receive_buffers = 0;
  owner_ = std::make_unique<executor>(eo);
  // Before any shard's thread exists, so that they all inherit the mask and
  // only the owner's signalfd sees these signals.
  if (opts_.handle_signals) signals_ = std::make_unique<signal_set>(*owner_, std::initializer_list<int>{SIGINT, SIGTERM, SIGUSR1});
  order_fd_ = ::eventfd(0, EFD_CLOEXEC);
  if (order_fd_ < 0) return errno_code(errno);
  if (opts_.metrics_at) {
    auto m = ringframe::listen(*owner_, *opts_.metrics_at, {});
    if (!m) return m.error();
    auto a = m->local_address();
    metrics_bound_ = a ? *a : *opts_.metrics_at;
    metrics_listener_ = std::move(*m);
  }

  // Every listener is bound here, before any thread starts, so that an error
  // is reported at once and nothing has to be unwound but descriptors.
  per_shard_listeners_ = opts_.reuse_port && opts_.listen_at.family() != AF_UNIX;
  listen_options lo;
  lo.reuse_port = per_shard_listeners_;
  std::vector<socket> listeners;
  {
    auto first = ringframe::listen(*owner_, opts_.listen_at, lo);
    if (!first) return first.error();
    file_ = detail::unix_socket_file(opts_.listen_at);
    auto a = first->local_address();
    bound_ = a ? *a : opts_.listen_at;  // port 0: the port the kernel chose
    listeners.push_back(std::move(*first));
  }
  for (unsigned i = 1; per_shard_listeners_ && i < n; ++i) {
    auto more = ringframe::listen(*owner_, bound_, lo);
    if (!more) return more.error();
    listeners.push_back(std::move(*more));
  }
  for (unsigned i = 0; i < n; ++i) {
    shards_.push_back(std::make_unique<shard>());
    shard& sh = *shards_.back();
    sh.index = i;
    sh.exit_fd = ::eventfd(0, EFD_CLOEXEC);
    if (sh.exit_fd < 0) return errno_code(errno);
    sh.listen_fd = per_shard_listeners_ ? listeners[i].release() : ::fcntl(listeners[0].fd(), F_DUPFD_CLOEXEC, 0);
    if (sh.listen_fd < 0) return errno_code(errno);
  }
  if (!per_shard_listeners_ && n > 1) accept_balance_ = std::make_shared<detail::accept_balance>(n);
  // From here on the shards' descriptors are the listener: when the last
  // shard closes its own (draining), new clients are refused at once.
  listeners.clear();
  return {};
}

result<void> sharded_server::start(server::stream_handler h) {
  result<void> bound = bind_all();
  if (!bound) {
    file_.remove();  // an error after bind leaves no socket file behind
    shards_.clear();
    return bound;
  }

  std::latch ready(static_cast<std::ptrdiff_t>(shards_.size()));
  for (auto& sh : shards_) {
    try {
      sh->thread = std::thread(&sharded_server::shard_thread, this, sh.get(), h, static_cast<void*>(&ready));
    } catch (...) {
      sh->failure = std::current_exception();
      ready.count_down();
    }
  }
  ready.wait();
  started_ = true;
  std::exception_ptr failure;
  for (auto& sh : shards_) {
    if (sh->ex) ++live_shards_;
    if (sh->failure && !failure) failure = sh->failure;
  }
  if (failure) {
    // Some shards are serving already: stop them, wait for them, remove the
    // socket file, then report why.
    stop();
    run();
    std::rethrow_exception(failure);
  }
  return {};
}

void sharded_server::run() {
  if (!started_ || ran_) return;
  ran_ = true;
  if (signals_) owner_->spawn(signal_loop(this));
  if (metrics_listener_.is_open()) {
    metrics_endpoint_options mo = opts_.metrics;
    if (!mo.log && (opts_.log_records || opts_.log)) mo.log = [this](const log_record& r) { log(r); };
    metrics_source source = [this](std::stop_token st) { return metrics_body(this, st); };
    owner_->spawn(serve_metrics(*owner_, std::move(metrics_listener_), std::move(source), std::move(mo),
                                done_source_.get_token()));
  }
  owner_->run(owner_loop(this));
  owner_->run_until_idle();  // the signal loop's cancelled wait comes back
  for (auto& sh : shards_)
    if (sh->thread.joinable()) sh->thread.join();
  file_.remove();
}

void sharded_server::drain(std::chrono::nanoseconds grace) { post({order::drain, grace}); }
void sharded_server::stop() { post({order::stop}); }
void sharded_server::log_counters() { post({order::counters}); }
void sharded_server::on_signal(int sig) { post({order::signal, {}, sig}); }
void sharded_server::snapshot(std::function<void(stats_snapshot)> done) {
  auto req = std::make_shared<snapshot_request>();
  req->done = std::move(done);
  post({order::snapshot, {}, 0, 0, std::move(req)});
}

server_stats sharded_server::stats() const {
  std::lock_guard<std::mutex> g(stats_lock_);
  return total_;
}

void sharded_server::post(order o) {
  {
    std::lock_guard<std::mutex> g(orders_lock_);
    orders_.push_back(std::move(o));
  }
  if (order_fd_ >= 0) {
    std::uint64_t one = 1;
    [[maybe_unused]] ssize_t r = ::write(order_fd_, &one, sizeof one);
  }
}

void sharded_server::report_finished(shard& sh) noexcept {
  sh.reported.store(true, std::memory_order_release);
  std::uint64_t one = 1;
  [[maybe_unused]] ssize_t r = ::write(order_fd_, &one, sizeof one);
}

void sharded_server::take_orders() {
  for (auto& sh : shards_) {
    if (sh->counted || !sh->reported.load(std::memory_order_acquire)) continue;
    sh->counted = true;
    ++finished_;
    std::lock_guard<std::mutex> g(stats_lock_);
    total_ += sh->final_stats;  // written before `reported`
    finished_count_.fetch_add(1);
  }
  std::vector<order> batch;
  {
    std::lock_guard<std::mutex> g(orders_lock_);
    batch.swap(orders_);
  }
  for (const order& o : batch) apply(o);
}

// Sends make(shard*) to every shard that has not been told to exit. Runs on
// the owner's thread, which is the only one that sends anything to a shard
// and the only one that writes exit words: once done_ is set, nothing goes out.
template <class MakeTask>
void sharded_server::fan_out(MakeTask make) {
  if (done_) return;
  for (auto& sh : shards_) {
    if (!sh->ex || sh->exit_sent) continue;
    try {
      owner_->spawn_on(*sh->ex, make(sh.get()));
    } catch (const std::exception& e) {
      log(log_level::error, "error", "cannot send an order to thread " + std::to_string(sh->index) + ": " + e.what());
    }
  }
}

void sharded_server::apply(const order& o) {
  switch (o.what) {
    case order::counters:
      fan_out([this](shard* sh) { return shard_counters(this, sh); });
      return;
    case order::stop:
      draining_ = true;
      fan_out([](shard* sh) { return shard_stop(sh); });
      return;
    case order::drain:
      if (draining_) return;
      draining_ = true;
      fan_out([this, &o](shard* sh) { return shard_drain(this, sh, 0, o.grace); });
      return;
    case order::signal:
      if (o.sig == SIGUSR1) {
        fan_out([this](shard* sh) { return shard_counters(this, sh); });
      } else if (!draining_) {
        draining_ = true;
        stopped_by_ = o.sig;
        fan_out([this, &o](shard* sh) { return shard_drain(this, sh, o.sig, opts_.drain_timeout); });
      } else if (!done_) {
        log(log_level::warn, "stop", signal_name(o.sig) + (stopped_by_ ? " again" : "") + ": stopping now");
        fan_out([](shard* sh) { return shard_stop(sh); });
      }
      return;
    case order::snapshot: {
      snapshot_request& r = *o.snap;
      r.result.backend = backend_name();
      r.result.threads.resize(shards_.size());
      for (std::size_t i = 0; i < shards_.size(); ++i) r.result.threads[i].thread = static_cast<unsigned>(i);
      if (!done_) {
        for (auto& sh : shards_) {
          // Its final numbers are known: no task, which a shard whose thread
          // has failed would never run (every scrape would wait for it, and
          // leave it in that shard's inbox). (review30 F2)
          if (sh->counted) {
            r.result.threads[sh->index] = sh->final_thread;
            continue;
          }
          if (!sh->ex || sh->exit_sent) continue;  // a shard that never started: zeros
          try {
            owner_->spawn_on(*sh->ex, shard_snapshot(this, sh.get(), o.snap));
            ++r.waiting;
          } catch (const std::exception& e) {
            log(log_level::error, "error", "cannot send an order to thread " + std::to_string(sh->index) + ": " + e.what());
          }
        }
      }
      if (r.waiting == 0) finish_snapshot(r);
      return;
    }
    case order::snapshot_part: {
      snapshot_request& r = *o.snap;
      if (--r.waiting == 0) finish_snapshot(r);
      return;
    }
  }
}

// `done` runs here, on the owner's thread, and is destroyed here too: the
// request itself may be freed on a shard's thread (whichever drops the last
// reference), and what `done` holds (a scrape's wait, on the owner's
// executor) must not go with it there.
void sharded_server::finish_snapshot(snapshot_request& r) {
  std::function<void(stats_snapshot)> done = std::move(r.done);
  r.done = nullptr;
  if (done) done(std::move(r.result));
}

void sharded_server::send_exit(shard& sh) {
  sh.exit_sent = true;
  std::uint64_t one = 1;
  [[maybe_unused]] ssize_t r = ::write(sh.exit_fd, &one, sizeof one);
  sh.exit_flag.store(true);
  sh.exit_flag.notify_one();
}

task<void> sharded_server::owner_loop(sharded_server* self) {
  std::uint64_t count = 0;
  op_options none{};
  while (self->finished_ < self->live_shards_) {
    result<std::size_t> r = co_await detail::read_op(*self->owner_, self->order_fd_, &count, sizeof count, none);
    if (!r) throw std::system_error(r.error(), "ringframe: sharded_server: reading orders");
    self->take_orders();
  }
  // Every shard has finished serving. No order goes out from now on (done_
  // is checked by fan_out, and the signal loop ends), and only then does each
  // shard get its exit word.
  self->done_ = true;
  self->done_source_.request_stop();
  for (auto& sh : self->shards_)
    if (sh->ex && !sh->exit_sent) self->send_exit(*sh);
}

task<void> sharded_server::signal_loop(sharded_server* self) {
  std::stop_token done = self->done_source_.get_token();
  op_options o{};
  o.stop = &done;
  for (;;) {
    result<int> sig = co_await self->signals_->wait(o);
    if (!sig || self->done_) co_return;
    self->apply({order::signal, {}, *sig});
  }
}

void sharded_server::shard_thread(sharded_server* self, shard* sh, server::stream_handler h, void* ready_ptr) {
  auto* ready = static_cast<std::latch*>(ready_ptr);
  current_shard = static_cast<int>(sh->index);
  std::optional<executor> ex;
  std::optional<server> srv;
  try {
    ex.emplace(self->opts_.executor);  // on this thread: SINGLE_ISSUER wants the creator to submit
    server_options so = self->opts_.server;
    // A listener shared by several rings: one-shot accepts. Each shard
    // re-arms after every connection, so the kernel's next one goes to a
    // shard that waits (a busy shard takes fewer). A multishot accept stays
    // first in the listener's wait queue and takes every connection: 1200 of
    // 1200 on one of two shards, measured on Linux 6.18, against 577/623
    // with one-shot accepts.
    //
    // That spreads connections that come one at a time, not a burst: a
    // shard's next accept finds the connections queued meanwhile and takes
    // them all (60 of 60 opened at once on one of two shards). So the
    // shards tell each other their load, and one above its share pauses
    // before its next accept (detail/accept_balance.hpp).
    if (!self->per_shard_listeners_ && self->shards_.size() > 1) {
      so.multishot_accept = false;
      so.accept_balance = self->accept_balance_;
      so.accept_balance_slot = sh->index;
    }
    srv.emplace(*ex, std::move(so));
    srv->add_listener(socket(*ex, std::exchange(sh->listen_fd, -1)));
  } catch (...) {
    sh->failure = std::current_exception();
    srv.reset();
    ex.reset();
    ready->count_down();
    return;
  }
  sh->ex = &*ex;
  sh->srv = &*srv;
  sh->setup_mode = ex->setup_mode();
  sh->backend = ex->backend_name();
  ready->count_down();  // `ready` may be gone from here on
  try {
    ex->run(shard_main(self, sh, std::move(h)));
  } catch (const std::exception& e) {
    // The loop itself failed (io_uring_enter). Report the shard finished, and
    // keep its executor alive (not looping) until the exit word: orders may
    // still be on their way to it.
    // A line that cannot be logged (its sink throws, or building it runs out
    // of memory) must not leave the thread's function: std::terminate.
    // (review30 F3)
    try {
      self->log(log_level::error, "error", "thread " + std::to_string(sh->index) + " failed: " + e.what());
    } catch (...) {
    }
    if (!sh->finished) {
      sh->final_stats = srv->stats();
      sh->final_thread = take_thread_stats(*srv, sh->index);
      sh->finished = true;
      self->report_finished(*sh);
    }
    sh->exit_flag.wait(false);
  }
}

task<void> sharded_server::shard_main(sharded_server* self, shard* sh, server::stream_handler h) {
  co_await sh->srv->serve(std::move(h));
  sh->final_stats = sh->srv->stats();
  sh->final_thread = take_thread_stats(*sh->srv, sh->index);
  sh->finished = true;
  self->report_finished(*sh);
  // Idle until the exit word: the loop keeps running, so an order sent to
  // this shard meanwhile still finds a live executor.
  op_options none{};
  result<std::size_t> r = co_await detail::read_op(*sh->ex, sh->exit_fd, &sh->exit_word, sizeof sh->exit_word, none);
  (void)r;
}

task<void> sharded_server::shard_drain(sharded_server* self, shard* sh, int sig, std::chrono::nanoseconds grace) {
  if (sh->finished) co_return;
  std::string where = self->shards_.size() > 1 ? " on thread " + std::to_string(sh->index) : "";
  std::string what = "draining " + std::to_string(sh->srv->live_connections()) + " connections" + where +
                     " (at most " + seconds(grace) + " s";
  self->log(log_level::info, "drain", sig ? signal_name(sig) + ": " + what + "; again to stop now)" : what + ")");
  sh->srv->drain(grace);
}

task<void> sharded_server::shard_stop(shard* sh) {
  if (!sh->finished) sh->srv->stop();
  co_return;
}

task<void> sharded_server::shard_counters(sharded_server* self, shard* sh) {
  std::string where = self->shards_.size() > 1 ? " (thread " + std::to_string(sh->index) + ")" : "";
  const server_stats& s = sh->finished ? sh->final_stats : sh->srv->stats();
  self->log(log_level::info, "counters", "counters" + where + ": " + s.to_string());
  co_return;
}

task<void> sharded_server::shard_snapshot(sharded_server* self, shard* sh, std::shared_ptr<snapshot_request> req) {
  // This shard's slot only; the owner reads the slots after the last part's
  // order, which the order queue's lock orders after these writes.
  req->result.threads[sh->index] = sh->finished ? sh->final_thread : take_thread_stats(*sh->srv, sh->index);
  self->post({order::snapshot_part, {}, 0, sh->index, std::move(req)});
  co_return;
}

namespace {
struct snapshot_wait {
  explicit snapshot_wait(executor& ex) : ready(ex) {}
  event ready;
  stats_snapshot snap;
  bool have = false;
};

task<result<void>> wait_ready(std::shared_ptr<snapshot_wait> w, std::stop_token st) {
  result<void> r = co_await w->ready.wait(&st);
  co_return r;
}
}  // namespace

// The body of one scrape, on the owner's thread.
task<result<std::string>> sharded_server::metrics_body(sharded_server* self, std::stop_token stop) {
  if (self->done_) co_return errno_code(ECANCELED);
  auto w = std::make_shared<snapshot_wait>(*self->owner_);
  auto req = std::make_shared<snapshot_request>();
  // Weakly: a request that is never answered (the server stopped) ends on
  // whichever thread drops it last, and the wait belongs to this thread.
  req->done = [weak = std::weak_ptr<snapshot_wait>(w)](stats_snapshot s) {
    std::shared_ptr<snapshot_wait> w = weak.lock();
    if (!w) return;  // the scrape has given up (timed out or stopped)
    w->snap = std::move(s);
    w->have = true;
    w->ready.set();
  };
  // The endpoint stopping (every shard has finished) ends the wait too.
  std::stop_callback on_stop(stop, [w] { w->ready.set(); });
  self->apply({order::snapshot, {}, 0, 0, req});
  task<result<void>> waiting = with_timeout(*self->owner_, self->opts_.metrics_snapshot_timeout,
                                            [w](std::stop_token st) { return wait_ready(w, st); });
  result<void> r = co_await std::move(waiting);
  if (!r) co_return r.error();
  if (!w->have) co_return errno_code(ECANCELED);
  co_return prometheus_text(w->snap, self->opts_.metrics_mode);
}

}  // namespace ringframe
