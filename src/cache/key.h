#pragma once
// The exact-cache key: a SHA-256 over the scope, the public model, the inbound API, whether the
// answer is streamed, and a canonical form of the request body. The canonical form does not
// depend on key order or whitespace (objects are written with sorted keys, numbers normalised);
// fields that do not change the answer (model, which is hashed apart, stream, stream_options,
// user, metadata, store) are left out. Everything else is in: messages or input, tools,
// response_format, sampling parameters, n, seed, max_tokens.
// Thread safety: pure functions (the JSON parser is thread-local).
#include <optional>
#include <string>
#include <string_view>

#include "common/result.h"

namespace bw::cache {

enum class Scope { kTenant, kKey, kGlobal };
std::optional<Scope> parse_scope(std::string_view s);
std::string_view to_string(Scope s);

// The scope's part of the key: "t:<tenant>", "k:<key>" or "g".
std::string scope_id(Scope s, std::string_view tenant, std::string_view key_name);

// The canonical JSON of `body` without the ignored top-level fields; with `without_prompt`, the
// prompt (messages, input, prompt) is left out too (the semantic cache's "same parameters").
// Errors: the body is not a JSON object.
Result<std::string> canonical_body(std::string_view body, bool without_prompt = false);

struct KeyParts {
  std::string_view scope;  // scope_id()
  std::string_view model;  // the public model name
  std::string_view api;    // the inbound endpoint path, e.g. /v1/chat/completions
  bool stream = false;
};
// Hex SHA-256 of the parts and the canonical body.
std::string make_key(const KeyParts& parts, std::string_view canonical);

// What a semantic lookup embeds: the text of messages (role: content, one per line), or of
// input / prompt. Empty when the request has no text prompt (then it is not semantic-eligible).
std::string prompt_text(std::string_view body);

// Whether a request is deterministic enough for `eligibility: deterministic`: temperature 0, or
// a seed. Embeddings are always deterministic.
bool deterministic(std::string_view body, bool embeddings);

}  // namespace bw::cache
