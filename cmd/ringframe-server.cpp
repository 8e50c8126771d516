// ringframe-server: the tutorial's servers, rebuilt on ringframe.
// Thin by design: parse arguments, pick a handler, run the library's server.
#include "endpoint.hpp"

#include <ringframe/echo.hpp>
#include <ringframe/executor.hpp>
#include <ringframe/server.hpp>
#include <ringframe/signals.hpp>
#include <ringframe_version.hpp>

#include <getopt.h>
#include <signal.h>

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
    "  -c, --max-connections N  accept at most N connections at once (default 100000)\n"
    "  -q, --quiet              do not log each connection\n"
    "  -h, --help               show this help and exit\n"
    "  -V, --version            show the version and exit\n"
    "\n"
    "On SIGINT or SIGTERM the server stops accepting, closes its connections,\n"
    "prints a one-line summary and exits 0.\n";

struct options {
  std::string mode = "echo";
  std::string host = "127.0.0.1";
  std::string port = "65432";
  std::size_t max_connections = 100000;
  bool quiet = false;
};

[[noreturn]] void fail_usage(const std::string& msg) {
  std::fprintf(stderr, "ringframe-server: %s\nTry 'ringframe-server --help'.\n", msg.c_str());
  std::exit(2);
}

options parse(int argc, char** argv) {
  options o;
  static const option longopts[] = {
      {"mode", required_argument, nullptr, 'm'},    {"max-connections", required_argument, nullptr, 'c'},
      {"quiet", no_argument, nullptr, 'q'},         {"help", no_argument, nullptr, 'h'},
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
      case 'h': std::fputs(usage_text, stdout); std::exit(0);
      case 'V': std::printf("ringframe-server %s\n", RINGFRAME_VERSION); std::exit(0);
      default: fail_usage(std::string("unknown option '") + argv[optind - 1] + "'");
    }
  }
  int rest = argc - optind;
  if (rest > 2) fail_usage("too many arguments");
  if (rest >= 1) o.host = argv[optind];
  if (rest >= 2) o.port = argv[optind + 1];
  if (o.mode != "echo") fail_usage("unknown mode '" + o.mode + "' (expected echo)");
  return o;
}

task<void> stop_on_signal(signal_set* sigs, server* srv, int* which) {
  std::stop_token stop = srv->stop_token();
  result<int> sig = co_await sigs->wait({.stop = &stop});
  if (sig) {
    *which = *sig;
    srv->stop();
  }
}

task<void> run_server(executor* ex, server* srv, signal_set* sigs, int* which) {
  ex->spawn(stop_on_signal(sigs, srv, which));
  co_await srv->serve(&echo_handler);
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
    executor ex;
    signal_set sigs(ex, {SIGINT, SIGTERM});
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
    int which = 0;
    ex.run(run_server(&ex, &srv, &sigs, &which));
    const server_stats& st = srv.stats();
    std::printf("ringframe-server: stopped by %s: served %llu connections (%llu rejected), %llu bytes in, %llu bytes out\n",
                which ? (std::string("SIG") + sigabbrev_np(which)).c_str() : "request", (unsigned long long)st.accepted,
                (unsigned long long)st.rejected, (unsigned long long)st.bytes_in, (unsigned long long)st.bytes_out);
    return 0;
  } catch (const setup_error& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "ringframe-server: %s\n", e.what());
    return 1;
  }
}
