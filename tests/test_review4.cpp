// The fourth review: lifetimes in issue 13's code (task_group, submit_to,
// the resolver thread, framed_client). Each case forces the interleaving or
// the failure it is about and runs on io_uring and on epoll (a subcase
// each). Every wait is bounded by a deadline.
#include "loopback.hpp"

#include <ringframe/executor.hpp>
#include <ringframe/frame.hpp>
#include <ringframe/framed_client.hpp>
#include <ringframe/socket.hpp>
#include <ringframe/with_timeout.hpp>

#include <doctest/doctest.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <new>
#include <span>
#include <stop_token>
#include <string>
#include <system_error>

using namespace ringframe;
using namespace std::chrono_literals;
using testing::on;
using testing::on_each_backend;

// An allocator that can be told to fail once, for one allocation of an
// exact size: how a test reaches a bad_alloc handler without exhausting
// memory. Every form goes through malloc/free, so that any new pairs with
// any delete (ASan checks the pairing).
namespace {
std::atomic<std::size_t> fail_allocation_of_size{0};
std::atomic<int> allocations_failed{0};

void* checked_malloc(std::size_t n) {
  std::size_t want = fail_allocation_of_size.load(std::memory_order_relaxed);
  if (want != 0 && n == want && fail_allocation_of_size.compare_exchange_strong(want, 0)) {
    allocations_failed.fetch_add(1);
    throw std::bad_alloc();
  }
  if (void* p = std::malloc(n ? n : 1)) return p;
  throw std::bad_alloc();
}
}  // namespace

void* operator new(std::size_t n) { return checked_malloc(n); }
void* operator new[](std::size_t n) { return checked_malloc(n); }
void* operator new(std::size_t n, const std::nothrow_t&) noexcept {
  try {
    return checked_malloc(n);
  } catch (...) {
    return nullptr;
  }
}
void* operator new[](std::size_t n, const std::nothrow_t&) noexcept {
  try {
    return checked_malloc(n);
  } catch (...) {
    return nullptr;
  }
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t) noexcept { std::free(p); }
void operator delete(void* p, const std::nothrow_t&) noexcept { std::free(p); }
void operator delete[](void* p, const std::nothrow_t&) noexcept { std::free(p); }

namespace {

// The peer: reads the one request, arms the allocator for the client's copy
// of the reply's content (std::string(content): size + 1), sends the
// reply, then waits for the client to close.
task<void> answer_once(ringframe::socket p, std::string reply, std::size_t fail_size) {
  std::byte buf[4096];
  result<std::size_t> n = co_await p.recv(buf, {.timeout = 5s});
  REQUIRE(n);
  REQUIRE(*n > 0);
  fail_allocation_of_size.store(fail_size);
  result<std::size_t> w = co_await p.send_all(std::as_bytes(std::span(reply.data(), reply.size())), {.timeout = 5s});
  REQUIRE(w);
  for (;;) {
    result<std::size_t> more = co_await p.recv(buf, {.timeout = 5s});
    if (!more || *more == 0) break;
  }
}

task<result<message>> call_stoppable(framed_client* c, std::stop_token st) {
  task<result<message>> t = c->call(message::binary("q", "binary/test"), &st);
  result<message> r = co_await std::move(t);
  co_return r;
}

struct call_factory {
  framed_client* c;
  task<result<message>> operator()(std::stop_token st) const { return call_stoppable(c, st); }
};

task<result<message>> call_within(executor* ex, framed_client* c, std::chrono::nanoseconds limit) {
  result<message> r = co_await with_timeout(*ex, limit, call_factory{c});
  co_return r;
}

}  // namespace

TEST_CASE("framed_client: out of memory copying a reply fails that call too, not only the ones behind it") {
  on_each_backend([](backend_kind k) {
    executor ex(on(k));
    auto [mine, peer] = testing::socket_pair(ex);
    framed_client client = framed_client::adopt(std::move(mine));
    // A content length no other allocation of this scene has.
    const std::size_t content_size = 70001;
    std::string reply;
    REQUIRE(encode_frame(message::binary(std::string(content_size, 'x'), "binary/test"), reply));
    allocations_failed.store(0);
    ex.spawn(answer_once(std::move(peer), std::move(reply), content_size + 1));
    // Before the fix the reader took the call out of line, then failed to
    // copy its reply: the client broke, but this call was told nothing and
    // waited until the deadline (ETIMEDOUT).
    result<message> r = ex.run(call_within(&ex, &client, 3s));
    fail_allocation_of_size.store(0);
    CHECK(allocations_failed.load() == 1);
    REQUIRE_FALSE(r);
    CHECK(r.error() == std::errc::not_enough_memory);
    CHECK_FALSE(client.is_open());
    CHECK(client.failure_detail() == "out of memory reading a reply");
    CHECK(client.pending() == 0);
    client.close();
    ex.run_until_idle();
  });
}
