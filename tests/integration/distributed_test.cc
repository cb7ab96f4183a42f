// Distributed mode through real processes: one redis-server (free port, no persistence), one
// PostgreSQL 15 cluster (initdb into a temp dir as the postgres user, one database per test),
// three `bellwether serve` replicas sharing both, and a zero-latency `bellwether sim`.
// The simulator bills prompt = ceil(chars/4) + 4*messages + 3 and completion = max_tokens; the
// gateway reserves ceil(chars/3) + 4*messages + 3 prompt tokens, so every micro-dollar is exact.
#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <optional>
#include <thread>

#include "harness.h"
#include "store/pg_cluster.h"
#include "support/eventually.h"

namespace bw::test {
namespace {

using bw::testing::eventually;
using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

constexpr const char* kChat = "/v1/chat/completions";

std::string sh(const std::string& cmd) {
  return shell_output(cmd);
}

// --- PostgreSQL: one cluster for the file (store/pg_cluster.h), stopped at the end -------------

using store::testing::PgCluster;

// --- Redis -------------------------------------------------------------------------------------

struct Redis {
  Redis() : port(free_port()), dir(temp_dir()) { start(); }
  void start() {
    // emplace, not assignment: Process's move-assignment destroys its own strings first.
    proc.reset();
    proc.emplace(
        std::vector<std::string>{"/usr/bin/redis-server", "--port", std::to_string(port), "--bind",
                                 "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", dir},
        std::map<std::string, std::string>{}, std::string("redis-"));
    wait_for_port(port);
  }
  std::string cli(const std::string& args) const {
    return sh("redis-cli -p " + std::to_string(port) + " " + args + " 2>&1");
  }
  std::string url() const { return "redis://127.0.0.1:" + std::to_string(port); }
  int port;
  std::string dir;
  std::optional<Process> proc;
};

// --- the fleet ---------------------------------------------------------------------------------

std::string sim_yaml() {
  return "sim:\n  zero_latency: true\n  workers: 1\n";
}

struct Fleet {
  Redis redis;
  std::string db;  // database name
  std::string pg_url;
  Sim sim;
  std::vector<Gw> gws;
  std::string yaml;

  std::string sql(const std::string& q) { return PgCluster::get()->query(db, q); }
  // Micro-dollars settled in the ledger for one key.
  long long settled(const std::string& key) {
    return std::atoll(sql("SELECT COALESCE(SUM(actual_micro),0) FROM ledger WHERE key_id='" + key +
                          "' AND status='settled'")
                          .c_str());
  }
  long long open_rows() {
    return std::atoll(sql("SELECT COUNT(*) FROM ledger WHERE status='open'").c_str());
  }
  // The Redis counter of a total budget.
  long long redis_field(const std::string& budget, const std::string& f) {
    auto keys = redis.cli("--raw KEYS 'bw:bg:" + budget + "|*'");
    auto nl = keys.find('\n');
    if (nl != std::string::npos) keys = keys.substr(0, nl);
    if (keys.empty()) return -1;
    return std::atoll(redis.cli("--raw HGET '" + keys + "' " + f).c_str());
  }
};

// `redis_timeout`: 20 ms where a test times Redis failures; the budget-race tests use a longer
// one, since a sanitizer build with 200 requests in flight on two cores can take 20 ms to
// answer, and a timed-out call is judged on the local share (fail_open_local), where the
// shared cap is not what the test measures.
std::string fleet_yaml(const Fleet& f, const std::string& extra,
                       const std::string& redis_timeout = "20ms") {
  return R"(workers: 1
providers:
  sim:
    base_url: http://127.0.0.1:)" +
         std::to_string(f.sim.port) + R"(/v1
redis:
  url: )" +
         f.redis.url() +
         R"(
  timeout: )" +
         redis_timeout + R"(
  replicas: 3
  failure_policy: fail_open_local
ledger: {postgres: ")" +
         f.pg_url +
         R"("}
model_groups:
  metered:
    deployments: [{provider: sim, model: metered}]
pricing:
  metered: {input: 15, output: 100}
)" + extra;
}

std::unique_ptr<Fleet> start_fleet(const std::string& name, const std::string& extra,
                                   std::vector<std::vector<std::string>> args = {{}, {}, {}},
                                   const std::string& redis_timeout = "20ms") {
  auto* pg = PgCluster::get();
  if (!pg) return nullptr;
  auto f = std::make_unique<Fleet>();
  (void)name;
  f->db = pg->create_database();
  if (f->db.empty()) return nullptr;
  f->pg_url = pg->uri(f->db);
  f->sim = start_sim(sim_yaml());
  f->yaml = fleet_yaml(*f, extra, redis_timeout);
  for (auto& a : args) f->gws.push_back(start_gateway(f->yaml, {}, a));
  return f;
}

#define NEED_FLEET(f)                                                             \
  if (!(f))                                                                       \
  GTEST_SKIP() << "PostgreSQL 15 is not installed or could not start (needs the " \
                  "postgres user and /usr/lib/postgresql/15/bin)"

// 4000 characters, max_tokens 10: reserve 1341 x 15 + 10 x 100 = 21,115 micro-USD; the simulator
// bills 1007 prompt tokens: 16,105 micro-USD.
constexpr long long kReserve = 21'115;
constexpr long long kActual = 16'105;
const std::string kBigBody = chat_body("metered", false, 10, std::string(4000, 'x'));
const std::string kSmallBody = chat_body("metered", false, 1, "hi");

// --- 1. fleet accuracy ---------------------------------------------------------------------------

// Sends `per_second` requests per second, round-robin over the replicas, for `windows` seconds;
// returns the number admitted in each one-second window of send time.
std::vector<int> paced_run(Fleet& f, const std::string& key, int per_second, int windows) {
  // Each replica connects to Redis and loads the script on its first call; measure afterwards.
  for (const auto& g : f.gws) {
    EXPECT_TRUE(eventually([&] {
      return post_json(g.port, kChat, kSmallBody, "sk-dist-warm-0001").status == 200 &&
             request(g.port, "GET", "/readyz").body.find("\"ready\"") != std::string::npos;
    }));
  }
  std::vector<int> admitted(windows, 0);
  const auto start = Clock::now();
  const auto step = std::chrono::microseconds(1'000'000 / per_second);
  for (int i = 0; i < per_second * windows; ++i) {
    const auto at = start + i * step;
    std::this_thread::sleep_until(at);
    // The window of the real send time: a sender that falls behind must not fold two seconds
    // of admissions into one scheduled window.
    const auto sent = Clock::now();
    auto r = post_json(f.gws[i % f.gws.size()].port, kChat, kSmallBody, key);
    const int w = std::min<int>(
        windows - 1,
        static_cast<int>(std::chrono::duration_cast<milliseconds>(sent - start).count() / 1000));
    if (r.status == 200) ++admitted[w];
    EXPECT_TRUE(r.status == 200 || r.status == 429) << r.status << " " << r.body;
  }
  return admitted;
}

const char* kRateKey = R"(plans:
  ten:
    limits: [{name: rps, rate: 10, period: second, burst: 2}]
keys:
  - {name: fleet, key: sk-dist-fleet-0001, plan: ten}
  - {name: warm, key: sk-dist-warm-0001, plan: ten}
)";

// GCRA starts from a full bucket: the first window may admit capacity (rate + burst) plus what
// refills during it (rate); every later window at most rate + burst.
void check_windows(const std::vector<int>& admitted, const char* what) {
  int total = 0;
  std::string shown;
  for (std::size_t w = 0; w < admitted.size(); ++w) {
    total += admitted[w];
    shown += std::to_string(admitted[w]) + " ";
    EXPECT_LE(admitted[w], w == 0 ? 10 + 2 + 10 : 10 + 2) << what << ": window " << w;
    if (w > 0) {
      EXPECT_GE(admitted[w], 10) << what << ": window " << w << " below 98% of 10";
    }
  }
  std::printf("[ %s ] admitted per 1 s window (limit 10/s, burst 2, 30 req/s): %s\n", what,
              shown.c_str());
  // Without Redis three replicas would admit ~30 per window; with it the fleet admits the limit.
  const int n = static_cast<int>(admitted.size());
  EXPECT_GE(total - admitted[0], static_cast<int>(0.98 * 10 * (n - 1)));
  EXPECT_LE(total, 10 * n + 2 + 10);
}

TEST(Distributed, FleetHoldsAPerSecondLimitAcrossThreeReplicas) {
  auto f = start_fleet("fleet_accuracy", kRateKey);
  NEED_FLEET(f);
  check_windows(paced_run(*f, "sk-dist-fleet-0001", 30, 6), "fleet");
}

TEST(Distributed, ClockSkewOfOneReplicaDoesNotWidenTheLimit) {
  auto f = start_fleet("clock_skew", kRateKey,
                       {{}, {"--clock-offset-ms=-5000"}, {"--clock-offset-ms=5000"}});
  NEED_FLEET(f);
  check_windows(paced_run(*f, "sk-dist-fleet-0001", 30, 4), "skew +5s/-5s");
}

// --- 2. the budget race --------------------------------------------------------------------------

const char* kBudgetKeys = R"(plans:
  bulk:
    limits: [{name: rps, rate: 1000000, period: second, burst: 1000000}]
  strict:
    limits: [{name: strict-rps, rate: 1000000, period: second, on_redis_failure: fail_closed}]
  thirty:
    limits: [{name: rpm30, rate: 30, period: minute}]
keys:
  - {name: race, key: sk-dist-race-0001, plan: bulk, budget: {cap_usd: 1.00, period: total}}
  - {name: spender, key: sk-dist-spend-0001, plan: bulk, budget: {cap_usd: 0.30, period: total}}
  - {name: closed, key: sk-dist-closed-0001, plan: strict}
  - {name: open, key: sk-dist-open-0001, plan: thirty}
)";

struct Burst {
  int ok = 0, refused = 0, other = 0;
};

Burst burst(Fleet& f, const std::string& key, int n) {
  const auto out = at_once(
      n, [&](int i) { return post_json(f.gws[i % f.gws.size()].port, kChat, kBigBody, key); });
  Burst b;
  for (const auto& r : out) {
    if (r.status == 200) {
      ++b.ok;
    } else if (r.status == 429 && r.body.find("insufficient_quota") != std::string::npos) {
      ++b.refused;
    } else {
      ++b.other;
      ADD_FAILURE() << r.status << " " << r.body;
    }
  }
  return b;
}

TEST(Distributed, BudgetRaceOverThreeReplicasNeverSettlesAboveTheCap) {
  auto f = start_fleet("budget_race", kBudgetKeys, {{}, {}, {}}, "1s");
  NEED_FLEET(f);
  const Burst b = burst(*f, "sk-dist-race-0001", 200);
  std::printf("[ race ] 200 concurrent over 3 replicas: %d served, %d refused\n", b.ok, b.refused);
  ASSERT_TRUE(eventually([&] { return f->open_rows() == 0; }));
  const long long spent = f->settled("race");
  EXPECT_EQ(spent, b.ok * kActual);
  EXPECT_LE(spent, 1'000'000);
  EXPECT_GE(b.ok, 1'000'000 / kReserve);  // 47: the cap admits at least this many at once
  EXPECT_GT(b.refused, 0);
  // The shared counter agrees with the durable record to the micro-dollar.
  EXPECT_EQ(f->redis_field("key:race/total", "s"), spent);
  EXPECT_EQ(f->redis_field("key:race/total", "r"), 0);
}

// --- 3. FLUSHALL: rebuilt from PostgreSQL
// ---------------------------------------------------------

TEST(Distributed, FlushallRebuildsBudgetsFromTheLedgerAndTheCapHolds) {
  auto f = start_fleet("flushall", kBudgetKeys, {{}, {}, {}}, "1s");
  NEED_FLEET(f);
  const Burst first = burst(*f, "sk-dist-race-0001", 30);
  EXPECT_EQ(first.ok, 30);
  ASSERT_TRUE(eventually([&] { return f->open_rows() == 0; }));
  EXPECT_EQ(f->redis.cli("FLUSHALL"), "OK");
  EXPECT_EQ(f->redis_field("key:race/total", "s"), -1);
  // Rebuilt on first use: spent = the 30 settled requests.
  auto r = post_json(f->gws[1].port, kChat, kBigBody, "sk-dist-race-0001");
  EXPECT_EQ(r.status, 200) << r.body;
  ASSERT_TRUE(eventually([&] { return f->open_rows() == 0; }));
  EXPECT_EQ(f->redis_field("key:race/total", "s"), 31 * kActual);
  // A second FLUSHALL in the middle of a concurrent burst.
  std::thread flusher([&] {
    std::this_thread::sleep_for(milliseconds(15));
    f->redis.cli("FLUSHALL");
  });
  const Burst second = burst(*f, "sk-dist-race-0001", 120);
  flusher.join();
  ASSERT_TRUE(eventually([&] { return f->open_rows() == 0; }));
  const long long spent = f->settled("race");
  std::printf("[ flushall ] %d + 1 + %d served (%d refused); settled %lld of 1000000 micro-USD\n",
              first.ok, second.ok, second.refused, spent);
  EXPECT_LE(spent, 1'000'000);
  EXPECT_EQ(spent, (first.ok + 1 + second.ok) * kActual);
  EXPECT_GT(second.refused, 0);
}

// --- 4. Redis stopped and killed -----------------------------------------------------------------

struct Timed {
  HttpResponse r;
  long long ms;
};
Timed timed_post(int port, const std::string& body, const std::string& key) {
  const auto t0 = Clock::now();
  Timed t{post_json(port, kChat, body, key), 0};
  t.ms = std::chrono::duration_cast<milliseconds>(Clock::now() - t0).count();
  return t;
}

TEST(Distributed, StoppedAndKilledRedisFollowPoliciesAndResume) {
  auto f = start_fleet("outage", kBudgetKeys);
  NEED_FLEET(f);
  const int a = f->gws[0].port;
  // Redis sees the spender's first request: 16,105 of 300,000 committed.
  ASSERT_EQ(timed_post(a, kBigBody, "sk-dist-spend-0001").r.status, 200);
  ASSERT_EQ(timed_post(a, kSmallBody, "sk-dist-closed-0001").r.status, 200);

  f->redis.proc->signal(SIGSTOP);
  long long worst = 0;
  // fail_closed: 503 with Retry-After, within the 20 ms timeout (+ breaker) per call.
  for (int i = 0; i < 8; ++i) {
    auto t = timed_post(a, kSmallBody, "sk-dist-closed-0001");
    worst = std::max(worst, t.ms);
    EXPECT_EQ(t.r.status, 503) << t.r.body;
    EXPECT_EQ(t.r.header("retry-after"), "1");
  }
  // fail_open_local: 30/minute becomes 10/minute on this replica.
  int open_ok = 0;
  for (int i = 0; i < 20; ++i) {
    auto t = timed_post(a, kSmallBody, "sk-dist-open-0001");
    worst = std::max(worst, t.ms);
    if (t.r.status == 200) ++open_ok;
  }
  EXPECT_EQ(open_ok, 10);
  // Budget on the local share: (300,000 - 16,105) / 3 = 94,631; one request at a time settles
  // 16,105, so 5 fit (4 x 16,105 + 21,115 = 85,535) and the 6th does not.
  int spend_ok = 0;
  for (int i = 0; i < 8; ++i) {
    auto t = timed_post(a, kBigBody, "sk-dist-spend-0001");
    worst = std::max(worst, t.ms);
    if (t.r.status == 200) ++spend_ok;
    if (t.r.status != 200) {
      EXPECT_EQ(t.r.status, 429) << t.r.body;
    }
  }
  EXPECT_EQ(spend_ok, 5);
  auto ready = request(a, "GET", "/readyz");
  EXPECT_EQ(ready.status, 200);
  EXPECT_NE(ready.body.find("degraded"), std::string::npos) << ready.body;
  std::printf(
      "[ sigstop ] slowest request %lld ms; fail_open_local admitted %d of 20 (limit 30/min,"
      " 3 replicas); budget local share admitted %d\n",
      worst, open_ok, spend_ok);
  EXPECT_LT(worst, 300);

  // A partition that lasts: the calls stuck in Redis' socket buffer are older than stale_after
  // (1 s) when it wakes up, so their scripts change nothing.
  std::this_thread::sleep_for(milliseconds(1200));
  f->redis.proc->signal(SIGCONT);
  ASSERT_TRUE(eventually(
      [&] { return post_json(a, kChat, kSmallBody, "sk-dist-closed-0001").status == 200; }));
  // The next Redis reservation flushes the locally settled spend: Redis matches the ledger.
  ASSERT_TRUE(eventually([&] {
    return post_json(a, kChat, kSmallBody, "sk-dist-spend-0001").status == 200 &&
           f->open_rows() == 0 && f->redis_field("key:spender/total", "s") == f->settled("spender");
  })) << f->redis_field("key:spender/total", "s")
      << " vs " << f->settled("spender");
  ready = request(a, "GET", "/readyz");
  EXPECT_NE(ready.body.find("\"ready\""), std::string::npos) << ready.body;

  // Killed: refused connections fail fast; a restarted, empty Redis is rebuilt from PostgreSQL.
  f->redis.proc->signal(SIGKILL);
  f->redis.proc->wait();
  worst = 0;
  for (int i = 0; i < 6; ++i) {
    auto t = timed_post(f->gws[1].port, kSmallBody, "sk-dist-closed-0001");
    worst = std::max(worst, t.ms);
    EXPECT_EQ(t.r.status, 503);
  }
  EXPECT_LT(worst, 300);
  f->redis.start();
  ASSERT_TRUE(eventually([&] {
    return post_json(f->gws[1].port, kChat, kSmallBody, "sk-dist-closed-0001").status == 200;
  }));
  ASSERT_TRUE(eventually([&] {
    return post_json(f->gws[1].port, kChat, kSmallBody, "sk-dist-spend-0001").status == 200 &&
           f->open_rows() == 0;
  }));
  EXPECT_EQ(f->redis_field("key:spender/total", "s"), f->settled("spender"));
  EXPECT_LE(f->settled("spender"), 300'000);
}

// --- 5. PostgreSQL down --------------------------------------------------------------------------

// The ledger's database goes away: a key with a budget is refused (its spend could not be
// recorded), a key without one is served, and both recover by themselves when it is back.
TEST(Distributed, PostgresDownFailsClosedForBudgetsOpenForOthersAndRecovers) {
  auto f = start_fleet("pg_down", kBudgetKeys, {{}}, "1s");
  NEED_FLEET(f);
  const int a = f->gws[0].port;
  ASSERT_EQ(post_json(a, kChat, kBigBody, "sk-dist-race-0001").status, 200);
  ASSERT_TRUE(eventually([&] { return f->open_rows() == 0; }));
  const long long before = f->settled("race");

  PgCluster::get()->pause();
  int refused = 0, served = 0;
  for (int i = 0; i < 10; ++i) {
    auto r = post_json(a, kChat, kBigBody, "sk-dist-race-0001");
    if (r.status == 503) {
      ++refused;
      EXPECT_NE(r.body.find("ledger_unavailable"), std::string::npos) << r.body;
      EXPECT_FALSE(r.header("retry-after").empty());
    } else {
      ++served;
      EXPECT_EQ(r.status, 200) << r.body;
    }
  }
  std::printf("[ postgres down ] budgeted key: %d refused, %d served of 10\n", refused, served);
  // At most the request already in the ledger's queue when the connection broke may pass; every
  // later one is refused.
  EXPECT_GE(refused, 9);
  // A key without a budget does not need the ledger to be served.
  for (int i = 0; i < 3; ++i) {
    auto r = post_json(a, kChat, kSmallBody, "sk-dist-open-0001");
    EXPECT_EQ(r.status, 200) << r.body;
  }
  auto ready = request(a, "GET", "/healthz");
  EXPECT_EQ(ready.status, 200);

  ASSERT_TRUE(PgCluster::get()->resume());
  ASSERT_TRUE(
      eventually([&] { return post_json(a, kChat, kBigBody, "sk-dist-race-0001").status == 200; },
                 std::chrono::seconds(20)));
  ASSERT_TRUE(eventually([&] { return f->open_rows() == 0; }));
  // Every request that was served is in the ledger: no spend was lost while it was down.
  const long long after = f->settled("race");
  EXPECT_GE(after - before, (served + 1) * kActual) << before << " -> " << after;
  EXPECT_LE(after, 1'000'000);
}

// --- 6. budget leases only where they are supported ----------------------------------------------

// Budget leases are on by default, but only the in-process budgets with the SQLite ledger take
// them: with budgets in Redis, or with the PostgreSQL ledger, every request keeps its own
// reservation row. Each layout gets 24 requests at once against a 100 ms upstream (with leases,
// the second one would open a lease); none is covered, no lease row is written, and each request
// has its own row.
TEST(Distributed, BudgetLeasesAreIgnoredWithRedisBudgetsOrThePostgresLedger) {
  auto* pg = PgCluster::get();
  if (!pg) GTEST_SKIP() << "PostgreSQL 15 is not installed or could not start";
  Redis redis;
  auto sim =
      start_sim("sim:\n  workers: 1\n  defaults: {ttft: {median_ms: 100}, itl: {median_ms: 1}}\n");
  struct Layout {
    const char* name;
    bool redis_budgets;
    bool postgres;
  };
  int n = 0;
  for (const Layout& l : {Layout{"redis budgets, postgres ledger", true, true},
                          Layout{"in-process budgets, postgres ledger", false, true},
                          Layout{"redis budgets, sqlite ledger", true, false}}) {
    SCOPED_TRACE(l.name);
    const std::string name = "lease-" + std::to_string(++n);
    const std::string key = "sk-dist-lease-000" + std::to_string(n);
    const std::string db = l.postgres ? pg->create_database() : std::string();
    ASSERT_TRUE(!l.postgres || !db.empty());
    const std::string dir = temp_dir();
    std::string yaml =
        "workers: 1\nproviders:\n  sim: {base_url: \"http://127.0.0.1:" + std::to_string(sim.port) +
        "/v1\"}\n";
    if (l.redis_budgets) yaml += "redis: {url: \"" + redis.url() + "\", timeout: 1s}\n";
    yaml += l.postgres ? "ledger: {postgres: \"" + pg->uri(db) + "\"}\n"
                       : "ledger: {path: " + dir + "/ledger.db}\n";
    yaml += R"(model_groups:
  metered: {deployments: [{provider: sim, model: metered}]}
pricing:
  metered: {input: 15, output: 100}
plans:
  bulk: {limits: []}
keys:
  - {name: )" +
            name + ", key: " + key + ", plan: bulk, budget: {cap_usd: 100, period: total}}\n";
    auto gw = start_gateway(yaml);
    constexpr int kN = 24;
    const auto out = at_once(kN, [&](int) { return post_json(gw.port, kChat, kSmallBody, key); });
    for (const auto& r : out) EXPECT_EQ(r.status, 200) << r.body;
    const auto ledger = [&](const std::string& q) {
      return l.postgres ? pg->query(db, q)
                        : sh("sqlite3 -batch -noheader '" + dir + "/ledger.db' \"" + q + "\"");
    };
    ASSERT_TRUE(eventually(
        [&] { return ledger("SELECT COUNT(*) FROM ledger WHERE status = 'open'") == "0"; }));
    const auto text = request(gw.port, "GET", "/metrics").body;
    std::printf("[ leases ignored: %s ] %s rows, %s lease rows; leases opened %.0f\n", l.name,
                ledger("SELECT COUNT(*) FROM ledger").c_str(),
                ledger("SELECT COUNT(*) FROM ledger WHERE lease = 1").c_str(),
                metric(text, "bellwether_budget_leases_total{event=\"opened\"}"));
    EXPECT_EQ(metric(text, "bellwether_budget_leases_total{event=\"opened\"}"), 0.0);
    EXPECT_EQ(metric(text, "bellwether_budget_lease_covered_total"), 0.0);
    EXPECT_EQ(ledger("SELECT COUNT(*) FROM ledger WHERE lease = 1"), "0");
    EXPECT_EQ(ledger("SELECT COUNT(*) FROM ledger WHERE key_id = '" + name + "'"),
              std::to_string(kN));
  }
}

}  // namespace
}  // namespace bw::test
