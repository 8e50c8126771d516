#include <ringframe/detail/happy_eyeballs.hpp>

#include <ringframe/event.hpp>
#include <ringframe/task_group.hpp>
#include <ringframe/timer.hpp>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <new>
#include <optional>
#include <utility>

namespace ringframe::detail {

std::vector<address> interleave_families(std::vector<address> to) {
  if (to.size() < 3) {
    // Two of different families are in order already; two of one family have no other to alternate with.
    return to;
  }
  const int first = to.front().family();
  std::vector<address> same, other, out;
  for (address& a : to) (a.family() == first ? same : other).push_back(std::move(a));
  out.reserve(same.size() + other.size());
  for (std::size_t i = 0; i < same.size() || i < other.size(); ++i) {
    if (i < same.size()) out.push_back(std::move(same[i]));
    if (i < other.size()) out.push_back(std::move(other[i]));
  }
  return out;
}

namespace {

using clk = std::chrono::steady_clock;

// What the attempts of one connect_first report to it. It lives in
// connect_first's frame, which joins every attempt before it goes.
struct race {
  explicit race(executor& ex) noexcept : changed(ex) {}
  event changed;  // an attempt ended, or the pacing timer fired
  std::optional<socket> winner;
  std::error_code last = std::make_error_code(std::errc::host_unreachable);
  bool cancelled = false;  // an attempt ended with ECANCELED: the caller's stop or the executor's
  std::size_t in_flight = 0;
  std::uint64_t timer_generation = 0;  // only the timer of the latest attempt counts
  bool start_next = false;  // an attempt failed, or the latest one has not connected after the delay
};

task<void> attempt(executor* ex, address to, std::chrono::nanoseconds timeout, std::stop_token stop, race* r) {
  // An exception (bad_alloc: the connect's frame, a submission) ends this
  // attempt like any failure: escaping to the group, it left connect_first
  // waiting for an end never reported (review38 F1).
  result<socket> s = errno_code(EIO);
  try {
    task<result<socket>> c = ringframe::connect(*ex, std::move(to), {.timeout = timeout, .stop = &stop});
    s = co_await std::move(c);
  } catch (const std::bad_alloc&) {
    s = errno_code(ENOMEM);
  } catch (...) {
    s = errno_code(EIO);
  }
  --r->in_flight;
  if (s) {
    if (!r->winner) r->winner.emplace(std::move(*s));  // a second one to connect closes as `s` goes
  } else {
    r->last = s.error();
    if (s.error() == std::errc::operation_canceled) r->cancelled = true;
    r->start_next = true;
  }
  r->changed.set();
}

task<void> pace(executor* ex, std::chrono::nanoseconds delay, std::stop_token stop, race* r, std::uint64_t generation) {
  result<void> slept = co_await sleep_for(*ex, delay, &stop);
  if (!slept || generation != r->timer_generation) co_return;
  r->start_next = true;
  r->changed.set();
}

struct forward_stop {
  std::stop_source* to;
  void operator()() const noexcept { to->request_stop(); }
};

// The timeout of an attempt starting now; false when the deadline has passed.
bool timeout_now(std::chrono::nanoseconds attempt_timeout, clk::time_point deadline, std::chrono::nanoseconds& out) {
  out = attempt_timeout;
  if (deadline == clk::time_point::max()) return true;
  const std::chrono::nanoseconds left = deadline - clk::now();
  if (left.count() <= 0) return false;
  if (out.count() <= 0 || left < out) out = left;
  return true;
}

}  // namespace

task<result<socket>> connect_first(executor* ex, std::vector<address> to, std::chrono::nanoseconds delay,
                                   std::chrono::nanoseconds attempt_timeout, clk::time_point deadline,
                                   std::stop_token stop) {
  to = interleave_families(std::move(to));
  // One stop for everything in flight: the losers' once there is a winner,
  // and the caller's (from any thread: operations carry it to the loop).
  // Event waits take no token (they must be stopped on the loop's thread):
  // a stop ends the attempts, and their ends wake this coroutine.
  std::stop_source src;
  std::stop_callback<forward_stop> forward(stop, forward_stop{&src});
  task_group group(*ex, src);
  race r(*ex);
  std::size_t next = 0;
  bool out_of_memory = false;
  for (;;) {
    r.changed.reset();
    if (r.winner || r.cancelled || src.stop_requested()) break;
    if (next < to.size() && (r.in_flight == 0 || r.start_next)) {
      std::chrono::nanoseconds timeout;
      if (!timeout_now(attempt_timeout, deadline, timeout)) {
        r.last = errno_code(ETIMEDOUT);
        next = to.size();  // none starts after the deadline; those in flight end at it
        continue;
      }
      r.start_next = false;
      ++r.timer_generation;
      // Spawned here, run from the loop's next turn. Out of memory: no
      // attempt more; the ones in flight are stopped and joined below, and
      // the connect ends with ENOMEM. (They were left to run on unpaced:
      // the next addresses never tried, the connect waited for a blackholed
      // one's whole timeout and said ETIMEDOUT: review38 F2.)
      try {
        group.spawn(attempt(ex, to[next], timeout, group.get_stop_token(), &r));
        ++r.in_flight;
        ++next;
        if (delay.count() > 0 && next < to.size())
          group.spawn(pace(ex, delay, group.get_stop_token(), &r, r.timer_generation));
      } catch (const std::bad_alloc&) {
        out_of_memory = true;
        break;
      }
      continue;
    }
    if (r.in_flight == 0) break;  // every address tried, none connected
    result<void> woken = co_await r.changed.wait();
    if (!woken) {  // the executor stops
      r.cancelled = true;
      break;
    }
  }
  // Before the losers are stopped through the same source.
  const bool cancelled = r.cancelled || src.stop_requested();
  group.request_stop();
  co_await group.join();
  if (r.winner) co_return std::move(*r.winner);
  if (cancelled) co_return errno_code(ECANCELED);
  if (out_of_memory) co_return errno_code(ENOMEM);
  co_return r.last;
}

}  // namespace ringframe::detail
