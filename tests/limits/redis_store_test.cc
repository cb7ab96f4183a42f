// test-label: redis
// RedisLimitStore against a real redis-server started by the test (loopback, free port, temp dir).
#include "limits/redis_limit_store.h"

#include <gtest/gtest.h>

#include <hiredis/hiredis.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>
#include "support/redis_server.h"
#include "support/run_awaitable.h"

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>

#include "limits/limiter.h"
#include "limits/memory_limit_store.h"
#include "limits/redis_script.h"

namespace bw::limits {
namespace {

namespace asio = boost::asio;
using bw::testing::run;

using test::RedisServer;

Nanos steady() {
  return SteadyClock::instance().now();
}

LimitSpec spec(std::string name, std::int64_t rate, std::int64_t burst = 0,
               Algorithm a = Algorithm::kGcra, Period period = Period::kSecond,
               Unit unit = Unit::kRequests) {
  LimitSpec s;
  s.name = std::move(name);
  s.rate = rate;
  s.burst = burst;
  s.algorithm = a;
  s.period = period;
  s.unit = unit;
  return s;
}

std::shared_ptr<RedisLimitStore> make_store(const RedisServer& server,
                                            RedisLimitStoreOptions o = {}) {
  o.url = server.url();
  if (o.timeout == 20 * kNanosPerMilli) o.timeout = 500 * kNanosPerMilli;  // sanitizer builds
  auto store = RedisLimitStore::create(std::move(o));
  EXPECT_TRUE(store.ok());
  return store.ok() ? *store : nullptr;
}

class RedisStoreTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { server_ = new RedisServer(); }
  static void TearDownTestSuite() {
    delete server_;
    server_ = nullptr;
  }
  void SetUp() override { ASSERT_EQ(server_->command({"FLUSHALL"}), "OK"); }

  static RedisServer* server_;
  asio::io_context ioc_;
};
RedisServer* RedisStoreTest::server_ = nullptr;

void expect_same(const BatchResult& mem, const BatchResult& red, const std::string& where) {
  ASSERT_EQ(mem.allowed, red.allowed) << where;
  ASSERT_FALSE(red.overflow) << where;
  ASSERT_FALSE(red.unavailable) << where;
  ASSERT_EQ(mem.results.size(), red.results.size()) << where;
  for (std::size_t i = 0; i < mem.results.size(); ++i) {
    const Decision& a = mem.results[i].decision;
    const Decision& b = red.results[i].decision;
    const std::string at = where + " check " + std::to_string(i);
    ASSERT_EQ(a.allowed, b.allowed) << at;
    ASSERT_EQ(mem.results[i].consumed, red.results[i].consumed) << at;
    ASSERT_EQ(a.limit, b.limit) << at;
    ASSERT_EQ(a.remaining, b.remaining) << at;
    ASSERT_EQ(a.retry_after, b.retry_after) << at;
    ASSERT_EQ(a.reset_after, b.reset_after) << at;
  }
}

// The script must decide exactly like algorithms.cc: same admissions, remaining, retry and reset
// to the nanosecond, across reloads (changed rate / algorithm on a key), shadow checks, repeated
// keys in a batch, refunds and debt, and numbers far beyond 2^53 (day-long token limits, epoch ns).
void parity_run(RedisStoreTest& t, asio::io_context& ioc, const RedisServer& server, Nanos t0,
                std::uint32_t seed, int steps) {
  RedisLimitStoreOptions o;
  o.time_source = RedisTimeSource::kCaller;
  // The fake clock advances slower than Redis expires keys; keep every key for the whole run.
  o.ttl_margin = 3600 * kNanosPerSecond;
  o.key_prefix = "parity:" + std::to_string(seed) + ":";
  auto redis = make_store(server, o);
  MemoryLimitStoreOptions mo;
  mo.hash_seed = 42;
  MemoryLimitStore mem(mo);
  (void)t;

  std::vector<LimitSpec> specs = {
      spec("g", 5, 3),
      spec("g", 7, 0),  // same name: a reload with another rate
      spec("gm", 100, 0, Algorithm::kGcra, Period::kMinute),
      spec("gt", 5'000'000, 1'000'000, Algorithm::kGcra, Period::kDay, Unit::kTokens),
      spec("t", 5, 3, Algorithm::kTokenBucket),
      spec("tt", 2'000'000, 0, Algorithm::kTokenBucket, Period::kMinute, Unit::kTokens),
      spec("td", 1'000'000'000'000, 5, Algorithm::kTokenBucket, Period::kDay),
      spec("w", 10, 2, Algorithm::kSlidingWindow),
      spec("w", 10, 2, Algorithm::kSlidingWindow, Period::kMinute),  // reload: other period
      spec("wd", 1000, 0, Algorithm::kSlidingWindow, Period::kDay),
      spec("wt", 40'000, 0, Algorithm::kSlidingWindow, Period::kMinute, Unit::kTokens),
  };
  std::mt19937_64 rng(seed);
  auto pick = [&](std::uint64_t n) { return static_cast<std::size_t>(rng() % n); };
  const std::vector<std::string> keys = {"k0", "k1", "k2"};
  Nanos now = t0;
  int allowed = 0, rejected = 0;
  for (int step = 0; step < steps; ++step) {
    switch (pick(6)) {
      case 0:
        break;
      case 1:
        now += static_cast<Nanos>(pick(200)) * kNanosPerMilli;
        break;
      case 2:
        now += static_cast<Nanos>(pick(5000)) * kNanosPerMilli;
        break;
      case 3:
        now += static_cast<Nanos>(pick(1000));
        break;
      case 4:
        now += static_cast<Nanos>(pick(120)) * kNanosPerSecond;
        break;
      default:
        now += static_cast<Nanos>(pick(3)) * 3600 * kNanosPerSecond;
        break;
    }
    const std::string where = "seed " + std::to_string(seed) + " step " + std::to_string(step);
    if (pick(8) == 0) {
      const LimitSpec& s = specs[pick(specs.size())];
      const std::string key = s.name + ":" + keys[pick(keys.size())];
      const std::int64_t cap = s.rate + s.burst;
      const std::int64_t delta =
          static_cast<std::int64_t>(rng() % static_cast<std::uint64_t>(2 * cap + 1)) - cap;
      mem.adjust(key, s, delta, now);
      run(ioc, redis->adjust_async(key, s, delta, now));
      continue;
    }
    std::vector<LimitSpec> batch_specs;
    const std::size_t n = 1 + pick(3);
    for (std::size_t i = 0; i < n; ++i) {
      LimitSpec s = specs[pick(specs.size())];
      if (pick(5) == 0) s.mode = Mode::kShadow;
      batch_specs.push_back(s);
    }
    std::vector<std::string> batch_keys;
    std::vector<LimitCheck> checks;
    for (std::size_t i = 0; i < n; ++i)
      batch_keys.push_back(batch_specs[i].name + ":" + keys[pick(keys.size())]);
    for (std::size_t i = 0; i < n; ++i) {
      const std::int64_t cap = batch_specs[i].rate + batch_specs[i].burst;
      std::int64_t cost = 1;
      switch (pick(4)) {
        case 0:
          cost = 1;
          break;
        case 1:
          cost = static_cast<std::int64_t>(rng() % static_cast<std::uint64_t>(cap / 3 + 1));
          break;
        case 2:
          cost = static_cast<std::int64_t>(rng() % static_cast<std::uint64_t>(cap + 3));
          break;
        default:
          cost = pick(10) == 0 ? std::numeric_limits<std::int64_t>::max() / 2 : 0;
          break;
      }
      checks.push_back(LimitCheck{batch_keys[i], &batch_specs[i], cost});
    }
    const BatchResult m = mem.check_and_consume(checks, now);
    const BatchResult r = run(ioc, redis->check_and_consume_async(checks, now));
    expect_same(m, r, where);
    if (::testing::Test::HasFatalFailure()) return;
    (m.allowed ? allowed : rejected) += 1;
  }
  EXPECT_EQ(redis->stats().failures, 0u);
  // The random walk must exercise both outcomes, or the comparison proves little.
  EXPECT_GT(allowed, steps / 10);
  EXPECT_GT(rejected, steps / 10);
}

TEST_F(RedisStoreTest, ScriptMatchesInMemoryAlgorithms) {
  for (std::uint32_t seed = 1; seed <= 3; ++seed) {
    parity_run(*this, ioc_, *server_, 1000 * kNanosPerSecond, seed, 700);
    if (HasFatalFailure()) return;
  }
}

TEST_F(RedisStoreTest, ScriptMatchesInMemoryAlgorithmsAtEpochTime) {
  // Wall-clock-sized times (~1.8e18 ns) overflow doubles by far; exercised on purpose.
  for (std::uint32_t seed = 11; seed <= 12; ++seed) {
    parity_run(*this, ioc_, *server_, 1'767'225'600LL * kNanosPerSecond, seed, 700);
    if (HasFatalFailure()) return;
  }
}

TEST_F(RedisStoreTest, AllOrNothing) {
  auto store = make_store(*server_);
  const LimitSpec a = spec("a", 5), b = spec("b", 1), c = spec("c", 5);
  const LimitCheck both[] = {{"a:k", &a, 1}, {"b:k", &b, 1}};
  BatchResult r = run(ioc_, store->check_and_consume_async(both, steady()));
  ASSERT_TRUE(r.allowed);
  EXPECT_EQ(r.results[0].decision.remaining, 4);
  EXPECT_EQ(r.results[1].decision.remaining, 0);

  r = run(ioc_, store->check_and_consume_async(both, steady()));
  EXPECT_FALSE(r.allowed);
  EXPECT_FALSE(r.unavailable);
  EXPECT_TRUE(r.results[0].decision.allowed);  // would pass, but nothing is charged
  EXPECT_FALSE(r.results[0].consumed);
  EXPECT_EQ(r.results[0].decision.remaining, 4);
  EXPECT_FALSE(r.results[1].decision.allowed);
  EXPECT_GT(r.results[1].decision.retry_after, 0);

  // A rejected batch creates no state for its other buckets.
  const LimitCheck fresh[] = {{"c:new", &c, 1}, {"b:k", &b, 1}};
  r = run(ioc_, store->check_and_consume_async(fresh, steady()));
  EXPECT_FALSE(r.allowed);
  EXPECT_EQ(server_->command({"EXISTS", "bw:rl:c:new"}), "0");
  EXPECT_EQ(server_->command({"EXISTS", "bw:rl:a:k"}), "1");
}

TEST_F(RedisStoreTest, KeysExpireWhenTheBucketIsFullAgain) {
  auto store = make_store(*server_);
  const LimitSpec g = spec("g", 10);                               // 100 ms per unit
  const LimitSpec t = spec("t", 10, 10, Algorithm::kTokenBucket);  // 5 units: 500 ms
  const LimitSpec w = spec("w", 10, 0, Algorithm::kSlidingWindow, Period::kMinute);  // 60..63 s
  const LimitCheck checks[] = {{"g:k", &g, 1}, {"t:k", &t, 5}, {"w:k", &w, 1}};
  const BatchResult r = run(ioc_, store->check_and_consume_async(checks, steady()));
  ASSERT_TRUE(r.allowed);
  EXPECT_EQ(r.results[0].decision.reset_after, 100 * kNanosPerMilli);
  EXPECT_EQ(r.results[1].decision.reset_after, 500 * kNanosPerMilli);
  const int pg = std::stoi(server_->command({"PTTL", "bw:rl:g:k"}));
  const int pt = std::stoi(server_->command({"PTTL", "bw:rl:t:k"}));
  const int pw = std::stoi(server_->command({"PTTL", "bw:rl:w:k"}));
  EXPECT_GT(pg, 0);
  EXPECT_LE(pg, 100);
  EXPECT_GT(pt, 400);
  EXPECT_LE(pt, 500);
  EXPECT_GT(pw, 55'000);
  EXPECT_LE(pw, 63'000);
  EXPECT_GE(r.results[2].decision.reset_after, 60 * kNanosPerSecond);
  EXPECT_LE(r.results[2].decision.reset_after, 63 * kNanosPerSecond);
}

TEST_F(RedisStoreTest, ReloadsTheScriptAfterScriptFlush) {
  auto store = make_store(*server_);
  const LimitSpec a = spec("a", 100, 0, Algorithm::kGcra, Period::kHour);
  const LimitCheck c[] = {{"a:k", &a, 1}};
  BatchResult r = run(ioc_, store->check_and_consume_async(c, steady()));
  ASSERT_TRUE(r.allowed);
  EXPECT_EQ(r.results[0].decision.remaining, 99);
  ASSERT_EQ(server_->command({"SCRIPT", "FLUSH"}), "OK");
  r = run(ioc_, store->check_and_consume_async(c, steady()));
  ASSERT_TRUE(r.allowed);
  EXPECT_EQ(r.results[0].decision.remaining, 98);
  EXPECT_EQ(store->stats().script_loads, 1u);
  EXPECT_EQ(store->stats().failures, 0u);
  r = run(ioc_, store->check_and_consume_async(c, steady()));  // cached again by the EVAL
  EXPECT_EQ(r.results[0].decision.remaining, 97);
  EXPECT_EQ(store->stats().script_loads, 1u);
}

LimiterConfig config_with(std::vector<LimitSpec> limits) {
  LimiterConfig c;
  c.limits = std::move(limits);
  return c;
}

RequestScope scope_for(std::string_view key) {
  RequestScope s;
  s.key_id = key;
  s.tenant_id = "tenant";
  s.client_ip = "10.0.0.1";
  s.endpoint = "/v1/chat/completions";
  s.model = "gpt-4o";
  return s;
}

std::unique_ptr<Limiter> replica(std::shared_ptr<RedisLimitStore> store,
                                 std::vector<LimitSpec> limits) {
  auto l = std::make_unique<Limiter>(std::make_shared<const LimiterConfig>(config_with(limits)),
                                     std::make_shared<MemoryLimitStore>());
  l->set_async_store(std::move(store));
  return l;
}

TEST_F(RedisStoreTest, TwoReplicasNeverAdmitMoreThanTheLimitTogether) {
  LimitSpec global = spec("global", 50, 0, Algorithm::kSlidingWindow, Period::kMinute);
  global.scope = Scope::kGlobal;
  LimitSpec per_key = spec("per-key", 10, 0, Algorithm::kGcra, Period::kHour);
  auto a = replica(make_store(*server_), {global});
  auto b = replica(make_store(*server_), {global});
  auto ka = replica(make_store(*server_), {per_key});
  auto kb = replica(make_store(*server_), {per_key});
  int admitted = 0, admitted_key = 0;
  for (int i = 0; i < 100; ++i) {
    Limiter& l = i % 2 == 0 ? *a : *b;
    if (run(ioc_, l.check_async(scope_for("key-1"), 0, steady())).allowed) ++admitted;
    Limiter& k = i % 3 == 0 ? *ka : *kb;
    if (run(ioc_, k.check_async(scope_for("key-1"), 0, steady())).allowed) ++admitted_key;
  }
  EXPECT_EQ(admitted, 50);
  EXPECT_EQ(admitted_key, 10);
  EXPECT_FALSE(a->degraded());
}

TEST_F(RedisStoreTest, ClockSkewOfOneReplicaGainsNoBurst) {
  const LimitSpec l = spec("skew", 10, 0, Algorithm::kGcra, Period::kHour);
  auto a = replica(make_store(*server_), {l});
  auto b = replica(make_store(*server_), {l});
  int admitted = 0;
  for (int i = 0; i < 10; ++i) {
    admitted += run(ioc_, a->check_async(scope_for("k"), 0, steady())).allowed ? 1 : 0;
  }
  EXPECT_EQ(admitted, 10);
  // Replica b's clock runs 5 s (or an hour) ahead: the script uses Redis TIME, so nothing refills.
  for (Nanos skew : {5 * kNanosPerSecond, 3600 * kNanosPerSecond}) {
    const Verdict v = run(ioc_, b->check_async(scope_for("k"), 0, steady() + skew));
    EXPECT_FALSE(v.allowed);
    EXPECT_GT(v.retry_after_ns, 300 * kNanosPerSecond);  // ~6 min until one unit refills
  }

  // Contrast: with the caller's clock, the skewed replica would indeed gain a burst.
  RedisLimitStoreOptions caller;
  caller.time_source = RedisTimeSource::kCaller;
  auto ca = replica(make_store(*server_, caller),
                    {spec("skew2", 10, 0, Algorithm::kGcra, Period::kHour)});
  auto cb = replica(make_store(*server_, caller),
                    {spec("skew2", 10, 0, Algorithm::kGcra, Period::kHour)});
  const Nanos now = steady();
  for (int i = 0; i < 10; ++i)
    ASSERT_TRUE(run(ioc_, ca->check_async(scope_for("k"), 0, now)).allowed);
  EXPECT_FALSE(run(ioc_, ca->check_async(scope_for("k"), 0, now)).allowed);
  EXPECT_TRUE(run(ioc_, cb->check_async(scope_for("k"), 0, now + 3600 * kNanosPerSecond)).allowed);
}

TEST_F(RedisStoreTest, SettleAsyncRefundsUnusedTokens) {
  const LimitSpec tpm = spec("tpm", 1000, 0, Algorithm::kGcra, Period::kHour, Unit::kTokens);
  auto l = replica(make_store(*server_), {tpm});
  Verdict v = run(ioc_, l->check_async(scope_for("k"), 600, steady()));
  ASSERT_TRUE(v.allowed);
  EXPECT_EQ(v.tokens.remaining, 400);
  run(ioc_, l->settle_async(v.reservation, 100, steady()));
  EXPECT_TRUE(v.reservation.settled);
  v = run(ioc_, l->check_async(scope_for("k"), 800, steady()));
  ASSERT_TRUE(v.allowed);  // 100 used + 800 <= 1000
  EXPECT_EQ(v.tokens.remaining, 100);
}

// Two worker threads, each with its own io_context, share one store: with a connection each
// (pool_size 0) and with a single connection that the second worker reaches by hopping executors.
TEST_F(RedisStoreTest, WorkersOnSeveralThreadsShareTheStore) {
  for (std::size_t pool : {std::size_t{0}, std::size_t{1}}) {
    constexpr int kThreads = 2, kCoroutines = 4, kCalls = 50;
    std::vector<std::unique_ptr<asio::io_context>> iocs;
    for (int i = 0; i < kThreads; ++i) iocs.push_back(std::make_unique<asio::io_context>());
    RedisLimitStoreOptions o;
    o.pool_size = pool;
    o.key_prefix = "mt" + std::to_string(pool) + ":";
    auto store = make_store(*server_, o);
    const LimitSpec l = spec("mt", 300, 0, Algorithm::kGcra, Period::kHour);
    std::atomic<int> admitted{0}, finished{0};
    auto worker = [&](int) -> asio::awaitable<void> {
      for (int i = 0; i < kCalls; ++i) {
        const LimitCheck c[] = {{"k", &l, 1}};
        const BatchResult r = co_await store->check_and_consume_async(c, steady());
        if (r.allowed) admitted.fetch_add(1);
      }
      if (finished.fetch_add(1) + 1 == kThreads * kCoroutines) {
        for (auto& ioc : iocs) ioc->stop();
      }
    };
    for (int t = 0; t < kThreads; ++t) {
      for (int c = 0; c < kCoroutines; ++c) asio::co_spawn(*iocs[t], worker(c), asio::detached);
    }
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t) threads.emplace_back([&, t] { iocs[t]->run(); });
    for (auto& th : threads) th.join();
    EXPECT_EQ(finished.load(), kThreads * kCoroutines);
    EXPECT_EQ(admitted.load(), 300) << "pool " << pool;
    EXPECT_EQ(store->stats().failures, 0u);
  }
}

// INFO commandstats: one EVALSHA per request and no other top-level command.
TEST_F(RedisStoreTest, OneEvalshaPerRequest) {
  std::vector<LimitSpec> limits = {spec("a", 1000, 0, Algorithm::kGcra, Period::kHour),
                                   spec("b", 1000, 0, Algorithm::kTokenBucket, Period::kHour),
                                   spec("c", 1000, 0, Algorithm::kSlidingWindow, Period::kHour)};
  auto l = replica(make_store(*server_), limits);
  ASSERT_TRUE(run(ioc_, l->check_async(scope_for("k"), 0, steady())).allowed);  // connect + load
  ASSERT_EQ(server_->command({"CONFIG", "RESETSTAT"}), "OK");
  for (int i = 0; i < 25; ++i) {
    ASSERT_TRUE(run(ioc_, l->check_async(scope_for("k"), 0, steady())).allowed);
  }
  const std::string info = server_->command({"INFO", "commandstats"});
  EXPECT_NE(info.find("cmdstat_evalsha:calls=25,"), std::string::npos) << info;
  for (const char* other : {"cmdstat_eval:", "cmdstat_script", "cmdstat_multi", "cmdstat_watch",
                            "cmdstat_ping", "cmdstat_select", "cmdstat_auth"}) {
    EXPECT_EQ(info.find(other), std::string::npos) << other << "\n" << info;
  }
}

// ---- failures: each test owns its server ----

RedisLimitStoreOptions failure_options() {
  RedisLimitStoreOptions o;
  o.timeout = 20 * kNanosPerMilli;
  o.breaker_failures = 3;
  o.breaker_cooldown = 100 * kNanosPerMilli;
  o.replicas = 2;
  o.failure_policy = RedisFailurePolicy::kFailOpenLocal;
  o.policy_overrides["strict"] = RedisFailurePolicy::kFailClosed;
  o.fail_closed_retry_after = 2 * kNanosPerSecond;
  return o;
}

std::shared_ptr<RedisLimitStore> make_failure_store(const RedisServer& server) {
  RedisLimitStoreOptions o = failure_options();
  o.url = server.url();
  auto s = RedisLimitStore::create(std::move(o));
  EXPECT_TRUE(s.ok());
  return *s;
}

TEST(RedisFailure, SigstopTimesOutWithinDeadlineAndAppliesPolicy) {
  RedisServer server;
  asio::io_context ioc;
  auto store = make_failure_store(server);
  const LimitSpec open = spec("open", 10, 0, Algorithm::kGcra, Period::kHour);
  const LimitSpec strict = spec("strict", 10, 0, Algorithm::kGcra, Period::kHour);
  const LimitCheck warm[] = {{"warm", &open, 1}};
  // Connect and load the script first (the deadline is 20 ms).
  bool warmed = false;
  for (int i = 0; i < 50 && !warmed; ++i) {
    warmed =
        run(ioc, store->check_and_consume_async(warm, steady())).results[0].decision.limit == 10;
  }
  ASSERT_TRUE(warmed);
  ASSERT_FALSE(store->degraded());

  server.pause();
  // A call ends at its 20 ms deadline; the margin is for a machine that stalls the test's thread
  // for hundreds of milliseconds. A call without its deadline would wait for Redis forever.
  const Nanos margin = 500 * kNanosPerMilli;
  const LimitCheck open_check[] = {{"open:k", &open, 1}};
  int admitted = 0;
  for (int i = 0; i < 8; ++i) {
    const Nanos t0 = steady();
    const BatchResult r = run(ioc, store->check_and_consume_async(open_check, t0));
    const Nanos took = steady() - t0;
    EXPECT_LE(took, 20 * kNanosPerMilli + margin) << "call " << i;
    EXPECT_FALSE(r.unavailable);
    EXPECT_EQ(r.results[0].decision.limit, 5);  // 10 / replicas, judged locally
    if (r.allowed) ++admitted;
  }
  EXPECT_EQ(admitted, 5);
  EXPECT_TRUE(store->degraded());  // 3 timeouts opened the breaker

  const LimitCheck strict_check[] = {{"strict:k", &strict, 1}, {"open:k2", &open, 1}};
  const Nanos t0 = steady();
  const BatchResult r = run(ioc, store->check_and_consume_async(strict_check, t0));
  EXPECT_LE(steady() - t0, 5 * kNanosPerMilli + margin);  // breaker open: no waiting at all
  EXPECT_FALSE(r.allowed);
  EXPECT_TRUE(r.unavailable);
  EXPECT_EQ(r.retry_after, 2 * kNanosPerSecond);
  EXPECT_FALSE(r.results[0].decision.allowed);
  EXPECT_EQ(r.results[0].decision.retry_after, 2 * kNanosPerSecond);

  // Through the Limiter: a fail-closed limit turns into an "unavailable" verdict (503).
  auto limiter = replica(store, {strict});
  const Verdict v = run(ioc, limiter->check_async(scope_for("k"), 0, steady()));
  EXPECT_FALSE(v.allowed);
  EXPECT_TRUE(v.unavailable);
  EXPECT_EQ(v.limit_name, "strict");
  EXPECT_EQ(v.retry_after_ns, 2 * kNanosPerSecond);
  EXPECT_TRUE(limiter->degraded());

  server.resume();
  bool recovered = false;
  const Nanos until = steady() + 10 * kNanosPerSecond;
  while (!recovered && steady() < until) {
    const BatchResult x = run(ioc, store->check_and_consume_async(strict_check, steady()));
    recovered = x.allowed && !store->degraded();
    if (!recovered) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_TRUE(recovered);
}

TEST(RedisFailure, KilledAndRestartedServerResumesServing) {
  RedisServer server;
  asio::io_context ioc;
  auto store = make_failure_store(server);
  const LimitSpec strict = spec("strict", 100, 0, Algorithm::kGcra, Period::kHour);
  const LimitCheck c[] = {{"k", &strict, 1}};
  bool ok = false;
  for (int i = 0; i < 50 && !ok; ++i)
    ok = run(ioc, store->check_and_consume_async(c, steady())).allowed;
  ASSERT_TRUE(ok);

  server.stop();
  for (int i = 0; i < 5; ++i) {
    const Nanos t0 = steady();
    const BatchResult r = run(ioc, store->check_and_consume_async(c, t0));
    EXPECT_LE(steady() - t0, 80 * kNanosPerMilli);
    EXPECT_FALSE(r.allowed);
    EXPECT_TRUE(r.unavailable);
  }
  EXPECT_TRUE(store->degraded());

  server.start();  // same port, empty data, empty script cache
  bool recovered = false;
  const Nanos until = steady() + 10 * kNanosPerSecond;
  while (!recovered && steady() < until) {
    const BatchResult r = run(ioc, store->check_and_consume_async(c, steady()));
    recovered = r.allowed && !store->degraded();
    if (!recovered) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  ASSERT_TRUE(recovered);
  const BatchResult r = run(ioc, store->check_and_consume_async(c, steady()));
  EXPECT_TRUE(r.allowed);
  EXPECT_EQ(r.results[0].decision.remaining, 98);  // state lives in the new server
}

// A reservation made while Redis is down is settled against the same local share (rate and burst
// divided by replicas) that admitted it.
TEST(RedisFailure, SettleWhileDownRefundsTheLocalShare) {
  RedisServer server;
  asio::io_context ioc;
  auto store = make_failure_store(server);  // fail open locally, replicas = 2
  server.stop();
  const LimitSpec tpm = spec("tpm", 2000, 0, Algorithm::kGcra, Period::kHour, Unit::kTokens);
  auto limiter = replica(store, {tpm});
  const Nanos now = steady();
  Verdict v = run(ioc, limiter->check_async(scope_for("k"), 600, now));
  ASSERT_TRUE(v.allowed);
  EXPECT_EQ(v.tokens.limit, 1000);
  EXPECT_EQ(v.tokens.remaining, 400);
  ASSERT_EQ(v.reservation.token_limits.size(), 1u);
  run(ioc, limiter->settle_async(v.reservation, 100, now));  // 500 come back, locally
  EXPECT_TRUE(v.reservation.settled);
  v = run(ioc, limiter->check_async(scope_for("k"), 800, now));
  ASSERT_TRUE(v.allowed);  // 100 used + 800 <= 1000
  EXPECT_EQ(v.tokens.remaining, 100);
  EXPECT_GE(store->stats().fallbacks, 3u);
}

}  // namespace
}  // namespace bw::limits
