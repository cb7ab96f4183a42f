// Reconciling the open ledger rows a crash left behind, through real processes: `bellwether serve`
// with a SQLite ledger in front of `bellwether sim`, killed with SIGKILL while requests are in
// flight and restarted on the same ledger; an operator then lists the held rows
// (GET /admin/reservations) and settles or releases them (POST .../reconcile).
#include <gtest/gtest.h>
#include <signal.h>

#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <thread>
#include <vector>

#include "harness.h"
#include "support/eventually.h"

namespace bw::test {
namespace {

using bw::testing::eventually;
using Headers = std::vector<std::pair<std::string, std::string>>;

constexpr const char* kAdmin = "admin-key-reconcile-0123456789ab";
constexpr const char* kChat = "/v1/chat/completions";

std::int64_t micros(double usd) {
  return std::llround(usd * 1e6);
}

HttpResponse admin(int port, const std::string& method, const std::string& path,
                   const std::string& body = {}) {
  return admin_request(port, kAdmin, method, path, body);
}

// The text between `open` and the next `close` in `s` (empty when absent).
std::string str_between(const std::string& s, const std::string& open, const std::string& close) {
  auto at = s.find(open);
  if (at == std::string::npos) return {};
  at += open.size();
  return s.substr(at, s.find(close, at) - at);
}

std::int64_t sqlite_int(const std::string& db, const std::string& sql) {
  return std::atoll(sqlite(db, sql).c_str());
}

std::string budget_row(int port, const std::string& id) {
  return budget_entry(port, kAdmin, id);
}

// "slow" answers after 10 s: a request to it is reserved (durably) long before it ends.
std::string sim_yaml() {
  return R"(sim:
  workers: 2
  models:
    slow: {ttft: {median_ms: 10000}, itl: {median_ms: 1}, completion_tokens: 10}
    quick: {ttft: {median_ms: 2}, itl: {median_ms: 1}, completion_tokens: 10}
)";
}

std::string gateway_yaml(int sim_port, const std::string& dir, bool leases) {
  return R"(workers: 2
admin:
  key: )" +
         std::string(kAdmin) +
         R"(
providers:
  sim:
    base_url: http://127.0.0.1:)" +
         std::to_string(sim_port) + R"(/v1
plans:
  bulk:
    limits: [{name: rps, rate: 1000000, period: second, burst: 1000000}]
model_groups:
  slow:
    deployments: [{provider: sim, model: slow}]
  quick:
    deployments: [{provider: sim, model: quick}]
pricing:
  slow: {input: 15, output: 100}
  quick: {input: 1, output: 2}
ledger: {path: )" +
         dir + R"(/ledger.db}
budgets:
  lease: {enabled: )" +
         (leases ? "true" : "false") + R"(}
keys:
  - {name: ops, key: sk-reconcile-0001, plan: bulk, budget: {cap_usd: 100.00, period: total}}
)";
}

// Sends `n` requests to the slow model (ids "held-<i>"), waits until the ledger holds all their
// reservations, and kills the gateway with SIGKILL while they wait for their answers.
void crash_with_open_reservations(Gw& gw, const std::string& db, int n) {
  std::vector<std::thread> threads;
  for (int i = 0; i < n; ++i) {
    threads.emplace_back([&, i] {
      (void)request(gw.port, "POST", kChat, chat_body("slow", false, 10),
                    {{"Content-Type", "application/json"},
                     {"Authorization", "Bearer sk-reconcile-0001"},
                     {"X-Request-Id", "held-" + std::to_string(i)}},
                    std::chrono::seconds(15));
    });
  }
  const bool all_open = eventually(
      [&] { return sqlite_int(db, "SELECT COUNT(*) FROM ledger WHERE status='open'") == n; },
      std::chrono::seconds(10));
  gw.proc.signal(SIGKILL);
  EXPECT_EQ(gw.proc.wait(), 128 + SIGKILL);
  for (auto& t : threads) t.join();
  ASSERT_TRUE(all_open) << "the reservations were not all in the ledger before the kill";
}

TEST(CostGuard, RecoveredReservationsAreListedAndReconciledThroughTheAdminApi) {
  const std::string dir = temp_dir();
  const std::string db = dir + "/ledger.db";
  auto sim = start_sim(sim_yaml());
  const std::string yaml = gateway_yaml(sim.port, dir, /*leases=*/false);
  constexpr int kHeld = 4;
  {
    auto gw = start_gateway(yaml);
    crash_with_open_reservations(gw, db, kHeld);
  }
  const auto open_sum =
      sqlite_int(db, "SELECT SUM(reserved_micro) FROM ledger WHERE status='open'");
  const auto held0 = sqlite_int(db, "SELECT reserved_micro FROM ledger WHERE request_id='held-0'");
  const auto held1 = sqlite_int(db, "SELECT reserved_micro FROM ledger WHERE request_id='held-1'");
  ASSERT_GT(held0, 0);
  ASSERT_GT(held1, 0);

  auto gw = start_gateway(yaml);
  // The list: every open row, held in the budget at its reserved amount.
  auto list = admin(gw.port, "GET", "/admin/reservations");
  ASSERT_EQ(list.status, 200) << list.body;
  std::printf("[ reconcile ] after restart: %s\n", list.body.c_str());
  EXPECT_EQ(count(list.body, "\"request_id\":\"held-"), static_cast<std::size_t>(kHeld));
  auto row0 = object_with(list.body, "\"request_id\":\"held-0\"");
  ASSERT_FALSE(row0.empty());
  EXPECT_NE(row0.find("\"model\":\"slow\""), std::string::npos) << row0;
  EXPECT_NE(row0.find("\"lease\":false"), std::string::npos) << row0;
  EXPECT_NE(row0.find("\"status\":\"open\""), std::string::npos) << row0;
  EXPECT_EQ(micros(num(row0, "reserved_usd")), held0);
  EXPECT_EQ(static_cast<std::int64_t>(num(row0, "created_unix_ms")),
            sqlite_int(db, "SELECT created_unix_ms FROM ledger WHERE request_id='held-0'"));
  EXPECT_NE(row0.find("\"created\":\"20"), std::string::npos) << row0;
  EXPECT_NE(list.body.find("\"budgets\":[\"key:ops/total\"],\"budgets_source\":\"ledger\""),
            std::string::npos)
      << list.body;
  auto b = budget_row(gw.port, "key:ops/total");
  ASSERT_FALSE(b.empty());
  EXPECT_EQ(micros(num(b, "reserved_usd")), open_sum);
  EXPECT_EQ(micros(num(b, "spent_usd")), 0);

  // The admin key is needed.
  EXPECT_EQ(request(gw.port, "GET", "/admin/reservations").status, 401);
  EXPECT_EQ(request(gw.port, "POST", "/admin/reservations/held-0/reconcile", "{\"release\":true}",
                    {{"Content-Type", "application/json"}})
                .status,
            401);

  // Bad bodies: 400 in the admin error shape, and the row stays held.
  for (const std::string bad :
       {"", "nope", "[1]", "{}", "{\"actual_usd\":-1}", "{\"actual_usd\":\"0.5\"}",
        "{\"actual_usd\":NaN}", "{\"actual_usd\":1e999}", "{\"actual_usd\":null}",
        "{\"release\":false}", "{\"release\":\"yes\"}", "{\"actual_usd\":0.1,\"release\":true}",
        "{\"amount\":1}"}) {
    auto r = admin(gw.port, "POST", "/admin/reservations/held-2/reconcile", bad);
    EXPECT_EQ(r.status, 400) << bad << " -> " << r.body;
    EXPECT_NE(r.body.find("\"error\""), std::string::npos) << r.body;
    EXPECT_NE(r.body.find("invalid_reconcile"), std::string::npos) << bad << " -> " << r.body;
  }
  EXPECT_EQ(sqlite(db, "SELECT status FROM ledger WHERE request_id='held-2'"), "open");

  // Release one: its reservation leaves the budget, nothing is spent.
  auto rel = admin(gw.port, "POST", "/admin/reservations/held-0/reconcile", "{\"release\":true}");
  ASSERT_EQ(rel.status, 200) << rel.body;
  EXPECT_NE(rel.body.find("\"status\":\"released\""), std::string::npos) << rel.body;
  EXPECT_EQ(sqlite(db,
                   "SELECT status || ' ' || actual_micro FROM ledger WHERE "
                   "request_id='held-0'"),
            "released 0");
  b = budget_row(gw.port, "key:ops/total");
  EXPECT_EQ(micros(num(b, "reserved_usd")), open_sum - held0);
  EXPECT_EQ(micros(num(b, "spent_usd")), 0);

  // Settle another at what the provider billed.
  auto set =
      admin(gw.port, "POST", "/admin/reservations/held-1/reconcile", "{\"actual_usd\": 0.0042}");
  ASSERT_EQ(set.status, 200) << set.body;
  EXPECT_NE(set.body.find("\"status\":\"settled\""), std::string::npos) << set.body;
  EXPECT_EQ(micros(num(set.body, "actual_usd")), 4200);
  EXPECT_EQ(sqlite(db,
                   "SELECT status || ' ' || actual_micro FROM ledger WHERE "
                   "request_id='held-1'"),
            "settled 4200");
  b = budget_row(gw.port, "key:ops/total");
  std::printf("[ reconcile ] budget after release + settle: %s\n", b.c_str());
  EXPECT_EQ(micros(num(b, "reserved_usd")), open_sum - held0 - held1);
  EXPECT_EQ(micros(num(b, "spent_usd")), 4200);
  auto spend = admin(gw.port, "GET", "/admin/spend");
  ASSERT_EQ(spend.status, 200);
  auto ops = object_with(spend.body, "\"group\":\"ops\"");
  EXPECT_EQ(micros(num(ops, "spend_usd")), 4200) << spend.body;

  // Closed rows are no longer held: a second reconcile and an unknown id are 404.
  auto again = admin(gw.port, "POST", "/admin/reservations/held-0/reconcile", "{\"release\":true}");
  EXPECT_EQ(again.status, 404) << again.body;
  EXPECT_NE(again.body.find("not_found"), std::string::npos) << again.body;
  EXPECT_EQ(
      admin(gw.port, "POST", "/admin/reservations/held-1/reconcile", "{\"actual_usd\":1}").status,
      404);
  EXPECT_EQ(
      admin(gw.port, "POST", "/admin/reservations/nobody/reconcile", "{\"release\":true}").status,
      404);
  list = admin(gw.port, "GET", "/admin/reservations");
  EXPECT_EQ(count(list.body, "\"request_id\":\"held-"), static_cast<std::size_t>(kHeld - 2));
  EXPECT_EQ(list.body.find("held-0"), std::string::npos);
  EXPECT_EQ(list.body.find("held-1"), std::string::npos);

  // A restart recovers the same: the closed rows stay closed, the rest are held again.
  gw.proc.signal(SIGKILL);
  gw.proc.wait();
  gw = start_gateway(yaml);
  list = admin(gw.port, "GET", "/admin/reservations");
  EXPECT_EQ(count(list.body, "\"request_id\":\"held-"), static_cast<std::size_t>(kHeld - 2));
  b = budget_row(gw.port, "key:ops/total");
  EXPECT_EQ(micros(num(b, "reserved_usd")), open_sum - held0 - held1);
  EXPECT_EQ(micros(num(b, "spent_usd")), 4200);
}

// With budget leases, a crash leaves the open lease row (a slice of the budget, taken by requests
// that found another of their set in flight) held: it is listed as a lease and released like a
// reservation.
TEST(CostGuard, RecoveredLeaseRowsAreReleasedThroughTheAdminApi) {
  const std::string dir = temp_dir();
  const std::string db = dir + "/ledger.db";
  auto sim = start_sim(sim_yaml());
  const std::string yaml = gateway_yaml(sim.port, dir, /*leases=*/true);
  {
    auto gw = start_gateway(yaml);
    std::vector<std::thread> threads;
    for (int i = 0; i < 4; ++i) {
      threads.emplace_back([&, i] {
        (void)request(gw.port, "POST", kChat, chat_body("slow", false, 10),
                      {{"Content-Type", "application/json"},
                       {"Authorization", "Bearer sk-reconcile-0001"},
                       {"X-Request-Id", "leased-" + std::to_string(i)}},
                      std::chrono::seconds(15));
      });
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    const bool lease_open = eventually(
        [&] {
          return sqlite_int(db, "SELECT COUNT(*) FROM ledger WHERE lease=1 AND status='open'") > 0;
        },
        std::chrono::seconds(8));
    gw.proc.signal(SIGKILL);
    EXPECT_EQ(gw.proc.wait(), 128 + SIGKILL);
    for (auto& t : threads) t.join();
    ASSERT_TRUE(lease_open) << "no lease row was open at the kill";
  }
  // A lease row can carry spend of its own: a covered request whose X-Request-Id was already in
  // the ledger is folded into it. That spend must survive a release of the lease row.
  const auto leases = sqlite_int(db, "SELECT COUNT(*) FROM ledger WHERE lease=1 AND status='open'");
  (void)sqlite(db, "UPDATE ledger SET actual_micro = 5000 WHERE lease=1 AND status='open'");
  const auto open_sum =
      sqlite_int(db, "SELECT SUM(reserved_micro) FROM ledger WHERE status='open'");
  const auto open_rows = sqlite_int(db, "SELECT COUNT(*) FROM ledger WHERE status='open'");
  auto gw = start_gateway(yaml);
  auto list = admin(gw.port, "GET", "/admin/reservations");
  ASSERT_EQ(list.status, 200) << list.body;
  std::printf("[ reconcile ] leases after restart: %s\n", list.body.c_str());
  EXPECT_EQ(count(list.body, "\"request_id\""), static_cast<std::size_t>(open_rows));
  auto lease = object_with(list.body, "\"lease\":true");
  ASSERT_FALSE(lease.empty()) << list.body;
  auto b = budget_row(gw.port, "key:ops/total");
  EXPECT_EQ(micros(num(b, "reserved_usd")), open_sum);
  EXPECT_EQ(micros(num(b, "spent_usd")), 0);
  // Nothing was answered: release every held row, the lease first.
  std::vector<std::string> ids{str_between(lease, "\"request_id\":\"", "\"")};
  for (std::size_t at = 0; (at = list.body.find("\"request_id\":\"", at)) != std::string::npos;) {
    auto id = str_between(list.body.substr(at), "\"request_id\":\"", "\"");
    if (id != ids.front()) ids.push_back(id);
    at += 14;
  }
  for (const auto& id : ids) {
    auto rel =
        admin(gw.port, "POST", "/admin/reservations/" + id + "/reconcile", "{\"release\": true}");
    ASSERT_EQ(rel.status, 200) << id << ": " << rel.body;
    const bool is_lease =
        sqlite_int(db, "SELECT lease FROM ledger WHERE request_id='" + id + "'") == 1;
    EXPECT_EQ(sqlite(db, "SELECT status || ' ' || actual_micro FROM ledger WHERE request_id='" +
                             id + "'"),
              is_lease ? "settled 5000" : "released 0")
        << id;
  }
  b = budget_row(gw.port, "key:ops/total");
  EXPECT_EQ(micros(num(b, "reserved_usd")), 0) << b;
  EXPECT_EQ(micros(num(b, "spent_usd")), 5000 * leases) << b;
  EXPECT_EQ(count(admin(gw.port, "GET", "/admin/reservations").body, "\"request_id\""), 0u);
  EXPECT_EQ(sqlite_int(db, "SELECT COUNT(*) FROM ledger WHERE status='open'"), 0);
}

std::int64_t now_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// Amounts in the admin API are USD numbers that read back to the micro-dollar: a spend of
// $1,234.567891 printed with six significant digits ("1234.57") was off by $0.002109, enough to
// make an operator's reconciliation against the provider's invoice fail.
TEST(CostGuard, AdminAmountsReadBackToTheMicroDollar) {
  const std::string dir = temp_dir();
  const std::string db = dir + "/ledger.db";
  auto sim = start_sim(sim_yaml());
  std::string yaml = gateway_yaml(sim.port, dir, /*leases=*/false);
  const std::string cap = "cap_usd: 100.00";
  yaml.replace(yaml.find(cap), cap.size(), "cap_usd: 10000.123456");
  {
    auto gw = start_gateway(yaml);  // creates the ledger
  }
  const std::string now = std::to_string(now_ms());
  const std::string cols =
      "INSERT INTO ledger (request_id, key_id, tenant_id, model, budgets, reserved_micro, "
      "actual_micro, status, created_unix_ms) VALUES ";
  ASSERT_EQ(sqlite(db, cols + "('spent-1', 'ops', '', 'slow', 'key:ops/total', 1300000000, " +
                           "1234567891, 'settled', " + now + ");" + cols +
                           "('held-1', 'ops', '', 'slow', 'key:ops/total', 987654321, 0, 'open', " +
                           now + ");"),
            "");
  auto gw = start_gateway(yaml);
  auto b = budget_row(gw.port, "key:ops/total");
  std::printf("[ reconcile ] amounts: %s\n", b.c_str());
  EXPECT_NE(b.find("\"cap_usd\":10000.123456"), std::string::npos) << b;
  EXPECT_NE(b.find("\"spent_usd\":1234.567891"), std::string::npos) << b;
  EXPECT_NE(b.find("\"reserved_usd\":987.654321"), std::string::npos) << b;
  auto spend = admin(gw.port, "GET", "/admin/spend?group=key&from=0");
  auto ops = object_with(spend.body, "\"group\":\"ops\"");
  EXPECT_NE(ops.find("\"spend_usd\":1234.567891"), std::string::npos) << spend.body;
  EXPECT_NE(ops.find("\"open_reserved_usd\":987.654321"), std::string::npos) << spend.body;
  auto list = admin(gw.port, "GET", "/admin/reservations");
  EXPECT_EQ(count(list.body, "987.654321"), 2u) << list.body;  // the row and the total
  auto keys = admin(gw.port, "GET", "/admin/keys");
  EXPECT_NE(keys.body.find("\"cap_usd\":10000.123456"), std::string::npos) << keys.body;
  auto set = admin(gw.port, "POST", "/admin/reservations/held-1/reconcile",
                   "{\"actual_usd\": 765.432109}");
  ASSERT_EQ(set.status, 200) << set.body;
  EXPECT_NE(set.body.find("\"actual_usd\":765.432109"), std::string::npos) << set.body;
  b = budget_row(gw.port, "key:ops/total");
  // 1234.567891 + 765.432109
  EXPECT_NE(b.find("\"spent_usd\":2000,\"reserved_usd\":0,"), std::string::npos) << b;
}

// Rows written before the ledger recorded a row's budgets (schema v1; the column came with v2)
// are held at restart against the budgets of their key and tenant and the global ones, which is
// what recovery attributes them to. /admin/reservations names those budgets, says they were
// inferred, and says so when nothing configured matches ("budgets": null), instead of an empty
// list that reads as "held against nothing" for every such row.
TEST(CostGuard, RecoveredRowsFromBeforeTheBudgetsColumnNameWhereTheyAreHeld) {
  const std::string dir = temp_dir();
  const std::string db = dir + "/ledger.db";
  const std::string now = std::to_string(now_ms());
  // A ledger as the first schema wrote it.
  ASSERT_EQ(sqlite(db,
                   "CREATE TABLE ledger (request_id TEXT PRIMARY KEY, key_id TEXT NOT NULL,"
                   " tenant_id TEXT NOT NULL, model TEXT NOT NULL, reserved_micro INTEGER NOT NULL,"
                   " actual_micro INTEGER NOT NULL DEFAULT 0,"
                   " prompt_tokens INTEGER NOT NULL DEFAULT 0,"
                   " completion_tokens INTEGER NOT NULL DEFAULT 0,"
                   " status TEXT NOT NULL CHECK (status IN ('open','settled','released')),"
                   " created_unix_ms INTEGER NOT NULL,"
                   " settled_unix_ms INTEGER NOT NULL DEFAULT 0) WITHOUT ROWID;"
                   "PRAGMA user_version = 1;"
                   "INSERT INTO ledger (request_id, key_id, tenant_id, model, reserved_micro,"
                   " status, created_unix_ms) VALUES"
                   " ('old-ops', 'ops', 'acme', 'slow', 250000, 'open', " +
                       now +
                       "),"
                       " ('old-gone', 'retired-key', 'gone-tenant', 'slow', 40000, 'open', " +
                       now + ");"),
            "");
  auto sim = start_sim(sim_yaml());
  std::string yaml = gateway_yaml(sim.port, dir, /*leases=*/false);
  const std::string key = "{name: ops, key: sk-reconcile-0001,";
  yaml.replace(yaml.find(key), key.size(), "{name: ops, key: sk-reconcile-0001, tenant: acme,");
  yaml += "tenants:\n  acme: {budget: {cap_usd: 50, period: monthly}}\n";
  auto gw = start_gateway(yaml);
  EXPECT_EQ(sqlite(db, "PRAGMA user_version"), "5");  // migrated at open

  auto list = admin(gw.port, "GET", "/admin/reservations");
  ASSERT_EQ(list.status, 200) << list.body;
  std::printf("[ reconcile ] rows from schema v1: %s\n", list.body.c_str());
  auto ops = object_with(list.body, "\"request_id\":\"old-ops\"");
  ASSERT_FALSE(ops.empty()) << list.body;
  EXPECT_NE(ops.find("\"budgets_source\":\"inferred\""), std::string::npos) << ops;
  EXPECT_NE(ops.find("\"key:ops/total\""), std::string::npos) << ops;
  EXPECT_NE(ops.find("\"tenant:acme/monthly\""), std::string::npos) << ops;
  EXPECT_EQ(ops.find("\"budgets\":[]"), std::string::npos) << ops;
  auto gone = object_with(list.body, "\"request_id\":\"old-gone\"");
  ASSERT_FALSE(gone.empty()) << list.body;
  EXPECT_NE(gone.find("\"budgets\":null,\"budgets_source\":\"unknown\""), std::string::npos)
      << gone;
  // Held where the list says.
  EXPECT_EQ(micros(num(budget_row(gw.port, "key:ops/total"), "reserved_usd")), 250000);
  EXPECT_EQ(micros(num(budget_row(gw.port, "tenant:acme/monthly"), "reserved_usd")), 250000);

  // Reconciling moves exactly those budgets; the unknown one closes its row and moves none.
  auto set =
      admin(gw.port, "POST", "/admin/reservations/old-ops/reconcile", "{\"actual_usd\": 0.2}");
  ASSERT_EQ(set.status, 200) << set.body;
  EXPECT_NE(set.body.find("\"budgets_source\":\"inferred\""), std::string::npos) << set.body;
  EXPECT_NE(set.body.find("\"tenant:acme/monthly\""), std::string::npos) << set.body;
  for (const char* id : {"key:ops/total", "tenant:acme/monthly"}) {
    auto b = budget_row(gw.port, id);
    EXPECT_EQ(micros(num(b, "reserved_usd")), 0) << b;
    EXPECT_EQ(micros(num(b, "spent_usd")), 200000) << b;
  }
  auto rel =
      admin(gw.port, "POST", "/admin/reservations/old-gone/reconcile", "{\"release\": true}");
  ASSERT_EQ(rel.status, 200) << rel.body;
  EXPECT_EQ(sqlite(db, "SELECT status FROM ledger WHERE request_id='old-gone'"), "released");
  EXPECT_EQ(count(admin(gw.port, "GET", "/admin/reservations").body, "\"request_id\""), 0u);
}

}  // namespace
}  // namespace bw::test
