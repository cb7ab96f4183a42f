// Phases 2 and 3: decode the client's body into one LlmRequest, and resolve the public model
// name to its group, checking that the key may use it.
#include <algorithm>

#include "gateway/phases.h"

namespace bw::gateway {

std::optional<Verdict> phase_resolve::try_now(Ctx& c, providers::Endpoint endpoint) {
  auto parsed = providers::parse_request(endpoint, c.req.body);
  if (!parsed) return parsed.error();
  c.llm = std::move(parsed.value());

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
