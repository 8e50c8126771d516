#include <ringframe/echo.hpp>

#include <memory>

namespace ringframe {

task<void> echo_handler(socket s, connection_info info) {
  constexpr std::size_t buffer_size = 64 * 1024;
  auto buf = std::make_unique<std::byte[]>(buffer_size);
  server_stats& stats = info.server->stats();
  for (;;) {
    result<std::size_t> n = co_await s.recv({buf.get(), buffer_size});
    if (!n || *n == 0) {
      if (!n && n.error() != std::errc::operation_canceled && n.error() != std::errc::connection_reset)
        info.server->log("recv from " + info.peer.to_python() + " failed: " + n.error().message());
      break;
    }
    stats.bytes_in += *n;
    result<std::size_t> sent = co_await s.send_all({buf.get(), *n});
    if (!sent) {
      if (sent.error() != std::errc::operation_canceled && sent.error() != std::errc::broken_pipe &&
          sent.error() != std::errc::connection_reset)
        info.server->log("send to " + info.peer.to_python() + " failed: " + sent.error().message());
      break;
    }
    stats.bytes_out += *sent;
  }
}

}  // namespace ringframe
