// ringframe-kvstore [HOST] [PORT]: a key-value store on the framed protocol.
// Try it with the tutorial-style client in tests/interop, or any framed client.
#include "kv_store.hpp"

#include <ringframe/signals.hpp>

#include <csignal>
#include <exception>
#include <cstdio>
#include <functional>
#include <string>

namespace {
ringframe::task<void> stop_on_signal(ringframe::signal_set* sigs, ringframe::server* srv) {
  ringframe::result<int> sig = co_await sigs->wait();
  (void)sig;
  srv->stop();
}

ringframe::task<void> serve(ringframe::executor* ex, ringframe::server* srv, ringframe::signal_set* sigs,
                            kvstore::store* st) {
  ex->spawn(stop_on_signal(sigs, srv));
  co_await srv->serve(ringframe::per_request(std::bind_front(&kvstore::store::handle, st)));
}
}  // namespace

int main(int argc, char** argv) {
  std::string host = argc > 1 ? argv[1] : "127.0.0.1";
  auto port = ringframe::parse_port(argc > 2 ? argv[2] : "65434");
  auto at = port ? ringframe::address::from_ip(host, *port) : ringframe::result<ringframe::address>(port.error());
  if (!at) {
    std::fprintf(stderr, "usage: ringframe-kvstore [IP] [PORT]\n");
    return 2;
  }
  // Its log is stdout: under a pipe (systemd, tee) it was block-buffered,
  // and no line showed until 4 KiB had piled up (review31 F4).
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  std::signal(SIGPIPE, SIG_IGN);
  // The executor throws setup_error with a diagnosis (io_uring refused, a bad
  // RINGFRAME_BACKEND): one line and exit 1, not std::terminate.
  try {
    ringframe::executor ex;
    ringframe::signal_set sigs(ex, {SIGINT, SIGTERM});
    ringframe::server_options so;
    so.log = [](const std::string& line) { std::printf("%s\n", line.c_str()); };
    ringframe::server srv(ex, so);
    if (auto r = srv.listen(*at); !r) {
      std::fprintf(stderr, "ringframe-kvstore: cannot listen on %s: %s\n", at->to_string().c_str(),
                   r.error().message().c_str());
      return 1;
    }
    std::printf("Listening on %s\n", srv.local_addresses().front().to_python().c_str());
    kvstore::store st;
    ex.run(serve(&ex, &srv, &sigs, &st));
    std::printf("ringframe-kvstore: stopped with %zu keys\n", st.size());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "ringframe-kvstore: %s\n", e.what());
    return 1;
  }
}
