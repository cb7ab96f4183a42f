#pragma once
// Ledger: the durable record of every reservation and settlement. A reservation must be durable
// before the request is forwarded, so that a crash (kill -9, power loss) can never lose spend.
//
// Contract
//  - append_*() never blocks on I/O: it queues the record and returns false at once when the
//    bounded queue is full (the gateway then refuses the request with 503: money never fails
//    open). The callback runs exactly once, on the ledger's writer thread, after the record's
//    transaction is durable (ok) or has failed (error). It must be cheap and must not call back
//    into the ledger's append functions synchronously with a full queue; the gateway posts it to
//    the request's executor.
//  - Wake::kDeferred queues without waking the writer: the caller promises a kick() soon (the
//    gateway kicks once per event-loop round, so that the records of a round share one group
//    commit instead of the writer waking for each). flush() and stop wake the writer too.
//  - A settlement updates the open row of its request_id; settling an unknown or already closed
//    request fails that record only.
//  - Query functions are synchronous, run on the caller's thread and may be slow: use them at
//    startup (recovery), from the admin API, or off the request path.
//  - Leases (lease.h): a reservation with `lease` set is a budget lease's row; append_covered()
//    writes the already settled row of a request the lease covered and, in the same transaction,
//    lowers the lease row's reserved_micro by the request's actual cost (never below 0). Only
//    backends whose supports_leases() is true take them (SQLite); the others refuse the record.
//  - Implementations are thread-safe.
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/inline_id.h"
#include "common/result.h"
#include "cost/money.h"

namespace bw::cost {

enum class LedgerStatus : std::uint8_t { kOpen, kSettled, kReleased };
const char* to_string(LedgerStatus s);

struct LedgerReservation {
  std::string request_id;
  std::string key_id;
  std::string tenant_id;
  std::string model;
  std::vector<std::string> budgets;  // ids the reservation was taken against
  Micros reserved_micro = 0;
  std::int64_t created_unix_ms = 0;
  bool lease = false;  // a budget lease's row (lease.h), not a request's

  const std::string& key() const { return key_id; }
  const std::string& tenant() const { return tenant_id; }
  const std::vector<std::string>& budget_ids() const { return budgets; }
};

// The key, tenant and budgets that every covered row of one API key repeats: made once per key
// and shared by its rows, so that a row neither copies nor frees them.
struct LedgerParty {
  std::string key_id;
  std::string tenant_id;
  std::vector<std::string> budgets;

  friend bool operator==(const LedgerParty&, const LedgerParty&) = default;
};

// A request covered by a lease: its one row, written already closed, and the lease row lowered.
// The ledger's queue holds one of these per covered request (in a variant with the other records,
// and with its callback): the fields are ordered so that a queue item is 256 bytes, four cache
// lines, with no room that a row does not use.
struct LedgerCovered {
  // Kept inline: copied on the event loop, freed on the writer thread (common/inline_id.h).
  InlineId request_id;
  InlineId model;        // inline too: model names often pass std::string's 15 characters
  std::string lease_id;  // the lease row whose reserved_micro goes down by actual_micro
  // The row's key, tenant and budgets, made once per API key and shared by its rows, so that a
  // row neither copies nor frees them (set_party() makes one for a single row). Null: all three
  // are empty.
  std::shared_ptr<const LedgerParty> party;
  Micros reserved_micro = 0;  // the request's share of the lease while it ran (information)
  Micros actual_micro = 0;    // 0 for kReleased
  std::int64_t prompt_tokens = 0;
  std::int64_t completion_tokens = 0;
  std::int64_t created_unix_ms = 0;
  std::int64_t settled_unix_ms = 0;
  // Set by the ledger: where in its journal (below) the row's record ends.
  std::uint64_t journal_end = 0;
  std::uint64_t journal_seq = 0;
  // Set by the ledger: which of its journals holds the row (-1: none).
  std::int32_t journal = -1;
  LedgerStatus status = LedgerStatus::kSettled;  // kSettled or kReleased
  // Set by the caller after journal_room() said yes on this thread: the ledger appends the row to
  // the calling thread's journal before it queues it, and the row is durable from then on.
  bool to_journal = false;

  const std::string& key() const { return party ? party->key_id : empty_text(); }
  const std::string& tenant() const { return party ? party->tenant_id : empty_text(); }
  const std::vector<std::string>& budget_ids() const {
    return party ? party->budgets : empty_list();
  }
  // A party of this row's own.
  void set_party(std::string key_id, std::string tenant_id, std::vector<std::string> budgets) {
    party = std::make_shared<const LedgerParty>(
        LedgerParty{std::move(key_id), std::move(tenant_id), std::move(budgets)});
  }

 private:
  static const std::string& empty_text() {
    static const std::string empty;
    return empty;
  }
  static const std::vector<std::string>& empty_list() {
    static const std::vector<std::string> empty;
    return empty;
  }
};

// The strings of a covered row, before the row is built: what its journal record's size depends
// on (Ledger::journal_room).
struct LedgerCoveredText {
  std::string_view request_id;
  std::string_view key;
  std::string_view tenant;
  std::string_view model;
  const std::vector<std::string>* budgets = nullptr;  // not null

  static LedgerCoveredText of(const LedgerCovered& row) {
    return {row.request_id, row.key(), row.tenant(), row.model, &row.budget_ids()};
  }
};

// Sets a covered row's fields in the ledger's own record (Ledger::append_covered_with): a plain
// function and its context, called at most once, on the appending thread. It must not throw.
struct LedgerCoveredFill {
  void (*fill)(void* context, LedgerCovered& row) = nullptr;
  void* context = nullptr;
  void operator()(LedgerCovered& row) const { fill(context, row); }
};

struct LedgerSettlement {
  std::string request_id;
  LedgerStatus status = LedgerStatus::kSettled;  // kSettled or kReleased
  Micros actual_micro = 0;                       // 0 for kReleased
  std::int64_t prompt_tokens = 0;
  std::int64_t completion_tokens = 0;
  std::int64_t settled_unix_ms = 0;
  // Closes a lease row (status settled): it keeps the actual it carries, normally 0 (its spend is
  // in its requests' rows).
  bool lease = false;
};

struct LedgerRow {
  std::string request_id;
  std::string key_id;
  std::string tenant_id;
  std::string model;
  std::vector<std::string> budgets;  // empty for rows written before schema v2
  Micros reserved_micro = 0;
  Micros actual_micro = 0;
  std::int64_t prompt_tokens = 0;
  std::int64_t completion_tokens = 0;
  LedgerStatus status = LedgerStatus::kOpen;
  std::int64_t created_unix_ms = 0;
  std::int64_t settled_unix_ms = 0;
  bool lease = false;  // a budget lease's row
};

// Settled spend of one (budgets, key, tenant, UTC day) group; used to rebuild budget counters.
struct SpendAggregate {
  std::vector<std::string> budgets;
  std::string key_id;
  std::string tenant_id;
  std::int64_t day_start_unix_ms = 0;
  Micros actual_micro = 0;
};

enum class SpendGroup { kKey, kTenant, kModel, kDay };

struct SpendReportRow {
  std::string group;  // key id, tenant id, model, or "YYYY-MM-DD" (UTC)
  std::int64_t requests = 0;
  Micros actual_micro = 0;
  Micros open_reserved_micro = 0;
  std::int64_t prompt_tokens = 0;
  std::int64_t completion_tokens = 0;
};

struct LedgerStats {
  std::uint64_t records_committed = 0;
  std::uint64_t records_failed = 0;
  std::uint64_t commits = 0;  // transactions, i.e. fsyncs of the WAL with synchronous=FULL
  std::uint64_t queue_full = 0;
  std::uint64_t max_batch = 0;
  std::size_t queue_depth = 0;
  std::uint64_t journaled = 0;     // covered rows made durable by a journal, without a wait
  std::uint64_t journal_full = 0;  // covered rows that found their journal full (they waited)
};

using LedgerCallback = std::function<void(const Result<Ok>&)>;

class Ledger {
 public:
  virtual ~Ledger() = default;
  enum class Wake { kNow, kDeferred };
  [[nodiscard]] virtual bool append_reservation(LedgerReservation record, LedgerCallback done,
                                                Wake wake = Wake::kNow) = 0;
  [[nodiscard]] virtual bool append_settlement(LedgerSettlement record, LedgerCallback done,
                                               Wake wake = Wake::kNow) = 0;
  // A covered request's row plus the lease row lowered, in one transaction (see the contract).
  // `record` is moved from once, into the queue (a row is a few hundred bytes); a refused one is
  // left as it was.
  [[nodiscard]] virtual bool append_covered(LedgerCovered&& record, LedgerCallback done,
                                            Wake wake = Wake::kNow) = 0;
  // append_covered() of the row that `fill` sets on a default LedgerCovered: a ledger with a
  // queue builds it in the queue's own room, where append_covered() moves a finished row in (a
  // row is a few hundred bytes). A refused row is not filled, or filled and dropped.
  [[nodiscard]] virtual bool append_covered_with(LedgerCoveredFill fill, LedgerCallback done,
                                                 Wake wake = Wake::kNow) {
    LedgerCovered row;
    fill(row);
    return append_covered(std::move(row), std::move(done), wake);
  }
  virtual bool supports_leases() const { return false; }
  // Whether the calling thread has a journal with room for `row` (whose lease_id is not set yet):
  // a row then appended with to_journal set is durable as the ledger's durability says
  // (`process`) once append_covered() returns, and nobody needs to wait for its commit. The
  // SQLite ledger with `durability: process` has journals (store/covered_journal.h); a row that
  // finds its journal full is counted (LedgerStats::journal_full).
  // journal_room_for() takes the row's strings, before the row is built.
  bool journal_room(const LedgerCovered& row) {
    return journal_room_for(LedgerCoveredText::of(row));
  }
  virtual bool journal_room_for(const LedgerCoveredText& /*row*/) { return false; }
  // Wakes the writer for the records queued with Wake::kDeferred.
  virtual void kick() = 0;
  // Waits until every record queued before the call is committed (tests, shutdown).
  virtual void flush() = 0;

  virtual Result<std::vector<LedgerRow>> open_reservations() = 0;
  // Settled rows created at or after `since_unix_ms`, grouped by (budgets, key, tenant, UTC day).
  virtual Result<std::vector<SpendAggregate>> settled_since(std::int64_t since_unix_ms) = 0;
  virtual Result<std::optional<LedgerRow>> find(const std::string& request_id) = 0;
  // Rows created in [from, to), grouped; sorted by group.
  virtual Result<std::vector<SpendReportRow>> spend_report(SpendGroup group,
                                                           std::int64_t from_unix_ms,
                                                           std::int64_t to_unix_ms) = 0;
  virtual LedgerStats stats() const = 0;
};

}  // namespace bw::cost
