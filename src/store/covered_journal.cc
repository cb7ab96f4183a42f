#include "store/covered_journal.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <bit>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <random>

namespace bw::store {

namespace {

constexpr std::uint64_t kMagic = 0x314C4E524A574231ULL;  // "1BWJRNL1"
// Version 2: a 16-byte record head and variable-length integers (see the header). Version 1
// files (a 24-byte head, fixed-width integers) are still replayed; reset() makes any file a
// version 2 one.
constexpr std::uint32_t kVersion = 2;
constexpr std::uint32_t kVersion1 = 1;
constexpr std::uint32_t kCovered = 1;
constexpr std::uint32_t kWrap = 2;
// Header fields (offsets in the first page).
constexpr std::uint64_t kMagicAt = 0;
constexpr std::uint64_t kVersionAt = 8;
constexpr std::uint64_t kGenerationAt = 16;
constexpr std::uint64_t kCapacityAt = 24;
// Version 2: the status byte, the creation time (8 bytes) and five variable-length integers of
// at most 10 bytes each.
constexpr std::uint64_t kMaxFixedPayload = 1 + 8 + 5 * 10;
// A version 2 head's length field: 24 bits.
constexpr std::uint64_t kMaxPayload = (std::uint64_t{1} << 24) - 1;
constexpr std::uint64_t kMinCapacity = 4'096;

std::uint64_t pad8(std::uint64_t n) {
  return (n + 7) & ~std::uint64_t{7};
}

// A version 2 record head's first word: the sequence number's low 32 bits, the kind (8 bits) and
// the payload's length (24 bits). The checksum covers the whole sequence number.
std::uint64_t head_word(std::uint32_t kind, std::uint32_t len, std::uint64_t seq) {
  return (static_cast<std::uint64_t>(static_cast<std::uint32_t>(seq)) << 32) |
         (static_cast<std::uint64_t>(kind & 0xff) << 24) | (len & 0xffffff);
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

// The bytes of `v` as a variable-length integer: 7 bits a byte, low bits first.
std::uint64_t varint_bytes(std::uint64_t v) {
  return (static_cast<std::uint64_t>(std::bit_width(v | 1)) + 6) / 7;
}

// A signed integer as an unsigned one whose magnitude is small when the integer's is.
std::uint64_t zigzag(std::int64_t v) {
  return (static_cast<std::uint64_t>(v) << 1) ^ static_cast<std::uint64_t>(v >> 63);
}

std::int64_t unzigzag(std::uint64_t u) {
  return static_cast<std::int64_t>(u >> 1) ^ -static_cast<std::int64_t>(u & 1);
}

struct Writer {
  unsigned char* p;
  void u64(std::uint64_t v) {
    store64(p, v);
    p += 8;
  }
  void var(std::uint64_t v) {
    // Nearly every length and token count takes one byte, and most amounts two or three.
    if (v < 0x80) {
      *p++ = static_cast<unsigned char>(v);
      return;
    }
    if (v < 0x4000) {
      p[0] = static_cast<unsigned char>(v | 0x80);
      p[1] = static_cast<unsigned char>(v >> 7);
      p += 2;
      return;
    }
    while (v >= 0x80) {
      *p++ = static_cast<unsigned char>(v | 0x80);
      v >>= 7;
    }
    *p++ = static_cast<unsigned char>(v);
  }
  void str(std::string_view s) {
    var(s.size());
    copy_short(p, s.data(), s.size());
    p += s.size();
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
  std::uint64_t var() {
    std::uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      if (p == end) break;
      const unsigned char b = *p++;
      v |= static_cast<std::uint64_t>(b & 0x7f) << shift;
      if ((b & 0x80) == 0) return v;
    }
    ok = false;
    return 0;
  }
  std::string bytes(std::uint64_t n) {
    if (!ok || static_cast<std::uint64_t>(end - p) < n) {
      ok = false;
      return {};
    }
    std::string s(reinterpret_cast<const char*>(p), n);
    p += n;
    return s;
  }
  // Version 1: a 4-byte length.
  std::string str_v1() {
    const std::uint32_t n = u32();
    return bytes(n);
  }
  std::string str() { return bytes(var()); }
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

std::uint64_t str_bytes(std::string_view s) {
  return varint_bytes(s.size()) + s.size();
}

// The payload's strings: the request id, the key, the tenant, the model and the budgets (the
// lease id is not in `row`).
std::uint64_t text_bytes(const cost::LedgerCoveredText& row) {
  std::uint64_t n = str_bytes(row.request_id) + str_bytes(row.key) + str_bytes(row.tenant) +
                    str_bytes(row.model) + varint_bytes(row.budgets->size());
  for (const auto& b : *row.budgets) n += str_bytes(b);
  return n;
}

// The variable-length integers after the status byte and the creation time, in the payload's
// order.
struct Integers {
  std::uint64_t v[5];
};

Integers integers_of(const cost::LedgerCovered& row) {
  return {{zigzag(row.reserved_micro), zigzag(row.actual_micro), zigzag(row.prompt_tokens),
           zigzag(row.completion_tokens),
           // The settlement a few milliseconds or seconds after the reservation: 1-3 bytes.
           zigzag(static_cast<std::int64_t>(static_cast<std::uint64_t>(row.settled_unix_ms) -
                                            static_cast<std::uint64_t>(row.created_unix_ms)))}};
}

// At least a record's payload, from its strings and its lease id's length, without the sizes of
// the variable-length integers that count them: a count n takes at most 1 + n / 64 bytes (1
// below 128, then 7 bits a byte), so the six counts (five strings' lengths and the budgets'
// count) and the budgets' lengths take at most their number plus the sum of what they count / 64.
std::uint64_t payload_bound(const cost::LedgerCoveredText& row, std::uint64_t lease_id_bytes) {
  const std::uint64_t budgets = row.budgets->size();
  std::uint64_t text = row.request_id.size() + lease_id_bytes + row.key.size() + row.tenant.size() +
                       row.model.size();
  for (const auto& b : *row.budgets) text += b.size();
  return kMaxFixedPayload + text + 6 + budgets + (text + budgets) / 64;
}

}  // namespace

std::uint64_t CoveredJournal::payload_bytes(const cost::LedgerCovered& row) {
  const Integers ints = integers_of(row);
  std::uint64_t n = 1 + 8 + str_bytes(row.lease_id) + text_bytes(cost::LedgerCoveredText::of(row));
  for (const std::uint64_t v : ints.v) n += varint_bytes(v);
  return n;
}

std::uint64_t CoveredJournal::record_bytes(const cost::LedgerCovered& row) {
  return kRecordHead + pad8(payload_bytes(row));
}

std::uint64_t CoveredJournal::record_bytes(const cost::LedgerCoveredText& row,
                                           std::uint64_t lease_id_bytes) {
  return kRecordHead + pad8(payload_bound(row, lease_id_bytes));
}

std::uint64_t CoveredJournal::encode(const cost::LedgerCovered& row, unsigned char* out) {
  const Integers ints = integers_of(row);
  Writer w{out};
  *w.p++ = static_cast<unsigned char>(row.status);
  w.u64(static_cast<std::uint64_t>(row.created_unix_ms));
  for (const std::uint64_t v : ints.v) w.var(v);
  w.str(row.request_id);
  w.str(row.lease_id);
  w.str(row.key());
  w.str(row.tenant());
  w.str(row.model);
  const auto& budgets = row.budget_ids();
  w.var(budgets.size());
  for (const auto& b : budgets) w.str(b);
  return static_cast<std::uint64_t>(w.p - out);
}

namespace {

bool closed_status(std::uint64_t status) {
  return status == static_cast<std::uint64_t>(cost::LedgerStatus::kSettled) ||
         status == static_cast<std::uint64_t>(cost::LedgerStatus::kReleased);
}

// The strings after the lease id, as `str` reads each: the key, the tenant, the model, then the
// budgets after their count (`count`).
template <class Str, class Count>
bool decode_strings(Reader& r, std::uint64_t len, cost::LedgerCovered& row, Str str, Count count) {
  std::string key = str();
  std::string tenant = str();
  row.model = str();
  const std::uint64_t n = count();
  if (!r.ok || n > len) return false;
  std::vector<std::string> budgets;
  budgets.reserve(n);
  for (std::uint64_t i = 0; i < n && r.ok; ++i) budgets.push_back(str());
  if (!r.ok || r.p != r.end) return false;
  row.set_party(std::move(key), std::move(tenant), std::move(budgets));
  return true;
}

}  // namespace

bool CoveredJournal::decode(const unsigned char* in, std::uint64_t len, cost::LedgerCovered& row) {
  Reader r{in, in + len};
  row = cost::LedgerCovered{};
  if (len == 0 || !closed_status(*r.p)) return false;
  row.status = static_cast<cost::LedgerStatus>(*r.p++);
  row.created_unix_ms = r.i64();
  Integers ints;
  for (std::uint64_t& v : ints.v) v = r.var();
  if (!r.ok) return false;
  row.reserved_micro = unzigzag(ints.v[0]);
  row.actual_micro = unzigzag(ints.v[1]);
  row.prompt_tokens = unzigzag(ints.v[2]);
  row.completion_tokens = unzigzag(ints.v[3]);
  row.settled_unix_ms = static_cast<std::int64_t>(static_cast<std::uint64_t>(row.created_unix_ms) +
                                                  static_cast<std::uint64_t>(unzigzag(ints.v[4])));
  row.request_id = r.str();
  row.lease_id = r.str();
  return decode_strings(
      r, len, row, [&r] { return r.str(); }, [&r] { return r.var(); });
}

bool CoveredJournal::decode_v1(const unsigned char* in, std::uint64_t len,
                               cost::LedgerCovered& row) {
  Reader r{in, in + len};
  row = cost::LedgerCovered{};
  row.reserved_micro = r.i64();
  row.actual_micro = r.i64();
  row.prompt_tokens = r.i64();
  row.completion_tokens = r.i64();
  row.created_unix_ms = r.i64();
  row.settled_unix_ms = r.i64();
  const std::int64_t status = r.i64();
  if (status < 0 || !closed_status(static_cast<std::uint64_t>(status))) return false;
  row.status = static_cast<cost::LedgerStatus>(status);
  row.request_id = r.str_v1();
  row.lease_id = r.str_v1();
  return decode_strings(
      r, len, row, [&r] { return r.str_v1(); }, [&r] { return r.u32(); });
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
        (load64(head + kVersionAt) == kVersion || load64(head + kVersionAt) == kVersion1) &&
        load64(head + kCapacityAt) + kHeaderBytes == size && load64(head + kCapacityAt) % 8 == 0) {
      auto m = j->map(load64(head + kCapacityAt));
      if (!m.ok()) return m.error();
      j->generation_ = load64(head + kGenerationAt);
      j->version_ = static_cast<std::uint32_t>(load64(head + kVersionAt));
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
  version_ = kVersion;
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
  store64(h + 8, sum);
  // Published last: before this store the record is not there for a reader.
  std::atomic_ref<std::uint64_t>(*reinterpret_cast<std::uint64_t*>(h))
      .store(head_word(kind, len, seq), std::memory_order_release);
}

bool CoveredJournal::fits(std::uint64_t bytes) const {
  if (bytes > capacity_) return false;
  const std::uint64_t left = capacity_ - head_ % capacity_;
  const std::uint64_t need = bytes + (left < bytes ? left : 0);
  return head_ + need - applied() <= capacity_;
}

bool CoveredJournal::append(const cost::LedgerCovered& row, Position& at) {
  // Room for the most the row can take: its integers' sizes are known once it is written.
  const std::uint64_t bound = payload_bound(cost::LedgerCoveredText::of(row), row.lease_id.size());
  const std::uint64_t room = kRecordHead + pad8(bound);
  if (version_ != kVersion || bound > kMaxPayload || !fits(room)) return false;
  std::uint64_t off = head_ % capacity_;
  const std::uint64_t left = capacity_ - off;
  if (left < room) {
    // Not across the end: a marker (when a head fits) sends the reader back to the start.
    if (left >= kRecordHead) {
      write_head(off, kWrap, 0, next_seq_, checksum(generation_, next_seq_, kWrap, 0, nullptr, 0));
      ++next_seq_;
    }
    head_ += left;
    off = 0;
  }
  unsigned char* p = data() + off + kRecordHead;
  const std::uint64_t plen = encode(row, p);
  const std::uint64_t padded = pad8(plen);
  // The padding (under 8 bytes, after a payload of more than 8) zeroed over whatever the ring
  // held there: the payload's last word keeps only its own bytes.
  if (const std::uint64_t pad = padded - plen; pad != 0) {
    store64(p + padded - 8, load64(p + padded - 8) & (~std::uint64_t{0} >> (8 * pad)));
  }
  const auto len = static_cast<std::uint32_t>(plen);
  write_head(off, kCovered, len, next_seq_,
             checksum(generation_, next_seq_, kCovered, len, p, padded));
  head_ += kRecordHead + padded;
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
  const bool v1 = version_ == kVersion1;
  const std::uint64_t head_bytes = v1 ? kRecordHeadV1 : kRecordHead;
  std::vector<Replayed> out;
  std::uint64_t pos = from.end;
  std::uint64_t seq = from.seq + 1;
  // The records not yet applied take at most one lap of the ring.
  while (pos - from.end < capacity_) {
    const std::uint64_t off = pos % capacity_;
    const std::uint64_t left = capacity_ - off;
    if (left < head_bytes) {
      pos += left;
      continue;
    }
    const unsigned char* h = data() + off;
    const std::uint64_t word =
        std::atomic_ref<const std::uint64_t>(*reinterpret_cast<const std::uint64_t*>(h))
            .load(std::memory_order_acquire);
    std::uint32_t kind;
    std::uint32_t len;
    std::uint64_t sum;
    if (v1) {
      // The kind and the length, the sequence number, the checksum.
      kind = static_cast<std::uint32_t>(word >> 32);
      len = static_cast<std::uint32_t>(word);
      if (load64(h + 8) != seq) break;
      sum = load64(h + 16);
    } else {
      kind = static_cast<std::uint32_t>(word >> 24) & 0xff;
      len = static_cast<std::uint32_t>(word) & 0xffffff;
      if (word != head_word(kind, len, seq)) break;
      sum = load64(h + 8);
    }
    if (kind == kWrap) {
      if (len != 0 || sum != checksum(generation_, seq, kWrap, 0, nullptr, 0)) break;
      pos += left;
      ++seq;
      continue;
    }
    if (kind != kCovered) break;
    const std::uint64_t padded = pad8(len);
    if (head_bytes + padded > left) break;
    if (sum != checksum(generation_, seq, kCovered, len, h + head_bytes, padded)) break;
    Replayed r;
    if (!(v1 ? decode_v1 : decode)(h + head_bytes, len, r.row)) break;
    // Consecutive rows of one party (nearly all of them: one key's) share one copy of it.
    if (!out.empty() && *out.back().row.party == *r.row.party) r.row.party = out.back().row.party;
    pos += head_bytes + padded;
    r.at = Position{pos, seq};
    out.push_back(std::move(r));
    ++seq;
  }
  return out;
}

}  // namespace bw::store
