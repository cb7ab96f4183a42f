#include "store/sqlite_ledger.h"

#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <sqlite3.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/same_text.h"
#include "store/covered_rows_table.h"
#include "store/sqlite_wal_gather.h"

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <string_view>
#include <tuple>
#include <unordered_map>

namespace bw::store {

namespace {

cost::LedgerRow read_row(const Statement& st) {
  return read_ledger_row([&](int c) { return st.column_text(c); },
                         [&](int c) { return st.column_int(c); });
}

constexpr const char* kInsertOpen =
    " INTO ledger (request_id, key_id, tenant_id, model, budgets, reserved_micro, status,"
    " created_unix_ms, lease) VALUES ";
constexpr int kOpenParams = 8;
constexpr const char* kInsertClosed =
    " INTO ledger (request_id, key_id, tenant_id, model, budgets, reserved_micro,"
    " actual_micro, prompt_tokens, completion_tokens, status, created_unix_ms,"
    " settled_unix_ms) VALUES ";
// A statement of one row; one of several rows stops at a row that fails its constraints (a
// request id already taken) and keeps the rows before it: with the default (ABORT) SQLite would
// have to undo them, and for that it copies every page the statement is the first to change
// into a statement journal before changing it (~6k instructions per statement).
constexpr const char* kInsertOne = "INSERT";
constexpr const char* kInsertMany = "INSERT OR FAIL";
constexpr int kClosedParams = 12;
// Columns 2 to 5 of both (key, tenant, model, budgets): the strings that the rows of a lease or
// of one key repeat. A statement whose rows all share them takes them once, as ?1 to ?4.
constexpr int kSharedParams = 4;

// `rows` value lists of `params` columns each; `open` puts the literal status 'open' after the
// sixth. Without `shared` every column is a parameter of its own, numbered on; with it, columns
// 2-5 of every row are ?1-?4 and each row's other columns are numbered on from ?5.
std::string insert_sql(const char* verb, const char* head, int rows, int params, bool open,
                       bool shared) {
  std::string sql = verb;
  sql += head;
  int next = shared ? kSharedParams + 1 : 1;
  for (int r = 0; r < rows; ++r) {
    sql += r == 0 ? "(" : ", (";
    for (int p = 1; p <= params; ++p) {
      if (p > 1) sql += ", ";
      const bool common = shared && p >= 2 && p <= 1 + kSharedParams;
      sql += "?" + std::to_string(common ? p - 1 : next++);
      if (open && p == 6) sql += ", 'open'";
    }
    sql += ")";
  }
  return sql;
}

// A row's own parameters in a statement: from `base` + 1 on, and whether its key, tenant, model
// and budgets are the statement's shared ?1-?4 (bound once, by bind_strings) or its own.
struct RowParams {
  int base;
  bool shared;
};

// Binds key, tenant, model and budgets: as ?1-?4 (shared), or as the row's columns 2-5.
template <class Record>
void bind_strings(Statement& st, int base, const Record& r, const std::string& budgets) {
  st.bind_static(base + 1, r.key())
      .bind_static(base + 2, r.tenant())
      .bind_static(base + 3, r.model)
      .bind_static(base + 4, budgets);
}

// A row's numbers go straight to SQLite rather than through Statement::bind, a call of its own
// per value (seven values a covered row).
void bind_int(Statement& st, int idx, std::int64_t v) {
  sqlite3_bind_int64(st.get(), idx, v);
}

// The parameters of one row. The record and `budgets` outlive the step: bound without copies.
void bind_open(Statement& st, RowParams at, const cost::LedgerReservation& r,
               const std::string& budgets) {
  int p = at.base;
  st.bind_static(++p, r.request_id);
  if (!at.shared) {
    bind_strings(st, p, r, budgets);
    p += kSharedParams;
  }
  bind_int(st, p + 1, std::max<cost::Micros>(r.reserved_micro, 0));
  bind_int(st, p + 2, r.created_unix_ms);
  bind_int(st, p + 3, r.lease ? 1 : 0);
}

// The parameters of a covered row's one-row statement.
void bind_closed(Statement& st, const cost::LedgerCovered& c, const std::string& budgets) {
  st.bind_static(1, c.request_id);
  bind_strings(st, 1, c, budgets);
  bind_int(st, 6, std::max<cost::Micros>(c.reserved_micro, 0));
  bind_int(st, 7, covered_actual(c));
  bind_int(st, 8, c.prompt_tokens);
  bind_int(st, 9, c.completion_tokens);
  st.bind_static(10, closed_status_text(c.status));
  bind_int(st, 11, c.created_unix_ms);
  bind_int(st, 12, c.settled_unix_ms);
}

template <class Record>
bool same_strings(const Record& a, const Record& b) {
  return a.key() == b.key() && a.tenant() == b.tenant() && a.model == b.model &&
         a.budget_ids() == b.budget_ids();
}

// The gateway's covered rows of one key share its party (key, tenant, budgets): one pointer
// compare instead of comparing those strings row by row (~0.2k instructions a row).
bool same_strings(const cost::LedgerCovered& a, const cost::LedgerCovered& b) {
  if (a.party && a.party == b.party) return same_text(a.model, b.model);
  return a.key() == b.key() && a.tenant() == b.tenant() && a.model == b.model &&
         a.budget_ids() == b.budget_ids();
}

bool is_request_reservation(const LedgerRecord& r) {
  const auto* res = std::get_if<cost::LedgerReservation>(&r);
  return res && !res->lease;
}

bool is_request_settlement(const LedgerRecord& r) {
  const auto* s = std::get_if<cost::LedgerSettlement>(&r);
  return s && !s->lease;
}

}  // namespace

Result<std::unique_ptr<SqliteLedger>> SqliteLedger::open(SqliteLedgerOptions options) {
  auto writer = SqliteDb::open(options.path, options.synchronous_full, options.busy_timeout_ms,
                               options.gather_wal_writes ? wal_gather_vfs() : nullptr);
  if (!writer.ok()) return writer.error();
  auto m = migrate(*writer);
  if (!m.ok()) return m.error();
  auto reader = SqliteDb::open(options.path, options.synchronous_full, options.busy_timeout_ms);
  if (!reader.ok()) return reader.error();
  // Through the gathering VFS for its hook on database writes (checkpoint_loop), not to gather:
  // a checkpoint writes no WAL frames.
  auto checkpoint = SqliteDb::open(options.path, options.synchronous_full, options.busy_timeout_ms,
                                   options.gather_wal_writes ? wal_gather_vfs() : nullptr);
  if (!checkpoint.ok()) return checkpoint.error();
  std::unique_ptr<SqliteLedger> ledger(new SqliteLedger(
      std::move(options), std::move(*writer), std::move(*reader), std::move(*checkpoint)));
  // The schema's CHECK (status IN ('open','settled','released')) makes SQLite build and drop a
  // temporary b-tree for the IN list at every row written, about a third of the writer's work
  // per request. This connection only ever writes those three values (the literal 'open' and
  // settlement_status_text()), so it skips the check; every other connection still has it.
  auto nocheck = ledger->writer_db_.exec("PRAGMA ignore_check_constraints=ON");
  if (!nocheck.ok()) return nocheck.error();
  // Debian's SQLite is built with SQLITE_SECURE_DELETE: every cell a B-tree page loses (the
  // cells that the rebalancing of an append moves to a sibling, the old cell of an UPDATEd lease
  // row) is overwritten with zeros first, ~0.17k instructions per covered row. Ledger rows are
  // never deleted and hold no secrets (amounts, ids, token counts); what is written and synced
  // is the same either way.
  auto fast_delete = ledger->writer_db_.exec("PRAGMA secure_delete=OFF");
  if (!fast_delete.ok()) return fast_delete.error();
  // A page the ledger grows by is zeroed in a page-cache buffer before rows fill it; the cache
  // hands out its least recently used buffer. At SQLite's default 2 MiB that buffer was last
  // touched ~2 MiB of pages ago, past the core's L2: zeroing it missed the L2 at every one of
  // its 64 lines, ~2 misses per covered row. 256 KiB (64 pages) holds what a group commit writes
  // (~32 rows a page: a commit of 1,000 rows dirties ~40 pages) and keeps the reused buffers in
  // the L2. A larger commit spills pages to the WAL before its end, which SQLite handles.
  auto small_cache = ledger->writer_db_.exec("PRAGMA cache_size=-256");
  if (!small_cache.ok()) return small_cache.error();
  auto ins = Statement::prepare(ledger->writer_db_,
                                insert_sql(kInsertOne, kInsertOpen, 1, kOpenParams, /*open=*/true,
                                           /*shared=*/false));
  if (!ins.ok()) return ins.error();
  // A request covered by a lease: its row is written once, already closed.
  auto ins_closed = Statement::prepare(
      ledger->writer_db_, insert_sql(kInsertOne, kInsertClosed, 1, kClosedParams, false, false));
  if (!ins_closed.ok()) return ins_closed.error();
  // Several covered rows: one statement reads them from the batch.
  if (auto r = register_covered_rows_table(ledger->writer_db_); !r.ok()) return r.error();
  auto ins_covered = Statement::prepare(ledger->writer_db_, kInsertCoveredRows);
  if (!ins_covered.ok()) return ins_covered.error();
  auto ins_shared = Statement::prepare(ledger->writer_db_, kInsertSharedSettledRows);
  if (!ins_shared.ok()) return ins_shared.error();
  ledger->many_st_.resize(kStatementKinds * (kMaxRowsPerInsert + 1));
  ledger->many_failed_.assign(kStatementKinds * (kMaxRowsPerInsert + 1), false);
  auto lower = Statement::prepare(ledger->writer_db_,
                                  "UPDATE ledger SET reserved_micro = MAX(reserved_micro - ?2, 0)"
                                  " WHERE request_id = ?1 AND status = 'open' AND lease = 1");
  if (!lower.ok()) return lower.error();
  // A covered row that cannot be written under its request id (a client reused an id): its
  // spend stays in the lease row, which keeps it reserved while open and settles it at close.
  auto fold = Statement::prepare(ledger->writer_db_,
                                 "UPDATE ledger SET actual_micro = actual_micro + ?2"
                                 " WHERE request_id = ?1 AND status = 'open' AND lease = 1");
  if (!fold.ok()) return fold.error();
  auto close = Statement::prepare(ledger->writer_db_,
                                  "UPDATE ledger SET status = 'settled', settled_unix_ms = ?2"
                                  " WHERE request_id = ?1 AND status = 'open' AND lease = 1");
  if (!close.ok()) return close.error();
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
  ledger->insert_closed_st_ = std::move(*ins_closed);
  ledger->insert_covered_st_ = std::move(*ins_covered);
  ledger->insert_shared_settled_st_ = std::move(*ins_shared);
  ledger->lower_lease_st_ = std::move(*lower);
  ledger->fold_lease_st_ = std::move(*fold);
  ledger->close_lease_st_ = std::move(*close);
  ledger->begin_st_ = std::move(*begin);
  ledger->commit_st_ = std::move(*commit);
  // How far into each covered-row journal (store/covered_journal.h) the ledger has applied,
  // written in the transaction of the rows it applied: a restart replays exactly the rest. The
  // ledger's own bookkeeping, made here rather than by a migration, so that the schema version
  // (and what reads it) stays as it was.
  auto table = ledger->writer_db_.exec(
      "CREATE TABLE IF NOT EXISTS ledger_journal (slot TEXT PRIMARY KEY,"
      " generation INTEGER NOT NULL, position INTEGER NOT NULL, seq INTEGER NOT NULL)");
  if (!table.ok()) return table.error();
  // A journal's row is made once and then changed in place: INSERT OR REPLACE would delete and
  // insert it at every group commit, in the table and in its key's index (one more page
  // written per commit).
  auto mark = Statement::prepare(ledger->writer_db_,
                                 "UPDATE ledger_journal SET generation = ?2, position = ?3,"
                                 " seq = ?4 WHERE slot = ?1");
  if (!mark.ok()) return mark.error();
  auto first_mark =
      Statement::prepare(ledger->writer_db_,
                         "INSERT OR REPLACE INTO ledger_journal (slot, generation, position,"
                         " seq) VALUES (?1, ?2, ?3, ?4)");
  if (!first_mark.ok()) return first_mark.error();
  ledger->journal_mark_st_ = std::move(*mark);
  ledger->journal_first_mark_st_ = std::move(*first_mark);
  // Replaces the connection's auto-checkpoint (itself a WAL hook): checkpoints move to their
  // own thread (see the header).
  sqlite3_wal_hook(ledger->writer_db_.get(), &SqliteLedger::on_wal_commit, ledger.get());
  ledger->checkpointer_ = std::thread([l = ledger.get()] { l->checkpoint_loop(); });
  // The rows a process that died left in its journals go in before anyone reads the ledger
  // (the budgets' rebuild, recovery of open rows).
  if (auto j = ledger->open_journals(); !j.ok()) return j.error();
  ledger->start_writer();
  return ledger;
}

namespace {
std::atomic<std::uint64_t> next_ledger_id{1};
}  // namespace

SqliteLedger::SqliteLedger(SqliteLedgerOptions options, SqliteDb writer, SqliteDb reader,
                           SqliteDb checkpoint)
    : QueuedLedger(options.queue_capacity, options.max_batch),
      options_(std::move(options)),
      writer_db_(std::move(writer)),
      id_(next_ledger_id.fetch_add(1, std::memory_order_relaxed)),
      reader_db_(std::move(reader)),
      checkpoint_db_(std::move(checkpoint)) {}

Result<Ok> SqliteLedger::open_journals() {
  namespace fs = std::filesystem;
  const fs::path db(options_.path);
  const fs::path dir = db.has_parent_path() ? db.parent_path() : fs::path(".");
  const std::string prefix = db.filename().string() + ".covered.";
  // Every journal file of this database, by its number.
  std::size_t existing = 0;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    const std::string name = e.path().filename().string();
    if (!name.starts_with(prefix)) continue;
    const std::string_view n = std::string_view(name).substr(prefix.size());
    if (n.empty() || n.size() > 6 ||
        !std::all_of(n.begin(), n.end(), [](char ch) { return ch >= '0' && ch <= '9'; })) {
      continue;
    }
    existing = std::max<std::size_t>(existing, std::stoul(std::string(n)) + 1);
  }
  const std::size_t want = options_.synchronous_full ? 0 : options_.journals;
  // Each file no live process holds: replayed (its rows not yet applied go in), then emptied.
  // The first `want` of them are kept as this process's; a file beyond the existing ones is
  // only made to be kept.
  for (std::size_t n = 0; n < existing || journals_.size() < want; ++n) {
    if (n >= existing && journals_.size() >= want) break;
    const std::string name = prefix + std::to_string(n);
    if (journals_.size() >= want && !fs::exists(dir / name, ec)) continue;
    CoveredJournal::OpenOutcome held;
    auto j = CoveredJournal::open((dir / name).string(), options_.journal_bytes, &held);
    if (!j.ok()) return j.error();
    if (held == CoveredJournal::OpenOutcome::kHeldElsewhere) continue;
    JournalRef ref;
    ref.slot = name;
    ref.generation = (*j)->generation();
    ref.journal = std::move(*j);
    journals_.push_back(std::move(ref));
    marks_.assign(journals_.size(), CoveredJournal::Position{});
    const int index = static_cast<int>(journals_.size() - 1);
    if (auto r = replay_journal(index); !r.ok()) return r;
    auto& kept = journals_.back();
    if (auto r = kept.journal->reset(options_.journal_bytes); !r.ok()) return r;
    kept.generation = kept.journal->generation();
    // Not kept: emptied, and unlocked for the next process.
    if (journals_.size() > want) journals_.pop_back();
  }
  own_ = journals_.size();
  marks_.assign(journals_.size(), CoveredJournal::Position{});
  return Ok{};
}

Result<Ok> SqliteLedger::replay_journal(int index) {
  JournalRef& ref = journals_[static_cast<std::size_t>(index)];
  CoveredJournal::Position from;
  {
    auto q = Statement::prepare(
        writer_db_, "SELECT generation, position, seq FROM ledger_journal WHERE slot = ?1");
    if (!q.ok()) return q.error();
    q->bind(1, ref.slot);
    const int rc = q->step();
    if (rc == SQLITE_ROW && static_cast<std::uint64_t>(q->column_int(0)) == ref.generation) {
      from = CoveredJournal::Position{static_cast<std::uint64_t>(q->column_int(1)),
                                      static_cast<std::uint64_t>(q->column_int(2))};
    } else if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
      return db_error("ledger journal", writer_db_.last_error());
    }
  }
  auto records = ref.journal->replay(from);
  std::size_t at = 0;
  while (at < records.size()) {
    const std::size_t n =
        std::min(records.size() - at, std::max<std::size_t>(options_.max_batch, 1));
    Batch batch;
    batch.reserve(n);
    for (std::size_t k = at; k < at + n; ++k) {
      cost::LedgerCovered row = std::move(records[k].row);
      row.journal = index;
      row.journal_end = records[k].at.end;
      row.journal_seq = records[k].at.seq;
      batch.push_back(LedgerQueue::Item{LedgerRecord(std::move(row)), {}});
    }
    auto out = commit_batch(batch);
    if (!last_commit_ok_) {
      return make_error(500, "server_error", "ledger_journal",
                        "cannot apply the covered rows of " + ref.slot + ": " +
                            (out.results.empty() || out.results.front().ok()
                                 ? std::string("the commit failed")
                                 : out.results.front().error().message));
    }
    replayed_ += n;
    at += n;
  }
  return Ok{};
}

int SqliteLedger::thread_journal() {
  struct Cache {
    std::uint64_t ledger = 0;
    int index = -1;
  };
  thread_local Cache cache;
  if (cache.ledger == id_) return cache.index;
  int index = -1;
  {
    std::lock_guard lock(claim_mu_);
    if (claimed_ < own_) index = static_cast<int>(claimed_++);
  }
  cache = Cache{id_, index};
  return index;
}

// Room for the row's lease id too, which the lease book sets after this check.
constexpr std::uint64_t kLeaseIdRoom = 128;

bool SqliteLedger::journal_room_for(const cost::LedgerCoveredText& row) {
  const int index = thread_journal();
  if (index < 0) return false;
  if (journals_[static_cast<std::size_t>(index)].journal->fits(
          CoveredJournal::record_bytes(row, kLeaseIdRoom))) {
    return true;
  }
  journal_full_.fetch_add(1, std::memory_order_relaxed);
  return false;
}

void SqliteLedger::journal_covered(cost::LedgerCovered& record) {
  const int index = thread_journal();
  CoveredJournal::Position at;
  if (index < 0 || !journals_[static_cast<std::size_t>(index)].journal->append(record, at)) {
    // Not reached after journal_room() said yes on this thread: its room is this thread's.
    journal_full_.fetch_add(1, std::memory_order_relaxed);
    return;
  }
  record.journal = index;
  record.journal_end = at.end;
  record.journal_seq = at.seq;
  journaled_.fetch_add(1, std::memory_order_relaxed);
}

void SqliteLedger::journal_stats(cost::LedgerStats& out) const {
  out.journaled = journaled_.load(std::memory_order_relaxed);
  out.journal_full = journal_full_.load(std::memory_order_relaxed);
}

Result<Ok> SqliteLedger::write_journal_marks(const Batch& batch) {
  if (journals_.empty()) return Ok{};
  bool any = false;
  for (const auto& item : batch) {
    const auto* c = std::get_if<cost::LedgerCovered>(&item.record);
    if (!c || c->journal < 0) continue;
    auto& m = marks_[static_cast<std::size_t>(c->journal)];
    if (c->journal_end > m.end) m = CoveredJournal::Position{c->journal_end, c->journal_seq};
    any = true;
  }
  if (!any) return Ok{};
  for (std::size_t i = 0; i < marks_.size(); ++i) {
    if (marks_[i].end == 0) continue;
    int rc = SQLITE_DONE;
    for (Statement* st : {&journal_mark_st_, &journal_first_mark_st_}) {
      st->bind_static(1, journals_[i].slot)
          .bind(2, static_cast<std::int64_t>(journals_[i].generation))
          .bind(3, static_cast<std::int64_t>(marks_[i].end))
          .bind(4, static_cast<std::int64_t>(marks_[i].seq));
      rc = st->step();
      st->rewind();
      // The UPDATE found the journal's row, or failed: no INSERT.
      if (rc != SQLITE_DONE || sqlite3_changes(writer_db_.get()) > 0) break;
    }
    if (rc != SQLITE_DONE) {
      marks_.assign(marks_.size(), CoveredJournal::Position{});
      return db_error("ledger journal", writer_db_.last_error());
    }
  }
  return Ok{};
}

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

namespace {

// The checkpointer thread's pieces of a passive checkpoint (SqliteLedgerOptions::yield_after).
thread_local std::chrono::microseconds checkpoint_piece{0};
thread_local std::chrono::steady_clock::time_point checkpoint_piece_start;
thread_local std::uint64_t checkpoint_pauses = 0;

// After each page a checkpoint copies into the database file.
void end_checkpoint_piece_if_due() {
  const auto now = std::chrono::steady_clock::now();
  if (now - checkpoint_piece_start < checkpoint_piece) return;
  sched_yield();
  ++checkpoint_pauses;
  checkpoint_piece_start = std::chrono::steady_clock::now();
}

// What a checkpoint's piece starts the write-back of (write_back_wal).
constexpr off_t kWriteBackChunk = 256 * 1024;

}  // namespace

void SqliteLedger::write_back_wal() {
  const int fd = ::open((options_.path + "-wal").c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return;
  struct stat st {};
  if (::fstat(fd, &st) == 0) {
    for (off_t from = 0; from < st.st_size; from += kWriteBackChunk) {
      // Pages that are written back (or being written) already cost next to nothing here.
      (void)::sync_file_range(fd, from, std::min(kWriteBackChunk, st.st_size - from),
                              SYNC_FILE_RANGE_WRITE);
      end_checkpoint_piece_if_due();
    }
  }
  ::close(fd);
}

void SqliteLedger::checkpoint_loop() {
  pthread_setname_np(pthread_self(), "bw-checkpoint");
  checkpoint_piece = options_.yield_after;
  for (;;) {
    {
      std::unique_lock lock(checkpoint_mu_);
      checkpoint_cv_.wait(lock, [&] { return checkpoint_stop_ || checkpoint_wanted_.load(); });
      if (checkpoint_stop_) return;
    }
    checkpoint_wanted_.store(false);
    int log = 0;
    int done = 0;
    // A passive checkpoint blocks nobody: its ~4 ms of CPU for ~1,000 pages (most of it the
    // WAL's sync, which writes its pages back) let whatever else shares the core run between
    // pieces. A restart holds the writer back: it runs through.
    if (checkpoint_piece.count() > 0) {
      checkpoint_piece_start = std::chrono::steady_clock::now();
      write_back_wal();
      set_database_write_hook(&end_checkpoint_piece_if_due);
    }
    // Failures (e.g. SQLITE_BUSY) leave the WAL as it is; the next commit asks again.
    sqlite3_wal_checkpoint_v2(checkpoint_db_.get(), nullptr, SQLITE_CHECKPOINT_PASSIVE, &log,
                              &done);
    set_database_write_hook(nullptr);
    checkpoint_yields_.store(checkpoint_pauses, std::memory_order_relaxed);
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
    join_lines_into(budget_text_[0], r->budgets);
    bind_open(insert_st_, {0, false}, *r, budget_text_[0]);
    const int rc = insert_st_.step();
    insert_st_.rewind();
    if (rc == SQLITE_DONE) return Ok{};
    if ((rc & 0xff) == SQLITE_CONSTRAINT) return duplicate_request_error(r->request_id);
    return db_error("ledger insert", writer_db_.last_error());
  }
  if (const auto* c = std::get_if<cost::LedgerCovered>(&record)) {
    auto written = write_covered(*c);
    if (!written.ok()) owe_lease(*c);
    return written;
  }
  const auto& s = std::get<cost::LedgerSettlement>(record);
  if (s.lease) {
    // A lease whose covered row was lost still holds that spend as reserved: closing it would
    // drop the spend from the ledger, and a restart would rebuild the budgets without it.
    if (owing_leases_.contains(s.request_id)) {
      return make_error(500, "server_error", "lease_owes",
                        "lease " + s.request_id + " keeps a lost covered row's spend: left open");
    }
    if (auto f = flush_lease_lowering(); !f.ok()) return f;
    close_lease_st_.bind_static(1, s.request_id).bind(2, s.settled_unix_ms);
    const int rc = close_lease_st_.step();
    close_lease_st_.rewind();
    if (rc != SQLITE_DONE) return db_error("ledger lease close", writer_db_.last_error());
    if (sqlite3_changes(writer_db_.get()) == 0) return not_open_error(s.request_id);
    return Ok{};
  }
  settle_st_.bind_static(1, s.request_id)
      .bind_static(2, settlement_status_text(s))
      .bind(3, settlement_actual(s))
      .bind(4, s.prompt_tokens)
      .bind(5, s.completion_tokens)
      .bind(6, s.settled_unix_ms);
  const int rc = settle_st_.step();
  settle_st_.rewind();
  if (rc != SQLITE_DONE) return db_error("ledger settle", writer_db_.last_error());
  if (sqlite3_changes(writer_db_.get()) == 0) return not_open_error(s.request_id);
  return Ok{};
}

// The covered request's row and the lease row lowered by its actual cost: both in the batch's
// transaction, so that at every commit settled spend + open reservations stay what they were.
Result<Ok> SqliteLedger::write_covered(const cost::LedgerCovered& c) {
  join_lines_into(budget_text_[0], c.budget_ids());
  const cost::Micros actual = covered_actual(c);
  bind_closed(insert_closed_st_, c, budget_text_[0]);
  int rc = insert_closed_st_.step();
  insert_closed_st_.rewind();
  if ((rc & 0xff) == SQLITE_CONSTRAINT) {
    if (actual == 0) return Ok{};
    fold_lease_st_.bind_static(1, c.lease_id).bind(2, actual);
    rc = fold_lease_st_.step();
    fold_lease_st_.rewind();
    if (rc != SQLITE_DONE) return db_error("ledger lease", writer_db_.last_error());
    return Ok{};
  }
  if (rc != SQLITE_DONE) return db_error("ledger insert", writer_db_.last_error());
  lower_later(c.lease_id, actual);
  return Ok{};
}

// The lease row is lowered once per lease and transaction (flush_lease_lowering), before the
// commit and before a close of a lease: the same sums at the commit, one UPDATE for them all.
void SqliteLedger::lower_later(const std::string& lease_id, cost::Micros actual) {
  if (actual <= 0) return;
  // A lease id is 15 characters: compared as two words (same_text), the last lease first (the
  // rows of a batch are nearly all of one lease).
  const auto it = std::find_if(lowering_.rbegin(), lowering_.rend(),
                               [&](const auto& p) { return same_text(p.first, lease_id); });
  if (it == lowering_.rend()) {
    lowering_.emplace_back(lease_id, actual);
  } else {
    it->second = cost::sat_add(it->second, actual);
  }
}

namespace {

// 8 bytes of `s` from `at` as a big-endian number (zeros past its end): numbers that compare as
// the bytes do.
std::uint64_t bytes_be(std::string_view s, std::size_t at) {
  if (at + 8 <= s.size()) {
    std::uint64_t v;
    std::memcpy(&v, s.data() + at, 8);
    return __builtin_bswap64(v);
  }
  std::uint64_t v = 0;
  for (std::size_t k = 0; k < 8; ++k) {
    v = (v << 8) | (at + k < s.size() ? static_cast<unsigned char>(s[at + k]) : 0u);
  }
  return v;
}

}  // namespace

// A generated request id is "req_", the millisecond and random digits: the rows of one group
// commit come in the order their requests finished, and the ids of one millisecond in random
// order. Each row goes to the primary key's B-tree where its id sorts, so rows out of order land
// inside the last pages instead of after them: the key's search starts again from the root, and
// a full page splits in its middle, into pages that stay partly empty (more pages split, more WAL
// frames per row). In id order every row is an append to the last page. The order only decides
// where each row goes, never which rows are written: it needs to be exact only for the ids it
// tells apart. The key is 16 bytes of the id (after "req_", or from its start): the
// millisecond and 20 random bits of a generated id; rows with equal keys keep their order, so
// that of two rows with the same id the first is written and the second folded, as before.
void SqliteLedger::order_by_request_id(const Batch& batch, std::vector<std::size_t>& rows) {
  if (rows.size() < 2) return;
  order_.clear();
  bool sorted = true;
  for (const std::size_t at : rows) {
    const std::string_view id = std::get<cost::LedgerCovered>(batch[at].record).request_id;
    const std::size_t from = id.size() >= 20 && id.starts_with("req_") ? 4 : 0;
    const RowOrder o{bytes_be(id, from), bytes_be(id, from + 8), at};
    if (!order_.empty() &&
        std::tie(o.high, o.low) < std::tie(order_.back().high, order_.back().low)) {
      sorted = false;
    }
    order_.push_back(o);
  }
  if (sorted) return;
  std::sort(order_.begin(), order_.end(), [](const RowOrder& a, const RowOrder& b) {
    return std::tie(a.high, a.low, a.at) < std::tie(b.high, b.low, b.at);
  });
  for (std::size_t k = 0; k < rows.size(); ++k) rows[k] = order_[k].at;
}

std::size_t SqliteLedger::rows_per_insert(std::size_t left) {
  if (left <= kExactRows) return left;
  return std::min(kMaxRowsPerInsert, left / kRowStep * kRowStep);
}

Statement* SqliteLedger::many(bool shared, std::size_t rows) {
  const std::size_t slot = (shared ? 1 : 0) * (kMaxRowsPerInsert + 1) + rows;
  Statement& st = many_st_[slot];
  if (st.get()) return &st;
  if (many_failed_[slot]) return nullptr;
  if (in_batch_) prepared_in_batches_.fetch_add(1, std::memory_order_relaxed);
  auto prepared = Statement::prepare(
      writer_db_,
      insert_sql(kInsertMany, kInsertOpen, static_cast<int>(rows), kOpenParams, true, shared));
  if (!prepared.ok()) {
    many_failed_[slot] = true;  // the rows go one by one
    return nullptr;
  }
  st = std::move(*prepared);
  return &st;
}

// Whether rows [k, k + n) of `rows` all have the first one's key, tenant, model and budgets.
template <class Record>
static bool rows_share_strings(const LedgerQueue::Batch& batch,
                               const std::vector<std::size_t>& rows, std::size_t k, std::size_t n) {
  const auto& first = std::get<Record>(batch[rows[k]].record);
  for (std::size_t r = 1; r < n; ++r) {
    if (!same_strings(first, std::get<Record>(batch[rows[k + r]].record))) return false;
  }
  return true;
}

// Whether the covered rows [k, k + n) of `rows` are all settled (none released).
static bool rows_all_settled(const LedgerQueue::Batch& batch, const std::vector<std::size_t>& rows,
                             std::size_t k, std::size_t n) {
  for (std::size_t r = 0; r < n; ++r) {
    if (std::get<cost::LedgerCovered>(batch[rows[k + r]].record).status ==
        cost::LedgerStatus::kReleased) {
      return false;
    }
  }
  return true;
}

void SqliteLedger::write_rows(const Batch& batch, const std::vector<std::size_t>& rows,
                              bool covered, std::vector<Result<Ok>>& results) {
  std::size_t k = 0;
  while (k < rows.size()) {
    if (transaction_lost()) {
      // commit_batch's COMMIT fails, and with it every record of the batch.
      for (; k < rows.size(); ++k) results[rows[k]] = transaction_lost_error();
      return;
    }
    if (k > 0) end_piece_if_due();
    // Covered rows: read from the batch by one statement, any number of them (the pieces stay
    // as short as before).
    const std::size_t n =
        covered ? std::min(rows.size() - k, kMaxRowsPerInsert) : rows_per_insert(rows.size() - k);
    const CoveredRowsSource source{&batch, rows.data() + k, n};
    Statement* st = nullptr;
    if (n > 1 && covered) {
      // The rows of one key, nearly all settled: their common strings bound, and joined, once.
      const bool shared = rows_share_strings<cost::LedgerCovered>(batch, rows, k, n) &&
                          rows_all_settled(batch, rows, k, n);
      st = shared ? &insert_shared_settled_st_ : &insert_covered_st_;
      bind_covered_rows(*st, &source);
      if (shared) {
        const auto& first = std::get<cost::LedgerCovered>(batch[rows[k]].record);
        join_lines_into(budget_text_[0], first.budget_ids());
        bind_strings(*st, 1, first, budget_text_[0]);
      }
    } else if (n > 1) {
      // The rows of one key repeat the same strings: bound, and joined, once.
      const bool shared = rows_share_strings<cost::LedgerReservation>(batch, rows, k, n);
      st = many(shared, n);
      const int own = kOpenParams - (shared ? kSharedParams : 0);
      const int first = shared ? kSharedParams : 0;
      for (std::size_t r = 0; st && r < n; ++r) {
        const auto& res = std::get<cost::LedgerReservation>(batch[rows[k + r]].record);
        const RowParams at{first + static_cast<int>(r) * own, shared};
        std::string& budgets = budget_text_[shared ? 0 : r];
        if (r == 0 || !shared) join_lines_into(budgets, res.budgets);
        if (r == 0 && shared) bind_strings(*st, 0, res, budgets);
        bind_open(*st, at, res, budgets);
      }
    }
    if (!st) {
      results[rows[k]] = write_one(batch[rows[k]].record);
      ++k;
      continue;
    }
    const int rc = st->step();
    // The rows written: all, or (OR FAIL) those before the row that failed.
    std::size_t written = n;
    if (rc != SQLITE_DONE) {
      if (transaction_lost()) {
        // commit_batch's COMMIT fails, and with it every record of the batch.
        st->rewind();
        for (; k < rows.size(); ++k) results[rows[k]] = transaction_lost_error();
        return;
      }
      if ((rc & 0xff) != SQLITE_CONSTRAINT) {
        // Which of its rows another error left written is not known: the whole transaction
        // goes, and with it every record of the batch (commit_batch's COMMIT fails).
        const Error e = db_error("ledger insert", writer_db_.last_error());
        st->rewind();
        (void)writer_db_.exec("ROLLBACK");
        for (; k < rows.size(); ++k) results[rows[k]] = e;
        return;
      }
      written =
          std::min<std::size_t>(static_cast<std::size_t>(sqlite3_changes(writer_db_.get())), n - 1);
    }
    st->rewind();
    if (covered) {
      // The statement's rows come in runs of one lease: each run's sum is added once.
      const std::string* lease = nullptr;
      cost::Micros sum = 0;
      for (std::size_t r = 0; r < written; ++r) {
        const auto& c = std::get<cost::LedgerCovered>(batch[rows[k + r]].record);
        if (lease && !same_text(*lease, c.lease_id)) {
          lower_later(*lease, sum);
          sum = 0;
        }
        lease = &c.lease_id;
        sum = cost::sat_add(sum, covered_actual(c));
      }
      if (lease) lower_later(*lease, sum);
    }
    k += written;
    if (written < n) {
      // The row that failed (its request id is taken, say) gets its own result; the rows after
      // it were not tried and go on in the next statement.
      results[rows[k]] = write_one(batch[rows[k]].record);
      ++k;
    }
  }
}

Result<Ok> SqliteLedger::flush_lease_lowering() {
  for (const auto& [lease, amount] : lowering_) {
    lower_lease_st_.bind_static(1, lease).bind(2, amount);
    const int rc = lower_lease_st_.step();
    lower_lease_st_.rewind();
    // A lease that is not open any more has nothing to lower (the rows are written either way).
    if (rc != SQLITE_DONE) {
      lowering_.clear();
      return db_error("ledger lease", writer_db_.last_error());
    }
  }
  lowering_.clear();
  return Ok{};
}

void SqliteLedger::start_pieces() {
  const std::uint64_t wakes = wakes_asked();
  // A wake-up asked for since the last batch was taken: a record of this batch is waited for.
  yielding_ = options_.yield_after.count() > 0 && wakes == wakes_at_take_;
  wakes_at_take_ = wakes;
  if (yielding_) piece_start_ = std::chrono::steady_clock::now();
}

void SqliteLedger::end_piece_if_due() {
  if (!yielding_) return;
  if (std::chrono::steady_clock::now() - piece_start_ < options_.yield_after) return;
  // Somebody waits for a record queued behind this batch, or the records queued behind it would
  // wake the writer at once (half a batch): the rest of the batch goes without a pause.
  if (wakes_asked() != wakes_at_take_ || queued() >= options_.max_batch / 2) {
    yielding_ = false;
    return;
  }
  sched_yield();
  yields_.fetch_add(1, std::memory_order_relaxed);
  piece_start_ = std::chrono::steady_clock::now();
}

bool SqliteLedger::transaction_lost() const {
  return sqlite3_get_autocommit(writer_db_.get()) != 0;
}

Error SqliteLedger::transaction_lost_error() const {
  return db_error("ledger", "the transaction was rolled back: " + writer_db_.last_error());
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
  in_batch_ = true;
  struct Out {
    bool& in;
    ~Out() { in = false; }
  } leave{in_batch_};
  LedgerQueue::BatchOutcome out;
  out.results.reserve(batch.size());
  auto begin = step_once(begin_st_, "begin");
  if (!begin.ok()) {
    last_commit_ok_ = false;
    out.transaction = false;
    out.results.assign(batch.size(), begin.error());
    owe_leases_of(batch);
    return out;
  }
  lowering_.clear();
  start_pieces();
  out.results.assign(batch.size(), Result<Ok>(Ok{}));
  const std::size_t n = batch.size();
  std::size_t i = 0;
  while (i < n) {
    // An error that ended the transaction (SQLite rolls back on some I/O errors): nothing more
    // is written outside it; the commit fails and with it every record of the batch.
    if (transaction_lost()) {
      for (; i < n; ++i) out.results[i] = transaction_lost_error();
      break;
    }
    const LedgerRecord& rec = batch[i].record;
    run_.clear();
    if (std::holds_alternative<cost::LedgerCovered>(rec)) {
      // A run of covered rows, in their order.
      for (; i < n && std::holds_alternative<cost::LedgerCovered>(batch[i].record); ++i) {
        run_.push_back(i);
      }
      order_by_request_id(batch, run_);
      write_rows(batch, run_, /*covered=*/true, out.results);
    } else if (is_request_reservation(rec) || is_request_settlement(rec)) {
      // Requests' reservations and settlements: the reservations go first, together. Only two
      // records of one request id could depend on their order, and a settlement and a
      // reservation of one id in one batch end the same either way (the reservation finds the
      // row and fails; the settlement closes it if open).
      later_.clear();
      for (; i < n &&
             (is_request_reservation(batch[i].record) || is_request_settlement(batch[i].record));
           ++i) {
        (is_request_reservation(batch[i].record) ? run_ : later_).push_back(i);
      }
      write_rows(batch, run_, /*covered=*/false, out.results);
      for (const std::size_t k : later_) {
        out.results[k] = transaction_lost() ? transaction_lost_error() : write_one(batch[k].record);
      }
    } else {
      out.results[i] = write_one(rec);
      ++i;
    }
  }
  // Outside the transaction the lease rows' UPDATE would commit on its own, lowering them by
  // rows that were rolled back.
  if (transaction_lost()) {
    lowering_.clear();
    marks_.assign(marks_.size(), CoveredJournal::Position{});
  }
  // The lease and journal rows and the COMMIT (the WAL's pages written): one more piece.
  end_piece_if_due();
  auto lowered = flush_lease_lowering();
  if (lowered.ok() && !transaction_lost()) lowered = write_journal_marks(batch);
  auto commit = lowered.ok() ? step_once(commit_st_, "commit") : Result<Ok>(lowered.error());
  last_commit_ok_ = commit.ok();
  if (!commit.ok()) {
    (void)writer_db_.exec("ROLLBACK");
    for (auto& r : out.results) r = commit.error();
    owe_leases_of(batch);
    marks_.assign(marks_.size(), CoveredJournal::Position{});
    return out;
  }
  // Those journals' room up to their rows in this commit may be written again.
  for (std::size_t j = 0; j < marks_.size(); ++j) {
    if (marks_[j].end == 0) continue;
    journals_[j].journal->set_applied(marks_[j].end);
    marks_[j] = CoveredJournal::Position{};
  }
  return out;
}

void SqliteLedger::owe_lease(const cost::LedgerCovered& c) {
  if (c.status != cost::LedgerStatus::kReleased && c.actual_micro > 0) {
    owing_leases_.insert(c.lease_id);
  }
}

void SqliteLedger::owe_leases_of(const Batch& batch) {
  for (const auto& item : batch) {
    if (const auto* c = std::get_if<cost::LedgerCovered>(&item.record)) owe_lease(*c);
  }
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

// Both queries below group in a hash of their few groups rather than with SQLite's GROUP BY.
// With no index on created_unix_ms (schema v5) the rows come in key order, and GROUP BY sorts
// every matching row into a temporary B-tree first: on a ledger of 5M rows that sort took six of
// the seven seconds of a start-up rebuild with a `total` budget, and most of a spend report.

namespace {

constexpr std::int64_t kDayMs = 86'400'000;

// The start of the UTC day of `unix_ms`.
std::int64_t day_start(std::int64_t unix_ms) {
  const std::int64_t r = unix_ms % kDayMs;
  return unix_ms - (r < 0 ? r + kDayMs : r);
}

// "YYYY-MM-DD" (UTC) of a day start.
std::string utc_date(std::int64_t day_start_ms) {
  // Days since 1970-01-01 to a civil date (proleptic Gregorian).
  std::int64_t z = day_start_ms / kDayMs + 719468;
  const std::int64_t era = (z >= 0 ? z : z - 146096) / 146097;
  const std::int64_t doe = z - era * 146097;
  const std::int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
  const std::int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
  const std::int64_t mp = (5 * doy + 2) / 153;
  const std::int64_t d = doy - (153 * mp + 2) / 5 + 1;
  const std::int64_t m = mp < 10 ? mp + 3 : mp - 9;
  const std::int64_t y = yoe + era * 400 + (m <= 2 ? 1 : 0);
  char buf[80];
  std::snprintf(buf, sizeof buf, "%04lld-%02lld-%02lld", static_cast<long long>(y),
                static_cast<long long>(m), static_cast<long long>(d));
  return buf;
}

void append_int(std::string& out, std::int64_t v) {
  const auto u = static_cast<std::uint64_t>(v) ^ (std::uint64_t{1} << 63);  // sorts as signed
  for (int i = 7; i >= 0; --i) out.push_back(static_cast<char>((u >> (i * 8)) & 0xff));
}

}  // namespace

Result<std::vector<cost::SpendAggregate>> SqliteLedger::settled_since(std::int64_t since_unix_ms) {
  std::lock_guard lock(reader_mu_);
  auto st = Statement::prepare(reader_db_,
                               "SELECT budgets, key_id, tenant_id, created_unix_ms, actual_micro"
                               " FROM ledger WHERE status = 'settled' AND created_unix_ms >= ?1");
  if (!st.ok()) return st.error();
  st->bind(1, since_unix_ms);
  // (budgets, key, tenant, day) as one string, in the order GROUP BY would give.
  std::unordered_map<std::string, std::size_t> index;
  std::vector<cost::SpendAggregate> groups;
  std::string k;
  int rc;
  while ((rc = st->step()) == SQLITE_ROW) {
    const std::int64_t day = day_start(st->column_int(3));
    const std::int64_t actual = st->column_int(4);
    k.clear();
    for (int c = 0; c < 3; ++c) {
      k.append(st->column_view(c));
      k.push_back('\0');
    }
    append_int(k, day);
    auto [it, fresh] = index.try_emplace(k, groups.size());
    if (fresh) {
      cost::SpendAggregate a;
      a.budgets = split_lines(st->column_view(0));
      a.key_id = st->column_view(1);
      a.tenant_id = st->column_view(2);
      a.day_start_unix_ms = day;
      groups.push_back(std::move(a));
    }
    groups[it->second].actual_micro += actual;
  }
  if (rc != SQLITE_DONE) return db_error("ledger query", reader_db_.last_error());
  std::vector<std::pair<const std::string*, std::size_t>> order;
  order.reserve(index.size());
  for (const auto& [key, at] : index) order.emplace_back(&key, at);
  std::sort(order.begin(), order.end(),
            [](const auto& a, const auto& b) { return *a.first < *b.first; });
  std::vector<cost::SpendAggregate> out;
  out.reserve(groups.size());
  for (const auto& [key, at] : order) out.push_back(std::move(groups[at]));
  return out;
}

Result<std::vector<cost::SpendReportRow>> SqliteLedger::spend_report(cost::SpendGroup group,
                                                                     std::int64_t from_unix_ms,
                                                                     std::int64_t to_unix_ms) {
  const bool by_day = group == cost::SpendGroup::kDay;
  const std::string sql =
      std::string("SELECT ") + (by_day ? "NULL" : spend_group_expr(group, "")) +
      ", created_unix_ms, lease, status, actual_micro, reserved_micro, prompt_tokens,"
      " completion_tokens FROM ledger WHERE created_unix_ms >= ?1 AND created_unix_ms < ?2";
  std::lock_guard lock(reader_mu_);
  auto st = Statement::prepare(reader_db_, sql);
  if (!st.ok()) return st.error();
  st->bind(1, from_unix_ms).bind(2, to_unix_ms);
  std::unordered_map<std::string, cost::SpendReportRow> rows;
  std::unordered_map<std::int64_t, cost::SpendReportRow> days;
  std::string k;
  int rc;
  while ((rc = st->step()) == SQLITE_ROW) {
    cost::SpendReportRow* r;
    if (by_day) {
      r = &days[day_start(st->column_int(1))];
    } else {
      k.assign(st->column_view(0));
      r = &rows[k];
    }
    r->requests += 1 - st->column_int(2);
    const std::string_view status = st->column_view(3);
    if (status == "settled") r->actual_micro += st->column_int(4);
    if (status == "open") r->open_reserved_micro += st->column_int(5);
    r->prompt_tokens += st->column_int(6);
    r->completion_tokens += st->column_int(7);
  }
  if (rc != SQLITE_DONE) return db_error("ledger report", reader_db_.last_error());
  std::vector<cost::SpendReportRow> out;
  out.reserve(rows.size() + days.size());
  for (auto& [g, r] : rows) {
    r.group = g;
    out.push_back(std::move(r));
  }
  for (auto& [day, r] : days) {
    r.group = utc_date(day);
    out.push_back(std::move(r));
  }
  std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a.group < b.group; });
  return out;
}

}  // namespace bw::store
