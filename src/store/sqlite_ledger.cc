#include "store/sqlite_ledger.h"

#include <sqlite3.h>

#include <algorithm>

namespace bw::store {

namespace {

cost::LedgerRow read_row(const Statement& st) {
  return read_ledger_row([&](int c) { return st.column_text(c); },
                         [&](int c) { return st.column_int(c); });
}

}  // namespace

Result<std::unique_ptr<SqliteLedger>> SqliteLedger::open(SqliteLedgerOptions options) {
  auto writer = SqliteDb::open(options.path, options.synchronous_full, options.busy_timeout_ms);
  if (!writer.ok()) return writer.error();
  auto m = migrate(*writer);
  if (!m.ok()) return m.error();
  auto reader = SqliteDb::open(options.path, options.synchronous_full, options.busy_timeout_ms);
  if (!reader.ok()) return reader.error();
  auto checkpoint = SqliteDb::open(options.path, options.synchronous_full, options.busy_timeout_ms);
  if (!checkpoint.ok()) return checkpoint.error();
  std::unique_ptr<SqliteLedger> ledger(new SqliteLedger(
      std::move(options), std::move(*writer), std::move(*reader), std::move(*checkpoint)));
  // The schema's CHECK (status IN ('open','settled','released')) makes SQLite build and drop a
  // temporary b-tree for the IN list at every row written, about a third of the writer's work
  // per request. This connection only ever writes those three values (the literal 'open' and
  // settlement_status_text()), so it skips the check; every other connection still has it.
  auto nocheck = ledger->writer_db_.exec("PRAGMA ignore_check_constraints=ON");
  if (!nocheck.ok()) return nocheck.error();
  auto ins = Statement::prepare(
      ledger->writer_db_,
      "INSERT INTO ledger (request_id, key_id, tenant_id, model, budgets, reserved_micro, status,"
      " created_unix_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'open', ?7)");
  if (!ins.ok()) return ins.error();
  auto upd = Statement::prepare(
      ledger->writer_db_,
      "UPDATE ledger SET status = ?2, actual_micro = ?3, prompt_tokens = ?4,"
      " completion_tokens = ?5, settled_unix_ms = ?6 WHERE request_id = ?1 AND status = 'open'");
  if (!upd.ok()) return upd.error();
  // Prepared once: sqlite3_exec would parse the text again at every group commit.
  auto begin = Statement::prepare(ledger->writer_db_, "BEGIN IMMEDIATE");
  if (!begin.ok()) return begin.error();
  auto commit = Statement::prepare(ledger->writer_db_, "COMMIT");
  if (!commit.ok()) return commit.error();
  ledger->insert_st_ = std::move(*ins);
  ledger->settle_st_ = std::move(*upd);
  ledger->begin_st_ = std::move(*begin);
  ledger->commit_st_ = std::move(*commit);
  // Replaces the connection's auto-checkpoint (itself a WAL hook): checkpoints move to their
  // own thread (see the header).
  sqlite3_wal_hook(ledger->writer_db_.get(), &SqliteLedger::on_wal_commit, ledger.get());
  ledger->checkpointer_ = std::thread([l = ledger.get()] { l->checkpoint_loop(); });
  ledger->start_writer();
  return ledger;
}

SqliteLedger::SqliteLedger(SqliteLedgerOptions options, SqliteDb writer, SqliteDb reader,
                           SqliteDb checkpoint)
    : QueuedLedger(options.queue_capacity, options.max_batch),
      options_(std::move(options)),
      writer_db_(std::move(writer)),
      reader_db_(std::move(reader)),
      checkpoint_db_(std::move(checkpoint)) {}

SqliteLedger::~SqliteLedger() {
  stop_writer();
  stop_checkpointer();
}

int SqliteLedger::on_wal_commit(void* self, sqlite3*, const char*, int frames) {
  auto* l = static_cast<SqliteLedger*>(self);
  // Frames not yet copied by a checkpoint; fewer frames than were copied: the WAL started over.
  int base = l->backfilled_.load(std::memory_order_relaxed);
  if (frames < base) base = 0;
  if (frames - base >= kCheckpointFrames && !l->checkpoint_wanted_.exchange(true)) {
    { std::lock_guard lock(l->checkpoint_mu_); }  // no lost wake-up between check and wait
    l->checkpoint_cv_.notify_one();
  }
  return SQLITE_OK;
}

void SqliteLedger::checkpoint_loop() {
  for (;;) {
    {
      std::unique_lock lock(checkpoint_mu_);
      checkpoint_cv_.wait(lock, [&] { return checkpoint_stop_ || checkpoint_wanted_.load(); });
      if (checkpoint_stop_) return;
    }
    checkpoint_wanted_.store(false);
    int log = 0;
    int done = 0;
    // Failures (e.g. SQLITE_BUSY) leave the WAL as it is; the next commit asks again.
    sqlite3_wal_checkpoint_v2(checkpoint_db_.get(), nullptr, SQLITE_CHECKPOINT_PASSIVE, &log,
                              &done);
    checkpoints_.fetch_add(1, std::memory_order_relaxed);
    if (log >= kRestartFrames) {
      sqlite3_wal_checkpoint_v2(checkpoint_db_.get(), nullptr, SQLITE_CHECKPOINT_RESTART, &log,
                                &done);
      checkpoints_.fetch_add(1, std::memory_order_relaxed);
    }
    // The next checkpoint starts kCheckpointFrames after what this one copied, not at every
    // commit while the WAL (which a passive checkpoint cannot reset) stays above the threshold.
    backfilled_.store(done > 0 ? done : 0, std::memory_order_relaxed);
  }
}

void SqliteLedger::stop_checkpointer() {
  {
    std::lock_guard lock(checkpoint_mu_);
    checkpoint_stop_ = true;
  }
  checkpoint_cv_.notify_one();
  if (checkpointer_.joinable()) checkpointer_.join();
}

Result<Ok> SqliteLedger::write_one(const LedgerRecord& record) {
  if (const auto* r = std::get_if<cost::LedgerReservation>(&record)) {
    // The record and `budgets` outlive the step: bound without copies.
    const std::string budgets = join_lines(r->budgets);
    insert_st_.reset();
    insert_st_.bind_static(1, r->request_id)
        .bind_static(2, r->key_id)
        .bind_static(3, r->tenant_id)
        .bind_static(4, r->model)
        .bind_static(5, budgets)
        .bind(6, std::max<cost::Micros>(r->reserved_micro, 0))
        .bind(7, r->created_unix_ms);
    const int rc = insert_st_.step();
    insert_st_.reset();
    if (rc == SQLITE_DONE) return Ok{};
    if ((rc & 0xff) == SQLITE_CONSTRAINT) return duplicate_request_error(r->request_id);
    return db_error("ledger insert", writer_db_.last_error());
  }
  const auto& s = std::get<cost::LedgerSettlement>(record);
  settle_st_.reset();
  settle_st_.bind_static(1, s.request_id)
      .bind_static(2, settlement_status_text(s))
      .bind(3, settlement_actual(s))
      .bind(4, s.prompt_tokens)
      .bind(5, s.completion_tokens)
      .bind(6, s.settled_unix_ms);
  const int rc = settle_st_.step();
  settle_st_.reset();
  if (rc != SQLITE_DONE) return db_error("ledger settle", writer_db_.last_error());
  if (sqlite3_changes(writer_db_.get()) == 0) return not_open_error(s.request_id);
  return Ok{};
}

Result<Ok> SqliteLedger::step_once(Statement& st, std::string_view what) {
  const int rc = st.step();
  if (rc == SQLITE_DONE) {
    st.reset();
    return Ok{};
  }
  Error e = db_error(what, writer_db_.last_error());
  st.reset();
  return e;
}

LedgerQueue::BatchOutcome SqliteLedger::commit_batch(const Batch& batch) {
  LedgerQueue::BatchOutcome out;
  out.results.reserve(batch.size());
  auto begin = step_once(begin_st_, "begin");
  if (!begin.ok()) {
    out.transaction = false;
    out.results.assign(batch.size(), begin.error());
    return out;
  }
  for (const auto& item : batch) out.results.push_back(write_one(item.record));
  auto commit = step_once(commit_st_, "commit");
  if (!commit.ok()) {
    (void)writer_db_.exec("ROLLBACK");
    for (auto& r : out.results) r = commit.error();
  }
  return out;
}

Result<std::vector<cost::LedgerRow>> SqliteLedger::query_rows(const char* sql,
                                                              const std::string* arg) {
  std::lock_guard lock(reader_mu_);
  auto st = Statement::prepare(reader_db_, sql);
  if (!st.ok()) return st.error();
  if (arg) st->bind(1, *arg);
  std::vector<cost::LedgerRow> rows;
  int rc;
  while ((rc = st->step()) == SQLITE_ROW) rows.push_back(read_row(*st));
  if (rc != SQLITE_DONE) return db_error("ledger query", reader_db_.last_error());
  return rows;
}

Result<std::vector<cost::LedgerRow>> SqliteLedger::open_reservations() {
  const std::string sql = std::string("SELECT ") + kLedgerColumns +
                          " FROM ledger WHERE status = 'open' ORDER BY created_unix_ms";
  return query_rows(sql.c_str(), nullptr);
}

Result<std::optional<cost::LedgerRow>> SqliteLedger::find(const std::string& request_id) {
  const std::string sql =
      std::string("SELECT ") + kLedgerColumns + " FROM ledger WHERE request_id = ?1";
  auto rows = query_rows(sql.c_str(), &request_id);
  if (!rows.ok()) return rows.error();
  if (rows->empty()) return std::optional<cost::LedgerRow>{};
  return std::optional<cost::LedgerRow>(std::move(rows->front()));
}

Result<std::vector<cost::SpendAggregate>> SqliteLedger::settled_since(std::int64_t since_unix_ms) {
  std::lock_guard lock(reader_mu_);
  auto st = Statement::prepare(
      reader_db_,
      "SELECT budgets, key_id, tenant_id, created_unix_ms - (created_unix_ms % 86400000) AS day,"
      " SUM(actual_micro) FROM ledger WHERE status = 'settled' AND created_unix_ms >= ?1"
      " GROUP BY budgets, key_id, tenant_id, day");
  if (!st.ok()) return st.error();
  st->bind(1, since_unix_ms);
  std::vector<cost::SpendAggregate> out;
  const auto text = [&](int c) { return st->column_text(c); };
  const auto int64 = [&](int c) { return st->column_int(c); };
  int rc;
  while ((rc = st->step()) == SQLITE_ROW) out.push_back(read_spend_aggregate(text, int64));
  if (rc != SQLITE_DONE) return db_error("ledger query", reader_db_.last_error());
  return out;
}

Result<std::vector<cost::SpendReportRow>> SqliteLedger::spend_report(cost::SpendGroup group,
                                                                     std::int64_t from_unix_ms,
                                                                     std::int64_t to_unix_ms) {
  const std::string sql =
      std::string("SELECT ") +
      spend_group_expr(group, "strftime('%Y-%m-%d', created_unix_ms / 1000, 'unixepoch')") +
      " AS g, COUNT(*), SUM(CASE WHEN status = 'settled' THEN actual_micro ELSE 0 END),"
      " SUM(CASE WHEN status = 'open' THEN reserved_micro ELSE 0 END), SUM(prompt_tokens),"
      " SUM(completion_tokens) FROM ledger WHERE created_unix_ms >= ?1 AND created_unix_ms < ?2"
      " GROUP BY g ORDER BY g";
  std::lock_guard lock(reader_mu_);
  auto st = Statement::prepare(reader_db_, sql);
  if (!st.ok()) return st.error();
  st->bind(1, from_unix_ms).bind(2, to_unix_ms);
  std::vector<cost::SpendReportRow> out;
  const auto text = [&](int c) { return st->column_text(c); };
  const auto int64 = [&](int c) { return st->column_int(c); };
  int rc;
  while ((rc = st->step()) == SQLITE_ROW) out.push_back(read_spend_report_row(text, int64));
  if (rc != SQLITE_DONE) return db_error("ledger report", reader_db_.last_error());
  return out;
}

}  // namespace bw::store
