#include "cost/lease.h"

#include <gtest/gtest.h>

#include <atomic>
#include <map>
#include <random>
#include <set>
#include <thread>
#include <variant>

#include "support/ledger_without_rows.h"

namespace bw::cost {
namespace {

constexpr std::int64_t kJan1 = 1'767'225'600'000;  // 2026-01-01T00:00:00Z
const std::string kKey = key_budget_id("k", BudgetPeriod::kTotal);
const std::string kDaily = key_budget_id("k", BudgetPeriod::kDaily);

// A ledger that keeps its records queued until commit(), then applies them as the SQLite
// ledger's statements do, to rows in memory.
class FakeLedger final : public bw::testing::LedgerWithoutRows {
 public:
  struct Row {
    bool lease = false;
    LedgerStatus status = LedgerStatus::kOpen;
    Micros reserved = 0;
    Micros actual = 0;
  };
  using Record = std::variant<LedgerReservation, LedgerSettlement, LedgerCovered>;

  bool append_reservation(LedgerReservation r, LedgerCallback done, Wake) override {
    return push(std::move(r), std::move(done));
  }
  bool append_settlement(LedgerSettlement s, LedgerCallback done, Wake) override {
    return push(std::move(s), std::move(done));
  }
  bool append_covered(LedgerCovered&& c, LedgerCallback done, Wake) override {
    return push(std::move(c), std::move(done));
  }
  bool supports_leases() const override { return true; }
  void kick() override {}
  void flush() override { commit(); }

  // One group commit of everything queued.
  void commit() {
    auto batch = std::move(queue_);
    queue_.clear();
    for (auto& [rec, done] : batch) {
      // A failed transaction (a disk error): nothing of the batch is written.
      Result<Ok> r = fail_commit ? Result<Ok>(make_error(500, "server_error", "ledger", "disk I/O"))
                                 : apply(rec);
      if (done) done(r);
    }
    ++commits;
  }
  Micros settled() const {
    Micros s = 0;
    for (const auto& [id, row] : rows) {
      if (row.status == LedgerStatus::kSettled) s += row.actual;
    }
    return s;
  }
  Micros open_reserved() const {
    Micros s = 0;
    for (const auto& [id, row] : rows) {
      if (row.status == LedgerStatus::kOpen) s += row.reserved;
    }
    return s;
  }
  int open_leases() const {
    int n = 0;
    for (const auto& [id, row] : rows) n += row.lease && row.status == LedgerStatus::kOpen;
    return n;
  }
  std::size_t queued() const { return queue_.size(); }

  std::map<std::string, Row> rows;
  bool refuse = false;
  bool fail_commit = false;
  int commits = 0;

 private:
  bool push(Record r, LedgerCallback done) {
    if (refuse) return false;
    queue_.emplace_back(std::move(r), std::move(done));
    return true;
  }
  Result<Ok> apply(const Record& rec) {
    if (const auto* r = std::get_if<LedgerReservation>(&rec)) {
      if (!rows.emplace(r->request_id, Row{r->lease, LedgerStatus::kOpen, r->reserved_micro, 0})
               .second) {
        return make_error(409, "x", "dup", r->request_id);
      }
      return Ok{};
    }
    if (const auto* c = std::get_if<LedgerCovered>(&rec)) {
      const Micros actual = c->status == LedgerStatus::kReleased ? 0 : c->actual_micro;
      auto [it, fresh] =
          rows.emplace(c->request_id, Row{false, c->status, c->reserved_micro, actual});
      auto lease = rows.find(c->lease_id);
      if (lease == rows.end() || lease->second.status != LedgerStatus::kOpen) {
        return make_error(409, "x", "not_open", c->lease_id);
      }
      if (fresh) {
        lease->second.reserved = std::max<Micros>(lease->second.reserved - actual, 0);
      } else {
        lease->second.actual += actual;  // folded: stays reserved until the close
      }
      return Ok{};
    }
    const auto& s = std::get<LedgerSettlement>(rec);
    auto it = rows.find(s.request_id);
    if (it == rows.end() || it->second.status != LedgerStatus::kOpen) {
      return make_error(409, "x", "not_open", s.request_id);
    }
    it->second.status = s.lease ? LedgerStatus::kSettled : s.status;
    if (!s.lease) it->second.actual = s.status == LedgerStatus::kReleased ? 0 : s.actual_micro;
    return Ok{};
  }
  std::vector<std::pair<Record, LedgerCallback>> queue_;
};

LeaseOptions closing_at_once() {
  LeaseOptions o;
  o.idle_close_ms = 0;
  return o;
}

LeaseOptions closing_after(std::int64_t idle_ms) {
  LeaseOptions o;
  o.idle_close_ms = idle_ms;
  return o;
}

struct Fixture {
  explicit Fixture(Micros cap, LeaseOptions o = closing_at_once()) {
    o.enabled = true;
    budgets.upsert_budget({kKey, cap, BudgetPeriod::kTotal});
    book = std::make_unique<LeaseBook>(budgets, ledger, o);
    set.budgets = {kKey};
    set.key_id = "k";
    set.key = lease_set_key(set.budgets, "k", "");
  }
  BudgetSnapshot snap() { return *budgets.snapshot(kKey, kJan1); }
  // The cap as the ledger sees it after a crash now: what recovery would rebuild.
  void expect_ledger_within(Micros cap) {
    EXPECT_LE(ledger.settled() + ledger.open_reserved(), cap);
  }

  // The gateway's lease opening: size, hold, durable row, install.
  bool open(Micros amount, LeaseClaim& claim) {
    const Micros size = book->lease_size(set, amount, kJan1);
    auto res = size > 0 ? budgets.reserve(set.budgets, size, kJan1) : ReserveResult{};
    if (!res.ok()) {
      book->open_failed(set.key);
      return false;
    }
    LedgerReservation rec;
    rec.request_id = book->next_lease_id();
    rec.reserved_micro = size;
    rec.lease = true;
    const std::string id = rec.request_id;
    EXPECT_TRUE(ledger.append_reservation(std::move(rec), {}, Ledger::Wake::kDeferred));
    ledger.commit();
    book->install(set, id, std::move(*res.reservation), amount, claim, kJan1);
    return true;
  }
  // Two requests of `amount`: `a` comes alone (the per-request path, ended at once), `b` finds
  // it in flight and opens a lease.
  void open_beside(Micros amount, LeaseClaim& a, LeaseClaim& b) {
    book->begin(set, amount, kJan1, a);
    ASSERT_EQ(book->begin(set, amount, kJan1, b), LeaseBook::Begin::kOpen);
    ASSERT_TRUE(open(amount, b));
    book->end_plain(set.key);
  }
  LedgerCovered row(std::string id, Micros actual) {
    LedgerCovered r;
    r.request_id = std::move(id);
    r.actual_micro = actual;
    r.status = LedgerStatus::kSettled;
    return r;
  }

  BudgetManager budgets;
  FakeLedger ledger;
  std::unique_ptr<LeaseBook> book;
  LeaseSet set;
};

TEST(Lease, ARequestAloneTakesThePerRequestPath) {
  Fixture f(1'000'000);
  LeaseClaim claim;
  EXPECT_EQ(f.book->begin(f.set, 10'000, kJan1, claim), LeaseBook::Begin::kPlain);
  EXPECT_FALSE(claim.active());
  f.book->end_plain(f.set.key);
  // Still alone after the first one ended.
  EXPECT_EQ(f.book->begin(f.set, 10'000, kJan1, claim), LeaseBook::Begin::kPlain);
}

// A LeaseSet keeps its set's state for the next request; once the book has dropped that state
// (the set went idle), the set is looked up again: a copy of it (a reloaded key's) and the
// original count their requests in the same state.
TEST(Lease, ASetsKeptStateIsLeftOnceTheBookDropsIt) {
  Fixture f(1'000'000);
  const LeaseSet copy = f.set;
  LeaseClaim a, b, c;
  EXPECT_EQ(f.book->begin(f.set, 10'000, kJan1, a), LeaseBook::Begin::kPlain);
  f.book->end_plain(f.set.key);  // idle: its state is dropped
  EXPECT_EQ(f.book->begin(copy, 10'000, kJan1, b), LeaseBook::Begin::kPlain);
  // One in flight already (through the copy): the second opens a lease.
  EXPECT_EQ(f.book->begin(f.set, 10'000, kJan1, c), LeaseBook::Begin::kOpen);
  f.book->open_failed(f.set.key);
  f.book->end_plain(f.set.key);
  f.book->end_plain(f.set.key);
  // A set kept by another book is looked up in this one.
  LeaseBook other(f.budgets, f.ledger, closing_at_once());
  EXPECT_EQ(other.begin(f.set, 10'000, kJan1, a), LeaseBook::Begin::kPlain);
  EXPECT_EQ(f.book->begin(f.set, 10'000, kJan1, b), LeaseBook::Begin::kPlain);
  other.end_plain(f.set.key);
  f.book->end_plain(f.set.key);
}

// Several workers begin and settle covered requests of one set at once, through one LeaseSet
// (whose kept state the book reads and writes under its mutex): each is covered by the lease
// and charged once, in memory and in the ledger.
TEST(Lease, WorkersCoverAndSettleRequestsOfOneSetAtOnce) {
  Fixture f(100'000'000, closing_after(1'000));
  LeaseClaim a, b;
  f.open_beside(1'000, a, b);
  constexpr int kThreads = 4;
  constexpr int kEach = 200;
  std::atomic<int> covered{0};
  std::vector<std::thread> workers;
  for (int t = 0; t < kThreads; ++t) {
    workers.emplace_back([&f, &covered, t] {
      for (int i = 0; i < kEach; ++i) {
        LeaseClaim c;
        const auto begun = f.book->begin(f.set, 1'000, kJan1, c);
        if (begun != LeaseBook::Begin::kCovered) {
          if (begun == LeaseBook::Begin::kOpen) f.book->open_failed(f.set.key);
          f.book->end_plain(f.set.key);
          continue;
        }
        const std::string id = "w" + std::to_string(t) + "-" + std::to_string(i);
        if (f.book->settle(c, f.row(id, 700), {}, kJan1).queued) covered.fetch_add(1);
      }
    });
  }
  for (auto& w : workers) w.join();
  ASSERT_TRUE(f.book->settle(b, f.row("b", 700), {}, kJan1).queued);
  f.ledger.commit();
  // The lease has room for a thousand: every request was covered.
  EXPECT_EQ(covered.load(), kThreads * kEach);
  EXPECT_EQ(f.snap().spent_micro, (kThreads * kEach + 1) * 700);
  EXPECT_EQ(f.ledger.settled(), f.snap().spent_micro);
  f.expect_ledger_within(100'000'000);
}

// A lease id is copied into every covered row: it stays within a short string's inline room.
TEST(Lease, LeaseIdsAreShortAndNeverRepeat) {
  Fixture f(1'000'000);
  LeaseBook other(f.budgets, f.ledger, closing_at_once());
  std::set<std::string> seen;
  for (int i = 0; i < 5'000; ++i) {
    for (LeaseBook* book : {f.book.get(), &other}) {
      const std::string id = book->next_lease_id();
      EXPECT_EQ(id.size(), 15u) << id;
      EXPECT_TRUE(id.starts_with("lease:")) << id;
      EXPECT_TRUE(seen.insert(id).second) << "repeated lease id " << id;
    }
  }
}

TEST(Lease, DisabledNeverOpens) {
  Fixture f(1'000'000);
  LeaseOptions o;
  o.enabled = false;
  LeaseBook book(f.budgets, f.ledger, o);
  LeaseClaim claim;
  EXPECT_EQ(book.begin(f.set, 10'000, kJan1, claim), LeaseBook::Begin::kPlain);
  EXPECT_EQ(book.begin(f.set, 10'000, kJan1, claim), LeaseBook::Begin::kPlain);
}

TEST(Lease, ConcurrentRequestsAreCoveredWithoutALedgerRecord) {
  constexpr Micros kCap = 1'000'000, kW = 10'000;
  Fixture f(kCap);
  LeaseClaim a, b, c;
  ASSERT_EQ(f.book->begin(f.set, kW, kJan1, a), LeaseBook::Begin::kPlain);
  auto ra = f.budgets.reserve(f.set.budgets, kW, kJan1);  // a's own reservation
  ASSERT_TRUE(ra.ok());
  ASSERT_EQ(f.book->begin(f.set, kW, kJan1, b), LeaseBook::Begin::kOpen);
  ASSERT_TRUE(f.open(kW, b));
  ASSERT_TRUE(b.active());
  // Half the headroom ($0.495), in whole requests, but at most the slice ($1): 49 requests.
  const Micros lease = 49 * kW;
  EXPECT_EQ(f.snap().reserved_micro, kW + lease);
  EXPECT_EQ(f.ledger.open_reserved(), lease);
  // c is covered from memory: nothing queued for the ledger, nothing more reserved.
  ASSERT_EQ(f.book->begin(f.set, kW, kJan1, c), LeaseBook::Begin::kCovered);
  EXPECT_EQ(f.ledger.queued(), 0u);
  EXPECT_EQ(f.snap().reserved_micro, kW + lease);
  EXPECT_EQ(c.lease_id(), b.lease_id());
  f.budgets.release(*ra.reservation);
  f.book->end_plain(f.set.key);
}

TEST(Lease, CoveredSettlementIsPartialAndTheLedgerStaysWithinTheCap) {
  constexpr Micros kCap = 100'000, kW = 10'000;
  LeaseOptions o = closing_at_once();
  o.slice_micro = 40'000;
  Fixture f(kCap, o);
  LeaseClaim a, b, c;
  ASSERT_EQ(f.book->begin(f.set, kW, kJan1, a), LeaseBook::Begin::kPlain);
  ASSERT_EQ(f.book->begin(f.set, kW, kJan1, b), LeaseBook::Begin::kOpen);
  ASSERT_TRUE(f.open(kW, b));  // min(40k slice, 50k half room) = 40k
  ASSERT_EQ(f.book->begin(f.set, kW, kJan1, c), LeaseBook::Begin::kCovered);
  f.book->end_plain(f.set.key);  // a gave up
  EXPECT_EQ(f.snap().reserved_micro, 40'000);

  bool committed = false;
  auto out = f.book->settle(
      c, f.row("c", 7'000), [&](const Result<Ok>& r) { committed = r.ok(); }, kJan1);
  EXPECT_TRUE(out.queued);
  EXPECT_EQ(out.outcome.overshoot_micro, 0);
  EXPECT_FALSE(c.active());
  // Memory: charged 7k, the hold shrank by as much; the lease is still open (b in flight).
  EXPECT_EQ(f.snap().spent_micro, 7'000);
  EXPECT_EQ(f.snap().reserved_micro, 33'000);
  // Before the commit the ledger still has the lease at 40k: within the cap, and c's row
  // reaches it in the same transaction as the lowering.
  f.expect_ledger_within(kCap);
  EXPECT_FALSE(committed);
  f.ledger.commit();
  EXPECT_TRUE(committed);
  EXPECT_EQ(f.ledger.settled(), 7'000);
  EXPECT_EQ(f.ledger.open_reserved(), 33'000);
  EXPECT_EQ(f.ledger.open_leases(), 1);

  // The last covered request: the lease goes quiet and closes, its rest is released.
  out = f.book->settle(b, f.row("b", 9'000), {}, kJan1);
  EXPECT_TRUE(out.queued);
  EXPECT_EQ(f.snap().spent_micro, 16'000);
  EXPECT_EQ(f.snap().reserved_micro, 0);
  f.expect_ledger_within(kCap);
  f.ledger.commit();
  EXPECT_EQ(f.ledger.settled(), 16'000);
  EXPECT_EQ(f.ledger.open_reserved(), 0);
  EXPECT_EQ(f.ledger.open_leases(), 0);
  EXPECT_EQ(f.book->stats().open_now, 0u);
  EXPECT_EQ(f.book->stats().closed, 1u);
}

// The row made by the caller's fill in the ledger's record: the lease's fields are the book's,
// whatever the fill set, and the sums are those of settle() with a finished row.
TEST(Lease, ARowMadeByAFillTakesTheLeasesFields) {
  constexpr Micros kW = 10'000;
  LeaseOptions o = closing_at_once();
  o.slice_micro = 4 * kW;
  Fixture f(100'000, o);
  LeaseClaim a, b, c;
  f.open_beside(kW, a, b);
  ASSERT_EQ(f.book->begin(f.set, kW, kJan1, c), LeaseBook::Begin::kCovered);
  int fills = 0;
  const LedgerCoveredFill fill{[](void* n, LedgerCovered& r) {
                                 ++*static_cast<int*>(n);
                                 r.request_id = "c";
                                 r.status = LedgerStatus::kSettled;
                                 r.lease_id = "not-the-lease";
                                 r.reserved_micro = 1;
                                 r.actual_micro = 123'456;  // the book's actual wins
                               },
                               &fills};
  auto out = f.book->settle_with(c, LedgerStatus::kSettled, 7'000, fill, {}, kJan1);
  EXPECT_TRUE(out.queued);
  EXPECT_EQ(fills, 1);
  EXPECT_FALSE(c.active());
  EXPECT_EQ(f.snap().spent_micro, 7'000);
  EXPECT_EQ(f.snap().reserved_micro, 33'000);
  f.ledger.commit();
  // Lowered on the lease's row: the row named the book's lease.
  EXPECT_EQ(f.ledger.settled(), 7'000);
  EXPECT_EQ(f.ledger.open_reserved(), 33'000);
  EXPECT_EQ(f.ledger.rows.at("c").reserved, kW);
  EXPECT_EQ(f.ledger.rows.at("c").actual, 7'000);
  // A claim already settled: nothing is filled.
  out = f.book->settle_with(c, LedgerStatus::kSettled, 7'000, fill, {}, kJan1);
  EXPECT_FALSE(out.queued);
  EXPECT_EQ(fills, 1);
  f.book->settle(b, f.row("b", 1'000), {}, kJan1);
  f.ledger.commit();
  EXPECT_EQ(f.ledger.open_leases(), 0);
}

TEST(Lease, ReleasedRequestsCloseTheLeaseWhenQuiet) {
  Fixture f(1'000'000);
  LeaseClaim a, b;
  f.book->begin(f.set, 10'000, kJan1, a);
  ASSERT_EQ(f.book->begin(f.set, 10'000, kJan1, b), LeaseBook::Begin::kOpen);
  ASSERT_TRUE(f.open(10'000, b));
  f.book->end_plain(f.set.key);
  f.book->release(b, kJan1);
  EXPECT_EQ(f.snap().reserved_micro, 0);
  f.ledger.commit();
  EXPECT_EQ(f.ledger.open_reserved(), 0);
  EXPECT_EQ(f.ledger.open_leases(), 0);
}

TEST(Lease, AQuietLeaseClosesAfterTheIdleTime) {
  constexpr Micros kW = 10'000;
  Fixture f(1'000'000, closing_after(20));
  LeaseClaim a, b, c;
  f.open_beside(kW, a, b);
  auto out = f.book->settle(b, f.row("b", 1'000), {}, kJan1);
  EXPECT_TRUE(out.quiet);
  // Quiet but not idle long enough: the next request is covered by the same lease.
  EXPECT_TRUE(f.book->close_idle(kJan1 + 19));
  ASSERT_EQ(f.book->begin(f.set, kW, kJan1 + 19, c), LeaseBook::Begin::kCovered);
  EXPECT_FALSE(f.book->close_idle(kJan1 + 100)) << "a lease with a request in flight closed";
  out = f.book->settle(c, f.row("c", 1'000), {}, kJan1 + 30);
  EXPECT_TRUE(out.quiet);
  std::size_t closed = 9;
  EXPECT_TRUE(f.book->close_idle(kJan1 + 49, false, &closed));
  EXPECT_EQ(closed, 0u);
  EXPECT_GT(f.snap().reserved_micro, 0);
  EXPECT_FALSE(f.book->close_idle(kJan1 + 50, false, &closed));
  EXPECT_EQ(closed, 1u);
  EXPECT_EQ(f.snap().reserved_micro, 0);
  EXPECT_EQ(f.snap().spent_micro, 2'000);
  f.ledger.commit();
  EXPECT_EQ(f.ledger.open_leases(), 0);
  EXPECT_EQ(f.ledger.settled(), 2'000);
  EXPECT_EQ(f.book->stats().opened, 1u);
}

TEST(Lease, AGracefulStopClosesQuietLeases) {
  constexpr Micros kW = 10'000;
  LeaseOptions o;
  o.idle_close_ms = 1'000;
  Fixture f(1'000'000, o);
  LeaseClaim a, b;
  f.open_beside(kW, a, b);
  EXPECT_TRUE(f.book->settle(b, f.row("b", 1'000), {}, kJan1).quiet);
  EXPECT_TRUE(f.book->close_idle(kJan1 + 1));  // not idle long enough
  EXPECT_FALSE(f.book->close_idle(kJan1 + 1, /*all=*/true));
  EXPECT_EQ(f.snap().reserved_micro, 0);
  f.ledger.commit();
  EXPECT_EQ(f.ledger.open_leases(), 0);
  // The destructor does the same for a book that is simply destroyed.
  LeaseClaim c, d;
  f.open_beside(kW, c, d);
  f.book->settle(d, f.row("d", 1'000), {}, kJan1);
  EXPECT_EQ(f.ledger.open_leases(), 1);
  f.book.reset();
  f.ledger.commit();
  EXPECT_EQ(f.ledger.open_leases(), 0);
  EXPECT_EQ(f.snap().reserved_micro, 0);
}

TEST(Lease, NearTheCapRequestsTakeTheExactPath) {
  constexpr Micros kW = 10'000;
  Fixture f(35'000);
  LeaseClaim a, b;
  f.book->begin(f.set, kW, kJan1, a);
  auto ra = f.budgets.reserve(f.set.budgets, kW, kJan1);
  ASSERT_TRUE(ra.ok());
  ASSERT_EQ(f.book->begin(f.set, kW, kJan1, b), LeaseBook::Begin::kOpen);
  // 25k of headroom: half of it holds one request, fewer than min_requests (2).
  EXPECT_EQ(f.book->lease_size(f.set, kW, kJan1), 0);
  EXPECT_FALSE(f.open(kW, b));
  EXPECT_FALSE(b.active());
  EXPECT_EQ(f.ledger.rows.size(), 0u);
  // Both still fit the exact way: nothing is lost to a lease near the cap.
  auto rb = f.budgets.reserve(f.set.budgets, kW, kJan1);
  EXPECT_TRUE(rb.ok());
}

TEST(Lease, AFullLeaseSendsRequestsToTheExactPathAndAnotherLeaseMayOpen) {
  constexpr Micros kW = 10'000;
  LeaseOptions o = closing_at_once();
  o.slice_micro = 20'000;
  Fixture f(1'000'000, o);
  LeaseClaim a, b, c, d;
  f.book->begin(f.set, kW, kJan1, a);
  ASSERT_EQ(f.book->begin(f.set, kW, kJan1, b), LeaseBook::Begin::kOpen);
  ASSERT_TRUE(f.open(kW, b));
  ASSERT_EQ(f.book->begin(f.set, kW, kJan1, c), LeaseBook::Begin::kCovered);
  // Full (2 x 10k): d is not covered, and may open the next one.
  ASSERT_EQ(f.book->begin(f.set, kW, kJan1, d), LeaseBook::Begin::kOpen);
  const std::string first = b.lease_id();
  ASSERT_TRUE(f.open(kW, d));
  EXPECT_NE(d.lease_id(), first);
  EXPECT_EQ(f.book->stats().open_now, 2u);
  // The first one closes when its last request ends, although it was replaced.
  f.book->settle(b, f.row("b", 1'000), {}, kJan1);
  f.book->settle(c, f.row("c", 1'000), {}, kJan1);
  f.ledger.commit();
  EXPECT_EQ(f.ledger.rows.at(first).status, LedgerStatus::kSettled);
  EXPECT_EQ(f.book->stats().open_now, 1u);
  f.book->settle(d, f.row("d", 1'000), {}, kJan1);
  f.book->end_plain(f.set.key);
  f.ledger.commit();
  EXPECT_EQ(f.snap().reserved_micro, 0);
  EXPECT_EQ(f.snap().spent_micro, 3'000);
  EXPECT_EQ(f.ledger.settled(), 3'000);
  EXPECT_EQ(f.ledger.open_reserved(), 0);
}

TEST(Lease, ARequestRefusedWhileALeaseOpensWaitsForItAndIsCovered) {
  constexpr Micros kW = 10'000;
  Fixture f(5 * kW);
  LeaseClaim a, b, e;
  ASSERT_EQ(f.book->begin(f.set, kW, kJan1, a), LeaseBook::Begin::kPlain);
  ASSERT_EQ(f.book->begin(f.set, kW, kJan1, b), LeaseBook::Begin::kOpen);
  // e comes while b's lease is being opened: the per-request way.
  ASSERT_EQ(f.book->begin(f.set, kW, kJan1, e), LeaseBook::Begin::kPlain);
  int woken = 0;
  ASSERT_TRUE(f.book->wait_for_open(f.set.key, [&] { ++woken; }));
  EXPECT_FALSE(f.book->cover_plain(f.set, kW, kJan1, e)) << "no lease yet";
  ASSERT_TRUE(f.open(kW, b));  // installs: wakes e, outside the book's mutex
  EXPECT_EQ(woken, 1);
  ASSERT_TRUE(f.book->cover_plain(f.set, kW, kJan1, e));
  EXPECT_EQ(e.lease_id(), b.lease_id());
  EXPECT_FALSE(f.book->wait_for_open(f.set.key, [&] { ++woken; })) << "nothing is opening";
  // A failed opening wakes its waiters too.
  LeaseClaim g, h;
  ASSERT_EQ(f.book->begin(f.set, 3 * kW, kJan1, g), LeaseBook::Begin::kOpen);
  ASSERT_EQ(f.book->begin(f.set, 3 * kW, kJan1, h), LeaseBook::Begin::kPlain);
  ASSERT_TRUE(f.book->wait_for_open(f.set.key, [&] { ++woken; }));
  EXPECT_FALSE(f.open(3 * kW, g));  // no room for a lease of two
  EXPECT_EQ(woken, 2);
  EXPECT_FALSE(f.book->cover_plain(f.set, 3 * kW, kJan1, h)) << "the lease has no such room";
  f.book->end_plain(f.set.key);
  f.book->end_plain(f.set.key);
  f.book->end_plain(f.set.key);
  f.book->settle(b, f.row("b", 1'000), {}, kJan1);
  f.book->settle(e, f.row("e", 1'000), {}, kJan1);
  f.ledger.commit();
  EXPECT_EQ(f.ledger.open_reserved(), 0);
  EXPECT_EQ(f.book->stats().open_now, 0u);
}

TEST(Lease, ALeaseServesOnlyInsideThePeriodItWasTakenIn) {
  constexpr Micros kW = 10'000;
  BudgetManager budgets;
  budgets.upsert_budget({kDaily, 1'000'000, BudgetPeriod::kDaily});
  FakeLedger ledger;
  LeaseOptions o = closing_at_once();
  o.enabled = true;
  LeaseBook book(budgets, ledger, o);
  LeaseSet set{lease_set_key({kDaily}, "k", ""), {kDaily}, "k", ""};
  LeaseClaim a, b, c;
  book.begin(set, kW, kJan1, a);
  ASSERT_EQ(book.begin(set, kW, kJan1, b), LeaseBook::Begin::kOpen);
  auto hold = budgets.reserve(set.budgets, book.lease_size(set, kW, kJan1), kJan1);
  ASSERT_TRUE(hold.ok());
  book.install(set, book.next_lease_id(), std::move(*hold.reservation), kW, b, kJan1);
  // The next day: the lease takes no more requests.
  EXPECT_NE(book.begin(set, kW, kJan1 + kMillisPerDay, c), LeaseBook::Begin::kCovered);
  EXPECT_FALSE(c.active());
}

TEST(Lease, ARefusedLedgerAppendKeepsTheLeaseHeld) {
  constexpr Micros kW = 10'000;
  Fixture f(1'000'000);
  LeaseClaim a, b;
  f.open_beside(kW, a, b);
  const Micros lease = f.snap().reserved_micro;
  f.ledger.refuse = true;
  auto out = f.book->settle(b, f.row("b", 4'000), {}, kJan1);
  EXPECT_FALSE(out.queued);
  // The row could not be written, so the lease row keeps counting the spend as reserved; the
  // hold stays in memory too (4k of it is spent now).
  EXPECT_EQ(f.snap().spent_micro, 4'000);
  EXPECT_EQ(f.snap().reserved_micro, lease - 4'000);
  EXPECT_EQ(f.book->stats().stuck, 1u);
  EXPECT_EQ(f.ledger.open_reserved(), lease);
  EXPECT_LE(f.snap().spent_micro + f.snap().reserved_micro, f.ledger.open_reserved());
}

// A covered row whose group commit fails never lowered its lease row, which the ledger then
// keeps open: the lease must not go on covering requests as if its row were right. It is
// retired (the next request waits for a commit of its own), and once its last request ends its
// hold stays in the budget, in step with the open row, instead of being released by a close.
TEST(Lease, ACoveredRowWhoseCommitFailsRetiresItsLease) {
  constexpr Micros kW = 10'000;
  Fixture f(1'000'000, closing_after(20));
  LeaseClaim a, b, c, d, e;
  f.book->begin(f.set, kW, kJan1, a);
  ASSERT_EQ(f.book->begin(f.set, kW, kJan1, b), LeaseBook::Begin::kOpen);
  ASSERT_TRUE(f.open(kW, b));
  const std::string failed_id = b.lease_id();
  const Micros lease = 50 * kW;  // half the headroom (a has no reservation here)
  ASSERT_EQ(f.book->begin(f.set, kW, kJan1, c), LeaseBook::Begin::kCovered);

  // c's row is lost with its transaction (the book watches the commit: no callback given).
  auto out = f.book->settle(c, f.row("c", 7'000), {}, kJan1);
  ASSERT_TRUE(out.queued);
  f.ledger.fail_commit = true;
  f.ledger.commit();
  f.ledger.fail_commit = false;
  EXPECT_EQ(f.ledger.open_reserved(), lease) << "the fake lowered a lease in a failed commit";

  // The next request is not covered by the lease whose row lost c's spend.
  EXPECT_NE(f.book->begin(f.set, kW, kJan1 + 1, d), LeaseBook::Begin::kCovered)
      << "a lease whose covered row was not committed went on covering requests";
  EXPECT_FALSE(d.active());
  f.book->open_failed(f.set.key);

  // b, still in flight, ends on it; the lease then stays held, and no close reaches the ledger.
  f.book->settle(b, f.row("b", 9'000), {}, kJan1 + 2);
  EXPECT_FALSE(f.book->close_idle(kJan1 + 1'000, /*all=*/true));
  f.ledger.commit();
  EXPECT_EQ(f.ledger.open_leases(), 1);
  EXPECT_EQ(f.ledger.settled(), 9'000);
  EXPECT_EQ(f.ledger.open_reserved(), lease - 9'000);
  EXPECT_EQ(f.snap().spent_micro, 16'000);
  EXPECT_EQ(f.snap().reserved_micro, lease - 16'000);
  // Memory holds what the ledger holds (c's lost 7k: spent here, still reserved there).
  EXPECT_EQ(f.snap().spent_micro + f.snap().reserved_micro,
            f.ledger.settled() + f.ledger.open_reserved());
  EXPECT_EQ(f.book->stats().stuck, 1u);
  EXPECT_EQ(f.book->stats().closed, 0u);
  EXPECT_EQ(f.book->stats().open_now, 0u);

  // A fresh lease serves the set from then on.
  f.book->end_plain(f.set.key);  // a
  f.book->end_plain(f.set.key);  // d
  LeaseClaim g;
  ASSERT_EQ(f.book->begin(f.set, kW, kJan1 + 3, e), LeaseBook::Begin::kPlain);
  ASSERT_EQ(f.book->begin(f.set, kW, kJan1 + 3, g), LeaseBook::Begin::kOpen);
  ASSERT_TRUE(f.open(kW, g));
  EXPECT_NE(g.lease_id(), failed_id);
  f.book->end_plain(f.set.key);
  f.book->settle(g, f.row("g", 1'000), {}, kJan1 + 4);
  f.book->close_idle(kJan1 + 1'000, /*all=*/true);
  f.ledger.commit();
  EXPECT_EQ(f.ledger.open_leases(), 1) << "only the failed lease's row stays open";
  EXPECT_EQ(f.book->stats().closed, 1u);
}

// The book's own callback for a covered row refers to its lease without owning it: the lease's
// close row, queued after it, keeps the lease until it has run, even when the book has let the
// lease go (an address sanitizer build catches a lease freed too early).
TEST(Lease, ACoveredRowsCallbackRunsAfterItsLeaseClosedAndWasDropped) {
  constexpr Micros kW = 10'000;
  Fixture f(1'000'000);  // leases close as soon as they are quiet
  LeaseClaim a, b;
  f.open_beside(kW, a, b);
  auto out = f.book->settle(b, f.row("b", 4'000), {}, kJan1);
  ASSERT_TRUE(out.queued);
  EXPECT_FALSE(out.lease) << "the book's own callback needs no lease handed back";
  EXPECT_EQ(f.book->stats().closed, 1u);
  EXPECT_EQ(f.ledger.queued(), 2u);  // the covered row, then the lease's close
  f.ledger.fail_commit = true;       // the callback writes to the lease
  f.ledger.commit();
  EXPECT_EQ(f.book->stats().open_now, 0u);
}

// A covered row still queued when its book goes (the ledger outlives it): its callback still
// finds its lease, which the book could neither close nor keep.
TEST(Lease, ACoveredRowQueuedWhenItsBookGoesFindsItsLease) {
  constexpr Micros kW = 10'000;
  Fixture f(1'000'000, closing_after(20));
  LeaseClaim a, b, c;
  f.open_beside(kW, a, b);
  ASSERT_EQ(f.book->begin(f.set, kW, kJan1, c), LeaseBook::Begin::kCovered);
  ASSERT_TRUE(f.book->settle(b, f.row("b", 4'000), {}, kJan1).queued);
  // c's row is refused: the lease is kept held by the book (no close row), b's row still queued.
  f.ledger.refuse = true;
  EXPECT_FALSE(f.book->settle(c, f.row("c", 3'000), {}, kJan1).queued);
  f.ledger.refuse = false;
  EXPECT_EQ(f.book->stats().stuck, 1u);
  f.book.reset();
  f.ledger.fail_commit = true;
  f.ledger.commit();
  EXPECT_EQ(f.ledger.commits, 2);
}

// The caller that waits for a covered row's commit hears of its failure first and reports it:
// the lease is retired at once, and held for good when nothing of it is in flight.
TEST(Lease, ACommitFailureReportedByTheCallerRetiresTheLeaseAtOnce) {
  constexpr Micros kW = 10'000;
  Fixture f(1'000'000, closing_after(20));
  LeaseClaim a, b, c;
  f.open_beside(kW, a, b);
  bool failed = false;
  auto out = f.book->settle(
      b, f.row("b", 4'000), [&](const Result<Ok>& r) { failed = !r.ok(); }, kJan1);
  ASSERT_TRUE(out.queued);
  ASSERT_TRUE(out.lease);
  f.ledger.fail_commit = true;
  f.ledger.commit();
  ASSERT_TRUE(failed);
  f.book->commit_failed(out.lease, kJan1 + 1);
  EXPECT_EQ(f.book->stats().stuck, 1u);
  EXPECT_EQ(f.book->stats().open_now, 0u);
  EXPECT_EQ(f.snap().reserved_micro, 50 * kW - 4'000);
  EXPECT_NE(f.book->begin(f.set, kW, kJan1 + 2, c), LeaseBook::Begin::kCovered);
  f.book->end_plain(f.set.key);
}

TEST(Lease, OvershootIsChargedAndReported) {
  constexpr Micros kW = 10'000;
  LeaseOptions o = closing_at_once();
  o.slice_micro = 20'000;
  Fixture f(1'000'000, o);
  LeaseClaim a, b;
  f.book->begin(f.set, kW, kJan1, a);
  f.book->begin(f.set, kW, kJan1, b);
  ASSERT_TRUE(f.open(kW, b));
  f.book->end_plain(f.set.key);
  auto out = f.book->settle(b, f.row("b", 25'000), {}, kJan1);
  EXPECT_EQ(out.outcome.overshoot_micro, 15'000);
  EXPECT_EQ(f.snap().spent_micro, 25'000);
  EXPECT_EQ(f.snap().reserved_micro, 0);
  f.ledger.commit();
  EXPECT_EQ(f.ledger.settled(), 25'000);
  EXPECT_EQ(f.ledger.open_reserved(), 0);
}

// Random interleavings of requests (exact and covered), settlements, releases and group
// commits: at every commit settled + open reservations in the ledger stay within the cap, and
// once everything is committed the ledger and the budget agree exactly.
TEST(Lease, RandomTrafficKeepsTheLedgerAndTheBudgetInStep) {
  constexpr Micros kCap = 2'000'000;
  LeaseOptions o = closing_at_once();
  o.slice_micro = 300'000;
  Fixture f(kCap, o);
  std::mt19937 rng(7);
  struct Req {
    LeaseClaim claim;
    std::optional<Reservation> hold;
    Micros worst = 0;
    std::string id;
  };
  std::vector<Req> live;
  int n = 0, refused = 0, covered = 0;
  for (int step = 0; step < 4000; ++step) {
    const int op = static_cast<int>(rng() % 10);
    if (op < 5 && live.size() < 40) {
      Req r;
      r.worst = 5'000 + static_cast<Micros>(rng() % 20'000);
      r.id = "r" + std::to_string(++n);
      auto b = f.book->begin(f.set, r.worst, kJan1, r.claim);
      if (b == LeaseBook::Begin::kCovered) {
        ++covered;
      } else {
        if (b == LeaseBook::Begin::kOpen && f.open(r.worst, r.claim)) {
          ++covered;
        } else {
          auto res = f.budgets.reserve(f.set.budgets, r.worst, kJan1);
          if (!res.ok()) {
            f.book->end_plain(f.set.key);
            ++refused;
            continue;
          }
          LedgerReservation rec;
          rec.request_id = r.id;
          rec.reserved_micro = r.worst;
          EXPECT_TRUE(f.ledger.append_reservation(std::move(rec), {}, Ledger::Wake::kDeferred));
          r.hold = std::move(*res.reservation);
        }
      }
      live.push_back(std::move(r));
    } else if (op < 9 && !live.empty()) {
      const std::size_t i = rng() % live.size();
      Req r = std::move(live[i]);
      live.erase(live.begin() + static_cast<std::ptrdiff_t>(i));
      const bool billed = rng() % 5 != 0;
      const Micros actual = billed ? static_cast<Micros>(rng() % (r.worst + 1)) : 0;
      if (r.claim.active()) {
        LedgerCovered row = f.row(r.id, actual);
        if (!billed) row.status = LedgerStatus::kReleased;
        f.book->settle(r.claim, std::move(row), {}, kJan1);
      } else {
        LedgerSettlement s;
        s.request_id = r.id;
        s.status = billed ? LedgerStatus::kSettled : LedgerStatus::kReleased;
        s.actual_micro = actual;
        if (billed) {
          f.budgets.settle(*r.hold, actual, kJan1);
        } else {
          f.budgets.release(*r.hold);
        }
        EXPECT_TRUE(f.ledger.append_settlement(std::move(s), {}, Ledger::Wake::kDeferred));
        f.book->end_plain(f.set.key);
      }
    } else {
      f.ledger.commit();
      ASSERT_LE(f.ledger.settled() + f.ledger.open_reserved(), kCap) << "step " << step;
      const auto s = f.snap();
      ASSERT_LE(s.spent_micro + s.reserved_micro, kCap);
    }
  }
  // Drain.
  for (auto& r : live) {
    if (r.claim.active()) {
      f.book->settle(r.claim, f.row(r.id, r.worst / 2), {}, kJan1);
    } else {
      f.budgets.settle(*r.hold, r.worst / 2, kJan1);
      LedgerSettlement s;
      s.request_id = r.id;
      s.actual_micro = r.worst / 2;
      EXPECT_TRUE(f.ledger.append_settlement(std::move(s), {}, Ledger::Wake::kDeferred));
      f.book->end_plain(f.set.key);
    }
  }
  live.clear();
  f.ledger.commit();
  const auto s = f.snap();
  EXPECT_GT(covered, 100);
  EXPECT_GT(refused, 0) << "the cap was never reached";
  EXPECT_EQ(s.spent_micro, f.ledger.settled());
  EXPECT_EQ(s.reserved_micro, 0);
  EXPECT_EQ(f.ledger.open_reserved(), 0);
  EXPECT_EQ(f.ledger.open_leases(), 0);
  EXPECT_GT(f.book->stats().opened, 1u);
}

// A lease that closes while a request starts or installs a new one (a quiet lease out of its
// period, a quiet lease replaced) must not take its set's state with it: the request still
// counts in the set, and the new lease serves it.
TEST(Lease, AQuietLeaseReplacedByANewOneKeepsItsSet) {
  constexpr Micros kW = 10'000;
  LeaseOptions o;
  o.idle_close_ms = 20;  // a quiet lease stays open for the next request
  o.slice_micro = 20'000;
  Fixture f(1'000'000, o);
  LeaseClaim a, b, c, d, e;
  f.book->begin(f.set, kW, kJan1, a);
  ASSERT_EQ(f.book->begin(f.set, kW, kJan1, b), LeaseBook::Begin::kOpen);
  ASSERT_TRUE(f.open(kW, b));
  ASSERT_EQ(f.book->begin(f.set, kW, kJan1, c), LeaseBook::Begin::kCovered);
  // Both spend their whole share: the lease is quiet and has nothing left.
  f.book->settle(b, f.row("b", kW), {}, kJan1);
  f.book->settle(c, f.row("c", kW), {}, kJan1);
  ASSERT_EQ(f.book->begin(f.set, kW, kJan1, d), LeaseBook::Begin::kOpen);
  f.book->end_plain(f.set.key);  // a ends: d is the set's only request in flight
  ASSERT_TRUE(f.open(kW, d));
  // The old lease closed at once (retired and quiet); the new one serves the set.
  EXPECT_EQ(f.book->stats().open_now, 1u);
  EXPECT_EQ(f.book->stats().closed, 1u);
  ASSERT_EQ(f.book->begin(f.set, kW, kJan1, e), LeaseBook::Begin::kCovered);
  EXPECT_EQ(e.lease_id(), d.lease_id());
  f.book->settle(d, f.row("d", 1'000), {}, kJan1);
  f.book->settle(e, f.row("e", 1'000), {}, kJan1);
  EXPECT_FALSE(f.book->close_idle(kJan1 + 20));
  f.ledger.commit();
  EXPECT_EQ(f.ledger.open_leases(), 0);
  EXPECT_EQ(f.ledger.open_reserved(), 0);
  EXPECT_EQ(f.ledger.settled(), 22'000);
  EXPECT_EQ(f.snap().reserved_micro, 0);
  EXPECT_EQ(f.snap().spent_micro, 22'000);
}

TEST(Lease, AQuietLeaseOutOfItsPeriodClosesAndTheRequestStillCountsInItsSet) {
  constexpr Micros kW = 10'000;
  BudgetManager budgets;
  budgets.upsert_budget({kDaily, 1'000'000, BudgetPeriod::kDaily});
  FakeLedger ledger;
  LeaseOptions o;
  o.enabled = true;
  o.idle_close_ms = 20;  // a quiet lease stays open for the next request
  LeaseBook book(budgets, ledger, o);
  LeaseSet set{lease_set_key({kDaily}, "k", ""), {kDaily}, "k", ""};
  LeaseClaim a, b, c, d;
  book.begin(set, kW, kJan1, a);
  ASSERT_EQ(book.begin(set, kW, kJan1, b), LeaseBook::Begin::kOpen);
  auto hold = budgets.reserve(set.budgets, book.lease_size(set, kW, kJan1), kJan1);
  ASSERT_TRUE(hold.ok());
  book.install(set, book.next_lease_id(), std::move(*hold.reservation), kW, b, kJan1);
  LedgerCovered row;
  row.request_id = "b";
  book.settle(b, std::move(row), {}, kJan1);
  book.end_plain(set.key);
  ASSERT_EQ(book.stats().open_now, 1u);  // quiet, waiting for the idle time
  // The next day: the quiet lease closes, and c is a plain request of the set.
  const std::int64_t next_day = kJan1 + kMillisPerDay;
  EXPECT_EQ(book.begin(set, kW, next_day, c), LeaseBook::Begin::kPlain);
  EXPECT_EQ(book.stats().open_now, 0u);
  EXPECT_EQ(book.stats().closed, 1u);
  // c still counts: a second request of the set opens a lease.
  EXPECT_EQ(book.begin(set, kW, next_day, d), LeaseBook::Begin::kOpen);
  book.open_failed(set.key);
  book.end_plain(set.key);
  book.end_plain(set.key);
}

}  // namespace
}  // namespace bw::cost
