// Review 20: the zero-copy send path after b3de94a (a batch the kernel took
// in full counts as sent; a short one ends at the write timeout). Each F
// case fails before its fix. Zero-copy's held pages and its two CQEs exist
// only on io_uring (epoll sends a copy, with one completion), so these run
// on io_uring whatever RINGFRAME_BACKEND says. Every wait is bounded.
#include "loopback.hpp"
#include "send_helpers.hpp"

#include <ringframe/executor.hpp>
#include <ringframe/send_queue.hpp>
#include <ringframe/socket.hpp>

#include <doctest/doctest.h>

#include <netinet/in.h>
#include <sys/socket.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <thread>

using namespace ringframe;
using namespace std::chrono_literals;
using clk = std::chrono::steady_clock;

namespace {

// Reads what the peer has now, at most `limit` bytes, without waiting.
std::size_t take_now(int fd, std::size_t limit) {
  std::size_t got = 0;
  char buf[65536];
  while (got < limit) {
    ssize_t n = ::recv(fd, buf, std::min(sizeof buf, limit - got), MSG_DONTWAIT);
    if (n <= 0) break;
    got += static_cast<std::size_t>(n);
  }
  return got;
}

// Everything the kernel took from the queue reaches the peer, orphaned
// pages included: read until nothing has come for a while, running the
// executor meanwhile (its notifications free the orphans).
std::size_t take_all(executor& ex, int fd) {
  std::size_t got = 0;
  auto quiet_since = clk::now();
  while (clk::now() - quiet_since < 300ms) {
    ex.run_once(false);
    std::size_t n = take_now(fd, SIZE_MAX);
    if (n) quiet_since = clk::now();
    got += n;
    std::this_thread::sleep_for(1ms);
  }
  return got;
}

void run_until_failed(executor& ex, send_queue& q, clk::duration bound) {
  const auto t0 = clk::now();
  while (q.current() != send_queue::state::failed && clk::now() - t0 < bound) {
    ex.run_once(false);
    std::this_thread::sleep_for(1ms);
  }
}

// ---- F1: a short SEND_ZC result that comes after the write deadline ----

// An io_uring executor whose ring is set up as `s`.
executor_options ring(ring_setup s) {
  executor_options eo = testing::on_io_uring();
  eo.setup = s;
  return eo;
}

void short_result_after_deadline(ring_setup setup) {
  // Our send buffer well over the peer's window: the part of the batch the
  // kernel takes once there is room does not all fit in the peer's window.
  testing::zero_copy_pair p(ring(setup), 256 * 1024);
  INFO("ring: " << std::string(p.ex.setup_mode()));
  // Our send buffer and the peer's window full of bytes sent directly: the
  // queue's SEND_ZC finds no room and waits in the kernel (state sending).
  const std::string filler(64 * 1024, 'f');
  std::size_t filled = 0;
  for (;;) {
    ssize_t n = ::send(p.a.fd(), filler.data(), filler.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
    if (n <= 0) break;
    filled += static_cast<std::size_t>(n);
  }
  REQUIRE(filled > 0);
  std::uint64_t out = 0;
  send_queue::options so;
  so.zero_copy_threshold = 1;
  so.write_timeout = 100ms;
  send_queue q(p.a, so, &out);
  q.out() = std::string(4 << 20, 'z');
  q.start();
  const auto expired = p.ex.stats().deadlines_expired;
  const auto t0 = clk::now();
  while (p.ex.stats().deadlines_expired == expired && clk::now() - t0 < 3s) {
    p.ex.run_once(false);
    std::this_thread::sleep_for(1ms);
  }
  // The deadline fired with the send in the kernel: on_deadline asked for
  // its cancellation, which goes to the kernel with the loop's next turn.
  REQUIRE(p.ex.stats().deadlines_expired > expired);
  REQUIRE(q.current() == send_queue::state::sending);
  // Before that turn the peer takes a little: room opens, and the kernel
  // retries the send, which takes part of the batch (the result comes with
  // IORING_CQE_F_MORE; the cancellation then finds nothing to cancel). The
  // peer reads nothing more, so the notification never comes.
  // It takes the filler (and nothing of the batch, which is not sent yet):
  // the room is then our whole send buffer.
  std::size_t early = 0;
  for (int i = 0; i < 2000 && early < filled; ++i) {
    early += take_now(p.b.fd(), filled - early);
    std::this_thread::sleep_for(1ms);
  }
  REQUIRE(early == filled);
  std::this_thread::sleep_for(20ms);
  run_until_failed(p.ex, q, 2s);
  MESSAGE(std::string(p.ex.setup_mode()) << ": the peer took " << early << " B, the queue is in state "
                                         << static_cast<int>(q.current()) << ", " << out << " B counted out");
  // The deadline is spent: it must end the batch, not leave it waiting for
  // pages a peer that does not read never lets go.
  CHECK(q.current() == send_queue::state::failed);
  CHECK(q.error() == std::errc::timed_out);
  // On these rings the result did come (the kernel took part of the batch),
  // and what it took counts as sent: the peer gets it. With DEFER_TASKRUN
  // the kernel's retry of the send waits for the loop's next io_uring_enter,
  // where the cancellation is submitted first and wins: nothing was taken.
  if (std::string(p.ex.setup_mode()) != "defer-taskrun") CHECK(out > 0);
  const std::size_t rest = take_all(p.ex, p.b.fd());
  CHECK(early + rest == filled + out);
}

}  // namespace

TEST_CASE("review20 F1: a short zero-copy result that comes after the write deadline fired ends the batch (ETIMEDOUT)") {
  SUBCASE("plain") { short_result_after_deadline(ring_setup::plain); }
  SUBCASE("coop-taskrun") { short_result_after_deadline(ring_setup::coop_taskrun); }
  SUBCASE("fastest") { short_result_after_deadline(ring_setup::fastest); }
}

namespace {

// ---- F2: the bytes of a short zero-copy batch that is given up ----

enum class give_up { deadline, cancel };

void given_up_short_batch_is_counted(give_up how) {
  testing::zero_copy_pair p(testing::on_io_uring());
  std::uint64_t out = 0;
  send_queue::options so;
  so.zero_copy_threshold = 1;
  so.write_timeout = how == give_up::deadline ? 100ms : 0ms;
  send_queue q(p.a, so, &out);
  q.out() = std::string(4 << 20, 'z');
  q.start();
  // The kernel takes what fits; the peer reads nothing, so the pages are held.
  const auto t0 = clk::now();
  while (q.current() != send_queue::state::releasing && clk::now() - t0 < 3s) {
    p.ex.run_once(false);
    std::this_thread::sleep_for(1ms);
  }
  REQUIRE(q.current() == send_queue::state::releasing);
  if (how == give_up::cancel) q.cancel();
  run_until_failed(p.ex, q, 2s);
  REQUIRE(q.current() == send_queue::state::failed);
  CHECK(q.error() == (how == give_up::deadline ? std::errc::timed_out : std::errc::operation_canceled));
  // The kernel took those bytes and the peer gets them: bytes_out says so.
  const std::size_t got = take_all(p.ex, p.b.fd());
  MESSAGE("the peer got " << got << " B, " << out << " B counted out");
  CHECK(got > 0);
  CHECK(out == got);
}

}  // namespace

TEST_CASE("review20 F2a: the bytes the kernel took of a short zero-copy batch ended by the write deadline count as sent") {
  given_up_short_batch_is_counted(give_up::deadline);
}

TEST_CASE("review20 F2b: the bytes the kernel took of a short zero-copy batch whose queue is stopped count as sent") {
  given_up_short_batch_is_counted(give_up::cancel);
}

namespace {

// ---- F4: send_queue::cancel() (no stop token) that reaches the kernel too late ----

void short_result_after_cancel(ring_setup setup, bool zero_copy) {
  testing::zero_copy_pair p(ring(setup), 256 * 1024);
  INFO("ring: " << std::string(p.ex.setup_mode()) << ", zero-copy: " << zero_copy);
  // As in F1: the queue's send waits in the kernel for room.
  const std::string filler(64 * 1024, 'f');
  std::size_t filled = 0;
  for (;;) {
    ssize_t n = ::send(p.a.fd(), filler.data(), filler.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
    if (n <= 0) break;
    filled += static_cast<std::size_t>(n);
  }
  REQUIRE(filled > 0);
  std::uint64_t out = 0;
  send_queue::options so;
  so.zero_copy_threshold = zero_copy ? 1 : 0;
  send_queue q(p.a, so, &out);  // no write timeout, and no stop token
  q.out() = std::string(4 << 20, 'z');
  q.start();
  for (int i = 0; i < 20; ++i) {
    p.ex.run_once(false);
    std::this_thread::sleep_for(1ms);
  }
  REQUIRE(q.current() == send_queue::state::sending);
  q.cancel();  // its cancellation goes to the kernel with the loop's next turn
  // Before it does, the peer takes the filler: the kernel's retry of the
  // send takes part of the batch, and the cancellation finds nothing.
  std::size_t early = 0;
  for (int i = 0; i < 2000 && early < filled; ++i) {
    early += take_now(p.b.fd(), filled - early);
    std::this_thread::sleep_for(1ms);
  }
  REQUIRE(early == filled);
  std::this_thread::sleep_for(20ms);
  run_until_failed(p.ex, q, 2s);
  MESSAGE(std::string(p.ex.setup_mode()) << std::string(zero_copy ? ", zero-copy" : ", copy") << ": state "
                                         << static_cast<int>(q.current()) << ", " << out << " B counted out");
  // Stopped is stopped: neither the rest of the batch nor a wait for pages
  // the peer holds (there is no deadline to end that wait).
  CHECK(q.current() == send_queue::state::failed);
  CHECK(q.error() == std::errc::operation_canceled);
  CHECK(out > 0);  // the kernel did take part of the batch first
  const std::size_t rest = take_all(p.ex, p.b.fd());
  CHECK(early + rest == filled + out);
}

}  // namespace

TEST_CASE("review20 F4: send_queue::cancel() whose cancellation comes after the kernel took part of the batch still stops the queue") {
  SUBCASE("zero-copy, plain ring") { short_result_after_cancel(ring_setup::plain, true); }
  SUBCASE("zero-copy, coop-taskrun ring") { short_result_after_cancel(ring_setup::coop_taskrun, true); }
  SUBCASE("copy, plain ring") { short_result_after_cancel(ring_setup::plain, false); }
}

namespace {

// ---- F5: a short zero-copy batch, seen from outside while the kernel holds its pages ----

void releasing_counts(bool destroy) {
  testing::zero_copy_pair p(testing::on_io_uring());
  std::uint64_t out = 0;
  send_queue::options so;
  so.zero_copy_threshold = 1;
  const std::size_t batch = 4 << 20;
  std::optional<send_queue> q(std::in_place, p.a, so, &out);
  q->out() = std::string(batch, 'z');
  q->start();
  const auto t0 = clk::now();
  while (q->current() != send_queue::state::releasing && clk::now() - t0 < 3s) {
    p.ex.run_once(false);
    std::this_thread::sleep_for(1ms);
  }
  REQUIRE(q->current() == send_queue::state::releasing);
  // The part the kernel took is in the socket, as a copied batch's bytes
  // are once sent: not unsent (a flush or a backpressure check would
  // otherwise wait for bytes that are already on their way).
  const std::size_t unsent = q->unsent();
  if (destroy) q.reset();  // the orphan keeps the pages; what it took still reaches the peer
  else q->cancel();
  const std::size_t got = take_all(p.ex, p.b.fd());
  MESSAGE("the kernel took " << got << " B of " << batch << ", unsent() said " << unsent << ", " << out
                             << " B counted out");
  CHECK(got > 0);
  CHECK(got < batch);
  CHECK(unsent == batch - got);
  CHECK(out == got);
}

}  // namespace

TEST_CASE("review20 F5: while the kernel holds a short zero-copy batch, unsent() counts only what it has not taken") {
  releasing_counts(false);
}

TEST_CASE("review20 F5b: a queue destroyed while the kernel holds a short zero-copy batch counts what it took as sent") {
  releasing_counts(true);
}
