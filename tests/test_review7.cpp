// Review of content_json (json.hpp), the adaptive read step and the block
// pool's make_room (commits 8f0f95c..b32ee20).
#include <ringframe/app.hpp>
#include <ringframe/connection.hpp>
#include <ringframe/detail/byte_block.hpp>
#include <ringframe/frame.hpp>
#include <ringframe/handler.hpp>
#include <ringframe/json.hpp>
#include <ringframe/server.hpp>
#include <ringframe/task_group.hpp>

#include <doctest/doctest.h>

#include <sys/socket.h>

#include <chrono>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

using namespace ringframe;
using namespace std::chrono_literals;

namespace {

std::string frame_of(std::string_view type, std::string_view content) {
  std::string out;
  REQUIRE(encode_frame(header_fields{type, "utf-8"}, std::as_bytes(std::span(content.data(), content.size())), out));
  return out;
}

// The string value of "k" in the object `r`, or "?".
std::string value_of(simdjson::simdjson_result<simdjson::dom::element> r) {
  simdjson::dom::object obj;
  if (r.get(obj)) return "?";
  std::string_view v;
  if (obj["k"].get(v)) return "?";
  return std::string(v);
}

}  // namespace

TEST_CASE("content_json of a view decoded on another thread than its decoder was made on is that view's document") {
  // A frame_decoder takes the thread parser of the thread that makes it.
  // Decoded on thread B (B's parse count), its view is then read on the
  // decoder's own thread A after A's parser has checked a document of its
  // own: the two parse numbers coincide (fresh threads count from 0), and
  // A's document must not be handed out for the view's content.
  std::string seen, decoded_ok;
  std::thread a([&] {
    frame_decoder d;  // A's parser
    message_view v;
    std::thread b([&] {
      d.feed(frame_of("text/json", R"({"k":"decoded on B"})"));
      decoded_ok = d.next(v) == frame_decoder::status::message ? "yes" : "no";
    });
    b.join();  // (A's parser is used by one thread at a time)
    frame_decoder own;
    own.feed(frame_of("text/json", R"({"k":"A's own"})"));
    message_view w;
    if (own.next(w) != frame_decoder::status::message) return;
    seen = value_of(content_json(v));
  });
  a.join();
  REQUIRE(decoded_ok == "yes");
  CHECK(seen == "decoded on B");
}

TEST_CASE("the block pool frees nothing of other classes for a block that cannot be kept anyway") {
  // 204 blocks of 160 KiB fill the 32 MiB large budget but for 96 KiB; a
  // 64 KiB block fits beside them. A 205th 160 KiB block cannot be kept
  // even once everything else is freed: it must be freed alone, and the
  // 64 KiB block stay pooled (else the next 64 KiB frame allocates and
  // faults in a fresh buffer for nothing).
  using detail::block_ref;
  using detail::byte_block;
  const std::size_t budget = 32u << 20, cap = 160 * 1024, other = 64 * 1024;
  std::size_t before = 0, after = 0, after_take = 0;
  bool classes_ok = false;
  std::thread t([&] {  // a fresh thread: an empty pool
    classes_ok = byte_block::round_up(cap) == cap && byte_block::round_up(other) == other &&
                 204 * cap + other <= budget && 205 * cap > budget;
    std::vector<block_ref> held;
    block_ref small(byte_block::make(other));
    for (int i = 0; i < 205; ++i) held.emplace_back(byte_block::make(cap));
    small.reset();                                    // pooled
    for (int i = 0; i < 204; ++i) held[i].reset();    // pooled: the budget is now full
    before = byte_block::pooled_bytes();
    held[204].reset();                                // cannot be kept
    after = byte_block::pooled_bytes();
    block_ref again(byte_block::make(other));         // from the pool, if it is still there
    after_take = byte_block::pooled_bytes();
  });
  t.join();
  REQUIRE(classes_ok);
  CHECK(before == 204 * cap + other);
  CHECK(after == before);
  CHECK(after_take == after - other);
}

// ---- --mode app's connection handler (app_connection_handler), over loopback

namespace {

std::string json_frame(std::string_view content) {
  std::string f;
  REQUIRE(encode_frame(message::json(std::string(content)), f));
  return f;
}

struct app_exchange {
  std::vector<std::string> replies;
  std::error_code end;
};

// Sends `bytes`, half-closes, reads `want` replies, then the end of the stream.
task<void> app_client(executor* ex, address to, std::string bytes, int want, app_exchange* out) {
  result<ringframe::socket> s = co_await ringframe::connect(*ex, to, {.timeout = 5s});
  REQUIRE(s);
  connection_options o;
  o.idle_timeout = o.message_timeout = 5s;
  connection conn(std::move(*s), o);
  result<std::size_t> sent = co_await conn.get_socket().send_all(bytes, {.timeout = 5s});
  CHECK(sent);
  result<void> sh = co_await conn.get_socket().shutdown(SHUT_WR);
  CHECK(sh);
  for (int i = 0; i < want; ++i) {
    result<message_view> m = co_await conn.read_message();
    if (!m) {
      out->end = m.error();
      co_return;
    }
    out->replies.emplace_back(m->content_text());
  }
  result<message_view> extra = co_await conn.read_message();
  out->end = extra ? std::error_code{} : extra.error();
}

task<void> serve_on(server* s, server::stream_handler h) { co_await s->serve(std::move(h)); }

struct app_server {
  executor ex;
  server srv;
  address to;
  explicit app_server(server::stream_handler h) : srv(ex, quiet()) {
    auto at = address::from_ip("127.0.0.1", 0);
    REQUIRE(at);
    REQUIRE(srv.listen(*at));
    to = srv.local_addresses().front();
    ex.spawn(serve_on(&srv, std::move(h)));
  }
  static server_options quiet() {
    server_options so;
    so.log_connections = false;
    so.log = [](const std::string&) {};
    return so;
  }
  ~app_server() {
    srv.stop();
    ex.run_until_idle();
  }
};

task<void> two_clients(executor* ex, address to, std::string a, std::string b, int want, app_exchange* ra,
                       app_exchange* rb) {
  task_group g(*ex);
  g.spawn(app_client(ex, to, std::move(a), want, ra));
  g.spawn(app_client(ex, to, std::move(b), want, rb));
  co_await g.join();
}

}  // namespace

TEST_CASE("--mode app reads a repeated key of the request's object as Python's json.loads does: the last value") {
  // tests/interop/tutorial_server.py: request.get("action") of a dict that
  // json.loads built, where a repeated key's last value wins.
  app_server as(framed(&app_connection_handler));
  app_exchange e;
  const std::string req = R"({"action": "dance", "value": "neo", "action": "search", "value": "ring"})";
  as.ex.run(app_client(&as.ex, as.to, json_frame(req) + json_frame(R"({"action": "search", "action": 5})"), 2, &e));
  REQUIRE(e.replies.size() == 2);
  CHECK(e.replies[0] == "{\"result\": \"In the caves beneath the Misty Mountains. \xF0\x9F\x92\x8D\"}");
  CHECK(e.replies[1] == "{\"result\": \"Error: invalid action \\\"5\\\".\"}");
  CHECK(e.end == frame_errc::end_of_stream);
}

TEST_CASE("--mode app: two connections pipelining replies larger than the per-thread buffer keeps get each its own") {
  // Each reply is encoded from one thread_local buffer, given up after
  // replies over 64 KiB: interleaved connections, large and small replies,
  // every byte checked (a reply sent by reference from that buffer, or
  // from one freed meanwhile, would show here or under ASan).
  app_server as(framed(&app_connection_handler));
  auto requests = [](char c, int n, std::vector<std::string>* expect) {
    std::string wire;
    for (int i = 0; i < n; ++i) {
      std::string v(i % 2 ? 100 * 1024 + i : 10 + i, c);
      wire += json_frame("{\"action\": \"search\", \"value\": \"" + v + "\"}");
      if (i % 5 == 4) {
        wire += json_frame(R"({"action": "search", "value": "morpheus"})");
        expect->push_back("{\"result\": \"No match for \\\"" + v + "\\\".\"}");
        expect->push_back("{\"result\": \"Follow the white rabbit. \xF0\x9F\x90\xB0\"}");
      } else {
        expect->push_back("{\"result\": \"No match for \\\"" + v + "\\\".\"}");
      }
    }
    return wire;
  };
  std::vector<std::string> ea, eb;
  std::string wa = requests('a', 20, &ea), wb = requests('b', 20, &eb);
  REQUIRE(ea.size() == eb.size());
  app_exchange ra, rb;
  as.ex.run(two_clients(&as.ex, as.to, wa, wb, static_cast<int>(ea.size()), &ra, &rb));
  CHECK(ra.replies == ea);
  CHECK(rb.replies == eb);
  CHECK(ra.end == frame_errc::end_of_stream);
  CHECK(rb.end == frame_errc::end_of_stream);
}

TEST_CASE("--mode app answers exactly as the per-request app_handler does") {
  const std::vector<std::string> reqs = {
      json_frame(R"({"action": "search", "value": "morpheus"})"),
      json_frame(R"({"action": "search", "value": "\ud83d\udc36"})"),
      json_frame(R"({"action": "search", "value": null})"),
      json_frame(R"({"action": "search", "value": [1, true, {"a": null}]})"),
      json_frame(R"({"action": "search"})"),
      json_frame(R"({})"),
      json_frame(R"({"action": true, "value": "x"})"),
      json_frame(R"({"action": "say \"hi\"\n", "value": "x"})"),
      json_frame(R"([1, 2])"),
      json_frame(R"("search")"),
      json_frame(R"(not json)"),
      [] {
        std::string f;
        REQUIRE(encode_frame(message::binary("searchmorpheus", "binary/custom-client-binary-type"), f));
        return f;
      }(),
      [] {
        std::string f;
        REQUIRE(encode_frame(message::binary("ab", "binary/custom-client-binary-type"), f));
        return f;
      }(),
  };
  std::string wire;
  for (const std::string& r : reqs) wire += r;
  const int n = static_cast<int>(reqs.size());
  app_exchange per, conn;
  {
    app_server as(per_request(&app_handler));
    as.ex.run(app_client(&as.ex, as.to, wire, n, &per));
  }
  {
    app_server as(framed(&app_connection_handler));
    as.ex.run(app_client(&as.ex, as.to, wire, n, &conn));
  }
  REQUIRE(per.replies.size() == reqs.size());
  CHECK(conn.replies == per.replies);
  CHECK(per.replies[0] == "{\"result\": \"Follow the white rabbit. \xF0\x9F\x90\xB0\"}");
  CHECK(per.replies[2] == "{\"result\": \"No match for \\\"None\\\".\"}");
  CHECK(per.replies[4] == "{\"result\": \"No match for \\\"None\\\".\"}");
  CHECK(per.replies[5] == "{\"result\": \"Error: invalid action \\\"None\\\".\"}");
  CHECK(per.replies[6] == "{\"result\": \"Error: invalid action \\\"True\\\".\"}");
  CHECK(per.replies[7] == "{\"result\": \"Error: invalid action \\\"say \\\"hi\\\"\\n\\\".\"}");
  CHECK(per.replies[8] == "{\"error\":\"a text/json request must be a JSON object\"}");
  CHECK(per.replies[11] == "First 10 bytes of request: searchmorp");
  CHECK(per.replies[12] == "First 10 bytes of request: ab");
  CHECK(per.end == frame_errc::end_of_stream);
  CHECK(conn.end == frame_errc::end_of_stream);
}
