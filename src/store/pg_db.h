#pragma once
// Thin RAII over libpq shared by PgLedger and PgKeyStore: connection options, one connection with
// deadlines on every wait, a small bounded pool for synchronous (admin path) queries, and the
// schema migrations of the PostgreSQL cost database.
//
// Thread safety: a PgConn is used by one thread at a time. PgPool is thread-safe; a leased
// connection belongs to the leasing thread until the lease is destroyed.
//
// Secrets: no Error produced here contains the password of the connection string. libpq's own
// messages are scrubbed of it, and the target is described as user@host:port/db only.
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.h"

typedef struct pg_conn PGconn;
typedef struct pg_result PGresult;

namespace bw::store {

// Current PostgreSQL schema version (same numbering as the SQLite file): 1 ledger,
// 2 ledger.budgets + indexes, 3 api_keys, 4 ledger.lease.
constexpr int kPgSchemaVersion = 4;

struct PgConnectOptions {
  // "postgresql://user:pw@127.0.0.1:5432/db?sslmode=require" or "host=... dbname=..."; libpq's
  // environment variables (PGHOST, PGPASSWORD, ...) fill what it leaves out.
  std::string conninfo;
  int connect_timeout_s = 5;          // per connection attempt
  int statement_timeout_ms = 30'000;  // server-side cap on any one statement; 0 = none
  int io_timeout_ms = 30'000;         // client-side deadline for one round trip / pipeline
  std::string application_name = "bellwether";
};

// A PGresult owned; empty (null) when the query never produced one.
class PgResult {
 public:
  PgResult() = default;
  explicit PgResult(PGresult* r) : r_(r) {}
  PgResult(PgResult&& o) noexcept : r_(o.r_) { o.r_ = nullptr; }
  PgResult& operator=(PgResult&& o) noexcept;
  PgResult(const PgResult&) = delete;
  PgResult& operator=(const PgResult&) = delete;
  ~PgResult();

  PGresult* get() const { return r_; }
  int rows() const;
  std::string text(int row, int col) const;
  std::int64_t int64(int row, int col) const;  // 0 for NULL or non-numbers
  bool boolean(int row, int col) const;        // "t"
  std::int64_t affected() const;               // PQcmdTuples
  std::string sqlstate() const;                // "" when none

 private:
  PGresult* r_ = nullptr;
};

// Text-format query parameters. Values must not contain NUL bytes (check_text() first).
class PgParams {
 public:
  PgParams& add(std::string_view v);
  PgParams& add(std::int64_t v);
  int size() const { return static_cast<int>(values_.size()); }
  const char* const* values() const { return ptrs_.data(); }

 private:
  std::vector<std::string> values_;
  std::vector<const char*> ptrs_;
  void relink();
};

class PgConn {
 public:
  static Result<PgConn> connect(const PgConnectOptions& options);
  PgConn() = default;
  PgConn(PgConn&& o) noexcept;
  PgConn& operator=(PgConn&& o) noexcept;
  PgConn(const PgConn&) = delete;
  PgConn& operator=(const PgConn&) = delete;
  ~PgConn();

  PGconn* get() const { return conn_; }
  bool healthy() const;  // connected and not inside a failed/unfinished transaction
  // healthy(), after reading whatever the server sent while the connection sat idle: a server
  // restart or pg_terminate_backend() shows up here instead of failing the next query.
  bool alive();
  const std::string& target() const { return target_; }

  // Runs one statement (or several without parameters) and returns the last result; any status
  // other than COMMAND_OK/TUPLES_OK becomes an Error (with the SQLSTATE in `sqlstate` if given).
  Result<PgResult> exec(std::string_view sql, std::string* sqlstate = nullptr);
  Result<PgResult> exec(std::string_view sql, const PgParams& params,
                        std::string* sqlstate = nullptr);

  // One pipelined round trip: sends every statement, then a Sync, then reads every result.
  // Results come back in order; after a failed statement the rest report PGRES_PIPELINE_ABORTED.
  // Returns an Error only when the connection itself failed (results are then unknown).
  struct Stmt {
    std::string_view sql;  // or the name of a statement made with PREPARE when `prepared`
    PgParams params;
    bool prepared = false;
  };
  Result<std::vector<PgResult>> pipeline(const std::vector<Stmt>& stmts);

  // Error text for `what`, from libpq's last message, scrubbed of the password.
  Error error(std::string_view what, const PGresult* r = nullptr) const;

 private:
  PgConn(PGconn* c, std::string target, std::string password, int io_timeout_ms)
      : conn_(c),
        target_(std::move(target)),
        password_(std::move(password)),
        io_timeout_ms_(io_timeout_ms) {}
  Result<Ok> wait_socket(bool for_write, std::chrono::steady_clock::time_point deadline);
  Result<Ok> flush_all(std::chrono::steady_clock::time_point deadline);
  Result<PgResult> next_result(std::chrono::steady_clock::time_point deadline, bool& none);
  Result<PgResult> finish_single(std::string_view what, std::string* sqlstate);

  PGconn* conn_ = nullptr;
  std::string target_;    // user@host:port/db, for messages
  std::string password_;  // only to scrub messages
  int io_timeout_ms_ = 30'000;
};

// Bounded pool for synchronous queries. acquire() reuses an idle connection, opens a new one while
// fewer than max_size exist, or waits up to acquire_timeout_ms for one to come back (then 503).
struct PgPoolOptions {
  std::size_t max_size = 4;
  int acquire_timeout_ms = 2'000;
};

class PgPool {
 public:
  class Lease {
   public:
    Lease(PgPool* pool, std::unique_ptr<PgConn> c) : pool_(pool), conn_(std::move(c)) {}
    Lease(Lease&& o) noexcept = default;
    Lease& operator=(Lease&&) = delete;
    ~Lease();
    PgConn* operator->() const { return conn_.get(); }
    PgConn& operator*() const { return *conn_; }

   private:
    PgPool* pool_;
    std::unique_ptr<PgConn> conn_;
  };

  PgPool(PgConnectOptions conn, PgPoolOptions pool);
  Result<Lease> acquire();
  std::size_t open_connections() const;

 private:
  void give_back(std::unique_ptr<PgConn> c);

  const PgConnectOptions conn_options_;
  const PgPoolOptions options_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::vector<std::unique_ptr<PgConn>> idle_;
  std::size_t total_ = 0;  // idle + leased + being opened
};

// Applies migrations up to `target_version` in ONE transaction holding a transaction-scoped
// advisory lock, so replicas starting together serialise and each step runs exactly once (the
// statements are idempotent as well). Refuses a database newer than this binary.
Result<Ok> pg_migrate(PgConn& conn, int target_version = kPgSchemaVersion);
// COALESCE(MAX(version), 0) of schema_version; 0 when the table does not exist.
Result<int> pg_schema_version(PgConn& conn);

// "user@host:port/db" for messages (never the password); "invalid connection string" on error.
std::string describe_conninfo(const std::string& conninfo);
// Rejects values PostgreSQL text cannot hold (NUL bytes).
Result<Ok> check_text(std::string_view field, std::string_view v);

}  // namespace bw::store
