#include <ringframe/frame.hpp>
#include <ringframe/json.hpp>

#include <bit>

#include <simdjson.h>

#include <algorithm>
#include <atomic>
#include <cassert>
#include <charconv>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <vector>

namespace ringframe {

namespace {

class frame_category_impl : public std::error_category {
 public:
  const char* name() const noexcept override { return "ringframe.frame"; }
  std::string message(int ev) const override {
    switch (static_cast<frame_errc>(ev)) {
      case frame_errc::header_length_zero: return "header length is 0";
      case frame_errc::header_not_utf8: return "JSON header is not valid UTF-8";
      case frame_errc::header_not_json: return "JSON header is not valid JSON";
      case frame_errc::header_not_object: return "JSON header is not an object";
      case frame_errc::missing_key: return "JSON header lacks a required key";
      case frame_errc::bad_key_type: return "JSON header key has the wrong type";
      case frame_errc::bad_content_length: return "content-length is not a non-negative integer";
      case frame_errc::content_too_large: return "content-length exceeds the limit";
      case frame_errc::content_not_utf8: return "text/json content is not valid UTF-8";
      case frame_errc::content_not_json: return "text/json content is not valid JSON";
      case frame_errc::unsupported_encoding: return "unsupported content-encoding for text/json";
      case frame_errc::header_too_large: return "JSON header longer than 65535 bytes";
      case frame_errc::truncated: return "peer closed the connection in the middle of a message";
      case frame_errc::end_of_stream: return "peer closed the connection";
    }
    return "unknown frame error";
  }
};

// One parser per thread, shared by every decoder on it: a DOM parser keeps
// buffers sized for the largest document it has seen, too much to keep per
// connection. Decoders copy what they need out of it before yielding, except
// the last text/json content checked, which content_json() hands out while
// no other parse on the thread has replaced it (counted in `parses`).
std::atomic<unsigned long long> json_threads{1};
struct thread_json {
  simdjson::dom::parser parser;
  // Parse numbers start at a base of the thread's own (its index above bit
  // 40), so that a view's number never names a parse of another thread
  // (a view carried to another thread), and never 0 or 1 (message_view::json_tag).
  unsigned long long parses = json_threads.fetch_add(1, std::memory_order_relaxed) << 40 | 1;
  simdjson::dom::element content_root;  // of parse number `content_parse`
  unsigned long long content_parse = 0;
};
thread_json& this_thread_json() {
  static thread_local thread_json t;
  return t;
}

const char* type_name(simdjson::dom::element_type t) {
  using T = simdjson::dom::element_type;
  switch (t) {
    case T::ARRAY: return "an array";
    case T::OBJECT: return "an object";
    case T::INT64: case T::UINT64: return "an integer";
    case T::DOUBLE: return "a number with a fraction or exponent";
    case T::STRING: return "a string";
    case T::BOOL: return "a boolean";
    case T::NULL_VALUE: return "null";
  }
  return "an unknown type";
}

// A JSON value as text for an error message, cut short if long.
std::string shown(simdjson::dom::element e) {
  std::string s = simdjson::minify(e);
  if (s.size() > 40) s = s.substr(0, 37) + "...";
  return s;
}

// a + b, saturated at SIZE_MAX instead of wrapping.
constexpr std::size_t sat_add(std::size_t a, std::size_t b) noexcept {
  std::size_t r;
  return __builtin_add_overflow(a, b, &r) ? SIZE_MAX : r;
}

bool is_utf8_name(std::string_view enc) {
  std::string lower(enc);
  std::transform(lower.begin(), lower.end(), lower.begin(), [](unsigned char c) { return std::tolower(c); });
  return lower == "utf-8" || lower == "utf8" || lower == "utf_8";
}

}  // namespace

const std::error_category& frame_category() noexcept {
  static frame_category_impl cat;
  return cat;
}

// ---------------------------------------------------------------- encoding

namespace {
// True when one of the 8 bytes of `w` needs escaping in a JSON string (a
// control character, '"' or '\\'): bytes 8 at a time, the classic SWAR tests
// for "a byte below n" and "a byte equal to c" (no false negatives; a false
// positive only sends the word to the byte loop).
constexpr bool word_needs_escape(std::uint64_t w) noexcept {
  constexpr std::uint64_t ones = 0x0101010101010101ull, highs = 0x8080808080808080ull;
  const std::uint64_t below_space = (w - ones * 0x20) & ~w;
  const std::uint64_t q = w ^ (ones * '"'), b = w ^ (ones * '\\');
  const std::uint64_t is_quote = (q - ones) & ~q, is_backslash = (b - ones) & ~b;
  return ((below_space | is_quote | is_backslash) & highs) != 0;
}
}  // namespace

void append_json_string(std::string& out, std::string_view s) {
  static const char hex[] = "0123456789abcdef";
  out.push_back('"');
  std::size_t run = 0;  // start of the current run of bytes that need no escape
  for (std::size_t i = 0; i < s.size(); ++i) {
    // Plain text (the common case) is skipped a word at a time.
    while (s.size() - i >= 8) {
      std::uint64_t w;
      std::memcpy(&w, s.data() + i, 8);
      if (word_needs_escape(w)) break;
      i += 8;
    }
    if (i == s.size()) break;
    auto c = static_cast<unsigned char>(s[i]);
    if (c >= 0x20 && c != '"' && c != '\\') continue;
    out.append(s.data() + run, i - run);
    run = i + 1;
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      case '\b': out += "\\b"; break;
      case '\f': out += "\\f"; break;
      default:
        out += "\\u00";
        out.push_back(hex[c >> 4]);
        out.push_back(hex[c & 15]);
    }
  }
  out.append(s.data() + run, s.size() - run);
  out.push_back('"');
}

namespace {
// The last header this thread encoded without extra fields, up to its
// content-length's value: a server answers with the same byteorder,
// content-type and content-encoding again and again, and identical fields
// encode identically, so a repeat costs three compares instead of UTF-8
// checks and JSON escaping (--mode app: bench/RESULTS.md).
struct encoded_header_cache {
  std::string byteorder, content_type, content_encoding;
  std::string head;  // {"byteorder":...,"content-length":
  bool valid = false;
  bool matches(const header_fields& h) const noexcept {
    return valid && !h.extra && h.content_type == content_type && h.content_encoding == content_encoding &&
           h.byteorder == byteorder;
  }
};
thread_local encoded_header_cache last_header;

// The closing brace of a header begun at out[start + 2, ...), then its
// 2-byte length prefix at out[start]; a header too large is taken back out.
result<void> close_header(std::string& out, std::size_t start) {
  out.push_back('}');
  const std::size_t header_len = out.size() - start - 2;
  if (header_len > 0xffff) {
    out.resize(start);
    return make_error_code(frame_errc::header_too_large);
  }
  out[start] = static_cast<char>(header_len >> 8);
  out[start + 1] = static_cast<char>(header_len & 0xff);
  return {};
}

void append_length(std::string& out, std::size_t content_length) {
  char digits[24];
  auto [end, ec] = std::to_chars(digits, digits + sizeof digits, content_length);
  (void)ec;  // 24 digits hold any size_t
  out.append(digits, end);
}

// The prefix and header of a frame whose content is `content_length` bytes;
// `reserve_content`: make room for the content too (it is appended next).
result<void> encode_prefix_and_header(const header_fields& h, std::size_t content_length, std::string& out,
                                      bool reserve_content) {
  if (last_header.matches(h)) {
    const std::size_t start = out.size();
    if (sat_add(sat_add(start, 2 + 0xffff), content_length) > out.max_size())
      return make_error_code(frame_errc::content_too_large);
    out.reserve(start + 2 + last_header.head.size() + 24 + (reserve_content ? content_length : 0));
    out.append(2, '\0');
    out += last_header.head;
    append_length(out, content_length);
    return close_header(out, start);
  }
  // Header strings become JSON strings, which must be UTF-8; content is bytes.
  if (!simdjson::validate_utf8(h.content_type) || !simdjson::validate_utf8(h.content_encoding) ||
      !simdjson::validate_utf8(h.byteorder))
    return make_error_code(frame_errc::header_not_utf8);
  if (h.extra)
    for (const auto& [k, v] : *h.extra)
      if (!simdjson::validate_utf8(k) || !simdjson::validate_utf8(v)) return make_error_code(frame_errc::header_not_utf8);

  // Sizes first, before `out` is touched, with no sum allowed to wrap.
  // Escaping only lengthens a string, so raw sizes over 65,535 already mean
  // a header too large (without building a huge one to find out).
  std::size_t raw_header = sat_add(sat_add(h.content_type.size(), h.content_encoding.size()), h.byteorder.size());
  if (h.extra)
    for (const auto& [k, v] : *h.extra) raw_header = sat_add(raw_header, sat_add(k.size(), v.size()));
  if (raw_header > 0xffff) return make_error_code(frame_errc::header_too_large);
  // Then the whole frame (prefix, at most 65,535 header bytes, content) must
  // fit in `out`; content.size() is only a number here, never trusted.
  const std::size_t start = out.size();
  if (sat_add(sat_add(start, 2 + 0xffff), content_length) > out.max_size())
    return make_error_code(frame_errc::content_too_large);
  // Cannot wrap: start + content.size() + 65,537 fits, and the two header
  // strings are shorter than 65,536 together.
  out.reserve(start + 2 + 96 + h.content_type.size() + h.content_encoding.size() +
              (reserve_content ? content_length : 0));
  out.append(2, '\0');  // the length prefix, patched below
  out += "{\"byteorder\":";
  append_json_string(out, h.byteorder);
  out += ",\"content-type\":";
  append_json_string(out, h.content_type);
  out += ",\"content-encoding\":";
  append_json_string(out, h.content_encoding);
  out += ",\"content-length\":";
  if (!h.extra) {
    // Remembered for the next header with the same fields (a head too long
    // for any header is refused by close_header each time it is used).
    last_header.valid = false;
    last_header.byteorder.assign(h.byteorder);
    last_header.content_type.assign(h.content_type);
    last_header.content_encoding.assign(h.content_encoding);
    last_header.head.assign(out, start + 2, std::string::npos);
    last_header.valid = true;
  }
  append_length(out, content_length);
  if (!h.extra) return close_header(out, start);
  for (const auto& [k, v] : *h.extra) {
    out.push_back(',');
    append_json_string(out, k);
    out.push_back(':');
    append_json_string(out, v);
  }
  return close_header(out, start);
}
}  // namespace

// Out of memory part way (a header longer than the reserve, the header
// cache's copy, the content), `out` is put back as it was before the throw:
// half a frame left queued would be followed by the next one, and the peer's
// stream would be lost (review19 F2).
result<void> encode_frame_header(const header_fields& h, std::size_t content_length, std::string& out) {
  const std::size_t start = out.size();
  try {
    return encode_prefix_and_header(h, content_length, out, false);
  } catch (...) {
    out.resize(start);
    throw;
  }
}

result<void> encode_frame(const header_fields& h, std::span<const std::byte> content, std::string& out) {
  const std::size_t start = out.size();
  try {
    result<void> r = encode_prefix_and_header(h, content.size(), out, true);
    if (r) out.append(reinterpret_cast<const char*>(content.data()), content.size());
    return r;
  } catch (...) {
    out.resize(start);
    throw;
  }
}

result<void> encode_frame(const message& m, std::string& out) {
  header_fields h{m.content_type, m.content_encoding, m.byteorder, m.extra.empty() ? nullptr : &m.extra};
  return encode_frame(h, std::as_bytes(std::span(m.content.data(), m.content.size())), out);
}

std::string error_reply_json(std::string_view detail) {
  std::string s = "{\"error\":";
  append_json_string(s, detail);
  s.push_back('}');
  return s;
}

// ---------------------------------------------------------------- decoding

static_assert(message_view::content_padding <= simdjson::SIMDJSON_PADDING,
              "message_view promises the padding the decoder's buffer keeps");

namespace {
// The largest buffer a decoder asks for, so that adding the padding cannot
// wrap and the size is one new[] can be asked for at all.
constexpr std::size_t max_buffer =
    static_cast<std::size_t>(PTRDIFF_MAX) - sizeof(detail::byte_block) - detail::byte_block::tail_padding;
// The largest frame a decoder accepts: prefix, the longest header, content.
constexpr std::size_t max_frame = 2 + 0xffff + frame_limits::hard_max_content_length;
static_assert(max_frame - 2 - 0xffff == frame_limits::hard_max_content_length && max_frame <= max_buffer,
              "prefix + header + content at the hard cap must fit one buffer without wrapping");
static_assert(frame_limits::hard_max_content_length <= 0xffffffffu - 0x10000u,
              "text/json content at the hard cap must stay within simdjson's 4 GiB document limit");
}  // namespace

frame_decoder::frame_decoder(frame_limits limits, simdjson::dom::parser* parser)
    : limits_(limits), parser_(parser) {
  // Whatever was configured, the effective limit is one that can be held.
  limits_.max_content_length = std::min(limits_.max_content_length, frame_limits::hard_max_content_length);
}
frame_decoder::~frame_decoder() = default;
frame_decoder::frame_decoder(frame_decoder&&) noexcept = default;
frame_decoder& frame_decoder::operator=(frame_decoder&&) noexcept = default;

frame_decoder::status frame_decoder::fail(frame_errc code, bool in_sync, std::string detail) {
  error_.code = code;
  error_.in_sync = in_sync;
  error_.detail = std::move(detail);
  if (!in_sync) broken_ = true;
  return status::error;
}

static_assert(simdjson::SIMDJSON_PADDING <= detail::byte_block::tail_padding,
              "a decoder's buffer is followed by the padding simdjson reads");

[[gnu::hot]] void frame_decoder::reserve_free(std::size_t free_needed) {
  // The common case first: an idle decoder (it gave its buffer back between
  // frames) receiving a few bytes takes the pool's smallest block, as the
  // growth rule below would, without working it out (per message at depth 1).
  if (!buf_ && free_needed <= detail::byte_block::smallest_class) {
    buf_ = detail::block_ref(detail::byte_block::make(detail::byte_block::smallest_class));
    cap_ = buf_->capacity();
    begin_ = end_ = consume_on_next_ = 0;
    return;
  }
  // The bytes kept plus the room asked for must be one allocatable buffer;
  // checked before anything changes.
  const std::size_t live = end_ - begin_ - consume_on_next_;
  std::size_t total;
  if (__builtin_add_overflow(live, free_needed, &total) || total > max_buffer)
    throw std::length_error("ringframe::frame_decoder: " + std::to_string(free_needed) + " bytes of room asked for, " +
                            std::to_string(live) + " buffered: more than one buffer can hold");
  if (consume_on_next_) {
    begin_ += consume_on_next_;
    consume_on_next_ = 0;
  }
  // A buffer that a send still holds (share()) keeps every byte received so
  // far where it is: the decoder only writes past end_, or moves to another
  // buffer. Otherwise the room before begin_ can be used again.
  const bool shared = buf_ && buf_->shared();
  if (begin_ == end_ && !shared) begin_ = end_ = 0;
  if (cap_ - end_ >= free_needed) return;
  if (cap_ - live >= free_needed && buf_ && !shared) {
    std::memmove(buf_->data(), buf_->data() + begin_, live);
    begin_ = 0;
    end_ = live;
    return;
  }
  // Double (amortised growth), but never more than the largest frame the
  // limits allow plus the read size, unless the bytes already here need it.
  // Every term is at most max_buffer (total <= max_buffer, the limit <= the
  // hard cap), so nothing below wraps, and newcap + padding cannot either.
  // Leaving a shared buffer that is big enough is not growth: the same size.
  std::size_t newcap = shared && cap_ - live >= free_needed
                           ? cap_
                           : std::max({total, cap_ <= max_buffer / 2 ? cap_ * 2 : max_buffer,
                                       detail::byte_block::smallest_class});
  const std::size_t largest = sat_add(2 + 0xffff + limits_.max_content_length, free_needed);
  newcap = std::min({newcap, std::max(largest, total), max_buffer});
  // Up to 4 MiB, a pool class: the per-thread pool reuses it.
  detail::block_ref nb(detail::byte_block::make(newcap));
  if (live) std::memcpy(nb->data(), buf_->data() + begin_, live);
  // The old buffer goes back to the pool (when no send holds it), not to
  // malloc: freed, it would often be the top of the thread's heap, which
  // glibc then trims with madvise and grows back on the next allocation (8%
  // of the server's CPU at 1 KiB x 16 pipelined on epoll, measured with perf).
  buf_ = std::move(nb);
  cap_ = buf_->capacity();
  begin_ = 0;
  end_ = live;
}

std::span<std::byte> frame_decoder::prepare_slow(std::size_t min_free) {
  if (consume_on_next_) {
    begin_ += consume_on_next_;
    consume_on_next_ = 0;
  }
  const std::size_t avail = end_ - begin_;
  // How much of the current frame is still to come, when known: a large
  // frame gets room for all of it, so its content ends up contiguous, and
  // at most min_free more (the next frame's prefix and header come in the
  // same read; no more of it is left to be moved).
  std::size_t frame_total = 2;
  if (have_header_) frame_total = frame_len_;
  else if (avail >= 2)
    frame_total = 2 + ((static_cast<std::size_t>(buf_->data()[begin_]) << 8) |
                       static_cast<std::size_t>(buf_->data()[begin_ + 1]));
  const std::size_t missing = frame_total > avail ? frame_total - avail : 0;
  reserve_free(std::max(min_free, missing));
  prepared_ = room_for(missing, min_free);
  return {buf_->data() + end_, prepared_};
}

std::span<std::byte> frame_decoder::prepare_past_frame(std::size_t past) {
  if (consume_on_next_) {
    begin_ += consume_on_next_;
    consume_on_next_ = 0;
  }
  const std::size_t avail = end_ - begin_;
  const std::size_t missing = have_header_ && frame_len_ > avail ? frame_len_ - avail : 0;
  std::size_t want;
  if (__builtin_add_overflow(missing, past, &want))
    throw std::length_error("ringframe::frame_decoder: room past the frame overflows");
  reserve_free(want);  // leaves at least `want` free past end_
  prepared_ = want;
  return {buf_->data() + end_, want};
}

void frame_decoder::commit_overrun(std::size_t n) const noexcept {
  std::fprintf(stderr, "ringframe::frame_decoder::commit(%zu): only %zu bytes were prepared; aborting\n", n, prepared_);
  std::abort();
}

[[gnu::hot]] void frame_decoder::feed(std::span<const std::byte> bytes) {
  if (bytes.empty()) return;
  // Room for these bytes (growing as a buffer does), not for the rest of
  // the frame they belong to, as prepare() gives a direct read: copied bytes
  // come from a receive that has not reserved the frame's length from the
  // receive budget (a multishot recv's), and a declared length alone must
  // not size a buffer outside it.
  reserve_free(bytes.size());
  std::memcpy(buf_->data() + end_, bytes.data(), bytes.size());
  end_ += bytes.size();
  prepared_ = 0;
}

[[gnu::hot]] void frame_decoder::adopt(detail::block_ref block, std::size_t n) noexcept {
  assert(can_adopt() && block && n <= block->capacity());
  buf_ = std::move(block);
  cap_ = buf_->capacity();
  begin_ = consume_on_next_ = prepared_ = need_ = 0;
  end_ = n;
}

void frame_decoder::trim_partial_slow(std::size_t min_free, bool to_frame_end) noexcept {
  const std::size_t live = end_ - begin_ - consume_on_next_;
  if (live == 0) return;
  std::size_t want = min_free;
  if (to_frame_end && have_header_ && frame_len_ > live) want = std::max(want, frame_len_ - live);
  if (want >= cap_ || live >= cap_ - want) return;  // no smaller block would do
  const std::size_t target = detail::byte_block::round_up(live + want);
  if (target >= cap_) return;
  detail::byte_block* b;
  try {
    b = detail::byte_block::make(target);
  } catch (const std::bad_alloc&) {
    return;
  }
  std::memcpy(b->data(), buf_->data() + begin_ + consume_on_next_, live);
  buf_ = detail::block_ref(b);
  cap_ = b->capacity();
  begin_ = consume_on_next_ = prepared_ = 0;
  end_ = live;
}

[[gnu::hot]] void frame_decoder::shrink_if_idle() noexcept {
  if (end_ - begin_ == 0 && consume_on_next_ == 0 && buf_) {
    buf_.reset();  // to the pool, once no send holds it
    cap_ = begin_ = end_ = prepared_ = consume_on_next_ = need_ = 0;
  }
}

frame_decoder::status frame_decoder::parse_header(const std::byte* header, std::size_t len) {
  using namespace simdjson;
  // (next_slow has checked the cached header: this one differs.)
  cache_valid_ = false;
  thread_json& tj = this_thread_json();
  ++tj.parses;  // whichever parser: content_json() only has to be safe
  dom::element doc;
  dom::parser& p = parser_ ? *parser_ : tj.parser;
  error_code err = p.parse(reinterpret_cast<const uint8_t*>(header), len, false).get(doc);
  if (err == UTF8_ERROR) return fail(frame_errc::header_not_utf8, false, "JSON header is not valid UTF-8");
  if (err) return fail(frame_errc::header_not_json, false, std::string("JSON header is not valid JSON: ") + error_message(err));
  dom::object obj;
  if (doc.get(obj))
    return fail(frame_errc::header_not_object, false, std::string("JSON header must be an object, got ") + type_name(doc.type()));

  // One pass over the keys; a repeated key's last value wins, as in Python.
  dom::element length, byteorder, ctype, cenc;
  bool has_length = false, has_byteorder = false, has_ctype = false, has_cenc = false;
  for (dom::key_value_pair kv : obj) {
    std::string_view k = kv.key;
    if (k == "content-length") length = kv.value, has_length = true;
    else if (k == "content-type") ctype = kv.value, has_ctype = true;
    else if (k == "content-encoding") cenc = kv.value, has_cenc = true;
    else if (k == "byteorder") byteorder = kv.value, has_byteorder = true;
  }

  // content-length first: it decides whether the stream stays in sync.
  if (!has_length)
    return fail(frame_errc::missing_key, false, "JSON header lacks required key \"content-length\"");
  std::uint64_t clen = 0;
  if (length.is_uint64()) clen = length.get_uint64().value_unsafe();
  else
    return fail(frame_errc::bad_content_length, false,
                "\"content-length\" must be a non-negative integer, got " + shown(length));
  if (clen > limits_.max_content_length)
    return fail(frame_errc::content_too_large, false,
                "\"content-length\" " + std::to_string(clen) + " exceeds the limit of " +
                    std::to_string(limits_.max_content_length) + " bytes");

  // clen <= max_content_length <= the hard cap and len <= 65,535: no wrap.
  have_header_ = true;
  header_len_ = len;
  frame_len_ = 2 + len + static_cast<std::size_t>(clen);
  header_ok_ = true;
  is_text_json_ = false;

  // The other keys: a fault here leaves the stream in sync (the frame's end
  // is known), so it is reported once the frame is in, and then skipped.
  struct key {
    const char* name;
    bool present;
    dom::element* value;
  } keys[] = {{"byteorder", has_byteorder, &byteorder},
                {"content-type", has_ctype, &ctype},
                {"content-encoding", has_cenc, &cenc}};
  fields_.clear();
  for (int i = 0; i < 3; ++i) {
    key& f = keys[i];
    if (!f.present) {
      header_ok_ = false;
      fail(frame_errc::missing_key, true, std::string("JSON header lacks required key \"") + f.name + "\"");
      return status::need_more;
    }
    std::string_view sv;
    if (f.value->get(sv)) {
      header_ok_ = false;
      fail(frame_errc::bad_key_type, true,
           std::string("\"") + f.name + "\" must be a string, got " + type_name(f.value->type()));
      return status::need_more;
    }
    // The header is at most 65,535 bytes: the offsets fit.
    fields_.append(sv);
    field_end_[i] = static_cast<std::uint32_t>(fields_.size());
  }
  is_text_json_ = field(1) == "text/json";
  if (is_text_json_ && limits_.validate_json_content && !is_utf8_name(field(2))) {
    header_ok_ = false;
    fail(frame_errc::unsupported_encoding, true,
         "content-encoding \"" + std::string(field(2).substr(0, 40)) + "\" is not supported for text/json (use utf-8)");
    return status::need_more;
  }
  if (len <= 512) {  // headers of real peers are ~100 bytes; don't copy a huge one
    cached_header_.assign(reinterpret_cast<const char*>(header), len);
    cached_content_length_ = static_cast<std::size_t>(clen);
    cache_valid_ = true;
  }
  return status::need_more;
}

bool frame_decoder::validate_content(const std::byte* content, std::size_t len) {
  thread_json& tj = this_thread_json();
  const unsigned long long n = ++tj.parses;
  simdjson::dom::element doc;
  simdjson::dom::parser& p = parser_ ? *parser_ : tj.parser;
  simdjson::error_code err = p.parse(reinterpret_cast<const uint8_t*>(content), len, false).get(doc);
  if (!err) {
    if (&p == &tj.parser) {  // kept for content_json(), until the next parse
      tj.content_root = doc;
      tj.content_parse = n;
    }
    return true;
  }
  if (err == simdjson::UTF8_ERROR) fail(frame_errc::content_not_utf8, true, "text/json content is not valid UTF-8");
  else
    fail(frame_errc::content_not_json, true,
         std::string("text/json content is not valid JSON: ") + simdjson::error_message(err));
  return false;
}

[[gnu::hot]] frame_decoder::status frame_decoder::next_repeat(message_view& out) {
  if (broken_ || have_header_ || !cache_valid_ || (is_text_json_ && limits_.validate_json_content))
    return next_slow(out);
  const std::size_t begin = begin_ + consume_on_next_;
  const std::size_t avail = end_ - begin;
  if (avail < 2) {  // the call after a message, with nothing behind it: as next_slow says it
    begin_ = begin;
    consume_on_next_ = 0;
    need_ = 2;
    return status::need_more;
  }
  const std::size_t hlen = cached_header_.size();
  const std::size_t frame_len = 2 + hlen + cached_content_length_;
  if (avail < frame_len) return next_slow(out);
  const std::byte* frame = buf_->data() + begin;
  if (((static_cast<std::size_t>(frame[0]) << 8) | static_cast<std::size_t>(frame[1])) != hlen ||
      std::memcmp(frame + 2, cached_header_.data(), hlen) != 0)
    return next_slow(out);
  // As next_slow would hand it out, with the fields of the cached header.
  begin_ = begin;
  need_ = 0;
  header_len_ = hlen;
  frame_len_ = frame_len;
  header_ok_ = true;
  out.json_tag = 1;
  out.byteorder = field(0);
  out.content_type = field(1);
  out.content_encoding = field(2);
  out.content_length = cached_content_length_;
  out.header_json = {reinterpret_cast<const char*>(frame + 2), hlen};
  out.content = {frame + 2 + hlen, cached_content_length_};
  out.wire = {frame, frame_len};
  consume_on_next_ = frame_len;
  return status::message;
}

frame_decoder::status frame_decoder::next_slow(message_view& out) {
  need_ = 0;
  if (broken_) return status::error;
  if (consume_on_next_) {
    begin_ += consume_on_next_;
    consume_on_next_ = 0;
  }
  const std::size_t avail = end_ - begin_;
  const std::byte* frame = buf_ ? buf_->data() + begin_ : nullptr;
  if (!have_header_) {
    if (avail < 2) {
      need_ = 2;
      return status::need_more;
    }
    const std::size_t hlen = (static_cast<std::size_t>(frame[0]) << 8) | static_cast<std::size_t>(frame[1]);
    if (hlen == 0) return fail(frame_errc::header_length_zero, false, "header length is 0: a frame must carry a JSON header");
    if (avail < 2 + hlen) {
      need_ = 2 + hlen;
      return status::need_more;
    }
    if (cache_valid_ && hlen == cached_header_.size() && std::memcmp(frame + 2, cached_header_.data(), hlen) == 0) {
      // The header the peer sent last, byte for byte (parse_header's first
      // check, here: most frames repeat it, and the call costs).
      have_header_ = true;
      header_len_ = hlen;
      frame_len_ = 2 + hlen + cached_content_length_;
      header_ok_ = true;  // only clean headers are cached; is_text_json_ and the fields are unchanged
    } else if (parse_header(frame + 2, hlen) == status::error) {
      return status::error;
    }
  }
  if (avail < frame_len_) {
    need_ = frame_len_;
    return status::need_more;
  }

  // The whole frame is here.
  have_header_ = false;
  const std::byte* content = frame + 2 + header_len_;
  const std::size_t content_len = frame_len_ - 2 - header_len_;
  const bool check_json = is_text_json_ && limits_.validate_json_content;
  if (!header_ok_ || (check_json && !validate_content(content, content_len))) {
    begin_ += frame_len_;  // skip the bad frame; the stream stays in sync
    return status::error;
  }
  // A number only for a parse kept for content_json(): by this thread's
  // parser (not one the decoder was given, whose last document content_json
  // cannot know).
  out.json_tag = 1;
  if (check_json) {  // the thread's state only then: a thread_local's guard costs, per message
    thread_json& tj = this_thread_json();
    if (!parser_ || parser_ == &tj.parser) out.json_tag = tj.parses;
  }
  out.byteorder = field(0);
  out.content_type = field(1);
  out.content_encoding = field(2);
  out.content_length = content_len;
  out.header_json = {reinterpret_cast<const char*>(frame + 2), header_len_};
  out.content = {content, content_len};
  out.wire = {frame, frame_len_};
  consume_on_next_ = frame_len_;
  return status::message;
}

// ---------------------------------------------------------------- json.hpp

simdjson::simdjson_result<simdjson::dom::element> content_json(const message_view& m) {
  thread_json& tj = this_thread_json();
  // The decoder's own parse, if nothing has been parsed on this thread since.
  if (m.json_tag > 1 && m.json_tag == tj.content_parse && tj.parses == tj.content_parse)
    return simdjson::simdjson_result<simdjson::dom::element>(simdjson::dom::element(tj.content_root));
  ++tj.parses;
  tj.content_parse = 0;
  // From a decoder, the content is followed by readable padding (no copy);
  // a view built by hand is copied into the parser's padded buffer.
  return tj.parser.parse(reinterpret_cast<const uint8_t*>(m.content.data()), m.content.size(),
                         m.json_tag == 0);
}

}  // namespace ringframe
