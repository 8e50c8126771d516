// examples/kvstore: the example's handler, served and used over loopback.
#include "kv_store.hpp"

#include <ringframe/connection.hpp>
#include <ringframe/server.hpp>

#include <doctest/doctest.h>

#include <chrono>
#include <functional>
#include <string>
#include <vector>

using namespace ringframe;
using namespace std::chrono_literals;

namespace {

task<void> session(executor* ex, address to, std::vector<std::string> requests, std::vector<std::string>* replies) {
  result<ringframe::socket> s = co_await ringframe::connect(*ex, to, {.timeout = 5s});
  REQUIRE(s);
  connection conn(std::move(*s));
  // Pipelined: every request goes out before the first reply is read.
  for (auto& r : requests) {
    result<void> w = co_await conn.write(message::json(r));
    REQUIRE(w);
  }
  for (std::size_t i = 0; i < requests.size(); ++i) {
    result<message_view> m = co_await conn.read_message();
    REQUIRE(m);
    replies->emplace_back(m->content_text());
  }
}

task<void> serve(server* srv, kvstore::store* st) { co_await srv->serve(per_request(std::bind_front(&kvstore::store::handle, st))); }

// A store served on a loopback port of its own executor.
struct served_store {
  explicit served_store(std::size_t max_bytes = kvstore::store::default_max_bytes) : st(max_bytes) {
    REQUIRE(srv.listen(*address::from_ip("127.0.0.1", 0)));
    to = srv.local_addresses().front();
    ex.spawn(serve(&srv, &st));
  }
  static server_options quiet() {
    server_options o;
    o.log_connections = false;
    return o;
  }
  executor ex;
  server srv{ex, quiet()};
  kvstore::store st;
  address to;
};

}  // namespace

TEST_CASE("the key-value store example keeps state across connections") {
  served_store f;
  executor& ex = f.ex;
  address to = f.to;

  std::vector<std::string> a, b;
  ex.run(session(&ex, to,
                 {R"({"op": "put", "key": "k1", "value": "v\"1"})", R"({"op": "put", "key": "🐶", "value": "dog"})",
                  R"({"op": "get", "key": "k1"})", R"({"op": "del", "key": "nope"})", R"({"op": "fly"})",
                  R"({"op": "frob", "key": "absent"})", R"({"op": "get"})"},
                 &a));
  CHECK(a == std::vector<std::string>{R"({"ok": true})", R"({"ok": true})", R"({"ok": true, "value": "v\"1"})",
                                      R"({"ok": false, "error": "no such key"})", R"({"ok": false, "error": "unknown op"})",
                                      R"({"ok": false, "error": "unknown op"})",
                                      R"({"ok": false, "error": "\"key\" must be a string"})"});
  ex.run(session(&ex, to, {R"({"op": "get", "key": "🐶"})", R"({"op": "count"})"}, &b));
  CHECK(b == std::vector<std::string>{R"({"ok": true, "value": "dog"})", R"({"ok": true, "count": 2})"});
  f.srv.stop();
  ex.run_until_idle();
}

TEST_CASE("the key-value store example holds at most max_bytes of keys and values") {
  served_store f(16);
  executor& ex = f.ex;
  address to = f.to;

  std::vector<std::string> a;
  ex.run(session(&ex, to,
                 {R"({"op": "put", "key": "k1", "value": "12345678"})",       // 10 bytes
                  R"({"op": "put", "key": "k2", "value": "1234567"})",        // 19: past 16
                  R"({"op": "put", "key": "k1", "value": "12345678901234"})",  // replaces: 16
                  R"({"op": "put", "key": "k1", "value": "123456789012345"})", // 17: past 16, k1 kept
                  R"({"op": "get", "key": "k1"})", R"({"op": "del", "key": "k1"})",
                  R"({"op": "put", "key": "k2", "value": "1234567"})", R"({"op": "count"})"},
                 &a));
  CHECK(a == std::vector<std::string>{R"({"ok": true})", R"({"ok": false, "error": "store full"})", R"({"ok": true})",
                                      R"({"ok": false, "error": "store full"})",
                                      R"({"ok": true, "value": "12345678901234"})", R"({"ok": true})",
                                      R"({"ok": true})", R"({"ok": true, "count": 1})"});
  CHECK(f.st.bytes() == 9);
  f.srv.stop();
  ex.run_until_idle();
}
