// stats: a snapshot of every number a server counts, per thread and summed,
// for programs built on ringframe (the Prometheus endpoint, metrics.hpp, is
// made from it).
//
// Each thread's numbers belong to that thread (plain integers, no atomics on
// the hot path), so a snapshot is taken ON that thread:
//   - one server on one executor: take_thread_stats(srv), on its thread;
//   - a sharded_server: srv.snapshot(callback) from any thread; each shard
//     copies its numbers on its own thread (a task sent through the owner's
//     order queue), and the callback runs on the owner's thread (the one in
//     run()) once every shard has answered:
//
//   srv.snapshot([](stats_snapshot s) {
//     std::printf("%llu messages in\n", (unsigned long long)s.total().server.messages_in);
//   });
#pragma once

#include <ringframe/executor.hpp>
#include <ringframe/latency_histogram.hpp>
#include <ringframe/server.hpp>

#include <cstdint>
#include <string>
#include <vector>

namespace ringframe {

struct thread_stats {
  unsigned thread = 0;  // the shard's index
  // The server's counters, including what open connections have counted so
  // far (framed connections add theirs to server::stats() only when they end).
  server_stats server;
  std::uint64_t open_connections = 0;
  executor_stats executor;
  // Provided receive buffers registered now (0: none yet, or the backend has none).
  std::uint64_t receive_buffers = 0;
  // The thread's receive_budget (receive_budget.hpp): bytes reserved by
  // large frames in progress now, the most at once, its limit, and frames
  // that had to wait for room (in all, and now).
  std::uint64_t budget_reserved = 0;
  std::uint64_t budget_peak = 0;
  std::uint64_t budget_limit = 0;
  std::uint64_t budget_waits = 0;
  std::uint64_t budget_waiting = 0;
  // Per message, from the receive completion to its reply queued; empty
  // unless server_options::measure_handling_time.
  latency_histogram handling_time;

  // Sums (server.peak_unsent_bytes: the larger).
  thread_stats& operator+=(const thread_stats& o);
};

struct stats_snapshot {
  std::string backend;  // "io_uring" or "epoll"
  std::vector<thread_stats> threads;
  thread_stats total() const;
};

// The numbers of `srv` and its executor. On the executor's thread.
thread_stats take_thread_stats(const server& srv, unsigned thread = 0);

namespace detail {
// A framed connection's counters added to `st` (handler.cpp, stats.cpp).
void add_connection_counters(const connection& c, server_stats& st) noexcept;
}  // namespace detail

}  // namespace ringframe
