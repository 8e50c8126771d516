// The README's example: a raw stream server that answers in upper case.
// Try it (ringframe-client echo would say "the echo differs": it checks for
// an echo, and this server changes the bytes on purpose):
//   build/examples/uppercase-server &
//   python3 -c "import socket; s = socket.create_connection(('127.0.0.1', 65433)); s.sendall(b'hello'); print(s.recv(64))"
// prints b'HELLO'.
#include <ringframe/server.hpp>

#include <cctype>
#include <chrono>
#include <cstdio>

ringframe::task<void> shout(ringframe::socket s, ringframe::connection_info) {
  std::byte buf[4096];
  for (;;) {
    auto n = co_await s.recv(buf, {.timeout = std::chrono::seconds(30)});
    if (!n || *n == 0) co_return;  // error (errno kept) or peer closed
    for (auto& b : std::span(buf, *n)) b = std::byte(std::toupper(int(b)));
    if (!co_await s.send_all(std::span<const std::byte>(buf, *n))) co_return;
  }
}

int main() try {
  ringframe::executor ex;  // throws setup_error, with why, where neither backend can start
  ringframe::server srv(ex);
  if (auto r = srv.listen(*ringframe::address::from_ip("127.0.0.1", 65433)); !r) {
    std::fprintf(stderr, "uppercase-server: cannot listen on 127.0.0.1:65433: %s\n", r.error().message().c_str());
    return 1;
  }
  std::puts("uppercase-server on 127.0.0.1:65433");
  ex.run(srv.serve(&shout));
} catch (const std::exception& e) {
  std::fprintf(stderr, "uppercase-server: %s\n", e.what());
  return 1;
}
