// send_queue: the sending half of a connection. Bytes are appended to out()
// and handed to the kernel one batch at a time: while a batch is out, what
// is written meanwhile waits and follows as the next batch, so replies leave
// in the order they were written and pipelined replies share system calls.
// Short sends continue from the completion. Bytes that are already in a
// shared receive buffer (append_shared: content a reply echoes or forwards)
// are not copied: the batch goes out as a gather list (sendmsg) that points
// into that buffer, holding a reference until it is sent. Batches at least
// zero_copy_threshold long go out with IORING_OP_SEND_ZC (the kernel then
// holds the batch's pages until its notification). A zero-copy batch the
// kernel took in full counts as sent, as a copied one does once it is in
// the socket's queue: its flight is orphaned with the pages, and the next
// batch goes out without waiting for the peer to take them.
//
// Waiters (flush, a reader that must not return before the replies it owes
// are out) are woken through the executor's ready queue when nothing is left
// to send or the queue fails, never resumed from inside this object.
//
// A failed queue stays failed: error() says why (the kernel's errno,
// ETIMEDOUT for the write deadline, ECANCELED when stopped) and nothing is
// sent again.
//
// The batch in the kernel lives in a heap `flight` (made at the first send)
// with the completion the kernel posts to. When the queue goes away with a
// send in flight, or is stopped while the kernel still holds a zero-copy
// batch's pages, or the kernel took a zero-copy batch, the flight is orphaned (detail/completion.hpp): it keeps
// the bytes the kernel reads and takes the last CQE, so nothing the kernel
// touches is ever freed under it.
#pragma once

#include <ringframe/deadline.hpp>
#include <ringframe/detail/byte_block.hpp>
#include <ringframe/detail/completion.hpp>
#include <ringframe/socket.hpp>

#include <atomic>
#include <chrono>
#include <coroutine>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <system_error>
#include <vector>

#include <sys/socket.h>
#include <sys/uio.h>

namespace ringframe {

namespace detail {
// A coroutine waiting for a send queue to empty (intrusive, in its frame;
// woken through executor::wake, which cannot fail).
using send_waiter = wake_node;
}  // namespace detail

class send_queue {
 public:
  enum class state : std::uint8_t {
    idle,       // nothing in the kernel
    sending,    // a send of the current batch is in the kernel
    releasing,  // SEND_ZC: part of the batch is sent, its pages not yet released
    failed,     // error() says why; nothing is sent again
  };
  // Called on failure (`failed`), and when everything queued has been sent
  // (not `failed`), before waiters are woken: a connection cancels the recv
  // its reader waits on beside the send on failure, and starts that recv's
  // idle timeout once the replies are out.
  using event_hook = void (*)(void* ctx, bool failed) noexcept;

  struct options {
    std::chrono::nanoseconds write_timeout{0};  // 0: none; for each batch
    std::size_t zero_copy_threshold = 0;        // 0: never
    std::size_t keep_capacity = 4 << 20;        // larger buffers are freed when idle
  };

  // `bytes_out` (optional) is added to as bytes leave.
  send_queue(socket& s, options o, std::uint64_t* bytes_out = nullptr) noexcept;
  send_queue(const send_queue&) = delete;
  send_queue& operator=(const send_queue&) = delete;
  // Waiters still queued are posted (they must check that their owner is
  // still there); a send in flight is cancelled and left to its orphan.
  ~send_queue();

  std::string& out() noexcept { return queued_; }  // append replies here
  // Append `bytes`, which lie in `block`, by reference: they go out from
  // there, and the block is held until they are sent. False (nothing
  // appended) when too many such pieces wait already: copy them instead.
  // Throws std::bad_alloc.
  bool append_shared(detail::block_ref block, std::span<const std::byte> bytes);
  // Pipelined echoes lie back to back in the receive buffer: bytes that
  // continue the last piece, which lies in `block`, with nothing queued
  // after it, and end inside `block`, extend it (one gather entry for a
  // whole batch). False when they do not. Per message: no reference taken
  // or dropped.
  inline bool extend_last(const detail::byte_block* block, std::span<const std::byte> bytes) noexcept;
  // Bytes queued and not yet in the socket. The part of a zero-copy batch
  // the kernel took (`releasing`: it holds the pages until the peer has
  // them) is in the socket, as a copied batch's bytes are once sent.
  std::size_t unsent() const noexcept {
    if (!f_) return queued_.size();
    std::size_t n = queued_.size() + f_->pending_bytes;
    if (state_ == state::sending) n += f_->total - f_->sent;
    else if (state_ == state::releasing) n += f_->total - f_->sent - taken_of_releasing();
    return n;
  }
  // The most unsent() has been: it grows only as bytes are appended, and
  // shrinks only as a completion, a send made at once or a failure takes
  // them, so it is noted before each of those (per batch, not per write).
  std::size_t peak_unsent() const noexcept {
    const std::size_t u = unsent();
    return u > peak_ ? u : peak_;
  }
  state current() const noexcept { return state_; }
  bool busy() const noexcept { return state_ == state::sending || state_ == state::releasing; }
  std::error_code error() const noexcept { return error_ ? errno_code(error_) : std::error_code{}; }
  // error() as a bool, without making an error_code (whose default
  // constructor calls std::system_category(), out of line: per message).
  bool failed() const noexcept { return error_ != 0; }
  void on_event(event_hook h, void* ctx) noexcept {
    hook_ = h;
    hook_ctx_ = ctx;
  }

  // Hand what is queued to the kernel, unless a batch is out already (it
  // will follow) or nothing is queued. May fail at once (see error()).
  void start();
  // The write deadline of the batch in flight starts again: the peer
  // answered meanwhile, so it is alive and taking the batch at the pace it
  // answers (a connection that reads while it sends got a reply). Nothing
  // when no deadline is running (none set, idle, fired).
  void restart_deadline() noexcept;
  // Queue `w` to be posted when nothing is left to send, or on failure.
  void wait(detail::send_waiter* w) noexcept {
    w->next = waiters_;
    waiters_ = w;
  }
  // Stop: the send in flight is cancelled, and a zero-copy batch whose pages
  // the kernel still holds is left to its orphan (the queue fails with
  // ECANCELED now, rather than when a peer that may never read takes it).
  // It stays: a send the kernel completed before the cancellation reached
  // it is not continued. Never throws: without a free SQE the cancellation
  // is sent from the executor's next turn. Any thread.
  void cancel() noexcept;

 private:
  // Also told when the executor stops, while the kernel holds a zero-copy
  // batch's pages (an executor that stops ends that wait: cancel_here(true)).
  // Bytes appended by reference, logically inserted at offset `at` of the
  // string they were appended after.
  struct piece {
    std::size_t at;
    const std::byte* data;
    std::size_t len;
    detail::block_ref block;
  };
  static constexpr std::size_t max_pieces = 64;
  struct flight : detail::orphan, detail::stop_listener {
    send_queue* q;  // null once orphaned
    executor* ex;
    std::string sending;  // the batch in the kernel
    std::vector<piece> sending_pieces;  // ... and its pieces by reference
    std::size_t total = 0;  // the batch's bytes, pieces included
    std::size_t sent = 0;
    int res = 0;  // SEND_ZC: the result, kept until the notification
    // Pieces appended since the batch in the kernel was formed (they go
    // with queued_ in the next one). Here rather than in the queue: an idle
    // connection's memory counts.
    std::vector<piece> pending;
    std::size_t pending_bytes = 0;
    // The gather list of a batch with pieces, as the kernel reads it.
    std::vector<iovec> iov;
    msghdr msg{};
  };
  void note_peak() noexcept { peak_ = peak_unsent(); }
  std::size_t taken_of_releasing() const noexcept { return f_->res > 0 ? static_cast<std::size_t>(f_->res) : 0; }
  std::unique_ptr<flight> new_flight();
  void make_flight();
  bool hand_over_taken_batch() noexcept;
  struct timer : deadline {
    explicit timer(send_queue* owner) noexcept : deadline(&send_queue::on_deadline), q(owner) {}
    send_queue* q;
  };
  // A cancellation asked for on another thread, or that found no SQE.
  struct deferred_cancel : detail::deferred_call {
    explicit deferred_cancel(send_queue* owner) noexcept : deferred_call(&deferred_cancel::run), q(owner) {}
    send_queue* q;
    static void run(detail::deferred_call* d, bool run);
  };
  void cancel_here(bool stopping) noexcept;
  void orphan_flight() noexcept;
  void orphan_releasing() noexcept;
  int refusal() const noexcept;
  void submit();
  void progress(int res);
  void progress_or_throw(int res);
  void fail(int err);
  void wake() noexcept;
  static void on_cqe(detail::completion* c, int res, unsigned flags, bool);
  static void on_deadline(deadline* d);

  socket& sock_;
  options opts_;
  std::uint64_t* bytes_out_;
  std::string queued_;  // written, not yet handed to a send
  std::unique_ptr<flight> f_;
  std::size_t peak_ = 0;  // see peak_unsent()
  timer deadline_{this};
  deferred_cancel deferred_{this};
  detail::send_waiter* waiters_ = nullptr;
  int error_ = 0;  // errno once failed
  event_hook hook_ = nullptr;
  void* hook_ctx_ = nullptr;
  state state_ = state::idle;
  bool zero_copy_ = false;    // the batch in the kernel uses SEND_ZC
  bool timed_out_ = false;    // the write deadline fired during this batch
  // cancel() was called (any thread). Kept, as a stop token's request is:
  // a send the kernel completed before the cancellation reached it must not
  // carry on, nor wait for pages a peer that does not read never lets go.
  std::atomic<bool> cancelled_{false};
};

inline bool send_queue::extend_last(const detail::byte_block* block, std::span<const std::byte> bytes) noexcept {
  if (!block || !f_ || f_->pending.empty()) return false;  // (a null block: append_shared misused)
  piece& last = f_->pending.back();
  if (last.block.get() != block || last.at != queued_.size() || last.data + last.len != bytes.data()) return false;
  // They start where the piece ends, inside the block: do they end in it?
  if (bytes.size() > block->capacity() - static_cast<std::size_t>(bytes.data() - block->data())) return false;
  last.len += bytes.size();
  f_->pending_bytes += bytes.size();
  return true;
}

}  // namespace ringframe
