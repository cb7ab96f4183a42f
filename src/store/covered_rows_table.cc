#include "store/covered_rows_table.h"

#include <sqlite3.h>

#include <algorithm>
#include <new>
#include <string>
#include <variant>
#include <vector>

#include "store/text_columns.h"

namespace bw::store {

namespace {

constexpr const char* kPointerType = "bw-covered-rows";

// The columns, in kInsertCoveredRows's order, then the hidden argument.
enum Column {
  kRequestId,
  kKeyId,
  kTenantId,
  kModel,
  kBudgets,
  kReservedMicro,
  kActualMicro,
  kPromptTokens,
  kCompletionTokens,
  kStatus,
  kCreatedUnixMs,
  kSettledUnixMs,
  kSource,
};

struct Cursor {
  sqlite3_vtab_cursor base;  // first: SQLite's view of the cursor
  const CoveredRowsSource* source = nullptr;
  std::size_t at = 0;
  const cost::LedgerCovered* row = nullptr;  // the row at `at` (null past the end)
  // The budgets column of the rows of one budget list (nearly always every row: one key's
  // party), joined once.
  std::string budgets;
  const std::vector<std::string>* budgets_of = nullptr;
};

Cursor& cursor(sqlite3_vtab_cursor* c) {
  return *reinterpret_cast<Cursor*>(c);
}

int table_connect(sqlite3* db, void*, int, const char* const*, sqlite3_vtab** out, char**) {
  const int rc = sqlite3_declare_vtab(
      db,
      "CREATE TABLE x(request_id, key_id, tenant_id, model, budgets, reserved_micro,"
      " actual_micro, prompt_tokens, completion_tokens, status, created_unix_ms,"
      " settled_unix_ms, source HIDDEN)");
  if (rc != SQLITE_OK) return rc;
  auto* vtab = static_cast<sqlite3_vtab*>(sqlite3_malloc(sizeof(sqlite3_vtab)));
  if (vtab == nullptr) return SQLITE_NOMEM;
  *vtab = sqlite3_vtab{};
  *out = vtab;
  return SQLITE_OK;
}

int table_disconnect(sqlite3_vtab* vtab) {
  sqlite3_free(vtab);
  return SQLITE_OK;
}

// Only a plan with the source (an equality on the hidden column) is usable.
int table_best_index(sqlite3_vtab*, sqlite3_index_info* info) {
  for (int i = 0; i < info->nConstraint; ++i) {
    const auto& c = info->aConstraint[i];
    if (c.iColumn == kSource && c.op == SQLITE_INDEX_CONSTRAINT_EQ && c.usable) {
      info->aConstraintUsage[i].argvIndex = 1;
      info->aConstraintUsage[i].omit = 1;
      info->estimatedCost = 1;
      info->estimatedRows = 64;
      return SQLITE_OK;
    }
  }
  return SQLITE_CONSTRAINT;
}

int cursor_open(sqlite3_vtab*, sqlite3_vtab_cursor** out) {
  auto* c = new (std::nothrow) Cursor{};
  if (c == nullptr) return SQLITE_NOMEM;
  *out = &c->base;
  return SQLITE_OK;
}

int cursor_close(sqlite3_vtab_cursor* c) {
  delete &cursor(c);
  return SQLITE_OK;
}

// Points the cursor at its row `at`.
void seek(Cursor& c) {
  c.row = c.source != nullptr && c.at < c.source->n
              ? std::get_if<cost::LedgerCovered>(&(*c.source->batch)[c.source->rows[c.at]].record)
              : nullptr;
}

int cursor_filter(sqlite3_vtab_cursor* base, int, const char*, int argc, sqlite3_value** argv) {
  Cursor& c = cursor(base);
  c.source =
      argc > 0 ? static_cast<const CoveredRowsSource*>(sqlite3_value_pointer(argv[0], kPointerType))
               : nullptr;
  c.at = 0;
  c.budgets_of = nullptr;
  seek(c);
  return SQLITE_OK;
}

int cursor_next(sqlite3_vtab_cursor* base) {
  Cursor& c = cursor(base);
  ++c.at;
  seek(c);
  return SQLITE_OK;
}

int cursor_eof(sqlite3_vtab_cursor* base) {
  return cursor(base).row == nullptr;
}

void result_text(sqlite3_context* ctx, std::string_view s) {
  // Static: the row (and the cursor's budgets) stay as they are until SQLite has made its
  // record of this row, before the next xNext.
  sqlite3_result_text(ctx, s.data(), static_cast<int>(s.size()), SQLITE_STATIC);
}

int cursor_column(sqlite3_vtab_cursor* base, sqlite3_context* ctx, int column) {
  Cursor& c = cursor(base);
  const cost::LedgerCovered& row = *c.row;
  switch (column) {
    case kRequestId:
      result_text(ctx, row.request_id);
      break;
    case kKeyId:
      result_text(ctx, row.key());
      break;
    case kTenantId:
      result_text(ctx, row.tenant());
      break;
    case kModel:
      result_text(ctx, row.model);
      break;
    case kBudgets:
      if (c.budgets_of != &row.budget_ids()) {
        join_lines_into(c.budgets, row.budget_ids());
        c.budgets_of = &row.budget_ids();
      }
      result_text(ctx, c.budgets);
      break;
    case kReservedMicro:
      sqlite3_result_int64(ctx, std::max<cost::Micros>(row.reserved_micro, 0));
      break;
    case kActualMicro:
      sqlite3_result_int64(ctx, covered_actual(row));
      break;
    case kPromptTokens:
      sqlite3_result_int64(ctx, row.prompt_tokens);
      break;
    case kCompletionTokens:
      sqlite3_result_int64(ctx, row.completion_tokens);
      break;
    case kStatus:
      result_text(ctx, closed_status_text(row.status));
      break;
    case kCreatedUnixMs:
      sqlite3_result_int64(ctx, row.created_unix_ms);
      break;
    case kSettledUnixMs:
      sqlite3_result_int64(ctx, row.settled_unix_ms);
      break;
    default:
      sqlite3_result_null(ctx);
      break;
  }
  return SQLITE_OK;
}

int cursor_rowid(sqlite3_vtab_cursor* c, sqlite3_int64* out) {
  *out = static_cast<sqlite3_int64>(cursor(c).at);
  return SQLITE_OK;
}

sqlite3_module make_module() {
  sqlite3_module m{};
  m.iVersion = 0;
  m.xCreate = nullptr;  // eponymous only: no CREATE VIRTUAL TABLE
  m.xConnect = table_connect;
  m.xBestIndex = table_best_index;
  m.xDisconnect = table_disconnect;
  m.xDestroy = table_disconnect;
  m.xOpen = cursor_open;
  m.xClose = cursor_close;
  m.xFilter = cursor_filter;
  m.xNext = cursor_next;
  m.xEof = cursor_eof;
  m.xColumn = cursor_column;
  m.xRowid = cursor_rowid;
  return m;
}

const sqlite3_module kModule = make_module();

}  // namespace

const char* const kInsertCoveredRows =
    "INSERT OR FAIL INTO ledger (request_id, key_id, tenant_id, model, budgets, reserved_micro,"
    " actual_micro, prompt_tokens, completion_tokens, status, created_unix_ms, settled_unix_ms)"
    " SELECT request_id, key_id, tenant_id, model, budgets, reserved_micro, actual_micro,"
    " prompt_tokens, completion_tokens, status, created_unix_ms, settled_unix_ms"
    " FROM bw_covered_rows(?1)";

const char* const kInsertSharedSettledRows =
    "INSERT OR FAIL INTO ledger (request_id, key_id, tenant_id, model, budgets, reserved_micro,"
    " actual_micro, prompt_tokens, completion_tokens, status, created_unix_ms, settled_unix_ms)"
    " SELECT request_id, ?2, ?3, ?4, ?5, reserved_micro, actual_micro, prompt_tokens,"
    " completion_tokens, 'settled', created_unix_ms, settled_unix_ms FROM bw_covered_rows(?1)";

cost::Micros covered_actual(const cost::LedgerCovered& c) {
  return closed_actual(c.status, c.actual_micro);
}

Result<Ok> register_covered_rows_table(SqliteDb& db) {
  if (sqlite3_create_module(db.get(), "bw_covered_rows", &kModule, nullptr) != SQLITE_OK) {
    return db_error("register bw_covered_rows", db.last_error());
  }
  return Ok{};
}

void bind_covered_rows(Statement& st, const CoveredRowsSource* source) {
  sqlite3_bind_pointer(st.get(), 1, const_cast<CoveredRowsSource*>(source), kPointerType, nullptr);
}

}  // namespace bw::store
