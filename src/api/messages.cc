#include "api/messages.h"

#include <unordered_map>

#include "api/chat.h"
#include "api/json_read.h"
#include "common/json_util.h"

namespace bw::api {

namespace dom = simdjson::dom;

std::string_view anthropic_error_type(int status) {
  switch (status) {
    case 400:
      return "invalid_request_error";
    case 401:
      return "authentication_error";
    case 402:
      return "billing_error";
    case 403:
      return "permission_error";
    case 404:
      return "not_found_error";
    case 413:
      return "request_too_large";
    case 429:
      return "rate_limit_error";
    case 503:
    case 529:
      return "overloaded_error";
    case 504:
      return "timeout_error";
    default:
      return status >= 500 ? "api_error" : "invalid_request_error";
  }
}

std::string anthropic_error_body(int status, std::string_view message,
                                 std::string_view request_id) {
  JsonWriter j;
  j.begin_object()
      .key("type")
      .value("error")
      .key("error")
      .begin_object()
      .key("type")
      .value(anthropic_error_type(status))
      .key("message")
      .value(message)
      .end_object();
  if (!request_id.empty()) j.key("request_id").value(request_id);
  j.end_object();
  return j.take();
}

namespace {

std::string cache_control_of(dom::element block) {
  dom::element cc;
  if (block["cache_control"].get(cc) == simdjson::SUCCESS && cc.is_object()) return json::raw(cc);
  return {};
}

Result<Ok> read_image(dom::element b, Part& p) {
  p.kind = Part::Kind::kImage;
  const auto type = json::str(b["source"], "type");
  if (type == "base64") {
    p.media_type = std::string(json::str(b["source"], "media_type"));
    p.data = std::string(json::str(b["source"], "data"));
    if (p.media_type.empty() || p.data.empty()) {
      return invalid("An image block with a base64 source needs media_type and data.", "messages");
    }
  } else if (type == "url") {
    auto url = json::str(b["source"], "url");
    if (auto ok = check_image_url(url); !ok) return ok.error();
    if (!split_data_url(url, p.media_type, p.data)) p.image_url = std::string(url);
  } else {
    return invalid("An image block needs a source of type base64 or url.", "messages");
  }
  return Ok{};
}

Result<Ok> read_blocks(dom::element content, Message& msg, Request& r) {
  std::string_view s;
  if (content.get(s) == simdjson::SUCCESS) {
    msg.parts.push_back(Part{.kind = Part::Kind::kText, .text = std::string(s)});
    r.text_chars += s.size();
    return Ok{};
  }
  dom::array blocks;
  if (content.get(blocks) != simdjson::SUCCESS) {
    return invalid("messages: content must be a string or an array of content blocks.", "messages");
  }
  for (auto b : blocks) {
    if (!b.is_object())
      return invalid("messages: each content block must be an object.", "messages");
    const auto type = json::str(b, "type");
    Part p;
    p.cache_control = cache_control_of(b);
    if (type == "text") {
      std::string_view t;
      if (b["text"].get(t) != simdjson::SUCCESS) {
        return invalid("messages: a text block needs a 'text' string.", "messages");
      }
      p.text = std::string(t);
      r.text_chars += t.size();
    } else if (type == "image") {
      if (auto ok = read_image(b, p); !ok) return ok.error();
      ++r.images;
    } else if (type == "tool_use") {
      if (msg.role != Role::kAssistant) {
        return invalid("messages: tool_use blocks belong in assistant messages.", "messages");
      }
      p.kind = Part::Kind::kToolCall;
      p.id = std::string(json::str(b, "id"));
      p.name = std::string(json::str(b, "name"));
      if (p.id.empty() || p.name.empty()) {
        return invalid("messages: a tool_use block needs an id and a name.", "messages");
      }
      dom::element input;
      p.arguments = b["input"].get(input) == simdjson::SUCCESS ? json::raw(input) : "{}";
      r.text_chars += p.arguments.size();
    } else if (type == "tool_result") {
      if (msg.role != Role::kUser) {
        return invalid("messages: tool_result blocks belong in user messages.", "messages");
      }
      p.kind = Part::Kind::kToolResult;
      p.id = std::string(json::str(b, "tool_use_id"));
      if (p.id.empty())
        return invalid("messages: a tool_result block needs tool_use_id.", "messages");
      bool is_error = false;
      if (b["is_error"].get(is_error) == simdjson::SUCCESS) p.is_error = is_error;
      dom::element c;
      if (b["content"].get(c) == simdjson::SUCCESS) {
        std::string_view t;
        dom::array arr;
        if (c.get(t) == simdjson::SUCCESS) {
          p.text = std::string(t);
        } else if (c.get(arr) == simdjson::SUCCESS) {
          for (auto inner : arr) {
            if (json::str(inner, "type") == "text") {
              p.text += json::str(inner, "text");
            } else {
              // Passed through unchanged to an Anthropic upstream, which reads it.
              if (json::str(inner, "type") == "image") ++r.images;
              r.other_chars += json::raw(inner).size();
              r.unmapped.emplace_back("tool_result.content[].image");
            }
          }
        }
        r.text_chars += p.text.size();
      }
    } else if (type == "thinking" || type == "redacted_thinking" || type == "document" ||
               type == "search_result" || type == "server_tool_use" ||
               type == "web_search_tool_result") {
      // Passed through unchanged to an Anthropic upstream, which reads (and bills) it: a
      // document's base64 counts as text, more than the pages cost.
      r.other_chars += json::raw(b).size();
      r.unmapped.push_back("content." + std::string(type));
      continue;
    } else {
      return invalid("messages: unknown content block type '" + std::string(type) + "'.",
                     "messages");
    }
    msg.parts.push_back(std::move(p));
  }
  return Ok{};
}

std::string_view stop_reason(FinishReason f, bool stop_sequence) {
  switch (f) {
    case FinishReason::kStop:
      return stop_sequence ? "stop_sequence" : "end_turn";
    case FinishReason::kLength:
      return "max_tokens";
    case FinishReason::kToolCalls:
      return "tool_use";
    case FinishReason::kContentFilter:
      return "refusal";
  }
  return "end_turn";
}

FinishReason finish_from_stop(std::string_view s) {
  if (s == "max_tokens" || s == "model_context_window_exceeded") return FinishReason::kLength;
  if (s == "tool_use") return FinishReason::kToolCalls;
  if (s == "refusal") return FinishReason::kContentFilter;
  return FinishReason::kStop;
}

void read_usage(dom::element u, Usage& out) {
  if (!u.is_object()) return;
  out.present = true;
  // A stream reports usage in parts (the input side in message_start, the output in
  // message_delta, whose cumulative usage may repeat some input-side counts and not others):
  // every count is optional here, a count that is there replaces the one read before, and one
  // that is missing keeps it. A count that is there but unreadable makes the whole usage
  // unreadable. Cache reads only lower the bill: unreadable, they count as 0.
  using json::Need;
  std::int64_t input = -1, cw = -1, cr = -1, output = -1;
  json::read_count(json::member(u, "input_tokens"), Need::kIfPresent, input, out.unreadable);
  json::read_count(json::member(u, "cache_creation_input_tokens"), Need::kIfPresent, cw,
                   out.unreadable);
  json::read_count(json::member(u, "cache_read_input_tokens"), Need::kDiscount, cr, out.unreadable);
  json::read_count(json::member(u, "output_tokens"), Need::kIfPresent, output, out.unreadable);
  if (input >= 0 || cw >= 0 || cr >= 0) {
    const std::int64_t uncached =
        input >= 0 ? input
                   : std::max<std::int64_t>(
                         0, out.prompt_tokens - out.cache_write_tokens - out.cached_tokens);
    if (cw >= 0) out.cache_write_tokens = cw;
    if (cr >= 0) out.cached_tokens = cr;
    // Counts clamp at INT64_MAX; so does their sum (a wrapped sum would read as nothing).
    std::int64_t sum = 0;
    if (__builtin_add_overflow(uncached, out.cache_write_tokens, &sum) ||
        __builtin_add_overflow(sum, out.cached_tokens, &sum)) {
      sum = INT64_MAX;
    }
    out.prompt_tokens = sum;
  }
  if (output >= 0) out.completion_tokens = output;
}

void write_usage(JsonWriter& j, const Usage& u) {
  j.begin_object()
      .key("input_tokens")
      .value(std::max<std::int64_t>(0, u.prompt_tokens - u.cached_tokens - u.cache_write_tokens))
      .key("cache_creation_input_tokens")
      .value(u.cache_write_tokens)
      .key("cache_read_input_tokens")
      .value(u.cached_tokens)
      .key("output_tokens")
      .value(u.completion_tokens)
      .end_object();
}

// Tool arguments as a JSON object (Anthropic's `input`); text that is not one becomes {}.
std::string object_or_empty(const std::string& args) {
  if (args.empty()) return "{}";
  dom::element e;
  if (json::parser(2).parse(args.data(), args.size()).get(e) != simdjson::SUCCESS ||
      !e.is_object()) {
    return "{}";
  }
  return args;
}

}  // namespace

Result<Request> decode_messages_request(std::string_view body, bool require_max_tokens) {
  auto parsed = json::parse_request_object(body);
  if (!parsed) return parsed.error();
  dom::element doc = *parsed;
  Request r;
  r.format = Format::kMessages;
  dom::object obj = doc.get_object().value_unsafe();
  for (auto field : obj) {
    const std::string_view k = field.key;
    dom::element v = field.value;
    if (k == "model") {
      std::string_view m;
      if (v.get(m) != simdjson::SUCCESS || m.empty()) {
        return invalid("model: Field required", "model");
      }
      r.model = std::string(m);
    } else if (k == "max_tokens") {
      std::int64_t n = 0;
      if (v.get(n) != simdjson::SUCCESS || n < 1) {
        return invalid("max_tokens: must be a positive integer", "max_tokens");
      }
      r.max_tokens = n;
    } else if (k == "system") {
      std::string_view s;
      dom::array arr;
      if (v.get(s) == simdjson::SUCCESS) {
        r.system.push_back(Part{.kind = Part::Kind::kText, .text = std::string(s)});
        r.text_chars += s.size();
      } else if (v.get(arr) == simdjson::SUCCESS) {
        for (auto b : arr) {
          if (json::str(b, "type") != "text") {
            return invalid("system: only text blocks are allowed.", "system");
          }
          Part p{.kind = Part::Kind::kText, .text = std::string(json::str(b, "text"))};
          p.cache_control = cache_control_of(b);
          r.text_chars += p.text.size();
          r.system.push_back(std::move(p));
        }
      } else {
        return invalid("system: must be a string or an array of text blocks.", "system");
      }
    } else if (k == "messages") {
      dom::array msgs;
      if (v.get(msgs) != simdjson::SUCCESS)
        return invalid("messages: must be an array", "messages");
      for (auto m : msgs) {
        if (!m.is_object()) return invalid("messages: each message must be an object.", "messages");
        const auto role = json::str(m, "role");
        Message msg;
        if (role == "user") {
          msg.role = Role::kUser;
        } else if (role == "assistant") {
          msg.role = Role::kAssistant;
        } else {
          return invalid(
              "messages: unknown role '" + std::string(role) + "' (expected user or assistant).",
              "messages");
        }
        dom::element content;
        if (m["content"].get(content) != simdjson::SUCCESS) {
          return invalid("messages: each message needs content.", "messages");
        }
        if (auto ok = read_blocks(content, msg, r); !ok) return ok.error();
        r.messages.push_back(std::move(msg));
      }
    } else if (k == "tools") {
      dom::array tools;
      if (v.get(tools) != simdjson::SUCCESS) return invalid("tools: must be an array", "tools");
      r.other_chars += k.size() + json::raw(v).size();
      for (auto t : tools) {
        const auto type = json::str(t, "type");
        if (!type.empty() && type != "custom") {
          r.unmapped.push_back("tools." + std::string(type));
          continue;
        }
        Tool tool;
        tool.name = std::string(json::str(t, "name"));
        if (tool.name.empty()) return invalid("tools: each tool needs a name.", "tools");
        tool.description = std::string(json::str(t, "description"));
        dom::element schema;
        if (t["input_schema"].get(schema) == simdjson::SUCCESS) tool.parameters = json::raw(schema);
        tool.cache_control = cache_control_of(t);
        r.tools.push_back(std::move(tool));
      }
    } else if (k == "tool_choice") {
      r.other_chars += k.size() + json::raw(v).size();
      const auto type = json::str(v, "type");
      r.tool_choice.mode = type == "any"    ? ToolChoice::Mode::kRequired
                           : type == "none" ? ToolChoice::Mode::kNone
                           : type == "tool" ? ToolChoice::Mode::kNamed
                                            : ToolChoice::Mode::kAuto;
      r.tool_choice.name = std::string(json::str(v, "name"));
      bool dp = false;
      if (v["disable_parallel_tool_use"].get(dp) == simdjson::SUCCESS) r.parallel_tool_calls = !dp;
    } else if (k == "temperature" || k == "top_p") {
      double d = 0;
      if (v.get(d) != simdjson::SUCCESS)
        return invalid(std::string(k) + ": must be a number", std::string(k));
      (k == "temperature" ? r.temperature : r.top_p) = d;
    } else if (k == "top_k") {
      std::int64_t n = 0;
      if (v.get(n) != simdjson::SUCCESS) return invalid("top_k: must be an integer", "top_k");
      r.top_k = n;
    } else if (k == "stop_sequences") {
      dom::array arr;
      if (v.get(arr) != simdjson::SUCCESS) {
        return invalid("stop_sequences: must be an array of strings", "stop_sequences");
      }
      for (auto e : arr) {
        std::string_view s;
        if (e.get(s) == simdjson::SUCCESS) r.stop.emplace_back(s);
      }
    } else if (k == "stream") {
      bool b = false;
      if (v.get(b) != simdjson::SUCCESS) return invalid("stream: must be a boolean", "stream");
      r.stream = b;
    } else if (k == "metadata") {
      r.user = std::string(json::str(v, "user_id"));
    } else if (k == "strict_params") {
      bool b = false;
      if (v.get(b) == simdjson::SUCCESS) r.strict_params = b;
    } else {
      // Passed through unchanged to an Anthropic upstream, which reads it.
      r.other_chars += k.size() + json::raw(v).size();
      r.unmapped.emplace_back(k);
    }
  }
  if (r.model.empty()) return invalid("model: Field required", "model");
  if (require_max_tokens && r.max_tokens == 0) {
    return invalid("max_tokens: Field required", "max_tokens");
  }
  if (r.messages.empty()) return invalid("messages: Field required", "messages");
  if (auto ok = link_tool_results(r); !ok) return ok.error();
  return r;
}

std::string encode_messages_request(const Request& r, std::string_view model,
                                    std::int64_t max_tokens, std::int64_t default_max_tokens,
                                    std::vector<std::string>& dropped) {
  JsonWriter j;
  const std::int64_t cap = max_tokens > 0     ? max_tokens
                           : r.max_tokens > 0 ? r.max_tokens
                                              : std::max<std::int64_t>(1, default_max_tokens);
  j.begin_object().key("model").value(model).key("max_tokens").value(cap);
  if (!r.system.empty()) {
    bool cached = false;
    for (const auto& p : r.system) cached = cached || !p.cache_control.empty();
    j.key("system");
    if (!cached) {
      std::string sys;
      for (const auto& p : r.system) {
        if (!sys.empty()) sys += "\n";
        sys += p.text;
      }
      j.value(sys);
    } else {
      j.begin_array();
      for (const auto& p : r.system) {
        j.begin_object().key("type").value("text").key("text").value(p.text);
        if (!p.cache_control.empty()) j.key("cache_control").raw(p.cache_control);
        j.end_object();
      }
      j.end_array();
    }
  }
  j.key("messages").begin_array();
  // Anthropic wants user and assistant turns to alternate: consecutive messages of one side
  // (a chat request's tool messages and the user message after them) become one turn.
  int open = -1;  // 0 = user, 1 = assistant
  for (const auto& m : r.messages) {
    const int side = m.role == Role::kAssistant ? 1 : 0;
    if (m.parts.empty()) continue;
    if (side != open) {
      if (open >= 0) j.end_array().end_object();
      j.begin_object().key("role").value(side ? "assistant" : "user").key("content").begin_array();
      open = side;
    }
    for (const auto& p : m.parts) {
      j.begin_object();
      switch (p.kind) {
        case Part::Kind::kText:
          j.key("type").value("text").key("text").value(p.text);
          break;
        case Part::Kind::kImage:
          j.key("type").value("image").key("source").begin_object();
          if (p.image_url.empty()) {
            j.key("type")
                .value("base64")
                .key("media_type")
                .value(p.media_type)
                .key("data")
                .value(p.data);
          } else {
            j.key("type").value("url").key("url").value(p.image_url);
          }
          j.end_object();
          break;
        case Part::Kind::kToolCall:
          j.key("type")
              .value("tool_use")
              .key("id")
              .value(p.id)
              .key("name")
              .value(p.name)
              .key("input")
              .raw(object_or_empty(p.arguments));
          break;
        case Part::Kind::kToolResult:
          j.key("type")
              .value("tool_result")
              .key("tool_use_id")
              .value(p.id)
              .key("content")
              .value(p.text);
          if (p.is_error) j.key("is_error").value(true);
          break;
      }
      if (!p.cache_control.empty()) j.key("cache_control").raw(p.cache_control);
      j.end_object();
    }
  }
  if (open >= 0) j.end_array().end_object();
  j.end_array();
  if (!r.tools.empty() && r.tool_choice.mode != ToolChoice::Mode::kNone) {
    j.key("tools").begin_array();
    for (const auto& t : r.tools) {
      j.begin_object().key("name").value(t.name);
      if (!t.description.empty()) j.key("description").value(t.description);
      j.key("input_schema").raw(t.parameters.empty() ? "{\"type\":\"object\"}" : t.parameters);
      if (!t.cache_control.empty()) j.key("cache_control").raw(t.cache_control);
      j.end_object();
    }
    j.end_array();
  }
  if (r.tool_choice.mode != ToolChoice::Mode::kUnset || !r.parallel_tool_calls) {
    if (!r.tools.empty() || r.tool_choice.mode == ToolChoice::Mode::kNone) {
      j.key("tool_choice").begin_object().key("type");
      switch (r.tool_choice.mode) {
        case ToolChoice::Mode::kUnset:
        case ToolChoice::Mode::kAuto:
          j.value("auto");
          break;
        case ToolChoice::Mode::kNone:
          j.value("none");
          break;
        case ToolChoice::Mode::kRequired:
          j.value("any");
          break;
        case ToolChoice::Mode::kNamed:
          j.value("tool").key("name").value(r.tool_choice.name);
          break;
      }
      if (!r.parallel_tool_calls && r.tool_choice.mode != ToolChoice::Mode::kNone) {
        j.key("disable_parallel_tool_use").value(true);
      }
      j.end_object();
    }
  }
  if (r.temperature) j.key("temperature").value(std::min(1.0, *r.temperature));
  if (r.top_p) j.key("top_p").value(*r.top_p);
  if (r.top_k) j.key("top_k").value(*r.top_k);
  if (!r.stop.empty()) {
    j.key("stop_sequences").begin_array();
    for (const auto& s : r.stop) j.value(s);
    j.end_array();
  }
  if (r.response_format.kind != ResponseFormat::Kind::kText)
    dropped.emplace_back("response_format");
  if (!r.user.empty()) j.key("metadata").begin_object().key("user_id").value(r.user).end_object();
  if (r.stream) j.key("stream").value(true);
  j.end_object();
  return j.take();
}

Result<Response> decode_messages_response(std::string_view body) {
  auto parsed = json::parse_object(body, 1);
  if (!parsed) return parsed.error();
  dom::element doc = *parsed;
  Response r;
  r.id = std::string(json::str(doc, "id"));
  r.model = std::string(json::str(doc, "model"));
  dom::array content;
  if (doc["content"].get(content) == simdjson::SUCCESS) {
    for (auto b : content) {
      const auto type = json::str(b, "type");
      if (type == "text") {
        r.content.push_back(
            Part{.kind = Part::Kind::kText, .text = std::string(json::str(b, "text"))});
      } else if (type == "tool_use") {
        Part p{.kind = Part::Kind::kToolCall};
        p.id = std::string(json::str(b, "id"));
        p.name = std::string(json::str(b, "name"));
        dom::element input;
        p.arguments = b["input"].get(input) == simdjson::SUCCESS ? json::raw(input) : "{}";
        r.content.push_back(std::move(p));
      }
    }
  }
  r.finish = finish_from_stop(json::str(doc, "stop_reason"));
  r.stop_sequence = std::string(json::str(doc, "stop_sequence"));
  dom::element u;
  if (json::member(doc, "usage").get(u) == simdjson::SUCCESS) {
    read_usage(u, r.usage);
    // A whole message's usage always has both sides: one left out is not a zero (a null one is
    // unreadable already).
    if (r.usage.present && (!json::has(u, "input_tokens") || !json::has(u, "output_tokens"))) {
      r.usage.unreadable = true;
    }
  }
  return r;
}

Usage read_messages_usage(std::string_view usage_json) {
  Usage u;
  auto doc = json::parse_object(usage_json, 2);
  if (doc) read_usage(*doc, u);
  return u;
}

std::string encode_messages_response(const Response& r, std::string_view model) {
  JsonWriter j;
  j.begin_object()
      .key("id")
      .value(r.id.starts_with("msg_") ? r.id : new_id("msg_"))
      .key("type")
      .value("message")
      .key("role")
      .value("assistant")
      .key("model")
      .value(model)
      .key("content")
      .begin_array();
  for (const auto& p : r.content) {
    if (p.kind == Part::Kind::kText) {
      j.begin_object().key("type").value("text").key("text").value(p.text).end_object();
    } else if (p.kind == Part::Kind::kToolCall) {
      j.begin_object()
          .key("type")
          .value("tool_use")
          .key("id")
          .value(p.id)
          .key("name")
          .value(p.name)
          .key("input")
          .raw(object_or_empty(p.arguments))
          .end_object();
    }
  }
  j.end_array()
      .key("stop_reason")
      .value(stop_reason(r.finish, !r.stop_sequence.empty()))
      .key("stop_sequence");
  if (r.stop_sequence.empty()) {
    j.null();
  } else {
    j.value(r.stop_sequence);
  }
  j.key("usage");
  write_usage(j, r.usage);
  j.end_object();
  return j.take();
}

std::int64_t count_input_tokens(const Request& r) {
  std::int64_t framing = 3 + 4 * static_cast<std::int64_t>(r.messages.size());
  for (const auto& t : r.tools) {
    framing += static_cast<std::int64_t>(
        (t.name.size() + t.description.size() + t.parameters.size() + 3) / 4);
  }
  return static_cast<std::int64_t>((r.text_chars + 3) / 4) + framing +
         static_cast<std::int64_t>(r.images) * kImageMaxTokens;
}

namespace {

class MessagesStreamDecoder final : public StreamDecoder {
 public:
  void feed(std::string_view, std::string_view data, std::vector<StreamEvent>& out) override {
    auto parsed = json::parse_object(data, 1);
    if (!parsed) return;
    dom::element doc = *parsed;
    const auto type = json::str(doc, "type");
    if (type == "message_start") {
      StreamEvent e{.kind = StreamEvent::Kind::kStart,
                    .id = std::string(json::str(doc["message"], "id"))};
      dom::element u;
      if (json::member(json::member(doc, "message"), "usage").get(u) == simdjson::SUCCESS)
        read_usage(u, usage_);
      e.usage = usage_;
      out.push_back(std::move(e));
    } else if (type == "content_block_start") {
      const auto index = json::num(doc, "index");
      dom::element b;
      if (doc["content_block"].get(b) != simdjson::SUCCESS) return;
      const auto btype = json::str(b, "type");
      if (btype == "tool_use") {
        const int ti = next_tool_++;
        tools_[index] = ti;
        out.push_back(StreamEvent{.kind = StreamEvent::Kind::kToolCallStart,
                                  .index = ti,
                                  .id = std::string(json::str(b, "id")),
                                  .name = std::string(json::str(b, "name"))});
      } else if (btype == "text") {
        auto t = json::str(b, "text");
        if (!t.empty())
          out.push_back(StreamEvent{.kind = StreamEvent::Kind::kTextDelta, .text = std::string(t)});
      }
    } else if (type == "content_block_delta") {
      const auto index = json::num(doc, "index");
      dom::element d;
      if (doc["delta"].get(d) != simdjson::SUCCESS) return;
      const auto dtype = json::str(d, "type");
      if (dtype == "text_delta") {
        out.push_back(StreamEvent{.kind = StreamEvent::Kind::kTextDelta,
                                  .text = std::string(json::str(d, "text"))});
      } else if (dtype == "input_json_delta") {
        auto it = tools_.find(index);
        auto pj = json::str(d, "partial_json");
        if (it != tools_.end() && !pj.empty()) {
          out.push_back(StreamEvent{.kind = StreamEvent::Kind::kToolArgsDelta,
                                    .index = it->second,
                                    .text = std::string(pj)});
        }
      }
    } else if (type == "message_delta") {
      dom::element u;
      if (json::member(doc, "usage").get(u) == simdjson::SUCCESS) {
        read_usage(u, usage_);
        bool missing = false;
        json::token_count(json::member(u, "output_tokens"), &missing);
        final_output_ = final_output_ || !missing;
      }
      std::string_view sr;
      if (doc["delta"]["stop_reason"].get(sr) == simdjson::SUCCESS) {
        out.push_back(
            StreamEvent{.kind = StreamEvent::Kind::kFinish, .finish = finish_from_stop(sr)});
      }
      out.push_back(StreamEvent{.kind = StreamEvent::Kind::kUsage, .usage = usage_});
    } else if (type == "message_stop") {
      done_ = true;
      // message_start's output count is a placeholder; the final one comes in message_delta.
      // Usage that never got it is not the whole usage: it is not trusted.
      if (usage_.present && !final_output_) {
        usage_.unreadable = true;
        out.push_back(StreamEvent{.kind = StreamEvent::Kind::kUsage, .usage = usage_});
      }
    } else if (type == "error") {
      out.push_back(StreamEvent{.kind = StreamEvent::Kind::kError,
                                .text = std::string(json::str(doc["error"], "message")),
                                .name = std::string(json::str(doc["error"], "type")),
                                .status = 500});
    }
  }
  bool done() const override { return done_; }

 private:
  Usage usage_;
  bool final_output_ = false;                    // a message_delta gave output_tokens
  std::unordered_map<std::int64_t, int> tools_;  // content block index -> tool call index
  int next_tool_ = 0;
  bool done_ = false;
};

class MessagesStreamEncoder final : public StreamEncoder {
 public:
  explicit MessagesStreamEncoder(std::string model) : model_(std::move(model)) {}

  void on_event(const StreamEvent& e, std::string& out) override {
    // One choice only: the format has no n, so the events of further choices are not its own.
    if (e.choice != 0) return;
    switch (e.kind) {
      case StreamEvent::Kind::kStart:
        if (e.usage.present) usage_ = e.usage;
        start(out);
        break;
      case StreamEvent::Kind::kTextDelta: {
        start(out);
        if (open_kind_ != 1) {
          close(out);
          open_block(out, 1, "{\"type\":\"text\",\"text\":\"\"}");
        }
        JsonWriter j;
        j.begin_object()
            .key("type")
            .value("content_block_delta")
            .key("index")
            .value(open_)
            .key("delta")
            .begin_object()
            .key("type")
            .value("text_delta")
            .key("text")
            .value(e.text)
            .end_object()
            .end_object();
        append_sse(out, "content_block_delta", j.str());
        break;
      }
      case StreamEvent::Kind::kToolCallStart: {
        start(out);
        close(out);
        JsonWriter b;
        b.begin_object()
            .key("type")
            .value("tool_use")
            .key("id")
            .value(e.id.empty() ? new_id("toolu_") : e.id)
            .key("name")
            .value(e.name)
            .key("input")
            .begin_object()
            .end_object()
            .end_object();
        open_block(out, 2, b.str());
        open_tool_ = e.index;
        break;
      }
      case StreamEvent::Kind::kToolArgsDelta: {
        if (open_kind_ != 2 || open_tool_ != e.index) break;
        JsonWriter j;
        j.begin_object()
            .key("type")
            .value("content_block_delta")
            .key("index")
            .value(open_)
            .key("delta")
            .begin_object()
            .key("type")
            .value("input_json_delta")
            .key("partial_json")
            .value(e.text)
            .end_object()
            .end_object();
        append_sse(out, "content_block_delta", j.str());
        break;
      }
      case StreamEvent::Kind::kFinish:
        finish_ = e.finish;
        break;
      case StreamEvent::Kind::kUsage:
        usage_ = e.usage;
        break;
      case StreamEvent::Kind::kError:
        fail(e.name, e.text, out);
        break;
    }
  }

  void finish(std::string& out) override {
    start(out);
    close(out);
    JsonWriter j;
    j.begin_object()
        .key("type")
        .value("message_delta")
        .key("delta")
        .begin_object()
        .key("stop_reason")
        .value(stop_reason(finish_, false))
        .key("stop_sequence")
        .null()
        .end_object()
        .key("usage");
    write_usage(j, usage_);
    j.end_object();
    append_sse(out, "message_delta", j.str());
    append_sse(out, "message_stop", "{\"type\":\"message_stop\"}");
  }

  void fail(std::string_view type, std::string_view message, std::string& out) override {
    JsonWriter j;
    j.begin_object()
        .key("type")
        .value("error")
        .key("error")
        .begin_object()
        .key("type")
        .value(type.empty() || type == "upstream_error" ? "api_error" : type)
        .key("message")
        .value(message)
        .end_object()
        .end_object();
    append_sse(out, "error", j.str());
  }

 private:
  void start(std::string& out) {
    if (started_) return;
    started_ = true;
    JsonWriter j;
    j.begin_object()
        .key("type")
        .value("message_start")
        .key("message")
        .begin_object()
        .key("id")
        .value(id_)
        .key("type")
        .value("message")
        .key("role")
        .value("assistant")
        .key("model")
        .value(model_)
        .key("content")
        .begin_array()
        .end_array()
        .key("stop_reason")
        .null()
        .key("stop_sequence")
        .null()
        .key("usage");
    write_usage(j, usage_);
    j.end_object().end_object();
    append_sse(out, "message_start", j.str());
    append_sse(out, "ping", "{\"type\":\"ping\"}");
  }
  void open_block(std::string& out, int kind, std::string_view block) {
    open_ = next_++;
    open_kind_ = kind;
    std::string ev = "{\"type\":\"content_block_start\",\"index\":" + std::to_string(open_) +
                     ",\"content_block\":";
    ev += block;
    ev += "}";
    append_sse(out, "content_block_start", ev);
  }
  void close(std::string& out) {
    if (open_kind_ == 0) return;
    append_sse(out, "content_block_stop",
               "{\"type\":\"content_block_stop\",\"index\":" + std::to_string(open_) + "}");
    open_kind_ = 0;
    open_tool_ = -1;
  }

  std::string model_;
  std::string id_ = new_id("msg_");
  bool started_ = false;
  int open_ = -1;
  int open_kind_ = 0;  // 0 none, 1 text, 2 tool_use
  int open_tool_ = -1;
  int next_ = 0;
  FinishReason finish_ = FinishReason::kStop;
  Usage usage_;
};

}  // namespace

std::unique_ptr<StreamDecoder> make_messages_stream_decoder() {
  return std::make_unique<MessagesStreamDecoder>();
}

std::unique_ptr<StreamEncoder> make_messages_stream_encoder(std::string model) {
  return std::make_unique<MessagesStreamEncoder>(std::move(model));
}

}  // namespace bw::api
