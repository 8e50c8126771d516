#include <ringframe/receive_budget.hpp>

#include <ringframe/executor.hpp>

namespace ringframe {

receive_budget& receive_budget::this_thread() noexcept {
  static thread_local receive_budget b;
  return b;
}

namespace {
bool fits(std::size_t used, std::size_t n, std::size_t limit) noexcept {
  return used == 0 || (n <= limit && used <= limit - n);
}
}  // namespace

bool receive_budget::try_reserve(std::size_t n, std::size_t limit) noexcept {
  limit_ = limit;
  // Behind frames that wait, a newcomer waits too (no overtaking), unless
  // nothing at all is reserved.
  if (used_ == 0 || (!head_ && fits(used_, n, limit))) {
    take(n);
    return true;
  }
  return false;
}

void receive_budget::release(std::size_t n) noexcept {
  used_ = n < used_ ? used_ - n : 0;
  admit();
}

void receive_budget::enqueue(detail::budget_waiter* w) noexcept {
  limit_ = w->limit;
  ++waits_;
  ++waiting_;
  w->in_queue = true;
  w->admitted = false;
  w->after = nullptr;
  w->before = tail_;
  if (tail_) tail_->after = w;
  else head_ = w;
  tail_ = w;
  admit();  // (it may fit after all: the budget was emptied)
}

bool receive_budget::dequeue(detail::budget_waiter* w) noexcept {
  if (!w->in_queue) return false;
  w->in_queue = false;
  --waiting_;
  if (w->before) w->before->after = w->after;
  else head_ = w->after;
  if (w->after) w->after->before = w->before;
  else tail_ = w->before;
  // Leaving may let those behind it in.
  admit();
  return true;
}

void receive_budget::admit() noexcept {
  while (head_ && fits(used_, head_->want, head_->limit)) {
    detail::budget_waiter* w = head_;
    head_ = w->after;
    if (head_) head_->before = nullptr;
    else tail_ = nullptr;
    w->in_queue = false;
    w->admitted = true;
    --waiting_;
    take(w->want);
    w->ex->defer(w);
  }
}

}  // namespace ringframe
