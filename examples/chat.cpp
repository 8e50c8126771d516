// ringframe-example-chat: a chat room on the framed protocol (docs/protocol.md).
//
//   ringframe-example-chat 127.0.0.1 8000
//   (tests/e2e_proxy_chat.py has a small Python client: FramedClient, say())
//
// A client sends text/json {"action": "say", "value": TEXT}; every other
// client in the room receives {"from": "('127.0.0.1', 54321)", "said": TEXT}
// and the sender gets {"result": "said to N others"}. Anything else is
// answered with a framed {"error": "..."} and the connection goes on (a
// malformed frame is answered as the library's handlers answer it, and the
// connection is closed if the stream is out of sync).
//
// Each client has a bounded queue (a channel, --queue N messages, default
// 64) and a writer coroutine that sends what is queued. A broadcast only
// ever try_send()s into the others' queues: it never waits on a slow
// client. A client whose queue is full has stopped reading: it is
// disconnected there and then (its queue is closed, its socket shut down),
// so it never slows the others and never holds their messages.
//
// Lifetimes: a member (its queue, its place in the room) lives in its
// handler's frame; the writer is a child of a task_group declared after it
// and joined before the handler returns, and the member leaves the room
// before that. A broadcast touches only members in the room, without
// suspending while it walks the list, so no coroutine ever reaches a member
// that has gone.
#include <ringframe/channel.hpp>
#include <ringframe/handler.hpp>
#include <ringframe/server.hpp>
#include <ringframe/signals.hpp>
#include <ringframe/task_group.hpp>

#include <simdjson.h>

#include <sys/socket.h>

#include <chrono>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <stdexcept>
#include <stop_token>
#include <string>
#include <vector>

using namespace ringframe;

namespace {

const char* const usage_text =
    "Usage: ringframe-example-chat [-q] [--queue N] [--max-message BYTES] HOST PORT\n"
    "\n"
    "A chat room on the framed protocol: each text/json message\n"
    "{\"action\": \"say\", \"value\": TEXT} is sent to every other connected client as\n"
    "{\"from\": PEER, \"said\": TEXT}; the sender gets {\"result\": \"said to N others\"}.\n"
    "A client that stops reading is disconnected when its queue is full.\n"
    "Port 0 lets the kernel choose (the 'Listening on' line says which).\n"
    "SIGINT or SIGTERM stops it.\n"
    "\n"
    "  --queue N     messages queued per client before it is disconnected (default 64)\n"
    "  --max-message BYTES\n"
    "                the largest message content accepted (default 65536, at most 1048576);\n"
    "                a larger one is answered with an error and its connection closed\n"
    "  -q, --quiet   no line per connection\n"
    "  -h, --help    this help\n";

using frame_bytes = std::shared_ptr<const std::string>;  // one encoded frame, shared by every queue

struct member {
  member(executor& ex, std::size_t capacity, connection* c, const address* p) : outbox(ex, capacity), conn(c), peer(p) {}
  channel<frame_bytes> outbox;
  connection* conn;
  const address* peer;
  std::stop_source kick;  // disconnects it: its reads end
  bool kicked = false;
  member* prev = nullptr;
  member* next = nullptr;
};

struct room {
  std::size_t capacity = 64;
  // The largest say accepted (its frame's content). A client that does not
  // read holds, besides its share of the queued frames, a copy of what its
  // writer has queued on the connection: up to max_unsent_bytes (1 MiB) and
  // one frame. With 16 MiB says, each such client could hold a 16 MiB copy
  // of one say (review 51: 40 of them, 660 MB after one say), and a say at
  // that limit came back to the others over the library's default limit
  // (its wrapper adds the sender's name and escapes). 64 KiB by default;
  // at most 1 MiB, whose broadcast (escaped at worst 6 bytes a byte) stays
  // far below a receiver's default 16 MiB.
  std::size_t max_message = 64 * 1024;
  bool quiet = false;
  member* head = nullptr;
  std::size_t size = 0;
  std::uint64_t disconnected_full = 0;

  void join(member* m) {
    m->next = head;
    if (head) head->prev = m;
    head = m;
    ++size;
  }
  void leave(member* m) {
    if (m->prev) m->prev->next = m->next;
    else head = m->next;
    if (m->next) m->next->prev = m->prev;
    m->prev = m->next = nullptr;
    --size;
  }
  void say(const std::string& line) const {
    if (quiet) return;
    std::printf("%s\n", line.c_str());
    std::fflush(stdout);
  }
  // Its queue is full: it has stopped reading. Its writer and its reader end
  // (the queue closed, the socket shut down: a send blocked on it fails),
  // and its handler leaves the room.
  void disconnect(member* m) {
    if (m->kicked) return;
    m->kicked = true;
    ++disconnected_full;
    say("Disconnecting " + m->peer->to_python() + ": its queue of " + std::to_string(capacity) +
        " messages is full (it stopped reading)");
    m->outbox.close(make_error_code(std::errc::no_buffer_space));
    m->kick.request_stop();
    ::shutdown(m->conn->get_socket().fd(), SHUT_RDWR);  // the result does not matter: it is going
  }
  // To everyone but `from`, without waiting for anyone; returns how many.
  std::size_t broadcast(member* from, const frame_bytes& f) {
    std::size_t n = 0;
    for (member* m = head; m; m = m->next) {
      if (m == from || m->kicked) continue;
      frame_bytes copy = f;
      if (m->outbox.try_send(std::move(copy))) ++n;
      else disconnect(m);  // full (or closed: it is leaving)
    }
    return n;
  }
};

// Sends what is queued for one client, in order.
task<void> writer(member* m, std::stop_token st) {
  for (;;) {
    result<frame_bytes> f = co_await m->outbox.receive(&st);
    if (!f) break;  // closed, or stopped
    const std::string& bytes = **f;
    result<void> w = co_await m->conn->write_raw(std::as_bytes(std::span(bytes.data(), bytes.size())));
    if (!w) break;
    if (m->outbox.size() == 0) {  // nothing more yet: send now (else the next write joins this batch)
      result<void> sent = co_await m->conn->flush();
      if (!sent) break;
    }
  }
  m->kick.request_stop();  // the client is gone or unreachable: end its reader too
}

struct writer_factory {
  member* m;
  task<void> operator()(std::stop_token st) const { return writer(m, st); }
};

frame_bytes encode(const std::string& json) {
  auto out = std::make_shared<std::string>();
  result<void> r = encode_frame(message::json(json), *out);
  if (!r) throw std::runtime_error("cannot encode a reply: " + r.error().message());
  return out;
}

// What the client asked for: the TEXT of a say, or why not.
bool parse_say(const message_view& m, std::string& text, std::string& why) {
  if (m.content_type != "text/json") {
    why = "chat: expected text/json {\"action\": \"say\", \"value\": TEXT}, got content-type " + std::string(m.content_type);
    return false;
  }
  static thread_local simdjson::dom::parser parser;
  simdjson::dom::element doc;
  simdjson::dom::object obj;
  static_assert(message_view::content_padding >= simdjson::SIMDJSON_PADDING);
  if (parser.parse(reinterpret_cast<const std::uint8_t*>(m.content.data()), m.content.size(), false).get(doc) ||
      doc.get(obj)) {
    why = "chat: the content must be a JSON object {\"action\": \"say\", \"value\": TEXT}";
    return false;
  }
  std::string_view action, value;
  if (obj["action"].get(action) || action != "say") {
    why = "chat: unknown action: the only one is \"say\"";
    return false;
  }
  if (obj["value"].get(value)) {
    why = "chat: \"value\" must be a string";
    return false;
  }
  text = std::string(value);
  return true;
}

task<void> serve_member(room* r, connection& conn, connection_info info) {
  executor& ex = conn.get_socket().get_executor();
  member me(ex, r->capacity, &conn, &info.peer);
  // Reads end when this member is disconnected, or when the server drains.
  struct forward {
    std::stop_source* s;
    void operator()() const noexcept { s->request_stop(); }
  };
  std::optional<std::stop_callback<forward>> drain;
  if (info.read_stop) drain.emplace(*info.read_stop, forward{&me.kick});
  std::stop_token kicked = me.kick.get_token();
  conn.set_read_stop(&kicked);

  task_group g(ex);  // after `me`: joined (below) before `me` goes
  r->join(&me);
  g.spawn(writer_factory{&me});
  std::exception_ptr failed;
  try {
    for (;;) {
      result<message_view> m = co_await conn.read_message();
      if (!m) {
        if (me.kicked) break;
        bool go_on = co_await answer_read_error(conn, info, m.error());
        if (go_on) continue;
        break;
      }
      std::string text, why;
      if (!parse_say(*m, text, why)) {
        // An error goes through the member's own queue, in order with the
        // broadcasts it is owed.
        if (!me.outbox.try_send(encode(error_reply_json(why)))) r->disconnect(&me);
        continue;
      }
      std::string said = "{\"from\": ";
      append_json_string(said, info.peer.to_python());
      said += ", \"said\": ";
      append_json_string(said, text);
      said += "}";
      std::size_t n = r->broadcast(&me, encode(said));
      std::string ack = "{\"result\": ";
      append_json_string(ack, "said to " + std::to_string(n) + (n == 1 ? " other" : " others"));
      ack += "}";
      if (!me.outbox.try_send(encode(ack))) r->disconnect(&me);
    }
  } catch (...) {
    failed = std::current_exception();  // joined below all the same
  }
  r->leave(&me);
  // Queued messages still go out (the writer drains the closed queue), unless
  // this member was disconnected: then the writer stops at once.
  me.outbox.close(make_error_code(std::errc::broken_pipe));
  if (me.kicked) g.request_stop();
  co_await g.join();
  if (failed) std::rethrow_exception(failed);
}

task<void> stop_on_signal(signal_set* sigs, server* srv, std::stop_token st) {
  result<int> sig = co_await sigs->wait({.stop = &st});
  if (sig) srv->drain(std::chrono::seconds(2));
}

task<void> run(executor* ex, server* srv, signal_set* sigs, room* r) {
  task_group g(*ex);
  g.spawn(stop_on_signal(sigs, srv, g.get_stop_token()));
  connection_options o;
  o.limits.max_content_length = r->max_message;
  // A member who only listens sends nothing for as long as it likes (review
  // 51: the default idle timeout cut off a reader after 5 minutes while
  // messages reached it). One that has gone is found by its writes
  // (write_timeout, the full queue) once something is said.
  o.idle_timeout = std::chrono::nanoseconds(0);
  task<void> serving = srv->serve(framed(std::bind_front(&serve_member, r), o));
  co_await std::move(serving);
  g.request_stop();
  co_await g.join();
}

[[noreturn]] void usage_error(const std::string& msg) {
  std::fprintf(stderr, "ringframe-example-chat: %s\n%s", msg.c_str(), usage_text);
  std::exit(2);
}

}  // namespace

int main(int argc, char** argv) {
  room r;
  std::vector<std::string> args;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "-h" || a == "--help") {
      std::fputs(usage_text, stdout);
      return 0;
    }
    if (a == "-q" || a == "--quiet") {
      r.quiet = true;
    } else if (a == "--queue") {
      if (i + 1 >= argc) usage_error("--queue needs a number");
      char* end = nullptr;
      unsigned long n = std::strtoul(argv[++i], &end, 10);
      if (!*argv[i] || *end || n < 1 || n > 1000000) usage_error(std::string("bad --queue '") + argv[i] + "': expected 1 to 1000000");
      r.capacity = n;
    } else if (a == "--max-message") {
      if (i + 1 >= argc) usage_error("--max-message needs a number");
      char* end = nullptr;
      unsigned long n = std::strtoul(argv[++i], &end, 10);
      if (!*argv[i] || *end || n < 1 || n > 1024 * 1024)
        usage_error(std::string("bad --max-message '") + argv[i] + "': expected 1 to 1048576 bytes");
      r.max_message = n;
    } else if (a.size() > 1 && a[0] == '-') {
      usage_error("unknown option '" + a + "'");
    } else {
      args.push_back(a);
    }
  }
  if (args.size() != 2) usage_error("expected HOST PORT, got " + std::to_string(args.size()) + " arguments");
  result<std::uint16_t> port = parse_port(args[1]);
  if (!port) usage_error("bad port '" + args[1] + "': expected a whole number from 0 to 65535");
  result<std::vector<address>> at = address::resolve(args[0], *port);  // blocking, before the loop
  if (!at || at->empty())  // a HOST that names nothing is bad usage, as for ringframe-server
    usage_error("cannot resolve host '" + args[0] + "': " + (at ? "no address" : at.error().message()));

  try {
    executor ex;
    signal_set sigs(ex, {SIGINT, SIGTERM});
    server_options so;
    so.log_connections = !r.quiet;
    so.log = [](const std::string& line) {
      std::printf("%s\n", line.c_str());
      std::fflush(stdout);
    };
    server srv(ex, so);
    if (result<void> l = srv.listen(at->front()); !l) {
      std::fprintf(stderr, "ringframe-example-chat: cannot listen on %s: %s\n", at->front().to_string().c_str(),
                   l.error().message().c_str());
      return 1;
    }
    std::printf("Listening on %s\n", srv.local_addresses().front().to_python().c_str());
    std::fflush(stdout);
    ex.run(run(&ex, &srv, &sigs, &r));
    std::printf("Stopped: %llu clients served, %llu disconnected for not reading\n",
                static_cast<unsigned long long>(srv.stats().closed), static_cast<unsigned long long>(r.disconnected_full));
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "ringframe-example-chat: %s\n", e.what());
    return 1;
  }
}
