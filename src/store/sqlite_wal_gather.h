#pragma once
// A SQLite VFS that writes a transaction's WAL frames with one system call.
//
// SQLite writes each WAL frame as two writes, its 24-byte header and then the page, so a commit
// of n pages costs 2n pwrite calls. This VFS wraps another one (the platform's default unless
// told otherwise) and passes everything through, except that the writes to a WAL file which
// continue the previous one are gathered in memory and written together:
//   - right after the page of a commit frame (a frame header whose "database size after
//     commit" is set): before SQLite publishes the commit in the wal-index, and with the
//     write's error, if any, reported to SQLite as the commit's error;
//   - before anything else touches the WAL file through this handle (a read, a sync, a
//     truncation, its size, a file control, closing it), or before a write that does not
//     continue the gathered run, or when the run reaches its bound;
//   - before any wal-index lock change, barrier or unmap of the database it belongs to, so that
//     neither another connection nor another process can be told of frames that are not in the
//     file yet.
// Readers never see a commit before its frames are in the file; a kill -9 after a commit finds
// its frames in the file (in the OS's page cache, as before: the durability is the
// `synchronous` level's, unchanged). Should a write that could not report its error fail (a
// barrier or lock change with frames still gathered, which the flush after a commit frame
// leaves empty), the process stops rather than let the frames' absence be published.
//
// Thread safety: registration is thread-safe; a file handle is used as SQLite uses it (one
// connection at a time).
#include <cstdint>

namespace bw::store {

// The registered name of the gathering VFS over SQLite's default VFS (registered at the first
// call; not made the default). Pass it to sqlite3_open_v2.
const char* wal_gather_vfs();

// Registers a gathering VFS named `name` over the VFS named `base` (for tests: a VFS that
// counts what reaches it). Returns the name, or nullptr when `base` does not exist.
const char* register_wal_gather_vfs(const char* name, const char* base);

// While set on a thread, called there after each write to a database file (not a WAL) through a
// gathering VFS. With journal_mode=WAL that is a checkpoint copying pages into the database.
using DatabaseWriteHook = void (*)();
void set_database_write_hook(DatabaseWriteHook hook);

// A sqlite3_file_control() opcode for a connection's main database opened through a gathering
// VFS: writes whatever its WAL handle still gathers (SQLITE_OK when nothing is).
constexpr int kWalGatherFlushOp = 0x6277'0001;

}  // namespace bw::store
