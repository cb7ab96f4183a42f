#include "cost/sqlite_ledger.h"

#include <sqlite3.h>

#include <algorithm>

namespace bw::cost {

const char* to_string(LedgerStatus s) {
  switch (s) {
    case LedgerStatus::kOpen:
      return "open";
    case LedgerStatus::kSettled:
      return "settled";
    case LedgerStatus::kReleased:
      return "released";
  }
  return "open";
}

namespace {

LedgerStatus parse_status(std::string_view s) {
  if (s == "settled") return LedgerStatus::kSettled;
  if (s == "released") return LedgerStatus::kReleased;
  return LedgerStatus::kOpen;
}

constexpr const char* kRowColumns =
    "request_id, key_id, tenant_id, model, budgets, reserved_micro, actual_micro, prompt_tokens,"
    " completion_tokens, status, created_unix_ms, settled_unix_ms";

LedgerRow read_row(const Statement& st) {
  LedgerRow row;
  row.request_id = st.column_text(0);
  row.key_id = st.column_text(1);
  row.tenant_id = st.column_text(2);
  row.model = st.column_text(3);
  row.budgets = split_budgets(st.column_text(4));
  row.reserved_micro = st.column_int(5);
  row.actual_micro = st.column_int(6);
  row.prompt_tokens = st.column_int(7);
  row.completion_tokens = st.column_int(8);
  row.status = parse_status(st.column_text(9));
  row.created_unix_ms = st.column_int(10);
  row.settled_unix_ms = st.column_int(11);
  return row;
}

void update_max(std::atomic<std::uint64_t>& a, std::uint64_t v) {
  std::uint64_t cur = a.load(std::memory_order_relaxed);
  while (v > cur && !a.compare_exchange_weak(cur, v, std::memory_order_relaxed)) {
  }
}

}  // namespace

std::string join_budgets(const std::vector<std::string>& ids) {
  std::string out;
  for (const auto& id : ids) {
    if (!out.empty()) out.push_back('\n');
    out += id;
  }
  return out;
}

std::vector<std::string> split_budgets(std::string_view s) {
  std::vector<std::string> out;
  while (!s.empty()) {
    const auto nl = s.find('\n');
    const auto part = s.substr(0, nl);
    if (!part.empty()) out.emplace_back(part);
    if (nl == std::string_view::npos) break;
    s.remove_prefix(nl + 1);
  }
  return out;
}

Result<std::unique_ptr<SqliteLedger>> SqliteLedger::open(SqliteLedgerOptions options) {
  if (options.queue_capacity == 0) options.queue_capacity = 1;
  if (options.max_batch == 0) options.max_batch = 1;
  auto writer = SqliteDb::open(options.path, options.synchronous_full, options.busy_timeout_ms);
  if (!writer.ok()) return writer.error();
  auto m = migrate(*writer);
  if (!m.ok()) return m.error();
  auto reader = SqliteDb::open(options.path, options.synchronous_full, options.busy_timeout_ms);
  if (!reader.ok()) return reader.error();
  std::unique_ptr<SqliteLedger> ledger(
      new SqliteLedger(std::move(options), std::move(*writer), std::move(*reader)));
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
  ledger->insert_st_ = std::move(*ins);
  ledger->settle_st_ = std::move(*upd);
  ledger->writer_ = std::thread([l = ledger.get()] { l->writer_loop(); });
  return ledger;
}

SqliteLedger::SqliteLedger(SqliteLedgerOptions options, SqliteDb writer, SqliteDb reader)
    : options_(std::move(options)), writer_db_(std::move(writer)), reader_db_(std::move(reader)) {}

SqliteLedger::~SqliteLedger() {
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
  }
  work_cv_.notify_all();
  if (writer_.joinable()) writer_.join();
}

bool SqliteLedger::enqueue(Pending p) {
  {
    std::lock_guard lock(mu_);
    if (stopping_ || queue_.size() >= options_.queue_capacity) {
      queue_full_.fetch_add(1, std::memory_order_relaxed);
      return false;
    }
    queue_.push_back(std::move(p));
    ++enqueued_;
  }
  work_cv_.notify_one();
  return true;
}

bool SqliteLedger::append_reservation(LedgerReservation record, LedgerCallback done) {
  return enqueue(Pending{std::move(record), std::move(done)});
}

bool SqliteLedger::append_settlement(LedgerSettlement record, LedgerCallback done) {
  return enqueue(Pending{std::move(record), std::move(done)});
}

void SqliteLedger::flush() {
  std::unique_lock lock(mu_);
  const std::uint64_t target = enqueued_;
  done_cv_.wait(lock, [&] { return completed_ >= target; });
}

void SqliteLedger::writer_loop() {
  std::deque<Pending> batch;
  for (;;) {
    {
      std::unique_lock lock(mu_);
      work_cv_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
      if (queue_.empty()) return;  // stopping and drained
      const std::size_t n = std::min(queue_.size(), options_.max_batch);
      for (std::size_t i = 0; i < n; ++i) {
        batch.push_back(std::move(queue_.front()));
        queue_.pop_front();
      }
    }
    const std::size_t n = batch.size();
    commit_batch(batch);
    {
      std::lock_guard lock(mu_);
      completed_ += n;
    }
    done_cv_.notify_all();
  }
}

Result<Ok> SqliteLedger::write_one(const Pending& p) {
  if (const auto* r = std::get_if<LedgerReservation>(&p.record)) {
    insert_st_.reset();
    insert_st_.bind(1, r->request_id)
        .bind(2, r->key_id)
        .bind(3, r->tenant_id)
        .bind(4, r->model)
        .bind(5, join_budgets(r->budgets))
        .bind(6, std::max<Micros>(r->reserved_micro, 0))
        .bind(7, r->created_unix_ms);
    const int rc = insert_st_.step();
    insert_st_.reset();
    if (rc == SQLITE_DONE) return Ok{};
    if ((rc & 0xff) == SQLITE_CONSTRAINT) {
      return make_error(409, "invalid_request_error", "duplicate_request_id",
                        "ledger already has request " + r->request_id);
    }
    return db_error("ledger insert", writer_db_.last_error());
  }
  const auto& s = std::get<LedgerSettlement>(p.record);
  const bool released = s.status == LedgerStatus::kReleased;
  settle_st_.reset();
  settle_st_.bind(1, s.request_id)
      .bind(2, std::string_view(released ? "released" : "settled"))
      .bind(3, released ? Micros{0} : std::max<Micros>(s.actual_micro, 0))
      .bind(4, s.prompt_tokens)
      .bind(5, s.completion_tokens)
      .bind(6, s.settled_unix_ms);
  const int rc = settle_st_.step();
  settle_st_.reset();
  if (rc != SQLITE_DONE) return db_error("ledger settle", writer_db_.last_error());
  if (sqlite3_changes(writer_db_.get()) == 0) {
    return make_error(409, "invalid_request_error", "not_open",
                      "no open ledger reservation for request " + s.request_id);
  }
  return Ok{};
}

void SqliteLedger::commit_batch(std::deque<Pending>& batch) {
  std::vector<Result<Ok>> results;
  results.reserve(batch.size());
  auto begin = writer_db_.exec("BEGIN IMMEDIATE");
  if (begin.ok()) {
    for (const auto& p : batch) results.push_back(write_one(p));
    auto commit = writer_db_.exec("COMMIT");
    if (!commit.ok()) {
      (void)writer_db_.exec("ROLLBACK");
      for (auto& r : results) r = commit.error();
    }
    commits_.fetch_add(1, std::memory_order_relaxed);
  } else {
    for (std::size_t i = 0; i < batch.size(); ++i) results.push_back(begin.error());
  }
  update_max(max_batch_seen_, batch.size());
  for (std::size_t i = 0; i < batch.size(); ++i) {
    (results[i].ok() ? records_committed_ : records_failed_)
        .fetch_add(1, std::memory_order_relaxed);
    if (batch[i].done) batch[i].done(results[i]);
  }
  batch.clear();
}

Result<std::vector<LedgerRow>> SqliteLedger::query_rows(const char* sql, const std::string* arg) {
  std::lock_guard lock(reader_mu_);
  auto st = Statement::prepare(reader_db_, sql);
  if (!st.ok()) return st.error();
  if (arg) st->bind(1, *arg);
  std::vector<LedgerRow> rows;
  int rc;
  while ((rc = st->step()) == SQLITE_ROW) rows.push_back(read_row(*st));
  if (rc != SQLITE_DONE) return db_error("ledger query", reader_db_.last_error());
  return rows;
}

Result<std::vector<LedgerRow>> SqliteLedger::open_reservations() {
  const std::string sql = std::string("SELECT ") + kRowColumns +
                          " FROM ledger WHERE status = 'open' ORDER BY created_unix_ms";
  return query_rows(sql.c_str(), nullptr);
}

Result<std::optional<LedgerRow>> SqliteLedger::find(const std::string& request_id) {
  const std::string sql =
      std::string("SELECT ") + kRowColumns + " FROM ledger WHERE request_id = ?1";
  auto rows = query_rows(sql.c_str(), &request_id);
  if (!rows.ok()) return rows.error();
  if (rows->empty()) return std::optional<LedgerRow>{};
  return std::optional<LedgerRow>(std::move(rows->front()));
}

Result<std::vector<SpendAggregate>> SqliteLedger::settled_since(std::int64_t since_unix_ms) {
  std::lock_guard lock(reader_mu_);
  auto st = Statement::prepare(
      reader_db_,
      "SELECT budgets, key_id, tenant_id, created_unix_ms - (created_unix_ms % 86400000) AS day,"
      " SUM(actual_micro) FROM ledger WHERE status = 'settled' AND created_unix_ms >= ?1"
      " GROUP BY budgets, key_id, tenant_id, day");
  if (!st.ok()) return st.error();
  st->bind(1, since_unix_ms);
  std::vector<SpendAggregate> out;
  int rc;
  while ((rc = st->step()) == SQLITE_ROW) {
    SpendAggregate a;
    a.budgets = split_budgets(st->column_text(0));
    a.key_id = st->column_text(1);
    a.tenant_id = st->column_text(2);
    a.day_start_unix_ms = st->column_int(3);
    a.actual_micro = st->column_int(4);
    out.push_back(std::move(a));
  }
  if (rc != SQLITE_DONE) return db_error("ledger query", reader_db_.last_error());
  return out;
}

Result<std::vector<SpendReportRow>> SqliteLedger::spend_report(SpendGroup group,
                                                               std::int64_t from_unix_ms,
                                                               std::int64_t to_unix_ms) {
  const char* key = "key_id";
  switch (group) {
    case SpendGroup::kKey:
      key = "key_id";
      break;
    case SpendGroup::kTenant:
      key = "tenant_id";
      break;
    case SpendGroup::kModel:
      key = "model";
      break;
    case SpendGroup::kDay:
      key = "strftime('%Y-%m-%d', created_unix_ms / 1000, 'unixepoch')";
      break;
  }
  const std::string sql =
      std::string("SELECT ") + key +
      " AS g, COUNT(*), SUM(CASE WHEN status = 'settled' THEN actual_micro ELSE 0 END),"
      " SUM(CASE WHEN status = 'open' THEN reserved_micro ELSE 0 END), SUM(prompt_tokens),"
      " SUM(completion_tokens) FROM ledger WHERE created_unix_ms >= ?1 AND created_unix_ms < ?2"
      " GROUP BY g ORDER BY g";
  std::lock_guard lock(reader_mu_);
  auto st = Statement::prepare(reader_db_, sql);
  if (!st.ok()) return st.error();
  st->bind(1, from_unix_ms).bind(2, to_unix_ms);
  std::vector<SpendReportRow> out;
  int rc;
  while ((rc = st->step()) == SQLITE_ROW) {
    SpendReportRow r;
    r.group = st->column_text(0);
    r.requests = st->column_int(1);
    r.actual_micro = st->column_int(2);
    r.open_reserved_micro = st->column_int(3);
    r.prompt_tokens = st->column_int(4);
    r.completion_tokens = st->column_int(5);
    out.push_back(std::move(r));
  }
  if (rc != SQLITE_DONE) return db_error("ledger report", reader_db_.last_error());
  return out;
}

LedgerStats SqliteLedger::stats() const {
  LedgerStats s;
  s.records_committed = records_committed_.load(std::memory_order_relaxed);
  s.records_failed = records_failed_.load(std::memory_order_relaxed);
  s.commits = commits_.load(std::memory_order_relaxed);
  s.queue_full = queue_full_.load(std::memory_order_relaxed);
  s.max_batch = max_batch_seen_.load(std::memory_order_relaxed);
  std::lock_guard lock(mu_);
  s.queue_depth = queue_.size();
  return s;
}

}  // namespace bw::cost
