#pragma once
// The one blocking HTTP/1.1 client, for control-plane calls off the request path: the autoscale
// controller (Prometheus, the Kubernetes API with its CA and bearer token) and the budget alert
// webhooks. http:// and https:// (OpenSSL, peer verified against `ca_file` or the system store,
// SNI sent for host names). The whole call (resolve, connect, handshake, write, read) is bounded
// by `timeout`. Boost.Beast stays inside fetch.cc. The data plane uses client.h instead.
// Thread safety: each call is independent; call from any thread.
#include <string>
#include <utility>
#include <vector>

#include "common/clock.h"
#include "common/result.h"

namespace bw::http {

struct Url {
  bool tls = false;
  std::string host;          // without brackets for IPv6
  std::string port;          // defaulted from the scheme
  std::string target = "/";  // path and query
};
Result<Url> parse_url(std::string_view url);
// Percent-encodes a query component (RFC 3986 unreserved characters stay).
std::string url_encode(std::string_view s);

struct FetchRequest {
  std::string method = "GET";
  std::string url;
  std::vector<std::pair<std::string, std::string>> headers;
  std::string body;
  std::string ca_file;         // https: trust anchors; empty = system default paths
  Nanos timeout = seconds(5);  // whole call
  std::size_t max_body = 1 << 20;
};

struct FetchResponse {
  int status = 0;
  std::string body;
};

// Transport and protocol failures come back as Error (status 502/504, code "upstream_error" or
// "timeout"); any HTTP status, including 4xx/5xx, is a successful FetchResponse.
Result<FetchResponse> fetch(const FetchRequest& request);

}  // namespace bw::http
