#pragma once
// Budget alert delivery. BudgetManager::settle() decides WHEN an alert fires (once per budget,
// period and threshold); this file formats, signs and delivers it.
//
// WebhookSender contract
//  - enqueue() never blocks and never does I/O: it appends to a bounded queue and returns false
//    (counted in stats().dropped) when full. Call it from the request path freely.
//  - One sender thread POSTs alerts in order; a failed POST (connect error, timeout, non-2xx) is
//    retried with exponential backoff up to max_attempts, then dropped (stats().failed).
//  - http:// and https:// URLs (http/fetch.h: peer verified against `ca_file` or the system
//    store). The destructor stops the thread; undelivered alerts are dropped.
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

#include "common/clock.h"
#include "common/result.h"
#include "cost/budget_manager.h"
#include "http/fetch.h"

namespace bw::cost {

// {"budget":"global/monthly","threshold":0.8,"spent_usd":812.5,"cap_usd":1000,
//  "period_end":"2026-12-01T00:00:00Z"}
std::string alert_payload_json(const BudgetAlert& alert);
// Value of the X-Bellwether-Signature header: "sha256=" + hex HMAC-SHA256(secret, body).
std::string alert_signature(std::string_view secret, std::string_view body);
// "YYYY-MM-DDTHH:MM:SSZ"; "never" for kForeverUnixMs.
std::string format_utc(std::int64_t unix_ms);

struct WebhookOptions {
  std::string url;     // http(s)://host:port/path; empty disables delivery
  std::string secret;  // HMAC key (read from the env var named by secret_env)
  std::size_t queue_capacity = 1'024;
  int max_attempts = 5;  // including the first
  std::chrono::milliseconds initial_backoff{500};
  double backoff_multiplier = 2.0;
  std::chrono::milliseconds max_backoff{30'000};
  Nanos timeout = seconds(5);  // one POST, connect to response
  std::string ca_file;         // https: trust anchors; empty = system default paths
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
  // Sends one POST; a 2xx answer counts as delivered. Tests pass their own.
  using Poster = std::function<Result<http::FetchResponse>(const http::FetchRequest&)>;

  explicit WebhookSender(WebhookOptions options, Poster poster = http::fetch);
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
