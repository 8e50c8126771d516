// ringframe-server: the tutorial's servers, rebuilt on ringframe.
// Thin by design: parse arguments, pick a handler, run the library's server.
#include "endpoint.hpp"
#include "option_values.hpp"

#include <ringframe/app.hpp>
#include <ringframe/echo.hpp>
#include <ringframe/handler.hpp>
#include <ringframe/executor.hpp>
#include <ringframe/log.hpp>
#include <ringframe/server.hpp>
#include <ringframe/sharded_server.hpp>
#include <ringframe/version.hpp>

#include <getopt.h>
#include <signal.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <thread>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

using namespace ringframe;

namespace {

const char* const usage_text =
    "Usage: ringframe-server [OPTIONS] [HOST] [PORT]\n"
    "\n"
    "Serve connections on HOST:PORT (default 127.0.0.1 65432) until SIGINT or SIGTERM.\n"
    "HOST may be an IPv4 or IPv6 address, a host name, or unix:/path/to/socket (a stale\n"
    "socket file left by a server that is gone is replaced; the file is removed on exit).\n"
    "\n"
    "Options:\n"
    "  -m, --mode MODE          echo: bytes in, same bytes out (default)\n"
    "                           app: the tutorial's search / binary application, framed\n"
    "                           frame-echo: every framed message sent back unchanged\n"
    "  -t, --threads N          N threads, each with its own io_uring (or epoll), accepting from one shared\n"
    "                           listener; default: the number of cores\n"
    "      --reuse-port         TCP: one SO_REUSEPORT listener per thread instead (the kernel\n"
    "                           spreads connections by address hash), and the port may be shared\n"
    "                           with other processes of this user that use SO_REUSEPORT too;\n"
    "                           without it, a port already in use is an error\n"
    "  -c, --max-connections N  accept at most N connections at once, per thread (default 100000)\n"
    "      --max-content BYTES  framed modes: largest content-length accepted (default 16777216,\n"
    "                           at most 1073741824)\n"
    "      --idle-timeout SECS  framed modes: close a connection idle this long (default 300;\n"
    "                           0: never)\n"
    "      --message-timeout SECS\n"
    "                           framed modes: close a connection whose message takes longer\n"
    "                           than this from its first byte to its last (default 30; 0: never)\n"
    "      --drain-timeout SECS on SIGINT/SIGTERM, how long connections may take to finish the\n"
    "                           replies they owe before they are closed (default 10)\n"
    "      --backend B          io_uring, epoll or auto (default auto: io_uring where the kernel\n"
    "                           allows it, else epoll, saying why once on stderr); without it,\n"
    "                           the environment variable RINGFRAME_BACKEND is used if set\n"
    "      --io-uring SETUP     fastest (default: defer-taskrun, else coop-taskrun, else plain),\n"
    "                           coop-taskrun or plain; the choice made is logged at start\n"
    "      --single-accept      one accept request per connection instead of a multishot one\n"
    "                           (for comparison; always so when threads share one listener)\n"
    "      --zero-copy-threshold BYTES\n"
    "                           framed modes: send reply batches of at least BYTES with\n"
    "                           IORING_OP_SEND_ZC (default 0: never)\n"
    "      --receive-budget BYTES\n"
    "                           framed modes: per thread, the most memory large frames in\n"
    "                           progress may hold; past it their connections stop being read\n"
    "                           until frames are consumed (default 268435456; 0: no bound)\n"
    "      --gather-threshold BYTES\n"
    "                           framed modes: echoed or forwarded content at least this long is\n"
    "                           sent from the receive buffer, not copied (default 1024; 0: never)\n"
    "      --read-size BYTES    framed modes: bytes a read asks for beyond the frame in progress,\n"
    "                           doubled up to 8 times while reads come back full and frames are\n"
    "                           at most twice as long; past a longer frame, 1 KiB (its next\n"
    "                           frame's header) (default 16384; 1024 to 16777216)\n"
    "      --no-provided-buffers\n"
    "                           framed modes: receive into each connection's own buffer even\n"
    "                           between messages (for comparison)\n"
    "      --multishot-recv     framed modes: keep one multishot recv armed per connection\n"
    "                           instead of one recv per read (Linux 6.0; see docs/io-path.md)\n"
    "      --pbuf-inc           io_uring: consume the provided receive buffers incrementally\n"
    "                           (IOU_PBUF_RING_INC, Linux 6.12), a recv taking only the bytes it\n"
    "                           gets; said once on stderr where the kernel lacks it (default off)\n"
    "      --recv-bundle        io_uring: a recv from the provided buffers may fill several\n"
    "                           (IORING_RECVSEND_BUNDLE, Linux 6.10); said once on stderr where\n"
    "                           the kernel lacks it (default off)\n"
    "      --metrics HOST:PORT  serve Prometheus metrics at http://HOST:PORT/metrics (off by\n"
    "                           default; PORT 0: any free port, printed at start; [::1]:PORT\n"
    "                           for IPv6); see README.md, \"Running in production\"\n"
    "      --log-format FORMAT  text (default) or json: one JSON object per line with ts, level,\n"
    "                           thread, event, peer, reason and msg\n"
    "      --log-level LEVEL    error, warn, info (default) or debug (adds each metrics request)\n"
    "  -q, --quiet              do not log each connection\n"
    "  -h, --help               show this help and exit\n"
    "  -V, --version            show the version and exit\n"
    "\n"
    "On SIGINT or SIGTERM the server stops accepting and reading new requests, lets\n"
    "each connection send the replies it owes (up to --drain-timeout), closes them,\n"
    "prints a summary and its counters, and exits 0. A second signal stops at once.\n"
    "SIGUSR1 prints the counters.\n";

struct options {
  std::string mode = "echo";
  connection_options conn;
  std::chrono::nanoseconds drain_timeout = std::chrono::seconds(10);
  ring_setup ring = ring_setup::fastest;
  backend_kind backend = backend_kind::automatic;
  bool single_accept = false;
  bool reuse_port = false;
  bool pbuf_inc = false;
  bool recv_bundle = false;
  unsigned threads = std::max(1u, std::thread::hardware_concurrency());
  std::string host = "127.0.0.1";
  std::string port = "65432";
  std::size_t max_connections = 100000;
  bool quiet = false;
  std::string metrics;  // HOST:PORT, "" for none
  bool log_json = false;
  log_level level = log_level::info;
};

[[noreturn]] void fail_usage(const std::string& msg) {
  std::fprintf(stderr, "ringframe-server: %s\nTry 'ringframe-server --help'.\n", msg.c_str());
  std::exit(2);
}

using cli::parse_whole;

// `zero_means_never`: 0 is accepted and means no timeout.
std::chrono::nanoseconds parse_seconds(const char* what, const char* text, bool zero_means_never = false) {
  double v = 0;
  bool ok = cli::parse_seconds_value(text, v) && v <= 1e6 && (v > 0 || (zero_means_never && v == 0));
  const auto ns = std::chrono::nanoseconds(ok ? static_cast<long long>(v * 1e9) : 0);
  // A positive value below a nanosecond would truncate to 0, which the
  // timeouts take as "never": the opposite of what was asked.
  if (!ok || (v > 0 && ns.count() == 0))
    fail_usage(std::string("bad ") + what + " '" + text + "' (expected seconds, " +
               (zero_means_never ? "0 for none, or 1e-9" : "1e-9") + " to 1000000)");
  return ns;
}

options parse(int argc, char** argv) {
  options o;
  static const option longopts[] = {
      {"mode", required_argument, nullptr, 'm'},    {"max-connections", required_argument, nullptr, 'c'},
      {"quiet", no_argument, nullptr, 'q'},         {"help", no_argument, nullptr, 'h'},
      {"max-content", required_argument, nullptr, 1}, {"idle-timeout", required_argument, nullptr, 2},
      {"message-timeout", required_argument, nullptr, 3}, {"drain-timeout", required_argument, nullptr, 4},
      {"io-uring", required_argument, nullptr, 5},  {"single-accept", no_argument, nullptr, 6},
      {"no-provided-buffers", no_argument, nullptr, 7}, {"multishot-recv", no_argument, nullptr, 9},
      {"zero-copy-threshold", required_argument, nullptr, 8},  {"threads", required_argument, nullptr, 't'},
      {"reuse-port", no_argument, nullptr, 10},     {"version", no_argument, nullptr, 'V'},
      {"backend", required_argument, nullptr, 11},
      {"metrics", required_argument, nullptr, 12},  {"log-format", required_argument, nullptr, 13},
      {"log-level", required_argument, nullptr, 14}, {"receive-budget", required_argument, nullptr, 15},
      {"gather-threshold", required_argument, nullptr, 16},
      {"pbuf-inc", no_argument, nullptr, 17},       {"recv-bundle", no_argument, nullptr, 18},
      {"read-size", required_argument, nullptr, 19},
      {nullptr, 0, nullptr, 0}};
  int c;
  opterr = 0;
  while ((c = getopt_long(argc, argv, "+:m:c:t:qhV", longopts, nullptr)) != -1) {
    switch (c) {
      case 'm': o.mode = optarg; break;
      case 'c': {
        // "-1" and an overflow are bad usage, not "no limit".
        unsigned long long v = 0;
        if (!parse_whole(optarg, v) || v == 0)
          fail_usage(std::string("bad --max-connections '") + optarg + "' (expected 1 or more)");
        o.max_connections = static_cast<std::size_t>(v);
        break;
      }
      case 'q': o.quiet = true; break;
      case 't': {
        unsigned long long v = 0;
        if (!parse_whole(optarg, v) || v == 0 || v > 1024)
          fail_usage(std::string("bad --threads '") + optarg + "' (expected 1 to 1024)");
        o.threads = static_cast<unsigned>(v);
        break;
      }
      case 1: {
        unsigned long long v = 0;
        // A frame is held whole in one buffer: the codec's ceiling (1 GiB).
        if (!parse_whole(optarg, v) || v > frame_limits::hard_max_content_length)
          fail_usage(std::string("bad --max-content '") + optarg + "' (expected 0 to " +
                     std::to_string(frame_limits::hard_max_content_length) + " bytes: at most 1 GiB)");
        o.conn.limits.max_content_length = v;
        break;
      }
      case 2: o.conn.idle_timeout = parse_seconds("--idle-timeout", optarg, true); break;
      case 3: o.conn.message_timeout = parse_seconds("--message-timeout", optarg, true); break;
      case 4: o.drain_timeout = parse_seconds("--drain-timeout", optarg); break;
      case 6: o.single_accept = true; break;
      case 7: o.conn.provided_buffers = false; break;
      case 9: o.conn.multishot_recv = true; break;
      case 10: o.reuse_port = true; break;
      case 17: o.pbuf_inc = true; break;
      case 18: o.recv_bundle = true; break;
      case 11:
        if (!parse_backend_kind(optarg, o.backend))
          fail_usage(std::string("bad --backend '") + optarg + "' (expected io_uring, epoll or auto)");
        // The option wins over the environment, auto included.
        ::unsetenv("RINGFRAME_BACKEND");
        break;
      case 12:
        if (!*optarg) fail_usage("bad --metrics '' (expected HOST:PORT)");
        o.metrics = optarg;
        break;
      case 13:
        if (std::strcmp(optarg, "text") == 0) o.log_json = false;
        else if (std::strcmp(optarg, "json") == 0) o.log_json = true;
        else fail_usage(std::string("bad --log-format '") + optarg + "' (expected text or json)");
        break;
      case 14:
        if (!parse_log_level(optarg, o.level))
          fail_usage(std::string("bad --log-level '") + optarg + "' (expected error, warn, info or debug)");
        break;
      case 15:
      case 16: {
        const char* name = c == 15 ? "--receive-budget" : "--gather-threshold";
        unsigned long long v = 0;
        if (!parse_whole(optarg, v))
          fail_usage(std::string("bad ") + name + " '" + optarg + "' (expected a number of bytes)");
        (c == 15 ? o.conn.thread_receive_budget : o.conn.gather_threshold) = v;
        break;
      }
      case 19: {
        unsigned long long v = 0;
        if (!parse_whole(optarg, v) || v < 1024 || v > (16ull << 20))
          fail_usage(std::string("bad --read-size '") + optarg + "' (expected 1024 to 16777216 bytes)");
        o.conn.read_size = v;
        break;
      }
      case 8: {
        unsigned long long v = 0;
        if (!parse_whole(optarg, v)) fail_usage(std::string("bad --zero-copy-threshold '") + optarg + "'");
        o.conn.zero_copy_threshold = v;
        break;
      }
      case 5: {
        std::string m = optarg;
        if (m == "fastest") o.ring = ring_setup::fastest;
        else if (m == "coop-taskrun") o.ring = ring_setup::coop_taskrun;
        else if (m == "plain") o.ring = ring_setup::plain;
        else fail_usage("bad --io-uring '" + m + "' (expected fastest, coop-taskrun or plain)");
        break;
      }
      case 'h': std::fputs(usage_text, stdout); std::exit(0);
      case 'V': std::printf("ringframe-server %s\n", RINGFRAME_VERSION); std::exit(0);
      // ':' (the optstring's): a missing value, not an unknown option.
      case ':': fail_usage(std::string("option '") + argv[optind - 1] + "' needs a value");
      default: fail_usage(std::string("unknown option '") + argv[optind - 1] + "'");
    }
  }
  int rest = argc - optind;
  if (rest > 2) fail_usage("too many arguments");
  if (rest >= 1) o.host = argv[optind];
  if (rest >= 2) o.port = argv[optind + 1];
  // A Unix socket has no port: one given is a mistake to point out, not
  // something to ignore (the client refuses it too).
  if (rest >= 2 && cli::is_unix_host(o.host)) fail_usage("a unix:/path HOST takes no PORT");
  if (o.mode != "echo" && o.mode != "app" && o.mode != "frame-echo")
    fail_usage("unknown mode '" + o.mode + "' (expected echo, app or frame-echo)");
  return o;
}

server::stream_handler handler_for(const options& o) {
  if (o.mode == "app") return framed(&app_connection_handler, o.conn);
  if (o.mode == "frame-echo") return framed(&frame_echo_handler, o.conn);
  return &echo_handler;
}

// The log sinks. Text: the line the server has always printed (the
// sharded server's own events with the program's name before them), as one
// write; json: one object per line (log.hpp). Both drop what is above
// --log-level. Called from every thread: stdout is line-buffered and each
// line is one fputs.
log_level max_level = log_level::info;
bool log_json = false;

std::string thread_name() {
  int shard = sharded_server::this_thread_shard();
  return shard < 0 ? "main" : std::to_string(shard);
}

void emit(const log_record& r, const char* text_prefix) {
  std::string line;
  if (log_json) {
    line = to_json(r, thread_name());
  } else {
    line = text_prefix;
    append_text_line(line, r.text);  // log.hpp: a peer's newline starts no line
  }
  line += '\n';
  // One call (the lock of stdout keeps lines whole across threads), and by
  // length, not fputs: a NUL must not end the line early and lose its newline.
  std::fwrite(line.data(), 1, line.size(), stdout);
}
void print_record(const log_record& r) {
  if (r.level <= max_level) emit(r, "");
}
void print_event_record(const log_record& r) {
  // The counters answer a request (SIGUSR1): printed whatever --log-level.
  if (r.level <= max_level || r.event == "counters") emit(r, "ringframe-server: ");
}
// The program's own lines (the addresses at start, the summary): always
// printed, whatever --log-level (scripts read the address from them).
void print_own(std::string_view event, const std::string& text) {
  emit(log_record{log_level::info, event, nullptr, {}, text}, "");
}

// "HOST:PORT", "[v6]:PORT" -> host and port; false if there is no ':'.
bool split_host_port(const std::string& text, std::string& host, std::string& port) {
  std::size_t colon = text.rfind(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == text.size()) return false;
  host = text.substr(0, colon);
  port = text.substr(colon + 1);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  options o = parse(argc, argv);
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  ::signal(SIGPIPE, SIG_IGN);

  std::string error;
  auto addrs = cli::resolve_endpoint(o.host, o.port, error);
  if (addrs.empty()) {
    std::fprintf(stderr, "ringframe-server: %s\n", error.c_str());
    return 2;
  }
  max_level = o.level;
  log_json = o.log_json;
  // The library's own lines (the backend fallback...) join the JSON log;
  // as text they stay on stderr, as they are in any program.
  if (log_json) set_diagnostic_sink([](const log_record& r) { emit(r, ""); });
  std::vector<address> metrics_addrs;
  if (!o.metrics.empty()) {
    std::string mhost, mport;
    if (cli::is_unix_host(o.metrics) || !split_host_port(o.metrics, mhost, mport) ||
        (o.metrics.front() == '[' && o.metrics.find("]:") == std::string::npos))
      fail_usage("bad --metrics '" + o.metrics + "' (expected HOST:PORT, an IPv6 HOST in brackets: [::1]:9100)");
    metrics_addrs = cli::resolve_endpoint(mhost, mport, error);
    if (metrics_addrs.empty()) {
      std::fprintf(stderr, "ringframe-server: --metrics: %s\n", error.c_str());
      return 2;
    }
  }
  sharded_server_options so;
  so.listen_at = addrs.front();
  if (!metrics_addrs.empty()) {
    so.metrics_at = metrics_addrs.front();
    so.metrics_mode = o.mode;
    so.server.measure_handling_time = true;  // its cost: bench/RESULTS.md
  }
  so.threads = o.threads;
  so.executor.setup = o.ring;
  so.executor.backend = o.backend;
  so.executor.incremental_buffers = o.pbuf_inc;
  so.executor.recv_bundles = o.recv_bundle;
  so.server.max_connections = o.max_connections;
  so.server.log_connections = !o.quiet;
  so.server.multishot_accept = !o.single_accept;
  so.server.log_records = &print_record;
  so.reuse_port = o.reuse_port;
  so.drain_timeout = o.drain_timeout;
  so.log_records = &print_event_record;
  try {
    const std::optional<address> so_metrics = so.metrics_at;
    sharded_server srv(std::move(so));
    if (auto r = srv.start(handler_for(o)); !r) {
      std::string why = r.error().message();
      if (r.error() == std::errc::file_exists) why += " (and is not a socket: left alone)";
      std::string where = addrs.front().to_string();
      if (so_metrics) where += " (or, for metrics, " + so_metrics->to_string() + ")";
      std::fprintf(stderr, "ringframe-server: cannot listen on %s: %s\n", where.c_str(), why.c_str());
      return 1;
    }
    print_own("listening", "Listening on " + srv.local_address().to_python());
    if (so_metrics) print_own("metrics_listening", "Metrics on http://" + srv.metrics_address().to_string() + "/metrics");
    const bool uring = std::strcmp(srv.backend_name(), "io_uring") == 0;
    const char* how = srv.threads() == 1 ? ""
                      : srv.listener_per_shard()
                          ? (uring ? "s, one ring and one SO_REUSEPORT listener each" : "s, one epoll and one SO_REUSEPORT listener each")
                          : (uring ? "s, one ring each, one shared listener" : "s, one epoll each, one shared listener");
    if (uring) print_own("backend", "io_uring: " + std::string(srv.setup_mode()) + "; " + std::to_string(srv.threads()) + " thread" + how);
    else print_own("backend", "epoll: " + std::to_string(srv.threads()) + " thread" + how);
    srv.run();
    const server_stats sum = srv.stats();
    std::string messages;
    if (o.mode != "echo")
      messages = ", " + std::to_string(sum.messages_in) + " messages in, " + std::to_string(sum.messages_out) +
                 " out, " + std::to_string(sum.malformed) + " malformed";
    print_own("stopped", "ringframe-server: stopped by " +
                             (srv.stopped_by() ? std::string("SIG") + sigabbrev_np(srv.stopped_by()) : std::string("request")) +
                             ": served " + std::to_string(sum.accepted) + " connections (" + std::to_string(sum.rejected) +
                             " rejected), " + std::to_string(sum.bytes_in) + " bytes in, " + std::to_string(sum.bytes_out) +
                             " bytes out" + messages);
    print_own("counters", "ringframe-server: counters: " + sum.to_string());
    return 0;
  } catch (const setup_error& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "ringframe-server: %s\n", e.what());
    return 1;
  }
}
