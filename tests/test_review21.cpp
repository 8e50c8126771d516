// The twenty-first review: the composition primitives (when_any, with_timeout,
// task_group, channel, event, semaphore, submit_to) and framed_client, where
// they meet the executor (its teardown, stop(), the inbox). The F cases fail
// without their fix; the P cases pin what was found sound. Every wait is
// bounded: what would hang or abort runs in a child process. Each test runs
// on io_uring and on epoll.
#include "child_process.hpp"
#include "failing_allocator.hpp"
#include "loopback.hpp"

#include <ringframe/event.hpp>
#include <ringframe/executor.hpp>
#include <ringframe/frame.hpp>
#include <ringframe/framed_client.hpp>
#include <ringframe/submit_to.hpp>
#include <ringframe/task.hpp>
#include <ringframe/task_group.hpp>
#include <ringframe/timer.hpp>

#include <doctest/doctest.h>

#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <chrono>
#include <coroutine>
#include <csignal>
#include <cstdlib>
#include <string>
#include <thread>

using namespace ringframe;
using namespace std::chrono_literals;
using testing::on;
using testing::on_each_backend;
using namespace testing::failing_allocator;

namespace {

// A hang there is bounded by an alarm (20 s unless said).
int exit_code_in_child(auto run, unsigned alarm_seconds = 20) { return testing::exit_code_in_child(run, alarm_seconds); }

struct forever {
  bool await_ready() const noexcept { return false; }
  void await_suspend(std::coroutine_handle<>) const noexcept {}
  void await_resume() const noexcept {}
};

// An executor on a thread of its own, running its loop until finish().
class remote_loop {
 public:
  explicit remote_loop(backend_kind k) {
    th_ = std::thread([this, k] {
      executor e(on(k));
      executor::work_guard g(e);
      ex_.store(&e);
      while (!quit_) e.run_once(true);
      g.reset();
      e.run_until_idle();
    });
    while (!ex_.load()) std::this_thread::yield();
  }
  ~remote_loop() { finish(); }
  remote_loop(const remote_loop&) = delete;
  remote_loop& operator=(const remote_loop&) = delete;
  executor& ex() { return *ex_.load(); }
  void finish() {
    if (!th_.joinable()) return;
    ex_.load()->defer(&wake_);
    th_.join();
  }

 private:
  struct waker : detail::deferred_call {
    remote_loop* self;
    explicit waker(remote_loop* s) : deferred_call(&waker::run), self(s) {}
    static void run(detail::deferred_call* c, bool) { static_cast<waker*>(c)->self->quit_ = true; }
  };
  std::thread th_;
  std::atomic<executor*> ex_{nullptr};
  bool quit_ = false;  // the remote thread's own
  waker wake_{this};
};

// ---- F1: the caller's executor destroyed while a submit_to waits ----
// A submit_to's awaiter holds a work_guard on its executor while it waits
// (so that run() waits for the answer instead of reporting a deadlock).
// ~executor stops, then turns the loop "until the cancelled coroutines have
// unwound"; a turn blocks without limit while a work_guard lives. So the
// destructor of the caller's executor waited for the remote task to answer:
// as long as that task ran, and for good when it ignores its stop token
// (when_any's rule: a task that ignores its token is not cut short). The
// submission was built for this (submit_awaiter's destructor: "destroyed
// while waiting, the caller's executor is going away"): teardown must not
// wait for other threads. Before the fix the child hangs until the alarm.
task<void> ignores_its_token(std::atomic<int>* started, std::stop_token) {
  started->store(1);
  co_await forever{};
}
struct ignoring_factory {
  std::atomic<int>* started;
  task<void> operator()(std::stop_token st) const { return ignores_its_token(started, st); }
};
task<void> submit_and_note(executor* here, executor* target, std::atomic<int>* started, int* outcome) {
  result<void> r = co_await submit_to(*here, *target, ignoring_factory{started});
  *outcome = r ? 1 : 2;
}

TEST_CASE("review21 F1: the caller's executor destroyed while submit_to waits on a task that ignores its token returns") {
  on_each_backend([](backend_kind k) {
    const int code = exit_code_in_child(
        [k] {
          remote_loop remote(k);
          std::atomic<int> started{0};
          int outcome = 0;
          {
            executor here(on(k));
            here.spawn(submit_and_note(&here, &remote.ex(), &started, &outcome));
            for (int i = 0; i < 2000 && started.load() == 0; ++i) {
              here.run_once(false);
              std::this_thread::sleep_for(1ms);
            }
            if (started.load() != 1) return 2;
            // ~executor here: the waiting frame is destroyed, not waited for.
          }
          if (outcome != 0) return 3;  // it never resumed: its frame went
          remote.finish();
          return 0;
        },
        10);
    CHECK(code == 0);
  });
}

// ---- F2: framed_client::close() (noexcept) out of memory ----
// close(), and so ~framed_client, are noexcept; they go through
// client_state::fail(), which moved the line of pending calls into a new
// std::deque (libstdc++ allocates a map for the moved-from one) and copied
// the reason into a std::string. A bad_alloc there was std::terminate. And
// from the reader's own bad_alloc handler (read_replies), the same throw
// left the reader after `broken` was set but before any pending call was
// answered: those calls never returned. Each allocation close() makes fails
// in turn; every time, the pending call must return ECANCELED.
task<void> call_outcome(framed_client* c, int* outcome) {
  task<result<message>> t = c->call(message::json(R"({"q": 1})"));
  result<message> r = co_await std::move(t);
  *outcome = r ? 1 : (r.error() == std::errc::operation_canceled ? 2 : 3);
}

int close_out_of_memory_at(backend_kind k, int index) {
  executor ex(on(k));
  auto pair = testing::socket_pair(ex);
  framed_client c = framed_client::adopt(std::move(pair.first));
  int outcome = 0;
  ex.spawn(call_outcome(&c, &outcome));
  // The request goes out and the reader waits in its recv.
  for (int i = 0; i < 20; ++i) ex.run_once(false);
  if (c.pending() != 1 || outcome != 0) return 2;
  start_tracing(index);
  c.close();
  stop_tracing();
  const int made = traced_count.load();
  for (int i = 0; i < 200 && outcome == 0; ++i) turn_allowing_bad_alloc(ex);
  if (outcome != 2) return 4;
  if (c.is_open()) return 5;
  ex.run_until_idle();
  return index >= made ? 10 : 0;  // 10: close() made fewer allocations
}

TEST_CASE("review21 F2: framed_client::close() out of memory at any allocation answers the pending call, no terminate") {
  on_each_backend([](backend_kind k) {
    int index = 0;
    for (; index < 64; ++index) {
      const int code = exit_code_in_child([k, index] { return close_out_of_memory_at(k, index); });
      if (code == 10) break;
      CAPTURE(index);
      CHECK(code == 0);
      if (code != 0) break;
    }
    CHECK(index > 0);  // close() allocated something: the test reached it
  });
}

// ---- F3: executor::run() left by an exception destroyed a suspended task ----
// run_once may throw (a deferred call that throws: review13 F2 lets it out
// after re-signalling the inbox; bad_alloc in the I/O path), and run()
// passed it on. Its task<T> parameter went with it: the frame was destroyed
// while suspended, with its recv still held by the kernel (or the epoll
// backend), and the completion that came later (the peer's bytes, or the
// cancellation at the executor's teardown) was dispatched into freed
// memory. The frame must stay until its operation is over. In a child
// process: before the fix the frame is gone at once (code 3), and what
// follows is a use-after-free.
struct throwing_call : detail::deferred_call {
  throwing_call() noexcept : deferred_call(&run) {}
  static void run(detail::deferred_call*, bool run) {
    if (run) throw std::bad_alloc();
  }
};

task<int> read_one(ringframe::socket* s, bool* gone) {
  struct on_exit {
    bool* f;
    ~on_exit() { *f = true; }
  } e{gone};
  std::array<std::byte, 16> buf{};
  result<std::size_t> n = co_await s->recv(buf);
  co_return n ? static_cast<int>(*n) : -1;
}

int run_left_by_an_exception(backend_kind k) {
  executor ex(on(k));
  auto pair = testing::socket_pair(ex);
  bool gone = false;
  throwing_call boom;
  ex.defer(&boom);
  bool thrown = false;
  try {
    (void)ex.run(read_one(&pair.first, &gone));
  } catch (const std::bad_alloc&) {
    thrown = true;
  }
  if (!thrown) return 2;
  if (gone) return 3;  // destroyed with its recv in flight
  // The peer writes: the recv completes in the frame that was kept, and
  // the frame goes when the task has finished.
  if (::send(pair.second.fd(), "x", 1, 0) != 1) return 4;
  // The loop goes on (other tasks, or run() again).
  for (int i = 0; i < 100; ++i) ex.run_once(false);
  if (!gone) return 5;
  if (ex.live_tasks() != 0) return 7;
  return 0;
}

// And when nothing ever comes: the executor's teardown cancels the recv
// and the frame goes then, with no dispatch into freed memory (ASan).
int run_left_then_executor_destroyed(backend_kind k) {
  bool gone = false;
  {
    executor ex(on(k));
    auto pair = testing::socket_pair(ex);
    throwing_call boom;
    ex.defer(&boom);
    try {
      (void)ex.run(read_one(&pair.first, &gone));
      return 2;
    } catch (const std::bad_alloc&) {
    }
    if (gone) return 3;
  }
  return gone ? 0 : 5;
}

TEST_CASE("review21 F3: a run() left by an exception keeps its task's frame until the operation it waits on is over") {
  on_each_backend([](backend_kind k) {
    CHECK(exit_code_in_child([k] { return run_left_by_an_exception(k); }) == 0);
    CHECK(exit_code_in_child([k] { return run_left_then_executor_destroyed(k); }) == 0);
  });
}

// ---- F4: a flush that could not be scheduled stopped every later one ----
// A call made while the reply reader waits in its recv has its request sent
// by a flush_soon spawned for the loop's next turn; `flush_scheduled` keeps
// the calls of one turn to one flush. It was set before the spawn: when the
// spawn threw (bad_alloc, the call fails with it), it stayed set for good,
// and no later call's request went out until the reply ahead of it came
// (the reader's next read sends what is queued): pipelining was lost for
// the client's life, and a server that answers only when it has the next
// request waited for ever. Each allocation of the turn in which such a
// call runs fails in turn; a call made afterwards must still be sent at
// once (or fail, if the client broke), its predecessors unanswered.
task<void> call_with(framed_client* c, std::string json, int* outcome) {
  task<result<message>> t = c->call(message::json(std::move(json)));
  result<message> r = co_await std::move(t);
  *outcome = r ? 1 : (r.error() == std::errc::operation_canceled ? 2 : 3);
}

void drain_peer(int fd, std::string& got) {
  char buf[4096];
  for (;;) {
    const ssize_t n = ::recv(fd, buf, sizeof buf, MSG_DONTWAIT);
    if (n <= 0) return;
    got.append(buf, static_cast<std::size_t>(n));
  }
}

int later_call_sent_after_out_of_memory_at(backend_kind k, int index) {
  executor ex(on(k));
  auto pair = testing::socket_pair(ex);
  const int peer = pair.second.fd();
  framed_client c = framed_client::adopt(std::move(pair.first));
  std::string yframe;
  if (!encode_frame(message::json(R"({"q": "the last one"})"), yframe)) return 2;
  int z = 0, x = 0, y = 0;
  std::string got;
  ex.spawn(call_with(&c, R"({"q": 1})", &z));  // starts the reader; never answered
  for (int i = 0; i < 20; ++i) {
    ex.run_once(false);
    drain_peer(peer, got);
  }
  if (got.empty() || c.pending() != 1) return 2;
  ex.spawn(call_with(&c, R"({"q": 2})", &x));  // made while the reader waits in its recv
  start_tracing(index);
  turn_allowing_bad_alloc(ex);
  stop_tracing();
  const int made = traced_count.load();
  for (int i = 0; i < 20; ++i) {
    turn_allowing_bad_alloc(ex);
    drain_peer(peer, got);
  }
  ex.spawn(call_with(&c, R"({"q": "the last one"})", &y));
  for (int i = 0; i < 50; ++i) {
    turn_allowing_bad_alloc(ex);
    drain_peer(peer, got);
  }
  const bool sent = got.size() >= yframe.size() && got.compare(got.size() - yframe.size(), yframe.size(), yframe) == 0;
  if (!sent && y == 0) return 4;  // waits, its request unsent, behind an unanswered call
  c.close();
  ex.run_until_idle();
  return index >= made ? 10 : 0;
}

TEST_CASE("review21 F4: a flush that cannot be scheduled (out of memory) does not keep later calls' requests from going out") {
  on_each_backend([](backend_kind k) {
    int index = 0;
    for (; index < 128; ++index) {
      const int code = exit_code_in_child([k, index] { return later_call_sent_after_out_of_memory_at(k, index); });
      if (code == 10) break;
      CAPTURE(index);
      CHECK(code == 0);
      if (code != 0) break;
    }
    CHECK(index > 0);
  });
}

}  // namespace
