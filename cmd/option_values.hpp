// Numbers in the binaries' options, taken only as typed: strtoull and strtod
// alone skip leading blanks, take a sign ("+5", and " -1" as the largest
// value) and, for strtod, hexadecimal ("0x10") and "inf".
#pragma once

#include <cerrno>
#include <cstdlib>

namespace ringframe::cli {

// Decimal digits only, and no overflow (ERANGE).
inline bool parse_whole(const char* text, unsigned long long& v) {
  if (!(*text >= '0' && *text <= '9')) return false;
  for (const char* p = text; *p; ++p)
    if (!(*p >= '0' && *p <= '9')) return false;
  char* end = nullptr;
  errno = 0;
  v = std::strtoull(text, &end, 10);
  return !*end && errno != ERANGE;
}

// A decimal number of seconds: digits, at most one '.', and an exponent
// ("1.5", ".25", "2e-3"); no sign in front, no hexadecimal, no inf or nan.
inline bool parse_seconds_value(const char* text, double& v) {
  if (!((*text >= '0' && *text <= '9') || *text == '.')) return false;
  for (const char* p = text; *p; ++p)
    if (!((*p >= '0' && *p <= '9') || *p == '.' || *p == 'e' || *p == 'E' || *p == '+' || *p == '-')) return false;
  char* end = nullptr;
  errno = 0;
  v = std::strtod(text, &end);
  return !*end && errno != ERANGE;
}

}  // namespace ringframe::cli
