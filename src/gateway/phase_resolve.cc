// Phases 2 and 3: decode the client's body into one LlmRequest, and resolve the public model
// name to its group, checking that the key may use it.
#include <algorithm>
#include <cstring>

#include "api/chat.h"
#include "api/messages.h"
#include "api/response_store.h"
#include "api/responses.h"
#include "gateway/phases.h"
#include "providers/request_scan.h"

namespace bw::gateway {

namespace {

// Whether `body` holds "image_url" anywhere. Searched from its '_' (rare in a chat request),
// not its 'i' (every few bytes of English text, each a false start of the plain search).
bool mentions_image_url(std::string_view body) {
  constexpr std::string_view kWord = "image_url";
  constexpr std::size_t kUnderscore = 5;  // kWord[5] == '_'
  const char* p = body.data();
  const char* const end = body.data() + body.size();
  while (p < end) {
    const void* hit = std::memchr(p, '_', static_cast<std::size_t>(end - p));
    if (!hit) return false;
    const char* u = static_cast<const char*>(hit);
    if (u - body.data() >= static_cast<std::ptrdiff_t>(kUnderscore) &&
        end - u >= static_cast<std::ptrdiff_t>(kWord.size() - kUnderscore) &&
        std::string_view(u - kUnderscore, kWord.size()) == kWord) {
      return true;
    }
    p = u + 1;
  }
  return false;
}

// The stored turns of previous_response_id go before the request's own input.
void apply_history(Ctx& c, api::Request& r, api::StoreLookup found,
                   api::StoredConversation& stored) {
  if (found == api::StoreLookup::kUnavailable) c.history_unavailable = true;
  if (found != api::StoreLookup::kFound) return;
  if (stored.upstream) {  // the provider holds the turns: the id is passed on as it is
    c.history_upstream = true;
    return;
  }
  auto& history = stored.conversation;
  // The stored turns (and a stored system prompt the request adopts) are sent and billed too.
  const auto count = [&r](const api::Part& p) {
    r.text_chars += p.text.size() + p.arguments.size();
    if (p.kind == api::Part::Kind::kImage) ++r.images;
  };
  for (const auto& m : history) {
    for (const auto& p : m.parts) count(p);
  }
  for (auto& m : r.messages) history.push_back(std::move(m));
  r.messages = std::move(history);
  if (r.system.empty()) {
    r.system = std::move(stored.system);
    for (const auto& p : r.system) count(p);
  }
  c.history_expanded = true;
}

// What the limits, the cost guard and the access log read of a request (LlmRequest) is filled
// from the canonical request.
Verdict finish_canonical(Ctx& c, api::Request r) {
  if (c.inbound == api::Format::kResponses) {
    if (auto linked = api::link_tool_results(r); !linked) return linked.error();
    c.response_meta.mut() = api::response_meta(r, r.model);
  }
  c.llm = providers::LlmRequest{};
  c.llm.endpoint = providers::Endpoint::kChat;
  c.llm.model = r.model;
  c.llm.stream = r.stream;
  c.llm.client_wants_usage = true;
  c.llm.max_tokens = r.max_tokens;
  // Tool definitions, schemas and passed-through fields are billed as input too.
  c.llm.prompt_chars = r.text_chars + r.other_chars;
  // Each image at the model's bound, as for a chat request (resolve_group sets it).
  c.llm.images = static_cast<std::int64_t>(r.images);
  c.llm.message_count = r.messages.size() + (r.system.empty() ? 0 : 1);
  c.canon = std::move(r);
  return Ok{};
}

// Phase 3: the model group, and whether the key may use it.
Verdict resolve_group(Ctx& c) {
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
  phase_resolve::apply_image_bound(c);
  if (c.sh.scaling) c.sh.scaling->note_arrival(g->cfg->name);
  return Ok{};
}

}  // namespace

std::optional<Verdict> phase_resolve::try_now(Ctx& c, providers::Endpoint endpoint) {
  if (c.inbound != api::Format::kChat) {
    // Responses and Messages bodies: decoded into the canonical request.
    Result<api::Request> decoded = c.inbound == api::Format::kMessages
                                       ? api::decode_messages_request(c.req.body)
                                       : api::decode_responses_request(c.req.body);
    if (!decoded) return decoded.error();
    auto& r = decoded.value();
    if (!r.previous_response_id.empty() && c.sh.responses) {
      api::StoredConversation stored;
      auto found =
          c.sh.responses->try_get(r.previous_response_id, response_owner(c), stored, c.now());
      if (!found) {
        // The store must be waited for: run() looks it up and finishes the phase.
        c.canon = std::move(r);
        return std::nullopt;
      }
      apply_history(c, r, *found, stored);
    }
    if (auto v = finish_canonical(c, std::move(r)); !v) return v;
  } else {
    c.llm = providers::LlmRequest{};
    if (auto ok = providers::parse_request_into(endpoint, c.req.body, c.llm); !ok) {
      return ok.error();
    }
    // Image URLs are checked before anything is sent, also on the passthrough path (the fast
    // parse does not read content parts).
    if (endpoint == providers::Endpoint::kChat && mentions_image_url(c.req.body)) {
      auto decoded = api::decode_chat_request(c.req.body);
      if (!decoded) return decoded.error();
      c.canon = std::move(decoded.value());
    }
  }
  return resolve_group(c);
}

void phase_resolve::apply_image_bound(Ctx& c) {
  const auto prio = static_cast<std::size_t>(std::clamp(c.priority.priority, 0, 2));
  c.llm.image_tokens_each = c.group->answers[prio].image_tokens;
}

boost::asio::awaitable<Verdict> phase_resolve::run(Ctx& c, providers::Endpoint) {
  api::Request r = std::move(*c.canon);
  c.canon.reset();
  api::StoredConversation stored;
  std::string id = r.previous_response_id;
  std::string owner = response_owner(c);
  const auto found = co_await c.sh.responses->get(std::move(id), std::move(owner), stored, c.now());
  apply_history(c, r, found, stored);
  if (auto v = finish_canonical(c, std::move(r)); !v) co_return v;
  co_return resolve_group(c);
}

}  // namespace bw::gateway
