#pragma once
// The OpenAI wire format: request validation and rewriting (public model name → provider model
// id, stream_options.include_usage), and usage extraction from buffered bodies and SSE events.
// Every OpenAI-compatible provider (OpenAI, DeepSeek, vLLM, the simulator) goes through here.
// Thread safety: pure functions; parsers are thread-local.
#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "api/canonical.h"
#include "common/result.h"

namespace bw::providers {

enum class Endpoint { kChat, kCompletions, kEmbeddings };

// The canonical usage (cache reads and writes, reasoning tokens), shared by every adapter.
using Usage = api::Usage;

// Where the top-level members that rewrite_request replaces sit in a body, recorded by
// parse_request from the parse it makes anyway (simdjson's structural index), so that the
// rewrite splices the body without scanning it a second time. Offsets into that body.
struct BodyLayout {
  struct Span {
    std::uint32_t begin = 0;
    std::uint32_t end = 0;
  };
  bool recorded = false;        // false: rewrite_request scans the body itself
  bool any_member = false;      // the object is not empty
  bool stream_options = false;  // it has a top-level stream_options member
  bool escaped_key = false;     // a top-level key holds an escape (rewritten via the DOM)
  std::uint32_t size = 0;       // of the body it describes
  std::uint32_t close = 0;      // its closing brace
  std::optional<Span> model, max_tokens, max_completion_tokens;  // value spans
};

// What the gateway needs to know about a request, read once from its JSON body.
struct LlmRequest {
  Endpoint endpoint = Endpoint::kChat;
  std::string model;
  bool stream = false;
  bool client_wants_usage = false;  // stream_options.include_usage was true
  std::int64_t max_tokens = 0;      // 0 = not set
  // Bytes of every text the provider reads: message contents and the other message fields
  // (tool calls, tool results, names), tools/functions and their schemas, response_format,
  // tool_choice, prediction and any other structured top-level field (counted as their JSON).
  std::size_t prompt_chars = 0;
  std::size_t message_count = 0;
  std::int64_t images = 0;  // image parts
  // The input tokens each image is estimated at: the largest image bound of the models that may
  // answer (cost::image_token_bound), set once the model group is known.
  std::int64_t image_tokens_each = api::kImageMaxTokens;
  // Completions the provider generates and bills: n (chat), max(n, best_of) (completions).
  std::int64_t choices = 1;
  BodyLayout layout;  // parse_request's; used by rewrite_request
};

// An input image counts as the most one image is billed by the model (LlmRequest::
// image_tokens_each; api::kImageMaxTokens until the model is known), whatever its "detail": a
// chat request may be translated to a provider that ignores OpenAI's "detail".
inline constexpr std::int64_t kImageMaxTokens = api::kImageMaxTokens;
// Upper bound on n / best_of (OpenAI's own limit is 128).
inline constexpr std::int64_t kMaxChoices = api::kMaxChoices;

inline constexpr std::size_t kMaxJsonDepth = 64;

// Validates the body (JSON object, UTF-8, depth, field types) and extracts the request. Errors are
// OpenAI-style 400s that name the offending parameter. A body with a duplicate object key at any
// depth is refused (code "duplicate_key", param = the key): parsers disagree on which of two
// values wins, and the provider must read exactly what the gateway checked and priced.
Result<LlmRequest> parse_request(Endpoint endpoint, std::string_view body);
// parse_request by a parse of the whole body, for every body (parse_request reads the usual body
// by a scan that gives the same answer, and leaves every other body, errors included, to this).
Result<LlmRequest> parse_request_full(Endpoint endpoint, std::string_view body);

// Rewrites the body for the upstream: `model` becomes `provider_model` (escaped), and for a stream
// stream_options.include_usage is forced on so usage can always be counted. With max_tokens > 0
// the output cap is set to it (replacing max_tokens / max_completion_tokens, or adding max_tokens),
// so that the cost guard's worst case holds. Other fields are copied as they are.
// `body` must be one that parse_request accepted: the common case is rewritten by splicing the
// body's bytes (no second parse), which assumes valid JSON.
Result<std::string> rewrite_request(std::string_view body, std::string_view provider_model,
                                    bool force_include_usage, std::int64_t max_tokens);
// The layout of a body that is a JSON object (what parse_request records); `recorded` is false
// when it is not one.
BodyLayout body_layout(std::string_view body);
// The same, with the layout parse_request recorded for this body (the usual case: no scan). A
// layout that was not recorded, or is of another body, falls back to the scan.
Result<std::string> rewrite_request(std::string_view body, const BodyLayout& layout,
                                    std::string_view provider_model, bool force_include_usage,
                                    std::int64_t max_tokens);

// rewrite_request's output as pieces, for a gather write that sends the client's bytes from
// where they are instead of copying them: the body's own spans, with the replaced and added
// members between them. The pieces refer to the body, to the provider model and to `cap`; keep
// all three where they are while the pieces are used.
struct SplicedBody {
  std::array<std::string_view, 16> pieces;
  std::size_t count = 0;
  std::size_t size = 0;  // of the pieces together
  std::array<char, 24> cap;
};
// The same bytes as rewrite_request with `layout`, as pieces into `out`. False when the layout
// cannot be used or the provider model would need escaping: the caller then takes
// rewrite_request.
bool splice_request(std::string_view body, const BodyLayout& layout,
                    std::string_view provider_model, bool force_include_usage,
                    std::int64_t max_tokens, SplicedBody& out);

// Usage from a buffered response body; absent usage leaves present=false. An embeddings answer
// has no completion count (OpenAI sends prompt_tokens and total_tokens only).
Usage extract_usage(std::string_view body, Endpoint endpoint = Endpoint::kChat);
// extract_usage by a parse of the whole body, for every body (extract_usage reads the usual
// answer by a scan that gives the same answer).
Usage parse_answer_usage(std::string_view body, Endpoint endpoint = Endpoint::kChat);

// One SSE event's data payload. Reports usage if the event carries it, whether the event is the
// usage-only chunk (empty choices) that a client who did not ask for usage must not see, and the
// number of characters of generated text in it.
struct ChunkInfo {
  Usage usage;
  bool usage_only = false;
  bool done = false;
  std::size_t text_chars = 0;
  bool has_text = false;
  // A delta with generated output other than text (is_output_member, not null or empty): a tool
  // call, a function call, a refusal, reasoning. Not in text_chars.
  bool other_output = false;
};
// The members of a chat delta or message, beside "content", that hold generated output.
bool is_output_member(std::string_view key);
// The common shape of event is read in one pass without a JSON parse (chunk_scan.h); any other
// event is parsed. The answer is parse_chunk's for every event.
ChunkInfo inspect_chunk(std::string_view data);
// What the events of one stream share, for inspect_chunk(data, prefix): one per stream.
struct ChunkPrefix {
  static constexpr std::size_t kMaxBytes = 512;
  // The start of the events (id, object, created, model), before the first member read.
  std::string bytes;
  // The shape of a text event: the bytes of the last event whose one choice's delta.content is
  // a string, before that string (head) and after it (tail), and that event's answer. An event
  // made of the same head and tail around another string has the same answer but for the text,
  // which is that string's: only the string is read.
  std::string shape_head;
  std::string shape_tail;
  ChunkInfo shape_info;
  int shape_misses = 0;  // in a row; a stream whose events never fit the shape stops trying
  // The shape's head and tail hold no line end and the tail ends the object ('}'): an event
  // "data: <head><string><tail>\n\n" is one line of data, whose bytes are those.
  bool shape_one_line = false;

  // A new stream's state again, the strings keeping their room (a ChunkPrefix kept for the
  // thread's next stream).
  void reset() {
    bytes.clear();
    shape_head.clear();
    shape_tail.clear();
    shape_info = {};
    shape_misses = 0;
    shape_one_line = false;
  }
};
// inspect_chunk for the next event of a stream: the same answer, with less work for the part of
// the event that begins like the one before it.
ChunkInfo inspect_chunk(std::string_view data, ChunkPrefix& prefix);
// The next event of `rest` (a stream's bytes) when it is the usual one "data: <data>\n\n" whose
// data fits the stream's text shape: taken off `rest`, with its data and inspect_chunk's answer
// for it, as http::next_event_data and inspect_chunk give them, in one pass over its bytes (the
// event's end is where the shape's tail ends). False, and nothing taken, for any other event.
bool next_shaped_event(std::string_view& rest, std::string_view& event, std::string_view& data,
                       ChunkInfo& info, ChunkPrefix& prefix);
// The same answer from a full parse of the event (the reference the scan is tested against).
ChunkInfo parse_chunk(std::string_view data);

// The conservative prompt token estimate used before the provider reports real usage.
std::int64_t estimate_prompt_tokens(const LlmRequest& req);

// The completion tokens to reserve: the per-choice output cap times the number of choices.
std::int64_t completion_reservation(const LlmRequest& req, std::int64_t per_choice_cap);

// Usage for a successful buffered answer that reported none: the prompt estimate and the
// generated text of every choice (about 3 characters a token, at least one per choice).
Usage estimate_usage(const LlmRequest& req, std::string_view response_body);

}  // namespace bw::providers
