#pragma once
// The data plane's route table: every fixed path with its method. It also bounds the `endpoint`
// metric label (endpoint_label), so that the two lists cannot drift apart.
#include <array>
#include <string_view>

namespace bw::gateway {

struct Route {
  std::string_view path;
  std::string_view method;
};

inline constexpr std::array<Route, 11> kRoutes = {{{"/v1/chat/completions", "POST"},
                                                   {"/v1/responses", "POST"},
                                                   {"/v1/messages", "POST"},
                                                   {"/v1/messages/count_tokens", "POST"},
                                                   {"/v1/completions", "POST"},
                                                   {"/v1/embeddings", "POST"},
                                                   {"/v1/models", "GET"},
                                                   {"/healthz", "GET"},
                                                   {"/readyz", "GET"},
                                                   {"/v1/metrics/queue", "GET"},
                                                   {"/metrics", "GET"}}};

// The endpoint label: a known route, "/admin" for the admin API, or "other", so that clients
// cannot mint series by probing URLs (label cardinality stays bounded).
std::string_view endpoint_label(std::string_view path);

}  // namespace bw::gateway
