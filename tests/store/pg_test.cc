// test-label: postgres
// PostgreSQL-only behaviour (the shared Ledger/KeyStore cases are in ledger_test.cc and
// key_store_test.cc and run against both backends).
#include <gtest/gtest.h>

#include <atomic>
#include <optional>

#include "backends.h"

namespace bw::store {
using namespace bw::cost;
namespace {

constexpr std::int64_t kJan1 = 1'767'225'600'000;
constexpr const char* kPassword = "Sup3r-S3cret-pw";

class PgTest : public testing::BackendTest<testing::PgBackend> {
 protected:
  testing::PgBackend& pg() { return static_cast<testing::PgBackend&>(backend()); }
  int port() const { return testing::PgCluster::get()->port(); }
  std::string port_str() const { return std::to_string(port()); }
};

LedgerReservation reservation(std::string id, Micros amount = 10) {
  return {std::move(id), "key_a", "acme", "gpt-4.1", {"global/monthly"}, amount, kJan1};
}

Result<Ok> append_sync(Ledger& l, LedgerReservation r) {
  std::optional<Result<Ok>> out;
  EXPECT_TRUE(l.append_reservation(std::move(r), [&](const Result<Ok>& res) { out = res; }));
  l.flush();
  return out.value_or(Result<Ok>(make_error(500, "", "", "no callback")));
}

TEST_F(PgTest, ErrorsNeverContainThePassword) {
  const std::string cases[] = {
      // Nothing listens on port 1.
      std::string("postgresql://bw:") + kPassword + "@127.0.0.1:1/ledger",
      std::string("host=127.0.0.1 port=1 user=bw dbname=ledger password=") + kPassword,
      // The server answers, but the database does not exist.
      std::string("postgresql://postgres:") + kPassword + "@127.0.0.1:" + port_str() +
          "/no_such_db",
      // Unparseable.
      std::string("postgresql://bw:") + kPassword + "@127.0.0.1:1/ledger?nonsense_option=1",
      std::string("host=127.0.0.1 password=") + kPassword + " 'unterminated",
  };
  for (const auto& conninfo : cases) {
    PgLedgerOptions o;
    o.db.conninfo = conninfo;
    o.db.connect_timeout_s = 2;
    auto l = PgLedger::open(o);
    ASSERT_FALSE(l.ok()) << conninfo;
    EXPECT_EQ(l.error().status, 503);
    EXPECT_EQ(l.error().message.find(kPassword), std::string::npos) << l.error().message;
    EXPECT_FALSE(l.error().message.empty());
    PgKeyStoreOptions k;
    k.db = o.db;
    auto s = PgKeyStore::open(k);
    ASSERT_FALSE(s.ok());
    EXPECT_EQ(s.error().message.find(kPassword), std::string::npos) << s.error().message;
  }
  EXPECT_EQ(describe_conninfo(cases[0]), "bw@127.0.0.1:1/ledger");
  EXPECT_EQ(describe_conninfo(cases[1]), "bw@127.0.0.1:1/ledger");
  EXPECT_EQ(describe_conninfo(cases[4]), "invalid connection string");
  // The missing database is named, so the operator can act on the message.
  PgConnectOptions o;
  o.conninfo = cases[2];
  auto c = PgConn::connect(o);
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.error().message.find("no_such_db"), std::string::npos) << c.error().message;
}

TEST_F(PgTest, KeyValueConnectionStringAndPasswordIgnoredByTrust) {
  const std::string db = pg().uri().substr(pg().uri().rfind('/') + 1);
  PgLedgerOptions o;
  o.db.conninfo = "host=127.0.0.1 port=" + port_str() + " user=postgres dbname=" + db;
  auto l = PgLedger::open(o);
  ASSERT_TRUE(l.ok()) << l.error().message;
  ASSERT_TRUE(append_sync(**l, reservation("kv")).ok());
  PgKeyStoreOptions k;
  k.db.conninfo =
      "postgresql://postgres:" + std::string(kPassword) + "@127.0.0.1:" + port_str() + "/" + db;
  auto s = PgKeyStore::open(k);
  ASSERT_TRUE(s.ok()) << s.error().message;
  EXPECT_TRUE((*s)->list()->empty());
}

TEST_F(PgTest, MigrationsRecordEveryVersionOnce) {
  auto l = pg().open_ledger();
  ASSERT_TRUE(l);
  auto k = pg().open_key_store();
  ASSERT_TRUE(k);
  EXPECT_EQ(*pg().query_int("SELECT COUNT(*) FROM schema_version"), kPgSchemaVersion);
  EXPECT_EQ(*pg().query_int("SELECT SUM(version) FROM schema_version"), 1 + 2 + 3 + 4);
  // The budgets column and both indexes exist.
  EXPECT_EQ(*pg().query_int("SELECT COUNT(*) FROM pg_indexes WHERE tablename = 'ledger'"
                            " AND indexname IN ('ledger_created', 'ledger_open')"),
            2);
  EXPECT_EQ(*pg().query_int("SELECT COUNT(*) FROM information_schema.columns"
                            " WHERE table_name = 'ledger' AND column_name = 'budgets'"),
            1);
  // Each step is idempotent by itself too: re-running v2..v3 on a migrated schema is harmless.
  ASSERT_TRUE(pg().exec("DELETE FROM schema_version WHERE version > 1").ok());
  ASSERT_TRUE(pg().migrate_to(kPgSchemaVersion).ok());
  EXPECT_EQ(*pg().schema_version(), kPgSchemaVersion);
}

TEST_F(PgTest, PoolIsBoundedAndReusesConnections) {
  auto l = pg().open_ledger();  // migrates
  ASSERT_TRUE(l);
  PgPool pool(pg().connect_options(), PgPoolOptions{2, /*acquire_timeout_ms=*/50});
  {
    auto a = pool.acquire();
    auto b = pool.acquire();
    ASSERT_TRUE(a.ok() && b.ok());
    EXPECT_EQ(pool.open_connections(), 2u);
    auto c = pool.acquire();
    ASSERT_FALSE(c.ok());
    EXPECT_EQ(c.error().status, 503);
    EXPECT_EQ(c.error().code, "ledger_unavailable");
  }
  auto again = pool.acquire();
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(pool.open_connections(), 2u);  // reused, not reopened
  auto r = (*again)->exec("SELECT 41 + 1");
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->int64(0, 0), 42);
}

// The server drops every connection (restart, failover, pg_terminate_backend): the writer and
// the read pool notice it before their next use and reconnect; nothing acked is lost.
TEST_F(PgTest, ReconnectsAfterTheServerDropsConnections) {
  auto ledger = pg().open_ledger();
  ASSERT_TRUE(ledger);
  ASSERT_TRUE(append_sync(*ledger, reservation("before")).ok());
  ASSERT_TRUE(ledger->find("before")->has_value());  // opens a pooled read connection
  auto killed = pg().query_int(
      "SELECT COUNT(*) FROM (SELECT pg_terminate_backend(pid, 10000) FROM pg_stat_activity"
      " WHERE datname = current_database() AND pid <> pg_backend_pid()) t");
  ASSERT_TRUE(killed.ok()) << killed.error().message;
  EXPECT_EQ(*killed, 2);  // the writer and the reader
  ASSERT_TRUE(append_sync(*ledger, reservation("after")).ok());
  auto row = ledger->find("after");
  ASSERT_TRUE(row.ok()) << row.error().message;
  ASSERT_TRUE(row->has_value());
  EXPECT_TRUE(ledger->find("before")->has_value());
  EXPECT_EQ(ledger->stats().records_failed, 0u);
}

// A value the server rejects aborts the pipelined transaction; the batch is replayed under
// savepoints so that only that record fails.
TEST_F(PgTest, AServerErrorFailsOnlyItsRecord) {
  auto ledger = pg().open_ledger();
  ASSERT_TRUE(ledger);
  std::atomic<int> ok{0};
  std::optional<Result<Ok>> bad, nul;
  // Hold the batch together: queue everything before the writer can take the first record.
  for (int i = 0; i < 20; ++i) {
    if (i == 7) {
      ASSERT_TRUE(ledger->append_reservation(reservation("bad-\xff\xfe-utf8"),
                                             [&](const Result<Ok>& r) { bad = r; }));
    }
    if (i == 9) {
      ASSERT_TRUE(ledger->append_reservation(reservation(std::string("nul\0byte", 8)),
                                             [&](const Result<Ok>& r) { nul = r; }));
    }
    ASSERT_TRUE(ledger->append_reservation(reservation("ok" + std::to_string(i)),
                                           [&](const Result<Ok>& r) { ok += r.ok() ? 1 : 0; }));
  }
  ledger->flush();
  EXPECT_EQ(ok.load(), 20);
  ASSERT_TRUE(bad.has_value() && nul.has_value());
  EXPECT_FALSE(bad->ok());
  EXPECT_EQ(bad->error().status, 503);
  EXPECT_FALSE(nul->ok());
  EXPECT_EQ(nul->error().status, 400);
  EXPECT_EQ(*pg().query_int("SELECT COUNT(*) FROM ledger"), 20);
  EXPECT_EQ(ledger->stats().records_failed, 2u);
  EXPECT_EQ(ledger->stats().records_committed, 20u);
}

TEST_F(PgTest, RefusesSynchronousCommitThatCanLoseAckedRecords) {
  for (const char* mode : {"off", "local", "bogus; DROP TABLE ledger"}) {
    PgLedgerOptions o;
    o.db = pg().connect_options();
    o.synchronous_commit = mode;
    auto l = PgLedger::open(o);
    ASSERT_FALSE(l.ok()) << mode;
    EXPECT_EQ(l.error().code, "invalid_config");
  }
  PgLedgerOptions o;
  o.db = pg().connect_options();
  o.synchronous_commit = "remote_write";
  auto l = PgLedger::open(o);
  ASSERT_TRUE(l.ok()) << l.error().message;
  ASSERT_TRUE(append_sync(**l, reservation("rw")).ok());
}

TEST_F(PgTest, KeyStoreRejectsNulBytesInsteadOfTruncating) {
  auto store = pg().open_key_store();
  ASSERT_TRUE(store);
  KeySpec s;
  s.name = std::string("a\0b", 3);
  auto r = store->create(s, kJan1);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().status, 400);
  EXPECT_TRUE(store->list()->empty());
  EXPECT_EQ(store->get(std::string("key_\0", 5)).error().status, 404);
}

}  // namespace
}  // namespace bw::store
