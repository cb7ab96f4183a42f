#pragma once
// PostgreSQL implementation of Ledger, for several gateway replicas sharing one ledger. Same
// semantics as SqliteLedger (same rows, same per-record errors, same reports), so recovery and the
// admin spend report work unchanged.
//
// Writes: append_*() only queue (bounded; never block an event loop). One writer thread with its
// own connection takes everything queued and sends it as ONE pipelined round trip: BEGIN, one
// prepared INSERT/UPDATE per record, COMMIT. Callbacks run after the COMMIT's answer. Expected
// per-record failures (duplicate request_id, settling a row that is not open) are detected from
// the affected-row count and do not abort the batch; an unexpected statement error aborts the
// transaction, and the batch is then replayed record by record under savepoints so that only the
// bad record fails. A lost connection fails the whole batch (503) and the next batch reconnects.
//
// Durability: the writer session runs with synchronous_commit = on (whatever the server default
// is), so an acked record is in the server's WAL on disk. A COMMIT whose answer was lost is
// reported as failed although it may have committed: the request is then refused, never forwarded
// unpaid; the row stays open and recovery holds it until reconciled.
//
// Reads are synchronous on the caller's thread through a small bounded pool.
// Thread-safe.
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "cost/ledger.h"
#include "store/pg_db.h"
#include "store/queued_ledger.h"

namespace bw::store {

struct PgLedgerOptions {
  PgConnectOptions db;                  // connection string and timeouts
  std::size_t queue_capacity = 65'536;  // records waiting for the writer; beyond: append fails
  std::size_t max_batch = 1'024;        // records per transaction (one pipelined round trip)
  std::size_t read_pool_size = 4;       // connections for synchronous queries
  int pool_acquire_timeout_ms = 2'000;  // wait for a free read connection, then 503
  // Session setting of the writer: "on" (default), "remote_write" or "remote_apply" (replicated
  // setups). "local"/"off" are refused: an acked reservation must survive a server crash.
  std::string synchronous_commit = "on";
};

class PgLedger final : public QueuedLedger {
 public:
  // Connects, applies migrations (advisory-locked: replicas may start together) and starts the
  // writer thread.
  static Result<std::unique_ptr<PgLedger>> open(PgLedgerOptions options);
  // Commits everything still queued, then stops the writer.
  ~PgLedger() override;

  Result<std::vector<cost::LedgerRow>> open_reservations() override;
  Result<std::vector<cost::SpendAggregate>> settled_since(std::int64_t since_unix_ms) override;
  Result<std::optional<cost::LedgerRow>> find(const std::string& request_id) override;
  Result<std::vector<cost::SpendReportRow>> spend_report(cost::SpendGroup group,
                                                         std::int64_t from_unix_ms,
                                                         std::int64_t to_unix_ms) override;

 private:
  PgLedger(PgLedgerOptions options, PgConn writer);
  Result<Ok> ensure_writer();
  LedgerQueue::BatchOutcome commit_batch(const Batch& batch) override;
  std::vector<Result<Ok>> write_batch(const Batch& batch);
  std::vector<Result<Ok>> write_one_by_one(const Batch& batch,
                                           const std::vector<Result<Ok>>& checked);
  Result<std::vector<cost::LedgerRow>> query_rows(const std::string& sql, const PgParams& params);

  const PgLedgerOptions options_;
  std::optional<PgConn> writer_conn_;  // writer thread only (after open)
  bool writer_prepared_ = false;       // session set up (synchronous_commit, PREPARE)
  PgPool readers_;
};

}  // namespace bw::store
