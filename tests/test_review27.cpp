// The twenty-seventh review: completion callbacks that resubmit without
// catching what a submission throws, after review24 F1. A backend's submit
// throws std::bad_alloc (epoll: a waiter or its timer) or std::system_error
// (io_uring: a full submission queue that io_uring_submit cannot drain); from
// a completion, that left run_once() (executor::run, for every connection of
// the thread) with the waiting reader or sender never resumed. The tests make
// the submission throw with detail::submit_test_hook. The F cases fail
// without their fix; every wait is bounded (no network: an AF_UNIX socket and
// loopback TCP); each test runs on io_uring and on epoll.
#include "loopback.hpp"
#include "send_helpers.hpp"
#include "stream_reader.hpp"

#include <ringframe/receive_stream.hpp>
#include <ringframe/send_queue.hpp>
#include <ringframe/socket.hpp>
#include <ringframe/task.hpp>

#include <doctest/doctest.h>

#include <sys/socket.h>

#include <cerrno>
#include <chrono>
#include <coroutine>
#include <exception>
#include <new>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

using namespace ringframe;
using namespace std::chrono_literals;
using testing::on;
using testing::on_each_backend;

namespace {

// What a backend's submit throws: io_uring, the std::system_error of
// uring_backend::submit_pending when the kernel takes nothing from a full
// submission queue; epoll, std::bad_alloc (a waiter's slab, its timer).
enum class thrown { system_error, bad_alloc };

// The hook: records every request, and throws `fail_with` for the first one
// of `fail_op` (-1: fails none). The executor's thread only.
int fail_op = -1;
thrown fail_with = thrown::system_error;
std::vector<detail::io_op> submitted;

void record_and_fail(const detail::io_request& r) {
  submitted.push_back(r.op);
  if (static_cast<int>(r.op) == fail_op) {
    fail_op = -1;
    if (fail_with == thrown::bad_alloc) throw std::bad_alloc();
    throw std::system_error(errno_code(EAGAIN), "ringframe: io_uring submission stalled (injected)");
  }
}

// The errno a caller reports for it (review24 F1: ENOMEM, or EIO).
int errno_for(thrown t) { return t == thrown::bad_alloc ? ENOMEM : EIO; }

struct hooked {
  explicit hooked(int op, thrown t = thrown::system_error) {
    submitted.clear();
    fail_op = op;
    fail_with = t;
    detail::submit_test_hook = &record_and_fail;
  }
  ~hooked() {
    detail::submit_test_hook = nullptr;
    fail_op = -1;
  }
  hooked(const hooked&) = delete;
  hooked& operator=(const hooked&) = delete;
};

// Turns of `ex`'s loop until `done()` or 2 s; an exception out of run_once
// ends them, and is reported in `what`.
template <class F>
bool turn_until(executor& ex, F done, std::string* what) {
  const auto until = std::chrono::steady_clock::now() + 2s;
  while (!done() && std::chrono::steady_clock::now() < until) {
    try {
      ex.run_once(false);
    } catch (const std::exception& e) {
      *what = e.what();
      return true;
    }
  }
  return false;
}

}  // namespace

// ---- F1: the multishot recv's fallback resubmits from its completion ----
//
// A multishot recv that ends with EINVAL (a kernel before 6.0 refuses the
// flag) turns multishot off for the stream and, when a reader waits, submits
// a single recv from the completion (receive_stream::on_multishot). That
// submission was not guarded: what it threw left the executor's loop, and
// the reader waited for good (nothing in the kernel, the stream idle). It
// must end the read with ENOMEM (bad_alloc) or EIO, as on_budget does.
//
// An AF_UNIX stream socket that is not connected answers every recv with
// EINVAL, on both backends and any kernel: the multishot recv ends as on a
// kernel without it, and the fallback's recv fails the same way.

namespace {

using testing::read_once;
using testing::reader;

struct read_outcome {
  bool done = false;
  int res = 0;
  bool escaped = false;
  std::string what;
  std::vector<detail::io_op> ops;
};

task<void> read_one(receive_stream* s, reader* r, read_outcome* out) {
  out->res = co_await read_once{s, r};
  out->done = true;
}

read_outcome multishot_refused(backend_kind k, int fail, thrown t = thrown::system_error) {
  read_outcome out;
  executor ex(on(k));
  const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  REQUIRE(fd >= 0);
  ringframe::socket s(ex, fd);
  frame_decoder decoder;
  reader r;
  receive_stream stream(s, decoder, {.multishot = true}, &reader::done, &r);
  {
    hooked h(fail, t);
    ex.spawn(read_one(&stream, &r, &out));
    out.escaped = turn_until(ex, [&] { return out.done; }, &out.what);
    out.ops = submitted;
  }
  // Before the fix nothing will resume the reader: the executor's end
  // destroys its frame (which touches neither the stream nor `r`).
  return out;
}

}  // namespace

TEST_CASE("review27 F1: a multishot recv's fallback that cannot be submitted ends the read with ENOMEM or EIO, "
          "not the executor's loop") {
  on_each_backend([](backend_kind k) {
    // Without a failure: the multishot recv is refused, the fallback's
    // single recv is submitted from its completion and fails the same way.
    read_outcome plain = multishot_refused(k, -1);
    CAPTURE(plain.what);
    REQUIRE_FALSE(plain.escaped);
    REQUIRE(plain.done);
    CHECK(plain.res == -EINVAL);
    CHECK(plain.ops == std::vector<detail::io_op>{detail::io_op::recv_multishot, detail::io_op::recv_provided});

    // The fallback's submission throws (either backend's exception).
    for (thrown t : {thrown::system_error, thrown::bad_alloc}) {
      read_outcome o = multishot_refused(k, static_cast<int>(detail::io_op::recv_provided), t);
      CAPTURE(o.what);
      CHECK(o.ops == std::vector<detail::io_op>{detail::io_op::recv_multishot, detail::io_op::recv_provided});
      CHECK_FALSE(o.escaped);
      CHECK(o.done);
      CHECK(o.res == -errno_for(t));
    }
  });
}

// ---- F2: a send queue's next send, submitted from a send's completion ----
//
// send_queue::progress() continues from a send's completion: the rest of a
// short send (submit()), or the batch written while this one was out
// (start()). It caught only std::bad_alloc (review12 F5): a std::system_error
// from io_uring's submit left run_once() with the queue `sending` and nothing
// in the kernel, its waiters never woken and its write deadline never armed
// again. The queue must fail (EIO, as review24 F1 ends an operation) and wake
// them.

namespace {

struct send_outcome {
  bool escaped = false;
  std::string what;
  bool woken = false;  // the waiter was resumed (the executor's end wakes it too)
  bool woken_in_time = false;  // ... before the queue went away
  bool busy = true;
  std::error_code error;
};

task<void> wait_for_queue(send_queue* q, send_outcome* out) {
  co_await testing::wait_empty{q, {}};
  out->woken = true;
}

// `rest`: the first send is short (a peer that does not read, small
// buffers) and its completion submits the rest. Otherwise a small batch
// goes out whole, and its completion starts the one written meanwhile.
send_outcome next_send_throws(backend_kind k, bool rest, thrown t) {
  send_outcome out;
  executor ex(on(k));
  auto [s, peer] = ex.run(testing::tcp_pair(&ex));
  REQUIRE(s.set_option(SOL_SOCKET, SO_SNDBUF, 16384));
  REQUIRE(peer.set_option(SOL_SOCKET, SO_RCVBUF, 16384));
  {
    send_queue q(s, {});
    q.out() = rest ? std::string(512 << 10, 'x') : std::string("first");
    // The small batch waits for room: on epoll one the socket takes at once
    // completes inside start() (io_backend::send_now), with no completion
    // to start the next. The turns below drain the peer.
    if (!rest) REQUIRE(testing::fill_send_buffer(s) > 0);
    q.start();
    REQUIRE(q.busy());
    if (!rest) q.out() = "second";
    {
      hooked h(static_cast<int>(detail::io_op::send), t);
      ex.spawn(wait_for_queue(&q, &out));
      const ringframe::socket* reader = &peer;  // (clang 14: no structured binding in a lambda)
      out.escaped = turn_until(
          ex,
          [&] {
            testing::drain_received(*reader);
            return out.woken;
          },
          &out.what);
    }
    out.woken_in_time = out.woken;
    out.busy = q.busy();
    out.error = q.error();
    // Before the fix the queue stays `sending` (the rest) or idle with its
    // batch dropped (the next batch), and the waiter is not woken until the
    // queue goes: nothing is in the kernel for it.
  }
  return out;
}

}  // namespace

TEST_CASE("review27 F2: a send queue whose next send cannot be submitted from a completion fails with ENOMEM "
          "or EIO, not the executor's loop") {
  on_each_backend([](backend_kind k) {
    for (bool rest : {true, false})
      for (thrown t : {thrown::system_error, thrown::bad_alloc}) {
        CAPTURE(rest);
        CAPTURE(static_cast<int>(t));
        send_outcome o = next_send_throws(k, rest, t);
        CAPTURE(o.what);
        CHECK(submitted == std::vector<detail::io_op>{detail::io_op::send});
        CHECK_FALSE(o.escaped);
        CHECK(o.woken_in_time);
        CHECK_FALSE(o.busy);
        CHECK(o.error == errno_code(errno_for(t)));
      }
  });
}
