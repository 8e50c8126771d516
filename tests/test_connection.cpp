// connection.hpp and handler.hpp: framed servers over loopback, with the
// app and frame-echo handlers, malformed peers and pipelining.
#include "loopback.hpp"

#include <ringframe/app.hpp>
#include <ringframe/connection.hpp>
#include <ringframe/handler.hpp>
#include <ringframe/server.hpp>
#include <ringframe/timer.hpp>

#include "frames.hpp"

#include <doctest/doctest.h>

#include <chrono>
#include <string>
#include <vector>

using namespace ringframe;
using namespace std::chrono_literals;

using testing::raw_frame;

namespace {

std::string search_frame(std::string_view value) {
  std::string content = "{\"action\": \"search\", \"value\": ";
  append_json_string(content, value);
  content += "}";
  std::string f;
  REQUIRE(encode_frame(message::json(content), f));
  return f;
}

// What a client saw: each reply's content, then how the stream ended.
struct exchange {
  std::vector<std::string> replies;
  std::vector<std::string> types;
  std::error_code end;
};

// Sends `bytes` (then half-closes when `half_close`), then reads `want`
// replies (or until the stream ends), then checks that nothing else comes.
task<void> client(executor* ex, address to, std::string bytes, int want, bool half_close, exchange* out) {
  result<ringframe::socket> s = co_await ringframe::connect(*ex, to, {.timeout = 5s});
  REQUIRE(s);
  connection_options o;
  o.idle_timeout = o.message_timeout = 5s;
  connection conn(std::move(*s), o);
  result<std::size_t> sent = co_await conn.get_socket().send_all(bytes, {.timeout = 5s});
  CHECK(sent);
  if (half_close) {
    result<void> sh = co_await conn.get_socket().shutdown(SHUT_WR);
    CHECK(sh);
  }
  for (int i = 0; i < want; ++i) {
    result<message_view> m = co_await conn.read_message();
    if (!m) {
      out->end = m.error();
      co_return;
    }
    out->replies.emplace_back(m->content_text());
    out->types.emplace_back(m->content_type);
  }
  // The server must not send anything more.
  result<message_view> extra = co_await conn.read_message();
  out->end = extra ? std::error_code{} : extra.error();
}

struct framed_server {
  std::vector<std::string> log;
  executor ex;
  server srv;
  address to;

  explicit framed_server(server::stream_handler h, server_options so = {}) : srv(ex, with_log(so, &log)) {
    auto at = address::from_ip("127.0.0.1", 0);
    REQUIRE(at);
    REQUIRE(srv.listen(*at));
    to = srv.local_addresses().front();
    task<void> serving = serve(&srv, std::move(h));
    ex.spawn(std::move(serving));
  }
  static server_options with_log(server_options so, std::vector<std::string>* log) {
    so.log_connections = false;
    so.log = [log](const std::string& line) { log->push_back(line); };
    return so;
  }
  static task<void> serve(server* s, server::stream_handler h) { co_await s->serve(std::move(h)); }

  // Runs one client to completion.
  exchange talk(std::string bytes, int want, bool half_close = true) {
    exchange e;
    ex.run(client(&ex, to, std::move(bytes), want, half_close, &e));
    return e;
  }
  ~framed_server() {
    srv.stop();
    ex.run_until_idle();
  }
};

const std::string morpheus = "{\"result\": \"Follow the white rabbit. \xF0\x9F\x90\xB0\"}";

// `n` search requests in one buffer (every third finds something), and the
// replies the app owes them, in order.
std::pair<std::string, std::vector<std::string>> pipelined_searches(int n) {
  std::string wire;
  std::vector<std::string> expect;
  for (int i = 0; i < n; ++i) {
    std::string v = i % 3 == 0 ? "morpheus" : "v" + std::to_string(i);
    wire += search_frame(v);
    expect.push_back(i % 3 == 0 ? morpheus : "{\"result\": \"No match for \\\"" + v + "\\\".\"}");
  }
  return {wire, expect};
}

}  // namespace

TEST_CASE("the app answers every request kind of docs/protocol.md section 3") {
  framed_server fs(per_request(&app_handler));
  struct {
    std::string request, reply, type;
  } cases[] = {
      {search_frame("morpheus"), morpheus, "text/json"},
      {search_frame("ring"), "{\"result\": \"In the caves beneath the Misty Mountains. \xF0\x9F\x92\x8D\"}", "text/json"},
      {search_frame("\xF0\x9F\x90\xB6"), "{\"result\": \"\xF0\x9F\x90\xBE Playing ball! \xF0\x9F\x8F\x90\"}", "text/json"},
      {search_frame("neo"), "{\"result\": \"No match for \\\"neo\\\".\"}", "text/json"},
      {[] {
         std::string f;
         REQUIRE(encode_frame(message::json("{\"action\": \"dance\", \"value\": \"x\"}"), f));
         return f;
       }(),
       "{\"result\": \"Error: invalid action \\\"dance\\\".\"}", "text/json"},
      {[] {
         std::string f;
         REQUIRE(encode_frame(message::binary("searchmorpheus", "binary/custom-client-binary-type"), f));
         return f;
       }(),
       "First 10 bytes of request: searchmorp", "binary/custom-server-binary-type"},
  };
  for (auto& c : cases) {
    exchange e = fs.talk(c.request, 1);
    REQUIRE(e.replies.size() == 1);
    CHECK(e.replies[0] == c.reply);
    CHECK(e.types[0] == c.type);
    CHECK(e.end == frame_errc::end_of_stream);  // nothing extra came; the server closed after our EOF
  }
}

TEST_CASE("app_search: the tutorial's table, and nothing else") {
  CHECK(app_search("morpheus") == "Follow the white rabbit. \xF0\x9F\x90\xB0");
  CHECK(app_search("ring") == "In the caves beneath the Misty Mountains. \xF0\x9F\x92\x8D");
  CHECK(app_search("\xF0\x9F\x90\xB6") == "\xF0\x9F\x90\xBE Playing ball! \xF0\x9F\x8F\x90");
  CHECK(app_search("morpheu").empty());
  CHECK(app_search("").empty());
  CHECK(app_search("Ring").empty());
}

TEST_CASE("1,000 pipelined requests on one connection are answered in order") {
  framed_server fs(per_request(&app_handler));
  auto [wire, expect] = pipelined_searches(1000);
  exchange e = fs.talk(wire, 1000);
  CHECK(e.replies == expect);
  fs.srv.stop();
  fs.ex.run_until_idle();
  CHECK(fs.srv.stats().messages_in == 1000);
  CHECK(fs.srv.stats().messages_out == 1000);
}

TEST_CASE("frame-echo sends every message back byte for byte") {
  framed_server fs(framed(&frame_echo_handler));
  std::string wire = raw_frame("{ \"content-length\": 3, \"byteorder\": \"big\", \"content-type\": \"x/y\","
                               " \"content-encoding\": \"binary\", \"extra\": [1] }",
                               "abc");
  std::string m2;
  REQUIRE(encode_frame(message::binary(std::string(300000, 'z'), "big/one"), m2));
  exchange e = fs.talk(wire + m2, 2);
  REQUIRE(e.replies.size() == 2);
  CHECK(e.replies[0] == "abc");
  CHECK(e.types[0] == "x/y");
  CHECK(e.replies[1] == std::string(300000, 'z'));
}

// Every malformed case of docs/protocol.md section 6, each checked for the exact
// error reply, for whether the connection survives, and that another client
// is still served afterwards.
TEST_CASE("malformed input gets a precise framed error; other clients are unaffected") {
  server_options so;
  connection_options co;
  co.limits.max_content_length = 1000;
  framed_server fs(per_request(&app_handler, co), so);
  const std::string next = search_frame("morpheus");
  auto error_json = [](std::string detail) { return error_reply_json(detail); };
  struct bad {
    const char* what;
    std::string bytes;
    std::string detail_prefix;
    bool in_sync;
  } cases[] = {
      {"header length 0", std::string("\0\0", 2), "header length is 0", false},
      {"invalid JSON", raw_frame("{\"a\": ", ""), "JSON header is not valid JSON: ", false},
      {"invalid UTF-8", raw_frame("{\"a\": \"\xC0\"}", ""), "JSON header is not valid UTF-8", false},
      {"non-object", raw_frame("[]", ""), "JSON header must be an object, got an array", false},
      {"missing content-length", raw_frame("{\"byteorder\": \"little\", \"content-type\": \"a\", \"content-encoding\": \"b\"}", ""),
       "JSON header lacks required key \"content-length\"", false},
      {"negative content-length",
       raw_frame("{\"byteorder\": \"little\", \"content-type\": \"a\", \"content-encoding\": \"b\", \"content-length\": -1}", ""),
       "\"content-length\" must be a non-negative integer, got -1", false},
      {"float content-length",
       raw_frame("{\"byteorder\": \"little\", \"content-type\": \"a\", \"content-encoding\": \"b\", \"content-length\": 2.5}", ""),
       "\"content-length\" must be a non-negative integer, got 2.5", false},
      {"string content-length",
       raw_frame("{\"byteorder\": \"little\", \"content-type\": \"a\", \"content-encoding\": \"b\", \"content-length\": \"3\"}", ""),
       "\"content-length\" must be a non-negative integer, got \"3\"", false},
      {"oversized content-length",
       raw_frame("{\"byteorder\": \"little\", \"content-type\": \"a\", \"content-encoding\": \"b\", \"content-length\": 1001}", ""),
       "\"content-length\" 1001 exceeds the limit of 1000 bytes", false},
      {"missing byteorder", raw_frame("{\"content-type\": \"a\", \"content-encoding\": \"b\", \"content-length\": 1}", "x"),
       "JSON header lacks required key \"byteorder\"", true},
      {"missing content-type", raw_frame("{\"byteorder\": \"little\", \"content-encoding\": \"b\", \"content-length\": 1}", "x"),
       "JSON header lacks required key \"content-type\"", true},
      {"missing content-encoding", raw_frame("{\"byteorder\": \"little\", \"content-type\": \"a\", \"content-length\": 1}", "x"),
       "JSON header lacks required key \"content-encoding\"", true},
      {"text/json content not JSON",
       raw_frame("{\"byteorder\": \"little\", \"content-type\": \"text/json\", \"content-encoding\": \"utf-8\", \"content-length\": 5}",
                 "{nope"),
       "text/json content is not valid JSON: ", true},
      {"text/json content not UTF-8",
       raw_frame("{\"byteorder\": \"little\", \"content-type\": \"text/json\", \"content-encoding\": \"utf-8\", \"content-length\": 3}",
                 "\"\xFF\""),
       "text/json content is not valid UTF-8", true},
  };
  for (auto& c : cases) {
    CAPTURE(c.what);
    // The bad message, then a good one on the same connection.
    exchange e = fs.talk(c.bytes + next, c.in_sync ? 2 : 1);
    REQUIRE(e.replies.size() >= 1);
    CHECK(e.types[0] == "text/json");
    CHECK(e.replies[0].rfind(error_json(c.detail_prefix).substr(0, 10 + c.detail_prefix.size()), 0) == 0);
    if (c.in_sync) {
      REQUIRE(e.replies.size() == 2);
      CHECK(e.replies[1] == morpheus);  // still in sync: the next request is served
      CHECK(e.end == frame_errc::end_of_stream);
    } else {
      CHECK(e.replies.size() == 1);     // nothing after the error...
      CHECK(e.end == frame_errc::end_of_stream);  // ...and the server closed
    }
    // Another client is served as usual.
    exchange ok = fs.talk(next, 1);
    REQUIRE(ok.replies.size() == 1);
    CHECK(ok.replies[0] == morpheus);
  }
  CHECK(fs.srv.stats().malformed == std::size(cases));
  // One log line per malformed input, naming the peer and the reason.
  int lines = 0;
  for (auto& l : fs.log)
    if (l.rfind("Malformed message from ('127.0.0.1', ", 0) == 0) ++lines;
  CHECK(lines == static_cast<int>(std::size(cases)));
}

TEST_CASE("a text/json request that is JSON but not an object is answered, not fatal") {
  framed_server fs(per_request(&app_handler));
  std::string f;
  REQUIRE(encode_frame(message::json("[1, 2]"), f));
  exchange e = fs.talk(f + search_frame("morpheus"), 2);
  REQUIRE(e.replies.size() == 2);
  CHECK(e.replies[0] == "{\"error\":\"a text/json request must be a JSON object\"}");
  CHECK(e.replies[1] == morpheus);
}

namespace {
task<message> throwing_handler(message_view req, connection_info) {
  if (req.content_text() == "boom") throw std::runtime_error("kaboom");
  co_return message::binary(std::string(req.content_text()), "ok");
}
}  // namespace

TEST_CASE("a handler that throws gets an error reply sent, and the connection goes on") {
  framed_server fs(per_request(&throwing_handler));
  std::string a, b;
  REQUIRE(encode_frame(message::binary("boom", "t"), a));
  REQUIRE(encode_frame(message::binary("fine", "t"), b));
  exchange e = fs.talk(a + b, 2);
  REQUIRE(e.replies.size() == 2);
  CHECK(e.replies[0] == "{\"error\":\"internal error: kaboom\"}");
  CHECK(e.replies[1] == "fine");
}

namespace {
// Writes an echo (queued, not yet sent: replies go out when the handler
// next reads or flushes), then throws.
task<void> reply_then_throw(connection& conn, connection_info) {
  result<message_view> m = co_await conn.read_message();
  REQUIRE(m);
  result<void> w = co_await conn.write_raw(m->wire);
  REQUIRE(w);
  throw std::runtime_error("after the reply");
}
task<void> nap(executor* ex) {
  result<void> r = co_await sleep_for(*ex, 10ms);
  CHECK(r);
}
}  // namespace

TEST_CASE("a connection handler that throws after writing: its replies still go out, then the stream ends cleanly") {
  framed_server fs(framed(&reply_then_throw));
  std::string a;
  REQUIRE(encode_frame(message::binary("first", "t"), a));
  exchange e = fs.talk(a, 1);
  REQUIRE(e.replies.size() == 1);
  CHECK(e.replies[0] == "first");
  CHECK(e.end == frame_errc::end_of_stream);  // a clean end, not a reset
  // The failure is logged, and the counters added, once the connection
  // has closed (2 s at most).
  for (int i = 0; i < 200 && fs.srv.stats().closed == 0; ++i) fs.ex.run(nap(&fs.ex));
  bool logged = false;
  for (const std::string& l : fs.log) logged = logged || l.find("failed: after the reply") != std::string::npos;
  CHECK(logged);
  CHECK(fs.srv.stats().closed == 1);
  CHECK(fs.srv.stats().messages_in == 1);
  CHECK(fs.srv.stats().messages_out == 1);
}

namespace {
// Not a coroutine: it throws before there is a task to run.
task<void> throw_before_starting(connection&, connection_info) { throw std::runtime_error("no handler today"); }
}  // namespace

TEST_CASE("a connection handler that throws before it starts: the stream still ends cleanly, and the failure is logged") {
  framed_server fs(framed(&throw_before_starting));
  std::string a;
  REQUIRE(encode_frame(message::binary("unread", "t"), a));
  exchange e = fs.talk(a, 1);
  CHECK(e.replies.empty());
  // A lingering close: the request the handler never read does not turn
  // the end into a reset.
  CHECK(e.end == frame_errc::end_of_stream);
  for (int i = 0; i < 200 && fs.srv.stats().closed == 0; ++i) fs.ex.run(nap(&fs.ex));
  bool logged = false;
  for (const std::string& l : fs.log) logged = logged || l.find("failed: no handler today") != std::string::npos;
  CHECK(logged);
  CHECK(fs.srv.stats().closed == 1);
}

TEST_CASE("idle and mid-message timeouts close the connection") {
  connection_options co;
  co.idle_timeout = 100ms;
  co.message_timeout = 100ms;
  framed_server fs(per_request(&app_handler, co));
  auto t0 = std::chrono::steady_clock::now();
  exchange idle = fs.talk("", 1, false);  // says nothing
  CHECK(idle.end == frame_errc::end_of_stream);
  CHECK(std::chrono::steady_clock::now() - t0 >= 100ms);
  std::string part = search_frame("morpheus").substr(0, 10);
  exchange stalled = fs.talk(part, 1, false);  // starts a message and stalls
  CHECK(stalled.replies.empty());
  CHECK(stalled.end == frame_errc::end_of_stream);
  int timeouts = 0;
  for (auto& l : fs.log)
    if (l.find("timed out") != std::string::npos) ++timeouts;
  CHECK(timeouts == 2);
}

namespace {
task<std::string> ask_in_two_parts(executor* ex, address to, std::string request) {
  result<ringframe::socket> s = co_await ringframe::connect(*ex, to, {.timeout = 5s});
  REQUIRE(s);
  connection conn(std::move(*s));
  std::string_view r(request);
  result<std::size_t> a = co_await conn.get_socket().send_all(r.substr(0, r.size() / 2));
  REQUIRE(a);
  result<void> slept = co_await sleep_for(*ex, 50ms);
  REQUIRE(slept);
  result<std::size_t> b = co_await conn.get_socket().send_all(r.substr(r.size() / 2));
  REQUIRE(b);
  result<message_view> m = co_await conn.read_message();
  REQUIRE(m);
  co_return std::string(m->content_text());
}
}  // namespace

TEST_CASE("a message timeout of 0 means no deadline, not an instant one") {
  connection_options co;
  co.idle_timeout = std::chrono::nanoseconds{0};
  co.message_timeout = std::chrono::nanoseconds{0};
  framed_server fs(per_request(&app_handler, co));
  // A request that arrives in two parts, 50 ms apart, is still answered.
  CHECK(fs.ex.run(ask_in_two_parts(&fs.ex, fs.to, search_frame("morpheus"))) == morpheus);
}

namespace {
// Sends `frame` one byte every `gap`, until the server closes or it is all sent.
task<std::chrono::milliseconds> trickle(executor* ex, address to, std::string frame, std::chrono::milliseconds gap) {
  auto t0 = std::chrono::steady_clock::now();
  result<ringframe::socket> s = co_await ringframe::connect(*ex, to, {.timeout = 5s});
  REQUIRE(s);
  for (char ch : frame) {
    result<std::size_t> n = co_await s->send_all(std::string_view(&ch, 1));
    if (!n) break;
    std::byte b[64];
    // The server's close shows as end of stream (or a reset) within `gap`.
    result<std::size_t> r = co_await s->recv(b, {.timeout = gap});
    if (r || r.error() != std::errc::timed_out) break;
  }
  co_return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0);
}

// Sends one large frame and never reads: the echo of it cannot be sent.
task<void> never_read(executor* ex, address to, std::string frame, server* srv, std::chrono::milliseconds* closed_after) {
  auto t0 = std::chrono::steady_clock::now();
  result<ringframe::socket> s = co_await ringframe::connect(*ex, to, {.timeout = 5s});
  REQUIRE(s);
  result<std::size_t> n = co_await s->send_all(frame, {.timeout = 5s});
  REQUIRE(n);
  // Wait (without reading) until the server has given up on the connection.
  while (srv->live_connections() > 0 && std::chrono::steady_clock::now() - t0 < 5s) {
    result<void> slept = co_await sleep_for(*ex, 10ms);
    REQUIRE(slept);
  }
  *closed_after = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0);
}
}  // namespace

TEST_CASE("a peer trickling one byte at a time is cut off at the message timeout") {
  connection_options co;
  co.idle_timeout = 5s;
  co.message_timeout = 150ms;
  framed_server fs(per_request(&app_handler, co));
  // 20 ms a byte: each recv is quick, the message as a whole is not.
  std::chrono::milliseconds took = fs.ex.run(trickle(&fs.ex, fs.to, search_frame("morpheus"), 20ms));
  CHECK(took >= 150ms);
  CHECK(took < 1000ms);  // the whole frame would take about 1.5 s
  bool logged = false;
  for (auto& l : fs.log) logged |= l.find("timed out") != std::string::npos;
  CHECK(logged);
  CHECK(fs.srv.stats().timeouts == 1);
}

TEST_CASE("a peer that never reads its replies is dropped at the write timeout") {
  connection_options co;
  co.write_timeout = 200ms;
  co.limits.max_content_length = 64 * 1024 * 1024;
  framed_server fs(framed(&frame_echo_handler, co));
  // 16 MiB cannot sit in loopback socket buffers: the echo blocks.
  std::string frame = raw_frame("{\"byteorder\":\"little\",\"content-type\":\"binary\",\"content-encoding\":\"binary\","
                                "\"content-length\":16777216}",
                                std::string(16 * 1024 * 1024, 'x'));
  std::chrono::milliseconds closed_after{};
  fs.ex.run(never_read(&fs.ex, fs.to, frame, &fs.srv, &closed_after));
  CHECK(fs.srv.live_connections() == 0);
  CHECK(closed_after >= 200ms);
  CHECK(closed_after < 3000ms);  // write timeout plus the one-second linger, not the 5 s cap
}

namespace {
task<void> flush_from(connection* c, std::string text, int* done) {
  result<void> w = co_await c->write(message::binary(std::move(text), "t"));
  REQUIRE(w);
  result<void> f = co_await c->flush();
  CHECK(f);
  CHECK(c->unsent_bytes() == 0);  // a flush returns only once everything is sent
  ++*done;
}

task<std::vector<std::string>> read_n(connection* c, int n) {
  std::vector<std::string> got;
  for (int i = 0; i < n; ++i) {
    result<message_view> m = co_await c->read_message();
    REQUIRE(m);
    got.emplace_back(m->content_text());
  }
  co_return got;
}
}  // namespace

TEST_CASE("coroutines flushing one connection at once each wait for their bytes to go out") {
  executor ex;
  auto [a, b] = testing::socket_pair(ex);
  connection writer(std::move(a));
  connection reader(std::move(b));
  int done = 0;
  // 3 writers of 1 MiB each: the first send fills the socket buffer, so the
  // others find a send in flight and must wait for it, not return at once.
  ex.spawn(flush_from(&writer, std::string(1 << 20, 'a'), &done));
  ex.spawn(flush_from(&writer, std::string(1 << 20, 'b'), &done));
  ex.spawn(flush_from(&writer, std::string(1 << 20, 'c'), &done));
  std::vector<std::string> got = ex.run(read_n(&reader, 3));
  ex.run_until_idle();
  CHECK(done == 3);
  REQUIRE(got.size() == 3);
  CHECK(got[0] == std::string(1 << 20, 'a'));
  CHECK(got[1] == std::string(1 << 20, 'b'));
  CHECK(got[2] == std::string(1 << 20, 'c'));
  CHECK(writer.bytes_out > 3u << 20);
}

namespace {
task<void> store_read_error(connection* c, std::error_code* out) {
  result<message_view> m = co_await c->read_message();
  *out = m ? std::error_code{} : m.error();
}

task<void> store_messages(connection* c, int n, std::vector<std::string>* out) {
  for (int i = 0; i < n; ++i) {
    result<message_view> m = co_await c->read_message();
    REQUIRE(m);
    out->emplace_back(m->content_text());
  }
}

task<void> send_after(executor* ex, connection* c, std::string text) {
  result<void> slept = co_await sleep_for(*ex, 20ms);
  REQUIRE(slept);
  result<void> w = co_await c->write(message::binary(std::move(text), "t"));
  REQUIRE(w);
  result<void> f = co_await c->flush();
  REQUIRE(f);
}
}  // namespace

TEST_CASE("a second reader on one connection gets EBUSY; the first still gets its message") {
  executor ex;
  auto [a, b] = testing::socket_pair(ex);
  connection writer(std::move(a));
  connection reader(std::move(b));
  std::vector<std::string> got;
  std::error_code err;
  ex.spawn(send_after(&ex, &writer, "hello"));
  // Spawned in this order: the first suspends on its recv, then the second runs.
  ex.spawn(store_messages(&reader, 1, &got));
  ex.spawn(store_read_error(&reader, &err));
  ex.run_until_idle();
  CHECK(err == std::errc::device_or_resource_busy);
  REQUIRE(got.size() == 1);
  CHECK(got[0] == "hello");
}

namespace {
// Frame-echo with `co`: frames of 0 B to 4 MiB, pipelined, come back byte
// for byte (each 4 KiB of content marked, so a misplaced block shows).
void check_echo_of_every_size(connection_options co) {
  co.limits.max_content_length = 8 * 1024 * 1024;
  framed_server fs(framed(&frame_echo_handler, co));
  std::string all;
  std::vector<std::string> contents;
  for (std::size_t size : {std::size_t{0}, std::size_t{1}, std::size_t{64}, std::size_t{70000}, std::size_t{4u << 20}}) {
    std::string c(size, static_cast<char>('a' + size % 26));
    for (std::size_t i = 0; i < c.size(); i += 4096) c[i] = static_cast<char>(i / 4096);
    contents.push_back(c);
    REQUIRE(encode_frame(message::binary(c, "binary/x"), all));
  }
  exchange e = fs.talk(all, static_cast<int>(contents.size()));
  REQUIRE(e.replies.size() == contents.size());
  for (std::size_t i = 0; i < contents.size(); ++i) CHECK(e.replies[i] == contents[i]);
  CHECK(e.end == frame_errc::end_of_stream);
}
}  // namespace

TEST_CASE("zero-copy sends (every batch) deliver exactly what copying sends do") {
  connection_options co;
  co.zero_copy_threshold = 1;
  check_echo_of_every_size(co);
}

// ---- connection_options::multishot_recv ----

namespace {
connection_options multishot() {
  connection_options co;
  co.multishot_recv = true;
  return co;
}

// Echoes each message after a pause: the peer's next messages arrive while
// nobody reads, so the multishot recv must hold them (then spill, then stop).
task<void> slow_echo(connection& conn, connection_info info) {
  for (;;) {
    result<message_view> m = co_await conn.read_message();
    if (!m) {
      bool go_on = co_await answer_read_error(conn, info, m.error());
      if (go_on) continue;
      co_return;
    }
    std::string frame(reinterpret_cast<const char*>(m->wire.data()), m->wire.size());
    result<void> slept = co_await sleep_for(info.server->get_executor(), 20ms);
    if (!slept) co_return;
    result<void> w = co_await conn.write_raw(std::as_bytes(std::span(frame.data(), frame.size())));
    if (!w) co_return;
  }
}

// Sends each frame on its own, `gap` apart, then reads them all back.
task<std::vector<std::string>> send_spaced(executor* ex, address to, std::vector<std::string> frames,
                                           std::chrono::milliseconds gap) {
  result<ringframe::socket> s = co_await ringframe::connect(*ex, to, {.timeout = 5s});
  REQUIRE(s);
  connection conn(std::move(*s));
  for (const std::string& f : frames) {
    result<std::size_t> n = co_await conn.get_socket().send_all(f, {.timeout = 5s});
    REQUIRE(n);
    result<void> slept = co_await sleep_for(*ex, gap);
    REQUIRE(slept);
  }
  std::vector<std::string> got;
  for (std::size_t i = 0; i < frames.size(); ++i) {
    result<message_view> m = co_await conn.read_message();
    REQUIRE(m);
    got.emplace_back(m->content_text());
  }
  co_return got;
}
}  // namespace

TEST_CASE("multishot recv: 1,000 pipelined requests are answered in order") {
  framed_server fs(per_request(&app_handler, multishot()));
  auto [wire, expect] = pipelined_searches(1000);
  exchange e = fs.talk(wire, 1000);
  CHECK(e.replies == expect);
  CHECK(e.end == frame_errc::end_of_stream);
}

TEST_CASE("multishot recv: frames from 0 B to 4 MiB echo byte for byte") { check_echo_of_every_size(multishot()); }

TEST_CASE("multishot recv: bytes that arrive while the handler works are held, spilled, and answered in order") {
  framed_server fs(framed(&slow_echo, multishot()));
  std::vector<std::string> frames, expect;
  for (int i = 0; i < 24; ++i) {
    std::string c = "message " + std::to_string(i);
    std::string f;
    REQUIRE(encode_frame(message::binary(c, "t"), f));
    frames.push_back(f);
    expect.push_back(c);
  }
  // 2 ms apart against 20 ms of handling each: about ten arrive, as separate
  // segments, during every pause (more than the 4 ring buffers it may hold).
  std::vector<std::string> got = fs.ex.run(send_spaced(&fs.ex, fs.to, frames, 2ms));
  CHECK(got == expect);
}

TEST_CASE("multishot recv: idle and mid-message timeouts still close the connection") {
  connection_options co = multishot();
  co.idle_timeout = 100ms;
  co.message_timeout = 100ms;
  framed_server fs(per_request(&app_handler, co));
  auto t0 = std::chrono::steady_clock::now();
  exchange idle = fs.talk("", 1, false);
  CHECK(idle.end == frame_errc::end_of_stream);
  CHECK(std::chrono::steady_clock::now() - t0 >= 100ms);
  exchange stalled = fs.talk(search_frame("morpheus").substr(0, 10), 1, false);
  CHECK(stalled.replies.empty());
  CHECK(stalled.end == frame_errc::end_of_stream);
  CHECK(fs.srv.stats().timeouts == 2);
}

namespace {
// Opens `n` connections, asks one question on each and keeps them open, so
// each server connection waits with its multishot recv armed.
task<void> park_connections(executor* ex, address to, int n, std::vector<ringframe::socket>* parked) {
  std::string q = search_frame("morpheus");
  for (int i = 0; i < n; ++i) {
    result<ringframe::socket> s = co_await ringframe::connect(*ex, to, {.timeout = 5s});
    REQUIRE(s);
    result<std::size_t> sent = co_await s->send_all(q, {.timeout = 5s});
    REQUIRE(sent);
    std::byte buf[512];
    result<std::size_t> got = co_await s->recv(buf, {.timeout = 5s});
    REQUIRE(got);
    REQUIRE(*got > 0);
    parked->push_back(std::move(*s));
  }
}
}  // namespace

TEST_CASE("multishot recv: stopping a server with the recvs armed frees everything (ASan checks)") {
  const int fds_before = testing::open_fd_count();
  std::vector<ringframe::socket> parked;
  {
    framed_server fs(per_request(&app_handler, multishot()));
    fs.ex.run(park_connections(&fs.ex, fs.to, 50, &parked));
    CHECK(fs.srv.live_connections() == 50);
    // Stop with every recv armed: connections end while the kernel still
    // holds their recvs; the completions are left behind to take the last CQEs.
    fs.srv.stop();
    fs.ex.run_until_idle();
    CHECK(fs.srv.live_connections() == 0);
    CHECK(fs.ex.inflight() == 0);  // every left-behind recv got its last CQE
  }
  parked.clear();
  CHECK(testing::open_fd_count() <= fds_before);
}

namespace {
// Reads one message with the multishot recv, then lets the connection go
// while that recv is still armed in the kernel.
task<std::string> read_one_then_drop(ringframe::socket s) {
  connection conn(std::move(s), multishot());
  result<message_view> m = co_await conn.read_message();
  REQUIRE(m);
  co_return std::string(m->content_text());
}
}  // namespace

TEST_CASE("multishot recv: a connection destroyed with its recv armed leaves a completion that takes the last CQE") {
  executor ex;
  auto [a, b] = testing::socket_pair(ex);
  std::string f;
  REQUIRE(encode_frame(message::binary("one", "t"), f));
  REQUIRE(::send(b.fd(), f.data(), f.size(), 0) == static_cast<ssize_t>(f.size()));
  CHECK(ex.run(read_one_then_drop(std::move(a))) == "one");
  // The recv was cancelled by the connection's destructor; its last CQE
  // (and any buffer in it) goes to the completion left behind, which frees
  // itself. Under ASan a lost or double-freed one shows.
  CHECK(ex.inflight() > 0);
  for (int i = 0; i < 100 && ex.inflight() > 0; ++i) ex.run_once(true);
  CHECK(ex.inflight() == 0);
}

namespace {
// Sends `wire` in `chunk`-byte pieces while reading replies as they come.
task<void> send_in_chunks(executor* ex, connection* conn, std::string wire, std::size_t chunk) {
  for (std::size_t at = 0; at < wire.size(); at += chunk) {
    result<std::size_t> n = co_await conn->get_socket().send_all(std::string_view(wire).substr(at, chunk), {.timeout = 5s});
    REQUIRE(n);
    result<void> slept = co_await sleep_for(*ex, 1ms);
    REQUIRE(slept);
  }
}

task<void> echo_mixed(executor* ex, address to, std::vector<std::string> contents, std::size_t chunk, int* matched) {
  result<ringframe::socket> s = co_await ringframe::connect(*ex, to, {.timeout = 5s});
  REQUIRE(s);
  connection conn(std::move(*s));
  std::string wire;
  for (const std::string& c : contents) REQUIRE(encode_frame(message::binary(c, "t"), wire));
  ex->spawn(send_in_chunks(ex, &conn, std::move(wire), chunk));
  for (const std::string& c : contents) {
    result<message_view> m = co_await conn.read_message();
    REQUIRE(m);
    if (m->content_text() == c) ++*matched;
  }
}
}  // namespace

TEST_CASE("multishot recv: traffic that swings between small and large reads stays in order") {
  // Large reads switch the connection to direct reads (the multishot recv is
  // cancelled first), small ones bring it back: both recvs must never be
  // armed at once, or bytes would come out of order.
  connection_options co = multishot();
  framed_server fs(framed(&frame_echo_handler, co));
  std::vector<std::string> contents;
  for (int i = 0; i < 300; ++i) {
    std::size_t size = i % 10 < 5 ? 40 + i : 20000 + 37 * i;  // runs of small, then runs of large
    std::string c(size, static_cast<char>('A' + i % 26));
    c.replace(0, std::to_string(i).size(), std::to_string(i));
    contents.push_back(c);
  }
  int matched = 0;
  for (std::size_t chunk : {std::size_t{1000}, std::size_t{30000}}) {
    matched = 0;
    fs.ex.run(echo_mixed(&fs.ex, fs.to, contents, chunk, &matched));
    CHECK(matched == 300);
  }
}
