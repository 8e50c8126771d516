// ringframe-client: the tutorial's clients, rebuilt on ringframe.
#include "endpoint.hpp"
#include "python_repr.hpp"

#include <ringframe/executor.hpp>
#include <ringframe/socket.hpp>
#include <ringframe_version.hpp>

#include <getopt.h>
#include <signal.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

using namespace ringframe;
using namespace std::chrono_literals;

namespace {

const char* const usage_text =
    "Usage: ringframe-client [OPTIONS] COMMAND ARGS...\n"
    "\n"
    "Commands:\n"
    "  echo [HOST] [PORT] [TEXT]          send TEXT (default 'Hello, world') to an echo\n"
    "                                     server (default 127.0.0.1 65432), print the echo\n"
    "  multiconn HOST PORT NUM_CONNS      open NUM_CONNS connections at once, each sending\n"
    "                                     two messages and verifying their echo\n"
    "\n"
    "HOST may be an IPv4 or IPv6 address, a host name, or unix:/path/to/socket.\n"
    "\n"
    "Options:\n"
    "  -t, --timeout SECONDS  give up on any one network operation after this long (default 10)\n"
    "  -q, --quiet            multiconn: print only the summary line\n"
    "  -h, --help             show this help and exit\n"
    "  -V, --version          show the version and exit\n"
    "\n"
    "Exit status: 0 when every reply arrived and was right, 1 otherwise, 2 for bad usage.\n";

struct options {
  std::chrono::nanoseconds timeout = 10s;
  bool quiet = false;
  std::vector<std::string> args;
};

[[noreturn]] void fail_usage(const std::string& msg) {
  std::fprintf(stderr, "ringframe-client: %s\nTry 'ringframe-client --help'.\n", msg.c_str());
  std::exit(2);
}

options parse(int argc, char** argv) {
  options o;
  static const option longopts[] = {{"timeout", required_argument, nullptr, 't'},
                                    {"quiet", no_argument, nullptr, 'q'},
                                    {"help", no_argument, nullptr, 'h'},
                                    {"version", no_argument, nullptr, 'V'},
                                    {nullptr, 0, nullptr, 0}};
  int c;
  opterr = 0;
  while ((c = getopt_long(argc, argv, "t:qhV", longopts, nullptr)) != -1) {
    switch (c) {
      case 't': {
        char* end = nullptr;
        double s = std::strtod(optarg, &end);
        if (!*optarg || *end || !(s > 0) || s > 86400) fail_usage(std::string("bad --timeout '") + optarg + "'");
        o.timeout = std::chrono::nanoseconds(static_cast<long long>(s * 1e9));
        break;
      }
      case 'q': o.quiet = true; break;
      case 'h': std::fputs(usage_text, stdout); std::exit(0);
      case 'V': std::printf("ringframe-client %s\n", RINGFRAME_VERSION); std::exit(0);
      default: fail_usage(std::string("unknown option '") + argv[optind - 1] + "'");
    }
  }
  for (int i = optind; i < argc; ++i) o.args.emplace_back(argv[i]);
  if (o.args.empty()) fail_usage("missing COMMAND (echo or multiconn)");
  return o;
}

std::string describe(const address& a) { return a.to_python(); }

// ---- echo: the tutorial's echo-client.py ----

task<int> echo_client(executor* ex, address to, std::string text, std::chrono::nanoseconds timeout) {
  result<ringframe::socket> s = co_await ringframe::connect(*ex, to, {.timeout = timeout});
  if (!s) {
    std::fprintf(stderr, "ringframe-client: cannot connect to %s: %s\n", to.to_string().c_str(), s.error().message().c_str());
    co_return 1;
  }
  result<std::size_t> sent = co_await s->send_all(text, {.timeout = timeout});
  if (!sent) {
    std::fprintf(stderr, "ringframe-client: send failed: %s\n", sent.error().message().c_str());
    co_return 1;
  }
  // Read until the whole echo is back (TCP may split it), or the peer closes.
  std::string got(text.size(), '\0');
  std::size_t have = 0;
  while (have < text.size()) {
    result<std::size_t> n = co_await s->recv(std::as_writable_bytes(std::span(got.data() + have, got.size() - have)),
                                             {.timeout = timeout});
    if (!n) {
      std::fprintf(stderr, "ringframe-client: recv failed: %s\n", n.error().message().c_str());
      co_return 1;
    }
    if (*n == 0) break;
    have += *n;
  }
  got.resize(have);
  std::printf("Received %s\n", cli::python_bytes_repr(got).c_str());
  if (got != text) {
    std::fprintf(stderr, "ringframe-client: the echo differs from what was sent\n");
    co_return 1;
  }
  co_return 0;
}

// ---- multiconn: the tutorial's multiconn-client.py ----

struct multiconn_state {
  executor* ex;
  address to;
  std::chrono::nanoseconds timeout;
  bool quiet;
  int verified = 0;
  int failed = 0;
};

const std::string multiconn_messages[] = {"Message 1 from client.", "Message 2 from client."};

task<void> multiconn_one(multiconn_state* st, int connid) {
  auto say = [st](const std::string& line) {
    if (!st->quiet) std::printf("%s\n", line.c_str());
  };
  say("Starting connection " + std::to_string(connid) + " to " + describe(st->to));
  result<ringframe::socket> s = co_await ringframe::connect(*st->ex, st->to, {.timeout = st->timeout});
  if (!s) {
    std::fprintf(stderr, "connection %d: cannot connect: %s\n", connid, s.error().message().c_str());
    ++st->failed;
    co_return;
  }
  std::string expected;
  for (const std::string& m : multiconn_messages) {
    say("Sending " + cli::python_bytes_repr(m) + " to connection " + std::to_string(connid));
    result<std::size_t> sent = co_await s->send_all(m, {.timeout = st->timeout});
    if (!sent) {
      std::fprintf(stderr, "connection %d: send failed: %s\n", connid, sent.error().message().c_str());
      ++st->failed;
      co_return;
    }
    expected += m;
  }
  std::string got;
  char buf[1024];
  while (got.size() < expected.size()) {
    result<std::size_t> n = co_await s->recv(std::as_writable_bytes(std::span(buf)), {.timeout = st->timeout});
    if (!n) {
      std::fprintf(stderr, "connection %d: recv failed: %s\n", connid, n.error().message().c_str());
      break;
    }
    if (*n == 0) break;
    say("Received " + cli::python_bytes_repr(std::string_view(buf, *n)) + " from connection " + std::to_string(connid));
    got.append(buf, *n);
  }
  say("Closing connection " + std::to_string(connid));
  if (got == expected) {
    ++st->verified;
  } else {
    std::fprintf(stderr, "connection %d: echo %s, expected %s\n", connid, cli::python_bytes_repr(got).c_str(),
                 cli::python_bytes_repr(expected).c_str());
    ++st->failed;
  }
}


}  // namespace

int main(int argc, char** argv) {
  options o = parse(argc, argv);
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  ::signal(SIGPIPE, SIG_IGN);
  const std::string& cmd = o.args[0];
  std::vector<std::string> a(o.args.begin() + 1, o.args.end());
  try {
    if (cmd == "echo") {
      if (a.size() > 3) fail_usage("echo takes at most HOST PORT TEXT");
      std::string error;
      auto addrs = cli::resolve_endpoint(a.size() > 0 ? a[0] : "127.0.0.1", a.size() > 1 ? a[1] : "65432", error);
      if (addrs.empty()) fail_usage(error);
      executor ex;
      return ex.run(echo_client(&ex, addrs.front(), a.size() > 2 ? a[2] : "Hello, world", o.timeout));
    }
    if (cmd == "multiconn") {
      if (a.size() != 3) fail_usage("usage: multiconn HOST PORT NUM_CONNS");
      std::string error;
      auto addrs = cli::resolve_endpoint(a[0], a[1], error);
      if (addrs.empty()) fail_usage(error);
      char* end = nullptr;
      long n = std::strtol(a[2].c_str(), &end, 10);
      if (a[2].empty() || *end || n < 1 || n > 1000000) fail_usage("bad NUM_CONNS '" + a[2] + "'");
      executor ex;
      multiconn_state st{&ex, addrs.front(), o.timeout, o.quiet};
      for (int i = 1; i <= n; ++i) ex.spawn(multiconn_one(&st, i));
      ex.run_until_idle();
      int rc = st.failed == 0 && st.verified == n ? 0 : 1;
      std::printf("multiconn: %d of %ld connections echoed every byte%s\n", st.verified, n,
                  rc == 0 ? "" : " (FAILED)");
      return rc;
    }
    fail_usage("unknown command '" + cmd + "' (expected echo or multiconn)");
  } catch (const setup_error& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "ringframe-client: %s\n", e.what());
    return 1;
  }
}
