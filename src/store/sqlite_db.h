#pragma once
// Thin RAII over the SQLite C API shared by the ledger and the key store, plus the schema
// migrations of the cost database (ledger + api_keys live in one file, versioned together by
// PRAGMA user_version). Thread safety: a SqliteDb/Statement is used by one thread at a time;
// owners guard them with their own mutex.
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "common/result.h"

struct sqlite3;
struct sqlite3_stmt;

namespace bw::store {

// Current schema version: 1 ledger, 2 ledger.budgets + indexes, 3 api_keys, 4 ledger.lease,
// 5 no ledger_created index.
constexpr int kSchemaVersion = 5;

class SqliteDb {
 public:
  // Opens (creating if needed) `path` with WAL journaling, the given synchronous level
  // ("FULL" or "NORMAL") and a busy timeout, through the named SQLite VFS (null: the default;
  // store/sqlite_wal_gather.h names one).
  static Result<SqliteDb> open(const std::string& path, bool synchronous_full = true,
                               int busy_timeout_ms = 5000, const char* vfs = nullptr);
  SqliteDb() = default;
  SqliteDb(SqliteDb&& other) noexcept : db_(other.db_) { other.db_ = nullptr; }
  SqliteDb& operator=(SqliteDb&& other) noexcept;
  SqliteDb(const SqliteDb&) = delete;
  SqliteDb& operator=(const SqliteDb&) = delete;
  ~SqliteDb();

  sqlite3* get() const { return db_; }
  Result<Ok> exec(const char* sql);
  Result<std::int64_t> query_int(const char* sql);
  std::string last_error() const;

 private:
  explicit SqliteDb(sqlite3* db) : db_(db) {}
  sqlite3* db_ = nullptr;
};

class Statement {
 public:
  Statement() = default;
  static Result<Statement> prepare(SqliteDb& db, std::string_view sql);
  Statement(Statement&& o) noexcept : st_(o.st_) { o.st_ = nullptr; }
  Statement& operator=(Statement&& o) noexcept;
  Statement(const Statement&) = delete;
  Statement& operator=(const Statement&) = delete;
  ~Statement();

  Statement& bind(int idx, std::int64_t v);
  Statement& bind(int idx, std::string_view v);
  // bind() without SQLite's copy: `v` must stay valid and unchanged until reset().
  Statement& bind_static(int idx, std::string_view v);
  Statement& bind_null(int idx);
  // SQLITE_ROW, SQLITE_DONE or an error code.
  int step();
  void reset();
  // reset() without clearing the bindings, for a statement whose every parameter is bound again
  // before each step: a static binding may then outlive its value, as it is never read.
  void rewind();
  sqlite3_stmt* get() const { return st_; }
  std::int64_t column_int(int col) const;
  std::string column_text(int col) const;
  // The column's text without a copy: valid until the next step(), reset() or column call.
  std::string_view column_view(int col) const;
  bool column_is_null(int col) const;

 private:
  explicit Statement(sqlite3_stmt* st) : st_(st) {}
  sqlite3_stmt* st_ = nullptr;
};

// Applies migrations up to `target_version` inside one IMMEDIATE transaction per step, so that two
// processes opening the same file cannot apply a step twice. Refuses a database newer than this
// binary (downgrades are not supported).
Result<Ok> migrate(SqliteDb& db, int target_version = kSchemaVersion);

Error db_error(std::string_view what, const std::string& detail);

// SQLite's process-wide settings, applied once before it initialises (SqliteDb::open and the VFS
// registrations call it first).
void configure_sqlite();

}  // namespace bw::store
