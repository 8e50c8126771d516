// The io_uring backend: each io_request becomes one SQE (two with a linked
// timeout) whose user_data is the request's key; the loop submits them all
// in one io_uring_enter and copies every CQE, untouched, to the executor's
// completion queue. The kernel does everything the seam promises itself:
// provided buffer rings, multishot accept and recv, SEND_ZC notifications,
// linked timeouts and cancellation (detail/io_backend.hpp).
#include "backends.hpp"
#include "uring_compat.hpp"

#include <ringframe/buffer_ring.hpp>
#include <ringframe/detail/completion.hpp>
#include <ringframe/result.hpp>

#include <liburing.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <fstream>
#include <stdexcept>
#include <system_error>

namespace ringframe::detail {

static_assert(cqe_buffer == IORING_CQE_F_BUFFER);
static_assert(cqe_more == IORING_CQE_F_MORE);
static_assert(cqe_notif == IORING_CQE_F_NOTIF);
static_assert(cqe_buf_more == IORING_CQE_F_BUF_MORE);
static_assert(cqe_buffer_shift == IORING_CQE_BUFFER_SHIFT);
static_assert(sizeof(kernel_timespec) == sizeof(__kernel_timespec));
static_assert(offsetof(kernel_timespec, tv_nsec) == offsetof(__kernel_timespec, tv_nsec));

namespace {

int read_sysctl_int(const char* path) {
  std::ifstream f(path);
  int v = -1;
  if (f) f >> v;
  return v;
}

std::string explain_setup_failure(int err) {
  std::string why;
  switch (err) {
    case ENOSYS:
      why = "this kernel has no io_uring (it is older than 5.1 or was built without CONFIG_IO_URING); "
            "run on Linux 5.19 or newer with io_uring enabled";
      break;
    case EPERM:
    case EACCES: {
      int disabled = read_sysctl_int("/proc/sys/kernel/io_uring_disabled");
      if (disabled == 2)
        why = "io_uring is disabled system-wide (sysctl kernel.io_uring_disabled=2); "
              "as root run: sysctl -w kernel.io_uring_disabled=0";
      else if (disabled == 1)
        why = "io_uring is restricted to root and the group in kernel.io_uring_group "
              "(sysctl kernel.io_uring_disabled=1); run as root, join that group, or as root run: "
              "sysctl -w kernel.io_uring_disabled=0";
      else
        why = "io_uring_setup was denied by a seccomp or LSM policy (container runtimes such as "
              "Docker and Podman block io_uring by default); run with a seccomp profile that allows "
              "io_uring_setup, io_uring_enter and io_uring_register";
      break;
    }
    case ENOMEM:
      why = "the kernel could not allocate the ring: on kernels before 5.12 ring memory counts "
            "against the locked-memory limit; raise it (ulimit -l) or use a smaller ring";
      break;
    case EMFILE:
    case ENFILE:
      why = "no file descriptor is left for the ring; raise the limit (ulimit -n)";
      break;
    case EINVAL:
      why = "the kernel rejected the ring parameters; it is likely too old (ringframe needs Linux 5.19 or newer)";
      break;
    default:
      why = std::string("io_uring_setup failed: ") + std::strerror(err);
  }
  return "ringframe: cannot create an io_uring: " + why + " (" + std::strerror(err) + ")";
}

// Operations the library issues; all exist since Linux 5.11.
constexpr std::array<std::pair<int, const char*>, 10> required_ops{{
    {IORING_OP_ACCEPT, "ACCEPT"},
    {IORING_OP_CONNECT, "CONNECT"},
    {IORING_OP_RECV, "RECV"},
    {IORING_OP_SEND, "SEND"},
    {IORING_OP_SHUTDOWN, "SHUTDOWN"},
    {IORING_OP_CLOSE, "CLOSE"},
    {IORING_OP_TIMEOUT, "TIMEOUT"},
    {IORING_OP_LINK_TIMEOUT, "LINK_TIMEOUT"},
    {IORING_OP_ASYNC_CANCEL, "ASYNC_CANCEL"},
    {IORING_OP_READ, "READ"},
}};

std::string missing_ops(io_uring* ring) {
  std::unique_ptr<io_uring_probe, void (*)(io_uring_probe*)> probe(io_uring_get_probe_ring(ring),
                                                                    io_uring_free_probe);
  if (!probe) return "";  // probing needs 5.6; the ops will report their own errors
  std::string missing;
  for (auto [op, name] : required_ops)
    if (!io_uring_opcode_supported(probe.get(), op)) missing += std::string(missing.empty() ? "" : ", ") + name;
  return missing;
}

const __kernel_timespec* kernel_ts(const kernel_timespec* t) noexcept {
  return reinterpret_cast<const __kernel_timespec*>(t);
}

class uring_backend final : public io_backend {
 public:
  uring_backend(const executor_options& opts, std::vector<cqe_copy>& completed, executor_stats& stats)
      : io_backend(completed, stats) {
    struct attempt {
      unsigned flags;
      const char* name;
    };
    const attempt all[] = {
        {IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN, "defer-taskrun"},
        {IORING_SETUP_COOP_TASKRUN, "coop-taskrun"},
        {0, "plain"},
    };
    std::size_t first = opts.setup == ring_setup::fastest ? 0 : opts.setup == ring_setup::coop_taskrun ? 1 : 2;
    int r = -EINVAL;
    for (std::size_t i = first; i < std::size(all); ++i) {
      io_uring_params p{};
      p.flags = IORING_SETUP_CQSIZE | all[i].flags;
      p.cq_entries = opts.sq_entries * (opts.cq_factor ? opts.cq_factor : 1);
      r = io_uring_queue_init_params(opts.sq_entries, &ring_, &p);
      if (r == -EINVAL && i + 1 < std::size(all)) continue;  // an older kernel: fall back
      if (r == 0) {
        setup_mode_ = all[i].name;
        defer_taskrun_ = (all[i].flags & IORING_SETUP_DEFER_TASKRUN) != 0;
      }
      break;
    }
    if (r < 0) throw setup_error(errno_code(-r), explain_setup_failure(-r));
    if (!(ring_.features & IORING_FEAT_EXT_ARG)) {  // waits with a timeout need it (Linux 5.11)
      io_uring_queue_exit(&ring_);
      throw setup_error(errno_code(EOPNOTSUPP), "ringframe: this kernel's io_uring cannot wait with a timeout "
                                                "(no IORING_FEAT_EXT_ARG); run on Linux 5.19 or newer");
    }
    std::string missing = missing_ops(&ring_);
    if (!missing.empty()) {
      io_uring_queue_exit(&ring_);
      throw setup_error(errno_code(EOPNOTSUPP), "ringframe: this kernel's io_uring lacks operations ringframe needs (" +
                                                    missing + "); run on Linux 5.19 or newer");
    }
  }
  ~uring_backend() override { io_uring_queue_exit(&ring_); }

  const char* name() const noexcept override { return "io_uring"; }
  const char* setup_mode() const noexcept override { return setup_mode_; }

  [[gnu::hot]] void submit(const io_request& r) override {
    io_uring_sqe* sqe = get_sqe(r.deadline ? 2 : 1);
    switch (r.op) {
      case io_op::nop: io_uring_prep_nop(sqe); break;
      case io_op::accept:
        io_uring_prep_accept(sqe, r.fd, static_cast<sockaddr*>(r.buf), reinterpret_cast<socklen_t*>(r.addr_len), r.flags);
        break;
      case io_op::accept_multishot: io_uring_prep_multishot_accept(sqe, r.fd, nullptr, nullptr, r.flags); break;
      case io_op::connect:
        io_uring_prep_connect(sqe, r.fd, static_cast<const sockaddr*>(r.buf), static_cast<socklen_t>(r.len));
        break;
      case io_op::recv: io_uring_prep_recv(sqe, r.fd, r.buf, r.len, r.flags); break;
      case io_op::recv_provided:
        if (r.bundle && r.buffers->granted().bundles) {
          // Up to bundle_bytes() over as many buffers as that takes.
          io_uring_prep_recv(sqe, r.fd, nullptr, r.buffers->bundle_bytes(), r.flags);
          sqe->ioprio |= IORING_RECVSEND_BUNDLE;
        } else {
          io_uring_prep_recv(sqe, r.fd, nullptr, r.buffers->buffer_size(), r.flags);
        }
        sqe->flags |= IOSQE_BUFFER_SELECT;
        sqe->buf_group = r.buffers->group();
        break;
      case io_op::recv_multishot:
        // A multishot recv takes no length (older kernels refuse one): a
        // bundle of it takes what the socket holds, buffers permitting.
        io_uring_prep_recv_multishot(sqe, r.fd, nullptr, 0, r.flags);
        if (r.bundle && r.buffers->granted().bundles) sqe->ioprio |= IORING_RECVSEND_BUNDLE;
        sqe->flags |= IOSQE_BUFFER_SELECT;
        sqe->buf_group = r.buffers->group();
        break;
      case io_op::send: io_uring_prep_send(sqe, r.fd, r.buf, r.len, r.flags); break;
      case io_op::send_zero_copy: io_uring_prep_send_zc(sqe, r.fd, r.buf, r.len, r.flags, 0); break;
      case io_op::sendmsg:
        io_uring_prep_sendmsg(sqe, r.fd, static_cast<const msghdr*>(r.buf), static_cast<unsigned>(r.flags));
        break;
      case io_op::shutdown: io_uring_prep_shutdown(sqe, r.fd, r.flags); break;
      case io_op::close: io_uring_prep_close(sqe, r.fd); break;
      case io_op::read: io_uring_prep_read(sqe, r.fd, r.buf, static_cast<unsigned>(r.len), static_cast<__u64>(-1)); break;
      case io_op::timeout:
        // The kernel reads the timespec when the SQE is submitted: the
        // caller keeps it alive until the completion (detail/io_backend.hpp).
        io_uring_prep_timeout(sqe, const_cast<__kernel_timespec*>(kernel_ts(r.timeout)), 0, 0);
        break;
    }
    io_uring_sqe_set_data64(sqe, r.key);
    if (r.deadline) {
      sqe->flags |= IOSQE_IO_LINK;
      io_uring_sqe* t = io_uring_get_sqe(&ring_);
      // steady_clock is CLOCK_MONOTONIC, the kernel's default timeout clock.
      io_uring_prep_link_timeout(t, const_cast<__kernel_timespec*>(kernel_ts(r.deadline)), IORING_TIMEOUT_ABS);
      io_uring_sqe_set_data64(t, r.key | timer_tag);
    }
  }

  bool cancel(std::uint64_t key, int) noexcept override {
    for (int attempt = 0; attempt < 4; ++attempt) {
      if (io_uring_sqe* sqe = io_uring_get_sqe(&ring_)) {
        // Linux 5.19+ for ANY|ALL. On an older kernel this CQE says -EINVAL
        // and operations finish on their own deadlines instead.
        if (key == 0) io_uring_prep_cancel64(sqe, 0, IORING_ASYNC_CANCEL_ANY | IORING_ASYNC_CANCEL_ALL);
        else io_uring_prep_cancel64(sqe, key, 0);
        io_uring_sqe_set_data64(sqe, 0);
        return true;
      }
      int r = io_uring_submit(&ring_);
      ++stats_.submits;
      if (r == -EBUSY || r == -EAGAIN) {
        ++stats_.cq_overflows;
        reap();  // only moves CQEs to the executor's queue: safe here
      } else if (r < 0 && r != -EINTR) {
        break;
      }
    }
    return false;
  }

  [[gnu::hot]] void run(bool wait, std::chrono::nanoseconds max_wait) override {
    if (io_uring_cq_ready(&ring_) > 0) wait = false;  // left by a reap that had no room for them
    __kernel_timespec wait_for{};
    const bool timed = wait && max_wait.count() >= 0;
    if (timed) {
      wait_for.tv_sec = max_wait.count() / 1000000000;
      wait_for.tv_nsec = max_wait.count() % 1000000000;
    }
    for (;;) {
      // With DEFER_TASKRUN completions are posted only when asked for
      // (IORING_ENTER_GETEVENTS), so a busy loop must ask on every pass.
      // A timed wait passes its timeout in the enter call (EXT_ARG): no SQE.
      io_uring_cqe* unused = nullptr;
      int r = timed            ? io_uring_submit_and_wait_timeout(&ring_, &unused, 1, &wait_for, nullptr)
              : wait           ? io_uring_submit_and_wait(&ring_, 1)
              : defer_taskrun_ ? io_uring_submit_and_get_events(&ring_)
                               : io_uring_submit(&ring_);
      ++stats_.submits;
      if (r >= 0 || r == -EINTR || r == -ETIME) break;
      if (r == -EBUSY || r == -EAGAIN) {  // CQ overflow: reap below, submit next time
        ++stats_.cq_overflows;
        break;
      }
      throw std::system_error(errno_code(-r), "ringframe: io_uring_enter");
    }
    if (io_uring_cq_has_overflow(&ring_)) ++stats_.cq_overflows;
    reap();
  }

  // Copies the CQEs there are to the executor's list. Room is made first:
  // a push_back that grew the list inside this noexcept function was
  // std::terminate when it could not allocate (review13 F9). Without room
  // for all, only what fits is taken; the rest stays in the kernel's CQ
  // ring, and run() does not sleep while any is there: the next turns take
  // them (the executor empties the list every turn, keeping its capacity).
  [[gnu::hot]] void reap() noexcept override {
    const std::size_t ready = io_uring_cq_ready(&ring_);
    if (ready > completed_.capacity() - completed_.size()) {
      try {
        completed_.reserve(std::max(completed_.size() + ready, 2 * completed_.capacity()));
      } catch (...) {  // bad_alloc: take what fits
      }
    }
    std::size_t room = completed_.capacity() - completed_.size();
    io_uring_cqe* cqes[64];
    while (room > 0) {
      const unsigned want = static_cast<unsigned>(std::min<std::size_t>(64, room));
      const unsigned n = io_uring_peek_batch_cqe(&ring_, cqes, want);
      for (unsigned i = 0; i < n; ++i) completed_.push_back({cqes[i]->user_data, cqes[i]->res, cqes[i]->flags});
      io_uring_cq_advance(&ring_, n);
      // Fewer than asked for: the ring is empty. Not peeked again (one more
      // call into liburing on every turn, as before review13 F9).
      if (n < want) return;
      room -= n;
    }
  }

  std::unique_ptr<buffer_ring> make_buffers(unsigned count, std::size_t size, unsigned max_count,
                                            buffer_ring::features want) override {
    // Bundles: the feature bit the kernel set at io_uring_setup (Linux 6.10).
    // Incremental consumption has no bit: the ring's registration probes it.
    want.bundles = want.bundles && (ring_.features & IORING_FEAT_RECVSEND_BUNDLE) != 0;
    return std::make_unique<buffer_ring>(&ring_, count, size, 1, max_count, want);
  }

  void forget(int) noexcept override {}  // the kernel keeps nothing per descriptor for us

 private:
  // Space for `n` consecutive SQEs is guaranteed (linked SQEs must not be
  // split across submissions).
  [[gnu::hot]] io_uring_sqe* get_sqe(unsigned n) {
    if (io_uring_sq_space_left(&ring_) < n) submit_pending();
    io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
    if (!sqe) throw std::logic_error("ringframe: submission queue full after submit");
    return sqe;
  }

  [[gnu::hot]] void submit_pending() {
    for (int attempt = 0;; ++attempt) {
      int r = io_uring_submit(&ring_);
      ++stats_.submits;
      if (r >= 0 && io_uring_sq_ready(&ring_) == 0) break;
      if (r == -EINTR) continue;
      if (r >= 0 || r == -EBUSY || r == -EAGAIN) {
        ++stats_.cq_overflows;
        // The completion queue is under pressure: move completions aside (to
        // be dispatched by the loop, in order) so the kernel can take more.
        reap();
        if (attempt > 1000) throw std::system_error(errno_code(EAGAIN), "ringframe: io_uring submission stalled");
        continue;
      }
      throw std::system_error(errno_code(-r), "ringframe: io_uring_submit");
    }
    // The submission queue filled up inside one loop turn: a burst. Take the
    // completions that are ready now rather than let the CQ fill behind it.
    reap();
  }

  io_uring ring_{};
  const char* setup_mode_ = "plain";
  bool defer_taskrun_ = false;
};

}  // namespace

std::unique_ptr<io_backend> make_uring_backend(const executor_options& opts, std::vector<cqe_copy>& completed,
                                               executor_stats& stats) {
  return std::make_unique<uring_backend>(opts, completed, stats);
}

std::string probe_uring() {
  io_uring ring{};
  int r = io_uring_queue_init(8, &ring, 0);
  if (r < 0) return explain_setup_failure(-r);
  std::string missing = missing_ops(&ring);
  io_uring_queue_exit(&ring);
  if (!missing.empty())
    return "ringframe: this kernel's io_uring lacks operations ringframe needs (" + missing +
           "); run on Linux 5.19 or newer";
  return "";
}

}  // namespace ringframe::detail
