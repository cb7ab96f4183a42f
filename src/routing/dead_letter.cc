#include "routing/dead_letter.h"

#include <sqlite3.h>

#include <algorithm>

namespace bw::routing {

namespace {

constexpr int kSchemaVersion = 1;

// RAII for prepared statements; every early return finalizes.
class Stmt {
 public:
  Stmt(sqlite3* db, const char* sql) { rc_ = sqlite3_prepare_v2(db, sql, -1, &s_, nullptr); }
  ~Stmt() { sqlite3_finalize(s_); }
  Stmt(const Stmt&) = delete;
  Stmt& operator=(const Stmt&) = delete;
  bool ok() const { return rc_ == SQLITE_OK; }
  sqlite3_stmt* get() { return s_; }
  void bind(int i, std::int64_t v) { sqlite3_bind_int64(s_, i, v); }
  void bind_text(int i, const std::string& v) {
    sqlite3_bind_text(s_, i, v.data(), static_cast<int>(v.size()), SQLITE_STATIC);
  }
  void bind_blob(int i, const std::string& v) {
    sqlite3_bind_blob(s_, i, v.data(), static_cast<int>(v.size()), SQLITE_STATIC);
  }
  int step() { return sqlite3_step(s_); }
  std::int64_t i64(int c) { return sqlite3_column_int64(s_, c); }
  std::string text(int c) {
    const auto* p = reinterpret_cast<const char*>(sqlite3_column_blob(s_, c));
    return p ? std::string(p, static_cast<std::size_t>(sqlite3_column_bytes(s_, c)))
             : std::string();
  }
  bool is_null(int c) { return sqlite3_column_type(s_, c) == SQLITE_NULL; }

 private:
  sqlite3_stmt* s_ = nullptr;
  int rc_;
};

constexpr const char* kColumns =
    "id, created_unix_ms, key_id, model, endpoint, error, attempts, size_bytes, replayed_unix_ms";

DeadLetter read_row(Stmt& s, bool with_body) {
  DeadLetter d;
  d.id = s.i64(0);
  d.created_unix_ms = s.i64(1);
  d.key_id = s.text(2);
  d.model = s.text(3);
  d.endpoint = s.text(4);
  d.error = s.text(5);
  d.attempts = static_cast<int>(s.i64(6));
  d.size_bytes = s.i64(7);
  if (!s.is_null(8)) d.replayed_unix_ms = s.i64(8);
  if (with_body) d.body = s.text(9);
  return d;
}

}  // namespace

std::int64_t DeadLetterQueue::entry_size(const NewDeadLetter& e) {
  return static_cast<std::int64_t>(e.body.size() + e.key_id.size() + e.model.size() +
                                   e.endpoint.size() + e.error.size());
}

DeadLetterQueue::DeadLetterQueue(sqlite3* db, DeadLetterConfig cfg)
    : db_(db), cfg_(std::move(cfg)) {}

DeadLetterQueue::~DeadLetterQueue() {
  sqlite3_close_v2(db_);
}

Error DeadLetterQueue::db_error(const char* what) const {
  return make_error(500, "server_error", "dead_letter_store",
                    std::string("dead-letter store: ") + what + ": " + sqlite3_errmsg(db_));
}

Result<Ok> DeadLetterQueue::exec(const char* sql) {
  if (sqlite3_exec(db_, sql, nullptr, nullptr, nullptr) != SQLITE_OK) return db_error(sql);
  return Ok{};
}

Result<std::unique_ptr<DeadLetterQueue>> DeadLetterQueue::open(const DeadLetterConfig& cfg) {
  sqlite3* db = nullptr;
  const int rc =
      sqlite3_open_v2(cfg.path.c_str(), &db,
                      SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, nullptr);
  if (rc != SQLITE_OK) {
    std::string msg = "dead-letter store: cannot open '" + cfg.path +
                      "': " + (db ? sqlite3_errmsg(db) : sqlite3_errstr(rc));
    sqlite3_close_v2(db);
    return make_error(500, "server_error", "dead_letter_store", msg);
  }
  std::unique_ptr<DeadLetterQueue> q(new DeadLetterQueue(db, cfg));
  sqlite3_busy_timeout(db, 1000);
  if (auto r = q->exec("PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;"); !r) return r.error();

  Stmt v(db, "PRAGMA user_version");
  if (!v.ok() || v.step() != SQLITE_ROW) return q->db_error("read user_version");
  const std::int64_t version = v.i64(0);
  if (version > kSchemaVersion) {
    return make_error(500, "server_error", "dead_letter_store",
                      "dead-letter store '" + cfg.path + "' has schema version " +
                          std::to_string(version) + ", newer than this build (" +
                          std::to_string(kSchemaVersion) + ")");
  }
  if (version < 1) {
    // Migrations run in order inside one transaction; add `if (version < 2)` steps below.
    if (auto r = q->exec("BEGIN IMMEDIATE;"
                         "CREATE TABLE IF NOT EXISTS dead_letters ("
                         " id INTEGER PRIMARY KEY AUTOINCREMENT,"
                         " created_unix_ms INTEGER NOT NULL,"
                         " key_id TEXT NOT NULL, model TEXT NOT NULL, endpoint TEXT NOT NULL,"
                         " body BLOB NOT NULL, error TEXT NOT NULL, attempts INTEGER NOT NULL,"
                         " size_bytes INTEGER NOT NULL, replayed_unix_ms INTEGER);"
                         "PRAGMA user_version=1;"
                         "COMMIT;");
        !r) {
      sqlite3_exec(db, "ROLLBACK", nullptr, nullptr, nullptr);
      return r.error();
    }
  }
  if (auto r = q->load_totals(); !r) return r.error();
  return q;
}

Result<Ok> DeadLetterQueue::load_totals() {
  Stmt s(db_, "SELECT COUNT(*), COALESCE(SUM(size_bytes), 0) FROM dead_letters");
  if (!s.ok() || s.step() != SQLITE_ROW) return db_error("count");
  count_ = s.i64(0);
  bytes_ = s.i64(1);
  return Ok{};
}

Result<std::int64_t> DeadLetterQueue::add(const NewDeadLetter& e) {
  const std::int64_t size = entry_size(e);
  if (size > cfg_.max_bytes || cfg_.max_entries <= 0) {
    dropped_.fetch_add(1, std::memory_order_relaxed);
    return make_error(413, "invalid_request_error", "dead_letter_too_large",
                      "dead-letter entry of " + std::to_string(size) +
                          " bytes exceeds the store bound of " + std::to_string(cfg_.max_bytes));
  }
  std::lock_guard lock(mu_);
  if (auto r = exec("BEGIN IMMEDIATE"); !r) return r.error();
  auto fail = [&](const char* what) -> Error {
    Error err = db_error(what);
    sqlite3_exec(db_, "ROLLBACK", nullptr, nullptr, nullptr);
    load_totals().ok();  // resync the cached totals with what the rollback left
    return err;
  };
  std::int64_t count = count_;
  std::int64_t bytes = bytes_;
  std::uint64_t evicted = 0;
  {
    Stmt oldest(db_, "SELECT id, size_bytes FROM dead_letters ORDER BY id LIMIT ?1");
    Stmt del(db_, "DELETE FROM dead_letters WHERE id <= ?1");
    if (!oldest.ok() || !del.ok()) return fail("prepare eviction");
    // Walk the oldest rows until the new entry fits, then delete them in one statement.
    const std::int64_t need_rows = std::max<std::int64_t>(0, count + 1 - cfg_.max_entries);
    if (need_rows > 0 || bytes + size > cfg_.max_bytes) {
      oldest.bind(1, count);
      std::int64_t last_id = -1;
      while ((static_cast<std::int64_t>(evicted) < need_rows || bytes + size > cfg_.max_bytes) &&
             oldest.step() == SQLITE_ROW) {
        last_id = oldest.i64(0);
        bytes -= oldest.i64(1);
        --count;
        ++evicted;
      }
      sqlite3_reset(oldest.get());
      if (last_id >= 0) {
        del.bind(1, last_id);
        if (del.step() != SQLITE_DONE) return fail("evict");
      }
    }
  }
  Stmt ins(db_,
           "INSERT INTO dead_letters (created_unix_ms, key_id, model, endpoint, body, error, "
           "attempts, size_bytes) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)");
  if (!ins.ok()) return fail("prepare insert");
  ins.bind(1, e.created_unix_ms);
  ins.bind_text(2, e.key_id);
  ins.bind_text(3, e.model);
  ins.bind_text(4, e.endpoint);
  ins.bind_blob(5, e.body);
  ins.bind_text(6, e.error);
  ins.bind(7, e.attempts);
  ins.bind(8, size);
  if (ins.step() != SQLITE_DONE) return fail("insert");
  const std::int64_t id = sqlite3_last_insert_rowid(db_);
  if (auto r = exec("COMMIT"); !r) return fail("commit");
  count_ = count + 1;
  bytes_ = bytes + size;
  added_.fetch_add(1, std::memory_order_relaxed);
  dropped_.fetch_add(evicted, std::memory_order_relaxed);
  return id;
}

Result<std::vector<DeadLetter>> DeadLetterQueue::list(std::int64_t after_id, int limit,
                                                      bool with_body) {
  limit = std::clamp(limit, 1, 1000);
  std::string sql = std::string("SELECT ") + kColumns + (with_body ? ", body" : "") +
                    " FROM dead_letters WHERE id > ?1 ORDER BY id LIMIT ?2";
  std::lock_guard lock(mu_);
  Stmt s(db_, sql.c_str());
  if (!s.ok()) return db_error("prepare list");
  s.bind(1, after_id);
  s.bind(2, limit);
  std::vector<DeadLetter> out;
  int rc;
  while ((rc = s.step()) == SQLITE_ROW) out.push_back(read_row(s, with_body));
  if (rc != SQLITE_DONE) return db_error("list");
  return out;
}

Result<std::optional<DeadLetter>> DeadLetterQueue::get(std::int64_t id) {
  std::string sql = std::string("SELECT ") + kColumns + ", body FROM dead_letters WHERE id = ?1";
  std::lock_guard lock(mu_);
  Stmt s(db_, sql.c_str());
  if (!s.ok()) return db_error("prepare get");
  s.bind(1, id);
  const int rc = s.step();
  if (rc == SQLITE_DONE) return std::optional<DeadLetter>{};
  if (rc != SQLITE_ROW) return db_error("get");
  return std::optional<DeadLetter>{read_row(s, true)};
}

Result<bool> DeadLetterQueue::remove(std::int64_t id) {
  std::lock_guard lock(mu_);
  Stmt s(db_, "DELETE FROM dead_letters WHERE id = ?1 RETURNING size_bytes");
  if (!s.ok()) return db_error("prepare delete");
  s.bind(1, id);
  const int rc = s.step();
  if (rc == SQLITE_DONE) return false;
  if (rc != SQLITE_ROW) return db_error("delete");
  const std::int64_t size = s.i64(0);
  if (s.step() != SQLITE_DONE) return db_error("delete");
  --count_;
  bytes_ -= size;
  return true;
}

Result<bool> DeadLetterQueue::mark_replayed(std::int64_t id, std::int64_t unix_ms) {
  std::lock_guard lock(mu_);
  Stmt s(db_, "UPDATE dead_letters SET replayed_unix_ms = ?2 WHERE id = ?1");
  if (!s.ok()) return db_error("prepare mark_replayed");
  s.bind(1, id);
  s.bind(2, unix_ms);
  if (s.step() != SQLITE_DONE) return db_error("mark_replayed");
  return sqlite3_changes(db_) > 0;
}

std::int64_t DeadLetterQueue::size() const {
  std::lock_guard lock(mu_);
  return count_;
}

std::int64_t DeadLetterQueue::bytes() const {
  std::lock_guard lock(mu_);
  return bytes_;
}

}  // namespace bw::routing
