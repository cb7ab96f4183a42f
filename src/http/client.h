#pragma once
// Upstream HTTP/1.1 client with a keep-alive connection pool per worker thread (no locks: each
// worker's io_context runs on one thread). Plain TCP and TLS (peer verification against the
// system CAs, SNI, host name check). Every step has a deadline: connect, first byte of the
// response head, and the gap between body reads.
// Thread safety: ClientPool::for_this_thread() returns the calling worker's pool; an
// UpstreamResponse must be used and destroyed on the thread that created it.
#include <boost/asio/awaitable.hpp>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "common/clock.h"
#include "common/result.h"
#include "http/http.h"

namespace bw::http {

struct Endpoint {
  bool tls = false;
  std::string host;
  std::uint16_t port = 80;
  std::string base_path;  // e.g. "/v1" (no trailing slash)
  // Parses http://host[:port][/path] and https://...
  static Result<Endpoint> parse(std::string_view url);
  std::string pool_key() const;
};

struct ClientTimeouts {
  Nanos connect = seconds(5);
  Nanos first_byte = seconds(60);
  Nanos idle = seconds(30);  // between body reads (a stalled stream)
};

struct ClientLimits {
  std::size_t max_connections_per_host = 512;  // per worker thread
  std::size_t max_idle_per_host = 64;
  Nanos pool_idle_timeout = seconds(30);
};

struct OutboundRequest {
  std::string method = "POST";
  std::string target;  // full path and query
  Headers headers;
  std::string body;
};

// Error codes of upstream failures, used by routing to classify outcomes.
inline constexpr std::string_view kUpstreamConnectError = "upstream_connect_error";
inline constexpr std::string_view kUpstreamTimeout = "upstream_timeout";
inline constexpr std::string_view kUpstreamReset = "upstream_reset";

class UpstreamResponse {
 public:
  struct Impl;
  explicit UpstreamResponse(std::unique_ptr<Impl> impl);
  ~UpstreamResponse();  // returns the connection to the pool if reusable, else closes it
  UpstreamResponse(UpstreamResponse&&) noexcept;
  UpstreamResponse& operator=(UpstreamResponse&&) noexcept;

  int status() const;
  const Headers& headers() const;
  // The next piece of the (de-chunked) body; an empty view means the body is complete. The view
  // is valid until the next call.
  boost::asio::awaitable<Result<std::string_view>> read_some();
  // The whole body, refused past `limit` bytes.
  boost::asio::awaitable<Result<std::string>> read_all(std::size_t limit);
  // Drops the connection now (e.g. the client went away): the upstream sees the request cancelled.
  void abort();

 private:
  std::unique_ptr<Impl> impl_;
};

class ClientPool {
 public:
  static ClientPool& for_this_thread();
  void set_limits(const ClientLimits& limits) { limits_ = limits; }

  boost::asio::awaitable<Result<UpstreamResponse>> send(const Endpoint& endpoint,
                                                        const OutboundRequest& request,
                                                        const ClientTimeouts& timeouts);
  std::size_t idle_connections() const;

  struct State;
  ClientPool();
  ~ClientPool();

 private:
  ClientLimits limits_;
  std::unique_ptr<State> state_;
};

}  // namespace bw::http
