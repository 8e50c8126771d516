// A key-value store served over the framed protocol: the per-request
// handler style, with state reached through `this` (a member coroutine).
//
// Requests are text/json:
//   {"op": "put", "key": "k", "value": "v"}  -> {"ok": true}
//   {"op": "get", "key": "k"}                -> {"ok": true, "value": "v"} or {"ok": false, "error": "no such key"}
//   {"op": "del", "key": "k"}                -> {"ok": true} or {"ok": false, ...}
//   {"op": "count"}                          -> {"ok": true, "count": N}
//
// The keys and values held are bounded (max_bytes, 64 MiB by default): a put
// past it is answered {"ok": false, "error": "store full"} and changes
// nothing, so that what peers send never grows the process without bound.
#pragma once

#include <ringframe/handler.hpp>

#include <simdjson.h>

#include <string>
#include <unordered_map>

namespace kvstore {

class store {
 public:
  static constexpr std::size_t default_max_bytes = 64 * 1024 * 1024;
  explicit store(std::size_t max_bytes = default_max_bytes) : max_bytes_(max_bytes) {}

  ringframe::task<ringframe::message> handle(ringframe::message_view req, ringframe::connection_info) {
    using ringframe::message;
    if (req.content_type != "text/json") co_return fail("requests must be text/json");
    simdjson::padded_string json(req.content_text());
    simdjson::dom::element doc;
    if (parser_.parse(json).get(doc)) co_return fail("bad JSON");  // the codec checks; belt and braces
    std::string_view op, key, value;
    if (doc["op"].get(op)) co_return fail("\"op\" must be a string");
    if (op == "count") co_return ok(", \"count\": " + std::to_string(data_.size()));
    // The op first: an unknown one is that, whatever its key (it was "no
    // such key" for an absent one).
    if (op != "put" && op != "get" && op != "del") co_return fail("unknown op");
    if (doc["key"].get(key)) co_return fail("\"key\" must be a string");
    if (op == "put") {
      if (doc["value"].get(value)) co_return fail("\"value\" must be a string");
      auto at = data_.find(std::string(key));
      const std::size_t held = at == data_.end() ? 0 : key.size() + at->second.size();
      if (bytes_ - held + key.size() + value.size() > max_bytes_) co_return fail("store full");
      if (at == data_.end()) at = data_.emplace(std::string(key), std::string()).first;
      at->second.assign(value);
      bytes_ = bytes_ - held + key.size() + value.size();
      co_return ok("");
    }
    auto it = data_.find(std::string(key));
    if (it == data_.end()) co_return fail("no such key");
    if (op == "get") {
      std::string v = ", \"value\": ";
      ringframe::append_json_string(v, it->second);
      co_return ok(v);
    }
    bytes_ -= it->first.size() + it->second.size();
    data_.erase(it);  // del
    co_return ok("");
  }

  std::size_t size() const { return data_.size(); }
  std::size_t bytes() const { return bytes_; }  // keys and values held

 private:
  static ringframe::message ok(const std::string& more) { return ringframe::message::json("{\"ok\": true" + more + "}"); }
  static ringframe::message fail(std::string_view why) {
    std::string j = "{\"ok\": false, \"error\": ";
    ringframe::append_json_string(j, why);
    return ringframe::message::json(j + "}");
  }

  std::unordered_map<std::string, std::string> data_;
  std::size_t max_bytes_;
  std::size_t bytes_ = 0;
  simdjson::dom::parser parser_;
};

}  // namespace kvstore
