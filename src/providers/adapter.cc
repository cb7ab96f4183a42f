#include "providers/adapter.h"

#include <cmath>
#include <cstdlib>
#include <ctime>

#include "api/json_read.h"

namespace bw::providers {

namespace json = api::json;

std::string_view to_string(Wire w) {
  switch (w) {
    case Wire::kOpenAI:
      return "openai";
    case Wire::kAzure:
      return "azure";
    case Wire::kAnthropic:
      return "anthropic";
    case Wire::kGemini:
      return "gemini";
  }
  return "openai";
}

bool parse_wire(std::string_view s, Wire& out) {
  if (s == "openai") {
    out = Wire::kOpenAI;
  } else if (s == "azure") {
    out = Wire::kAzure;
  } else if (s == "anthropic") {
    out = Wire::kAnthropic;
  } else if (s == "gemini") {
    out = Wire::kGemini;
  } else {
    return false;
  }
  return true;
}

api::Format format_of(Wire w) {
  switch (w) {
    case Wire::kAnthropic:
      return api::Format::kMessages;
    case Wire::kGemini:
      return api::Format::kGemini;
    default:
      return api::Format::kChat;
  }
}

double parse_go_duration(std::string_view s) {
  if (s.empty()) return -1;
  double total = 0;
  std::size_t i = 0;
  bool any = false;
  while (i < s.size()) {
    std::size_t j = i;
    while (j < s.size() && (std::isdigit(static_cast<unsigned char>(s[j])) || s[j] == '.')) ++j;
    if (j == i) return -1;
    const double v = std::atof(std::string(s.substr(i, j - i)).c_str());
    std::size_t k = j;
    while (k < s.size() && std::isalpha(static_cast<unsigned char>(s[k]))) ++k;
    const auto unit = s.substr(j, k - j);
    if (unit == "h") {
      total += v * 3600;
    } else if (unit == "m") {
      total += v * 60;
    } else if (unit == "s" || unit.empty()) {
      total += v;
    } else if (unit == "ms") {
      total += v / 1000;
    } else if (unit == "us" || unit == "µs") {
      total += v / 1e6;
    } else if (unit == "ns") {
      total += v / 1e9;
    } else {
      return -1;
    }
    any = true;
    i = k;
  }
  return any ? total : -1;
}

std::int64_t parse_rfc3339_ms(std::string_view s) {
  std::tm tm{};
  int frac_ms = 0;
  if (s.size() < 19) return -1;
  const std::string str(s);
  if (std::sscanf(str.c_str(), "%4d-%2d-%2dT%2d:%2d:%2d", &tm.tm_year, &tm.tm_mon, &tm.tm_mday,
                  &tm.tm_hour, &tm.tm_min, &tm.tm_sec) != 6) {
    return -1;
  }
  tm.tm_year -= 1900;
  tm.tm_mon -= 1;
  std::size_t i = 19;
  if (i < str.size() && str[i] == '.') {
    int digits = 0;
    ++i;
    while (i < str.size() && std::isdigit(static_cast<unsigned char>(str[i]))) {
      if (digits < 3) frac_ms = frac_ms * 10 + (str[i] - '0');
      ++digits;
      ++i;
    }
    for (; digits < 3; ++digits) frac_ms *= 10;
  }
  std::int64_t offset_s = 0;
  if (i < str.size() && (str[i] == '+' || str[i] == '-')) {
    int hh = 0, mm = 0;
    if (std::sscanf(str.c_str() + i + 1, "%2d:%2d", &hh, &mm) == 2) {
      offset_s = (hh * 3600 + mm * 60) * (str[i] == '+' ? 1 : -1);
    }
  }
  const std::int64_t t = static_cast<std::int64_t>(timegm(&tm)) - offset_s;
  return t * 1000 + frac_ms;
}

namespace {

std::int64_t int_header(const HeaderLookup& h, std::string_view name) {
  auto v = h(name);
  if (v.empty()) return -1;
  char* end = nullptr;
  const std::string s(v);
  const long long n = std::strtoll(s.c_str(), &end, 10);
  return end == s.c_str() || n < 0 ? -1 : n;
}

double seconds_header(const HeaderLookup& h, std::string_view name) {
  auto v = h(name);
  if (v.empty()) return -1;
  char* end = nullptr;
  const std::string s(v);
  const double d = std::strtod(s.c_str(), &end);
  if (end == s.c_str() || !std::isfinite(d) || d < 0) return -1;
  return d;
}

}  // namespace

RateLimitInfo parse_rate_limits(Wire w, const HeaderLookup& h, int status, std::string_view body,
                                std::int64_t now_unix_ms) {
  RateLimitInfo r;
  r.retry_after_s = seconds_header(h, "retry-after");
  if (auto ms = seconds_header(h, "retry-after-ms"); ms >= 0) r.retry_after_s = ms / 1000;
  switch (w) {
    case Wire::kOpenAI:
    case Wire::kAzure:
      r.request_limit = int_header(h, "x-ratelimit-limit-requests");
      r.requests_remaining = int_header(h, "x-ratelimit-remaining-requests");
      r.requests_reset_s = parse_go_duration(h("x-ratelimit-reset-requests"));
      r.token_limit = int_header(h, "x-ratelimit-limit-tokens");
      r.tokens_remaining = int_header(h, "x-ratelimit-remaining-tokens");
      r.tokens_reset_s = parse_go_duration(h("x-ratelimit-reset-tokens"));
      break;
    case Wire::kAnthropic: {
      auto reset = [&](std::string_view name) -> double {
        const auto t = parse_rfc3339_ms(h(name));
        return t < 0 ? -1 : std::max(0.0, static_cast<double>(t - now_unix_ms) / 1000.0);
      };
      r.request_limit = int_header(h, "anthropic-ratelimit-requests-limit");
      r.requests_remaining = int_header(h, "anthropic-ratelimit-requests-remaining");
      r.requests_reset_s = reset("anthropic-ratelimit-requests-reset");
      r.token_limit = int_header(h, "anthropic-ratelimit-tokens-limit");
      r.tokens_remaining = int_header(h, "anthropic-ratelimit-tokens-remaining");
      r.tokens_reset_s = reset("anthropic-ratelimit-tokens-reset");
      r.input_token_limit = int_header(h, "anthropic-ratelimit-input-tokens-limit");
      r.input_tokens_remaining = int_header(h, "anthropic-ratelimit-input-tokens-remaining");
      r.output_token_limit = int_header(h, "anthropic-ratelimit-output-tokens-limit");
      r.output_tokens_remaining = int_header(h, "anthropic-ratelimit-output-tokens-remaining");
      break;
    }
    case Wire::kGemini:
      if (status == 429 && r.retry_after_s < 0 && !body.empty()) {
        auto doc = json::parse_object(body, 2);
        simdjson::dom::array details;
        if (doc && (*doc)["error"]["details"].get(details) == simdjson::SUCCESS) {
          for (auto d : details) {
            auto delay = json::str(d, "retryDelay");
            if (!delay.empty()) r.retry_after_s = parse_go_duration(delay);
          }
        }
      }
      break;
  }
  return r;
}

namespace {

std::string_view openai_type(int status) {
  switch (status) {
    case 401:
      return "authentication_error";
    case 403:
      return "permission_error";
    case 404:
      return "not_found_error";
    case 429:
      return "rate_limit_exceeded";
    default:
      return status >= 500 ? "server_error" : "invalid_request_error";
  }
}

}  // namespace

Error upstream_error(Wire w, int status, std::string_view body) {
  std::string message;
  std::string code;
  auto doc = json::parse_object(body, 2);
  if (doc) {
    simdjson::dom::element e;
    if ((*doc)["error"].get(e) == simdjson::SUCCESS) {
      message = std::string(json::str(e, "message"));
      if (w == Wire::kAnthropic) code = std::string(json::str(e, "type"));
      if (w == Wire::kGemini) code = std::string(json::str(e, "status"));
      if (w == Wire::kOpenAI || w == Wire::kAzure) code = std::string(json::str(e, "code"));
    }
  }
  if (message.empty()) {
    message = "The upstream provider answered " + std::to_string(status) + ".";
  }
  // A context overflow keeps OpenAI's code, which the router reads for context fallbacks.
  if (message.find("context") != std::string::npos &&
      (message.find("too long") != std::string::npos ||
       message.find("exceed") != std::string::npos)) {
    code = "context_length_exceeded";
  }
  return make_error(status == 529 ? 503 : status, std::string(openai_type(status)), code, message);
}

}  // namespace bw::providers
