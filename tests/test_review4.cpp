// The fourth review: lifetimes in issue 13's code (task_group, submit_to,
// the resolver thread, framed_client). Each case forces the interleaving or
// the failure it is about and runs on io_uring and on epoll (a subcase
// each). Every wait is bounded by a deadline.
#include "failing_allocator.hpp"
#include "loopback.hpp"

#include <ringframe/executor.hpp>
#include <ringframe/frame.hpp>
#include <ringframe/framed_client.hpp>
#include <ringframe/socket.hpp>
#include <ringframe/with_timeout.hpp>

#include <doctest/doctest.h>

#include <array>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <algorithm>
#include <new>
#include <optional>
#include <span>
#include <stop_token>
#include <string>
#include <system_error>
#include <vector>

using namespace ringframe;
using namespace std::chrono_literals;
using testing::on;
using testing::on_each_backend;

// An allocator that can be told to fail (failing_allocator.hpp): one
// allocation of an exact size, or the n-th allocation while tracing.
using namespace testing::failing_allocator;

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
  task<result<message>> t = with_timeout(*ex, limit, call_factory{c});
  result<message> r = co_await std::move(t);
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
    allocations_to_pass.store(0);
    count_only.store(false);
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

namespace {

// A peer that takes the requests it is told to expect, byte for byte (no
// decoder: it allocates nothing while the allocator is armed), and answers
// each with its reply. `buf` is sized beforehand.
task<void> scripted_peer(ringframe::socket p, const std::vector<std::string>* expect,
                         const std::vector<std::string>* replies, std::vector<char>* buf, int* answered) {
  for (std::size_t i = 0; i < expect->size(); ++i) {
    const std::string& want = (*expect)[i];
    std::size_t got = 0;
    while (got < want.size()) {
      result<std::size_t> n =
          co_await p.recv(std::as_writable_bytes(std::span(buf->data() + got, want.size() - got)), {.timeout = 5s});
      if (!n || *n == 0) co_return;
      got += *n;
    }
    CHECK(std::memcmp(buf->data(), want.data(), want.size()) == 0);  // this request, and not another
    const std::string& r = (*replies)[i];
    result<std::size_t> w = co_await p.send_all(std::as_bytes(std::span(r.data(), r.size())), {.timeout = 5s});
    REQUIRE(w);
    ++*answered;
  }
  for (;;) {  // until the client goes
    result<std::size_t> more = co_await p.recv(std::as_writable_bytes(std::span(buf->data(), buf->size())), {.timeout = 5s});
    if (!more || *more == 0) break;
  }
}

struct call_outcome {
  bool threw_bad_alloc = false;
  std::optional<result<message>> r;
};

task<void> call_catching(framed_client* c, message m, call_outcome* out) {
  try {
    task<result<message>> t = c->call(std::move(m));
    result<message> r = co_await std::move(t);
    out->r.emplace(std::move(r));
  } catch (const std::bad_alloc&) {
    out->threw_bad_alloc = true;
  }
}

std::string encoded(const message& m) {
  std::string f;
  REQUIRE(encode_frame(m, f));
  return f;
}

}  // namespace

TEST_CASE("framed_client: a request that cannot be queued (bad_alloc) takes no place in the reply line") {
  on_each_backend([](backend_kind k) {
    const message big = message::binary(std::string(20001, 'a'), "binary/test");
    const message two = message::binary("two", "binary/test");
    const std::vector<std::string> replies_big{encoded(message::binary("re:big", "binary/test"))};
    const std::vector<std::string> replies_two{encoded(message::binary("re:two", "binary/test"))};
    const std::vector<std::string> expect_big{encoded(big)};
    const std::vector<std::string> expect_two{encoded(two)};
    const std::size_t size = expect_big[0].size() + 1;  // a std::string holding the whole frame
    std::vector<char> buf(64 * 1024);
    framed_client_options o;
    o.reply_timeout = 2s;

    // A dry run: how many allocations of that size one call of `big` makes
    // (its frame encoded, then appended to the connection's output); the
    // last of them is the append.
    int dry_answered = 0;
    {
      executor ex(on(k));
      auto [mine, peer] = testing::socket_pair(ex);
      framed_client client = framed_client::adopt(std::move(mine), o);
      ex.spawn(scripted_peer(std::move(peer), &expect_big, &replies_big, &buf, &dry_answered));
      call_outcome out;
      matching_allocations.store(0);
      allocations_to_pass.store(0);
      count_only.store(true);
      fail_allocation_of_size.store(size);
      ex.run(call_catching(&client, big, &out));
      fail_allocation_of_size.store(0);
      count_only.store(false);
      REQUIRE(out.r);
      REQUIRE(*out.r);
      CHECK((*out.r)->content == "re:big");
      client.close();
      ex.run_until_idle();
    }
    const int matches = matching_allocations.load();
    REQUIRE(matches >= 1);
    CHECK(dry_answered == 1);

    // The append fails: the call throws, nothing of it was queued, and the
    // next call gets its own reply. Before the fix its slot stayed in line
    // (emptied), so the next call's reply went to it and was dropped, and
    // the next call waited until reply_timeout (ETIMEDOUT); pipelined, every
    // later call got the reply of the one before it.
    int answered = 0;
    executor ex(on(k));
    auto [mine, peer] = testing::socket_pair(ex);
    framed_client client = framed_client::adopt(std::move(mine), o);
    ex.spawn(scripted_peer(std::move(peer), &expect_two, &replies_two, &buf, &answered));
    call_outcome first, second;
    matching_allocations.store(0);
    allocations_to_pass.store(matches - 1);
    allocations_failed.store(0);
    fail_allocation_of_size.store(size);
    ex.run(call_catching(&client, big, &first));
    fail_allocation_of_size.store(0);
    allocations_to_pass.store(0);  // as the next test expects to find it
    CHECK(allocations_failed.load() == 1);
    CHECK(first.threw_bad_alloc);
    CHECK(client.pending() == 0);
    ex.run(call_catching(&client, two, &second));
    REQUIRE(second.r);
    REQUIRE_MESSAGE(*second.r, second.r->error().message());
    CHECK((*second.r)->content == "re:two");
    CHECK(answered == 1);
    CHECK(client.is_open());
    client.close();
    ex.run_until_idle();
  });
}

namespace {

task<result<message>> call_message_stoppable(framed_client* c, message m, std::stop_token st) {
  task<result<message>> t = c->call(std::move(m), &st);
  result<message> r = co_await std::move(t);
  co_return r;
}

struct message_call_factory {
  framed_client* c;
  message m;
  task<result<message>> operator()(std::stop_token st) const { return call_message_stoppable(c, m, st); }
};

task<result<message>> message_call_within(executor* ex, framed_client* c, message m, std::chrono::nanoseconds limit) {
  // Named before it is awaited: g++ 12 destroys a temporary with a
  // destructor in a co_await expression twice.
  message_call_factory f{c, std::move(m)};
  task<result<message>> t = with_timeout(*ex, limit, std::move(f));
  result<message> r = co_await std::move(t);
  co_return r;
}

}  // namespace

TEST_CASE("framed_client: the reply reader that cannot be started (bad_alloc) is started by the next call") {
  on_each_backend([](backend_kind k) {
    const message big = message::binary(std::string(20001, 'a'), "binary/test");
    const message two = message::binary("two", "binary/test");
    const std::vector<std::string> expect{encoded(big), encoded(two)};
    const std::vector<std::string> replies{encoded(message::binary("re:big", "binary/test")),
                                           encoded(message::binary("re:two", "binary/test"))};
    const std::size_t append_size = expect[0].size() + 1;  // the request appended to the output
    std::vector<char> buf(64 * 1024);

    // A dry run records the allocations of one call of `big` on a fresh
    // client: the one right after the append is the reply reader's frame
    // (spawned by the first call).
    int dry_answered = 0;
    int reader_index = -1;
    {
      executor ex(on(k));
      auto [mine, peer] = testing::socket_pair(ex);
      framed_client client = framed_client::adopt(std::move(mine));
      ex.spawn(scripted_peer(std::move(peer), &expect, &replies, &buf, &dry_answered));
      call_outcome out;
      task<void> t = call_catching(&client, big, &out);
      traced_count.store(0);
      fail_at_index.store(-1);
      tracing.store(true);
      ex.run(std::move(t));
      tracing.store(false);
      REQUIRE(out.r);
      REQUIRE(*out.r);
      const int n = std::min(traced_count.load(), static_cast<int>(traced.size()));
      for (int i = 0; i < n; ++i)
        if (traced[static_cast<std::size_t>(i)] == append_size) reader_index = i + 1;
      client.close();
      ex.run_until_idle();
    }
    REQUIRE(reader_index > 0);

    // The reader's frame cannot be made: the first call throws (its request
    // was queued: its slot stays, emptied, to take its reply). Before the
    // fix the client believed a reader ran: nothing read the replies any
    // more, and the next call waited forever (here: its with_timeout).
    int answered = 0;
    executor ex(on(k));
    auto [mine, peer] = testing::socket_pair(ex);
    framed_client client = framed_client::adopt(std::move(mine));
    ex.spawn(scripted_peer(std::move(peer), &expect, &replies, &buf, &answered));
    call_outcome first;
    task<void> t = call_catching(&client, big, &first);
    traced_count.store(0);
    allocations_failed.store(0);
    fail_at_index.store(reader_index);
    tracing.store(true);
    ex.run(std::move(t));
    tracing.store(false);
    fail_at_index.store(-1);
    CHECK(allocations_failed.load() == 1);
    CHECK(first.threw_bad_alloc);
    result<message> r = ex.run(message_call_within(&ex, &client, two, 3s));
    REQUIRE_MESSAGE(r, r.error().message());
    CHECK(r->content == "re:two");
    CHECK(answered == 2);
    CHECK(client.pending() == 0);
    client.close();
    ex.run_until_idle();
  });
}
