// review25: an executor destroyed while the kernel still holds the pages of
// a zero-copy send.
//
// A zero-copy batch that the kernel took but has not released (the peer's
// window is shut: the bytes wait in the socket's send queue, pointing at the
// batch's pages) is an orphan of the executor once its connection is gone.
// The executor's teardown waits for the notification (10 s) and then gave
// up: it freed the batch. The socket, closed, still sends what is queued
// (TCP lingers in the background), from those pages: once the allocator
// handed the memory out again, the peer received whatever the program wrote
// there next, in place of the bytes it was sent. The orphans the kernel
// still holds must be kept (leaked on purpose), never freed.
#include "loopback.hpp"

#include <ringframe/executor.hpp>
#include <ringframe/send_queue.hpp>
#include <ringframe/task.hpp>
#include <ringframe/timer.hpp>

#include <doctest/doctest.h>

#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

using namespace ringframe;
using namespace std::chrono_literals;
using testing::on;
using testing::on_each_backend;

namespace {

constexpr std::size_t content_size = 96 * 1024;  // below glibc's mmap threshold: a heap chunk, reused

std::string pattern() {
  std::string s(content_size, '\0');
  for (std::size_t i = 0; i < s.size(); ++i) s[i] = static_cast<char>('0' + i % 10);
  return s;
}

task<void> pause(executor* ex, std::chrono::milliseconds d) { (void)co_await sleep_for(*ex, d); }

void kept_until_sent(backend_kind k) {
  int peer_fd = -1;  // outlives the executor (a plain descriptor)
  std::string want;
  const std::size_t kept_before = executor::orphans_kept();
  {
    executor ex(on(k));
    auto [s, p] = ex.run(testing::tcp_pair(&ex));
    peer_fd = ::dup(p.fd());
    REQUIRE(peer_fd >= 0);
    int small = 4096;
    REQUIRE(::setsockopt(peer_fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof small) == 0);
    send_queue::options o;
    o.zero_copy_threshold = 1;
    auto q = std::make_unique<send_queue>(s, o);
    want = pattern();
    q->out() = want;
    q->start();
    ex.run(pause(&ex, 100ms));  // the kernel takes what the window allows; no notification comes
    REQUIRE(q->current() != send_queue::state::failed);
    q.reset();  // its batch is the executor's orphan now
    s = ringframe::socket();  // closed: TCP goes on sending what is queued, in the background
  }  // io_uring: waits 10 s for the notification that cannot come, then gives up
  // io_uring: the orphan is kept; epoll copies a "zero-copy" send, its batch
  // is free at once.
  CHECK(executor::orphans_kept() - kept_before == (k == backend_kind::io_uring ? 1u : 0u));
  // Whatever the program allocates next may land where the batch was.
  std::vector<std::unique_ptr<char[]>> reuse;
  for (std::size_t size : {content_size + 256, content_size + 512, content_size + 1024, 2 * content_size})
    for (int i = 0; i < 8; ++i) {
      reuse.emplace_back(new char[size]);
      std::memset(reuse.back().get(), 'X', size);
    }
  // The peer reads everything, to the end of the stream (bounded: 10 s).
  std::string got;
  char buf[65536];
  for (int i = 0; i < 1000; ++i) {
    pollfd pfd{peer_fd, POLLIN, 0};
    if (::poll(&pfd, 1, 10) <= 0) continue;
    ssize_t n = ::recv(peer_fd, buf, sizeof buf, MSG_DONTWAIT);
    if (n == 0) break;
    if (n < 0) continue;
    got.append(buf, static_cast<std::size_t>(n));
  }
  ::close(peer_fd);
  MESSAGE("received " << got.size() << " of " << want.size() << " bytes");
  CHECK(got.size() == want.size());
  const std::size_t n = std::min(got.size(), want.size());
  std::size_t first_bad = n;
  for (std::size_t i = 0; i < n; ++i)
    if (got[i] != want[i]) {
      first_bad = i;
      break;
    }
  CAPTURE(first_bad);
  CHECK(first_bad == n);  // before the fix: 'X' from the reused memory
}

}  // namespace

TEST_CASE("review25: a zero-copy send the kernel still holds when the executor goes reaches the peer intact") {
  on_each_backend([](backend_kind k) { kept_until_sent(k); });
}
