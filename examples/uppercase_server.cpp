// The README's raw-style example ("Writing your own coroutine code") as a
// program: a raw stream server that answers in upper case. It listens on
// 127.0.0.1:65433 (beside ringframe-server's 65432), or on the IP and PORT
// given, and says where. Try it (ringframe-client echo would say "the echo
// differs": it checks for an echo, and this server changes the bytes on
// purpose):
//   build/examples/uppercase-server &
//   python3 -c "import socket; s = socket.create_connection(('127.0.0.1', 65433)); s.sendall(b'hello'); print(s.recv(64))"
// prints b'HELLO'.
#include <ringframe/server.hpp>

#include <cctype>
#include <chrono>
#include <cstdio>
#include <string>

ringframe::task<void> shout(ringframe::socket s, ringframe::connection_info) {
  std::byte buf[4096];
  for (;;) {
    auto n = co_await s.recv(buf, {.timeout = std::chrono::seconds(30)});
    if (!n || *n == 0) co_return;  // error (errno kept) or peer closed
    for (auto& b : std::span(buf, *n)) b = std::byte(std::toupper(int(b)));
    if (!co_await s.send_all(std::span<const std::byte>(buf, *n))) co_return;
  }
}

const char* const usage = "usage: uppercase-server [IP PORT]  (default 127.0.0.1 65433; PORT 0: any free port)\n";

int usage_error(const std::string& what) {  // one line, exit 2
  std::fprintf(stderr, "uppercase-server: %s (usage: uppercase-server [IP PORT])\n", what.c_str());
  return 2;
}

int main(int argc, char** argv) try {
  std::setvbuf(stdout, nullptr, _IOLBF, 0);  // its "on" line shows at once in a pipe or a file
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "-h" || a == "--help") return std::fputs(usage, stdout), 0;
    if (a.starts_with("-")) return usage_error("unknown option '" + a + "'");
  }
  if (argc != 1 && argc != 3) return usage_error("expected IP PORT or no arguments, got " + std::to_string(argc - 1));
  const std::string ip = argc == 3 ? argv[1] : "127.0.0.1", port_text = argc == 3 ? argv[2] : "65433";
  auto port = ringframe::parse_port(port_text);
  if (!port) return usage_error("bad port '" + port_text + "': expected a whole number from 0 to 65535");
  auto at = ringframe::address::from_ip(ip, *port);
  if (!at) return usage_error("bad IP '" + ip + "': expected a numeric IPv4 or IPv6 address");

  ringframe::executor ex;  // throws setup_error, with why, where neither backend can start
  ringframe::server srv(ex);
  if (auto r = srv.listen(*at); !r) {
    std::fprintf(stderr, "uppercase-server: cannot listen on %s: %s\n", at->to_string().c_str(), r.error().message().c_str());
    return 1;
  }
  std::printf("uppercase-server on %s\n", srv.local_addresses().front().to_string().c_str());
  ex.run(srv.serve(&shout));
} catch (const std::exception& e) {
  std::fprintf(stderr, "uppercase-server: %s\n", e.what());
  return 1;
}
