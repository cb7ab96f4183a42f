#pragma once
// Client address for per-IP limits. X-Forwarded-For is client-controlled text, so it is believed
// only hop by hop from the right, and only while each hop is a proxy we trust.
// Pure functions (inet_pton/inet_ntop only); thread safe.
#include <array>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>

#include "common/result.h"

namespace bw::limits {

struct IpAddress {
  bool v6 = false;
  std::array<std::uint8_t, 16> bytes{};  // IPv4 in the first 4 bytes
};

struct Cidr {
  IpAddress network;
  int prefix = 0;  // bits
  bool contains(const IpAddress& ip) const;
};

// Accepts "1.2.3.4", "2001:db8::1", "[2001:db8::1]", "[2001:db8::1]:443", "1.2.3.4:8080".
// IPv4-mapped IPv6 (::ffff:1.2.3.4) becomes IPv4 so one client has one bucket.
std::optional<IpAddress> parse_ip(std::string_view text);
// "10.0.0.0/8", "2001:db8::/32"; a bare address means a single host.
Result<Cidr> parse_cidr(std::string_view text);
// Canonical text (inet_ntop), e.g. "2001:db8::1".
std::string format_ip(const IpAddress& ip);

// The address the request came from. If the TCP peer is a trusted proxy, X-Forwarded-For is
// walked right to left past trusted hops; the first untrusted hop is the client. When every hop
// is trusted, the leftmost is used; a malformed hop stops the walk at the last trusted hop.
// Returns the canonical form of the chosen address (or peer_ip verbatim if it does not parse).
std::string client_ip(std::string_view peer_ip, std::string_view x_forwarded_for,
                      std::span<const Cidr> trusted_cidrs);

}  // namespace bw::limits
