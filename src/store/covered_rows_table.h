#pragma once
// bw_covered_rows: a SQLite table-valued function that reads covered rows (cost::LedgerCovered)
// straight from the ledger writer's batch, so that one small INSERT ... SELECT writes any number
// of them.
//
// A multi-row INSERT ... VALUES statement holds, per row, its share of the program (~1.2 KB)
// and its parameters (~0.7 KB), which the statement reads once per group commit: a 64-row
// statement was ~120 KB that left the caches between two commits. This statement's program
// and registers are those of one row, run in a loop; each value is handed to SQLite where it
// is (text bound SQLITE_STATIC), not copied into a parameter first.
//
// Thread safety: one statement, on the connection it was registered on (the writer thread).
#include <cstddef>

#include "common/result.h"
#include "cost/ledger.h"
#include "store/ledger_rows.h"
#include "store/sqlite_db.h"

namespace bw::store {

// The rows one statement writes: batch[rows[0]], ..., batch[rows[n - 1]], each a
// cost::LedgerCovered. They must outlive the statement's step.
struct CoveredRowsSource {
  const LedgerQueue::Batch* batch = nullptr;
  const std::size_t* rows = nullptr;
  std::size_t n = 0;
};

// What a covered row bills: nothing when released.
cost::Micros covered_actual(const cost::LedgerCovered& c);

// Registers bw_covered_rows on `db` (this connection only).
Result<Ok> register_covered_rows_table(SqliteDb& db);

// INSERT OR FAIL of the rows of the source bound to ?1 (bind_covered_rows) into the ledger: as
// several rows' INSERT ... VALUES OR FAIL, it stops at a row that fails its constraints and
// keeps the rows before it (sqlite3_changes() counts them).
extern const char* const kInsertCoveredRows;
// The same for rows that all have the same key, tenant, model and budgets, bound once as ?2 to ?5
// (the rows of one key), and are all settled (none released): SQLite asks for five columns of
// each row fewer, each a call.
extern const char* const kInsertSharedSettledRows;

// Binds `source` as ?1 of a kInsertCoveredRows or kInsertSharedSettledRows statement.
void bind_covered_rows(Statement& st, const CoveredRowsSource* source);

}  // namespace bw::store
