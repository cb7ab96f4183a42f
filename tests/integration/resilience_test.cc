// Upstream resilience through real processes: `bellwether serve` in front of one `bellwether sim`
// process per deployment, so that the traffic each deployment receives can be counted exactly
// (GET /sim/stats) and its faults switched at run time (POST /sim/control). The gateway's view of
// its breakers comes from GET /admin/breakers.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <future>
#include <mutex>
#include <thread>

#include "harness.h"

namespace bw::test {
namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

constexpr const char* kKey = "sk-test-resilience-01";
constexpr const char* kAdminKey = "admin-key-resilience-0123";

double ms_since(Clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
}

// ---- tiny JSON helpers (the documents are flat and produced by our own writers) ----------------

// The number after "key": in `doc` (searching from `from`); NaN when absent.
double json_num(const std::string& doc, const std::string& key, std::size_t from = 0) {
  auto p = doc.find("\"" + key + "\":", from);
  if (p == std::string::npos) return std::nan("");
  return std::strtod(doc.c_str() + p + key.size() + 3, nullptr);
}

std::string json_str(const std::string& doc, const std::string& key, std::size_t from = 0) {
  auto p = doc.find("\"" + key + "\":\"", from);
  if (p == std::string::npos) return {};
  p += key.size() + 4;
  return doc.substr(p, doc.find('"', p) - p);
}

// ---- one sim process per deployment
// --------------------------------------------------------------

std::string sim_yaml(const std::string& models) {
  return "sim:\n  workers: 2\n  defaults: {ttft: {median_ms: 5}, itl: {median_ms: 1}, "
         "completion_tokens: 4}\n  models:\n" +
         models;
}

std::int64_t sim_requests(const Sim& s) {
  auto r = request(s.port, "GET", "/sim/stats");
  EXPECT_EQ(r.status, 200) << r.body;
  return static_cast<std::int64_t>(json_num(r.body, "requests"));
}

void sim_control(const Sim& s, const std::string& json) {
  auto r = request(s.port, "POST", "/sim/control", json, {{"Content-Type", "application/json"}});
  ASSERT_EQ(r.status, 200) << r.body;
}

// `extra`: more provider options, e.g. ", max_connections: 2".
std::string provider_yaml(const std::string& name, const Sim& s, const std::string& extra = "") {
  return "  " + name + ": {base_url: \"http://127.0.0.1:" + std::to_string(s.port) + "/v1\"" +
         extra + "}\n";
}

std::string common_gw_yaml() {
  return std::string("workers: 2\nadmin: {key: ") + kAdminKey +
         "}\nkeys:\n  - {name: tester, key: " + kKey + "}\n";
}

struct Breaker {
  std::string state;
  int openings = 0;
  int consecutive = 0;
  double open_remaining_s = 0;
  double cooldown_remaining_s = 0;
  bool found = false;
};

Breaker breaker(const Gw& gw, const std::string& id) {
  auto r = request(gw.port, "GET", "/admin/breakers", "",
                   {{"Authorization", std::string("Bearer ") + kAdminKey}});
  Breaker b;
  EXPECT_EQ(r.status, 200) << r.body;
  auto p = r.body.find("\"id\":\"" + id + "\"");
  if (p == std::string::npos) return b;
  auto end = r.body.find('}', p);
  auto obj = r.body.substr(p, end - p);
  b.found = true;
  b.state = json_str(obj, "state");
  b.openings = static_cast<int>(json_num(obj, "openings"));
  b.consecutive = static_cast<int>(json_num(obj, "consecutive_failures"));
  b.open_remaining_s = json_num(obj, "open_remaining_s");
  b.cooldown_remaining_s = json_num(obj, "cooldown_remaining_s");
  return b;
}

// ---- client load
// ---------------------------------------------------------------------------------

struct Result {
  int status = 0;
  double latency_ms = 0;
  double sent_ms = 0;  // since the start of the load
  std::string model;
  std::string body;
};

// Sends `total` chat requests for `model` from `threads` threads, paced evenly over `duration`
// (a thread that falls behind catches up without waiting).
std::vector<Result> run_load(const Gw& gw, const std::string& model, int threads, int total,
                             milliseconds duration, Clock::time_point t0 = Clock::now()) {
  std::vector<Result> out(static_cast<std::size_t>(total));
  std::atomic<int> next{0};
  const double gap_ms = static_cast<double>(duration.count()) / total;
  std::vector<std::thread> ts;
  for (int t = 0; t < threads; ++t) {
    ts.emplace_back([&] {
      for (;;) {
        const int i = next.fetch_add(1);
        if (i >= total) return;
        std::this_thread::sleep_until(
            t0 + std::chrono::microseconds(static_cast<std::int64_t>(i * gap_ms * 1000)));
        Result& r = out[static_cast<std::size_t>(i)];
        r.sent_ms = ms_since(t0);
        auto start = Clock::now();
        auto resp = post_json(gw.port, "/v1/chat/completions", chat_body(model, false), kKey);
        r.latency_ms = ms_since(start);
        r.status = resp.status;
        r.model = resp.header("x-bellwether-model");
        r.body = resp.body;
      }
    });
  }
  for (auto& t : ts) t.join();
  return out;
}

double percentile(std::vector<double> v, double q) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<std::size_t>(q * static_cast<double>(v.size())))];
}

// Samples a few counters every ~10 ms on a background thread until stopped. The reads of one
// sample are not atomic: A's count is read before the breaker (`a`) and again after it
// (`a_after`), so that a check can pick the read that cannot race against it. Requests reach
// the simulator before their outcome reaches the breaker, so `a_after` includes every failure
// that the breaker state read has counted, and `a` excludes any attempt admitted after it.
struct Sample {
  double at_ms;
  std::int64_t a, b;
  Breaker brk;
  std::int64_t a_after;
};
class Monitor {
 public:
  Monitor(const Gw& gw, const Sim& a, const Sim& b, std::string id_a, Clock::time_point t0)
      : th_([this, &gw, &a, &b, id = std::move(id_a), t0] {
          while (!stop_.load()) {
            // Braced initialisers are evaluated in order.
            Sample s{ms_since(t0), sim_requests(a), sim_requests(b), breaker(gw, id),
                     sim_requests(a)};
            {
              std::lock_guard lock(mu_);
              samples_.push_back(s);
            }
            std::this_thread::sleep_for(milliseconds(10));
          }
        }) {}
  std::vector<Sample> stop() {
    stop_ = true;
    if (th_.joinable()) th_.join();
    return samples_;
  }
  ~Monitor() { stop(); }

 private:
  std::atomic<bool> stop_{false};
  std::mutex mu_;
  std::vector<Sample> samples_;
  std::thread th_;
};

// ---- 1: a 5xx storm on one deployment
// ------------------------------------------------------------

TEST(Resilience, FiveHundredStormMovesToHealthyDeploymentAndBreakerOnlyProbes) {
  Sim a = start_sim(
      sim_yaml("    m: {ttft: {median_ms: 5}, itl: {median_ms: 1}, completion_tokens: 4}\n"));
  Sim b = start_sim(
      sim_yaml("    m: {ttft: {median_ms: 5}, itl: {median_ms: 1}, completion_tokens: 4}\n"));
  constexpr int kThreshold = 3;
  constexpr int kProbes = 1;
  Gw gw = start_gateway(common_gw_yaml() + "providers:\n" + provider_yaml("pa", a) +
                        provider_yaml("pb", b) + R"(model_groups:
  storm:
    deployments:
      - {id: storm-a, provider: pa, model: m}
      - {id: storm-b, provider: pb, model: m}
resilience:
  breaker: {consecutive_failures: 3, failure_rate: 0, open_base: 500ms, open_max: 1s, open_jitter: 0, half_open_probes: 1}
  retry: {max_attempts: 3, base: 10ms, cap: 50ms, deadline: 20s}
)");
  sim_control(a, R"({"error_status":503,"error_rate":1.0})");

  const auto t0 = Clock::now();
  Monitor mon(gw, a, b, "storm-a", t0);
  auto results = run_load(gw, "storm", 8, 200, milliseconds(2000), t0);
  auto samples = mon.stop();

  int errors = 0;
  std::vector<double> lat;
  for (const auto& r : results) {
    if (r.status != 200) ++errors;
    lat.push_back(r.latency_ms);
  }
  EXPECT_EQ(errors, 0) << "first error: " << [&] {
    for (const auto& r : results)
      if (r.status != 200) return std::to_string(r.status) + " " + r.body;
    return std::string();
  }();
  // A retry that moves to B does not wait for the Retry-After: 1 that A's 503 carries (A is
  // excluded for the rest of the request); backoff here is at most 10-50 ms. A wait would take a
  // second: the bound stays just below it, so that a stalled machine does not reach it.
  EXPECT_LT(percentile(lat, 1.0), 950) << "a retry waited for the failed deployment's Retry-After";
  const std::int64_t a_total = sim_requests(a), b_total = sim_requests(b);
  ASSERT_FALSE(samples.empty());
  // B serves from the start of the storm.
  double first_b_ms = -1;
  for (const auto& s : samples) {
    if (s.b > 0) {
      first_b_ms = s.at_ms;
      break;
    }
  }
  EXPECT_GE(first_b_ms, 0);
  EXPECT_LT(first_b_ms, 1000) << "B got no traffic in the first second";
  // A's breaker opens once the threshold of consecutive failures is reached.
  const Sample* opened = nullptr;
  for (const auto& s : samples) {
    if (s.brk.state == "open") {
      opened = &s;
      break;
    }
  }
  ASSERT_NE(opened, nullptr) << "A's breaker never showed open";
  EXPECT_GE(opened->a_after, kThreshold) << "opened before " << kThreshold << " failures";
  // While open, A only gets probes: at most half_open_probes per half-open episode. Each failed
  // probe reopens the breaker (openings + 1); a trailing half-open episode may be in progress.
  // The baseline is taken from the first sample at least 100 ms after the opening (still inside the
  // 500 ms open interval) so that attempts admitted before the trip have landed.
  const Sample* base = nullptr;
  for (const auto& s : samples) {
    if (s.at_ms >= opened->at_ms + 100 && s.brk.openings == opened->brk.openings) {
      base = &s;
      break;
    }
  }
  ASSERT_NE(base, nullptr);
  ASSERT_EQ(base->brk.state, "open") << "baseline must lie inside the first open interval";
  const Sample& last = samples.back();
  const int episodes =
      (last.brk.openings - base->brk.openings) + (last.brk.state == "half_open" ? 1 : 0);
  const std::int64_t probes = last.a - base->a;
  EXPECT_GE(episodes, 1) << "the breaker never probed A again";
  EXPECT_LE(probes, static_cast<std::int64_t>(kProbes) * episodes)
      << "A got " << probes << " requests in " << episodes << " half-open episodes";
  std::printf(
      "[storm] client errors %d/200, A requests %lld (at open %lld, probes %lld over %d episodes),"
      " B requests %lld, first B traffic at %.0f ms, breaker open seen at %.0f ms, latency p50 "
      "%.1f ms p99 %.1f ms max %.1f ms\n",
      errors, static_cast<long long>(a_total), static_cast<long long>(opened->a),
      static_cast<long long>(probes), episodes, static_cast<long long>(b_total), first_b_ms,
      opened->at_ms, percentile(lat, 0.5), percentile(lat, 0.99), percentile(lat, 1.0));
}

// ---- 2: a 429 storm with Retry-After: 10
// ---------------------------------------------------------

TEST(Resilience, TooManyRequestsWithRetryAfterKeepsDeploymentIdleAndBoundsAttempts) {
  Sim a = start_sim(
      sim_yaml("    m: {ttft: {median_ms: 5}, itl: {median_ms: 1}, completion_tokens: 4}\n"));
  Sim b = start_sim(
      sim_yaml("    m: {ttft: {median_ms: 5}, itl: {median_ms: 1}, completion_tokens: 4}\n"));
  Gw gw = start_gateway(common_gw_yaml() + "providers:\n" + provider_yaml("pa", a) +
                        provider_yaml("pb", b) + R"(model_groups:
  limited:
    deployments:
      - {id: lim-a, provider: pa, model: m}
      - {id: lim-b, provider: pb, model: m}
resilience:
  breaker: {consecutive_failures: 5, open_base: 1s, cooldown_max: 60s}
  retry: {max_attempts: 3, base: 10ms, cap: 50ms, deadline: 30s}
)");
  sim_control(a, R"({"error_status":429,"error_rate":1.0,"retry_after_s":10})");

  // Prelude, one request at a time so that nothing else is in flight: until one reaches A.
  int client_requests = 0;
  std::vector<std::future<Result>> pending;
  Clock::time_point first_429;
  std::int64_t a_after_first = 0;
  for (int i = 0; i < 50 && a_after_first == 0; ++i) {
    ++client_requests;
    pending.push_back(std::async(std::launch::async, [&gw] {
      Result r;
      auto start = Clock::now();
      auto resp = request(
          gw.port, "POST", "/v1/chat/completions", chat_body("limited", false),
          {{"Content-Type", "application/json"}, {"Authorization", std::string("Bearer ") + kKey}},
          std::chrono::seconds(20));
      r.latency_ms = ms_since(start);
      r.status = resp.status;
      r.body = resp.body;
      return r;
    }));
    // Wait until this request is answered or has reached A and A is cooling in the gateway.
    auto deadline = Clock::now() + std::chrono::seconds(5);
    while (Clock::now() < deadline) {
      if (sim_requests(a) > 0 && breaker(gw, "lim-a").cooldown_remaining_s > 0) {
        first_429 = Clock::now();
        a_after_first = sim_requests(a);
        break;
      }
      if (pending.back().wait_for(milliseconds(5)) == std::future_status::ready) break;
    }
  }
  ASSERT_EQ(a_after_first, 1) << "no request reached A in the prelude";
  auto brk = breaker(gw, "lim-a");
  EXPECT_GT(brk.cooldown_remaining_s, 9.0);
  EXPECT_LE(brk.cooldown_remaining_s, 10.0);

  // Three seconds of traffic: A must not see a single request.
  auto load = run_load(gw, "limited", 4, 150, milliseconds(3000));
  client_requests += 150;
  const std::int64_t a_after_load = sim_requests(a);
  EXPECT_EQ(a_after_load, 1) << "requests reached A during its 10 s cooldown";
  int load_errors = 0;
  std::vector<double> lat;
  for (const auto& r : load) {
    if (r.status != 200) ++load_errors;
    lat.push_back(r.latency_ms);
  }
  EXPECT_EQ(load_errors, 0);

  // A recovers; light traffic until A gets its next request, which must come >= 10 s after the
  // first 429 (the cooldown), and must come (the cooldown ends).
  sim_control(a, R"({"error_status":0,"error_rate":0})");
  double next_a_ms = -1;
  auto until = first_429 + std::chrono::seconds(14);
  while (Clock::now() < until) {
    auto r = post_json(gw.port, "/v1/chat/completions", chat_body("limited", false), kKey);
    ++client_requests;
    EXPECT_EQ(r.status, 200) << r.body;
    if (sim_requests(a) > 1) {
      next_a_ms = ms_since(first_429);
      break;
    }
    std::this_thread::sleep_for(milliseconds(20));
  }
  std::vector<double> prelude_lat;
  for (auto& f : pending) {
    auto r = f.get();
    EXPECT_EQ(r.status, 200) << r.body;
    // The request that met the 429 is retried on B at once: A's Retry-After keeps A idle, it does
    // not hold the client for 10 s when another deployment can serve.
    EXPECT_LT(r.latency_ms, 1000) << "the client waited for A's Retry-After";
    prelude_lat.push_back(r.latency_ms);
  }
  EXPECT_GE(next_a_ms, 9900) << "A was used again before its Retry-After";
  EXPECT_GT(next_a_ms, 0) << "A was never used again after its cooldown";

  const std::int64_t upstream = sim_requests(a) + sim_requests(b);
  EXPECT_LE(static_cast<double>(upstream), 1.1 * client_requests)
      << upstream << " upstream attempts for " << client_requests << " client requests";
  std::printf(
      "[429] client requests %d, upstream attempts %lld (ratio %.3f), A requests during cooldown "
      "%lld, A used again %.0f ms after the first 429, load latency p50 %.1f ms max %.1f ms, "
      "request that met the 429 took %.0f ms\n",
      client_requests, static_cast<long long>(upstream),
      static_cast<double>(upstream) / client_requests, static_cast<long long>(a_after_load - 1),
      next_a_ms, percentile(lat, 0.5), percentile(lat, 1.0), percentile(prelude_lat, 1.0));
}

// ---- 3: every deployment down -------------------------------------------------------------------

TEST(Resilience, DownModelFallsBackAndAllDownGivesFastDegraded503) {
  Sim m = start_sim(sim_yaml("    m: {}\n"));
  Sim f = start_sim(sim_yaml("    f: {}\n"));
  Gw gw = start_gateway(common_gw_yaml() + "providers:\n" + provider_yaml("pm", m) +
                        provider_yaml("pf", f) + R"(model_groups:
  primary:
    deployments: [{id: primary-0, provider: pm, model: m}]
    fallbacks: [backup]
  backup:
    deployments: [{id: backup-0, provider: pf, model: f}]
resilience:
  breaker: {consecutive_failures: 2, failure_rate: 0, open_base: 10s, open_max: 10s, open_jitter: 0}
  retry: {max_attempts: 3, base: 10ms, cap: 50ms, deadline: 20s}
)");
  sim_control(m, R"({"error_status":503,"error_rate":1.0})");

  auto t = Clock::now();
  auto r = post_json(gw.port, "/v1/chat/completions", chat_body("primary", false), kKey);
  const double fallback_ms = ms_since(t);
  EXPECT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(r.header("x-bellwether-model"), "backup");
  EXPECT_EQ(r.header("x-bellwether-fallback-from"), "primary");
  EXPECT_NE(r.body.find("\"model\":\"f\""), std::string::npos) << r.body;
  EXPECT_EQ(sim_requests(m), 1);
  EXPECT_EQ(sim_requests(f), 1);

  // The fallback is down too: the client gets a fast 503 with Retry-After.
  sim_control(f, R"({"error_status":503,"error_rate":1.0})");
  std::vector<double> all_down_ms;
  std::vector<int> statuses;
  std::string codes;
  for (int i = 0; i < 4; ++i) {
    t = Clock::now();
    auto d = post_json(gw.port, "/v1/chat/completions", chat_body("primary", false), kKey);
    all_down_ms.push_back(ms_since(t));
    statuses.push_back(d.status);
    EXPECT_EQ(d.status, 503) << d.body;
    EXPECT_FALSE(d.header("retry-after").empty()) << "request " << i << ": " << d.body;
    EXPECT_GE(std::atoi(d.header("retry-after").c_str()), 1);
    EXPECT_LT(all_down_ms.back(), 2000)
        << "request " << i << " took " << all_down_ms.back() << " ms";
    codes += json_str(d.body, "code") + ",";
  }
  // Once both breakers are open the answer is the gateway's own, with nothing sent upstream.
  const auto m_before = sim_requests(m), f_before = sim_requests(f);
  t = Clock::now();
  auto d = post_json(gw.port, "/v1/chat/completions", chat_body("primary", false), kKey);
  const double degraded_ms = ms_since(t);
  EXPECT_EQ(d.status, 503);
  EXPECT_EQ(json_str(d.body, "code"), "upstream_degraded") << d.body;
  EXPECT_GE(std::atoi(d.header("retry-after").c_str()), 1);
  EXPECT_LE(std::atoi(d.header("retry-after").c_str()), 10);
  EXPECT_LT(degraded_ms, 2000);
  EXPECT_EQ(sim_requests(m), m_before);
  EXPECT_EQ(sim_requests(f), f_before);
  EXPECT_EQ(breaker(gw, "primary-0").state, "open");
  EXPECT_EQ(breaker(gw, "backup-0").state, "open");
  std::printf(
      "[all-down] fallback answer in %.0f ms; both down: %.0f/%.0f/%.0f/%.0f ms (codes %s); "
      "breakers open: %.1f ms, Retry-After %s\n",
      fallback_ms, all_down_ms[0], all_down_ms[1], all_down_ms[2], all_down_ms[3], codes.c_str(),
      degraded_ms, d.header("retry-after").c_str());
}

// ---- 4: a slow deployment
// ------------------------------------------------------------------------

TEST(Resilience, PeakEwmaMovesTrafficAwayFromSlowDeployment) {
  const std::string model =
      "    m: {ttft: {median_ms: 20}, itl: {median_ms: 2}, completion_tokens: 4}\n";
  Sim a = start_sim(sim_yaml(model));
  Sim b = start_sim(sim_yaml(model));
  Gw gw = start_gateway(common_gw_yaml() + "providers:\n" + provider_yaml("pa", a) +
                        provider_yaml("pb", b) + R"(model_groups:
  ewma:
    balancer: p2c_peak_ewma
    deployments:
      - {id: ewma-a, provider: pa, model: m}
      - {id: ewma-b, provider: pb, model: m}
)");
  sim_control(a, R"({"latency_scale":10})");
  auto results = run_load(gw, "ewma", 4, 200, milliseconds(3000));
  int errors = 0;
  std::vector<double> lat;
  for (const auto& r : results) {
    if (r.status != 200) ++errors;
    lat.push_back(r.latency_ms);
  }
  EXPECT_EQ(errors, 0);
  const auto na = sim_requests(a), nb = sim_requests(b);
  EXPECT_EQ(na + nb, 200);
  const double share = static_cast<double>(na) / static_cast<double>(na + nb);
  EXPECT_LT(share, 0.20) << "slow A got " << na << " of " << (na + nb);
  EXPECT_GT(na, 0) << "A was never explored";
  std::printf(
      "[slow] A (10x latency) got %lld of %lld requests (%.1f%%); latency p50 %.1f ms "
      "p99 %.1f ms\n",
      static_cast<long long>(na), static_cast<long long>(na + nb), 100 * share,
      percentile(lat, 0.5), percentile(lat, 0.99));
}

// ---- 5: a stream reset after bytes reached the client
// --------------------------------------------

TEST(Resilience, MidStreamResetEndsStreamCleanlyWithoutRetry) {
  Sim s = start_sim(
      sim_yaml("    resetting: {ttft: {median_ms: 5}, itl: {median_ms: 5}, completion_tokens: 12, "
               "reset_rate: 1.0}\n"));
  Sim spare = start_sim(sim_yaml("    resetting: {}\n"));
  Gw gw = start_gateway(common_gw_yaml() + "providers:\n" + provider_yaml("ps", s) +
                        provider_yaml("pspare", spare) + R"(model_groups:
  flaky:
    deployments: [{id: flaky-0, provider: ps, model: resetting}]
    fallbacks: [spare]
  spare:
    deployments: [{id: spare-0, provider: pspare, model: resetting}]
)");
  StreamReader rd(gw.port, raw_post("/v1/chat/completions", chat_body("flaky", true), kKey));
  std::string raw;
  TimedChunk c;
  while (raw.find("\r\n0\r\n\r\n") == std::string::npos &&
         rd.read_some(c, std::chrono::seconds(5))) {
    raw += c.data;
  }
  ASSERT_EQ(raw.rfind("HTTP/1.1 200", 0), 0u) << raw;
  auto head_end = raw.find("\r\n\r\n");
  ASSERT_NE(head_end, std::string::npos);
  const std::string head = raw.substr(0, head_end);
  EXPECT_NE(head.find("text/event-stream"), std::string::npos) << head;
  // The chunked body is terminated properly (last chunk), so the client sees a clean end.
  EXPECT_TRUE(raw.size() >= 7 && raw.compare(raw.size() - 7, 7, "\r\n0\r\n\r\n") == 0)
      << "no terminating chunk: ..." << raw.substr(raw.size() > 300 ? raw.size() - 300 : 0);
  // Some tokens arrived, then an error event says why the stream stopped; no [DONE].
  EXPECT_NE(raw.find("\"delta\":{\"content\":\"the\"}"), std::string::npos) << raw;
  EXPECT_NE(raw.find("data: {\"error\":"), std::string::npos) << "no error event in the stream:\n"
                                                              << raw;
  EXPECT_EQ(raw.find("[DONE]"), std::string::npos);
  // Exactly one upstream request: nothing is retried once bytes reached the client.
  EXPECT_EQ(sim_requests(s), 1);
  EXPECT_EQ(sim_requests(spare), 0);
  auto stats = request(s.port, "GET", "/sim/stats").body;
  EXPECT_EQ(json_num(stats, "resets"), 1) << stats;
  std::printf("[reset] sim requests %lld (resets %.0f), spare requests %lld, stream bytes %zu\n",
              static_cast<long long>(sim_requests(s)), json_num(stats, "resets"),
              static_cast<long long>(sim_requests(spare)), raw.size());
}

// The same through an upstream that really resets its TCP connection mid-stream (SO_LINGER 0):
// a minimal OpenAI-style SSE server on a raw socket, counting the requests it receives.
class ResettingUpstream {
 public:
  ResettingUpstream() {
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    ::setsockopt(fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ::bind(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a);
    socklen_t len = sizeof a;
    ::getsockname(fd_, reinterpret_cast<sockaddr*>(&a), &len);
    port = ntohs(a.sin_port);
    ::listen(fd_, 16);
    th_ = std::thread([this] { serve(); });
  }
  ~ResettingUpstream() {
    stop_ = true;
    th_.join();
    ::close(fd_);
  }
  int port = 0;
  std::atomic<int> requests{0};

 private:
  void serve() {
    while (!stop_) {
      pollfd p{fd_, POLLIN, 0};
      if (::poll(&p, 1, 50) <= 0) continue;
      int c = ::accept(fd_, nullptr, nullptr);
      if (c < 0) continue;
      // Read one request: headers, then Content-Length bytes of body.
      std::string buf;
      char tmp[8192];
      std::size_t need = std::string::npos;
      while (need == std::string::npos || buf.size() < need) {
        pollfd q{c, POLLIN, 0};
        if (::poll(&q, 1, 2000) <= 0) break;
        ssize_t n = ::recv(c, tmp, sizeof tmp, 0);
        if (n <= 0) break;
        buf.append(tmp, static_cast<std::size_t>(n));
        auto he = buf.find("\r\n\r\n");
        if (he != std::string::npos && need == std::string::npos) {
          std::string head = buf.substr(0, he);
          for (auto& ch : head)
            ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
          auto cl = head.find("content-length:");
          need = he + 4 +
                 (cl == std::string::npos ? 0 : std::strtoul(head.c_str() + cl + 15, nullptr, 10));
        }
      }
      if (need == std::string::npos || buf.size() < need) {
        ::close(c);
        continue;
      }
      ++requests;
      std::string out =
          "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: "
          "chunked\r\n\r\n";
      for (const char* w : {"the", " gateway", " keeps"}) {
        std::string ev =
            std::string(
                "data: {\"id\":\"x\",\"object\":\"chat.completion.chunk\","
                "\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"") +
            w + "\"},\"finish_reason\":null}]}\n\n";
        char size[16];
        std::snprintf(size, sizeof size, "%zx\r\n", ev.size());
        out += size + ev + "\r\n";
      }
      ::send(c, out.data(), out.size(), MSG_NOSIGNAL);
      std::this_thread::sleep_for(milliseconds(50));
      linger lg{1, 0};  // close with RST, mid-body
      ::setsockopt(c, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
      ::close(c);
    }
  }
  int fd_ = -1;
  std::atomic<bool> stop_{false};
  std::thread th_;
};

TEST(Resilience, UpstreamTcpResetMidStreamEndsWithErrorEventWithoutRetry) {
  ResettingUpstream up;
  Sim spare = start_sim(sim_yaml("    m: {}\n"));
  Gw gw = start_gateway(common_gw_yaml() + "providers:\n  preset: {base_url: \"http://127.0.0.1:" +
                        std::to_string(up.port) + "/v1\"}\n" + provider_yaml("pspare", spare) +
                        R"(model_groups:
  flaky:
    deployments:
      - {id: flaky-reset, provider: preset, model: m}
      - {id: flaky-spare, provider: pspare, model: m}
    balancer: weighted_round_robin
)");
  // Weighted round robin starts with the first deployment, the resetting one.
  StreamReader rd(gw.port, raw_post("/v1/chat/completions", chat_body("flaky", true), kKey));
  std::string raw;
  TimedChunk c;
  while (raw.find("\r\n0\r\n\r\n") == std::string::npos &&
         rd.read_some(c, std::chrono::seconds(5))) {
    raw += c.data;
  }
  ASSERT_EQ(raw.rfind("HTTP/1.1 200", 0), 0u) << raw;
  EXPECT_TRUE(raw.size() >= 7 && raw.compare(raw.size() - 7, 7, "\r\n0\r\n\r\n") == 0)
      << "no terminating chunk:\n"
      << raw;
  EXPECT_NE(raw.find("\"content\":\" keeps\""), std::string::npos) << raw;
  EXPECT_NE(raw.find("data: {\"error\":"), std::string::npos) << "no error event:\n" << raw;
  EXPECT_EQ(raw.find("[DONE]"), std::string::npos);
  EXPECT_EQ(up.requests.load(), 1);
  EXPECT_EQ(sim_requests(spare), 0) << "the stream was retried after bytes reached the client";
  std::printf("[tcp-reset] upstream requests %d, spare requests %lld, stream bytes %zu\n",
              up.requests.load(), static_cast<long long>(sim_requests(spare)), raw.size());
}

// ---- 6: a prompt larger than the model's context window -----------------------------------------

TEST(Resilience, ContextWindowErrorMovesToContextFallback) {
  Sim small = start_sim(sim_yaml("    small-ctx: {context_window: 64}\n"));
  Sim big = start_sim(sim_yaml("    big-ctx: {context_window: 100000}\n"));
  Gw gw = start_gateway(common_gw_yaml() + "providers:\n" + provider_yaml("psmall", small) +
                        provider_yaml("pbig", big) + R"(model_groups:
  short:
    deployments: [{id: short-0, provider: psmall, model: small-ctx}]
    context_fallback: long
  long:
    deployments: [{id: long-0, provider: pbig, model: big-ctx}]
resilience:
  retry: {max_attempts: 3, base: 10s, cap: 20s}
)");
  // A short prompt fits and is served by the small model.
  auto ok = post_json(gw.port, "/v1/chat/completions", chat_body("short", false), kKey);
  EXPECT_EQ(ok.status, 200) << ok.body;
  EXPECT_EQ(ok.header("x-bellwether-model"), "short");
  EXPECT_EQ(sim_requests(small), 1);
  EXPECT_EQ(sim_requests(big), 0);

  // ~400 prompt tokens do not fit in 64: the request moves to the larger model, at once.
  const std::string long_prompt(1600, 'x');
  auto t = Clock::now();
  auto r =
      post_json(gw.port, "/v1/chat/completions", chat_body("short", false, 0, long_prompt), kKey);
  const double took = ms_since(t);
  EXPECT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(r.header("x-bellwether-model"), "long");
  EXPECT_EQ(r.header("x-bellwether-fallback-from"), "short");
  EXPECT_NE(r.body.find("\"model\":\"big-ctx\""), std::string::npos) << r.body;
  EXPECT_EQ(sim_requests(small), 2);
  EXPECT_EQ(sim_requests(big), 1);
  // No backoff and no health penalty for the small model. A backoff is drawn from 0 to its base
  // (full jitter): a base of 10 s makes one show beyond a bound of seconds, which a stalled
  // machine does not reach.
  EXPECT_LT(took, 3000);
  auto brk = breaker(gw, "short-0");
  EXPECT_EQ(brk.state, "closed");
  EXPECT_EQ(brk.consecutive, 0);
  std::printf("[context] long prompt answered by the context fallback in %.0f ms\n", took);
}

}  // namespace
// ---- 8: the gateway's own connection bound is not an upstream failure
// ------------------------------------------------------------------------------------------------

TEST(Resilience, BusyConnectionPoolQueuesAndNeverOpensTheBreaker) {
  const std::string model =
      "    m: {ttft: {median_ms: 150}, itl: {median_ms: 1}, completion_tokens: 4}\n";
  Sim a = start_sim(sim_yaml(model));
  Sim b = start_sim(sim_yaml(model));
  // Two connections per worker. `pa` lets excess requests wait for one; `pb` refuses them.
  Gw gw = start_gateway(common_gw_yaml() + "providers:\n" +
                        provider_yaml("pa", a, ", max_connections: 2") +
                        provider_yaml("pb", b, ", max_connections: 2, max_pending_requests: 0") +
                        R"(model_groups:
  waits: {deployments: [{id: pool-a, provider: pa, model: m}]}
  refuses: {deployments: [{id: pool-b, provider: pb, model: m}]}
)");
  // 16 requests at once: at most 4 reach the upstream together (2 workers x 2), the rest wait.
  auto t0 = Clock::now();
  auto waited = run_load(gw, "waits", 16, 16, milliseconds(1));
  const double took_ms = ms_since(t0);
  for (const auto& r : waited) EXPECT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(sim_requests(a), 16);
  EXPECT_GE(took_ms, 3 * 150 * 0.8) << "16 requests over 4 connections need about 4 rounds";
  auto ba = breaker(gw, "pool-a");
  EXPECT_EQ(ba.state, "closed");
  EXPECT_EQ(ba.openings, 0);

  // Without waiting the excess is refused with the pool's own 503, and the upstream's breaker
  // stays closed: 12 refusals in a row must not read as 12 upstream failures (5 open it).
  auto refused = run_load(gw, "refuses", 16, 16, milliseconds(1));
  int ok = 0, limit = 0;
  for (const auto& r : refused) {
    if (r.status == 200) ++ok;
    if (r.status == 503 && json_str(r.body, "code") == "upstream_connection_limit") ++limit;
  }
  EXPECT_EQ(ok + limit, 16);
  EXPECT_GE(limit, 5) << "the bound of 2 connections per worker did not refuse";
  EXPECT_EQ(sim_requests(b), ok);
  auto bb = breaker(gw, "pool-b");
  EXPECT_EQ(bb.state, "closed");
  EXPECT_EQ(bb.openings, 0);
  EXPECT_EQ(bb.consecutive, 0);
  auto after = post_json(gw.port, "/v1/chat/completions", chat_body("refuses", false), kKey);
  EXPECT_EQ(after.status, 200) << after.body;
  std::printf(
      "[pool] 16 at once over 4 connections: all 200 in %.0f ms; with no waiting: %d ok, "
      "%d x 503 upstream_connection_limit, breaker %s\n",
      took_ms, ok, limit, bb.state.c_str());
}

}  // namespace bw::test
