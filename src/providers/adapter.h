#pragma once
// What differs between upstream providers beyond the body format: the wire format each provider
// type speaks, its error bodies, and its rate-limit headers, read into one provider-neutral
// struct (the capacity a provider reports for a key).
// Thread safety: pure functions.
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>

#include "api/canonical.h"
#include "common/result.h"

namespace bw::providers {

// Provider types: openai (and every OpenAI-compatible server), azure (Azure OpenAI deployments),
// anthropic, gemini.
enum class Wire { kOpenAI, kAzure, kAnthropic, kGemini };
std::string_view to_string(Wire w);
bool parse_wire(std::string_view s, Wire& out);
// The body format of a provider type.
api::Format format_of(Wire w);

// The provider's rate-limit state as its last answer reported it; -1 = not reported.
struct RateLimitInfo {
  std::int64_t request_limit = -1;
  std::int64_t requests_remaining = -1;
  double requests_reset_s = -1;  // seconds until the request window is full again
  std::int64_t token_limit = -1;
  std::int64_t tokens_remaining = -1;
  double tokens_reset_s = -1;
  std::int64_t input_token_limit = -1;  // Anthropic reports input and output tokens apart
  std::int64_t input_tokens_remaining = -1;
  std::int64_t output_token_limit = -1;
  std::int64_t output_tokens_remaining = -1;
  double retry_after_s = -1;  // Retry-After, or Gemini's RetryInfo.retryDelay on a 429
  bool present() const {
    return request_limit >= 0 || requests_remaining >= 0 || token_limit >= 0 ||
           tokens_remaining >= 0 || input_tokens_remaining >= 0 || retry_after_s >= 0;
  }
};

using HeaderLookup = std::function<std::string_view(std::string_view name)>;
// `body` is read only for a 429 (Gemini puts its retry delay there); `now_unix_ms` converts
// Anthropic's RFC 3339 reset times.
RateLimitInfo parse_rate_limits(Wire w, const HeaderLookup& header, int status,
                                std::string_view body, std::int64_t now_unix_ms);

// "1s", "6m0s", "20ms", "1h2m3.5s" (OpenAI's reset format) -> seconds; -1 when unreadable.
double parse_go_duration(std::string_view s);
// "2026-12-04T23:00:05Z" -> unix milliseconds; -1 when unreadable.
std::int64_t parse_rfc3339_ms(std::string_view s);

// A provider's error answer as the gateway's Error: the provider's message, its status, and the
// OpenAI error type for that status (the client codec reshapes it into its own API's shape).
Error upstream_error(Wire w, int status, std::string_view body);

}  // namespace bw::providers
