#include <ringframe/connection.hpp>

#include <algorithm>
#include <utility>

namespace ringframe {

namespace detail {

bool read_message_awaitable::await_ready() {
  ready_ = c_->try_read_buffered();
  return ready_.has_value();
}

std::coroutine_handle<> read_message_awaitable::await_suspend(std::coroutine_handle<> h) {
  // Only here, when the peer must be waited for, is a coroutine frame made.
  slow_ = c_->read_slow();
  slow_.handle().promise().continuation = h;
  return slow_.handle();
}

result<message_view> read_message_awaitable::await_resume() {
  if (ready_) return std::move(*ready_);
  return slow_.take_result();
}

bool write_awaitable::await_ready() const noexcept {
  return !queued_ || c_->unsent_bytes() < c_->opts_.max_unsent_bytes;
}

std::coroutine_handle<> write_awaitable::await_suspend(std::coroutine_handle<> h) {
  flush_ = c_->flush();
  flush_.handle().promise().continuation = h;
  return flush_.handle();
}

result<void> write_awaitable::await_resume() {
  if (!queued_ || !flush_.valid()) return queued_;
  return flush_.take_result();
}

}  // namespace detail

connection::connection(socket s, connection_options o)
    : sock_(std::move(s)), opts_(o), decoder_(o.limits) {}

std::optional<result<message_view>> connection::try_read_buffered() {
  if (unsent_bytes() >= opts_.max_unsent_bytes) return std::nullopt;  // send first
  message_view v;
  switch (decoder_.next(v)) {
    case frame_decoder::status::message:
      ++messages_in;
      timing_message_ = false;
      return result<message_view>(v);
    case frame_decoder::status::error:
      timing_message_ = false;
      return result<message_view>(make_error_code(decoder_.error().code));
    case frame_decoder::status::need_more:
      break;
  }
  return std::nullopt;
}

task<result<message_view>> connection::read_slow() {
  for (;;) {
    if (unsent_bytes() >= opts_.max_unsent_bytes) {
      result<void> f = co_await flush();
      if (!f) co_return f.error();
    }
    if (std::optional<result<message_view>> r = try_read_buffered()) co_return std::move(*r);
    // Nothing buffered: give the receive buffer back now, before the flush
    // below may wait on a slow peer holding it.
    if (!decoder_.mid_frame()) decoder_.shrink_if_idle();
    // Nothing complete is buffered: send the queued replies before waiting.
    if (!queued_.empty()) {
      result<void> f = co_await flush();
      if (!f) co_return f.error();
    }
    if (peer_closed_)
      co_return make_error_code(decoder_.mid_frame() ? frame_errc::truncated : frame_errc::end_of_stream);

    auto now = std::chrono::steady_clock::now();
    std::chrono::nanoseconds timeout = opts_.idle_timeout;
    if (decoder_.mid_frame()) {
      if (!timing_message_) {
        timing_message_ = true;
        message_started_ = now;
      }
      if (opts_.message_timeout.count() > 0) {
        timeout = message_started_ + opts_.message_timeout - now;
        if (timeout.count() <= 0) co_return std::make_error_code(std::errc::timed_out);
      } else {
        timeout = std::chrono::nanoseconds{0};  // no deadline
      }
    } else {
      decoder_.shrink_if_idle();
    }
    // Between frames, read into the executor's provided buffers: a waiting
    // connection then holds no receive buffer, and the few bytes that
    // arrive are copied into the decoder (which takes its buffer from a
    // per-thread pool and gives it back when idle). Mid-frame, read straight
    // into the decoder, so a large frame is received in place.
    // A connection whose last read was large is busy with large traffic:
    // reading straight into its own buffer spares the copy out of the ring.
    buffer_ring* br = decoder_.mid_frame() || !opts_.provided_buffers || last_read_large_
                          ? nullptr
                          : sock_.get_executor().receive_buffers();
    if (br) {
      result<provided_recv> got = co_await sock_.recv_provided(*br, {.timeout = timeout, .stop = read_stop_});
      if (got || got.error() != std::errc::no_buffer_space) {
        if (!got) co_return got.error();
        if (got->len == 0 || !got->has_buffer) {
          peer_closed_ = true;
          continue;
        }
        if (!timing_message_) {
          timing_message_ = true;
          message_started_ = now;
        }
        decoder_.feed(br->data(got->id, got->len));
        br->recycle(got->id);
        bytes_in += got->len;
        last_read_large_ = got->len >= br->buffer_size() / 2;
        continue;
      }
      sock_.get_executor().count_buffer_ring_empty();  // all in use: read into our own buffer
    }
    std::span<std::byte> room = decoder_.prepare(opts_.read_size);
    // read_stop_ replaces the socket's token for this recv, so it must also
    // be requested by a hard stop (server::stop requests both).
    result<std::size_t> n = co_await sock_.recv(room, {.timeout = timeout, .stop = read_stop_});
    if (!n) co_return n.error();
    if (*n == 0) {
      peer_closed_ = true;
      continue;
    }
    if (!decoder_.mid_frame() && !timing_message_) {
      timing_message_ = true;
      message_started_ = now;
    }
    decoder_.commit(*n);
    bytes_in += *n;
    last_read_large_ = *n >= opts_.read_size / 2;
  }
}

detail::write_awaitable connection::queued(result<void> r) {
  if (r) ++messages_out;
  peak_unsent = std::max(peak_unsent, unsent_bytes());
  return detail::write_awaitable(this, r);
}

detail::write_awaitable connection::write(const message& m) {
  if (write_error_) return detail::write_awaitable(this, write_error_);
  return queued(encode_frame(m, queued_));
}

detail::write_awaitable connection::write(const header_fields& h, std::span<const std::byte> content) {
  if (write_error_) return detail::write_awaitable(this, write_error_);
  return queued(encode_frame(h, content, queued_));
}

detail::write_awaitable connection::write_raw(std::span<const std::byte> frame) {
  if (write_error_) return detail::write_awaitable(this, write_error_);
  queued_.append(reinterpret_cast<const char*>(frame.data()), frame.size());
  return queued({});
}

detail::write_awaitable connection::write_error(std::string_view detail) {
  std::string json = error_reply_json(detail);
  header_fields h{"text/json", "utf-8"};
  return write(h, std::as_bytes(std::span(json.data(), json.size())));
}

task<void> connection::close_gracefully(std::chrono::nanoseconds linger) {
  result<void> f = co_await flush();
  if (!f || peer_closed_ || !sock_.is_open()) co_return;  // nothing more to protect
  result<void> sh = co_await sock_.shutdown(SHUT_WR);
  if (!sh) co_return;
  auto deadline = std::chrono::steady_clock::now() + linger;
  std::byte scratch[4096];
  for (;;) {
    auto left = deadline - std::chrono::steady_clock::now();
    if (left.count() <= 0) co_return;
    result<std::size_t> n = co_await sock_.recv(scratch, {.timeout = left});
    if (!n || *n == 0) co_return;
  }
}

task<result<void>> connection::flush() {
  if (write_error_) co_return write_error_;
  if (flushing_) co_return result<void>{};  // the running flush sends our bytes too
  flushing_ = true;
  while (!queued_.empty()) {
    std::swap(sending_, queued_);
    const auto bytes = std::as_bytes(std::span(sending_.data(), sending_.size()));
    const bool zero_copy = opts_.zero_copy_threshold && sending_.size() >= opts_.zero_copy_threshold;
    result<std::size_t> n = zero_copy ? co_await sock_.send_all_zero_copy(bytes, {.timeout = opts_.write_timeout})
                                      : co_await sock_.send_all(bytes, {.timeout = opts_.write_timeout});
    sending_.clear();
    if (!n) {
      write_error_ = n.error();
      queued_.clear();
      break;
    }
    bytes_out += *n;
  }
  flushing_ = false;
  // A burst of large replies should not pin megabytes to an idle connection.
  if (queued_.capacity() > 4 * opts_.max_unsent_bytes) std::string().swap(queued_);
  if (sending_.capacity() > 4 * opts_.max_unsent_bytes) std::string().swap(sending_);
  if (write_error_) co_return write_error_;
  co_return result<void>{};
}

}  // namespace ringframe
