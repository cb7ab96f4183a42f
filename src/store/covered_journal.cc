#include "store/covered_journal.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <random>

namespace bw::store {

namespace {

constexpr std::uint64_t kMagic = 0x314C4E524A574231ULL;  // "1BWJRNL1"
constexpr std::uint32_t kVersion = 1;
constexpr std::uint32_t kCovered = 1;
constexpr std::uint32_t kWrap = 2;
// Header fields (offsets in the first page).
constexpr std::uint64_t kMagicAt = 0;
constexpr std::uint64_t kVersionAt = 8;
constexpr std::uint64_t kGenerationAt = 16;
constexpr std::uint64_t kCapacityAt = 24;
// Fixed-size fields of a payload: seven integers.
constexpr std::uint64_t kFixedPayload = 7 * 8;
constexpr std::uint64_t kMinCapacity = 4'096;

std::uint64_t pad8(std::uint64_t n) {
  return (n + 7) & ~std::uint64_t{7};
}

std::uint64_t load64(const unsigned char* p) {
  std::uint64_t v;
  std::memcpy(&v, p, 8);
  return v;
}

void store64(unsigned char* p, std::uint64_t v) {
  std::memcpy(p, &v, 8);
}

Error io_error(const std::string& what, const std::string& path) {
  return make_error(500, "server_error", "ledger_journal",
                    what + " " + path + ": " + std::strerror(errno));
}

std::uint64_t new_generation() {
  std::random_device rd;
  std::uint64_t g = (std::uint64_t{rd()} << 32) ^ rd();
  g ^= static_cast<std::uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count());
  return g == 0 ? 1 : g;
}

// The first and the last sizeof(Word) bytes of `n` (sizeof(Word) <= n <= 2 * sizeof(Word)):
// all of them, as two words that may overlap.
template <class Word>
void copy_ends(unsigned char* dst, const char* src, std::size_t n) {
  Word ends[2];
  std::memcpy(&ends[0], src, sizeof(Word));
  std::memcpy(&ends[1], src + n - sizeof(Word), sizeof(Word));
  std::memcpy(dst, &ends[0], sizeof(Word));
  std::memcpy(dst + n - sizeof(Word), &ends[1], sizeof(Word));
}

// `n` bytes from `src` to `dst`. A row's ids and names are short (4 to 32 characters): those are
// copied as two words (or 16-byte blocks) that may overlap, without a call to memcpy.
void copy_short(unsigned char* dst, const char* src, std::size_t n) {
  struct Block {
    unsigned char b[16];
  };
  if (n >= 17 && n <= 32) {
    copy_ends<Block>(dst, src, n);
  } else if (n >= 8 && n <= 16) {
    copy_ends<std::uint64_t>(dst, src, n);
  } else if (n >= 4 && n < 8) {
    copy_ends<std::uint32_t>(dst, src, n);
  } else {
    std::memcpy(dst, src, n);
  }
}

struct Writer {
  unsigned char* p;
  void u64(std::uint64_t v) {
    store64(p, v);
    p += 8;
  }
  void str(std::string_view s) {
    const auto n = static_cast<std::uint32_t>(s.size());
    std::memcpy(p, &n, 4);
    copy_short(p + 4, s.data(), s.size());
    p += 4 + s.size();
  }
};

struct Reader {
  const unsigned char* p;
  const unsigned char* end;
  bool ok = true;
  std::int64_t i64() {
    if (end - p < 8) {
      ok = false;
      return 0;
    }
    const auto v = static_cast<std::int64_t>(load64(p));
    p += 8;
    return v;
  }
  std::uint32_t u32() {
    if (end - p < 4) {
      ok = false;
      return 0;
    }
    std::uint32_t n;
    std::memcpy(&n, p, 4);
    p += 4;
    return n;
  }
  std::string str() {
    const std::uint32_t n = u32();
    if (!ok || static_cast<std::uint64_t>(end - p) < n) {
      ok = false;
      return {};
    }
    std::string s(reinterpret_cast<const char*>(p), n);
    p += n;
    return s;
  }
};

}  // namespace

std::uint64_t CoveredJournal::checksum(std::uint64_t generation, std::uint64_t seq,
                                       std::uint32_t kind, std::uint32_t len,
                                       const unsigned char* payload, std::uint64_t padded) {
  std::uint64_t h = 0x243F6A8885A308D3ULL ^ generation;
  const auto mix = [&h](std::uint64_t x) {
    h ^= x;
    h *= 0x9E3779B97F4A7C15ULL;
    h ^= h >> 29;
  };
  mix(seq);
  mix((std::uint64_t{kind} << 32) | len);
  // Four words a round: the same hash, a quarter of the loop's own steps.
  std::uint64_t i = 0;
  for (; i + 32 <= padded; i += 32) {
    mix(load64(payload + i));
    mix(load64(payload + i + 8));
    mix(load64(payload + i + 16));
    mix(load64(payload + i + 24));
  }
  for (; i < padded; i += 8) mix(load64(payload + i));
  mix(padded);
  return h;
}

namespace {

std::uint64_t text_payload_bytes(const cost::LedgerCoveredText& row, std::uint64_t lease_id_bytes) {
  std::uint64_t n = kFixedPayload + 5 * 4 + row.request_id.size() + lease_id_bytes +
                    row.key.size() + row.tenant.size() + row.model.size() + 4;
  for (const auto& b : *row.budgets) n += 4 + b.size();
  return n;
}

}  // namespace

std::uint64_t CoveredJournal::payload_bytes(const cost::LedgerCovered& row) {
  return text_payload_bytes(cost::LedgerCoveredText::of(row), row.lease_id.size());
}

std::uint64_t CoveredJournal::record_bytes(const cost::LedgerCovered& row) {
  return kRecordHead + pad8(payload_bytes(row));
}

std::uint64_t CoveredJournal::record_bytes(const cost::LedgerCoveredText& row,
                                           std::uint64_t lease_id_bytes) {
  return kRecordHead + pad8(text_payload_bytes(row, lease_id_bytes));
}

void CoveredJournal::encode(const cost::LedgerCovered& row, unsigned char* out) {
  Writer w{out};
  w.u64(static_cast<std::uint64_t>(row.reserved_micro));
  w.u64(static_cast<std::uint64_t>(row.actual_micro));
  w.u64(static_cast<std::uint64_t>(row.prompt_tokens));
  w.u64(static_cast<std::uint64_t>(row.completion_tokens));
  w.u64(static_cast<std::uint64_t>(row.created_unix_ms));
  w.u64(static_cast<std::uint64_t>(row.settled_unix_ms));
  w.u64(static_cast<std::uint64_t>(row.status));
  w.str(row.request_id);
  w.str(row.lease_id);
  w.str(row.key());
  w.str(row.tenant());
  w.str(row.model);
  const auto& budgets = row.budget_ids();
  const auto n = static_cast<std::uint32_t>(budgets.size());
  std::memcpy(w.p, &n, 4);
  w.p += 4;
  for (const auto& b : budgets) w.str(b);
}

bool CoveredJournal::decode(const unsigned char* in, std::uint64_t len, cost::LedgerCovered& row) {
  Reader r{in, in + len};
  row = cost::LedgerCovered{};
  row.reserved_micro = r.i64();
  row.actual_micro = r.i64();
  row.prompt_tokens = r.i64();
  row.completion_tokens = r.i64();
  row.created_unix_ms = r.i64();
  row.settled_unix_ms = r.i64();
  const std::int64_t status = r.i64();
  if (status != static_cast<std::int64_t>(cost::LedgerStatus::kSettled) &&
      status != static_cast<std::int64_t>(cost::LedgerStatus::kReleased)) {
    return false;
  }
  row.status = static_cast<cost::LedgerStatus>(status);
  row.request_id = r.str();
  row.lease_id = r.str();
  row.key_id = r.str();
  row.tenant_id = r.str();
  row.model = r.str();
  const std::uint32_t n = r.u32();
  if (!r.ok || n > len) return false;
  row.budgets.reserve(n);
  for (std::uint32_t i = 0; i < n && r.ok; ++i) row.budgets.push_back(r.str());
  return r.ok && r.p == r.end;
}

CoveredJournal::CoveredJournal(std::string path, int fd) : path_(std::move(path)), fd_(fd) {}

CoveredJournal::~CoveredJournal() {
  unmap();
  if (fd_ >= 0) ::close(fd_);  // drops the lock
}

Result<std::unique_ptr<CoveredJournal>> CoveredJournal::open(const std::string& path,
                                                             std::uint64_t capacity,
                                                             OpenOutcome* outcome) {
  if (outcome) *outcome = OpenOutcome::kOpened;
  const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (fd < 0) return io_error("cannot open ledger journal", path);
  if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
    const int e = errno;
    ::close(fd);
    if (e == EWOULDBLOCK) {
      if (outcome) *outcome = OpenOutcome::kHeldElsewhere;
      return std::unique_ptr<CoveredJournal>();
    }
    errno = e;
    return io_error("cannot lock ledger journal", path);
  }
  std::unique_ptr<CoveredJournal> j(new CoveredJournal(path, fd));
  struct stat st {};
  if (::fstat(fd, &st) != 0) return io_error("cannot stat ledger journal", path);
  const auto size = static_cast<std::uint64_t>(st.st_size);
  if (size >= kHeaderBytes + kMinCapacity) {
    // An existing file: its header names its capacity and generation; one that does not match
    // its size (or a torn reset) has nothing to replay and starts over.
    unsigned char head[kHeaderBytes];
    if (::pread(fd, head, sizeof head, 0) == static_cast<ssize_t>(sizeof head) &&
        load64(head + kMagicAt) == kMagic &&
        static_cast<std::uint32_t>(load64(head + kVersionAt)) == kVersion &&
        load64(head + kCapacityAt) + kHeaderBytes == size && load64(head + kCapacityAt) % 8 == 0) {
      auto m = j->map(load64(head + kCapacityAt));
      if (!m.ok()) return m.error();
      j->generation_ = load64(head + kGenerationAt);
      return j;
    }
  }
  auto r = j->reset(capacity);
  if (!r.ok()) return r.error();
  return j;
}

Result<Ok> CoveredJournal::map(std::uint64_t capacity) {
  void* p = ::mmap(nullptr, kHeaderBytes + capacity, PROT_READ | PROT_WRITE, MAP_SHARED, fd_, 0);
  if (p == MAP_FAILED) return io_error("cannot map ledger journal", path_);
  base_ = static_cast<unsigned char*>(p);
  mapped_ = kHeaderBytes + capacity;
  capacity_ = capacity;
  return Ok{};
}

void CoveredJournal::unmap() {
  if (base_) ::munmap(base_, mapped_);
  base_ = nullptr;
  mapped_ = 0;
}

Result<Ok> CoveredJournal::reset(std::uint64_t capacity) {
  capacity = std::max(pad8(capacity), kMinCapacity);
  unmap();
  // Truncated to nothing first: a kill before the new header is written leaves a file without a
  // valid header, i.e. one with nothing to replay.
  if (::ftruncate(fd_, 0) != 0 ||
      ::ftruncate(fd_, static_cast<off_t>(kHeaderBytes + capacity)) != 0) {
    return io_error("cannot size ledger journal", path_);
  }
  auto m = map(capacity);
  if (!m.ok()) return m;
  generation_ = new_generation();
  store64(base_ + kVersionAt, kVersion);
  store64(base_ + kGenerationAt, generation_);
  store64(base_ + kCapacityAt, capacity);
  std::atomic_ref<std::uint64_t>(*reinterpret_cast<std::uint64_t*>(base_ + kMagicAt))
      .store(kMagic, std::memory_order_release);
  head_ = 0;
  next_seq_ = 1;
  applied_.store(0, std::memory_order_release);
  return Ok{};
}

void CoveredJournal::write_head(std::uint64_t off, std::uint32_t kind, std::uint32_t len,
                                std::uint64_t seq, std::uint64_t sum) {
  unsigned char* h = data() + off;
  store64(h + 8, seq);
  store64(h + 16, sum);
  // Published last: before this store the record is not there for a reader.
  std::atomic_ref<std::uint64_t>(*reinterpret_cast<std::uint64_t*>(h))
      .store((std::uint64_t{kind} << 32) | len, std::memory_order_release);
}

bool CoveredJournal::fits(std::uint64_t bytes) const {
  if (bytes > capacity_) return false;
  const std::uint64_t left = capacity_ - head_ % capacity_;
  const std::uint64_t need = bytes + (left < bytes ? left : 0);
  return head_ + need - applied() <= capacity_;
}

bool CoveredJournal::append(const cost::LedgerCovered& row, Position& at) {
  const std::uint64_t plen = payload_bytes(row);
  const std::uint64_t padded = pad8(plen);
  const std::uint64_t size = kRecordHead + padded;
  if (plen > 0xffffffffULL || !fits(size)) return false;
  std::uint64_t off = head_ % capacity_;
  const std::uint64_t left = capacity_ - off;
  if (left < size) {
    // Not across the end: a marker (when a head fits) sends the reader back to the start.
    if (left >= kRecordHead) {
      write_head(off, kWrap, 0, next_seq_, checksum(generation_, next_seq_, kWrap, 0, nullptr, 0));
      ++next_seq_;
    }
    head_ += left;
    off = 0;
  }
  unsigned char* p = data() + off + kRecordHead;
  // The padding (under 8 bytes, after a payload of at least 8) is zeroed by one word stored
  // before the payload, which then overwrites the word's part that is its own.
  store64(p + padded - 8, 0);
  encode(row, p);
  const auto len = static_cast<std::uint32_t>(plen);
  write_head(off, kCovered, len, next_seq_,
             checksum(generation_, next_seq_, kCovered, len, p, padded));
  head_ += size;
  at = Position{head_, next_seq_};
  ++next_seq_;
  return true;
}

void CoveredJournal::set_applied(std::uint64_t end) {
  std::uint64_t cur = applied_.load(std::memory_order_relaxed);
  while (end > cur && !applied_.compare_exchange_weak(cur, end, std::memory_order_release,
                                                      std::memory_order_relaxed)) {
  }
}

std::vector<CoveredJournal::Replayed> CoveredJournal::replay(Position from) const {
  std::vector<Replayed> out;
  std::uint64_t pos = from.end;
  std::uint64_t seq = from.seq + 1;
  // The records not yet applied take at most one lap of the ring.
  while (pos - from.end < capacity_) {
    const std::uint64_t off = pos % capacity_;
    const std::uint64_t left = capacity_ - off;
    if (left < kRecordHead) {
      pos += left;
      continue;
    }
    const unsigned char* h = data() + off;
    const std::uint64_t kind_len =
        std::atomic_ref<const std::uint64_t>(*reinterpret_cast<const std::uint64_t*>(h))
            .load(std::memory_order_acquire);
    const auto kind = static_cast<std::uint32_t>(kind_len >> 32);
    const auto len = static_cast<std::uint32_t>(kind_len);
    if (load64(h + 8) != seq) break;
    const std::uint64_t sum = load64(h + 16);
    if (kind == kWrap) {
      if (len != 0 || sum != checksum(generation_, seq, kWrap, 0, nullptr, 0)) break;
      pos += left;
      ++seq;
      continue;
    }
    if (kind != kCovered) break;
    const std::uint64_t padded = pad8(len);
    if (kRecordHead + padded > left) break;
    if (sum != checksum(generation_, seq, kCovered, len, h + kRecordHead, padded)) break;
    Replayed r;
    if (!decode(h + kRecordHead, len, r.row)) break;
    pos += kRecordHead + padded;
    r.at = Position{pos, seq};
    out.push_back(std::move(r));
    ++seq;
  }
  return out;
}

}  // namespace bw::store
