#include <ringframe/app.hpp>
#include <ringframe/json.hpp>

#include <cstring>

namespace ringframe {

namespace {

// Python's f"{x}" of a JSON value as json.loads gives it, appended to `out`:
// strings as they are, null as None, true/false as True/False, anything else
// as its JSON; a missing key (absent) as None.
void append_python_str(std::string& out, simdjson::simdjson_result<simdjson::dom::element> r) {
  simdjson::dom::element e;
  if (r.get(e)) {
    out += "None";
    return;
  }
  std::string_view s;
  bool b;
  if (!e.get(s)) out += s;
  else if (e.is_null()) out += "None";
  else if (!e.get(b)) out += b ? "True" : "False";
  else out += simdjson::minify(e);
}

// s == lit, with the literal's length known to the compiler: a few
// compares inline instead of a call to memcmp (a search request makes
// several: 10% of --mode app's user time went to them).
template <std::size_t N>
bool is(std::string_view s, const char (&lit)[N]) noexcept {
  return s.size() == N - 1 && std::memcmp(s.data(), lit, N - 1) == 0;
}

// obj[key] as Python's json.loads sees it: a repeated key's last value
// (simdjson's lookup gives the first).
using json_result = simdjson::simdjson_result<simdjson::dom::element>;
template <std::size_t N>
json_result python_get(simdjson::dom::object obj, const char (&key)[N]) {
  json_result r(simdjson::NO_SUCH_FIELD);
  for (simdjson::dom::key_value_pair kv : obj)
    if (is(kv.key, key)) r = json_result(simdjson::dom::element(kv.value));
  return r;
}

constexpr header_fields json_reply{"text/json", "utf-8"};

// The search table, with each answer's whole reply content as json.dumps
// writes it (the answers hold nothing JSON escapes), so a hit is one append.
struct search_entry {
  std::string_view value, answer, reply;
};
#define RINGFRAME_ANSWER(value, answer) {value, answer, "{\"result\": \"" answer "\"}"}
constexpr search_entry search_table[] = {
    RINGFRAME_ANSWER("morpheus", "Follow the white rabbit. \xF0\x9F\x90\xB0"),
    RINGFRAME_ANSWER("ring", "In the caves beneath the Misty Mountains. \xF0\x9F\x92\x8D"),
    RINGFRAME_ANSWER("\xF0\x9F\x90\xB6", "\xF0\x9F\x90\xBE Playing ball! \xF0\x9F\x8F\x90"),
};
#undef RINGFRAME_ANSWER

const search_entry* find_answer(std::string_view value) noexcept {
  for (const search_entry& e : search_table)
    if (e.value == value) return &e;
  return nullptr;
}

// The reply to `req`: its content appended to `out`, its header fields
// returned. Shared by both forms of the application below.
header_fields app_reply(const message_view& req, std::string& out) {
  if (!is(req.content_type, "text/json")) {
    out += "First 10 bytes of request: ";
    out += req.content_text().substr(0, 10);
    return {"binary/custom-server-binary-type", "binary"};
  }
  // Parsed once: the decoder has checked that the content is JSON, and
  // content_json() hands out the document it built (json.hpp).
  simdjson::dom::object obj;
  if (content_json(req).get(obj)) {
    out += error_reply_json("a text/json request must be a JSON object");
    return json_reply;
  }
  // Laid out as the tutorial's json.dumps(..., ensure_ascii=False) writes it.
  std::string_view action;
  const bool searching = !python_get(obj, "action").get(action) && is(action, "search");
  if (searching) {
    std::string_view value;
    if (!python_get(obj, "value").get(value))  // only strings are in the table
      if (const search_entry* e = find_answer(value)) {
        out += e->reply;
        return json_reply;
      }
  }
  // The rarer answers, with Python's rendering of the value.
  std::string text;
  if (searching) {
    text = "No match for \"";
    append_python_str(text, python_get(obj, "value"));
  } else {
    text = "Error: invalid action \"";
    append_python_str(text, python_get(obj, "action"));
  }
  text += "\".";
  out += "{\"result\": ";
  append_json_string(out, text);
  out += "}";
  return json_reply;
}

}  // namespace

std::string_view app_search(std::string_view value) {
  const search_entry* e = find_answer(value);
  return e ? e->answer : std::string_view{};
}

task<message> app_handler(message_view req, connection_info) {
  message reply;
  header_fields h = app_reply(req, reply.content);
  reply.content_type = h.content_type;
  reply.content_encoding = h.content_encoding;
  co_return reply;
}

[[gnu::hot]] task<void> app_connection_handler(connection& conn, connection_info info) {
  // write() copies the reply into the send queue before it returns (only
  // bytes that lie in the connection's receive buffer are sent by
  // reference), so one buffer per thread serves every connection on it.
  static thread_local std::string reply;
  for (;;) {
    result<message_view> m = co_await conn.read_message();
    if (!m) {
      bool go_on = co_await answer_read_error(conn, info, m.error());
      if (go_on) continue;
      co_return;
    }
    reply.clear();
    header_fields h = app_reply(*m, reply);
    result<void> w = co_await conn.write(h, std::as_bytes(std::span(reply.data(), reply.size())));
    if (reply.capacity() > 64 * 1024) std::string().swap(reply);  // after a huge value echoed in an error
    if (!w) co_return;
  }
}

[[gnu::hot]] task<void> frame_echo_handler(connection& conn, connection_info info) {
  for (;;) {
    result<message_view> m = co_await conn.read_message();
    if (!m) {
      bool go_on = co_await answer_read_error(conn, info, m.error());
      if (go_on) continue;
      co_return;
    }
    result<void> w = co_await conn.write_raw(m->wire);
    if (!w) co_return;
  }
}

}  // namespace ringframe
