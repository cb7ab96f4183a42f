#include "api/canonical.h"

#include <arpa/inet.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <unordered_map>

#include "common/secure_random.h"

namespace bw::api {

std::string_view to_string(Format f) {
  switch (f) {
    case Format::kChat:
      return "chat";
    case Format::kResponses:
      return "responses";
    case Format::kMessages:
      return "messages";
    case Format::kGemini:
      return "gemini";
  }
  return "chat";
}

std::string_view chat_finish(FinishReason f) {
  switch (f) {
    case FinishReason::kStop:
      return "stop";
    case FinishReason::kLength:
      return "length";
    case FinishReason::kToolCalls:
      return "tool_calls";
    case FinishReason::kContentFilter:
      return "content_filter";
  }
  return "stop";
}

namespace {

void choice_events(int choice, const std::vector<Part>& content, FinishReason finish,
                   std::vector<StreamEvent>& out) {
  int tool = 0;
  for (const auto& p : content) {
    if (p.kind == Part::Kind::kText) {
      if (!p.text.empty()) {
        out.push_back(
            StreamEvent{.kind = StreamEvent::Kind::kTextDelta, .choice = choice, .text = p.text});
      }
    } else if (p.kind == Part::Kind::kToolCall) {
      out.push_back(StreamEvent{.kind = StreamEvent::Kind::kToolCallStart,
                                .index = tool,
                                .choice = choice,
                                .id = p.id,
                                .name = p.name});
      if (!p.arguments.empty()) {
        out.push_back(StreamEvent{.kind = StreamEvent::Kind::kToolArgsDelta,
                                  .index = tool,
                                  .choice = choice,
                                  .text = p.arguments});
      }
      ++tool;
    }
  }
  out.push_back(
      StreamEvent{.kind = StreamEvent::Kind::kFinish, .choice = choice, .finish = finish});
}

}  // namespace

std::vector<StreamEvent> stream_events(const Response& r) {
  std::vector<StreamEvent> out;
  out.reserve(r.content.size() * 2 + 3);
  out.push_back(StreamEvent{.kind = StreamEvent::Kind::kStart, .id = r.id, .usage = r.usage});
  choice_events(0, r.content, r.finish, out);
  int choice = 1;
  for (const auto& c : r.more_choices) choice_events(choice++, c.content, c.finish, out);
  if (r.usage.present)
    out.push_back(StreamEvent{.kind = StreamEvent::Kind::kUsage, .usage = r.usage});
  return out;
}

std::string new_id(std::string_view prefix) {
  // A response id is the only key to its stored conversation (with its owner): it comes from the
  // kernel's CSPRNG, 24 characters of 62 (about 143 bits), so it can be neither guessed nor
  // predicted from ids seen before.
  std::string id(prefix);
  append_secure_alnum(id, kIdChars);
  return id;
}

Error invalid(std::string message, std::string param) {
  return make_error(400, "invalid_request_error", "invalid_request", std::move(message),
                    std::move(param));
}

namespace {

std::string lower(std::string_view s) {
  std::string out(s);
  for (auto& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

bool private_v4(const unsigned char* a) {
  return a[0] == 0 || a[0] == 10 || a[0] == 127 || (a[0] == 169 && a[1] == 254) ||
         (a[0] == 172 && (a[1] & 0xf0) == 16) || (a[0] == 192 && a[1] == 168) ||
         (a[0] == 100 && (a[1] & 0xc0) == 64) || a[0] >= 224;
}

}  // namespace

Result<Ok> check_image_url(std::string_view url) {
  if (url.starts_with("data:")) {
    std::string mt, data;
    if (!split_data_url(url, mt, data)) {
      return invalid("An image data URL must be data:<media type>;base64,<data>.", "image_url");
    }
    return Ok{};
  }
  const std::string u = lower(url.substr(0, std::min<std::size_t>(url.size(), 2048)));
  std::string_view rest;
  if (u.starts_with("https://")) {
    rest = std::string_view(u).substr(8);
  } else if (u.starts_with("http://")) {
    rest = std::string_view(u).substr(7);
  } else {
    return invalid("An image URL must be http(s) or a base64 data URL.", "image_url");
  }
  rest = rest.substr(0, rest.find_first_of("/?#"));
  if (auto at = rest.rfind('@'); at != std::string_view::npos) rest = rest.substr(at + 1);
  std::string host;
  if (rest.starts_with("[")) {
    auto close = rest.find(']');
    if (close == std::string_view::npos) return invalid("Malformed image URL.", "image_url");
    host = std::string(rest.substr(1, close - 1));
  } else {
    host = std::string(rest.substr(0, rest.find(':')));
  }
  while (!host.empty() && host.back() == '.') host.pop_back();
  auto refuse = [] {
    return invalid(
        "The image URL points to a private or local address; the gateway refuses it. Send the "
        "image inline (base64) or from a public host.",
        "image_url");
  };
  if (host.empty()) return invalid("Malformed image URL.", "image_url");
  if (host == "localhost" || host.ends_with(".localhost") || host.ends_with(".local") ||
      host.ends_with(".internal") || host.ends_with(".lan") || host.ends_with(".home.arpa")) {
    return refuse();
  }
  unsigned char buf[16];
  if (inet_pton(AF_INET, host.c_str(), buf) == 1) {
    if (private_v4(buf)) return refuse();
    return Ok{};
  }
  if (inet_pton(AF_INET6, host.c_str(), buf) == 1) {
    static constexpr unsigned char kMapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    if (std::equal(buf, buf + 12, kMapped)) {
      if (private_v4(buf + 12)) return refuse();
      return Ok{};
    }
    bool zero = std::all_of(buf, buf + 15, [](unsigned char c) { return c == 0; });
    if (zero && (buf[15] == 0 || buf[15] == 1)) return refuse();     // :: and ::1
    if ((buf[0] & 0xfe) == 0xfc) return refuse();                    // fc00::/7
    if (buf[0] == 0xfe && (buf[1] & 0xc0) == 0x80) return refuse();  // fe80::/10
    return Ok{};
  }
  // Numeric host forms that resolvers read as IPv4 (2130706433, 0x7f.1, 127.1) are refused.
  if (std::all_of(host.begin(), host.end(),
                  [](char c) {
                    return std::isxdigit(static_cast<unsigned char>(c)) || c == '.' || c == 'x';
                  }) &&
      std::isdigit(static_cast<unsigned char>(host.front()))) {
    return refuse();
  }
  return Ok{};
}

bool split_data_url(std::string_view url, std::string& media_type, std::string& data) {
  if (!url.starts_with("data:")) return false;
  auto comma = url.find(',');
  if (comma == std::string_view::npos) return false;
  auto meta = url.substr(5, comma - 5);
  if (!meta.ends_with(";base64")) return false;
  media_type = std::string(meta.substr(0, meta.size() - 7));
  data = std::string(url.substr(comma + 1));
  return !media_type.empty() && !data.empty();
}

Result<Ok> link_tool_results(Request& r) {
  std::unordered_map<std::string, std::string> calls;  // id -> name
  for (auto& m : r.messages) {
    for (auto& p : m.parts) {
      if (p.kind == Part::Kind::kToolCall) {
        if (p.id.empty()) return invalid("A tool call needs an id.", "messages");
        calls[p.id] = p.name;
      } else if (p.kind == Part::Kind::kToolResult) {
        auto it = calls.find(p.id);
        if (it == calls.end()) {
          return invalid(
              "The tool result for '" + p.id + "' has no tool call with that id before it.",
              "messages");
        }
        p.name = it->second;
      }
    }
  }
  return Ok{};
}

bool has_output(const Response& r) {
  auto any = [](const std::vector<Part>& content) {
    for (const auto& p : content) {
      if (p.kind == Part::Kind::kToolCall) return true;
      if (p.kind == Part::Kind::kText && !p.text.empty()) return true;
    }
    return false;
  };
  if (any(r.content)) return true;
  for (const auto& c : r.more_choices) {
    if (any(c.content)) return true;
  }
  return false;
}

void check_output_counted(Usage& u, bool generated) {
  if (generated && u.usable() && u.completion_tokens == 0) u.unreadable = true;
}

}  // namespace bw::api
