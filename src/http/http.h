#pragma once
// Plain HTTP message types shared by the server, the upstream client and the gateway. They keep
// Boost.Beast out of every header above src/http/. Header names compare case-insensitively.
// Thread safety: value types.
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace bw::http {

bool iequals(std::string_view a, std::string_view b);

// A header list that owns its strings (responses, upstream requests).
class Headers {
 public:
  void add(std::string name, std::string value) {
    items_.emplace_back(std::move(name), std::move(value));
  }
  void set(std::string_view name, std::string value);
  std::string_view get(std::string_view name) const;  // empty if absent
  bool has(std::string_view name) const;
  void remove(std::string_view name);
  const std::vector<std::pair<std::string, std::string>>& items() const { return items_; }
  std::size_t size() const { return items_.size(); }

 private:
  std::vector<std::pair<std::string, std::string>> items_;
};

// A request as received by the server. Header views point into storage owned by the session and
// stay valid until the handler returns.
struct Request {
  std::string_view method;
  std::string_view target;  // path and query, as sent
  std::vector<std::pair<std::string_view, std::string_view>> headers;
  std::string body;
  std::string peer_ip;
  bool keep_alive = true;

  std::string_view header(std::string_view name) const;
  std::string_view path() const;  // target without the query
};

struct Response {
  int status = 200;
  Headers headers;
  std::string body;
  // Convenience for JSON answers.
  static Response json(int status, std::string body);
};

// The raw value of query parameter `name` in a request target ("" if absent; no decoding).
std::string_view query_param(std::string_view target, std::string_view name);
// The same as an integer, or `fallback` when absent or not a number.
std::int64_t query_int(std::string_view target, std::string_view name, std::int64_t fallback);

// Hop-by-hop headers (RFC 9110 7.6.1) that a proxy must not forward.
bool is_hop_by_hop(std::string_view name);

}  // namespace bw::http
