#pragma once
// The OpenAI wire format: request validation and rewriting (public model name → provider model
// id, stream_options.include_usage), and usage extraction from buffered bodies and SSE events.
// Every OpenAI-compatible provider (OpenAI, DeepSeek, vLLM, the simulator) goes through here.
// Thread safety: pure functions; parsers are thread-local.
#include <cstdint>
#include <string>
#include <string_view>

#include "api/canonical.h"
#include "common/result.h"

namespace bw::providers {

enum class Endpoint { kChat, kCompletions, kEmbeddings };

// The canonical usage (cache reads and writes, reasoning tokens), shared by every adapter.
using Usage = api::Usage;

// What the gateway needs to know about a request, read once from its JSON body.
struct LlmRequest {
  Endpoint endpoint = Endpoint::kChat;
  std::string model;
  bool stream = false;
  bool client_wants_usage = false;  // stream_options.include_usage was true
  std::int64_t max_tokens = 0;      // 0 = not set
  std::size_t prompt_chars = 0;     // characters of text in messages / prompt / input
  std::size_t message_count = 0;
};

inline constexpr std::size_t kMaxJsonDepth = 64;

// Validates the body (JSON object, UTF-8, depth, field types) and extracts the request. Errors are
// OpenAI-style 400s that name the offending parameter.
Result<LlmRequest> parse_request(Endpoint endpoint, const std::string& body);

// Rewrites the body for the upstream: `model` becomes `provider_model` (escaped), and for a stream
// stream_options.include_usage is forced on so usage can always be counted. With max_tokens > 0
// the output cap is set to it (replacing max_tokens / max_completion_tokens, or adding max_tokens),
// so that the cost guard's worst case holds. Other fields are copied as they are.
// `body` must be one that parse_request accepted: the common case is rewritten by splicing the
// body's bytes (no second parse), which assumes valid JSON.
Result<std::string> rewrite_request(const std::string& body, std::string_view provider_model,
                                    bool force_include_usage, std::int64_t max_tokens);

// Usage from a buffered response body; absent usage leaves present=false.
Usage extract_usage(std::string_view body);

// One SSE event's data payload. Reports usage if the event carries it, whether the event is the
// usage-only chunk (empty choices) that a client who did not ask for usage must not see, and the
// number of characters of generated text in it.
struct ChunkInfo {
  Usage usage;
  bool usage_only = false;
  bool done = false;
  std::size_t text_chars = 0;
  bool has_text = false;
};
ChunkInfo inspect_chunk(std::string_view data);

// The conservative prompt token estimate used before the provider reports real usage.
std::int64_t estimate_prompt_tokens(const LlmRequest& req);

}  // namespace bw::providers
