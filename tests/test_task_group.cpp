// task_group and submit_to: ordering, cancellation through stop tokens,
// exceptions, destruction while suspended (the executor's teardown, a group
// destroyed unjoined), and work carried across executors on two threads.
// Each test runs on io_uring and on epoll (testing::on_each_backend).
#include "loopback.hpp"

#include <ringframe/event.hpp>
#include <ringframe/executor.hpp>
#include <ringframe/handler.hpp>
#include <ringframe/server.hpp>
#include <ringframe/socket.hpp>
#include <ringframe/submit_to.hpp>
#include <ringframe/task_group.hpp>
#include <ringframe/timer.hpp>

#include <doctest/doctest.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <csignal>
#include <cstdio>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <stop_token>
#include <string>
#include <thread>
#include <vector>

#include <sys/wait.h>
#include <unistd.h>

using namespace ringframe;
using namespace std::chrono_literals;
using clk = std::chrono::steady_clock;

namespace {

struct probe {
  bool started = false;
  bool finished = false;
  std::error_code ec;
};

void drain(executor& ex) {
  for (int i = 0; i < 100 && ex.inflight() > 0; ++i) REQUIRE(ex.run_once(true));
  CHECK(ex.inflight() == 0);
}

task<void> record_after(executor* ex, std::chrono::milliseconds d, int v, std::vector<int>* order) {
  order->push_back(-v);  // started
  result<void> r = co_await sleep_for(*ex, d);
  REQUIRE(r);
  order->push_back(v);
}

task<void> sleep_stoppable(executor* ex, std::chrono::milliseconds d, std::stop_token st, probe* p) {
  p->started = true;
  result<void> r = co_await sleep_for(*ex, d, &st);
  p->finished = true;
  p->ec = r.error();
}

task<void> recv_stoppable(ringframe::socket* s, std::stop_token st, probe* p) {
  p->started = true;
  std::byte buf[16];
  result<std::size_t> n = co_await s->recv(buf, {.timeout = 10s, .stop = &st});
  p->finished = true;
  p->ec = n.error();
}

task<void> throw_after(executor* ex, std::chrono::milliseconds d, std::string what) {
  result<void> r = co_await sleep_for(*ex, d);
  REQUIRE(r);
  throw std::runtime_error(what);
}

// Never resumed by anything: only the executor's teardown ends it.
struct forever {
  bool await_ready() const noexcept { return false; }
  void await_suspend(std::coroutine_handle<>) const noexcept {}
  void await_resume() const noexcept {}
};
task<void> wait_forever(bool* destroyed_flag) {
  struct on_destroy {
    bool* f;
    ~on_destroy() { *f = true; }
  } d{destroyed_flag};
  co_await forever{};
}

// ---- the coroutines the tests run ----

task<void> order_and_join(executor* ex) {
  std::vector<int> order;
  task_group g(*ex);
  co_await g.join();  // nothing to wait for
  g.spawn(record_after(ex, 40ms, 1, &order));
  g.spawn(record_after(ex, 10ms, 2, &order));
  g.spawn(record_after(ex, 25ms, 3, &order));
  CHECK(g.size() == 3);
  CHECK(order.empty());  // they start on the next loop turn
  auto t0 = clk::now();
  co_await g.join();
  CHECK(g.empty());
  // Started in spawn order, finished in time order, all before join returned.
  CHECK(order == std::vector<int>{-1, -2, -3, 2, 3, 1});
  CHECK(clk::now() - t0 >= 40ms);
  // The group is used again after a join.
  g.spawn(record_after(ex, 1ms, 4, &order));
  co_await g.join();
  CHECK(order.back() == 4);
}

struct sleep_factory {
  executor* ex;
  std::chrono::milliseconds d;
  probe* p;
  task<void> operator()(std::stop_token st) const { return sleep_stoppable(ex, d, st, p); }
};
struct recv_factory {
  ringframe::socket* s;
  probe* p;
  task<void> operator()(std::stop_token st) const { return recv_stoppable(s, st, p); }
};

task<void> failure_cancels_the_rest(executor* ex) {
  auto [a, b] = testing::socket_pair(*ex);
  probe sleeping, receiving;
  task_group g(*ex);
  g.spawn(sleep_factory{ex, 10000ms, &sleeping});
  g.spawn(recv_factory{&a, &receiving});
  g.spawn(throw_after(ex, 20ms, "first"));
  g.spawn(throw_after(ex, 40ms, "second"));  // cancelled? no token: it runs out and its exception is dropped
  auto t0 = clk::now();
  bool caught = false;
  try {
    co_await g.join();
  } catch (const std::runtime_error& e) {
    caught = true;
    CHECK(std::string(e.what()) == "first");
  }
  CHECK(caught);
  CHECK(g.stop_requested());
  // Everyone had finished when join returned, the blocked ones cancelled.
  CHECK(sleeping.finished);
  CHECK(sleeping.ec == std::errc::operation_canceled);
  CHECK(receiving.finished);
  CHECK(receiving.ec == std::errc::operation_canceled);
  CHECK(clk::now() - t0 < 5s);
  // The exception is rethrown once; a later join has nothing to report.
  co_await g.join();
  // Stop stays requested: a child spawned now is cancelled at once.
  probe late;
  g.spawn(sleep_factory{ex, 10000ms, &late});
  co_await g.join();
  CHECK(late.ec == std::errc::operation_canceled);
}

task<void> stop_cancels_children(executor* ex) {
  probe p1, p2;
  task_group g(*ex);
  g.spawn(sleep_factory{ex, 10000ms, &p1});
  g.spawn(sleep_stoppable(ex, 10000ms, g.get_stop_token(), &p2));
  result<void> r = co_await sleep_for(*ex, 10ms);
  REQUIRE(r);
  CHECK(p1.started);
  CHECK(p2.started);
  g.request_stop();
  CHECK_FALSE(p1.finished);  // cancellation is delivered through the loop
  co_await g.join();
  CHECK(p1.ec == std::errc::operation_canceled);
  CHECK(p2.ec == std::errc::operation_canceled);
}

task<void> shared_stop_source(executor* ex) {
  std::stop_source outer;
  probe p;
  task_group g(*ex, outer);
  g.spawn(sleep_factory{ex, 10000ms, &p});
  result<void> r = co_await sleep_for(*ex, 5ms);
  REQUIRE(r);
  outer.request_stop();  // the owner's stop is the group's
  co_await g.join();
  CHECK(p.ec == std::errc::operation_canceled);
  CHECK(g.stop_requested());
}

task<void> inner_group(executor* ex, int* done) {
  task_group inner(*ex);
  std::vector<int> order;
  inner.spawn(record_after(ex, 5ms, 1, &order));
  inner.spawn(record_after(ex, 1ms, 2, &order));
  co_await inner.join();
  CHECK(order.size() == 4);
  ++*done;
}

task<void> nested_groups(executor* ex) {
  int done = 0;
  task_group outer(*ex);
  for (int i = 0; i < 3; ++i) outer.spawn(inner_group(ex, &done));
  co_await outer.join();
  CHECK(done == 3);
}

task<void> second_joiner(task_group* g, bool* threw) {
  try {
    co_await g->join();
  } catch (const std::logic_error&) {
    *threw = true;
  }
}

task<void> two_joiners(executor* ex) {
  probe p;
  bool threw = false;
  task_group g(*ex);
  g.spawn(sleep_factory{ex, 30ms, &p});
  task_group side(*ex);
  side.spawn(second_joiner(&g, &threw));
  result<void> r = co_await sleep_for(*ex, 5ms);  // the side joiner waits by now
  REQUIRE(r);
  co_await side.join();  // the only joiner: it waited for g's child
  CHECK_FALSE(threw);
  // Now two at once: the second fails.
  g.spawn(sleep_factory{ex, 30ms, &p});
  side.spawn(second_joiner(&g, &threw));
  result<void> r2 = co_await sleep_for(*ex, 5ms);
  REQUIRE(r2);
  bool me_threw = false;
  try {
    co_await g.join();
  } catch (const std::logic_error&) {
    me_threw = true;
  }
  CHECK(me_threw);
  co_await side.join();
  co_await g.join();
}

// The owner of a group, suspended in join() with children that nothing
// will ever resume, when the executor is destroyed.
task<void> owner_of_stuck_children(executor* ex, bool* a, bool* b, bool* owner_reached_end) {
  task_group g(*ex);
  g.spawn(wait_forever(a));
  g.spawn(wait_forever(b));
  co_await g.join();
  *owner_reached_end = true;
}

// A child that spawns into its own group while the owner joins.
task<void> spawns_more(task_group* g, executor* ex, std::vector<int>* order) {
  result<void> r = co_await sleep_for(*ex, 5ms);
  REQUIRE(r);
  g->spawn(record_after(ex, 5ms, 9, order));
}

task<void> child_spawns_sibling(executor* ex) {
  std::vector<int> order;
  task_group g(*ex);
  g.spawn(spawns_more(&g, ex, &order));
  co_await g.join();
  CHECK(order == std::vector<int>{-9, 9});
}

}  // namespace

TEST_CASE("task_group: children start in spawn order; join waits for all; the group is reusable") {
  testing::on_each_backend([](backend_kind k) {
    executor ex(testing::on(k));
    ex.run(order_and_join(&ex));
    CHECK(ex.live_tasks() == 0);
    drain(ex);
  });
}

TEST_CASE("task_group: a child's exception cancels the others (ECANCELED) and join rethrows the first") {
  testing::on_each_backend([](backend_kind k) {
    executor ex(testing::on(k));
    ex.run(failure_cancels_the_rest(&ex));
    CHECK(ex.live_tasks() == 0);
    drain(ex);
  });
}

TEST_CASE("task_group: request_stop and a shared stop source cancel every child") {
  testing::on_each_backend([](backend_kind k) {
    executor ex(testing::on(k));
    ex.run(stop_cancels_children(&ex));
    ex.run(shared_stop_source(&ex));
    CHECK(ex.live_tasks() == 0);
    drain(ex);
  });
}

TEST_CASE("task_group: nested groups, a child spawning a sibling, one joiner at a time") {
  testing::on_each_backend([](backend_kind k) {
    executor ex(testing::on(k));
    ex.run(nested_groups(&ex));
    ex.run(child_spawns_sibling(&ex));
    ex.run(two_joiners(&ex));
    CHECK(ex.live_tasks() == 0);
    drain(ex);
  });
}

task<void> hold_group(std::unique_ptr<task_group> g) { co_await g->join(); }

TEST_CASE("task_group: the executor destroyed while the owner waits in join() destroys the children, no leak") {
  testing::on_each_backend([](backend_kind k) {
    SUBCASE("the children are destroyed first") {
    bool a = false, b = false, end = false;
    {
      executor ex(testing::on(k));
      ex.spawn(owner_of_stuck_children(&ex, &a, &b, &end));
      for (int i = 0; i < 5; ++i) ex.run_once(false);
      CHECK(ex.live_tasks() == 3);  // the owner's wrapper and two children
      CHECK_FALSE(a);
    }
    // Destroyed, not resumed (ASan: nothing touched freed memory, nothing leaked).
    CHECK(a);
    CHECK(b);
    CHECK_FALSE(end);
    }
    SUBCASE("the group is destroyed first: it lets go of its children") {
      bool a = false, b = false;
      {
        executor ex(testing::on(k));
        auto g = std::make_unique<task_group>(ex);
        g->spawn(wait_forever(&a));
        g->spawn(wait_forever(&b));
        ex.spawn(hold_group(std::move(g)));  // newer than the children: destroyed before them
        for (int i = 0; i < 5; ++i) ex.run_once(false);
        CHECK(ex.live_tasks() == 3);
      }
      CHECK(a);
      CHECK(b);
    }
  });
}

TEST_CASE("task_group: destroyed unjoined while children run, it stops the process with a message") {
  // A programming error (children would run on in freed memory), as seastar's
  // gate and folly's AsyncScope treat it. Checked in every build.
  char path[] = "/tmp/ringframe-task-group-XXXXXX";
  int fd = ::mkstemp(path);
  REQUIRE(fd >= 0);
  pid_t pid = fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    (void)!std::freopen("/dev/null", "w", stdout);  // doctest's report of the abort
    ::dup2(fd, 2);
    executor ex;
    probe p;
    {
      task_group g(ex);
      g.spawn(sleep_factory{&ex, 10000ms, &p});
      ex.run_once(false);
    }  // must not return
    _exit(0);
  }
  int status = 0;
  REQUIRE(waitpid(pid, &status, 0) == pid);
  // std::terminate: SIGABRT (ThreadSanitizer's runtime turns the abort into
  // an exit with its own status); never a return from the scope (status 0).
  CHECK_FALSE((WIFEXITED(status) && WEXITSTATUS(status) == 0));
  char buf[512] = {};
  ssize_t n = ::pread(fd, buf, sizeof buf - 1, 0);
  ::close(fd);
  ::unlink(path);
  REQUIRE(n > 0);
  CHECK(std::string(buf).find("task_group was destroyed while 1 of its children were still running") != std::string::npos);
}

// ---- the server's groups ----

namespace {

struct helper_log {
  int finished = 0;
  std::error_code ec;
  bool conn_alive_at_end = false;
};

// A helper of a framed connection: waits for its group's stop, then says
// goodbye on the connection (which must still be there).
task<void> framed_helper(connection* conn, std::stop_token st, helper_log* log) {
  result<void> r = co_await sleep_for(conn->get_socket().get_executor(), 10s, &st);
  log->ec = r.error();
  result<void> w = co_await conn->write(message::json(R"({"bye": true})"));
  log->conn_alive_at_end = bool(w);
  ++log->finished;
}

struct framed_helper_factory {
  connection* conn;
  helper_log* log;
  task<void> operator()(std::stop_token st) const { return framed_helper(conn, st, log); }
};

helper_log* the_helper_log = nullptr;  // handlers take plain parameters

// Reads one message, starts a helper, returns: the helper is stopped and
// joined before the connection goes.
task<void> one_message_then_return(connection& conn, connection_info info) {
  result<message_view> m = co_await conn.read_message();
  if (!m) co_return;
  info.helpers().spawn(framed_helper_factory{&conn, the_helper_log});
}

// A stream handler's helper uses the handler's socket parameter after the
// handler has returned.
task<void> stream_helper(ringframe::socket* s, std::stop_token st, helper_log* log) {
  result<void> r = co_await sleep_for(s->get_executor(), 10s, &st);
  log->ec = r.error();
  result<std::size_t> n = co_await s->send_all(std::string_view("bye"), {.timeout = 5s});
  log->conn_alive_at_end = bool(n);
  ++log->finished;
}
struct stream_helper_factory {
  ringframe::socket* s;
  helper_log* log;
  task<void> operator()(std::stop_token st) const { return stream_helper(s, st, log); }
};
task<void> stream_returns_at_once(ringframe::socket s, connection_info info) {
  info.helpers().spawn(stream_helper_factory{&s, the_helper_log});
  co_return;
}

// Sends one request (unless `quiet`: a stream handler that reads nothing
// would reset the connection when it closes with the request unread), then
// reads until the server closes.
// The handler throws after starting a helper; the helper is still stopped
// and joined (and may still use the socket) before the connection ends.
task<void> stream_throws(ringframe::socket s, connection_info info) {
  info.helpers().spawn(stream_helper_factory{&s, the_helper_log});
  throw std::runtime_error("handler boom");
  co_return;
}
task<void> throwing_helper(std::stop_token) {
  throw std::runtime_error("helper boom");
  co_return;
}
task<void> stream_helper_throws(ringframe::socket s, connection_info info) {
  info.helpers().spawn(&throwing_helper);
  // The helper's failure stops the group: wait for that, then return.
  std::stop_token st = info.helpers().get_stop_token();
  result<void> r = co_await sleep_for(s.get_executor(), 10s, &st);
  CHECK(r.error() == std::errc::operation_canceled);
}

task<void> framed_client(executor* ex, address to, server* srv, std::string* got, bool quiet) {
  result<ringframe::socket> c = co_await ringframe::connect(*ex, to, {.timeout = 5s});
  REQUIRE(c);
  if (!quiet) {
    std::string req;
    REQUIRE(encode_frame(message::json(R"({"hi": 1})"), req));
    result<std::size_t> sent = co_await c->send_all(req, {.timeout = 5s});
    REQUIRE(sent);
  }
  char buf[512];
  for (;;) {
    result<std::size_t> n = co_await c->recv(std::as_writable_bytes(std::span(buf)), {.timeout = 5s});
    REQUIRE(n);
    if (*n == 0) break;  // the server closed after the goodbye
    got->append(buf, *n);
  }
  srv->stop();
}

task<void> serve_with(server* srv, server::stream_handler h) { co_await srv->serve(std::move(h)); }

server_options quiet_options() {
  server_options o;
  o.log_connections = false;
  return o;
}

}  // namespace

TEST_CASE("server: a handler's helpers (connection_info::helpers) are stopped and joined before the connection goes") {
  testing::on_each_backend([](backend_kind k) {
    SUBCASE("framed") {
      executor ex(testing::on(k));
      helper_log log;
      the_helper_log = &log;
      server srv(ex, quiet_options());
      auto at = address::from_ip("127.0.0.1", 0);
      REQUIRE(srv.listen(*at));
      address to = srv.local_addresses().front();
      ex.spawn(serve_with(&srv, framed(&one_message_then_return)));
      std::string got;
      ex.run(framed_client(&ex, to, &srv, &got, false));
      ex.run_until_idle();
      CHECK(log.finished == 1);
      CHECK(log.ec == std::errc::operation_canceled);
      CHECK(log.conn_alive_at_end);
      CHECK(got.find(R"({"bye": true})") != std::string::npos);  // written by the helper, sent on close
      CHECK(srv.live_connections() == 0);
      CHECK(ex.live_tasks() == 0);
      drain(ex);
    }
    SUBCASE("stream") {
      executor ex(testing::on(k));
      helper_log log;
      the_helper_log = &log;
      server srv(ex, quiet_options());
      auto at = address::from_ip("127.0.0.1", 0);
      REQUIRE(srv.listen(*at));
      address to = srv.local_addresses().front();
      ex.spawn(serve_with(&srv, &stream_returns_at_once));
      std::string got;
      ex.run(framed_client(&ex, to, &srv, &got, true));
      ex.run_until_idle();
      CHECK(log.finished == 1);
      CHECK(log.conn_alive_at_end);
      CHECK(got == "bye");
      CHECK(ex.live_tasks() == 0);
      drain(ex);
    }
  });
}

TEST_CASE("server: a handler or a helper that throws: logged, and the helpers are joined before the socket closes") {
  testing::on_each_backend([](backend_kind k) {
    executor ex(testing::on(k));
    helper_log log;
    the_helper_log = &log;
    std::vector<std::string> lines;
    server_options o = quiet_options();
    o.log = [&lines](const std::string& l) { lines.push_back(l); };
    std::string got;
    SUBCASE("the handler throws") {
      server srv(ex, o);
      REQUIRE(srv.listen(*address::from_ip("127.0.0.1", 0)));
      address to = srv.local_addresses().front();
      ex.spawn(serve_with(&srv, &stream_throws));
      ex.run(framed_client(&ex, to, &srv, &got, true));
      ex.run_until_idle();
      CHECK(log.finished == 1);
      CHECK(got == "bye");
      REQUIRE(lines.size() == 1);
      CHECK(lines[0].find("handler for ('127.0.0.1', ") == 0);
      CHECK(lines[0].find("failed: handler boom") != std::string::npos);
    }
    SUBCASE("a helper throws") {
      server srv(ex, o);
      REQUIRE(srv.listen(*address::from_ip("127.0.0.1", 0)));
      address to = srv.local_addresses().front();
      ex.spawn(serve_with(&srv, &stream_helper_throws));
      ex.run(framed_client(&ex, to, &srv, &got, true));
      ex.run_until_idle();
      REQUIRE(lines.size() == 1);
      CHECK(lines[0].find("a helper of the handler for ('127.0.0.1', ") == 0);
      CHECK(lines[0].find("failed: helper boom") != std::string::npos);
    }
    CHECK(ex.live_tasks() == 0);
    drain(ex);
  });
}

// ---- submit_to ----

namespace {

// An executor on a thread of its own. With a loop: it runs until finish().
// Without: the thread only holds it, never running it, until finish()
// destroys it (what is still in its inbox is dropped then).
class remote_thread {
 public:
  explicit remote_thread(backend_kind k, bool run_loop = true) : run_loop_(run_loop) {
    th_ = std::thread([this, k] { body(k); });
    std::unique_lock<std::mutex> l(m_);
    cv_.wait(l, [this] { return ex_ != nullptr; });
  }
  ~remote_thread() { finish(); }
  remote_thread(const remote_thread&) = delete;
  remote_thread& operator=(const remote_thread&) = delete;
  executor& ex() { return *ex_; }
  void finish() {
    if (!th_.joinable()) return;
    if (run_loop_) {
      ex_->defer(&wake_);
    } else {
      std::lock_guard<std::mutex> l(m_);
      release_ = true;
      cv_.notify_all();
    }
    th_.join();
  }
  std::size_t live_at_end() const { return live_at_end_; }

 private:
  void body(backend_kind k) {
    executor e(testing::on(k));
    {
      std::lock_guard<std::mutex> l(m_);
      ex_ = &e;
    }
    cv_.notify_all();
    if (run_loop_) {
      executor::work_guard g(e);
      while (!stop_seen_) e.run_once(true);
      g.reset();
      e.run_until_idle();
      live_at_end_ = e.live_tasks();
    } else {
      std::unique_lock<std::mutex> l(m_);
      cv_.wait(l, [this] { return release_; });
    }
  }
  struct waker : detail::deferred_call {
    remote_thread* self;
    explicit waker(remote_thread* s) : deferred_call(&waker::run), self(s) {}
    static void run(detail::deferred_call* c, bool) { static_cast<waker*>(c)->self->stop_seen_ = true; }
  };

  bool run_loop_;
  std::thread th_;
  std::mutex m_;
  std::condition_variable cv_;
  executor* ex_ = nullptr;
  bool release_ = false;
  bool stop_seen_ = false;  // the remote thread's own
  std::size_t live_at_end_ = 0;  // read after join
  waker wake_{this};
};

// Runs on the target: where it ran, and a value.
task<int> where_am_i(std::thread::id* where, int v, std::stop_token) {
  *where = std::this_thread::get_id();
  co_return v * 2;
}
struct where_factory {
  std::thread::id* where;
  int v;
  task<int> operator()(std::stop_token st) const { return where_am_i(where, v, st); }
};

task<result<std::string>> fails_as_value(std::stop_token) { co_return std::errc::no_such_file_or_directory; }
task<void> throws_remote(std::stop_token) {
  throw std::runtime_error("thrown on the target");
  co_return;
}

// Sleeps on the target until cancelled; says how it finished.
task<result<int>> sleep_remote(executor* ex, std::atomic<int>* finished, std::stop_token st) {
  finished->store(-1);  // started
  result<void> r = co_await sleep_for(*ex, 10s, &st);
  finished->store(r ? 1 : 2);
  if (!r) co_return r.error();
  co_return 1;
}
struct sleep_remote_factory {
  executor* ex;
  std::atomic<int>* finished;
  task<result<int>> operator()(std::stop_token st) const { return sleep_remote(ex, finished, st); }
};

// Waits on the target for something that never comes (not I/O: a stop does
// not end it); only the target's destruction does.
task<void> stuck_remote(std::atomic<int>* destroyed, std::stop_token) {
  destroyed->store(-1);  // started
  struct on_destroy {
    std::atomic<int>* f;
    ~on_destroy() { f->store(1); }
  } d{destroyed};
  co_await forever{};
}
struct stuck_factory {
  std::atomic<int>* destroyed;
  task<void> operator()(std::stop_token st) const { return stuck_remote(destroyed, st); }
};

task<void> round_trips(executor* here, executor* target) {
  for (int i = 0; i < 20; ++i) {
    std::thread::id where;
    result<int> r = co_await submit_to(*here, *target, where_factory{&where, i});
    REQUIRE(r);
    CHECK(*r == 2 * i);
    CHECK(where != std::this_thread::get_id());  // ran on the target's thread
  }
  // Errors reported as values pass through; exceptions are rethrown here.
  result<std::string> e = co_await submit_to(*here, *target, &fails_as_value);
  CHECK(e.error() == std::errc::no_such_file_or_directory);
  bool caught = false;
  try {
    result<void> v = co_await submit_to(*here, *target, &throws_remote);
    (void)v;
  } catch (const std::runtime_error& x) {
    caught = true;
    CHECK(std::string(x.what()) == "thrown on the target");
  }
  CHECK(caught);
}

task<void> collect(executor* here, executor* target, where_factory f, int* out) {
  result<int> r = co_await submit_to(*here, *target, f);
  REQUIRE(r);
  *out = *r;
}

task<void> several_at_once(executor* here, executor* target, int* sum) {
  // Three submissions in flight at once, from a group on the caller.
  std::thread::id w1, w2, w3;
  int got[3] = {0, 0, 0};
  task_group g(*here);
  g.spawn(collect(here, target, where_factory{&w1, 1}, &got[0]));
  g.spawn(collect(here, target, where_factory{&w2, 2}, &got[1]));
  g.spawn(collect(here, target, where_factory{&w3, 3}, &got[2]));
  co_await g.join();
  *sum = got[0] + got[1] + got[2];
}

task<void> stop_later(executor* ex, std::stop_source* src, std::chrono::milliseconds d) {
  result<void> r = co_await sleep_for(*ex, d);
  REQUIRE(r);
  src->request_stop();
}

task<void> cancelled_by_caller(executor* here, executor* target) {
  std::atomic<int> finished{0};
  std::stop_source src;
  task_group g(*here);
  g.spawn(stop_later(here, &src, 20ms));
  auto t0 = clk::now();
  result<int> r = co_await submit_to(*here, *target, sleep_remote_factory{target, &finished}, src.get_token());
  CHECK(r.error() == std::errc::operation_canceled);
  CHECK(finished.load() == 2);  // the remote task had finished, cancelled
  CHECK(clk::now() - t0 < 5s);
  co_await g.join();
  // Stop requested before: nothing is sent.
  std::atomic<int> never{0};
  result<int> r2 = co_await submit_to(*here, *target, sleep_remote_factory{target, &never}, src.get_token());
  CHECK(r2.error() == std::errc::operation_canceled);
  CHECK(never.load() == 0);
}

task<void> expect_cancelled(executor* here, executor* target, std::atomic<int>* finished, int* outcome) {
  result<int> r = co_await submit_to(*here, *target, sleep_remote_factory{target, finished});
  *outcome = r ? 1 : (r.error() == std::errc::operation_canceled ? 2 : 3);
}

task<void> expect_cancelled_stuck(executor* here, executor* target, std::atomic<int>* destroyed, int* outcome) {
  result<void> r = co_await submit_to(*here, *target, stuck_factory{destroyed});
  *outcome = r ? 1 : (r.error() == std::errc::operation_canceled ? 2 : 3);
}

// Stops `target` from its own thread, as stop() must be called.
task<void> stop_target(executor* target, std::atomic<bool>* stopped) {
  target->stop();
  stopped->store(true);
  co_return;
}

}  // namespace

TEST_CASE("submit_to: the task runs on the target's thread; values, errors and exceptions come back") {
  testing::on_each_backend([](backend_kind k) {
    remote_thread remote(k);
    executor here(testing::on(k));
    here.run(round_trips(&here, &remote.ex()));
    int sum = 0;
    here.run(several_at_once(&here, &remote.ex(), &sum));
    CHECK(sum == 12);
    remote.finish();
    CHECK(remote.live_at_end() == 0);
    drain(here);
  });
}

TEST_CASE("submit_to: the caller's stop token cancels the remote task (or keeps it from starting)") {
  testing::on_each_backend([](backend_kind k) {
    remote_thread remote(k);
    executor here(testing::on(k));
    here.run(cancelled_by_caller(&here, &remote.ex()));
    remote.finish();
    CHECK(remote.live_at_end() == 0);
    drain(here);
  });
}

TEST_CASE("submit_to: the caller's executor stopped while it waits: the remote task is cancelled") {
  testing::on_each_backend([](backend_kind k) {
    remote_thread remote(k);
    std::atomic<int> finished{0};
    int outcome = 0;
    {
      executor here(testing::on(k));
      here.spawn(expect_cancelled(&here, &remote.ex(), &finished, &outcome));
      // Stopped once the remote task runs (a stop that comes before it
      // started keeps it from starting: review18 F1).
      for (int i = 0; i < 5000 && finished.load() == 0; ++i) {
        here.run_once(false);
        std::this_thread::sleep_for(1ms);
      }
      REQUIRE(finished.load() == -1);
      here.stop();
      here.run_until_idle();
      CHECK(outcome == 2);
      CHECK(finished.load() == 2);
    }
    remote.finish();
    CHECK(remote.live_at_end() == 0);
  });
}

TEST_CASE("submit_to: a target that is stopping, or destroyed with the task unrun or unfinished: ECANCELED, no leak") {
  testing::on_each_backend([](backend_kind k) {
    SUBCASE("stopping") {
      remote_thread remote(k);
      executor here(testing::on(k));
      // Stopped on its own thread (spawn_on), then a task sent to it.
      std::atomic<bool> stopped{false};
      here.spawn_on(remote.ex(), stop_target(&remote.ex(), &stopped));
      for (int i = 0; i < 5000 && !stopped.load(); ++i) std::this_thread::sleep_for(1ms);
      REQUIRE(stopped.load());
      std::atomic<int> finished{0};
      int outcome = 0;
      here.run(expect_cancelled(&here, &remote.ex(), &finished, &outcome));
      CHECK(outcome == 2);
      CHECK(finished.load() == 0);  // never started
      remote.finish();
      drain(here);
    }
    SUBCASE("destroyed with the task in its inbox") {
      remote_thread remote(k, false);  // never runs its loop
      executor here(testing::on(k));
      std::atomic<int> finished{0};
      int outcome = 0;
      here.spawn(expect_cancelled(&here, &remote.ex(), &finished, &outcome));
      here.run_once(false);  // sent
      remote.finish();       // destroyed unrun
      here.run_until_idle();
      CHECK(outcome == 2);
      CHECK(finished.load() == 0);
    }
    SUBCASE("destroyed while the task waits on something that is not I/O") {
      remote_thread remote(k);
      executor here(testing::on(k));
      std::atomic<int> destroyed{0};
      int outcome = 0;
      here.spawn(expect_cancelled_stuck(&here, &remote.ex(), &destroyed, &outcome));
      here.run_once(false);
      for (int i = 0; i < 5000 && destroyed.load() == 0; ++i) std::this_thread::sleep_for(1ms);
      REQUIRE(destroyed.load() == -1);
      remote.finish();  // stop, then teardown destroys the stuck frame
      here.run_until_idle();
      CHECK(destroyed.load() == 1);
      CHECK(outcome == 2);
    }
  });
}
