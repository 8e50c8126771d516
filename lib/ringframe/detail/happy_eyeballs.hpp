// happy_eyeballs: connecting to the first of several addresses that answers,
// as RFC 8305 says (what connect(host, port) and framed_client::connect do
// with the addresses a lookup gives).
//
// The addresses are tried in the resolver's order (RFC 6724's, gai.conf's)
// with the families interleaved: the first address's family (IPv6 where the
// host has it), then the other's, alternately. The first attempt starts at
// once; each next one when the last one started has not connected after
// `delay`, or at once when an attempt fails; so several may be in flight.
// The first to connect wins; the others are cancelled and their sockets
// closed. With delay 0 they are tried one at a time, the next when one
// fails.
//
// Every attempt (and the timer that paces them) is a child of a task_group
// in connect_first's frame, which joins them before it returns: a loser's
// connect is owned until its completion arrives, however the race ends
// (a winner, the caller's stop, the executor stopping).
//
// The result: the winner's socket; else ECANCELED once `stop` is requested
// (from any thread) or the executor stops, at once, with no further address
// tried; else ENOMEM when an attempt could not be started (out of memory:
// those in flight are stopped); else the error of the attempt that ended
// last (ETIMEDOUT for an attempt cut short by `deadline` or by its
// `attempt_timeout`; ENOMEM for one whose own allocation failed).
#pragma once

#include <ringframe/address.hpp>
#include <ringframe/executor.hpp>
#include <ringframe/result.hpp>
#include <ringframe/socket.hpp>
#include <ringframe/task.hpp>

#include <chrono>
#include <stop_token>
#include <vector>

namespace ringframe::detail {

// `to` reordered: the first address's family, then the others',
// alternately, each family in its own order.
std::vector<address> interleave_families(std::vector<address> to);

// `attempt_timeout`: each attempt's, from when it starts (0: none);
// `deadline`: no attempt goes on past it (time_point::max(): none).
task<result<socket>> connect_first(executor* ex, std::vector<address> to, std::chrono::nanoseconds delay,
                                   std::chrono::nanoseconds attempt_timeout,
                                   std::chrono::steady_clock::time_point deadline, std::stop_token stop);

}  // namespace ringframe::detail
