#include "store/queued_ledger.h"

#include <utility>

namespace bw::store {

QueuedLedger::QueuedLedger(std::size_t queue_capacity, std::size_t max_batch)
    : queue_(queue_capacity, max_batch) {}

void QueuedLedger::start_writer() {
  queue_.start([this](const Batch& batch) { return commit_batch(batch); }, "bw-ledger");
}

void QueuedLedger::stop_writer() {
  queue_.stop();
}

bool QueuedLedger::append_reservation(cost::LedgerReservation record, cost::LedgerCallback done,
                                      Wake wake) {
  ask_wake(wake);
  return queue_.push(std::move(record), std::move(done), wake == Wake::kNow);
}

bool QueuedLedger::append_settlement(cost::LedgerSettlement record, cost::LedgerCallback done,
                                     Wake wake) {
  ask_wake(wake);
  return queue_.push(std::move(record), std::move(done), wake == Wake::kNow);
}

bool QueuedLedger::append_covered(cost::LedgerCovered&& record, cost::LedgerCallback done,
                                  Wake wake) {
  if (record.to_journal) journal_covered(record);
  ask_wake(wake);
  return queue_.push(std::move(record), std::move(done), wake == Wake::kNow);
}

bool QueuedLedger::append_covered_with(cost::LedgerCoveredFill fill, cost::LedgerCallback done,
                                       Wake wake) {
  ask_wake(wake);
  return queue_.push_made<cost::LedgerCovered>(
      [&](cost::LedgerCovered& record) {
        fill(record);
        if (record.to_journal) journal_covered(record);
      },
      std::move(done), wake == Wake::kNow);
}

void QueuedLedger::kick() {
  ask_wake(Wake::kNow);
  queue_.kick();
}

void QueuedLedger::flush() {
  ask_wake(Wake::kNow);
  queue_.flush();
}

cost::LedgerStats QueuedLedger::stats() const {
  const GroupCommitStats s = queue_.stats();
  cost::LedgerStats out;
  out.records_committed = s.records_committed;
  out.records_failed = s.records_failed;
  out.commits = s.commits;
  out.queue_full = s.queue_full;
  out.max_batch = s.max_batch;
  out.queue_depth = s.queue_depth;
  journal_stats(out);
  return out;
}

}  // namespace bw::store
