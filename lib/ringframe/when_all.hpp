// when_all: run several tasks at once and wait for every one of them.
//
//   std::tuple<std::size_t, std::monostate, std::string> r =
//       co_await when_all(read_count(&s), write_all(&s, data), lookup(&ex, key));
//   std::vector<int> v = co_await when_all(std::move(tasks));   // std::vector<task<int>>
//
// The tasks are moved into when_all's frame and started, in argument order,
// when when_all is awaited; each runs until its first suspension before the
// next starts, then they proceed concurrently on the awaiter's executor.
// The result holds the values in argument order (task<void> gives
// std::monostate). If any task throws, the exception of the first one to
// finish with an exception is rethrown, but only after every task has
// finished: none is cancelled (when_all has no stop token to give them; use
// when_any or with_timeout for that), and nothing outlives the co_await.
//
// Errors reported as values (result<T>) are values: when_all does not look
// into them.
//
// Same thread only: the tasks must resume on the awaiter's executor.
#pragma once

#include <ringframe/detail/join.hpp>
#include <ringframe/task.hpp>

#include <cstddef>
#include <exception>
#include <tuple>
#include <utility>
#include <vector>

namespace ringframe {

// A fixed set of tasks, possibly of different types.
template <class... Ts>
static task<std::tuple<detail::join_value_t<Ts>...>> when_all(task<Ts>... ts) {
  detail::join_state st;
  st.first_only_errors = true;
  std::vector<detail::join_driver> drivers;
  drivers.reserve(sizeof...(Ts));
  std::size_t next = 0;
  (drivers.push_back(detail::drive<Ts>(&ts, &st, next++)), ...);
  detail::join_awaiter all{&st, drivers.data(), drivers.size()};
  co_await all;
  if (st.first_error) std::rethrow_exception(st.first_error);
  co_return std::tuple<detail::join_value_t<Ts>...>{detail::take_value<Ts>(ts)...};
}

// Any number of tasks of one type; values in the vector's order.
template <class T>
static task<std::vector<detail::join_value_t<T>>> when_all(std::vector<task<T>> ts) {
  detail::join_state st;
  st.first_only_errors = true;
  std::vector<detail::join_driver> drivers = detail::drivers_for(ts, &st);
  detail::join_awaiter all{&st, drivers.data(), drivers.size()};
  co_await all;
  if (st.first_error) std::rethrow_exception(st.first_error);
  std::vector<detail::join_value_t<T>> out;
  out.reserve(ts.size());
  for (auto& t : ts) out.push_back(detail::take_value<T>(t));
  co_return out;
}

}  // namespace ringframe
