// sharded_server: one server on N threads ("shards"), each with its own
// executor (one io_uring) and server, behind one listening address. The
// thread that calls start() and run() (the owner) binds the listener, starts
// the shards' threads, turns signals and calls into orders (drain, stop,
// print counters) for every shard, sums the counters, and ends the threads.
//
//   sharded_server_options o;
//   o.listen_at = *address::from_ip("127.0.0.1", 65432);
//   sharded_server srv(std::move(o));
//   if (auto r = srv.start(&echo_handler); !r) return 1;  // EADDRINUSE ...
//   srv.run();  // serves until SIGINT/SIGTERM (or drain()/stop()) ends every shard
//
// Lifetimes: why no order can reach a dead executor. A shard's executor and
// server live on its thread from start() until the owner writes that shard's
// exit word, and the owner writes it only after every shard has finished
// serving and the owner's order loop has ended; nothing is sent to a shard
// after its exit word. A shard that finishes early (no connections left to
// drain) keeps its loop running, idle, so an order that still reaches it (a
// SIGUSR1, a second SIGINT) lands on a live executor and does nothing more
// than report its final counters. The exit word is an eventfd the
// sharded_server owns, not a task sent to the shard's executor: the owner
// never touches a shard's executor again once that shard may be leaving.
//
// Listening. By default the shards share ONE listening socket, bound without
// SO_REUSEPORT: each shard's ring accepts on its own duplicate of the
// descriptor, one connection per accept request (a multishot accept would
// take them all: see sharded_server.cpp), and the kernel gives each
// connection to a shard that is waiting for one. A port held by anyone else
// is EADDRINUSE, and nobody can join this one. With `reuse_port` (TCP), each shard has its own SO_REUSEPORT listener
// and accept queue, and the kernel spreads connections by their address
// hash; any process of the same user that sets SO_REUSEPORT on the same
// address then shares the port: that is what the option opts in to.
// Unix-domain sockets always share one listener (SO_REUSEPORT does not apply
// to them); a stale socket file is replaced and the file is removed when the
// server is done (listen_options::replace_stale_socket_file, socket.hpp).
#pragma once

#include <ringframe/address.hpp>
#include <ringframe/executor.hpp>
#include <ringframe/log.hpp>
#include <ringframe/metrics_endpoint.hpp>
#include <ringframe/result.hpp>
#include <ringframe/server.hpp>
#include <ringframe/signals.hpp>
#include <ringframe/socket.hpp>
#include <ringframe/stats.hpp>

#include <atomic>
#include <chrono>
#include <cstddef>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

namespace ringframe {

struct sharded_server_options {
  address listen_at;       // IPv4, IPv6 or Unix-domain (port 0: the kernel chooses)
  unsigned threads = 0;    // 0: one per core
  executor_options executor;  // each shard's
  // Each shard's. max_connections counts per shard; `log` is called from
  // every shard's thread.
  server_options server;
  // TCP: one SO_REUSEPORT listener per shard, and the port may be shared with
  // other processes that opt in too. Off: one listener, a taken port is an error.
  bool reuse_port = false;
  // The grace period of a drain started by SIGINT or SIGTERM.
  std::chrono::nanoseconds drain_timeout = std::chrono::seconds(10);
  // Take SIGINT and SIGTERM (drain; a second one: stop) and SIGUSR1 (every
  // shard logs its counters). start() then blocks them in the calling thread,
  // which every shard's thread inherits: call it before starting other threads.
  bool handle_signals = true;
  // The sharded server's own events ("SIGINT: draining 3 connections on
  // thread 1 ...", counters). Called from any of its threads. Empty: silent.
  std::function<void(const std::string&)> log;
  // The same events with their fields apart (log.hpp); when set, it takes
  // every event instead of `log`.
  std::function<void(const log_record&)> log_records;
  // Serve GET /metrics (the Prometheus text format, metrics.hpp) here, on
  // the owner's thread and executor: a scrape never runs on a shard's loop,
  // only a snapshot task does (see snapshot()). Unset: no endpoint.
  std::optional<address> metrics_at;
  metrics_endpoint_options metrics;
  // The mode label of the message series ("": none).
  std::string metrics_mode;
  // A scrape waits at most this long for every shard's numbers (503 after).
  std::chrono::nanoseconds metrics_snapshot_timeout = std::chrono::seconds(2);
};

class sharded_server {
 public:
  explicit sharded_server(sharded_server_options o);
  // If run() has not returned: stop(), then wait for the shards as run() does.
  // On the thread that called start().
  ~sharded_server();
  sharded_server(const sharded_server&) = delete;
  sharded_server& operator=(const sharded_server&) = delete;

  // Bind the listener(s) and start the shards' threads; each serves `h` (a
  // copy each) at once. Once only. Binding errors as errno (EADDRINUSE,
  // EACCES, EEXIST for a Unix path that is not a socket ...); a ring that
  // cannot be created throws setup_error, as the executor does.
  result<void> start(server::stream_handler h);
  // Block until every shard has finished serving (after drain or stop, by
  // signal or by call), then end their threads and remove a Unix socket file.
  // On the thread that called start().
  void run();

  // Orders, from any thread (a handler's included); they take effect in
  // run(). drain: stop accepting and reading new requests, let connections
  // send what they owe for up to `grace`, then stop. A second drain is ignored.
  void drain(std::chrono::nanoseconds grace);
  void stop();
  // Every shard logs its counters.
  void log_counters();
  // What run() does with `sig`: SIGINT or SIGTERM drain (drain_timeout), and
  // stop when a drain has begun; SIGUSR1 logs the counters. For applications
  // that handle signals themselves (handle_signals = false).
  void on_signal(int sig);

  // The sum of the counters of the shards that have finished: every shard's
  // once run() has returned. Any thread.
  server_stats stats() const;
  // Every shard's numbers (stats.hpp), each taken on its own thread by a
  // task sent there, like the other orders (a shard that has finished, or
  // whose thread has failed: its final numbers, without a task); `done` runs on the owner's
  // thread, in run(), once every shard has answered, and is destroyed there
  // right after. Any thread. Not called when run() returns first (stats()
  // then has the final sums); it is then destroyed on whichever thread
  // drops the request last, so let it hold nothing bound to one thread.
  void snapshot(std::function<void(stats_snapshot)> done);
  // The metrics endpoint's address (port 0 resolved); after a start() with metrics_at.
  const address& metrics_address() const noexcept { return metrics_bound_; }
  // The index of the shard whose thread calls this, or -1 on any other
  // thread (the owner's): for a log sink's "thread" field.
  static int this_thread_shard() noexcept;
  std::size_t finished_shards() const noexcept { return finished_count_.load(); }
  // Valid after a successful start().
  const address& local_address() const noexcept { return bound_; }
  unsigned threads() const noexcept { return static_cast<unsigned>(shards_.size()); }
  const char* setup_mode() const noexcept;    // the shards' io_uring setup (executor::setup_mode)
  const char* backend_name() const noexcept;  // "io_uring" or "epoll" (executor::backend_name)
  bool listener_per_shard() const noexcept { return per_shard_listeners_; }
  // The signal that began the drain, 0 if none did.
  int stopped_by() const noexcept { return stopped_by_; }

 private:
  struct shard;
  struct snapshot_request;
  struct order {
    enum kind { drain, stop, counters, signal, snapshot, snapshot_part } what;
    std::chrono::nanoseconds grace{};
    int sig = 0;
    unsigned shard = 0;
    std::shared_ptr<snapshot_request> snap = {};
  };

  result<void> bind_all();
  void post(order o);
  void apply(const order& o);
  void finish_snapshot(snapshot_request& r);
  void take_orders();
  void report_finished(shard& sh) noexcept;  // on the shard's thread
  template <class MakeTask>
  void fan_out(MakeTask make);
  void send_exit(shard& sh);
  void log(const log_record& r) const {
    if (opts_.log_records) opts_.log_records(r);
    else if (opts_.log) opts_.log(std::string(r.text));
  }
  void log(log_level level, std::string_view event, const std::string& text) const {
    log(log_record{level, event, nullptr, {}, text});
  }

  static void shard_thread(sharded_server* self, shard* sh, server::stream_handler h, void* ready);
  static task<void> shard_main(sharded_server* self, shard* sh, server::stream_handler h);
  static task<void> shard_drain(sharded_server* self, shard* sh, int sig, std::chrono::nanoseconds grace);
  static task<void> shard_stop(shard* sh);
  static task<void> shard_counters(sharded_server* self, shard* sh);
  static task<void> shard_snapshot(sharded_server* self, shard* sh, std::shared_ptr<snapshot_request> req);
  static task<result<std::string>> metrics_body(sharded_server* self, std::stop_token stop);
  static task<void> owner_loop(sharded_server* self);
  static task<void> signal_loop(sharded_server* self);

  sharded_server_options opts_;
  std::unique_ptr<signal_set> signals_;
  std::vector<std::unique_ptr<shard>> shards_;
  address bound_;
  socket metrics_listener_;  // on owner_; handed to the endpoint by run()
  address metrics_bound_;
  detail::unix_socket_file file_;
  bool per_shard_listeners_ = false;
  std::shared_ptr<detail::accept_balance> accept_balance_;  // shards sharing one listener
  bool started_ = false;
  bool ran_ = false;

  // Orders from any thread: queued under the lock, announced on an eventfd
  // that the owner's loop reads through its ring.
  std::mutex orders_lock_;
  std::vector<order> orders_;
  int order_fd_ = -1;

  // The owner's thread only.
  std::size_t live_shards_ = 0;  // shards whose thread is serving
  std::size_t finished_ = 0;
  bool draining_ = false;
  bool done_ = false;  // every shard has finished: no more orders go out
  std::stop_source done_source_;
  int stopped_by_ = 0;

  mutable std::mutex stats_lock_;
  server_stats total_;
  std::atomic<std::size_t> finished_count_{0};

  // The owner thread's: signals and orders. Declared last, so destroyed
  // first: when run() has left by an exception, what is still spawned on it
  // (the signal loop, a scrape) is unwound by ~executor, and may still read
  // the members above (a signal handled then walks shards_). (review30 F1)
  std::unique_ptr<executor> owner_;
};

}  // namespace ringframe
