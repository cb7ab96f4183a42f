#pragma once
// The request pipeline. handle_request (routes.cc) is the entry point of every request on both
// listeners; run_llm (pipeline.cc) is the flow of one LLM request, phase by phase (phases.h).
// finish runs for every request that entered handle_request.
#include <boost/asio/awaitable.hpp>

#include "gateway/shared.h"
#include "http/server.h"
#include "providers/openai.h"

namespace bw::gateway {

struct Ctx;

// Entry point for every request on the data-plane listener (admin=false) or the admin listener.
boost::asio::awaitable<void> handle_request(Shared& shared, http::Request& req,
                                            http::ResponseWriter& w, bool admin_listener);

// The flow of one LLM request in phase order. Does not run finish: its caller does. Not a
// coroutine: the phases that decide at once run in the call, before the awaitable is returned.
boost::asio::awaitable<void> run_llm(Ctx& c, providers::Endpoint endpoint);

}  // namespace bw::gateway
