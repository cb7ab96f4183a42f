#include "store/pg_db.h"

#include <libpq-fe.h>
#include <poll.h>

#include <cerrno>
#include <charconv>

#include "store/sqlite_db.h"  // db_error(): same error shape for every ledger backend

namespace bw::store {

namespace {

using SteadyTime = std::chrono::steady_clock::time_point;

SteadyTime deadline_in(int ms) {
  return std::chrono::steady_clock::now() + std::chrono::milliseconds(ms > 0 ? ms : 1);
}

std::string trim(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  return s;
}

std::string scrub(std::string s, const std::string& secret) {
  if (secret.empty()) return s;
  for (std::size_t pos = s.find(secret); pos != std::string::npos; pos = s.find(secret, pos)) {
    s.replace(pos, secret.size(), "***");
    pos += 3;
  }
  return s;
}

struct ParsedConninfo {
  std::string target;
  std::string password;
};

std::optional<ParsedConninfo> parse_conninfo(const std::string& conninfo) {
  char* err = nullptr;
  PQconninfoOption* opts = PQconninfoParse(conninfo.c_str(), &err);
  // libpq's parse error may quote the string, password included: never pass it on.
  if (err) PQfreemem(err);
  if (!opts) return std::nullopt;
  std::string user, host, port, db;
  ParsedConninfo out;
  for (auto* o = opts; o->keyword; ++o) {
    if (!o->val) continue;
    const std::string_view k = o->keyword;
    if (k == "user") user = o->val;
    if (k == "host" || (k == "hostaddr" && host.empty())) host = o->val;
    if (k == "port") port = o->val;
    if (k == "dbname") db = o->val;
    if (k == "password") out.password = o->val;
  }
  PQconninfoFree(opts);
  out.target = (user.empty() ? "" : user + "@") + (host.empty() ? "localhost" : host) +
               (port.empty() ? "" : ":" + port) + "/" + db;
  return out;
}

}  // namespace

// ---- PgResult / PgParams -------------------------------------------------------------------

PgResult& PgResult::operator=(PgResult&& o) noexcept {
  if (this != &o) {
    if (r_) PQclear(r_);
    r_ = o.r_;
    o.r_ = nullptr;
  }
  return *this;
}

PgResult::~PgResult() {
  if (r_) PQclear(r_);
}

int PgResult::rows() const {
  return r_ ? PQntuples(r_) : 0;
}

std::string PgResult::text(int row, int col) const {
  if (!r_ || PQgetisnull(r_, row, col)) return {};
  return std::string(PQgetvalue(r_, row, col), static_cast<std::size_t>(PQgetlength(r_, row, col)));
}

std::int64_t PgResult::int64(int row, int col) const {
  if (!r_ || PQgetisnull(r_, row, col)) return 0;
  const char* p = PQgetvalue(r_, row, col);
  const char* end = p + PQgetlength(r_, row, col);
  std::int64_t v = 0;
  (void)std::from_chars(p, end, v);
  return v;
}

bool PgResult::boolean(int row, int col) const {
  return r_ && !PQgetisnull(r_, row, col) && PQgetvalue(r_, row, col)[0] == 't';
}

std::int64_t PgResult::affected() const {
  if (!r_) return 0;
  const char* p = PQcmdTuples(r_);
  std::int64_t v = 0;
  (void)std::from_chars(p, p + std::char_traits<char>::length(p), v);
  return v;
}

std::string PgResult::sqlstate() const {
  const char* s = r_ ? PQresultErrorField(r_, PG_DIAG_SQLSTATE) : nullptr;
  return s ? s : "";
}

PgParams& PgParams::add(std::string_view v) {
  values_.emplace_back(v);
  relink();
  return *this;
}

PgParams& PgParams::add(std::int64_t v) {
  values_.push_back(std::to_string(v));
  relink();
  return *this;
}

void PgParams::relink() {
  // Small strings live inside the std::string objects, which move when the vector grows.
  ptrs_.clear();
  for (const auto& v : values_) ptrs_.push_back(v.c_str());
}

Result<Ok> check_text(std::string_view field, std::string_view v) {
  if (v.find('\0') != std::string_view::npos) {
    return make_error(400, "invalid_request_error", "invalid_value",
                      std::string(field) + " contains a NUL byte", std::string(field));
  }
  return Ok{};
}

std::string describe_conninfo(const std::string& conninfo) {
  auto p = parse_conninfo(conninfo);
  return p ? p->target : "invalid connection string";
}

// ---- PgConn ----------------------------------------------------------------------------------

Result<PgConn> PgConn::connect(const PgConnectOptions& options) {
  auto parsed = parse_conninfo(options.conninfo);
  if (!parsed) {
    return db_error("postgres connect", "invalid connection string (libpq could not parse it)");
  }
  const std::string timeout =
      std::to_string(options.connect_timeout_s > 0 ? options.connect_timeout_s : 5);
  // Defaults first: the expanded connection string (dbname, processed last) overrides them.
  const char* keys[] = {"connect_timeout", "application_name", "dbname", nullptr};
  const char* vals[] = {timeout.c_str(), options.application_name.c_str(), options.conninfo.c_str(),
                        nullptr};
  PGconn* raw = PQconnectdbParams(keys, vals, /*expand_dbname=*/1);
  PgConn conn(raw, parsed->target, parsed->password, options.io_timeout_ms);
  if (!raw) return db_error("postgres connect " + conn.target_, "out of memory");
  if (PQstatus(raw) != CONNECTION_OK) return conn.error("postgres connect " + conn.target_);
  if (PQsetnonblocking(raw, 1) != 0) return conn.error("postgres connect " + conn.target_);
  // Notices (e.g. "already exists, skipping" from idempotent migrations) are not for stderr.
  PQsetNoticeProcessor(
      raw, [](void*, const char*) {}, nullptr);
  const std::string setup =
      "SET statement_timeout = " + std::to_string(std::max(0, options.statement_timeout_ms)) +
      "; SET client_min_messages = warning";
  auto r = conn.exec(setup);
  if (!r.ok()) return r.error();
  return conn;
}

PgConn::PgConn(PgConn&& o) noexcept
    : conn_(o.conn_),
      target_(std::move(o.target_)),
      password_(std::move(o.password_)),
      io_timeout_ms_(o.io_timeout_ms_) {
  o.conn_ = nullptr;
}

PgConn& PgConn::operator=(PgConn&& o) noexcept {
  if (this != &o) {
    if (conn_) PQfinish(conn_);
    conn_ = o.conn_;
    o.conn_ = nullptr;
    target_ = std::move(o.target_);
    password_ = std::move(o.password_);
    io_timeout_ms_ = o.io_timeout_ms_;
  }
  return *this;
}

PgConn::~PgConn() {
  if (conn_) PQfinish(conn_);
}

bool PgConn::healthy() const {
  return conn_ && PQstatus(conn_) == CONNECTION_OK && PQtransactionStatus(conn_) == PQTRANS_IDLE &&
         PQpipelineStatus(conn_) == PQ_PIPELINE_OFF;
}

bool PgConn::alive() {
  if (!healthy()) return false;
  // An idle connection receives nothing but notices, or a FATAL error followed by EOF when the
  // server drops it; read until the socket is quiet (bounded) so the EOF is seen now.
  for (int i = 0; i < 16; ++i) {
    pollfd p{PQsocket(conn_), POLLIN, 0};
    if (::poll(&p, 1, 0) <= 0) break;
    if (!PQconsumeInput(conn_)) return false;
    while (!PQisBusy(conn_)) {
      PGresult* r = PQgetResult(conn_);
      if (!r) break;
      PQclear(r);
    }
    if (PQstatus(conn_) != CONNECTION_OK) return false;
  }
  return healthy();
}

Error PgConn::error(std::string_view what, const PGresult* r) const {
  std::string detail;
  if (r && PQresultErrorMessage(r)[0]) {
    detail = PQresultErrorMessage(r);
  } else if (conn_) {
    detail = PQerrorMessage(conn_);
  }
  detail = trim(scrub(std::move(detail), password_));
  if (detail.empty()) detail = "connection lost";
  return db_error(what, detail);
}

Result<Ok> PgConn::wait_socket(bool for_write, SteadyTime deadline) {
  pollfd p{PQsocket(conn_), static_cast<short>(POLLIN | (for_write ? POLLOUT : 0)), 0};
  if (p.fd < 0) return error("postgres socket");
  for (;;) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
                          deadline - std::chrono::steady_clock::now())
                          .count();
    if (left <= 0) break;
    const int n = ::poll(&p, 1, static_cast<int>(left));
    if (n > 0) return Ok{};
    if (n < 0 && errno != EINTR) return db_error("postgres poll", "poll failed");
  }
  // The server may still be running our statement: the connection is in an unknown state, so it
  // is closed rather than reused (the pool and the writer reconnect).
  const std::string t = target_;
  PQfinish(conn_);
  conn_ = nullptr;
  return db_error("postgres " + t, "timed out waiting for the server");
}

Result<Ok> PgConn::flush_all(SteadyTime deadline) {
  for (;;) {
    const int f = PQflush(conn_);
    if (f == 0) return Ok{};
    if (f < 0) return error("postgres send");
    // Read while we wait to write, so neither side can block on a full socket buffer.
    auto w = wait_socket(true, deadline);
    if (!w.ok()) return w;
    if (!PQconsumeInput(conn_)) return error("postgres receive");
  }
}

Result<PgResult> PgConn::next_result(SteadyTime deadline, bool& none) {
  while (PQisBusy(conn_)) {
    auto w = wait_socket(false, deadline);
    if (!w.ok()) return w.error();
    if (!PQconsumeInput(conn_)) return error("postgres receive");
  }
  PGresult* r = PQgetResult(conn_);
  none = r == nullptr;
  return PgResult(r);
}

Result<PgResult> PgConn::finish_single(std::string_view what, std::string* sqlstate) {
  const auto deadline = deadline_in(io_timeout_ms_);
  auto f = flush_all(deadline);
  if (!f.ok()) return f.error();
  PgResult last;
  std::optional<Error> failure;
  for (;;) {
    bool none = false;
    auto r = next_result(deadline, none);
    if (!r.ok()) return r.error();
    if (none) break;
    const auto st = PQresultStatus(r->get());
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK && !failure) {
      if (sqlstate) *sqlstate = r->sqlstate();
      failure = error(what, r->get());
    }
    last = std::move(*r);
  }
  if (failure) return *failure;
  return last;
}

Result<PgResult> PgConn::exec(std::string_view sql, std::string* sqlstate) {
  if (!conn_) return db_error("postgres " + target_, "connection closed");
  const std::string q(sql);
  if (!PQsendQuery(conn_, q.c_str())) return error("postgres send");
  return finish_single("postgres query", sqlstate);
}

Result<PgResult> PgConn::exec(std::string_view sql, const PgParams& params, std::string* sqlstate) {
  if (!conn_) return db_error("postgres " + target_, "connection closed");
  const std::string q(sql);
  if (!PQsendQueryParams(conn_, q.c_str(), params.size(), nullptr, params.values(), nullptr,
                         nullptr, 0)) {
    return error("postgres send");
  }
  return finish_single("postgres query", sqlstate);
}

Result<std::vector<PgResult>> PgConn::pipeline(const std::vector<Stmt>& stmts) {
  if (!conn_) return db_error("postgres " + target_, "connection closed");
  if (!PQenterPipelineMode(conn_)) return error("postgres pipeline");
  for (const auto& s : stmts) {
    const std::string q(s.sql);
    const int sent = s.prepared ? PQsendQueryPrepared(conn_, q.c_str(), s.params.size(),
                                                      s.params.values(), nullptr, nullptr, 0)
                                : PQsendQueryParams(conn_, q.c_str(), s.params.size(), nullptr,
                                                    s.params.values(), nullptr, nullptr, 0);
    if (!sent) return error("postgres send");
  }
  if (!PQpipelineSync(conn_)) return error("postgres send");
  const auto deadline = deadline_in(io_timeout_ms_);
  auto f = flush_all(deadline);
  if (!f.ok()) return f.error();
  std::vector<PgResult> out;
  out.reserve(stmts.size());
  for (std::size_t i = 0; i < stmts.size(); ++i) {
    bool none = false;
    auto r = next_result(deadline, none);
    if (!r.ok()) return r.error();
    if (none) return db_error("postgres pipeline", "missing result");
    out.push_back(std::move(*r));
    auto end = next_result(deadline, none);  // NULL closes each statement's results
    if (!end.ok()) return end.error();
    if (!none) return db_error("postgres pipeline", "unexpected extra result");
  }
  bool none = false;
  auto sync = next_result(deadline, none);
  if (!sync.ok()) return sync.error();
  if (none || PQresultStatus(sync->get()) != PGRES_PIPELINE_SYNC) {
    return db_error("postgres pipeline", "missing sync");
  }
  if (!PQexitPipelineMode(conn_)) return error("postgres pipeline");
  return out;
}

// ---- PgPool ----------------------------------------------------------------------------------

namespace {
PgPoolOptions normalized(PgPoolOptions o) {
  if (o.max_size == 0) o.max_size = 1;
  return o;
}
}  // namespace

PgPool::PgPool(PgConnectOptions conn, PgPoolOptions pool)
    : conn_options_(std::move(conn)), options_(normalized(pool)) {}

PgPool::Lease::~Lease() {
  if (pool_ && conn_) pool_->give_back(std::move(conn_));
}

void PgPool::give_back(std::unique_ptr<PgConn> c) {
  {
    std::lock_guard lock(mu_);
    if (c->healthy()) {
      idle_.push_back(std::move(c));
    } else {
      --total_;
    }
  }
  cv_.notify_one();
}

std::size_t PgPool::open_connections() const {
  std::lock_guard lock(mu_);
  return total_;
}

Result<PgPool::Lease> PgPool::acquire() {
  const auto deadline = deadline_in(options_.acquire_timeout_ms);
  std::unique_lock lock(mu_);
  for (;;) {
    if (!idle_.empty()) {
      auto c = std::move(idle_.back());
      idle_.pop_back();
      if (c->alive()) return Lease(this, std::move(c));
      --total_;  // dropped by the server meanwhile; open a fresh one below
      continue;
    }
    if (total_ < options_.max_size) {
      ++total_;
      lock.unlock();
      auto c = PgConn::connect(conn_options_);
      if (!c.ok()) {
        lock.lock();
        --total_;
        lock.unlock();
        cv_.notify_one();
        return c.error();
      }
      return Lease(this, std::make_unique<PgConn>(std::move(*c)));
    }
    if (cv_.wait_until(lock, deadline) == std::cv_status::timeout && idle_.empty() &&
        total_ >= options_.max_size) {
      return make_error(
          503, "server_error", "ledger_unavailable",
          "postgres pool: all " + std::to_string(options_.max_size) + " connections busy");
    }
  }
}

// ---- migrations ------------------------------------------------------------------------------

namespace {

// Arbitrary but fixed: every Bellwether binary serialises its migrations on this key.
constexpr std::int64_t kMigrationLockKey = 0x62772d636f7374;  // "bw-cost"

// Append-only: never edit a shipped step. Each step is idempotent on its own too, so a database
// that was set up by hand (or half-migrated by an older tool) converges.
constexpr const char* kPgMigrations[] = {
    // v1: the ledger.
    "CREATE TABLE IF NOT EXISTS ledger ("
    " request_id text PRIMARY KEY,"
    " key_id text NOT NULL,"
    " tenant_id text NOT NULL,"
    " model text NOT NULL,"
    " reserved_micro bigint NOT NULL,"
    " actual_micro bigint NOT NULL DEFAULT 0,"
    " prompt_tokens bigint NOT NULL DEFAULT 0,"
    " completion_tokens bigint NOT NULL DEFAULT 0,"
    " status text NOT NULL CHECK (status IN ('open','settled','released')),"
    " created_unix_ms bigint NOT NULL,"
    " settled_unix_ms bigint NOT NULL DEFAULT 0)",
    // v2: budgets a row charged, and the indexes recovery and reports need.
    "ALTER TABLE ledger ADD COLUMN IF NOT EXISTS budgets text NOT NULL DEFAULT '';"
    "CREATE INDEX IF NOT EXISTS ledger_created ON ledger (created_unix_ms);"
    "CREATE INDEX IF NOT EXISTS ledger_open ON ledger (created_unix_ms) WHERE status = 'open'",
    // v3: API keys.
    "CREATE TABLE IF NOT EXISTS api_keys ("
    " id text PRIMARY KEY,"
    " secret_hash text NOT NULL UNIQUE,"
    " prefix text NOT NULL,"
    " name text NOT NULL DEFAULT '',"
    " tenant text NOT NULL DEFAULT '',"
    " plan text NOT NULL DEFAULT '',"
    " limits_json text NOT NULL DEFAULT '{}',"
    " budgets text NOT NULL DEFAULT '',"
    " allowed_models text NOT NULL DEFAULT '',"
    " default_priority smallint NOT NULL DEFAULT 1,"
    " max_priority smallint NOT NULL DEFAULT 1,"
    " downgrade_opt_out boolean NOT NULL DEFAULT false,"
    " revoked boolean NOT NULL DEFAULT false,"
    " created_unix_ms bigint NOT NULL,"
    " rotated_unix_ms bigint NOT NULL DEFAULT 0)",
    // v4: the lease column, as in SQLite (the same rows on both). This ledger writes no lease
    // rows (budget leases are SQLite only), so every row keeps 0.
    "ALTER TABLE ledger ADD COLUMN IF NOT EXISTS lease smallint NOT NULL DEFAULT 0",
};
static_assert(sizeof(kPgMigrations) / sizeof(kPgMigrations[0]) == kPgSchemaVersion);

Result<Ok> migrate_locked(PgConn& conn, int target_version) {
  auto r = conn.exec(
      "CREATE TABLE IF NOT EXISTS schema_version ("
      " version integer PRIMARY KEY,"
      " applied_at timestamptz NOT NULL DEFAULT now())");
  if (!r.ok()) return r.error();
  auto v = conn.exec("SELECT COALESCE(MAX(version), 0) FROM schema_version");
  if (!v.ok()) return v.error();
  int version = static_cast<int>(v->int64(0, 0));
  if (version > kPgSchemaVersion) {
    return db_error("migrate", "database schema v" + std::to_string(version) +
                                   " is newer than this binary (v" +
                                   std::to_string(kPgSchemaVersion) + ")");
  }
  for (; version < target_version; ++version) {
    auto step = conn.exec(kPgMigrations[version]);
    if (!step.ok()) return step.error();
    PgParams p;
    p.add(std::int64_t{version + 1});
    auto bump = conn.exec("INSERT INTO schema_version (version) VALUES ($1::integer)", p);
    if (!bump.ok()) return bump.error();
  }
  return Ok{};
}

}  // namespace

Result<Ok> pg_migrate(PgConn& conn, int target_version) {
  if (target_version > kPgSchemaVersion) target_version = kPgSchemaVersion;
  auto r = conn.exec("BEGIN");
  if (!r.ok()) return r.error();
  // Transaction-scoped: released by COMMIT/ROLLBACK and by the server if this process dies, so a
  // crashed replica can never leave the others waiting.
  r = conn.exec("SELECT pg_advisory_xact_lock(" + std::to_string(kMigrationLockKey) + ")");
  auto m = r.ok() ? migrate_locked(conn, target_version) : Result<Ok>(r.error());
  if (!m.ok()) {
    (void)conn.exec("ROLLBACK");
    return m;
  }
  auto c = conn.exec("COMMIT");
  if (!c.ok()) return c.error();
  return Ok{};
}

Result<int> pg_schema_version(PgConn& conn) {
  auto t = conn.exec("SELECT to_regclass('schema_version') IS NOT NULL");
  if (!t.ok()) return t.error();
  if (!t->boolean(0, 0)) return 0;
  auto v = conn.exec("SELECT COALESCE(MAX(version), 0) FROM schema_version");
  if (!v.ok()) return v.error();
  return static_cast<int>(v->int64(0, 0));
}

}  // namespace bw::store
