// The stats snapshot (stats.hpp), its Prometheus text (metrics.hpp), the
// handling-time histogram (latency_histogram.hpp), the endpoint on a
// sharded_server, and the JSON escaping of log records (log.hpp).
#include "frames.hpp"
#include "loopback.hpp"

#include <ringframe/app.hpp>
#include <ringframe/handler.hpp>
#include <ringframe/log.hpp>
#include <ringframe/metrics.hpp>
#include <ringframe/sharded_server.hpp>
#include <ringframe/stats.hpp>

#include <doctest/doctest.h>

#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <future>
#include <string>
#include <thread>

using namespace ringframe;
using namespace std::chrono_literals;

namespace {

std::string json_text(std::string_view s) {
  std::string out;
  append_json_text(out, s);
  return out;
}

const std::string echo_frame = testing::raw_frame(
    R"({"byteorder":"little","content-type":"binary/custom-client-binary-type","content-encoding":"binary","content-length":5})",
    "hello");

bool send_all(int fd, const std::string& s) {
  std::size_t done = 0;
  while (done < s.size()) {
    ssize_t n = ::send(fd, s.data() + done, s.size() - done, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    done += static_cast<std::size_t>(n);
  }
  return true;
}

std::string recv_n(int fd, std::size_t n) {
  std::string got;
  char buf[4096];
  while (got.size() < n) {
    ssize_t r = ::recv(fd, buf, std::min(sizeof buf, n - got.size()), 0);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) break;
    got.append(buf, static_cast<std::size_t>(r));
  }
  return got;
}

std::string recv_all(int fd) {
  std::string got;
  char buf[4096];
  for (;;) {
    ssize_t r = ::recv(fd, buf, sizeof buf, 0);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return got;
    got.append(buf, static_cast<std::size_t>(r));
  }
}

// `n` frames sent at once, their echoes read back.
bool echo(int fd, int n) {
  std::string out;
  for (int i = 0; i < n; ++i) out += echo_frame;
  return send_all(fd, out) && recv_n(fd, out.size()) == out;
}

}  // namespace

TEST_CASE("latency_histogram: power-of-two buckets, the last one open") {
  latency_histogram h;
  h.record(0);
  h.record(1024);        // <= 2^10: bucket 0
  h.record(1025);        // bucket 1
  h.record(2048);        // bucket 1
  h.record(1u << 30);    // the last bound: bucket 20
  h.record((1u << 30) + 1);  // beyond: the open bucket
  h.record(~std::uint64_t{0} / 2);
  CHECK(h.counts[0] == 2);
  CHECK(h.counts[1] == 2);
  CHECK(h.counts[20] == 1);
  CHECK(h.counts[latency_histogram::bounds] == 2);
  CHECK(h.count() == 7);
  CHECK(latency_histogram::upper_bound_ns(0) == 1024);
  CHECK(latency_histogram::upper_bound_ns(20) == (1u << 30));
  latency_histogram g;
  g.record(5000);
  g += h;
  CHECK(g.count() == 8);
  CHECK(g.counts[3] == 1);  // 4096 < 5000 <= 8192
}

TEST_CASE("append_json_text: any bytes give valid JSON in valid UTF-8") {
  CHECK(json_text("plain") == R"("plain")");
  CHECK(json_text("a\"b\\c") == R"("a\"b\\c")");
  CHECK(json_text(std::string_view("\x00\x01\n\r\t\x1f\x7f", 7)) == R"("\u0000\u0001\n\r\t\u001f\u007f")");
  CHECK(json_text("caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80") == "\"caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80\"");
  CHECK(json_text("\xe2\x80\xa8\xe2\x80\xa9") == R"("\u2028\u2029")");
  CHECK(json_text("\xff") == R"("\ufffd")");
  CHECK(json_text("\xc0\xaf") == R"("\ufffd\ufffd")");          // overlong '/'
  CHECK(json_text("\xed\xa0\x80") == R"("\ufffd\ufffd\ufffd")");  // a surrogate
  CHECK(json_text("\xf4\x90\x80\x80") == R"("\ufffd\ufffd\ufffd\ufffd")");  // above U+10FFFF
  CHECK(json_text("ok\xc3") == R"("ok\ufffd")");                // cut at the end
  CHECK(json_text("\xe2\x82x") == R"("\ufffd\ufffdx")");        // cut in the middle
}

TEST_CASE("to_json: one object, the record's fields") {
  auto peer = address::from_ip("127.0.0.1", 4242);
  REQUIRE(peer);
  log_record r{log_level::warn, "malformed", &*peer, "bad \"x\"", "Malformed message from ('127.0.0.1', 4242): bad"};
  std::string j = to_json(r, "3");
  CHECK(j.find('\n') == std::string::npos);
  CHECK(j.rfind("{\"ts\":\"", 0) == 0);
  CHECK(j.find(R"("level":"warn","thread":"3","event":"malformed","peer":"127.0.0.1:4242","reason":"bad \"x\"",)") !=
        std::string::npos);
  CHECK(j.back() == '}');
  log_level l;
  CHECK(parse_log_level("debug", l));
  CHECK(l == log_level::debug);
  CHECK(!parse_log_level("verbose", l));
}

TEST_CASE("prometheus_text: cumulative buckets, escaped labels, HELP and TYPE") {
  stats_snapshot s;
  s.backend = "io\"uring";
  s.threads.resize(2);
  s.threads[1].thread = 1;
  s.threads[0].server.messages_in = 7;
  s.threads[1].server.malformed_by_reason[3] = 2;
  s.threads[1].handling_time.record(100);
  s.threads[1].handling_time.record(3000);
  s.threads[1].handling_time.record(2000000000);
  std::string t = prometheus_text(s, "app");
  CHECK(t.find("ringframe_backend_info{backend=\"io\\\"uring\"} 1\n") != std::string::npos);
  CHECK(t.find("# TYPE ringframe_messages_received_total counter\n") != std::string::npos);
  CHECK(t.find("ringframe_messages_received_total{thread=\"0\",mode=\"app\"} 7\n") != std::string::npos);
  CHECK(t.find("ringframe_malformed_messages_total{thread=\"1\",reason=\"header_not_json\"} 2\n") != std::string::npos);
  CHECK(t.find("ringframe_message_handling_seconds_bucket{thread=\"1\",le=\"1.024e-06\"} 1\n") != std::string::npos);
  CHECK(t.find("ringframe_message_handling_seconds_bucket{thread=\"1\",le=\"4.096e-06\"} 2\n") != std::string::npos);
  CHECK(t.find("ringframe_message_handling_seconds_bucket{thread=\"1\",le=\"1.073741824\"} 2\n") != std::string::npos);
  CHECK(t.find("ringframe_message_handling_seconds_bucket{thread=\"1\",le=\"+Inf\"} 3\n") != std::string::npos);
  CHECK(t.find("ringframe_message_handling_seconds_count{thread=\"1\"} 3\n") != std::string::npos);
  CHECK(t.find("ringframe_message_handling_seconds_sum{thread=\"1\"} 2.0000031\n") != std::string::npos);
  CHECK(prometheus_text(s).find("ringframe_messages_received_total{thread=\"0\"} 7\n") != std::string::npos);
}

TEST_CASE("take_thread_stats: open connections' counters count before they close, once after") {
  testing::on_each_backend([](backend_kind k) {
    executor ex(testing::on(k));
    server_options so;
    so.log_connections = false;
    so.measure_handling_time = true;
    server srv(ex, so);
    auto at = address::from_ip("127.0.0.1", 0);
    REQUIRE(at);
    REQUIRE(srv.listen(*at));
    const address bound = srv.local_addresses().at(0);
    ex.spawn(srv.serve(framed(&frame_echo_handler)));

    std::promise<void> sent, checked, closed;
    std::thread client([&] {
      int fd = testing::connect_blocking(bound);
      CHECK(fd >= 0);
      CHECK(echo(fd, 3));
      sent.set_value();
      checked.get_future().wait();
      ::close(fd);
      closed.set_value();
    });
    auto sent_f = sent.get_future();
    // Not run_once(true): with nothing to complete, it would wait for the idle timeout.
    while (sent_f.wait_for(1ms) != std::future_status::ready) ex.run_once(false);
    // The connection is open: its counters are only in the snapshot.
    thread_stats open = take_thread_stats(srv, 5);
    CHECK(open.thread == 5);
    CHECK(open.open_connections == 1);
    CHECK(open.server.accepted == 1);
    CHECK(open.server.messages_in == 3);
    CHECK(open.server.messages_out == 3);
    CHECK(open.server.bytes_in == 3 * echo_frame.size());
    CHECK(srv.stats().messages_in == 0);
    CHECK(open.handling_time.count() == 3);
    CHECK(open.executor.completions > 0);
    checked.set_value();
    auto closed_f = closed.get_future();
    for (int i = 0; i < 5000 && (closed_f.wait_for(1ms) != std::future_status::ready || srv.live_connections() > 0); ++i)
      ex.run_once(false);
    client.join();
    thread_stats after = take_thread_stats(srv);
    CHECK(after.open_connections == 0);
    CHECK(after.server.closed == 1);
    CHECK(after.server.messages_in == 3);  // added once, when it closed
    CHECK(srv.stats().messages_in == 3);
    srv.stop();
    ex.run_until_idle();
  });
}

TEST_CASE("sharded_server: snapshot() from another thread, and GET /metrics on the owner's executor") {
  testing::on_each_backend([](backend_kind k) {
    sharded_server_options o;
    auto at = address::from_ip("127.0.0.1", 0);
    REQUIRE(at);
    o.listen_at = *at;
    o.metrics_at = *at;
    o.metrics_mode = "frame-echo";
    o.threads = 2;
    o.handle_signals = false;
    o.executor.backend = k;
    o.server.log_connections = false;
    o.server.measure_handling_time = true;
    sharded_server srv(std::move(o));
    REQUIRE(srv.start(framed(&frame_echo_handler)));
    const address data = srv.local_address();
    const address metrics = srv.metrics_address();
    CHECK(metrics.port() != 0);
    CHECK(metrics.port() != data.port());

    stats_snapshot got;
    std::string body, not_found;
    std::thread client([&] {
      int fd = testing::connect_blocking(data);
      CHECK(fd >= 0);
      CHECK(echo(fd, 4));
      std::promise<stats_snapshot> p;
      srv.snapshot([&p](stats_snapshot s) { p.set_value(std::move(s)); });
      got = p.get_future().get();
      int m = testing::connect_blocking(metrics);
      CHECK(send_all(m, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"));
      body = recv_all(m);
      ::close(m);
      m = testing::connect_blocking(metrics);
      CHECK(send_all(m, "GET /other HTTP/1.1\r\n\r\n"));
      not_found = recv_all(m);
      ::close(m);
      ::close(fd);
      srv.stop();
    });
    srv.run();
    client.join();
    CHECK(got.backend == srv.backend_name());
    REQUIRE(got.threads.size() == 2);
    CHECK(got.threads[1].thread == 1);
    thread_stats sum = got.total();
    CHECK(sum.open_connections == 1);
    CHECK(sum.server.messages_in == 4);
    CHECK(sum.handling_time.count() == 4);
    CHECK(body.rfind("HTTP/1.1 200 OK\r\n", 0) == 0);
    CHECK(body.find("Content-Type: text/plain; version=0.0.4; charset=utf-8\r\n") != std::string::npos);
    CHECK(body.find("ringframe_connections_open{thread=\"0\"} ") != std::string::npos);
    CHECK(body.find(",mode=\"frame-echo\"} 4\n") != std::string::npos);  // the one connection's shard
    CHECK(not_found.rfind("HTTP/1.1 404 Not Found\r\n", 0) == 0);
    CHECK(srv.stats().messages_in == 4);
  });
}

// A snapshot's last reference may be dropped on any thread (the order that
// carried it to the owner, the shard's answer): what `done` holds must
// still be released on the owner's thread, where it ran. It once was not:
// the /metrics scrape's wait object went on a shard's thread and touched
// the owner's executor there (ThreadSanitizer, e2e-metrics).
TEST_CASE("sharded_server: snapshot()'s callback, and what it holds, is released on the owner's thread") {
  struct probe {
    std::thread::id owner;
    std::atomic<int>* elsewhere = nullptr;
    ~probe() {
      if (std::this_thread::get_id() != owner) elsewhere->fetch_add(1);
    }
  };
  testing::on_each_backend([](backend_kind k) {
    sharded_server_options o;
    auto at = address::from_ip("127.0.0.1", 0);
    REQUIRE(at);
    o.listen_at = *at;
    o.threads = 2;
    o.handle_signals = false;
    o.executor.backend = k;
    o.server.log_connections = false;
    sharded_server srv(std::move(o));
    REQUIRE(srv.start(framed(&frame_echo_handler)));
    std::atomic<int> elsewhere{0};
    const std::thread::id owner = std::this_thread::get_id();
    constexpr int rounds = 3000;
    int answered = 0;
    std::thread client([&] {
      for (int i = 0; i < rounds; ++i) {
        auto held = std::make_shared<probe>();
        held->owner = owner;
        held->elsewhere = &elsewhere;
        std::promise<void> p;
        srv.snapshot([held = std::move(held), &p](stats_snapshot) { p.set_value(); });
        p.get_future().get();
        ++answered;
      }
      srv.stop();
    });
    srv.run();
    client.join();
    CHECK(answered == rounds);
    CHECK(elsewhere.load() == 0);
  });
}
