// A client bursts at a key of the built-in `starter` plan (10 requests/s, burst 10: the bucket
// holds rate + burst = 20, so 20 pass at once from idle, then 10 per second) through real
// processes: `bellwether serve` in front of a zero-latency `bellwether sim`.
//
// The plan's request rates are `on_exceed: wait`: a burst is held in the key's turn and let
// through at the plan's rate in priority order, as long as each request's wait fits its
// priority's max_wait. What does not fit is refused at once with 429 and the Retry-After at which
// it would have passed.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <memory>
#include <thread>
#include <vector>

#include "harness.h"
#include "support/eventually.h"

namespace bw::test {
namespace {

using bw::testing::eventually;

using Clock = std::chrono::steady_clock;

constexpr const char* kKey = "sk-burst-key-0001";
constexpr const char* kOtherKey = "sk-burst-key-0002";
constexpr double kPlanRps = 10;  // starter: rps 10
constexpr int kPlanBucket = 20;  // starter: rate 10 + burst 10 pass at once from idle
constexpr double kIntervalS = 1 / kPlanRps;

std::string sim_yaml() {
  return R"(sim:
  workers: 2
  zero_latency: true
  defaults: {completion_tokens: 1}
)";
}

// The key is on the built-in `starter` plan (no `plans:` section), allowed to ask for P0.
std::string gw_yaml(int sim_port, const std::string& max_wait) {
  return R"(providers:
  sim:
    base_url: http://127.0.0.1:)" +
         std::to_string(sim_port) + R"(/v1
admission:
  max_wait: )" +
         max_wait +
         R"(
  metrics_access: any_key
model_groups:
  burst-model:
    deployments: [{provider: sim, model: burst-upstream}]
keys:
  - {name: bursty, key: )" +
         std::string(kKey) + R"(, plan: starter, default_priority: 1, max_priority: 0}
  - {name: calm, key: )" +
         std::string(kOtherKey) + R"(, plan: starter, default_priority: 1, max_priority: 0}
)";
}

struct Shot {
  int priority = 1;
  int status = 0;
  double sent_s = 0, done_s = 0;  // since the burst started
  std::string retry_after;
  std::string body;
  double latency_s() const { return done_s - sent_s; }
};

double since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

// `request_id`, when given, finds the request's line in the access log.
void fire(int port, const char* key, Shot& s, Clock::time_point t0,
          const std::string& request_id = {}) {
  std::vector<std::pair<std::string, std::string>> headers = {
      {"Content-Type", "application/json"},
      {"Authorization", std::string("Bearer ") + key},
      {"x-priority", std::to_string(s.priority)}};
  if (!request_id.empty()) headers.emplace_back("X-Request-Id", request_id);
  s.sent_s = since(t0);
  auto r = request(port, "POST", "/v1/chat/completions", chat_body("burst-model", false, 1),
                   headers, std::chrono::seconds(70));
  s.done_s = since(t0);
  s.status = r.status;
  s.retry_after = r.header("retry-after");
  s.body = r.body;
}

// Sends every shot of `shots[from, to)` at once, one thread each; returns the threads.
std::vector<std::thread> burst(int port, std::vector<Shot>& shots, std::size_t from, std::size_t to,
                               Clock::time_point t0) {
  std::vector<std::thread> ts;
  // Shared with the threads, which may still be leaving the spin when this function returns.
  struct Start {
    std::atomic<std::size_t> ready{0};
    std::atomic<bool> go{false};
  };
  auto start = std::make_shared<Start>();
  for (std::size_t i = from; i < to; ++i) {
    ts.emplace_back([start, port, &shots, i, t0] {
      ++start->ready;
      while (!start->go) std::this_thread::yield();
      fire(port, kKey, shots[i], t0, "burst-" + std::to_string(i));
    });
  }
  while (start->ready < to - from) std::this_thread::yield();
  start->go = true;
  return ts;
}

double number_after(const std::string& body, const std::string& key) {
  auto p = body.find("\"" + key + "\":");
  if (p == std::string::npos) return -1;
  return std::strtod(body.c_str() + p + key.size() + 3, nullptr);
}

// 300 requests (30 P0, 180 P1, 90 P2) at once at one starter key whose priorities may wait 35 s:
// every one is answered 200 within its max_wait, at the plan's rate (never faster, and not slower:
// waiting wastes none of it), P0 first even though it arrived last; another key of the same plan
// is not delayed by the burst.
TEST(KeyBurst, StarterKeyBurstOf300PassesAtThePlanRateP0First) {
  auto sim = start_sim(sim_yaml());
  auto gw = start_gateway(gw_yaml(sim.port, "{p0: 35s, p1: 35s, p2: 35s}"));
  constexpr std::size_t kP0 = 30, kP1 = 180, kP2 = 90, kN = kP0 + kP1 + kP2;
  constexpr double kMaxWaitS = 35;
  std::vector<Shot> shots(kN);
  for (std::size_t i = 0; i < kN; ++i) shots[i].priority = i < kP0 ? 0 : (i < kP0 + kP1 ? 1 : 2);

  const auto t0 = Clock::now();
  // P1 and P2 first; P0 once they all wait, so P0 can only be first by priority.
  auto low = burst(gw.port, shots, kP0, kN, t0);
  // 270 threads connect: on a loaded machine that can take seconds, hence the generous bound.
  double waiting = 0;
  eventually(
      [&] {
        auto q = request(gw.port, "GET", "/v1/metrics/queue", "",
                         {{"Authorization", std::string("Bearer ") + kKey}});
        auto p = q.body.find("\"waiting_by_reason\":");
        waiting = p == std::string::npos ? 0 : number_after(q.body.substr(p), "key_limit");
        return waiting >= static_cast<double>(kP1 + kP2 - kPlanBucket - 20);
      },
      std::chrono::seconds(20));
  ASSERT_GE(waiting, static_cast<double>(kP1 + kP2 - kPlanBucket - 20)) << "the burst never queued";
  const double p0_sent = since(t0);
  auto high = burst(gw.port, shots, 0, kP0, t0);

  // Another key of the plan, during the burst: its own limit, its own turn.
  Shot calm;
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  fire(gw.port, kOtherKey, calm, t0, "burst-calm-1");

  for (auto& t : high) t.join();
  for (auto& t : low) t.join();

  std::vector<double> done;
  double last_p0 = 0, p0_max_latency = 0, max_latency = 0;
  for (const auto& s : shots) {
    ASSERT_EQ(s.status, 200) << "P" << s.priority << " after " << s.latency_s() << " s: " << s.body;
    EXPECT_LE(s.latency_s(), kMaxWaitS) << "P" << s.priority;
    done.push_back(s.done_s);
    max_latency = std::max(max_latency, s.latency_s());
    if (s.priority == 0) {
      last_p0 = std::max(last_p0, s.done_s);
      p0_max_latency = std::max(p0_max_latency, s.latency_s());
    }
  }
  std::sort(done.begin(), done.end());
  std::size_t after_p0 = 0;
  std::vector<double> p1_done, p2_done;
  for (const auto& s : shots) {
    if (s.priority != 0 && s.done_s > last_p0) ++after_p0;
    if (s.priority == 1) p1_done.push_back(s.done_s);
    if (s.priority == 2) p2_done.push_back(s.done_s);
  }
  std::sort(p1_done.begin(), p1_done.end());
  std::sort(p2_done.begin(), p2_done.end());
  std::printf(
      "[burst] %zu answered 200; first %.2f s, last %.2f s (%.2f req/s after the first %d); "
      "P0 sent at %.2f s, all P0 done by %.2f s (max P0 latency %.2f s), %zu P1/P2 answered "
      "after the last P0; median P1 done %.2f s, median P2 done %.2f s; max latency %.2f s; "
      "other key %d in %.3f s\n",
      done.size(), done.front(), done.back(),
      static_cast<double>(kN - kPlanBucket) / (done.back() - done.front()), kPlanBucket, p0_sent,
      last_p0, p0_max_latency, after_p0, p1_done[p1_done.size() / 2], p2_done[p2_done.size() / 2],
      max_latency, calm.status, calm.latency_s());

  // At the plan's rate, never above it: the k-th answer (after the bucket) not before k intervals
  // (50 ms of slack for the simulator and scheduling).
  const double first = done.front();
  for (std::size_t k = kPlanBucket; k < done.size(); ++k) {
    ASSERT_GE(done[k] - first, static_cast<double>(k - kPlanBucket) * kIntervalS - 0.05)
        << "answer " << k << " came faster than the plan's rate";
  }
  // ...and not below it: the 280 after the bucket take 28 s, with 2.5 s of slack.
  EXPECT_LE(done.back() - first, static_cast<double>(kN - kPlanBucket) * kIntervalS + 2.5);
  // P0 first: the 30 P0 pass within ~3 s of arriving, ahead of ~240 P1/P2 that came before them.
  EXPECT_LE(p0_max_latency, static_cast<double>(kP0) * kIntervalS + 1.5);
  EXPECT_GE(after_p0, static_cast<std::size_t>(200));
  // One key's burst does not delay another key: it never waited for a key limit (the gateway's
  // own record, which a slow machine cannot blur), and was not held behind the burst's ~28 s.
  EXPECT_EQ(calm.status, 200) << calm.body;
  const auto calm_line = access_log_line(gw.access_log, "burst-calm-1");
  ASSERT_FALSE(calm_line.empty()) << "no access-log line for the other key's request";
  EXPECT_EQ(calm_line.find("\"wait_reason\":\"key_limit\""), std::string::npos) << calm_line;
  EXPECT_LT(calm.latency_s(), 5.0);

  // The waits are visible: the access log names the key limit as the reason (a line is written
  // after its answer: polled for).
  std::string log;
  eventually(
      [&] {
        log = read_file(gw.access_log);
        return count(log, "\"wait_reason\":\"key_limit\"") >= kN - kPlanBucket - 10;
      },
      std::chrono::seconds(20));
  EXPECT_GE(count(log, "\"wait_reason\":\"key_limit\""), kN - kPlanBucket - 10)
      << log.substr(0, 2000);
}

// A burst that cannot fit its wait: 60 P1 at once with a P1 max_wait of 3 s. The first ~50 pass
// within 3 s at the plan's rate; the rest are refused at once with 429 and a Retry-After that is
// exact: the backlog ahead of each refused request has drained by then (never too early), and by
// at most one second more (whole seconds, rounded up). A retry at that time passes at once.
TEST(KeyBurst, BurstBeyondMaxWaitIs429AtOnceWithTheExactRetryAfter) {
  auto sim = start_sim(sim_yaml());
  auto gw = start_gateway(gw_yaml(sim.port, "{p0: 3s, p1: 3s, p2: 3s}"));
  constexpr std::size_t kN = 60;
  constexpr double kMaxWaitS = 3;
  std::vector<Shot> shots(kN);
  const auto t0 = Clock::now();
  auto ts = burst(gw.port, shots, 0, kN, t0);
  for (auto& t : ts) t.join();

  std::size_t ok = 0, refused = 0;
  double last_ok = 0;
  for (const auto& s : shots) {
    if (s.status == 200) {
      ++ok;
      last_ok = std::max(last_ok, s.done_s);
      EXPECT_LE(s.latency_s(), kMaxWaitS + 2);
    }
  }
  // Within its max_wait: the gateway's own record of the wait, exact whatever the machine's
  // speed (the client's latency adds the forwarding and any stall; 50 ms for the coarse clock).
  for (std::size_t i = 0; i < kN; ++i) {
    if (shots[i].status != 200) continue;
    const auto line = access_log_line(gw.access_log, "burst-" + std::to_string(i));
    ASSERT_FALSE(line.empty()) << "no access-log line for request " << i;
    EXPECT_LE(num(line, "queue_ms"), kMaxWaitS * 1000 + 50) << line;
  }
  double first_refusal_at = -1, first_refusal_ra = 0;
  for (const auto& s : shots) {
    if (s.status == 200) continue;
    ++refused;
    ASSERT_EQ(s.status, 429) << s.body;
    EXPECT_NE(s.body.find("\"code\":\"rate_limit_exceeded\""), std::string::npos) << s.body;
    ASSERT_FALSE(s.retry_after.empty()) << "429 without Retry-After";
    const double ra = std::strtod(s.retry_after.c_str(), nullptr);
    // Refused at once, not after waiting out its max_wait (3 s).
    EXPECT_LT(s.latency_s(), 1.5) << "refused after " << s.latency_s() << " s";
    // Exact: not before the backlog ahead of it has passed, and at most a second (the rounding
    // up to whole seconds) plus its own interval after that.
    const double drained_in = last_ok - s.done_s;
    EXPECT_GE(ra, drained_in - 0.3)
        << "Retry-After " << ra << " s, backlog drained in " << drained_in << " s";
    EXPECT_LE(ra, drained_in + 1 + 2 * kIntervalS)
        << "Retry-After " << ra << " s, backlog drained in " << drained_in << " s";
    EXPECT_GE(ra, kMaxWaitS);
    if (first_refusal_at < 0 || s.done_s < first_refusal_at) {
      first_refusal_at = s.done_s;
      first_refusal_ra = ra;
    }
  }
  std::printf(
      "[burst] %zu answered 200 (last at %.2f s), %zu refused at once; first refusal at "
      "%.3f s with Retry-After %.0f s\n",
      ok, last_ok, refused, first_refusal_at, first_refusal_ra);
  // The bucket's 20 + ~3 s at 10/s fit; the rest do not.
  EXPECT_GE(ok, static_cast<std::size_t>(kPlanBucket + 25));
  EXPECT_LE(ok, static_cast<std::size_t>(kPlanBucket + 32));
  EXPECT_EQ(ok + refused, kN);
  ASSERT_GT(refused, 0u);

  // Retrying when Retry-After says: it passes without waiting.
  const double at = first_refusal_at + first_refusal_ra;
  if (since(t0) < at) {
    std::this_thread::sleep_for(std::chrono::duration<double>(at - since(t0)));
  }
  Shot retry;
  fire(gw.port, kKey, retry, t0, "burst-retry-1");
  EXPECT_EQ(retry.status, 200) << retry.body;
  // Without waiting: the gateway records a wait's reason for a request that was held at all.
  const auto retry_line = access_log_line(gw.access_log, "burst-retry-1");
  ASSERT_FALSE(retry_line.empty()) << "no access-log line for the retry";
  EXPECT_EQ(retry_line.find("\"wait_reason\""), std::string::npos) << retry_line;
  EXPECT_LT(retry.latency_s(), 2.0);

  const auto q = request(gw.port, "GET", "/v1/metrics/queue", "",
                         {{"Authorization", std::string("Bearer ") + kKey}});
  auto p = q.body.find("\"refusals_by_reason\":");
  ASSERT_NE(p, std::string::npos) << q.body;
  auto k = q.body.find("\"key_limit\":", p);
  ASSERT_NE(k, std::string::npos) << q.body;
  EXPECT_EQ(number_after(q.body.substr(k), "p1"), static_cast<double>(refused)) << q.body;
}

}  // namespace
}  // namespace bw::test
