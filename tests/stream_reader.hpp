// The reader of one receive_stream, for the tests that drive a stream by
// hand (test_receive_stream.cpp, test_buffer_ring.cpp, test_review27.cpp,
// test_ring_lend.cpp, test_review48.cpp):
// start(), wait for the stream's done() if start() said so, outcome().
#pragma once

#include <ringframe/receive_stream.hpp>
#include <ringframe/task.hpp>

#include <coroutine>
#include <utility>

namespace testing {

// Handed to the stream as its done() callback and argument.
struct reader {
  std::coroutine_handle<> waiting;
  static void done(void* self) { std::exchange(static_cast<reader*>(self)->waiting, {}).resume(); }
};

// co_await: one read; its outcome (bytes, or -errno).
struct read_once {
  ringframe::receive_stream* s;
  reader* r;
  bool between = true;  // between frames (the decoder holds no partial frame)
  bool await_ready() { return !s->start(between); }
  void await_suspend(std::coroutine_handle<> h) noexcept { r->waiting = h; }
  int await_resume() noexcept { return s->outcome(); }
};

// One read as a task of its own (executor::run(one_read(...))). Static, not
// inline: clang 14 cannot emit an inline coroutine of a header under ASan
// ("Cannot represent a difference across sections"), as loopback.hpp says.
[[maybe_unused]] static ringframe::task<int> one_read(ringframe::receive_stream* s, reader* r, bool between_frames) {
  co_return co_await read_once{s, r, between_frames};
}

}  // namespace testing
