// semaphore and mutex: async, FIFO-fair, for one executor.
//
//   semaphore sem(ex, 3);                         // three permits
//   result<void> r = co_await sem.acquire();      // or sem.acquire(&token)
//   ... sem.release();
//
//   mutex m(ex);
//   result<mutex::guard> g = co_await m.scoped_lock();   // or m.lock() / m.unlock()
//   if (!g) co_return;                                    // ECANCELED
//   ... co_await anything: the mutex stays held ...
//                                                         // ~guard unlocks
//
// acquire() takes a permit at once when one is free and nobody waits;
// otherwise it waits. release(n) hands permits to the waiters in the order
// they came (through executor::post), directly: a permit handed to a waiter
// is never taken by a newcomer in between (try_acquire() fails while
// coroutines wait), so nobody is starved. A wait whose stop token is
// requested, or that waits when executor::stop() is called, ends with
// ECANCELED and takes no permit; one that was already handed its permit keeps
// it (the acquire succeeds). A semaphore destroyed while coroutines wait on it
// wakes them with ECANCELED.
//
// mutex: a semaphore of one permit. unlock() (or ~guard) by the holder only;
// the mutex must outlive its guards. Threading and preconditions:
// detail/sync_wait.hpp.
#pragma once

#include <ringframe/detail/sync_wait.hpp>
#include <ringframe/executor.hpp>
#include <ringframe/result.hpp>

#include <coroutine>
#include <cstddef>
#include <stop_token>
#include <utility>

namespace ringframe {

class semaphore {
 public:
  semaphore(executor& ex, std::size_t initial) noexcept : q_(ex), count_(initial) {}
  semaphore(const semaphore&) = delete;
  semaphore& operator=(const semaphore&) = delete;

  class [[nodiscard]] acquire_op : public detail::sync_wait_base {
   public:
    acquire_op(semaphore& s, const std::stop_token* stop) noexcept : sync_wait_base(s.q_, stop), s_(&s) {}
    bool await_ready() noexcept { return cancelled_now() || s_->try_acquire(); }
    void await_suspend(std::coroutine_handle<> h) { enqueue(h); }
    result<void> await_resume() noexcept {
      finish();
      return result<void>(ec);
    }

   private:
    semaphore* s_;
  };

  acquire_op acquire(const std::stop_token* stop = nullptr) noexcept { return acquire_op(*this, stop); }

  bool try_acquire() noexcept {
    if (count_ == 0 || !q_.empty()) return false;
    --count_;
    return true;
  }
  void release(std::size_t n = 1) {
    for (; n > 0 && !q_.empty(); --n) q_.wake(q_.front(), {});
    count_ += n;
  }
  // Free permits (0 while coroutines wait).
  std::size_t available() const noexcept { return count_; }
  std::size_t waiters() const noexcept { return q_.size(); }

 private:
  detail::wait_queue q_;
  std::size_t count_;
};

class mutex {
 public:
  explicit mutex(executor& ex) noexcept : sem_(ex, 1) {}
  mutex(const mutex&) = delete;
  mutex& operator=(const mutex&) = delete;

  // Owns the lock; unlocks when destroyed. Move-only.
  class [[nodiscard]] guard {
   public:
    explicit guard(mutex& m) noexcept : m_(&m) {}
    guard(guard&& o) noexcept : m_(std::exchange(o.m_, nullptr)) {}
    guard& operator=(guard&& o) noexcept {
      if (this != &o) {
        unlock();
        m_ = std::exchange(o.m_, nullptr);
      }
      return *this;
    }
    guard(const guard&) = delete;
    guard& operator=(const guard&) = delete;
    ~guard() { unlock(); }
    bool owns_lock() const noexcept { return m_ != nullptr; }
    void unlock() {
      if (m_) std::exchange(m_, nullptr)->unlock();
    }

   private:
    mutex* m_;
  };

  using lock_op = semaphore::acquire_op;
  class [[nodiscard]] scoped_lock_op : public semaphore::acquire_op {
   public:
    scoped_lock_op(mutex& m, const std::stop_token* stop) noexcept : acquire_op(m.sem_, stop), m_(&m) {}
    result<guard> await_resume() noexcept {
      result<void> r = acquire_op::await_resume();
      if (!r) return result<guard>(r.error());
      return result<guard>(guard(*m_));
    }

   private:
    mutex* m_;
  };

  lock_op lock(const std::stop_token* stop = nullptr) noexcept { return sem_.acquire(stop); }
  scoped_lock_op scoped_lock(const std::stop_token* stop = nullptr) noexcept { return scoped_lock_op(*this, stop); }
  bool try_lock() noexcept { return sem_.try_acquire(); }
  void unlock() { sem_.release(1); }
  bool locked() const noexcept { return sem_.available() == 0; }
  std::size_t waiters() const noexcept { return sem_.waiters(); }

 private:
  semaphore sem_;
};

}  // namespace ringframe
