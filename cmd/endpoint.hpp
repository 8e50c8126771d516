// Turning the binaries' HOST and PORT arguments into addresses, with the
// one-line errors a user should see.
#pragma once

#include <ringframe/address.hpp>

#include <string>
#include <vector>

namespace ringframe::cli {

// True for "unix:/path", a Unix-domain socket: it has no port, so the
// client's commands take no PORT argument after it.
inline bool is_unix_host(const std::string& host) { return host.rfind("unix:", 0) == 0; }

// HOST may be an IP literal, a host name (resolved, blocking) or
// "unix:/path" for a Unix-domain socket (then the binaries refuse a PORT).
// On failure, `error` holds a message such as "bad port 'x': ...".
inline std::vector<address> resolve_endpoint(const std::string& host, const std::string& port_text,
                                             std::string& error) {
  if (is_unix_host(host)) {
    // from_unix_path refuses "" as too long, which misleads.
    if (host.size() == 5) {
      error = "bad unix socket path '': empty (expected unix:/path/to/socket)";
      return {};
    }
    auto a = address::from_unix_path(host.substr(5));
    if (!a) {
      error = "bad unix socket path '" + host.substr(5) + "': " + a.error().message();
      return {};
    }
    return {*a};
  }
  auto port = parse_port(port_text);
  if (!port) {
    error = "bad port '" + port_text + "': expected a whole number from 0 to 65535";
    return {};
  }
  auto addrs = address::resolve(host, *port);
  if (!addrs) {
    error = "cannot resolve host '" + host + "': " + addrs.error().message();
    // "127.0.0.1:7000" as HOST: the port is an argument of its own.
    const std::size_t colon = host.rfind(':');
    if (colon != std::string::npos && host.find(':') == colon && colon + 1 < host.size() &&
        host.find_first_not_of("0123456789", colon + 1) == std::string::npos)
      error += " (HOST and PORT are two arguments: '" + host.substr(0, colon) + "' '" + host.substr(colon + 1) + "')";
    return {};
  }
  return *addrs;
}

}  // namespace ringframe::cli
