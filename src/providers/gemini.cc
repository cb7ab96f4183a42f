#include "providers/gemini.h"

#include <algorithm>

#include "api/json_read.h"
#include "common/json_util.h"

namespace bw::providers {

namespace dom = simdjson::dom;
namespace json = api::json;
using api::FinishReason;
using api::Part;
using api::Role;

std::string gemini_target(std::string_view base_path, std::string_view model, bool stream) {
  std::string t(base_path);
  t += "/models/";
  for (char c : model) {
    // The model id is a path segment: anything outside the unreserved set is escaped.
    if (std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '.' || c == '_') {
      t.push_back(c);
    } else {
      static constexpr char kHex[] = "0123456789ABCDEF";
      t.push_back('%');
      t.push_back(kHex[(static_cast<unsigned char>(c) >> 4) & 0xf]);
      t.push_back(kHex[static_cast<unsigned char>(c) & 0xf]);
    }
  }
  t += stream ? ":streamGenerateContent?alt=sse" : ":generateContent";
  return t;
}

namespace {

std::string guess_mime(std::string_view url) {
  auto q = url.find_first_of("?#");
  auto path = url.substr(0, q);
  if (path.ends_with(".png")) return "image/png";
  if (path.ends_with(".gif")) return "image/gif";
  if (path.ends_with(".webp")) return "image/webp";
  return "image/jpeg";
}

bool is_object(const std::string& text) {
  if (text.empty()) return false;
  dom::element e;
  return json::parser(2).parse(text.data(), text.size()).get(e) == simdjson::SUCCESS &&
         e.is_object();
}

FinishReason finish_from(std::string_view f) {
  if (f == "MAX_TOKENS") return FinishReason::kLength;
  if (f == "SAFETY" || f == "RECITATION" || f == "BLOCKLIST" || f == "PROHIBITED_CONTENT" ||
      f == "SPII" || f == "IMAGE_SAFETY") {
    return FinishReason::kContentFilter;
  }
  return FinishReason::kStop;
}

std::string_view finish_to(FinishReason f) {
  switch (f) {
    case FinishReason::kLength:
      return "MAX_TOKENS";
    case FinishReason::kContentFilter:
      return "SAFETY";
    default:
      return "STOP";
  }
}

// Two non-negative counts; a sum past the range clamps (counts clamp there too).
std::int64_t sat_add(std::int64_t a, std::int64_t b) {
  return a > INT64_MAX - b ? INT64_MAX : a + b;
}

void read_usage(dom::element u, api::Usage& out) {
  if (!u.is_object()) return;
  out.present = true;
  // Gemini leaves out a count that is zero; one that is there must be a count.
  using json::Need;
  std::int64_t prompt = 0, tool_prompt = 0, thoughts = 0, candidates = 0, cached = 0;
  json::read_count(json::member(u, "promptTokenCount"), Need::kIfPresent, prompt, out.unreadable);
  json::read_count(json::member(u, "toolUsePromptTokenCount"), Need::kIfPresent, tool_prompt,
                   out.unreadable);
  json::read_count(json::member(u, "thoughtsTokenCount"), Need::kIfPresent, thoughts,
                   out.unreadable);
  json::read_count(json::member(u, "candidatesTokenCount"), Need::kIfPresent, candidates,
                   out.unreadable);
  json::read_count(json::member(u, "cachedContentTokenCount"), Need::kDiscount, cached,
                   out.unreadable);
  out.prompt_tokens = sat_add(prompt, tool_prompt);
  out.reasoning_tokens = thoughts;
  out.completion_tokens = sat_add(candidates, thoughts);
  out.cached_tokens = cached;
}

void write_usage(JsonWriter& j, const api::Usage& u) {
  j.begin_object()
      .key("promptTokenCount")
      .value(u.prompt_tokens)
      .key("candidatesTokenCount")
      .value(u.completion_tokens - u.reasoning_tokens)
      .key("totalTokenCount")
      .value(u.prompt_tokens + u.completion_tokens);
  if (u.cached_tokens > 0) j.key("cachedContentTokenCount").value(u.cached_tokens);
  if (u.reasoning_tokens > 0) j.key("thoughtsTokenCount").value(u.reasoning_tokens);
  j.end_object();
}

}  // namespace

std::string encode_gemini_request(const api::Request& r, std::int64_t max_tokens,
                                  std::vector<std::string>& dropped) {
  JsonWriter j;
  j.begin_object();
  bool cache = false;
  if (!r.system.empty()) {
    j.key("systemInstruction").begin_object().key("parts").begin_array();
    for (const auto& p : r.system) {
      cache = cache || !p.cache_control.empty();
      j.begin_object().key("text").value(p.text).end_object();
    }
    j.end_array().end_object();
  }
  j.key("contents").begin_array();
  int open = -1;  // 0 = user, 1 = model
  for (const auto& m : r.messages) {
    if (m.parts.empty()) continue;
    const int side = m.role == Role::kAssistant ? 1 : 0;
    if (side != open) {
      if (open >= 0) j.end_array().end_object();
      j.begin_object().key("role").value(side ? "model" : "user").key("parts").begin_array();
      open = side;
    }
    for (const auto& p : m.parts) {
      cache = cache || !p.cache_control.empty();
      j.begin_object();
      switch (p.kind) {
        case Part::Kind::kText:
          j.key("text").value(p.text);
          break;
        case Part::Kind::kImage:
          if (p.image_url.empty()) {
            j.key("inlineData")
                .begin_object()
                .key("mimeType")
                .value(p.media_type)
                .key("data")
                .value(p.data)
                .end_object();
          } else {
            j.key("fileData")
                .begin_object()
                .key("mimeType")
                .value(guess_mime(p.image_url))
                .key("fileUri")
                .value(p.image_url)
                .end_object();
          }
          break;
        case Part::Kind::kToolCall:
          j.key("functionCall")
              .begin_object()
              .key("name")
              .value(p.name)
              .key("args")
              .raw(is_object(p.arguments) ? p.arguments : std::string("{}"))
              .end_object();
          break;
        case Part::Kind::kToolResult:
          j.key("functionResponse").begin_object().key("name").value(p.name).key("response");
          if (is_object(p.text)) {
            j.raw(p.text);
          } else {
            j.begin_object().key("result").value(p.text).end_object();
          }
          j.end_object();
          break;
      }
      j.end_object();
    }
  }
  if (open >= 0) j.end_array().end_object();
  j.end_array();
  if (cache) dropped.emplace_back("cache_control");
  if (!r.tools.empty()) {
    j.key("tools").begin_array().begin_object().key("functionDeclarations").begin_array();
    for (const auto& t : r.tools) {
      j.begin_object().key("name").value(t.name);
      if (!t.description.empty()) j.key("description").value(t.description);
      if (!t.parameters.empty()) j.key("parametersJsonSchema").raw(t.parameters);
      j.end_object();
    }
    j.end_array().end_object().end_array();
  }
  if (r.tool_choice.mode != api::ToolChoice::Mode::kUnset) {
    j.key("toolConfig").begin_object().key("functionCallingConfig").begin_object().key("mode");
    switch (r.tool_choice.mode) {
      case api::ToolChoice::Mode::kNone:
        j.value("NONE");
        break;
      case api::ToolChoice::Mode::kRequired:
        j.value("ANY");
        break;
      case api::ToolChoice::Mode::kNamed:
        j.value("ANY")
            .key("allowedFunctionNames")
            .begin_array()
            .value(r.tool_choice.name)
            .end_array();
        break;
      default:
        j.value("AUTO");
        break;
    }
    j.end_object().end_object();
  }
  if (!r.parallel_tool_calls) dropped.emplace_back("parallel_tool_calls");
  j.key("generationConfig").begin_object();
  if (r.temperature) j.key("temperature").value(*r.temperature);
  if (r.top_p) j.key("topP").value(*r.top_p);
  if (r.top_k) j.key("topK").value(*r.top_k);
  const std::int64_t cap = max_tokens > 0 ? max_tokens : r.max_tokens;
  if (cap > 0) j.key("maxOutputTokens").value(cap);  // per candidate
  if (r.n > 1) j.key("candidateCount").value(r.n);
  if (!r.stop.empty()) {
    j.key("stopSequences").begin_array();
    for (const auto& s : r.stop) j.value(s);
    j.end_array();
  }
  if (r.response_format.kind != api::ResponseFormat::Kind::kText) {
    j.key("responseMimeType").value("application/json");
    if (!r.response_format.schema.empty())
      j.key("responseJsonSchema").raw(r.response_format.schema);
  }
  j.end_object();
  if (!r.user.empty()) dropped.emplace_back("user");
  j.end_object();
  return j.take();
}

namespace {

// The parts of one candidate; tool calls get generated ids (Gemini's may be absent).
void read_parts(dom::element c, std::vector<Part>& content, bool& any_call, std::string& finish) {
  dom::array parts;
  if (c["content"]["parts"].get(parts) == simdjson::SUCCESS) {
    for (auto p : parts) {
      bool thought = false;
      if (p["thought"].get(thought) == simdjson::SUCCESS && thought) continue;
      std::string_view text;
      if (p["text"].get(text) == simdjson::SUCCESS) {
        content.push_back(Part{.kind = Part::Kind::kText, .text = std::string(text)});
      }
      dom::element fc;
      if (p["functionCall"].get(fc) == simdjson::SUCCESS) {
        Part call{.kind = Part::Kind::kToolCall};
        auto id = json::str(fc, "id");
        call.id = id.empty() ? api::new_id("call_") : std::string(id);
        call.name = std::string(json::str(fc, "name"));
        dom::element args;
        call.arguments = fc["args"].get(args) == simdjson::SUCCESS ? json::raw(args) : "{}";
        content.push_back(std::move(call));
        any_call = true;
      }
    }
  }
  std::string_view f;
  if (c["finishReason"].get(f) == simdjson::SUCCESS) finish = std::string(f);
}

// The parts of a response's or chunk's first candidate.
void read_candidate(dom::element doc, api::Response& r, bool& any_call, std::string& finish) {
  dom::array cands;
  if (doc["candidates"].get(cands) != simdjson::SUCCESS || cands.size() == 0) return;
  read_parts(cands.at(0).value_unsafe(), r.content, any_call, finish);
}

FinishReason finish_of(bool any_call, std::string_view finish) {
  const FinishReason f = finish_from(finish);
  return any_call && f == FinishReason::kStop ? FinishReason::kToolCalls : f;
}

}  // namespace

Result<api::Response> decode_gemini_response(std::string_view body) {
  auto parsed = json::parse_object(body, 1);
  if (!parsed) return parsed.error();
  dom::element doc = *parsed;
  api::Response r;
  r.id = std::string(json::str(doc, "responseId"));
  r.model = std::string(json::str(doc, "modelVersion"));
  bool any_call = false;
  std::string finish;
  read_candidate(doc, r, any_call, finish);
  r.finish = finish_of(any_call, finish);
  // candidateCount > 1: the other candidates are the other choices, in their order.
  dom::array cands;
  if (doc["candidates"].get(cands) == simdjson::SUCCESS) {
    bool first = true;
    for (auto c : cands) {
      if (first) {
        first = false;
        continue;
      }
      api::Response::Choice choice;
      bool calls = false;
      std::string f;
      read_parts(c, choice.content, calls, f);
      choice.finish = finish_of(calls, f);
      r.more_choices.push_back(std::move(choice));
    }
  }
  dom::element u;
  if (json::member(doc, "usageMetadata").get(u) == simdjson::SUCCESS) read_usage(u, r.usage);
  // Gemini leaves out a zero count, but an answer with output did not cost zero output tokens:
  // such usage is not the whole usage, and is not trusted.
  if (r.usage.present && r.usage.completion_tokens == 0 &&
      (!r.content.empty() || !r.more_choices.empty())) {
    r.usage.unreadable = true;
  }
  return r;
}

namespace {

// One element of "candidates".
void write_one_candidate(JsonWriter& j, std::int64_t index, const std::vector<Part>& parts,
                         std::string_view finish) {
  j.begin_object()
      .key("content")
      .begin_object()
      .key("role")
      .value("model")
      .key("parts")
      .begin_array();
  for (const auto& p : parts) {
    if (p.kind == Part::Kind::kText) {
      j.begin_object().key("text").value(p.text).end_object();
    } else if (p.kind == Part::Kind::kToolCall) {
      j.begin_object()
          .key("functionCall")
          .begin_object()
          .key("name")
          .value(p.name)
          .key("args")
          .raw(is_object(p.arguments) ? p.arguments : std::string("{}"))
          .end_object()
          .end_object();
    }
  }
  j.end_array().end_object();
  if (!finish.empty()) j.key("finishReason").value(finish);
  j.key("index").value(index).end_object();
}

}  // namespace

std::string encode_gemini_response(const api::Response& r, std::string_view model) {
  JsonWriter j;
  j.begin_object().key("candidates").begin_array();
  write_one_candidate(j, 0, r.content, finish_to(r.finish));
  std::int64_t index = 1;
  for (const auto& c : r.more_choices)
    write_one_candidate(j, index++, c.content, finish_to(c.finish));
  j.end_array().key("usageMetadata");
  write_usage(j, r.usage);
  j.key("modelVersion").value(model).key("responseId").value(r.id).end_object();
  return j.take();
}

std::string encode_gemini_chunk(std::string_view text, const api::Response* final_part,
                                std::string_view model, std::int64_t candidates) {
  JsonWriter j;
  j.begin_object();
  std::vector<Part> parts;
  if (!text.empty()) parts.push_back(Part{.kind = Part::Kind::kText, .text = std::string(text)});
  if (final_part) {
    for (const auto& p : final_part->content) {
      if (p.kind == Part::Kind::kToolCall) parts.push_back(p);
    }
  }
  const std::string_view finish = final_part ? finish_to(final_part->finish) : std::string_view{};
  j.key("candidates").begin_array();
  for (std::int64_t i = 0; i < std::max<std::int64_t>(candidates, 1); ++i) {
    write_one_candidate(j, i, parts, finish);
  }
  j.end_array();
  if (final_part) {
    j.key("usageMetadata");
    write_usage(j, final_part->usage);
  }
  j.key("modelVersion").value(model).end_object();
  return j.take();
}

namespace {

// candidateCount > 1: every chunk carries the candidates that produced something since the last
// one, each with its "index" (left out for 0, as protobuf's JSON leaves out a zero), and each
// candidate ends with its own finishReason. Their events carry that index as their choice; the
// stream is complete once every candidate finished. usageMetadata counts every candidate's
// tokens (one running total for the whole answer), so it is sent once, at the end.
class GeminiStreamDecoder final : public api::StreamDecoder {
 public:
  explicit GeminiStreamDecoder(std::int64_t candidates)
      : choices_(
            static_cast<std::size_t>(std::clamp<std::int64_t>(candidates, 1, api::kMaxChoices))) {}

  void feed(std::string_view, std::string_view data, std::vector<api::StreamEvent>& out) override {
    auto parsed = json::parse_object(data, 1);
    if (!parsed) return;
    dom::element doc = *parsed;
    using K = api::StreamEvent::Kind;
    if (!started_) {
      started_ = true;
      out.push_back(
          api::StreamEvent{.kind = K::kStart, .id = std::string(json::str(doc, "responseId"))});
    }
    dom::element err;
    if (doc["error"].get(err) == simdjson::SUCCESS) {
      out.push_back(api::StreamEvent{.kind = K::kError,
                                     .text = std::string(json::str(err, "message")),
                                     .name = "api_error",
                                     .status = static_cast<int>(json::num(err, "code", 500))});
      return;
    }
    dom::array cands;
    if (doc["candidates"].get(cands) == simdjson::SUCCESS) {
      for (auto c : cands) {
        std::int64_t index = 0;
        if (c["index"].get(index) != simdjson::SUCCESS) index = 0;
        // A candidate that was not asked for has no choice to go to.
        if (index < 0 || static_cast<std::size_t>(index) >= choices_.size()) continue;
        candidate(c, static_cast<int>(index), out);
      }
    }
    // Every chunk may carry usageMetadata, each a running total that replaces the last; the
    // counts are final only at the end, which need not be the chunk with the finishReason (a
    // last chunk of usage alone, or another candidate still generating). Usage read after the
    // finish is sent on again, so the latest counts are the ones billed.
    dom::element u;
    bool fresh_usage = false;
    if (json::member(doc, "usageMetadata").get(u) == simdjson::SUCCESS) {
      api::StreamEvent e{.kind = K::kUsage};
      read_usage(u, e.usage);
      usage_ = e.usage;
      fresh_usage = true;
      // As for a whole answer: output that cost zero output tokens is not the whole usage.
      if (usage_.present && usage_.completion_tokens == 0 && output_) usage_.unreadable = true;
    }
    if (usage_.present && done() && (!usage_sent_ || fresh_usage)) {
      usage_sent_ = true;
      out.push_back(api::StreamEvent{.kind = K::kUsage, .usage = usage_});
    }
  }
  bool done() const override { return finished_ == choices_.size(); }

 private:
  struct Choice {
    bool any_call = false;
    bool finished = false;
    int tools = 0;
  };

  // One candidate's parts of a chunk, and its finish.
  void candidate(dom::element c, int index, std::vector<api::StreamEvent>& out) {
    using K = api::StreamEvent::Kind;
    Choice& ch = choices_[static_cast<std::size_t>(index)];
    std::vector<Part> parts;
    std::string finish;
    read_parts(c, parts, ch.any_call, finish);
    for (auto& p : parts) {
      output_ = output_ || !p.text.empty() || p.kind == Part::Kind::kToolCall;
      if (p.kind == Part::Kind::kText) {
        if (!p.text.empty()) {
          out.push_back(
              api::StreamEvent{.kind = K::kTextDelta, .choice = index, .text = std::move(p.text)});
        }
      } else {
        const int tool = ch.tools++;
        out.push_back(api::StreamEvent{
            .kind = K::kToolCallStart, .index = tool, .choice = index, .id = p.id, .name = p.name});
        out.push_back(api::StreamEvent{
            .kind = K::kToolArgsDelta, .index = tool, .choice = index, .text = p.arguments});
      }
    }
    if (!finish.empty() && !ch.finished) {
      ch.finished = true;
      ++finished_;
      out.push_back(api::StreamEvent{
          .kind = K::kFinish, .choice = index, .finish = finish_of(ch.any_call, finish)});
    }
  }

  std::vector<Choice> choices_;
  std::size_t finished_ = 0;  // choices whose candidate sent its finishReason
  bool started_ = false;
  bool usage_sent_ = false;
  bool output_ = false;  // text or a function call was streamed
  api::Usage usage_;
};

}  // namespace

std::unique_ptr<api::StreamDecoder> make_gemini_stream_decoder(std::int64_t candidates) {
  return std::make_unique<GeminiStreamDecoder>(candidates);
}

}  // namespace bw::providers
