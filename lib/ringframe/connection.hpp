// connection: framed messages over one socket. The codec (frame.hpp) does
// the work; this is the plumbing between it and the socket.
//
//   for (;;) {
//     auto m = co_await conn.read_message();     // result<message_view>
//     if (!m) break;                              // see read errors below
//     co_await conn.write(message::json("{}"));   // queued; sent in batches
//   }
//
// Between frames a read waits on a recv with no coroutine frame of its own
// (the connection owns the completion): from the executor's provided
// buffers, whose bytes are copied into the decoder, or once reads are large
// straight into the decoder's buffer; a message's content is handed out
// without a further copy. Mid-frame, reads go straight into the decoder's
// buffer. Writes are appended to an output buffer that is sent, in one send,
// when the reader next waits for the peer (beside that recv), so the replies
// to pipelined requests leave together, in request order; read_message()
// returns only once that send is done. When more than max_unsent_bytes are
// queued, write() sends before returning (backpressure: a peer that does not
// read its replies stops being read from).
//
// Ownership: the coroutine that reads a connection owns it (framed() keeps
// it in that coroutine's frame). Other coroutines (a broadcaster) keep a
// connection_handle, which turns null when the connection goes away, and
// their write()/flush() through it get an error, never freed memory: a
// coroutine waiting in flush() when the connection is destroyed is resumed
// (from the executor's ready queue) with ENOTCONN. Waiters are always woken
// through the ready queue, never resumed from inside a connection's method,
// so no resumed coroutine can destroy an object that is still on the stack.
//
// Read errors: frame_errc::end_of_stream (peer closed between messages),
// frame_errc::truncated, a protocol error (frame_category; details in
// last_frame_error(), and the stream is still usable when its in_sync is
// true), std::errc::timed_out (idle or mid-message timeout), or the socket's
// errno (ECONNRESET, ECANCELED when the server stops...).
#pragma once

#include <ringframe/deadline.hpp>
#include <ringframe/detail/completion.hpp>
#include <ringframe/frame.hpp>
#include <ringframe/message.hpp>
#include <ringframe/receive_stream.hpp>
#include <ringframe/send_queue.hpp>
#include <ringframe/socket.hpp>
#include <ringframe/task.hpp>

#include <array>
#include <atomic>
#include <chrono>
#include <coroutine>
#include <cstdint>
#include <memory>
#include <optional>
#include <stop_token>
#include <string>
#include <utility>

namespace ringframe {

// A timeout of 0 means none. The idle, message and write timeouts are coarse
// deadlines kept by the executor's loop (deadline.hpp), not a kernel timer
// per operation: re-arming one for every request costs a few pointer writes.
struct connection_options {
  frame_limits limits;
  // Longest wait for the first byte of the next message, from when the
  // replies queued before the wait are sent (a peer reading a long reply is
  // not idle: write_timeout bounds that).
  std::chrono::nanoseconds idle_timeout = std::chrono::minutes(5);
  // Longest time from a message's first byte to its last: a peer that sends
  // a byte and stalls, or trickles bytes, cannot hold the connection.
  std::chrono::nanoseconds message_timeout = std::chrono::seconds(30);
  // Longest time for queued replies to be taken by the peer.
  std::chrono::nanoseconds write_timeout = std::chrono::seconds(30);
  // Replies queued beyond this are sent before write() returns.
  std::size_t max_unsent_bytes = 1024 * 1024;
  // read_message() starts the send of what is queued and reads beside it,
  // without waiting for it to be sent, however much is unsent (a reader
  // that returns before its bytes are out; write() still waits past
  // max_unsent_bytes). For a client, whose requests and the replies to them
  // cross: a server stops reading a peer whose replies pile up, so a client
  // that read only once its requests were sent would wait, with the server,
  // until write_timeout (framed_client sets it). A server's reader leaves it
  // false: it sends the replies it owes before it reads more (backpressure).
  // With it, each message read restarts the write_timeout of the batch in
  // flight: a deep pipeline's requests are taken only as fast as the peer
  // answers them, and write_timeout bounds a send during which the peer
  // answers nothing. And a send that fails because the peer is gone
  // (ECONNRESET, EPIPE, with the peer's reset or end of stream in: see
  // reads_past_send_failure()) does not end the reading: what the peer sent
  // before it went is read, then that end (a server's reader stops at the
  // failed send: its replies could no longer go out).
  bool read_while_sending = false;
  // What a recv straight into the decoder asks for beyond the frame in
  // progress, at first: for frames at most twice this long it doubles, up
  // to 8 times, while reads come back full (docs/io-path.md, "Large frames").
  // Held within 1 byte to 16 MiB.
  std::size_t read_size = 16 * 1024;
  // Between frames, receive into the executor's provided buffer ring (an
  // idle connection then holds no receive buffer); false: always receive
  // into the connection's own buffer.
  bool provided_buffers = true;
  // Keep one multishot recv (Linux 6.0) armed on the provided buffers
  // instead of arming a recv for every read. Bytes that arrive while the
  // handler still works on a message wait in up to 4 ring buffers (beyond
  // that in a spill buffer, and the recv is cancelled until the handler
  // reads again), because the message it holds points into the decoder.
  // Off by default: see docs/io-path.md for what it saves.
  bool multishot_recv = false;
  // Batches of queued replies at least this large are sent with zero-copy
  // (IORING_OP_SEND_ZC); 0: never. Off by default: see docs/io-path.md.
  // A batch the kernel took in full counts as sent (as a copied one does)
  // while the kernel still holds its pages for the peer.
  std::size_t zero_copy_threshold = 0;
  // A reply's content (write(header, content)) or a whole frame
  // (write_raw) at least this long that lies in the receive buffer (a reply
  // that echoes or forwards what it received) is sent from there, by
  // reference (a sendmsg gather list), instead of being copied into the
  // send buffer; 0: always copy. Echoes of pipelined frames lie back to
  // back there and go out as one gather entry. See docs/io-path.md, "Large
  // frames".
  std::size_t gather_threshold = 1024;
  // The memory that large frames in progress may hold on this connection's
  // thread, in bytes (receive_budget.hpp): past it, connections wanting
  // more stop being read until frames are consumed; 0: no bound. Each
  // connection's frames are admitted against its own value (the thread's
  // reserved bytes, theirs included, stay within it). framed_client sets 0.
  std::size_t thread_receive_budget = receive_budget::default_limit;
  // close_gracefully: how long to wait for the peer's end of the stream.
  std::chrono::nanoseconds linger_timeout = std::chrono::seconds(1);
};

class connection;

namespace detail {
struct server_access;
// What a connection_handle points to: it outlives the connection (the
// connection holds one reference, each handle one) and is cleared when the
// connection goes. One executor's thread only, like the connection.
struct connection_anchor {
  connection* c;
  std::uint32_t refs;
};
}  // namespace detail

// A reference to a connection that knows when it is gone: get() is null from
// then on. Cheap to copy (a counter, no atomics: one thread). Keep one instead
// of a connection& in any coroutine that does not own the connection.
class connection_handle {
 public:
  connection_handle() noexcept = default;
  explicit connection_handle(detail::connection_anchor* a) noexcept : a_(a) {
    if (a_) ++a_->refs;
  }
  connection_handle(const connection_handle& o) noexcept : connection_handle(o.a_) {}
  connection_handle(connection_handle&& o) noexcept : a_(std::exchange(o.a_, nullptr)) {}
  connection_handle& operator=(connection_handle o) noexcept {
    std::swap(a_, o.a_);
    return *this;
  }
  ~connection_handle() { release(a_); }

  connection* get() const noexcept { return a_ ? a_->c : nullptr; }
  explicit operator bool() const noexcept { return get() != nullptr; }

  static void release(detail::connection_anchor* a) noexcept {
    if (a && --a->refs == 0) delete a;
  }

 private:
  detail::connection_anchor* a_ = nullptr;
};

namespace detail {
class read_message_awaitable {
 public:
  explicit read_message_awaitable(connection* c) noexcept : c_(c) {}
  inline bool await_ready();
  std::coroutine_handle<> await_suspend(std::coroutine_handle<> h);
  inline result<message_view> await_resume();  // below class connection

 private:
  result<message_view> resume_slow();
  bool refuse_second_reader() noexcept;
  friend class ringframe::connection;
  connection* c_;
  send_waiter wait_;  // wait_.h: the reader
  std::optional<result<message_view>> ready_;
  task<result<message_view>> slow_;
};

class write_awaitable {
 public:
  write_awaitable(connection* c, result<void> queued) noexcept : c_(c), queued_(queued) {}
  // Whether to wait for the send is decided when the write is awaited, with
  // the backlog as it is then (an awaitable kept and awaited later sees
  // what other writes queued, or what was sent, meanwhile: review50).
  inline bool await_ready() const noexcept;  // inline ones: below class connection
  std::coroutine_handle<> await_suspend(std::coroutine_handle<> h);
  inline result<void> await_resume();

 private:
  connection* c_;
  result<void> queued_;
  task<result<void>> flush_;
};

struct read_slot_awaitable;
struct send_idle_awaitable;
}  // namespace detail

class connection {
 public:
  explicit connection(socket s, connection_options o = {});
  connection(connection&&) = delete;  // the kernel holds pointers into it
  // Precondition: no read_message() is waiting (its owner is the reader).
  // Coroutines waiting in flush() are resumed with ENOTCONN; handles go null.
  ~connection();

  // A handle that other coroutines keep instead of a connection&.
  connection_handle handle();

  // The next message; see the header comment for the errors. One reader at a
  // time: a second coroutine calling this while one waits gets EBUSY.
  [[nodiscard]] detail::read_message_awaitable read_message() { return detail::read_message_awaitable(this); }
  // The reader is done with the message read_message() gave last (it copied
  // it) and may not read again for a while (framed_client's reply reader,
  // once no call waits): the frame's reservation from the thread's receive
  // budget goes back now instead of at the next read_message, and the
  // receive buffer too when nothing else is buffered. The message's views
  // are invalid from here on. Nothing happens while a read_message waits.
  void done_with_message() noexcept;

  // Queue a message (encoded now, sent later; see the header comment).
  [[nodiscard]] detail::write_awaitable write(const message& m);
  [[nodiscard]] detail::write_awaitable write(const header_fields& h, std::span<const std::byte> content);
  // Queue bytes that are already a frame (e.g. message_view::wire, to echo).
  [[nodiscard]] detail::write_awaitable write_raw(std::span<const std::byte> frame) {
    // Inline, per message: an echo of the frame received just after the
    // last one echoed only extends the gather entry already queued.
    // (can_share()'s tests, with holds() folded into extend_last's: bytes
    // that continue a piece of the decoder's block start inside it.)
    if (!send_.failed() && opts_.gather_threshold && frame.size() >= opts_.gather_threshold &&
        send_.extend_last(decoder_.block(), frame)) [[likely]]
      return queued({});
    return write_raw_queue(frame);
  }
  // A framed {"error": detail} reply, text/json.
  [[nodiscard]] detail::write_awaitable write_error(std::string_view detail);

  // Send everything queued, and wait until it is sent. Writers on other
  // coroutines (a broadcast) call this after write(); any number may wait
  // on one connection at once, and one send carries all their bytes. If the
  // connection is destroyed meanwhile, it returns ENOTCONN without touching
  // it (the coroutine holds a handle, not the connection).
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
  void set_read_stop(const std::stop_token* t);

  const frame_error& last_frame_error() const noexcept { return decoder_.error(); }
  socket& get_socket() noexcept { return sock_; }
  std::size_t unsent_bytes() const noexcept { return send_.unsent(); }
  // A frame has begun and not ended (what a timed_out read was waiting for).
  bool mid_message() const noexcept { return decoder_.mid_frame(); }
  // Why the replies can no longer be sent (ETIMEDOUT: write_timeout), or none.
  std::error_code send_error() const noexcept { return send_.error(); }
  // A failed send ends the reading too (replies could no longer go out),
  // except with read_while_sending (a client) when the send failed because
  // the peer is gone (ECONNRESET, EPIPE) and the kernel says the peer sends
  // nothing more either (a reset, or its end of stream): what it sent before
  // it went, replies to requests sent earlier, is still in the socket, and
  // the reads after it end on their own. Then this is true, and
  // read_message() reads on until that end. An EPIPE with the peer still
  // sending (our own shutdown(SHUT_WR), a Unix peer that shut its read
  // side) ends the reading at once, as any other failure: nothing bounds a
  // read there but a timeout, and the request was never delivered.
  bool reads_past_send_failure() const noexcept { return reads_past_send_failure_; }
  // Times the connection stopped reading until its queued replies were sent
  // (max_unsent_bytes reached).
  std::uint32_t backpressure_pauses() const noexcept { return backpressure_pauses_; }

  std::uint64_t messages_in = 0, messages_out = 0, bytes_in = 0, bytes_out = 0;
  // The most reply bytes ever queued at once: what max_unsent_bytes bounds
  // (it can be exceeded by at most the one reply that crossed it).
  std::size_t peak_unsent() const noexcept { return send_.peak_unsent(); }

 private:
  friend class detail::read_message_awaitable;
  friend class detail::write_awaitable;
  friend struct detail::read_slot_awaitable;
  friend struct detail::send_idle_awaitable;

  // Stop callbacks run on whichever thread requests the stop; the stream
  // and the queue carry the cancellation to the executor's thread.
  struct stop_reads {
    connection* c;
    void operator()() noexcept { c->recv_.stop(); }
  };
  struct stop_all {
    connection* c;
    void operator()() noexcept {
      c->recv_.stop();
      c->send_.cancel();
    }
  };
  // Only for stop tokens nobody else tells the connection about (a
  // connection of one's own): a server's connections are told by the server
  // instead (tell_stopped), which saves 120 bytes and two registrations in
  // the tokens' shared state per connection.
  struct stop_callbacks {
    std::optional<std::stop_callback<stop_reads>> reads;
    std::optional<std::stop_callback<stop_all>> all;
  };
  static task<result<void>> flush_until_sent(connection_handle h);
  // For the server that lists this connection (handler.cpp), on the
  // executor's thread: what the callbacks above would do.
  friend struct detail::server_access;
  struct listed_by_server {};
  connection(socket s, const connection_options& o, listed_by_server);
  // A drain stops the reads only of a connection that still honours the
  // server's read stop (`drain`): a handler that chose its own with
  // set_read_stop() reads on, as its stop_reads callback used to let it.
  void tell_stopped(bool all, const std::stop_token* drain) noexcept {
    if (all || recv_.read_stop() == drain) recv_.stop();
    if (all) send_.cancel();
  }
  stop_callbacks& stop_cbs();

  // Decode from what is buffered, without I/O: true, with `out` set, when
  // that settles it. An out-parameter: the view is written once, where the
  // reader takes it from (each copy of it is 15 words, per message).
  bool try_read_buffered(std::optional<result<message_view>>& out);
  task<result<message_view>> read_slow();
  // Every write ends here (inline: per message): counts, and the awaitable.
  detail::write_awaitable queued(result<void> r) {
    if (r) ++messages_out;
    if (sock_.get_executor().handling_time_sink()) [[unlikely]]
      record_handling_time(r);
    return detail::write_awaitable(this, r);
  }
  // write_raw past its inline case: shared as a new gather entry, or copied.
  detail::write_awaitable write_raw_queue(std::span<const std::byte> frame);
  void record_handling_time(const result<void>& r) noexcept;
  // Can `bytes` be sent by reference from the receive buffer (write_raw)?
  bool can_share(std::span<const std::byte> bytes) const noexcept {
    return opts_.gather_threshold && bytes.size() >= opts_.gather_threshold && decoder_.holds(bytes);
  }

  // read_message without a coroutine frame: between frames, one recv (from
  // the provided buffers, or straight into the decoder once reads are
  // large) and the queued replies' send beside it. False
  // when that does not apply; read_slow handles everything else.
  bool start_fast_read(detail::read_message_awaitable* aw);
  void fast_read_done();
  void finish_fast_read(detail::read_message_awaitable* aw, result<message_view> r);
  void finish_fast_read(detail::read_message_awaitable* aw);  // aw->ready_ is set
  void continue_slow(detail::read_message_awaitable* aw);
  // The stream finished the read a reader waits for.
  static void on_read_done(void* self);
  // The queue failed: a reader waiting (beside its send, or in read_slow
  // beside another coroutine's) learns of it now rather than at its idle or
  // message timeout. Or everything queued was sent: a fast read's idle
  // timeout starts now.
  static void on_send_event(void* self, bool failed) noexcept;
  bool send_failure_ends_reads() const noexcept { return !reads_past_send_failure_; }
  // Whether the kernel says the peer sends nothing more (a reset, or its
  // FIN: POLLHUP or POLLRDHUP), so that reads end on their own.
  bool peer_sends_no_more() const noexcept;
  // Idle (between frames, while a recv waits) or mid-message (from a
  // message's first byte to its last).
  void arm_read_deadline(bool between_frames);

  socket sock_;
  // What the connection reads of its options after construction; the rest
  // went to the decoder, recv_ and send_ (an idle connection's memory counts).
  struct settings {
    std::chrono::nanoseconds idle_timeout;
    std::chrono::nanoseconds message_timeout;
    std::size_t max_unsent_bytes;
    std::size_t gather_threshold;
  } opts_;
  frame_decoder decoder_;
  receive_stream recv_;
  send_queue send_;
  std::coroutine_handle<> read_waiter_;             // read_slow, waiting on recv_
  detail::read_message_awaitable* fast_ = nullptr;  // a fast read waiting on recv_
  std::unique_ptr<stop_callbacks> stop_cbs_;
  detail::connection_anchor* anchor_ = nullptr;  // made by the first handle()
  bool peer_closed_ = false;
  bool message_deadline_ = false;  // recv_'s deadline is the message's
  bool reading_ = false;           // a read_message is waiting
  bool idle_after_send_ = false;   // a read's idle deadline waits for the send beside it
  bool budget_frame_out_ = false;         // the frame recv_ reserved for was handed out
  bool read_while_sending_;                // connection_options::read_while_sending (here: in the padding)
  bool reads_past_send_failure_ = false;  // see reads_past_send_failure()
  std::uint32_t backpressure_pauses_ = 0;  // in the padding after the flags
  // When the executor has a handling-time sink (executor.hpp), each
  // message's time from the loop turn that received it (executor::now(), no
  // clock read) to its first reply queued (one clock read) is recorded
  // there. Epoch: no message awaits its reply.
  std::chrono::steady_clock::time_point received_at_{};
};

namespace detail {
// The awaitables' parts that run for every message, inline.
inline bool read_message_awaitable::await_ready() {
  if (c_->reading_) [[unlikely]]
    return refuse_second_reader();
  c_->recv_.drain_held();
  return c_->try_read_buffered(ready_);
}
inline result<message_view> read_message_awaitable::await_resume() {
  if (ready_) {
    if (wait_.h) c_->reading_ = false;  // this one waited
    return std::move(*ready_);
  }
  return resume_slow();
}
inline bool write_awaitable::await_ready() const noexcept {
  return !queued_ || c_->unsent_bytes() < c_->opts_.max_unsent_bytes;
}
inline result<void> write_awaitable::await_resume() {
  if (!queued_ || !flush_.valid()) return queued_;
  return flush_.take_result();
}

// The server's way in (handler.cpp, server.cpp): a connection it lists and
// tells of its stop and drain itself, on its executor's thread.
struct server_access {
  static connection make(socket s, const connection_options& o) {
    return connection(std::move(s), o, connection::listed_by_server{});
  }
  static void set_read_stop(connection& c, const std::stop_token* t) noexcept { c.recv_.set_stop(t); }
  // all: the hard stop (reads and sends); else the drain (the reads of a
  // connection whose read stop is still `drain`).
  static void tell_stopped(connection& c, bool all, const std::stop_token* drain) noexcept {
    c.tell_stopped(all, drain);
  }
};
}  // namespace detail

}  // namespace ringframe
