#pragma once
// SQLite implementation of Ledger: WAL journal, one writer thread that group-commits everything
// queued since its last commit in a single transaction (one WAL fsync), then runs the callbacks.
//
// Durability: with journal_mode=WAL, synchronous=FULL syncs the WAL at every commit, so a record
// whose callback reported ok survives kill -9 AND power loss. synchronous=NORMAL only syncs at
// checkpoints: it survives a process crash (the OS holds the pages) but a power cut can drop the
// last commits, i.e. a forwarded request's reservation — so FULL is the default. Group commit is
// what makes FULL affordable: the fsync cost is shared by the whole batch.
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <variant>

#include "cost/ledger.h"
#include "cost/sqlite_db.h"

namespace bw::cost {

struct SqliteLedgerOptions {
  std::string path = "bellwether.db";
  std::size_t queue_capacity = 65'536;  // records waiting for the writer; beyond: append fails
  std::size_t max_batch = 4'096;        // records per transaction
  bool synchronous_full = true;         // see above; false = NORMAL (not power-loss safe)
  int busy_timeout_ms = 5'000;          // wait for other connections' locks
};

class SqliteLedger final : public Ledger {
 public:
  // Opens the file, applies migrations and starts the writer thread.
  static Result<std::unique_ptr<SqliteLedger>> open(SqliteLedgerOptions options);
  // Commits everything still queued, then stops the writer.
  ~SqliteLedger() override;

  bool append_reservation(LedgerReservation record, LedgerCallback done) override;
  bool append_settlement(LedgerSettlement record, LedgerCallback done) override;
  void flush() override;

  Result<std::vector<LedgerRow>> open_reservations() override;
  Result<std::vector<SpendAggregate>> settled_since(std::int64_t since_unix_ms) override;
  Result<std::optional<LedgerRow>> find(const std::string& request_id) override;
  Result<std::vector<SpendReportRow>> spend_report(SpendGroup group, std::int64_t from_unix_ms,
                                                   std::int64_t to_unix_ms) override;
  LedgerStats stats() const override;

 private:
  struct Pending {
    std::variant<LedgerReservation, LedgerSettlement> record;
    LedgerCallback done;
  };
  SqliteLedger(SqliteLedgerOptions options, SqliteDb writer, SqliteDb reader);
  bool enqueue(Pending p);
  void writer_loop();
  Result<Ok> write_one(const Pending& p);
  void commit_batch(std::deque<Pending>& batch);
  Result<std::vector<LedgerRow>> query_rows(const char* sql, const std::string* arg);

  const SqliteLedgerOptions options_;
  SqliteDb writer_db_;  // writer thread only
  Statement insert_st_;
  Statement settle_st_;

  std::mutex reader_mu_;
  SqliteDb reader_db_;

  mutable std::mutex mu_;
  std::condition_variable work_cv_;
  std::condition_variable done_cv_;
  std::deque<Pending> queue_;
  bool stopping_ = false;
  std::uint64_t enqueued_ = 0;   // guarded by mu_
  std::uint64_t completed_ = 0;  // guarded by mu_

  std::atomic<std::uint64_t> records_committed_{0};
  std::atomic<std::uint64_t> records_failed_{0};
  std::atomic<std::uint64_t> commits_{0};
  std::atomic<std::uint64_t> queue_full_{0};
  std::atomic<std::uint64_t> max_batch_seen_{0};

  std::thread writer_;
};

// Budgets column encoding (ids never contain '\n').
std::string join_budgets(const std::vector<std::string>& ids);
std::vector<std::string> split_budgets(std::string_view s);

}  // namespace bw::cost
