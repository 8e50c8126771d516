// ringframe-example-fanout: ask several app servers (ringframe-server --mode
// app, or the tutorial's app-server.py) the same question at once, each over
// its own framed_client, and print every answer (when_all), or with --first
// only the first one to come (when_any: the other calls are cancelled, and
// finished, before it prints).
//
//   build/examples/ringframe-example-fanout 127.0.0.1:65432 127.0.0.1:65433 -- search morpheus
//
// Host names are resolved without blocking the loop (resolver.hpp), so a
// slow lookup for one server does not hold up the others.
#include <ringframe/event.hpp>
#include <ringframe/executor.hpp>
#include <ringframe/frame.hpp>
#include <ringframe/framed_client.hpp>
#include <ringframe/when_all.hpp>
#include <ringframe/when_any.hpp>

#include <signal.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <stop_token>
#include <string>
#include <vector>

using namespace ringframe;
using namespace std::chrono_literals;

namespace {

const char* const usage_text =
    "Usage: ringframe-example-fanout [--first] [--timeout SECONDS] HOST:PORT [HOST:PORT...] -- ACTION VALUE\n"
    "\n"
    "Sends the app request {\"action\": ACTION, \"value\": VALUE} (text/json) to every\n"
    "server at once and prints each answer, one line per server, in the order given.\n"
    "HOST may be an IPv4 address, [IPv6], a host name, or unix:/path (then no :PORT).\n"
    "\n"
    "  --first            print only the first answer to arrive; the other calls are cancelled\n"
    "  --timeout SECONDS  connect and reply deadline for each server (default 5)\n"
    "  -h, --help         show this help\n"
    "\n"
    "Exit status: 0 when every server answered (--first: when one did), 1 otherwise,\n"
    "2 for bad usage (a HOST that does not resolve is that too).\n";

[[noreturn]] void fail_usage(const std::string& msg) {
  std::fprintf(stderr, "ringframe-example-fanout: %s\nTry 'ringframe-example-fanout --help'.\n", msg.c_str());
  std::exit(2);
}

struct target {
  std::string text;  // as given, for the output
  std::string host;
  std::uint16_t port = 0;
  address unix_path;  // set for unix:/path
};

target parse_target(const std::string& arg) {
  target t;
  t.text = arg;
  if (arg.rfind("unix:", 0) == 0) {
    auto a = address::from_unix_path(arg.substr(5));
    if (!a) fail_usage("bad unix socket path in '" + arg + "': " + a.error().message());
    t.unix_path = *a;
    return t;
  }
  const std::size_t colon = arg.rfind(':');
  if (colon == std::string::npos || colon == 0) fail_usage("'" + arg + "' is not HOST:PORT");
  t.host = arg.substr(0, colon);
  if (t.host.find(':') != std::string::npos && t.host.front() != '[')
    fail_usage("'" + arg + "': write an IPv6 address in brackets, [::1]:PORT");
  auto port = parse_port(arg.substr(colon + 1));
  if (!port || *port == 0) fail_usage("bad port in '" + arg + "': expected a whole number from 1 to 65535");
  t.port = *port;
  return t;
}

// The reply as one line: text/json content as it is; anything else as its
// content-type and its bytes, non-printable ones escaped.
std::string describe(const message& m) {
  if (m.content_type == "text/json") return m.content;
  std::string out = m.content_type + " ";
  for (unsigned char ch : m.content) {
    if (ch >= 0x20 && ch < 0x7f) {
      out += static_cast<char>(ch);
    } else {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", ch);
      out += buf;
    }
  }
  return out;
}

struct answer {
  bool ok = false;
  std::string text;         // the reply, or why there is none
  bool unresolved = false;  // its HOST names nothing: bad usage, exit 2
};

// One server: connect (resolving its name off the loop), one call. `st`
// cancels both (when_any's losers).
task<answer> ask(executor* ex, const target* t, const message* request, std::chrono::nanoseconds timeout,
                 std::stop_token st) {
  framed_client_options o;
  o.connect_timeout = o.reply_timeout = o.connection.write_timeout = timeout;
  task<result<framed_client>> connecting = t->unix_path.family() == AF_UNIX
                                               ? framed_client::connect(*ex, t->unix_path, o, st)
                                               : framed_client::connect(*ex, t->host, t->port, o, st);
  result<framed_client> c = co_await std::move(connecting);
  if (!c && c.error().category() == resolver_category())
    co_return answer{false, "cannot resolve host '" + t->host + "': " + c.error().message(), true};
  if (!c) co_return answer{false, "cannot connect: " + c.error().message()};
  task<result<message>> call = c->call(*request, &st);
  result<message> r = co_await std::move(call);
  if (!r) {
    const std::string why = c->failure_detail();
    co_return answer{false, "no answer: " + (why.empty() ? r.error().message() : why)};
  }
  co_return answer{true, describe(*r)};
}

// --first: a server that fails does not win the race; it waits (for the
// winner's cancellation) unless every server has failed, and the last one
// to fail ends the race.
struct race {
  explicit race(executor& ex, std::size_t n) : all_failed(ex), failures(n) {}
  event all_failed;
  std::vector<std::string> failures;  // per server, "" while none
  std::size_t failed = 0;
  bool unresolved = false;
};

task<answer> ask_first(executor* ex, const target* t, const message* request, std::chrono::nanoseconds timeout,
                       race* r, std::size_t index, std::stop_token st) {
  task<answer> asking = ask(ex, t, request, timeout, st);
  answer a = co_await std::move(asking);
  if (a.ok || st.stop_requested()) co_return a;
  r->failures[index] = a.text;
  r->unresolved = r->unresolved || a.unresolved;
  if (++r->failed == r->failures.size()) {
    r->all_failed.set();
    co_return a;
  }
  result<void> w = co_await r->all_failed.wait(&st);  // ECANCELED: someone answered
  (void)w;
  co_return a;
}

task<int> fan_out(executor* ex, std::vector<target> targets, message request, bool first,
                  std::chrono::nanoseconds timeout) {
  if (!first) {
    std::vector<task<answer>> asks;
    for (const target& t : targets) asks.push_back(ask(ex, &t, &request, timeout, std::stop_token{}));
    task<std::vector<answer>> all = when_all(std::move(asks));
    std::vector<answer> answers = co_await std::move(all);
    int rc = 0;
    for (std::size_t i = 0; i < answers.size(); ++i) {
      if (answers[i].ok) {
        std::printf("%s: %s\n", targets[i].text.c_str(), answers[i].text.c_str());
      } else {
        std::fprintf(stderr, "ringframe-example-fanout: %s: %s\n", targets[i].text.c_str(), answers[i].text.c_str());
        rc = (answers[i].unresolved || rc == 2) ? 2 : 1;
      }
    }
    if (rc == 2) std::fputs("Try 'ringframe-example-fanout --help'.\n", stderr);
    co_return rc;
  }
  race r(*ex, targets.size());
  // One factory per server (when_any calls each once with its stop token);
  // all of one lambda type, so they fit in one vector.
  auto factory_for = [ex, &targets, &request, timeout, &r](std::size_t n) {
    return [ex, &targets, &request, timeout, &r, n](std::stop_token st) {
      return ask_first(ex, &targets[n], &request, timeout, &r, n, st);
    };
  };
  std::vector<decltype(factory_for(0))> factories;
  for (std::size_t i = 0; i < targets.size(); ++i) factories.push_back(factory_for(i));
  task<std::pair<std::size_t, answer>> any = when_any(std::move(factories));
  std::pair<std::size_t, answer> won = co_await std::move(any);
  if (won.second.ok) {
    std::printf("%s: %s\n", targets[won.first].text.c_str(), won.second.text.c_str());
    co_return 0;
  }
  for (std::size_t i = 0; i < targets.size(); ++i)
    std::fprintf(stderr, "ringframe-example-fanout: %s: %s\n", targets[i].text.c_str(), r.failures[i].c_str());
  if (!r.unresolved) co_return 1;
  std::fputs("Try 'ringframe-example-fanout --help'.\n", stderr);
  co_return 2;
}

}  // namespace

int main(int argc, char** argv) {
  bool first = false;
  std::chrono::nanoseconds timeout = 5s;
  std::vector<target> targets;
  for (int j = 1; j < argc; ++j) {  // (up to the '--': ACTION or VALUE may be "--help")
    const std::string a = argv[j];
    if (a == "--") break;
    if (a == "-h" || a == "--help") {
      std::fputs(usage_text, stdout);
      return 0;
    }
  }
  // The options first, so that a bad one (--timeout without its value, an
  // unknown one) is named as such, not taken for a missing '--'; then the
  // '--', then the servers (ACTION VALUE without '--' are not servers).
  std::vector<std::string> servers;
  int i = 1;
  for (; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--") break;
    if (arg == "--first") {
      first = true;
    } else if (arg == "--timeout") {
      if (i + 1 >= argc) fail_usage("--timeout needs SECONDS");
      char* end = nullptr;
      const double s = std::strtod(argv[++i], &end);
      if (!*argv[i] || *end || !(s > 0) || s > 86400) fail_usage(std::string("bad --timeout '") + argv[i] + "'");
      timeout = std::chrono::nanoseconds(static_cast<long long>(s * 1e9));
    } else if (arg.size() > 1 && arg[0] == '-') {
      fail_usage("unknown option '" + arg + "'");
    } else {
      servers.push_back(arg);
    }
  }
  if (i == argc) fail_usage("missing '-- ACTION VALUE' after the servers");
  for (const std::string& s : servers) targets.push_back(parse_target(s));
  if (targets.empty()) fail_usage("no servers given (HOST:PORT ...)");
  if (argc - i - 1 != 2) fail_usage("expected exactly ACTION VALUE after '--'");
  std::string json = "{\"action\": ";
  append_json_string(json, argv[i + 1]);
  json += ", \"value\": ";
  append_json_string(json, argv[i + 2]);
  json += "}";
  ::signal(SIGPIPE, SIG_IGN);
  try {
    executor ex;
    return ex.run(fan_out(&ex, std::move(targets), message::json(std::move(json)), first, timeout));
  } catch (const std::exception& e) {
    std::fprintf(stderr, "ringframe-example-fanout: %s\n", e.what());
    return 1;
  }
}
