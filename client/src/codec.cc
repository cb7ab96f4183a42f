#include "bellwether/codec.h"

#include <algorithm>
#include <cctype>

#include <boost/json.hpp>

#include "bellwether/policy.h"

namespace bellwether {
namespace json = boost::json;

const char* to_string(ErrorKind kind) {
  switch (kind) {
    case ErrorKind::kNone:
      return "none";
    case ErrorKind::kInvalidRequest:
      return "invalid_request";
    case ErrorKind::kAuthentication:
      return "authentication";
    case ErrorKind::kNotFound:
      return "not_found";
    case ErrorKind::kRateLimited:
      return "rate_limited";
    case ErrorKind::kServerError:
      return "server_error";
    case ErrorKind::kHttpError:
      return "http_error";
    case ErrorKind::kCircuitOpen:
      return "circuit_open";
    case ErrorKind::kLocalRateLimited:
      return "local_rate_limited";
    case ErrorKind::kBudgetExceeded:
      return "budget_exceeded";
    case ErrorKind::kTimeout:
      return "timeout";
    case ErrorKind::kNetwork:
      return "network";
    case ErrorKind::kProtocol:
      return "protocol";
    case ErrorKind::kCancelled:
      return "cancelled";
  }
  return "unknown";
}

std::string HttpResponse::header(std::string_view name) const {
  for (const auto& [k, v] : headers) {
    if (k.size() == name.size() && std::equal(k.begin(), k.end(), name.begin(), [](char a, char b) {
          return std::tolower(static_cast<unsigned char>(a)) ==
                 std::tolower(static_cast<unsigned char>(b));
        }))
      return v;
  }
  return {};
}

std::string serialize_chat_request(const ChatRequest& request, const std::string& model,
                                   bool stream, bool include_usage) {
  json::object body;
  body["model"] = model;
  json::array messages;
  messages.reserve(request.messages.size());
  for (const auto& m : request.messages) {
    messages.push_back(json::object{{"role", m.role}, {"content", m.content}});
  }
  body["messages"] = std::move(messages);
  if (request.max_tokens) body["max_tokens"] = *request.max_tokens;
  if (request.temperature) body["temperature"] = *request.temperature;
  if (stream) {
    body["stream"] = true;
    if (include_usage) body["stream_options"] = json::object{{"include_usage", true}};
  }
  return json::serialize(body);
}

namespace {

std::string str_field(const json::object& o, std::string_view key) {
  auto* v = o.if_contains(key);
  if (v && v->is_string()) return std::string(v->get_string());
  return {};
}

std::int64_t int_field(const json::object& o, std::string_view key) {
  auto* v = o.if_contains(key);
  if (!v) return 0;
  if (v->is_int64()) return v->get_int64();
  if (v->is_uint64()) return static_cast<std::int64_t>(v->get_uint64());
  if (v->is_double()) return static_cast<std::int64_t>(v->get_double());
  return 0;
}

std::optional<Usage> usage_of(const json::object& o) {
  auto* u = o.if_contains("usage");
  if (!u || !u->is_object()) return std::nullopt;
  const auto& uo = u->get_object();
  Usage usage{int_field(uo, "prompt_tokens"), int_field(uo, "completion_tokens"),
              int_field(uo, "total_tokens")};
  if (usage.total_tokens == 0) usage.total_tokens = usage.prompt_tokens + usage.completion_tokens;
  return usage;
}

ClientError protocol_error(std::string message) {
  ClientError e;
  e.kind = ErrorKind::kProtocol;
  e.message = std::move(message);
  return e;
}

}  // namespace

Result<ChatResponse> parse_chat_response(std::string_view body) {
  json::error_code ec;
  json::value v = json::parse(body, ec);
  if (ec || !v.is_object()) return protocol_error("response body is not a JSON object");
  const auto& o = v.get_object();
  ChatResponse r;
  r.id = str_field(o, "id");
  r.model = str_field(o, "model");
  auto* choices = o.if_contains("choices");
  if (!choices || !choices->is_array()) return protocol_error("response has no choices array");
  if (!choices->get_array().empty() && choices->get_array()[0].is_object()) {
    const auto& c0 = choices->get_array()[0].get_object();
    r.finish_reason = str_field(c0, "finish_reason");
    if (auto* msg = c0.if_contains("message"); msg && msg->is_object())
      r.content = str_field(msg->get_object(), "content");
  }
  if (auto u = usage_of(o)) {
    r.usage = *u;
    r.has_usage = true;
  }
  return r;
}

Result<ChatChunk> parse_chat_chunk(std::string_view data) {
  json::error_code ec;
  json::value v = json::parse(data, ec);
  if (ec || !v.is_object()) return protocol_error("stream chunk is not a JSON object");
  const auto& o = v.get_object();
  if (auto* err = o.if_contains("error"); err && err->is_object()) {
    // Some servers report a failure mid-stream as a data event.
    ClientError e = parse_error_response(0, data);
    e.kind = ErrorKind::kServerError;
    return e;
  }
  ChatChunk c;
  c.id = str_field(o, "id");
  c.model = str_field(o, "model");
  if (auto* choices = o.if_contains("choices"); choices && choices->is_array()) {
    const auto& arr = choices->get_array();
    if (!arr.empty() && arr[0].is_object()) {
      const auto& c0 = arr[0].get_object();
      c.finish_reason = str_field(c0, "finish_reason");
      if (auto* d = c0.if_contains("delta"); d && d->is_object()) {
        c.role = str_field(d->get_object(), "role");
        c.content = str_field(d->get_object(), "content");
      }
    }
  }
  c.usage = usage_of(o);
  return c;
}

ErrorKind error_kind_for_status(int status) {
  if (status == 400 || status == 422 || status == 413) return ErrorKind::kInvalidRequest;
  if (status == 401 || status == 403) return ErrorKind::kAuthentication;
  if (status == 404) return ErrorKind::kNotFound;
  if (status == 429) return ErrorKind::kRateLimited;
  if (status >= 500) return ErrorKind::kServerError;
  return ErrorKind::kHttpError;
}

ClientError parse_error_response(int status, std::string_view body) {
  ClientError e;
  e.kind = error_kind_for_status(status);
  e.status = status;
  json::error_code ec;
  json::value v = json::parse(body, ec);
  if (!ec && v.is_object()) {
    if (auto* err = v.get_object().if_contains("error"); err && err->is_object()) {
      const auto& eo = err->get_object();
      e.message = str_field(eo, "message");
      e.type = str_field(eo, "type");
      e.param = str_field(eo, "param");
      if (auto* code = eo.if_contains("code")) {
        if (code->is_string())
          e.code = std::string(code->get_string());
        else if (code->is_int64())
          e.code = std::to_string(code->get_int64());
      }
    }
  }
  if (e.message.empty()) {
    // Non-JSON error pages: keep a bounded prefix so logs stay readable.
    e.message = "HTTP " + std::to_string(status);
    if (!body.empty()) e.message += ": " + std::string(body.substr(0, 200));
  }
  return e;
}

RateLimitInfo parse_rate_limit_headers(const std::function<std::string(std::string_view)>& header) {
  RateLimitInfo info;
  auto to_int = [](const std::string& s) -> std::optional<std::int64_t> {
    if (s.empty()) return std::nullopt;
    char* end = nullptr;
    const long long v = std::strtoll(s.c_str(), &end, 10);
    if (end == s.c_str()) return std::nullopt;
    return static_cast<std::int64_t>(v);
  };
  info.limit_requests = to_int(header("x-ratelimit-limit-requests"));
  info.remaining_requests = to_int(header("x-ratelimit-remaining-requests"));
  info.limit_tokens = to_int(header("x-ratelimit-limit-tokens"));
  info.remaining_tokens = to_int(header("x-ratelimit-remaining-tokens"));
  info.reset_requests = parse_go_duration(header("x-ratelimit-reset-requests"));
  info.reset_tokens = parse_go_duration(header("x-ratelimit-reset-tokens"));
  info.retry_after_s = parse_retry_after(header("retry-after"));
  return info;
}

SseParser::Status SseParser::line(std::string_view l, const EventFn& on_event) {
  if (l.empty()) {  // blank line dispatches the event
    if (!has_data_) return Status::kOk;
    has_data_ = false;
    std::string data;
    data.swap(data_);
    return on_event(data) ? Status::kOk : Status::kStopped;
  }
  if (l.front() == ':') return Status::kOk;  // comment / keep-alive
  const auto colon = l.find(':');
  std::string_view field = l.substr(0, colon);
  std::string_view value =
      colon == std::string_view::npos ? std::string_view{} : l.substr(colon + 1);
  if (!value.empty() && value.front() == ' ') value.remove_prefix(1);
  if (field == "data") {
    if (has_data_) data_.push_back('\n');
    data_.append(value);
    has_data_ = true;
    if (data_.size() > max_event_bytes_) return Status::kTooLarge;
  }
  // event:, id:, retry: carry nothing the chat stream needs.
  return Status::kOk;
}

SseParser::Status SseParser::feed(std::string_view bytes, const EventFn& on_event) {
  for (char ch : bytes) {
    if (skip_lf_) {
      skip_lf_ = false;
      if (ch == '\n') continue;  // second half of "\r\n"
    }
    if (ch == '\r' || ch == '\n') {
      skip_lf_ = ch == '\r';
      std::string current;
      current.swap(line_);
      const Status s = line(current, on_event);
      if (s != Status::kOk) return s;
      continue;
    }
    line_.push_back(ch);
    if (line_.size() > max_event_bytes_) return Status::kTooLarge;
  }
  return Status::kOk;
}

}  // namespace bellwether
