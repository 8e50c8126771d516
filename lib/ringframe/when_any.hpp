// when_any: run several tasks at once, take the first to finish, cancel the
// others and wait for them.
//
// The tasks are given as factories: callables invoked as f(std::stop_token)
// that return a task<T>. when_any owns one std::stop_source and hands each
// factory a token of it; a task cancels by passing that token to what it
// awaits (`s.recv(buf, {.stop = &token})`, `sleep_for(ex, d, &token)`, the
// token kept as a by-value coroutine parameter so that it lives as long as
// the task). When the first task finishes, stop is requested: the losers'
// operations end with ECANCELED, and when_any resumes only after every one of
// them has finished, so nothing outlives the co_await. A task that ignores
// its token is not cut short: when_any waits for it.
//
//   task<result<std::size_t>> read_from(socket* s, std::stop_token st);   // uses &st
//   auto [index, value] = co_await when_any(
//       [&a](std::stop_token st) { return read_from(&a, st); },
//       [&b](std::stop_token st) { return read_from(&b, st); });
//   // value: std::variant<result<size_t>, result<size_t>>, value.index() == index
//
//   std::vector<F> fs = ...;                    // any number, one factory type
//   auto [i, v] = co_await when_any(std::move(fs));  // v: the winner's value
//
// A factory is a plain function (pointer) or a lambda that is not itself a
// coroutine: it calls a coroutine function, passing what it needs by value
// (g++ 12 mishandles coroutine lambdas with captures). The factories are
// moved into when_any's frame and called, in order, when when_any is
// awaited; they live until it returns. The tasks are then started in order
// (a task that finds stop already requested sees ECANCELED at once).
//
// The result: the index of the first task to finish, and its value (the
// fixed set: a std::variant whose active index is that index; task<void>
// gives std::monostate). If that first task threw, its exception is rethrown
// (after every task has finished). The losers' values and exceptions are
// discarded, even a value a loser got before the stop reached it: a channel
// element or a semaphore permit handed to its waiter in the turn the winner
// finished is then gone (review51). For a receive or an acquire against a
// deadline use with_timeout, which returns such a value; with when_any, a
// task that must not drop what it received keeps it somewhere the caller
// sees (or releases the permit) itself. Errors reported as values (a
// result<T> holding ECANCELED) are values: the first task to finish wins,
// whatever it returns. An empty vector throws std::invalid_argument.
//
// Same thread only: the tasks must resume on the awaiter's executor.
#pragma once

#include <ringframe/detail/join.hpp>
#include <ringframe/task.hpp>

#include <concepts>
#include <cstddef>
#include <exception>
#include <stdexcept>
#include <stop_token>
#include <tuple>
#include <utility>
#include <variant>
#include <vector>

namespace ringframe {

namespace detail {

template <class Tuple, std::size_t... Is>
void drive_each(Tuple& ts, join_state* st, std::vector<join_driver>& out, std::index_sequence<Is...>) {
  (out.push_back(drive(&std::get<Is>(ts), st, Is)), ...);
}

template <std::size_t I, class V, class Tuple>
V take_variant(Tuple& ts, std::size_t index) {
  if constexpr (I + 1 < std::tuple_size_v<Tuple>) {
    if (index != I) return take_variant<I + 1, V>(ts, index);
  }
  return V(std::in_place_index<I>, take_value(std::get<I>(ts)));
}

template <class F>
concept stop_task_factory = std::invocable<F&, std::stop_token> && requires { typename factory_value_t<F>; };

}  // namespace detail

template <class... Fs>
  requires(sizeof...(Fs) > 0 && (detail::stop_task_factory<Fs> && ...))
static task<std::pair<std::size_t, std::variant<detail::join_value_t<detail::factory_value_t<Fs>>...>>>
when_any(Fs... fs) {
  using V = std::variant<detail::join_value_t<detail::factory_value_t<Fs>>...>;
  std::stop_source src;
  std::tuple<detail::factory_task_t<Fs>...> ts{fs(src.get_token())...};
  detail::join_state st;
  st.stop = &src;
  std::vector<detail::join_driver> drivers;
  drivers.reserve(sizeof...(Fs));
  detail::drive_each(ts, &st, drivers, std::index_sequence_for<Fs...>{});
  detail::join_awaiter all{&st, drivers.data(), drivers.size()};
  co_await all;
  if (st.first_error) std::rethrow_exception(st.first_error);
  co_return std::pair<std::size_t, V>(st.first, detail::take_variant<0, V>(ts, st.first));
}

template <class F>
  requires detail::stop_task_factory<F>
static task<std::pair<std::size_t, detail::join_value_t<detail::factory_value_t<F>>>> when_any(std::vector<F> fs) {
  using T = detail::factory_value_t<F>;
  if (fs.empty()) throw std::invalid_argument("ringframe::when_any: no tasks");
  std::stop_source src;
  std::vector<task<T>> ts;
  ts.reserve(fs.size());
  for (auto& f : fs) ts.push_back(f(src.get_token()));
  detail::join_state st;
  st.stop = &src;
  std::vector<detail::join_driver> drivers = detail::drivers_for(ts, &st);
  detail::join_awaiter all{&st, drivers.data(), drivers.size()};
  co_await all;
  if (st.first_error) std::rethrow_exception(st.first_error);
  co_return std::pair<std::size_t, detail::join_value_t<T>>(st.first, detail::take_value<T>(ts[st.first]));
}

}  // namespace ringframe
