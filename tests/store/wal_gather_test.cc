#include "store/sqlite_wal_gather.h"

#include <gtest/gtest.h>
#include <sqlite3.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <filesystem>
#include <random>
#include <string>

#include "store/sqlite_db.h"

namespace bw::store {
namespace {

// The system calls of SQLite's unix VFS that write a file, replaced (xSetSystemCall) by ones that
// count the writes to files whose name ends in "-wal", and can be told to fail them.
struct WalWrites {
  static inline int count = 0;
  static inline bool fail = false;
  static inline sqlite3_syscall_ptr real_pwrite = nullptr;
  static inline sqlite3_syscall_ptr real_pwrite64 = nullptr;
  static inline sqlite3_syscall_ptr real_write = nullptr;

  static bool is_wal(int fd) {
    char path[64];
    char target[4096];
    std::snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    const ssize_t n = ::readlink(path, target, sizeof target - 1);
    if (n <= 4) return false;
    return std::string_view(target, static_cast<std::size_t>(n)).ends_with("-wal");
  }
  // Whether the write goes on; false: it fails with ENOSPC.
  static bool note(int fd) {
    if (!is_wal(fd)) return true;
    ++count;
    if (fail) {
      errno = ENOSPC;
      return false;
    }
    return true;
  }
  static ssize_t pwrite(int fd, const void* p, size_t n, off_t off) {
    if (!note(fd)) return -1;
    return reinterpret_cast<ssize_t (*)(int, const void*, size_t, off_t)>(real_pwrite)(fd, p, n,
                                                                                       off);
  }
  static ssize_t pwrite64(int fd, const void* p, size_t n, off64_t off) {
    if (!note(fd)) return -1;
    return reinterpret_cast<ssize_t (*)(int, const void*, size_t, off64_t)>(real_pwrite64)(fd, p, n,
                                                                                           off);
  }
  static ssize_t write(int fd, const void* p, size_t n) {
    if (!note(fd)) return -1;
    return reinterpret_cast<ssize_t (*)(int, const void*, size_t)>(real_write)(fd, p, n);
  }

  static sqlite3_vfs* unix_vfs() {
    configure_sqlite();
    return sqlite3_vfs_find("unix");
  }
  static void install() {
    sqlite3_vfs* v = unix_vfs();
    real_pwrite = v->xGetSystemCall(v, "pwrite");
    real_pwrite64 = v->xGetSystemCall(v, "pwrite64");
    real_write = v->xGetSystemCall(v, "write");
    if (real_pwrite) v->xSetSystemCall(v, "pwrite", reinterpret_cast<sqlite3_syscall_ptr>(&pwrite));
    if (real_pwrite64) {
      v->xSetSystemCall(v, "pwrite64", reinterpret_cast<sqlite3_syscall_ptr>(&pwrite64));
    }
    if (real_write) v->xSetSystemCall(v, "write", reinterpret_cast<sqlite3_syscall_ptr>(&write));
    count = 0;
    fail = false;
  }
  static void uninstall() {
    sqlite3_vfs* v = unix_vfs();
    v->xSetSystemCall(v, "pwrite", nullptr);
    v->xSetSystemCall(v, "pwrite64", nullptr);
    v->xSetSystemCall(v, "write", nullptr);
    fail = false;
  }
};

class WalGather : public ::testing::Test {
 public:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() /
           ("bw-wal-gather-" + std::to_string(::getpid()) + "-" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
    path_ = (dir_ / "t.db").string();
    ASSERT_NE(wal_gather_vfs(), nullptr);
    WalWrites::install();
  }
  void TearDown() override {
    WalWrites::uninstall();
    std::filesystem::remove_all(dir_);
  }

  // A connection in WAL mode, synchronous=NORMAL (no sync at commit), without automatic
  // checkpoints, through `vfs` (null: the default).
  sqlite3* connect(const char* vfs) {
    sqlite3* db = nullptr;
    EXPECT_EQ(sqlite3_open_v2(path_.c_str(), &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, vfs),
              SQLITE_OK);
    exec(db, "PRAGMA journal_mode=WAL");
    exec(db, "PRAGMA synchronous=NORMAL");
    exec(db, "PRAGMA wal_autocheckpoint=0");
    return db;
  }
  static int exec(sqlite3* db, const char* sql) {
    const int rc = sqlite3_exec(db, sql, nullptr, nullptr, nullptr);
    EXPECT_TRUE(rc == SQLITE_OK || rc == SQLITE_ROW) << sqlite3_errmsg(db) << ": " << sql;
    return rc;
  }
  static std::int64_t count_rows(sqlite3* db) {
    sqlite3_stmt* st = nullptr;
    EXPECT_EQ(sqlite3_prepare_v2(db, "SELECT COUNT(*) FROM t", -1, &st, nullptr), SQLITE_OK);
    EXPECT_EQ(sqlite3_step(st), SQLITE_ROW);
    const std::int64_t n = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    return n;
  }
  // One transaction of `rows` rows under random keys (each on a page of its own, mostly); the
  // result of its COMMIT.
  int commit_rows(sqlite3* db, int rows) {
    exec(db, "BEGIN IMMEDIATE");
    sqlite3_stmt* st = nullptr;
    EXPECT_EQ(sqlite3_prepare_v2(db, "INSERT INTO t (k, v) VALUES (?1, ?2)", -1, &st, nullptr),
              SQLITE_OK);
    const std::string value(120, 'v');
    for (int i = 0; i < rows; ++i) {
      const std::string key = std::to_string(rng_());
      sqlite3_bind_text(st, 1, key.data(), static_cast<int>(key.size()), SQLITE_TRANSIENT);
      sqlite3_bind_text(st, 2, value.data(), static_cast<int>(value.size()), SQLITE_STATIC);
      EXPECT_EQ(sqlite3_step(st), SQLITE_DONE);
      sqlite3_reset(st);
    }
    sqlite3_finalize(st);
    const int rc = sqlite3_exec(db, "COMMIT", nullptr, nullptr, nullptr);
    if (rc != SQLITE_OK) sqlite3_exec(db, "ROLLBACK", nullptr, nullptr, nullptr);
    return rc;
  }
  std::int64_t wal_bytes() const {
    struct stat s {};
    if (::stat((path_ + "-wal").c_str(), &s) != 0) return 0;
    return s.st_size;
  }

  std::filesystem::path dir_;
  std::string path_;
  std::mt19937_64 rng_{20261206};
};

constexpr const char* kSchema = "CREATE TABLE t (k TEXT PRIMARY KEY, v TEXT) WITHOUT ROWID";

// Without the gathering VFS every frame costs two writes (its header, its page); with it, a
// commit's frames go out in one.
TEST_F(WalGather, OneWritePerCommit) {
  sqlite3* plain = connect(nullptr);
  exec(plain, kSchema);
  for (int i = 0; i < 5; ++i) ASSERT_EQ(commit_rows(plain, 40), SQLITE_OK);
  WalWrites::count = 0;
  const std::int64_t before = wal_bytes();
  ASSERT_EQ(commit_rows(plain, 40), SQLITE_OK);
  const std::int64_t frames = (wal_bytes() - before) / (4096 + 24);
  EXPECT_GE(frames, 3);
  EXPECT_GE(WalWrites::count, 2 * frames);
  sqlite3_close(plain);

  // The first commit starts the WAL over (closing the last connection checkpointed and removed
  // it): SQLite syncs the new WAL header before the frames, which writes it apart.
  sqlite3* gather = connect(wal_gather_vfs());
  for (int i = 0; i < 10; ++i) {
    WalWrites::count = 0;
    ASSERT_EQ(commit_rows(gather, 40), SQLITE_OK);
    EXPECT_EQ(WalWrites::count, i == 0 ? 2 : 1) << "commit " << i;
  }
  EXPECT_EQ(count_rows(gather), 6 * 40 + 10 * 40);
  sqlite3_close(gather);
}

struct HookState {
  WalGather* test;
  sqlite3* reader;
  std::int64_t expected_rows;
  int checked = 0;
  int failures = 0;
};

// Once a commit is done (the WAL hook runs after it is published), its frames are in the file,
// and a connection of the default VFS reads its rows.
TEST_F(WalGather, CommittedFramesAreInTheFileWhenPublished) {
  sqlite3* writer = connect(wal_gather_vfs());
  exec(writer, kSchema);
  sqlite3* reader = connect(nullptr);
  HookState state{this, reader, 0};
  sqlite3_wal_hook(
      writer,
      [](void* arg, sqlite3*, const char*, int frames) {
        auto& s = *static_cast<HookState*>(arg);
        ++s.checked;
        if (s.test->wal_bytes() < 32 + std::int64_t{frames} * (4096 + 24)) ++s.failures;
        if (s.expected_rows > 0 && WalGather::count_rows(s.reader) != s.expected_rows) ++s.failures;
        return SQLITE_OK;
      },
      &state);
  for (int i = 1; i <= 30; ++i) {
    state.expected_rows = 25 * i;
    ASSERT_EQ(commit_rows(writer, 25), SQLITE_OK);
  }
  EXPECT_EQ(state.checked, 30);
  EXPECT_EQ(state.failures, 0);
  // A checkpoint by another connection copies them all.
  exec(reader, "PRAGMA wal_checkpoint(TRUNCATE)");
  EXPECT_EQ(count_rows(reader), 25 * 30);
  sqlite3_close(reader);
  sqlite3_close(writer);
}

// A gathered write that fails fails its commit, and nothing of that transaction is published;
// once writes succeed again, so do commits, and the database is intact.
TEST_F(WalGather, FailedWriteFailsTheCommit) {
  sqlite3* writer = connect(wal_gather_vfs());
  exec(writer, kSchema);
  ASSERT_EQ(commit_rows(writer, 20), SQLITE_OK);
  WalWrites::fail = true;
  EXPECT_NE(commit_rows(writer, 20), SQLITE_OK);
  EXPECT_GE(WalWrites::count, 1);
  WalWrites::fail = false;
  sqlite3* reader = connect(nullptr);
  EXPECT_EQ(count_rows(reader), 20);
  ASSERT_EQ(commit_rows(writer, 20), SQLITE_OK);
  EXPECT_EQ(count_rows(reader), 40);
  sqlite3_stmt* st = nullptr;
  ASSERT_EQ(sqlite3_prepare_v2(reader, "PRAGMA integrity_check", -1, &st, nullptr), SQLITE_OK);
  ASSERT_EQ(sqlite3_step(st), SQLITE_ROW);
  EXPECT_STREQ(reinterpret_cast<const char*>(sqlite3_column_text(st, 0)), "ok");
  sqlite3_finalize(st);
  sqlite3_close(reader);
  sqlite3_close(writer);
  // Reopened from the files alone (the WAL is recovered from what it holds).
  sqlite3* again = connect(nullptr);
  EXPECT_EQ(count_rows(again), 40);
  sqlite3_close(again);
}

// Commits larger than a gathered run (128 KiB) go out in several writes, whole.
TEST_F(WalGather, LargeCommitsAreWrittenWhole) {
  sqlite3* writer = connect(wal_gather_vfs());
  exec(writer, kSchema);
  std::int64_t rows = 0;
  for (int n = 100; n <= 3000; n += 290) {
    ASSERT_EQ(commit_rows(writer, n), SQLITE_OK) << n << " rows";
    rows += n;
  }
  sqlite3* reader = connect(nullptr);
  EXPECT_EQ(count_rows(reader), rows);
  sqlite3_close(reader);
  sqlite3_close(writer);
}

// A transaction larger than the page cache spills frames before its commit and reads them back:
// the reads see what was gathered.
TEST_F(WalGather, SpilledFramesReadBack) {
  sqlite3* writer = connect(wal_gather_vfs());
  exec(writer, kSchema);
  exec(writer, "PRAGMA cache_size=10");
  ASSERT_EQ(commit_rows(writer, 3000), SQLITE_OK);
  EXPECT_EQ(count_rows(writer), 3000);
  sqlite3* reader = connect(nullptr);
  EXPECT_EQ(count_rows(reader), 3000);
  sqlite3_stmt* st = nullptr;
  ASSERT_EQ(sqlite3_prepare_v2(reader, "PRAGMA integrity_check", -1, &st, nullptr), SQLITE_OK);
  ASSERT_EQ(sqlite3_step(st), SQLITE_ROW);
  EXPECT_STREQ(reinterpret_cast<const char*>(sqlite3_column_text(st, 0)), "ok");
  sqlite3_finalize(st);
  sqlite3_close(reader);
  sqlite3_close(writer);
}

}  // namespace
}  // namespace bw::store
