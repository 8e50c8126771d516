#include <ringframe/app.hpp>
#include <ringframe/json.hpp>

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

// obj[key] as Python's json.loads sees it: a repeated key's last value
// (simdjson's lookup gives the first).
using json_result = simdjson::simdjson_result<simdjson::dom::element>;
json_result python_get(simdjson::dom::object obj, std::string_view key) {
  json_result r(simdjson::NO_SUCH_FIELD);
  for (simdjson::dom::key_value_pair kv : obj)
    if (kv.key == key) r = json_result(simdjson::dom::element(kv.value));
  return r;
}

constexpr header_fields json_reply{"text/json", "utf-8"};

// The reply to `req`: its content appended to `out`, its header fields
// returned. Shared by both forms of the application below.
header_fields app_reply(const message_view& req, std::string& out) {
  if (req.content_type != "text/json") {
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
  out += "{\"result\": ";
  std::string_view action;
  std::string_view hit;
  const bool searching = !python_get(obj, "action").get(action) && action == "search";
  if (searching) {
    std::string_view value;
    if (!python_get(obj, "value").get(value)) hit = app_search(value);  // only strings are in the table
  }
  if (!hit.empty()) {
    append_json_string(out, hit);
  } else {
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
    append_json_string(out, text);
  }
  out += "}";
  return json_reply;
}

}  // namespace

std::string_view app_search(std::string_view value) {
  if (value == "morpheus") return "Follow the white rabbit. \xF0\x9F\x90\xB0";
  if (value == "ring") return "In the caves beneath the Misty Mountains. \xF0\x9F\x92\x8D";
  if (value == "\xF0\x9F\x90\xB6") return "\xF0\x9F\x90\xBE Playing ball! \xF0\x9F\x8F\x90";
  return {};
}

task<message> app_handler(message_view req, connection_info) {
  message reply;
  header_fields h = app_reply(req, reply.content);
  reply.content_type = h.content_type;
  reply.content_encoding = h.content_encoding;
  co_return reply;
}

task<void> app_connection_handler(connection& conn, connection_info info) {
  // write() copies the reply into the send queue before it returns (a
  // short reply is never sent by reference), so one buffer per thread
  // serves every connection on it.
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

task<void> frame_echo_handler(connection& conn, connection_info info) {
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
