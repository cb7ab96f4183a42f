// Rate limits through real processes: `bellwether serve` (one per test, each with its own limit
// config) in front of one zero-latency `bellwether sim`. Every request travels over loopback
// sockets exactly as a client's would; the assertions are on status codes, x-ratelimit-* headers,
// Retry-After, error bodies and the access log.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <regex>
#include <thread>

#include "harness.h"

namespace bw::test {
namespace {

using Clock = std::chrono::steady_clock;

constexpr const char* kKey = "sk-limits-key-0001";
constexpr const char* kKey2 = "sk-limits-key-0002";
constexpr const char* kChat = "/v1/chat/completions";

double ms_since(Clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
}

// Every sim model answers at once with 5 completion tokens unless the request sets max_tokens.
std::string sim_yaml() {
  return R"(sim:
  workers: 2
  zero_latency: true
  defaults: {completion_tokens: 5}
)";
}

// Providers and model groups shared by every test; the test adds limits, plans, keys, server.
std::string base_yaml(int sim_port) {
  return R"(workers: 2
providers:
  sim:
    base_url: http://127.0.0.1:)" +
         std::to_string(sim_port) + R"(/v1
model_groups:
  model-x:
    deployments: [{provider: sim, model: sim-x}]
  model-y:
    deployments: [{provider: sim, model: sim-y}]
  short-out:
    max_output_tokens: 400
    deployments: [{provider: sim, model: sim-short}]
)";
}

std::int64_t int_header(const HttpResponse& r, const std::string& name) {
  auto v = r.header(name);
  EXPECT_FALSE(v.empty()) << "missing header " << name;
  return v.empty() ? -1 : std::strtoll(v.c_str(), nullptr, 10);
}

// Parses the OpenAI reset formats this gateway emits ("200ms", "1s", "1.187s", "6m0s") into ms.
// Returns -1 for anything else, so a wrong format fails the comparison that uses it.
double reset_ms(const std::string& s) {
  static const std::regex kMs(R"(^([0-9]+)ms$)");
  static const std::regex kGo(R"(^(?:([0-9]+)h)?(?:([0-9]+)m)?([0-9]+)(?:\.([0-9]{1,3}))?s$)");
  std::smatch m;
  if (std::regex_match(s, m, kMs)) return std::stod(m[1]);
  if (std::regex_match(s, m, kGo)) {
    double ms = 0;
    if (m[1].matched) ms += std::stod(m[1]) * 3'600'000;
    if (m[2].matched) ms += std::stod(m[2]) * 60'000;
    ms += std::stod(m[3]) * 1000;
    if (m[4].matched) {
      std::string f = m[4];
      f.append(3 - f.size(), '0');
      ms += std::stod(f);
    }
    return ms;
  }
  return -1;
}

// Waits until the access log holds a line for this request id. The gateway writes the access
// record after it has settled the request's token reservation, so this orders "settled" before
// whatever the test does next. Returns that line.
std::string wait_access_line(const Gw& gw, const std::string& request_id) {
  return access_log_line(gw.access_log, request_id);
}

std::int64_t json_int(const std::string& json, const std::string& field) {
  auto p = json.find("\"" + field + "\":");
  if (p == std::string::npos) return -1;
  return std::strtoll(json.c_str() + p + field.size() + 3, nullptr, 10);
}

void expect_rate_limited(const HttpResponse& r, const std::string& limit_name) {
  EXPECT_EQ(r.status, 429) << r.body;
  EXPECT_NE(r.body.find("\"type\":\"rate_limit_exceeded\""), std::string::npos) << r.body;
  EXPECT_NE(r.body.find("\"code\":\"rate_limit_exceeded\""), std::string::npos) << r.body;
  EXPECT_NE(r.body.find("limit '" + limit_name + "'"), std::string::npos) << r.body;
  EXPECT_FALSE(r.header("retry-after").empty()) << "429 without Retry-After";
}

class Limits : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { sim_ = new Sim(start_sim(sim_yaml())); }
  static void TearDownTestSuite() {
    delete sim_;
    sim_ = nullptr;
  }
  // A gateway with the shared providers/models plus this test's limits, plans, keys, server.
  static Gw gateway(const std::string& extra) {
    return start_gateway(base_yaml(sim_->port) + extra);
  }
  static HttpResponse chat(const Gw& gw, const std::string& model, const std::string& key = kKey,
                           const std::vector<std::pair<std::string, std::string>>& extra = {},
                           int max_tokens = 0) {
    return post_json(gw.port, kChat, chat_body(model, false, max_tokens), key, extra);
  }
  static Sim* sim_;
};
Sim* Limits::sim_ = nullptr;

// 1. rate 5/s burst 3 admits exactly 8 back-to-back, then 429 with Retry-After rounded up to whole
// seconds; after waiting that long the key is admitted again. The key's override names only the
// rate, so the burst of 3 must come from the plan's limit of the same name.
TEST_F(Limits, BurstThenRejectThenRetryAfterAdmits) {
  Gw gw;
  std::vector<int> statuses;
  HttpResponse rejected;
  double elapsed = 0;
  // The bucket regains one request every 200 ms; within that, the count is exact. A stalled
  // machine (9 requests taking 200 ms or more) leaves nothing exact to check: then the run is
  // done again, on a new gateway with full buckets.
  for (int attempt = 0; attempt < 3; ++attempt) {
    gw = gateway(R"(plans:
  tight:
    limits: [{name: rps, unit: requests, rate: 50, period: second, burst: 3}]
keys:
  - {name: burst-key, key: sk-limits-key-0001, plan: tight, limits: [{name: rps, rate: 5}]}
  - {name: minute-key, key: sk-limits-key-0002, limits: [{name: two-per-minute, rate: 2, period: minute}]}
)");
    statuses.clear();
    rejected = HttpResponse{};
    const auto t0 = Clock::now();
    for (int i = 0; i < 9; ++i) {
      auto r = chat(gw, "model-x");
      statuses.push_back(r.status);
      if (r.status == 429) rejected = r;
    }
    elapsed = ms_since(t0);
    if (elapsed < 200.0) break;
    std::printf("9 requests took %.0f ms: too slow for an exact count, run again\n", elapsed);
  }
  ASSERT_LT(elapsed, 200.0) << "9 requests took " << elapsed << " ms: too slow for an exact count";
  EXPECT_EQ(statuses, (std::vector<int>{200, 200, 200, 200, 200, 200, 200, 200, 429}));
  expect_rate_limited(rejected, "rps");
  // The 9th request would pass 200 ms after the 1st: less than a second away, rounded UP to 1.
  EXPECT_EQ(rejected.header("retry-after"), "1");
  EXPECT_EQ(rejected.header("x-ratelimit-limit-requests"), "8");
  EXPECT_EQ(rejected.header("x-ratelimit-remaining-requests"), "0");

  std::this_thread::sleep_for(
      std::chrono::seconds(std::atoi(rejected.header("retry-after").c_str())));
  auto again = chat(gw, "model-x");
  EXPECT_EQ(again.status, 200) << again.body;

  // A per-minute limit: the 3rd request passes 30 s after the 1st, so Retry-After is "30"
  // (29.99... s rounded up, never down).
  EXPECT_EQ(chat(gw, "model-x", kKey2).status, 200);
  EXPECT_EQ(chat(gw, "model-x", kKey2).status, 200);
  auto third = chat(gw, "model-x", kKey2);
  expect_rate_limited(third, "two-per-minute");
  EXPECT_EQ(third.header("retry-after"), "30");
}

// 2. x-ratelimit-* headers: limit = rate + burst, remaining counts down by one, reset is the time
// until the bucket is full again in OpenAI's format; token headers come from the token limit.
TEST_F(Limits, RateLimitHeaders) {
  const std::string config = R"(plans:
  bare: {limits: []}
keys:
  - name: hdr-key
    key: sk-limits-key-0001
    plan: bare
    limits:
      - {name: rps, rate: 5, period: second, burst: 3}
      - {name: tpm, unit: tokens, rate: 10000, period: minute}
  - {name: minute-key, key: sk-limits-key-0002, plan: bare, limits: [{name: rpm, rate: 2, period: minute}]}
)";
  auto gw = gateway(config);
  std::vector<HttpResponse> rs;
  std::vector<double> done_at;  // ms from before the 1st request to the end of each
  // As above: a run that a stalled machine made take 200 ms or more is done again, on a new
  // gateway with full buckets.
  for (int attempt = 0; attempt < 3; ++attempt) {
    if (attempt > 0) {
      std::printf("9 requests took %.0f ms: too slow for exact header values, run again\n",
                  done_at.back());
      gw = gateway(config);
    }
    rs.clear();
    done_at.clear();
    const auto t0 = Clock::now();
    for (int i = 0; i < 9; ++i) {
      rs.push_back(chat(gw, "model-x", kKey, {}, /*max_tokens=*/239));
      done_at.push_back(ms_since(t0));
    }
    if (done_at.back() < 200.0) break;
  }
  ASSERT_LT(done_at.back(), 200.0) << "too slow for exact header values";
  for (int i = 0; i < 8; ++i) {
    SCOPED_TRACE("request " + std::to_string(i + 1));
    ASSERT_EQ(rs[i].status, 200) << rs[i].body;
    EXPECT_EQ(rs[i].header("x-ratelimit-limit-requests"), "8");
    EXPECT_EQ(int_header(rs[i], "x-ratelimit-remaining-requests"), 7 - i);
    // Each admitted request adds 200 ms of drain time; the clock has run since the first.
    const double reset = reset_ms(rs[i].header("x-ratelimit-reset-requests"));
    EXPECT_LE(reset, 200.0 * (i + 1)) << rs[i].header("x-ratelimit-reset-requests");
    EXPECT_GE(reset, 200.0 * (i + 1) - done_at[i]) << rs[i].header("x-ratelimit-reset-requests");
  }
  EXPECT_EQ(rs[0].header("x-ratelimit-reset-requests"), "200ms");
  // Reset values from 1 s on use the seconds form.
  EXPECT_TRUE(std::regex_match(rs[7].header("x-ratelimit-reset-requests"),
                               std::regex(R"(^1(\.[0-9]{1,3})?s$)")))
      << rs[7].header("x-ratelimit-reset-requests");
  // The 9th is refused and still carries the headers, with nothing remaining.
  expect_rate_limited(rs[8], "rps");
  EXPECT_EQ(rs[8].header("x-ratelimit-remaining-requests"), "0");
  EXPECT_EQ(rs[8].header("x-ratelimit-limit-requests"), "8");

  // Token headers of the first request: reserved = prompt estimate + max_tokens 239.
  EXPECT_EQ(rs[0].header("x-ratelimit-limit-tokens"), "10000");
  const std::int64_t reserved = 10000 - int_header(rs[0], "x-ratelimit-remaining-tokens");
  EXPECT_GE(reserved, 239 + 5);
  EXPECT_LE(reserved, 239 + 40);
  // 10000 tokens per minute drain at 6 ms per token, and the reservation was the only use.
  EXPECT_EQ(reset_ms(rs[0].header("x-ratelimit-reset-tokens")), 6.0 * static_cast<double>(reserved))
      << rs[0].header("x-ratelimit-reset-tokens");

  // 2 per minute: one request leaves 30 s of drain time, shown as "30s".
  auto m = chat(gw, "model-x", kKey2);
  ASSERT_EQ(m.status, 200);
  EXPECT_EQ(m.header("x-ratelimit-limit-requests"), "2");
  EXPECT_EQ(m.header("x-ratelimit-remaining-requests"), "1");
  EXPECT_EQ(m.header("x-ratelimit-reset-requests"), "30s");
  EXPECT_EQ(m.header("x-ratelimit-limit-tokens"), "") << "no token limit applies to this key";
}

// 3. scope ip: behind a trusted proxy range each X-Forwarded-For client has its own bucket;
// without trusted proxies the header is ignored and every request counts against the peer.
TEST_F(Limits, PerIpLimitUsesForwardedForOnlyFromTrustedProxies) {
  const std::string limits = R"(plans:
  bare: {limits: []}
keys:
  - {name: ip-key, key: sk-limits-key-0001, plan: bare}
limits:
  - {name: per-ip, scope: ip, rate: 2, period: minute}
)";
  const std::vector<std::pair<std::string, std::string>> a = {{"X-Forwarded-For", "203.0.113.7"}};
  const std::vector<std::pair<std::string, std::string>> b = {
      {"X-Forwarded-For", "198.51.100.9, 127.0.0.5"}};  // client, then a trusted hop
  {
    auto gw = gateway("server: {trusted_proxies: [127.0.0.0/8]}\n" + limits);
    EXPECT_EQ(chat(gw, "model-x", kKey, a).status, 200);
    EXPECT_EQ(chat(gw, "model-x", kKey, a).status, 200);
    auto third = chat(gw, "model-x", kKey, a);
    expect_rate_limited(third, "per-ip");
    // Another client address: a fresh bucket.
    auto other = chat(gw, "model-x", kKey, b, 0);
    EXPECT_EQ(other.status, 200) << other.body;
    EXPECT_EQ(other.header("x-ratelimit-remaining-requests"), "1");
    auto other2 = chat(gw, "model-x", kKey, b);
    EXPECT_EQ(other2.status, 200) << other2.body;
    // No header: the peer 127.0.0.1 itself, again a fresh bucket.
    EXPECT_EQ(chat(gw, "model-x").status, 200);
    // The first client is still limited.
    EXPECT_EQ(chat(gw, "model-x", kKey, a).status, 429);
    auto r = chat(gw, "model-x", kKey, a, 0);
    auto line = wait_access_line(gw, r.header("x-request-id"));
    EXPECT_NE(line.find("\"client_ip\":\"203.0.113.7\""), std::string::npos) << line;
  }
  {
    auto gw = gateway(limits);  // no trusted proxies
    EXPECT_EQ(chat(gw, "model-x", kKey, a).status, 200);
    EXPECT_EQ(chat(gw, "model-x", kKey, b).status, 200);
    auto third = chat(gw, "model-x", kKey, {{"X-Forwarded-For", "192.0.2.44"}});
    expect_rate_limited(third, "per-ip");
    auto line = wait_access_line(gw, third.header("x-request-id"));
    EXPECT_NE(line.find("\"client_ip\":\"127.0.0.1\""), std::string::npos) << line;
  }
}

// 4. scope model with match: only that model is limited; another model is untouched.
TEST_F(Limits, PerModelLimitLeavesOtherModelsAlone) {
  auto gw = gateway(R"(plans:
  bare: {limits: []}
keys:
  - {name: model-key, key: sk-limits-key-0001, plan: bare}
limits:
  - {name: model-x-rpm, scope: model, match: model-x, rate: 2, period: minute}
)");
  EXPECT_EQ(chat(gw, "model-x").status, 200);
  EXPECT_EQ(chat(gw, "model-x").status, 200);
  expect_rate_limited(chat(gw, "model-x"), "model-x-rpm");
  for (int i = 0; i < 5; ++i) {
    auto y = chat(gw, "model-y");
    EXPECT_EQ(y.status, 200) << y.body;
    EXPECT_EQ(y.header("x-ratelimit-limit-requests"), "") << "model-x's limit shown on model-y";
  }
  EXPECT_EQ(chat(gw, "model-x").status, 429);
}

// 5. A tokens-per-minute limit reserves prompt estimate + output cap (the group's
// max_output_tokens 400), and the reservation is refunded to the real usage (5 completion
// tokens) when the request ends.
TEST_F(Limits, TokenReservationIsRefundedToActualUsage) {
  auto gw = gateway(R"(plans:
  bare: {limits: []}
keys:
  - {name: tpm-key, key: sk-limits-key-0001, plan: bare, limits: [{name: tpm, unit: tokens, rate: 1000, period: minute}]}
)");
  const auto t0 = Clock::now();
  auto r1 = chat(gw, "short-out");
  ASSERT_EQ(r1.status, 200) << r1.body;
  EXPECT_EQ(r1.header("x-ratelimit-limit-tokens"), "1000");
  const std::int64_t reserved = 1000 - int_header(r1, "x-ratelimit-remaining-tokens");
  EXPECT_GE(reserved, 400 + 5);
  EXPECT_LE(reserved, 400 + 40);
  const std::int64_t used =
      json_int(r1.body, "prompt_tokens") + json_int(r1.body, "completion_tokens");
  EXPECT_EQ(json_int(r1.body, "completion_tokens"), 5) << r1.body;
  ASSERT_GT(used, 5);
  ASSERT_LT(used, 100);
  ASSERT_FALSE(wait_access_line(gw, r1.header("x-request-id")).empty());

  auto r2 = chat(gw, "short-out");
  ASSERT_EQ(r2.status, 200) << r2.body;
  const double elapsed_s = ms_since(t0) / 1000.0;
  const std::int64_t remaining2 = int_header(r2, "x-ratelimit-remaining-tokens");
  // Refunded: 1000 - used(1st) - reserved(2nd), plus what drained meanwhile (1000/min).
  const std::int64_t refunded = 1000 - used - reserved;
  EXPECT_GE(remaining2, refunded);
  EXPECT_LE(remaining2, refunded + 1 + static_cast<std::int64_t>(elapsed_s * 1000 / 60))
      << "elapsed " << elapsed_s << " s";
  // Without the refund the 2nd request would see about 1000 - 2 * reserved (< 200).
  RecordProperty("reserved", std::to_string(reserved));
  RecordProperty("used", std::to_string(used));
  RecordProperty("remaining_after_refund", std::to_string(remaining2));
  std::printf("[tpm] reserved=%lld used=%lld remaining2=%lld (no refund would be ~%lld)\n",
              static_cast<long long>(reserved), static_cast<long long>(used),
              static_cast<long long>(remaining2), static_cast<long long>(1000 - 2 * reserved));
  // A third request fits only thanks to the refunds (3 * reserved > 1000).
  auto line2 = wait_access_line(gw, r2.header("x-request-id"));
  ASSERT_FALSE(line2.empty());
  EXPECT_EQ(chat(gw, "short-out").status, 200);
}

// 6. A plan's daily quota is a limit named daily-requests.
TEST_F(Limits, DailyPlanQuota) {
  auto gw = gateway(R"(plans:
  daily: {daily_requests: 3}
keys:
  - {name: daily-key, key: sk-limits-key-0001, plan: daily}
)");
  for (int i = 0; i < 3; ++i) {
    auto r = chat(gw, "model-x");
    ASSERT_EQ(r.status, 200) << r.body;
    EXPECT_EQ(r.header("x-ratelimit-limit-requests"), "3");
    EXPECT_EQ(int_header(r, "x-ratelimit-remaining-requests"), 2 - i);
  }
  auto fourth = chat(gw, "model-x");
  expect_rate_limited(fourth, "daily-requests");
  // A sliding 24 h window with 20 slots: usage expires one day and at most one slot later.
  const long retry = std::atol(fourth.header("retry-after").c_str());
  EXPECT_GE(retry, 86400);
  EXPECT_LE(retry, 86400 + 86400 / 20);
  auto line = wait_access_line(gw, fourth.header("x-request-id"));
  EXPECT_NE(line.find("\"error\":\"rate_limited:daily-requests\""), std::string::npos) << line;
  // Another model does not help: the quota is per key.
  EXPECT_EQ(chat(gw, "model-y").status, 429);
}

// 7. A shadow limit never blocks and never shows in the headers, but its would-be rejections are
// logged.
TEST_F(Limits, ShadowLimitNeverBlocks) {
  auto gw = gateway(R"(plans:
  bare: {limits: []}
keys:
  - {name: shadow-key, key: sk-limits-key-0001, plan: bare, limits: [{name: shadow-rps, rate: 1, period: second, mode: shadow}]}
)");
  const auto t0 = Clock::now();
  for (int i = 0; i < 5; ++i) {
    auto r = chat(gw, "model-x");
    EXPECT_EQ(r.status, 200) << r.body;
    EXPECT_EQ(r.header("x-ratelimit-limit-requests"), "");
  }
  const double elapsed = ms_since(t0);
  if (elapsed < 1000) {
    // Within one second, 1 of the 5 fits the shadow bucket: 4 would have been rejected.
    std::size_t n = 0;
    for (int i = 0; i < 2000 && n < 4; ++i) {  // 20 s
      n = count(gw.proc.stdout_text() + gw.proc.stderr_text(), "shadow limit would reject");
      if (n < 4) std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    EXPECT_EQ(n, 4u);
    const auto logs = gw.proc.stdout_text() + gw.proc.stderr_text();
    EXPECT_NE(logs.find("shadow-rps"), std::string::npos) << "the log does not name the limit";
  }
}

// 8. All or nothing: a request refused by one limit consumes none of the others.
TEST_F(Limits, RejectedRequestConsumesNoOtherLimit) {
  auto gw = gateway(R"(plans:
  bare: {limits: []}
keys:
  - {name: aon-key, key: sk-limits-key-0001, plan: bare, limits: [{name: key-a, rate: 3, period: minute}]}
limits:
  - {name: model-b, scope: model, match: model-x, rate: 2, period: minute}
)");
  auto x1 = chat(gw, "model-x");
  auto x2 = chat(gw, "model-x");
  EXPECT_EQ(x1.status, 200);
  EXPECT_EQ(x2.status, 200);
  auto x3 = chat(gw, "model-x");
  expect_rate_limited(x3, "model-b");
  // key-a has 1 left only if the refused x3 did not consume it.
  auto y1 = chat(gw, "model-y");
  EXPECT_EQ(y1.status, 200) << y1.body;
  EXPECT_EQ(y1.header("x-ratelimit-remaining-requests"), "0");
  auto y2 = chat(gw, "model-y");
  expect_rate_limited(y2, "key-a");
}

// 9. on_exceed: wait holds requests until they fit instead of refusing them.
TEST_F(Limits, WaitModeDelaysInsteadOfRejecting) {
  auto gw = gateway(R"(plans:
  bare: {limits: []}
keys:
  - {name: wait-key, key: sk-limits-key-0001, plan: bare, limits: [{name: wait-rps, rate: 2, period: second, on_exceed: wait}]}
)");
  constexpr int kN = 4;
  std::vector<int> status(kN);
  std::vector<std::string> ids(kN);
  std::vector<double> done_at(kN);  // ms since the start, taken before any request was sent
  std::atomic<int> ready{0};
  std::atomic<bool> go{false};
  const auto t0 = Clock::now();
  std::vector<std::thread> ts;
  for (int i = 0; i < kN; ++i) {
    ts.emplace_back([&, i] {
      ++ready;
      while (!go) std::this_thread::yield();
      auto r = chat(gw, "model-x");
      done_at[i] = ms_since(t0);
      status[i] = r.status;
      ids[i] = r.header("x-request-id");
    });
  }
  while (ready < kN) std::this_thread::yield();
  go = true;
  for (auto& t : ts) t.join();
  EXPECT_EQ(status, std::vector<int>(kN, 200));
  // Two fit the bucket at once and never wait; the other two wait for the key limit. The gateway
  // records the wait's reason in the access log: exact, whatever the machine's speed.
  int waited = 0;
  for (const auto& id : ids) {
    const auto line = wait_access_line(gw, id);
    ASSERT_FALSE(line.empty()) << "no access-log line for " << id;
    if (line.find("\"wait_reason\":\"key_limit\"") != std::string::npos) ++waited;
  }
  EXPECT_EQ(waited, 2);
  std::sort(done_at.begin(), done_at.end());
  std::printf("[wait] answered after ms: %.0f %.0f %.0f %.0f\n", done_at[0], done_at[1], done_at[2],
              done_at[3]);
  // The bucket regains one request per 500 ms from the first one's arrival, which is after t0:
  // the 3rd is answered 500 ms after t0 at the earliest, the 4th 1000 ms (lower bounds that a
  // slow machine cannot break; 50 ms for the gateway's coarse clock). The upper bounds leave a
  // stalled machine a second.
  EXPECT_GE(done_at[2], 450);
  EXPECT_LT(done_at[2], 500 + 1000);
  EXPECT_GE(done_at[3], 950);
  EXPECT_LT(done_at[3], 1000 + 1000);
}

// A top-level limit without a scope is global: every key draws from the one bucket (inside a
// plan or a key, the default scope is the key).
TEST_F(Limits, TopLevelLimitDefaultsToGlobalScope) {
  auto gw = gateway(R"(plans:
  bare: {limits: []}
keys:
  - {name: k1, key: sk-limits-key-0001, plan: bare}
  - {name: k2, key: sk-limits-key-0002, plan: bare}
limits:
  - {name: shared, rate: 2, period: minute}
)");
  EXPECT_EQ(chat(gw, "model-x", kKey).status, 200);
  auto second = chat(gw, "model-y", kKey2);
  EXPECT_EQ(second.status, 200) << second.body;
  EXPECT_EQ(second.header("x-ratelimit-remaining-requests"), "0");
  expect_rate_limited(chat(gw, "model-x", kKey), "shared");
  expect_rate_limited(chat(gw, "model-y", kKey2), "shared");
}

}  // namespace
}  // namespace bw::test
