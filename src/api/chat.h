#pragma once
// OpenAI chat completions <-> the canonical model: inbound (/v1/chat/completions translated to
// another provider) and upstream (OpenAI, Azure, the simulator, for the other inbound APIs).
// The passthrough fast path (chat in, chat upstream) never comes here.
// Thread safety: pure functions; one stream codec per stream.
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "api/canonical.h"

namespace simdjson::dom {
class element;
}

namespace bw::api {

Result<Request> decode_chat_request(std::string_view body);
// The upstream body. `dropped` receives what the format cannot carry.
std::string encode_chat_request(const Request& r, std::string_view model, std::int64_t max_tokens,
                                std::vector<std::string>& dropped);
Result<Response> decode_chat_response(std::string_view body);
std::string encode_chat_response(const Response& r, std::string_view model);
Usage read_chat_usage(std::string_view usage_json);
// Reads one of OpenAI's usage objects (chat: prompt/completion, Responses: input/output) into
// `out` (the last of duplicate members): both counts must be there as counts, or the usage is
// unreadable (canonical.h); cached input and reasoning sit in the details objects.
struct OpenAiUsageNames {
  std::string_view input, output, input_details, output_details;
  bool output_always = true;  // false for embeddings, whose usage has no output count
};
inline constexpr OpenAiUsageNames kChatUsageNames{.input = "prompt_tokens",
                                                  .output = "completion_tokens",
                                                  .input_details = "prompt_tokens_details",
                                                  .output_details = "completion_tokens_details"};
void read_openai_usage(simdjson::dom::element usage, const OpenAiUsageNames& names, Usage& out);
// read_openai_usage with kChatUsageNames. Billing reads it too.
void read_chat_usage(simdjson::dom::element usage, Usage& out);

std::unique_ptr<StreamDecoder> make_chat_stream_decoder();
// include_usage: the client asked for the usage chunk (stream_options.include_usage).
std::unique_ptr<StreamEncoder> make_chat_stream_encoder(std::string model, bool include_usage);

// Writes one SSE event "data: <json>\n\n" (and "event: <name>\n" first when name is given).
void append_sse(std::string& out, std::string_view name, std::string_view json);

}  // namespace bw::api
