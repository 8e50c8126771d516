// connection: framed messages over one socket. The codec (frame.hpp) does
// the work; this is the plumbing between it and the socket.
//
//   for (;;) {
//     auto m = co_await conn.read_message();     // result<message_view>
//     if (!m) break;                              // see read errors below
//     co_await conn.write(message::json("{}"));   // queued; sent in batches
//   }
//
// Reads go straight into the decoder's buffer and a message's content is
// handed out without a copy. Writes are appended to an output buffer that is
// sent when the reader would otherwise wait for the peer, so the replies to
// pipelined requests leave in one send, in request order. When more than
// max_unsent_bytes are queued, write() sends before returning (backpressure:
// a peer that does not read its replies stops being read from).
//
// Read errors: frame_errc::end_of_stream (peer closed between messages),
// frame_errc::truncated, a protocol error (frame_category; details in
// last_frame_error(), and the stream is still usable when its in_sync is
// true), std::errc::timed_out (idle or mid-message timeout), or the socket's
// errno (ECONNRESET, ECANCELED when the server stops...).
#pragma once

#include <ringframe/frame.hpp>
#include <ringframe/message.hpp>
#include <ringframe/socket.hpp>
#include <ringframe/task.hpp>

#include <chrono>
#include <optional>
#include <string>

namespace ringframe {

// A timeout of 0 means none (no deadline on that wait). Each deadline is a
// linked timeout per operation: an extra SQE and CQE and a kernel timer
// (see bench/RESULTS.md for what that costs at depth 1).
struct connection_options {
  frame_limits limits;
  // Longest wait for the first byte of the next message.
  std::chrono::nanoseconds idle_timeout = std::chrono::minutes(5);
  // Longest time from a message's first byte to its last: a peer that sends
  // a byte and stalls, or trickles bytes, cannot hold the connection.
  std::chrono::nanoseconds message_timeout = std::chrono::seconds(30);
  // Longest time for queued replies to be taken by the peer.
  std::chrono::nanoseconds write_timeout = std::chrono::seconds(30);
  // Replies queued beyond this are sent before write() returns.
  std::size_t max_unsent_bytes = 1024 * 1024;
  // recv size when no frame in progress asks for more.
  std::size_t read_size = 16 * 1024;
  // Between frames, receive into the executor's provided buffer ring (an
  // idle connection then holds no receive buffer); false: always receive
  // into the connection's own buffer.
  bool provided_buffers = true;
  // Batches of queued replies at least this large are sent with zero-copy
  // (IORING_OP_SEND_ZC); 0: never. Off by default: see docs/io-path.md.
  std::size_t zero_copy_threshold = 0;
  // close_gracefully: how long to wait for the peer's end of the stream.
  std::chrono::nanoseconds linger_timeout = std::chrono::seconds(1);
};

class connection;

namespace detail {
class read_message_awaitable {
 public:
  explicit read_message_awaitable(connection* c) noexcept : c_(c) {}
  bool await_ready();
  std::coroutine_handle<> await_suspend(std::coroutine_handle<> h);
  result<message_view> await_resume();

 private:
  connection* c_;
  std::optional<result<message_view>> ready_;
  task<result<message_view>> slow_;
};

class write_awaitable {
 public:
  write_awaitable(connection* c, result<void> queued) noexcept : c_(c), queued_(queued) {}
  bool await_ready() const noexcept;
  std::coroutine_handle<> await_suspend(std::coroutine_handle<> h);
  result<void> await_resume();

 private:
  connection* c_;
  result<void> queued_;
  task<result<void>> flush_;
};
}  // namespace detail

class connection {
 public:
  explicit connection(socket s, connection_options o = {});
  connection(connection&&) = delete;  // operations hold pointers into it

  // The next message; see the header comment for the errors.
  [[nodiscard]] detail::read_message_awaitable read_message() { return detail::read_message_awaitable(this); }

  // Queue a message (encoded now, sent later; see the header comment).
  [[nodiscard]] detail::write_awaitable write(const message& m);
  [[nodiscard]] detail::write_awaitable write(const header_fields& h, std::span<const std::byte> content);
  // Queue bytes that are already a frame (e.g. message_view::wire, to echo).
  [[nodiscard]] detail::write_awaitable write_raw(std::span<const std::byte> frame);
  // A framed {"error": detail} reply, text/json.
  [[nodiscard]] detail::write_awaitable write_error(std::string_view detail);

  // Send everything queued. Writers on other coroutines (a broadcast) call
  // this after write(); when a flush is already running on this connection
  // it returns at once and that flush sends the new bytes too.
  task<result<void>> flush();

  // The end of a connection that the server decides (drain, a protocol
  // error, a handler that returns): send what is queued, then FIN, then read
  // and drop what the peer still sends until it closes or `linger` passes.
  // Closing a socket with unread input makes the kernel send RST, and an RST
  // can destroy replies the peer has not read yet: this is the lingering
  // close that keeps them.
  task<void> close_gracefully(std::chrono::nanoseconds linger);
  bool peer_closed() const noexcept { return peer_closed_; }

  // Cancels only the wait for the peer's next bytes (not sends): a server
  // that drains stops taking requests but still delivers owed replies.
  // Complete requests already buffered are still handed out.
  void set_read_stop(const std::stop_token* t) noexcept { read_stop_ = t; }

  const frame_error& last_frame_error() const noexcept { return decoder_.error(); }
  socket& get_socket() noexcept { return sock_; }
  const connection_options& options() const noexcept { return opts_; }
  std::size_t unsent_bytes() const noexcept { return queued_.size() + sending_.size(); }

  std::uint64_t messages_in = 0, messages_out = 0, bytes_in = 0, bytes_out = 0;
  // The most reply bytes ever queued at once: what max_unsent_bytes bounds
  // (it can be exceeded by at most the one reply that crossed it).
  std::size_t peak_unsent = 0;

 private:
  friend class detail::read_message_awaitable;
  friend class detail::write_awaitable;

  // Decode from what is buffered, without I/O: set when that settles it.
  std::optional<result<message_view>> try_read_buffered();
  task<result<message_view>> read_slow();
  detail::write_awaitable queued(result<void> r);

  socket sock_;
  connection_options opts_;
  frame_decoder decoder_;
  std::string queued_;   // replies not yet handed to a send
  std::string sending_;  // the batch a send is working on
  bool flushing_ = false;
  bool peer_closed_ = false;
  bool last_read_large_ = false;
  std::error_code write_error_;
  const std::stop_token* read_stop_ = nullptr;
  bool timing_message_ = false;
  std::chrono::steady_clock::time_point message_started_;
};

}  // namespace ringframe
