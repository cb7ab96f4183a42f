#pragma once
// The request pipeline for LLM endpoints and the small fixed routes. See pipeline.cc for the
// whole flow of one request in phase order (DESIGN.md "Life of a request").
// Thread safety: Shared is shared by all workers; its members are atomic or internally locked.
#include <atomic>
#include <boost/asio/awaitable.hpp>
#include <memory>

#include "gateway/access_log.h"
#include "gateway/runtime.h"
#include <boost/asio/thread_pool.hpp>

#include "admission/admission_controller.h"
#include "http/server.h"
#include "limits/limiter.h"
#include "limits/memory_limit_store.h"
#include "routing/dead_letter.h"
#include "routing/router.h"

namespace bw::gateway {

// State that outlives config reloads: limit buckets, breaker state, the access log.
struct Shared {
  std::atomic<std::shared_ptr<const Runtime>>* runtime = nullptr;
  std::unique_ptr<AccessLog> access_log;
  std::atomic<bool> draining{false};
  std::atomic<std::uint64_t> requests{0};
  std::shared_ptr<limits::MemoryLimitStore> limit_store;
  std::unique_ptr<limits::Limiter> limiter;
  routing::Router router;
  std::unique_ptr<routing::DeadLetterQueue> dead_letters;
  std::unique_ptr<admission::AdmissionController> admission;
  // Blocking work (SQLite) runs here, never on a worker's event loop.
  std::unique_ptr<boost::asio::thread_pool> blocking{std::make_unique<boost::asio::thread_pool>(1)};
  std::atomic<std::uint64_t> shadow_rejections{0};
};

// Applies a (new) config to the long-lived state: limits and routing.
Result<Ok> apply_config(Shared& shared, const config::Config& cfg);

// Entry point for every request on the data-plane listener (admin=false) or the admin listener.
boost::asio::awaitable<void> handle_request(Shared& shared, http::Request& req,
                                            http::ResponseWriter& w, bool admin_listener);

}  // namespace bw::gateway
