// Phases 2 and 3: decode the client's body into one LlmRequest, and resolve the public model
// name to its group, checking that the key may use it.
#include <algorithm>

#include "api/chat.h"
#include "api/messages.h"
#include "api/responses.h"
#include "gateway/phases.h"

namespace bw::gateway {

namespace {

// Responses and Messages bodies: decoded into the canonical request; what the limits, the cost
// guard and the access log read of a request (LlmRequest) is filled from it.
Verdict decode_canonical(Ctx& c) {
  Result<api::Request> decoded = c.inbound == api::Format::kMessages
                                     ? api::decode_messages_request(c.req.body)
                                     : api::decode_responses_request(c.req.body);
  if (!decoded) return decoded.error();
  auto& r = decoded.value();
  if (!r.previous_response_id.empty() && c.sh.responses) {
    std::vector<api::Message> history;
    std::vector<api::Part> system;
    if (c.sh.responses->get(r.previous_response_id, history, system, c.now())) {
      for (auto& m : r.messages) history.push_back(std::move(m));
      r.messages = std::move(history);
      if (r.system.empty()) r.system = std::move(system);
      c.history_expanded = true;
      for (const auto& m : r.messages) {
        for (const auto& p : m.parts) r.text_chars += p.text.size() + p.arguments.size();
      }
    }
  }
  if (c.inbound == api::Format::kResponses) {
    if (auto linked = api::link_tool_results(r); !linked) return linked.error();
    c.response_meta = api::response_meta(r, r.model);
  }
  c.llm = providers::LlmRequest{};
  c.llm.endpoint = providers::Endpoint::kChat;
  c.llm.model = r.model;
  c.llm.stream = r.stream;
  c.llm.client_wants_usage = true;
  c.llm.max_tokens = r.max_tokens;
  c.llm.prompt_chars = r.text_chars;
  c.llm.message_count = r.messages.size() + (r.system.empty() ? 0 : 1);
  c.canon = std::move(r);
  return Ok{};
}

}  // namespace

std::optional<Verdict> phase_resolve::try_now(Ctx& c, providers::Endpoint endpoint) {
  if (c.inbound != api::Format::kChat) {
    if (auto v = decode_canonical(c); !v) return v;
  } else {
    auto parsed = providers::parse_request(endpoint, c.req.body);
    if (!parsed) return parsed.error();
    c.llm = std::move(parsed.value());
    // Image URLs are checked before anything is sent, also on the passthrough path (the fast
    // parse does not read content parts).
    if (endpoint == providers::Endpoint::kChat &&
        c.req.body.find("image_url") != std::string::npos) {
      auto decoded = api::decode_chat_request(c.req.body);
      if (!decoded) return decoded.error();
      c.canon = std::move(decoded.value());
    }
  }

  const std::string& model = c.llm.model;
  const ModelGroup* g = c.rt->group(model);
  if (!g) {
    return errors::make(errors::kModelNotFound,
                        "The model '" + model + "' does not exist or you do not have access to it.",
                        "model");
  }
  const auto& own = c.key->cfg->allowed_models;
  const bool allowed = own.empty() ? (!c.plan || c.plan->allows_model(model))
                                   : std::find(own.begin(), own.end(), model) != own.end();
  if (!allowed) {
    return errors::make(errors::kModelNotAllowed,
                        "This API key may not use the model '" + model + "'.", "model");
  }
  c.group = g;
  c.route_model = model;
  if (c.sh.scaling) c.sh.scaling->note_arrival(g->cfg->name);
  return Ok{};
}

}  // namespace bw::gateway
