#pragma once
// QueuedLedger: the write half of cost::Ledger that every backend shares. append_*() only queue
// (GroupCommitQueue: bounded, never blocking); the backend writes each batch in commit_batch(),
// on the queue's writer thread, and answers one result per record.

#include <atomic>
#include <cstdint>

#include "cost/ledger.h"
#include "store/ledger_rows.h"

namespace bw::store {

class QueuedLedger : public cost::Ledger {
 public:
  bool append_reservation(cost::LedgerReservation record, cost::LedgerCallback done,
                          Wake wake = Wake::kNow) final;
  bool append_settlement(cost::LedgerSettlement record, cost::LedgerCallback done,
                         Wake wake = Wake::kNow) final;
  bool append_covered(cost::LedgerCovered&& record, cost::LedgerCallback done,
                      Wake wake = Wake::kNow) final;
  bool append_covered_with(cost::LedgerCoveredFill fill, cost::LedgerCallback done,
                           Wake wake = Wake::kNow) final;
  void kick() final;
  void flush() final;
  cost::LedgerStats stats() const final;

 protected:
  using Batch = LedgerQueue::Batch;
  QueuedLedger(std::size_t queue_capacity, std::size_t max_batch);
  // Starts the writer: call once the backend is ready to commit.
  void start_writer();
  // Commits everything still queued and stops the writer. A backend's destructor calls it first,
  // while the members commit_batch() uses are still alive.
  void stop_writer();
  // One transaction for the whole batch, on the writer thread.
  virtual LedgerQueue::BatchOutcome commit_batch(const Batch& batch) = 0;
  // A covered row with to_journal set, before it is queued: the backend appends it to the
  // calling thread's journal (and says where in the record). The default has no journal.
  virtual void journal_covered(cost::LedgerCovered& /*record*/) {}
  // The backend's journal counters (LedgerStats::journaled, journal_full).
  virtual void journal_stats(cost::LedgerStats& /*out*/) const {}
  // Wake-ups asked for so far (kick(), flush(), records queued with Wake::kNow): when the count
  // moves, somebody waits for a record queued since the writer last looked.
  std::uint64_t wakes_asked() const { return wakes_asked_.load(std::memory_order_relaxed); }
  // Records queued behind the batch the writer holds.
  std::size_t queued() const { return queue_.stats().queue_depth; }

 private:
  void ask_wake(cost::Ledger::Wake wake) {
    if (wake == Wake::kNow) wakes_asked_.fetch_add(1, std::memory_order_relaxed);
  }

  LedgerQueue queue_;
  std::atomic<std::uint64_t> wakes_asked_{0};
};

}  // namespace bw::store
