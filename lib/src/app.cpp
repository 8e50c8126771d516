#include <ringframe/app.hpp>

#include <simdjson.h>

namespace ringframe {

namespace {

// Python's f"{x}" of a JSON value as json.loads gives it: strings as they
// are, null as None, true/false as True/False, anything else as its JSON.
std::string python_str(simdjson::dom::element e) {
  std::string_view s;
  if (!e.get(s)) return std::string(s);
  if (e.is_null()) return "None";
  bool b;
  if (!e.get(b)) return b ? "True" : "False";
  return simdjson::minify(e);
}

std::string result_json(std::string_view text) {
  // Laid out as the tutorial's json.dumps(..., ensure_ascii=False) writes it.
  std::string out = "{\"result\": ";
  append_json_string(out, text);
  out += "}";
  return out;
}

}  // namespace

std::string_view app_search(std::string_view value) {
  if (value == "morpheus") return "Follow the white rabbit. \xF0\x9F\x90\xB0";
  if (value == "ring") return "In the caves beneath the Misty Mountains. \xF0\x9F\x92\x8D";
  if (value == "\xF0\x9F\x90\xB6") return "\xF0\x9F\x90\xBE Playing ball! \xF0\x9F\x8F\x90";
  return {};
}

task<message> app_handler(message_view req, connection_info) {
  if (req.content_type != "text/json") {
    std::string content = "First 10 bytes of request: ";
    std::string_view body = req.content_text();
    content.append(body.substr(0, 10));
    co_return message::binary(std::move(content), "binary/custom-server-binary-type");
  }
  // The codec has checked that the content is JSON; parse it for the fields.
  // Parsed in place: the decoder leaves simdjson's padding after content.
  static_assert(message_view::content_padding >= simdjson::SIMDJSON_PADDING);
  static thread_local simdjson::dom::parser parser;
  simdjson::dom::element doc;
  simdjson::dom::object obj;
  if (parser.parse(reinterpret_cast<const uint8_t*>(req.content.data()), req.content.size(), false).get(doc) ||
      doc.get(obj))
    co_return message::json(error_reply_json("a text/json request must be a JSON object"));
  simdjson::dom::element action_e, value_e;
  std::string action = obj["action"].get(action_e) ? "None" : python_str(action_e);
  std::string value = obj["value"].get(value_e) ? "None" : python_str(value_e);
  if (action != "search") co_return message::json(result_json("Error: invalid action \"" + action + "\"."));
  std::string_view hit = app_search(value);
  if (!hit.empty()) co_return message::json(result_json(hit));
  co_return message::json(result_json("No match for \"" + value + "\"."));
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
