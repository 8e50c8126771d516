// connection: framed messages over one socket. The codec (frame.hpp) does
// the work; this is the plumbing between it and the socket.
//
//   for (;;) {
//     auto m = co_await conn.read_message();     // result<message_view>
//     if (!m) break;                              // see read errors below
//     co_await conn.write(message::json("{}"));   // queued; sent in batches
//   }
//
// Between frames a read waits on a recv from the executor's provided buffers
// with no coroutine frame of its own (the connection owns the completion);
// the bytes are copied into the decoder and a message's content is handed out
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
  // Keep one multishot recv (Linux 6.0) armed on the provided buffers
  // instead of arming a recv for every read. Bytes that arrive while the
  // handler still works on a message wait in up to 4 ring buffers (beyond
  // that in a spill buffer, and the recv is cancelled until the handler
  // reads again), because the message it holds points into the decoder.
  // Off by default: see docs/io-path.md for what it saves.
  bool multishot_recv = false;
  // Batches of queued replies at least this large are sent with zero-copy
  // (IORING_OP_SEND_ZC); 0: never. Off by default: see docs/io-path.md.
  std::size_t zero_copy_threshold = 0;
  // close_gracefully: how long to wait for the peer's end of the stream.
  std::chrono::nanoseconds linger_timeout = std::chrono::seconds(1);
};

class connection;

namespace detail {
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
  bool await_ready();
  std::coroutine_handle<> await_suspend(std::coroutine_handle<> h);
  result<message_view> await_resume();

 private:
  friend class ringframe::connection;
  connection* c_;
  send_waiter wait_;  // wait_.h: the reader
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

  // Queue a message (encoded now, sent later; see the header comment).
  [[nodiscard]] detail::write_awaitable write(const message& m);
  [[nodiscard]] detail::write_awaitable write(const header_fields& h, std::span<const std::byte> content);
  // Queue bytes that are already a frame (e.g. message_view::wire, to echo).
  [[nodiscard]] detail::write_awaitable write_raw(std::span<const std::byte> frame);
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
  const connection_options& options() const noexcept { return opts_; }
  std::size_t unsent_bytes() const noexcept { return send_.unsent(); }

  std::uint64_t messages_in = 0, messages_out = 0, bytes_in = 0, bytes_out = 0;
  // The most reply bytes ever queued at once: what max_unsent_bytes bounds
  // (it can be exceeded by at most the one reply that crossed it).
  std::size_t peak_unsent = 0;

 private:
  friend class detail::read_message_awaitable;
  friend class detail::write_awaitable;
  friend struct detail::read_slot_awaitable;
  friend struct detail::send_idle_awaitable;

  // One recv and one send may be in flight; each has its completion here
  // (the CQE's user_data), so waiting needs no operation in a coroutine frame.
  struct io_slot : detail::completion {
    connection* owner = nullptr;
    int res = 0;
    unsigned flags = 0;
    bool busy = false;
  };
  struct held_buffer {
    std::uint16_t id;
    std::uint32_t len;
  };
  static constexpr std::size_t max_held = 4;
  // The multishot recv's completion and state live on the heap, made only
  // for connections that use it (an idle connection's memory counts). A
  // connection that goes away while one is armed leaves it behind,
  // ownerless, to take the kernel's last CQE (and give back its buffer)
  // after the cancellation.
  struct multishot_slot : io_slot {
    // A left-behind slot whose cancellation found no free SQE retries from
    // its executor's next turn.
    struct retry : detail::deferred_call {
      explicit retry(multishot_slot* s) noexcept : deferred_call(&retry::run), slot(s) {}
      multishot_slot* slot;
      executor* ex = nullptr;
      static void run(detail::deferred_call* d, bool run);
    } leftover_cancel{this};
    buffer_ring* br = nullptr;
    bool cancelling = false;  // cancelled by us, not to be reported
    bool ended = false;       // it ended (end_res) with no reader waiting
    int end_res = 0;
    std::uint8_t held_n = 0;
    std::array<held_buffer, max_held> held{};
    std::string spill;  // what arrived once `held` was full
  };
  struct owned_deadline : deadline {
    owned_deadline(callback cb, connection* c) noexcept : deadline(cb), owner(c) {}
    connection* owner;
  };
  // Stop callbacks run on whichever thread requests the stop: on another
  // thread they only leave a note (remote_stop_) and defer to the executor's.
  struct stop_reads {
    connection* c;
    void operator()() noexcept;
  };
  struct stop_all {
    connection* c;
    void operator()() noexcept;
  };
  enum : std::uint8_t { owe_read = 1, owe_multishot = 4 };
  enum : std::uint8_t { remote_stop_reads = 1, remote_stop_all = 2 };
  struct deferred : detail::deferred_call {
    explicit deferred(connection* o) noexcept : deferred_call(&deferred::run), c(o) {}
    connection* c;
    static void run(detail::deferred_call* d, bool run);
  };
  void stop_reads_here() noexcept;
  void stop_all_here() noexcept;
  static task<result<void>> flush_until_sent(connection_handle h);

  // Decode from what is buffered, without I/O: set when that settles it.
  std::optional<result<message_view>> try_read_buffered();
  task<result<message_view>> read_slow();
  detail::write_awaitable queued(result<void> r);

  // ---- receiving ----
  // Why a read must not start (ECANCELED, ETIMEDOUT), or 0.
  int read_refusal() const noexcept;
  void submit_read(buffer_ring* br, std::span<std::byte> room);
  // The finished read's result; a read cancelled by its deadline: -ETIMEDOUT.
  int take_read_result() noexcept;
  // read_message without a coroutine frame: between frames, one recv from
  // the provided buffers (and the queued replies' send beside it). False
  // when that does not apply; read_slow handles everything else.
  bool start_fast_read(detail::read_message_awaitable* aw);
  void fast_read_done();
  void finish_fast_read(detail::read_message_awaitable* aw, result<message_view> r);
  void continue_slow(detail::read_message_awaitable* aw);
  static void on_read_cqe(detail::completion* c, int res, unsigned flags, bool);
  static void on_read_deadline(deadline* d);

  // ---- sending (send_queue.hpp) ----
  // The queue failed: a reader waiting beside its send learns of it now
  // rather than at its idle timeout.
  static void on_send_failed(void* self) noexcept;

  // Never throws (cancel paths are noexcept): without a free SQE the
  // cancellation is owed (`bit`) and sent from the executor's next turn.
  void cancel_slot(io_slot& slot, std::uint8_t bit) noexcept;

  // ---- multishot receiving (connection_options::multishot_recv) ----
  // Arms the recv the waiting reader needs: the multishot one when enabled
  // and reading from the ring (unless it is armed already), else one recv.
  void start_read(buffer_ring* br, std::span<std::byte> room);
  void arm_multishot(buffer_ring* br);
  void cancel_multishot(bool quietly);
  static void on_multishot_cqe(detail::completion* c, int res, unsigned flags, bool);
  void on_multishot(int res, unsigned flags);
  void deliver_read(int res, unsigned flags);
  void hold(std::uint16_t id, std::size_t len);
  // Feeds what arrived while no one was reading into the decoder; true if
  // there was anything. Only when a new read starts: the handler's message
  // points into the decoder until then.
  bool drain_held();
  bool has_held() const noexcept { return ms_slot_ && (ms_slot_->held_n != 0 || !ms_slot_->spill.empty()); }
  bool ms_ended() const noexcept { return ms_slot_ && ms_slot_->ended; }
  // Large reads go straight into the decoder (no copy out of the ring); the
  // multishot recv comes back only after a few small reads in a row, so
  // traffic near the threshold does not cancel and re-arm it all the time.
  void note_read_size(bool large) noexcept {
    last_read_large_ = large;
    small_reads_ = large ? 0 : static_cast<std::uint8_t>(small_reads_ < 255 ? small_reads_ + 1 : 255);
  }
  bool multishot_suits() const noexcept {
    return opts_.multishot_recv && opts_.provided_buffers && small_reads_ >= 4;
  }

  socket sock_;
  connection_options opts_;
  frame_decoder decoder_;
  io_slot read_slot_;
  std::coroutine_handle<> read_waiter_;                // read_slow, waiting on read_slot_
  detail::read_message_awaitable* fast_ = nullptr;     // a fast read waiting on read_slot_
  // Idle (between frames, while a recv waits) or mid-message (from a
  // message's first byte to its last).
  owned_deadline read_deadline_{&connection::on_read_deadline, this};
  send_queue send_;
  const std::stop_token* read_stop_ = nullptr;
  std::optional<std::stop_callback<stop_reads>> read_stop_cb_;
  std::optional<std::stop_callback<stop_all>> stop_cb_;
  deferred deferred_{this};
  std::atomic<std::uint8_t> remote_stop_{0};
  std::uint8_t cancel_owed_ = 0;
  detail::connection_anchor* anchor_ = nullptr;  // made by the first handle()
  bool peer_closed_ = false;
  bool last_read_large_ = false;
  bool skip_ring_once_ = false;   // the ring was empty: next read into our own buffer
  bool message_deadline_ = false; // read_deadline_ is the message's
  bool read_timed_out_ = false;
  bool reading_ = false;          // a read_message is waiting
  bool ms_armed_ = false;         // the multishot recv is in the kernel
  std::uint8_t small_reads_ = 4;  // consecutive small reads (see note_read_size)
  std::unique_ptr<multishot_slot> ms_slot_;
};

}  // namespace ringframe
