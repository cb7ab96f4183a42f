#pragma once
// Upstream: how forward() reaches a provider. The gateway uses the per-worker connection pools;
// tests put a fake in Shared::upstream to answer in process.
// Thread safety: send() is called from every worker at once.
#include <boost/asio/awaitable.hpp>

#include "common/result.h"
#include "gateway/runtime.h"
#include "http/client.h"

namespace bw::gateway {

class Upstream {
 public:
  virtual ~Upstream() = default;
  // Sends one attempt to `provider`; `request` (and the views in it) must stay valid until the
  // awaitable completes.
  virtual boost::asio::awaitable<Result<http::UpstreamResponse>> send(
      const Provider& provider, const http::OutboundRequest& request) = 0;
};

// The real thing: the calling worker's keep-alive pool.
class PooledUpstream final : public Upstream {
 public:
  // Returns the pool's awaitable directly: no coroutine frame of its own on the hot path.
  boost::asio::awaitable<Result<http::UpstreamResponse>> send(
      const Provider& provider, const http::OutboundRequest& request) override {
    return http::ClientPool::for_this_thread().send(provider.endpoint, request, provider.options);
  }
};

}  // namespace bw::gateway
