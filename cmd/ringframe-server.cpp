// ringframe-server: the tutorial's servers, rebuilt on ringframe.
// Thin by design: parse arguments, pick a handler, run the library's server.
#include "endpoint.hpp"

#include <ringframe/app.hpp>
#include <ringframe/echo.hpp>
#include <ringframe/handler.hpp>
#include <ringframe/executor.hpp>
#include <ringframe/server.hpp>
#include <ringframe/signals.hpp>
#include <ringframe_version.hpp>

#include <getopt.h>
#include <signal.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>

using namespace ringframe;

namespace {

const char* const usage_text =
    "Usage: ringframe-server [OPTIONS] [HOST] [PORT]\n"
    "\n"
    "Serve connections on HOST:PORT (default 127.0.0.1 65432) until SIGINT or SIGTERM.\n"
    "HOST may be an IPv4 or IPv6 address, a host name, or unix:/path/to/socket.\n"
    "\n"
    "Options:\n"
    "  -m, --mode MODE          echo: bytes in, same bytes out (default)\n"
    "                           app: the tutorial's search / binary application, framed\n"
    "                           frame-echo: every framed message sent back unchanged\n"
    "  -c, --max-connections N  accept at most N connections at once (default 100000)\n"
    "      --max-content BYTES  framed modes: largest content-length accepted (default 16777216)\n"
    "      --idle-timeout SECS  framed modes: close a connection idle this long (default 300)\n"
    "      --message-timeout SECS\n"
    "                           framed modes: close a connection whose message takes longer\n"
    "                           than this from its first byte to its last (default 30)\n"
    "      --drain-timeout SECS on SIGINT/SIGTERM, how long connections may take to finish the\n"
    "                           replies they owe before they are closed (default 10)\n"
    "      --io-uring SETUP     fastest (default: defer-taskrun, else coop-taskrun, else plain),\n"
    "                           coop-taskrun or plain; the choice made is logged at start\n"
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
  std::string host = "127.0.0.1";
  std::string port = "65432";
  std::size_t max_connections = 100000;
  bool quiet = false;
};

[[noreturn]] void fail_usage(const std::string& msg) {
  std::fprintf(stderr, "ringframe-server: %s\nTry 'ringframe-server --help'.\n", msg.c_str());
  std::exit(2);
}

std::chrono::nanoseconds parse_seconds(const char* what, const char* text) {
  char* end = nullptr;
  double v = std::strtod(text, &end);
  if (!*text || *end || !(v > 0) || v > 1e6) fail_usage(std::string("bad ") + what + " '" + text + "'");
  return std::chrono::nanoseconds(static_cast<long long>(v * 1e9));
}

options parse(int argc, char** argv) {
  options o;
  static const option longopts[] = {
      {"mode", required_argument, nullptr, 'm'},    {"max-connections", required_argument, nullptr, 'c'},
      {"quiet", no_argument, nullptr, 'q'},         {"help", no_argument, nullptr, 'h'},
      {"max-content", required_argument, nullptr, 1}, {"idle-timeout", required_argument, nullptr, 2},
      {"message-timeout", required_argument, nullptr, 3}, {"drain-timeout", required_argument, nullptr, 4},
      {"io-uring", required_argument, nullptr, 5},
      {"version", no_argument, nullptr, 'V'},       {nullptr, 0, nullptr, 0}};
  int c;
  opterr = 0;
  while ((c = getopt_long(argc, argv, "+m:c:qhV", longopts, nullptr)) != -1) {
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
      case 1: {
        char* end = nullptr;
        unsigned long long v = std::strtoull(optarg, &end, 10);
        if (!*optarg || *end || *optarg == '-') fail_usage(std::string("bad --max-content '") + optarg + "'");
        o.conn.limits.max_content_length = v;
        break;
      }
      case 2: o.conn.idle_timeout = parse_seconds("--idle-timeout", optarg); break;
      case 3: o.conn.message_timeout = parse_seconds("--message-timeout", optarg); break;
      case 4: o.drain_timeout = parse_seconds("--drain-timeout", optarg); break;
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

// SIGINT/SIGTERM: drain (stop accepting and reading, finish owed replies,
// close after the grace period); a second one stops at once. SIGUSR1: print
// the counters. The token is a copy in this frame: once serve() has ended
// the wait is cancelled and nothing here touches the server again.
task<void> handle_signals(signal_set* sigs, server* srv, int* which, std::chrono::nanoseconds grace) {
  std::stop_token stop = srv->stop_token();
  for (;;) {
    result<int> sig = co_await sigs->wait({.stop = &stop});
    if (!sig) co_return;
    std::string name = std::string("SIG") + sigabbrev_np(*sig);
    if (*sig == SIGUSR1) {
      std::printf("ringframe-server: counters: %s\n", srv->stats().to_string().c_str());
      continue;
    }
    if (!srv->draining()) {
      *which = *sig;
      std::printf("ringframe-server: %s: draining %zu connections (at most %.1f s; again to stop now)\n", name.c_str(),
                  srv->live_connections(), std::chrono::duration<double>(grace).count());
      srv->drain(grace);
    } else {
      std::printf("ringframe-server: %s again: stopping now\n", name.c_str());
      srv->stop();
    }
  }
}

server::stream_handler handler_for(const options& o) {
  if (o.mode == "app") return per_request(&app_handler, o.conn);
  if (o.mode == "frame-echo") return framed(&frame_echo_handler, o.conn);
  return &echo_handler;
}

task<void> run_server(executor* ex, server* srv, signal_set* sigs, int* which, server::stream_handler h,
                      std::chrono::nanoseconds grace) {
  ex->spawn(handle_signals(sigs, srv, which, grace));
  co_await srv->serve(std::move(h));
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
  try {
    executor_options eo;
    eo.setup = o.ring;
    executor ex(eo);
    signal_set sigs(ex, {SIGINT, SIGTERM, SIGUSR1});
    server_options so;
    so.max_connections = o.max_connections;
    so.log_connections = !o.quiet;
    so.log = [](const std::string& line) { std::printf("%s\n", line.c_str()); };
    server srv(ex, so);
    if (auto r = srv.listen(addrs.front()); !r) {
      std::fprintf(stderr, "ringframe-server: cannot listen on %s: %s\n", addrs.front().to_string().c_str(),
                   r.error().message().c_str());
      return 1;
    }
    for (const address& a : srv.local_addresses()) std::printf("Listening on %s\n", a.to_python().c_str());
    std::printf("io_uring: %s\n", ex.setup_mode());
    int which = 0;
    ex.run(run_server(&ex, &srv, &sigs, &which, handler_for(o), o.drain_timeout));
    const server_stats& st = srv.stats();
    std::string messages;
    if (o.mode != "echo")
      messages = ", " + std::to_string(st.messages_in) + " messages in, " + std::to_string(st.messages_out) +
                 " out, " + std::to_string(st.malformed) + " malformed";
    std::printf("ringframe-server: stopped by %s: served %llu connections (%llu rejected), %llu bytes in, %llu bytes out%s\n",
                which ? (std::string("SIG") + sigabbrev_np(which)).c_str() : "request", (unsigned long long)st.accepted,
                (unsigned long long)st.rejected, (unsigned long long)st.bytes_in, (unsigned long long)st.bytes_out,
                messages.c_str());
    std::printf("ringframe-server: counters: %s\n", st.to_string().c_str());
    return 0;
  } catch (const setup_error& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "ringframe-server: %s\n", e.what());
    return 1;
  }
}
