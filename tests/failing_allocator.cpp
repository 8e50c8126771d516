// The replacement global operator new/delete of failing_allocator.hpp: every
// form through checked_malloc() and free. Compiled into the executables of
// the tests that use the header, and only those (tests/meson.build).
//
// Under ThreadSanitizer (FAILING_ALLOCATOR_WRAP) they cannot be replacements:
// clang 14's TSan runtime defines operator new/delete itself, not weak as
// ASan's are, so a second definition does not link. There the same functions
// get the names `ld --wrap` gives them (tests/meson.build wraps each symbol):
// every call of operator new from the executable's own objects (the test,
// libringframe.a, templates instantiated in them) reaches them; calls made
// inside libstdc++.so go to TSan's and are neither counted nor failed.
#include "failing_allocator.hpp"

#include <cstdlib>
#include <new>

namespace {
using testing::failing_allocator::checked_malloc;

void* allocate_or_null(std::size_t n) noexcept {
  try {
    return checked_malloc(n);
  } catch (...) {
    return nullptr;
  }
}
}  // namespace

#ifndef FAILING_ALLOCATOR_WRAP
void* operator new(std::size_t n) { return checked_malloc(n); }
void* operator new[](std::size_t n) { return checked_malloc(n); }
void* operator new(std::size_t n, const std::nothrow_t&) noexcept { return allocate_or_null(n); }
void* operator new[](std::size_t n, const std::nothrow_t&) noexcept { return allocate_or_null(n); }
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t) noexcept { std::free(p); }
void operator delete(void* p, const std::nothrow_t&) noexcept { std::free(p); }
void operator delete[](void* p, const std::nothrow_t&) noexcept { std::free(p); }
#else
// The Itanium ABI's names of the ten operators above, in the same order.
extern "C" {
void* __wrap__Znwm(std::size_t n) { return checked_malloc(n); }
void* __wrap__Znam(std::size_t n) { return checked_malloc(n); }
void* __wrap__ZnwmRKSt9nothrow_t(std::size_t n, const std::nothrow_t&) noexcept { return allocate_or_null(n); }
void* __wrap__ZnamRKSt9nothrow_t(std::size_t n, const std::nothrow_t&) noexcept { return allocate_or_null(n); }
void __wrap__ZdlPv(void* p) noexcept { std::free(p); }
void __wrap__ZdaPv(void* p) noexcept { std::free(p); }
void __wrap__ZdlPvm(void* p, std::size_t) noexcept { std::free(p); }
void __wrap__ZdaPvm(void* p, std::size_t) noexcept { std::free(p); }
void __wrap__ZdlPvRKSt9nothrow_t(void* p, const std::nothrow_t&) noexcept { std::free(p); }
void __wrap__ZdaPvRKSt9nothrow_t(void* p, const std::nothrow_t&) noexcept { std::free(p); }
}
#endif
