// ringframe-server: the tutorial's servers, rebuilt on ringframe.
// Thin by design: parse arguments, pick a handler, run the library's server.
#include "endpoint.hpp"

#include <ringframe/app.hpp>
#include <ringframe/echo.hpp>
#include <ringframe/handler.hpp>
#include <ringframe/executor.hpp>
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
    "      --no-provided-buffers\n"
    "                           framed modes: receive into each connection's own buffer even\n"
    "                           between messages (for comparison)\n"
    "      --multishot-recv     framed modes: keep one multishot recv armed per connection\n"
    "                           instead of one recv per read (Linux 6.0; see docs/io-path.md)\n"
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
  unsigned threads = std::max(1u, std::thread::hardware_concurrency());
  std::string host = "127.0.0.1";
  std::string port = "65432";
  std::size_t max_connections = 100000;
  bool quiet = false;
};

[[noreturn]] void fail_usage(const std::string& msg) {
  std::fprintf(stderr, "ringframe-server: %s\nTry 'ringframe-server --help'.\n", msg.c_str());
  std::exit(2);
}

// `zero_means_never`: 0 is accepted and means no timeout.
std::chrono::nanoseconds parse_seconds(const char* what, const char* text, bool zero_means_never = false) {
  char* end = nullptr;
  double v = std::strtod(text, &end);
  bool ok = *text && !*end && v <= 1e6 && (v > 0 || (zero_means_never && v == 0));
  if (!ok) fail_usage(std::string("bad ") + what + " '" + text + "'");
  return std::chrono::nanoseconds(static_cast<long long>(v * 1e9));
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
      {nullptr, 0, nullptr, 0}};
  int c;
  opterr = 0;
  while ((c = getopt_long(argc, argv, "+m:c:t:qhV", longopts, nullptr)) != -1) {
    switch (c) {
      case 'm': o.mode = optarg; break;
      case 'c': {
        char* end = nullptr;
        unsigned long v = std::strtoul(optarg, &end, 10);
        if (!*optarg || *end || v == 0) fail_usage(std::string("bad --max-connections '") + optarg + "'");
        o.max_connections = v;
        break;
      }
      case 'q': o.quiet = true; break;
      case 't': {
        char* end = nullptr;
        unsigned long v = std::strtoul(optarg, &end, 10);
        if (!*optarg || *end || v == 0 || v > 1024) fail_usage(std::string("bad --threads '") + optarg + "'");
        o.threads = static_cast<unsigned>(v);
        break;
      }
      case 1: {
        char* end = nullptr;
        errno = 0;
        unsigned long long v = std::strtoull(optarg, &end, 10);
        if (!*optarg || *end || *optarg == '-') fail_usage(std::string("bad --max-content '") + optarg + "'");
        // A frame is held whole in one buffer: the codec's ceiling (1 GiB).
        if (errno == ERANGE || v > frame_limits::hard_max_content_length)
          fail_usage(std::string("bad --max-content '") + optarg + "': at most " +
                     std::to_string(frame_limits::hard_max_content_length) + " (1 GiB)");
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
      case 11:
        if (!parse_backend_kind(optarg, o.backend))
          fail_usage(std::string("bad --backend '") + optarg + "' (expected io_uring, epoll or auto)");
        // The option wins over the environment, auto included.
        ::unsetenv("RINGFRAME_BACKEND");
        break;
      case 8: {
        char* end = nullptr;
        unsigned long long v = std::strtoull(optarg, &end, 10);
        if (!*optarg || *end || *optarg == '-') fail_usage(std::string("bad --zero-copy-threshold '") + optarg + "'");
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
      default: fail_usage(std::string("unknown option '") + argv[optind - 1] + "'");
    }
  }
  int rest = argc - optind;
  if (rest > 2) fail_usage("too many arguments");
  if (rest >= 1) o.host = argv[optind];
  if (rest >= 2) o.port = argv[optind + 1];
  if (o.mode != "echo" && o.mode != "app" && o.mode != "frame-echo")
    fail_usage("unknown mode '" + o.mode + "' (expected echo, app or frame-echo)");
  return o;
}

server::stream_handler handler_for(const options& o) {
  if (o.mode == "app") return per_request(&app_handler, o.conn);
  if (o.mode == "frame-echo") return framed(&frame_echo_handler, o.conn);
  return &echo_handler;
}

void print_line(const std::string& line) { std::printf("%s\n", line.c_str()); }
void print_event(const std::string& line) { std::printf("ringframe-server: %s\n", line.c_str()); }

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
  sharded_server_options so;
  so.listen_at = addrs.front();
  so.threads = o.threads;
  so.executor.setup = o.ring;
  so.executor.backend = o.backend;
  so.server.max_connections = o.max_connections;
  so.server.log_connections = !o.quiet;
  so.server.multishot_accept = !o.single_accept;
  so.server.log = &print_line;
  so.reuse_port = o.reuse_port;
  so.drain_timeout = o.drain_timeout;
  so.log = &print_event;
  try {
    sharded_server srv(std::move(so));
    if (auto r = srv.start(handler_for(o)); !r) {
      std::string why = r.error().message();
      if (r.error() == std::errc::file_exists) why += " (and is not a socket: left alone)";
      std::fprintf(stderr, "ringframe-server: cannot listen on %s: %s\n", addrs.front().to_string().c_str(), why.c_str());
      return 1;
    }
    std::printf("Listening on %s\n", srv.local_address().to_python().c_str());
    const bool uring = std::strcmp(srv.backend_name(), "io_uring") == 0;
    const char* how = srv.threads() == 1 ? ""
                      : srv.listener_per_shard()
                          ? (uring ? "s, one ring and one SO_REUSEPORT listener each" : "s, one epoll and one SO_REUSEPORT listener each")
                          : (uring ? "s, one ring each, one shared listener" : "s, one epoll each, one shared listener");
    if (uring) std::printf("io_uring: %s; %u thread%s\n", srv.setup_mode(), srv.threads(), how);
    else std::printf("epoll: %u thread%s\n", srv.threads(), how);
    srv.run();
    const server_stats sum = srv.stats();
    std::string messages;
    if (o.mode != "echo")
      messages = ", " + std::to_string(sum.messages_in) + " messages in, " + std::to_string(sum.messages_out) +
                 " out, " + std::to_string(sum.malformed) + " malformed";
    std::printf("ringframe-server: stopped by %s: served %llu connections (%llu rejected), %llu bytes in, %llu bytes out%s\n",
                srv.stopped_by() ? (std::string("SIG") + sigabbrev_np(srv.stopped_by())).c_str() : "request",
                (unsigned long long)sum.accepted, (unsigned long long)sum.rejected, (unsigned long long)sum.bytes_in,
                (unsigned long long)sum.bytes_out, messages.c_str());
    std::printf("ringframe-server: counters: %s\n", sum.to_string().c_str());
    return 0;
  } catch (const setup_error& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "ringframe-server: %s\n", e.what());
    return 1;
  }
}
