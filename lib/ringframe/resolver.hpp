// resolver: host names to addresses without stalling the executor.
//
//   result<std::vector<address>> a = co_await resolve(ex, "db.internal", 5432, {.timeout = 5s});
//
// How: getaddrinfo runs on a small pool of resolver threads (at most four,
// started when first needed, each gone after 10 s without work) and the
// result is handed back to the awaiting coroutine through the executor's
// cross-thread inbox (executor::defer), as libuv (uv_getaddrinfo) and Asio
// (its resolver thread) do. Why not c-ares, driven by the executor's own
// readiness waits: getaddrinfo honours the system's resolver configuration
// exactly as the blocking path and every other program on the host do
// (nsswitch.conf: /etc/hosts, DNS, mDNS, LDAP, systemd-resolved; gai.conf's
// address ordering), c-ares reads only /etc/hosts and resolv.conf; a lookup
// is rare next to the I/O a connection does, so a thread hop per lookup
// costs nothing that matters; and it needs no new dependency and no poll
// operation in the backend seam.
//
// Numeric hosts ("127.0.0.1", "::1", "[::1]") never leave the calling
// thread: the coroutine completes without suspending.
//
// Cancellation: when `o.stop` is requested (from any thread), when the
// timeout (`o.timeout`, a coarse deadline: deadline.hpp) passes, or when the
// executor stops, the awaiting coroutine resumes at once (from the loop)
// with ECANCELED or ETIMEDOUT; the getaddrinfo call itself cannot be
// interrupted, so it finishes on its thread and its result is dropped there;
// a lookup still queued behind busy threads is dropped without being made.
// Nothing the lookup thread touches belongs to the coroutine or the
// executor: the two share one heap job, and the thread posts to the
// executor only while the coroutine still waits (under the job's lock), so
// an executor destroyed during a lookup is never reached.
//
// fork(): the child starts with no resolver thread (its first lookup starts
// one); a lookup that was running on a thread at the fork is not served in
// the child (its caller there waits for its timeout or stop).
//
// A host with a NUL inside names no host (EAI_NONAME): getaddrinfo would
// look up the part before it.
//
// Errors: the resolver's (resolver_category(): EAI_NONAME...), errno codes
// for EAI_SYSTEM, ECANCELED, ETIMEDOUT, EAGAIN when no resolver thread can be
// started.
#pragma once

#include <ringframe/address.hpp>
#include <ringframe/executor.hpp>
#include <ringframe/operation.hpp>
#include <ringframe/result.hpp>
#include <ringframe/task.hpp>

#include <atomic>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace ringframe {

// The executor must outlive the co_await; `o.stop` too (keep the token in
// the awaiting coroutine's frame).
task<result<std::vector<address>>> resolve(executor& ex, std::string host, std::uint16_t port, op_options o = {});

namespace detail {
// For tests: called on the resolver thread before each getaddrinfo (null:
// none). A test blocks in it to hold a lookup "in flight" for as long as it
// needs. Set it while no lookup runs.
extern std::atomic<void (*)(std::string_view host)> resolver_test_hook;
// For tests: asked on the resolver thread instead of getaddrinfo (after
// resolver_test_hook; null: none). It returns true with its answer in
// `out`, or false to let the lookup go on as usual. A test names a host
// with several addresses this way (an IPv6 and an IPv4 one, the order
// chosen), which /etc/hosts may not have. Set it while no lookup runs.
extern std::atomic<bool (*)(std::string_view host, std::uint16_t port, std::vector<address>& out)>
    resolver_test_answer;
// Lookups that have finished on their thread (delivered or dropped).
std::uint64_t resolver_lookups_finished() noexcept;
}  // namespace detail

}  // namespace ringframe
