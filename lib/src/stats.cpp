#include <ringframe/connection.hpp>
#include <ringframe/stats.hpp>

#include <ringframe/receive_budget.hpp>

#include <algorithm>

namespace ringframe {

void detail::add_connection_counters(const connection& c, server_stats& st) noexcept {
  st.bytes_in += c.bytes_in;
  st.bytes_out += c.bytes_out;
  st.messages_in += c.messages_in;
  st.messages_out += c.messages_out;
  st.backpressure_pauses += c.backpressure_pauses();
  st.peak_unsent_bytes = std::max<std::uint64_t>(st.peak_unsent_bytes, c.peak_unsent());
}

server_stats server::stats_now() const {
  server_stats s = stats_;
  for (const detail::open_counters* c = open_.next; c != &open_; c = c->next) detail::add_connection_counters(*c->conn, s);
  return s;
}

thread_stats& thread_stats::operator+=(const thread_stats& o) {
  server += o.server;
  open_connections += o.open_connections;
  executor.cq_overflows += o.executor.cq_overflows;
  executor.submits += o.executor.submits;
  executor.completions += o.executor.completions;
  executor.buffer_ring_empty += o.executor.buffer_ring_empty;
  executor.buffer_ring_grown += o.executor.buffer_ring_grown;
  executor.deadlines_expired += o.executor.deadlines_expired;
  executor.deferred_calls += o.executor.deferred_calls;
  executor.cancels_deferred += o.executor.cancels_deferred;
  receive_buffers += o.receive_buffers;
  budget_reserved += o.budget_reserved;
  budget_peak += o.budget_peak;
  budget_limit += o.budget_limit;
  budget_waits += o.budget_waits;
  budget_waiting += o.budget_waiting;
  handling_time += o.handling_time;
  return *this;
}

thread_stats stats_snapshot::total() const {
  thread_stats t;
  for (const thread_stats& s : threads) t += s;
  return t;
}

thread_stats take_thread_stats(const server& srv, unsigned thread) {
  thread_stats t;
  t.thread = thread;
  t.server = srv.stats_now();
  t.open_connections = srv.live_connections();
  executor& ex = const_cast<server&>(srv).get_executor();
  t.executor = ex.stats();
  t.receive_buffers = ex.receive_buffer_count();
  const receive_budget& b = receive_budget::this_thread();
  t.budget_reserved = b.used();
  t.budget_peak = b.peak();
  t.budget_limit = b.limit();
  t.budget_waits = b.waits();
  t.budget_waiting = b.waiting();
  t.handling_time = srv.handling_time();
  return t;
}

}  // namespace ringframe
