#pragma once
// The Gemini generateContent format <-> the canonical model (providers of type gemini):
// systemInstruction, contents and parts, generationConfig, function declarations and calls,
// usageMetadata (cachedContentTokenCount included). The simulator uses the response side too.
// Thread safety: pure functions; one stream decoder per stream.
#include <memory>
#include <string>
#include <vector>

#include "api/canonical.h"

namespace bw::providers {

std::string encode_gemini_request(const api::Request& r, std::int64_t max_tokens,
                                  std::vector<std::string>& dropped);
Result<api::Response> decode_gemini_response(std::string_view body);
std::string encode_gemini_response(const api::Response& r, std::string_view model);
// One chunk of :streamGenerateContent?alt=sse (the same shape as a whole response), with
// `candidates` candidates of the same parts (indexes 0 to candidates - 1).
std::string encode_gemini_chunk(std::string_view text, const api::Response* final_part,
                                std::string_view model, std::int64_t candidates = 1);
// `candidates`: the request's candidateCount. Each candidate's events carry its index as their
// choice; the stream is done once every candidate has finished.
std::unique_ptr<api::StreamDecoder> make_gemini_stream_decoder(std::int64_t candidates = 1);

// The request path under the base URL: /models/{model}:generateContent or
// :streamGenerateContent?alt=sse.
std::string gemini_target(std::string_view base_path, std::string_view model, bool stream);

}  // namespace bw::providers
