#include "cost/alerts.h"

#include <pthread.h>
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>

#include "common/json_util.h"
#include "store/key_crypto.h"

namespace bw::cost {

namespace {

// Exact decimal USD from micros ("812.5", "0.000001"), no float rounding.
std::string usd_decimal(Micros m) {
  std::string out;
  if (m < 0) {
    out.push_back('-');
    m = m == kMinMicros ? kMaxMicros : -m;
  }
  out += std::to_string(m / kMicrosPerUsd);
  Micros frac = m % kMicrosPerUsd;
  if (frac != 0) {
    std::string digits = std::to_string(frac);
    digits.insert(0, 6 - digits.size(), '0');
    while (!digits.empty() && digits.back() == '0') digits.pop_back();
    out.push_back('.');
    out += digits;
  }
  return out;
}

}  // namespace

std::string format_utc(std::int64_t unix_ms) {
  if (unix_ms == kForeverUnixMs) return "never";
  using namespace std::chrono;
  const std::int64_t day_start = utc_day_start(unix_ms);
  const year_month_day ymd{sys_days{days{day_start / kMillisPerDay}}};
  const std::int64_t secs = (unix_ms - day_start) / 1000;
  char buf[40];
  std::snprintf(buf, sizeof buf, "%04d-%02u-%02uT%02d:%02d:%02dZ", static_cast<int>(ymd.year()),
                static_cast<unsigned>(ymd.month()), static_cast<unsigned>(ymd.day()),
                static_cast<int>(secs / 3600), static_cast<int>(secs / 60 % 60),
                static_cast<int>(secs % 60));
  return buf;
}

std::string alert_payload_json(const BudgetAlert& alert) {
  JsonWriter w;
  w.begin_object();
  w.key("budget").value(alert.budget_id);
  w.key("threshold").value(alert.threshold);
  w.key("spent_usd").raw(usd_decimal(alert.spent_micro));
  w.key("cap_usd").raw(usd_decimal(alert.cap_micro));
  w.key("period_end").value(format_utc(alert.period_end_unix_ms));
  w.end_object();
  return w.take();
}

std::string alert_signature(std::string_view secret, std::string_view body) {
  return "sha256=" + store::hmac_sha256_hex(secret, body);
}

// --- WebhookSender -------------------------------------------------------------------------------

std::chrono::milliseconds backoff_delay(const WebhookOptions& options, int attempt) {
  if (attempt <= 1) return std::chrono::milliseconds(0);
  const double base = static_cast<double>(options.initial_backoff.count());
  const double d = base * std::pow(std::max(options.backoff_multiplier, 1.0), attempt - 2);
  const double cap = static_cast<double>(options.max_backoff.count());
  return std::chrono::milliseconds(static_cast<std::int64_t>(std::min(d, cap)));
}

WebhookSender::WebhookSender(WebhookOptions options, Poster poster)
    : options_(std::move(options)), poster_(std::move(poster)) {
  thread_ = std::thread([this] {
    pthread_setname_np(pthread_self(), "bw-alerts");
    run();
  });
}

WebhookSender::~WebhookSender() {
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

bool WebhookSender::enqueue(const BudgetAlert& alert) {
  if (options_.url.empty()) return false;
  std::string body = alert_payload_json(alert);
  {
    std::lock_guard lock(mu_);
    if (stopping_ || queue_.size() >= options_.queue_capacity) {
      dropped_.fetch_add(1, std::memory_order_relaxed);
      return false;
    }
    queue_.push_back(std::move(body));
  }
  cv_.notify_one();
  return true;
}

WebhookStats WebhookSender::stats() const {
  return {delivered_.load(), failed_.load(), dropped_.load(), attempts_.load()};
}

void WebhookSender::run() {
  for (;;) {
    std::string body;
    {
      std::unique_lock lock(mu_);
      cv_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
      if (stopping_) return;
      body = std::move(queue_.front());
      queue_.pop_front();
    }
    (deliver(body) ? delivered_ : failed_).fetch_add(1, std::memory_order_relaxed);
  }
}

bool WebhookSender::deliver(const std::string& body) {
  http::FetchRequest post;
  post.method = "POST";
  post.url = options_.url;
  post.headers = {{"Content-Type", "application/json"},
                  {"X-Bellwether-Signature", alert_signature(options_.secret, body)}};
  post.body = body;
  post.ca_file = options_.ca_file;
  post.timeout = options_.timeout;
  const int attempts = std::max(options_.max_attempts, 1);
  for (int attempt = 1; attempt <= attempts; ++attempt) {
    if (attempt > 1) {
      // Sleep on this thread only, and wake at once on shutdown.
      std::unique_lock lock(mu_);
      if (cv_.wait_for(lock, backoff_delay(options_, attempt), [&] { return stopping_; })) {
        return false;
      }
    }
    attempts_.fetch_add(1, std::memory_order_relaxed);
    const auto r = poster_(post);
    if (r.ok() && r->status >= 200 && r->status < 300) return true;
  }
  return false;
}

}  // namespace bw::cost
