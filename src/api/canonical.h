#pragma once
// The canonical request and response: every inbound API (chat completions, Responses, Messages)
// decodes into these, and every upstream adapter encodes out of them. Streams are translated as a
// sequence of StreamEvents, one upstream event at a time (never buffered).
// Thread safety: plain value types; the codecs are pure functions or per-stream objects.
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.h"

namespace bw::api {

// Wire formats. Inbound: kChat, kResponses, kMessages. Upstream: kChat (OpenAI, Azure, the
// simulator), kMessages (Anthropic), kGemini. kResponses upstream is OpenAI's passthrough.
enum class Format { kChat, kResponses, kMessages, kGemini };
std::string_view to_string(Format f);

// Usage in OpenAI's sense: prompt_tokens counts every input token, cached (cache reads) and
// cache writes included; completion_tokens includes reasoning tokens.
struct Usage {
  std::int64_t prompt_tokens = 0;
  std::int64_t completion_tokens = 0;
  std::int64_t cached_tokens = 0;       // prompt tokens read from the provider's cache
  std::int64_t cache_write_tokens = 0;  // prompt tokens written to the provider's cache
  std::int64_t reasoning_tokens = 0;    // part of completion_tokens
  bool present = false;
  // The answer had usage, but a count in it was not a non-negative number (a string, a negative
  // count) or a count the provider always sends was missing: it is not trusted, and the request
  // is charged an estimate as if the usage were missing (never read as zero).
  bool unreadable = false;
  // Counts that can be billed.
  bool usable() const { return present && !unreadable; }
};

enum class Role { kSystem, kUser, kAssistant, kTool };

struct Part {
  enum class Kind { kText, kImage, kToolCall, kToolResult };
  Kind kind = Kind::kText;
  std::string text;           // kText; kToolResult: the result as text
  std::string image_url;      // kImage by URL (http/https; never fetched by the gateway)
  std::string media_type;     // kImage inline: "image/png"
  std::string data;           // kImage inline: base64
  std::string id;             // kToolCall: call id; kToolResult: the id of its call
  std::string name;           // kToolCall: function name; kToolResult: resolved from its call
  std::string arguments;      // kToolCall: JSON object text
  bool is_error = false;      // kToolResult
  std::string cache_control;  // raw JSON of an Anthropic cache_control marker, "" = none
};

struct Message {
  Role role = Role::kUser;
  std::vector<Part> parts;
};

struct Tool {
  std::string name;
  std::string description;
  std::string parameters;  // JSON schema text; "" = none
  std::string cache_control;
};

struct ToolChoice {
  enum class Mode { kUnset, kAuto, kNone, kRequired, kNamed };
  Mode mode = Mode::kUnset;
  std::string name;  // kNamed
};

struct ResponseFormat {
  enum class Kind { kText, kJsonObject, kJsonSchema };
  Kind kind = Kind::kText;
  std::string name;    // kJsonSchema
  std::string schema;  // kJsonSchema: JSON text
  bool strict = false;
};

struct Request {
  Format format = Format::kChat;  // the inbound API it was decoded from
  std::string model;
  std::vector<Part> system;  // text parts (Anthropic keeps their cache_control)
  std::vector<Message> messages;
  std::vector<Tool> tools;
  ToolChoice tool_choice;
  bool parallel_tool_calls = true;
  std::optional<double> temperature;
  std::optional<double> top_p;
  std::optional<std::int64_t> top_k;
  std::int64_t max_tokens = 0;  // 0 = not set
  std::vector<std::string> stop;
  ResponseFormat response_format;
  bool stream = false;
  bool stream_usage = false;  // chat: stream_options.include_usage
  // Chat's n: the choices to generate. Gemini generates them (candidateCount, buffered or
  // streamed); Anthropic has no equivalent, so n > 1 is refused for it.
  std::int64_t n = 1;
  std::string user;
  // Responses API state.
  bool store = true;
  std::string previous_response_id;
  std::string instructions;
  // Fields of the inbound body that the canonical model does not carry: dropped when the body is
  // translated (x-bellwether-dropped-params), refused with strict_params.
  std::vector<std::string> unmapped;
  bool strict_params = false;
  std::size_t text_chars = 0;  // characters of text, for estimates
  // Characters of the other fields an upstream reads and bills as input (tool definitions,
  // output schemas, tool_choice, fields passed through unchanged), in their compact JSON: for
  // estimates, never a reason to bill less.
  std::size_t other_chars = 0;
  std::size_t images = 0;  // image inputs (estimated at the model's image bound, as chat's are)
};

// The most one input image is billed, in tokens, when the model's own bound is not known (the
// price table's image_tokens, cost::image_token_bound, is what the cost guard uses): Anthropic
// about 1,600 (an image is scaled to at most ~1.15 megapixels, at width x height / 750 tokens),
// OpenAI's GPT-4o 85 + 170 per 512 px tile with at most 2 x 4 tiles = 1,445. OpenAI's "detail":
// "low" (85) is not trusted: other providers ignore it.
inline constexpr std::int64_t kImageMaxTokens = 1600;
// Upper bound on chat's n (OpenAI's own limit is 128).
inline constexpr std::int64_t kMaxChoices = 128;

enum class FinishReason { kStop, kLength, kToolCalls, kContentFilter };

struct Response {
  std::string id;
  std::string model;
  std::vector<Part> content;  // kText and kToolCall parts in order
  FinishReason finish = FinishReason::kStop;
  std::string stop_sequence;
  Usage usage;  // of every choice
  // The choices after the first, when several were generated (chat's n, Gemini's candidates):
  // chat answers carry them; the other APIs have one choice.
  struct Choice {
    std::vector<Part> content;
    FinishReason finish = FinishReason::kStop;
  };
  std::vector<Choice> more_choices;
};

// One step of a translated stream.
struct StreamEvent {
  enum class Kind { kStart, kTextDelta, kToolCallStart, kToolArgsDelta, kFinish, kUsage, kError };
  Kind kind = Kind::kTextDelta;
  int index = 0;     // tool calls: 0-based position among the tool calls (of its choice)
  int choice = 0;    // the choice it belongs to (chat's n), 0-based
  std::string text;  // text delta, tool arguments delta, or the error message
  std::string id;    // kStart: message id; kToolCallStart: call id
  std::string name;  // kToolCallStart: function name; kError: error type
  FinishReason finish = FinishReason::kStop;
  Usage usage;
  int status = 0;  // kError: HTTP-like status
};

// Upstream stream -> events. feed() takes one SSE event's data (and its event name, if any).
class StreamDecoder {
 public:
  virtual ~StreamDecoder() = default;
  virtual void feed(std::string_view event_name, std::string_view data,
                    std::vector<StreamEvent>& out) = 0;
  // True once the upstream said the stream is complete ([DONE], message_stop, a finish reason).
  virtual bool done() const = 0;
};

// Events -> the client's stream. Each call appends whole SSE events to `out`.
class StreamEncoder {
 public:
  virtual ~StreamEncoder() = default;
  virtual void on_event(const StreamEvent& e, std::string& out) = 0;
  // The end of the upstream stream: the deferred tail (finish, usage, terminal events).
  virtual void finish(std::string& out) = 0;
  // The stream broke: the format's error event.
  virtual void fail(std::string_view type, std::string_view message, std::string& out) = 0;
};

// Whether the answer holds generated output: text that is not empty, or a tool call.
bool has_output(const Response& r);
// Usage that reports no output token for an answer that generated output (`generated`) cannot be
// right: it is marked unreadable, so that the answer is charged an estimate, never free. An
// empty answer with no output tokens is left as it is.
void check_output_counted(Usage& u, bool generated);

// A whole answer as the events of a stream, in the order a provider streams them: the start
// (with the usage, for formats that announce the input tokens first), the text and tool calls in
// order, the finish (each further choice's events after the first's) and the usage. Fed to a
// StreamEncoder it gives a well-formed stream of that format (a streamed request served from a
// buffered answer).
std::vector<StreamEvent> stream_events(const Response& r);

// ----------------------------------------------------------------------------------------------
// Helpers shared by the codecs.

std::string_view chat_finish(FinishReason f);
// `prefix` + kIdChars characters of [0-9a-zA-Z] from a cryptographically secure source
// (common/secure_random.h): response, message and tool-call ids.
inline constexpr std::size_t kIdChars = 24;
std::string new_id(std::string_view prefix);

// A client-given image URL must be https/http to a public host, or a data: URL: the gateway never
// fetches it, but an upstream might, so private and loopback addresses are refused (400).
Result<Ok> check_image_url(std::string_view url);
// "data:image/png;base64,...." -> media type and data; false if not a base64 data URL.
bool split_data_url(std::string_view url, std::string& media_type, std::string& data);

// Tool results must follow their call; resolves each result's function name from its call.
Result<Ok> link_tool_results(Request& r);

// Whether the model needs dropping `field`; either records it or refuses with strict_params.
Error invalid(std::string message, std::string param = {});

}  // namespace bw::api
