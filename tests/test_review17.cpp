// Review 17: the per-thread receive budget and the receive stream's states
// around it (reserve_or_wait, budget_wait, on_budget, release_budget, the
// destructor's cleanup). Each F case fails before its fix; every wait is
// bounded.
#include "failing_allocator.hpp"
#include "loopback.hpp"

#include <ringframe/detail/completion.hpp>
#include <ringframe/detail/io_backend.hpp>
#include <ringframe/frame.hpp>
#include <ringframe/receive_budget.hpp>
#include <ringframe/receive_stream.hpp>

#include <doctest/doctest.h>

#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <new>
#include <string>
#include <vector>

using namespace ringframe;
using namespace std::chrono_literals;
using testing::on;
using namespace testing::failing_allocator;

namespace {

// One turn of the loop; a bad_alloc out of it is allowed (what matters is
// that nothing is lost): true when one came out.
bool turn_allowing_bad_alloc(executor& ex) {
  try {
    ex.run_once(false);
    return false;
  } catch (const std::bad_alloc&) {
    return true;
  }
}

// A reader of a receive_stream driven by hand: done() marks it.
struct reader {
  bool done = false;
  static void on_done(void* self) { static_cast<reader*>(self)->done = true; }
};

std::string frame_of(std::size_t content_len) {
  std::string f;
  REQUIRE(encode_frame(message::binary(std::string(content_len, 'x'), "t"), f));
  return f;
}

void put(ringframe::socket& s, std::string_view bytes) {
  REQUIRE(::send(s.fd(), bytes.data(), bytes.size(), MSG_DONTWAIT) == static_cast<ssize_t>(bytes.size()));
}

// Turns until `r` is done (bounded); false if it never was.
bool turn_until_done(executor& ex, reader& r, int* escapes = nullptr) {
  for (int i = 0; i < 200 && !r.done; ++i) {
    const bool e = turn_allowing_bad_alloc(ex);
    if (escapes) *escapes += e;
  }
  return r.done;
}

// A request's completion that only counts.
struct counted : detail::completion {
  int* finals;
  explicit counted(int* n) : finals(n) {
    on_cqe = [](detail::completion* c, int, unsigned flags, bool) {
      if (!(flags & detail::cqe_more)) ++*static_cast<counted*>(c)->finals;
    };
  }
};

}  // namespace

// ---------------------------------------------------------------------------
// F1: a frame admitted by the budget submits its recv from on_budget, a
// deferred call run by the executor's loop. The decoder's growth there is
// caught (the reader gets ENOMEM), but the submission is not: when it
// throws (epoll: bad_alloc for a new slab of waiters; io_uring: a full
// submission queue whose reap cannot grow the completion list), the
// exception leaves the loop (executor::run throws, for every connection of
// the thread) and the reader, the stream already set back to idle with
// nothing in the kernel, is never resumed: not by a later turn, not by its
// deadline, not by a stop. Its frame's reservation is never given back
// either while the connection lives, so every other large frame waits.
TEST_CASE("review17 F1: a submission that fails when a frame is admitted by the budget ends the read, not the loop") {
  receive_budget& b = receive_budget::this_thread();
  REQUIRE(b.used() == 0);
  REQUIRE(b.waiting() == 0);
  {
    int filler_finals = 0;
    std::vector<counted> fillers;
    fillers.reserve(600);
    executor ex(on(backend_kind::epoll));
    auto p1 = testing::socket_pair(ex);
    auto p2 = testing::socket_pair(ex);
    auto px = testing::socket_pair(ex);
    frame_decoder d1, d2;
    reader r1, r2;
    receive_stream::options o;
    o.provided_buffers = false;  // every read straight into the decoder
    o.budget = 64 * 1024;        // one of the frames below at a time
    receive_stream s1(p1.first, d1, o, &reader::on_done, &r1);
    receive_stream s2(p2.first, d2, o, &reader::on_done, &r2);

    // Both peers send the start of a 48 KiB frame.
    const std::string f = frame_of(48 * 1024);
    put(p1.second, std::string_view(f).substr(0, 1000));
    put(p2.second, std::string_view(f).substr(0, 1000));
    for (auto [s, d, r] : {std::tuple{&s1, &d1, &r1}, std::tuple{&s2, &d2, &r2}}) {
      REQUIRE(s->start(true));
      REQUIRE(turn_until_done(ex, *r));
      REQUIRE(s->outcome() == 1000);
      message_view m;
      REQUIRE(d->next(m) == frame_decoder::status::need_more);
      REQUIRE(d->frame_length() == f.size());
      r->done = false;
      REQUIRE(s->start(false));  // the rest: s1 reserves it, s2 waits
    }
    REQUIRE(s1.reserved() == f.size());
    REQUIRE(s2.current() == receive_stream::state::budget);
    REQUIRE(b.waiting() == 1);

    // Idle recvs on one more socket until the backend's free list of
    // waiters is empty: the submission that allocates a new slab tells its
    // size; 255 more after it take that slab.
    std::size_t slab = 0;
    int after_slab = 0;
    for (int i = 0; i < 560 && after_slab < 255; ++i) {
      detail::io_request rq;
      rq.op = detail::io_op::recv;
      rq.fd = px.first.fd();
      static char sink[1];
      rq.buf = sink;
      rq.len = 1;
      rq.key = detail::key_of(&fillers.emplace_back(&filler_finals));
      start_tracing(-1);
      ex.submit(rq);
      stop_tracing();
      if (i == 0) continue;  // (the descriptor's first request may grow the backend's table)
      if (slab) {
        REQUIRE(traced_count == 0);
        ++after_slab;
      } else if (traced_count > 0) {
        // The slab, and maybe the growth of the list of slabs: the larger.
        for (int k = 0; k < traced_count; ++k) slab = std::max(slab, traced[static_cast<std::size_t>(k)]);
        MESSAGE("a slab of waiters: " << slab << " bytes, at request " << i);
      }
    }
    REQUIRE(slab != 0);
    REQUIRE(after_slab == 255);

    // s1 is done with its frame: s2 is admitted, and its recv's waiter
    // needs a new slab, which cannot be had.
    allocations_failed = 0;
    matching_allocations = 0;
    allocations_to_pass = 0;
    fail_allocation_of_size = slab;
    s1.release_budget();
    CHECK(b.waiting() == 0);
    int escapes = 0;
    const bool told = turn_until_done(ex, r2, &escapes);
    fail_allocation_of_size = 0;
    REQUIRE(allocations_failed == 1);  // the failure was reached
    CHECK(escapes == 0);               // fails before the fix: run_once threw
    CHECK(told);                       // fails before the fix: the reader is never resumed
    if (told) CHECK(s2.outcome() == -ENOMEM);
    CHECK(s2.current() == receive_stream::state::idle);

    // Teardown: s1's recv and the fillers end with their sockets.
    s1.stop();
    turn_until_done(ex, r1);
    if (r1.done) s1.outcome();
    { ringframe::socket gone = std::move(px.first); }  // closed: its requests end
    for (int i = 0; i < 50 && filler_finals < static_cast<int>(fillers.size()); ++i) ex.run_once(false);
    CHECK(filler_finals == static_cast<int>(fillers.size()));
  }
  CHECK(b.used() == 0);
  CHECK(b.waiting() == 0);
}
