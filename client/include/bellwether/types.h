#pragma once
// Value types shared by the Bellwether client SDK: requests, responses, stream chunks and typed
// errors. Plain data, no I/O; safe to copy between threads.
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

namespace bellwether {

// Monotonic nanoseconds. Pure policy code takes `now` as an argument so it is testable without a
// clock; the Client feeds it std::chrono::steady_clock.
using Nanos = std::int64_t;
inline constexpr Nanos kNanosPerMilli = 1'000'000;
inline constexpr Nanos kNanosPerSecond = 1'000'000'000;
constexpr Nanos millis(std::int64_t ms) {
  return ms * kNanosPerMilli;
}
constexpr Nanos seconds(double s) {
  return static_cast<Nanos>(s * 1e9);
}

enum class ErrorKind {
  kNone = 0,
  kInvalidRequest,    // rejected locally (empty model/messages) or HTTP 400/422
  kAuthentication,    // HTTP 401/403
  kNotFound,          // HTTP 404 on every candidate model
  kRateLimited,       // HTTP 429 and retries exhausted or Retry-After beyond the policy
  kServerError,       // HTTP 5xx and retries exhausted
  kHttpError,         // any other non-2xx status
  kCircuitOpen,       // every candidate model's breaker is open; nothing was sent
  kLocalRateLimited,  // the client-side limiter would have waited longer than allowed
  kBudgetExceeded,    // the local budget cap would be exceeded; nothing was sent
  kTimeout,           // per-attempt timeout or total deadline
  kNetwork,           // connect/read/write failure, TLS failure
  kProtocol,          // malformed HTTP, JSON or SSE, or a response over the size bound
  kCancelled,         // client shut down, or the stream callback asked to stop
};

const char* to_string(ErrorKind kind);

struct ClientError {
  ErrorKind kind = ErrorKind::kNone;
  int status = 0;             // HTTP status of the last response, 0 when none was received
  std::string type;           // OpenAI error.type from the body, if any
  std::string code;           // OpenAI error.code from the body, if any
  std::string param;          // OpenAI error.param from the body, if any
  std::string message;        // human readable; never contains the API key
  double retry_after_s = -1;  // server's hint (Retry-After / x-ratelimit-reset-*), -1 if none
  std::string model;          // model of the last attempt
  int attempts = 0;           // HTTP attempts made (0 when refused locally)
};

// Holds either a value or a ClientError. No exceptions cross the SDK's API.
template <class T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::move(value)) {}            // NOLINT: implicit by design
  Result(ClientError error) : v_(std::move(error)) {}  // NOLINT
  bool ok() const { return v_.index() == 0; }
  explicit operator bool() const { return ok(); }
  T& value() & { return std::get<0>(v_); }
  const T& value() const& { return std::get<0>(v_); }
  T&& value() && { return std::get<0>(std::move(v_)); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  const ClientError& error() const { return std::get<1>(v_); }

 private:
  std::variant<T, ClientError> v_;
};

struct Message {
  std::string role;  // "system", "user", "assistant", "tool"
  std::string content;
};

struct ChatRequest {
  std::string model;
  std::vector<Message> messages;
  std::optional<int> max_tokens;
  std::optional<double> temperature;
  int priority = -1;  // 0 (highest) .. 2; -1 = ClientConfig::default_priority
  // Tried in order after `model` on 404/5xx/open breaker. Empty = ClientConfig::fallback_models.
  std::vector<std::string> fallback_models;
};

struct Usage {
  std::int64_t prompt_tokens = 0;
  std::int64_t completion_tokens = 0;
  std::int64_t total_tokens = 0;
};

// The x-ratelimit-* and Retry-After headers of one response.
struct RateLimitInfo {
  std::optional<std::int64_t> limit_requests, remaining_requests;
  std::optional<std::int64_t> limit_tokens, remaining_tokens;
  std::optional<Nanos> reset_requests, reset_tokens;
  std::optional<double> retry_after_s;
};

struct ChatResponse {
  int status = 0;
  std::string id;
  std::string model;      // "model" field of the body
  std::string served_by;  // x-bellwether-model header (empty when absent)
  std::string content;    // first choice; concatenated deltas for streams
  std::string finish_reason;
  Usage usage;
  bool has_usage = false;
  double cost_usd = 0;     // from usage and the price table (0 when the model has no price)
  int attempts = 0;        // HTTP attempts including retries and fallbacks
  Nanos latency = 0;       // from the call to the last byte, including limiter waits and retries
  std::size_t chunks = 0;  // stream chunks delivered (0 for buffered calls)
  RateLimitInfo rate_limits;
  std::string raw_body;  // buffered calls only
};

struct ChatChunk {
  std::string id;
  std::string model;
  std::string role;     // delta.role, usually only in the first chunk
  std::string content;  // delta.content
  std::string finish_reason;
  std::optional<Usage> usage;  // final chunk when stream_options.include_usage is set
};

// A raw HTTP exchange, for endpoints the SDK does not model (e.g. GET /v1/metrics/queue).
struct HttpResponse {
  int status = 0;
  std::vector<std::pair<std::string, std::string>> headers;  // names lower-cased
  std::string body;
  std::string header(std::string_view name) const;
};

using ChatResult = Result<ChatResponse>;

}  // namespace bellwether
