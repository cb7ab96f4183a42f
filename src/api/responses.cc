#include "api/responses.h"

#include <ctime>

#include "api/chat.h"
#include "api/json_read.h"
#include "common/json_util.h"

namespace bw::api {

namespace dom = simdjson::dom;

namespace {

Result<Ok> read_content(dom::element content, Message& msg, Request& r) {
  std::string_view s;
  if (content.get(s) == simdjson::SUCCESS) {
    msg.parts.push_back(Part{.kind = Part::Kind::kText, .text = std::string(s)});
    r.text_chars += s.size();
    return Ok{};
  }
  dom::array arr;
  if (content.get(arr) != simdjson::SUCCESS) {
    return invalid("input: content must be a string or an array of content items.", "input");
  }
  for (auto p : arr) {
    const auto type = json::str(p, "type");
    if (type == "input_text" || type == "output_text" || type == "text") {
      std::string_view t;
      if (p["text"].get(t) != simdjson::SUCCESS) {
        return invalid("input: a text content item needs 'text'.", "input");
      }
      msg.parts.push_back(Part{.kind = Part::Kind::kText, .text = std::string(t)});
      r.text_chars += t.size();
    } else if (type == "input_image") {
      auto url = json::str(p, "image_url");
      if (url.empty()) {
        ++r.images;  // passed through to an OpenAI upstream, which bills it
        r.unmapped.emplace_back("input_image.file_id");
        continue;
      }
      if (auto ok = check_image_url(url); !ok) return ok.error();
      Part img{.kind = Part::Kind::kImage};
      if (!split_data_url(url, img.media_type, img.data)) img.image_url = std::string(url);
      msg.parts.push_back(std::move(img));
      ++r.images;
    } else if (type == "refusal") {
      msg.parts.push_back(
          Part{.kind = Part::Kind::kText, .text = std::string(json::str(p, "refusal"))});
    } else if (type == "input_file" || type == "input_audio") {
      r.other_chars += json::raw(p).size();  // passed through to an OpenAI upstream
      r.unmapped.push_back(std::string(type));
    } else {
      return invalid("input: unknown content item type '" + std::string(type) + "'.", "input");
    }
  }
  return Ok{};
}

FinishReason finish_of(const Response& r) {
  for (const auto& p : r.content) {
    if (p.kind == Part::Kind::kToolCall) return FinishReason::kToolCalls;
  }
  return r.finish;
}

void write_usage(JsonWriter& j, const Usage& u) {
  j.begin_object()
      .key("input_tokens")
      .value(u.prompt_tokens)
      .key("input_tokens_details")
      .begin_object()
      .key("cached_tokens")
      .value(u.cached_tokens)
      .end_object()
      .key("output_tokens")
      .value(u.completion_tokens)
      .key("output_tokens_details")
      .begin_object()
      .key("reasoning_tokens")
      .value(u.reasoning_tokens)
      .end_object()
      .key("total_tokens")
      .value(u.prompt_tokens + u.completion_tokens)
      .end_object();
}

void read_usage(dom::element u, Usage& out) {
  read_openai_usage(u,
                    {.input = "input_tokens",
                     .output = "output_tokens",
                     .input_details = "input_tokens_details",
                     .output_details = "output_tokens_details"},
                    out);
}

std::string item_id(std::string_view prefix, const std::string& call_id) {
  if (!call_id.empty() && call_id.starts_with("call_"))
    return std::string(prefix) + call_id.substr(5);
  return new_id(prefix);
}

// One output item (a message of consecutive text parts, or a function call), completed.
void write_output(JsonWriter& j, const Response& r) {
  j.begin_array();
  std::string text, message_id;
  bool in_text = false;
  auto flush = [&] {
    if (!in_text) return;
    j.begin_object()
        .key("type")
        .value("message")
        .key("id")
        .value(message_id.empty() ? new_id("msg_") : message_id)
        .key("status")
        .value("completed")
        .key("role")
        .value("assistant")
        .key("content")
        .begin_array()
        .begin_object()
        .key("type")
        .value("output_text")
        .key("text")
        .value(text)
        .key("annotations")
        .begin_array()
        .end_array()
        .end_object()
        .end_array()
        .end_object();
    text.clear();
    message_id.clear();
    in_text = false;
  };
  for (const auto& p : r.content) {
    if (p.kind == Part::Kind::kText) {
      // A streamed message keeps the item id its events used (the text part's id).
      if (!in_text) message_id = p.id;
      text += p.text;
      in_text = true;
    } else if (p.kind == Part::Kind::kToolCall) {
      flush();
      j.begin_object()
          .key("type")
          .value("function_call")
          .key("id")
          .value(item_id("fc_", p.id))
          .key("call_id")
          .value(p.id)
          .key("name")
          .value(p.name)
          .key("arguments")
          .value(p.arguments)
          .key("status")
          .value("completed")
          .end_object();
    }
  }
  flush();
  j.end_array();
}

void write_object(JsonWriter& j, const Response* r, const ResponseMeta& m,
                  std::string_view status) {
  j.begin_object()
      .key("id")
      .value(m.id)
      .key("object")
      .value("response")
      .key("created_at")
      .value(m.created_at)
      .key("status")
      .value(status)
      .key("error")
      .null()
      .key("incomplete_details");
  if (status == "incomplete" && r) {
    j.begin_object()
        .key("reason")
        .value(r->finish == FinishReason::kContentFilter ? "content_filter" : "max_output_tokens")
        .end_object();
  } else {
    j.null();
  }
  j.key("instructions");
  if (m.instructions.empty()) {
    j.null();
  } else {
    j.value(m.instructions);
  }
  j.key("max_output_tokens");
  if (m.max_output_tokens > 0) {
    j.value(m.max_output_tokens);
  } else {
    j.null();
  }
  j.key("model").value(m.model).key("output");
  if (r) {
    write_output(j, *r);
  } else {
    j.begin_array().end_array();
  }
  j.key("parallel_tool_calls").value(m.parallel_tool_calls).key("previous_response_id");
  if (m.previous_response_id.empty()) {
    j.null();
  } else {
    j.value(m.previous_response_id);
  }
  j.key("store").value(m.store).key("temperature");
  if (m.temperature) {
    j.value(*m.temperature);
  } else {
    j.null();
  }
  j.key("text")
      .raw("{\"format\":{\"type\":\"text\"}}")
      .key("tool_choice")
      .value("auto")
      .key("tools")
      .begin_array()
      .end_array()
      .key("top_p");
  if (m.top_p) {
    j.value(*m.top_p);
  } else {
    j.null();
  }
  j.key("truncation").value("disabled").key("usage");
  if (r && r->usage.present) {
    write_usage(j, r->usage);
  } else {
    j.null();
  }
  j.key("metadata").begin_object().end_object().end_object();
}

std::string_view status_of(const Response& r) {
  const auto f = finish_of(r);
  return f == FinishReason::kLength || f == FinishReason::kContentFilter ? "incomplete"
                                                                         : "completed";
}

}  // namespace

Result<Request> decode_responses_request(std::string_view body) {
  auto parsed = json::parse_request_object(body);
  if (!parsed) return parsed.error();
  dom::element doc = *parsed;
  Request r;
  r.format = Format::kResponses;
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
    } else if (k == "instructions") {
      if (v.is_null()) continue;
      std::string_view s;
      if (v.get(s) != simdjson::SUCCESS)
        return invalid("instructions must be a string", "instructions");
      r.instructions = std::string(s);
      r.system.push_back(Part{.kind = Part::Kind::kText, .text = std::string(s)});
      r.text_chars += s.size();
    } else if (k == "input") {
      std::string_view s;
      dom::array items;
      if (v.get(s) == simdjson::SUCCESS) {
        r.messages.push_back(
            Message{Role::kUser, {Part{.kind = Part::Kind::kText, .text = std::string(s)}}});
        r.text_chars += s.size();
        continue;
      }
      if (v.get(items) != simdjson::SUCCESS) {
        return invalid("input must be a string or an array of input items", "input");
      }
      for (auto item : items) {
        if (!item.is_object()) return invalid("input: each item must be an object", "input");
        auto type = json::str(item, "type");
        if (type.empty() || type == "message") {
          const auto role = json::str(item, "role");
          Message msg;
          if (role == "user") {
            msg.role = Role::kUser;
          } else if (role == "assistant") {
            msg.role = Role::kAssistant;
          } else if (role == "system" || role == "developer") {
            msg.role = Role::kSystem;
          } else {
            return invalid("input: unknown role '" + std::string(role) +
                               "' (expected user, assistant, system or developer).",
                           "input");
          }
          dom::element content;
          if (item["content"].get(content) != simdjson::SUCCESS) {
            return invalid("input: a message item needs content.", "input");
          }
          if (auto ok = read_content(content, msg, r); !ok) return ok.error();
          if (msg.role == Role::kSystem) {
            for (auto& p : msg.parts) r.system.push_back(std::move(p));
          } else {
            r.messages.push_back(std::move(msg));
          }
        } else if (type == "function_call") {
          Part p{.kind = Part::Kind::kToolCall};
          p.id = std::string(json::str(item, "call_id"));
          p.name = std::string(json::str(item, "name"));
          p.arguments = std::string(json::str(item, "arguments"));
          if (p.id.empty() || p.name.empty()) {
            return invalid("input: a function_call item needs call_id and name.", "input");
          }
          if (p.arguments.empty()) p.arguments = "{}";
          r.text_chars += p.arguments.size();
          if (r.messages.empty() || r.messages.back().role != Role::kAssistant) {
            r.messages.push_back(Message{Role::kAssistant, {}});
          }
          r.messages.back().parts.push_back(std::move(p));
        } else if (type == "function_call_output") {
          Part p{.kind = Part::Kind::kToolResult};
          p.id = std::string(json::str(item, "call_id"));
          if (p.id.empty())
            return invalid("input: a function_call_output item needs call_id.", "input");
          std::string_view out;
          dom::array arr;
          if (item["output"].get(out) == simdjson::SUCCESS) {
            p.text = std::string(out);
          } else if (item["output"].get(arr) == simdjson::SUCCESS) {
            for (auto o : arr) p.text += json::str(o, "text");
          }
          r.text_chars += p.text.size();
          if (r.messages.empty() || r.messages.back().role != Role::kTool) {
            r.messages.push_back(Message{Role::kTool, {}});
          }
          r.messages.back().parts.push_back(std::move(p));
        } else if (type == "reasoning" || type == "item_reference") {
          r.other_chars += json::raw(item).size();
          r.unmapped.push_back("input." + std::string(type));
        } else {
          return invalid("input: unknown item type '" + std::string(type) + "'.", "input");
        }
      }
    } else if (k == "tools") {
      dom::array tools;
      if (v.get(tools) != simdjson::SUCCESS) return invalid("tools must be an array", "tools");
      r.other_chars += k.size() + json::raw(v).size();
      for (auto t : tools) {
        if (json::str(t, "type") != "function") {
          r.unmapped.push_back("tools." + std::string(json::str(t, "type")));
          continue;
        }
        Tool tool;
        tool.name = std::string(json::str(t, "name"));
        if (tool.name.empty()) return invalid("tools: a function tool needs a name.", "tools");
        tool.description = std::string(json::str(t, "description"));
        dom::element params;
        if (t["parameters"].get(params) == simdjson::SUCCESS && !params.is_null()) {
          tool.parameters = json::raw(params);
        }
        r.tools.push_back(std::move(tool));
      }
    } else if (k == "tool_choice") {
      r.other_chars += k.size() + json::raw(v).size();
      std::string_view s;
      if (v.get(s) == simdjson::SUCCESS) {
        r.tool_choice.mode = s == "none"       ? ToolChoice::Mode::kNone
                             : s == "required" ? ToolChoice::Mode::kRequired
                                               : ToolChoice::Mode::kAuto;
      } else {
        r.tool_choice.mode = ToolChoice::Mode::kNamed;
        r.tool_choice.name = std::string(json::str(v, "name"));
      }
    } else if (k == "parallel_tool_calls") {
      bool b = true;
      if (v.get(b) == simdjson::SUCCESS) r.parallel_tool_calls = b;
    } else if (k == "max_output_tokens") {
      if (v.is_null()) continue;
      std::int64_t n = 0;
      if (v.get(n) != simdjson::SUCCESS || n < 1) {
        return invalid("max_output_tokens must be a positive integer", "max_output_tokens");
      }
      r.max_tokens = n;
    } else if (k == "temperature" || k == "top_p") {
      if (v.is_null()) continue;
      double d = 0;
      if (v.get(d) != simdjson::SUCCESS)
        return invalid(std::string(k) + " must be a number", std::string(k));
      (k == "temperature" ? r.temperature : r.top_p) = d;
    } else if (k == "stream") {
      bool b = false;
      if (!v.is_null() && v.get(b) != simdjson::SUCCESS)
        return invalid("stream must be a boolean", "stream");
      r.stream = b;
    } else if (k == "store") {
      bool b = true;
      if (v.get(b) == simdjson::SUCCESS) r.store = b;
    } else if (k == "previous_response_id") {
      r.previous_response_id = std::string(json::str(doc, "previous_response_id"));
    } else if (k == "text") {
      r.other_chars += k.size() + json::raw(v).size();  // the output schema
      dom::element f;
      if (v["format"].get(f) == simdjson::SUCCESS) {
        const auto type = json::str(f, "type");
        if (type == "json_object") {
          r.response_format.kind = ResponseFormat::Kind::kJsonObject;
        } else if (type == "json_schema") {
          r.response_format.kind = ResponseFormat::Kind::kJsonSchema;
          r.response_format.name = std::string(json::str(f, "name"));
          dom::element schema;
          if (f["schema"].get(schema) == simdjson::SUCCESS)
            r.response_format.schema = json::raw(schema);
          bool strict = false;
          if (f["strict"].get(strict) == simdjson::SUCCESS) r.response_format.strict = strict;
        }
      }
    } else if (k == "user") {
      r.user = std::string(json::str(doc, "user"));
    } else if (k == "strict_params") {
      bool b = false;
      if (v.get(b) == simdjson::SUCCESS) r.strict_params = b;
    } else if (k == "metadata" || k == "truncation" || k == "include" || k == "background") {
      // Gateway-side or default-valued fields: nothing for an upstream to lose.
      if (k == "background") {
        bool b = false;
        if (v.get(b) == simdjson::SUCCESS && b) r.unmapped.emplace_back(k);
      }
    } else {
      // Passed through unchanged to an OpenAI upstream, which reads it.
      r.other_chars += k.size() + json::raw(v).size();
      r.unmapped.emplace_back(k);
    }
  }
  if (r.model.empty()) return invalid("you must provide a model parameter", "model");
  if (r.messages.empty() && r.previous_response_id.empty())
    return invalid("input is required", "input");
  return r;
}

ResponseMeta response_meta(const Request& r, std::string_view model) {
  ResponseMeta m;
  m.id = new_id("resp_");
  m.model = std::string(model);
  m.created_at = static_cast<std::int64_t>(std::time(nullptr));
  m.instructions = r.instructions;
  m.previous_response_id = r.previous_response_id;
  m.max_output_tokens = r.max_tokens;
  m.store = r.store;
  m.temperature = r.temperature;
  m.top_p = r.top_p;
  m.parallel_tool_calls = r.parallel_tool_calls;
  return m;
}

std::string encode_responses_response(const Response& r, const ResponseMeta& meta) {
  JsonWriter j;
  write_object(j, &r, meta, status_of(r));
  return j.take();
}

Result<Response> decode_responses_response(std::string_view body) {
  auto parsed = json::parse_object(body, 1);
  if (!parsed) return parsed.error();
  dom::element doc = *parsed;
  Response r;
  r.id = std::string(json::str(doc, "id"));
  r.model = std::string(json::str(doc, "model"));
  dom::array output;
  if (doc["output"].get(output) == simdjson::SUCCESS) {
    for (auto item : output) {
      const auto type = json::str(item, "type");
      if (type == "message") {
        dom::array content;
        if (item["content"].get(content) == simdjson::SUCCESS) {
          for (auto c : content) {
            if (json::str(c, "type") == "output_text") {
              r.content.push_back(
                  Part{.kind = Part::Kind::kText, .text = std::string(json::str(c, "text"))});
            }
          }
        }
      } else if (type == "function_call") {
        Part p{.kind = Part::Kind::kToolCall};
        p.id = std::string(json::str(item, "call_id"));
        p.name = std::string(json::str(item, "name"));
        p.arguments = std::string(json::str(item, "arguments"));
        r.content.push_back(std::move(p));
        r.finish = FinishReason::kToolCalls;
      }
    }
  }
  if (json::str(doc, "status") == "incomplete") {
    r.finish = json::str(doc["incomplete_details"], "reason") == "content_filter"
                   ? FinishReason::kContentFilter
                   : FinishReason::kLength;
  }
  dom::element u;
  if (json::member(doc, "usage").get(u) == simdjson::SUCCESS) read_usage(u, r.usage);
  return r;
}

// ----------------------------------------------------------------------------------------------

ResponsesStreamEncoder::ResponsesStreamEncoder(ResponseMeta meta) : meta_(std::move(meta)) {}

void ResponsesStreamEncoder::emit(std::string& out, std::string_view type, std::string fields) {
  std::string body = "{\"type\":\"";
  body += type;
  body += "\",\"sequence_number\":" + std::to_string(seq_++);
  if (!fields.empty()) {
    body += ",";
    body += fields;
  }
  body += "}";
  append_sse(out, type, body);
}

std::string ResponsesStreamEncoder::object(std::string_view status) const {
  JsonWriter j;
  write_object(j, status == "in_progress" ? nullptr : &acc_, meta_, status);
  return j.take();
}

void ResponsesStreamEncoder::start(std::string& out) {
  if (started_) return;
  started_ = true;
  emit(out, "response.created", "\"response\":" + object("in_progress"));
  emit(out, "response.in_progress", "\"response\":" + object("in_progress"));
}

void ResponsesStreamEncoder::close_item(std::string& out) {
  if (open_kind_ == 0) return;
  const auto idx = std::to_string(output_index_);
  const auto& part = acc_.content[open_part_];
  if (open_kind_ == 1) {
    const std::string text = json_string(part.text);
    emit(out, "response.output_text.done",
         "\"item_id\":\"" + item_id_ + "\",\"output_index\":" + idx +
             ",\"content_index\":0,\"text\":" + text);
    const std::string p = "{\"type\":\"output_text\",\"text\":" + text + ",\"annotations\":[]}";
    emit(out, "response.content_part.done",
         "\"item_id\":\"" + item_id_ + "\",\"output_index\":" + idx +
             ",\"content_index\":0,\"part\":" + p);
    emit(out, "response.output_item.done",
         "\"output_index\":" + idx + ",\"item\":{\"type\":\"message\",\"id\":\"" + item_id_ +
             "\",\"status\":\"completed\",\"role\":\"assistant\",\"content\":[" + p + "]}");
  } else {
    const std::string args = json_string(part.arguments);
    emit(out, "response.function_call_arguments.done",
         "\"item_id\":\"" + item_id_ + "\",\"output_index\":" + idx + ",\"arguments\":" + args);
    emit(out, "response.output_item.done",
         "\"output_index\":" + idx + ",\"item\":{\"type\":\"function_call\",\"id\":\"" + item_id_ +
             "\",\"call_id\":" + json_string(part.id) + ",\"name\":" + json_string(part.name) +
             ",\"arguments\":" + args + ",\"status\":\"completed\"}");
  }
  open_kind_ = 0;
  ++output_index_;
}

void ResponsesStreamEncoder::on_event(const StreamEvent& e, std::string& out) {
  // One choice only: the format has no n, so the events of further choices are not its own.
  if (e.choice != 0) return;
  switch (e.kind) {
    case StreamEvent::Kind::kStart:
      start(out);
      break;
    case StreamEvent::Kind::kTextDelta: {
      start(out);
      if (open_kind_ != 1) {
        close_item(out);
        open_kind_ = 1;
        item_id_ = new_id("msg_");
        acc_.content.push_back(Part{.kind = Part::Kind::kText, .id = item_id_});
        open_part_ = acc_.content.size() - 1;
        const auto idx = std::to_string(output_index_);
        emit(out, "response.output_item.added",
             "\"output_index\":" + idx + ",\"item\":{\"type\":\"message\",\"id\":\"" + item_id_ +
                 "\",\"status\":\"in_progress\",\"role\":\"assistant\",\"content\":[]}");
        emit(out, "response.content_part.added",
             "\"item_id\":\"" + item_id_ + "\",\"output_index\":" + idx +
                 ",\"content_index\":0,\"part\":{\"type\":\"output_text\",\"text\":\"\","
                 "\"annotations\":[]}");
      }
      acc_.content[open_part_].text += e.text;
      emit(out, "response.output_text.delta",
           "\"item_id\":\"" + item_id_ + "\",\"output_index\":" + std::to_string(output_index_) +
               ",\"content_index\":0,\"delta\":" + json_string(e.text) + ",\"logprobs\":[]");
      break;
    }
    case StreamEvent::Kind::kToolCallStart: {
      start(out);
      close_item(out);
      open_kind_ = 2;
      open_tool_ = e.index;
      Part p{.kind = Part::Kind::kToolCall};
      p.id = e.id.empty() ? new_id("call_") : e.id;
      p.name = e.name;
      item_id_ = item_id("fc_", p.id);
      emit(out, "response.output_item.added",
           "\"output_index\":" + std::to_string(output_index_) +
               ",\"item\":{\"type\":\"function_call\",\"id\":\"" + item_id_ +
               "\",\"call_id\":" + json_string(p.id) + ",\"name\":" + json_string(p.name) +
               ",\"arguments\":\"\",\"status\":\"in_progress\"}");
      acc_.content.push_back(std::move(p));
      open_part_ = acc_.content.size() - 1;
      break;
    }
    case StreamEvent::Kind::kToolArgsDelta:
      if (open_kind_ != 2 || open_tool_ != e.index) break;
      acc_.content[open_part_].arguments += e.text;
      emit(out, "response.function_call_arguments.delta",
           "\"item_id\":\"" + item_id_ + "\",\"output_index\":" + std::to_string(output_index_) +
               ",\"delta\":" + json_string(e.text));
      break;
    case StreamEvent::Kind::kFinish:
      acc_.finish = e.finish;
      break;
    case StreamEvent::Kind::kUsage:
      acc_.usage = e.usage;
      break;
    case StreamEvent::Kind::kError:
      fail(e.name, e.text, out);
      break;
  }
}

void ResponsesStreamEncoder::finish(std::string& out) {
  start(out);
  close_item(out);
  for (auto& p : acc_.content) {
    if (p.kind == Part::Kind::kToolCall && p.arguments.empty()) p.arguments = "{}";
  }
  const auto status = status_of(acc_);
  emit(out, status == "completed" ? "response.completed" : "response.incomplete",
       "\"response\":" + object(status));
}

void ResponsesStreamEncoder::fail(std::string_view type, std::string_view message,
                                  std::string& out) {
  emit(out, "error",
       "\"code\":" + json_string(type.empty() ? "upstream_error" : type) +
           ",\"message\":" + json_string(message) + ",\"param\":null");
}

namespace {

class ResponsesStreamDecoder final : public StreamDecoder {
 public:
  void feed(std::string_view, std::string_view data, std::vector<StreamEvent>& out) override {
    if (data.find("\"response.output_text.delta\"") == std::string_view::npos &&
        data.find("\"response.created\"") == std::string_view::npos &&
        data.find("\"response.completed\"") == std::string_view::npos &&
        data.find("\"response.incomplete\"") == std::string_view::npos &&
        data.find("\"response.failed\"") == std::string_view::npos) {
      return;
    }
    auto parsed = json::parse_object(data, 1);
    if (!parsed) return;
    dom::element doc = *parsed;
    const auto type = json::str(doc, "type");
    if (type == "response.output_text.delta") {
      out.push_back(StreamEvent{.kind = StreamEvent::Kind::kTextDelta,
                                .text = std::string(json::str(doc, "delta"))});
      return;
    }
    // Other events only mention these names in their text.
    const bool last =
        type == "response.completed" || type == "response.incomplete" || type == "response.failed";
    if (!last && type != "response.created") return;
    // The response's id, as OpenAI stores it: from its first event, and again from its last.
    const auto id = json::str(json::member(doc, "response"), "id");
    if (!id.empty())
      out.push_back(StreamEvent{.kind = StreamEvent::Kind::kStart, .id = std::string(id)});
    if (last) {
      done_ = true;
      StreamEvent e{.kind = StreamEvent::Kind::kUsage};
      dom::element u;
      if (json::member(json::member(doc, "response"), "usage").get(u) == simdjson::SUCCESS)
        read_usage(u, e.usage);
      if (e.usage.present) out.push_back(std::move(e));
    }
  }
  bool done() const override { return done_; }

 private:
  bool done_ = false;
};

}  // namespace

std::unique_ptr<StreamDecoder> make_responses_stream_decoder() {
  return std::make_unique<ResponsesStreamDecoder>();
}

namespace {

std::string_view part_kind_name(Part::Kind k) {
  switch (k) {
    case Part::Kind::kText:
      return "text";
    case Part::Kind::kImage:
      return "image";
    case Part::Kind::kToolCall:
      return "tool_call";
    case Part::Kind::kToolResult:
      return "tool_result";
  }
  return "text";
}

std::string_view role_name(Role r) {
  switch (r) {
    case Role::kSystem:
      return "system";
    case Role::kUser:
      return "user";
    case Role::kAssistant:
      return "assistant";
    case Role::kTool:
      return "tool";
  }
  return "user";
}

void write_part(JsonWriter& w, const Part& p) {
  w.begin_object().key("kind").value(part_kind_name(p.kind));
  const auto field = [&w](std::string_view k, const std::string& v) {
    if (!v.empty()) w.key(k).value(std::string_view(v));
  };
  field("text", p.text);
  field("image_url", p.image_url);
  field("media_type", p.media_type);
  field("data", p.data);
  field("id", p.id);
  field("name", p.name);
  field("arguments", p.arguments);
  if (p.is_error) w.key("is_error").value(true);
  field("cache_control", p.cache_control);
  w.end_object();
}

bool read_string(dom::element e, std::string_view key, std::string& out) {
  dom::element v;
  if (e[key].get(v) != simdjson::SUCCESS) return true;  // absent: empty
  std::string_view s;
  if (v.get(s) != simdjson::SUCCESS) return false;
  out = std::string(s);
  return true;
}

bool read_part(dom::element e, Part& p) {
  std::string_view kind;
  if (e["kind"].get(kind) != simdjson::SUCCESS) return false;
  if (kind == "text") {
    p.kind = Part::Kind::kText;
  } else if (kind == "image") {
    p.kind = Part::Kind::kImage;
  } else if (kind == "tool_call") {
    p.kind = Part::Kind::kToolCall;
  } else if (kind == "tool_result") {
    p.kind = Part::Kind::kToolResult;
  } else {
    return false;
  }
  bool is_error = false;
  if (e["is_error"].get(is_error) == simdjson::SUCCESS) p.is_error = is_error;
  return read_string(e, "text", p.text) && read_string(e, "image_url", p.image_url) &&
         read_string(e, "media_type", p.media_type) && read_string(e, "data", p.data) &&
         read_string(e, "id", p.id) && read_string(e, "name", p.name) &&
         read_string(e, "arguments", p.arguments) &&
         read_string(e, "cache_control", p.cache_control);
}

bool read_parts(dom::element e, std::string_view key, std::vector<Part>& out) {
  dom::array a;
  if (e[key].get(a) != simdjson::SUCCESS) return false;
  for (dom::element pe : a) {
    Part p;
    if (!read_part(pe, p)) return false;
    out.push_back(std::move(p));
  }
  return true;
}

std::size_t part_size(const Part& p) {
  return p.text.size() + p.image_url.size() + p.media_type.size() + p.data.size() + p.id.size() +
         p.name.size() + p.arguments.size() + p.cache_control.size();
}

}  // namespace

std::string encode_stored_conversation(const StoredConversation& s) {
  JsonWriter w;
  w.begin_object().key("v").value(s.upstream ? 3 : 2).key("owner").value(s.owner);
  if (s.upstream) w.key("upstream").value(true);
  w.key("system").begin_array();
  for (const auto& p : s.system) write_part(w, p);
  w.end_array().key("conversation").begin_array();
  for (const auto& m : s.conversation) {
    w.begin_object().key("role").value(role_name(m.role)).key("parts").begin_array();
    for (const auto& p : m.parts) write_part(w, p);
    w.end_array().end_object();
  }
  w.end_array().end_object();
  return w.take();
}

bool decode_stored_conversation(std::string_view json, StoredConversation& out) {
  out = StoredConversation{};
  auto parsed = json::parse_object(json);
  if (!parsed) return false;
  dom::element doc = *parsed;
  const auto version = json::num(doc, "v");
  if (version != 2 && version != 3) return false;
  std::string_view owner;
  if (doc["owner"].get(owner) != simdjson::SUCCESS || owner.empty()) return false;
  out.owner = std::string(owner);
  if (version == 3) {
    bool upstream = false;
    if (doc["upstream"].get(upstream) != simdjson::SUCCESS || !upstream) return false;
    out.upstream = true;
  }
  if (!read_parts(doc, "system", out.system)) return false;
  dom::array conv;
  if (doc["conversation"].get(conv) != simdjson::SUCCESS) return false;
  for (dom::element me : conv) {
    Message m;
    const std::string_view role = json::str(me, "role");
    if (role == "system") {
      m.role = Role::kSystem;
    } else if (role == "user") {
      m.role = Role::kUser;
    } else if (role == "assistant") {
      m.role = Role::kAssistant;
    } else if (role == "tool") {
      m.role = Role::kTool;
    } else {
      return false;
    }
    if (!read_parts(me, "parts", m.parts)) return false;
    out.conversation.push_back(std::move(m));
  }
  return true;
}

std::size_t stored_size(const StoredConversation& s) {
  std::size_t n = s.owner.size();
  for (const auto& p : s.system) n += part_size(p);
  for (const auto& m : s.conversation) {
    n += 16;  // the message itself, so that many empty messages still count
    for (const auto& p : m.parts) n += part_size(p);
  }
  return n;
}

bool MemoryResponseStore::put(const std::string& id, StoredConversation entry, Nanos now) {
  if (max_ == 0 || entry.owner.empty() || stored_size(entry) > max_entry_bytes_) return false;
  std::lock_guard lock(mu_);
  auto it = entries_.find(id);
  if (it == entries_.end()) {
    // Oldest first out; slots left behind by an id stored again are skipped.
    while (entries_.size() >= max_ && !order_.empty()) {
      auto victim = entries_.find(order_.front().first);
      if (victim != entries_.end() && victim->second.seq == order_.front().second) {
        entries_.erase(victim);
      }
      order_.pop_front();
    }
    it = entries_.emplace(id, Entry{}).first;
  }
  it->second = Entry{std::move(entry), now + ttl_, ++next_seq_};
  order_.emplace_back(id, next_seq_);
  // Slots of ids stored again are dropped now and then, so that order_ stays bounded too.
  if (order_.size() > 2 * max_ + 16) {
    std::erase_if(order_, [this](const auto& slot) {
      auto e = entries_.find(slot.first);
      return e == entries_.end() || e->second.seq != slot.second;
    });
  }
  return true;
}

bool MemoryResponseStore::get(const std::string& id, std::string_view owner,
                              StoredConversation& out, Nanos now) {
  std::lock_guard lock(mu_);
  auto it = entries_.find(id);
  if (it == entries_.end()) return false;
  if (it->second.expires <= now) {
    entries_.erase(it);
    return false;
  }
  // Someone else's entry is a miss, and it stays for its owner.
  if (owner.empty() || it->second.value.owner != owner) return false;
  out = it->second.value;
  return true;
}

std::size_t MemoryResponseStore::size() const {
  std::lock_guard lock(mu_);
  return entries_.size();
}

std::vector<Message> conversation_after(const Request& r, const Response& answer) {
  std::vector<Message> conv = r.messages;
  Message m{Role::kAssistant, {}};
  for (const auto& p : answer.content) {
    if (p.kind == Part::Kind::kText || p.kind == Part::Kind::kToolCall) m.parts.push_back(p);
  }
  if (!m.parts.empty()) conv.push_back(std::move(m));
  return conv;
}

}  // namespace bw::api
