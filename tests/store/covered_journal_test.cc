// The covered-row journal (store/covered_journal.h) and its replay by the SQLite ledger.
#include <gtest/gtest.h>

#include <fcntl.h>
#include <signal.h>
#include <sqlite3.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <future>
#include <limits>
#include <string>
#include <thread>
#include <vector>

#include "store/covered_journal.h"
#include "store/sqlite_ledger.h"
#include "support/temp_dir.h"

namespace bw::store {
namespace {

using cost::LedgerCovered;
using cost::LedgerStatus;

constexpr std::int64_t kJan1 = 1'767'225'600'000;  // 2026-01-01T00:00:00Z

LedgerCovered row_of(const std::string& id, std::int64_t actual, const std::string& lease = "L1") {
  LedgerCovered c;
  c.request_id = id;
  c.lease_id = lease;
  c.set_party("key_a", "acme", {"key:key_a/total", "global/daily"});
  c.model = "gpt-4.1";
  c.reserved_micro = 10'000;
  c.actual_micro = actual;
  c.prompt_tokens = 3;
  c.completion_tokens = 4;
  c.created_unix_ms = kJan1 + 1;
  c.settled_unix_ms = kJan1 + 2;
  return c;
}

std::unique_ptr<CoveredJournal> open_journal(const std::string& path, std::uint64_t capacity,
                                             CoveredJournal::OpenOutcome* held = nullptr) {
  auto j = CoveredJournal::open(path, capacity, held);
  EXPECT_TRUE(j.ok()) << (j.ok() ? "" : j.error().message);
  return j.ok() ? std::move(*j) : nullptr;
}

std::vector<std::string> ids_of(const std::vector<CoveredJournal::Replayed>& rs) {
  std::vector<std::string> ids;
  for (const auto& r : rs) ids.push_back(r.row.request_id.str());
  return ids;
}

// The checksum is part of the file's format: journals written by earlier builds replay only if it
// stays the same (values of the word-at-a-time definition: h ^= word, h *= golden, h ^= h >> 29).
TEST(CoveredJournal, ChecksumKeepsItsFormat) {
  unsigned char payload[72];
  for (int i = 0; i < 72; ++i) payload[i] = static_cast<unsigned char>(i + 1);
  EXPECT_EQ(CoveredJournal::checksum(0x1234, 7, 1, 72, payload, 72), 0x670e61781f6e50bbULL);
  EXPECT_EQ(CoveredJournal::checksum(0x1234, 7, 1, 45, payload, 48), 0x8296a3f0c2072ed0ULL);
  EXPECT_EQ(CoveredJournal::checksum(0x1234, 8, 2, 0, nullptr, 0), 0xcf3128e982807558ULL);
}

// A version 1 record's bytes as that format defines them: the head (kind and length, sequence
// number, checksum) and the payload (seven integers, then each string as its 4-byte length and
// its bytes, the budgets after their count), zero-padded to 8 bytes.
std::vector<unsigned char> reference_record_v1(const LedgerCovered& r, std::uint64_t generation,
                                               std::uint64_t seq) {
  std::vector<unsigned char> payload;
  const auto put = [&payload](const void* p, std::size_t n) {
    const auto* b = static_cast<const unsigned char*>(p);
    payload.insert(payload.end(), b, b + n);
  };
  for (std::int64_t v :
       {r.reserved_micro, r.actual_micro, r.prompt_tokens, r.completion_tokens, r.created_unix_ms,
        r.settled_unix_ms, static_cast<std::int64_t>(r.status)}) {
    put(&v, 8);
  }
  const auto str = [&put](std::string_view s) {
    const auto n = static_cast<std::uint32_t>(s.size());
    put(&n, 4);
    put(s.data(), s.size());
  };
  str(r.request_id.str());
  str(r.lease_id);
  str(r.key());
  str(r.tenant());
  str(r.model.str());
  const auto count = static_cast<std::uint32_t>(r.budget_ids().size());
  put(&count, 4);
  for (const auto& b : r.budget_ids()) str(b);
  const auto len = static_cast<std::uint32_t>(payload.size());
  payload.resize((payload.size() + 7) / 8 * 8, 0);
  std::vector<unsigned char> rec(CoveredJournal::kRecordHeadV1);
  const std::uint64_t kind_len = (std::uint64_t{1} << 32) | len;
  const std::uint64_t sum =
      CoveredJournal::checksum(generation, seq, 1, len, payload.data(), payload.size());
  std::memcpy(rec.data(), &kind_len, 8);
  std::memcpy(rec.data() + 8, &seq, 8);
  std::memcpy(rec.data() + 16, &sum, 8);
  rec.insert(rec.end(), payload.begin(), payload.end());
  return rec;
}

// A record's bytes as version 2 defines them: the head (the sequence number's low 32 bits, the
// kind in 8 bits and the length in 24, then the checksum) and the payload (the status byte, the
// creation time in 8 bytes, five zigzag variable-length integers, the last the settlement's time
// after the creation's, then each string as its variable-length length and its bytes, the budgets
// after their count), zero-padded to 8 bytes. Written out byte by byte, as the format's definition,
// not with the journal's code.
std::vector<unsigned char> reference_record(const LedgerCovered& r, std::uint64_t generation,
                                            std::uint64_t seq) {
  std::vector<unsigned char> payload;
  const auto var = [&payload](std::uint64_t v) {
    do {
      unsigned char b = v & 0x7f;
      v >>= 7;
      if (v != 0) b |= 0x80;
      payload.push_back(b);
    } while (v != 0);
  };
  const auto zz = [](std::int64_t v) {
    return v >= 0 ? static_cast<std::uint64_t>(v) * 2
                  : static_cast<std::uint64_t>(-(v + 1)) * 2 + 1;
  };
  payload.push_back(static_cast<unsigned char>(r.status));
  for (int i = 0; i < 8; ++i) {
    payload.push_back(
        static_cast<unsigned char>(static_cast<std::uint64_t>(r.created_unix_ms) >> (8 * i)));
  }
  for (std::int64_t v : {r.reserved_micro, r.actual_micro, r.prompt_tokens, r.completion_tokens,
                         r.settled_unix_ms - r.created_unix_ms}) {
    var(zz(v));
  }
  const auto str = [&](std::string_view s) {
    var(s.size());
    payload.insert(payload.end(), s.begin(), s.end());
  };
  str(r.request_id.str());
  str(r.lease_id);
  str(r.key());
  str(r.tenant());
  str(r.model.str());
  var(r.budget_ids().size());
  for (const auto& b : r.budget_ids()) str(b);
  const auto len = static_cast<std::uint32_t>(payload.size());
  payload.resize((payload.size() + 7) / 8 * 8, 0);
  std::vector<unsigned char> rec(CoveredJournal::kRecordHead);
  const std::uint64_t head =
      (std::uint64_t{static_cast<std::uint32_t>(seq)} << 32) | (std::uint64_t{1} << 24) | len;
  const std::uint64_t sum =
      CoveredJournal::checksum(generation, seq, 1, len, payload.data(), payload.size());
  std::memcpy(rec.data(), &head, 8);
  std::memcpy(rec.data() + 8, &sum, 8);
  rec.insert(rec.end(), payload.begin(), payload.end());
  return rec;
}

// Journals written by earlier builds replay, and so do this build's in theirs: a record's bytes
// are the format's, for strings of every length a row has (each copied exactly, the padding
// zeroed over whatever the ring held before).
TEST(CoveredJournal, RecordsKeepTheirBytesForStringsOfEveryLength) {
  testing::TempDir dir;
  const std::string path = dir.file("j.covered.0");
  constexpr std::uint64_t kCapacity = 1 << 20;
  auto j = open_journal(path, kCapacity);
  ASSERT_TRUE(j);
  {
    const int fd = ::open(path.c_str(), O_RDWR);
    ASSERT_GE(fd, 0);
    const std::vector<unsigned char> junk(kCapacity, 0xAB);
    ASSERT_EQ(::pwrite(fd, junk.data(), junk.size(), CoveredJournal::kHeaderBytes),
              static_cast<ssize_t>(junk.size()));
    ::close(fd);
  }
  std::uint64_t off = 0;
  for (std::size_t n = 0; n <= 40; ++n) {
    LedgerCovered r = row_of(std::string(n, 'r'), 1'000 + static_cast<std::int64_t>(n));
    r.lease_id = std::string(n, 'l');
    r.set_party(std::string(40 - n, 'k'), std::string(n / 2, 't'),
                {std::string(n, 'b'), std::string(40 - n, 'g')});
    r.model = std::string(n, 'm');
    CoveredJournal::Position at;
    ASSERT_TRUE(j->append(r, at));
    const auto want = reference_record(r, j->generation(), at.seq);
    ASSERT_EQ(at.end - off, want.size()) << n;
    std::vector<unsigned char> got(want.size());
    const int fd = ::open(path.c_str(), O_RDONLY);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(
        ::pread(fd, got.data(), got.size(), static_cast<off_t>(CoveredJournal::kHeaderBytes + off)),
        static_cast<ssize_t>(got.size()));
    ::close(fd);
    EXPECT_EQ(got, want) << "strings of " << n << " characters";
    off = at.end;
  }
  EXPECT_EQ(j->replay({}).size(), 41u);
}

// Every field of a replayed row is the appended one's.
void expect_same_row(const LedgerCovered& got, const LedgerCovered& want, std::size_t i) {
  EXPECT_EQ(got.request_id, want.request_id) << i;
  EXPECT_EQ(got.lease_id, want.lease_id) << i;
  EXPECT_EQ(got.key(), want.key()) << i;
  EXPECT_EQ(got.tenant(), want.tenant()) << i;
  EXPECT_EQ(got.model, want.model) << i;
  EXPECT_EQ(got.budget_ids(), want.budget_ids()) << i;
  EXPECT_EQ(got.reserved_micro, want.reserved_micro) << i;
  EXPECT_EQ(got.actual_micro, want.actual_micro) << i;
  EXPECT_EQ(got.prompt_tokens, want.prompt_tokens) << i;
  EXPECT_EQ(got.completion_tokens, want.completion_tokens) << i;
  EXPECT_EQ(got.created_unix_ms, want.created_unix_ms) << i;
  EXPECT_EQ(got.settled_unix_ms, want.settled_unix_ms) << i;
  EXPECT_EQ(got.status, want.status) << i;
}

// Integers of every size, negative ones and the extremes included, and a settlement before its
// creation (a clock stepped back) replay exactly; a record of the gateway's usual row is less
// than two thirds of its version 1 size.
TEST(CoveredJournal, IntegersOfEverySizeReplayExactly) {
  testing::TempDir dir;
  const std::string path = dir.file("j.covered.0");
  const std::vector<std::int64_t> values = {0,
                                            1,
                                            -1,
                                            63,
                                            64,
                                            -64,
                                            -65,
                                            127,
                                            128,
                                            1'767'225'600'000,
                                            -1'767'225'600'000,
                                            std::numeric_limits<std::int64_t>::max(),
                                            std::numeric_limits<std::int64_t>::min()};
  std::vector<LedgerCovered> rows;
  for (std::size_t i = 0; i < values.size(); ++i) {
    for (std::size_t k = 0; k < values.size(); k += 3) {
      LedgerCovered r = row_of("r" + std::to_string(rows.size()), values[i]);
      r.reserved_micro = values[k];
      r.prompt_tokens = values[(i + k) % values.size()];
      r.completion_tokens = values[(i + 2 * k + 1) % values.size()];
      r.created_unix_ms = values[(k + 5) % values.size()];
      r.settled_unix_ms = values[(i + 7) % values.size()];
      r.status = (i + k) % 2 ? LedgerStatus::kReleased : LedgerStatus::kSettled;
      rows.push_back(r);
    }
  }
  {
    auto j = open_journal(path, 1 << 20);
    ASSERT_TRUE(j);
    CoveredJournal::Position at;
    for (const auto& r : rows) {
      ASSERT_TRUE(j->append(r, at));
      ASSERT_LE(CoveredJournal::record_bytes(r),
                CoveredJournal::record_bytes(cost::LedgerCoveredText::of(r), r.lease_id.size()));
    }
  }
  auto j = open_journal(path, 1 << 20);
  ASSERT_TRUE(j);
  const auto all = j->replay({});
  ASSERT_EQ(all.size(), rows.size());
  for (std::size_t i = 0; i < rows.size(); ++i) expect_same_row(all[i].row, rows[i], i);
  LedgerCovered usual = row_of("req_0193a4c5e6f7a1b2c3d4e5f6", 1'234);
  usual.lease_id = "lease:1a2b3c4d5";
  EXPECT_LT(CoveredJournal::record_bytes(usual) * 3, reference_record_v1(usual, 1, 1).size() * 2);
}

// The room an append asks for (from the row's strings, before its integers are known) holds its
// record, whatever the strings' lengths and the integers' sizes.
TEST(CoveredJournal, TheRoomAskedForHoldsTheRecord) {
  for (std::size_t n : {0, 1, 63, 64, 127, 128, 200, 8'191, 16'383, 16'384, 20'000}) {
    for (std::size_t budgets : {0, 1, 3, 200}) {
      LedgerCovered r = row_of(std::string(n, 'r'), std::numeric_limits<std::int64_t>::min());
      r.lease_id = std::string(n / 2, 'l');
      r.model = std::string(n, 'm');
      r.set_party(std::string(n, 'k'), std::string(n / 3, 't'),
                  std::vector<std::string>(budgets, std::string(n / 4 + 127, 'b')));
      r.reserved_micro = std::numeric_limits<std::int64_t>::min();
      r.prompt_tokens = std::numeric_limits<std::int64_t>::max();
      r.completion_tokens = -1;
      r.created_unix_ms = std::numeric_limits<std::int64_t>::min();
      r.settled_unix_ms = std::numeric_limits<std::int64_t>::max();
      EXPECT_LE(CoveredJournal::record_bytes(r),
                CoveredJournal::record_bytes(cost::LedgerCoveredText::of(r), r.lease_id.size()))
          << n << " " << budgets;
    }
  }
}

// A version 1 file (left by an earlier build) is replayed with every field, wrap markers
// included, and from a position; it takes no appends until reset(), which makes it version 2.
// Writes the journal file at `path` as version 1 did, with generation `generation`: its header,
// and records of `rows` after position `from` (with a wrap marker where the next record would
// cross the ring's end), while they take at most `bytes`. Returns where each record ends.
std::vector<CoveredJournal::Position> write_v1_journal(
    const std::string& path, std::uint64_t capacity, std::uint64_t generation,
    CoveredJournal::Position from, const std::vector<LedgerCovered>& rows, std::uint64_t bytes) {
  std::vector<unsigned char> file(CoveredJournal::kHeaderBytes + capacity, 0);
  const auto put64 = [&file](std::uint64_t at, std::uint64_t v) {
    std::memcpy(file.data() + at, &v, 8);
  };
  put64(0, 0x314C4E524A574231ULL);  // "1BWJRNL1"
  put64(8, 1);
  put64(16, generation);
  put64(24, capacity);
  std::uint64_t pos = from.end;
  std::uint64_t seq = from.seq + 1;
  std::vector<CoveredJournal::Position> ends;
  for (const auto& r : rows) {
    const std::uint64_t size = reference_record_v1(r, generation, seq).size();
    std::uint64_t off = pos % capacity;
    if (capacity - off < size) {
      if (capacity - off >= CoveredJournal::kRecordHeadV1) {
        const std::uint64_t wrap_kind_len = std::uint64_t{2} << 32;
        put64(CoveredJournal::kHeaderBytes + off, wrap_kind_len);
        put64(CoveredJournal::kHeaderBytes + off + 8, seq);
        put64(CoveredJournal::kHeaderBytes + off + 16,
              CoveredJournal::checksum(generation, seq, 2, 0, nullptr, 0));
        ++seq;
      }
      pos += capacity - off;
      off = 0;
    }
    const auto rec = reference_record_v1(r, generation, seq);
    std::memcpy(file.data() + CoveredJournal::kHeaderBytes + off, rec.data(), rec.size());
    pos += rec.size();
    ends.push_back({pos, seq});
    ++seq;
    if (pos - from.end > bytes) break;
  }
  const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC, 0600);
  EXPECT_GE(fd, 0);
  EXPECT_EQ(::pwrite(fd, file.data(), file.size(), 0), static_cast<ssize_t>(file.size()));
  ::close(fd);
  return ends;
}

TEST(CoveredJournal, AVersion1FileIsReplayedThenResetToVersion2) {
  testing::TempDir dir;
  const std::string path = dir.file("j.covered.0");
  constexpr std::uint64_t kCapacity = 4'096;
  constexpr std::uint64_t kGeneration = 0x5eed;
  std::vector<LedgerCovered> rows;
  for (int i = 0; i < 30; ++i) {
    LedgerCovered r = row_of("req_" + std::to_string(1000 + i), 100 * i);
    r.created_unix_ms = kJan1 + i;
    r.settled_unix_ms = kJan1 + 10 * i;
    if (i == 4) r.status = LedgerStatus::kReleased;
    if (i % 3 == 0) r.set_party("key_b" + std::to_string(i), "beta", {"global/total"});
    rows.push_back(r);
  }
  constexpr std::uint64_t kStart = 3'000;  // the first unapplied record: an end of a position
  const auto ends =
      write_v1_journal(path, kCapacity, kGeneration, {kStart, 40}, rows, kCapacity - 400);
  ASSERT_GE(ends.size(), 10u);
  ASSERT_LT(ends.back().end % kCapacity, kStart) << "no wrap";
  auto j = open_journal(path, kCapacity);
  ASSERT_TRUE(j);
  EXPECT_EQ(j->generation(), kGeneration);
  const auto all = j->replay({kStart, 40});
  ASSERT_EQ(all.size(), ends.size());
  for (std::size_t i = 0; i < all.size(); ++i) {
    expect_same_row(all[i].row, rows[i], i);
    EXPECT_EQ(all[i].at.end, ends[i].end) << i;
    EXPECT_EQ(all[i].at.seq, ends[i].seq) << i;
  }
  EXPECT_EQ(ids_of(j->replay(ends[4])).size(), ends.size() - 5);
  // Not appended to as it is: a version 2 record there would end a version 1 replay.
  CoveredJournal::Position at;
  EXPECT_FALSE(j->append(row_of("new", 1), at));
  ASSERT_TRUE(j->reset(kCapacity).ok());
  ASSERT_TRUE(j->append(row_of("new", 1), at));
  j.reset();
  auto again = open_journal(path, kCapacity);
  ASSERT_TRUE(again);
  EXPECT_EQ(ids_of(again->replay({})), std::vector<std::string>{"new"});
}

// Request ids of every length (rows keep up to InlineId::kInline characters in themselves, longer
// ones on the heap) are journaled and replayed whole.
TEST(CoveredJournal, RequestIdsOfEveryLengthReplayWhole) {
  testing::TempDir dir;
  const std::string path = dir.file("j.covered.0");
  const std::vector<std::string> ids = {
      "r", "req_0193a4c5e6f7a1b2c3d4e5f6",
      std::string(cost::LedgerCovered{}.request_id.kInline, 'm'),
      std::string(cost::LedgerCovered{}.request_id.kInline + 1, 'n'), std::string(128, 'o')};
  {
    auto j = open_journal(path, 1 << 16);
    ASSERT_TRUE(j);
    CoveredJournal::Position at;
    for (const auto& id : ids) ASSERT_TRUE(j->append(row_of(id, 1'000), at));
  }
  auto j = open_journal(path, 1 << 16);
  ASSERT_TRUE(j);
  EXPECT_EQ(ids_of(j->replay({})), ids);
}

TEST(CoveredJournal, AppendedRecordsReplayWithEveryFieldAndFromAPosition) {
  testing::TempDir dir;
  const std::string path = dir.file("j.covered.0");
  std::vector<CoveredJournal::Position> at(3);
  {
    auto j = open_journal(path, 1 << 16);
    ASSERT_TRUE(j);
    for (int i = 0; i < 3; ++i) {
      ASSERT_TRUE(j->append(row_of("r" + std::to_string(i), 1'000 * (i + 1)), at[i]));
    }
    EXPECT_EQ(at[2].seq, 3u);
    EXPECT_EQ(at[2].end, j->head());
  }  // the process "dies": the file keeps what was stored in the mapping
  auto j = open_journal(path, 1 << 16);
  ASSERT_TRUE(j);
  auto all = j->replay({});
  ASSERT_EQ(ids_of(all), (std::vector<std::string>{"r0", "r1", "r2"}));
  const LedgerCovered& r = all[1].row;
  EXPECT_EQ(r.lease_id, "L1");
  EXPECT_EQ(r.key(), "key_a");
  EXPECT_EQ(r.tenant(), "acme");
  EXPECT_EQ(r.model, "gpt-4.1");
  EXPECT_EQ(r.budget_ids(), (std::vector<std::string>{"key:key_a/total", "global/daily"}));
  EXPECT_EQ(r.reserved_micro, 10'000);
  EXPECT_EQ(r.actual_micro, 2'000);
  EXPECT_EQ(r.prompt_tokens, 3);
  EXPECT_EQ(r.completion_tokens, 4);
  EXPECT_EQ(r.created_unix_ms, kJan1 + 1);
  EXPECT_EQ(r.settled_unix_ms, kJan1 + 2);
  EXPECT_EQ(r.status, LedgerStatus::kSettled);
  EXPECT_EQ(all[1].at.end, at[1].end);
  EXPECT_EQ(all[1].at.seq, at[1].seq);
  // From the position of the first: exactly the two after it.
  EXPECT_EQ(ids_of(j->replay(at[0])), (std::vector<std::string>{"r1", "r2"}));
  EXPECT_TRUE(j->replay(at[2]).empty());
  // A reset starts a new generation: nothing of the old one is replayed.
  const auto gen = j->generation();
  ASSERT_TRUE(j->reset(1 << 16).ok());
  EXPECT_NE(j->generation(), gen);
  EXPECT_TRUE(j->replay({}).empty());
}

TEST(CoveredJournal, AFileIsHeldByOneOpenerAtATime) {
  testing::TempDir dir;
  const std::string path = dir.file("j.covered.0");
  auto a = open_journal(path, 1 << 16);
  ASSERT_TRUE(a);
  CoveredJournal::OpenOutcome held = CoveredJournal::OpenOutcome::kOpened;
  auto b = CoveredJournal::open(path, 1 << 16, &held);
  ASSERT_TRUE(b.ok());
  EXPECT_FALSE(*b);
  EXPECT_EQ(held, CoveredJournal::OpenOutcome::kHeldElsewhere);
  a.reset();
  auto c = open_journal(path, 1 << 16, &held);
  EXPECT_TRUE(c);
  EXPECT_EQ(held, CoveredJournal::OpenOutcome::kOpened);
}

// A record torn by a kill mid-append (its length not yet stored, or its bytes partly written)
// ends the replay: the records before it come back, it and anything after it do not.
TEST(CoveredJournal, ATornRecordEndsTheReplay) {
  testing::TempDir dir;
  const std::string path = dir.file("j.covered.0");
  CoveredJournal::Position a, b, c;
  {
    auto j = open_journal(path, 1 << 16);
    ASSERT_TRUE(j);
    ASSERT_TRUE(j->append(row_of("a", 1), a));
    ASSERT_TRUE(j->append(row_of("b", 2), b));
    ASSERT_TRUE(j->append(row_of("c", 3), c));
  }
  const int fd = ::open(path.c_str(), O_RDWR);
  ASSERT_GE(fd, 0);
  // A byte of c's payload as an interrupted copy would leave it.
  const off_t c_payload =
      static_cast<off_t>(CoveredJournal::kHeaderBytes + b.end + CoveredJournal::kRecordHead + 60);
  char byte = 0;
  ASSERT_EQ(::pread(fd, &byte, 1, c_payload), 1);
  byte = static_cast<char>(byte ^ 0x5a);
  ASSERT_EQ(::pwrite(fd, &byte, 1, c_payload), 1);
  {
    auto j = open_journal(path, 1 << 16);
    ASSERT_TRUE(j);
    EXPECT_EQ(ids_of(j->replay({})), (std::vector<std::string>{"a", "b"}));
  }
  // b's length word not stored yet (the last store of an append): b is not there, nor c.
  const std::uint64_t zero = 0;
  ASSERT_EQ(::pwrite(fd, &zero, 8, static_cast<off_t>(CoveredJournal::kHeaderBytes + a.end)), 8);
  ::close(fd);
  auto j = open_journal(path, 1 << 16);
  ASSERT_TRUE(j);
  EXPECT_EQ(ids_of(j->replay({})), (std::vector<std::string>{"a"}));
}

// The ring: a full journal refuses an append until the ledger has applied room; records wrap
// around its end and replay in order from the applied position, exactly the unapplied ones.
TEST(CoveredJournal, AFullJournalRefusesAndWrapsOnceApplied) {
  testing::TempDir dir;
  const std::string path = dir.file("j.covered.0");
  auto j = open_journal(path, 4'096);
  ASSERT_TRUE(j);
  // What each record takes, and the room an append needs free (the most its row can take).
  const LedgerCovered sample = row_of("r000", 1);
  const std::uint64_t used = CoveredJournal::record_bytes(sample);
  const std::uint64_t room =
      CoveredJournal::record_bytes(cost::LedgerCoveredText::of(sample), sample.lease_id.size());
  ASSERT_GE(room, used);
  std::vector<CoveredJournal::Position> at;
  int n = 0;
  for (;; ++n) {
    CoveredJournal::Position p;
    char id[16];
    std::snprintf(id, sizeof id, "r%03d", n);
    if (!j->append(row_of(id, n), p)) break;
    at.push_back(p);
  }
  ASSERT_GT(n, 5);
  EXPECT_EQ(static_cast<std::uint64_t>(n), (4'096 - room) / used + 1);
  EXPECT_FALSE(j->fits(room));
  // The first three applied: their room (and the end of the ring, past the last record) is
  // free again.
  j->set_applied(at[2].end);
  EXPECT_TRUE(j->fits(room));
  std::vector<std::string> expect;
  for (int i = 3; i < n; ++i) {
    char id[16];
    std::snprintf(id, sizeof id, "r%03d", i);
    expect.push_back(id);
  }
  for (int k = 0; j->fits(room); ++k) {
    CoveredJournal::Position p;
    char id[16];
    std::snprintf(id, sizeof id, "w%03d", k);
    ASSERT_TRUE(j->append(row_of(id, k), p));
    expect.push_back(id);
  }
  // After the wrap, the records that leave room for one more in the three applied ones' room.
  EXPECT_EQ(expect.size(), static_cast<std::size_t>(n) - 3 + (3 * used - room) / used + 1);
  EXPECT_LE(j->head() % j->capacity(), 3 * used) << "the new records did not wrap";
  const CoveredJournal::Position applied = at[2];
  j.reset();
  auto again = open_journal(path, 4'096);
  ASSERT_TRUE(again);
  EXPECT_EQ(ids_of(again->replay(applied)), expect);
}

// --- the SQLite ledger's journals ---------------------------------------------------------------

constexpr const char* kBudget = "key:key_a/total";

SqliteLedgerOptions options_of(const std::string& path, std::size_t journals) {
  SqliteLedgerOptions o;
  o.path = path;
  o.synchronous_full = false;
  o.journals = journals;
  o.journal_bytes = 1 << 20;
  return o;
}

Result<Ok> append_sync_lease(cost::Ledger& ledger, const std::string& id) {
  cost::LedgerReservation lease;
  lease.request_id = id;
  lease.key_id = "key_a";
  lease.tenant_id = "acme";
  lease.budgets = {kBudget};
  lease.reserved_micro = 1'000'000;
  lease.created_unix_ms = kJan1;
  lease.lease = true;
  std::promise<Result<Ok>> p;
  auto f = p.get_future();
  if (!ledger.append_reservation(lease, [&p](const Result<Ok>& r) { p.set_value(r); })) {
    return make_error(503, "server_error", "busy", "queue full");
  }
  return f.get();
}

std::int64_t query_int(const std::string& db, const std::string& sql) {
  sqlite3* h = nullptr;
  sqlite3_open(db.c_str(), &h);
  sqlite3_stmt* st = nullptr;
  std::int64_t v = -1;
  if (sqlite3_prepare_v2(h, sql.c_str(), -1, &st, nullptr) == SQLITE_OK &&
      sqlite3_step(st) == SQLITE_ROW) {
    v = sqlite3_column_int64(st, 0);
  }
  sqlite3_finalize(st);
  sqlite3_close(h);
  return v;
}

// A covered row journaled on this thread: durable once append_covered returns. `in_place`: the
// gateway's way, the room asked for from the row's strings and the row made in the ledger's queue
// (append_covered_with).
void append_journaled(cost::Ledger& ledger, LedgerCovered row, bool in_place = false) {
  if (!in_place) {
    ASSERT_TRUE(ledger.journal_room(row));
    row.to_journal = true;
    ASSERT_TRUE(ledger.append_covered(std::move(row), {}, cost::Ledger::Wake::kDeferred));
    return;
  }
  ASSERT_TRUE(ledger.journal_room_for(cost::LedgerCoveredText::of(row)));
  const cost::LedgerCoveredFill fill{[](void* from, LedgerCovered& to) {
                                       to = *static_cast<const LedgerCovered*>(from);
                                       to.to_journal = true;
                                     },
                                     &row};
  ASSERT_TRUE(ledger.append_covered_with(fill, {}, cost::Ledger::Wake::kDeferred));
}

// A process appends covered rows through its journal while the database is locked by another
// connection (so none of the last ones is committed), and is killed with SIGKILL. The next open
// replays exactly the rows not yet applied: every row once, the reused request id folded into
// the lease once, the lease lowered once; a second open replays nothing.
TEST(SqliteJournal, AKilledProcessesRowsAreReplayedExactlyOnce) {
  testing::TempDir dir;
  const std::string db = dir.file("ledger.db");
  constexpr int kCommitted = 20, kPending = 30;
  int ready[2];
  ASSERT_EQ(::pipe(ready), 0);
  const pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    ::close(ready[0]);
    auto opened = SqliteLedger::open(options_of(db, 1));
    if (!opened.ok()) ::_exit(2);
    auto& ledger = **opened;
    if (!append_sync_lease(ledger, "L1").ok()) ::_exit(3);
    for (int i = 0; i < kCommitted; ++i)
      append_journaled(ledger, row_of("c" + std::to_string(i), 100));
    ledger.flush();
    // Another connection takes the write lock: the writer's next transaction waits for it.
    sqlite3* blocker = nullptr;
    sqlite3_open(db.c_str(), &blocker);
    if (sqlite3_exec(blocker, "BEGIN IMMEDIATE", nullptr, nullptr, nullptr) != SQLITE_OK) {
      ::_exit(4);
    }
    for (int i = 0; i < kPending; ++i)
      append_journaled(ledger, row_of("p" + std::to_string(i), 10), /*in_place=*/i % 2 == 0);
    // A client reused c0's id: its 7 micro stay on the lease row.
    append_journaled(ledger, row_of("c0", 7));
    ledger.kick();
    char ok = 1;
    if (::write(ready[1], &ok, 1) != 1) ::_exit(5);
    ::pause();
    ::_exit(0);
  }
  ::close(ready[1]);
  char ok = 0;
  ASSERT_EQ(::read(ready[0], &ok, 1), 1);
  ::close(ready[0]);
  ::kill(pid, SIGKILL);
  int status = 0;
  ::waitpid(pid, &status, 0);
  ASSERT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL) << status;
  // Before the restart the pending rows are only in the journal.
  EXPECT_EQ(query_int(db, "SELECT COUNT(*) FROM ledger WHERE request_id LIKE 'p%'"), 0);
  EXPECT_EQ(query_int(db, "SELECT COUNT(*) FROM ledger WHERE request_id LIKE 'c%'"), kCommitted);

  for (int round = 0; round < 2; ++round) {
    auto opened = SqliteLedger::open(options_of(db, 1));
    ASSERT_TRUE(opened.ok()) << opened.error().message;
    EXPECT_EQ((*opened)->replayed(), round == 0 ? kPending + 1u : 0u);
    opened->reset();
    EXPECT_EQ(query_int(db, "SELECT COUNT(*) FROM ledger WHERE lease = 0"), kCommitted + kPending);
    EXPECT_EQ(query_int(db, "SELECT SUM(actual_micro) FROM ledger WHERE lease = 0"),
              kCommitted * 100 + kPending * 10);
    // Lowered by every row once; the reused id's spend folded into the lease row once.
    EXPECT_EQ(query_int(db, "SELECT reserved_micro FROM ledger WHERE request_id = 'L1'"),
              1'000'000 - kCommitted * 100 - kPending * 10);
    EXPECT_EQ(query_int(db, "SELECT actual_micro FROM ledger WHERE request_id = 'L1'"), 7);
  }
}

// A version 1 journal that a process of an earlier build left (killed before its rows were
// committed) is replayed into the ledger at the next start, exactly once, and then emptied as a
// version 2 file.
TEST(SqliteJournal, AVersion1JournalLeftByAnEarlierBuildIsReplayedOnce) {
  testing::TempDir dir;
  const std::string db = dir.file("ledger.db");
  {
    auto opened = SqliteLedger::open(options_of(db, 1));
    ASSERT_TRUE(opened.ok()) << opened.error().message;
    ASSERT_TRUE(append_sync_lease(**opened, "L1").ok());
  }
  constexpr int kRows = 25;
  std::vector<LedgerCovered> rows;
  for (int i = 0; i < kRows; ++i) rows.push_back(row_of("p" + std::to_string(i), 10 + i));
  const std::string journal = db + ".covered.0";
  const auto ends = write_v1_journal(journal, 1 << 16, 0x5eed, {}, rows, 1 << 16);
  ASSERT_EQ(ends.size(), static_cast<std::size_t>(kRows));
  for (int round = 0; round < 2; ++round) {
    auto opened = SqliteLedger::open(options_of(db, 1));
    ASSERT_TRUE(opened.ok()) << opened.error().message;
    EXPECT_EQ((*opened)->replayed(), round == 0 ? static_cast<std::uint64_t>(kRows) : 0u);
    opened->reset();
    EXPECT_EQ(query_int(db, "SELECT COUNT(*) FROM ledger WHERE lease = 0"), kRows);
    EXPECT_EQ(query_int(db, "SELECT SUM(actual_micro) FROM ledger WHERE lease = 0"),
              kRows * 10 + kRows * (kRows - 1) / 2);
    EXPECT_EQ(query_int(db, "SELECT reserved_micro FROM ledger WHERE request_id = 'L1'"),
              1'000'000 - kRows * 10 - kRows * (kRows - 1) / 2);
    EXPECT_EQ(query_int(db,
                        "SELECT COUNT(*) FROM ledger WHERE request_id = 'p7' AND"
                        " key_id = 'key_a' AND tenant_id = 'acme' AND model = 'gpt-4.1' AND"
                        " prompt_tokens = 3 AND completion_tokens = 4 AND status = 'settled'"),
              1);
    // Emptied as a version 2 file.
    const int fd = ::open(journal.c_str(), O_RDONLY);
    ASSERT_GE(fd, 0);
    std::uint64_t version = 0;
    EXPECT_EQ(::pread(fd, &version, 8, 8), 8);
    ::close(fd);
    EXPECT_EQ(version, 2u);
  }
}

// A journal that no live process holds (its process died) is adopted and replayed by the next
// process to open the database, whatever its number; one that a live process holds is left
// alone until that process lets it go.
TEST(SqliteJournal, OrphanJournalsAreAdoptedAndHeldOnesAreLeftAlone) {
  testing::TempDir dir;
  const std::string db = dir.file("ledger.db");
  {
    auto opened = SqliteLedger::open(options_of(db, 0));
    ASSERT_TRUE(opened.ok()) << opened.error().message;
    ASSERT_TRUE(append_sync_lease(**opened, "L1").ok());
  }
  // Slot 5: an orphan. Slot 0: held by a "live process" (this test) with a row of its own.
  {
    auto orphan = open_journal(db + ".covered.5", 1 << 16);
    ASSERT_TRUE(orphan);
    CoveredJournal::Position at;
    ASSERT_TRUE(orphan->append(row_of("orphan-1", 50), at));
    ASSERT_TRUE(orphan->append(row_of("orphan-2", 60), at));
  }
  auto held = open_journal(db + ".covered.0", 1 << 16);
  ASSERT_TRUE(held);
  CoveredJournal::Position at;
  ASSERT_TRUE(held->append(row_of("held-1", 70), at));
  {
    auto opened = SqliteLedger::open(options_of(db, 1));
    ASSERT_TRUE(opened.ok()) << opened.error().message;
    EXPECT_EQ((*opened)->replayed(), 2u);
    auto o = (*opened)->find("orphan-2");
    ASSERT_TRUE(o.ok() && o->has_value());
    EXPECT_EQ((*o)->actual_micro, 60);
    auto h = (*opened)->find("held-1");
    ASSERT_TRUE(h.ok());
    EXPECT_FALSE(h->has_value());
    // Its own journal is a free slot (1), not the held one.
    EXPECT_TRUE(std::filesystem::exists(db + ".covered.1"));
  }
  EXPECT_EQ(query_int(db, "SELECT reserved_micro FROM ledger WHERE request_id = 'L1'"),
            1'000'000 - 110);
  held.reset();  // its process is gone
  auto opened = SqliteLedger::open(options_of(db, 1));
  ASSERT_TRUE(opened.ok()) << opened.error().message;
  EXPECT_EQ((*opened)->replayed(), 1u);
  auto h = (*opened)->find("held-1");
  ASSERT_TRUE(h.ok() && h->has_value());
  EXPECT_EQ(query_int(db, "SELECT reserved_micro FROM ledger WHERE request_id = 'L1'"),
            1'000'000 - 180);
}

// With `durability: machine` (synchronous_full) there is no journal: a covered row waits for its
// commit. A thread without a journal (more threads than journals) waits too.
TEST(SqliteJournal, NoJournalWithMachineDurabilityOrForAThreadWithoutOne) {
  testing::TempDir dir;
  auto opts = options_of(dir.file("ledger.db"), 1);
  opts.synchronous_full = true;
  {
    auto opened = SqliteLedger::open(opts);
    ASSERT_TRUE(opened.ok()) << opened.error().message;
    EXPECT_FALSE((*opened)->journal_room(row_of("x", 1)));
    EXPECT_FALSE(std::filesystem::exists(dir.file("ledger.db.covered.0")));
  }
  opts.synchronous_full = false;
  auto opened = SqliteLedger::open(opts);
  ASSERT_TRUE(opened.ok()) << opened.error().message;
  EXPECT_TRUE((*opened)->journal_room(row_of("x", 1)));
  bool other = true;
  std::thread([&] { other = (*opened)->journal_room(row_of("y", 1)); }).join();
  EXPECT_FALSE(other);
}

}  // namespace
}  // namespace bw::store
