#include <ringframe/detail/byte_block.hpp>

#include <bit>
#include <cstring>
#include <new>
#include <vector>

namespace ringframe::detail {

namespace {
// Blocks kept per thread between uses. An idle connection gives its
// receive buffer back and the next connection with bytes to decode takes
// one, so thousands of idle connections cost no buffers and busy ones do not
// allocate per read. Large blocks (up to 4 MiB, large_budget bytes in all)
// are kept too: freeing one and allocating a fresh one for the next large
// frame costs more than the frame's own copy (glibc returns the pages with
// madvise and the next frame faults them in again, zeroed: docs/io-path.md,
// "Large frames").
constexpr std::size_t small_limit = 1024;  // 16 MiB of 16 KiB blocks
constexpr std::size_t large_budget = 32u << 20;
constexpr unsigned first_p_log2 = 14;  // 16 KiB
constexpr unsigned p_count = 8;        // 16 KiB .. 2 MiB: classes up to 4 MiB

// Set once the thread's pool is destroyed: a block let go after that (an
// executor's receive buffers, or a decoder, that outlive the thread's
// thread-locals: a static one) is freed instead. Trivially destructible, so
// it can be read after every other thread-local is gone.
thread_local bool pool_gone = false;

struct pool {
  std::vector<byte_block*> small;
  std::vector<byte_block*> by_class[p_count * 4];
  std::size_t large_bytes = 0;
  ~pool() {
    pool_gone = true;
    for (byte_block* b : small) ::operator delete(b);
    for (auto& v : by_class)
      for (byte_block* b : v) ::operator delete(b);
  }
};
pool& this_thread_pool() {
  static thread_local pool p;
  return p;
}

// Room in the large budget for `cap` more bytes, by freeing blocks of the
// other classes: when the traffic moves on (from 64 KiB frames to 1 MiB
// ones, say), the last workload's blocks would otherwise fill the budget
// for good, and every block of the new one be freed and faulted in again
// (20 x 1 x 1 MiB ran at 0.44x the ceiling, 2.25x its CPU per message, in
// a grid run after the 64 KiB cells: bench/RESULTS.md).
void make_room(pool& p, std::size_t cap, int keep) noexcept {
  for (int c = 0; c < static_cast<int>(p_count * 4) && p.large_bytes + cap > large_budget; ++c) {
    if (c == keep) continue;
    std::vector<byte_block*>& v = p.by_class[c];
    while (!v.empty() && p.large_bytes + cap > large_budget) {
      byte_block* b = v.back();
      v.pop_back();
      p.large_bytes -= b->capacity();
      ::operator delete(b);
    }
  }
}

// The pool slot of a capacity above the smallest class, or -1.
int large_class(std::size_t cap) noexcept {
  if (cap <= byte_block::smallest_class || cap > byte_block::largest_class) return -1;
  const std::size_t p = std::bit_floor(cap - 1), step = p / 4;
  if (cap % step != 0) return -1;
  const unsigned lg = static_cast<unsigned>(std::countr_zero(p));
  return static_cast<int>((lg - first_p_log2) * 4 + (cap / step - 5));
}
}  // namespace

[[gnu::hot]] std::size_t byte_block::round_up(std::size_t n) noexcept {
  if (n <= smallest_class) return smallest_class;
  if (n > largest_class) return n;
  const std::size_t step = std::bit_floor(n - 1) / 4;
  return (n + step - 1) / step * step;
}

[[gnu::hot]] byte_block* byte_block::make(std::size_t cap) {
  cap = round_up(cap);
  if (pool_gone) [[unlikely]]
    return fresh(cap);
  pool& p = this_thread_pool();
  if (cap == smallest_class && !p.small.empty()) {
    byte_block* b = p.small.back();
    p.small.pop_back();
    b->refs_ = 1;
    return b;
  }
  if (int cls = large_class(cap); cls >= 0 && !p.by_class[cls].empty()) {
    byte_block* b = p.by_class[cls].back();
    p.by_class[cls].pop_back();
    p.large_bytes -= cap;
    b->refs_ = 1;
    return b;
  }
  return fresh(cap);
}

byte_block* byte_block::fresh(std::size_t cap) {
  // Left uninitialised (an idle connection's untouched pages cost nothing);
  // only the padding simdjson may read is cleared. The caller keeps `cap`
  // below PTRDIFF_MAX minus the header and padding (frame.cpp's max_buffer).
  void* raw = ::operator new(sizeof(byte_block) + cap + tail_padding);
  auto* b = new (raw) byte_block(cap);
  std::memset(b->data() + cap, 0, tail_padding);
  return b;
}

[[gnu::hot]] void byte_block::recycle(byte_block* b) noexcept {
  if (pool_gone) [[unlikely]] {
    ::operator delete(b);
    return;
  }
  pool& p = this_thread_pool();
  const std::size_t cap = b->cap_;
  try {
    if (cap == smallest_class && p.small.size() < small_limit) {
      p.small.push_back(b);
      return;
    }
    // Room is made only for a block that fits beside its own class's
    // (which make_room keeps): else the others would be freed for nothing.
    if (int cls = large_class(cap); cls >= 0 && (p.by_class[cls].size() + 1) * cap <= large_budget) {
      make_room(p, cap, cls);
      if (p.large_bytes + cap <= large_budget) {
        p.by_class[cls].push_back(b);
        p.large_bytes += cap;
        return;
      }
    }
  } catch (...) {  // the pool's own vector could not grow: free it instead
  }
  ::operator delete(b);
}

std::size_t byte_block::pooled_bytes() noexcept {
  pool& p = this_thread_pool();
  return p.small.size() * smallest_class + p.large_bytes;
}

}  // namespace ringframe::detail
