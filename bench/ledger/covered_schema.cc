// The covered rows' INSERT on other table layouts, as plain SQL against the system SQLite: one
// group commit = BEGIN, one multi-row INSERT OR FAIL of N rows (key, tenant, model and budgets
// shared as ?1-?4, as SqliteLedger binds them), the lease row's UPDATE, COMMIT; WAL,
// synchronous=NORMAL, no auto-checkpoint. Instructions per row under callgrind:
//   g++ -O2 -g -o /tmp/covered_schema bench/ledger/covered_schema.cc -lsqlite3
//   valgrind --tool=callgrind --toggle-collect='run_commits()' --callgrind-out-file=/dev/null
//     /tmp/covered_schema VARIANT [ROWS_PER_COMMIT=64] [COMMITS=500] ["PRAGMA ..."]
// ("Collected" / (ROWS_PER_COMMIT x COMMITS)). VARIANT:
//   0  the ledger as it is (WITHOUT ROWID, request_id the key), the status bound per row
//   6  the same with the status a literal ('settled')
//   1  a rowid table of covered rows: seq INTEGER PRIMARY KEY (a monotonic sequence, bound),
//      request_id TEXT NOT NULL UNIQUE (an index B-tree beside the table)
//   5  as 1 without the NOT NULL constraints
//   7  as 1 without the UNIQUE index: the sequence alone is the key (no request_id uniqueness)
//   8  as 7 plus a SELECT per row on the ledger's key (what a check against the other table costs)
//   2  a rowid table with SQLite's own rowid and no index at all (the floor)
#include <sqlite3.h>
#include <unistd.h>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

static sqlite3* db;
static void ex(const char* sql) {
  char* m = nullptr;
  if (sqlite3_exec(db, sql, nullptr, nullptr, &m) != SQLITE_OK) {
    fprintf(stderr, "%s: %s\n", sql, m);
    exit(1);
  }
}
static const long long kNow = 1767225600000LL;
static std::string rid(long long seq) {
  char id[48];
  snprintf(id, sizeof id, "req_%011llx%013llx", (unsigned long long)(kNow + seq / 20),
           (unsigned long long)(seq * 2654435761ULL & 0xfffffffffffffULL));
  return id;
}
static const char* kV1 =
    "CREATE TABLE ledger ( request_id TEXT PRIMARY KEY, key_id TEXT NOT NULL, tenant_id TEXT NOT "
    "NULL,"
    " model TEXT NOT NULL, reserved_micro INTEGER NOT NULL, actual_micro INTEGER NOT NULL DEFAULT "
    "0,"
    " prompt_tokens INTEGER NOT NULL DEFAULT 0, completion_tokens INTEGER NOT NULL DEFAULT 0,"
    " status TEXT NOT NULL CHECK (status IN ('open','settled','released')), created_unix_ms "
    "INTEGER NOT NULL,"
    " settled_unix_ms INTEGER NOT NULL DEFAULT 0) WITHOUT ROWID;"
    "ALTER TABLE ledger ADD COLUMN budgets TEXT NOT NULL DEFAULT '';"
    "CREATE INDEX ledger_open ON ledger (status) WHERE status = 'open';"
    "ALTER TABLE ledger ADD COLUMN lease INTEGER NOT NULL DEFAULT 0;";

int variant, rows_per, commits;
sqlite3_stmt* chk;
sqlite3_stmt* ins;
sqlite3_stmt* upd;
sqlite3_stmt* beg;
sqlite3_stmt* com;
std::vector<std::string> ids;
long long seqno = 0;

static void prep(sqlite3_stmt** st, const std::string& sql) {
  if (sqlite3_prepare_v3(db, sql.c_str(), -1, SQLITE_PREPARE_PERSISTENT, st, nullptr) !=
      SQLITE_OK) {
    fprintf(stderr, "prep %s: %s\n", sql.substr(0, 200).c_str(), sqlite3_errmsg(db));
    exit(1);
  }
}

__attribute__((noinline)) void run_commits() {
  const char* budgets = "key:key_a/total\nglobal/monthly";
  for (int c = 0; c < commits; ++c) {
    sqlite3_step(beg);
    sqlite3_reset(beg);
    int p = 0;
    sqlite3_bind_text(ins, ++p, "key_a", 5, SQLITE_STATIC);
    sqlite3_bind_text(ins, ++p, "acme", 4, SQLITE_STATIC);
    sqlite3_bind_text(ins, ++p, "gpt-4.1", 7, SQLITE_STATIC);
    sqlite3_bind_text(ins, ++p, budgets, (int)strlen(budgets), SQLITE_STATIC);
    for (int r = 0; r < rows_per; ++r) {
      const std::string& id = ids[seqno];
      if (variant == 1 || variant == 5 || variant >= 7) sqlite3_bind_int64(ins, ++p, seqno + 1);
      sqlite3_bind_text(ins, ++p, id.data(), (int)id.size(), SQLITE_STATIC);
      sqlite3_bind_int64(ins, ++p, 11100);
      sqlite3_bind_int64(ins, ++p, 11000);
      sqlite3_bind_int64(ins, ++p, 10);
      sqlite3_bind_int64(ins, ++p, 10);
      if (variant != 6) sqlite3_bind_text(ins, ++p, "settled", 7, SQLITE_STATIC);
      if (variant == 8) {
        sqlite3_bind_text(chk, 1, id.data(), (int)id.size(), SQLITE_STATIC);
        if (sqlite3_step(chk) != SQLITE_DONE) exit(2);
        sqlite3_reset(chk);
      }
      sqlite3_bind_int64(ins, ++p, kNow);
      sqlite3_bind_int64(ins, ++p, kNow + 5);
      ++seqno;
    }
    if (sqlite3_step(ins) != SQLITE_DONE) {
      fprintf(stderr, "ins: %s\n", sqlite3_errmsg(db));
      exit(1);
    }
    sqlite3_reset(ins);
    sqlite3_bind_text(upd, 1, "lease:bench-1", 13, SQLITE_STATIC);
    sqlite3_bind_int64(upd, 2, 11000LL * rows_per);
    if (sqlite3_step(upd) != SQLITE_DONE) {
      fprintf(stderr, "upd: %s\n", sqlite3_errmsg(db));
      exit(1);
    }
    sqlite3_reset(upd);
    sqlite3_step(com);
    sqlite3_reset(com);
  }
}

int main(int argc, char** argv) {
  variant = atoi(argv[1]);
  rows_per = argc > 2 ? atoi(argv[2]) : 64;
  commits = argc > 3 ? atoi(argv[3]) : 500;
  const char* pragmas = argc > 4 ? argv[4] : "";
  sqlite3_config(SQLITE_CONFIG_MEMSTATUS, 0);
  char dir[] = "/tmp/ledger_exp/dbXXXXXX";
  mkdtemp(dir);
  std::string path = std::string(dir) + "/x.db";
  sqlite3_open_v2(path.c_str(), &db,
                  SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, nullptr);
  ex("PRAGMA journal_mode=WAL");
  ex("PRAGMA synchronous=NORMAL");
  ex("PRAGMA foreign_keys=ON");
  ex(kV1);
  ex("PRAGMA ignore_check_constraints=ON");
  ex("PRAGMA wal_autocheckpoint=0");
  if (*pragmas) ex(pragmas);
  const char* cols =
      "key_id, tenant_id, model, budgets, request_id, reserved_micro, actual_micro, prompt_tokens, "
      "completion_tokens, status, created_unix_ms, settled_unix_ms";
  std::string table = "ledger";
  if (variant == 1 || variant == 2 || variant == 3 || variant == 5 || variant >= 7) {
    table = "ledger_covered";
    std::string t = "CREATE TABLE ledger_covered (";
    if (variant == 1 || variant == 5 || variant >= 7) t += "seq INTEGER PRIMARY KEY, ";
    const char* nn = variant == 5 ? "" : " NOT NULL";
    t += std::string("request_id TEXT") + nn + (variant == 3 || variant >= 7 ? "" : " UNIQUE") +
         ", key_id TEXT" + nn + ", tenant_id TEXT" + nn + ", model TEXT" + nn + ", budgets TEXT" +
         nn + ", reserved_micro INTEGER" + nn + ", actual_micro INTEGER" + nn +
         ", prompt_tokens INTEGER" + nn + ", completion_tokens INTEGER" + nn + ", status TEXT" +
         nn + ", created_unix_ms INTEGER" + nn + ", settled_unix_ms INTEGER" + nn + ")";
    if (variant == 2)
      t = "CREATE TABLE ledger_covered (request_id TEXT NOT NULL, key_id TEXT NOT NULL, tenant_id "
          "TEXT NOT NULL, model TEXT NOT NULL, budgets TEXT NOT NULL, reserved_micro INTEGER NOT "
          "NULL, actual_micro INTEGER NOT NULL, prompt_tokens INTEGER NOT NULL, completion_tokens "
          "INTEGER NOT NULL, status TEXT NOT NULL, created_unix_ms INTEGER NOT NULL, "
          "settled_unix_ms INTEGER NOT NULL)";
    ex(t.c_str());
  }
  // lease row
  ex("INSERT INTO ledger (request_id, key_id, tenant_id, model, budgets, reserved_micro, status, "
     "created_unix_ms, lease) VALUES "
     "('lease:bench-1','key_a','acme','','b',1000000000000,'open',1,1)");
  std::string sql = "INSERT OR FAIL INTO " + table + " (" +
                    ((variant == 1 || variant == 5 || variant >= 7) ? "seq, " : "") + cols +
                    ") VALUES ";
  int next = 5;
  for (int r = 0; r < rows_per; ++r) {
    sql += r ? ", (" : "(";
    if (variant == 1 || variant == 5 || variant >= 7) sql += "?" + std::to_string(next++) + ", ";
    sql += "?1, ?2, ?3, ?4";
    for (int k = 0; k < 8; ++k) {
      if (variant == 6 && k == 5) {
        sql += ", 'settled'";
        continue;
      }
      sql += ", ?" + std::to_string(next++);
    }
    sql += ")";
  }
  prep(&ins, sql);
  prep(&upd,
       "UPDATE ledger SET reserved_micro = MAX(reserved_micro - ?2, 0) WHERE request_id = ?1 AND "
       "status = 'open' AND lease = 1");
  prep(&chk, "SELECT 1 FROM ledger WHERE request_id = ?1");
  prep(&beg, "BEGIN IMMEDIATE");
  prep(&com, "COMMIT");
  for (long long s = 0; s < (long long)rows_per * commits; ++s) ids.push_back(rid(s));
  run_commits();
  sqlite3_int64 frames = 0;
  fprintf(stderr, "done variant %d rows %lld\n", variant, seqno);
  sqlite3_close(db);
  std::string rm = std::string("rm -rf ") + dir;
  (void)system(rm.c_str());
  (void)frames;
}
