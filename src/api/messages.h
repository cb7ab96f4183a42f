#pragma once
// The Anthropic Messages format <-> the canonical model. Both sides use it: inbound
// (/v1/messages, /v1/messages/count_tokens) and upstream (providers of type anthropic).
// Thread safety: pure functions; one stream codec per stream.
#include <memory>
#include <string>
#include <vector>

#include "api/canonical.h"

namespace bw::api {

// count_tokens bodies carry no max_tokens; /v1/messages requires it.
Result<Request> decode_messages_request(std::string_view body, bool require_max_tokens = true);
// `max_tokens` is always sent (Anthropic requires it): the cost guard's cap, else the request's,
// else `default_max_tokens`.
std::string encode_messages_request(const Request& r, std::string_view model,
                                    std::int64_t max_tokens, std::int64_t default_max_tokens,
                                    std::vector<std::string>& dropped);
Result<Response> decode_messages_response(std::string_view body);
std::string encode_messages_response(const Response& r, std::string_view model);
Usage read_messages_usage(std::string_view usage_json);

std::unique_ptr<StreamDecoder> make_messages_stream_decoder();
std::unique_ptr<StreamEncoder> make_messages_stream_encoder(std::string model);

// {"type":"error","error":{"type":...,"message":...}} with the type Anthropic uses for `status`.
std::string_view anthropic_error_type(int status);
// With a request id, the body carries it as Anthropic's own errors do ("request_id").
std::string anthropic_error_body(int status, std::string_view message,
                                 std::string_view request_id = {});

// The input token count for count_tokens, by the same estimate as the gateway's limits.
std::int64_t count_input_tokens(const Request& r);

}  // namespace bw::api
