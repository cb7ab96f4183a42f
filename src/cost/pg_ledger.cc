#include "cost/pg_ledger.h"

#include <libpq-fe.h>

#include <algorithm>

#include "cost/sqlite_db.h"      // db_error()
#include "cost/sqlite_ledger.h"  // join_budgets() / split_budgets(): same column encoding

namespace bw::cost {

namespace {

LedgerStatus parse_status(std::string_view s) {
  if (s == "settled") return LedgerStatus::kSettled;
  if (s == "released") return LedgerStatus::kReleased;
  return LedgerStatus::kOpen;
}

constexpr const char* kRowColumns =
    "request_id, key_id, tenant_id, model, budgets, reserved_micro, actual_micro, prompt_tokens,"
    " completion_tokens, status, created_unix_ms, settled_unix_ms";

LedgerRow read_row(const PgResult& r, int i) {
  LedgerRow row;
  row.request_id = r.text(i, 0);
  row.key_id = r.text(i, 1);
  row.tenant_id = r.text(i, 2);
  row.model = r.text(i, 3);
  row.budgets = split_budgets(r.text(i, 4));
  row.reserved_micro = r.int64(i, 5);
  row.actual_micro = r.int64(i, 6);
  row.prompt_tokens = r.int64(i, 7);
  row.completion_tokens = r.int64(i, 8);
  row.status = parse_status(r.text(i, 9));
  row.created_unix_ms = r.int64(i, 10);
  row.settled_unix_ms = r.int64(i, 11);
  return row;
}

void update_max(std::atomic<std::uint64_t>& a, std::uint64_t v) {
  std::uint64_t cur = a.load(std::memory_order_relaxed);
  while (v > cur && !a.compare_exchange_weak(cur, v, std::memory_order_relaxed)) {
  }
}

constexpr const char* kInsertName = "bw_ledger_insert";
constexpr const char* kSettleName = "bw_ledger_settle";
#define BW_LEDGER_INSERT_SQL                                                                   \
  "INSERT INTO ledger (request_id, key_id, tenant_id, model, budgets, reserved_micro, status," \
  " created_unix_ms) VALUES ($1, $2, $3, $4, $5, $6::bigint, 'open', $7::bigint)"              \
  " ON CONFLICT (request_id) DO NOTHING"
#define BW_LEDGER_SETTLE_SQL                                                              \
  "UPDATE ledger SET status = $2, actual_micro = $3::bigint, prompt_tokens = $4::bigint," \
  " completion_tokens = $5::bigint, settled_unix_ms = $6::bigint"                         \
  " WHERE request_id = $1 AND status = 'open'"
constexpr const char* kInsertSql = BW_LEDGER_INSERT_SQL;
constexpr const char* kSettleSql = BW_LEDGER_SETTLE_SQL;
// Prepared once per writer session: the batch then only ships parameters.
constexpr const char* kPrepare =
    "PREPARE bw_ledger_insert (text, text, text, text, text, bigint, bigint) "
    "AS " BW_LEDGER_INSERT_SQL
    ";"
    "PREPARE bw_ledger_settle (text, text, bigint, bigint, bigint, bigint) "
    "AS " BW_LEDGER_SETTLE_SQL;
#undef BW_LEDGER_INSERT_SQL
#undef BW_LEDGER_SETTLE_SQL

// Fields PostgreSQL text cannot hold fail the record before it reaches the batch.
Result<Ok> check_record(const std::variant<LedgerReservation, LedgerSettlement>& v) {
  if (const auto* r = std::get_if<LedgerReservation>(&v)) {
    for (const auto* f : {&r->request_id, &r->key_id, &r->tenant_id, &r->model}) {
      if (auto c = check_text("ledger record", *f); !c.ok()) return c;
    }
    for (const auto& b : r->budgets) {
      if (auto c = check_text("ledger record", b); !c.ok()) return c;
    }
    return Ok{};
  }
  return check_text("ledger record", std::get<LedgerSettlement>(v).request_id);
}

// The record's statement: the prepared one (pipeline) or its plain SQL text (savepoint replay).
PgConn::Stmt statement_for(const std::variant<LedgerReservation, LedgerSettlement>& v,
                           bool prepared = true) {
  PgConn::Stmt st;
  st.prepared = prepared;
  if (const auto* r = std::get_if<LedgerReservation>(&v)) {
    st.sql = prepared ? kInsertName : kInsertSql;
    st.params.add(r->request_id)
        .add(r->key_id)
        .add(r->tenant_id)
        .add(r->model)
        .add(join_budgets(r->budgets))
        .add(std::max<Micros>(r->reserved_micro, 0))
        .add(r->created_unix_ms);
    return st;
  }
  const auto& s = std::get<LedgerSettlement>(v);
  const bool released = s.status == LedgerStatus::kReleased;
  st.sql = prepared ? kSettleName : kSettleSql;
  st.params.add(s.request_id)
      .add(std::string_view(released ? "released" : "settled"))
      .add(released ? Micros{0} : std::max<Micros>(s.actual_micro, 0))
      .add(s.prompt_tokens)
      .add(s.completion_tokens)
      .add(s.settled_unix_ms);
  return st;
}

// Maps an executed record statement to the record's outcome (same errors as SqliteLedger).
Result<Ok> outcome(const std::variant<LedgerReservation, LedgerSettlement>& v, const PgResult& r) {
  if (r.affected() > 0) return Ok{};
  if (const auto* res = std::get_if<LedgerReservation>(&v)) {
    return make_error(409, "invalid_request_error", "duplicate_request_id",
                      "ledger already has request " + res->request_id);
  }
  return make_error(
      409, "invalid_request_error", "not_open",
      "no open ledger reservation for request " + std::get<LedgerSettlement>(v).request_id);
}

bool command_ok(const PgResult& r) {
  return r.get() && PQresultStatus(r.get()) == PGRES_COMMAND_OK;
}

}  // namespace

Result<std::unique_ptr<PgLedger>> PgLedger::open(PgLedgerOptions options) {
  if (options.queue_capacity == 0) options.queue_capacity = 1;
  if (options.max_batch == 0) options.max_batch = 1;
  const auto& sc = options.synchronous_commit;
  if (sc != "on" && sc != "remote_write" && sc != "remote_apply") {
    return make_error(500, "server_error", "invalid_config",
                      "ledger synchronous_commit must be on, remote_write or remote_apply");
  }
  auto writer = PgConn::connect(options.db);
  if (!writer.ok()) return writer.error();
  auto m = pg_migrate(*writer);
  if (!m.ok()) return m.error();
  std::unique_ptr<PgLedger> ledger(new PgLedger(std::move(options), std::move(*writer)));
  auto ready = ledger->ensure_writer();
  if (!ready.ok()) return ready.error();
  ledger->writer_ = std::thread([l = ledger.get()] { l->writer_loop(); });
  return ledger;
}

PgLedger::PgLedger(PgLedgerOptions options, PgConn writer)
    : options_(std::move(options)),
      readers_(options_.db,
               PgPoolOptions{options_.read_pool_size, options_.pool_acquire_timeout_ms}) {
  writer_conn_.emplace(std::move(writer));
}

PgLedger::~PgLedger() {
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
  }
  work_cv_.notify_all();
  if (writer_.joinable()) writer_.join();
}

bool PgLedger::enqueue(Pending p) {
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

bool PgLedger::append_reservation(LedgerReservation record, LedgerCallback done) {
  return enqueue(Pending{std::move(record), std::move(done)});
}

bool PgLedger::append_settlement(LedgerSettlement record, LedgerCallback done) {
  return enqueue(Pending{std::move(record), std::move(done)});
}

void PgLedger::flush() {
  std::unique_lock lock(mu_);
  const std::uint64_t target = enqueued_;
  done_cv_.wait(lock, [&] { return completed_ >= target; });
}

void PgLedger::writer_loop() {
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

Result<Ok> PgLedger::ensure_writer() {
  if (writer_conn_ && writer_prepared_ && writer_conn_->alive()) return Ok{};
  writer_prepared_ = false;
  // Lost, or left mid-pipeline/mid-transaction by an error: start from a clean session.
  if (!writer_conn_ || !writer_conn_->alive()) {
    writer_conn_.reset();
    auto c = PgConn::connect(options_.db);
    if (!c.ok()) return c.error();
    writer_conn_.emplace(std::move(*c));
  }
  const std::string setup =
      "SET synchronous_commit = " + options_.synchronous_commit + ";" + kPrepare;
  auto r = writer_conn_->exec(setup);
  if (!r.ok()) {
    writer_conn_.reset();
    return r.error();
  }
  writer_prepared_ = true;
  return Ok{};
}

std::vector<Result<Ok>> PgLedger::write_batch(const std::deque<Pending>& batch) {
  std::vector<Result<Ok>> results;
  results.reserve(batch.size());
  for (const auto& p : batch) results.push_back(check_record(p.record));

  std::vector<PgConn::Stmt> stmts;
  std::vector<std::size_t> index;  // stmts[k + 1] executes batch[index[k]]
  stmts.reserve(batch.size() + 2);
  stmts.push_back({"BEGIN", {}, false});
  for (std::size_t i = 0; i < batch.size(); ++i) {
    if (!results[i].ok()) continue;
    stmts.push_back(statement_for(batch[i].record));
    index.push_back(i);
  }
  stmts.push_back({"COMMIT", {}, false});
  if (index.empty()) return results;

  auto sent = writer_conn_->pipeline(stmts);
  if (!sent.ok()) {
    for (std::size_t i : index) results[i] = sent.error();
    return results;
  }
  const auto& out = *sent;
  bool all_ran = command_ok(out.front());
  for (std::size_t k = 0; k < index.size() && all_ran; ++k) all_ran = command_ok(out[k + 1]);
  if (!all_ran) {
    // A statement failed and aborted the transaction: nothing of the batch was written.
    (void)writer_conn_->exec("ROLLBACK");
    if (!writer_conn_->healthy()) {
      const Error e = writer_conn_->error("ledger batch");
      for (std::size_t i : index) results[i] = e;
      return results;
    }
    return write_one_by_one(batch, results);
  }
  if (!command_ok(out.back())) {
    const Error e = writer_conn_->error("ledger commit", out.back().get());
    for (std::size_t i : index) results[i] = e;
    return results;
  }
  for (std::size_t k = 0; k < index.size(); ++k) {
    results[index[k]] = outcome(batch[index[k]].record, out[k + 1]);
  }
  return results;
}

std::vector<Result<Ok>> PgLedger::write_one_by_one(const std::deque<Pending>& batch,
                                                   const std::vector<Result<Ok>>& checked) {
  std::vector<Result<Ok>> results = checked;
  auto fail_all = [&](const Error& e) {
    for (std::size_t i = 0; i < batch.size(); ++i) {
      if (checked[i].ok()) results[i] = e;
    }
    return results;
  };
  auto begin = writer_conn_->exec("BEGIN");
  if (!begin.ok()) return fail_all(begin.error());
  for (std::size_t i = 0; i < batch.size(); ++i) {
    if (!checked[i].ok()) continue;
    auto sp = writer_conn_->exec("SAVEPOINT bw_record");
    if (!sp.ok()) {
      (void)writer_conn_->exec("ROLLBACK");
      return fail_all(sp.error());
    }
    const auto st = statement_for(batch[i].record, /*prepared=*/false);
    auto r = writer_conn_->exec(st.sql, st.params);
    if (r.ok()) {
      results[i] = outcome(batch[i].record, *r);
      continue;
    }
    results[i] = r.error();
    auto back = writer_conn_->exec("ROLLBACK TO SAVEPOINT bw_record");
    if (!back.ok()) {
      (void)writer_conn_->exec("ROLLBACK");
      return fail_all(back.error());
    }
  }
  auto commit = writer_conn_->exec("COMMIT");
  if (!commit.ok()) return fail_all(commit.error());
  return results;
}

void PgLedger::commit_batch(std::deque<Pending>& batch) {
  std::vector<Result<Ok>> results;
  auto ready = ensure_writer();
  if (ready.ok()) {
    results = write_batch(batch);
    commits_.fetch_add(1, std::memory_order_relaxed);
  } else {
    results.assign(batch.size(), ready.error());
  }
  update_max(max_batch_seen_, batch.size());
  for (std::size_t i = 0; i < batch.size(); ++i) {
    (results[i].ok() ? records_committed_ : records_failed_)
        .fetch_add(1, std::memory_order_relaxed);
    if (batch[i].done) batch[i].done(results[i]);
  }
  batch.clear();
}

Result<std::vector<LedgerRow>> PgLedger::query_rows(const std::string& sql,
                                                    const PgParams& params) {
  auto conn = readers_.acquire();
  if (!conn.ok()) return conn.error();
  auto r = (*conn)->exec(sql, params);
  if (!r.ok()) return r.error();
  std::vector<LedgerRow> rows;
  rows.reserve(static_cast<std::size_t>(r->rows()));
  for (int i = 0; i < r->rows(); ++i) rows.push_back(read_row(*r, i));
  return rows;
}

Result<std::vector<LedgerRow>> PgLedger::open_reservations() {
  return query_rows(std::string("SELECT ") + kRowColumns +
                        " FROM ledger WHERE status = 'open' ORDER BY created_unix_ms, request_id",
                    PgParams{});
}

Result<std::optional<LedgerRow>> PgLedger::find(const std::string& request_id) {
  if (auto c = check_text("request_id", request_id); !c.ok()) return std::optional<LedgerRow>{};
  PgParams p;
  p.add(request_id);
  auto rows =
      query_rows(std::string("SELECT ") + kRowColumns + " FROM ledger WHERE request_id = $1", p);
  if (!rows.ok()) return rows.error();
  if (rows->empty()) return std::optional<LedgerRow>{};
  return std::optional<LedgerRow>(std::move(rows->front()));
}

Result<std::vector<SpendAggregate>> PgLedger::settled_since(std::int64_t since_unix_ms) {
  auto conn = readers_.acquire();
  if (!conn.ok()) return conn.error();
  PgParams p;
  p.add(since_unix_ms);
  auto r = (*conn)->exec(
      "SELECT budgets, key_id, tenant_id, created_unix_ms - (created_unix_ms % 86400000) AS day,"
      " SUM(actual_micro)::bigint FROM ledger WHERE status = 'settled'"
      " AND created_unix_ms >= $1::bigint GROUP BY budgets, key_id, tenant_id, day",
      p);
  if (!r.ok()) return r.error();
  std::vector<SpendAggregate> out;
  out.reserve(static_cast<std::size_t>(r->rows()));
  for (int i = 0; i < r->rows(); ++i) {
    SpendAggregate a;
    a.budgets = split_budgets(r->text(i, 0));
    a.key_id = r->text(i, 1);
    a.tenant_id = r->text(i, 2);
    a.day_start_unix_ms = r->int64(i, 3);
    a.actual_micro = r->int64(i, 4);
    out.push_back(std::move(a));
  }
  return out;
}

Result<std::vector<SpendReportRow>> PgLedger::spend_report(SpendGroup group,
                                                           std::int64_t from_unix_ms,
                                                           std::int64_t to_unix_ms) {
  // COLLATE "C": byte order like SQLite, whatever the database's default collation is.
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
      key = "to_char(to_timestamp(div(created_unix_ms, 1000)) AT TIME ZONE 'UTC', 'YYYY-MM-DD')";
      break;
  }
  const std::string sql = std::string("SELECT (") + key +
                          ") COLLATE \"C\" AS g, COUNT(*),"
                          " SUM(CASE WHEN status = 'settled' THEN actual_micro ELSE 0 END)::bigint,"
                          " SUM(CASE WHEN status = 'open' THEN reserved_micro ELSE 0 END)::bigint,"
                          " SUM(prompt_tokens)::bigint, SUM(completion_tokens)::bigint FROM ledger"
                          " WHERE created_unix_ms >= $1::bigint AND created_unix_ms < $2::bigint"
                          " GROUP BY g ORDER BY g";
  auto conn = readers_.acquire();
  if (!conn.ok()) return conn.error();
  PgParams p;
  p.add(from_unix_ms).add(to_unix_ms);
  auto r = (*conn)->exec(sql, p);
  if (!r.ok()) return r.error();
  std::vector<SpendReportRow> out;
  out.reserve(static_cast<std::size_t>(r->rows()));
  for (int i = 0; i < r->rows(); ++i) {
    SpendReportRow row;
    row.group = r->text(i, 0);
    row.requests = r->int64(i, 1);
    row.actual_micro = r->int64(i, 2);
    row.open_reserved_micro = r->int64(i, 3);
    row.prompt_tokens = r->int64(i, 4);
    row.completion_tokens = r->int64(i, 5);
    out.push_back(std::move(row));
  }
  return out;
}

LedgerStats PgLedger::stats() const {
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
