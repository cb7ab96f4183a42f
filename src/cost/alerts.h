#pragma once
// Budget alert delivery. BudgetManager::settle() decides WHEN an alert fires (once per budget,
// period and threshold); this file formats, signs and delivers it.
//
// WebhookSender contract
//  - enqueue() never blocks and never does I/O: it appends to a bounded queue and returns false
//    (counted in stats().dropped) when full. Call it from the request path freely.
//  - One sender thread POSTs alerts in order; a failed POST (connect error, timeout, non-2xx) is
//    retried with exponential backoff up to max_attempts, then dropped (stats().failed).
//  - Only http:// URLs: https webhooks are not supported yet (put a local TLS-terminating relay in
//    front). The destructor stops the thread; undelivered alerts are dropped.
//  - Thread safety: all public methods may be called from any thread.
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>

#include "common/result.h"
#include "cost/budget_manager.h"

namespace bw::cost {

// {"budget":"global/monthly","threshold":0.8,"spent_usd":812.5,"cap_usd":1000,
//  "period_end":"2026-12-01T00:00:00Z"}
std::string alert_payload_json(const BudgetAlert& alert);
// Value of the X-Bellwether-Signature header: "sha256=" + hex HMAC-SHA256(secret, body).
std::string alert_signature(std::string_view secret, std::string_view body);
// "YYYY-MM-DDTHH:MM:SSZ"; "never" for kForeverUnixMs.
std::string format_utc(std::int64_t unix_ms);

struct HttpPostResult {
  int status = 0;  // HTTP status, 0 when no response was received
  std::string error;
};

struct HttpPostOptions {
  std::chrono::milliseconds connect_timeout{2'000};
  std::chrono::milliseconds io_timeout{5'000};  // per send/receive wait
};

// Minimal blocking HTTP/1.1 POST for http://host[:port]/path URLs over a POSIX socket with
// timeouts (Connection: close, Content-Type: application/json). Reads only the status line.
HttpPostResult http_post(const std::string& url, std::string_view body,
                         const std::vector<std::pair<std::string, std::string>>& headers,
                         const HttpPostOptions& options);

struct WebhookOptions {
  std::string url;     // http://host:port/path; empty disables delivery
  std::string secret;  // HMAC key (read from the env var named by secret_env)
  std::size_t queue_capacity = 1'024;
  int max_attempts = 5;  // including the first
  std::chrono::milliseconds initial_backoff{500};
  double backoff_multiplier = 2.0;
  std::chrono::milliseconds max_backoff{30'000};
  HttpPostOptions http;
};

// Delay before attempt `attempt` (1-based; attempt 1 has no delay): initial * mult^(attempt-2),
// capped at max_backoff.
std::chrono::milliseconds backoff_delay(const WebhookOptions& options, int attempt);

struct WebhookStats {
  std::uint64_t delivered = 0;
  std::uint64_t failed = 0;   // gave up after max_attempts
  std::uint64_t dropped = 0;  // queue full
  std::uint64_t attempts = 0;
};

class WebhookSender {
 public:
  using Poster = std::function<HttpPostResult(
      const std::string& url, std::string_view body,
      const std::vector<std::pair<std::string, std::string>>& headers, const HttpPostOptions&)>;

  explicit WebhookSender(WebhookOptions options, Poster poster = http_post);
  ~WebhookSender();
  WebhookSender(const WebhookSender&) = delete;
  WebhookSender& operator=(const WebhookSender&) = delete;

  bool enqueue(const BudgetAlert& alert);
  WebhookStats stats() const;

 private:
  void run();
  bool deliver(const std::string& body);

  const WebhookOptions options_;
  const Poster poster_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::string> queue_;  // serialized bodies
  bool stopping_ = false;
  std::atomic<std::uint64_t> delivered_{0}, failed_{0}, dropped_{0}, attempts_{0};
  std::thread thread_;
};

}  // namespace bw::cost
