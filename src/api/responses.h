#pragma once
// The OpenAI Responses API <-> the canonical model: /v1/responses translated to chat completions
// (and to the other providers), its typed stream events, and the store behind
// previous_response_id. OpenAI upstreams get the body unchanged (passthrough).
// Thread safety: pure functions and per-stream codecs; MemoryResponseStore is internally locked.
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <utility>
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

// previous_response_id: what a stored response holds, the conversation so far (its input and its
// answer), the system parts a continuation inherits, and its owner: the only caller that may read
// it. The owner is an opaque, non-empty string chosen by the gateway (its tenant, or its key for a
// key without one); a lookup by anyone else reads exactly as an unknown id.
//
// `upstream`: a marker, not a conversation. The response passed through to an `openai` provider,
// which stores it under the gateway's provider key; the gateway keeps only whose it is (empty
// conversation and system), so that only its owner's previous_response_id is passed on.
struct StoredConversation {
  std::vector<Message> conversation;
  std::vector<Part> system;
  std::string owner;
  bool upstream = false;
};

// The JSON a stored conversation is kept as outside the process (the Redis store's value):
// {"v":2,"owner":"..","system":[parts],"conversation":[{"role":..,"parts":[..]}]}, each part with
// only its non-empty fields. A marker is {"v":3,..,"upstream":true}: version 3 only for markers,
// so that a replica that reads version 2 only takes a marker for an unknown id, never for an
// empty conversation of its own.
std::string encode_stored_conversation(const StoredConversation& s);
// False for anything that is not such a document (a foreign or damaged value reads as a miss).
// That includes a version 1 value (written before entries had an owner): whose it is cannot be
// known, so nobody may continue it.
bool decode_stored_conversation(std::string_view json, StoredConversation& out);
// The bytes an entry's strings hold: the size bound of the in-process store.
std::size_t stored_size(const StoredConversation& s);

// The in-process store: bounded in count (oldest first out) and in bytes per entry, each entry
// kept for a TTL. Pure: `now` is passed in. Each replica has its own.
class MemoryResponseStore {
 public:
  MemoryResponseStore(std::size_t max_entries, Nanos ttl, std::size_t max_entry_bytes = 1 << 20)
      : max_(max_entries), ttl_(ttl), max_entry_bytes_(max_entry_bytes) {}
  // False (nothing stored) when the entry is larger than max_entry_bytes, has no owner, or the
  // bound is 0.
  bool put(const std::string& id, StoredConversation entry, Nanos now);
  // False when unknown, expired, or owned by someone other than `owner` (an empty owner matches
  // nothing); `out` is only written when found.
  bool get(const std::string& id, std::string_view owner, StoredConversation& out, Nanos now);
  std::size_t size() const;

 private:
  struct Entry {
    StoredConversation value;
    Nanos expires = 0;
    std::uint64_t seq = 0;  // matches its order_ slot; an id stored again gets a new one
  };
  mutable std::mutex mu_;
  std::unordered_map<std::string, Entry> entries_;
  std::deque<std::pair<std::string, std::uint64_t>> order_;
  std::uint64_t next_seq_ = 0;
  std::size_t max_;
  Nanos ttl_;
  std::size_t max_entry_bytes_;
};

// The conversation a stored response continues with: the request's messages and the answer.
std::vector<Message> conversation_after(const Request& r, const Response& answer);

}  // namespace bw::api
