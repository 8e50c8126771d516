// Kernel interface newer than Debian 12's liburing 2.3, written out here
// (values from include/uapi/linux/io_uring.h of Linux 6.12 and later).
// Each one is used only after a run-time probe says the kernel has it.
// Internal to the library: nothing here is installed.
#pragma once

#include <liburing.h>

#include <cstddef>
#include <cstdint>
#include <cstring>

// sqe->ioprio of a send or recv with IOSQE_BUFFER_SELECT: take as many
// buffers as the data needs, contiguous in ring order (Linux 6.10).
#ifndef IORING_RECVSEND_BUNDLE
#define IORING_RECVSEND_BUNDLE (1U << 4)
#endif
// io_uring_params::features: the kernel takes IORING_RECVSEND_BUNDLE.
#ifndef IORING_FEAT_RECVSEND_BUNDLE
#define IORING_FEAT_RECVSEND_BUNDLE (1U << 14)
#endif
// cqe->flags: the buffer named is only partly consumed, and the kernel will
// go on putting data in it (incremental consumption, Linux 6.12).
#ifndef IORING_CQE_F_BUF_MORE
#define IORING_CQE_F_BUF_MORE (1U << 4)
#endif

namespace ringframe::detail {

// io_uring_buf_reg::flags: IOU_PBUF_RING_INC, buffers consumed incrementally
// (Linux 6.12). The kernel header declares it in an enum, which #ifndef
// cannot see, hence a name of our own.
inline constexpr std::uint16_t pbuf_ring_inc = 2;

// The registration's flags field: the __u16 after bgid. liburing 2.3 calls
// it `pad` (newer ones `flags`), and its io_uring_register_buf_ring()
// ignores its `flags` argument, so it is written here by position.
inline void set_buf_reg_flags(io_uring_buf_reg& reg, std::uint16_t flags) noexcept {
  static_assert(sizeof(io_uring_buf_reg) == 40, "io_uring_buf_reg: the kernel's layout");
  static_assert(offsetof(io_uring_buf_reg, bgid) == 12 && sizeof(reg.bgid) == 2);
  std::memcpy(reinterpret_cast<unsigned char*>(&reg) + 14, &flags, sizeof flags);
}

}  // namespace ringframe::detail
