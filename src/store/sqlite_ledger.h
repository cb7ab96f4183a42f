#pragma once
// SQLite implementation of Ledger: WAL journal, one writer thread that group-commits everything
// queued since its last commit in a single transaction (one WAL fsync), then runs the callbacks.
//
// Durability: with journal_mode=WAL, synchronous=FULL syncs the WAL at every commit, so a record
// whose callback reported ok survives kill -9 AND power loss. synchronous=NORMAL only syncs at
// checkpoints: it survives a process crash (the OS holds the pages) but a power cut can drop the
// last commits, i.e. a forwarded request's reservation. The gateway picks one from
// `ledger.durability` (process = NORMAL, its default; machine = FULL). Group commit shares the
// fsync of FULL among the whole batch.
//
// Checkpoints (copying the WAL into the database file, with its syncs) run on a thread and a
// connection of their own, never inside a group commit: the writer's connection has no
// auto-checkpoint. A PASSIVE checkpoint starts once the WAL holds kCheckpointFrames pages more
// than the last checkpoint copied; it never blocks the writer. Under steady writes a passive
// checkpoint cannot let the WAL start over (new frames arrive while it runs), so once the WAL
// reaches kRestartFrames a RESTART checkpoint waits for the writer to be between two transactions
// and resets it: that bounds the WAL file (about 40 MB with 4 KiB pages).
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_set>
#include <utility>
#include <vector>

#include "cost/ledger.h"
#include "store/covered_journal.h"
#include "store/queued_ledger.h"
#include "store/sqlite_db.h"

namespace bw::store {

struct SqliteLedgerOptions {
  std::string path = "bellwether.db";
  std::size_t queue_capacity = 65'536;  // records waiting for the writer; beyond: append fails
  std::size_t max_batch = 4'096;        // records per transaction
  bool synchronous_full = true;         // see above; false = NORMAL (not power-loss safe)
  int busy_timeout_ms = 5'000;          // wait for other connections' locks
  // The writer's connection writes each commit's WAL frames with one system call
  // (store/sqlite_wal_gather.h) instead of two per frame.
  bool gather_wal_writes = true;
  // Covered-row journals (store/covered_journal.h), one per event loop that settles covered
  // rows: files `<path>.covered.<n>` of journal_bytes each. 0 = none: every covered row waits
  // for its group commit. Journals left by a process that died are replayed at open() whatever
  // this says. Not with synchronous_full: a journal is not synced, a machine-durable commit is.
  std::size_t journals = 0;
  std::uint64_t journal_bytes = 8u << 20;
  // The writer and the checkpointer share the event loop's core when the gateway is pinned to
  // one, and a group commit of a few hundred rows is 1-2 ms of CPU in one burst (a passive
  // checkpoint of ~1,000 pages ~4 ms), which every request in flight waits out. While the
  // writer writes rows nobody waits for (covered rows a journal holds), it lets whatever else
  // wants the core run (sched_yield) each time it has run this long, between two INSERT
  // statements; it writes the batch through once somebody waits for a record (a kick or flush
  // since it took the batch before) or when it falls behind (half a batch queued behind it).
  // The checkpointer does the same before and during a passive checkpoint: it starts the
  // write-back of the WAL in pieces (write_back_wal), then lets the core go between the pages it
  // copies (with gather_wal_writes). 100 µs keeps the event loop's waits behind them mostly under
  // half a millisecond (at 300 µs, pieces of 0.4-0.7 ms were common). 0: never.
  std::chrono::microseconds yield_after{100};
};

class SqliteLedger final : public QueuedLedger {
 public:
  // Opens the file, applies migrations and starts the writer thread.
  static Result<std::unique_ptr<SqliteLedger>> open(SqliteLedgerOptions options);
  // Commits everything still queued, then stops the writer and the checkpointer.
  ~SqliteLedger() override;

  static constexpr int kCheckpointFrames = 1'000;
  static constexpr int kRestartFrames = 10'000;
  // Checkpoints run so far (PASSIVE and RESTART).
  std::uint64_t checkpoints() const { return checkpoints_.load(std::memory_order_relaxed); }
  // Times the writer let the core go in the middle of a batch, and the checkpointer in the
  // middle of a passive checkpoint (options.yield_after).
  std::uint64_t yields() const { return yields_.load(std::memory_order_relaxed); }
  std::uint64_t checkpoint_yields() const {
    return checkpoint_yields_.load(std::memory_order_relaxed);
  }
  // Multi-row statements prepared while a batch was being written (not ahead of it).
  std::uint64_t prepared_in_batches() const {
    return prepared_in_batches_.load(std::memory_order_relaxed);
  }

  bool supports_leases() const override { return true; }
  bool journal_room_for(const cost::LedgerCoveredText& row) override;
  // Covered rows replayed from journals at open() (left by a process that died).
  std::uint64_t replayed() const { return replayed_; }
  Result<std::vector<cost::LedgerRow>> open_reservations() override;
  Result<std::vector<cost::SpendAggregate>> settled_since(std::int64_t since_unix_ms) override;
  Result<std::optional<cost::LedgerRow>> find(const std::string& request_id) override;
  Result<std::vector<cost::SpendReportRow>> spend_report(cost::SpendGroup group,
                                                         std::int64_t from_unix_ms,
                                                         std::int64_t to_unix_ms) override;

 private:
  SqliteLedger(SqliteLedgerOptions options, SqliteDb writer, SqliteDb reader, SqliteDb checkpoint);
  // The writer connection's WAL hook: after each commit, with the WAL's size in frames.
  static int on_wal_commit(void* self, sqlite3* db, const char* name, int frames);
  void checkpoint_loop();
  // Before a passive checkpoint, in pieces: starts writing back the WAL's dirty pages, so that
  // the checkpoint's sync of the WAL (synchronous=NORMAL or FULL) waits for the device instead of
  // submitting them all in one go (~1,000 pages, ms of CPU).
  void write_back_wal();
  void stop_checkpointer();
  LedgerQueue::BatchOutcome commit_batch(const Batch& batch) override;
  void journal_covered(cost::LedgerCovered& record) override;
  void journal_stats(cost::LedgerStats& out) const override;
  // Replays every journal of this database that no live process holds, then keeps
  // options_.journals of them (emptied) as this process's own.
  Result<Ok> open_journals();
  Result<Ok> replay_journal(int index);
  // The index of the calling thread's journal (claimed at its first call), or -1.
  int thread_journal();
  // In the batch's transaction: how far each journal with rows in it is applied now.
  Result<Ok> write_journal_marks(const Batch& batch);
  Result<Ok> write_one(const LedgerRecord& record);
  Result<Ok> write_covered(const cost::LedgerCovered& record);
  // The rows of batch[rows[...]] (all reservations of requests, or all covered rows), several
  // per INSERT; a statement that fails is undone by SQLite and its rows go one by one instead,
  // each to its own result.
  void write_rows(const Batch& batch, const std::vector<std::size_t>& rows, bool covered,
                  std::vector<Result<Ok>>& results);
  void lower_later(const std::string& lease_id, cost::Micros actual);
  // An error that SQLite answers by rolling back the whole transaction (some I/O errors) leaves
  // the connection in autocommit: nothing more of the batch may be written outside it.
  bool transaction_lost() const;
  Error transaction_lost_error() const;
  Result<Ok> flush_lease_lowering();
  // At a batch's start: whether the writer may let the core go during it (yield_after).
  void start_pieces();
  // Between two statements of a batch: lets the core go if this piece has run yield_after and
  // still nobody waits and the writer is not behind.
  void end_piece_if_due();
  // A covered row that was not written (its record or its batch failed) never lowered its lease
  // row: the lease is never closed, so its row keeps that spend reserved until reconciled.
  void owe_lease(const cost::LedgerCovered& record);
  void owe_leases_of(const Batch& batch);
  // Steps a statement that returns no rows (BEGIN, COMMIT) and resets it.
  Result<Ok> step_once(Statement& st, std::string_view what);
  Result<std::vector<cost::LedgerRow>> query_rows(const char* sql, const std::string* arg);

  const SqliteLedgerOptions options_;
  SqliteDb writer_db_;  // writer thread only
  Statement insert_st_;
  Statement settle_st_;
  Statement insert_closed_st_;
  // Covered rows, any number (store/covered_rows_table.h); those of one key, all settled.
  Statement insert_covered_st_;
  Statement insert_shared_settled_st_;
  Statement lower_lease_st_;
  // A batch's runs of rows go up to kMaxRowsPerInsert to one statement: SQLite's work per
  // statement (its start and end, opening and closing cursors) is about a quarter of a small
  // row's cost. Covered rows go through insert_covered_st_ (store/covered_rows_table.h), one
  // statement for any number of them. Reservations go through multi-row INSERT ... VALUES
  // statements; when every row of one has the same key, tenant, model and budgets (the rows of
  // one key), a `shared` statement takes those four strings once. Statements of every size up
  // to kExactRows, and above it of multiples of kRowStep: a run takes at most two statements
  // below kMaxRowsPerInsert rows.
  static constexpr std::size_t kMaxRowsPerInsert = 64;
  static constexpr std::size_t kExactRows = 16;
  static constexpr std::size_t kRowStep = 8;
  // The rows of the next INSERT when `left` rows of a run are left.
  static std::size_t rows_per_insert(std::size_t left);
  // The reservations' statement for `rows` rows (prepared at first use; null if it failed to
  // prepare).
  Statement* many(bool shared, std::size_t rows);
  // [shared * (max + 1) + rows]
  static constexpr std::size_t kStatementKinds = 2;
  std::vector<Statement> many_st_;
  std::vector<bool> many_failed_;
  bool in_batch_ = false;  // writer thread: inside commit_batch
  std::atomic<std::uint64_t> prepared_in_batches_{0};
  std::vector<std::size_t> run_;  // writer thread only: scratch of commit_batch
  // Puts a run of rows in the order of their request ids (see commit_batch).
  void order_by_request_id(const Batch& batch, std::vector<std::size_t>& rows);
  struct RowOrder {
    std::uint64_t high;
    std::uint64_t low;
    std::size_t at;  // the row's place in the batch: equal keys keep their order
  };
  std::vector<RowOrder> order_;  // writer thread only: scratch of order_by_request_id
  std::vector<std::size_t> later_;
  // The budgets column of the rows being bound (kept: their room is reused).
  std::string budget_text_[kMaxRowsPerInsert];
  Statement fold_lease_st_;
  Statement close_lease_st_;
  // Lease rows to lower in the current transaction: (lease id, sum of covered actuals).
  std::vector<std::pair<std::string, cost::Micros>> lowering_;
  std::unordered_set<std::string> owing_leases_;  // writer thread only; grows only on failures
  Statement begin_st_;
  Statement commit_st_;

  // Journals: [0, own_) are this process's, the rest were adopted and replayed at open().
  struct JournalRef {
    std::string slot;  // the file's name, the ledger_journal row's key
    std::uint64_t generation = 0;
    std::unique_ptr<CoveredJournal> journal;
  };
  std::vector<JournalRef> journals_;  // fixed once the writer starts
  std::size_t own_ = 0;
  Statement journal_mark_st_;        // a journal's row changed
  Statement journal_first_mark_st_;  // or made, the first time
  // Writer thread only: per journal, the end of its last record in the batch (0: none).
  std::vector<CoveredJournal::Position> marks_;
  const std::uint64_t id_;  // tells this ledger apart in the per-thread journal cache
  std::mutex claim_mu_;
  std::size_t claimed_ = 0;  // guarded by claim_mu_
  std::atomic<std::uint64_t> journaled_{0};
  std::atomic<std::uint64_t> journal_full_{0};
  std::uint64_t replayed_ = 0;
  bool last_commit_ok_ = false;  // writer thread: whether commit_batch's COMMIT succeeded
  // Writer thread only: the batch's pieces (start_pieces, end_piece_if_due).
  bool yielding_ = false;
  std::uint64_t wakes_at_take_ = 0;
  std::chrono::steady_clock::time_point piece_start_;
  std::atomic<std::uint64_t> yields_{0};

  std::mutex reader_mu_;
  SqliteDb reader_db_;

  SqliteDb checkpoint_db_;  // checkpointer thread only
  std::atomic<bool> checkpoint_wanted_{false};
  std::atomic<int> backfilled_{0};  // WAL frames the last checkpoint copied
  std::mutex checkpoint_mu_;
  std::condition_variable checkpoint_cv_;
  bool checkpoint_stop_ = false;  // guarded by checkpoint_mu_
  std::atomic<std::uint64_t> checkpoints_{0};
  std::atomic<std::uint64_t> checkpoint_yields_{0};
  std::thread checkpointer_;
};

}  // namespace bw::store
