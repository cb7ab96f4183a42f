#pragma once
// The request pipeline for LLM endpoints and the small fixed routes. See pipeline.cc for the
// whole flow of one request in phase order (DESIGN.md "Life of a request").
// Thread safety: Shared is shared by all workers; its members are atomic or internally locked.
#include <atomic>
#include <boost/asio/awaitable.hpp>
#include <memory>

#include "gateway/access_log.h"
#include "gateway/runtime.h"
#include "http/server.h"

namespace bw::gateway {

struct Shared {
  std::atomic<std::shared_ptr<const Runtime>>* runtime = nullptr;
  std::unique_ptr<AccessLog> access_log;
  std::atomic<bool> draining{false};
  std::atomic<std::uint64_t> requests{0};
};

// Entry point for every request on the data-plane listener (admin=false) or the admin listener.
boost::asio::awaitable<void> handle_request(Shared& shared, http::Request& req,
                                            http::ResponseWriter& w, bool admin_listener);

}  // namespace bw::gateway
