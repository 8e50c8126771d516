// ringframe-example-proxy: a TCP proxy. Every accepted connection gets a
// connection to the target, and two coroutines pump the bytes, one per
// direction, joined with when_any (with a third that watches for resets).
//
//   ringframe-example-proxy 127.0.0.1 8000 127.0.0.1 65432 &
//   build/cmd/ringframe-client multiconn 127.0.0.1 8000 10     # through the proxy
//
// How a proxied connection ends (see docs/handlers.md, "The examples"):
// * A side that closes cleanly (FIN) is a half-close: the proxy forwards it
//   (shutdown(SHUT_WR) on the other side) and keeps the other direction
//   going, since that peer may still be answering. When both directions have
//   seen their FIN, both connections are closed.
// * A side that fails (a reset, any error) ends everything at once: the
//   direction that failed wins the when_any, the other is cancelled (its
//   operations end with ECANCELED) and awaited, and both sockets are closed.
//   A reset that no operation waits for (a side after its FIN, or a side
//   whose pump is blocked sending to a peer that does not read) is seen by
//   a third task, which looks at both sockets' pending error every second.
// Either way nothing outlives the handler: the sockets are its frame's, the
// pumps are joined by when_any before it returns.
#include <ringframe/event.hpp>
#include <ringframe/server.hpp>
#include <ringframe/signals.hpp>
#include <ringframe/socket.hpp>
#include <ringframe/task_group.hpp>
#include <ringframe/timer.hpp>
#include <ringframe/when_any.hpp>

#include <sys/socket.h>

#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <stop_token>
#include <string>
#include <variant>
#include <vector>

using namespace ringframe;
using namespace std::chrono_literals;

namespace {

const char* const usage_text =
    "Usage: ringframe-example-proxy [-q] LISTEN_HOST LISTEN_PORT TARGET_HOST TARGET_PORT\n"
    "\n"
    "Accepts TCP connections on LISTEN_HOST:LISTEN_PORT and forwards each to\n"
    "TARGET_HOST:TARGET_PORT, both directions at once. A side that closes is\n"
    "half-closed on the other (its FIN is forwarded); a side that fails ends both.\n"
    "Port 0 lets the kernel choose (the 'Listening on' line says which).\n"
    "SIGINT or SIGTERM stops it.\n"
    "\n"
    "  -q, --quiet   no line per connection\n"
    "  -h, --help    this help\n";

struct proxy_config {
  std::vector<address> target;
  std::string target_text;
  bool quiet = false;
};

// A stop source requested when either of two tokens is: the direction's own
// (when_any's) or the server's stop (the socket's token).
class either_stop {
 public:
  either_stop(const std::stop_token& a, const std::stop_token& b) : cb_a_(a, fwd{&src_}), cb_b_(b, fwd{&src_}) {}
  std::stop_token token() const noexcept { return src_.get_token(); }

 private:
  struct fwd {
    std::stop_source* s;
    void operator()() const noexcept { s->request_stop(); }
  };
  std::stop_source src_;
  std::stop_callback<fwd> cb_a_;
  std::stop_callback<fwd> cb_b_;
};

// One direction: from -> to until `from` closes or something fails. On a
// clean end the FIN is forwarded and the pump waits for the other direction
// to end too (its peer may still be answering).
task<result<void>> pump(ringframe::socket* from, ringframe::socket* to, event* my_end, event* other_end,
                        std::uint64_t* bytes, std::stop_token st) {
  either_stop stop(st, from->stop_token());
  std::stop_token tok = stop.token();
  constexpr std::size_t size = 16 * 1024;
  std::unique_ptr<std::byte[]> buf(new std::byte[size]);
  for (;;) {
    result<std::size_t> n = co_await from->recv({buf.get(), size}, {.stop = &tok});
    if (!n) co_return n.error();
    if (*n == 0) break;
    result<std::size_t> sent = co_await to->send_all({buf.get(), *n}, {.stop = &tok});
    if (!sent) co_return sent.error();
    *bytes += *n;
  }
  result<void> sh = co_await to->shutdown(SHUT_WR, {.stop = &tok});
  if (!sh) co_return sh.error();
  my_end->set();
  result<void> other = co_await other_end->wait(&tok);
  if (!other) co_return other.error();
  co_return result<void>{};
}

struct pump_factory {
  ringframe::socket* from;
  ringframe::socket* to;
  event* my_end;
  event* other_end;
  std::uint64_t* bytes;
  task<result<void>> operator()(std::stop_token st) const { return pump(from, to, my_end, other_end, bytes, st); }
};

// A reset that no operation waits for goes unseen by the pumps: after a
// side's FIN nothing reads it any more (review29 F1), and a pump blocked
// sending to a peer that does not read leaves its own side unread while the
// other pump waits for that silent peer (review 51: a client that reset
// then held both connections for as long as the target stayed silent). So
// look at both sockets' pending error now and then; the first one found
// ends everything, as a failed pump does. `side`: 0 the client, 1 the target.
task<result<void>> watch_resets(ringframe::socket* client, ringframe::socket* target, int* side, std::stop_token st) {
  either_stop stop(st, client->stop_token());
  std::stop_token tok = stop.token();
  for (;;) {
    result<void> slept = co_await sleep_for(client->get_executor(), 1s, &tok);
    if (!slept) co_return slept.error();
    const ringframe::socket* sides[2] = {client, target};
    for (int i = 0; i < 2; ++i) {
      int err = 0;
      socklen_t len = sizeof err;
      if (::getsockopt(sides[i]->fd(), SOL_SOCKET, SO_ERROR, &err, &len) != 0) err = errno;
      if (err != 0) {
        *side = i;
        co_return errno_code(err);
      }
    }
  }
}

struct watch_factory {
  ringframe::socket* client;
  ringframe::socket* target;
  int* side;
  task<result<void>> operator()(std::stop_token st) const { return watch_resets(client, target, side, st); }
};

void say(const proxy_config* cfg, const std::string& line) {
  if (cfg->quiet) return;
  std::printf("%s\n", line.c_str());
  std::fflush(stdout);
}

task<void> proxy_one(const proxy_config* cfg, ringframe::socket client, connection_info info) {
  executor& ex = client.get_executor();
  const std::string who = info.peer.to_python() + " <-> " + cfg->target_text;
  // The first of the target's addresses that answers (happy eyeballs: one
  // that drops SYNs does not hold back the next for the whole timeout);
  // the server's stop cancels every attempt.
  task<result<ringframe::socket>> attempts =
      ringframe::connect(ex, cfg->target, {.timeout = 10s, .stop = &client.stop_token()});
  result<ringframe::socket> target = co_await std::move(attempts);
  if (!target) {
    say(cfg, who + ": cannot connect to the target: " + target.error().message());
    co_return;  // the client's socket closes as the frame goes
  }
  target->set_stop_token(client.stop_token());
  event up_end(ex), down_end(ex);
  std::uint64_t up = 0, down = 0;
  int reset_side = -1;
  auto all = when_any(pump_factory{&client, &*target, &up_end, &down_end, &up},
                      pump_factory{&*target, &client, &down_end, &up_end, &down},
                      watch_factory{&client, &*target, &reset_side});
  std::pair<std::size_t, std::variant<result<void>, result<void>, result<void>>> first = co_await std::move(all);
  result<void> r = first.first == 0   ? std::get<0>(first.second)
                   : first.first == 1 ? std::get<1>(first.second)
                                      : std::get<2>(first.second);
  const bool client_side = first.first == 0 || (first.first == 2 && reset_side == 0);
  std::string how = r ? "closed" : (client_side ? "client side failed: " : "target side failed: ") + r.error().message();
  say(cfg, who + ": " + how + " (" + std::to_string(up) + " bytes up, " + std::to_string(down) + " bytes down)");
  // Both sockets close here; on a failure the other peer sees the close at once.
}

task<void> stop_on_signal(signal_set* sigs, server* srv, std::stop_token st) {
  result<int> sig = co_await sigs->wait({.stop = &st});
  if (sig) srv->stop();
}

task<void> run(executor* ex, server* srv, signal_set* sigs, const proxy_config* cfg) {
  task_group g(*ex);
  g.spawn(stop_on_signal(sigs, srv, g.get_stop_token()));
  task<void> serving =
      srv->serve([cfg](ringframe::socket s, connection_info info) { return proxy_one(cfg, std::move(s), info); });
  co_await std::move(serving);
  g.request_stop();
  co_await g.join();
}

[[noreturn]] void usage_error(const std::string& msg) {
  std::fprintf(stderr, "ringframe-example-proxy: %s\n%s", msg.c_str(), usage_text);
  std::exit(2);
}

std::vector<address> resolve_or_exit(const std::string& host, const std::string& port_text, const char* what) {
  result<std::uint16_t> port = parse_port(port_text);
  if (!port) usage_error(std::string("bad ") + what + " port '" + port_text + "': expected a whole number from 0 to 65535");
  // Blocking, before the loop runs.
  result<std::vector<address>> addrs = address::resolve(host, *port);
  if (!addrs || addrs->empty())  // a host that names nothing is bad usage, as for ringframe-server
    usage_error(std::string("cannot resolve ") + what + " host '" + host + "': " +
                (addrs ? "no address" : addrs.error().message()));
  return *addrs;
}

}  // namespace

int main(int argc, char** argv) {
  proxy_config cfg;
  std::vector<std::string> args;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "-h" || a == "--help") {
      std::fputs(usage_text, stdout);
      return 0;
    }
    if (a == "-q" || a == "--quiet") cfg.quiet = true;
    else if (a.size() > 1 && a[0] == '-' && a != "-") usage_error("unknown option '" + a + "'");
    else args.push_back(a);
  }
  if (args.size() != 4) usage_error("expected LISTEN_HOST LISTEN_PORT TARGET_HOST TARGET_PORT, got " + std::to_string(args.size()) + " arguments");
  std::vector<address> listen_at = resolve_or_exit(args[0], args[1], "listen");
  cfg.target = resolve_or_exit(args[2], args[3], "target");
  cfg.target_text = cfg.target.front().to_string();

  try {
    executor ex;
    signal_set sigs(ex, {SIGINT, SIGTERM});
    server_options so;
    so.log_connections = false;  // the proxy says one line per connection itself
    so.log = [](const std::string& line) { std::fprintf(stderr, "%s\n", line.c_str()); };
    server srv(ex, so);
    if (result<void> l = srv.listen(listen_at.front()); !l) {
      std::fprintf(stderr, "ringframe-example-proxy: cannot listen on %s: %s\n", listen_at.front().to_string().c_str(),
                   l.error().message().c_str());
      return 1;
    }
    std::printf("Listening on %s, forwarding to %s\n", srv.local_addresses().front().to_python().c_str(),
                cfg.target_text.c_str());
    std::fflush(stdout);
    ex.run(run(&ex, &srv, &sigs, &cfg));
    const server_stats& st = srv.stats();
    std::printf("Stopped: %llu connections proxied\n", static_cast<unsigned long long>(st.closed));
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "ringframe-example-proxy: %s\n", e.what());
    return 1;
  }
}
