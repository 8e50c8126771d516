#include <ringframe/metrics.hpp>

#include <cstdio>

namespace ringframe {

void append_label_value(std::string& out, std::string_view v) {
  for (char c : v) {
    if (c == '\\') out += "\\\\";
    else if (c == '"') out += "\\\"";
    else if (c == '\n') out += "\\n";
    else out += c;
  }
}

namespace {

// server_stats::malformed_by_reason's index is frame_errc's value (frame.hpp).
const char* const reason_names[server_stats::reasons] = {
    "", "header_length_zero", "header_not_utf8", "header_not_json", "header_not_object", "missing_key",
    "bad_key_type", "bad_content_length", "content_too_large", "content_not_utf8", "content_not_json",
    "unsupported_encoding", "header_too_large", "truncated", "end_of_stream", "other"};
// The reasons the decoder can report for input; the others are listed only
// if they are ever counted.
constexpr std::size_t input_reasons_end = 12;

class writer {
 public:
  explicit writer(std::string& out) : out_(out) {}

  void family(const char* name, const char* type, const char* help) {
    out_ += "# HELP ";
    out_ += name;
    out_ += ' ';
    out_ += help;
    out_ += "\n# TYPE ";
    out_ += name;
    out_ += ' ';
    out_ += type;
    out_ += '\n';
  }
  // name{thread="N"[,k="v"][,k2="v2"]} value
  void sample(std::string_view name, const thread_stats& t, std::uint64_t value, std::string_view k = {},
              std::string_view v = {}, std::string_view k2 = {}, std::string_view v2 = {}) {
    begin(name, t, k, v, k2, v2);
    out_ += std::to_string(value);
    out_ += '\n';
  }
  void sample_double(std::string_view name, const thread_stats& t, double value, std::string_view k = {},
                     std::string_view v = {}) {
    begin(name, t, k, v, {}, {});
    char buf[40];
    std::snprintf(buf, sizeof buf, "%.9g", value);
    out_ += buf;
    out_ += '\n';
  }

 private:
  void begin(std::string_view name, const thread_stats& t, std::string_view k, std::string_view v, std::string_view k2,
             std::string_view v2) {
    out_ += name;
    out_ += "{thread=\"";
    out_ += std::to_string(t.thread);
    out_ += '"';
    label(k, v);
    label(k2, v2);
    out_ += "} ";
  }
  void label(std::string_view k, std::string_view v) {
    if (k.empty()) return;
    out_ += ',';
    out_ += k;
    out_ += "=\"";
    append_label_value(out_, v);
    out_ += '"';
  }
  std::string& out_;
};

}  // namespace

std::string prometheus_text(const stats_snapshot& s, std::string_view mode) {
  std::string out;
  out.reserve(4096 + 6144 * s.threads.size());
  writer w(out);

  w.family("ringframe_backend_info", "gauge", "The I/O backend the server runs on (io_uring or epoll); always 1.");
  out += "ringframe_backend_info{backend=\"";
  append_label_value(out, s.backend);
  out += "\"} 1\n";
  w.family("ringframe_threads", "gauge", "Threads (shards) serving connections.");
  out += "ringframe_threads " + std::to_string(s.threads.size()) + "\n";

  using counter = std::uint64_t server_stats::*;
  struct plain {
    const char* name;
    const char* type;
    const char* help;
    counter field;
  };
  static const plain connection_series[] = {
      {"ringframe_connections_accepted_total", "counter", "Connections accepted and served.", &server_stats::accepted},
      {"ringframe_connections_closed_total", "counter", "Connections that have ended.", &server_stats::closed},
      {"ringframe_connections_rejected_total", "counter",
       "Connections closed at once because max_connections were open.", &server_stats::rejected},
      {"ringframe_connections_drained_total", "counter", "Connections that ended because the server drained.",
       &server_stats::drained},
      {"ringframe_accept_errors_total", "counter", "Accepts that failed for want of a resource (EMFILE, ENOBUFS...).",
       &server_stats::accept_errors},
      {"ringframe_received_bytes_total", "counter", "Bytes received from peers.", &server_stats::bytes_in},
      {"ringframe_sent_bytes_total", "counter", "Bytes sent to peers.", &server_stats::bytes_out},
      {"ringframe_backpressure_pauses_total", "counter",
       "Times a connection stopped reading until its queued replies were sent.", &server_stats::backpressure_pauses},
      {"ringframe_peak_unsent_bytes", "gauge", "The largest reply backlog any connection has had.",
       &server_stats::peak_unsent_bytes},
  };
  for (const plain& p : connection_series) {
    w.family(p.name, p.type, p.help);
    for (const thread_stats& t : s.threads) w.sample(p.name, t, t.server.*p.field);
  }

  w.family("ringframe_connections_open", "gauge", "Connections open now.");
  for (const thread_stats& t : s.threads) w.sample("ringframe_connections_open", t, t.open_connections);

  const std::string_view mode_key = mode.empty() ? std::string_view() : "mode";
  w.family("ringframe_messages_received_total", "counter", "Framed messages received whole.");
  for (const thread_stats& t : s.threads)
    w.sample("ringframe_messages_received_total", t, t.server.messages_in, mode_key, mode);
  w.family("ringframe_messages_sent_total", "counter", "Framed messages queued to be sent (replies and errors).");
  for (const thread_stats& t : s.threads)
    w.sample("ringframe_messages_sent_total", t, t.server.messages_out, mode_key, mode);

  w.family("ringframe_malformed_messages_total", "counter", "Malformed messages, by reason (answered with an error).");
  for (const thread_stats& t : s.threads)
    for (std::size_t i = 1; i < server_stats::reasons; ++i)
      if (i < input_reasons_end || t.server.malformed_by_reason[i])
        w.sample("ringframe_malformed_messages_total", t, t.server.malformed_by_reason[i], "reason", reason_names[i]);

  w.family("ringframe_timeouts_total", "counter",
           "Connections closed by a timeout, by kind: idle (no next message), message (one not complete in time), "
           "write (replies not taken).");
  for (const thread_stats& t : s.threads) {
    w.sample("ringframe_timeouts_total", t, t.server.timeouts_idle, "kind", "idle");
    w.sample("ringframe_timeouts_total", t, t.server.timeouts_message, "kind", "message");
    w.sample("ringframe_timeouts_total", t, t.server.timeouts_write, "kind", "write");
  }

  using ecounter = std::uint64_t executor_stats::*;
  struct eplain {
    const char* name;
    const char* help;
    ecounter field;
  };
  static const eplain executor_series[] = {
      {"ringframe_receive_buffers_exhausted_total",
       "Receives that found every provided buffer in use (ENOBUFS) and fell back to the connection's own buffer.",
       &executor_stats::buffer_ring_empty},
      {"ringframe_receive_buffer_ring_grown_total", "Times the provided buffer ring grew.",
       &executor_stats::buffer_ring_grown},
      {"ringframe_cq_overflows_total", "Times the io_uring completion queue was full (nothing is lost).",
       &executor_stats::cq_overflows},
      {"ringframe_io_wait_calls_total", "System calls that submit or wait (io_uring_enter, epoll_wait).",
       &executor_stats::submits},
      {"ringframe_completions_total", "I/O completions dispatched.", &executor_stats::completions},
  };
  w.family("ringframe_receive_buffers", "gauge", "Provided receive buffers registered (the buffer ring's size).");
  for (const thread_stats& t : s.threads) w.sample("ringframe_receive_buffers", t, t.receive_buffers);
  for (const eplain& p : executor_series) {
    w.family(p.name, "counter", p.help);
    for (const thread_stats& t : s.threads) w.sample(p.name, t, t.executor.*p.field);
  }

  struct budget_series {
    const char* name;
    const char* type;
    const char* help;
    std::uint64_t thread_stats::*field;
  };
  static const budget_series budget[] = {
      {"ringframe_receive_budget_bytes", "gauge", "The thread's receive budget for large frames in progress (the limit of the connection that last asked).",
       &thread_stats::budget_limit},
      {"ringframe_receive_budget_reserved_bytes", "gauge", "Bytes large frames in progress have reserved now.",
       &thread_stats::budget_reserved},
      {"ringframe_receive_budget_peak_bytes", "gauge", "The most bytes reserved at once.", &thread_stats::budget_peak},
      {"ringframe_receive_budget_waits_total", "counter",
       "Large frames that waited for room in the budget (their connection was not read meanwhile).",
       &thread_stats::budget_waits},
      {"ringframe_receive_budget_waiting", "gauge", "Large frames waiting for room now.",
       &thread_stats::budget_waiting},
  };
  for (const budget_series& p : budget) {
    w.family(p.name, p.type, p.help);
    for (const thread_stats& t : s.threads) w.sample(p.name, t, t.*p.field);
  }

  w.family("ringframe_message_handling_seconds", "histogram",
           "Per message, from its receive completion to its reply queued.");
  for (const thread_stats& t : s.threads) {
    const latency_histogram& h = t.handling_time;
    std::uint64_t cumulative = 0;
    char le[32];
    for (unsigned i = 0; i < latency_histogram::bounds; ++i) {
      cumulative += h.counts[i];
      std::snprintf(le, sizeof le, "%.10g", static_cast<double>(latency_histogram::upper_bound_ns(i)) / 1e9);
      w.sample("ringframe_message_handling_seconds_bucket", t, cumulative, "le", le);
    }
    cumulative += h.counts[latency_histogram::bounds];
    w.sample("ringframe_message_handling_seconds_bucket", t, cumulative, "le", "+Inf");
    w.sample_double("ringframe_message_handling_seconds_sum", t, static_cast<double>(h.sum_ns) / 1e9);
    w.sample("ringframe_message_handling_seconds_count", t, cumulative);
  }
  return out;
}

}  // namespace ringframe
