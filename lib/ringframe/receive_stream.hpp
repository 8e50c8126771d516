// receive_stream: the receiving half of a connection. It reads from one
// socket into a frame_decoder (the sink), one read at a time:
//
// * between frames, and while reads are small, from the executor's provided
//   buffer ring (a waiting connection holds no receive buffer; the bytes are
//   copied into the decoder when they arrive);
// * mid-frame or once reads are large, straight into the decoder's buffer
//   (a large frame is received in place);
// * with options::multishot, one multishot recv stays armed on the ring.
//   Bytes that arrive while nobody reads are held (up to 4 slices of ring
//   buffers, then a spill buffer) until the next read: the message the
//   reader holds points into the decoder, so they cannot be fed to it before.
//
// Whatever the ring's features (incremental consumption, bundles: see
// buffer_ring.hpp), every completion that names a ring buffer goes through
// buffer_ring::consume(), which says where its bytes are; reads from the
// ring ask for bundles, which the ring grants or not.
//
// A read's outcome: bytes fed to the sink (> 0), 0 (the peer closed),
// -EAGAIN (nothing yet: ask again), or -errno: ETIMEDOUT when the read
// deadline fired, ECANCELED when stopped, the socket's errno otherwise.
//
// At most one recv is in the kernel (the state says which). A stop may be
// requested from any thread; it is carried out on the executor's.
//
// Before reading the rest of a frame longer than one read, the stream
// reserves the frame's length from its thread's receive_budget; a frame that
// does not fit waits there (state `budget`, nothing in the kernel), and is
// cancelled by a stop or the read deadline like a recv.
#pragma once

#include <ringframe/buffer_ring.hpp>
#include <ringframe/deadline.hpp>
#include <ringframe/detail/completion.hpp>
#include <ringframe/detail/deferred_call.hpp>
#include <ringframe/frame.hpp>
#include <ringframe/receive_budget.hpp>
#include <ringframe/socket.hpp>

#include <array>
#include <chrono>
#include <cstdint>
#include <memory>
#include <stop_token>
#include <string>

namespace ringframe {

class receive_stream {
 public:
  enum class state : std::uint8_t {
    idle,       // nothing in the kernel
    receiving,  // one recv in the kernel
    multishot,  // the multishot recv is armed
    ending,     // the multishot recv was cancelled; its last CQE is not in yet
    budget,     // waiting for room in the thread's receive_budget
  };
  struct options {
    bool provided_buffers = true;
    bool multishot = false;
    std::size_t read_size = 16 * 1024;  // direct reads
    // The limit its frames are admitted against in the thread's
    // receive_budget (0: frames reserve nothing).
    std::size_t budget = receive_budget::default_limit;
  };
  // A read the stream was asked for (start() returned true) has an outcome.
  using done_fn = void (*)(void* ctx);

  receive_stream(socket& s, frame_decoder& sink, options o, done_fn done, void* ctx,
                 std::uint64_t* bytes_in = nullptr) noexcept;
  receive_stream(const receive_stream&) = delete;
  receive_stream& operator=(const receive_stream&) = delete;
  // A multishot recv still armed is left behind to take its last CQE.
  // Precondition: no single recv in the kernel (nobody is reading).
  ~receive_stream();

  state current() const noexcept { return state_; }

  // Start a read. False when its outcome is known at once (held bytes were
  // fed, an end came in while nobody read, a deadline or stop): outcome()
  // has it. True when the reader waits: done(ctx) follows.
  bool start(bool between_frames);
  // Can a reader between frames wait for a read right now, with nothing
  // to report first? (The fast path of connection::read_message.)
  bool can_wait_between_frames();
  // The outcome of the last read (see the header comment). Call it once.
  int outcome() noexcept;

  // Feed what the multishot recv held into the sink; true if there was any.
  // Inline: every read_message asks, and the answer is nearly always no.
  bool drain_held() { return has_held() && drain_held_now(); }
  bool has_held() const noexcept { return ms_ && (ms_->held_n != 0 || !ms_->spill.empty()); }

  // The read deadline: when it fires, the read in flight is cancelled and
  // reads fail with ETIMEDOUT until forgive_timeout() (a message that came
  // in whole after all) or data wins the race.
  void arm_deadline(std::chrono::nanoseconds d) { timer_.arm(sock_.get_executor(), d); }
  void cancel_deadline() noexcept { timer_.cancel(); }
  // False once it fired (or was never armed, or was cancelled).
  bool deadline_armed() const noexcept { return timer_.armed(); }
  void forgive_timeout() noexcept { timed_out_ = false; }

  // Bytes reserved from the thread's budget for the frame being read.
  std::size_t reserved() const noexcept { return reserved_; }
  // The frame they were reserved for is done with: give them back.
  void release_budget() noexcept {
    if (reserved_) receive_budget::this_thread().release(std::exchange(reserved_, 0));
  }

  // Reads stop when `t` (besides the socket's own token) is requested.
  void set_stop(const std::stop_token* t) noexcept { stop_ = t; }
  const std::stop_token* read_stop() const noexcept { return stop_; }
  // Cancel the read in flight; any thread (the rest is done on the
  // executor's). Reads from now on see the stop through refusal().
  void stop() noexcept;
  // Why a read must not start: ETIMEDOUT, ECANCELED, or 0.
  int refusal() const noexcept;

 private:
  bool drain_held_now();  // drain_held() once has_held()
  struct slot : detail::completion {
    receive_stream* owner = nullptr;
  };
  static constexpr std::size_t max_held = 4;
  // The multishot recv's completion and state live on the heap, made only
  // for streams that use it (an idle connection's memory counts). A stream
  // that goes away while one is armed leaves it behind, ownerless, to take
  // the kernel's last CQE (and give back its buffer) after the cancellation,
  // as an orphan of the executor (freed with it if that CQE never comes).
  struct multishot_slot : detail::orphan {
    receive_stream* owner = nullptr;
    struct retry : detail::deferred_call {
      explicit retry(multishot_slot* s) noexcept : deferred_call(&retry::run), slot(s) {}
      multishot_slot* slot;
      executor* ex = nullptr;
      static void run(detail::deferred_call* d, bool run);
    } leftover_cancel{this};
    buffer_ring* br = nullptr;
    int fd = -1;  // once left behind: the socket's, for the cancellation
    bool cancel_sent = false;
    bool ended = false;  // it ended (end_res) with no reader waiting
    bool lost = false;   // bytes could not be kept (no memory for the spill): ends with ENOMEM
    int end_res = 0;
    std::uint8_t held_n = 0;
    std::array<buffer_ring::slice, max_held> held{};
    std::string spill;  // what arrived once `held` was full
  };
  struct timer : deadline {
    explicit timer(receive_stream* s) noexcept : deadline(&receive_stream::on_deadline), owner(s) {}
    receive_stream* owner;
  };
  // A cancellation asked for on another thread, or that found no SQE.
  struct deferred_cancel : detail::deferred_call {
    explicit deferred_cancel(receive_stream* s) noexcept : deferred_call(&deferred_cancel::run), owner(s) {}
    receive_stream* owner;
    static void run(detail::deferred_call* d, bool run);
  };

  // A frame waiting for room in the budget (made when one first waits).
  // Nothing is in the kernel meanwhile, so an executor's stop (which
  // cancels what is) tells it as a stop_listener.
  struct budget_wait : detail::budget_waiter, detail::stop_listener {
    explicit budget_wait(receive_stream* s) noexcept : budget_waiter(&budget_wait::run), owner(s) {
      detail::stop_listener::fn = [](detail::stop_listener* l) noexcept {
        static_cast<budget_wait*>(l)->owner->cancel_in_flight();
      };
    }
    receive_stream* owner;
    bool cancelled = false;
    static void run(detail::deferred_call* d, bool run);
  };
  // Reserve for a frame of `want` bytes; false: it waits (state budget).
  bool reserve_or_wait(std::size_t want);
  void on_budget();

  void start_read(buffer_ring* br, std::span<std::byte> room);
  void submit(buffer_ring* br, std::span<std::byte> room);
  void arm_multishot(buffer_ring* br);
  void cancel_in_flight() noexcept;
  void mark_lost() noexcept;
  void deliver(int res, unsigned flags);
  void hold(unsigned flags, int res);
  void on_multishot(int res, unsigned flags);
  static void on_cqe(detail::completion* c, int res, unsigned flags, bool);
  static void on_multishot_cqe(detail::completion* c, int res, unsigned flags, bool);
  static void on_deadline(deadline* d);
  // Large reads go straight into the decoder (no copy out of the ring); the
  // multishot recv comes back only after a few small reads in a row, so
  // traffic near the threshold does not cancel and re-arm it all the time.
  void note_read_size(bool large) noexcept {
    last_read_large_ = large;
    small_reads_ = large ? 0 : static_cast<std::uint8_t>(small_reads_ < 255 ? small_reads_ + 1 : 255);
  }
  bool multishot_suits() const noexcept { return opts_.multishot && opts_.provided_buffers && small_reads_ >= 4; }
  // Direct reads ask for read_size, doubled up to 8 times as much while
  // reads bring at least what they asked for (bulk traffic: fewer, larger
  // reads, whole frames per read, no partial frame moved at each buffer's
  // end), halved again while they bring less than a quarter of it (a
  // connection of small messages keeps small buffers). docs/io-path.md.
  // Only for frames of at most two base reads: a longer frame is read in
  // large reads already (its rest), and a step past its end, or at the
  // next one's start, would only leave a larger partial frame to move and
  // larger buffers per connection (with 128 KiB: 20 x 1 x 1 MiB at 0.64x
  // the ceiling and 1.64x its CPU per message, 100 x 2 x 64 KiB at 0.69x
  // and 2.34x in the grid; 1.46x the CPU at 20 x 1 x 1 MiB with the step
  // kept only at frame starts).
  static constexpr std::uint8_t max_read_shift = 3;
  // Past the end of a longer frame a read reaches only this far: the next
  // frame's prefix and header, so its rest is read in place by the next
  // recv and at most this much is moved when that rest does not fit the
  // buffer (16 KiB were moved per frame with the base step).
  static constexpr std::size_t large_frame_tail = 1024;
  // At the start of a frame that follows a longer one, a read asks for as
  // much as that frame took (twice as much on a busy thread: pair_frames)
  // and its tail, when that frame is within the largest step: a peer that
  // sends large frames one at a time (depth 1) then has each received by
  // one recv, in place, instead of a base step that the header then shows
  // too small (a second recv, and the step's bytes moved
  // into a buffer the frame's size). Past the largest step (1 MiB frames)
  // the base step stays: a larger first read would only be moved.
  // Frames just longer than a base read (a 16 KiB content's prefix and
  // header past it) are guessed too, but never below the grown step:
  // pipelined ones keep their large reads.
  std::size_t read_step() const noexcept {
    const std::size_t len = sink_.frame_length();
    const std::size_t step = opts_.read_size << read_shift_;
    if (len > 2 * opts_.read_size) return std::min(opts_.read_size, large_frame_tail);
    if (len == 0 && last_large_frame_ && last_large_frame_ + large_frame_tail <= opts_.read_size << max_read_shift)
      return std::max<std::size_t>((pair_frames() ? 2 : 1) * std::size_t{last_large_frame_} + large_frame_tail, step);
    return step;
  }
  // Read pipelined large frames two at a time? Only while the thread is
  // busy (its last wait brought more than one connection's recv and send),
  // when fewer, larger reads and sends leave more of it for the others. A
  // lone connection keeps one frame per read: two would put it in lock
  // step with its peer (two frames in, two echoes out, then two more in),
  // where one frame per read lets the peer take the first echo while the
  // second frame is read (0.85-0.94x at 1 x 2 x 64 KiB with pairs always).
  static constexpr std::size_t busy_turn = 2;
  bool pair_frames() const noexcept { return sock_.get_executor().turn_completions() > busy_turn; }
  // The room of a direct read. On a busy thread (pair_frames), the rest of
  // a longer frame (up to the largest step) gets room for the next frame
  // too, guessed as long as this one, and its tail, as the read at a frame's
  // start after such a frame asks for two (read_step): pipelined frames
  // then come two per recv, in place (the next one lies whole behind this
  // one, nothing to move), and their echoes leave in one send. Longer
  // frames keep the base step past their end (a buffer of two 1 MiB frames
  // per connection would only add memory).
  std::span<std::byte> prepare_read() {
    const std::size_t len = sink_.frame_length();
    if (len > 2 * opts_.read_size && len + large_frame_tail <= opts_.read_size << max_read_shift && pair_frames())
      return sink_.prepare_past_frame(len + large_frame_tail);
    return sink_.prepare(read_step());
  }
  void note_direct_read(std::size_t n) noexcept {
    const std::size_t step = opts_.read_size << read_shift_;
    const std::size_t len = sink_.frame_length();
    if (len > 2 * opts_.read_size) {  // large frames: the base step, also at the next one's start
      read_shift_ = 0;
      last_large_frame_ = static_cast<std::uint32_t>(std::min<std::size_t>(len, UINT32_MAX));
      return;
    }
    if (len > opts_.read_size) last_large_frame_ = static_cast<std::uint32_t>(len);  // the rest of one
    else if (n < opts_.read_size / 2) last_large_frame_ = 0;                         // small traffic again
    if (n >= step && read_shift_ < max_read_shift) ++read_shift_;
    else if (n < step / 4 && read_shift_ > 0) --read_shift_;
  }

  socket& sock_;
  frame_decoder& sink_;
  options opts_;
  done_fn done_;
  void* ctx_;
  std::uint64_t* bytes_in_;
  slot slot_;
  std::unique_ptr<multishot_slot> ms_;
  std::unique_ptr<budget_wait> bw_;
  std::size_t reserved_ = 0;
  timer timer_{this};
  deferred_cancel deferred_{this};
  const std::stop_token* stop_ = nullptr;
  int res_ = 0;
  unsigned flags_ = 0;
  bool direct_ = false;  // the read in flight goes into the sink's buffer
  state state_ = state::idle;
  bool waiting_ = false;          // a reader waits for done()
  bool timed_out_ = false;        // the deadline fired
  bool last_read_large_ = false;
  bool skip_ring_once_ = false;   // the ring was empty: the next read into the sink
  bool lent_ = false;             // the last read's ring buffer was lent to the sink (trim_partial)
  bool lost_ = false;             // received bytes could not be kept: every read fails with ENOMEM
  std::uint8_t small_reads_ = 4;  // consecutive small reads (see note_read_size)
  std::uint8_t read_shift_ = 0;   // see note_direct_read
  // The length of the last frame longer than read_size (read_step), while
  // such frames come;
  // 32 bits, in the padding (an idle connection's bytes count).
  std::uint32_t last_large_frame_ = 0;
};

}  // namespace ringframe
