// address: an IPv4, IPv6 or Unix-domain socket address, held by value.
#pragma once

#include <ringframe/result.hpp>

#include <sys/socket.h>

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace ringframe {

// getaddrinfo's EAI_* codes, as error_codes.
const std::error_category& resolver_category() noexcept;

class address {
 public:
  address() noexcept;
  address(const sockaddr* sa, socklen_t len) noexcept;

  // A numeric IPv4 or IPv6 address ("127.0.0.1", "::1", "[::1]"): no lookup.
  // An IPv6 address may name its scope (link-local): "fe80::1%eth0" or
  // "fe80::1%2"; host() and to_string() print it back, to_python() gives it
  // as Python does: the fourth field (scope_id), the host without a zone.
  static result<address> from_ip(std::string_view host, std::uint16_t port);
  // A Unix-domain socket path; a leading '@' names an abstract socket.
  static result<address> from_unix_path(std::string_view path);
  // Name resolution through getaddrinfo. It BLOCKS the calling thread (and so
  // the executor) for as long as the resolver takes: inside a running loop
  // use ringframe::resolve (resolver.hpp) instead, which runs this on a
  // resolver thread. Numeric hosts return at once.
  static result<std::vector<address>> resolve(std::string_view host, std::uint16_t port);

  int family() const noexcept { return storage_.ss_family; }
  const sockaddr* data() const noexcept { return reinterpret_cast<const sockaddr*>(&storage_); }
  sockaddr* data() noexcept { return reinterpret_cast<sockaddr*>(&storage_); }
  socklen_t size() const noexcept { return len_; }
  socklen_t* size_ptr() noexcept { return &len_; }
  static constexpr socklen_t capacity() noexcept { return sizeof(sockaddr_storage); }

  std::uint16_t port() const noexcept;  // 0 for Unix sockets
  std::string host() const;             // "127.0.0.1", "::1" or the path

  // "127.0.0.1:65432", "[::1]:65432", "unix:/tmp/s"
  std::string to_string() const;
  // As Python prints a socket address: "('127.0.0.1', 65432)". The logs use
  // this form so that they read like the tutorial's.
  std::string to_python() const;

 private:
  sockaddr_storage storage_;
  socklen_t len_;
};

// "65432" -> 65432; anything that is not a whole number in 0..65535 is an error
// (std::errc::invalid_argument).
result<std::uint16_t> parse_port(std::string_view text);

}  // namespace ringframe
