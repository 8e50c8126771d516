// task<T>: laziness, values, exceptions, symmetric transfer, frame lifetime.
#include <ringframe/executor.hpp>
#include <ringframe/task.hpp>

#include <doctest/doctest.h>

#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

using ringframe::executor;
using ringframe::task;

namespace {

task<int> forty_two() { co_return 42; }

task<int> add_one(int x) {
  int v = co_await forty_two();
  co_return v + x;
}

task<std::string> throws_runtime_error() {
  throw std::runtime_error("boom");
  co_return "unreachable";
}

task<std::string> catches() {
  try {
    std::string s = co_await throws_runtime_error();
    co_return s;
  } catch (const std::runtime_error& e) {
    co_return std::string("caught ") + e.what();
  }
}

task<int> count_down(int n) {
  if (n == 0) co_return 0;
  int r = co_await count_down(n - 1);
  co_return r + 1;
}

struct lifetime_probe {
  int* destroyed;
  explicit lifetime_probe(int* d) : destroyed(d) {}
  lifetime_probe(lifetime_probe&& o) noexcept : destroyed(std::exchange(o.destroyed, nullptr)) {}
  ~lifetime_probe() {
    if (destroyed) ++*destroyed;
  }
};

task<void> holds_probe(lifetime_probe p, bool* ran) {
  *ran = true;
  (void)p;
  co_return;
}

task<void> record(std::vector<int>* order, int id) {
  order->push_back(id);
  co_return;
}

task<void> throws_in_spawn() {
  throw std::runtime_error("a failing connection");
  co_return;
}

}  // namespace

TEST_CASE("a task returns its value to the awaiter") {
  executor ex;
  CHECK(ex.run(add_one(1)) == 43);
}

TEST_CASE("a task is lazy: nothing runs before it is awaited") {
  bool ran = false;
  int destroyed = 0;
  {
    task<void> t = holds_probe(lifetime_probe(&destroyed), &ran);
    CHECK_FALSE(ran);
  }
  // Destroyed unstarted: the frame and the parameter copy in it are freed.
  CHECK_FALSE(ran);
  CHECK(destroyed == 1);
}

TEST_CASE("exceptions travel to the awaiter, and out of run()") {
  executor ex;
  CHECK(ex.run(catches()) == "caught boom");
  CHECK_THROWS_WITH_AS(ex.run(throws_runtime_error()), "boom", std::runtime_error);
}

#if defined(__SANITIZE_ADDRESS__)
#define RINGFRAME_TEST_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define RINGFRAME_TEST_ASAN 1
#endif
#endif

TEST_CASE("deep chains of awaits use no stack (symmetric transfer)") {
  executor ex;
#if defined(RINGFRAME_TEST_ASAN) || !defined(__OPTIMIZE__)
  // The resume-by-tail-call that makes symmetric transfer stackless is an
  // optimisation: unoptimised and ASan builds keep a frame per level.
  constexpr int depth = 2000;
#else
  // Without symmetric transfer a chain this deep overflows an 8 MiB stack.
  constexpr int depth = 200000;
#endif
  CHECK(ex.run(count_down(depth)) == depth);
}

TEST_CASE("spawned tasks start in the order they were spawned") {
  executor ex;
  std::vector<int> order;
  for (int i = 0; i < 5; ++i) ex.spawn(record(&order, i));
  CHECK(ex.live_tasks() == 5);
  ex.run_until_idle();
  CHECK(order == std::vector<int>{0, 1, 2, 3, 4});
  CHECK(ex.live_tasks() == 0);
}

TEST_CASE("an exception escaping a spawned task is contained") {
  executor ex;
  std::vector<int> order;
  ex.spawn(throws_in_spawn());
  ex.spawn(record(&order, 7));
  ex.run_until_idle();
  CHECK(order == std::vector<int>{7});
  CHECK(ex.live_tasks() == 0);
}
