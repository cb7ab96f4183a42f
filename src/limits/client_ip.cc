#include "limits/client_ip.h"

#include <arpa/inet.h>

#include <algorithm>
#include <charconv>
#include <cstring>

namespace bw::limits {
namespace {

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

bool contains_any_trusted(const IpAddress& ip, std::span<const Cidr> trusted) {
  return std::any_of(trusted.begin(), trusted.end(), [&](const Cidr& c) { return c.contains(ip); });
}

}  // namespace

bool Cidr::contains(const IpAddress& ip) const {
  if (ip.v6 != network.v6) return false;
  const int full = prefix / 8, rest = prefix % 8;
  if (std::memcmp(ip.bytes.data(), network.bytes.data(), static_cast<std::size_t>(full)) != 0) {
    return false;
  }
  if (rest == 0) return true;
  const auto mask = static_cast<std::uint8_t>(0xff << (8 - rest));
  return (ip.bytes[full] & mask) == (network.bytes[full] & mask);
}

std::optional<IpAddress> parse_ip(std::string_view text) {
  text = trim(text);
  if (text.empty() || text.size() > 64) return std::nullopt;
  if (text.front() == '[') {
    const auto close = text.find(']');
    if (close == std::string_view::npos) return std::nullopt;
    text = text.substr(1, close - 1);
  } else if (std::count(text.begin(), text.end(), ':') == 1) {
    text = text.substr(0, text.find(':'));  // IPv4 with a port
  }
  char buf[65];
  std::memcpy(buf, text.data(), text.size());
  buf[text.size()] = '\0';
  IpAddress ip;
  if (inet_pton(AF_INET, buf, ip.bytes.data()) == 1) return ip;
  if (inet_pton(AF_INET6, buf, ip.bytes.data()) != 1) return std::nullopt;
  ip.v6 = true;
  static constexpr std::uint8_t kMapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
  if (std::memcmp(ip.bytes.data(), kMapped, 12) == 0) {
    IpAddress v4;
    std::memcpy(v4.bytes.data(), ip.bytes.data() + 12, 4);
    return v4;
  }
  return ip;
}

Result<Cidr> parse_cidr(std::string_view text) {
  text = trim(text);
  const auto slash = text.find('/');
  auto bad = [&] {
    return make_error(500, "config_error", "invalid_cidr",
                      "invalid CIDR '" + std::string(text) + "'");
  };
  auto ip = parse_ip(text.substr(0, slash));
  if (!ip || (slash != std::string_view::npos && text.find('[') != std::string_view::npos)) {
    return bad();
  }
  const int max_bits = ip->v6 ? 128 : 32;
  int prefix = max_bits;
  if (slash != std::string_view::npos) {
    const std::string_view bits = text.substr(slash + 1);
    auto [p, ec] = std::from_chars(bits.data(), bits.data() + bits.size(), prefix);
    if (ec != std::errc() || p != bits.data() + bits.size() || prefix < 0 || prefix > max_bits) {
      return bad();
    }
  }
  return Cidr{*ip, prefix};
}

std::string format_ip(const IpAddress& ip) {
  char buf[INET6_ADDRSTRLEN];
  if (!inet_ntop(ip.v6 ? AF_INET6 : AF_INET, ip.bytes.data(), buf, sizeof buf)) return {};
  return buf;
}

std::string client_ip(std::string_view peer_ip, std::string_view x_forwarded_for,
                      std::span<const Cidr> trusted_cidrs) {
  const auto peer = parse_ip(peer_ip);
  if (!peer) return std::string(peer_ip);
  IpAddress client = *peer;
  if (!contains_any_trusted(client, trusted_cidrs)) return format_ip(client);
  std::string_view rest = x_forwarded_for;
  while (!rest.empty()) {
    const auto comma = rest.rfind(',');
    const std::string_view hop =
        trim(comma == std::string_view::npos ? rest : rest.substr(comma + 1));
    rest = comma == std::string_view::npos ? std::string_view{} : rest.substr(0, comma);
    if (hop.empty()) continue;
    const auto ip = parse_ip(hop);
    if (!ip) break;  // garbage was written by an untrusted party: keep the last trusted hop
    client = *ip;
    if (!contains_any_trusted(client, trusted_cidrs)) break;
  }
  return format_ip(client);
}

}  // namespace bw::limits
