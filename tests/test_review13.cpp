// The thirteenth review: the executor's inbox (executor::run_inbox), through
// which spawn_on, submit_to and every other cross-thread hand-off reach an
// executor's thread, when a hand-over throws (std::bad_alloc) half way
// through the inbox; the backends' results when memory runs out (F4, F6-F9,
// and review15's F6b-F6e); and wake-ups whose post to the ready queue cannot
// allocate (F10-F15: submit_to, task_group, event, send_queue, resolve,
// framed_client). The F cases fail without their fix. Every wait is bounded; each test runs on
// io_uring and on epoll, except those whose name says "(epoll)".
#include "child_process.hpp"
#include "failing_allocator.hpp"
#include "frames.hpp"
#include "loopback.hpp"
#include "send_helpers.hpp"

#include <ringframe/detail/deferred_call.hpp>
#include <ringframe/event.hpp>
#include <ringframe/executor.hpp>
#include <ringframe/framed_client.hpp>
#include <ringframe/resolver.hpp>
#include <ringframe/submit_to.hpp>
#include <ringframe/task.hpp>
#include <ringframe/task_group.hpp>
#include <ringframe/timer.hpp>

#include <doctest/doctest.h>

#include <fcntl.h>
#include <netinet/in.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <coroutine>
#include <csignal>
#include <cstdlib>
#include <new>
#include <thread>
#include <vector>

using namespace ringframe;
using testing::on;
using testing::on_each_backend;

// An allocator that can be told to fail (failing_allocator.hpp): one
// allocation of an exact size, or the n-th allocation while tracing.
using namespace testing::failing_allocator;

namespace {


task<void> mark(bool* flag) {
  *flag = true;
  co_return;
}

// ---- F1: spawn_on's hand-over cannot allocate the spawned task's wrapper ----
// Two tasks are handed to `ex` from another thread (one eventfd write). The
// wrapper frame (run_detached) of the first cannot be allocated when `ex`'s
// thread takes it from the inbox. spawn_on "cannot fail": the one task is
// lost (its frame freed), but the bad_alloc must not escape the target's
// loop (run_once, so executor::run of whatever the thread serves), and the
// second task must still run. Before the fix the bad_alloc escaped
// run_once, and the second task stayed in the inbox with the wake flag
// cleared and the eventfd already read: nothing ran it until some later
// defer() wrote the eventfd again (and run_until_idle, which counts a
// non-empty inbox as work, spun meanwhile).
TEST_CASE("review13 F1: a spawn_on whose wrapper frame cannot be allocated fails that task, not the loop or the next one") {
  on_each_backend([](backend_kind k) {
    executor ex(on(k));
    // The wrapper frame's size: the first allocation spawn() makes.
    bool dry = false;
    auto t0 = mark(&dry);
    traced_count = 0;
    tracing = true;
    ex.spawn(std::move(t0));
    tracing = false;
    REQUIRE(traced_count >= 1);
    const std::size_t wrapper = traced[0];
    ex.run_until_idle();
    REQUIRE(dry);

    bool first = false, second = false;
    auto t1 = mark(&first);
    auto t2 = mark(&second);
    std::thread other([&] {
      ex.spawn_on(ex, std::move(t1));
      ex.spawn_on(ex, std::move(t2));
    });
    other.join();
    allocations_failed = 0;
    fail_allocation_of_size = wrapper;
    bool escaped = false;
    for (int i = 0; i < 2000 && !second; ++i) {
      try {
        ex.run_once(false);
      } catch (const std::bad_alloc&) {
        escaped = true;  // go on: does the second task ever run?
      }
    }
    fail_allocation_of_size = 0;
    CHECK(allocations_failed == 1);
    CHECK_FALSE(escaped);
    CHECK_FALSE(first);  // its wrapper could not be made: dropped, not run
    CHECK(second);
  });
}

// ---- F2: any inbox call that throws leaves the calls behind it stranded ----
// A deferred call may throw (submit_to's answer posted to the ready queue,
// which can throw bad_alloc, until F10). Whether or not the exception leaves run_once,
// the calls queued behind it must still run without another defer(). Before
// the fix they waited for the next eventfd write, which might never come.
struct throwing_call : detail::deferred_call {
  throwing_call() noexcept : deferred_call(&run) {}
  static void run(detail::deferred_call*, bool run) {
    if (run) throw std::bad_alloc();
  }
};
struct counting_call : detail::deferred_call {
  int runs = 0;
  counting_call() noexcept : deferred_call(&run) {}
  static void run(detail::deferred_call* c, bool run) {
    if (run) ++static_cast<counting_call*>(c)->runs;
  }
};

TEST_CASE("review13 F2: a deferred call that throws does not strand the calls queued behind it") {
  on_each_backend([](backend_kind k) {
    // Declared before the executor: still queued at its end, they are
    // freed (run = false) by its destructor, so they must outlive it.
    throwing_call thrower;
    counting_call after;
    executor ex(on(k));
    std::thread other([&] {
      ex.defer(&thrower);
      ex.defer(&after);
    });
    other.join();
    int escapes = 0;
    for (int i = 0; i < 2000 && after.runs == 0; ++i) {
      escapes += turn_allowing_bad_alloc(ex);
    }
    CHECK(escapes <= 1);
    CHECK(after.runs == 1);
  });
}

// ---- F3: spawn() whose ready-queue slot cannot be allocated ----
// spawn(task) makes the wrapper coroutine (which counts itself live), then
// queues it. When the queue's push_back throws, the bad_alloc reaches the
// caller (fine), but the wrapper stayed counted as a live task that nothing
// will ever resume: live_tasks() never fell back to 0, so run_until_idle
// (which waits while any task is live) could not see the executor idle.
namespace {
// Spawns tasks with `spawn` (which may throw) until one spawn's ready-queue
// push fails: first, traced spawns find the size of a new block of the
// ready queue (the last allocation of a spawn that allocates more than its
// wrapper frame); then that size is made to fail once. `flags` outlives
// the tasks. Returns how many spawns threw.
template <class Spawn>
int spawn_until_a_queue_push_fails(executor& ex, Spawn spawn, std::array<bool, 400>& flags) {
  std::size_t wrapper = 0, block = 0;
  for (int i = 0; i < 200 && block == 0; ++i) {
    auto t = mark(&flags[static_cast<std::size_t>(i)]);
    start_tracing(-1);
    spawn(std::move(t));
    stop_tracing();
    if (i == 0) wrapper = traced[0];
    if (traced_count > 1) block = traced[static_cast<std::size_t>(traced_count.load() - 1)];
  }
  ex.run_until_idle();
  REQUIRE(block != 0);
  REQUIRE(block != wrapper);

  allocations_failed = 0;
  fail_allocation_of_size = block;
  int threw = 0;
  for (int i = 200; i < 400 && allocations_failed == 0; ++i) {
    auto t = mark(&flags[static_cast<std::size_t>(i)]);
    try {
      spawn(std::move(t));
    } catch (const std::bad_alloc&) {
      ++threw;
    }
  }
  fail_allocation_of_size = 0;
  REQUIRE(allocations_failed == 1);
  return threw;
}
}  // namespace

TEST_CASE("review13 F3: a spawn whose ready-queue push throws leaves no live task behind") {
  on_each_backend([](backend_kind k) {
    executor ex(on(k));
    std::array<bool, 400> flags{};
    const int threw = spawn_until_a_queue_push_fails(
        ex, [&](task<void> t) { ex.spawn(std::move(t)); }, flags);
    CHECK(threw == 1);
    for (int i = 0; i < 100 && (ex.live_tasks() > 0); ++i)
      if (!ex.run_once(false)) break;
    CHECK(ex.live_tasks() == 0);
  });
}

// ---- F5 (session 10): task_group::spawn, the same as F3 ----
// A group's child (run_in_group's frame, or a server's run_connection) links
// itself into the group when it is made, and is then posted to the ready
// queue. When that post threw, the frame was never started nor destroyed:
// the group counted a child that would never finish, so join() never
// returned and the group's destructor ended the process ("destroyed while
// 1 of its children were still running").
TEST_CASE("review13 F5: a task_group spawn whose ready-queue push throws leaves no child behind") {
  on_each_backend([](backend_kind k) {
    executor ex(on(k));
    auto* g = new task_group(ex);
    std::array<bool, 400> flags{};
    const int threw = spawn_until_a_queue_push_fails(
        ex, [&](task<void> t) { g->spawn(std::move(t)); }, flags);
    CHECK(threw == 1);
    for (int i = 0; i < 100 && !g->empty(); ++i)
      if (!ex.run_once(false)) break;
    CHECK(g->size() == 0);
    if (g->empty()) delete g;  // else leaked: its destructor would end the process
  });
}

namespace {
// The tests below run their out-of-memory turn in a child process (a crash
// or a hang there must not take the suite with it): it exits 0 when all
// went right, another code saying what did not, or dies of a signal.
using testing::check_in_child;
using testing::exit_code_in_child;

// The next allocation of exactly `size` bytes fails (and only that one).
void fail_next_allocation_of_size(std::size_t size) {
  allocations_failed = 0;
  matching_allocations = 0;
  allocations_to_pass = 0;
  fail_allocation_of_size = size;
}
}  // namespace

// ---- F4: the epoll backend's cancel() needs memory in a noexcept path ----
// io_backend::cancel() "never throws; false when it could not be asked now
// (no room)": the executor then asks again next turn. The epoll backend
// answers a cancellation by posting every cancelled request's result at
// once (stop(): cancel(0), one per waiter and one of its own) with
// push_back, which grows its result list past anything seen before; when
// that allocation fails inside the noexcept cancel(), std::terminate ends
// the process. Run in a child process: before the fix it dies (SIGABRT).
task<void> sleeper(executor* ex, int* cancelled) {
  auto r = co_await sleep_for(*ex, std::chrono::seconds(30));
  if (!r && r.error() == std::errc::operation_canceled) ++*cancelled;
}

TEST_CASE("review13 F4: a stop() whose cancellation cannot allocate (epoll) is retried, not std::terminate") {
  check_in_child([] {
    executor ex(on(backend_kind::epoll));
    int cancelled = 0;
    for (int i = 0; i < 64; ++i) ex.spawn(sleeper(&ex, &cancelled));
    for (int i = 0; i < 10; ++i) ex.run_once(false);  // all 64 wait in the timer queue
    // Fail the first allocation stop() makes: the result list's growth.
    start_tracing(0);
    ex.stop();
    stop_tracing();
    for (int i = 0; i < 1000 && ex.live_tasks() > 0; ++i) ex.run_once(false);
    return allocations_failed == 1 && cancelled == 64 && ex.live_tasks() == 0 ? 0 : 1;
  });
}

// ---- a turn that runs out of memory handing completions over (epoll) ----
// The epoll backend's timer expiry released a timer before posting its
// result: a post() that failed (its list growing past anything seen before)
// lost it for good, and the executor counted it in flight forever (its
// destructor then waited on it). And flush() appends to the executor's
// completion list inside a noexcept function: an insert that failed there
// was std::terminate. Now a turn that cannot allocate leaves every
// completion where it was (the timer queue, the backend's own list), and
// the next turns deliver them all. Run in a child process that leaks its
// executor: one that lost a completion would wait for it forever in its
// destructor.
task<void> short_nap(executor* ex, int* done) {
  auto r = co_await sleep_for(*ex, std::chrono::milliseconds(300));
  if (r) ++*done;
}

int turn_out_of_memory(backend_kind k) {
  auto* ex = new executor(on(k));
  int done = 0;
  // A batch of 40 first: the lists' capacities settle for that many.
  for (int i = 0; i < 40; ++i) ex->spawn(short_nap(ex, &done));
  ex->run_until_idle();
  if (done != 40) return 2;
  // Then 300 at once, all due before the loop looks again: more
  // completions in one turn than the lists can hold.
  for (int i = 0; i < 3000; ++i) ex->spawn(short_nap(ex, &done));
  ex->run_once(false);  // each submits its timer
  std::this_thread::sleep_for(std::chrono::milliseconds(400));  // all due now, none fired yet
  start_tracing(0);  // the first allocation of this turn: a list's growth
  for (int i = 0; i < 100 && allocations_failed == 0 && done < 3040; ++i) {
    (void)turn_allowing_bad_alloc(*ex);
  }
  stop_tracing();
  if (allocations_failed != 1) return 3;
  for (int i = 0; i < 2000 && done < 3040; ++i) {
    ex->run_once(false);
    std::this_thread::sleep_for(std::chrono::microseconds(500));
  }
  return done == 3040 ? 0 : 4;
}

TEST_CASE("review13: a turn that cannot allocate to hand completions over loses none of them (epoll)") {
  // (Epoll only: on io_uring this way of loading a turn did not make the
  // executor's list grow (no allocation failed in any turn), so it proves
  // nothing there; F9 below loads io_uring's reap() another way.)
  for (backend_kind k : {backend_kind::epoll}) {
    CAPTURE(static_cast<int>(k));
    check_in_child([&] { return turn_out_of_memory(k); });
  }
}

// ---- F6: closing a descriptor that requests wait on (epoll) ----
// Closing a socket tells the backend first (io_backend::forget, noexcept):
// on epoll the requests still queued on the descriptor would never hear of
// it again, so each ends at once with ECANCELED. Each result was posted
// with push_back, which grows the backend's result list past anything seen
// before when many wait: a bad_alloc there, inside noexcept, was
// std::terminate. Both ways of closing go through it: the socket's
// destructor (close_now) and co_await close() (the backend's close
// request). Run in a child process: before the fix it dies (SIGABRT).
task<void> reader(ringframe::socket* s, int* cancelled) {
  std::array<std::byte, 16> buf{};
  auto r = co_await s->recv(buf);
  if (!r && r.error() == std::errc::operation_canceled) ++*cancelled;
}

task<void> close_it(ringframe::socket s, int* closed) {
  auto r = co_await s.close();
  if (r) ++*closed;
}

int close_with_many_waiters(bool by_destructor) {
  executor ex(on(backend_kind::epoll));
  auto pair = testing::socket_pair(ex);
  auto* s = new ringframe::socket(std::move(pair.first));
  int cancelled = 0, closed = 0;
  constexpr int readers = 300;
  for (int i = 0; i < readers; ++i) ex.spawn(reader(s, &cancelled));
  for (int i = 0; i < 10; ++i) ex.run_once(false);  // all wait on the descriptor
  if (cancelled != 0) return 2;
  ringframe::socket moved = std::move(*s);  // the readers keep using *s's address: only its descriptor goes
  if (!by_destructor) ex.spawn(close_it(std::move(moved), &closed));  // (its frame made before memory runs out)
  start_tracing(0);  // the first allocation from here: the result list's growth
  if (by_destructor) {
    { ringframe::socket gone = std::move(moved); }
  } else {
    ex.run_once(false);
  }
  stop_tracing();
  if (allocations_failed != 1) return 3;
  for (int i = 0; i < 1000 && ex.live_tasks() > 0; ++i) ex.run_once(false);
  delete s;
  if (cancelled != readers) return 4;
  if (!by_destructor && closed != 1) return 5;
  return ex.live_tasks() == 0 ? 0 : 7;
}

TEST_CASE("review13 F6: closing a descriptor many requests wait on, out of memory (epoll), ends them all") {
  for (bool by_destructor : {true, false}) {
    CAPTURE(by_destructor);
    check_in_child([&] { return close_with_many_waiters(by_destructor); });
  }
}

// ---- F7: a turn that runs out of memory serving ready descriptors (epoll) ----
// epoll is edge-triggered here: a descriptor that became readable is
// reported once. run() served the batch epoll_wait returned one descriptor
// after another, and a bad_alloc while serving one (its results' list
// growing) left run() with the rest of the batch unserved: those events
// were gone, and their requests waited for an edge that had already come.
// The descriptor being served was lost the same way. Now the unserved
// events are kept for the next turn. In a child process: before the fix the
// readers of the lost descriptors never finish.
task<void> read_one(ringframe::socket* s, int* got) {
  std::array<std::byte, 16> buf{};
  auto r = co_await s->recv(buf);
  if (r && *r == 1) ++*got;
}

int serve_out_of_memory() {
  // Leaked: one that lost a recv would wait for it in its destructor.
  executor& ex = *new executor(on(backend_kind::epoll));
  constexpr int pairs = 200;
  std::vector<std::pair<ringframe::socket, ringframe::socket>> ps;
  ps.reserve(pairs);
  for (int i = 0; i < pairs; ++i) ps.push_back(testing::socket_pair(ex));
  int got = 0;
  for (auto& p : ps) ex.spawn(read_one(&p.first, &got));
  for (int i = 0; i < 10; ++i) ex.run_once(false);  // each waits for its edge
  if (got != 0) return 2;
  const char one = 'x';
  for (auto& p : ps)
    if (::send(p.second.fd(), &one, 1, 0) != 1) return 3;
  start_tracing(0);  // the first allocation of this turn: the results' list growing
  for (int i = 0; i < 20 && allocations_failed == 0; ++i) {
    (void)turn_allowing_bad_alloc(ex);
  }
  stop_tracing();
  if (allocations_failed != 1) return 4;
  for (int i = 0; i < 200 && got < pairs; ++i) ex.run_once(false);
  return got == pairs ? 0 : 5;
}

TEST_CASE("review13 F7: a turn that runs out of memory serving ready descriptors loses none of their edges (epoll)") {
  check_in_child([&] { return serve_out_of_memory(); });
}

// ---- F8: a turn that runs out of memory retrying connects (epoll) ----
// A Unix-domain connect that finds the listener's backlog full waits on a
// list that each turn retries (no edge announces room). The list was moved
// out before the retries: a bad_alloc half way through (a result, or a
// connect that must wait again) dropped the rest of it, and those connects
// never ended. In a child process: before the fix some never connect.
task<void> connect_unix(executor* ex, ringframe::address at, int* connected) {
  auto s = ringframe::socket::open(*ex, AF_UNIX);
  if (!s) co_return;
  auto r = co_await s->connect(at);
  if (r) ++*connected;
}

int retry_out_of_memory() {
  // Leaked: one that lost a connect would wait for it in its destructor.
  executor& ex = *new executor(on(backend_kind::epoll));
  char dir[] = "/tmp/ringframe-review13-XXXXXX";
  if (!::mkdtemp(dir)) return 2;
  const std::string path = std::string(dir) + "/l";
  auto at = ringframe::address::from_unix_path(path);
  if (!at) return 2;
  int l = ::socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (l < 0 || ::bind(l, at->data(), at->size()) != 0 || ::listen(l, 1) != 0) return 2;
  constexpr int clients = 60;
  int connected = 0;
  for (int i = 0; i < clients; ++i) ex.spawn(connect_unix(&ex, *at, &connected));
  for (int i = 0; i < 5; ++i) {
    ex.run_once(false);
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  if (connected > 4) return 3;  // most wait for room in the backlog
  int accepted = 0;
  auto accept_all = [&] {
    while (int fd = ::accept4(l, nullptr, nullptr, SOCK_CLOEXEC)) {
      if (fd < 0) break;
      ::close(fd);
      ++accepted;
    }
  };
  // Room for all of them at once (listen() again sets a new backlog): the
  // next retry turn connects every one, and its results' list must grow.
  if (::listen(l, 128) != 0) return 2;
  start_tracing(0);  // the first allocation from here
  for (int i = 0; i < 50 && allocations_failed == 0; ++i) {
    (void)turn_allowing_bad_alloc(ex);
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  stop_tracing();
  if (allocations_failed != 1) return 4;
  for (int i = 0; i < 2000 && connected < clients; ++i) {
    accept_all();
    ex.run_once(false);
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  ::close(l);
  ::unlink(path.c_str());
  ::rmdir(dir);
  return connected == clients ? 0 : 5;
}

TEST_CASE("review13 F8: a turn that runs out of memory retrying Unix-domain connects loses none of them (epoll)") {
  check_in_child([&] { return retry_out_of_memory(); });
}

// ---- F6b-F6d (review15): forget() must leave the room its caller made ----
// The close request makes room for its own result before ::close()
// (room_to_post(2)), and attempt() for accept's before accept4(); then
// forget() (close; accept4's fresh() when requests still wait on the new
// number, their descriptor closed behind ringframe's back) makes room for
// the results of the requests it ends, 2 each, and posts them into it:
// what the caller made room for can be used up, and the caller's own
// result then grows the list after its system call. A bad_alloc there left
// submit() after the descriptor was closed (close: a result lost) or made
// (accept: a descriptor nobody owns; with a deadline its result posted,
// the timer's not, and submit() threw: a completion for a request the
// executor never counted, dispatched into a frame that may be gone).
// Each case sweeps which allocation of the turn fails, in a child each.

task<void> timed_reader(ringframe::socket* s, int* cancelled, bool timed) {
  std::array<std::byte, 16> buf{};
  op_options o;
  if (timed) o.timeout = std::chrono::seconds(30);
  auto r = co_await s->recv(buf, o);
  if (!r && r.error() == std::errc::operation_canceled) ++*cancelled;
}

task<void> close_catching(ringframe::socket s, int* closed, int* threw) {
  try {
    auto r = co_await s.close();
    if (r) ++*closed;
  } catch (const std::bad_alloc&) {
    ++*threw;
  }
}

bool fd_open(int fd) { return ::fcntl(fd, F_GETFD) >= 0; }

// 0: as it must be; 10: the sweep ran past the turn's allocations.
int close_timed_waiters(int fail_index) {
  executor ex(on(backend_kind::epoll));
  auto pair = testing::socket_pair(ex);
  auto* s = new ringframe::socket(std::move(pair.first));
  const int fd = s->fd();
  int cancelled = 0, closed = 0, threw = 0;
  constexpr int readers = 300;
  for (int i = 0; i < readers; ++i) ex.spawn(timed_reader(s, &cancelled, true));
  for (int i = 0; i < 10; ++i) ex.run_once(false);
  if (cancelled != 0) return 2;
  ex.spawn(close_catching(std::move(*s), &closed, &threw));
  start_tracing(fail_index);
  (void)turn_allowing_bad_alloc(ex);
  stop_tracing();
  if (allocations_failed == 0) return 10;
  for (int i = 0; i < 1000 && ex.live_tasks() > 0; ++i) {
    (void)turn_allowing_bad_alloc(ex);
  }
  delete s;
  if (threw && !fd_open(fd)) return 8;  // closed, and its caller told it failed (its result lost)
  if (!threw && closed != 1) return 5;
  if (cancelled != readers) return 4;
  if (ex.live_tasks() != 0) return 7;
  if (ex.inflight() != 0) return 9;
  return 0;
}

task<void> accept_catching(ringframe::socket* l, bool timed, int* accepted, int* failed, int* threw) {
  op_options o;
  if (timed) o.timeout = std::chrono::seconds(30);
  try {
    auto r = co_await l->accept(nullptr, o);
    if (r) ++*accepted;
    else ++*failed;
  } catch (const std::bad_alloc&) {
    ++*threw;
  }
}

// Requests wait on a descriptor closed behind ringframe's back; accept4
// then returns its number (fresh() ends them).
int accept_onto_stale_waiters(int fail_index, int timed_readers, int untimed_readers, bool timed_accept) {
  executor ex(on(backend_kind::epoll));
  address at;
  ringframe::socket l = testing::loopback_listener(ex, at);
  const int client = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (client < 0 || ::connect(client, at.data(), at.size()) != 0) return 20;
  auto pair = testing::socket_pair(ex);
  auto* s = new ringframe::socket(std::move(pair.first));
  int cancelled = 0;
  for (int i = 0; i < timed_readers; ++i) ex.spawn(timed_reader(s, &cancelled, true));
  for (int i = 0; i < untimed_readers; ++i) ex.spawn(timed_reader(s, &cancelled, false));
  for (int i = 0; i < 10; ++i) ex.run_once(false);
  if (cancelled != 0) return 2;
  const int stale = s->release();
  ::close(stale);  // behind ringframe's back: the requests still wait on the number
  {
    const int probe = ::fcntl(0, F_DUPFD_CLOEXEC, 0);  // the lowest free number: accept4's
    ::close(probe);
    if (probe != stale) return 21;
  }
  const int fds_before = testing::open_fd_count();
  int accepted = 0, failed = 0, threw = 0;
  ex.spawn(accept_catching(&l, timed_accept, &accepted, &failed, &threw));
  start_tracing(fail_index);
  (void)turn_allowing_bad_alloc(ex);
  stop_tracing();
  if (allocations_failed == 0) return 10;
  for (int i = 0; i < 1000 && ex.live_tasks() > 0; ++i) {
    (void)turn_allowing_bad_alloc(ex);
  }
  for (int i = 0; i < 10; ++i) ex.run_once(false);  // anything posted late
  delete s;
  if (accepted + failed + threw != 1) return 3;
  // The accepted socket (if any) was closed when the task ended: no
  // descriptor may be left open that nobody owns.
  if (ex.inflight() != 0) return 9;  // a completion of a request never counted
  if (testing::open_fd_count() != fds_before) return 8;
  ::close(client);
  if (cancelled != timed_readers + untimed_readers) return 4;
  if (ex.live_tasks() != 0) return 7;
  return 0;
}

template <class F>
void sweep(F scenario) {
  for (int index = 0; index < 40; ++index) {
    CAPTURE(index);
    const int code = exit_code_in_child([&] { return scenario(index); });
    if (code == 10) break;  // past the turn's last allocation
    CHECK(code == 0);
  }
}

TEST_CASE("review15 F6b: co_await close() with timed requests waiting, out of memory at any allocation (epoll): no result lost after the close") {
  sweep([](int i) { return close_timed_waiters(i); });
}

TEST_CASE("review15 F6c: accept4 returns the number stale timed requests wait on, out of memory at any allocation (epoll): no descriptor lost") {
  sweep([](int i) { return accept_onto_stale_waiters(i, 300, 0, false); });
}

TEST_CASE("review15 F6d: as F6c with a timed accept and one untimed waiter (epoll): no completion for a request whose submit threw") {
  sweep([](int i) { return accept_onto_stale_waiters(i, 299, 1, true); });
}

// ---- F6e (review15): a timed request that must wait, out of memory ----
// enqueue() linked the waiter into its descriptor's queue, then added its
// deadline to the timer queue (a set node: an allocation). A bad_alloc
// there left submit() with the waiter queued: the operation's co_await
// threw (the executor never counted it), its frame could go, and the
// waiter's result came later all the same (dispatched into that frame,
// and the executor's count of requests in flight went below zero). Its
// descriptor was not registered either: the result comes when it closes.
task<void> recv_catching(ringframe::socket* s, int* got, int* threw) {
  std::array<std::byte, 16> buf{};
  try {
    auto r = co_await s->recv(buf, {.timeout = std::chrono::seconds(30)});
    if (r) ++*got;
  } catch (const std::bad_alloc&) {
    ++*threw;
  }
}

int timed_recv_out_of_memory(int fail_index) {
  executor ex(on(backend_kind::epoll));
  auto pair = testing::socket_pair(ex);
  int got = 0, threw = 0;
  ex.spawn(recv_catching(&pair.first, &got, &threw));
  start_tracing(fail_index);
  (void)turn_allowing_bad_alloc(ex);
  stop_tracing();
  if (allocations_failed == 0) return 10;
  const char byte = 'x';
  if (::write(pair.second.fd(), &byte, 1) != 1) return 20;
  for (int i = 0; i < 1000 && ex.live_tasks() > 0; ++i) ex.run_once(false);
  { ringframe::socket gone = std::move(pair.first); }  // closed: whatever still waits on it ends
  for (int i = 0; i < 10; ++i) ex.run_once(false);  // anything posted late
  if (got + threw != 1) return 3;
  if (ex.inflight() != 0) return 9;  // a completion of a request never counted
  if (ex.live_tasks() != 0) return 7;
  return 0;
}

TEST_CASE("review15 F6e: a timed recv that must wait, out of memory at any allocation (epoll): no completion for a request whose submit threw") {
  sweep([](int i) { return timed_recv_out_of_memory(i); });
}


// ---- F9: more completions in one reap than the executor's list holds (io_uring) ----
// The io_uring backend's reap() (noexcept) copied every CQE there was into
// the executor's completion list with push_back: when more arrive in one
// turn than the list has room for (it starts with room for 256), it grows,
// and a bad_alloc there was std::terminate. Here 300 receives are asked
// for on 300 socket pairs that are readable already: on io_uring each
// completes as it is submitted, so one turn reaps 300 completions (waiting
// receives made readable at once would not do: with DEFER_TASKRUN the
// kernel hands their completions over a few at a time). The first
// allocation from there fails. Every receive must still end with its byte.
// On epoll the first allocation is another (a receive refused with
// bad_alloc, asked again). Run in a child process that leaks its executor
// (whose destructor would wait for a lost completion): before the fix the
// io_uring child dies (SIGABRT).

// A receive refused for lack of memory (the bad_alloc from co_await) is
// asked again: it must not have taken the byte with it.
task<void> read_one(ringframe::socket* s, int* got, int* refused) {
  for (int attempt = 0; attempt < 2; ++attempt) {
    std::array<std::byte, 4> buf{};
    try {
      auto r = co_await s->recv(buf);
      if (r && *r == 1) ++*got;
      co_return;
    } catch (const std::bad_alloc&) {
      ++*refused;
    }
  }
}

int reap_more_than_room(backend_kind k) {
  constexpr int pairs = 300;
  auto* ex = new executor(on(k));  // leaked: see below
  std::vector<std::pair<ringframe::socket, ringframe::socket>> sockets;
  sockets.reserve(pairs);
  for (int i = 0; i < pairs; ++i) sockets.push_back(testing::socket_pair(*ex));
  // Every socket is readable before its receive is asked for: on io_uring
  // each receive completes as it is submitted, so the turn that submits
  // them reaps them all at once.
  const char byte = 'x';
  for (auto& p : sockets)
    if (::write(p.second.fd(), &byte, 1) != 1) return 8;
  int got = 0, refused = 0;
  for (int i = 0; i < pairs; ++i) ex->spawn(read_one(&sockets[static_cast<std::size_t>(i)].first, &got, &refused));
  start_tracing(0);  // the first allocation from here: the list's growth
  int escaped = 0;
  for (int i = 0; i < 100 && allocations_failed == 0 && got < pairs; ++i) {
    try {
      ex->run_once(false);
    } catch (const std::bad_alloc&) {
      ++escaped;  // out of the loop is allowed (nothing may be lost: see below)
    }
  }
  stop_tracing();
  if (allocations_failed != 1) return 3;
  for (int i = 0; i < 1000 && got < pairs; ++i) ex->run_once(false);
  // A lost completion would leave its receive waiting (and the executor's
  // destructor waiting for it): the executor is leaked on purpose.
  if (got != pairs) return 4;
  if (escaped > 1) return 5;
  return 0;
}

TEST_CASE("review13 F9: a turn that reaps more completions than the list holds, out of memory, loses none") {
  on_each_backend([](backend_kind k) {
    testing::require_fd_limit(2 * 300 + 64);
    check_in_child([&] { return reap_more_than_room(k); });
  });
}


// ---- F10: submit_to's answer cannot be posted to the caller's ready queue ----
// The answer comes back through the caller's inbox: its deferred call
// (answer_run) posts the waiting coroutine to the caller's ready queue.
// When that post threw (the queue growing a block), the call was already
// taken from the inbox: the bad_alloc left run_once (review13 F2 keeps the
// calls behind it), but nothing would ever resume the caller, which waited
// forever. Both executors run on this thread, turn by turn; the caller's
// ready queue is filled so that the answer's post is the one that needs a
// new block, and that allocation fails. Run in a child process that leaks
// both executors (a caller that waits forever would hold the destructor).
task<int> forty_two() { co_return 42; }

bool f8_made = false;  // the factory ran, on the target

task<void> ask(executor* here, executor* target, int* answer) {
  auto r = co_await submit_to(*here, *target, [](std::stop_token) {
    f8_made = true;
    return forty_two();
  });
  *answer = r ? *r : -1;
}

// Posts a no-op handle (harmless to resume); true when the post allocated.
bool post_allocates(executor* ex) {
  start_tracing(-1);
  ex->post(std::noop_coroutine());
  stop_tracing();
  return traced_count > 0;
}

// Fills `ex`'s ready queue with no-op handles so that the next post needs a
// new block of the queue; returns that block's size (0: not found). Posts
// until a post allocates a block; then counts the posts that fit in a block
// before the next that allocates, and makes as many. (A queue that empties
// keeps its place in its block: the next turn runs these, and the first
// post after them is the one that allocates.)
std::size_t fill_ready_queue_to_a_block_end(executor* ex) {
  std::size_t block = 0;
  for (int i = 0; i < 10000 && block == 0; ++i)
    if (post_allocates(ex)) block = traced[0];
  if (block == 0) return 0;
  int fit = 0;
  while (fit < 10000 && !post_allocates(ex)) ++fit;
  for (int i = 0; i < fit; ++i) ex->post(std::noop_coroutine());
  return block;
}

int answer_cannot_be_posted(backend_kind k) {
  auto* here = new executor(on(k));
  auto* target = new executor(on(k));
  int answer = 0;
  here->spawn(ask(here, target, &answer));
  for (int i = 0; i < 10; ++i) here->run_once(false);  // asked: the caller waits
  for (int i = 0; i < 1000 && !(f8_made && target->live_tasks() == 0); ++i) target->run_once(false);
  if (!f8_made || target->live_tasks() != 0 || answer != 0) return 2;  // answered: in here's inbox
  const std::size_t block = fill_ready_queue_to_a_block_end(here);
  if (block == 0) return 3;
  // This turn runs those, then takes the answer: its post fails.
  fail_next_allocation_of_size(block);
  int escaped = 0;
  for (int i = 0; i < 1000 && answer == 0; ++i) {
    escaped += turn_allowing_bad_alloc(*here);
  }
  fail_allocation_of_size = 0;
  if (allocations_failed != 1) return 4;
  if (answer != 42) return 5;
  return escaped <= 1 ? 0 : 7;
}

TEST_CASE("review13 F10: a submit_to whose answer cannot be posted to the caller's ready queue still resumes it") {
  on_each_backend([](backend_kind k) {
    check_in_child([&] { return answer_cannot_be_posted(k); });
  });
}


// ---- F11: a task_group's last child ends and its joiner cannot be posted ----
// When a group's last child finishes, the coroutine waiting in join() is
// posted to the ready queue, from the child's final suspend (noexcept,
// task_group::finished): a post that threw there (the queue growing a
// block) was std::terminate. The child ends in a turn after the queue was
// filled to a block's end, and that block's allocation fails. Run in a
// child process: before the fix it dies (SIGABRT).
task<void> nap(executor* ex) { (void)co_await sleep_for(*ex, std::chrono::milliseconds(20)); }

task<void> join_it(task_group* g, bool* joined) {
  co_await g->join();
  *joined = true;
}

int joiner_cannot_be_posted(backend_kind k) {
  auto* ex = new executor(on(k));  // leaked: a joiner never resumed would hold its destructor
  auto* g = new task_group(*ex);
  bool joined = false;
  g->spawn(nap(ex));
  ex->spawn(join_it(g, &joined));
  for (int i = 0; i < 10; ++i) ex->run_once(false);  // the child naps, the joiner waits
  if (joined || g->empty()) return 2;
  const std::size_t block = fill_ready_queue_to_a_block_end(ex);
  if (block == 0) return 3;
  fail_next_allocation_of_size(block);
  int escaped = 0;
  for (int i = 0; i < 2000 && !joined; ++i) {
    escaped += turn_allowing_bad_alloc(*ex);
    if (!joined) std::this_thread::sleep_for(std::chrono::microseconds(100));
  }
  fail_allocation_of_size = 0;
  if (allocations_failed != 1) return 4;
  if (!joined || !g->empty()) return 5;
  return escaped <= 1 ? 0 : 7;
}

TEST_CASE("review13 F11: a task_group's last child ends when its joiner cannot be posted: the joiner still resumes") {
  on_each_backend([](backend_kind k) {
    check_in_child([&] { return joiner_cannot_be_posted(k); });
  });
}


// ---- F12: an event's (semaphore's, channel's) waiter cannot be posted ----
// A waiter of event, semaphore, mutex or channel is woken by unlinking it
// and posting its coroutine to the ready queue (detail/sync_wait.hpp,
// wait_queue::wake). When that post threw (the queue growing a block), the
// waiter was unlinked already: set() threw, and the waiter was never
// resumed; from executor::stop() (the queue's stop listener, noexcept) it
// was std::terminate. Three waiters; the queue is filled to a block's end
// and that block's allocation fails. Run in a child process: before the fix
// set() loses a waiter and stop() dies (SIGABRT).
task<void> wait_for_it(event* ev, int* ok, int* cancelled) {
  auto r = co_await ev->wait();
  if (r) ++*ok;
  else if (r.error() == std::errc::operation_canceled) ++*cancelled;
}

int waiter_cannot_be_posted(backend_kind k, bool by_stop) {
  auto* ex = new executor(on(k));  // leaked: a waiter never resumed would hold its destructor
  auto* ev = new event(*ex);
  int ok = 0, cancelled = 0;
  for (int i = 0; i < 3; ++i) ex->spawn(wait_for_it(ev, &ok, &cancelled));
  for (int i = 0; i < 10; ++i) ex->run_once(false);
  if (ev->waiters() != 3) return 2;
  const std::size_t block = fill_ready_queue_to_a_block_end(ex);
  if (block == 0) return 3;
  ex->run_once(false);  // runs the no-op handles: the next post needs a block
  fail_next_allocation_of_size(block);
  int threw = 0;
  try {
    if (by_stop) ex->stop();
    else ev->set();
  } catch (const std::bad_alloc&) {
    ++threw;
  }
  fail_allocation_of_size = 0;
  if (allocations_failed != 1) return 4;
  for (int i = 0; i < 1000 && ok + cancelled < 3; ++i) ex->run_once(false);
  if (by_stop ? cancelled != 3 : ok != 3) return 5;
  return threw == 0 ? 0 : 7;
}

TEST_CASE("review13 F12: an event's waiter that cannot be posted to the ready queue still resumes") {
  on_each_backend([](backend_kind k) {
    for (bool by_stop : {false, true}) {
      CAPTURE(by_stop);
      check_in_child([&] { return waiter_cannot_be_posted(k, by_stop); });
    }
  });
}


// ---- F13: a send queue's waiters cannot be posted ----
// The coroutines waiting for a send queue to empty (a connection's flush,
// its reader) are posted to the ready queue when it empties or fails, from
// send_queue::wake (noexcept): a post that threw there (the queue growing a
// block) was std::terminate, and the waiters behind it were lost. Two wait
// on a send the peer never reads; the peer goes (EPIPE) after the ready
// queue was filled to a block's end, and that block's allocation fails.
// Run in a child process: before the fix it dies (SIGABRT).
task<void> wait_sent(send_queue* q, int* woken) {
  co_await testing::wait_empty{q, {}};
  ++*woken;
}

int send_waiters_cannot_be_posted(backend_kind k) {
  auto* ex = new executor(on(k));  // leaked: a waiter never resumed would hold its destructor
  auto pair = testing::socket_pair(*ex);
  auto* b = new ringframe::socket(std::move(pair.second));
  auto* q = new send_queue(pair.first, {});
  q->out() += std::string(4 << 20, 'x');  // more than the socket buffer: the send waits
  q->start();
  int woken = 0;
  ex->spawn(wait_sent(q, &woken));
  ex->spawn(wait_sent(q, &woken));
  for (int i = 0; i < 5; ++i) ex->run_once(false);  // both wait now
  if (woken != 0 || !q->busy()) return 2;
  const std::size_t block = fill_ready_queue_to_a_block_end(ex);
  if (block == 0) return 3;
  ex->run_once(false);  // runs the no-op handles: the next post needs a block
  fail_next_allocation_of_size(block);
  delete b;  // unread bytes: EPIPE for the sender
  int escaped = 0;
  for (int i = 0; i < 1000 && woken < 2; ++i) {
    escaped += turn_allowing_bad_alloc(*ex);
    if (woken < 2) std::this_thread::sleep_for(std::chrono::microseconds(100));
  }
  fail_allocation_of_size = 0;
  if (allocations_failed != 1) return 4;
  if (woken != 2) return 5;
  return escaped == 0 ? 0 : 7;
}

TEST_CASE("review13 F13: a send queue's waiters that cannot be posted to the ready queue still resume") {
  on_each_backend([](backend_kind k) {
    check_in_child([&] { return send_waiters_cannot_be_posted(k); });
  });
}


// ---- F14: a name lookup's caller cannot be posted ----
// Every way a resolve() ends (its answer, its timeout, a stop) goes through
// one function that detaches the lookup and posts the waiting coroutine;
// from executor::stop() (the lookup's stop listener, noexcept) a post that
// threw there (the ready queue growing a block) was std::terminate, and
// from the others the caller, detached already, waited forever. A test
// hook holds the lookup on its resolver thread; the ready queue is filled
// to a block's end and stop() runs with that block's allocation failing.
// Run in a child process: before the fix it dies (SIGABRT).
std::atomic<bool> f12_release{false};
void f12_hold(std::string_view) {
  const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (!f12_release.load() && std::chrono::steady_clock::now() < until)
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
}

task<void> look_up(executor* ex, int* cancelled, bool* done) {
  auto r = co_await resolve(*ex, "localhost", 80);
  if (!r && r.error() == std::errc::operation_canceled) ++*cancelled;
  *done = true;
}

int lookup_cannot_be_posted(backend_kind k) {
  detail::resolver_test_hook = &f12_hold;
  auto* ex = new executor(on(k));  // leaked: a caller never resumed would hold its destructor
  int cancelled = 0;
  bool done = false;
  ex->spawn(look_up(ex, &cancelled, &done));
  for (int i = 0; i < 10; ++i) ex->run_once(false);  // the lookup is held on its thread
  if (done) return 2;
  const std::size_t block = fill_ready_queue_to_a_block_end(ex);
  if (block == 0) return 3;
  ex->run_once(false);  // runs the no-op handles: the next post needs a block
  fail_next_allocation_of_size(block);
  ex->stop();
  fail_allocation_of_size = 0;
  if (allocations_failed != 1) return 4;
  for (int i = 0; i < 1000 && !done; ++i) ex->run_once(false);
  f12_release = true;
  if (!done || cancelled != 1) return 5;
  return 0;
}

TEST_CASE("review13 F14: a name lookup ended by stop() when its caller cannot be posted still resumes it") {
  on_each_backend([](backend_kind k) {
    check_in_child([&] { return lookup_cannot_be_posted(k); });
  });
}


// ---- F15: a framed_client call whose reply cannot be posted ----
// A call waits for its reply as a node in the client's line; the reader
// hands it the reply and posts its coroutine to the ready queue
// (call_waiter::deliver). When that post threw (the queue growing a block),
// the call was already out of the line with its reply set: the exception
// left the reader, and the call was never resumed. The queue is filled to a
// block's end and that block's allocation fails as the reply comes. Run in
// a child process: before the fix the call never returns.
task<void> call_and_count(framed_client* c, int* answered) {
  task<result<message>> t = c->call(message::json(R"({"q": 1})"));
  result<message> r = co_await std::move(t);
  if (r && r->content == R"({"a": 2})") ++*answered;
}

int reply_cannot_be_posted(backend_kind k) {
  auto* ex = new executor(on(k));  // leaked: a call never resumed would hold its destructor
  auto pair = testing::socket_pair(*ex);
  auto* peer = new ringframe::socket(std::move(pair.second));
  auto* c = new framed_client(framed_client::adopt(std::move(pair.first)));
  int answered = 0;
  ex->spawn(call_and_count(c, &answered));
  // Until the request is on the peer's side (read and dropped).
  std::string got;
  for (int i = 0; i < 1000 && got.size() < 4; ++i) {
    ex->run_once(false);
    char buf[512];
    ssize_t n = ::recv(peer->fd(), buf, sizeof buf, MSG_DONTWAIT);
    if (n > 0) got.append(buf, static_cast<std::size_t>(n));
  }
  if (got.size() < 4) return 2;
  for (int i = 0; i < 5; ++i) ex->run_once(false);  // the call waits for its reply now
  const std::size_t block = fill_ready_queue_to_a_block_end(ex);
  if (block == 0) return 3;
  ex->run_once(false);  // runs the no-op handles: the next post needs a block
  const std::string reply = testing::raw_frame(
      R"({"byteorder": "little", "content-type": "text/json", "content-encoding": "utf-8", "content-length": 8})",
      R"({"a": 2})");
  if (::send(peer->fd(), reply.data(), reply.size(), 0) != static_cast<ssize_t>(reply.size())) return 2;
  fail_next_allocation_of_size(block);
  int escaped = 0;
  for (int i = 0; i < 1000 && answered == 0; ++i) {
    escaped += turn_allowing_bad_alloc(*ex);
    if (answered == 0) std::this_thread::sleep_for(std::chrono::microseconds(100));
  }
  fail_allocation_of_size = 0;
  if (allocations_failed != 1) return 4;
  if (answered != 1) return 5;
  if (c->error()) return 8;  // the client still works
  return escaped == 0 ? 0 : 7;
}

TEST_CASE("review13 F15: a framed_client call whose reply cannot be posted to the ready queue still returns it") {
  on_each_backend([](backend_kind k) {
    check_in_child([&] { return reply_cannot_be_posted(k); });
  });
}


// ---- review16: the inbox fallback's node (detail/resume_later.hpp) ----
// Three ways a waiter whose post failed (its node queued in the inbox) can
// meet its frame's end or a second wake-up: the frame destroyed before the
// inbox runs (the node must be withdrawn), the executor destroyed first
// (the node must be dropped, and the frame destroyed later must not touch
// the executor), and stop() after set() (one resume, with set()'s outcome).
// Each runs in a child process; under ASan a node left behind is a
// heap-use-after-free.
task<void> counted_wait(event* ev, int* resumed, int* ok) {
  auto r = co_await ev->wait();
  ++*resumed;
  if (r) ++*ok;
}

// 1: frame first. 2: executor first. 3: set() then stop().
int queued_node_meets(backend_kind k, int how) {
  auto* ex = new executor(on(k));
  auto* ev = new event(*ex);
  int resumed = 0, ok = 0;
  auto* t = new task<void>(counted_wait(ev, &resumed, &ok));
  t->handle().resume();  // waits on the event
  if (ev->waiters() != 1) return 2;
  const std::size_t block = fill_ready_queue_to_a_block_end(ex);
  if (block == 0) return 3;
  ex->run_once(false);  // runs the no-op handles: the next post needs a block
  const std::uint64_t calls = ex->stats().deferred_calls;
  fail_next_allocation_of_size(block);
  ev->set();  // the post fails: the node goes to the inbox
  fail_allocation_of_size = 0;
  if (allocations_failed != 1) return 4;
  if (resumed != 0) return 5;
  if (how == 1) {
    delete t;  // the frame goes while its node is queued: withdrawn
    for (int i = 0; i < 20; ++i) ex->run_once(false);
    if (resumed != 0) return 6;
    if (ex->stats().deferred_calls != calls) return 7;  // nothing ran from the inbox
    delete ev;
    delete ex;
    return 0;
  }
  if (how == 2) {
    delete ev;
    delete ex;  // the node is dropped, never run
    if (resumed != 0) return 8;
    delete t;  // must not touch the executor
    return 0;
  }
  ex->stop();  // the waiter is out of the event's queue: not woken again
  for (int i = 0; i < 50 && !t->handle().done(); ++i) ex->run_once(false);
  if (resumed != 1 || ok != 1 || !t->handle().done()) return 9;
  for (int i = 0; i < 20; ++i) ex->run_once(false);
  if (resumed != 1) return 10;
  delete t;
  delete ev;
  delete ex;
  return 0;
}

TEST_CASE("review16: a waiter's node queued in the inbox is withdrawn with its frame, dropped with its executor, run once") {
  on_each_backend([](backend_kind k) {
    for (int how : {1, 2, 3}) {
      CAPTURE(how);
      check_in_child([&] { return queued_node_meets(k, how); });
    }
  });
}

// ---- the parked list (executor::wake, detail::wake_node) ----
// A send queue's waiter whose post fails is parked on the executor's
// intrusive list (three words in the frame instead of resume_later's six:
// an idle connection's reader holds one). The same three meetings as above:
// the frame destroyed while parked (the node must unpark itself), the
// executor destroyed first (its teardown resumes the coroutine, as it runs
// what is in its ready queue, and the frame destroyed later must not touch
// the executor), and a normal turn (one resume). Under ASan a node left on the list is a heap-use-after-free.
struct park_here {
  detail::wake_node* n;
  bool await_ready() const noexcept { return false; }
  void await_suspend(std::coroutine_handle<> h) noexcept { n->h = h; }
  void await_resume() const noexcept {}
};

task<void> parked_wait(detail::wake_node** out, int* woken) {
  detail::wake_node n;
  *out = &n;
  co_await park_here{&n};
  *out = nullptr;
  ++*woken;
}

// 1: frame first. 2: executor first. 3: the next turn resumes it, once.
int parked_node_meets(backend_kind k, int how) {
  auto* ex = new executor(on(k));
  int woken = 0;
  detail::wake_node* node = nullptr;
  auto* t = new task<void>(parked_wait(&node, &woken));
  t->handle().resume();  // suspended, its node in the frame
  if (!node) return 2;
  const std::size_t block = fill_ready_queue_to_a_block_end(ex);
  if (block == 0) return 3;
  ex->run_once(false);  // runs the no-op handles: the next post needs a block
  fail_next_allocation_of_size(block);
  ex->wake(node);  // the post fails: parked
  fail_allocation_of_size = 0;
  if (allocations_failed != 1) return 4;
  if (node->parked_in != ex || woken != 0) return 5;
  if (how == 1) {
    delete t;  // the frame goes while parked: unparked
    for (int i = 0; i < 20; ++i) ex->run_once(false);
    if (woken != 0) return 6;
    delete ex;
    return 0;
  }
  if (how == 2) {
    delete ex;  // its teardown resumes the parked coroutine, once
    if (woken != 1) return 7;
    delete t;  // must not touch the executor
    return 0;
  }
  ex->run_once(false);
  if (woken != 1 || !t->handle().done()) return 8;
  for (int i = 0; i < 20; ++i) ex->run_once(false);
  if (woken != 1) return 9;
  delete t;
  delete ex;
  return 0;
}

TEST_CASE("a wake-up parked when the ready queue cannot grow is unparked with its frame, resumed by its executor's teardown, resumed once") {
  on_each_backend([](backend_kind k) {
    for (int how : {1, 2, 3}) {
      CAPTURE(how);
      check_in_child([&] { return parked_node_meets(k, how); });
    }
  });
}

}  // namespace
