// result<T>: a value or a std::error_code. The one error model of ringframe.
//
// Why values, not exceptions: on a socket, failure is ordinary. A peer resets,
// a deadline fires, a server stops and cancels what is in flight (ECANCELED).
// Those arrive thousands of times a second under load and every caller must
// decide what to do with each one, so they come back as values the caller
// cannot overlook ([[nodiscard]]). The error_code keeps the kernel's errno
// (std::system_category) so `ec == std::errc::connection_reset` and
// `ec.message()` work as usual; resolver and protocol errors have categories
// of their own.
//
// Exceptions remain what they are in C++: for programming errors, for
// std::bad_alloc, and for whatever user code throws. A task<T> carries them
// to its awaiter. The only ringframe call that throws by design is the
// executor's constructor (a constructor has no return value); executor::probe()
// gives the same diagnosis as a value.
#pragma once

#include <cerrno>
#include <system_error>
#include <type_traits>
#include <utility>
#include <variant>

namespace ringframe {

// An error_code for an errno value (positive, as in errno; not -errno).
inline std::error_code errno_code(int err) noexcept { return {err, std::system_category()}; }

template <class T>
class [[nodiscard]] result {
 public:
  result(T value) : v_(std::in_place_index<0>, std::move(value)) {}
  result(std::error_code ec) : v_(std::in_place_index<1>, ec) {}
  result(std::errc e) : v_(std::in_place_index<1>, std::make_error_code(e)) {}

  bool has_value() const noexcept { return v_.index() == 0; }
  explicit operator bool() const noexcept { return has_value(); }

  // Precondition: has_value(). Checked: a wrong call is a programming error.
  T& value() & { check(); return std::get<0>(v_); }
  const T& value() const& { check(); return std::get<0>(v_); }
  T&& value() && { check(); return std::get<0>(std::move(v_)); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }
  T&& operator*() && { return std::move(*this).value(); }

  std::error_code error() const noexcept {
    return has_value() ? std::error_code{} : std::get<1>(v_);
  }

 private:
  void check() const {
    if (!has_value()) throw std::system_error(std::get<1>(v_), "result::value() on an error");
  }
  std::variant<T, std::error_code> v_;
};

template <>
class [[nodiscard]] result<void> {
 public:
  // The error's value and category, not a std::error_code: its default
  // constructor calls std::system_category(), out of line, and a success is
  // made and passed on for every message written.
  result() = default;
  result(std::error_code ec) noexcept : val_(ec.value()), cat_(ec ? &ec.category() : nullptr) {}
  result(std::errc e) : result(std::make_error_code(e)) {}
  bool has_value() const noexcept { return cat_ == nullptr; }
  explicit operator bool() const noexcept { return has_value(); }
  void value() const {
    if (cat_) throw std::system_error(error(), "result::value() on an error");
  }
  std::error_code error() const noexcept { return cat_ ? std::error_code(val_, *cat_) : std::error_code{}; }

 private:
  int val_ = 0;
  const std::error_category* cat_ = nullptr;  // null: success
};

}  // namespace ringframe
