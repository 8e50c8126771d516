// The I/O-free codec of the framed protocol. Bytes in, messages out; messages
// in, bytes out. It knows nothing of sockets, so it is tested, fuzzed and
// benchmarked alone; connection.hpp is only plumbing around it.
#pragma once

#include <ringframe/detail/byte_block.hpp>
#include <ringframe/message.hpp>
#include <ringframe/result.hpp>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <system_error>

namespace simdjson::dom {
class parser;
}

namespace ringframe {

// Why a frame was rejected (docs/protocol.md section 6), or why a stream ended.
enum class frame_errc {
  header_length_zero = 1,    // prefix says 0: no header can be empty
  header_not_utf8,           // the JSON header is not valid UTF-8
  header_not_json,           // ... is not valid JSON
  header_not_object,         // ... is valid JSON but not an object
  missing_key,               // a required key is absent
  bad_key_type,              // byteorder / content-type / content-encoding not a string
  bad_content_length,        // not a non-negative integer
  content_too_large,         // content-length above the configured limit
  content_not_utf8,          // text/json content that is not valid UTF-8
  content_not_json,          // text/json content that is not valid JSON
  unsupported_encoding,      // text/json in an encoding other than UTF-8
  header_too_large,          // encoder: the header would exceed 65,535 bytes
  truncated,                 // the peer closed in the middle of a frame
  end_of_stream,             // the peer closed between frames (not a fault)
};
const std::error_category& frame_category() noexcept;
inline std::error_code make_error_code(frame_errc e) noexcept { return {static_cast<int>(e), frame_category()}; }

// A rejected frame: what was wrong, precisely, and whether the stream is
// still in sync (the frame's end is known and was skipped, so the next frame
// can be read) or not (the connection must be closed).
struct frame_error {
  frame_errc code{};
  bool in_sync = false;
  std::string detail;
};

struct frame_limits {
  // The ceiling on max_content_length, whatever is configured: a decoder
  // clamps a larger limit (e.g. `--max-content 18446744073709551615`) to
  // it, and refuses a larger content-length as content_too_large. A frame
  // is held whole in one buffer (prefix + header <= 65,537 bytes, content,
  // read slack, simdjson padding), so the content must be allocatable in one
  // piece; 1 GiB keeps every sum of those lengths far from overflow (even
  // with a 32-bit size_t), stays below simdjson's 4 GiB document ceiling so
  // text/json content can always be validated, and is 64 times the default.
  // Larger payloads belong in several messages.
  static constexpr std::size_t hard_max_content_length = std::size_t{1} << 30;

  // The largest content accepted; checked against content-length before
  // any memory is reserved for the content. Clamped to
  // hard_max_content_length by the decoder (frame_decoder::limits() shows
  // the effective value).
  std::size_t max_content_length = 16 * 1024 * 1024;
  // Parse text/json content to check it is JSON (docs/protocol.md section 6). A server that
  // only forwards bytes may turn this off.
  bool validate_json_content = true;
};

// ---- encoding ----

struct header_fields {
  std::string_view content_type;
  std::string_view content_encoding;
  std::string_view byteorder = native_byteorder();
  const header_extras* extra = nullptr;
};

// Appends one frame to `out`: prefix, compact JSON header (every string
// escaped as JSON requires), content. Fails without touching `out` when a
// header string is not valid UTF-8 (header_not_utf8), the header would
// exceed 65,535 bytes (header_too_large), or the frame would not fit in a
// std::string (content_too_large: its size is checked before the content
// is read, with no sum allowed to wrap). Throws std::bad_alloc, with `out`
// as it was.
result<void> encode_frame(const header_fields& h, std::span<const std::byte> content, std::string& out);
result<void> encode_frame(const message& m, std::string& out);
// Appends only the prefix and header of such a frame, for a content of
// `content_length` bytes that the caller sends right after them. Fails as
// encode_frame does.
result<void> encode_frame_header(const header_fields& h, std::size_t content_length, std::string& out);

// Appends `s` to `out` as a JSON string literal, quotes included.
void append_json_string(std::string& out, std::string_view s);

// ---- decoding ----

// An incremental decoder. Feed it bytes in chunks of any size; it yields
// complete messages in order. Bytes can arrive by copy (feed) or be received
// straight into its buffer (prepare, then commit): the connection does the
// latter, so content is handed out without a copy.
//
// Each byte is examined a bounded number of times whatever the chunking: the
// decoder waits until a whole header is buffered before parsing it once, and
// until the whole content is buffered before handing it out.
class frame_decoder {
 public:
  enum class status { message, need_more, error };

  // Without a parser of its own, headers and text/json content are parsed
  // with the calling thread's (one per thread, shared by its decoders), so
  // a decoder may be used on a thread other than the one that made it.
  // A parser given here is the caller's to keep from two threads at once.
  explicit frame_decoder(frame_limits limits = {}, simdjson::dom::parser* parser = nullptr);
  ~frame_decoder();
  frame_decoder(frame_decoder&&) noexcept;
  frame_decoder& operator=(frame_decoder&&) noexcept;

  // Writable space at the end of the buffer, at least `min_free` bytes (more
  // when the frame being read needs it). Throws std::length_error, changing
  // nothing, when the buffered bytes plus `min_free` could not be allocated
  // as one buffer (their sum would exceed PTRDIFF_MAX); std::bad_alloc as
  // any allocation may.
  //
  // The span reaches at most `min_free` bytes past the end of the frame in
  // progress (when its length is known; else it is `min_free` long): one
  // read finishes a frame and brings in the next one's prefix and header,
  // but never more than `min_free` bytes of a frame are left behind to be
  // moved when its buffer fills (docs/io-path.md, "Large frames").
  std::span<std::byte> prepare(std::size_t min_free = 16 * 1024) {
    // Fast path (tiny reads): room enough, and the frame in progress fits.
    if (!consume_on_next_ && need_ && cap_ - end_ >= min_free && begin_ + need_ <= cap_) {
      const std::size_t missing = begin_ + need_ > end_ ? begin_ + need_ - end_ : 0;
      prepared_ = room_for(missing, min_free);
      return {buf_->data() + end_, prepared_};
    }
    return prepare_slow(min_free);
  }
  // Room for all of the rest of the frame in progress and `past` bytes
  // beyond its end, whatever it takes (prepare() gives less when the
  // buffer is short of it): a read that may bring the next frame whole
  // then leaves it in place, with nothing to move. Throws as prepare() does.
  std::span<std::byte> prepare_past_frame(std::size_t past);
  // `n` bytes were written into the span prepare() returned. Precondition:
  // n <= that span's size. A larger n means the caller wrote past the buffer
  // (the kernel never returns more than it was given); it is checked in
  // every build and aborts, rather than count bytes that were never received.
  void commit(std::size_t n) noexcept {
    if (n > prepared_) [[unlikely]]
      commit_overrun(n);
    end_ += n;
    prepared_ = 0;
  }
  // Copy bytes in (like prepare + memcpy + commit, but the buffer grows by
  // what is copied, never to the declared length of the frame in progress:
  // see receive_budget.hpp). Throws as prepare() does, before reading
  // `bytes`.
  void feed(std::span<const std::byte> bytes);
  void feed(std::string_view bytes) { feed(std::as_bytes(std::span(bytes.data(), bytes.size()))); }
  // Like feed(), without the copy: `n` bytes received at the start of
  // `block` (a receive buffer handed over whole: buffer_ring::lend) become
  // the buffer. Only when nothing is buffered (can_adopt()); the buffer
  // held so far goes back (a send that shares it keeps it).
  bool can_adopt() const noexcept { return end_ - begin_ == consume_on_next_ && !have_header_; }
  void adopt(detail::block_ref block, std::size_t n) noexcept;
  // Mid-frame, after adopt(): the bytes of the frame in progress move to
  // the smallest block of the pool that holds them and `min_free` more (and
  // the rest of the frame too, when `to_frame_end`) if that is smaller
  // than the adopted one, so a connection waiting for the rest of its
  // frame holds what a copy would have left it, not 64 KiB. Nothing
  // changes when no block can be had.
  void trim_partial(std::size_t min_free, bool to_frame_end) noexcept {
    if (cap_ > detail::byte_block::smallest_class) trim_partial_slow(min_free, to_frame_end);
  }

  // The next complete message, or need_more, or an error. A message's views
  // stay valid until the next call to next(), prepare() or feed(). After an
  // error that is in sync the bad frame has been skipped and next() may be
  // called again; after one that is not, every call returns that error.
  status next(message_view& out) {
    // Fast path: fewer bytes buffered than the frame in progress needs before
    // anything can happen. O(1), so feeding one byte at a time stays linear.
    if (!consume_on_next_ && end_ - begin_ < need_) return status::need_more;
    return next_repeat(out);
  }
  const frame_error& error() const noexcept { return error_; }

  // Bytes received and not yet handed out.
  std::size_t buffered() const noexcept { return end_ - begin_; }
  // True when a frame has started (some of its bytes are buffered).
  bool mid_frame() const noexcept { return buffered() > 0; }
  // The length of the frame being read (prefix, header, content), once its
  // header has been parsed; 0 before.
  std::size_t frame_length() const noexcept { return have_header_ ? frame_len_ : 0; }
  std::size_t capacity() const noexcept { return cap_; }
  // Give the buffer back when nothing is buffered (idle connections): to a
  // per-thread pool (16 KiB ones, and larger ones of a size class up to
  // 4 MiB, 32 MiB of those at most), from which the next decoder on the
  // thread takes it.
  void shrink_if_idle() noexcept;
  // The message next() handed out last is done with (copied, say): its
  // bytes are dropped now instead of at the next call, and the buffer goes
  // back as shrink_if_idle() gives it when nothing else is buffered. Its
  // views are invalid from here on.
  void drop_message() noexcept {
    begin_ += consume_on_next_;
    consume_on_next_ = 0;
    shrink_if_idle();
  }
  const frame_limits& limits() const noexcept { return limits_; }

  // Sharing received bytes (a reply that echoes or forwards content sends
  // it from the receive buffer: connection::write_raw).
  // True when `bytes` lie in this decoder's buffer.
  bool holds(std::span<const std::byte> bytes) const noexcept {
    return buf_ && buf_->contains(bytes.data(), bytes.size());
  }
  // A reference to the buffer: while it is held, the decoder never writes
  // over, moves or reuses what it has received so far (it takes another
  // buffer instead), so spans that were handed out stay valid and unchanged
  // for the holder.
  detail::block_ref share() const noexcept { return buf_; }
  // The buffer itself, to compare with one shared before (no reference).
  const detail::byte_block* block() const noexcept { return buf_.get(); }

 private:
  // next() for the common case, with little to save and restore: a whole
  // frame whose header repeats the cached one, content not to be checked.
  // Anything else goes on to next_slow.
  status next_repeat(message_view& out);
  status next_slow(message_view& out);
  std::span<std::byte> prepare_slow(std::size_t min_free);
  void trim_partial_slow(std::size_t min_free, bool to_frame_end) noexcept;
  status fail(frame_errc code, bool in_sync, std::string detail);
  status parse_header(const std::byte* header, std::size_t len);
  bool validate_content(const std::byte* content, std::size_t len);
  void reserve_free(std::size_t free_needed);
  [[noreturn]] void commit_overrun(std::size_t n) const noexcept;
  // The room prepare() gives once `missing` bytes of the frame are still to
  // come (and at least min_free are free).
  std::size_t room_for(std::size_t missing, std::size_t min_free) const noexcept {
    const std::size_t free = cap_ - end_, want = missing + min_free;
    return want < free ? want : free;
  }

  frame_limits limits_;
  simdjson::dom::parser* parser_;  // null: the calling thread's (a decoder may move between threads)
  // From the per-thread pool, and back to it when the last holder lets go.
  detail::block_ref buf_;
  std::size_t cap_ = 0;    // usable bytes (buf_'s capacity); zeroed padding follows
  std::size_t begin_ = 0;  // first byte not yet handed out
  std::size_t end_ = 0;    // one past the last byte received
  std::size_t prepared_ = 0;  // the room the last prepare() gave, until commit()
  std::size_t consume_on_next_ = 0;  // the last message's size, dropped lazily
  // Bytes (from begin_) the frame in progress needs before next() can make
  // progress; 0 when unknown. Set only when next() returned need_more.
  std::size_t need_ = 0;

  // The frame being read: known once its header was parsed.
  std::size_t header_len_ = 0;
  std::size_t frame_len_ = 0;
  // The header's string fields, copied out of the JSON parser (whose memory
  // the next parse reuses); their capacity is reused, so steady state
  // decoding allocates nothing.
  // byteorder, content-type and content-encoding, back to back (one string
  // instead of three: an idle connection's memory counts), ending at
  // field_end_[0], [1] and [2].
  std::string fields_;
  std::uint32_t field_end_[3] = {0, 0, 0};
  // The flags, together: each alone between wider members costs 7 bytes.
  bool have_header_ = false;
  bool header_ok_ = true;  // false: in-sync error to report once the frame is in
  bool is_text_json_ = false;
  bool cache_valid_ = false;  // cached_header_ (below) holds a header
  bool broken_ = false;
  std::string_view field(int i) const noexcept {
    const std::size_t b = i ? field_end_[i - 1] : 0;
    return {fields_.data() + b, field_end_[i] - b};
  }
  // The last header that parsed cleanly, byte for byte, with its
  // content-length. Peers repeat their header (same type, encoding and
  // length), and identical bytes parse identically: a repeat costs a memcmp
  // instead of a JSON parse. The fields above still hold its values.
  std::string cached_header_;
  std::size_t cached_content_length_ = 0;
  frame_error error_;
};

// The JSON text of an error reply: {"error": "<detail>"}.
std::string error_reply_json(std::string_view detail);

}  // namespace ringframe

template <>
struct std::is_error_code_enum<ringframe::frame_errc> : std::true_type {};
