#pragma once
// parse_request's answer for the usual request body without a DOM parse: one pass that checks
// the body is JSON the parser accepts (one object, UTF-8, no key written twice in any object,
// bounded nesting) and reads on the way what parse_request reads (the model, the output cap,
// the choices, the text the provider reads, the layout the rewrite splices). Anything outside
// that shape, and every body that parse_request refuses, is left to the parse, which gives the
// errors: the two always agree where the scan answers.
// Thread safety: pure functions.
#include <cstdint>
#include <optional>
#include <string_view>

#include "providers/openai.h"

namespace bw::providers {

// The top-level fields parse_request reads, and those that carry no text the model reads (or
// are handled on their own); every other field is priced as text.
enum class TopField : std::uint8_t {
  kOther,
  kNoText,
  kModel,
  kMessages,
  kPrompt,
  kInput,
  kStream,
  kStreamOptions,
  kMaxTokens,
  kMaxCompletionTokens,
  kN,
  kBestOf,
};
TopField top_field(std::string_view key);

// The LlmRequest that parse_request_full gives for `body`, or nullopt when the body needs the
// parse: a body the parse refuses, or one that is unusual (an escaped key, an escaped model
// name or content part type, a lone surrogate escape, a number with many digits, a fraction or
// an exponent inside a value priced by its JSON, more than 32 keys in one object, deep nesting,
// a very large body).
std::optional<LlmRequest> scan_request(Endpoint endpoint, std::string_view body);
// The same into `out`, which holds what LlmRequest{} holds: true when the scan answered, false
// (and `out` then holds any part of the answer) when the body needs the parse.
bool scan_request(Endpoint endpoint, std::string_view body, LlmRequest& out);

// parse_request into `out`, which holds what LlmRequest{} holds: the usual body is scanned into
// it where it is (inline, on the request's path), any other parsed whole and moved there.
inline Result<Ok> parse_request_into(Endpoint endpoint, std::string_view body, LlmRequest& out) {
  if (scan_request(endpoint, body, out)) return Ok{};
  auto parsed = parse_request_full(endpoint, body);
  if (!parsed) return parsed.error();
  out = std::move(parsed.value());
  return Ok{};
}

}  // namespace bw::providers
