#pragma once
// The OpenAI Responses API <-> the canonical model: /v1/responses translated to chat completions
// (and to the other providers), its typed stream events, and the store behind
// previous_response_id. OpenAI upstreams get the body unchanged (passthrough).
// Thread safety: pure functions and per-stream codecs; ResponseStore is internally locked.
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "api/canonical.h"
#include "common/clock.h"

namespace bw::api {

Result<Request> decode_responses_request(std::string_view body);

// What a response object echoes of its request.
struct ResponseMeta {
  std::string id;  // "resp_..."
  std::string model;
  std::int64_t created_at = 0;
  std::string instructions;
  std::string previous_response_id;
  std::int64_t max_output_tokens = 0;
  bool store = true;
  std::optional<double> temperature;
  std::optional<double> top_p;
  bool parallel_tool_calls = true;
};
ResponseMeta response_meta(const Request& r, std::string_view model);

std::string encode_responses_response(const Response& r, const ResponseMeta& meta);
Result<Response> decode_responses_response(std::string_view body);

class ResponsesStreamEncoder final : public StreamEncoder {
 public:
  explicit ResponsesStreamEncoder(ResponseMeta meta);
  void on_event(const StreamEvent& e, std::string& out) override;
  void finish(std::string& out) override;
  void fail(std::string_view type, std::string_view message, std::string& out) override;
  // What was streamed so far, as one response (for the store).
  const Response& accumulated() const { return acc_; }

 private:
  void emit(std::string& out, std::string_view type, std::string body_fields);
  void start(std::string& out);
  void close_item(std::string& out);
  std::string object(std::string_view status) const;

  ResponseMeta meta_;
  Response acc_;
  std::int64_t seq_ = 0;
  bool started_ = false;
  int open_kind_ = 0;  // 0 none, 1 message, 2 function_call
  int open_tool_ = -1;
  std::string item_id_;
  std::size_t output_index_ = 0;
  std::size_t open_part_ = 0;  // index in acc_.content of the open item
};

// Upstream OpenAI Responses stream (passthrough): usage and text counting.
std::unique_ptr<StreamDecoder> make_responses_stream_decoder();

// previous_response_id: the conversation so far (input and output) of stored responses, bounded
// in count and kept for a TTL. In-process; each replica has its own.
class ResponseStore {
 public:
  ResponseStore(std::size_t max_entries, Nanos ttl) : max_(max_entries), ttl_(ttl) {}
  void put(const std::string& id, std::vector<Message> conversation, std::vector<Part> system,
           Nanos now);
  // False when unknown or expired.
  bool get(const std::string& id, std::vector<Message>& conversation, std::vector<Part>& system,
           Nanos now);
  std::size_t size() const;

 private:
  struct Entry {
    std::vector<Message> conversation;
    std::vector<Part> system;
    Nanos expires = 0;
  };
  mutable std::mutex mu_;
  std::unordered_map<std::string, Entry> entries_;
  std::deque<std::string> order_;
  std::size_t max_;
  Nanos ttl_;
};

// The conversation a stored response continues with: the request's messages and the answer.
std::vector<Message> conversation_after(const Request& r, const Response& answer);

}  // namespace bw::api
