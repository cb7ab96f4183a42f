#pragma once
// Wire format of the OpenAI chat completions API: request serialisation, response/chunk/error
// parsing and an incremental Server-Sent Events parser. Pure functions; SseParser instances are
// not thread-safe.
#include <cstddef>
#include <functional>
#include <string>
#include <string_view>

#include "bellwether/types.h"

namespace bellwether {

// `include_usage` adds stream_options.include_usage to a streamed request (ClientConfig::
// include_stream_usage); it is ignored when `stream` is false.
std::string serialize_chat_request(const ChatRequest& request, const std::string& model,
                                   bool stream, bool include_usage = true);
Result<ChatResponse> parse_chat_response(std::string_view body);
// One `data:` payload of a stream (not "[DONE]").
Result<ChatChunk> parse_chat_chunk(std::string_view data);
// Builds a typed error from a non-2xx response; tolerates bodies that are not OpenAI JSON.
ClientError parse_error_response(int status, std::string_view body);
ErrorKind error_kind_for_status(int status);

// Reads x-ratelimit-* and Retry-After; `header` returns "" for absent headers.
RateLimitInfo parse_rate_limit_headers(const std::function<std::string(std::string_view)>& header);

// Incremental SSE parser (https://html.spec.whatwg.org/multipage/server-sent-events.html): bytes
// may arrive split anywhere, including inside "\r\n". Each complete event's data (multi-line data
// joined with '\n') is passed to the callback. Bounded: an event larger than max_event_bytes is a
// protocol error.
class SseParser {
 public:
  // Return false from the callback to stop parsing.
  using EventFn = std::function<bool(std::string_view data)>;
  explicit SseParser(std::size_t max_event_bytes = 1 << 20) : max_event_bytes_(max_event_bytes) {}
  enum class Status { kOk, kStopped, kTooLarge };
  Status feed(std::string_view bytes, const EventFn& on_event);

 private:
  Status line(std::string_view line, const EventFn& on_event);
  std::size_t max_event_bytes_;
  std::string line_;
  std::string data_;
  bool has_data_ = false;
  bool skip_lf_ = false;
};

}  // namespace bellwether
