#pragma once
// Upstream HTTP/1.1 client with a keep-alive connection pool per worker thread (no locks: each
// worker's io_context runs on one thread). Plain TCP and TLS (peer verification against the
// system CAs, SNI, host name check). Every step has a deadline: connect, first byte of the
// response head, and the gap between body reads.
// Thread safety: ClientPool::for_this_thread() returns the calling worker's pool; an
// UpstreamResponse must be used and destroyed on the thread that created it.
#include <boost/asio/awaitable.hpp>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "common/clock.h"
#include "common/result.h"
#include "http/http.h"

namespace bw::http {

struct Endpoint {
  bool tls = false;
  std::string host;
  std::uint16_t port = 80;
  std::string base_path;    // e.g. "/v1" (no trailing slash)
  std::string host_header;  // "host" or "host:port" when the port is not the scheme's default
  std::string key;          // "http(s)://host:port": the connection pool's key
  // Parses http://host[:port][/path] and https://...
  static Result<Endpoint> parse(std::string_view url);
  // An endpoint from its parts (host_header and key derived).
  static Endpoint make(bool tls, std::string host, std::uint16_t port, std::string base_path);
};

struct ClientTimeouts {
  Nanos connect = seconds(5);
  Nanos first_byte = seconds(60);
  Nanos idle = seconds(30);  // between body reads (a stalled stream)
};

// Bounds of the keep-alive pool of one upstream, per worker thread.
struct PoolLimits {
  std::size_t max_connections = 512;  // open at once (busy + idle)
  // Requests that wait for a connection when all max_connections are busy, each for at most the
  // connect timeout. A request over this bound, or one that waited in vain, fails at once with
  // 503 upstream_connection_limit (the gateway's own bound: not a failure of the upstream).
  std::size_t max_pending = 1024;
  std::size_t max_idle = 512;        // kept for reuse after a response
  Nanos idle_timeout = seconds(30);  // an idle connection older than this is closed
};

struct UpstreamOptions {
  ClientTimeouts timeouts;
  PoolLimits pool;
};

class UpstreamCancel;

// Error code of a request abandoned through UpstreamCancel.
inline constexpr std::string_view kUpstreamCancelled = "client_closed_request";

// The views must stay valid until send() completes.
struct OutboundRequest {
  OutboundRequest() = default;
  OutboundRequest(const OutboundRequest&) = default;
  OutboundRequest(OutboundRequest&&) noexcept = default;
  OutboundRequest& operator=(const OutboundRequest&) = default;
  OutboundRequest& operator=(OutboundRequest&&) noexcept = default;
  ~OutboundRequest() { stash::give(body); }

  std::string_view method = "POST";
  std::string_view target;  // full path and query
  // Header lines written before `headers`'s from where they are: pieces of whole "name:
  // value\r\n" lines joined, that Headers::add would accept, none of them a framing header.
  std::span<const std::string_view> head_lines;
  Headers headers;
  std::string body;
  // The body as pieces written from where they are, in place of `body` (which is then empty):
  // a client's body with a few members replaced is sent without a copy of it.
  std::span<const std::string_view> body_pieces;
  UpstreamCancel* cancel = nullptr;  // optional

  std::size_t body_size() const {
    std::size_t n = body.size();
    for (auto p : body_pieces) n += p.size();
    return n;
  }
  // The body's bytes in one string (tests, fakes).
  std::string body_text() const {
    std::string out = body;
    for (auto p : body_pieces) out.append(p);
    return out;
  }
};

// Error codes of upstream failures, used by routing to classify outcomes.
inline constexpr std::string_view kUpstreamConnectError = "upstream_connect_error";
inline constexpr std::string_view kUpstreamTimeout = "upstream_timeout";
inline constexpr std::string_view kUpstreamReset = "upstream_reset";
// The pool's own bound refused the request before anything was sent.
inline constexpr std::string_view kUpstreamConnectionLimit = "upstream_connection_limit";

class UpstreamResponse {
 public:
  struct Impl;
  explicit UpstreamResponse(std::unique_ptr<Impl> impl);
  ~UpstreamResponse();  // returns the connection to the pool if reusable, else closes it
  UpstreamResponse(UpstreamResponse&&) noexcept;
  UpstreamResponse& operator=(UpstreamResponse&&) noexcept;

  int status() const;
  const Headers& headers() const;
  // The first Content-Type / Retry-After value, found while parsing (no header scan).
  std::string_view content_type() const;
  std::string_view retry_after() const;
  // The next piece of the (de-chunked) body: everything one read of the socket delivered (all
  // the chunks in it), without waiting for more; an empty view means the body is complete. The
  // view is valid until the next call.
  boost::asio::awaitable<Result<std::string_view>> read_some();
  // read_some() without a coroutine when its answer is at hand (body_at_hand() says whether it
  // is): the piece, the end or the error; nothing when bytes must be read first, and then the
  // caller awaits read_some().
  std::optional<Result<std::string_view>> read_some_now();
  // Whether the next read_some() can answer without waiting for the upstream (body bytes, its
  // end or an error are already in hand).
  bool body_at_hand() const;
  // Whether the whole body has been read: the next read_some() returns the empty view.
  bool complete() const;
  // The whole body, refused past `limit` bytes.
  boost::asio::awaitable<Result<std::string>> read_all(std::size_t limit);
  // The same without waiting, when the bytes already read settle it (the whole body, or an
  // error); otherwise nothing, and the body read so far is kept for read_all, which must follow.
  // An answer read whole with its head then costs no coroutine.
  std::optional<Result<std::string>> read_all_now(std::size_t limit);
  // Drops the connection now (e.g. the client went away): the upstream sees the request cancelled.
  void abort();

  // An answer that does not come from a connection (the fake upstreams of in-process tests).
  // read_some() returns `pieces` one per call; with `fail_after` set, the read after the last
  // piece fails with `fail_after` as its error code (a stream cut mid-way). The pieces from
  // index `at_hand` on are still on their way: read_some_now() and body_at_hand() do not see
  // the next one until an awaited read_some() has taken it, calling `on_arrival` with its index
  // first (a stream whose events arrive one by one).
  struct Canned {
    int status = 200;
    Headers headers;  // content-type and retry-after are read from here
    std::vector<std::string> pieces;
    std::string fail_after;
    std::size_t at_hand = static_cast<std::size_t>(-1);
    std::function<void(std::size_t)> on_arrival;
  };
  static UpstreamResponse canned(Canned answer);

 private:
  std::unique_ptr<Impl> impl_;
};

// Lets the caller abandon a request in flight, e.g. when its client went away. cancel() drops
// the upstream connection that the request is using, so that the provider sees the request
// cancelled and stops generating, and the pending send() or body read completes at once with an
// error; a send() that has no connection yet fails before sending. Single-threaded, like the
// pool; it must outlive the send() and the UpstreamResponse it is passed to.
class UpstreamCancel {
 public:
  UpstreamCancel() = default;
  UpstreamCancel(const UpstreamCancel&) = delete;
  UpstreamCancel& operator=(const UpstreamCancel&) = delete;
  ~UpstreamCancel();
  void cancel();
  bool cancelled() const { return cancelled_; }

 private:
  friend class ClientPool;
  friend class UpstreamResponse;
  bool cancelled_ = false;
  UpstreamResponse::Impl* conn_ = nullptr;  // the connection in use, while there is one
};

class ClientPool {
 public:
  static ClientPool& for_this_thread();

  boost::asio::awaitable<Result<UpstreamResponse>> send(const Endpoint& endpoint,
                                                        const OutboundRequest& request,
                                                        const UpstreamOptions& options);
  std::size_t idle_connections() const;

  struct State;
  ClientPool();
  ~ClientPool();

 private:
  std::unique_ptr<State> state_;
};

}  // namespace bw::http
