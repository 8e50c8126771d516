// The twenty-eighth review: the metrics endpoint, logs and signals
// (metrics_endpoint, metrics, log, signals, and how ringframe-server wires
// them). The F cases fail without their fix. Every wait is bounded and
// every socket is on loopback; each test runs on io_uring and on epoll.
// F1 runs the ringframe-server binary (its path in RINGFRAME_SERVER, set by
// tests/meson.build): the text log sink it tests is the program's own.
#include "child_process.hpp"
#include "failing_allocator.hpp"
#include "frames.hpp"
#include "loopback.hpp"

#include <ringframe/executor.hpp>
#include <ringframe/metrics_endpoint.hpp>
#include <ringframe/signals.hpp>
#include <ringframe/socket.hpp>
#include <ringframe/task.hpp>
#include <ringframe/timer.hpp>

#include <doctest/doctest.h>

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <new>
#include <regex>
#include <sstream>
#include <stop_token>
#include <string>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

extern char** environ;

using namespace ringframe;
using namespace std::chrono_literals;
using testing::on;
using testing::on_each_backend;

namespace {

const char* backend_arg(backend_kind k) { return k == backend_kind::epoll ? "epoll" : "io_uring"; }

std::string file_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> out;
  std::size_t from = 0;
  while (from < text.size()) {
    std::size_t nl = text.find('\n', from);
    if (nl == std::string::npos) nl = text.size();
    out.push_back(text.substr(from, nl - from));
    from = nl + 1;
  }
  return out;
}

// Polls `path` until it holds `what` or 10 s have passed.
bool wait_for_text(const std::string& path, const std::string& what) {
  const auto until = std::chrono::steady_clock::now() + 10s;
  while (std::chrono::steady_clock::now() < until) {
    if (file_text(path).find(what) != std::string::npos) return true;
    std::this_thread::sleep_for(20ms);
  }
  return false;
}

// A blocking loopback client with 5 s timeouts; -1 on failure.
int connect_blocking(int port) {
  auto at = address::from_ip("127.0.0.1", static_cast<std::uint16_t>(port));
  return at ? testing::connect_blocking(*at) : -1;
}

// SIGTERM, then the exit waited for (10 s, then SIGKILL).
int stop_child(pid_t pid) {
  ::kill(pid, SIGTERM);
  int status = 0;
  const auto until = std::chrono::steady_clock::now() + 10s;
  while (::waitpid(pid, &status, WNOHANG) == 0) {
    if (std::chrono::steady_clock::now() > until) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, &status, 0);
      return -1;
    }
    std::this_thread::sleep_for(10ms);
  }
  return status;
}

// ---- the metrics endpoint, driven in-process -------------------------------

// One scrape: connect, send a GET, read until the server closes. "" when
// nobody answers (the endpoint is gone: the connect is refused).
task<std::string> scrape(executor* ex, address at) {
  result<ringframe::socket> c = co_await ringframe::connect(*ex, at, {.timeout = 5s});
  if (!c) co_return std::string();
  result<std::size_t> sent = co_await c->send_all(std::string_view("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"), {.timeout = 5s});
  if (!sent) co_return std::string();
  std::string got;
  std::byte buf[4096];
  for (;;) {
    result<std::size_t> n = co_await c->recv(buf, {.timeout = 5s});
    if (!n || *n == 0) break;
    got.append(reinterpret_cast<const char*>(buf), *n);
  }
  co_return got;
}

task<result<std::string>> up(std::stop_token) { co_return std::string("up 1\n"); }

// The endpoint on `l` (max_connections 1), then `n` scrapes one after the
// other, then stop. Before each next scrape the last one's connection has
// ended on the endpoint's side too (only serve_metrics is left spawned), so
// that its slot is free: a scrape closed at once means a slot lost.
// `out` holds n replies, sized by the caller: F3's failing allocation must
// not hit the test's own bookkeeping.
std::size_t arm_once_up = 0;  // F3: the size whose allocation fails, armed once the endpoint is up
task<void> scrapes(executor* ex, ringframe::socket l, address at, std::vector<std::string>* out) {
  const int n = static_cast<int>(out->size());
  std::stop_source stop;
  metrics_endpoint_options o;
  o.max_connections = 1;
  o.request_timeout = 2s;
  ex->spawn(serve_metrics(*ex, std::move(l), metrics_source(&up), o, stop.get_token()));
  // F3 arms its failure only once the endpoint is up (waiting on its first
  // accept): an allocation of serve_metrics' own start (its state has the
  // wrapper's size in some builds) failing ends the endpoint before it
  // serves anything, which is not what F3 is about.
  {
    result<void> slept = co_await sleep_for(*ex, 1ms);
    REQUIRE(slept);
  }
  if (arm_once_up != 0) testing::failing_allocator::fail_allocation_of_size = arm_once_up;
  for (int i = 0; i < n; ++i) {
    // F3 makes one allocation fail, wherever it falls: the scrape's own
    // frame included (an empty reply, like a connection closed unanswered).
    std::string got;
    try {
      got = co_await scrape(ex, at);
    } catch (const std::bad_alloc&) {
    }
    (*out)[static_cast<std::size_t>(i)] = std::move(got);
    const auto until = std::chrono::steady_clock::now() + 2s;
    while (ex->live_tasks() > 1 && std::chrono::steady_clock::now() < until) {
      result<void> slept = co_await sleep_for(*ex, 1ms);
      if (!slept) CHECK(slept.error() == std::errc::not_enough_memory);  // its waiter (epoll), F3 again
    }
  }
  stop.request_stop();
}

// The submit hook of F2: the first accept request's submission throws what
// a backend's submit throws (epoll: bad_alloc; io_uring: system_error when
// a full submission queue cannot be drained).
int accepts_to_fail = 0;
bool fail_with_bad_alloc = false;
void fail_an_accept(const detail::io_request& r) {
  if (r.op != detail::io_op::accept || accepts_to_fail == 0) return;
  --accepts_to_fail;
  if (fail_with_bad_alloc) throw std::bad_alloc();
  throw std::system_error(errno_code(EAGAIN), "ringframe: io_uring submission stalled (injected)");
}

}  // namespace

// ---- F1: ringframe-server's text log and a record holding a NUL or a newline ----
//
// A record's text may hold any bytes: a malformed frame's reason quotes the
// peer's content-encoding after JSON decoding, so "\u0000" and "\n" in the
// header become a NUL and a newline in the line. The text sink wrote the
// line with fputs: everything from the NUL on was lost, the line's own
// newline with it, and the next record was glued onto it ("...content-encoding
// \"aMalformed message from ..."). A newline let the peer start a line of its
// own choosing in the log. Each record must stay one whole line, with all
// of its text.
TEST_CASE("review28 F1: ringframe-server's text log keeps a record with a NUL or a newline on one whole line") {
  const char* server = std::getenv("RINGFRAME_SERVER");
  REQUIRE_MESSAGE(server != nullptr, "RINGFRAME_SERVER: the ringframe-server binary (tests/meson.build sets it)");
  on_each_backend([server](backend_kind k) {
    char out_path[] = "/tmp/ringframe-review28-XXXXXX";
    int out_fd = ::mkstemp(out_path);
    REQUIRE(out_fd >= 0);
    ::close(out_fd);
    posix_spawn_file_actions_t fa;
    REQUIRE(::posix_spawn_file_actions_init(&fa) == 0);
    ::posix_spawn_file_actions_addopen(&fa, 1, out_path, O_WRONLY | O_TRUNC, 0);
    ::posix_spawn_file_actions_addopen(&fa, 2, "/dev/null", O_WRONLY, 0);
    std::vector<std::string> args = {server, "--mode", "app", "--threads", "1", "--backend", backend_arg(k),
                                     "127.0.0.1", "0"};
    std::vector<char*> argv;
    for (std::string& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    pid_t pid = -1;
    const int spawned = ::posix_spawn(&pid, server, &fa, nullptr, argv.data(), environ);
    ::posix_spawn_file_actions_destroy(&fa);
    REQUIRE(spawned == 0);

    bool listening = wait_for_text(out_path, "Listening on ");
    std::smatch m;
    const std::string head = file_text(out_path);
    const bool have_port = std::regex_search(head, m, std::regex(R"(Listening on \('127\.0\.0\.1', (\d+)\))"));
    bool closed_logged = false;
    if (listening && have_port) {
      int fd = connect_blocking(std::stoi(m[1].str()));
      CHECK(fd >= 0);
      if (fd >= 0) {
        // Each is in sync (its end is known): answered with an error, and
        // the connection stays open. One reason with a NUL, one with a newline.
        for (const char* encoding : {R"(a\u0000b c)", R"(d\nFORGED e)"}) {
          const std::string frame = testing::raw_frame(
              std::string(R"({"byteorder":"little","content-type":"text/json","content-encoding":")") + encoding +
                  R"(","content-length":2})",
              "{}");
          CHECK(::send(fd, frame.data(), frame.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(frame.size()));
          char buf[4096];
          CHECK(::recv(fd, buf, sizeof buf, 0) > 0);  // the error reply: the record is written by now
        }
        ::close(fd);
        closed_logged = wait_for_text(out_path, "Closing connection to");
      }
    }
    const int status = stop_child(pid);
    const std::string out = file_text(out_path);
    ::unlink(out_path);
    REQUIRE(listening);
    REQUIRE(have_port);
    CHECK(closed_logged);
    CHECK(WIFEXITED(status));
    INFO("the log:\n" << out);
    std::vector<std::string> lines = lines_of(out);
    int malformed = 0, closing = 0;
    bool nul_kept = false, newline_kept = false;
    for (const std::string& l : lines) {
      if (l.starts_with("Malformed message from ")) {
        ++malformed;
        CHECK(l.find("Malformed message from ", 1) == std::string::npos);  // the next record glued on
        CHECK(l.find("Closing connection") == std::string::npos);
        CHECK(l.find('\0') == std::string::npos);
        nul_kept = nul_kept || l.find("b c\"") != std::string::npos;  // the rest of the reason is there
        newline_kept = newline_kept || l.find("FORGED e\"") != std::string::npos;
      }
      if (l.starts_with("Closing connection to ")) ++closing;
      CHECK_FALSE(l.starts_with("FORGED"));  // a line of the peer's making
    }
    CHECK(nul_kept);
    CHECK(newline_kept);
    CHECK(malformed == 2);
    CHECK(closing == 1);
  });
}

// ---- F2: one accept whose submission throws ended the metrics endpoint ----
//
// serve_metrics awaited its accept outside any try: what the submission
// threw (a backend's submit throws std::bad_alloc on epoll, std::system_error
// on io_uring when the submission queue cannot be drained) left the accept
// loop, the spawned serve_metrics ended (its exception only printed on
// stderr), and its listener closed: every later scrape was refused, for the
// life of the server. It must be taken as EMFILE is: a pause, then accept again.
TEST_CASE("review28 F2: an accept whose submission throws does not end the metrics endpoint for good") {
  on_each_backend([](backend_kind k) {
    for (bool bad_alloc : {false, true}) {
      CAPTURE(bad_alloc);
      executor ex(on(k));
      address at;
      ringframe::socket l = testing::loopback_listener(ex, at);
      accepts_to_fail = 1;
      fail_with_bad_alloc = bad_alloc;
      detail::submit_test_hook = &fail_an_accept;
      std::vector<std::string> got;
      try {
        got.assign(2, std::string());
        ex.run(scrapes(&ex, std::move(l), at, &got));
      } catch (...) {
        detail::submit_test_hook = nullptr;
        throw;
      }
      detail::submit_test_hook = nullptr;
      ex.run_until_idle();
      CHECK(accepts_to_fail == 0);  // the injected failure happened
      REQUIRE(got.size() == 2);
      for (const std::string& g : got) {
        INFO("reply: " << g);
        CHECK(g.starts_with("HTTP/1.1 200 OK\r\n"));
        CHECK(g.ends_with("\r\n\r\nup 1\n"));
      }
    }
  });
}

// ---- F3: a connection that cannot be spawned kept its slot --------------
//
// serve_metrics took the connection's slot (live) before spawning its
// coroutine; the spawn throws std::bad_alloc when the coroutine's wrapper
// frame (or the ready queue's room) cannot be allocated, and then the
// coroutine is destroyed before its first line, the one that gives the
// slot back on every way out. The bad_alloc also left the accept loop: the
// endpoint ended (F2's outcome). Past that, the slot must come back, or
// with max_connections 1 every later scrape is closed unanswered.
//
// Which allocation of the wrapper's size is the connection's spawn depends
// on the build (a sanitizer build's epoll waiters have that size too), so
// the test fails each of them in turn, counted in a dry run: whichever
// fails, at most the scrape it hit goes unanswered, and every later one is
// served. One of them is the connection's spawn.
TEST_CASE("review28 F3: a metrics connection whose spawn throws gives its slot back and the endpoint goes on") {
  using namespace testing::failing_allocator;
  on_each_backend([](backend_kind k) {
    executor ex(on(k));
    // The size of a spawned task's wrapper frame: the first allocation of spawn().
    task<void> nothing = []() -> task<void> { co_return; }();
    start_tracing(-1);
    ex.spawn(std::move(nothing));
    stop_tracing();
    REQUIRE(traced_count >= 1);
    const std::size_t wrapper = traced[0];
    ex.run_until_idle();

    constexpr int scrapes_per_run = 3;
    // Dry run: how many allocations of that size three scrapes make.
    matching_allocations = 0;
    count_only = true;
    arm_once_up = wrapper;
    {
      address at;
      ringframe::socket l = testing::loopback_listener(ex, at);
      std::vector<std::string> got(scrapes_per_run);
      ex.run(scrapes(&ex, std::move(l), at, &got));
      ex.run_until_idle();
      for (const std::string& g : got) REQUIRE(g.starts_with("HTTP/1.1 200 OK\r\n"));
    }
    arm_once_up = 0;
    fail_allocation_of_size = 0;
    count_only = false;
    const int matching = matching_allocations;
    // One spawn per connection, and more.
    REQUIRE(matching >= scrapes_per_run);

    for (int pass = 0; pass < matching; ++pass) {
      CAPTURE(pass);
      address at;
      ringframe::socket l = testing::loopback_listener(ex, at);
      std::vector<std::string> got(scrapes_per_run);
      allocations_failed = 0;
      matching_allocations = 0;
      allocations_to_pass = pass;
      arm_once_up = wrapper;
      ex.run(scrapes(&ex, std::move(l), at, &got));
      arm_once_up = 0;
      fail_allocation_of_size = 0;
      allocations_to_pass = 0;
      ex.run_until_idle();
      const int failed = allocations_failed;
      REQUIRE(got.size() == scrapes_per_run);
      int first_empty = scrapes_per_run;
      for (int i = 0; i < scrapes_per_run; ++i)
        if (!got[i].starts_with("HTTP/1.1 200 OK\r\n")) {
          first_empty = i;
          break;
        }
      CHECK(failed <= 1);  // (the last ones may come after the run)
      for (int i = first_empty + 1; i < scrapes_per_run; ++i) {
        INFO("scrape " << i << " after scrape " << first_empty << " went unanswered: " << got[i]);
        CHECK(got[i].starts_with("HTTP/1.1 200 OK\r\n"));
        CHECK(got[i].ends_with("\r\n\r\nup 1\n"));
      }
    }
  });
}

// ---- F4: a signal_set that cannot be made left the signals changed -------
//
// signal_set's constructor blocked its signals, and set an ignored one back
// to its default action, before it made the signalfd; when that failed (out
// of descriptors: the documented std::system_error) it threw with both
// left as they were: a caller that goes on without the set (taking the
// signals the usual way) had them blocked for good (SIGINT, SIGTERM never
// delivered), and one the process had been told to ignore (nohup's SIGHUP)
// would kill it once unblocked. A failed constructor must change nothing.
TEST_CASE("review28 F4: a signal_set whose signalfd cannot be made leaves the signal mask and dispositions as they were") {
  on_each_backend([](backend_kind k) {
    const int code = testing::exit_code_in_child([k] {
      sigset_t usr2;
      sigemptyset(&usr2);
      sigaddset(&usr2, SIGUSR2);
      if (::pthread_sigmask(SIG_UNBLOCK, &usr2, nullptr) != 0) return 20;
      if (::signal(SIGUSR2, SIG_IGN) == SIG_ERR) return 21;
      executor ex(on(k));
      // No descriptor can be made from here on: the lowest free number is
      // the limit.
      const int lowest = ::dup(0);
      if (lowest < 0) return 22;
      ::close(lowest);
      rlimit old{};
      if (::getrlimit(RLIMIT_NOFILE, &old) != 0) return 23;
      rlimit low = old;
      low.rlim_cur = static_cast<rlim_t>(lowest);
      if (::setrlimit(RLIMIT_NOFILE, &low) != 0) return 24;
      bool threw = false;
      try {
        signal_set set(ex, {SIGUSR2});
      } catch (const std::system_error&) {
        threw = true;
      }
      ::setrlimit(RLIMIT_NOFILE, &old);
      if (!threw) return 25;  // the test did not reach the failure
      sigset_t now;
      if (::pthread_sigmask(SIG_SETMASK, nullptr, &now) != 0) return 26;
      if (sigismember(&now, SIGUSR2)) return 2;  // still blocked
      struct sigaction act {};
      if (::sigaction(SIGUSR2, nullptr, &act) != 0) return 27;
      if (act.sa_handler != SIG_IGN) return 3;  // no longer ignored
      return 0;
    });
    INFO("2: SIGUSR2 left blocked; 3: no longer ignored; 2x: the test's own setup");
    CHECK(code == 0);
  });
}
