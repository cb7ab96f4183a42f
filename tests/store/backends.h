#pragma once
// Storage backends for the parity suites: the same Ledger / KeyStore test cases run against
// SQLite (a file in a temp dir) and PostgreSQL (a fresh database in the test cluster). Every
// open_*() call opens a NEW instance on the SAME storage, so "reopen after crash" and "two
// replicas" tests work the same way for both. Connections are opened per call (nothing is held
// in the backend object), so a forked child never shares a parent's connection.
#include <gtest/gtest.h>
#include <libpq-fe.h>

#include <memory>
#include <string>

#include "pg_cluster.h"
#include "store/pg_db.h"
#include "store/pg_key_store.h"
#include "store/pg_ledger.h"
#include "store/sqlite_db.h"
#include "store/sqlite_key_store.h"
#include "store/sqlite_ledger.h"
#include "support/temp_dir.h"

namespace bw::store::testing {

using bw::testing::TempDir;
using namespace bw::cost;

class Backend {
 public:
  virtual ~Backend() = default;
  // Empty when usable; otherwise why not (the fixture skips or fails on it).
  virtual std::string unavailable() const { return {}; }
  virtual Result<std::unique_ptr<Ledger>> try_open_ledger(std::size_t capacity,
                                                          std::size_t max_batch) = 0;
  virtual Result<std::unique_ptr<KeyStore>> try_open_key_store() = 0;
  // Raw access for migration tests.
  virtual Result<Ok> migrate_to(int version) = 0;
  virtual Result<Ok> exec(const std::string& sql) = 0;
  virtual Result<std::int64_t> query_int(const std::string& sql) = 0;
  virtual Result<int> schema_version() = 0;
  // The version this binary migrates the backend to (each backend has its own steps).
  virtual int current_version() const = 0;
  virtual Result<Ok> mark_schema_version(int version) = 0;  // pretend a newer binary ran
  // Storage-level consistency check after a crash ("" = ok).
  virtual std::string integrity_problem() = 0;

  std::unique_ptr<Ledger> open_ledger(std::size_t capacity = 65'536,
                                      std::size_t max_batch = 4'096) {
    auto l = try_open_ledger(capacity, max_batch);
    EXPECT_TRUE(l.ok()) << (l.ok() ? "" : l.error().message);
    return l.ok() ? std::move(*l) : nullptr;
  }
  std::unique_ptr<KeyStore> open_key_store() {
    auto s = try_open_key_store();
    EXPECT_TRUE(s.ok()) << (s.ok() ? "" : s.error().message);
    return s.ok() ? std::move(*s) : nullptr;
  }
};

class SqliteBackend : public Backend {
 public:
  static constexpr const char* kName = "Sqlite";
  int current_version() const override { return kSchemaVersion; }
  Result<std::unique_ptr<Ledger>> try_open_ledger(std::size_t capacity,
                                                  std::size_t max_batch) override {
    SqliteLedgerOptions o;
    o.path = path_;
    o.queue_capacity = capacity;
    o.max_batch = max_batch;
    auto l = SqliteLedger::open(o);
    if (!l.ok()) return l.error();
    return std::unique_ptr<Ledger>(std::move(*l));
  }
  Result<std::unique_ptr<KeyStore>> try_open_key_store() override {
    auto s = SqliteKeyStore::open(path_);
    if (!s.ok()) return s.error();
    return std::unique_ptr<KeyStore>(std::move(*s));
  }
  Result<Ok> migrate_to(int version) override {
    auto db = SqliteDb::open(path_);
    if (!db.ok()) return db.error();
    return migrate(*db, version);
  }
  Result<Ok> exec(const std::string& sql) override {
    auto db = SqliteDb::open(path_);
    if (!db.ok()) return db.error();
    return db->exec(sql.c_str());
  }
  Result<std::int64_t> query_int(const std::string& sql) override {
    auto db = SqliteDb::open(path_);
    if (!db.ok()) return db.error();
    return db->query_int(sql.c_str());
  }
  Result<int> schema_version() override {
    auto v = query_int("PRAGMA user_version");
    if (!v.ok()) return v.error();
    return static_cast<int>(*v);
  }
  Result<Ok> mark_schema_version(int version) override {
    return exec("PRAGMA user_version=" + std::to_string(version));
  }
  std::string integrity_problem() override {
    auto db = SqliteDb::open(path_);
    if (!db.ok()) return db.error().message;
    auto st = Statement::prepare(*db, "PRAGMA integrity_check");
    if (!st.ok()) return st.error().message;
    if (st->step() != 100 /* SQLITE_ROW */) return "integrity_check returned no row";
    const std::string r = st->column_text(0);
    return r == "ok" ? "" : r;
  }
  const std::string& path() const { return path_; }

 private:
  TempDir dir_;
  std::string path_ = dir_.file("bellwether.db");
};

class PgBackend : public Backend {
 public:
  static constexpr const char* kName = "Postgres";
  int current_version() const override { return kPgSchemaVersion; }
  PgBackend() {
    if (!PgCluster::installed()) return;
    PgCluster* c = PgCluster::get();
    if (!c) {
      error_ = "could not start PostgreSQL: " + PgCluster::start_error();
      return;
    }
    std::string err;
    const std::string db = c->create_database(&err);
    if (db.empty()) {
      error_ = "CREATE DATABASE failed: " + err;
      return;
    }
    uri_ = c->uri(db);
  }
  std::string unavailable() const override { return error_; }
  const std::string& uri() const { return uri_; }

  PgConnectOptions connect_options() const {
    PgConnectOptions o;
    o.conninfo = uri_;
    o.io_timeout_ms = 60'000;  // sanitizer builds are slow
    return o;
  }
  Result<std::unique_ptr<Ledger>> try_open_ledger(std::size_t capacity,
                                                  std::size_t max_batch) override {
    PgLedgerOptions o;
    o.db = connect_options();
    o.queue_capacity = capacity;
    o.max_batch = max_batch;
    auto l = PgLedger::open(o);
    if (!l.ok()) return l.error();
    return std::unique_ptr<Ledger>(std::move(*l));
  }
  Result<std::unique_ptr<KeyStore>> try_open_key_store() override {
    PgKeyStoreOptions o;
    o.db = connect_options();
    auto s = PgKeyStore::open(o);
    if (!s.ok()) return s.error();
    return std::unique_ptr<KeyStore>(std::move(*s));
  }
  Result<Ok> migrate_to(int version) override {
    auto c = PgConn::connect(connect_options());
    if (!c.ok()) return c.error();
    return pg_migrate(*c, version);
  }
  Result<Ok> exec(const std::string& sql) override {
    auto c = PgConn::connect(connect_options());
    if (!c.ok()) return c.error();
    auto r = c->exec(sql);
    if (!r.ok()) return r.error();
    return Ok{};
  }
  Result<std::int64_t> query_int(const std::string& sql) override {
    auto c = PgConn::connect(connect_options());
    if (!c.ok()) return c.error();
    auto r = c->exec(sql);
    if (!r.ok()) return r.error();
    if (r->rows() != 1) return make_error(500, "", "", "expected one row");
    return r->int64(0, 0);
  }
  Result<int> schema_version() override {
    auto c = PgConn::connect(connect_options());
    if (!c.ok()) return c.error();
    return pg_schema_version(*c);
  }
  Result<Ok> mark_schema_version(int version) override {
    return exec(
        "CREATE TABLE IF NOT EXISTS schema_version (version integer PRIMARY KEY,"
        " applied_at timestamptz NOT NULL DEFAULT now());"
        "INSERT INTO schema_version (version) VALUES (" +
        std::to_string(version) + ")");
  }
  std::string integrity_problem() override {
    // The server did not crash (only its client did): no transaction may be left open or
    // half-applied, and every row must still satisfy the schema.
    auto open_tx = query_int(
        "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = current_database()"
        " AND pid <> pg_backend_pid() AND state LIKE 'idle in transaction%'");
    if (!open_tx.ok()) return open_tx.error().message;
    if (*open_tx != 0) return std::to_string(*open_tx) + " transactions left open";
    auto bad = query_int(
        "SELECT COUNT(*) FROM ledger WHERE status NOT IN ('open','settled','released')"
        " OR (status = 'open' AND settled_unix_ms <> 0)");
    if (!bad.ok()) return bad.error().message;
    return *bad == 0 ? "" : std::to_string(*bad) + " inconsistent rows";
  }

 private:
  std::string uri_;
  std::string error_;
};

// Fixture base for typed parity suites: skips PostgreSQL only when it is not installed, fails
// when it is installed but does not work.
template <class B>
class BackendTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if constexpr (std::is_same_v<B, PgBackend>) {
      if (!PgCluster::installed()) {
        GTEST_SKIP() << "PostgreSQL 15 is not installed (" << kPgBinDir
                     << "/initdb missing): PostgreSQL parity tests skipped";
      }
    }
    backend_ = std::make_unique<B>();
    ASSERT_EQ(backend_->unavailable(), "");
  }
  Backend& backend() { return *backend_; }
  std::unique_ptr<Backend> backend_;
};

// The parity suites build twice: SQLite in the unit binary, PostgreSQL in the "postgres" one.
#ifdef BW_TEST_LABEL_POSTGRES
using Backends = ::testing::Types<PgBackend>;
#else
using Backends = ::testing::Types<SqliteBackend>;
#endif

struct BackendNames {
  template <class T>
  static std::string GetName(int) {
    return T::kName;
  }
};

}  // namespace bw::store::testing
