// accept_balance: shards that accept from one shared listener tell each
// other how many connections each holds, so that a shard holding more than
// its share lets the others take the next ones.
//
// Each shard's accept wakes when a connection comes and then takes every
// one queued until the backlog is empty: a burst (a client's pool opened at
// once) went whole to the shard that woke first. A shard more than one
// connection above the least loaded shard still accepting pauses briefly
// before its next accept; meanwhile the kernel wakes another shard for the
// connections that come, and that one takes what is queued. Only a pause,
// never a refusal: the accept follows, so a shard whose peers are busy or
// stuck still takes every connection, one per pause at worst.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <limits>
#include <vector>

namespace ringframe::detail {

class accept_balance {
 public:
  static constexpr std::uint32_t not_accepting = std::numeric_limits<std::uint32_t>::max();
  // How long a shard above its share waits before it accepts again.
  static constexpr std::chrono::microseconds pause{500};

  explicit accept_balance(unsigned shards) : open_(shards) {
    for (auto& o : open_) o.store(not_accepting, std::memory_order_relaxed);
  }

  // Shard `slot` holds `open` connections and accepts (from its accept
  // loop's start), or no longer accepts (not_accepting, at its end).
  void publish(unsigned slot, std::uint32_t open) noexcept {
    if (slot < open_.size()) open_[slot].store(open, std::memory_order_relaxed);
  }

  // Shard `slot` holds more than one connection above the least loaded
  // other shard that still accepts. Relaxed reads: a stale count costs one
  // pause too many or too few, nothing else.
  bool above_share(unsigned slot) const noexcept {
    if (slot >= open_.size()) return false;
    const std::uint32_t mine = open_[slot].load(std::memory_order_relaxed);
    if (mine == not_accepting) return false;
    std::uint32_t least = not_accepting;
    for (unsigned i = 0; i < open_.size(); ++i)
      if (i != slot) least = std::min(least, open_[i].load(std::memory_order_relaxed));
    return least != not_accepting && mine > least + 1;
  }

 private:
  std::vector<std::atomic<std::uint32_t>> open_;
};

}  // namespace ringframe::detail
