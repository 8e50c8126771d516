#include <ringframe/echo.hpp>

#include <memory>

namespace ringframe {

task<void> echo_handler(socket s, connection_info info) {
  // 16 KiB: what a recv on a busy socket typically returns. Left
  // uninitialised, so an idle connection's untouched pages cost no memory.
  constexpr std::size_t buffer_size = 16 * 1024;
  std::unique_ptr<std::byte[]> buf(new std::byte[buffer_size]);
  server_stats& stats = info.server->stats();
  for (;;) {
    result<std::size_t> n = co_await s.recv({buf.get(), buffer_size}, {.stop = info.read_stop});
    if (!n || *n == 0) {
      if (!n && n.error() != std::errc::operation_canceled && n.error() != std::errc::connection_reset)
        info.server->log({log_level::warn, "connection_error", &info.peer, n.error().message(),
                          "recv from " + info.peer.to_python() + " failed: " + n.error().message()});
      break;
    }
    stats.bytes_in += *n;
    result<std::size_t> sent = co_await s.send_all({buf.get(), *n});
    if (!sent) {
      if (sent.error() != std::errc::operation_canceled && sent.error() != std::errc::broken_pipe &&
          sent.error() != std::errc::connection_reset)
        info.server->log({log_level::warn, "connection_error", &info.peer, sent.error().message(),
                          "send to " + info.peer.to_python() + " failed: " + sent.error().message()});
      break;
    }
    stats.bytes_out += *sent;
  }
}

}  // namespace ringframe
