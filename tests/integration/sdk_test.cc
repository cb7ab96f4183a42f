// The C++ client SDK (client/) against real processes: `bellwether serve` in front of
// `bellwether sim`, on loopback. Each test starts its own simulator and gateway, so counters
// (the gateway's /metrics, the simulator's /sim/stats) start at zero.
//
// What is checked end to end, through the SDK's public API only:
//  1. retries honour the gateway's Retry-After (and, as a control, ignoring it fails);
//  2. the SDK's circuit breaker opens on 5xx, then fails fast without sending anything, and
//     closes again after open_duration once the upstream has recovered;
//  3. the SDK's client-side limiter keeps a client under the gateway's per-key limit, so no 429
//     is ever received (and, as a control, the same burst without the limiter gets 429s);
//  4. streaming through the gateway is incremental, and usage and cost are reported.
#include <gtest/gtest.h>

#if !__has_include("bellwether/client.h")
// Built without the client SDK (BW_BUILD_CLIENT=OFF): nothing to test.
TEST(Sdk, NotBuilt) {
  GTEST_SKIP() << "bellwether_client is not part of this build";
}
#else

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <mutex>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "bellwether/client.h"
#include "harness.h"

namespace bw::test {
namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

constexpr const char* kChat = "/v1/chat/completions";
constexpr const char* kTinyKey = "sk-sdk-tiny-000001";   // 1 request/s, no burst
constexpr const char* kFiveKey = "sk-sdk-five-000001";   // 5 requests/s
constexpr const char* kFiveKeyB = "sk-sdk-five-000002";  // same limit, separate bucket
constexpr const char* kOpenKey = "sk-sdk-open-000001";   // no limits

// Stream timing of the simulated upstream: exact (median == p99), so the assertions on the
// spread of chunk arrival times have a known floor: 16 tokens, 40 ms apart = 600 ms of stream.
constexpr int kStreamTokens = 16;
constexpr double kItlMs = 40;

double ms_since(Clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
}

std::string sim_yaml() {
  return R"(sim:
  workers: 2
  defaults: {ttft: {median_ms: 5, p99_ms: 5}, itl: {median_ms: 1, p99_ms: 1}, completion_tokens: 4}
  models:
    fast-up: {ttft: {median_ms: 5, p99_ms: 5}, itl: {median_ms: 1, p99_ms: 1}, completion_tokens: 4}
    stream-up: {ttft: {median_ms: 50, p99_ms: 50}, itl: {median_ms: 40, p99_ms: 40}, completion_tokens: 16}
)";
}

// The gateway neither retries nor opens its own breakers here: one SDK attempt is exactly one
// upstream request, so what the SDK decides is what the counters show.
std::string gw_yaml(int sim_port) {
  return R"(workers: 2
providers:
  sim: {base_url: "http://127.0.0.1:)" +
         std::to_string(sim_port) + R"(/v1"}
plans:
  bare: {limits: []}
model_groups:
  fast: {deployments: [{provider: sim, model: fast-up}]}
  streamer: {deployments: [{provider: sim, model: stream-up}]}
resilience:
  breaker: {consecutive_failures: 0, failure_rate: 0}
  retry: {max_attempts: 1}
keys:
  - {name: tiny, key: )" +
         std::string(kTinyKey) +
         R"(, plan: bare, limits: [{name: rps, rate: 1, period: second, burst: 0}]}
  - {name: five, key: )" +
         std::string(kFiveKey) +
         R"(, plan: bare, limits: [{name: rps, rate: 5, period: second, burst: 0}]}
  - {name: five-b, key: )" +
         std::string(kFiveKeyB) +
         R"(, plan: bare, limits: [{name: rps, rate: 5, period: second, burst: 0}]}
  - {name: open, key: )" +
         std::string(kOpenKey) + R"(, plan: bare}
)";
}

struct Env {
  Sim sim;
  Gw gw;
};

Env start_env() {
  Env e;
  e.sim = start_sim(sim_yaml());
  e.gw = start_gateway(gw_yaml(e.sim.port));
  return e;
}

bellwether::ClientConfig client_config(const Env& e, const std::string& key) {
  bellwether::ClientConfig c;
  c.base_url = "http://127.0.0.1:" + std::to_string(e.gw.port);
  c.api_key = key;
  c.request_timeout = bellwether::seconds(10);
  c.retry.total_deadline = bellwether::seconds(30);
  return c;
}

bellwether::ChatRequest chat_req(const std::string& model,
                                 const std::string& text = "Hello there") {
  bellwether::ChatRequest r;
  r.model = model;
  r.messages = {{"user", text}};
  return r;
}

// Sum of bellwether_requests_total for the chat endpoint, optionally of one status class.
double gateway_chat_requests(const Gw& gw, const std::string& status_class = {}) {
  auto r = request(gw.port, "GET", "/metrics");
  EXPECT_EQ(r.status, 200);
  double sum = 0;
  std::istringstream in(r.body);
  for (std::string line; std::getline(in, line);) {
    if (!line.starts_with("bellwether_requests_total{")) continue;
    if (line.find("endpoint=\"/v1/chat/completions\"") == std::string::npos) continue;
    if (!status_class.empty() &&
        line.find("status_class=\"" + status_class + "\"") == std::string::npos) {
      continue;
    }
    sum += std::strtod(line.c_str() + line.rfind(' ') + 1, nullptr);
  }
  return sum;
}

// The counter is incremented when the gateway settles a request, which may be a moment after
// the client has read the answer: poll until it reaches `want` (or give up and return it).
double wait_gateway_chat_requests(const Gw& gw, double want) {
  const auto deadline = Clock::now() + std::chrono::seconds(3);
  double v = gateway_chat_requests(gw);
  while (v < want && Clock::now() < deadline) {
    std::this_thread::sleep_for(milliseconds(10));
    v = gateway_chat_requests(gw);
  }
  return v;
}

std::int64_t sim_requests(const Sim& s) {
  auto r = request(s.port, "GET", "/sim/stats");
  EXPECT_EQ(r.status, 200) << r.body;
  auto p = r.body.find("\"requests\":");
  return p == std::string::npos ? -1 : std::strtoll(r.body.c_str() + p + 11, nullptr, 10);
}

void sim_control(const Sim& s, const std::string& json) {
  auto r = request(s.port, "POST", "/sim/control", json, {{"Content-Type", "application/json"}});
  ASSERT_EQ(r.status, 200) << r.body;
}

// Fires `n` asynchronous calls at once and waits for all of them.
std::vector<bellwether::ChatResult> fire_async(bellwether::Client& client, int n,
                                               const std::string& model) {
  std::mutex mu;
  std::condition_variable cv;
  std::vector<std::optional<bellwether::ChatResult> > results(static_cast<std::size_t>(n));
  int done = 0;
  for (int i = 0; i < n; ++i) {
    client.chat_async(chat_req(model), [&, i](bellwether::ChatResult r) {
      std::lock_guard lock(mu);
      results[static_cast<std::size_t>(i)].emplace(std::move(r));
      ++done;
      cv.notify_all();
    });
  }
  std::unique_lock lock(mu);
  const bool all = cv.wait_for(lock, std::chrono::seconds(40), [&] { return done == n; });
  EXPECT_TRUE(all) << "only " << done << " of " << n << " calls completed";
  if (!all) {
    lock.unlock();
    client.shutdown();  // completes the rest with kCancelled before `results` goes away
    lock.lock();
    cv.wait(lock, [&] { return done == n; });
  }
  std::vector<bellwether::ChatResult> out;
  for (auto& r : results) out.push_back(std::move(*r));
  return out;
}

// ---- 1. retries honour Retry-After --------------------------------------------------------------

TEST(Sdk, RetryHonoursRetryAfterFromTheGateway) {
  auto e = start_env();
  {
    bellwether::Client client(client_config(e, kTinyKey));  // default retry policy: honours hints
    auto first = client.chat(chat_req("fast"));
    ASSERT_TRUE(first.ok()) << first.error().message;
    EXPECT_EQ(first->attempts, 1);

    // The key's bucket holds one request: the second call gets a 429 with Retry-After: 1, waits
    // for it and succeeds on the retry.
    const auto t0 = Clock::now();
    auto second = client.chat(chat_req("fast"));
    const double elapsed = ms_since(t0);
    ASSERT_TRUE(second.ok()) << bellwether::to_string(second.error().kind) << ": "
                             << second.error().message;
    EXPECT_EQ(second->attempts, 2);
    EXPECT_GE(elapsed, 950.0) << "the retry did not wait for Retry-After";
    EXPECT_LT(elapsed, 3000.0);
    const auto m = client.metrics();
    EXPECT_GE(m.retries, 1u);
    EXPECT_EQ(m.responses_429, 1u);
    EXPECT_EQ(m.successes, 2u);
    EXPECT_EQ(m.rate_limited, 0u);
    EXPECT_EQ(wait_gateway_chat_requests(e.gw, 3), 3);
    EXPECT_EQ(gateway_chat_requests(e.gw, "4xx"), 1);
  }
  // Control: the same exchange with the hint ignored and a 10 ms backoff retries too early,
  // so every attempt is refused and the call ends rate limited.
  std::this_thread::sleep_for(milliseconds(1100));  // let the bucket refill
  {
    auto cfg = client_config(e, kTinyKey);
    cfg.retry.honor_retry_after = false;
    cfg.retry.base_delay = bellwether::millis(10);
    cfg.retry.max_delay = bellwether::millis(20);
    cfg.retry.max_attempts = 3;
    bellwether::Client client(cfg);
    ASSERT_TRUE(client.chat(chat_req("fast")).ok());
    auto second = client.chat(chat_req("fast"));
    ASSERT_FALSE(second.ok());
    EXPECT_EQ(second.error().kind, bellwether::ErrorKind::kRateLimited);
    EXPECT_EQ(second.error().status, 429);
    EXPECT_EQ(second.error().attempts, 3);
    EXPECT_GT(second.error().retry_after_s, 0);
    EXPECT_LE(second.error().retry_after_s, 1);
    EXPECT_EQ(client.metrics().responses_429, 3u);
    EXPECT_EQ(client.metrics().rate_limited, 1u);
  }
}

// ---- 2. the breaker opens, fails fast, and recovers ---------------------------------------------

TEST(Sdk, BreakerOpensFailsFastWithoutSendingAndRecovers) {
  auto e = start_env();
  auto cfg = client_config(e, kOpenKey);
  cfg.retry.max_attempts = 1;  // one call = one request, so the counts below are exact
  cfg.breaker.failure_threshold = 3;
  cfg.breaker.open_duration = bellwether::millis(1500);
  bellwether::Client client(cfg);

  ASSERT_TRUE(client.chat(chat_req("fast")).ok());
  EXPECT_EQ(client.breaker_state("fast"), bellwether::BreakerState::kClosed);

  sim_control(e.sim, R"({"error_status":503,"error_rate":1.0})");
  for (int i = 0; i < 3; ++i) {
    auto r = client.chat(chat_req("fast"));
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.error().kind, bellwether::ErrorKind::kServerError) << r.error().message;
    EXPECT_EQ(r.error().status, 503);
    EXPECT_EQ(r.error().attempts, 1);
  }
  EXPECT_EQ(client.breaker_state("fast"), bellwether::BreakerState::kOpen);
  ASSERT_EQ(wait_gateway_chat_requests(e.gw, 4), 4);
  EXPECT_EQ(gateway_chat_requests(e.gw, "5xx"), 3);
  EXPECT_EQ(sim_requests(e.sim), 4);

  // Open: calls fail at once with kCircuitOpen and nothing reaches the gateway.
  const auto t_open = Clock::now();
  for (int i = 0; i < 5; ++i) {
    const auto t0 = Clock::now();
    auto r = client.chat(chat_req("fast"));
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.error().kind, bellwether::ErrorKind::kCircuitOpen);
    EXPECT_EQ(r.error().attempts, 0);
    EXPECT_EQ(r.error().status, 0);
    EXPECT_GT(r.error().retry_after_s, 0);
    EXPECT_LE(r.error().retry_after_s, 1.5);
    // Fails fast: not after waiting out the 1.5 s open duration (that nothing reaches the
    // gateway is counted below); a bound well under it holds on a machine that stalls.
    EXPECT_LT(ms_since(t0), 1000.0) << "an open breaker must fail fast";
  }
  EXPECT_EQ(client.metrics().circuit_open, 5u);
  std::this_thread::sleep_for(milliseconds(200));  // anything sent would be counted by now
  EXPECT_EQ(gateway_chat_requests(e.gw), 4) << "a call went out while the breaker was open";
  EXPECT_EQ(sim_requests(e.sim), 4);

  // The upstream recovers; the breaker stays open until open_duration has passed.
  sim_control(e.sim, R"({"error_status":0,"error_rate":0})");
  {
    auto r = client.chat(chat_req("fast"));
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.error().kind, bellwether::ErrorKind::kCircuitOpen);
  }
  const auto remaining =
      milliseconds(1500) - std::chrono::duration_cast<milliseconds>(Clock::now() - t_open);
  std::this_thread::sleep_for(remaining + milliseconds(100));
  EXPECT_EQ(client.breaker_state("fast"), bellwether::BreakerState::kHalfOpen);
  auto probe = client.chat(chat_req("fast"));
  ASSERT_TRUE(probe.ok()) << probe.error().message;
  EXPECT_EQ(probe->attempts, 1);
  EXPECT_EQ(client.breaker_state("fast"), bellwether::BreakerState::kClosed);
  EXPECT_EQ(wait_gateway_chat_requests(e.gw, 5), 5);
  EXPECT_EQ(gateway_chat_requests(e.gw, "2xx"), 2);
  EXPECT_TRUE(client.chat(chat_req("fast")).ok());
  const auto m = client.metrics();
  EXPECT_EQ(m.requests, 12u);  // 1 ok, 3 failed, 6 refused open, probe, 1 ok
  EXPECT_EQ(m.successes, 3u);
  EXPECT_EQ(m.circuit_open, 6u);
  EXPECT_EQ(m.errors, 3u);
}

// ---- 3. the client-side limiter keeps a client under the gateway's limit ------------------------

TEST(Sdk, ClientLimiterKeepsUnderTheGatewayLimitWithoutAny429) {
  auto e = start_env();
  {
    // Gateway: 5 requests/s per key. SDK: a token bucket of 4/s, burst 1. No retries, so any 429
    // would also show up as a failed call.
    auto cfg = client_config(e, kFiveKey);
    cfg.retry.max_attempts = 1;
    cfg.token_bucket = {.rate_per_s = 4, .burst = 1};
    bellwether::Client client(cfg);
    const auto t0 = Clock::now();
    auto results = fire_async(client, 20, "fast");
    const double elapsed = ms_since(t0);
    int ok = 0;
    for (const auto& r : results) {
      if (r.ok()) {
        ++ok;
      } else {
        ADD_FAILURE() << bellwether::to_string(r.error().kind) << " " << r.error().status << ": "
                      << r.error().message;
      }
    }
    EXPECT_EQ(ok, 20);
    const auto m = client.metrics();
    EXPECT_EQ(m.responses_429, 0u);
    EXPECT_EQ(m.successes, 20u);
    EXPECT_EQ(m.local_limited, 0u);
    // 1 token at once, then 19 more at 4/s: at least 4.75 s.
    EXPECT_GE(elapsed, 4000.0) << "the limiter let the calls through too fast";
    EXPECT_LT(elapsed, 15000.0);
    EXPECT_EQ(wait_gateway_chat_requests(e.gw, 20), 20);
    EXPECT_EQ(gateway_chat_requests(e.gw, "4xx"), 0);
  }
  {
    // Control: the same 20 calls at once without the limiter exceed the key's bucket of 5.
    auto cfg = client_config(e, kFiveKeyB);
    cfg.retry.max_attempts = 1;
    bellwether::Client client(cfg);
    auto results = fire_async(client, 20, "fast");
    const auto m = client.metrics();
    EXPECT_GE(m.responses_429, 10u) << "the gateway limit did not bite; the test proves nothing";
    EXPECT_EQ(m.responses_429 + m.successes, 20u);
  }
}

// ---- 4. streaming through the gateway
// -------------------------------------------------------------

TEST(Sdk, StreamingIsIncrementalWithUsageAndCost) {
  auto e = start_env();
  auto cfg = client_config(e, kOpenKey);
  cfg.prices.set("streamer", {.input_per_mtok = 2.5, .output_per_mtok = 10});
  bellwether::Client client(cfg);

  const std::string prompt = "Tell me how the flock stays together during a spike.";
  struct Seen {
    double at_ms;
    std::string content;
  };
  std::vector<Seen> seen;  // written on the Client's I/O thread, read after chat_stream returns
  const auto t0 = Clock::now();
  auto r = client.chat_stream(chat_req("streamer", prompt), [&](const bellwether::ChatChunk& c) {
    seen.push_back({ms_since(t0), c.content});
    return true;
  });
  const double total_ms = ms_since(t0);
  ASSERT_TRUE(r.ok()) << bellwether::to_string(r.error().kind) << ": " << r.error().message;

  // Content: the simulator's deterministic words, one delta per token.
  std::vector<double> content_at;
  std::string joined;
  for (const auto& s : seen) {
    joined += s.content;
    if (!s.content.empty()) content_at.push_back(s.at_ms);
  }
  EXPECT_EQ(r->content, joined);
  EXPECT_EQ(r->content,
            "the gateway keeps the service alive while traffic spikes and the budget holds under "
            "load today");
  ASSERT_EQ(content_at.size(), static_cast<std::size_t>(kStreamTokens));
  EXPECT_EQ(r->chunks, seen.size());

  // Incremental: the first token arrives long before the stream ends, and the callbacks are
  // spread over the stream (16 tokens 40 ms apart) instead of arriving in one burst at the end.
  const double span = content_at.back() - content_at.front();
  EXPECT_GE(span, (kStreamTokens - 1) * kItlMs * 0.75) << "chunks arrived in a burst";
  EXPECT_LT(content_at.front(), total_ms - 400) << "the first chunk came only at the end";
  int spaced = 0;
  for (std::size_t i = 1; i < content_at.size(); ++i)
    if (content_at[i] - content_at[i - 1] >= kItlMs / 2) ++spaced;
  EXPECT_GE(spaced, kStreamTokens / 2) << "too few chunks arrived separately";

  // Usage from the final chunk, and cost from the SDK's price table.
  ASSERT_TRUE(r->has_usage) << "no usage chunk reached the client";
  const std::int64_t prompt_tokens =
      static_cast<std::int64_t>((prompt.size() + 3) / 4) + 4 * 1 + 3;  // the sim's formula
  EXPECT_EQ(r->usage.prompt_tokens, prompt_tokens);
  EXPECT_EQ(r->usage.completion_tokens, kStreamTokens);
  EXPECT_EQ(r->usage.total_tokens, prompt_tokens + kStreamTokens);
  EXPECT_EQ(r->served_by, "streamer");
  EXPECT_EQ(r->finish_reason, "stop");
  const double want_cost =
      (static_cast<double>(prompt_tokens) * 2.5 + static_cast<double>(kStreamTokens) * 10) / 1e6;
  EXPECT_NEAR(r->cost_usd, want_cost, 1e-12);
  const auto m = client.metrics();
  EXPECT_NEAR(m.spend_usd, want_cost, 1e-12);
  EXPECT_NEAR(m.reserved_usd, 0, 1e-12);
  EXPECT_EQ(m.prompt_tokens, static_cast<std::uint64_t>(prompt_tokens));
  EXPECT_EQ(m.completion_tokens, static_cast<std::uint64_t>(kStreamTokens));
  EXPECT_EQ(m.successes, 1u);

  // ClientConfig::include_stream_usage = false: the SDK does not ask for the usage chunk, and the
  // gateway (which always asks upstream, to settle) does not pass it on. No usage, no cost.
  auto no_usage_cfg = client_config(e, kOpenKey);
  no_usage_cfg.prices.set("streamer", {.input_per_mtok = 2.5, .output_per_mtok = 10});
  no_usage_cfg.include_stream_usage = false;
  bellwether::Client no_usage(no_usage_cfg);
  auto r2 = no_usage.chat_stream(chat_req("streamer", prompt), nullptr);
  ASSERT_TRUE(r2.ok()) << r2.error().message;
  EXPECT_EQ(r2->content, r->content);
  EXPECT_FALSE(r2->has_usage);
  EXPECT_EQ(r2->cost_usd, 0);
  EXPECT_EQ(no_usage.metrics().reserved_usd, 0);
}

}  // namespace
}  // namespace bw::test

#endif  // __has_include("bellwether/client.h")
