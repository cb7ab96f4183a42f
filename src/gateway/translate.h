#pragma once
// Where an inbound API meets an upstream provider type: whether the body passes through
// unchanged, the upstream body and path otherwise, the buffered answer and the stream translated
// back into the client's API, and errors in the client's API shape.
// Thread safety: pure functions; one StreamTranslator per stream.
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "api/canonical.h"
#include "api/responses.h"
#include "providers/adapter.h"

namespace bw::gateway {

struct ProviderWire {
  providers::Wire wire = providers::Wire::kOpenAI;
  std::string base_path;    // the base URL's path: "/v1", "/v1beta", "" (Azure)
  std::string api_version;  // Azure
};

// The body goes unchanged (model and output cap rewritten) when the upstream speaks the client's
// API: chat to OpenAI-compatible and Azure, Responses to OpenAI, Messages to Anthropic.
bool passthrough(api::Format inbound, providers::Wire wire);

struct UpstreamBody {
  std::string target;
  std::string body;
  std::vector<std::string> dropped;  // fields the upstream format cannot carry
  bool passthrough = false;
  api::Format upstream = api::Format::kChat;
  std::int64_t choices = 1;  // a translated request's n (Gemini: candidates in its stream)
};

// `canon` is the decoded request (decoded here on first need for a chat body). `force_translate`:
// the request was expanded by the gateway (previous_response_id), so its raw body is not enough.
Result<UpstreamBody> upstream_body(api::Format inbound, std::string_view raw,
                                   std::optional<api::Request>& canon, const ProviderWire& pw,
                                   std::string_view model, bool stream, std::int64_t max_tokens,
                                   std::int64_t default_max_tokens, bool force_translate);

// The same-format rewrite of a Responses or Messages body: model, the output cap (max_key), and
// gateway-only fields removed.
std::string rewrite_native(std::string_view body, std::string_view model, std::string_view max_key,
                           std::int64_t max_tokens);

struct ClientAnswer {
  std::string body;
  api::Usage usage;
  std::optional<api::Response> response;  // when translated
  std::string upstream_id;                // a Responses body passed through: the provider's id
};
Result<ClientAnswer> translate_response(api::Format inbound, const UpstreamBody& call,
                                        std::string_view body, std::string_view public_model,
                                        const api::ResponseMeta* meta);

// A whole (buffered) answer in wire format `f`, decoded into the canonical response. Usage that
// counts no output for an answer with output is unreadable (api::check_output_counted).
Result<api::Response> decode_answer(api::Format f, std::string_view body);

// Usage of a same-format answer of the Responses or Messages API.
api::Usage native_usage(api::Format f, std::string_view body);

// An error in the client's API shape: Anthropic's for Messages, OpenAI's otherwise.
std::string error_body(api::Format inbound, const Error& e, std::string_view request_id = {});

// The encoder of the client's stream format (chat chunks, Responses events, Messages events);
// `responses` receives the Responses encoder, whose accumulated answer feeds the store.
std::unique_ptr<api::StreamEncoder> client_stream_encoder(api::Format inbound,
                                                          std::string public_model,
                                                          bool include_usage,
                                                          const api::ResponseMeta* meta,
                                                          api::ResponsesStreamEncoder** responses);

// A buffered answer in the client's own format, replayed as that API's stream (a streamed request
// served from a cached buffered answer). nullopt if the body does not decode.
std::optional<std::string> stream_of_answer(api::Format inbound, std::string_view body,
                                            std::string public_model, bool include_usage,
                                            const api::ResponseMeta* meta);

// A translated (or same-format non-chat) stream, one upstream event at a time.
class StreamTranslator {
 public:
  StreamTranslator(api::Format inbound, const UpstreamBody& call, std::string public_model,
                   bool include_usage, const api::ResponseMeta* meta);
  // One complete SSE event (as the splitter yields it); appends what the client gets.
  void feed(std::string_view event, std::string& out);
  void finish(std::string& out);
  void fail(std::string_view type, std::string_view message, std::string& out);
  bool done() const;
  const api::Usage& usage() const { return usage_; }
  // Characters generated so far (text and tool-call arguments), and text deltas: an estimate
  // of the output when usage is missing or partial.
  std::size_t text_chars() const { return text_chars_; }
  std::size_t text_chunks() const { return text_chunks_; }
  // The stream carried generated output (text that is not empty, a tool call).
  bool generated() const { return generated_; }
  // The streamed answer of a Responses client (for the store), else nullptr.
  const api::Response* accumulated() const;
  // A Responses stream passed through: the provider's response id, once an event named it.
  const std::string& upstream_id() const { return upstream_id_; }

 private:
  api::Format inbound_;
  bool passthrough_;
  std::unique_ptr<api::StreamDecoder> decoder_;
  std::unique_ptr<api::StreamEncoder> encoder_;
  api::ResponsesStreamEncoder* responses_ = nullptr;
  std::vector<api::StreamEvent> events_;
  std::string scratch_;
  api::Usage usage_;
  std::size_t text_chars_ = 0;
  std::size_t text_chunks_ = 0;
  bool generated_ = false;
  bool failed_ = false;
  std::string upstream_id_;
};

}  // namespace bw::gateway
