#include "store/sqlite_db.h"

#include <chrono>
#include <thread>

#include <sqlite3.h>

#include <string>

namespace bw::store {

Error db_error(std::string_view what, const std::string& detail) {
  // Status 503: storage trouble is transient from the client's view and must not look like success.
  return make_error(503, "server_error", "ledger_unavailable", std::string(what) + ": " + detail);
}

void configure_sqlite() {
  // Before SQLite initialises (the first open): no memory statistics, so its allocator takes no
  // global mutex per allocation (the ledger writer allocates at every statement). A no-op if
  // SQLite was initialised already.
  static const bool configured = [] {
    sqlite3_config(SQLITE_CONFIG_MEMSTATUS, 0);
    return true;
  }();
  (void)configured;
}

Result<SqliteDb> SqliteDb::open(const std::string& path, bool synchronous_full, int busy_timeout_ms,
                                const char* vfs) {
  configure_sqlite();
  sqlite3* raw = nullptr;
  const int rc = sqlite3_open_v2(
      path.c_str(), &raw, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, vfs);
  SqliteDb db(raw);
  if (rc != SQLITE_OK) {
    return db_error("open " + path, raw ? sqlite3_errmsg(raw) : sqlite3_errstr(rc));
  }
  sqlite3_busy_timeout(raw, busy_timeout_ms);
  sqlite3_extended_result_codes(raw, 1);
  // Switching a new file to WAL takes an exclusive lock, and SQLite answers "database is locked"
  // here without consulting the busy handler when several processes open it at once; so the
  // busy timeout is applied by hand.
  auto mode = db.query_int("PRAGMA journal_mode=WAL");
  const auto deadline =
      std::chrono::steady_clock::now() + std::chrono::milliseconds(busy_timeout_ms);
  while (!mode.ok() &&
         (mode.error().message.find("locked") != std::string::npos ||
          mode.error().message.find("busy") != std::string::npos) &&
         std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
    mode = db.query_int("PRAGMA journal_mode=WAL");
  }
  if (!mode.ok()) return mode.error();
  auto r = db.exec(synchronous_full ? "PRAGMA synchronous=FULL" : "PRAGMA synchronous=NORMAL");
  if (!r.ok()) return r.error();
  r = db.exec("PRAGMA foreign_keys=ON");
  if (!r.ok()) return r.error();
  return db;
}

SqliteDb& SqliteDb::operator=(SqliteDb&& other) noexcept {
  if (this != &other) {
    if (db_) sqlite3_close_v2(db_);
    db_ = other.db_;
    other.db_ = nullptr;
  }
  return *this;
}

SqliteDb::~SqliteDb() {
  if (db_) sqlite3_close_v2(db_);
}

std::string SqliteDb::last_error() const {
  return db_ ? sqlite3_errmsg(db_) : "closed";
}

Result<Ok> SqliteDb::exec(const char* sql) {
  char* msg = nullptr;
  if (sqlite3_exec(db_, sql, nullptr, nullptr, &msg) != SQLITE_OK) {
    std::string detail = msg ? msg : last_error();
    sqlite3_free(msg);
    return db_error("exec", detail);
  }
  return Ok{};
}

Result<std::int64_t> SqliteDb::query_int(const char* sql) {
  auto st = Statement::prepare(*this, sql);
  if (!st.ok()) return st.error();
  const int rc = st->step();
  if (rc == SQLITE_ROW) return st->column_int(0);
  if (rc == SQLITE_DONE) return std::int64_t{0};
  return db_error("query", last_error());
}

Result<Statement> Statement::prepare(SqliteDb& db, std::string_view sql) {
  sqlite3_stmt* st = nullptr;
  if (sqlite3_prepare_v3(db.get(), sql.data(), static_cast<int>(sql.size()),
                         SQLITE_PREPARE_PERSISTENT, &st, nullptr) != SQLITE_OK) {
    return db_error("prepare", db.last_error());
  }
  return Statement(st);
}

Statement& Statement::operator=(Statement&& o) noexcept {
  if (this != &o) {
    if (st_) sqlite3_finalize(st_);
    st_ = o.st_;
    o.st_ = nullptr;
  }
  return *this;
}

Statement::~Statement() {
  if (st_) sqlite3_finalize(st_);
}

Statement& Statement::bind(int idx, std::int64_t v) {
  sqlite3_bind_int64(st_, idx, v);
  return *this;
}

Statement& Statement::bind(int idx, std::string_view v) {
  sqlite3_bind_text(st_, idx, v.data(), static_cast<int>(v.size()), SQLITE_TRANSIENT);
  return *this;
}

Statement& Statement::bind_static(int idx, std::string_view v) {
  sqlite3_bind_text(st_, idx, v.data(), static_cast<int>(v.size()), SQLITE_STATIC);
  return *this;
}

Statement& Statement::bind_null(int idx) {
  sqlite3_bind_null(st_, idx);
  return *this;
}

int Statement::step() {
  return sqlite3_step(st_);
}

void Statement::reset() {
  sqlite3_reset(st_);
  sqlite3_clear_bindings(st_);
}

void Statement::rewind() {
  sqlite3_reset(st_);
}

std::int64_t Statement::column_int(int col) const {
  return sqlite3_column_int64(st_, col);
}

std::string Statement::column_text(int col) const {
  const auto* p = sqlite3_column_text(st_, col);
  if (!p) return {};
  return std::string(reinterpret_cast<const char*>(p),
                     static_cast<std::size_t>(sqlite3_column_bytes(st_, col)));
}

std::string_view Statement::column_view(int col) const {
  const auto* p = sqlite3_column_text(st_, col);
  if (!p) return {};
  return std::string_view(reinterpret_cast<const char*>(p),
                          static_cast<std::size_t>(sqlite3_column_bytes(st_, col)));
}

bool Statement::column_is_null(int col) const {
  return sqlite3_column_type(st_, col) == SQLITE_NULL;
}

namespace {

// Append-only: never edit a shipped step, add a new one.
constexpr const char* kMigrations[] = {
    // v1: the ledger.
    "CREATE TABLE ledger ("
    " request_id TEXT PRIMARY KEY,"
    " key_id TEXT NOT NULL,"
    " tenant_id TEXT NOT NULL,"
    " model TEXT NOT NULL,"
    " reserved_micro INTEGER NOT NULL,"
    " actual_micro INTEGER NOT NULL DEFAULT 0,"
    " prompt_tokens INTEGER NOT NULL DEFAULT 0,"
    " completion_tokens INTEGER NOT NULL DEFAULT 0,"
    " status TEXT NOT NULL CHECK (status IN ('open','settled','released')),"
    " created_unix_ms INTEGER NOT NULL,"
    " settled_unix_ms INTEGER NOT NULL DEFAULT 0"
    ") WITHOUT ROWID;",
    // v2: which budgets a row charged (recovery no longer guesses from key/tenant), and the
    // indexes recovery and reports need.
    "ALTER TABLE ledger ADD COLUMN budgets TEXT NOT NULL DEFAULT '';"
    "CREATE INDEX ledger_created ON ledger (created_unix_ms);"
    "CREATE INDEX ledger_open ON ledger (status) WHERE status = 'open';",
    // v3: API keys.
    "CREATE TABLE api_keys ("
    " id TEXT PRIMARY KEY,"
    " secret_hash TEXT NOT NULL UNIQUE,"
    " prefix TEXT NOT NULL,"
    " name TEXT NOT NULL DEFAULT '',"
    " tenant TEXT NOT NULL DEFAULT '',"
    " plan TEXT NOT NULL DEFAULT '',"
    " limits_json TEXT NOT NULL DEFAULT '{}',"
    " budgets TEXT NOT NULL DEFAULT '',"
    " allowed_models TEXT NOT NULL DEFAULT '',"
    " default_priority INTEGER NOT NULL DEFAULT 1,"
    " max_priority INTEGER NOT NULL DEFAULT 1,"
    " downgrade_opt_out INTEGER NOT NULL DEFAULT 0,"
    " revoked INTEGER NOT NULL DEFAULT 0,"
    " created_unix_ms INTEGER NOT NULL,"
    " rotated_unix_ms INTEGER NOT NULL DEFAULT 0"
    ");",
    // v4: budget leases. A lease row (lease = 1) holds a slice of a budget set's headroom for
    // the requests it covers; reports and the settled-spend rebuild do not count it as a request.
    "ALTER TABLE ledger ADD COLUMN lease INTEGER NOT NULL DEFAULT 0;",
    // v5: no index on created_unix_ms. Every row paid a second B-tree insert for it (about a
    // fifth of the ledger writer's work per row, and two of the ~7 WAL pages of a group commit
    // of 8 rows), and it served only the start-up rebuild of settled spend and the admin spend
    // report over a time range, which now read the table through (as the rebuild with a
    // `total` budget always did).
    "DROP INDEX IF EXISTS ledger_created;",
};
static_assert(sizeof(kMigrations) / sizeof(kMigrations[0]) == kSchemaVersion);

}  // namespace

Result<Ok> migrate(SqliteDb& db, int target_version) {
  if (target_version > kSchemaVersion) target_version = kSchemaVersion;
  for (;;) {
    auto r = db.exec("BEGIN IMMEDIATE");
    if (!r.ok()) return r;
    auto version = db.query_int("PRAGMA user_version");
    if (!version.ok()) {
      (void)db.exec("ROLLBACK");
      return version.error();
    }
    if (*version > kSchemaVersion) {
      (void)db.exec("ROLLBACK");
      return db_error("migrate", "database schema v" + std::to_string(*version) +
                                     " is newer than this binary (v" +
                                     std::to_string(kSchemaVersion) + ")");
    }
    if (*version >= target_version) return db.exec("COMMIT");
    r = db.exec(kMigrations[*version]);
    if (r.ok()) {
      const std::string bump = "PRAGMA user_version=" + std::to_string(*version + 1);
      r = db.exec(bump.c_str());
    }
    if (!r.ok()) {
      (void)db.exec("ROLLBACK");
      return r;
    }
    r = db.exec("COMMIT");
    if (!r.ok()) return r;
  }
}

}  // namespace bw::store
