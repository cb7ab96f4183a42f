#include "api/chat.h"

#include <ctime>

#include "api/json_read.h"
#include "common/json_util.h"

namespace bw::api {

namespace dom = simdjson::dom;

void append_sse(std::string& out, std::string_view name, std::string_view json) {
  if (!name.empty()) {
    out += "event: ";
    out += name;
    out += '\n';
  }
  out += "data: ";
  out += json;
  out += "\n\n";
}

namespace {

// Text of a content value: a string, or the text parts of an array.
Result<Ok> read_user_content(dom::element content, std::vector<Part>& parts, std::size_t& chars,
                             std::size_t& images) {
  std::string_view s;
  if (content.get(s) == simdjson::SUCCESS) {
    parts.push_back(Part{.kind = Part::Kind::kText, .text = std::string(s)});
    chars += s.size();
    return Ok{};
  }
  dom::array arr;
  if (content.get(arr) != simdjson::SUCCESS) {
    return invalid("A message's content must be a string or an array of content parts.",
                   "messages");
  }
  for (auto p : arr) {
    auto type = json::str(p, "type");
    if (type == "text") {
      std::string_view t;
      if (p["text"].get(t) != simdjson::SUCCESS) {
        return invalid("A text content part needs a 'text' string.", "messages");
      }
      parts.push_back(Part{.kind = Part::Kind::kText, .text = std::string(t)});
      chars += t.size();
    } else if (type == "image_url") {
      std::string_view url;
      if (p["image_url"]["url"].get(url) != simdjson::SUCCESS &&
          p["image_url"].get(url) != simdjson::SUCCESS) {
        return invalid("An image_url part needs image_url.url.", "messages");
      }
      if (auto ok = check_image_url(url); !ok) return ok.error();
      Part img{.kind = Part::Kind::kImage};
      if (!split_data_url(url, img.media_type, img.data)) img.image_url = std::string(url);
      parts.push_back(std::move(img));
      ++images;
    } else {
      return invalid("Unsupported content part type '" + std::string(type) + "'.", "messages");
    }
  }
  return Ok{};
}

void write_content_parts(JsonWriter& j, const std::vector<Part>& parts, bool& any_image) {
  bool only_text = true;
  for (const auto& p : parts) only_text = only_text && p.kind == Part::Kind::kText;
  if (only_text) {
    std::string text;
    for (const auto& p : parts) text += p.text;
    j.value(text);
    return;
  }
  j.begin_array();
  for (const auto& p : parts) {
    if (p.kind == Part::Kind::kText) {
      j.begin_object().key("type").value("text").key("text").value(p.text).end_object();
    } else if (p.kind == Part::Kind::kImage) {
      any_image = true;
      std::string url =
          p.image_url.empty() ? "data:" + p.media_type + ";base64," + p.data : p.image_url;
      j.begin_object()
          .key("type")
          .value("image_url")
          .key("image_url")
          .begin_object()
          .key("url")
          .value(url)
          .end_object()
          .end_object();
    }
  }
  j.end_array();
}

FinishReason finish_from_chat(std::string_view f) {
  if (f == "length") return FinishReason::kLength;
  if (f == "tool_calls" || f == "function_call") return FinishReason::kToolCalls;
  if (f == "content_filter") return FinishReason::kContentFilter;
  return FinishReason::kStop;
}

void write_usage(JsonWriter& j, const Usage& u) {
  j.begin_object()
      .key("prompt_tokens")
      .value(u.prompt_tokens)
      .key("completion_tokens")
      .value(u.completion_tokens)
      .key("total_tokens")
      .value(u.prompt_tokens + u.completion_tokens)
      .key("prompt_tokens_details")
      .begin_object()
      .key("cached_tokens")
      .value(u.cached_tokens)
      .end_object()
      .key("completion_tokens_details")
      .begin_object()
      .key("reasoning_tokens")
      .value(u.reasoning_tokens)
      .end_object()
      .end_object();
}

}  // namespace

void read_openai_usage(dom::element u, const OpenAiUsageNames& names, Usage& out) {
  if (!u.is_object()) return;
  out.present = true;
  using json::Need;
  json::read_count(json::member(u, names.input), Need::kAlways, out.prompt_tokens, out.unreadable);
  json::read_count(json::member(u, names.output),
                   names.output_always ? Need::kAlways : Need::kIfPresent, out.completion_tokens,
                   out.unreadable);
  json::read_count(json::member(json::member(u, names.input_details), "cached_tokens"),
                   Need::kDiscount, out.cached_tokens, out.unreadable);
  json::read_count(json::member(json::member(u, names.output_details), "reasoning_tokens"),
                   Need::kDiscount, out.reasoning_tokens, out.unreadable);
}

void read_chat_usage(dom::element u, Usage& out) {
  read_openai_usage(u, kChatUsageNames, out);
}

Usage read_chat_usage(std::string_view usage_json) {
  Usage u;
  auto doc = json::parse_object(usage_json, 2);
  if (doc) read_chat_usage(*doc, u);
  return u;
}

Result<Request> decode_chat_request(std::string_view body) {
  auto parsed = json::parse_request_object(body);
  if (!parsed) return parsed.error();
  dom::element doc = *parsed;
  Request r;
  r.format = Format::kChat;
  dom::object obj = doc.get_object().value_unsafe();
  for (auto field : obj) {
    const std::string_view k = field.key;
    dom::element v = field.value;
    if (k == "model") {
      std::string_view m;
      if (v.get(m) != simdjson::SUCCESS || m.empty()) {
        return invalid("model must be a non-empty string", "model");
      }
      r.model = std::string(m);
    } else if (k == "messages") {
      dom::array msgs;
      if (v.get(msgs) != simdjson::SUCCESS) return invalid("messages must be an array", "messages");
      for (auto m : msgs) {
        if (!m.is_object()) return invalid("each message must be an object", "messages");
        const auto role = json::str(m, "role");
        dom::element content;
        const bool has_content =
            m["content"].get(content) == simdjson::SUCCESS && !content.is_null();
        if (role == "system" || role == "developer") {
          if (!has_content) return invalid("A system message needs content.", "messages");
          std::vector<Part> parts;
          if (auto ok = read_user_content(content, parts, r.text_chars, r.images); !ok)
            return ok.error();
          for (auto& p : parts) {
            if (p.kind == Part::Kind::kText) r.system.push_back(std::move(p));
          }
        } else if (role == "user") {
          Message msg{Role::kUser, {}};
          if (!has_content) return invalid("A user message needs content.", "messages");
          if (auto ok = read_user_content(content, msg.parts, r.text_chars, r.images); !ok)
            return ok.error();
          r.messages.push_back(std::move(msg));
        } else if (role == "assistant") {
          Message msg{Role::kAssistant, {}};
          if (has_content) {
            if (auto ok = read_user_content(content, msg.parts, r.text_chars, r.images); !ok) {
              return ok.error();
            }
          }
          dom::array calls;
          if (m["tool_calls"].get(calls) == simdjson::SUCCESS) {
            for (auto c : calls) {
              Part p{.kind = Part::Kind::kToolCall};
              p.id = std::string(json::str(c, "id"));
              p.name = std::string(json::str(c["function"], "name"));
              p.arguments = std::string(json::str(c["function"], "arguments"));
              if (p.name.empty()) return invalid("A tool call needs function.name.", "messages");
              if (p.arguments.empty()) p.arguments = "{}";
              r.text_chars += p.arguments.size();
              msg.parts.push_back(std::move(p));
            }
          }
          r.messages.push_back(std::move(msg));
        } else if (role == "tool") {
          Part p{.kind = Part::Kind::kToolResult};
          p.id = std::string(json::str(m, "tool_call_id"));
          if (p.id.empty()) return invalid("A tool message needs tool_call_id.", "messages");
          if (has_content) {
            std::vector<Part> parts;
            if (auto ok = read_user_content(content, parts, r.text_chars, r.images); !ok)
              return ok.error();
            for (auto& t : parts) p.text += t.text;
          }
          if (!r.messages.empty() && r.messages.back().role == Role::kTool) {
            r.messages.back().parts.push_back(std::move(p));
          } else {
            r.messages.push_back(Message{Role::kTool, {std::move(p)}});
          }
        } else {
          return invalid("Unknown message role '" + std::string(role) +
                             "' (expected system, developer, user, assistant or tool).",
                         "messages");
        }
      }
    } else if (k == "tools") {
      dom::array tools;
      if (v.get(tools) != simdjson::SUCCESS) return invalid("tools must be an array", "tools");
      for (auto t : tools) {
        if (json::str(t, "type") != "function") {
          r.unmapped.push_back("tools[].type");
          continue;
        }
        Tool tool;
        tool.name = std::string(json::str(t["function"], "name"));
        if (tool.name.empty()) return invalid("A tool needs function.name.", "tools");
        tool.description = std::string(json::str(t["function"], "description"));
        dom::element params;
        if (t["function"]["parameters"].get(params) == simdjson::SUCCESS) {
          tool.parameters = json::raw(params);
        }
        r.tools.push_back(std::move(tool));
      }
    } else if (k == "tool_choice") {
      std::string_view s;
      if (v.get(s) == simdjson::SUCCESS) {
        r.tool_choice.mode = s == "none"       ? ToolChoice::Mode::kNone
                             : s == "required" ? ToolChoice::Mode::kRequired
                                               : ToolChoice::Mode::kAuto;
      } else {
        r.tool_choice.mode = ToolChoice::Mode::kNamed;
        r.tool_choice.name = std::string(json::str(v["function"], "name"));
      }
    } else if (k == "parallel_tool_calls") {
      bool b = true;
      if (v.get(b) == simdjson::SUCCESS) r.parallel_tool_calls = b;
    } else if (k == "temperature" || k == "top_p") {
      double d = 0;
      if (v.is_null()) continue;
      if (v.get(d) != simdjson::SUCCESS)
        return invalid(std::string(k) + " must be a number", std::string(k));
      (k == "temperature" ? r.temperature : r.top_p) = d;
    } else if (k == "max_tokens" || k == "max_completion_tokens") {
      if (v.is_null()) continue;
      std::int64_t n = 0;
      if (v.get(n) != simdjson::SUCCESS || n < 1) {
        return invalid(std::string(k) + " must be a positive integer", std::string(k));
      }
      r.max_tokens = n;
    } else if (k == "stop") {
      std::string_view s;
      dom::array arr;
      if (v.get(s) == simdjson::SUCCESS) {
        r.stop.emplace_back(s);
      } else if (v.get(arr) == simdjson::SUCCESS) {
        for (auto e : arr) {
          if (e.get(s) == simdjson::SUCCESS) r.stop.emplace_back(s);
        }
      }
    } else if (k == "response_format") {
      const auto type = json::str(v, "type");
      if (type == "json_object") {
        r.response_format.kind = ResponseFormat::Kind::kJsonObject;
      } else if (type == "json_schema") {
        r.response_format.kind = ResponseFormat::Kind::kJsonSchema;
        r.response_format.name = std::string(json::str(v["json_schema"], "name"));
        dom::element schema;
        if (v["json_schema"]["schema"].get(schema) == simdjson::SUCCESS) {
          r.response_format.schema = json::raw(schema);
        }
        bool strict = false;
        if (v["json_schema"]["strict"].get(strict) == simdjson::SUCCESS) {
          r.response_format.strict = strict;
        }
      }
    } else if (k == "stream") {
      bool b = false;
      if (!v.is_null() && v.get(b) != simdjson::SUCCESS)
        return invalid("stream must be a boolean", "stream");
      r.stream = b;
    } else if (k == "stream_options") {
      bool b = false;
      if (v["include_usage"].get(b) == simdjson::SUCCESS) r.stream_usage = b;
    } else if (k == "user") {
      r.user = std::string(json::str(doc, "user"));
    } else if (k == "strict_params") {
      bool b = false;
      if (v.get(b) == simdjson::SUCCESS) r.strict_params = b;
    } else if (k == "n") {
      // Choices: Gemini generates them (candidateCount); Anthropic cannot (refused when n > 1).
      std::int64_t n = 1;
      if (!v.is_null() && (v.get(n) != simdjson::SUCCESS || n < 1 || n > kMaxChoices)) {
        return invalid("n must be an integer from 1 to " + std::to_string(kMaxChoices), "n");
      }
      r.n = n;
    } else {
      r.unmapped.emplace_back(k);
    }
  }
  if (r.model.empty()) return invalid("you must provide a model parameter", "model");
  if (r.messages.empty() && r.system.empty())
    return invalid("messages must not be empty", "messages");
  if (auto ok = link_tool_results(r); !ok) return ok.error();
  return r;
}

std::string encode_chat_request(const Request& r, std::string_view model, std::int64_t max_tokens,
                                std::vector<std::string>& dropped) {
  JsonWriter j;
  j.begin_object().key("model").value(model).key("messages").begin_array();
  bool cache_dropped = false, image = false;
  if (!r.system.empty()) {
    std::string sys;
    for (const auto& p : r.system) {
      if (!sys.empty()) sys += "\n";
      sys += p.text;
      cache_dropped = cache_dropped || !p.cache_control.empty();
    }
    j.begin_object().key("role").value("system").key("content").value(sys).end_object();
  }
  for (const auto& m : r.messages) {
    std::vector<Part> rest;
    std::vector<const Part*> calls;
    for (const auto& p : m.parts) {
      cache_dropped = cache_dropped || !p.cache_control.empty();
      if (p.kind == Part::Kind::kToolResult) {
        j.begin_object()
            .key("role")
            .value("tool")
            .key("tool_call_id")
            .value(p.id)
            .key("content")
            .value(p.text)
            .end_object();
      } else if (p.kind == Part::Kind::kToolCall) {
        calls.push_back(&p);
      } else {
        rest.push_back(p);
      }
    }
    if (m.role == Role::kAssistant) {
      if (rest.empty() && calls.empty()) continue;
      j.begin_object().key("role").value("assistant").key("content");
      if (rest.empty()) {
        j.null();
      } else {
        write_content_parts(j, rest, image);
      }
      if (!calls.empty()) {
        j.key("tool_calls").begin_array();
        for (const auto* c : calls) {
          j.begin_object()
              .key("id")
              .value(c->id)
              .key("type")
              .value("function")
              .key("function")
              .begin_object()
              .key("name")
              .value(c->name)
              .key("arguments")
              .value(c->arguments)
              .end_object()
              .end_object();
        }
        j.end_array();
      }
      j.end_object();
    } else if (!rest.empty()) {
      j.begin_object()
          .key("role")
          .value(m.role == Role::kSystem ? "system" : "user")
          .key("content");
      write_content_parts(j, rest, image);
      j.end_object();
    }
  }
  j.end_array();
  if (cache_dropped) dropped.emplace_back("cache_control");
  if (!r.tools.empty()) {
    j.key("tools").begin_array();
    for (const auto& t : r.tools) {
      j.begin_object().key("type").value("function").key("function").begin_object();
      j.key("name").value(t.name);
      if (!t.description.empty()) j.key("description").value(t.description);
      if (!t.parameters.empty()) j.key("parameters").raw(t.parameters);
      j.end_object().end_object();
    }
    j.end_array();
    if (!r.parallel_tool_calls) j.key("parallel_tool_calls").value(false);
  }
  switch (r.tool_choice.mode) {
    case ToolChoice::Mode::kUnset:
      break;
    case ToolChoice::Mode::kAuto:
      j.key("tool_choice").value("auto");
      break;
    case ToolChoice::Mode::kNone:
      j.key("tool_choice").value("none");
      break;
    case ToolChoice::Mode::kRequired:
      j.key("tool_choice").value("required");
      break;
    case ToolChoice::Mode::kNamed:
      j.key("tool_choice")
          .begin_object()
          .key("type")
          .value("function")
          .key("function")
          .begin_object()
          .key("name")
          .value(r.tool_choice.name)
          .end_object()
          .end_object();
      break;
  }
  if (r.temperature) j.key("temperature").value(*r.temperature);
  if (r.top_p) j.key("top_p").value(*r.top_p);
  if (r.top_k) dropped.emplace_back("top_k");
  const std::int64_t cap = max_tokens > 0 ? max_tokens : r.max_tokens;
  if (cap > 0) j.key("max_tokens").value(cap);
  if (!r.stop.empty()) {
    j.key("stop").begin_array();
    for (const auto& s : r.stop) j.value(s);
    j.end_array();
  }
  if (r.response_format.kind == ResponseFormat::Kind::kJsonObject) {
    j.key("response_format").begin_object().key("type").value("json_object").end_object();
  } else if (r.response_format.kind == ResponseFormat::Kind::kJsonSchema) {
    j.key("response_format")
        .begin_object()
        .key("type")
        .value("json_schema")
        .key("json_schema")
        .begin_object()
        .key("name")
        .value(r.response_format.name.empty() ? std::string("response") : r.response_format.name);
    if (!r.response_format.schema.empty()) j.key("schema").raw(r.response_format.schema);
    if (r.response_format.strict) j.key("strict").value(true);
    j.end_object().end_object();
  }
  if (!r.user.empty()) j.key("user").value(r.user);
  if (r.stream) {
    j.key("stream").value(true);
    j.key("stream_options").begin_object().key("include_usage").value(true).end_object();
  }
  j.end_object();
  return j.take();
}

Result<Response> decode_chat_response(std::string_view body) {
  auto parsed = json::parse_object(body, 1);
  if (!parsed) return parsed.error();
  dom::element doc = *parsed;
  Response r;
  r.id = std::string(json::str(doc, "id"));
  r.model = std::string(json::str(doc, "model"));
  dom::array choices;
  if (doc["choices"].get(choices) == simdjson::SUCCESS && choices.size() > 0) {
    dom::element c = choices.at(0).value_unsafe();
    r.finish = finish_from_chat(json::str(c, "finish_reason"));
    auto text = json::str(c["message"], "content");
    if (!text.empty())
      r.content.push_back(Part{.kind = Part::Kind::kText, .text = std::string(text)});
    dom::array calls;
    if (c["message"]["tool_calls"].get(calls) == simdjson::SUCCESS) {
      for (auto t : calls) {
        Part p{.kind = Part::Kind::kToolCall};
        p.id = std::string(json::str(t, "id"));
        p.name = std::string(json::str(t["function"], "name"));
        p.arguments = std::string(json::str(t["function"], "arguments"));
        r.content.push_back(std::move(p));
      }
    }
  }
  dom::element u;
  if (json::member(doc, "usage").get(u) == simdjson::SUCCESS) read_chat_usage(u, r.usage);
  return r;
}

namespace {

// One element of "choices": the message (text joined, tool calls) and its finish reason.
void write_choice(JsonWriter& j, std::int64_t index, const std::vector<Part>& content,
                  FinishReason finish) {
  j.begin_object()
      .key("index")
      .value(index)
      .key("message")
      .begin_object()
      .key("role")
      .value("assistant")
      .key("content");
  std::string text;
  bool any_text = false;
  for (const auto& p : content) {
    if (p.kind == Part::Kind::kText) {
      text += p.text;
      any_text = true;
    }
  }
  if (any_text) {
    j.value(text);
  } else {
    j.null();
  }
  bool calls = false;
  for (const auto& p : content) {
    if (p.kind != Part::Kind::kToolCall) continue;
    if (!calls) j.key("tool_calls").begin_array();
    calls = true;
    j.begin_object()
        .key("id")
        .value(p.id)
        .key("type")
        .value("function")
        .key("function")
        .begin_object()
        .key("name")
        .value(p.name)
        .key("arguments")
        .value(p.arguments)
        .end_object()
        .end_object();
  }
  if (calls) j.end_array();
  j.end_object().key("finish_reason").value(chat_finish(finish)).end_object();
}

}  // namespace

std::string encode_chat_response(const Response& r, std::string_view model) {
  JsonWriter j;
  j.begin_object()
      .key("id")
      .value(r.id.empty() ? new_id("chatcmpl-") : r.id)
      .key("object")
      .value("chat.completion")
      .key("created")
      .value(static_cast<std::int64_t>(std::time(nullptr)))
      .key("model")
      .value(model)
      .key("choices")
      .begin_array();
  write_choice(j, 0, r.content, r.finish);
  std::int64_t index = 1;
  for (const auto& c : r.more_choices) write_choice(j, index++, c.content, c.finish);
  j.end_array();
  j.key("usage");
  write_usage(j, r.usage);
  j.end_object();
  return j.take();
}

namespace {

class ChatStreamDecoder final : public StreamDecoder {
 public:
  void feed(std::string_view, std::string_view data, std::vector<StreamEvent>& out) override {
    if (data == "[DONE]") {
      done_ = true;
      return;
    }
    auto parsed = json::parse_object(data, 1);
    if (!parsed) return;
    dom::element doc = *parsed;
    if (!started_) {
      started_ = true;
      out.push_back(
          StreamEvent{.kind = StreamEvent::Kind::kStart, .id = std::string(json::str(doc, "id"))});
    }
    dom::element err;
    if (doc["error"].get(err) == simdjson::SUCCESS && err.is_object()) {
      out.push_back(StreamEvent{.kind = StreamEvent::Kind::kError,
                                .text = std::string(json::str(err, "message")),
                                .name = "api_error",
                                .status = 500});
      return;
    }
    dom::array choices;
    if (doc["choices"].get(choices) == simdjson::SUCCESS) {
      for (auto c : choices) {
        dom::element delta;
        if (c["delta"].get(delta) != simdjson::SUCCESS) continue;
        std::string_view text;
        if (c["delta"]["content"].get(text) == simdjson::SUCCESS && !text.empty()) {
          out.push_back(
              StreamEvent{.kind = StreamEvent::Kind::kTextDelta, .text = std::string(text)});
        }
        dom::array calls;
        if (c["delta"]["tool_calls"].get(calls) == simdjson::SUCCESS) {
          for (auto t : calls) {
            const int index = static_cast<int>(json::num(t, "index"));
            auto id = json::str(t, "id");
            auto name = json::str(t["function"], "name");
            if (!id.empty() || !name.empty()) {
              out.push_back(StreamEvent{.kind = StreamEvent::Kind::kToolCallStart,
                                        .index = index,
                                        .id = std::string(id),
                                        .name = std::string(name)});
            }
            auto args = json::str(t["function"], "arguments");
            if (!args.empty()) {
              out.push_back(StreamEvent{.kind = StreamEvent::Kind::kToolArgsDelta,
                                        .index = index,
                                        .text = std::string(args)});
            }
          }
        }
        (void)delta;
        std::string_view fr;
        if (c["finish_reason"].get(fr) == simdjson::SUCCESS) {
          out.push_back(
              StreamEvent{.kind = StreamEvent::Kind::kFinish, .finish = finish_from_chat(fr)});
        }
      }
    }
    dom::element u;
    if (json::member(doc, "usage").get(u) == simdjson::SUCCESS && u.is_object()) {
      StreamEvent e{.kind = StreamEvent::Kind::kUsage};
      read_chat_usage(u, e.usage);
      out.push_back(std::move(e));
    }
  }
  bool done() const override { return done_; }

 private:
  bool started_ = false;
  bool done_ = false;
};

// Chat's n > 1 (events of several choices, each with its index): every choice opens with its
// own role delta and ends with its own finish_reason, as OpenAI streams them.
class ChatStreamEncoder final : public StreamEncoder {
 public:
  ChatStreamEncoder(std::string model, bool include_usage)
      : model_(std::move(model)), include_usage_(include_usage) {}

  void on_event(const StreamEvent& e, std::string& out) override {
    if (e.choice < 0 || e.choice >= kMaxChoices) return;
    const int c = e.choice;
    switch (e.kind) {
      case StreamEvent::Kind::kStart:
        if (!state(0).started) start(0, out);
        break;
      case StreamEvent::Kind::kTextDelta: {
        if (!state(c).started) start(c, out);
        JsonWriter j = prefix(c);
        j.key("delta").begin_object().key("content").value(e.text).end_object();
        end_chunk(j, out);
        break;
      }
      case StreamEvent::Kind::kToolCallStart: {
        if (!state(c).started) start(c, out);
        JsonWriter j = prefix(c);
        j.key("delta")
            .begin_object()
            .key("tool_calls")
            .begin_array()
            .begin_object()
            .key("index")
            .value(e.index)
            .key("id")
            .value(e.id)
            .key("type")
            .value("function")
            .key("function")
            .begin_object()
            .key("name")
            .value(e.name)
            .key("arguments")
            .value("")
            .end_object()
            .end_object()
            .end_array()
            .end_object();
        end_chunk(j, out);
        break;
      }
      case StreamEvent::Kind::kToolArgsDelta: {
        JsonWriter j = prefix(c);
        j.key("delta")
            .begin_object()
            .key("tool_calls")
            .begin_array()
            .begin_object()
            .key("index")
            .value(e.index)
            .key("function")
            .begin_object()
            .key("arguments")
            .value(e.text)
            .end_object()
            .end_object()
            .end_array()
            .end_object();
        end_chunk(j, out);
        break;
      }
      case StreamEvent::Kind::kFinish: {
        if (!state(c).started) start(c, out);
        if (state(c).finished) break;
        state(c).finished = true;
        JsonWriter j = prefix(c);
        j.key("delta")
            .begin_object()
            .end_object()
            .key("finish_reason")
            .value(chat_finish(e.finish));
        end_chunk(j, out, false);
        break;
      }
      case StreamEvent::Kind::kUsage:
        usage_ = e.usage;
        break;
      case StreamEvent::Kind::kError:
        fail(e.name, e.text, out);
        break;
    }
  }

  void finish(std::string& out) override {
    if (!state(0).started) start(0, out);
    // Every choice that began ends with a finish_reason, also when the upstream sent none.
    const int choices = 1 + static_cast<int>(more_.size());
    for (int c = 0; c < choices; ++c) {
      if (state(c).started && !state(c).finished) {
        on_event(StreamEvent{.kind = StreamEvent::Kind::kFinish, .choice = c}, out);
      }
    }
    if (include_usage_ && usage_.present) {
      JsonWriter j;
      j.begin_object()
          .key("id")
          .value(id_)
          .key("object")
          .value("chat.completion.chunk")
          .key("created")
          .value(created_)
          .key("model")
          .value(model_)
          .key("choices")
          .begin_array()
          .end_array()
          .key("usage");
      write_usage(j, usage_);
      j.end_object();
      append_sse(out, {}, j.str());
    }
    out += "data: [DONE]\n\n";
  }

  void fail(std::string_view type, std::string_view message, std::string& out) override {
    append_sse(out, {}, openai_error_body(message, type.empty() ? "upstream_error" : type, ""));
  }

 private:
  struct Choice {
    bool started = false;   // its role delta was sent
    bool finished = false;  // its finish_reason was sent
  };
  // `c` is below kMaxChoices (on_event checks it). The first choice's state is inline: one
  // choice (the common case) allocates nothing.
  Choice& state(int c) {
    if (c == 0) return first_;
    const auto i = static_cast<std::size_t>(c - 1);
    if (i >= more_.size()) more_.resize(i + 1);
    return more_[i];
  }
  void start(int c, std::string& out) {
    state(c).started = true;
    JsonWriter j = prefix(c);
    j.key("delta")
        .begin_object()
        .key("role")
        .value("assistant")
        .key("content")
        .value("")
        .end_object();
    end_chunk(j, out);
  }
  JsonWriter prefix(int c) {
    JsonWriter j;
    j.begin_object()
        .key("id")
        .value(id_)
        .key("object")
        .value("chat.completion.chunk")
        .key("created")
        .value(created_)
        .key("model")
        .value(model_)
        .key("choices")
        .begin_array()
        .begin_object()
        .key("index")
        .value(c);
    return j;
  }
  void end_chunk(JsonWriter& j, std::string& out, bool null_finish = true) {
    if (null_finish) j.key("finish_reason").null();
    j.end_object().end_array().end_object();
    append_sse(out, {}, j.str());
  }

  std::string model_;
  bool include_usage_;
  std::string id_ = new_id("chatcmpl-");
  std::int64_t created_ = static_cast<std::int64_t>(std::time(nullptr));
  Choice first_;
  std::vector<Choice> more_;  // the choices after the first
  Usage usage_;
};

}  // namespace

std::unique_ptr<StreamDecoder> make_chat_stream_decoder() {
  return std::make_unique<ChatStreamDecoder>();
}

std::unique_ptr<StreamEncoder> make_chat_stream_encoder(std::string model, bool include_usage) {
  return std::make_unique<ChatStreamEncoder>(std::move(model), include_usage);
}

}  // namespace bw::api
