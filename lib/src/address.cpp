#include <ringframe/address.hpp>

#include <arpa/inet.h>
#include <net/if.h>
#include <netdb.h>
#include <netinet/in.h>
#include <sys/un.h>

#include <charconv>
#include <cstring>

namespace ringframe {

namespace {
class resolver_category_impl : public std::error_category {
 public:
  const char* name() const noexcept override { return "resolver"; }
  std::string message(int ev) const override { return ::gai_strerror(ev); }
};
}  // namespace

const std::error_category& resolver_category() noexcept {
  static resolver_category_impl cat;
  return cat;
}

address::address() noexcept : storage_{}, len_(0) {}

address::address(const sockaddr* sa, socklen_t len) noexcept : storage_{}, len_(len) {
  if (len_ > sizeof(storage_)) len_ = sizeof(storage_);
  std::memcpy(&storage_, sa, len_);
}

result<address> address::from_ip(std::string_view host, std::uint16_t port) {
  // inet_pton reads a C string: "127.0.0.1\0.example.com" would be taken
  // for its prefix (review34 F1).
  if (host.find('\0') != std::string_view::npos) return std::errc::invalid_argument;
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  std::string h(host);
  // A link-local IPv6 address names its interface: "fe80::1%eth0" or
  // "fe80::1%2" (RFC 4007 section 11).
  std::uint32_t scope = 0;
  if (auto pct = h.find('%'); pct != std::string::npos) {
    const std::string zone = h.substr(pct + 1);
    h.resize(pct);
    in6_addr probe{};
    if (zone.empty() || ::inet_pton(AF_INET6, h.c_str(), &probe) != 1) return std::errc::invalid_argument;
    scope = ::if_nametoindex(zone.c_str());
    if (scope == 0) {
      auto [p, ec] = std::from_chars(zone.data(), zone.data() + zone.size(), scope);
      if (ec != std::errc{} || p != zone.data() + zone.size() || scope == 0) return std::errc::invalid_argument;
    }
  }
  address a;
  auto* v4 = reinterpret_cast<sockaddr_in*>(&a.storage_);
  if (scope == 0 && ::inet_pton(AF_INET, h.c_str(), &v4->sin_addr) == 1) {
    v4->sin_family = AF_INET;
    v4->sin_port = htons(port);
    a.len_ = sizeof(sockaddr_in);
    return a;
  }
  auto* v6 = reinterpret_cast<sockaddr_in6*>(&a.storage_);
  if (::inet_pton(AF_INET6, h.c_str(), &v6->sin6_addr) == 1) {
    v6->sin6_family = AF_INET6;
    v6->sin6_port = htons(port);
    v6->sin6_scope_id = scope;
    a.len_ = sizeof(sockaddr_in6);
    return a;
  }
  return std::errc::invalid_argument;
}

result<address> address::from_unix_path(std::string_view path) {
  address a;
  auto* un = reinterpret_cast<sockaddr_un*>(&a.storage_);
  if (path.empty() || path.size() >= sizeof(un->sun_path)) return std::errc::filename_too_long;
  un->sun_family = AF_UNIX;
  std::memcpy(un->sun_path, path.data(), path.size());
  if (path[0] == '@') un->sun_path[0] = '\0';  // abstract namespace
  a.len_ = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + path.size() + (path[0] == '@' ? 0 : 1));
  return a;
}

result<std::vector<address>> address::resolve(std::string_view host, std::uint16_t port) {
  if (auto ip = from_ip(host, port)) return std::vector<address>{*ip};
  // getaddrinfo reads a C string: a name with a NUL inside would be looked
  // up as its prefix, another host than the one named (review34 F1).
  if (host.find('\0') != std::string_view::npos) return std::error_code(EAI_NONAME, resolver_category());
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  std::string h(host), p = std::to_string(port);
  int rc = ::getaddrinfo(h.c_str(), p.c_str(), &hints, &res);
  if (rc != 0) {
    if (rc == EAI_SYSTEM) return errno_code(errno);
    return std::error_code(rc, resolver_category());
  }
  std::vector<address> out;
  for (addrinfo* ai = res; ai; ai = ai->ai_next) out.emplace_back(ai->ai_addr, ai->ai_addrlen);
  ::freeaddrinfo(res);
  if (out.empty()) return std::error_code(EAI_NONAME, resolver_category());
  return out;
}

std::uint16_t address::port() const noexcept {
  if (family() == AF_INET) return ntohs(reinterpret_cast<const sockaddr_in*>(&storage_)->sin_port);
  if (family() == AF_INET6) return ntohs(reinterpret_cast<const sockaddr_in6*>(&storage_)->sin6_port);
  return 0;
}

std::string address::host() const {
  char buf[INET6_ADDRSTRLEN] = {};
  if (family() == AF_INET) {
    ::inet_ntop(AF_INET, &reinterpret_cast<const sockaddr_in*>(&storage_)->sin_addr, buf, sizeof buf);
    return buf;
  }
  if (family() == AF_INET6) {
    const auto* v6 = reinterpret_cast<const sockaddr_in6*>(&storage_);
    ::inet_ntop(AF_INET6, &v6->sin6_addr, buf, sizeof buf);
    std::string out = buf;
    if (v6->sin6_scope_id != 0) {  // as getnameinfo prints it: the name, or the number
      char name[IF_NAMESIZE] = {};
      out += '%';
      out += ::if_indextoname(v6->sin6_scope_id, name) ? std::string(name) : std::to_string(v6->sin6_scope_id);
    }
    return out;
  }
  if (family() == AF_UNIX) {
    auto* un = reinterpret_cast<const sockaddr_un*>(&storage_);
    std::size_t n = len_ > offsetof(sockaddr_un, sun_path) ? len_ - offsetof(sockaddr_un, sun_path) : 0;
    if (n == 0) return "";
    if (un->sun_path[0] == '\0') return "@" + std::string(un->sun_path + 1, n - 1);
    return std::string(un->sun_path, strnlen(un->sun_path, n));
  }
  return "";
}

std::string address::to_string() const {
  if (family() == AF_INET) return host() + ":" + std::to_string(port());
  if (family() == AF_INET6) return "[" + host() + "]:" + std::to_string(port());
  if (family() == AF_UNIX) return "unix:" + host();
  return "(unknown)";
}

std::string address::to_python() const {
  if (family() == AF_INET) return "('" + host() + "', " + std::to_string(port()) + ")";
  if (family() == AF_INET6) {
    // Python's host has no zone (3.7+, inet_ntop): the scope is the fourth
    // field only. (review14 F1)
    const auto* v6 = reinterpret_cast<const sockaddr_in6*>(&storage_);
    char buf[INET6_ADDRSTRLEN] = {};
    ::inet_ntop(AF_INET6, &v6->sin6_addr, buf, sizeof buf);
    return "('" + std::string(buf) + "', " + std::to_string(port()) + ", " + std::to_string(ntohl(v6->sin6_flowinfo)) +
           ", " + std::to_string(v6->sin6_scope_id) + ")";
  }
  if (family() == AF_UNIX) return "'" + host() + "'";
  return "''";
}

result<std::uint16_t> parse_port(std::string_view text) {
  unsigned v = 0;
  auto [p, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
  if (text.empty() || ec != std::errc{} || p != text.data() + text.size() || v > 65535) return std::errc::invalid_argument;
  return static_cast<std::uint16_t>(v);
}

}  // namespace ringframe
