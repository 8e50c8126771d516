// Prints what <ringframe/version.hpp> says, for tests/test_version.py to
// compare with meson's project version: the numeric macros joined with dots,
// then the string.
#include <ringframe/version.hpp>

#include <cstdio>

int main() {
  std::printf("%d.%d.%d\n%s\n", RINGFRAME_VERSION_MAJOR, RINGFRAME_VERSION_MINOR, RINGFRAME_VERSION_PATCH,
              RINGFRAME_VERSION);
  return 0;
}
