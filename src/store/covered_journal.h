#pragma once
// CoveredJournal: a file of covered rows (cost::LedgerCovered), mapped MAP_SHARED, that makes a
// covered row as durable as the SQLite ledger with `durability: process` the moment its event
// loop appends it: a store into a shared file mapping is in the page cache, and the page cache
// outlives the process (kill -9, a crash), though not the machine (it is not synced). No system
// call and no other thread is involved in an append.
//
// The ledger's writer thread still writes every row to SQLite (from its in-memory queue, not from
// this file), and records in the same transaction how far into this journal it has applied
// (SqliteLedger's ledger_journal table). A restart replays exactly the records after that
// position (replay()), so that a row is applied once, whatever the crash.
//
// Layout: a 4 KiB header (magic, version, generation, capacity) and a ring of `capacity` bytes.
// A record (version 2) is a 16-byte head and its payload, padded to 8 bytes. The head's first
// word holds the sequence number's low 32 bits, the kind (8 bits) and the payload's length (24
// bits); its second, the checksum. The first word is stored last: a record is published once it
// is. A reader takes a record only if its sequence number is the next expected one and its
// checksum (over the generation, the whole sequence number, the kind, the length and the payload)
// matches: a record torn by a kill mid-append, a record of an earlier lap of the ring and a record
// of an earlier generation of the file all end the replay. A record never straddles the ring's
// end: a wrap marker (or, with less than a head left, nothing) sends the reader back to the start.
// The payload: the status (one byte); the creation time (8 bytes); the reserved and actual
// micros, the prompt and completion tokens and the settlement's time after the creation, each
// zigzag-coded as a variable-length integer (7 bits a byte, low bits first); the request id, the
// lease id, the key, the tenant and the model, each as its length (a variable-length integer) and
// its bytes; the budgets' count and each budget the same way. A usual row's record of ~200 bytes in
// version 1 is ~130. Version 1 (a 24-byte head: kind and length, sequence number, checksum; seven
// 8-byte integers and 4-byte string lengths) is still replayed: a file left by an earlier build is
// replayed and then reset(), which makes it version 2.
//
// Space: an append needs the bytes up to the applied position to be free; a full journal refuses
// the append (the caller then waits for the commit instead).
//
// One process holds a journal file at a time: open() takes an exclusive flock(2), which the
// kernel drops when the process dies; a journal no live process holds can be adopted.
//
// Thread safety: append(), room() and fits() on one thread (the journal's event loop);
// set_applied() on any thread; replay() and reset() before appends start.
#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "common/result.h"
#include "cost/ledger.h"

namespace bw::store {

class CoveredJournal {
 public:
  static constexpr std::uint64_t kHeaderBytes = 4'096;
  static constexpr std::uint64_t kRecordHead = 16;
  static constexpr std::uint64_t kRecordHeadV1 = 24;

  enum class OpenOutcome { kOpened, kHeldElsewhere };
  // Opens (creating it if missing) and locks the journal file at `path`. A file that another
  // process holds: kHeldElsewhere and no journal. `capacity` is the ring's size for a new or a
  // reset file (rounded up to 8 bytes, at least 4 KiB); an existing file keeps its own until
  // reset().
  static Result<std::unique_ptr<CoveredJournal>> open(const std::string& path,
                                                      std::uint64_t capacity,
                                                      OpenOutcome* outcome = nullptr);
  ~CoveredJournal();
  CoveredJournal(const CoveredJournal&) = delete;
  CoveredJournal& operator=(const CoveredJournal&) = delete;

  const std::string& path() const { return path_; }
  // A random number, new at every reset(): names this life of the file in the ledger.
  std::uint64_t generation() const { return generation_; }
  std::uint64_t capacity() const { return capacity_; }

  // Where a record ends: the position the ledger records once the record is applied.
  struct Position {
    std::uint64_t end = 0;  // bytes appended since the generation began, up to this record
    std::uint64_t seq = 0;  // the record's sequence number (the first is 1)
  };
  struct Replayed {
    cost::LedgerCovered row;
    Position at;
  };
  // The published records after `from` (a position of this generation; {} = from the start), in
  // order, up to the first that is not valid.
  std::vector<Replayed> replay(Position from) const;
  // Empties the file and starts a new generation (call once its records are applied).
  Result<Ok> reset(std::uint64_t capacity);

  // The bytes a record of `row` takes, wrap marker not counted.
  static std::uint64_t record_bytes(const cost::LedgerCovered& row);
  // At most that, from the row's strings and its lease id's length, before the row is built.
  static std::uint64_t record_bytes(const cost::LedgerCoveredText& row,
                                    std::uint64_t lease_id_bytes);
  // Whether `bytes` (one record) can be appended now, a wrap included. An append needs room for
  // record_bytes() of the row's strings (the most it can take), not only its record_bytes().
  bool fits(std::uint64_t bytes) const;
  // Appends and publishes `row` (whose lease_id and reserved_micro are set); false when there
  // is no room, or the file is a version 1 one not reset() yet. `at` receives where it ends.
  bool append(const cost::LedgerCovered& row, Position& at);
  // The writer thread: every record up to `end` is in the ledger (committed).
  void set_applied(std::uint64_t end);
  std::uint64_t applied() const { return applied_.load(std::memory_order_acquire); }
  std::uint64_t head() const { return head_; }

  // The payload of a record (tests; also the append's encoding): its length.
  static std::uint64_t encode(const cost::LedgerCovered& row, unsigned char* out);
  static std::uint64_t payload_bytes(const cost::LedgerCovered& row);
  static bool decode(const unsigned char* in, std::uint64_t len, cost::LedgerCovered& row);
  // A version 1 payload.
  static bool decode_v1(const unsigned char* in, std::uint64_t len, cost::LedgerCovered& row);
  static std::uint64_t checksum(std::uint64_t generation, std::uint64_t seq, std::uint32_t kind,
                                std::uint32_t len, const unsigned char* payload,
                                std::uint64_t padded);

 private:
  CoveredJournal(std::string path, int fd);
  Result<Ok> map(std::uint64_t capacity);
  void unmap();
  unsigned char* data() const { return base_ + kHeaderBytes; }
  void write_head(std::uint64_t off, std::uint32_t kind, std::uint32_t len, std::uint64_t seq,
                  std::uint64_t sum);

  std::string path_;
  int fd_ = -1;
  unsigned char* base_ = nullptr;
  std::uint64_t mapped_ = 0;
  std::uint64_t capacity_ = 0;
  std::uint64_t generation_ = 0;
  std::uint32_t version_ = 0;   // the file's format: 1 (replayed only) or 2
  std::uint64_t head_ = 0;      // the loop's thread: where the next record goes
  std::uint64_t next_seq_ = 1;  // the loop's thread
  std::atomic<std::uint64_t> applied_{0};
};

}  // namespace bw::store
