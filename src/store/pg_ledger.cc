#include "store/pg_ledger.h"

#include <libpq-fe.h>

#include <algorithm>

namespace bw::store {

namespace {

cost::LedgerRow read_row(const PgResult& r, int i) {
  return read_ledger_row([&](int c) { return r.text(i, c); }, [&](int c) { return r.int64(i, c); });
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
Result<Ok> check_record(const LedgerRecord& v) {
  // Budget leases are SQLite only (supports_leases() is false here): never half-written.
  if (const auto* c = std::get_if<cost::LedgerCovered>(&v)) {
    return leases_unsupported_error(c->request_id.str());
  }
  if (const auto* r = std::get_if<cost::LedgerReservation>(&v)) {
    if (r->lease) return leases_unsupported_error(r->request_id);
    for (const auto* f : {&r->request_id, &r->key_id, &r->tenant_id, &r->model}) {
      if (auto c = check_text("ledger record", *f); !c.ok()) return c;
    }
    for (const auto& b : r->budgets) {
      if (auto c = check_text("ledger record", b); !c.ok()) return c;
    }
    return Ok{};
  }
  const auto& s = std::get<cost::LedgerSettlement>(v);
  if (s.lease) return leases_unsupported_error(s.request_id);
  return check_text("ledger record", s.request_id);
}

// The record's statement: the prepared one (pipeline) or its plain SQL text (savepoint replay).
PgConn::Stmt statement_for(const LedgerRecord& v, bool prepared = true) {
  PgConn::Stmt st;
  st.prepared = prepared;
  if (const auto* r = std::get_if<cost::LedgerReservation>(&v)) {
    st.sql = prepared ? kInsertName : kInsertSql;
    st.params.add(r->request_id)
        .add(r->key_id)
        .add(r->tenant_id)
        .add(r->model)
        .add(join_lines(r->budgets))
        .add(std::max<cost::Micros>(r->reserved_micro, 0))
        .add(r->created_unix_ms);
    return st;
  }
  const auto& s = std::get<cost::LedgerSettlement>(v);
  st.sql = prepared ? kSettleName : kSettleSql;
  st.params.add(s.request_id)
      .add(settlement_status_text(s))
      .add(settlement_actual(s))
      .add(s.prompt_tokens)
      .add(s.completion_tokens)
      .add(s.settled_unix_ms);
  return st;
}

// Maps an executed record statement to the record's outcome (same errors as SqliteLedger).
Result<Ok> outcome(const LedgerRecord& v, const PgResult& r) {
  if (r.affected() > 0) return Ok{};
  if (const auto* res = std::get_if<cost::LedgerReservation>(&v)) {
    return duplicate_request_error(res->request_id);
  }
  return not_open_error(std::get<cost::LedgerSettlement>(v).request_id);
}

bool command_ok(const PgResult& r) {
  return r.get() && PQresultStatus(r.get()) == PGRES_COMMAND_OK;
}

}  // namespace

Result<std::unique_ptr<PgLedger>> PgLedger::open(PgLedgerOptions options) {
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
  ledger->start_writer();
  return ledger;
}

PgLedger::PgLedger(PgLedgerOptions options, PgConn writer)
    : QueuedLedger(options.queue_capacity, options.max_batch),
      options_(std::move(options)),
      readers_(options_.db,
               PgPoolOptions{options_.read_pool_size, options_.pool_acquire_timeout_ms}) {
  writer_conn_.emplace(std::move(writer));
}

PgLedger::~PgLedger() {
  stop_writer();
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

std::vector<Result<Ok>> PgLedger::write_batch(const Batch& batch) {
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

std::vector<Result<Ok>> PgLedger::write_one_by_one(const Batch& batch,
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

LedgerQueue::BatchOutcome PgLedger::commit_batch(const Batch& batch) {
  LedgerQueue::BatchOutcome out;
  auto ready = ensure_writer();
  if (!ready.ok()) {
    out.transaction = false;
    out.results.assign(batch.size(), ready.error());
    return out;
  }
  out.results = write_batch(batch);
  return out;
}

Result<std::vector<cost::LedgerRow>> PgLedger::query_rows(const std::string& sql,
                                                          const PgParams& params) {
  auto conn = readers_.acquire();
  if (!conn.ok()) return conn.error();
  auto r = (*conn)->exec(sql, params);
  if (!r.ok()) return r.error();
  std::vector<cost::LedgerRow> rows;
  rows.reserve(static_cast<std::size_t>(r->rows()));
  for (int i = 0; i < r->rows(); ++i) rows.push_back(read_row(*r, i));
  return rows;
}

Result<std::vector<cost::LedgerRow>> PgLedger::open_reservations() {
  return query_rows(std::string("SELECT ") + kLedgerColumns +
                        " FROM ledger WHERE status = 'open' ORDER BY created_unix_ms, request_id",
                    PgParams{});
}

Result<std::optional<cost::LedgerRow>> PgLedger::find(const std::string& request_id) {
  if (auto c = check_text("request_id", request_id); !c.ok())
    return std::optional<cost::LedgerRow>{};
  PgParams p;
  p.add(request_id);
  auto rows =
      query_rows(std::string("SELECT ") + kLedgerColumns + " FROM ledger WHERE request_id = $1", p);
  if (!rows.ok()) return rows.error();
  if (rows->empty()) return std::optional<cost::LedgerRow>{};
  return std::optional<cost::LedgerRow>(std::move(rows->front()));
}

Result<std::vector<cost::SpendAggregate>> PgLedger::settled_since(std::int64_t since_unix_ms) {
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
  std::vector<cost::SpendAggregate> out;
  out.reserve(static_cast<std::size_t>(r->rows()));
  for (int i = 0; i < r->rows(); ++i) {
    out.push_back(read_spend_aggregate([&](int c) { return r->text(i, c); },
                                       [&](int c) { return r->int64(i, c); }));
  }
  return out;
}

Result<std::vector<cost::SpendReportRow>> PgLedger::spend_report(cost::SpendGroup group,
                                                                 std::int64_t from_unix_ms,
                                                                 std::int64_t to_unix_ms) {
  // COLLATE "C": byte order like SQLite, whatever the database's default collation is.
  const char* key = spend_group_expr(
      group, "to_char(to_timestamp(div(created_unix_ms, 1000)) AT TIME ZONE 'UTC', 'YYYY-MM-DD')");
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
  std::vector<cost::SpendReportRow> out;
  out.reserve(static_cast<std::size_t>(r->rows()));
  for (int i = 0; i < r->rows(); ++i) {
    out.push_back(read_spend_report_row([&](int c) { return r->text(i, c); },
                                        [&](int c) { return r->int64(i, c); }));
  }
  return out;
}

}  // namespace bw::store
