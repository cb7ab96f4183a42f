#include "store/sqlite_wal_gather.h"

#include <sqlite3.h>

#include <algorithm>
#include <cstddef>
#include <cstring>
#include <map>
#include <mutex>
#include <new>
#include <string>
#include <vector>

#include "store/sqlite_db.h"

namespace bw::store {

namespace {

// A gathered run is written once it would grow past this (a commit of more pages is written in
// several runs). The unix VFS writes at most 128 KiB - 1 bytes per call (it masks the length to
// 17 bits: SQLite itself never writes more at once), so a run stays below that.
constexpr std::size_t kRunBound = (std::size_t{1} << 17) - 1;
// SQLite writes a WAL frame's header (24 bytes) and its page separately; the WAL's own header is
// 32 bytes and a page at least 512, so a 24-byte write is a frame header.
constexpr int kFrameHeaderBytes = 24;
// The wal-index lock that a writer holds for its whole transaction (SQLite's WAL_WRITE_LOCK).
constexpr int kWalWriteLock = 0;

struct GatherVfs {
  sqlite3_vfs vfs;  // first: SQLite hands this address back
  sqlite3_vfs* base;
  std::string name;
};

struct GatherFile {
  sqlite3_file base;               // first: SQLite's view of the file (pMethods)
  sqlite3_file* real;              // the wrapped VFS's file, in the same allocation, after this
  GatherFile* main = nullptr;      // a WAL file: its database's file, while both are open
  GatherFile* wal = nullptr;       // a database file: its WAL's file, while both are open
  std::vector<unsigned char> run;  // a WAL file: gathered bytes not written yet
  sqlite3_int64 run_start = 0;     // their offset in the file
  bool commit_page_next = false;   // the last write was a commit frame's header
  // The first failed write of gathered bytes, reported by every later call on the WAL until the
  // write transaction ends: SQLite took those bytes as written, so nothing written after them
  // (above all a commit) may succeed.
  int failed = SQLITE_OK;
};

constexpr std::size_t kFileHead = (sizeof(GatherFile) + 15) & ~std::size_t{15};

GatherFile& gf(sqlite3_file* f) {
  return *reinterpret_cast<GatherFile*>(f);
}

sqlite3_file* real(sqlite3_file* f) {
  return gf(f).real;
}

int flush(GatherFile& w) {
  if (w.failed != SQLITE_OK) return w.failed;
  w.commit_page_next = false;
  if (w.run.empty()) return SQLITE_OK;
  const int rc =
      w.real->pMethods->xWrite(w.real, w.run.data(), static_cast<int>(w.run.size()), w.run_start);
  w.run.clear();
  if (rc != SQLITE_OK) w.failed = rc;
  return rc;
}

void flush_wal_of(sqlite3_file* main) {
  // An error stays with the WAL file (`failed`): its next write, read or sync reports it.
  if (GatherFile* w = gf(main).wal) (void)flush(*w);
}

std::uint32_t get4(const unsigned char* p) {
  return (std::uint32_t{p[0]} << 24) | (std::uint32_t{p[1]} << 16) | (std::uint32_t{p[2]} << 8) |
         std::uint32_t{p[3]};
}

void destroy(sqlite3_file* f) {
  gf(f).~GatherFile();
  f->pMethods = nullptr;
}

// --- a database (and any other non-WAL) file: passed through; the wal-index calls first write
// what the database's WAL handle gathers.

int main_close(sqlite3_file* f) {
  GatherFile& m = gf(f);
  if (m.wal) {
    (void)flush(*m.wal);
    m.wal->main = nullptr;
  }
  const int rc = m.real->pMethods->xClose(m.real);
  destroy(f);
  return rc;
}
int main_read(sqlite3_file* f, void* p, int n, sqlite3_int64 off) {
  return real(f)->pMethods->xRead(real(f), p, n, off);
}
thread_local DatabaseWriteHook database_write_hook = nullptr;

int main_write(sqlite3_file* f, const void* p, int n, sqlite3_int64 off) {
  const int rc = real(f)->pMethods->xWrite(real(f), p, n, off);
  if (database_write_hook) database_write_hook();
  return rc;
}
int main_truncate(sqlite3_file* f, sqlite3_int64 size) {
  return real(f)->pMethods->xTruncate(real(f), size);
}
int main_sync(sqlite3_file* f, int flags) {
  return real(f)->pMethods->xSync(real(f), flags);
}
int main_file_size(sqlite3_file* f, sqlite3_int64* size) {
  return real(f)->pMethods->xFileSize(real(f), size);
}
int any_lock(sqlite3_file* f, int level) {
  return real(f)->pMethods->xLock(real(f), level);
}
int any_unlock(sqlite3_file* f, int level) {
  return real(f)->pMethods->xUnlock(real(f), level);
}
int any_check_reserved(sqlite3_file* f, int* out) {
  return real(f)->pMethods->xCheckReservedLock(real(f), out);
}
int main_file_control(sqlite3_file* f, int op, void* arg) {
  if (op == kWalGatherFlushOp) return gf(f).wal ? flush(*gf(f).wal) : SQLITE_OK;
  return real(f)->pMethods->xFileControl(real(f), op, arg);
}
int any_sector_size(sqlite3_file* f) {
  return real(f)->pMethods->xSectorSize(real(f));
}
int any_device_characteristics(sqlite3_file* f) {
  return real(f)->pMethods->xDeviceCharacteristics(real(f));
}
int any_shm_map(sqlite3_file* f, int page, int page_size, int extend, void volatile** out) {
  return real(f)->pMethods->xShmMap(real(f), page, page_size, extend, out);
}
int main_shm_lock(sqlite3_file* f, int offset, int n, int flags) {
  GatherFile& m = gf(f);
  flush_wal_of(f);
  const int rc = m.real->pMethods->xShmLock(m.real, offset, n, flags);
  if ((flags & SQLITE_SHM_UNLOCK) && offset <= kWalWriteLock && kWalWriteLock < offset + n &&
      m.wal) {
    // The write transaction is over: committed (its frames were written before it was
    // published) or rolled back. What a failed write left is dropped with it.
    m.wal->run.clear();
    m.wal->commit_page_next = false;
    m.wal->failed = SQLITE_OK;
  }
  return rc;
}
void main_shm_barrier(sqlite3_file* f) {
  flush_wal_of(f);
  real(f)->pMethods->xShmBarrier(real(f));
}
int main_shm_unmap(sqlite3_file* f, int delete_flag) {
  flush_wal_of(f);
  return real(f)->pMethods->xShmUnmap(real(f), delete_flag);
}
int any_fetch(sqlite3_file* f, sqlite3_int64 off, int n, void** out) {
  sqlite3_file* r = real(f);
  if (r->pMethods->iVersion < 3) {
    *out = nullptr;
    return SQLITE_OK;
  }
  return r->pMethods->xFetch(r, off, n, out);
}
int any_unfetch(sqlite3_file* f, sqlite3_int64 off, void* p) {
  sqlite3_file* r = real(f);
  if (r->pMethods->iVersion < 3) return SQLITE_OK;
  return r->pMethods->xUnfetch(r, off, p);
}

// --- a WAL file: writes gathered, everything else writes them first.

int wal_close(sqlite3_file* f) {
  GatherFile& w = gf(f);
  const int flushed = flush(w);
  if (w.main) w.main->wal = nullptr;
  const int rc = w.real->pMethods->xClose(w.real);
  destroy(f);
  return rc != SQLITE_OK ? rc : flushed;
}
int wal_read(sqlite3_file* f, void* p, int n, sqlite3_int64 off) {
  if (const int rc = flush(gf(f)); rc != SQLITE_OK) return rc;
  return real(f)->pMethods->xRead(real(f), p, n, off);
}
int wal_write(sqlite3_file* f, const void* p, int n, sqlite3_int64 off) {
  GatherFile& w = gf(f);
  if (w.failed != SQLITE_OK) return w.failed;
  const auto size = static_cast<std::size_t>(n);
  const auto* bytes = static_cast<const unsigned char*>(p);
  const sqlite3_int64 end = w.run_start + static_cast<sqlite3_int64>(w.run.size());
  if (!w.run.empty() && off >= w.run_start && off + n <= end) {
    // Rewritten in place (a frame of this transaction written again).
    std::memcpy(w.run.data() + (off - w.run_start), bytes, size);
  } else if (!w.run.empty() && off == end && w.run.size() + size <= kRunBound) {
    w.run.insert(w.run.end(), bytes, bytes + size);
  } else {
    const bool commit_page = w.commit_page_next;
    if (const int rc = flush(w); rc != SQLITE_OK) return rc;
    if (size >= kRunBound) {
      const int rc = w.real->pMethods->xWrite(w.real, p, n, off);
      if (rc != SQLITE_OK) w.failed = rc;
      return rc;
    }
    w.run_start = off;
    w.run.assign(bytes, bytes + size);
    w.commit_page_next = commit_page;
  }
  if (w.commit_page_next) return flush(w);  // the commit frame is complete: written now
  // A frame header whose "database size after commit" is set: the commit frame, whose page
  // comes next.
  w.commit_page_next = n == kFrameHeaderBytes && get4(bytes + 4) != 0;
  return SQLITE_OK;
}
int wal_truncate(sqlite3_file* f, sqlite3_int64 size) {
  if (const int rc = flush(gf(f)); rc != SQLITE_OK) return rc;
  return real(f)->pMethods->xTruncate(real(f), size);
}
int wal_sync(sqlite3_file* f, int flags) {
  if (const int rc = flush(gf(f)); rc != SQLITE_OK) return rc;
  return real(f)->pMethods->xSync(real(f), flags);
}
int wal_file_size(sqlite3_file* f, sqlite3_int64* size) {
  if (const int rc = flush(gf(f)); rc != SQLITE_OK) return rc;
  return real(f)->pMethods->xFileSize(real(f), size);
}
int wal_file_control(sqlite3_file* f, int op, void* arg) {
  if (const int rc = flush(gf(f)); rc != SQLITE_OK) return rc;
  if (op == kWalGatherFlushOp) return SQLITE_OK;
  return real(f)->pMethods->xFileControl(real(f), op, arg);
}
int wal_shm_lock(sqlite3_file* f, int offset, int n, int flags) {
  return real(f)->pMethods->xShmLock(real(f), offset, n, flags);
}
void wal_shm_barrier(sqlite3_file* f) {
  real(f)->pMethods->xShmBarrier(real(f));
}
int wal_shm_unmap(sqlite3_file* f, int delete_flag) {
  return real(f)->pMethods->xShmUnmap(real(f), delete_flag);
}

const sqlite3_io_methods kMainMethods = {
    3,
    main_close,
    main_read,
    main_write,
    main_truncate,
    main_sync,
    main_file_size,
    any_lock,
    any_unlock,
    any_check_reserved,
    main_file_control,
    any_sector_size,
    any_device_characteristics,
    any_shm_map,
    main_shm_lock,
    main_shm_barrier,
    main_shm_unmap,
    any_fetch,
    any_unfetch,
};

const sqlite3_io_methods kWalMethods = {
    3,
    wal_close,
    wal_read,
    wal_write,
    wal_truncate,
    wal_sync,
    wal_file_size,
    any_lock,
    any_unlock,
    any_check_reserved,
    wal_file_control,
    any_sector_size,
    any_device_characteristics,
    any_shm_map,
    wal_shm_lock,
    wal_shm_barrier,
    wal_shm_unmap,
    any_fetch,
    any_unfetch,
};

sqlite3_vfs* base_of(sqlite3_vfs* vfs) {
  return reinterpret_cast<GatherVfs*>(vfs)->base;
}

int vfs_open(sqlite3_vfs* vfs, const char* name, sqlite3_file* f, int flags, int* out_flags) {
  sqlite3_vfs* base = base_of(vfs);
  auto* file = new (f) GatherFile{};
  file->base.pMethods = nullptr;
  file->real = reinterpret_cast<sqlite3_file*>(reinterpret_cast<unsigned char*>(f) + kFileHead);
  file->real->pMethods = nullptr;
  const int rc = base->xOpen(base, name, file->real, flags, out_flags);
  if (file->real->pMethods == nullptr) {
    // Nothing to close: SQLite will not call xClose.
    file->~GatherFile();
    f->pMethods = nullptr;
    return rc;
  }
  const bool wal = (flags & SQLITE_OPEN_WAL) != 0;
  f->pMethods = wal ? &kWalMethods : &kMainMethods;
  if (wal && rc == SQLITE_OK && name != nullptr) {
    sqlite3_file* db = sqlite3_database_file_object(name);
    if (db != nullptr && db->pMethods == &kMainMethods) {
      file->main = &gf(db);
      gf(db).wal = file;
    }
  }
  return rc;
}

int vfs_delete(sqlite3_vfs* vfs, const char* name, int sync_dir) {
  return base_of(vfs)->xDelete(base_of(vfs), name, sync_dir);
}
int vfs_access(sqlite3_vfs* vfs, const char* name, int flags, int* out) {
  return base_of(vfs)->xAccess(base_of(vfs), name, flags, out);
}
int vfs_full_pathname(sqlite3_vfs* vfs, const char* name, int n, char* out) {
  return base_of(vfs)->xFullPathname(base_of(vfs), name, n, out);
}
void* vfs_dl_open(sqlite3_vfs* vfs, const char* name) {
  return base_of(vfs)->xDlOpen(base_of(vfs), name);
}
void vfs_dl_error(sqlite3_vfs* vfs, int n, char* out) {
  base_of(vfs)->xDlError(base_of(vfs), n, out);
}
void (*vfs_dl_sym(sqlite3_vfs* vfs, void* lib, const char* sym))(void) {
  return base_of(vfs)->xDlSym(base_of(vfs), lib, sym);
}
void vfs_dl_close(sqlite3_vfs* vfs, void* lib) {
  base_of(vfs)->xDlClose(base_of(vfs), lib);
}
int vfs_randomness(sqlite3_vfs* vfs, int n, char* out) {
  return base_of(vfs)->xRandomness(base_of(vfs), n, out);
}
int vfs_sleep(sqlite3_vfs* vfs, int us) {
  return base_of(vfs)->xSleep(base_of(vfs), us);
}
int vfs_current_time(sqlite3_vfs* vfs, double* out) {
  return base_of(vfs)->xCurrentTime(base_of(vfs), out);
}
int vfs_get_last_error(sqlite3_vfs* vfs, int n, char* out) {
  return base_of(vfs)->xGetLastError ? base_of(vfs)->xGetLastError(base_of(vfs), n, out) : 0;
}
int vfs_current_time_int64(sqlite3_vfs* vfs, sqlite3_int64* out) {
  return base_of(vfs)->xCurrentTimeInt64(base_of(vfs), out);
}
int vfs_set_system_call(sqlite3_vfs* vfs, const char* name, sqlite3_syscall_ptr p) {
  return base_of(vfs)->xSetSystemCall(base_of(vfs), name, p);
}
sqlite3_syscall_ptr vfs_get_system_call(sqlite3_vfs* vfs, const char* name) {
  return base_of(vfs)->xGetSystemCall(base_of(vfs), name);
}
const char* vfs_next_system_call(sqlite3_vfs* vfs, const char* name) {
  return base_of(vfs)->xNextSystemCall(base_of(vfs), name);
}

}  // namespace

void set_database_write_hook(DatabaseWriteHook hook) {
  database_write_hook = hook;
}

const char* register_wal_gather_vfs(const char* name, const char* base_name) {
  static std::mutex mu;
  // Registered VFSes live as long as the process: connections may outlive any owner.
  static std::map<std::string, GatherVfs*, std::less<>> registered;
  configure_sqlite();
  std::lock_guard lock(mu);
  if (auto it = registered.find(name); it != registered.end()) return it->second->name.c_str();
  sqlite3_vfs* base = sqlite3_vfs_find(base_name);
  if (base == nullptr) return nullptr;
  auto* g = new GatherVfs{};
  g->base = base;
  g->name = name;
  sqlite3_vfs& v = g->vfs;
  v.iVersion = std::min(base->iVersion, 3);
  v.szOsFile = static_cast<int>(kFileHead) + base->szOsFile;
  v.mxPathname = base->mxPathname;
  v.zName = g->name.c_str();
  v.pAppData = nullptr;
  v.xOpen = vfs_open;
  v.xDelete = vfs_delete;
  v.xAccess = vfs_access;
  v.xFullPathname = vfs_full_pathname;
  v.xDlOpen = vfs_dl_open;
  v.xDlError = vfs_dl_error;
  v.xDlSym = vfs_dl_sym;
  v.xDlClose = vfs_dl_close;
  v.xRandomness = vfs_randomness;
  v.xSleep = vfs_sleep;
  v.xCurrentTime = vfs_current_time;
  v.xGetLastError = vfs_get_last_error;
  if (v.iVersion >= 2) v.xCurrentTimeInt64 = vfs_current_time_int64;
  if (v.iVersion >= 3) {
    v.xSetSystemCall = vfs_set_system_call;
    v.xGetSystemCall = vfs_get_system_call;
    v.xNextSystemCall = vfs_next_system_call;
  }
  if (sqlite3_vfs_register(&v, /*makeDflt=*/0) != SQLITE_OK) {
    delete g;
    return nullptr;
  }
  registered.emplace(g->name, g);
  return g->name.c_str();
}

const char* wal_gather_vfs() {
  static const char* const name = [] {
    configure_sqlite();
    sqlite3_vfs* dflt = sqlite3_vfs_find(nullptr);
    return dflt ? register_wal_gather_vfs("bw-wal-gather", dflt->zName) : nullptr;
  }();
  return name;
}

}  // namespace bw::store
