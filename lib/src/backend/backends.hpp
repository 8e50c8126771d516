// The two implementations of detail::io_backend (detail/io_backend.hpp).
// Internal to the library: nothing here is installed.
#pragma once

#include <ringframe/detail/io_backend.hpp>
#include <ringframe/executor.hpp>

#include <memory>
#include <string>
#include <vector>

namespace ringframe::detail {

// uring_backend.cpp. Throws setup_error (with the explained cause) when the
// kernel refuses the ring or lacks what ringframe needs.
std::unique_ptr<io_backend> make_uring_backend(const executor_options& opts, std::vector<cqe_copy>& completed,
                                               executor_stats& stats);
// "" when an io_uring can be created here, else the diagnosis.
std::string probe_uring();

// epoll_backend.cpp. Throws setup_error when epoll_create1 fails.
std::unique_ptr<io_backend> make_epoll_backend(const executor_options& opts, std::vector<cqe_copy>& completed,
                                               executor_stats& stats);

}  // namespace ringframe::detail
